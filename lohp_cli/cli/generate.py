"""``lohp generate``: weights for tasks in N = T/k policy steps."""

from __future__ import annotations

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
    with_default,
)
from lohp_cli.cli.progress import StageProgress

GenerateSetOpt = set_option("batch_size=64")
CONFIG = "lohp_cli.config:GenerateConfig"
LIBRARY = "lohp_cli.stages.generate:generate"  # imported when the command runs (torch)


@command("generate")
def generate(
    policy: Annotated[str | None, typer.Option(help="Policy directory.")] = None,
    out: Annotated[
        str | None, typer.Option("--out", "-o", help="Output directory (.zarr).")
    ] = None,
    tasks: Annotated[
        str | None,
        typer.Option(
            help="target, target-hard, source, comma-separated task ids, or @FILE (few-shot "
            "families: source = meta-train episodes, target = meta-test episodes). "
            "\\[default: target]"
        ),
    ] = None,
    num_tasks: Annotated[
        int | None, typer.Option(help=with_default("How many tasks of a split.", 20))
    ] = None,
    samples: Annotated[
        int | None, typer.Option(help=with_default("Weight vectors per task.", 4))
    ] = None,
    mode: Annotated[str | None, typer.Option(help=with_default("mean or sample.", "mean"))] = None,
    sample_steps: Annotated[
        int | None,
        typer.Option(help="A diffusion policy's DDIM steps S (default: its sample_steps)."),
    ] = None,
    seed: SeedOpt = None,
    style: Annotated[
        str | None,
        typer.Option(help="Whose steps a policy with optimizer tokens imitates: sgd, adam, sam."),
    ] = None,
    save_paths: Annotated[
        bool, typer.Option("--save-paths", help="Also store every state [S, N+1, P].")
    ] = False,
    store: Annotated[
        str | None, typer.Option(help="The policy's trajectory store, if it moved.")
    ] = None,
    data_root: Annotated[str | None, typer.Option(help="Data set directory.")] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing output.")
    ] = False,
    update: Annotated[
        bool,
        typer.Option(
            "--update",
            help="Generate only the tasks an existing output lacks (same policy and settings), "
            "keep the others; nothing to do when no task is new (cron).",
        ),
    ] = False,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
    config: ConfigOpt = None,
    set_: GenerateSetOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Generate weights for tasks in N = T/k policy steps; prints the output path.

    An existing output is kept unless --overwrite; the output appears whole (temporary directory,
    lock, rename), so overlapping cron runs cannot corrupt it.
    """
    flags = {
        "policy": policy,
        "out": out,
        "tasks": tasks,
        "num_tasks": num_tasks,
        "samples": samples,
        "mode": mode,
        "sample_steps": sample_steps,
        "seed": seed,
        "style": style,
        "save_paths": True if save_paths else None,
        "store": store,
        "data_root": data_root,
        "overwrite": True if overwrite else None,
        "update": True if update else None,
        "device": device,
        "threads": threads,
    }
    run_stage(CONFIG, LIBRARY, _progress, _done, config, set_, flags, dry_run)


_BAR = StageProgress()


def _progress(e: Event) -> None:
    """generate's events on stderr: a bar over the samples generated, then the latency timing."""
    kind = e["event"]
    if kind == "info":
        _BAR.log(e["message"])
    elif kind == "start":
        _BAR.log(
            f"generating {e['samples']} sample(s) for {e['tasks']} task(s) in N = {e['N']} "
            f"steps on {e['device']}"
        )
        _BAR.start("generate", e["tasks"] * e["samples"], info="samples")
    elif kind == "batch":
        _BAR.update(completed=e["done"])
    elif kind == "timing":
        _BAR.stop()
        _BAR.log(f"timing the latency: {e['repeats']} generations of one task at batch size 1")


def _done(result: Any) -> None:
    _BAR.stop()
    if result.new_tasks == 0:
        log(f"[green]done[/]: {result.tasks} task(s), none new: {result.out} is up to date")
        typer.echo(result.out)
        return
    new = "" if result.new_tasks == result.tasks else f" ({result.new_tasks} new)"
    log(
        f"[green]done[/]: {result.tasks} task(s){new} × {result.samples} in "
        f"{result.wall_time_s:.1f} s; batched throughput {result.batched_ms_per_sample:.3f} "
        f"ms/sample on {result.device} (batch {result.batch_size}, warm-up excluded); latency "
        f"{result.latency_ms_batch1:.3f} ms per task (batch 1, median after warm-up; "
        "'lohp evaluate' times it again beside the baselines)"
    )
    typer.echo(result.out)
