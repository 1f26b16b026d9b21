"""The training skeleton's loop (lohp_cli/policy/skeleton.py), with a fake step: which steps log,
which checkpoint, where a stop asked after a step ends the run, and a finished run's rerun."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import torch

from lohp_cli.checkpoint import read_metrics
from lohp_cli.policy.skeleton import TrainingRun


def run_of(tmp_path: Path, **cfg: object) -> TrainingRun:
    settings = {"steps": 5, "log_every": 2, "checkpoint_every": 2, "max_minutes": None, **cfg}
    return TrainingRun(SimpleNamespace(**settings), tmp_path, lambda _e: None, time.perf_counter())


def fake_step(step: int) -> tuple[float, dict[str, object]]:
    return float(step), {"loss": float(step), "grad_norm": torch.tensor(2.0 * step)}


def test_loop_logs_checkpoints_and_completes(tmp_path: Path) -> None:
    run, written = run_of(tmp_path), []
    step, last, stop = run.loop(fake_step, lambda s, done: written.append((s, done)))
    assert (step, last, stop) == (5, 4.0, False)
    assert written == [(2, False), (4, False), (5, True)]  # every 2 steps and at the end
    lines = read_metrics(tmp_path / "metrics.jsonl")
    assert [m["step"] for m in lines] == [2, 4, 5]
    assert [m["grad_norm"] for m in lines] == [2.0, 6.0, 8.0]  # tensors logged as floats
    run.finish(step, lambda s, done: written.append((s, done)))
    assert len(written) == 3  # it took steps: nothing more to write


def test_a_stop_after_a_step_ends_the_run_there(tmp_path: Path) -> None:
    run, written = run_of(tmp_path), []
    step, _, stop = run.loop(fake_step, lambda s, d: written.append(s), lambda s: s == 3)
    assert (step, stop) == (3, True) and written == [2]
    assert run_of(tmp_path).loop(fake_step, lambda s, d: None, stopped=True)[:1] == (0,)


def test_a_finished_run_writes_only_a_missing_model(tmp_path: Path) -> None:
    run, written = run_of(tmp_path, steps=0), []
    step, last, _ = run.loop(fake_step, lambda s, d: None)
    run.finish(step, lambda s, done: written.append((s, done)))
    assert (step, last, written) == (0, None, [(0, True)])
    (tmp_path / "model.safetensors").write_bytes(b"")
    run.finish(step, lambda s, done: written.append((s, done)))
    assert written == [(0, True)]


def test_the_deadline_checkpoints_and_stops(tmp_path: Path) -> None:
    run, written = run_of(tmp_path, max_minutes=1e-9, checkpoint_every=100), []
    step, _, _ = run.loop(fake_step, lambda s, done: written.append((s, done)))
    assert step == 1 and written == [(1, False)]
    assert run.result(step, False, 0.0).to_json()["step"] == 1
