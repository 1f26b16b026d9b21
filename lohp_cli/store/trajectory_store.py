"""Read and write the Zarr v3 trajectory store (schema ``lohp.trajectories`` v1).

Layout::

    <store>/                   root attrs: schema, schema_version, compat, layout, config, ...
      extractor/<param>        float32 weights of the frozen feature extractor (head model only)
      init/theta0              float32 [P]: the θ₀ every run starts from (init = "shared" only)
      tasks/<task_id>/condition  float32 [D]; attrs: task spec
      runs/                      attrs: index, every run's attrs in one document (run_index.py)
      runs/<run_id>/weights      float32 [T+1, P], chunked along time
      runs/<run_id>/loss, train_acc  float32 [T+1]
                                 attrs: optimizer hparams, seed, status running|complete, ...

A run is marked ``complete`` by the last write, after every chunk; anything else is partial and is
redone by the next ``collect``. A plain ``zarr.open_group`` reads everything. A location is a
local path (or ``file://`` URL) or an fsspec URL (``s3://``, ``memory://``) opened through zarr's
``FsspecStore``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

import lohp_cli.store.chunks as chunks
import lohp_cli.store.run_index as run_index
from lohp_cli.artifacts.run import RunMeta, new_run_meta, read_run_meta
from lohp_cli.artifacts.store import StoreMeta, new_store_meta, read_store_meta
from lohp_cli.config import StoreCodecConfig
from lohp_cli.errors import StoreError
from lohp_cli.store.codecs import codecs_for, describe_codecs, filters_for, serializer_for
from lohp_cli.store.groups import (  # re-exported: the axis names of every array
    CONDITION_DIMS,
    INIT_GROUP,
    PARAM_DIMS,
    STATE_DIMS,
    WEIGHT_DIMS,
    StoreGroups,
    tensor_dims,
)
from lohp_cli.store.location import local_path as _local_path
from lohp_cli.store.location import open_group as _open_group
from lohp_cli.store.location import remote_exists
from lohp_cli.store.schema import STATUS_RUNNING
from lohp_cli.store.writer import RunWriter

__all__ = [
    "CONDITION_DIMS",
    "INIT_GROUP",
    "PARAM_DIMS",
    "STATE_DIMS",
    "WEIGHT_DIMS",
    "TrajectoryStore",
    "codecs_for",
    "tensor_dims",
]
RUN_ARRAYS = ("weights", "loss", "train_acc")


class TrajectoryStore(StoreGroups):
    """A trajectory store opened for reading (``mode="r"``) or appending runs (``mode="r+"``).

    A run's attributes are read as a validated :class:`RunMeta` (from a trusted entry of the run
    index, else from the run itself; see :mod:`lohp_cli.store.run_index`); a run whose attributes
    are missing, unreadable or invalid is not complete. Its arrays are checked against the
    store's layout (``[T+1, P]`` weights, ``[T+1]`` loss and accuracy) where they are opened.
    """

    def __init__(self, location: str, group: Any, meta: StoreMeta | None = None) -> None:
        self.location = location
        self.root = group
        self.meta = read_store_meta(dict(group.attrs), location) if meta is None else meta
        # the run index's trusted entries of complete runs (None: not read yet; {}: none or
        # stale), whether this process has removed the stored index before changing a run, and
        # why the runs group's own metadata does not read (None: it reads)
        self._index: dict[str, run_index.Entry] | None = None
        self._index_removed = False
        self.runs_group_problem: str | None = None
        self.index_rejected: dict[str, str] = {}  # run id -> why its index entry was ignored
        self._arrays: dict[tuple[str, str], Any] = {}  # opened and checked run arrays
        self._conditions: dict[str, Any] = {}

    # ---- opening ----------------------------------------------------------------------------
    @classmethod
    def open(cls, location: str, mode: str = "r") -> TrajectoryStore:
        """Open an existing store and check its schema; raise :class:`StoreError` otherwise."""
        path = _local_path(location)
        if path is not None:
            if not path.exists():
                raise StoreError(
                    f"No trajectory store at '{location}'. Create one with 'lohp collect --out "
                    f"{location}'."
                )
            if path.is_file():
                raise StoreError(f"'{location}' is a file, not a trajectory store (a directory).")
            if not (path / "zarr.json").is_file():
                raise StoreError(f"'{location}' is not a Zarr v3 store (no zarr.json).")
        return cls(location, _open_group(location, mode))  # validates the root attributes

    @classmethod
    def create_or_open(
        cls, location: str, root_attrs: dict[str, Any]
    ) -> tuple[TrajectoryStore, bool]:
        """Open a store for appending, or create it with ``root_attrs``.

        Returns ``(store, created)``. Refuses a path that is a file or a non-empty directory that
        is not a Zarr store, so nothing of the user's is ever overwritten.
        """
        path = _local_path(location)
        exists = True
        if path is not None:
            if path.is_file():
                raise StoreError(
                    f"Output '{location}' is a file; give a directory path for the store."
                )
            if path.is_dir() and not (path / "zarr.json").exists():
                if any(path.iterdir()):
                    raise StoreError(
                        f"Output '{location}' is a non-empty directory that is not a Zarr store; "
                        "choose another --out."
                    )
                exists = False
            elif not path.exists():
                exists = False
        else:
            exists = remote_exists(location)
        if exists:
            return cls.open(location, mode="r+"), False
        meta = new_store_meta(root_attrs, location)  # what is written is valid
        group = _open_group(location, "w-")
        group.attrs.update(meta.to_json())
        group.require_group("tasks")
        group.require_group("runs")
        return cls(location, group, meta), True

    def destroy(self) -> None:
        """Remove the whole store (a store this process created and could not initialise)."""
        path = _local_path(self.location)
        if path is not None:
            import shutil

            for child in list(path.iterdir()) if path.is_dir() else []:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
            return
        from zarr.core.sync import sync

        sync(self.root.store.delete_dir(""))

    # ---- root metadata ----------------------------------------------------------------------
    @property
    def attrs(self) -> dict[str, Any]:
        """The root attributes as stored (raw JSON); read them through :attr:`meta`."""
        return dict(self.root.attrs)

    def update_attrs(self, **values: Any) -> None:
        """Set root attributes (and the same fields of :attr:`meta`)."""
        self.root.attrs.update(values)
        self.meta = self.meta.model_copy(update=values)

    # ---- the runs group and its index -------------------------------------------------------
    def run_ids(self) -> list[str]:
        """Names of all run groups, readable or not (a torn one reads as unreadable later)."""
        return self._list("runs")

    def runs_group(self) -> Any:
        """The ``runs`` group, to change it; unreadable metadata is a StoreError."""
        try:
            hint = self.repair_hint().replace("redo", "rewrite")
            return self.node("runs", "group 'runs'", hint=hint)
        except KeyError:
            raise StoreError(f"Store '{self.location}' has no 'runs' group.") from None

    def _indexed(self, listed: list[str] | None = None) -> dict[str, run_index.Entry]:
        """The run index's trusted entries of complete runs, read once (``{}`` if absent,
        stale or unreadable: runs are then read one by one)."""
        if self._index is None:
            doc = None
            try:
                doc = self.runs_group().attrs.get(run_index.INDEX_ATTR)
            except StoreError as exc:
                self.runs_group_problem = str(exc)
            listed = self.run_ids() if listed is None else listed
            states = self.meta.compat.states
            found = run_index.complete_entries(doc, listed, states, self._where())
            self._index, self.index_rejected = found
        return self._index

    def index_mismatches(self) -> dict[str, str]:
        """Run id -> a line, for the runs a fresh run index lists as complete whose own
        attributes say otherwise (each is read): damage after the index was written. From then
        on, reads bypass the index."""
        indexed, self._index = self._indexed(), {}
        return run_index.mismatches(indexed, {rid: self.own_attrs(rid) for rid in indexed})

    def forget_metadata(self) -> None:
        """Forget what was read of the runs and tasks (after their metadata was rewritten)."""
        self._index, self.index_rejected, self.runs_group_problem = None, {}, None
        self._arrays.clear()
        self._conditions.clear()

    def _forget(self, rid: str) -> None:
        """Before this process first changes a run: remove the stored run index (see
        ``run_index``); and forget what the index said of ``rid``."""
        if not self._index_removed:
            runs = self.runs_group()
            if run_index.INDEX_ATTR in runs.attrs:
                del runs.attrs[run_index.INDEX_ATTR]  # one atomic rewrite of runs/zarr.json
            self._index_removed = True
        if self._index:
            self._index.pop(rid, None)
        for name in RUN_ARRAYS:
            self._arrays.pop((rid, name), None)

    def write_run_index(self) -> int:
        """Write the run index of the runs the store has now; returns how many it lists.

        Reads the attributes of every run not already known complete (from the index read at
        open), so a collect that adds a few runs to a large indexed store reads only those.
        """
        listed = self.run_ids()
        known = self._indexed(listed)
        entries: dict[str, run_index.Entry | None] = {}
        for rid in listed:
            hit = known.get(rid)
            if hit is None:
                attrs = self.own_attrs(rid)
                meta = self._valid(rid, attrs)
                if meta is not None and meta.complete and attrs is not None:
                    try:
                        fmt, codec = self.run_format(rid), self.run_codec(rid)
                    except StoreError:  # weights that do not open: no entry, readers see it
                        fmt = codec = None
                    if fmt is not None and codec is not None:
                        hit = run_index.entry(meta, attrs, fmt, codec)
            entries[rid] = hit
        self.runs_group().attrs[run_index.INDEX_ATTR] = run_index.document(entries)
        self._index = {rid: e for rid, e in entries.items() if e is not None}
        self._index_removed = False
        return len(entries)

    # ---- a run's attributes -----------------------------------------------------------------
    def own_attrs(self, rid: str) -> dict[str, Any] | None:
        """A run's own attributes as stored (never the index's); None when missing or
        unreadable."""
        try:
            return dict(self.root[f"runs/{rid}"].attrs)
        except Exception:  # noqa: BLE001 - a half-written run reads as missing
            return None

    def check_attrs(self, rid: str, attrs: dict[str, Any]) -> tuple[RunMeta | None, str | None]:
        """``(attributes, None)`` of a run with stored ``attrs``, or ``(None, why)`` when they
        are invalid or say a complete run of another length than the store's."""
        where = f"run {rid}"
        try:
            meta = read_run_meta(rid, attrs, where)
        except StoreError as exc:
            return None, str(exc)
        states = self.meta.compat.states
        if meta.complete and meta.steps_written != states:
            why = f"steps_written is {meta.steps_written}, the store records {states} states"
            return None, f"{where} attributes: {why}"
        return meta, None

    def _valid(self, rid: str, attrs: dict[str, Any] | None) -> RunMeta | None:
        return None if attrs is None else self.check_attrs(rid, attrs)[0]

    def run_attrs(self, rid: str) -> dict[str, Any] | None:
        """A run's attributes as stored (from a trusted index entry, else the run's own), or
        None when they are missing or unreadable; read them validated with :meth:`run_meta`."""
        hit = self._indexed().get(rid)
        return dict(hit.attrs) if hit is not None else self.own_attrs(rid)

    def run_meta(self, rid: str) -> RunMeta | None:
        """A run's validated attributes; None when they are missing, unreadable or invalid (a
        run that is not complete, which the next ``lohp collect`` redoes)."""
        hit = self._indexed().get(rid)
        return hit.meta if hit is not None else self._valid(rid, self.own_attrs(rid))

    def run_status(self, rid: str) -> str | None:
        meta = self.run_meta(rid)
        return None if meta is None else meta.status

    def complete_runs(self) -> list[str]:
        return [rid for rid, _ in self.iter_runs()]

    def iter_runs(self, complete_only: bool = True) -> Iterator[tuple[str, RunMeta]]:
        """``(run id, attributes)`` of the (complete) runs with valid attributes, in id order;
        from the run index when it is fresh (one listing and one read), else one read per run."""
        listed = self.run_ids()
        self._indexed(listed)
        for rid in listed:
            meta = self.run_meta(rid)
            if meta is None or (complete_only and not meta.complete):
                continue
            yield rid, meta

    # ---- writing runs -----------------------------------------------------------------------
    def delete_run(self, rid: str) -> None:
        """Remove a run, whether its metadata reads or not (every key under ``runs/<rid>/``)."""
        from zarr.core.sync import sync

        self._forget(rid)
        sync(self.root.store.delete_dir(f"runs/{rid}"))
        path = _local_path(self.location)
        if path is not None:  # directories the key deletion leaves
            import shutil

            shutil.rmtree(path / "runs" / rid, ignore_errors=True)

    def begin_run(
        self, rid: str, states: int, size: int, codec: StoreCodecConfig, attrs: dict[str, Any]
    ) -> RunWriter:
        """Start (or restart) a run: any earlier partial data of ``rid`` is removed first."""
        attrs = {**attrs, "status": STATUS_RUNNING, "steps_written": 0}
        new_run_meta(rid, attrs)  # what is written is valid
        self._forget(rid)
        path = _local_path(self.location)
        if path is None or (path / "runs" / rid).exists():
            self.delete_run(rid)
        g = self.runs_group().create_group(rid, attributes=attrs)
        compressors, serializer = codecs_for(codec), serializer_for(codec)
        chunk = min(codec.chunk_steps, states)
        arrays = {}
        arrays["weights"] = g.create_array(
            "weights",
            shape=(states, size),
            chunks=(chunk, size),
            dtype="float32",
            filters=filters_for(codec),
            serializer=serializer,
            compressors=compressors,
            fill_value=np.nan,
            dimension_names=WEIGHT_DIMS,
        )
        for name in ("loss", "train_acc"):
            arrays[name] = g.create_array(
                name,
                shape=(states,),
                chunks=(states,),
                dtype="float32",
                serializer=serializer,  # lossless: the rounding of lossy="bf16" is for weights
                compressors=compressors,
                fill_value=np.nan,
                dimension_names=STATE_DIMS,
            )
        return RunWriter(g, states, size, chunk, arrays, rid=rid, attrs=attrs)

    # ---- a run's arrays ---------------------------------------------------------------------
    def run_array_meta(self, rid: str, name: str) -> Any:
        """The zarr array ``runs/<rid>/<name>``, opened once and checked against the store's
        layout (weights ``[T+1, P]``, loss and train_acc ``[T+1]``, float32): a missing array,
        unreadable metadata or another shape is a StoreError naming the run and the array."""
        arr = self._arrays.get((rid, name))
        if arr is None:
            states = self.meta.compat.states
            shape = (states, self.meta.param_count) if name == "weights" else (states,)
            what = f"run {rid}, array '{name}'"
            try:
                arr = self.node(f"runs/{rid}/{name}", what, shape)
            except KeyError:
                raise StoreError(
                    f"Store '{self.location}': {what} is missing; {self.repair_hint()}."
                ) from None
            self._arrays[(rid, name)] = arr
        return arr

    def check_run(self, rid: str, task_id: str) -> None:
        """Check, before a stage uses it, that a complete run's weights and its task's
        condition are there in the store's layout (metadata only: no chunk is read)."""
        self.run_array_meta(rid, "weights")
        self.condition_array(task_id)

    def weights(self, rid: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Recorded weights ``[stop - start, P]`` of a run."""
        return self.run_array(rid, "weights", slice(start, stop))

    def run_array(self, rid: str, name: str, selection: Any = ...) -> np.ndarray:
        """``runs/<rid>/<name>[selection]``; a damaged chunk raises ``DamagedChunkError``."""
        arr = self.run_array_meta(rid, name)
        return chunks.read(arr, selection, f"{self._where(rid)}, array '{name}'")

    def run_format(self, rid: str) -> tuple[bool, bool]:
        """``(checksummed, dimension_names)`` of a run's weights array (False for old stores)."""
        hit = self._indexed().get(rid)
        if hit is not None:
            return hit.format
        arr = self.run_array_meta(rid, "weights")
        return chunks.has_checksums(arr), chunks.has_dimension_names(arr)

    def run_codec(self, rid: str) -> tuple[str, bool]:
        """``(codec pipeline text, lossy)`` of a run's weights array, from its zarr metadata
        (or the run index)."""
        hit = self._indexed().get(rid)
        if hit is not None and hit.codec is not None:
            return hit.codec
        return describe_codecs(self.run_array_meta(rid, "weights"))

    def bytes_on_disk(self, sub: str = "") -> int | None:
        """Bytes under ``sub`` (glob, e.g. ``runs/*/weights``) on a local disk; None if remote."""
        path = _local_path(self.location)
        if path is None:
            return None
        dirs = list(path.glob(sub)) if sub else [path]
        return sum(f.stat().st_size for d in dirs for f in d.rglob("*") if f.is_file())
