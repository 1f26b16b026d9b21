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
    SetOpt,
    command,
    log,
    run_stage,
)

CONFIG = "lohp_cli.config:GenerateConfig"
LIBRARY = "lohp_cli.generate:generate"  # imported when the command runs (torch)


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
            "families: source = meta-train episodes, target = meta-test episodes)."
        ),
    ] = None,
    num_tasks: Annotated[int | None, typer.Option(help="How many tasks of a split.")] = None,
    samples: Annotated[int | None, typer.Option(help="Weight vectors per task.")] = None,
    mode: Annotated[str | None, typer.Option(help="mean or sample.")] = None,
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
    device: DeviceOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
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
        "device": device,
    }
    run_stage(CONFIG, LIBRARY, _progress, _done, config, set_, flags, dry_run)


def _progress(e: Event) -> None:
    if e["event"] == "start":
        log(
            f"generating {e['samples']} sample(s) for {e['tasks']} task(s) in N = {e['N']} "
            f"steps on {e['device']}"
        )


def _done(result: Any) -> None:
    log(
        f"[green]done[/]: {result.tasks} task(s) × {result.samples} in "
        f"{result.wall_time_s:.1f} s; batched throughput {result.batched_ms_per_sample:.3f} "
        f"ms/sample on {result.device} (batch {result.batch_size}, warm-up excluded); latency "
        f"{result.latency_ms_batch1:.3f} ms per task (batch 1, after warm-up)"
    )
    typer.echo(result.out)
