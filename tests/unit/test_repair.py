"""``lohp collect --repair``: a damaged store is repaired with the store's own settings, to the
store an undamaged collect made (issue 25: a damaged task condition could not be repaired)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from lohp_cli.errors import StoreError
from lohp_cli.stages.collect import collect
from lohp_cli.store import TrajectoryStore
from lohp_cli.store.summary import summarize_store
from tests.cli.runner import invoke, plain
from tests.conftest import block_of, edit_run_attrs
from tests.unit.test_chunks import flip_byte
from tests.unit.test_collect_lib import assert_same_runs, cfg_at, copy_of_reference, reference

__all__ = ["copy_of_reference", "reference"]  # fixtures the tests below use


def chunk(array_dir: Path) -> Path:
    return sorted(p for p in (array_dir / "c").rglob("*") if p.is_file())[0]


def verified(store: str) -> bool:
    return summarize_store(store, verify=True)["verified"]


def repair_cli(store: str) -> str:
    """``lohp collect --out STORE --repair``: no other setting (the store's own are used)."""
    result = invoke("collect", "--out", store, "--repair", "--device", "cpu")
    assert result.exit_code == 0, plain(result.output)
    assert result.stdout.strip() == store
    return plain(result.stderr)


def test_a_damaged_condition_is_rewritten(reference: str, copy_of_reference: str) -> None:
    """Before: deleting the damaged runs and re-running collect left the condition as it was,
    so --verify kept failing."""
    tid = TrajectoryStore.open(copy_of_reference).task_ids()[0]
    flip_byte(chunk(Path(copy_of_reference) / "tasks" / tid / "condition"))
    assert not verified(copy_of_reference)
    collect(cfg_at(copy_of_reference))  # a plain collect does not look
    assert not verified(copy_of_reference)
    log = repair_cli(copy_of_reference)
    assert f"repaired: condition of task {tid}" in " ".join(log.split())
    assert verified(copy_of_reference)
    np.testing.assert_array_equal(
        TrajectoryStore.open(copy_of_reference).condition(tid),
        TrajectoryStore.open(reference).condition(tid),
    )
    assert_same_runs(reference, copy_of_reference)


def by_block(store: str) -> list[list[str]]:
    """The store's runs, block by block (each block: one optimizer's runs, in row order)."""
    s = TrajectoryStore.open(store)
    out: dict[str, list[str]] = {}
    for rid in s.run_ids():
        out.setdefault(s.slot(rid)[0], []).append(rid)  # type: ignore[index]
    return [out[b] for b in sorted(out)]


def test_damaged_and_invalid_runs_are_redone(reference: str, copy_of_reference: str) -> None:
    """A damaged chunk names (and redoes) every run it holds; a torn block document every run
    of the block; invalid attributes only their run, in its row, the others kept."""
    first, second, third = by_block(copy_of_reference)
    flip_byte(chunk(block_of(copy_of_reference, first[0])[0] / "weights"))  # a damaged chunk
    (block_of(copy_of_reference, second[0])[0] / "zarr.json").write_text('{"zarr_format": 3, "n')
    edit_run_attrs(copy_of_reference, third[0], lambda a: {**a, "task_id": 5})  # invalid
    assert not verified(copy_of_reference)
    kept = TrajectoryStore.open(copy_of_reference).slot(third[1])
    result = collect(cfg_at(copy_of_reference, repair=True))
    redone = sorted([*first, *second, third[0]])
    assert result.collected == 5 and result.repaired["runs"] == redone
    assert verified(copy_of_reference)
    assert_same_runs(reference, copy_of_reference)
    assert TrajectoryStore.open(copy_of_reference).slot(third[1]) == kept


def test_unreadable_group_metadata_is_rewritten(reference: str, copy_of_reference: str) -> None:
    store = Path(copy_of_reference)
    (store / "blocks" / "zarr.json").write_text("{garbage")
    (store / "tasks" / "zarr.json").write_text("[]")
    with pytest.raises(StoreError, match="group 'blocks' has unreadable metadata.*--repair"):
        collect(cfg_at(copy_of_reference))
    result = collect(cfg_at(copy_of_reference, repair=True))
    assert result.collected == 0 and sorted(result.repaired["groups"]) == ["blocks", "tasks"]
    assert verified(copy_of_reference)
    assert zarr.open_group(copy_of_reference)["blocks"].attrs["index"]["count"] == 3
    assert_same_runs(reference, copy_of_reference)


def test_a_run_damaged_after_the_index_was_written_is_redone(
    reference: str, copy_of_reference: str
) -> None:
    rid = TrajectoryStore.open(copy_of_reference).run_ids()[0]
    edit_run_attrs(copy_of_reference, rid, lambda a: {**a, "seed": 1})  # not its fingerprint
    assert TrajectoryStore.open(copy_of_reference).run_status(rid) == "complete"  # the index
    assert collect(cfg_at(copy_of_reference)).collected == 0  # trusted: nothing to do
    result = collect(cfg_at(copy_of_reference, repair=True))
    assert result.repaired["runs"] == [rid] and verified(copy_of_reference)
    assert_same_runs(reference, copy_of_reference)


def test_a_sound_store_is_left_as_it_is(copy_of_reference: str) -> None:
    def files() -> dict[str, bytes]:
        root = Path(copy_of_reference)
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    before = files()
    result = collect(cfg_at(copy_of_reference, repair=True))
    assert (result.collected, result.repaired) == (0, {"groups": [], "conditions": [], "runs": []})
    assert files() == before


def test_repair_needs_a_store(tmp_path: Path) -> None:
    result = invoke("collect", "--out", tmp_path / "none.zarr", "--repair")
    assert result.exit_code == 3, plain(result.output)
    assert "nothing to repair" in plain(result.stderr)
    assert not (tmp_path / "none.zarr").exists()


def test_what_cannot_be_redone_is_named(copy_of_reference: str, tmp_path: Path) -> None:
    """The frozen parts are trained once per store; a damaged one is named, not retrained."""
    store = Path(shutil.copytree(copy_of_reference, tmp_path / "x.zarr"))
    TrajectoryStore.open(str(store), mode="r+").save_tensors("extractor", {"w": np.ones(3)}, {})
    flip_byte(chunk(store / "extractor" / "w"))
    with pytest.raises(StoreError, match="cannot repair.*group 'extractor'.*new --out"):
        collect(cfg_at(str(store), repair=True))


def test_a_damaged_run_of_an_id_that_says_nothing_stops_the_repair_before_any_change(
    copy_of_reference: str,
) -> None:
    store = Path(copy_of_reference)
    rid = TrajectoryStore.open(copy_of_reference).run_ids()[0]
    block, row = block_of(copy_of_reference, rid)
    meta = json.loads((block / "zarr.json").read_text())
    meta["attributes"]["block"]["runs"][row] = "odd"  # its fingerprint is of another id
    (block / "zarr.json").write_text(json.dumps(meta))
    tid = TrajectoryStore.open(copy_of_reference).task_ids()[0]
    flip_byte(chunk(store / "tasks" / tid / "condition"))
    before = {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    with pytest.raises(StoreError, match="run odd is damaged .* its id does not say"):
        collect(cfg_at(copy_of_reference, repair=True))
    assert {p: p.read_bytes() for p in store.rglob("*") if p.is_file()} == before
