"""Chunk checksums, damaged-chunk errors, dimension names and xarray (lohp_cli/store/chunks.py),
on stores of schema version 1 (a group per run; the blocks of version 2: test_blocks.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from lohp_cli.config import StoreCodecConfig
from lohp_cli.store import TrajectoryStore, run_id
from lohp_cli.store.chunks import DamagedChunkError, has_checksums, has_dimension_names
from lohp_cli.store.summary import summarize_store, verify_run
from tests.conftest import ident

STATES, PARAMS = 9, 7
RID = run_id("c0_1", "adam", 0)
OTHER = run_id("c2_3", "sgd", 0)


def make_store(
    path: Path, checksum: bool = True, chunk_steps: int = 4, codec: str = "pcodec"
) -> TrajectoryStore:
    """Two complete runs (weights in 3 time chunks of up to 4 states), two tasks, an extractor."""
    store, _ = TrajectoryStore.create_or_open(
        str(path),
        {
            "compat": {
                "family": {"name": "f"},
                "model": {"name": "m"},
                "steps": STATES - 1,
                "record_every": 1,
                "batch_size": 1,
                "seed": 0,
            },
            "layout": [],
            "param_count": PARAMS,
            "condition_dim": 3,
            "schema_version": 1,
        },  # fmt: skip
    )
    codec = StoreCodecConfig(chunk_steps=chunk_steps, checksum=checksum, codec=codec)
    rng = np.random.default_rng(0)
    for rid, tid in ((RID, "c0_1"), (OTHER, "c2_3")):
        store.write_task(tid, rng.standard_normal(3).astype(np.float32), {"split": "source"})
        writer = store.begin_run(rid, STATES, PARAMS, codec, ident(rid))
        for _ in range(STATES):
            writer.append(rng.standard_normal(PARAMS).astype(np.float32), 1.0, 0.5)
        writer.finish()
    store.save_tensors(
        "extractor", {"0.weight": rng.standard_normal((4, 3)), "0.bias": np.ones(4)}, {}
    )
    return store


def chunk_file(path: Path, rid: str, index: int = 1) -> Path:
    return path / "runs" / rid / "weights" / "c" / str(index) / "0"


def flip_byte(f: Path) -> None:
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0xFF
    f.write_bytes(bytes(b))


def truncate(f: Path) -> None:
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


@pytest.mark.parametrize("codec", ["pcodec", "blosc-zstd"])
@pytest.mark.parametrize("damage", [flip_byte, truncate])
def test_damaged_chunk_is_reported_naming_run_and_array(tmp_path: Path, damage, codec) -> None:
    path = tmp_path / "s.zarr"
    make_store(path, codec=codec)
    damage(chunk_file(path, RID))
    store = TrajectoryStore.open(str(path))
    with pytest.raises(DamagedChunkError, match=rf"run {RID}, array 'weights': checksum mismatch"):
        store.weights(RID)
    assert store.weights(RID, 0, 4).shape == (4, PARAMS)  # the sound chunks still read
    assert store.weights(OTHER).shape == (STATES, PARAMS)
    assert verify_run(store, RID) == [f"run {RID}, array 'weights', chunk 1.0: checksum mismatch"]
    assert verify_run(store, OTHER) == []
    summary = summarize_store(str(path), verify=True)
    assert summary["verified"] is False
    assert summary["problems"] == [f"run {RID}, array 'weights', chunk 1.0: checksum mismatch"]


def test_every_damaged_chunk_gets_its_own_line(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    make_store(path)
    flip_byte(chunk_file(path, RID, 0))
    truncate(chunk_file(path, RID, 2))
    flip_byte(chunk_file(path, OTHER, 1))
    flip_byte(path / "tasks" / "c0_1" / "condition" / "c" / "0")
    flip_byte(path / "extractor" / "0.weight" / "c" / "0" / "0")
    problems = summarize_store(str(path), verify=True)["problems"]
    assert sorted(problems) == sorted(
        [
            f"run {RID}, array 'weights', chunk 0.0: checksum mismatch",
            f"run {RID}, array 'weights', chunk 2.0: checksum mismatch",
            f"run {OTHER}, array 'weights', chunk 1.0: checksum mismatch",
            "task c0_1, array 'condition', chunk 0: checksum mismatch",
            "group 'extractor', array '0.weight', chunk 0.0: checksum mismatch",
        ]
    )
    store = TrajectoryStore.open(str(path))
    with pytest.raises(DamagedChunkError, match="task c0_1, array 'condition'"):
        store.condition("c0_1")
    with pytest.raises(DamagedChunkError, match="group 'extractor', array '0.weight'"):
        store.load_tensors("extractor")


def test_missing_chunk_of_a_complete_run_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    make_store(path)
    chunk_file(path, RID).unlink()
    problems = verify_run(TrajectoryStore.open(str(path)), RID)
    assert problems == [f"run {RID}, array 'weights', chunk 1.0: missing"]


def test_store_without_checksums_still_opens_and_verifies(tmp_path: Path) -> None:
    """A store written before checksums: it reads and verifies; damage is found where the
    decompression fails (a broken Blosc header), not where a byte flips inside the data."""
    path = tmp_path / "old.zarr"
    make_store(path, checksum=False, codec="blosc-zstd")
    store = TrajectoryStore.open(str(path))
    assert store.run_format(RID) == (False, True)
    summary = summarize_store(str(path), verify=True)
    assert summary["verified"] is True and summary["checksums"] == "none"
    f = chunk_file(path, RID)
    b = bytearray(f.read_bytes())
    b[0] ^= 0xFF  # Blosc header: version and flags
    b[3] ^= 0x55
    f.write_bytes(bytes(b))
    with pytest.raises(DamagedChunkError, match=rf"run {RID}, array 'weights': decompression"):
        store.weights(RID)
    assert summarize_store(str(path), verify=True)["verified"] is False


def test_new_arrays_have_checksums_and_dimension_names(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    make_store(path)
    root = zarr.open_group(str(path), mode="r")
    run = root["runs"][RID]
    assert run["weights"].metadata.dimension_names == ("state", "param")
    assert run["loss"].metadata.dimension_names == ("state",)
    assert run["train_acc"].metadata.dimension_names == ("state",)
    assert root["tasks"]["c0_1"]["condition"].metadata.dimension_names == ("condition",)
    ext = root["extractor"]
    assert ext["0.weight"].metadata.dimension_names == ("0.weight.out", "0.weight.in")
    assert ext["0.bias"].metadata.dimension_names == ("0.bias.out",)
    for arr in (run["weights"], run["loss"], root["tasks"]["c0_1"]["condition"], ext["0.bias"]):
        assert has_checksums(arr) and has_dimension_names(arr)
    summary = summarize_store(str(path))
    assert (summary["checksums"], summary["dimension_names"]) == ("all", "all")


def test_inspect_says_when_runs_predate_dimension_names(tmp_path: Path) -> None:
    """Arrays made the way lohp 0.1 made them (no dimension names, no checksum) still read."""
    path = tmp_path / "s.zarr"
    store = make_store(path)
    group = store.root["runs"][OTHER]
    data = store.weights(OTHER)
    del group["weights"]
    group.create_array("weights", data=data)  # no dimension_names, default codecs
    summary = summarize_store(str(path), verify=True)
    assert summary["verified"] is True
    assert (summary["checksums"], summary["dimension_names"]) == ("1 of 2", "1 of 2")
    np.testing.assert_array_equal(TrajectoryStore.open(str(path)).weights(OTHER), data)


def test_a_store_of_the_old_default_codec_reads_and_takes_new_default_runs(tmp_path: Path) -> None:
    """Runs written with blosc-zstd L5 shuffle (the default before pcodec) read as written; runs
    collected into the same store later use the new default; ``inspect`` lists both."""
    path = tmp_path / "old.zarr"
    store = make_store(path, codec="blosc-zstd")
    assert store.run_codec(RID) == ("transpose > blosc-zstd shuffle L5 > crc32c", False)
    old = {rid: store.weights(rid) for rid in (RID, OTHER)}
    new_rid = run_id("c0_1", "sgd", 0)
    rng = np.random.default_rng(1)
    new = rng.standard_normal((STATES, PARAMS)).astype(np.float32)
    writer = store.begin_run(
        new_rid, STATES, PARAMS, StoreCodecConfig(chunk_steps=4), ident(new_rid)
    )
    for row in new:
        writer.append(row, 1.0, 0.5)
    writer.finish()
    reader = TrajectoryStore.open(str(path))
    for rid, w in old.items():
        np.testing.assert_array_equal(reader.weights(rid), w)
    np.testing.assert_array_equal(reader.weights(new_rid), new)
    summary = summarize_store(str(path), verify=True)
    assert summary["verified"] is True
    assert summary["weight_codecs"] == {
        "transpose > blosc-zstd shuffle L5 > crc32c": 2,
        "transpose > pcodec L8 delta auto > crc32c": 1,
    }
    assert (summary["lossy"], summary["checksums"]) == ("none", "all")


# ---- xarray --------------------------------------------------------------------------------------
def test_xarray_opens_a_run_with_lohps_values(tmp_path: Path) -> None:
    xr = pytest.importorskip("xarray")
    path = tmp_path / "s.zarr"
    make_store(path)
    store = TrajectoryStore.open(str(path))
    ds = xr.open_zarr(str(path), group=f"runs/{RID}", consolidated=False)
    assert ds["weights"].dims == ("state", "param")
    assert ds.sizes == {"state": STATES, "param": PARAMS}
    np.testing.assert_array_equal(ds["weights"].values, store.weights(RID))
    np.testing.assert_array_equal(ds["loss"].values, store.run_array(RID, "loss"))
    task = xr.open_zarr(str(path), group="tasks/c0_1", consolidated=False)
    np.testing.assert_array_equal(task["condition"].values, store.condition("c0_1"))
    ext = xr.open_zarr(str(path), group="extractor", consolidated=False)
    assert ext["0.weight"].dims == ("0.weight.out", "0.weight.in")
