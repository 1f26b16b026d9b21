"""lohp evaluate: bad input gives one clean line and the right exit code."""

from __future__ import annotations

from pathlib import Path

import pytest
import zarr
from typer.testing import CliRunner

from lohp_cli.cli import app


def run(*args: str):
    return CliRunner().invoke(app, ["evaluate", *args])


def assert_clean(result, code: int, *names: str) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, result.output
    for name in names:
        assert name in errors[0]


def test_missing_generated_store(tmp_path: Path) -> None:
    assert_clean(
        run("--generated", str(tmp_path / "nope.zarr"), "--out", str(tmp_path / "r")),
        3,
        "nope.zarr",
        "lohp generate",
    )
    assert not (tmp_path / "r").exists()


def test_corrupt_generated_store(tmp_path: Path) -> None:
    g = tmp_path / "g.zarr"
    g.mkdir()
    (g / "zarr.json").write_text("{not json")
    assert_clean(run("--generated", str(g), "--out", str(tmp_path / "r")), 3, "g.zarr")


@pytest.mark.parametrize(
    ("attrs", "word"),
    [
        ({"schema": "other"}, "not a lohp generated"),
        ({"schema": "lohp.generated", "schema_version": 9}, "schema_version 9"),
    ],
)
def test_foreign_or_future_generated_store(tmp_path: Path, attrs: dict, word: str) -> None:
    g = tmp_path / "g.zarr"
    zarr.open_group(str(g), mode="w").attrs.update(attrs)
    assert_clean(run("--generated", str(g), "--out", str(tmp_path / "r")), 3, word)


def test_unknown_baseline(tmp_path: Path) -> None:
    assert_clean(run("--generated", str(tmp_path), "--baselines", "adam,rmsprop"), 2, "rmsprop")


def test_bad_policy_option(tmp_path: Path) -> None:
    assert_clean(run("--generated", str(tmp_path), "--policy", "nodir"), 2, "nodir")


def test_report_dir_that_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "report"
    f.write_text("keep")
    assert_clean(run("--generated", str(tmp_path / "g.zarr"), "--out", str(f)), 2, "is a file")
    assert f.read_text() == "keep"
