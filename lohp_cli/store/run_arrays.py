"""Reading a run's arrays (a part of :class:`~lohp_cli.store.trajectory_store.TrajectoryStore`):
each array opened once and checked against the store's layout, a run's recorded weights and
statistics read from its own array (version 1) or its row of a block (version 2), the format
and codec a run is written with, and the bytes the store and its weights take on disk."""

from __future__ import annotations

from typing import Any

import numpy as np

import lohp_cli.store.chunks as chunks
from lohp_cli.store.block_runs import BlockLayout
from lohp_cli.store.codecs import describe_codecs
from lohp_cli.store.location import local_path as _local_path
from lohp_cli.store.run_groups import GroupLayout


class RunArrays:
    """What reads runs' arrays (a part of :class:`TrajectoryStore`)."""

    location: str
    layout: BlockLayout | GroupLayout
    _arrays: dict[tuple[str, str], tuple[Any, int | None]]  # opened and checked, by (run, name)

    # and, from TrajectoryStore and StoreGroups: _indexed, condition_array, _where
    def run_array_meta(self, rid: str, name: str) -> tuple[Any, int | None]:
        """The zarr array holding ``<name>`` of run ``rid`` and the run's row in it (None: a
        version-1 run's own array), opened once and checked against the store's layout: a
        missing array, unreadable metadata or another shape is a StoreError naming the run and
        the array."""
        hit = self._arrays.get((rid, name))
        if hit is None:
            hit = self._arrays[(rid, name)] = self.layout.array(rid, name)
        return hit

    def check_run(self, rid: str, task_id: str) -> None:
        """Check, before a stage uses it, that a complete run's weights and its task's
        condition are there in the store's layout (metadata only: no chunk is read)."""
        self.run_array_meta(rid, "weights")
        self.condition_array(task_id)

    def weights(self, rid: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Recorded weights ``[stop - start, P]`` of a run."""
        return self.run_array(rid, "weights", slice(start, stop))

    def run_array(self, rid: str, name: str, selection: Any = ...) -> np.ndarray:
        """``<name>[selection]`` of run ``rid`` (its own axes: state, param); a damaged chunk
        raises ``DamagedChunkError``."""
        arr, row = self.run_array_meta(rid, name)
        sel = selection if row is None else _in_row(row, selection)
        return chunks.read(arr, sel, f"{self._where(rid)}, array '{name}'")

    def run_format(self, rid: str) -> tuple[bool, bool]:
        """``(checksummed, dimension_names)`` of a run's weights array (False for old stores)."""
        hit = self._indexed().get(rid)
        if hit is not None:
            return hit.format
        arr, _ = self.run_array_meta(rid, "weights")
        return chunks.has_checksums(arr), chunks.has_dimension_names(arr)

    def run_codec(self, rid: str) -> tuple[str, bool]:
        """``(codec pipeline text, lossy)`` of a run's weights array, from its zarr metadata
        (or the run index)."""
        hit = self._indexed().get(rid)
        if hit is not None and hit.codec is not None:
            return hit.codec
        return describe_codecs(self.run_array_meta(rid, "weights")[0])

    def bytes_on_disk(self, sub: str = "") -> int | None:
        """Bytes under ``sub`` (glob, e.g. ``blocks/*/weights``) on a local disk; None if
        remote."""
        path = _local_path(self.location)
        if path is None:
            return None
        dirs = list(path.glob(sub)) if sub else [path]
        return sum(f.stat().st_size for d in dirs for f in d.rglob("*") if f.is_file())

    def weight_bytes_on_disk(self) -> int | None:
        """Bytes of the runs' weights arrays (chunks and metadata) on a local disk."""
        return self.bytes_on_disk(self.layout.weights_glob)


def _in_row(row: int, selection: Any) -> Any:
    """A run's own selection (over its state and param axes) as one in its block's row."""
    if selection is Ellipsis:
        return (row, Ellipsis)
    if isinstance(selection, tuple):
        return (row, *selection)
    return (row, selection)
