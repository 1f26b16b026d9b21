"""pipelines/cron/generate-new-tasks.sh: one output that gains the new tasks of a changed list
(the others kept byte for byte), skips when up to date, leaves no lock file of generate."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import zarr

from lohp_cli.config import TrainConfig
from lohp_cli.stages.collect import collect
from lohp_cli.stages.train import train_policy
from tests.conftest import tiny_config

SCRIPT = Path(__file__).resolve().parents[2] / "pipelines" / "cron" / "generate-new-tasks.sh"
pytestmark = [
    pytest.mark.skipif(shutil.which("flock") is None, reason="needs flock (util-linux)"),
    pytest.mark.slow,  # five subprocesses (about 35 s)
]


def test_cron_generates_once_per_task_list(tmp_path: Path) -> None:
    store, policy, out = tmp_path / "s.zarr", tmp_path / "p", tmp_path / "gen"
    collect(tiny_config(store))
    train_policy(
        TrainConfig.model_validate(
            {
                "store": str(store),
                "out": str(policy),
                "k": 2,
                "steps": 2,
                "policy": {"backbone": "mlp", "hidden": 8, "emb_dim": 8},
            }
        )
    )
    tasks = tmp_path / "tasks.txt"
    tasks.write_text("c0_1_2_3_4\nc5_6_7_8_9\n")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "lohp").write_text(f'#!/bin/sh\nexec {sys.executable} -m lohp_cli "$@"\n')
    (bindir / "lohp").chmod(0o755)
    env = {**os.environ, "LOHP": str(bindir / "lohp"), "SAMPLES": "1"}

    def run() -> str:
        p = subprocess.run(
            ["bash", str(SCRIPT), str(tasks), str(policy), str(out)],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert p.returncode == 0, p.stderr
        return p.stdout

    assert "wrote" in run()
    gen = out / "tasks.zarr"
    assert (out / "latest.zarr").resolve() == gen.resolve()
    first = zarr.open_group(str(gen), mode="r")
    before = {t: first[t]["weights"][:].tobytes() for t in first.attrs["tasks"]}
    assert "up to date" in run()
    # a held lock (a run still going) makes the next run skip instead of racing it
    with open(out / ".cron.lock", "w") as fh:
        import fcntl

        fcntl.flock(fh, fcntl.LOCK_EX)
        assert "skipping" in run()
    tasks.write_text("c0_1_2_3_4\nc5_6_7_8_9\nc9_8_7_6_5\n")  # one new task
    assert "wrote" in run()
    after = zarr.open_group(str(gen), mode="r")
    assert list(after.attrs["tasks"]) == ["c0_1_2_3_4", "c5_6_7_8_9", "c9_8_7_6_5"]
    assert all(after[t]["weights"][:].tobytes() == w for t, w in before.items())
    assert sorted(p.name for p in out.iterdir()) == [
        ".cron.lock", ".tasks.digest", "latest.zarr", "tasks.zarr",
    ]  # fmt: skip
