"""``lohp export``: generated weights as models that run without lohp (one directory per task)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from lohp_cli.cli.common import (
    ConfigOpt,
    DryRunOpt,
    Event,
    ThreadsOpt,
    command,
    log,
    run_stage,
    set_option,
    split_list,
    with_default,
)
from lohp_cli.cli.progress import StageProgress

CONFIG = "lohp_cli.config:ExportConfig"
LIBRARY = "lohp_cli.stages.export:export"  # imported when the command runs (torch)
ExportSetOpt = set_option("sample=1")


@command("export")
def export(
    generated: Annotated[str | None, typer.Option(help="Output of 'lohp generate'.")] = None,
    out: Annotated[
        str | None,
        typer.Option(
            "--out", "-o", help=with_default("Directory getting one directory per task.", "models")
        ),
    ] = None,
    tasks: Annotated[
        str | None,
        typer.Option(help="Comma-separated task ids of the generated store (default: every task)."),
    ] = None,
    sample: Annotated[
        int | None, typer.Option(help=with_default("Which generated sample of each task.", 0))
    ] = None,
    program: Annotated[
        bool | None,
        typer.Option(
            "--program/--no-program",
            help="Also write model.pt2, a torch.export program that loads with torch alone "
            "\\[default: program]",
        ),
    ] = None,
    store: Annotated[
        str | None, typer.Option(help="The policy's trajectory store, if it moved.")
    ] = None,
    data_root: Annotated[str | None, typer.Option(help="Data set directory.")] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace existing model directories.")
    ] = False,
    threads: ThreadsOpt = None,
    config: ConfigOpt = None,
    set_: ExportSetOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Export generated weights as self-contained models; prints each model directory.

    Each task's directory holds model.safetensors (the target network with the task's generated
    weights, the store's frozen parts and the input standardisation), model.pt2 (the same as a
    torch.export program: torch.export.load("model.pt2").module()(images)), config.json (classes,
    input, source) and a README.md. 'lohp predict --model DIR IMAGES' classifies images with it.
    """
    flags = {
        "generated": generated,
        "out": out,
        "tasks": split_list(tasks),
        "sample": sample,
        "program": program,
        "store": store,
        "data_root": data_root,
        "overwrite": True if overwrite else None,
        "threads": threads,
    }
    run_stage(CONFIG, LIBRARY, _progress, _done, config, set_, flags, dry_run)


_BAR = StageProgress()


def _progress(e: Event) -> None:
    if e["event"] == "start":
        _BAR.start("export", e["tasks"], info="models")
    elif e["event"] == "model":
        _BAR.update(completed=e["done"], info=e["task"])


def _done(result: Any) -> None:
    _BAR.stop()
    log(f"[green]done[/]: {len(result.models)} model(s) in {result.wall_time_s:.1f} s")
    for path in result.models:
        typer.echo(path)
