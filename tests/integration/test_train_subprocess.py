"""``lohp train-policy`` as real processes: end to end, kill -9 and resume, torchrun (DDP, gloo).

Every process runs with one intra-op thread (``OMP_NUM_THREADS=1``), so an interrupted and an
uninterrupted run do the same floating-point work and must end with bit-identical weights.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lohp_cli.checkpoint import state_dir
from lohp_cli.policy.directory import load_policy
from tests.conftest import make_linear_store

ENV = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "PYTHONUNBUFFERED": "1",
       "OMP_NUM_THREADS": "1"}  # fmt: skip
POLICY = ["--device", "cpu", "--k", "1", "--batch-size", "4", "--set", "policy.backbone=mlp",
          "--set", "policy.hidden=32", "--set", "policy.emb_dim=16"]  # fmt: skip


def lohp_cmd(*args: object) -> list[str]:
    return [sys.executable, "-m", "lohp_cli", *map(str, args)]


def run(cmd: list[str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, capture_output=True, text=True, env=ENV, timeout=timeout, check=False
    )


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc


def assert_same_weights(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), f"tensor {key!r} differs"


def metric_steps(out: Path) -> list[int]:
    """The steps of the training lines of metrics.jsonl (not the validation lines)."""
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [m["step"] for m in lines if "val_loss" not in m]


def checkpoint_step(out: Path) -> int:
    """The step of the policy's checkpoint in ``state/`` (-1: none yet, or being swapped)."""
    try:
        return int(json.loads((out / "state" / "trainer.json").read_text())["step"])
    except (OSError, ValueError, KeyError):
        return -1


def validation(out: Path) -> tuple[list[dict], dict | None]:
    """The validation lines of metrics.jsonl (without their times) and config.json's record."""
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    val = [{k: v for k, v in m.items() if k != "time_s"} for m in lines if "val_loss" in m]
    return val, json.loads((out / "config.json").read_text()).get("validation")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("subproc") / "lin.zarr"
    make_linear_store(path)
    return path


@pytest.mark.slow
def test_end_to_end_and_exit_codes(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "p"
    proc = ok(run(lohp_cmd("train-policy", "--store", store, "--out", out, "--steps", 3, *POLICY)))
    assert proc.stdout == f"{out}\n"
    assert "done: step 3, complete" in proc.stderr
    model, meta, stats = load_policy(out)
    assert meta.trained_steps == 3 and meta.provenance["argv"][1:3] == [
        "train-policy", "--store"
    ]  # fmt: skip
    proc = run(lohp_cmd("train-policy", "--store", tmp_path / "none.zarr", "--out", out))
    assert proc.returncode == 3 and proc.stdout == "" and "Traceback" not in proc.stderr
    assert "error:" in proc.stderr and "none.zarr" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--val-tasks", 2, "--val-every", 20, "--patience", 50]])
def test_kill_9_and_resume_equals_uninterrupted(store: Path, tmp_path: Path, extra: list) -> None:
    steps = 200
    args = ["--steps", steps, *POLICY, "--set", "checkpoint_every=10", "--set", "log_every=5",
            *extra]  # fmt: skip
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    ref = subprocess.Popen(
        lohp_cmd("train-policy", "--store", store, "--out", whole, *args),
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    victim = subprocess.Popen(
        lohp_cmd("train-policy", "--store", store, "--out", cut, *args),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        want = 30 if extra else 1  # with validation: past the validation at step 20
        deadline = time.monotonic() + 120
        while checkpoint_step(cut) < want and victim.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint to kill after"
            time.sleep(0.02)
        assert victim.poll() is None, "the run ended before it could be killed; raise --steps"
        os.kill(victim.pid, signal.SIGKILL)
        assert victim.wait(timeout=30) == -signal.SIGKILL
    finally:
        if victim.poll() is None:
            victim.kill()
    sdir = state_dir(cut)  # "state", or "state.old" when the kill cut the swap
    assert sdir is not None
    killed_at = json.loads((sdir / "trainer.json").read_text())["step"]
    assert want <= killed_at < steps
    proc = ok(run(lohp_cmd("train-policy", "--store", store, "--out", cut, *args)))
    assert "resuming from step" in proc.stderr and proc.stdout == f"{cut}\n"
    out, err = ref.communicate(timeout=180)
    assert ref.returncode == 0, err
    assert_same_weights(whole, cut)
    steps_logged = metric_steps(cut)
    assert steps_logged == sorted(set(steps_logged)) == list(range(5, steps + 1, 5))
    assert json.loads((cut / "config.json").read_text())["complete"] is True
    val_whole, val_cut = validation(whole), validation(cut)
    assert val_whole == val_cut  # the same validations, best step and score, stop reason
    if extra:  # model.safetensors (compared above) is the best; state/ the last weights
        assert [m["step"] for m in val_cut[0]] == list(range(20, steps + 1, 20))
        assert val_cut[1]["stop_reason"] == "steps"
        last = [load_file(str(d / "state" / "model.safetensors")) for d in (whole, cut)]
        assert all(torch.equal(last[0][k], last[1][k]) for k in last[0])


def torchrun() -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]


@pytest.mark.slow
def test_torchrun_two_processes(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    cmd = [*torchrun(), "--standalone", "--nproc-per-node", "2", "-m", "lohp_cli", "train-policy",
           "--store", str(store), "--out", str(out), "--steps", "4", *map(str, POLICY),
           "--set", "log_every=1"]  # fmt: skip
    proc = ok(run(cmd, timeout=300))
    assert proc.stdout.splitlines() == [str(out)], "only rank 0 prints the policy path"
    assert "world size 2" in proc.stderr
    model, meta, stats = load_policy(out)
    assert meta.trained_steps == 4 and meta.complete is True
    assert metric_steps(out) == [1, 2, 3, 4], "only rank 0 writes metrics"
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "metrics.jsonl", "model.safetensors", "normalization.safetensors", "state"
    ]  # fmt: skip
    with torch.no_grad():  # it generates: N + 1 finite states from s_0
        s0 = torch.randn(2, meta.param_count)
        traj = model.rollout(s0, 0, torch.zeros(2, meta.condition_dim))
    assert traj.shape == (2, meta.N + 1, meta.param_count) and torch.isfinite(traj).all()


@pytest.mark.slow
def test_torchrun_validation_stops_every_rank(store: Path, tmp_path: Path) -> None:
    """Rank 0's patience decision reaches rank 1: both stop at the same step (no hang)."""
    out = tmp_path / "ddp"
    cmd = [*torchrun(), "--standalone", "--nproc-per-node", "2", "-m", "lohp_cli", "train-policy",
           "--store", str(store), "--out", str(out), "--steps", "40", *map(str, POLICY),
           "--val-tasks", "2", "--patience", "1", "--lr", "0.05",
           "--set", "checkpoint_every=1"]  # fmt: skip
    proc = ok(run(cmd, timeout=300))
    v = json.loads((out / "config.json").read_text())["validation"]
    assert v["stop_reason"] == "patience" and v["last_step"] < 40
    assert proc.stdout.splitlines() == [str(out)]
    val = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in val if "val_loss" in m] == list(range(1, v["last_step"] + 1))
