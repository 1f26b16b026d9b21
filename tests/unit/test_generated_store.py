"""The generated store's writer (lohp_cli/store/generated.py) against its reader: what is written
reads back with the same bytes, axes and chunks; an existing store is replaced whole, atomically,
with no temporary directory or lock file left behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lohp_cli.artifacts.generated import GeneratedMeta, new_generated_meta
from lohp_cli.errors import StoreError
from lohp_cli.store.generated import (
    GeneratedTask,
    open_generated,
    read_task_arrays,
    summarize_generated,
    task_arrays,
    write_generated,
)
from lohp_cli.tasks.layout import ParamLayout

P, D, S, L = 5, 3, 2, 4  # weights, condition entries, samples, states of a path


def meta(tasks: list[str], save_paths: bool) -> GeneratedMeta:
    return new_generated_meta(
        policy={"path": "p", "method": "lo-hp", "k": 2, "N": L - 1, "store_fingerprint": {},
                "trained_steps": 3, "style": None},
        layout=ParamLayout.flat(P).to_json(), param_count=P, store_location="/s.zarr",
        tasks=tasks, config={"samples": S, "save_paths": save_paths},
        timing={"device": "cpu"}, provenance={},
    )  # fmt: skip


def task(name: str, seed: int, save_paths: bool) -> GeneratedTask:
    rng = np.random.default_rng(seed)
    path = rng.normal(size=(S, L, P)).astype(np.float32)
    cond = rng.normal(size=D).astype(np.float32)
    return GeneratedTask(
        name, path[:, -1].copy(), cond, path if save_paths else None, {"classes": [seed]}
    )


@pytest.mark.parametrize("save_paths", [False, True])
def test_what_is_written_reads_back(tmp_path: Path, save_paths: bool) -> None:
    out = tmp_path / "g.zarr"
    tasks = [task("a", 1, save_paths), task("b", 2, save_paths)]
    write_generated(out, meta(["a", "b"], save_paths), tasks)
    g, read = open_generated(str(out))
    assert read.tasks == ["a", "b"] and read.param_count == P
    for t in tasks:
        arrays = read_task_arrays(g, str(out), t.id, task_arrays(save_paths))
        assert arrays["weights"].tobytes() == t.weights.tobytes()
        assert arrays["condition"].tobytes() == t.condition.tobytes()
        assert g[f"{t.id}/weights"].metadata.dimension_names == ("sample", "param")
        assert g[f"{t.id}/condition"].metadata.dimension_names == ("condition",)
        assert dict(g[t.id].attrs) == t.attrs
        if save_paths:
            assert t.path is not None and arrays["path"].tobytes() == t.path.tobytes()
            assert g[f"{t.id}/path"].chunks == (1, L, P)  # one chunk per sample
        else:
            assert "path" not in g[t.id]
    summary = summarize_generated(str(out), verify=True)
    assert summary["verified"] and summary["paths_saved"] == save_paths
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.zarr"]  # no tmp, no lock


def test_an_existing_store_is_replaced_whole(tmp_path: Path) -> None:
    out = tmp_path / "g.zarr"
    write_generated(out, meta(["a", "b"], True), [task("a", 1, True), task("b", 2, True)])
    write_generated(out, meta(["c"], False), [task("c", 3, False)])
    g, read = open_generated(str(out))
    assert read.tasks == ["c"] and set(g.group_keys()) == {"c"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.zarr"]


def test_a_damaged_chunk_is_named(tmp_path: Path) -> None:
    out = tmp_path / "g.zarr"
    write_generated(out, meta(["a"], False), [task("a", 1, False)])
    (chunk,) = [
        p for p in (out / "a" / "weights").rglob("*") if p.is_file() and p.name != "zarr.json"
    ]
    chunk.write_bytes(b"\0" * chunk.stat().st_size)
    g, _ = open_generated(str(out))
    with pytest.raises(StoreError, match="task a"):
        read_task_arrays(g, str(out), "a", ["weights"])
