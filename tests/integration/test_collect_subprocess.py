"""``lohp collect`` / ``lohp inspect`` as real processes: end to end, kill -9 and resume, workers,
shards, ``file://`` stores and real Fashion-MNIST.

Stores are compared through a plain ``zarr.open_group`` (what the schema promises any reader):
same run ids, same task conditions, and bit-identical arrays in every run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import needs_fmnist, plain_runs

ENV = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"}
SMALL = {"task.train_per_class": 30, "task.test_per_class": 10, "task.support_per_class": 5}
SMALL_SETS = [a for k, v in SMALL.items() for a in ("--set", f"{k}={v}")]
# 2 tasks × 1 seed × 3 optimizers = 6 runs of 20 steps; a second or two of work
TINY_ARGS = [
    "--family", "digits", "--model", "mlp", "--tasks", "2", "--seeds", "1",
    "--steps", "20", "--record-every", "5", "--batch-size", "16", "--set", "model.hidden=8",
    *SMALL_SETS,
]  # fmt: skip
TINY_RUNS = 6
RUN_ARRAYS = ("weights", "loss", "train_acc")
RUN_LOG = re.compile(r"^\s+(c[\d_]+-(?:sgd|adam|sam)-s\d+) [\d.]+ s$")


def lohp_cmd(*args: object) -> list[str]:
    return [sys.executable, "-m", "lohp_cli", *map(str, args)]


def lohp(*args: object, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        lohp_cmd(*args), capture_output=True, text=True, env=ENV, timeout=timeout, check=False
    )


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc


def read_store(path: Path) -> dict[str, Any]:
    """Everything two equal stores must share, read with plain zarr."""
    import zarr

    g = zarr.open_group(zarr.storage.LocalStore(path), mode="r")
    root = dict(g.attrs)
    runs = {}
    for rid, run in plain_runs(path).items():  # each run's row of its block
        attrs = dict(run["attrs"])
        attrs.pop("wall_time_s", None)
        runs[rid] = {"attrs": attrs, **{n: np.asarray(run[n]) for n in RUN_ARRAYS}}
    tasks = {
        tid: {"attrs": dict(tg.attrs), "condition": np.asarray(tg["condition"][...])}
        for tid, tg in g["tasks"].groups()
    }
    keep = ("schema", "schema_version", "compat", "layout", "param_count", "condition_dim")
    return {"root": {k: root.get(k) for k in keep}, "runs": runs, "tasks": tasks,
            "theta0": read_theta0(path)}  # fmt: skip


def read_theta0(path: Path) -> np.ndarray | None:
    """The shared θ₀ of a store (None for per-run initialisation), read with plain zarr; it
    reads no run, so a store killed in the middle of creating one reads too."""
    import zarr

    g = zarr.open_group(zarr.storage.LocalStore(path), mode="r")
    return np.asarray(g["init"]["theta0"][...]) if "init" in g else None


def assert_same_store(got: Path, want: Path) -> None:
    a, b = read_store(got), read_store(want)
    assert a["root"] == b["root"]
    assert (a["theta0"] is None) == (b["theta0"] is None)
    if b["theta0"] is not None:
        assert np.array_equal(a["theta0"], b["theta0"]), "the shared θ₀ differs"
        for rid, run in a["runs"].items():  # every run starts from it, bit for bit
            assert run["weights"][0].tobytes() == a["theta0"].tobytes(), rid
    assert sorted(a["tasks"]) == sorted(b["tasks"])
    for tid, task in b["tasks"].items():
        assert a["tasks"][tid]["attrs"] == task["attrs"], tid
        assert np.array_equal(a["tasks"][tid]["condition"], task["condition"]), tid
    assert sorted(a["runs"]) == sorted(b["runs"])
    for rid, run in b["runs"].items():
        assert a["runs"][rid]["attrs"] == run["attrs"], rid
        assert a["runs"][rid]["attrs"]["status"] == "complete", rid
        for name in RUN_ARRAYS:
            x, y = a["runs"][rid][name], run[name]
            assert x.dtype == y.dtype and x.shape == y.shape, (rid, name)
            assert np.isfinite(y).all(), (rid, name)
            assert np.array_equal(x, y), f"{rid}/{name} differs"


def statuses(path: Path) -> dict[str, str | None]:
    import zarr

    blocks = zarr.open_group(zarr.storage.LocalStore(path), mode="r")["blocks"]
    out: dict[str, str | None] = {}
    for bid in blocks.group_keys():
        try:
            doc = blocks[bid].attrs["block"]
        except Exception:  # noqa: BLE001 - a block whose metadata the kill cut short
            continue
        for rid, attrs in zip(doc["runs"], doc["attrs"], strict=True):
            out[rid] = attrs.get("status")
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The TINY command, one worker, no shard: the store every variant must reproduce."""
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    proc = ok(lohp("collect", *TINY_ARGS, "--out", out))
    return out, proc.stdout


@pytest.mark.slow
def test_collect_then_inspect_verify(reference: tuple[Path, str]) -> None:
    out, stdout = reference
    assert stdout == f"{out}\n"
    summary = json.loads(ok(lohp("inspect", out, "--json", "--verify")).stdout)
    assert summary["verified"] is True and summary["problems"] == []
    assert summary["complete_runs"] == TINY_RUNS
    assert summary["tasks"] == 2
    assert summary["runs"] == {o: {"complete": 2} for o in ("sgd", "adam", "sam")}
    assert summary["param_count"] == 64 * 8 + 8 + 8 * 5 + 5  # 8×8 digits → 8 hidden → 5 ways
    assert summary["recorded_states"] == 20 // 5 + 1
    assert set(summary["final_train_acc"]) == {"sgd", "adam", "sam"}


@pytest.mark.slow
def test_workers_2_equals_workers_1(reference: tuple[Path, str], tmp_path: Path) -> None:
    out = tmp_path / "w2.zarr"
    proc = ok(lohp("collect", *TINY_ARGS, "--workers", "2", "--out", out))
    assert proc.stdout == f"{out}\n"
    assert_same_store(out, reference[0])


@pytest.mark.slow
def test_two_shards_equal_unsharded(reference: tuple[Path, str], tmp_path: Path) -> None:
    out = tmp_path / "sharded.zarr"
    ok(lohp("collect", *TINY_ARGS, "--shard", "0/2", "--out", out))
    first = statuses(out)
    assert sorted(first.values()) == ["complete"] * (TINY_RUNS // 2)
    ok(lohp("collect", *TINY_ARGS, "--shard", "1/2", "--out", out))
    assert set(first) < set(statuses(out))
    assert_same_store(out, reference[0])


def test_file_url_store(reference: tuple[Path, str], tmp_path: Path) -> None:
    path = tmp_path / "via-url.zarr"
    url = path.as_uri()
    assert url.startswith("file:///")
    proc = ok(lohp("collect", *TINY_ARGS, "--out", url))
    assert proc.stdout == f"{url}\n"
    assert (path / "zarr.json").is_file()
    from lohp_cli.store.summary import summarize_store  # what `lohp inspect URL` calls

    summary = summarize_store(url, verify=True)
    assert summary["complete_runs"] == TINY_RUNS and summary["verified"] is True
    assert summary["bytes_on_disk"] and summary["bytes_on_disk"] > 0  # seen as a local store
    assert_same_store(path, reference[0])


# ---- kill -9 and resume -------------------------------------------------------------------------
# 4 tasks × 3 optimizers = 12 runs of 400 steps: about 0.2–0.4 s each after a few seconds of setup
KILL_ARGS = [
    "-v", "collect", "--family", "digits", "--model", "mlp", "--tasks", "4", "--seeds", "1",
    "--steps", "400", "--record-every", "10", "--batch-size", "16", "--set", "model.hidden=8",
    *SMALL_SETS,
]  # fmt: skip
KILL_RUNS = 12
KILL_STATES = 400 // 10 + 1


@pytest.mark.slow
@pytest.mark.parametrize("init", ["per_run", "shared"])
def test_kill_9_then_resume_equals_uninterrupted(tmp_path: Path, init: str) -> None:
    """With ``--init shared`` the resumed store also keeps the θ₀ saved before the kill (and its
    runs start from it), exactly as the uninterrupted one."""
    from lohp_cli.store.summary import summarize_store

    killed, whole = tmp_path / "killed.zarr", tmp_path / "whole.zarr"
    args = [*KILL_ARGS, "--init", init]
    # the uninterrupted reference runs meanwhile (one torch thread each; the machine has 2 cores)
    with open(tmp_path / "whole.log", "w") as log:
        ref = subprocess.Popen(
            lohp_cmd(*args, "--out", whole), stdout=log, stderr=log, text=True, env=ENV
        )
    proc = subprocess.Popen(
        lohp_cmd(*args, "--out", killed),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    finished: list[str] = []
    deadline = time.monotonic() + 120
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            m = RUN_LOG.match(line.rstrip("\n"))
            if m:
                finished.append(m.group(1))
            if len(finished) >= 2 or time.monotonic() > deadline:
                break
        time.sleep(0.1)  # most likely in the middle of the third run
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "collect finished before it could be killed"
    assert len(finished) >= 2, "no run was logged as finished before the kill"

    # after the kill: every run marked complete is whole; partial runs are not marked complete
    after = statuses(killed)
    complete = sorted(r for r, s in after.items() if s == "complete")
    assert set(finished) <= set(complete)
    assert 1 <= len(complete) < KILL_RUNS
    runs = plain_runs(killed)
    for rid in complete:
        w = np.asarray(runs[rid]["weights"])
        assert w.shape[0] == KILL_STATES and np.isfinite(w).all(), rid
        for name in ("loss", "train_acc"):
            assert np.isfinite(np.asarray(runs[rid][name])).all(), (rid, name)
    summary = summarize_store(str(killed), verify=True)
    assert summary["verified"] is True, summary["problems"]
    assert summary["complete_runs"] == len(complete)

    # the same command again finishes the job, skipping exactly the complete runs
    theta0 = read_theta0(killed)  # saved before any run started
    assert (theta0 is not None) == (init == "shared")
    proc2 = ok(lohp(*args, "--out", killed))
    assert proc2.stdout == f"{killed}\n"
    plan = f"{KILL_RUNS} run(s) planned, {len(complete)} already complete, "
    assert plan in proc2.stderr, proc2.stderr
    assert sorted(statuses(killed).values()) == ["complete"] * KILL_RUNS

    assert ref.wait(timeout=120) == 0, (tmp_path / "whole.log").read_text()
    assert_same_store(killed, whole)
    if theta0 is not None:
        assert np.array_equal(read_theta0(killed), theta0)


# ---- real Fashion-MNIST -------------------------------------------------------------------------
@needs_fmnist
def test_fashion_mnist_tiny(tmp_path: Path) -> None:
    out = tmp_path / "fmnist.zarr"
    args = ["--family", "fmnist", "--model", "mlp", "--tasks", "1", "--seeds", "1"]
    args += ["--steps", "10", "--record-every", "5", "--optimizers", "sgd,adam", *SMALL_SETS]
    proc = ok(lohp("collect", *args, "--out", out))
    assert proc.stdout == f"{out}\n"
    from lohp_cli.store.summary import summarize_store  # what `lohp inspect --verify` calls

    summary = summarize_store(str(out), verify=True)
    assert summary["verified"] is True
    assert (summary["family"], summary["model"], summary["ways"]) == ("fmnist", "mlp", 5)
    assert summary["complete_runs"] == 2
    assert summary["param_count"] == 14 * 14 * 32 + 32 + 32 * 5 + 5 == 6469  # README's number
    assert summary["recorded_states"] == 3
