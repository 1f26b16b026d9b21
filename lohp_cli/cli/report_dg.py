"""``lohp report-dg``: merge evaluate reports, one per held-out domain, into DomainBed's table."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from lohp_cli.cli.common import command, err_console, run_guarded, verbosity


@command("report-dg")
def report_dg(
    reports: Annotated[
        list[str],
        typer.Argument(help="Report directories of 'lohp evaluate', one per held-out domain."),
    ],
    out: Annotated[
        str, typer.Option("--out", "-o", help="Directory for dg.json and dg.md.")
    ] = "reports/dg",
) -> None:
    """Merge domain-generalization reports into one table: methods × held-out domains + Avg.

    Each report must come from a domain family (rotated-fmnist) with its own task.test_domain.
    Writes dg.json and dg.md into --out; prints the table on stderr and --out on stdout.
    """
    from lohp_cli.report.dg import write_dg_table

    table = run_guarded(lambda: write_dg_table(reports, out))
    _show(table)
    typer.echo(table["out"])


def _show(t: dict[str, Any]) -> None:
    from rich.table import Table

    from lohp_cli.report.dg import markdown_dg

    if verbosity() < 0:
        return
    lines = [ln for ln in markdown_dg(t).splitlines() if ln.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    table = Table(title=f"{t['family']}: accuracy (%) on the held-out domain")
    for i, col in enumerate(head):
        table.add_column(col, justify="left" if i == 0 else "right")
    for ln in lines[2:]:
        table.add_row(*[c.strip() for c in ln.strip("|").split("|")])
    err_console.print(table)
