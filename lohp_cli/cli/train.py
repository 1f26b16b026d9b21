"""``lohp train-policy``: train the Lo-Hp policy (or an ablation, or a learned optimizer)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Annotated, Any

import typer

from lohp_cli.cli.common import (
    ConfigOpt,
    DeviceOpt,
    DryRunOpt,
    Event,
    SeedOpt,
    SetOpt,
    command,
    log,
    run_stage,
    split_list,
    verbosity,
)

CONFIG = "lohp_cli.train:TrainConfig"  # via the stage: it registers every training method
LIBRARY = "lohp_cli.train:train_policy"  # imported when the command runs (torch)


@command("train-policy")
def train_policy_cmd(
    store: Annotated[
        str | None, typer.Option(help="Trajectory store (path or fsspec URL).")
    ] = None,
    out: Annotated[str | None, typer.Option("--out", "-o", help="Output policy directory.")] = None,
    method: Annotated[
        str | None,
        typer.Option(
            help="lo-hp, lo-op, lo-di, hypernetwork, diffusion, or l2o, l2o-tt, l2o-flat, m-l2o."
        ),
    ] = None,
    family: Annotated[
        str | None,
        typer.Option(help="L2O methods: store (default), or quadratic|lasso (no store needed)."),
    ] = None,
    k: Annotated[int | None, typer.Option(help="Matching factor k (N = T/k).")] = None,
    steps: Annotated[int | None, typer.Option(help="Training steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Trajectories per step.")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate (warns above 1e-3).")] = None,
    optimizers: Annotated[
        str | None, typer.Option(help="Learn only from these optimizers' runs (comma list).")
    ] = None,
    max_minutes: Annotated[float | None, typer.Option(help="Stop (resumable) after this.")] = None,
    seed: SeedOpt = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a policy trained on another store.")
    ] = False,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Train the Lo-Hp policy (or an ablation) on a store; prints the policy directory.

    Re-running the same command resumes from the last checkpoint. Under torchrun it trains with
    DistributedDataParallel (gloo on CPU, nccl on CUDA); rank 0 writes.
    """
    flags = {
        "store": store,
        "out": out,
        "method": method,
        "l2o.family": family,
        "k": k,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "optimizers": split_list(optimizers),
        "max_minutes": max_minutes,
        "seed": seed,
        "device": device,
        "overwrite": True if overwrite else None,
    }
    run_stage(CONFIG, LIBRARY, _progress(), _done, config, set_, flags, dry_run)


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _done(result: Any) -> None:
    if _rank() != 0:
        return
    state = "complete" if result.complete else "stopped early (re-run to resume)"
    loss = "-" if result.final_loss is None else f"{result.final_loss:.4g}"
    log(f"[green]done[/]: step {result.step}, {state}, loss {loss}, {result.wall_time_s:.1f} s")
    typer.echo(result.policy)


def _progress() -> Callable[[Event], None]:
    """A progress callback rendering train-policy events on stderr (rank 0 only).

    The high learning rate warning arrives as an event, so the Python warning is silenced.
    """
    warnings.filterwarnings("ignore", message="policy learning rate")
    quiet = _rank() != 0

    def on_event(e: Event) -> None:
        if quiet:
            return
        kind = e["event"]
        if kind == "warning":
            log(f"[bold yellow]warning:[/] {e['message']}")
        elif kind == "info":
            log(e["message"])
        elif kind == "device":
            log(f"device: {e['device']} (world size {e['world_size']})")
        elif kind == "stats":
            log(f"normalisation statistics over {e['runs']} run(s)")
        elif kind == "resume":
            log(f"resuming from step {e['step']}")
        elif kind == "start":
            log(f"training {e['params']:,} parameters on {e['runs']} run(s), N = {e['N']} steps")
        elif kind == "log":
            # about 20 lines per run on stderr (every logged step with -v); metrics.jsonl has all
            every = max(1, e["steps"] // 20)
            if verbosity() >= 1 or e["step"] % every == 0 or e["step"] == e["steps"]:
                terms = " ".join(f"{k}={e[k]:.4g}" for k in ("loss", "off", "on", "mse") if k in e)
                log(f"step {e['step']}/{e['steps']} {terms}")
        elif kind == "timeout":
            log(f"--max-minutes reached at step {e['step']}; re-run to continue")

    return on_event
