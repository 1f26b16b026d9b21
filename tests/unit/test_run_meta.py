"""A run's attributes as a validated RunMeta (lohp_cli/artifacts/run.py), read from the run index
only where an entry validates and agrees with its run id and fingerprint, and the run's arrays
checked against the store's layout where they are opened (issue 25)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from lohp_cli.artifacts.run import RunMeta, read_run_meta, run_fingerprint
from lohp_cli.errors import StoreError
from lohp_cli.store import TrajectoryStore, run_id
from lohp_cli.store.sampler import select_runs
from lohp_cli.store.summary import summarize_store
from tests.conftest import make_linear_store

TASKS = ("c0_1", "c1_2")
SGD = [run_id(t, "sgd", 0) for t in TASKS]
ADAM = [run_id(t, "adam", 0) for t in TASKS]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("meta") / "lin.zarr"
    make_linear_store(  # the layout of version 1 (test_blocks.py: the same checks on blocks)
        path, n_tasks=2, size=5, cond_dim=3, steps=4, optimizers=("sgd", "adam"), schema_version=1
    )
    TrajectoryStore.open(str(path), mode="r+").write_run_index()
    return path


@pytest.fixture
def store(base: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(base, tmp_path / "store.zarr"))


def edit_json(path: Path, change: Any) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def edit_index(store: Path, change: Any) -> None:
    edit_json(store / "runs" / "zarr.json", lambda d: change(d["attributes"]["index"]["runs"]))


def edit_run(store: Path, rid: str, change: Any) -> None:
    edit_json(store / "runs" / rid / "zarr.json", lambda d: change(d["attributes"]))


def selected(store: Path, optimizers: tuple[str, ...] | None) -> list[tuple[str, str, str]]:
    refs = select_runs(TrajectoryStore.open(str(store)), optimizers)
    return [(r.run_id, r.task_id, r.optimizer) for r in refs]


def truth(optimizers: tuple[str, ...]) -> list[tuple[str, str, str]]:
    return sorted((run_id(t, o, 0), t, o) for t in TASKS for o in optimizers)


# ---- RunMeta -----------------------------------------------------------------------------------
def test_a_complete_run_records_its_fingerprint(store: Path) -> None:
    attrs = dict(zarr.open_group(str(store))["runs"][SGD[0]].attrs)
    assert attrs["fingerprint"] == run_fingerprint(SGD[0], attrs)
    meta = TrajectoryStore.open(str(store)).run_meta(SGD[0])
    assert isinstance(meta, RunMeta) and meta.complete and meta.optimizer == "sgd"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.pop("task_id"), "field 'task_id': Field required"),
        (lambda a: a.update(task_id=5), "field 'task_id': Input should be a valid string"),
        (lambda a: a.update(replicate=True), "field 'replicate': Input should be a valid integer"),
        (lambda a: a.update(steps_written="5"), "field 'steps_written'"),
        (lambda a: a.update(status="done"), "field 'status'"),
        (lambda a: a.update(hparams=[1]), "field 'hparams'"),
        (lambda a: a.update(optimizer="adam"), "optimizer is 'adam', its run id says 'sgd'"),
        (lambda a: a.update(seed=a["seed"] + 1 if "seed" in a else 1), "fingerprint"),
    ],
)
def test_invalid_attributes_are_named(store: Path, change: Any, message: str) -> None:
    attrs = dict(zarr.open_group(str(store))["runs"][SGD[0]].attrs)
    change(attrs)
    with pytest.raises(StoreError, match=message):
        read_run_meta(SGD[0], attrs, "run x")


def test_a_run_id_of_another_form_is_not_checked_against_it() -> None:
    attrs = {"task_id": "t", "optimizer": "adam", "replicate": 3, "status": "running"}
    assert read_run_meta("r1", attrs, "run r1").optimizer == "adam"


# ---- the run index: trusted entry by entry ------------------------------------------------------
@pytest.mark.parametrize(
    "change",
    [
        lambda runs: runs[SGD[0]]["attrs"].pop("task_id"),  # KeyError: 'task_id' before
        lambda runs: runs[SGD[0]]["attrs"].update(task_id=5),  # path=5 is not a string
        lambda runs: runs[SGD[0]].update(format="yes"),
        lambda runs: runs[SGD[0]].update(attrs=[]),
        lambda runs: runs[SGD[0]]["attrs"].update(steps_written=2),
    ],
)
def test_an_index_entry_that_does_not_validate_is_ignored(store: Path, change: Any) -> None:
    edit_index(store, change)
    assert selected(store, None) == truth(("sgd", "adam"))
    reader = TrajectoryStore.open(str(store))
    assert set(reader._indexed()) == {SGD[1], *ADAM}
    assert set(reader.index_rejected) == {SGD[0]}
    summary = summarize_store(str(store), verify=True)
    assert summary["runs"] == {"adam": {"complete": 2}, "sgd": {"complete": 2}}
    assert summary["problems"] == [
        f"run {SGD[0]}: its run index entry is ignored ({reader.index_rejected[SGD[0]]}); the "
        "run was read itself; re-run 'lohp collect' to rewrite the index"
    ]


def swap_optimizers(runs: dict[str, Any], fingerprints: bool = True) -> None:
    for sgd, adam in zip(SGD, ADAM, strict=True):
        a, b = runs[sgd]["attrs"], runs[adam]["attrs"]
        a["optimizer"], b["optimizer"] = b["optimizer"], a["optimizer"]
        if not fingerprints:
            a.pop("fingerprint"), b.pop("fingerprint")


@pytest.mark.parametrize("fingerprints", [True, False], ids=["fingerprint", "run-id"])
def test_swapped_optimizers_in_the_index_do_not_change_the_runs_used(
    store: Path, fingerprints: bool
) -> None:
    """Before: an index whose optimizer attributes were swapped made train-policy --optimizers
    adam train on the SGD runs (exit 0). The fingerprint catches it, and without one (an index
    written before it) the run id does."""
    edit_index(store, lambda runs: swap_optimizers(runs, fingerprints))
    assert selected(store, ("adam",)) == truth(("adam",))
    assert selected(store, ("sgd",)) == truth(("sgd",))


def test_a_swapped_entry_under_another_run_id_is_ignored(store: Path) -> None:
    def swap(runs: dict[str, Any]) -> None:
        runs[SGD[1]], runs[SGD[0]] = runs[SGD[0]], runs[SGD[1]]

    edit_index(store, swap)
    assert selected(store, None) == truth(("sgd", "adam"))
    assert set(TrajectoryStore.open(str(store))._indexed()) == {*ADAM}


def test_a_run_whose_own_attributes_were_changed_is_not_used(store: Path) -> None:
    """Without the index, a run whose identity no longer matches its fingerprint is not
    complete: not used, counted invalid, reported by --verify, redone by collect."""
    (store / "runs" / "zarr.json").write_text(
        json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}})
    )
    edit_run(store, SGD[0], lambda a: a.update(task_id="c1_2"))
    assert selected(store, ("sgd",)) == [(SGD[1], "c1_2", "sgd")]
    summary = summarize_store(str(store), verify=True)
    assert summary["runs"]["?"] == {"invalid": 1} and summary["complete_runs"] == 3
    assert summary["problems"] == [
        f"run {SGD[0]} attributes: task_id is 'c1_2', its run id says 'c0_1'; re-run 'lohp "
        "collect' to redo the run"
    ]


# ---- arrays checked against the store's layout --------------------------------------------------
@pytest.mark.parametrize(("states", "width"), [(5, 6), (4, 5), (5, 4)])
def test_weights_of_another_shape_are_refused_naming_run_and_shapes(
    store: Path, states: int, width: int
) -> None:
    """Before: exit 1 with a numpy broadcast error in train-policy."""
    g = zarr.open_group(str(store / "runs" / SGD[1]), mode="r+")
    del g["weights"]
    g.create_array("weights", data=np.zeros((states, width), np.float32))
    with pytest.raises(StoreError) as err:
        select_runs(TrajectoryStore.open(str(store)), None)
    assert str(err.value) == (
        f"Store '{store}': run {SGD[1]}, array 'weights' is float32 of shape ({states}, {width}); "
        f"the store's layout needs float32 of shape (5, 5); re-run 'lohp collect --out {store} "
        "--repair' to redo it."
    )


def test_a_condition_of_another_shape_or_missing_is_refused(store: Path) -> None:
    g = zarr.open_group(str(store / "tasks" / "c0_1"), mode="r+")
    del g["condition"]
    with pytest.raises(StoreError, match="has no condition of task c0_1, which its runs name"):
        select_runs(TrajectoryStore.open(str(store)), None)
    g.create_array("condition", data=np.zeros(4, np.float32))
    with pytest.raises(StoreError, match=r"array 'condition' is float32 of shape \(4,\)"):
        select_runs(TrajectoryStore.open(str(store)), None)


@pytest.mark.parametrize("text", ["{garbage", "[]", '{"zarr_format": 3}'])
def test_unreadable_array_metadata_is_a_store_error(store: Path, text: str) -> None:
    (store / "runs" / SGD[0] / "weights" / "zarr.json").write_text(text)
    with pytest.raises(StoreError, match=f"run {SGD[0]}, array 'weights' has unreadable metadata"):
        select_runs(TrajectoryStore.open(str(store)), None)


# ---- the runs group's own metadata --------------------------------------------------------------
def test_runs_group_metadata_that_is_not_json_leaves_runs_readable(store: Path) -> None:
    """Before: JSONDecodeError (exit 1) in inspect and train-policy."""
    (store / "runs" / "zarr.json").write_text("{garbage")
    assert selected(store, None) == truth(("sgd", "adam"))
    summary = summarize_store(str(store), verify=True)
    assert summary["complete_runs"] == 4 and len(summary["problems"]) == 1
    assert "group 'runs' has unreadable metadata (JSONDecodeError" in summary["problems"][0]
    assert "--repair' to rewrite it" in summary["problems"][0]
