"""The domain-generalization table: several ``evaluate`` reports, one per held-out domain of a
domain family (``report.json`` with ``test_domain``), merged into one table as DomainBed prints
it: a row per method, a column per held-out domain, and their average (``Avg``).

A cell is the method's accuracy on that domain's held-out tasks in percent, mean ± std over
tasks × samples (the report's ``acc_mean`` and ``acc_std``). ``Avg`` is the mean of the domain
means, given only when the method has a cell in every domain (DomainBed prints X otherwise; here
"–"). Rows come in the order of the first report that has them. Written as ``dg.json`` and
``dg.md`` (docs/domains.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from lohp_cli.artifacts.report import ReportMeta, read_report_meta
from lohp_cli.checkpoint import atomic_write_bytes, atomic_write_json
from lohp_cli.errors import ConfigError, DataError

DG_SCHEMA = "lohp.dg-table"
DG_VERSION = 1


def read_report(directory: str | Path) -> ReportMeta:
    """``report.json`` of an evaluate report directory, validated; a DataError naming what is
    wrong (a missing file, JSON that does not parse, a missing or mistyped field)."""
    path = Path(directory) / "report.json"
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(
            f"'{path}' does not exist; make the report with 'lohp evaluate --out {directory}'."
        ) from None
    except (OSError, ValueError) as exc:
        raise DataError(f"Cannot read '{path}': {exc}.") from None
    return read_report_meta(report, str(path))


def dg_table(reports: dict[str, ReportMeta]) -> dict[str, Any]:
    """The merged table of ``{report directory: report.json}``, one report per held-out domain.

    Refuses (ConfigError) a report without a held-out domain, reports of different families,
    and two reports of one held-out domain.
    """
    if not reports:
        raise ConfigError("No reports to merge; pass one report directory per held-out domain.")
    by_domain: dict[int, tuple[str, ReportMeta]] = {}
    families = {r.family for r in reports.values()}
    if len(families) > 1:
        raise ConfigError(
            f"The reports are of different task families ({', '.join(sorted(families))}); merge "
            "reports of one domain family."
        )
    for where, r in reports.items():
        domain = r.test_domain
        if domain is None:
            raise ConfigError(
                f"Report '{where}' has no held-out domain (family '{r.family}'); the table "
                "merges reports of a domain family such as rotated-fmnist, one per "
                "task.test_domain."
            )
        if domain in by_domain:
            raise ConfigError(
                f"Reports '{by_domain[domain][0]}' and '{where}' both hold out domain {domain}; "
                "pass one report per held-out domain."
            )
        by_domain[domain] = (where, r)
    domains = sorted(by_domain)
    names: dict[str, str] = {}  # method name -> kind, in order of first appearance
    for d in domains:
        for m in by_domain[d][1].methods:
            names.setdefault(m.name, m.kind)
    rows = []
    for name, kind in names.items():
        cells: dict[str, dict[str, Any] | None] = {}
        for d in domains:
            m = next((m for m in by_domain[d][1].methods if m.name == name), None)
            scored = m is not None and m.acc_mean is not None  # not a not-applicable row
            cells[str(d)] = m.model_dump(include={"acc_mean", "acc_std", "n"}) if scored else None
        means = [c["acc_mean"] for c in cells.values() if c is not None]
        avg = round(float(np.mean(means)), 4) if len(means) == len(domains) else None
        rows.append({"name": name, "kind": kind, "cells": cells, "avg": avg})
    first = by_domain[domains[0]][1]
    return {
        "schema": DG_SCHEMA,
        "schema_version": DG_VERSION,
        "family": first.family,
        "model": first.model,
        "domains": domains,
        "reports": {str(d): by_domain[d][0] for d in domains},
        "tasks": {str(d): len(by_domain[d][1].tasks) for d in domains},
        "samples_per_task": {str(d): by_domain[d][1].samples_per_task for d in domains},
        "rows": rows,
    }


def _cell(c: dict[str, Any] | None) -> str:
    return "–" if c is None else f"{100 * c['acc_mean']:.1f} ± {100 * c['acc_std']:.1f}"


def markdown_dg(t: dict[str, Any]) -> str:
    """The table as Markdown, DomainBed's layout: methods × held-out domains, then Avg."""
    head = [f"{d}°" for d in t["domains"]]
    tasks = ", ".join(
        f"{d}°: {t['tasks'][str(d)]} × {t['samples_per_task'][str(d)]}" for d in t["domains"]
    )
    lines = [
        f"# Domain generalization: {t['family']} / {t['model']}",
        "",
        "Test accuracy (%) on the held-out domain (column), mean ± std over held-out tasks × "
        f"samples (tasks × samples per domain: {tasks}); Avg: the mean over the domains.",
        "",
        "| method | " + " | ".join(head) + " | Avg |",
        "|---|" + "---|" * (len(head) + 1),
    ]
    for r in t["rows"]:
        cells = [_cell(r["cells"][str(d)]) for d in t["domains"]]
        avg = "–" if r["avg"] is None else f"{100 * r['avg']:.1f}"
        lines.append(f"| {r['name']} | " + " | ".join(cells) + f" | {avg} |")
    return "\n".join(lines) + "\n"


def write_dg_table(report_dirs: list[str], out: str | Path) -> dict[str, Any]:
    """Merge the reports in ``report_dirs`` and write ``dg.json`` and ``dg.md`` into ``out``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"Output directory '{out}' is a file; choose another --out.")
    table = dg_table({d: read_report(d) for d in report_dirs})
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "dg.json", table)
    atomic_write_bytes(out / "dg.md", markdown_dg(table).encode())
    return {**table, "out": str(out)}
