"""Read and write the Zarr v3 trajectory store (schema ``lohp.trajectories``, version 2; version
1 is read).

Layout (version 2)::

    <store>/                   root attrs: schema, schema_version, compat, layout, config, ...
      extractor/<param>        float32 weights of the frozen feature extractor (head model only)
      init/theta0              float32 [P]: the θ₀ every run starts from (init = "shared" only)
      tasks/<task_id>/condition  float32 [D]; attrs: task spec
      blocks/                    attrs: index, every block's document in one (run_index.py)
      blocks/<block id>/         the runs of one batch (blocks.py): run [R] (their ids),
                                 weights [R, T+1, P], loss and train_acc [R, T+1];
                                 attrs: each run's attributes, status running|complete

Version 1 has ``runs/<run id>/`` (weights [T+1, P], loss, train_acc, the run's attributes)
instead (run_groups.py); lohp reads it and adds no runs to it. Everything here is addressed by
run id whatever the layout. A run is marked ``complete`` by the last write, after every chunk;
anything else is partial and is redone by the next ``collect``. A plain ``zarr.open_group`` reads
everything. A location is a local path (or ``file://`` URL) or an fsspec URL (``s3://``,
``memory://``) opened through zarr's ``FsspecStore``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lohp_cli.store.blocks as blocks
import lohp_cli.store.run_index as run_index
from lohp_cli.artifacts.run import RunMeta, read_run_meta
from lohp_cli.artifacts.store import StoreMeta, new_store_meta, read_store_meta
from lohp_cli.errors import StoreError
from lohp_cli.store.block_runs import BlockLayout
from lohp_cli.store.codecs import codecs_for
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
from lohp_cli.store.run_arrays import RunArrays
from lohp_cli.store.run_groups import GroupLayout
from lohp_cli.store.run_writing import RunWriting

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
_UNREAD = object()  # the run index document has not been read
BLOCK_LAYOUT_VERSION = 2  # the first schema version whose runs live in blocks


class TrajectoryStore(RunWriting, RunArrays, StoreGroups):
    """A trajectory store opened for reading (``mode="r"``) or appending runs (``mode="r+"``).

    Runs are named by run id whatever the layout (:attr:`layout`: rows of blocks in version 2,
    a group per run in version 1). A run's attributes are read as a validated :class:`RunMeta`
    (from a trusted entry of the run index, else from the run itself; see
    :mod:`lohp_cli.store.run_index`); a run whose attributes are missing, unreadable or invalid
    is not complete. Its arrays are checked against the store's layout (``[T+1, P]`` weights,
    ``[T+1]`` loss and accuracy per run) where they are opened.
    """

    def __init__(self, location: str, group: Any, meta: StoreMeta | None = None) -> None:
        self.location = location
        self.root = group
        self.meta = read_store_meta(dict(group.attrs), location) if meta is None else meta
        blocked = self.meta.schema_version >= BLOCK_LAYOUT_VERSION
        self.layout: BlockLayout | GroupLayout = BlockLayout(self) if blocked else GroupLayout(self)
        # the run index's trusted entries of complete runs (None: not read yet; {}: none or
        # stale), whether this process has removed the stored index before changing a run, and
        # why the runs group's own metadata does not read (None: it reads)
        self._index: dict[str, run_index.Entry] | None = None
        self._index_removed = False
        self.runs_group_problem: str | None = None
        self.index_rejected: dict[str, str] = {}  # run id -> why its index entry was ignored
        self._arrays: dict[tuple[str, str], tuple[Any, int | None]] = {}  # opened, checked
        self._index_doc: Any = _UNREAD
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
        group.require_group(GroupLayout.container if meta.schema_version < 2 else blocks.BLOCKS)
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

    def local_path(self) -> Any:
        """The store's directory (None for a URL)."""
        return _local_path(self.location)

    # ---- the runs group and its index -------------------------------------------------------
    @property
    def blocks(self) -> bool:
        """Whether runs live in blocks (schema version 2), not a group each (version 1)."""
        return self.layout.in_blocks

    def run_ids(self) -> list[str]:
        """Ids of all runs the store lists, readable or not (a torn one reads as unreadable)."""
        return self.layout.run_ids()

    def runs_group(self) -> Any:
        """The group of the runs (``blocks``, or ``runs`` in version 1), to change it; unreadable
        metadata is a StoreError."""
        name = self.layout.container
        try:
            hint = self.repair_hint().replace("redo", "rewrite")
            return self.node(name, f"group '{name}'", hint=hint)
        except KeyError:
            raise StoreError(f"Store '{self.location}' has no '{name}' group.") from None

    def index_doc(self) -> Any:
        """The stored run index document (None when absent or its group does not read); read
        once until :meth:`forget_metadata`."""
        if self._index_doc is _UNREAD:
            try:
                self._index_doc = self.runs_group().attrs.get(run_index.INDEX_ATTR)
            except StoreError as exc:
                self.runs_group_problem = str(exc)
                self._index_doc = None
        return self._index_doc

    def _indexed(self) -> dict[str, run_index.Entry]:
        """The run index's trusted entries of complete runs, read once (``{}`` if absent,
        stale or unreadable: runs are then read one by one, or block by block)."""
        if self._index is None:
            self._index, self.index_rejected = self.layout.indexed(self.index_doc())
        return self._index

    def index_mismatches(self) -> dict[str, str]:
        """Run id -> a line, for the runs a fresh run index lists as complete whose own
        attributes say otherwise (each is read): damage after the index was written. From then
        on, reads bypass the index."""
        indexed, self._index = self._indexed(), {}
        found = run_index.mismatches(indexed, self.layout.own_attrs_many(sorted(indexed)))
        if isinstance(self.layout, BlockLayout):
            self.layout.ignore_index()  # the runs each block lists itself
        return found

    def forget_metadata(self) -> None:
        """Forget what was read of the runs and tasks (after their metadata was rewritten)."""
        self._index, self.index_rejected, self.runs_group_problem = None, {}, None
        self._index_doc = _UNREAD
        self.layout.forget()
        self._arrays.clear()
        self._conditions.clear()

    def _forget(self, rid: str | None = None) -> None:
        """Before this process first changes a run: remove the stored run index (see
        ``run_index``); and forget what the index said of ``rid``."""
        if not self._index_removed:
            runs = self.runs_group()
            if run_index.INDEX_ATTR in runs.attrs:
                del runs.attrs[run_index.INDEX_ATTR]  # one atomic rewrite of its zarr.json
            self._index_removed = True
            self._index_doc = None
        if self._index and rid is not None:
            self._index.pop(rid, None)
        for key in [k for k in self._arrays if rid is None or k[0] == rid]:
            self._arrays.pop(key, None)

    def write_run_index(self) -> int:
        """Write the run index of the runs the store has now; returns how many runs it lists."""
        doc = self.layout.write_index()
        self.runs_group().attrs[run_index.INDEX_ATTR] = doc
        self.forget_metadata()
        self._index_removed = False
        return len(self.run_ids())

    # ---- a run's attributes -----------------------------------------------------------------
    def own_attrs(self, rid: str) -> dict[str, Any] | None:
        """A run's own attributes as stored (never the index's); None when missing or
        unreadable."""
        return self.layout.own_attrs(rid)

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

    def run_check(self, rid: str) -> tuple[bool, RunMeta | None, str | None]:
        """``(readable, attributes, why not valid)`` of a run: from a trusted index entry (checked
        when the index was read), else its own attributes checked now."""
        hit = self._indexed().get(rid)
        if hit is not None:
            return True, hit.meta, None
        attrs = self.own_attrs(rid)
        if attrs is None:
            return False, None, None
        meta, why = self.check_attrs(rid, attrs)
        return True, meta, why

    def run_status(self, rid: str) -> str | None:
        meta = self.run_meta(rid)
        return None if meta is None else meta.status

    def complete_runs(self) -> list[str]:
        return [rid for rid, _ in self.iter_runs()]

    def iter_runs(self, complete_only: bool = True) -> Iterator[tuple[str, RunMeta]]:
        """``(run id, attributes)`` of the (complete) runs with valid attributes, in id order;
        from the run index when it is fresh (one listing and one read), else from each run's
        own metadata (one read per block, concurrently; per run in version 1)."""
        self._indexed()
        for rid in self.run_ids():
            meta = self.run_meta(rid)
            if meta is None or (complete_only and not meta.complete):
                continue
            yield rid, meta
