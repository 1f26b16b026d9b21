"""The Zarr v3 trajectory store: round trips, chunking, status, schema checks (lohp_cli/store/).

These tests run on stores of schema version 1 (a group per run), the layout lohp still reads;
tests/unit/test_blocks.py has those of version 2 (runs in blocks), which ``collect`` writes."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from lohp_cli.config import OPTIMIZERS, StoreCodecConfig
from lohp_cli.errors import StoreError
from lohp_cli.store import SCHEMA, SCHEMA_VERSION, TrajectoryStore, codecs_for, parse_run_id, run_id
from lohp_cli.store.codecs import describe_codecs, filters_for, serializer_for
from lohp_cli.store.schema import split_run_id

COMPAT = {"family": {"name": "f"}, "model": {"name": "m"}, "steps": 6, "record_every": 1,
          "batch_size": 2, "seed": 0}  # fmt: skip
ROOT_ATTRS = {"compat": COMPAT, "layout": [], "param_count": 5, "condition_dim": 3,
              "schema_version": 1}  # fmt: skip


def root_attrs(states: int = 7, size: int = 5) -> dict:
    """Root attributes of a store whose runs record ``states`` states of ``size`` parameters."""
    return {**ROOT_ATTRS, "compat": {**COMPAT, "steps": states - 1}, "param_count": size}


def new_store(
    tmp_path: Path, name: str = "s.zarr", states: int = 7, size: int = 5
) -> TrajectoryStore:
    store, created = TrajectoryStore.create_or_open(str(tmp_path / name), root_attrs(states, size))
    assert created
    return store


def ident(rid: str, **extra: object) -> dict:
    """Valid run attributes for run ``rid`` (what its id says, when it says it), and ``extra``."""
    parts = split_run_id(rid)
    task, opt, rep = parts if parts else ("t", extra.get("optimizer", "sgd"), 0)
    return {"task_id": task, "optimizer": opt, "replicate": rep, **extra}


def mem_url() -> str:
    return f"memory://lohp-test-{uuid.uuid4().hex}"


def trajectory(states: int, size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((states, size)).astype(np.float32)
    loss = rng.random(states).astype(np.float32)
    acc = rng.random(states).astype(np.float32)
    return w, loss, acc


def write_run(store, rid, w, loss, acc, chunk_steps=16, attrs=None, codec="blosc-zstd"):
    codec_cfg = StoreCodecConfig(chunk_steps=chunk_steps, codec=codec)
    writer = store.begin_run(rid, w.shape[0], w.shape[1], codec_cfg, ident(rid, **(attrs or {})))
    for i in range(w.shape[0]):
        writer.append(w[i], float(loss[i]), float(acc[i]))
    writer.finish({"final": 1})
    return writer


# ---- run ids -----------------------------------------------------------------------------------
@given(
    st.lists(st.integers(0, 99), min_size=1, max_size=6),
    st.sampled_from(OPTIMIZERS),
    st.integers(0, 10_000),
)
def test_run_id_round_trip(classes: list[int], opt: str, rep: int) -> None:
    task_id = "c" + "_".join(map(str, classes))
    rid = run_id(task_id, opt, rep)
    assert rid == f"{task_id}-{opt}-s{rep}"
    assert parse_run_id(rid) == (task_id, opt, rep)


# ---- creating and opening ----------------------------------------------------------------------
def test_create_writes_schema_and_attrs(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    attrs = store.attrs
    assert attrs["schema"] == SCHEMA == "lohp.trajectories"
    assert attrs["schema_version"] == 1 and SCHEMA_VERSION == 2
    assert attrs["init_complete"] is False
    assert attrs["compat"] == COMPAT and attrs["param_count"] == 5
    # A plain zarr reader sees the same thing.
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    assert root.attrs["schema"] == SCHEMA and set(root.group_keys()) == {"tasks", "runs"}
    store.update_attrs(init_complete=True)
    again, created = TrajectoryStore.create_or_open(str(tmp_path / "s.zarr"), {"other": 1})
    assert not created
    assert again.attrs["init_complete"] is True and "other" not in again.attrs


def test_create_in_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    store, created = TrajectoryStore.create_or_open(str(tmp_path / "empty"), ROOT_ATTRS)
    assert created and store.attrs["schema"] == SCHEMA


def test_create_with_file_url(tmp_path: Path) -> None:
    url = "file://" + str(tmp_path / "f.zarr")
    store, created = TrajectoryStore.create_or_open(url, ROOT_ATTRS)
    assert created and (tmp_path / "f.zarr" / "zarr.json").is_file()
    assert TrajectoryStore.open(url).attrs["param_count"] == 5


def test_open_missing_path(tmp_path: Path) -> None:
    loc = str(tmp_path / "nope.zarr")
    with pytest.raises(StoreError, match=f"No trajectory store at '{loc}'.*lohp collect --out"):
        TrajectoryStore.open(loc)


def test_open_file_path(tmp_path: Path) -> None:
    f = tmp_path / "x.zarr"
    f.write_text("hello")
    with pytest.raises(StoreError, match="is a file, not a trajectory store"):
        TrajectoryStore.open(str(f))
    with pytest.raises(StoreError, match="is a file; give a directory path"):
        TrajectoryStore.create_or_open(str(f), ROOT_ATTRS)
    assert f.read_text() == "hello"


def test_open_directory_that_is_not_zarr(tmp_path: Path) -> None:
    d = tmp_path / "plain"
    d.mkdir()
    (d / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="is not a Zarr v3 store"):
        TrajectoryStore.open(str(d))
    # A Zarr v2 group has no zarr.json either.
    v2 = tmp_path / "v2.zarr"
    zarr.open_group(zarr.storage.LocalStore(v2), mode="w", zarr_format=2)
    with pytest.raises(StoreError, match="is not a Zarr v3 store"):
        TrajectoryStore.open(str(v2))


def test_non_empty_non_zarr_directory_is_refused_and_untouched(tmp_path: Path) -> None:
    d = tmp_path / "data"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("keep me")
    (d / "sub" / "b.bin").write_bytes(b"\x00\x01")
    before = sorted(str(p.relative_to(d)) for p in d.rglob("*"))
    with pytest.raises(StoreError, match="non-empty directory that is not a Zarr store"):
        TrajectoryStore.create_or_open(str(d), ROOT_ATTRS)
    assert sorted(str(p.relative_to(d)) for p in d.rglob("*")) == before
    assert (d / "a.txt").read_text() == "keep me" and (
        d / "sub" / "b.bin"
    ).read_bytes() == b"\x00\x01"


def test_foreign_zarr_store(tmp_path: Path) -> None:
    loc = tmp_path / "foreign.zarr"
    g = zarr.open_group(zarr.storage.LocalStore(loc), mode="w")
    g.attrs.update({"schema": "someone.else", "schema_version": 1})
    with pytest.raises(StoreError, match=r"is not a lohp trajectory store \(schema 'someone.else'"):
        TrajectoryStore.open(str(loc))
    with pytest.raises(StoreError, match="is not a lohp trajectory store"):
        TrajectoryStore.create_or_open(str(loc), ROOT_ATTRS)
    assert dict(zarr.open_group(str(loc), mode="r").attrs)["schema"] == "someone.else"
    bare = tmp_path / "bare.zarr"
    zarr.open_group(zarr.storage.LocalStore(bare), mode="w")
    with pytest.raises(StoreError, match="schema None"):
        TrajectoryStore.open(str(bare))


def test_array_at_root_is_not_a_store(tmp_path: Path) -> None:
    loc = tmp_path / "arr.zarr"
    zarr.create_array(zarr.storage.LocalStore(loc), shape=(2,), dtype="f4")
    with pytest.raises(StoreError, match="is not a readable Zarr store"):
        TrajectoryStore.open(str(loc))


def test_garbled_root_metadata(tmp_path: Path) -> None:
    loc = tmp_path / "g.zarr"
    loc.mkdir()
    (loc / "zarr.json").write_text("{not json")
    with pytest.raises(StoreError, match="is not a readable Zarr store"):
        TrajectoryStore.open(str(loc))


def test_schema_version_from_the_future(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    store.update_attrs(schema_version=3)
    loc = str(tmp_path / "s.zarr")
    msg = f"Store '{loc}' has schema_version 3; this lohp reads up to 2. Upgrade lohp"
    with pytest.raises(StoreError, match=msg):
        TrajectoryStore.open(loc)
    with pytest.raises(StoreError, match="has schema_version 3"):
        TrajectoryStore.create_or_open(loc, ROOT_ATTRS)


@pytest.mark.parametrize("bad", [None, "1", 1.0])
def test_invalid_schema_version(tmp_path: Path, bad: object) -> None:
    store = new_store(tmp_path)
    store.update_attrs(schema_version=bad)
    with pytest.raises(StoreError, match="has no valid schema_version"):
        TrajectoryStore.open(str(tmp_path / "s.zarr"))


def test_older_schema_version_is_read(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    store.update_attrs(schema_version=0)
    assert TrajectoryStore.open(str(tmp_path / "s.zarr")).attrs["schema_version"] == 0


# ---- runs --------------------------------------------------------------------------------------
def test_run_round_trip_chunking_and_status(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    w, loss, acc = trajectory(7, 5)
    codec = StoreCodecConfig(chunk_steps=3)
    writer = store.begin_run("c1_2-sgd-s0", 7, 5, codec, ident("c1_2-sgd-s0", lr=0.1))
    arr = store.root["runs"]["c1_2-sgd-s0"]["weights"]
    assert arr.shape == (7, 5) and arr.chunks == (3, 5) and arr.dtype == np.float32
    assert store.run_status("c1_2-sgd-s0") == "running"
    assert store.run_attrs("c1_2-sgd-s0")["steps_written"] == 0
    assert np.isnan(store.weights("c1_2-sgd-s0")).all()  # fill value until written

    def on_disk() -> TrajectoryStore:
        return TrajectoryStore.open(str(tmp_path / "s.zarr"))

    for i in range(7):
        writer.append(w[i], float(loss[i]), float(acc[i]))
        # Whole time chunks are written as soon as they fill; the rest stays buffered.
        flushed = (i + 1) // 3 * 3
        reader = on_disk()
        assert reader.run_attrs("c1_2-sgd-s0")["steps_written"] == 0  # set by finish() only
        assert reader.run_status("c1_2-sgd-s0") == "running"
        got = reader.weights("c1_2-sgd-s0")
        np.testing.assert_array_equal(got[:flushed], w[:flushed])
        assert np.isnan(got[flushed:]).all()
    assert on_disk().complete_runs() == []
    wall = writer.finish({"final_loss": 0.5})
    reader = on_disk()
    attrs = reader.run_attrs("c1_2-sgd-s0")
    assert attrs["status"] == "complete" and attrs["steps_written"] == 7
    assert attrs["optimizer"] == "sgd" and attrs["lr"] == 0.1 and attrs["final_loss"] == 0.5
    assert attrs["wall_time_s"] == round(wall, 4) and wall >= 0
    np.testing.assert_array_equal(reader.weights("c1_2-sgd-s0"), w)
    np.testing.assert_array_equal(reader.weights("c1_2-sgd-s0", 2, 5), w[2:5])
    np.testing.assert_array_equal(reader.run_array("c1_2-sgd-s0", "loss"), loss)
    np.testing.assert_array_equal(reader.run_array("c1_2-sgd-s0", "train_acc"), acc)
    assert reader.complete_runs() == reader.run_ids() == ["c1_2-sgd-s0"]


def test_loss_and_acc_written_only_at_finish(tmp_path: Path) -> None:
    store = new_store(tmp_path, states=4, size=2)
    w, loss, acc = trajectory(4, 2)
    writer = store.begin_run("r", 4, 2, StoreCodecConfig(chunk_steps=1), ident("r"))
    for i in range(4):
        writer.append(w[i], float(loss[i]), float(acc[i]))
    assert np.isnan(store.run_array("r", "loss")).all()
    assert store.run_status("r") == "running"
    writer.finish()
    np.testing.assert_array_equal(store.run_array("r", "loss"), loss)


@settings(max_examples=15, deadline=None)
@given(
    states=st.integers(1, 12),
    size=st.integers(1, 4),
    chunk=st.integers(1, 20),
    seed=st.integers(0, 1000),
)
def test_run_round_trip_property(states: int, size: int, chunk: int, seed: int) -> None:
    store, _ = TrajectoryStore.create_or_open(mem_url(), root_attrs(states, size))
    w, loss, acc = trajectory(states, size, seed)
    write_run(store, "r", w, loss, acc, chunk_steps=chunk)
    assert store.root["runs"]["r"]["weights"].chunks == (min(chunk, states), size)
    np.testing.assert_array_equal(store.weights("r"), w)
    np.testing.assert_array_equal(store.run_array("r", "loss"), loss)
    np.testing.assert_array_equal(store.run_array("r", "train_acc"), acc)
    assert store.run_attrs("r")["steps_written"] == states


def test_writer_refuses_short_and_long_runs(tmp_path: Path) -> None:
    store = new_store(tmp_path, states=3, size=2)
    writer = store.begin_run("r", 3, 2, StoreCodecConfig(chunk_steps=2), ident("r"))
    writer.append(np.zeros(2, np.float32), 0.0, 0.0)
    with pytest.raises(ValueError, match="run has 1 of 3 states"):
        writer.finish()
    assert store.run_status("r") == "running"
    writer.append(np.zeros(2, np.float32), 0.0, 0.0)
    writer.append(np.zeros(2, np.float32), 0.0, 0.0)
    with pytest.raises(ValueError, match="more states appended than the run has"):
        writer.append(np.zeros(2, np.float32), 0.0, 0.0)
    writer.finish()
    assert store.run_status("r") == "complete"


def test_begin_run_replaces_a_partial_run(tmp_path: Path) -> None:
    store = new_store(tmp_path, states=5, size=2)
    old = store.begin_run("r", 6, 3, StoreCodecConfig(chunk_steps=1), ident("r", old_key=1, lr=9.0))
    for _ in range(4):
        old.append(np.full(3, 99.0, np.float32), 1.0, 1.0)
    assert store.run_attrs("r")["steps_written"] == 0  # set by finish() only
    w, loss, acc = trajectory(5, 2, seed=3)
    writer = store.begin_run("r", 5, 2, StoreCodecConfig(chunk_steps=2), ident("r", lr=0.1))
    attrs = store.run_attrs("r")
    assert "old_key" not in attrs and attrs["lr"] == 0.1
    assert attrs["steps_written"] == 0 and attrs["status"] == "running"
    assert store.weights("r").shape == (5, 2) and np.isnan(store.weights("r")).all()
    for i in range(5):
        writer.append(w[i], float(loss[i]), float(acc[i]))
    writer.finish()
    reader = TrajectoryStore.open(str(tmp_path / "s.zarr"))
    np.testing.assert_array_equal(reader.weights("r"), w)
    assert reader.run_ids() == ["r"] and reader.run_status("r") == "complete"


def test_iter_runs_and_delete(tmp_path: Path) -> None:
    store = new_store(tmp_path, states=2, size=2)
    w, loss, acc = trajectory(2, 2)
    write_run(store, "a", w, loss, acc, attrs={"optimizer": "sgd"})
    store.begin_run("b", 2, 2, StoreCodecConfig(), ident("b", optimizer="adam"))
    assert [r for r, _ in store.iter_runs()] == ["a"]
    assert [(r, a.optimizer) for r, a in store.iter_runs(complete_only=False)] == [
        ("a", "sgd"),
        ("b", "adam"),
    ]
    assert store.run_status("missing") is None and store.run_attrs("missing") is None
    store.delete_run("b")
    store.delete_run("never-existed")
    assert store.run_ids() == ["a"] and not (tmp_path / "s.zarr" / "runs" / "b").exists()


@pytest.mark.filterwarnings("ignore:Object at b is not recognized")
def test_a_run_with_lost_metadata_reads_as_missing(tmp_path: Path) -> None:
    store = new_store(tmp_path, states=2, size=2)
    w, loss, acc = trajectory(2, 2)
    write_run(store, "a", w, loss, acc)
    write_run(store, "b", w, loss, acc)
    (tmp_path / "s.zarr" / "runs" / "b" / "zarr.json").unlink()
    reader = TrajectoryStore.open(str(tmp_path / "s.zarr"), mode="r+")
    assert reader.run_attrs("b") is None and reader.run_status("b") is None
    assert reader.complete_runs() == ["a"]
    reader.begin_run("b", 2, 2, StoreCodecConfig(), ident("b"))  # a redo clears the remains
    assert reader.run_status("b") == "running"


def test_a_run_with_torn_metadata_is_listed_and_reads_as_unreadable(tmp_path: Path) -> None:
    store = new_store(tmp_path, states=2, size=2)
    w, loss, acc = trajectory(2, 2)
    write_run(store, "a", w, loss, acc)
    write_run(store, "b", w, loss, acc)
    (tmp_path / "s.zarr" / "runs" / "b" / "zarr.json").write_text('{"zarr_format": 3, "node_t')
    reader = TrajectoryStore.open(str(tmp_path / "s.zarr"))
    assert reader.run_attrs("b") is None
    assert reader.run_ids() == ["a", "b"]
    assert reader.complete_runs() == ["a"]


# ---- the run index ----------------------------------------------------------------------------
def indexed_store(tmp_path: Path, runs: int = 3, partial: str | None = "p") -> str:
    """A store with ``runs`` complete runs (and one running run ``partial``) and its run index."""
    store = new_store(tmp_path, states=2, size=2)
    w, loss, acc = trajectory(2, 2)
    for i in range(runs):
        write_run(store, f"r{i}", w, loss, acc, attrs={"optimizer": "sgd", "i": i})
    if partial:
        store.begin_run(partial, 2, 2, StoreCodecConfig(), ident(partial, optimizer="adam"))
    assert store.write_run_index() == runs + bool(partial)
    return str(tmp_path / "s.zarr")


def counting(location: str) -> tuple[TrajectoryStore, dict]:
    """The store opened through zarr's LoggingStore, and its counter of store calls."""
    import logging

    from zarr.storage import LocalStore, LoggingStore

    logged = LoggingStore(LocalStore(location), log_handler=logging.NullHandler())
    store = TrajectoryStore(location, zarr.open_group(logged, mode="r+"))
    logged.counter.clear()
    return store, logged.counter


def test_the_index_lists_complete_runs_in_one_read(tmp_path: Path) -> None:
    loc = indexed_store(tmp_path, runs=5)
    index = zarr.open_group(loc)["runs"].attrs["index"]
    assert index["version"] == 1 and index["count"] == 6 and index["runs"]["p"] is None
    opened = TrajectoryStore.open(loc)
    assert index["runs"]["r2"] == {
        "attrs": opened.run_attrs("r2"),
        "format": [True, True],
        "codec": list(describe_codecs(opened.root["runs"]["r2"]["weights"])),
    }
    store, calls = counting(loc)
    runs = list(store.iter_runs())
    assert [r for r, _ in runs] == [f"r{i}" for i in range(5)] and runs[3][1].model_extra["i"] == 3
    assert store.run_format("r1") == (True, True)
    assert store.run_codec("r1") == tuple(index["runs"]["r1"]["codec"])  # no read
    # runs/zarr.json, and the run that was running when the index was written (it may have
    # completed since): one read per run not complete, none per complete run
    assert calls["get"] == 2
    assert store.run_status("p") == "running"


def test_without_an_index_every_run_is_read(tmp_path: Path) -> None:
    loc = indexed_store(tmp_path, runs=5)
    with_index = list(TrajectoryStore.open(loc).iter_runs())
    del zarr.open_group(loc, mode="r+")["runs"].attrs["index"]  # an older store
    store, calls = counting(loc)
    assert list(store.iter_runs()) == with_index
    assert calls["get"] >= 6


def test_changing_a_run_removes_the_index_first(tmp_path: Path) -> None:
    """A crash inside a collect leaves no index: begin_run and delete_run remove it before they
    change anything, so no index can call complete a run that is being redone."""
    for change in ("begin", "delete"):
        loc = indexed_store(tmp_path / change)
        store = TrajectoryStore.open(loc, mode="r+")
        assert store.run_status("r1") == "complete"
        if change == "begin":
            store.begin_run("r1", 2, 2, StoreCodecConfig(), ident("r1"))
        else:
            store.delete_run("r1")
        assert "index" not in zarr.open_group(loc)["runs"].attrs
        expected = "running" if change == "begin" else None
        assert store.run_status("r1") == TrajectoryStore.open(loc).run_status("r1") == expected


def test_a_stale_or_foreign_index_is_ignored(tmp_path: Path) -> None:
    loc = indexed_store(tmp_path, partial=None)
    truth = list(TrajectoryStore.open(loc).iter_runs())
    runs = zarr.open_group(loc, mode="r+")["runs"]
    index = dict(runs.attrs["index"])
    # a run added behind its back (another writer): listed, so read
    w, loss, acc = trajectory(2, 2)
    write_run(TrajectoryStore.open(loc, mode="r+"), "r9", w, loss, acc)
    runs.attrs["index"] = index
    assert [r for r, _ in TrajectoryStore.open(loc).iter_runs()] == ["r0", "r1", "r2", "r9"]
    TrajectoryStore.open(loc, mode="r+").delete_run("r9")
    fake = {**index["runs"], "r1": {**index["runs"]["r1"], "attrs": {"status": "complete"}}}
    for bad in (
        {**index, "version": 2},
        {**index, "count": 7},
        {**index, "runs": {k: v for k, v in index["runs"].items() if k != "r0"}},  # r0 unknown
        "garbage",
    ):
        runs.attrs["index"] = bad
        assert list(TrajectoryStore.open(loc).iter_runs()) == truth, bad
    # a fresh index is trusted entry by entry: an entry that does not validate is ignored, and
    # its run is read itself
    runs.attrs["index"] = {**index, "runs": fake}
    reader = TrajectoryStore.open(loc)
    assert list(reader.iter_runs()) == truth
    assert "field 'task_id': Field required" in reader.index_rejected["r1"]
    assert reader.run_attrs("r1") == dict(zarr.open_group(loc)["runs"]["r1"].attrs)


def test_writing_the_index_reads_only_runs_not_known_complete(tmp_path: Path) -> None:
    loc = indexed_store(tmp_path, runs=6)
    store, calls = counting(loc)
    assert store.write_run_index() == 7
    # runs/zarr.json (read, rewritten), the running run's zarr.json; none of the 6 complete runs
    assert calls["get"] <= 3 and calls["set"] == 1


def test_memory_url_index_round_trip() -> None:
    url = mem_url()
    store, _ = TrajectoryStore.create_or_open(url, root_attrs(3, 5))
    w, loss, acc = trajectory(3, 5)
    write_run(store, "a", w, loss, acc)
    assert store.write_run_index() == 1
    again = TrajectoryStore.open(url)
    assert again.complete_runs() == ["a"] and again.run_ids() == ["a"]
    np.testing.assert_array_equal(again.weights("a"), w)


# ---- tasks and tensor groups -------------------------------------------------------------------
def test_tasks_round_trip(tmp_path: Path) -> None:
    store, _ = TrajectoryStore.create_or_open(
        str(tmp_path / "s.zarr"), {**ROOT_ATTRS, "condition_dim": 7}
    )
    assert not store.has_task("c1_2")
    cond = np.linspace(-1, 1, 7).astype(np.float64)
    store.write_task("c1_2", cond, {"classes": [1, 2], "split": "source"})
    store.write_task("c0_3", np.zeros(7), {"classes": [0, 3]})
    reader = TrajectoryStore.open(str(tmp_path / "s.zarr"))
    assert reader.has_task("c1_2") and reader.task_ids() == ["c0_3", "c1_2"]
    got = reader.condition("c1_2")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, cond.astype(np.float32))
    assert dict(reader.root["tasks"]["c1_2"].attrs) == {"classes": [1, 2], "split": "source"}
    store.write_task("c1_2", cond * 2, {})  # overwrite allowed
    np.testing.assert_array_equal(store.condition("c1_2"), (cond * 2).astype(np.float32))


def test_save_and_load_tensors(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    with pytest.raises(StoreError, match="has no complete 'extractor' group"):
        store.load_tensors("extractor")
    tensors = {"a.weight": np.arange(6, dtype=np.float64).reshape(2, 3), "b": np.ones(4)}
    store.save_tensors("extractor", tensors, {"architecture": "X"})
    got = TrajectoryStore.open(str(tmp_path / "s.zarr")).load_tensors("extractor")
    assert set(got) == set(tensors)
    for k in tensors:
        assert got[k].dtype == np.float32
        np.testing.assert_array_equal(got[k], tensors[k].astype(np.float32))
    assert store.root["extractor"].attrs["architecture"] == "X"
    store.save_tensors("extractor", {"c": np.zeros(1)}, {})  # replaced whole
    assert set(store.load_tensors("extractor")) == {"c"}
    store.root["extractor"].attrs["complete"] = False
    with pytest.raises(StoreError, match="no complete 'extractor'"):
        store.load_tensors("extractor")


# ---- remote (fsspec) stores --------------------------------------------------------------------
def test_memory_url_round_trip() -> None:
    url = mem_url()
    with pytest.raises(StoreError, match="No trajectory store"):
        TrajectoryStore.open(url)
    store, created = TrajectoryStore.create_or_open(url, {**root_attrs(9, 4), "condition_dim": 3})
    assert created
    w, loss, acc = trajectory(9, 4, seed=5)
    write_run(store, "c1_2-adam-s1", w, loss, acc, chunk_steps=4)
    store.write_task("c1_2", np.arange(3), {"classes": [1, 2]})
    store.update_attrs(init_complete=True)
    reader = TrajectoryStore.open(url)
    assert reader.attrs["schema_version"] == 1 and reader.attrs["init_complete"] is True
    np.testing.assert_array_equal(reader.weights("c1_2-adam-s1"), w)
    np.testing.assert_array_equal(reader.run_array("c1_2-adam-s1", "loss"), loss)
    np.testing.assert_array_equal(reader.condition("c1_2"), np.arange(3, dtype=np.float32))
    assert reader.run_status("c1_2-adam-s1") == "complete"
    assert reader.bytes_on_disk() is None
    again, created = TrajectoryStore.create_or_open(url, {})
    assert not created and again.complete_runs() == ["c1_2-adam-s1"]
    again.delete_run("c1_2-adam-s1")
    assert TrajectoryStore.open(url).run_ids() == []


def test_memory_url_future_schema() -> None:
    url = mem_url()
    store, _ = TrajectoryStore.create_or_open(url, ROOT_ATTRS)
    store.update_attrs(schema_version=3)
    with pytest.raises(StoreError, match="has schema_version 3; this lohp reads up to 2"):
        TrajectoryStore.open(url)


# ---- codecs ------------------------------------------------------------------------------------
def test_codecs_for_options() -> None:
    from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec
    from zarr.codecs.numcodecs import PCodec

    assert codecs_for(StoreCodecConfig(codec="none", checksum=False)) == []
    assert codecs_for(StoreCodecConfig(codec="none")) == [Crc32cCodec()]
    z, crc = codecs_for(StoreCodecConfig(codec="zstd", level=3))
    assert isinstance(z, ZstdCodec) and z.level == 3 and crc == Crc32cCodec()
    (b,) = codecs_for(
        StoreCodecConfig(codec="blosc-lz4", level=2, shuffle="bitshuffle", checksum=False)
    )
    assert isinstance(b, BloscCodec)
    assert (b.cname.value, b.clevel, b.shuffle.value) == ("lz4", 2, "bitshuffle")
    # the checksum comes last: it covers the compressed bytes
    b, crc = codecs_for(StoreCodecConfig(codec="blosc-zstd"))  # the default before pcodec
    assert (b.cname.value, b.clevel, b.shuffle.value) == ("zstd", 5, "shuffle")
    assert crc == Crc32cCodec()
    assert serializer_for(StoreCodecConfig(codec="blosc-zstd")) == "auto"  # zarr's bytes codec
    # the default: pcodec is the serializer (array -> bytes), only the checksum follows it
    assert codecs_for(StoreCodecConfig()) == [Crc32cCodec()]
    p = serializer_for(StoreCodecConfig())
    assert isinstance(p, PCodec) and p.codec_config["level"] == 8
    assert p.codec_config["delta_spec"] == "auto"
    p = serializer_for(StoreCodecConfig(level=3, delta=0))
    assert (p.codec_config["level"], p.codec_config["delta_encoding_order"]) == (3, 0)
    assert [type(f).__name__ for f in filters_for(StoreCodecConfig(lossy="bf16"))] == [
        "TransposeCodec",
        "BitRound",
    ]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"codec": "none", "lossy": "bf16"}, "only saves space with a compressor"),
        ({"codec": "zstd", "delta": 1}, "delta=1 is a pcodec option"),
        ({"codec": "pcodec", "shuffle": "bitshuffle"}, "is a blosc option"),
        ({"codec": "zstd", "shuffle": "noshuffle"}, "is a blosc option"),
        ({"codec": "blosc-zstd", "level": 10}, "out of range for blosc-zstd; use 0-9"),
        ({"codec": "none", "level": 3}, "needs a compressor"),
        ({"codec": "pcodec", "level": 13}, "less than or equal to 12"),
        ({"codec": "pcodec", "delta": 8}, "less than or equal to 7"),
    ],
)
def test_codec_options_that_do_not_fit_are_rejected(options: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        StoreCodecConfig(**options)


CODECS = [
    {"codec": "none"},
    {"codec": "zstd", "level": 1},
    {"codec": "blosc-zstd"},
    {"codec": "blosc-lz4", "level": 9},
    {"codec": "blosc-zstd", "shuffle": "bitshuffle"},
    {"codec": "blosc-lz4", "shuffle": "noshuffle", "level": 0},
    {"codec": "blosc-zstd", "transpose": False},
    {"codec": "pcodec"},
    {"codec": "pcodec", "level": 0},
    {"codec": "pcodec", "delta": 0},
    {"codec": "pcodec", "delta": 2},
    {"codec": "pcodec", "level": 12, "transpose": False},
]


def write_drift(store: TrajectoryStore, codec: StoreCodecConfig) -> tuple[np.ndarray, ...]:
    """A compressible trajectory ``[10, 300]`` (a slow drift, as real weights are; half the
    coordinates constant) written through ``begin_run``/``RunWriter`` as run ``r``."""
    rng = np.random.default_rng(0)
    w = np.cumsum(rng.standard_normal((10, 300)) * 1e-3, axis=0).astype(np.float32)
    w[:, 150:] += np.linspace(0.1, 3.0, 150, dtype=np.float32)  # magnitudes of several octaves
    w[:, :150] = 0.0
    loss, acc = trajectory(10, 1)[1:]
    writer = store.begin_run("r", 10, 300, codec, ident("r"))
    for i in range(10):
        writer.append(w[i], float(loss[i]), float(acc[i]))
    writer.finish()
    return w, loss, acc


@pytest.mark.parametrize("options", CODECS, ids=lambda o: "-".join(map(str, o.values())))
def test_every_codec_round_trips(tmp_path: Path, options: dict) -> None:
    codec = StoreCodecConfig(chunk_steps=4, **options)
    w, loss, acc = write_drift(new_store(tmp_path, states=10, size=300), codec)
    reader = TrajectoryStore.open(str(tmp_path / "s.zarr"))
    np.testing.assert_array_equal(reader.weights("r"), w)  # lossless: bitwise equal
    np.testing.assert_array_equal(reader.run_array("r", "train_acc"), acc)
    np.testing.assert_array_equal(reader.run_array("r", "loss"), loss)
    meta = json.loads((tmp_path / "s.zarr" / "runs" / "r" / "weights" / "zarr.json").read_text())
    names = [c["name"] for c in meta["codecs"]]
    serialize = {"pcodec": ["numcodecs.pcodec"]}.get(options["codec"], ["bytes"])
    compress = {"none": [], "zstd": ["zstd"], "pcodec": []}.get(options["codec"], ["blosc"])
    head = ["transpose"] if options.get("transpose", True) else []
    assert names == [*head, *serialize, *compress, "crc32c"]  # transpose?, serialise, compress, crc
    raw = w.nbytes
    stored = reader.bytes_on_disk("runs/*/weights")
    meta_bytes = len((tmp_path / "s.zarr" / "runs" / "r" / "weights" / "zarr.json").read_bytes())
    if options["codec"] == "none" or options.get("level") == 0:
        assert stored - meta_bytes >= raw
    else:
        assert stored - meta_bytes < 0.8 * raw
    assert reader.run_codec("r")[1] is False


@pytest.mark.parametrize("codec", ["pcodec", "blosc-zstd", "blosc-lz4", "zstd"])
def test_bf16_rounds_weights_to_bfloat16_and_keeps_float32(tmp_path: Path, codec: str) -> None:
    """``lossy="bf16"``: the weights read back are float32 equal to torch's round-to-nearest-even
    bfloat16 cast (relative error ≤ 2^-8); loss and accuracy stay exact."""
    import torch

    options = StoreCodecConfig(chunk_steps=4, codec=codec, lossy="bf16")
    w, loss, acc = write_drift(new_store(tmp_path, states=10, size=300), options)
    reader = TrajectoryStore.open(str(tmp_path / "s.zarr"))
    back = reader.weights("r")
    assert back.dtype == np.float32
    expected = torch.from_numpy(w).to(torch.bfloat16).to(torch.float32).numpy()
    np.testing.assert_array_equal(back, expected)
    nonzero = w != 0
    rel = np.abs(back - w)[nonzero] / np.abs(w)[nonzero]
    assert rel.max() <= 2.0**-8 and rel.max() > 0  # rounded, and within bf16 precision
    np.testing.assert_array_equal(reader.run_array("r", "loss"), loss)
    np.testing.assert_array_equal(reader.run_array("r", "train_acc"), acc)
    text, lossy = reader.run_codec("r")
    assert lossy and "bf16, lossy" in text


def test_pcodec_chunks_are_what_stock_numcodecs_decodes(tmp_path: Path) -> None:
    """The bytes of a transposed pcodec chunk are the stock ``numcodecs.PCodec`` encoding of the
    chunk in coordinate-major order (what any zarr reader with pcodec decodes), followed by the
    crc32c. zarr 3.1's stock encoder would store the time-major memory order instead."""
    from numcodecs.pcodec import PCodec

    w = write_drift(new_store(tmp_path, states=10, size=300), StoreCodecConfig(chunk_steps=4))[0]
    chunk_dir = tmp_path / "s.zarr" / "runs" / "r" / "weights" / "c"
    for index, rows in ((0, slice(0, 4)), (2, slice(8, 12))):
        data = (chunk_dir / str(index) / "0").read_bytes()
        chunk = np.asarray(PCodec().decode(data[:-4])).reshape(300, 4)  # [P, chunk_steps]
        expected = np.full((4, 300), np.nan, np.float32)  # the last chunk is padded with NaN
        expected[: w[rows].shape[0]] = w[rows]
        np.testing.assert_array_equal(chunk, expected.T)


def test_bytes_on_disk(tmp_path: Path) -> None:
    store = new_store(tmp_path, states=4, size=64)
    w, loss, acc = trajectory(4, 64)
    write_run(store, "r", w, loss, acc, codec="none")
    total = sum(f.stat().st_size for f in (tmp_path / "s.zarr").rglob("*") if f.is_file())
    assert store.bytes_on_disk() == total
    weights = store.bytes_on_disk("runs/*/weights")
    assert w.nbytes < weights < total


# ---- the shared θ₀ (init = "shared") ------------------------------------------------------------
def test_an_old_store_without_theta0_opens_and_starts_as_before(tmp_path: Path) -> None:
    """A store made before the option (no ``init`` in its compat, no ``init/theta0``): it opens,
    its runs start from their own draws, and its fingerprint is what it always was."""
    import hashlib

    import torch

    from lohp_cli.policy.directory import initial_state, start_rule, store_fingerprint
    from lohp_cli.store.sampler import NormStats

    store = new_store(tmp_path)
    store.update_attrs(init_complete=True)
    old = TrajectoryStore.open(str(tmp_path / "s.zarr"))
    assert old.meta.compat.init == "per_run" and old.meta.compat.init_seed is None
    assert old.meta.compat.to_json() == COMPAT  # no key added on reading
    assert old.shared_init() is None and not old.has_shared_init()
    sha = hashlib.sha256(json.dumps(COMPAT, sort_keys=True).encode()).hexdigest()[:16]
    assert store_fingerprint(old)["compat_sha"] == sha
    rule = start_rule(old, seed=3)
    stats = NormStats(torch.full((5,), 2.0), torch.full((5,), 0.5), torch.zeros(3),
                      torch.ones(3), torch.ones(2))  # fmt: skip
    assert not rule.shared
    assert torch.equal(rule.s0("t", 1, stats), initial_state(3, "t", 1, 5))
    assert torch.equal(rule.weights("t", 1, stats), initial_state(3, "t", 1, 5) * 0.5 + 2.0)


def test_shared_store_starts_and_a_missing_theta0(tmp_path: Path) -> None:
    import torch

    from lohp_cli.policy.directory import start_rule
    from lohp_cli.store.sampler import NormStats

    compat = {**COMPAT, "init": "shared", "init_seed": 7}
    store, _ = TrajectoryStore.create_or_open(
        str(tmp_path / "s.zarr"), {**ROOT_ATTRS, "compat": compat}
    )
    with pytest.raises(StoreError, match=r"shared θ₀ but has no complete 'init/theta0'"):
        store.shared_init()
    theta0 = np.arange(5, dtype=np.float32)
    store.write_shared_init(theta0, 7)
    again = TrajectoryStore.open(str(tmp_path / "s.zarr"))
    np.testing.assert_array_equal(again.shared_init(), theta0)
    stats = NormStats(torch.full((5,), 2.0), torch.full((5,), 0.5), torch.zeros(3),
                      torch.ones(3), torch.ones(2))  # fmt: skip
    rule = start_rule(again, seed=3)
    for j in range(2):  # every sample of every task: θ₀ exactly, s_0 its normalisation
        assert torch.equal(rule.weights(f"t{j}", j, stats), torch.from_numpy(theta0))
        assert torch.equal(rule.s0(f"t{j}", j, stats), (torch.from_numpy(theta0) - 2.0) / 0.5)
    store.write_shared_init(np.zeros(4, np.float32), 7)
    with pytest.raises(
        StoreError,
        match=r"'init/theta0' is float32 of shape \(4,\); the store's layout needs float32 of "
        r"shape \(5,\)",
    ):
        TrajectoryStore.open(str(tmp_path / "s.zarr")).shared_init()
    bad = {**ROOT_ATTRS, "compat": {**COMPAT, "init": "shared"}}
    with pytest.raises(StoreError, match="init 'shared' needs init_seed"):
        TrajectoryStore.create_or_open(str(tmp_path / "bad.zarr"), bad)
