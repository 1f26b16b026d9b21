"""``lohp inspect``: summarise (and with --verify, check) a trajectory store."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from lohp_cli.cli.common import command, err_console, run_guarded

SUMMARY_KEYS = (
    "schema",
    "schema_version",
    "layout",
    "family",
    "ways",
    "model",
    "param_count",
    "condition_dim",
    "steps",
    "record_every",
    "recorded_states",
    "init",
    "tasks",
    "complete_runs",
    "checksums",
    "dimension_names",
    "lossy",
    "created_at",
    "lohp_version",
)


@command("inspect")
def inspect(
    store: Annotated[str, typer.Argument(help="Trajectory store: path or fsspec URL.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
    verify: Annotated[
        bool, typer.Option("--verify", help="Read every complete run and check it.")
    ] = False,
) -> None:
    """Summarise a trajectory store (human table, or --json); --verify exits 3 on a bad run."""
    from lohp_cli.store.summary import summarize_store

    summary = run_guarded(lambda: summarize_store(store, verify=verify))
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        _print_summary(summary)
    if verify and not summary["verified"]:
        for problem in summary["problems"]:
            err_console.print(
                f"[bold red]damaged:[/] {escape(problem)}", highlight=False, soft_wrap=True
            )
        first = escape(summary["problems"][0].rstrip("."))
        err_console.print(
            f"[bold red]error:[/] {len(summary['problems'])} problem(s) in '{escape(store)}', "
            f"first: {first}. Repair the store with 'lohp collect --out {escape(store)} --repair' "
            "(it redoes damaged runs and conditions with the store's own settings).",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(3)


def _print_summary(s: dict[str, Any]) -> None:
    from rich.table import Table

    out = Console()
    t = Table(title=f"lohp store {s['store']}", show_header=False)
    for key in SUMMARY_KEYS:
        t.add_row(key, str(s[key]))
        if key == "ways" and s.get("test_domain") is not None:
            t.add_row("test_domain (held out)", str(s["test_domain"]))
    if s["bytes_on_disk"] is not None:
        t.add_row("bytes_on_disk", f"{s['bytes_on_disk']:,}")
    for codec, n in s["weight_codecs"].items():
        t.add_row("weights codec", f"{codec} ({n} run{'s' * (n != 1)})")
    if s["compression_ratio"]:
        t.add_row("weights compression", f"{s['compression_ratio']:.2f}× vs raw float32")
    out.print(t)
    r = Table(title="runs by optimizer and status")
    statuses = sorted({st for v in s["runs"].values() for st in v})
    r.add_column("optimizer")
    for st in statuses:
        r.add_column(st, justify="right")
    if "final_train_acc" in s:
        r.add_column("final train acc", justify="right")
    for opt, counts in sorted(s["runs"].items()):
        row = [opt, *(str(counts.get(st, 0)) for st in statuses)]
        if "final_train_acc" in s:
            row.append(str(s["final_train_acc"].get(opt, "-")))
        r.add_row(*row)
    out.print(r)
