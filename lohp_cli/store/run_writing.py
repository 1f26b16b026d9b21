"""Changing the runs of a trajectory store: beginning a block (or one run), making a run not
complete so that it is redone, removing a block (a part of :class:`TrajectoryStore`). Runs are
added to stores of schema version 2 only (blocks); version 1 is read, and written run by run by
the legacy writer for tests and benchmarks."""

from __future__ import annotations

from typing import Any

import lohp_cli.store.blocks as blocks
from lohp_cli.config import StoreCodecConfig
from lohp_cli.errors import CompatibilityError, StoreError
from lohp_cli.store.block_runs import BlockLayout
from lohp_cli.store.location import local_path as _local_path
from lohp_cli.store.run_groups import GroupLayout
from lohp_cli.store.writer import BlockTarget, BlockWriter, RunWriter, WriteSink, one_run_target


class RunWriting:
    """What changes runs (a part of :class:`TrajectoryStore`)."""

    location: str
    root: Any
    meta: Any
    layout: BlockLayout | GroupLayout

    # and, from TrajectoryStore and StoreGroups: _forget, forget_metadata, runs_group, node,
    # blocks, delete_run's callers
    # ---- writing runs -----------------------------------------------------------------------
    def _writable(self) -> BlockLayout:
        if not isinstance(self.layout, BlockLayout):
            raise CompatibilityError(
                f"Store '{self.location}' has schema_version {self.meta.schema_version} (a group "
                "per run); this lohp reads it but adds runs only to version-2 stores (blocks). "
                "Collect into a new --out, or migrate it: python scripts/migrate_store.py "
                f"{self.location} NEW.zarr"
            )
        return self.layout

    def removal_hint(self, rid: str) -> str:
        """How a user removes a run lohp cannot redo (its id says nothing)."""
        slot = self.slot(rid)
        if slot is None:
            return f"delete runs/{rid} by hand"
        return (
            f"remove it by hand (its row {slot[1]} of block blocks/{slot[0]}, or the whole block, "
            "whose runs the next collect redoes)"
        )

    def check_writable(self) -> None:
        """A CompatibilityError for a store this lohp adds no runs to (schema version 1)."""
        self._writable()

    def delete_run(self, rid: str) -> None:
        """Make run ``rid`` not complete so that the next collect redoes it: in a block, its row
        says running (the chunks holding it that do not read are removed); a version-1 run
        group is removed whole."""
        self._forget(rid)
        if isinstance(self.layout, BlockLayout):
            self.layout.vacate(rid)
        else:
            from zarr.core.sync import sync

            sync(self.root.store.delete_dir(f"runs/{rid}"))
            path = _local_path(self.location)
            if path is not None:  # directories the key deletion leaves
                import shutil

                shutil.rmtree(path / "runs" / rid, ignore_errors=True)
        self.forget_metadata()

    def delete_block(self, bid: str) -> None:
        """Remove block ``bid`` whole (one that holds no complete run)."""
        self._forget()
        self._writable().delete_block(bid)
        self.forget_metadata()

    def slot(self, rid: str) -> tuple[str, int] | None:
        """``(block id, row)`` of a run listed by a block (None: not listed, or version 1)."""
        return self.layout.slot(rid) if isinstance(self.layout, BlockLayout) else None

    def block_problem(self, bid: str) -> str | None:
        """Why a block cannot take its runs back in place (its document or an array does not
        read, or has another shape); None when it can."""
        layout = self._writable()
        runs, attrs = layout.own_doc(bid)
        if not runs or all(a is None for a in attrs):
            return "its document does not read"
        states, size = self.meta.compat.states, self.meta.param_count
        for name in (*blocks.BLOCK_ARRAYS, blocks.RUN_COORD):
            shape = blocks.array_shape(name, len(runs), states, size)
            try:
                arr = self.node(f"{blocks.BLOCKS}/{bid}/{name}", f"block {bid}, array '{name}'")
            except (KeyError, StoreError) as exc:
                return str(exc) or f"array '{name}' is missing"
            if tuple(arr.shape) != shape:
                return f"array '{name}' has shape {tuple(arr.shape)}, not {shape}"
        return None

    def block_runs(self, bid: str) -> list[str]:
        """The run ids of block ``bid`` in row order (from its own document)."""
        return list(self._writable().own_doc(bid)[0])

    def block_writer(
        self, target: BlockTarget, states: int, size: int, codec: StoreCodecConfig,
        sink: WriteSink,
    ) -> BlockWriter:  # fmt: skip
        """A writer of ``target``'s runs (a new block, or rows of an existing one whose runs
        are not complete). The stored run index is removed first (see ``run_index``)."""
        layout = self._writable()
        for r in target.rows:
            self._forget(target.run_ids[r])

        def clear(parent: Any, t: BlockTarget) -> None:
            if t.new and t.block_id in layout.block_ids():  # what a crashed writer left
                layout.delete_block(t.block_id)

        writer = BlockWriter(self.runs_group(), target, states, size, codec, sink, clear)
        return writer

    def begin_run(
        self, rid: str, states: int, size: int, codec: StoreCodecConfig, attrs: dict[str, Any]
    ) -> Any:
        """Start run ``rid`` in a block of its own, written synchronously (tests and small
        tools; ``collect`` writes a batch of runs per block). In a version-1 store, as the group
        ``runs/<rid>`` (:mod:`lohp_cli.store.legacy`: for tests and benchmarks of that layout)."""
        if not self.blocks:
            from lohp_cli.store.legacy import begin_group_run

            path = _local_path(self.location)
            if path is None or (path / "runs" / rid).exists():
                self.delete_run(rid)  # what a partial run left, metadata or not
            self._forget(rid)
            return begin_group_run(self.root, rid, states, size, codec, attrs)
        target = one_run_target(rid, attrs)
        return RunWriter(self.block_writer(target, states, size, codec, WriteSink(depth=0)))
