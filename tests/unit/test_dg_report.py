"""The domain-generalization table (lohp_cli/report/dg.py): reports merged as DomainBed prints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lohp_cli.artifacts.report import ReportMeta, read_report_meta
from lohp_cli.errors import ConfigError, DataError
from lohp_cli.report.dg import dg_table, markdown_dg, read_report, write_dg_table


def meta(reports: dict[str, dict]) -> dict[str, ReportMeta]:
    return {where: read_report_meta(r, where) for where, r in reports.items()}


def report(domain: int | None, accs: dict[str, float], family: str = "rotated-fmnist") -> dict:
    """A minimal report.json: one row per method (std 0.1 each), 2 tasks × 2 samples."""
    methods = [
        {"name": n, "kind": "optimizer" if n.startswith("adam") else "policy", "acc_mean": a,
         "acc_std": 0.1, "n": 4}
        for n, a in accs.items()
    ]  # fmt: skip
    return {"schema": "lohp.report", "schema_version": 1, "family": family, "model": "head",
            "test_domain": domain, "tasks": ["a", "b"], "samples_per_task": 2,
            "methods": methods}  # fmt: skip


def write(directory: Path, r: dict[str, Any]) -> str:
    directory.mkdir(parents=True)
    (directory / "report.json").write_text(json.dumps(r))
    return str(directory)


def test_table_known_answer() -> None:
    t = dg_table(
        meta(
            {
                "r75": report(75, {"lo-hp (k=2)": 0.70, "erm": 0.60, "adam-200": 0.90}),
                "r0": report(0, {"lo-hp (k=2)": 0.80, "erm": 0.85}),
            }
        )
    )
    assert t["domains"] == [0, 75]  # sorted by angle, whatever the order given
    assert t["reports"] == {"0": "r0", "75": "r75"}
    rows = {r["name"]: r for r in t["rows"]}
    assert list(rows) == ["lo-hp (k=2)", "erm", "adam-200"]  # first report's order, then new
    assert rows["lo-hp (k=2)"]["avg"] == 0.75 and rows["erm"]["avg"] == 0.725
    assert rows["adam-200"]["cells"]["0"] is None and rows["adam-200"]["avg"] is None
    assert rows["erm"]["cells"]["75"] == {"acc_mean": 0.6, "acc_std": 0.1, "n": 4}
    md = markdown_dg(t)
    assert "| method | 0° | 75° | Avg |" in md and "|---|---|---|---|" in md
    assert "| lo-hp (k=2) | 80.0 ± 10.0 | 70.0 ± 10.0 | 75.0 |" in md
    assert "| erm | 85.0 ± 10.0 | 60.0 ± 10.0 | 72.5 |" in md
    assert "| adam-200 | – | 90.0 ± 10.0 | – |" in md


@pytest.mark.parametrize(
    ("reports", "match"),
    [
        ({}, "No reports"),
        ({"a": report(None, {"x": 1.0}, "fmnist")}, "'a' has no held-out domain.*'fmnist'"),
        ({"a": report(15, {"x": 1.0}), "b": report(15, {"x": 1.0})}, "both hold out domain 15"),
        (
            {"a": report(15, {"x": 1.0}), "b": report(30, {"x": 1.0}, "other")},
            "different task families",
        ),
    ],
)
def test_table_refuses(reports: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        dg_table(meta(reports))


def test_read_report_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist.*lohp evaluate --out"):
        read_report(tmp_path / "none")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "report.json").write_text("{not json")
    with pytest.raises(DataError, match="Cannot read"):
        read_report(tmp_path / "bad")
    write(tmp_path / "other", {"schema": "lohp.l2o-report"})
    with pytest.raises(DataError, match="not a lohp evaluate report"):
        read_report(tmp_path / "other")


def test_write_dg_table(tmp_path: Path) -> None:
    dirs = [write(tmp_path / f"r{d}", report(d, {"erm": 0.5 + d / 1000})) for d in (45, 0)]
    out = write_dg_table(dirs, tmp_path / "dg")
    assert out["out"] == str(tmp_path / "dg") and out["domains"] == [0, 45]
    saved = json.loads((tmp_path / "dg" / "dg.json").read_text())
    assert saved["schema"] == "lohp.dg-table" and saved["rows"][0]["avg"] == 0.5225
    assert (tmp_path / "dg" / "dg.md").read_text() == markdown_dg(saved)
    (tmp_path / "file").write_text("keep")
    with pytest.raises(ConfigError, match="is a file"):
        write_dg_table(dirs, tmp_path / "file")


def drop(key: str) -> Any:
    return lambda r: r.pop(key)


def method_field(**values: Any) -> Any:
    return lambda r: r["methods"][0].update(values)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (drop("family"), "family"),  # KeyError: 'family' (exit 1) before
        (drop("methods"), "methods"),  # KeyError: 'methods'
        (lambda r: r.update(family=["rotated-fmnist"]), "family"),  # unhashable type: 'list'
        (lambda r: r.update(methods={"erm": 1}), "methods"),
        (lambda r: r.update(test_domain="15"), "test_domain"),
        (lambda r: r.update(tasks=3), "tasks"),
        (lambda r: r.update(samples_per_task=None), "samples_per_task"),
        (method_field(name=["erm"]), "methods.0.name"),
        (method_field(acc_mean="high"), "methods.0.acc_mean"),
        (lambda r: r["methods"][0].pop("acc_std"), "methods.0.acc_std"),
        (lambda r: r.update(schema_version=99), "schema_version 99"),
    ],
)
def test_a_report_with_missing_or_mistyped_fields_is_named(
    tmp_path: Path, change: Any, field: str
) -> None:
    """report.json is validated where report-dg reads it: a DataError (exit 3) naming the field,
    never a KeyError or TypeError (exit 1)."""
    r = report(15, {"erm": 0.5})
    change(r)
    d = write(tmp_path / "r", r)
    with pytest.raises(DataError, match=field.replace(".", r"\.")) as err:
        write_dg_table([d, write(tmp_path / "r0", report(0, {"erm": 0.6}))], tmp_path / "dg")
    assert str(tmp_path / "r" / "report.json") in str(err.value)
    assert not (tmp_path / "dg").exists()
