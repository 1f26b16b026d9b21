"""``collect`` on a Dask cluster and shards started at the same moment: each must give the store
one process gives (same run ids, bit-identical runs, the same extractor and shared θ₀)."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lohp_cli.config import CollectConfig
from lohp_cli.stages.collect import collect
from tests.conftest import TINY, tiny_config
from tests.integration.test_collect_subprocess import assert_same_store, statuses

pytest.importorskip("distributed")

# head model (a frozen extractor trained at init) and a shared θ₀: everything init writes.
# 2 tasks × 3 optimizers = 6 runs of 400 steps, about 0.2–0.3 s each.
RUNS = 6


def cfg_at(out: Path, **overrides: Any) -> CollectConfig:
    model = {**TINY["model"], "name": "head"}
    settings = {"tasks": 2, "steps": 400, "record_every": 10, "init": "shared", **overrides}
    return tiny_config(out, device="cpu", model=model, **settings)


def assert_same_extractor(got: Path, want: Path) -> None:
    import zarr

    a, b = (zarr.open_group(zarr.storage.LocalStore(p), mode="r")["extractor"] for p in (got, want))
    assert sorted(a.array_keys()) == sorted(b.array_keys())
    for name in b.array_keys():
        assert np.array_equal(a[name][...], b[name][...]), name


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    collect(cfg_at(out))
    return out


def run_of(key: object) -> str:
    """The run id in a task key ``lohp-collect-<run id>-<tag>``."""
    return str(key).removeprefix("lohp-collect-").rsplit("-", 1)[0]


def run_events(events: list[dict[str, Any]]) -> list[str]:
    """The run ids of the ``run`` events, checking their count (the same as the serial path's)."""
    runs = [e for e in events if e["event"] == "run"]
    assert [e["done"] for e in runs] == list(range(1, len(runs) + 1))
    assert all(e["pending"] == RUNS for e in runs)
    return [e["run_id"] for e in runs]


@pytest.mark.slow
def test_scheduler_local_2_with_a_worker_killed_mid_run_equals_one_process(
    reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--scheduler local:2``; once some runs are complete, SIGKILL a worker while it writes a
    run: that run is redone elsewhere from scratch, each run is reported once, and the store
    equals the one-process store. (The ``tcp://`` path: tests/unit/test_cluster.py.)"""
    import distributed

    clusters: list[Any] = []

    class Recorded(distributed.LocalCluster):  # the cluster collect starts, for the watcher
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            clusters.append(self)

    monkeypatch.setattr(distributed, "LocalCluster", Recorded)
    out = tmp_path / "dask.zarr"
    events: list[dict[str, Any]] = []
    killed: dict[str, Any] = {}

    def kill_one_mid_run() -> None:
        deadline = time.monotonic() + 120
        while not clusters and time.monotonic() < deadline:
            time.sleep(0.05)
        with distributed.Client(clusters[0].scheduler_address, set_as_default=False) as client:
            pids = client.run(os.getpid)  # {worker address: pid}
            while time.monotonic() < deadline:
                done = sum(e["event"] == "run" for e in events)
                if done:
                    running = {r for r, st in statuses(out).items() if st == "running"}
                    for worker, keys in client.processing().items():
                        writing = running & {run_of(k) for k in keys}
                        if writing:  # executing one (a worker may have another one queued)
                            os.kill(pids[worker], signal.SIGKILL)
                            killed.update(pid=pids[worker], runs=writing, done=done)
                            return
                time.sleep(0.01)

    watcher = threading.Thread(target=kill_one_mid_run, daemon=True)
    watcher.start()
    result = collect(cfg_at(out, scheduler="local:2"), events.append)
    watcher.join(timeout=30)
    assert killed, "no worker was killed while writing a run"
    assert 1 <= killed["done"] < RUNS
    with pytest.raises(ProcessLookupError):  # gone (its nanny started another one)
        os.kill(killed["pid"], 0)
    assert (result.planned, result.skipped, result.collected) == (RUNS, 0, RUNS)
    ids = run_events(events)
    assert sorted(ids) == sorted(set(ids)) == sorted(statuses(reference))  # each once
    assert_same_store(out, reference)
    assert_same_extractor(out, reference)
    again = collect(cfg_at(out, scheduler="local:2"))  # nothing to do: no cluster is started
    assert (again.skipped, again.collected, len(clusters)) == (RUNS, 0, 1)


def _shard(out: str, shard: str, barrier: Any) -> None:
    import torch

    torch.set_num_threads(1)
    barrier.wait(timeout=60)
    collect(cfg_at(Path(out), shard=shard))


@pytest.mark.slow
def test_two_shards_started_at_once_on_a_new_store(reference: Path, tmp_path: Path) -> None:
    """Both shards start initialising the store at the same moment: one creates it (root,
    extractor, θ₀, conditions), the other waits for it and opens it; no lock file is left."""
    out = tmp_path / "new" / "shards.zarr"
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_shard, args=(str(out), f"{i}/2", barrier)) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert_same_store(out, reference)
    assert_same_extractor(out, reference)
    assert os.listdir(out.parent) == ["shards.zarr"]
