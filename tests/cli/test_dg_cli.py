"""Domain generalization on the CLI: a held-out domain that does not exist, the erm baseline and
``lohp report-dg``, through CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.runner import flat, invoke, plain
from tests.unit.test_dg_report import report, write


def error_lines(output: str) -> list[str]:
    return [ln for ln in plain(output).splitlines() if ln.startswith("error:")]


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--test-domain", "90"], ["test_domain=90", "0, 15, 30, 45, 60, 75"]),
        (["--set", "task.test_domain=10"], ["test_domain=10", "rotated-fmnist"]),
        ([], ["needs task.test_domain"]),
    ],
)
def test_collect_with_a_bad_held_out_domain_is_one_line_exit_2(
    tmp_path: Path, args: list[str], names: list[str]
) -> None:
    out = tmp_path / "s.zarr"
    result = invoke("collect", "--family", "rotated-fmnist", *args, "--out", out)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    (line,) = error_lines(result.output)
    for name in names:
        assert name in line
    assert not out.exists()


def test_test_domain_on_a_family_without_domains_is_refused(tmp_path: Path) -> None:
    result = invoke("collect", "--family", "fmnist", "--test-domain", "15", "--dry-run")
    assert result.exit_code == 2
    (line,) = error_lines(result.output)
    assert "'fmnist' has no domains" in line


def test_collect_dry_run_resolves_the_held_out_domain() -> None:
    result = invoke("collect", "--family", "rotated-fmnist", "--test-domain", "45", "--dry-run")
    assert result.exit_code == 0, result.output
    task = json.loads(result.stdout)["task"]
    assert (task["family"], task["test_domain"]) == ("rotated-fmnist", 45)


def test_collect_help_names_the_flag() -> None:
    text = flat(invoke("collect", "--help").stdout)
    assert "--test-domain" in text and "rotated-fmnist" in text


def test_evaluate_accepts_the_erm_baseline() -> None:
    result = invoke("evaluate", "--baselines", "adam,erm,hypernetwork", "--dry-run")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["baselines"] == ["adam", "erm", "hypernetwork"]
    assert "erm (domain families)" in flat(invoke("evaluate", "--help").stdout)


def test_report_dg_merges_reports(tmp_path: Path) -> None:
    a = write(tmp_path / "dg-0", report(0, {"lo-hp (k=2)": 0.8, "erm": 0.7}))
    b = write(tmp_path / "dg-75", report(75, {"lo-hp (k=2)": 0.6, "erm": 0.5}))
    result = invoke("report-dg", b, a, "--out", tmp_path / "dg")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(tmp_path / "dg")
    text = " ".join(flat(result.stderr).replace("┃", " ").split())
    assert "method 0° 75° Avg" in text and "lo-hp (k=2) 80.0 ± 10.0 60.0 ± 10.0 70.0" in text
    md = (tmp_path / "dg" / "dg.md").read_text()
    assert "| erm | 70.0 ± 10.0 | 50.0 ± 10.0 | 60.0 |" in md


@pytest.mark.parametrize(
    ("reports", "code", "name"),
    [
        ({"dg-15": None}, 3, "does not exist"),
        ({"dg-15": 15, "dg-15b": 15}, 2, "both hold out domain 15"),
        ({"plain": "fmnist"}, 2, "has no held-out domain"),
    ],
)
def test_report_dg_errors_are_one_line(tmp_path: Path, reports: dict, code: int, name: str) -> None:
    dirs = []
    for d, domain in reports.items():
        if domain is None:
            dirs.append(str(tmp_path / d))
        elif domain == "fmnist":
            dirs.append(write(tmp_path / d, report(None, {"adam-200": 0.9}, "fmnist")))
        else:
            dirs.append(write(tmp_path / d, report(domain, {"adam-200": 0.9})))
    result = invoke("report-dg", *dirs, "--out", tmp_path / "dg")
    assert result.exit_code == code, result.output
    (line,) = error_lines(result.output)
    assert name in line and "Traceback" not in result.output
    assert not (tmp_path / "dg").exists()


def test_report_dg_needs_a_report() -> None:
    assert invoke("report-dg").exit_code == 2
