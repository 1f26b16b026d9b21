"""Schema version 2: runs of one batch in one block (lohp_cli/store/blocks.py, block_runs.py,
writer.py), what collect writes; version-1 stores still read (test_store.py, test_chunks.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from lohp_cli.config import StoreCodecConfig
from lohp_cli.errors import CompatibilityError, StoreError
from lohp_cli.stages.collect import collect
from lohp_cli.store import TrajectoryStore
from lohp_cli.store.blocks import block_id, chunk_runs
from lohp_cli.store.summary import summarize_store
from lohp_cli.store.writer import BlockTarget, WriteSink
from tests.conftest import block_of, ident, make_linear_store, run_array, tiny_config
from tests.unit.test_chunks import flip_byte

STATES, SIZE = 5, 6
ROOT = {"compat": {"family": {"name": "f"}, "model": {"name": "m"}, "steps": STATES - 1,
                   "record_every": 1, "batch_size": 1, "seed": 0},
        "layout": [], "param_count": SIZE, "condition_dim": 2}  # fmt: skip


def block_store(path: Path, runs: int = 5, codec: StoreCodecConfig | None = None) -> list[str]:
    """A store with one block of ``runs`` runs written as collect writes them (a state of every
    run at a time, on the writer thread); returns the run ids in row order."""
    store, _ = TrajectoryStore.create_or_open(str(path), ROOT)
    rids = [f"c{i}_9-adam-s0" for i in range(runs)]
    target = BlockTarget(block_id(rids), rids, list(range(runs)), [ident(r) for r in rids], True)
    sink = WriteSink(depth=2)
    writer = store.block_writer(target, STATES, SIZE, codec or StoreCodecConfig(chunk_runs=2), sink)
    for t in range(STATES):
        w = np.arange(runs * SIZE, dtype=np.float32).reshape(runs, SIZE) + 100 * t  # [R, P]
        writer.append(w, np.full(runs, t, np.float32), np.full(runs, 0.5, np.float32))
    writer.finish()
    sink.close()
    return rids


def test_a_block_round_trips_run_by_run_and_opens_in_xarray(tmp_path: Path) -> None:
    rids = block_store(tmp_path / "s.zarr")
    store = TrajectoryStore.open(str(tmp_path / "s.zarr"))
    assert store.complete_runs() == sorted(rids) and store.meta.schema_version == 2
    for r, rid in enumerate(rids):
        w = store.weights(rid)  # [T+1, P] of one run, addressed by its id
        assert w.shape == (STATES, SIZE) and w[2, 0] == r * SIZE + 200
        np.testing.assert_array_equal(store.run_array(rid, "loss"), np.arange(STATES))
        meta = store.run_meta(rid)
        assert meta is not None and meta.complete and meta.fingerprint  # per run
    block = store.slot(rids[0])[0]  # type: ignore[index]
    ds = xr.open_zarr(tmp_path / "s.zarr", group=f"blocks/{block}", consolidated=False)
    assert ds["weights"].dims == ("run", "state", "param")
    assert list(ds["run"].values) == rids  # the run coordinate holds the run ids
    np.testing.assert_array_equal(ds["weights"].sel(run=rids[3]).values, store.weights(rids[3]))
    assert ds["weights"].chunks[0] == (2, 2, 1)  # chunks cover several runs


def test_a_damaged_chunk_names_each_run_it_holds_and_no_other(tmp_path: Path) -> None:
    rids = block_store(tmp_path / "s.zarr")
    block, _ = block_of(tmp_path / "s.zarr", rids[0])
    flip_byte(block / "weights" / "c" / "1" / "0" / "0")  # rows 2 and 3
    s = summarize_store(str(tmp_path / "s.zarr"), verify=True)
    assert not s["verified"]
    named = sorted(p.split(",")[0] for p in s["problems"])
    assert named == [f"run {rids[2]}", f"run {rids[3]}"]
    assert "checksum mismatch" in s["problems"][0] and f"(block {block.name})" in s["problems"][0]


def test_the_run_index_of_blocks_is_one_read_and_trusted_run_by_run(tmp_path: Path) -> None:
    loc = str(tmp_path / "s.zarr")
    block_store(tmp_path / "s.zarr")
    TrajectoryStore.open(loc, mode="r+").write_run_index()
    store = TrajectoryStore.open(loc)
    assert len(store._indexed()) == 5 and store.index_mismatches() == {}
    rid = store.run_ids()[1]
    # a run's own attributes changed after the index: --verify names it
    from tests.conftest import edit_run_attrs

    edit_run_attrs(loc, rid, lambda a: {**a, "optimizer": "sgd"})
    s = summarize_store(loc, verify=True)
    assert any(
        p.startswith(f"run {rid}: the run index lists it as complete") for p in s["problems"]
    )


def test_a_version_1_store_reads_but_collect_refuses_to_add_to_it(tmp_path: Path) -> None:
    loc = str(tmp_path / "old.zarr")
    make_linear_store(loc, n_tasks=2, schema_version=1)
    store = TrajectoryStore.open(loc)
    assert not store.blocks and len(store.complete_runs()) == 2
    assert summarize_store(loc, verify=True)["verified"]
    with pytest.raises(CompatibilityError, match="adds runs only to version-2 stores"):
        store.check_writable()


def test_results_do_not_depend_on_the_grouping(tmp_path: Path) -> None:
    """The same runs collected in blocks of 64 (trained together) and of 1 (one at a time):
    bit for bit the same numbers per run id."""
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    collect(tiny_config(a, device="cpu", batch_runs=64))
    collect(tiny_config(b, device="cpu", batch_runs=1))
    sa, sb = TrajectoryStore.open(str(a)), TrajectoryStore.open(str(b))
    assert sa.complete_runs() == sb.complete_runs()
    assert len({sa.slot(r)[0] for r in sa.run_ids()}) == 3  # type: ignore[index]
    assert len({sb.slot(r)[0] for r in sb.run_ids()}) == 6  # type: ignore[index]
    for rid in sa.run_ids():
        np.testing.assert_allclose(sa.weights(rid), sb.weights(rid), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(sa.run_array(rid, "loss"), sb.run_array(rid, "loss"), 1e-5)


def test_a_failed_write_marks_no_run_complete_and_is_raised(tmp_path: Path) -> None:
    sink = WriteSink(depth=1)
    sink.submit(lambda: (_ for _ in ()).throw(StoreError("disk full")))
    ran = []
    with pytest.raises(StoreError, match="disk full"):
        sink.submit(lambda: ran.append(1))
        sink.close()
    assert ran == []  # jobs after a failure are skipped (no completion after a failed write)


def test_rows_per_chunk_aim_at_a_megabyte() -> None:
    codec = StoreCodecConfig()
    assert chunk_runs(codec, 41, 325, 64) == 19  # head: 53 kB a run
    assert chunk_runs(codec, 41, 6469, 64) == 1  # mlp: 1 MB a run
    assert chunk_runs(StoreCodecConfig(chunk_runs=8), 41, 6469, 4) == 4


def test_inspect_imports_no_torch(tmp_path: Path) -> None:
    """``lohp inspect`` reads metadata with zarr and pydantic only (as ``lohp --help``)."""
    loc = str(tmp_path / "s.zarr")
    block_store(tmp_path / "s.zarr")
    code = (
        "import sys; from lohp_cli.cli import main; sys.argv = ['lohp', 'inspect', "
        f"{loc!r}, '--json']\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules, file=sys.stderr)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stderr.strip().splitlines()[-1] == "False"
    assert '"complete_runs": 5' in out.stdout


def test_listing_a_store_of_many_blocks_reads_each_block_once(tmp_path: Path) -> None:
    """Without an index, 40 blocks of 50 runs are listed from 40 documents (read concurrently);
    with one, from one."""
    loc = str(tmp_path / "many.zarr")
    store, _ = TrajectoryStore.create_or_open(loc, ROOT)
    for b in range(40):
        rids = [f"c{b}_{i}-sgd-s0" for i in range(50)]
        doc_rows = list(range(50))
        target = BlockTarget(block_id(rids), rids, doc_rows, [ident(r) for r in rids], True)
        sink = WriteSink(depth=0)
        writer = store.block_writer(target, STATES, SIZE, StoreCodecConfig(), sink)
        for _ in range(STATES):
            writer.append(np.zeros((50, SIZE), np.float32), np.zeros(50), np.zeros(50))
        writer.finish()
    TrajectoryStore.open(loc, mode="r+").write_run_index()
    t0 = time.perf_counter()
    assert len(TrajectoryStore.open(loc).complete_runs()) == 2000
    assert time.perf_counter() - t0 < 2.0  # generous: a shared CI machine
    arr, row = run_array(loc, "c3_7-sgd-s0")
    assert arr.shape == (50, STATES, SIZE) and row == 7


def test_a_version_1_store_migrates_to_blocks_unchanged(tmp_path: Path) -> None:
    from lohp_cli.store.migrate import migrate

    old, new = str(tmp_path / "old.zarr"), str(tmp_path / "new.zarr")
    make_linear_store(old, n_tasks=3, optimizers=("sgd", "adam"), schema_version=1)
    assert migrate(old, new, block_runs=2) == 6
    a, b = TrajectoryStore.open(old), TrajectoryStore.open(new)
    assert b.blocks and a.complete_runs() == b.complete_runs()
    for rid in a.complete_runs():
        np.testing.assert_array_equal(a.weights(rid), b.weights(rid))
        assert a.run_meta(rid).fingerprint == b.run_meta(rid).fingerprint  # type: ignore[union-attr]
    assert summarize_store(new, verify=True)["verified"]


def test_an_edited_index_entry_is_ignored_and_its_block_read_itself(tmp_path: Path) -> None:
    """The index is trusted block by block: a block entry whose document no longer matches its
    digest (an optimizer swapped, say) is ignored, and its runs are read from the block."""
    import json

    loc = tmp_path / "s.zarr"
    make_linear_store(loc, n_tasks=3, optimizers=("sgd", "adam"))
    TrajectoryStore.open(str(loc), mode="r+").write_run_index()
    meta = json.loads((loc / "blocks" / "zarr.json").read_text())
    entries = meta["attributes"]["index"]["blocks"]
    sgd = next(b for b, e in entries.items() if "-sgd-" in e["block"]["runs"][0])
    doc = entries[sgd]["block"]
    (doc.get("shared") or doc["attrs"][0])["optimizer"] = "adam"  # swapped, digest unchanged
    (loc / "blocks" / "zarr.json").write_text(json.dumps(meta))
    store = TrajectoryStore.open(str(loc))
    by_opt = {rid: m.optimizer for rid, m in store.iter_runs()}
    assert sorted(by_opt.values()) == ["adam"] * 3 + ["sgd"] * 3  # as the runs say
    (rid,) = doc["runs"]
    assert "does not match its digest" in store.index_rejected[rid]
    s = summarize_store(str(loc), verify=True)
    assert any("its run index entry is ignored" in p and rid in p for p in s["problems"])


def test_fingerprints_are_json_dumps_field_by_field() -> None:
    """``run_fingerprint`` writes the canonical JSON itself (fast); it equals json.dumps's."""
    import hashlib
    import json

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from lohp_cli.artifacts.run import IDENTITY, run_fingerprint

    def reference(rid: str, attrs: dict) -> str:
        ident = {k: attrs.get(k) for k in IDENTITY}
        text = json.dumps([rid, ident], sort_keys=True, separators=(",", ":"), allow_nan=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
    values = st.recursive(
        scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(), c, max_size=3)
    )

    @settings(max_examples=300, deadline=None)
    @given(st.text(), st.dictionaries(st.sampled_from([*IDENTITY, "other"]), values))
    def check(rid: str, attrs: dict) -> None:
        assert run_fingerprint(rid, attrs) == reference(rid, attrs)
        assert run_fingerprint(rid, attrs, {}) == reference(rid, attrs)

    check()


@pytest.mark.parametrize(
    "codec",
    [
        StoreCodecConfig(chunk_runs=2, chunk_steps=2),
        StoreCodecConfig(chunk_runs=3, lossy="bf16"),
        StoreCodecConfig(chunk_runs=2, codec="blosc-zstd", transpose=False),
    ],
    ids=["pcodec-time-chunks", "bf16", "blosc-no-transpose"],
)
def test_block_codecs_round_trip(tmp_path: Path, codec: StoreCodecConfig) -> None:
    import torch

    rids = block_store(tmp_path / "s.zarr", codec=codec)
    store = TrajectoryStore.open(str(tmp_path / "s.zarr"))
    for r, rid in enumerate(rids):
        want = np.arange(SIZE, dtype=np.float32)[None] + r * SIZE + 100 * np.arange(STATES)[:, None]
        if codec.lossy == "bf16":  # rounded to bfloat16, read as float32
            want = torch.from_numpy(want).to(torch.bfloat16).float().numpy()
        np.testing.assert_array_equal(store.weights(rid), want)
        np.testing.assert_array_equal(store.run_array(rid, "loss"), np.arange(STATES))  # exact
    assert store.run_codec(rids[0])[1] is (codec.lossy == "bf16")
    assert summarize_store(str(tmp_path / "s.zarr"), verify=True)["verified"]


def test_a_block_is_written_on_the_writer_thread_while_the_caller_goes_on() -> None:
    """WriteSink runs jobs in order on its own thread; submit returns at once while a job runs
    (up to ``depth`` waiting), so the next batch trains while this one is written."""
    import threading

    sink = WriteSink(depth=2)
    started, release, seen = threading.Event(), threading.Event(), []

    def slow() -> None:
        seen.append(threading.current_thread().name)
        started.set()
        release.wait(5)

    sink.submit(slow)
    assert started.wait(5)
    t0 = time.perf_counter()
    sink.submit(lambda: seen.append("second"))  # queued behind the running job: no wait
    assert time.perf_counter() - t0 < 1.0 and seen == ["lohp-store-writer"]
    release.set()
    sink.close()
    assert seen == ["lohp-store-writer", "second"]
