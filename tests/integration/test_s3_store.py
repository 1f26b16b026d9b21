"""Stores on ``s3://`` (fsspec/s3fs through zarr's FsspecStore) against a real S3-compatible server
started here (moto's server mode on 127.0.0.1, tests/s3server.py), not a mock of the client.

Every stage that takes a store is run on one: collect (fresh and resumed), inspect --verify,
train-policy; each result equals the same stage on a local store. The run index is checked by
counting the S3 requests s3fs makes when a store with many runs is opened and listed.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from lohp_cli.errors import StoreError
from lohp_cli.stages.collect import collect
from lohp_cli.stages.collect_schedule import plan_runs
from lohp_cli.stages.train import train_policy
from lohp_cli.store import TrajectoryStore
from lohp_cli.tasks import make_family
from tests.cli.runner import invoke, plain
from tests.conftest import ident, make_linear_store
from tests.s3server import BUCKET, clear_s3fs_cache, counted_s3_calls, local_s3
from tests.unit.test_collect_lib import assert_same_runs, cfg_at
from tests.unit.test_train import assert_same_tensors
from tests.unit.test_train import config as train_config

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    """The endpoint of a local S3 server with an empty bucket, the AWS_* variables set to it."""
    with local_s3() as endpoint:
        yield endpoint


def s3_url(name: str) -> str:
    return f"s3://{BUCKET}/{name}-{uuid.uuid4().hex[:8]}.zarr"


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("s3ref") / "store.zarr"
    collect(cfg_at(out))
    return str(out)


@pytest.fixture(scope="module")
def s3_store(s3: str) -> str:
    url = s3_url("collect")
    result = collect(cfg_at(url))
    assert (result.planned, result.collected) == (6, 6)
    return url


def index_of(url: str) -> dict[str, Any] | None:
    return zarr.open_group(url, mode="r")["blocks"].attrs.get("index")


# ---- every stage on s3:// -----------------------------------------------------------------------
def test_collect_to_s3_equals_local_and_verifies(s3_store: str, local_reference: str) -> None:
    assert_same_runs(local_reference, s3_store)
    index = index_of(s3_store)
    assert index is not None and index["count"] == 3  # blocks: one per optimizer
    docs = [e["block"] for e in index["blocks"].values()]
    assert sorted(r for d in docs for r in d["runs"]) == TrajectoryStore.open(s3_store).run_ids()
    assert all(a["status"] == "complete" for d in docs for a in d["attrs"])
    result = invoke("inspect", s3_store, "--verify", "--json")
    assert result.exit_code == 0, plain(result.output)
    summary = json.loads(result.stdout)
    assert summary["verified"] is True and summary["complete_runs"] == 6
    assert summary["checksums"] == "all" and summary["bytes_on_disk"] is None  # remote: unknown


def test_train_policy_from_s3_equals_local(
    s3_store: str, local_reference: str, tmp_path: Path
) -> None:
    for store, out in ((s3_store, tmp_path / "s3"), (local_reference, tmp_path / "local")):
        train_policy(train_config(store, out, steps=4))
    model = "model.safetensors"
    assert_same_tensors(tmp_path / "s3" / model, tmp_path / "local" / model)
    meta = json.loads((tmp_path / "s3" / "config.json").read_text())
    assert meta["store_location"] == s3_store  # a URL is recorded as given


def test_resume_after_an_interrupted_collect_on_s3(s3: str, local_reference: str) -> None:
    """A collect interrupted after its first block (the block queued behind it is written
    before it stops), with a run begun and cut short: the resume redoes the partial run in its
    block and the missing ones, to the same store as an uninterrupted collect."""
    url = s3_url("resume")
    cfg = cfg_at(url)

    def stop_after_two(e: dict[str, Any]) -> None:
        if e["event"] == "run" and e["done"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        collect(cfg, progress=stop_after_two)
    plans = plan_runs(cfg, make_family(cfg.task).tasks("source", cfg.tasks))
    store = TrajectoryStore.open(url, mode="r+")
    done = store.complete_runs()
    assert 2 <= len(done) < 6
    cut = next(p.run_id for p in plans if p.run_id not in done)
    store.begin_run(cut, cfg.recorded_states, 8, cfg.store, ident(cut)).writer.append(
        np.zeros((1, 8), np.float32), np.zeros(1), np.zeros(1)
    )  # a block of one run, cut short after its first state
    assert index_of(url) is None  # an interrupted collect leaves no index
    assert TrajectoryStore.open(url).run_status(cut) == "running"
    result = collect(cfg)
    assert (result.skipped, result.collected) == (len(done), 6 - len(done))
    assert_same_runs(local_reference, url)
    index = index_of(url)
    assert sum(len(e["block"]["runs"]) for e in index["blocks"].values()) == 6


# ---- the run index: O(1) reads instead of O(runs) ---------------------------------------------
@pytest.fixture
def s3_calls() -> Iterator[Counter]:
    """Counts the S3 API calls s3fs makes, by operation (get_object, list_objects_v2, …)."""
    with counted_s3_calls() as calls:
        yield calls


def uploaded(local: Path, name: str) -> str:
    """A local store copied to a new s3:// URL in one concurrent upload (writing many tiny runs
    through the store API costs tens of requests each)."""
    import s3fs

    url = s3_url(name)
    s3fs.S3FileSystem().put(str(local), url.removeprefix("s3://"), recursive=True)
    return url


def list_complete_runs(url: str) -> list[tuple[str, dict[str, Any]]]:
    return list(TrajectoryStore.open(url).iter_runs())


@pytest.mark.parametrize("runs", [8, 24])
def test_the_index_opens_a_store_in_a_constant_number_of_requests(
    s3: str, s3_calls: Counter, runs: int, tmp_path: Path
) -> None:
    make_linear_store(tmp_path / "s.zarr", n_tasks=runs, size=4, cond_dim=2, steps=2)
    url = uploaded(tmp_path / "s.zarr", f"many{runs}")
    listed_without = list_complete_runs(url)
    TrajectoryStore.open(url, mode="r+").write_run_index()
    s3_calls.clear()
    listed_with = list_complete_runs(url)
    with_index = sum(s3_calls.values())
    assert listed_with == listed_without and len(listed_with) == runs
    # the root and blocks/ metadata, one listing of blocks/: the same for any number of runs
    assert s3_calls["get_object"] <= 2 and s3_calls["list_objects_v2"] == 1, s3_calls
    assert with_index <= 4, s3_calls

    group = zarr.open_group(url, mode="r+")["blocks"]
    del group.attrs["index"]
    s3_calls.clear()
    assert list_complete_runs(url) == listed_without
    assert s3_calls["get_object"] >= runs, s3_calls  # one read of every block's zarr.json


def test_a_stale_index_falls_back_to_the_runs(s3: str, tmp_path: Path) -> None:
    """Runs added behind the index's back (an older lohp, a plain zarr writer) or deleted by hand
    make it stale: readers then see the store as it is."""
    make_linear_store(tmp_path / "s.zarr", n_tasks=3, size=4, cond_dim=2, steps=2)
    url = uploaded(tmp_path / "s.zarr", "stale")
    store = TrajectoryStore.open(url, mode="r+")
    store.write_run_index()
    first = dict(TrajectoryStore.open(url).iter_runs())
    rid = sorted(first)[0]
    # a plain zarr writer's run: no fingerprint (lohp's would not match the new id and task)
    attrs = {**first[rid].to_json(), "task_id": "extra"}
    attrs.pop("fingerprint")
    doc = {"version": 1, "runs": ["extra-sgd-s0"], "attrs": [attrs]}
    zarr.open_group(url, mode="r+")["blocks"].create_group("b-extra", attributes={"block": doc})
    assert set(dict(TrajectoryStore.open(url).iter_runs())) == {*first, "extra-sgd-s0"}
    fs = zarr.open_group(url, mode="r").store.fs
    own = TrajectoryStore.open(url).slot(rid)[0]  # type: ignore[index]
    for b in (own, "b-extra"):
        zarr.open_group(url, mode="r+")["blocks"].__delitem__(b)
    fs.invalidate_cache()
    assert set(TrajectoryStore.open(url).complete_runs()) == set(first) - {rid}


# ---- errors: one line, exit 3 ------------------------------------------------------------------
@pytest.fixture
def fresh_s3fs() -> Iterator[None]:
    """s3fs instances keep the credentials and endpoint they were made with."""
    clear_s3fs_cache()
    yield
    clear_s3fs_cache()


def one_line_error(*args: object) -> str:
    result = invoke(*args)
    assert result.exit_code == 3, plain(result.output)
    out = plain(result.output).strip()
    assert "Traceback" not in out, out
    last = out[out.rindex("error:") :]  # after the log lines (device: cpu)
    return " ".join(last.split())


def test_a_missing_bucket(s3: str, tmp_path: Path) -> None:
    url = "s3://no-such-bucket/store.zarr"
    msg = one_line_error("collect", "--out", url, "--set", "tasks=1", "--set", "task.family=digits")
    assert f"Cannot access store '{url}' (FileNotFoundError:" in msg and "bucket" in msg
    msg = one_line_error("inspect", url)
    assert f"No trajectory store at '{url}'" in msg


def test_no_credentials(
    s3: str, s3_store: str, monkeypatch: pytest.MonkeyPatch, fresh_s3fs: None
) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    msg = one_line_error("inspect", s3_store)
    assert "(NoCredentialsError: Unable to locate credentials)" in msg
    assert "AWS_ACCESS_KEY_ID" in msg


def test_an_unreachable_endpoint(
    s3: str, s3_store: str, monkeypatch: pytest.MonkeyPatch, fresh_s3fs: None
) -> None:
    from tests.s3server import _free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's retries, so that it fails at once
    msg = one_line_error("inspect", s3_store)
    assert "Could not connect to the endpoint URL" in msg and "AWS_ENDPOINT_URL" in msg


def test_s3fs_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    import fsspec

    imported = sys.modules["fsspec.registry"]._registry  # the backends fsspec has imported
    monkeypatch.setitem(sys.modules, "s3fs", None)  # import s3fs fails
    for protocol in ("s3", "s3a"):
        monkeypatch.delitem(imported, protocol, raising=False)
    assert "s3" not in fsspec.registry
    with pytest.raises(StoreError, match=r"pip install 'lohp\[s3\]'"):
        TrajectoryStore.open("s3://any-bucket/store.zarr")
