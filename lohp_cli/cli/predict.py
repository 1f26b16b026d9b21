"""``lohp predict``: classify images with a model written by ``lohp export``; one JSON line per
image on stdout, a table on stderr."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.markup import escape

from lohp_cli.cli.common import (
    ThreadsOpt,
    command,
    err_console,
    log_info,
    run_stage,
    verbosity,
    with_default,
)

CONFIG = "lohp_cli.config:PredictConfig"
LIBRARY = "lohp_cli.stages.predict:predict"  # imported when the command runs (torch)


@command("predict")
def predict(
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="Image files (png, jpg, …), or .npy / .safetensors files of images "
            "[B, C, H, W] (uint8, or float in [0, 1]).",
            show_default=False,
            metavar="FILE",
        ),
    ],
    model: Annotated[
        str, typer.Option("--model", "-m", help="A directory written by 'lohp export'.")
    ],
    top: Annotated[
        int | None, typer.Option(help=with_default("Classes listed per image.", 1))
    ] = None,
    threads: ThreadsOpt = None,
) -> None:
    """Classify images with an exported model; prints one JSON line per image on stdout.

    Images are converted to the model's channels and resized to its input size; each line has
    the input, the label, its class and class name, its probability and the top classes.
    """
    flags = {"model": model, "inputs": inputs, "top": top, "threads": threads}
    run_stage(CONFIG, LIBRARY, log_info, _done, None, None, flags, False)


def _done(rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    for row in rows:
        typer.echo(json.dumps(row))
    if verbosity() >= 0 and rows:
        t = Table(title=f"{len(rows)} prediction(s)")
        for col in ("input", "label", "class", "probability"):
            t.add_column(col, justify="left" if col == "input" else "right")
        for row in rows:
            name = row["class_name"] if row["class_name"] is not None else row["class"]
            t.add_row(escape(row["input"]), str(row["label"]), escape(str(name)),
                      f"{row['probability']:.3f}")  # fmt: skip
        err_console.print(t)
