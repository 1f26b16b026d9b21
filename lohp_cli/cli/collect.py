"""``lohp collect``: record optimizer trajectories into a store."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer

from lohp_cli.cli.common import (
    ConfigOpt,
    DeviceOpt,
    DryRunOpt,
    Event,
    SetOpt,
    command,
    log,
    run_stage,
    split_list,
    verbosity,
    with_default,
)
from lohp_cli.cli.progress import StageProgress

CONFIG = "lohp_cli.config:CollectConfig"
LIBRARY = "lohp_cli.stages.collect:collect"  # imported when the command runs (torch)


@command("collect")
def collect(
    out: Annotated[
        str | None, typer.Option("--out", "-o", help="Output store: path or fsspec URL.")
    ] = None,
    family: Annotated[
        str | None,
        typer.Option(
            help="Task family: fmnist, cifar10, digits, glyphs (rendered KanjiVG characters), the "
            "domain family rotated-fmnist, or few-shot episodes fewshot-fmnist, fewshot-digits, "
            "fewshot-glyphs (--set task.shots=K). \\[default: fmnist]"
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help=with_default("Target model: head, mlp, cnn, lora.", "head"))
    ] = None,
    tasks: Annotated[
        int | None, typer.Option(help=with_default("Number of source tasks.", 32))
    ] = None,
    seeds: Annotated[
        int | None, typer.Option(help=with_default("Replicates per task and optimizer.", 2))
    ] = None,
    optimizers: Annotated[
        str | None, typer.Option(help=with_default("Comma list of sgd, adam, sam.", "sgd,adam,sam"))
    ] = None,
    steps: Annotated[
        int | None, typer.Option(help=with_default("Optimizer steps per run.", 200))
    ] = None,
    record_every: Annotated[
        int | None, typer.Option(help=with_default("Record weights every N steps.", 5))
    ] = None,
    ways: Annotated[int | None, typer.Option(help=with_default("Classes per task.", 5))] = None,
    test_domain: Annotated[
        int | None,
        typer.Option(help="Held-out domain of a domain family (rotated-fmnist: 0, 15, …, 75)."),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help=with_default("Minibatch size.", 64))
    ] = None,
    seed: Annotated[int | None, typer.Option(help=with_default("Base seed.", 0))] = None,
    init: Annotated[
        str | None,
        typer.Option(
            help=with_default(
                "per_run, or shared: every run starts from one θ₀ saved in the store.", "per_run"
            )
        ),
    ] = None,
    init_seed: Annotated[
        int | None, typer.Option(help="Seed of the shared θ₀ (default: derived from --seed).")
    ] = None,
    workers: Annotated[int | None, typer.Option(help=with_default("Worker processes.", 1))] = None,
    batch_runs: Annotated[
        int | None,
        typer.Option(
            help=with_default("Runs of one optimizer trained together (1: one at a time).", 64)
        ),
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option(
            help="Run only shard i of n of the planned runs, as i/n (0 <= i < n): the same "
            "command with every i from 0 to n-1 (on any machines) collects the whole store."
        ),
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(
            help="Run on a Dask cluster: local:N worker processes, or a scheduler address "
            "tcp://HOST:PORT (needs pip install 'lohp\\[cluster]'; a store every worker "
            "reaches)."
        ),
    ] = None,
    data_root: Annotated[
        str | None, typer.Option(help="Directory holding the data set files.")
    ] = None,
    repair: Annotated[
        bool | None,
        typer.Option(
            "--repair",
            help="Check the whole store and redo what is damaged (task conditions, runs, group "
            "metadata) with the store's own settings, then collect as usual.",
        ),
    ] = None,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Train target networks on source tasks with SGD/Adam/SAM and record their trajectories.

    Re-running the same command resumes: complete runs are skipped, partial ones redone. With
    --repair (and --out), a store that 'lohp inspect --verify' finds damaged is repaired with its
    own settings. Prints the store location on stdout.
    """
    flags = {
        "out": out,
        "task.family": family,
        "model.name": model,
        "tasks": tasks,
        "seeds": seeds,
        "optimizers": split_list(optimizers),
        "steps": steps,
        "record_every": record_every,
        "task.ways": ways,
        "task.test_domain": test_domain,
        "batch_size": batch_size,
        "seed": seed,
        "init": init,
        "init_seed": init_seed,
        "workers": workers,
        "batch_runs": batch_runs,
        "shard": shard,
        "scheduler": scheduler,
        "task.data_root": data_root,
        "device": device,
        "repair": repair,
    }
    run_stage(CONFIG, LIBRARY, _progress(), _done, config, set_, flags, dry_run)


def _done(result: Any) -> None:
    _BAR.stop()
    log(
        f"[green]done[/]: {result.collected} run(s) collected, "
        f"{result.skipped} already complete, "
        f"{result.wall_time_s:.1f} s"
    )
    typer.echo(result.store)


_BAR = StageProgress()


def _progress() -> Callable[[Event], None]:
    """A progress callback rendering collect events on stderr: a bar over the pending runs with
    elapsed time and ETA (plain lines when stderr is not a terminal)."""
    bar = _BAR
    log = bar.log

    def on_event(e: Event) -> None:
        kind = e["event"]
        if kind == "device":
            log(f"device: {e['device']}")
        elif kind == "shared_init":
            log(f"drawing the shared θ₀ every run starts from (seed {e['seed']})")
        elif kind == "extractor":
            log(f"training the frozen feature extractor ({e['steps']} steps, source data only)")
        elif kind == "backbone":
            log(
                f"pretraining the frozen {e['backbone']} backbone of the lora model "
                f"({e['steps']} steps, source classes only)"
            )
        elif kind == "plan":
            log(
                f"{e['planned']} run(s) planned, {e['skipped']} already complete, "
                f"{e['pending']} to do"
            )
            if e["pending"]:
                bar.start("collect", e["pending"], info="runs")
        elif kind == "repaired":
            why = f" ({e['why']})" if e.get("why") and verbosity() >= 1 else ""
            log(f"repaired: {e['what']}{why}")
        elif kind == "run":
            bar.update(completed=e["done"])
        if verbosity() >= 1 and kind == "run":
            log(f"  {e['run_id']} {e['wall_s']:.2f} s")

    return on_event
