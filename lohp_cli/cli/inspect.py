"""``lohp inspect``: summarise (and with --verify, check) any lohp artifact: a trajectory store,
a generated store, a policy directory or an exported model."""

from __future__ import annotations

import json
from pathlib import Path
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


def artifact_kind(path: str) -> str:
    """Which artifact ``path`` is, from its metadata only: ``policy`` or ``exported`` (a
    directory with a config.json), ``generated`` (a Zarr group of schema lohp.generated), else
    ``store`` (a trajectory store, also any URL)."""
    p = Path(path)
    if "://" in path or not p.is_dir():
        return "store"
    for name, kind in (("config.json", "config"), ("zarr.json", "zarr")):
        try:
            data = json.loads((p / name).read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        if kind == "config":
            return "exported" if data.get("format") == "lohp.exported" else "policy"
        if (data.get("attributes") or {}).get("schema") == "lohp.generated":
            return "generated"
    return "store"


def _summarize(path: str, verify: bool) -> dict[str, Any]:
    kind = artifact_kind(path)
    if kind == "generated":
        from lohp_cli.store.generated import summarize_generated

        return summarize_generated(path, verify=verify)
    if kind == "policy":
        from lohp_cli.policy.summary import summarize_policy

        return summarize_policy(path, verify=verify)
    if kind == "exported":
        from lohp_cli.tasks.exported import inspect_exported

        return inspect_exported(path, verify=verify)
    from lohp_cli.store.summary import summarize_store

    return summarize_store(path, verify=verify)


@command("inspect")
def inspect(
    store: Annotated[
        str,
        typer.Argument(
            help="A trajectory store (path or fsspec URL), a generated store, a policy directory "
            "or a model directory of 'lohp export'.",
            metavar="ARTIFACT",
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Read and check everything: every complete run of a store, every array of a "
            "generated store, that a policy or an exported model loads.",
        ),
    ] = False,
) -> None:
    """Summarise a lohp artifact (human table, or --json); --verify exits 3 on damage.

    Reads trajectory stores, generated stores, policy directories and exported models alike.
    """
    summary = run_guarded(lambda: _summarize(store, verify))
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    elif summary.get("kind", "trajectory store") != "trajectory store":
        _print_fields(summary)
    else:
        _print_summary(summary)
    if verify and not summary["verified"]:
        for problem in summary["problems"]:
            err_console.print(
                f"[bold red]damaged:[/] {escape(problem)}", highlight=False, soft_wrap=True
            )
        first = escape(summary["problems"][0].rstrip("."))
        fix = {
            "generated store": "Make it again with 'lohp generate ... --overwrite'.",
            "policy": "Train it again with 'lohp train-policy' (it resumes from state/).",
            "exported model": "Export it again with 'lohp export ... --overwrite'.",
        }.get(
            summary.get("kind", ""),
            f"Repair the store with 'lohp collect --out {escape(store)} --repair' (it redoes "
            "damaged runs and conditions with the store's own settings).",
        )
        err_console.print(
            f"[bold red]error:[/] {len(summary['problems'])} problem(s) in '{escape(store)}', "
            f"first: {first}. {fix}",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(3)


def _print_fields(s: dict[str, Any]) -> None:
    """A two-column table of a summary's fields (generated stores, policies, exported models)."""
    from rich.table import Table

    t = Table(title=f"lohp {s['kind']}", show_header=False)
    for key, value in s.items():
        if key in ("kind", "problems") or value is None:
            continue
        text = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
        t.add_row(key, escape(text))
    Console().print(t)


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
