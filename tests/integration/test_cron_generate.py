"""pipelines/cron/generate-new-tasks.sh: writes once per task list, skips when up to date."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lohp_cli.collect import collect
from lohp_cli.config import TrainConfig
from lohp_cli.train import train_policy
from tests.conftest import tiny_config

SCRIPT = Path(__file__).resolve().parents[2] / "pipelines" / "cron" / "generate-new-tasks.sh"
pytestmark = pytest.mark.skipif(shutil.which("flock") is None, reason="needs flock (util-linux)")


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
    outputs = sorted(out.glob("tasks-*.zarr"))
    assert len(outputs) == 1 and (out / "latest.zarr").resolve() == outputs[0].resolve()
    assert "up to date" in run()
    # a held lock (a run still going) makes the next run skip instead of racing it
    with open(out / ".cron.lock", "w") as fh:
        import fcntl

        fcntl.flock(fh, fcntl.LOCK_EX)
        assert "skipping" in run()
    tasks.write_text("c9_8_7_6_5\n")
    assert "wrote" in run()
    assert len(list(out.glob("tasks-*.zarr"))) == 2
