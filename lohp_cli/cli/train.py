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
    ThreadsOpt,
    command,
    log,
    run_stage,
    set_option,
    split_list,
    verbosity,
    with_default,
)
from lohp_cli.cli.progress import StageProgress

TrainSetOpt = set_option("policy.backbone=rows")
CONFIG = "lohp_cli.stages.train:TrainConfig"  # via the stage: it registers every training method
LIBRARY = "lohp_cli.stages.train:train_policy"  # imported when the command runs (torch)


@command("train-policy")
def train_policy_cmd(
    store: Annotated[
        str | None, typer.Option(help="Trajectory store (path or fsspec URL).")
    ] = None,
    out: Annotated[str | None, typer.Option("--out", "-o", help="Output policy directory.")] = None,
    method: Annotated[
        str | None,
        typer.Option(
            help=with_default(
                "lo-hp, lo-op, lo-di, hypernetwork, diffusion, or l2o, l2o-tt, l2o-flat, m-l2o.",
                "lo-hp",
            )
        ),
    ] = None,
    family: Annotated[
        str | None,
        typer.Option(help="L2O methods: store (default), or quadratic|lasso (no store needed)."),
    ] = None,
    k: Annotated[
        int | None, typer.Option(help=with_default("Matching factor k (N = T/k).", 2))
    ] = None,
    steps: Annotated[int | None, typer.Option(help=with_default("Training steps.", 3000))] = None,
    batch_size: Annotated[
        int | None, typer.Option(help=with_default("Trajectories per step.", 32))
    ] = None,
    lr: Annotated[
        float | None, typer.Option(help=with_default("Learning rate (warns above 1e-3).", 0.001))
    ] = None,
    optimizers: Annotated[
        str | None, typer.Option(help="Learn only from these optimizers' runs (comma list).")
    ] = None,
    max_minutes: Annotated[float | None, typer.Option(help="Stop (resumable) after this.")] = None,
    val_tasks: Annotated[
        int | None,
        typer.Option(
            help=with_default(
                "Hold out N of the store's tasks (from the seed) as a validation split; keep "
                "the best policy (0: off).",
                0,
            )
        ),
    ] = None,
    val_every: Annotated[
        int | None,
        typer.Option(help="Steps between validations (default: the checkpoint interval)."),
    ] = None,
    val_metric: Annotated[
        str | None,
        typer.Option(
            help=with_default(
                "What picks the best policy: accuracy (held-out tasks' test accuracy), loss "
                "(the objective on held-out runs), auto (accuracy where the tasks rebuild).",
                "auto",
            )
        ),
    ] = None,
    patience: Annotated[
        int | None,
        typer.Option(help="Stop after P validations without improvement (default: never)."),
    ] = None,
    log: Annotated[
        str | None,
        typer.Option(
            "--log",
            help=with_default(
                "tensorboard: also write the scalars to POLICY/tensorboard/ (the extra "
                "lohp\\[tensorboard]).",
                "jsonl",
            ),
        ),
    ] = None,
    seed: SeedOpt = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a policy trained on another store.")
    ] = False,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
    config: ConfigOpt = None,
    set_: TrainSetOpt = None,
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
        "val_tasks": val_tasks,
        "val_every": val_every,
        "val_metric": val_metric,
        "patience": patience,
        "log": log,
        "seed": seed,
        "device": device,
        "threads": threads,
        "overwrite": True if overwrite else None,
    }
    run_stage(CONFIG, LIBRARY, _progress(), _done, config, set_, flags, dry_run)


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _done(result: Any) -> None:
    if _rank() != 0:
        return
    _BAR.stop()
    state = "complete" if result.complete else "stopped early (re-run to resume)"
    if result.stop_reason == "patience":
        state = "complete (stopped by --patience; the policy is the best validated)"
    elif result.stop_reason == "steps":
        state = "complete (the policy is the best validated)"
    loss = "-" if result.final_loss is None else f"{result.final_loss:.4g}"
    log(f"[green]done[/]: step {result.step}, {state}, loss {loss}, {result.wall_time_s:.1f} s")
    typer.echo(result.policy)


_BAR = StageProgress()


def _progress() -> Callable[[Event], None]:
    """A progress callback rendering train-policy events on stderr (rank 0 only): a bar over the
    training steps with the latest loss terms, elapsed time and ETA (plain lines when stderr is
    not a terminal; every logged step as a line with -v).

    The high learning rate warning arrives as an event, so the Python warning is silenced.
    """
    warnings.filterwarnings("ignore", message="policy learning rate")
    quiet = _rank() != 0
    bar = _BAR

    def on_event(e: Event) -> None:
        if quiet:
            return
        kind = e["event"]
        if kind == "warning":
            bar.log(f"[bold yellow]warning:[/] {e['message']}")
        elif kind == "info":
            bar.log(e["message"])
        elif kind == "device":
            bar.log(f"device: {e['device']} (world size {e['world_size']})")
        elif kind == "stats":
            bar.log(f"normalisation statistics over {e['runs']} run(s)")
        elif kind == "resume":
            bar.log(f"resuming from step {e['step']}")
        elif kind == "start":
            what = f"{e['params']:,} parameters" if "params" in e else "the policy"
            bar.log(f"training {what} on {e['runs']} run(s), N = {e['N']} steps")
            bar.start("train-policy", e["steps"], completed=e.get("step", 0))
        elif kind == "log":
            terms = " ".join(f"{k}={e[k]:.4g}" for k in LOSS_TERMS if k in e)
            if verbosity() >= 1:  # every logged step; metrics.jsonl has them all
                bar.log(f"step {e['step']}/{e['steps']} {terms}")
            if not bar.active:  # a fit that sent no start event
                bar.start("train-policy", e["steps"])
            bar.update(completed=e["step"], info=terms)
        elif kind == "validation":
            scores = " ".join(f"{k}={e[k]:.4g}" for k in ("val_loss", "val_acc") if k in e)
            mark = "new best" if e["best"] else f"best step {e['best_step']}"
            bar.log(f"step {e['step']}/{e['steps']} validation: {scores} ({mark})")
        elif kind == "patience":
            bar.stop()
            bar.log(
                f"no improvement in {e['patience']} validation(s): stopped at step {e['step']}; "
                f"the policy is the best, step {e['best_step']} ({e['best_score']:.4g})"
            )
        elif kind == "timeout":
            bar.stop()
            bar.log(f"--max-minutes reached at step {e['step']}; re-run to continue")

    return on_event


# the loss terms shown beside the bar (metrics.jsonl has every term)
LOSS_TERMS = ("loss", "off", "on", "mse")
