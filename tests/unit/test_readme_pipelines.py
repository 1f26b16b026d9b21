"""What the README promises of its commands: every `make -C pipelines TARGET` it names exists and
is listed by `make help` with its time, the pipelines print absolute paths, every kept report
under docs/results names the command that made it, and reading a store without lohp as the
README shows raises no warning."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lohp_cli.stages.collect import collect
from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def _help() -> dict[str, str]:
    out = subprocess.run(
        ["make", "-s", "-C", str(ROOT / "pipelines"), "help"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    rows = [ln.split(None, 1) for ln in out.splitlines() if ln.startswith("  ")]
    return {r[0]: r[1] if len(r) > 1 else "" for r in rows}


@needs_make
def test_every_make_target_the_readme_names_is_listed_with_its_time() -> None:
    listed = _help()
    named = set(re.findall(r"make -C pipelines ([a-z0-9-]+)", README))
    assert named, "the README names no make target"
    missing = sorted(named - set(listed))
    assert not missing, f"README names targets make help does not list: {missing}"
    untimed = [t for t, say in listed.items() if t not in ("help", "results", "bench-train-gpu")
               and not re.search(r"[\d½]+ ?(min|h)\b", say)]  # fmt: skip
    assert not untimed, f"targets without a time in make help: {untimed}"


@needs_make
def test_the_main_job_prints_absolute_paths() -> None:
    out = subprocess.run(
        ["make", "-n", "-C", str(ROOT / "pipelines"), "main", "RUNS=../runs", "LOHP=lohp"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    outs = re.findall(r"--out (\S+)", out)
    assert outs and all(Path(p).is_absolute() for p in outs), outs
    assert re.search(r'echo "report: /\S+/reports/fmnist-k2/report.md"', out)


def test_every_kept_report_names_its_command() -> None:
    kept = sorted((ROOT / "docs" / "results").glob("*.md"))
    assert kept
    for path in kept:
        head = "\n".join(path.read_text().splitlines()[:8])
        assert re.search(r"make -C pipelines [a-z0-9-]+", head), f"{path.name} names no command"


@pytest.mark.slow  # a fresh interpreter: zarr and xarray without lohp's warning filters (≈ 6 s)
def test_the_readmes_plain_read_raises_no_warning(tmp_path: Path) -> None:
    pytest.importorskip("xarray")
    store = tmp_path / "runs" / "fmnist.zarr"
    collect(tiny_config(store))
    block = README.split("## Store schema", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    assert "consolidated=False" in block and "filterwarnings" in block
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", block + "\nprint(w.shape)"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith("(")
