"""Where the runs of a store of schema version 2 live: rows of blocks (:mod:`.blocks`).

Which block and row holds a run comes from the block documents: those of the run index when it
is fresh (one read of ``blocks/zarr.json``), else each block's own, read concurrently through
zarr's store API (one request per block, not per run). A run listed by two blocks (which lohp
never writes) is taken from the one that says it is complete, else from the first.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import lohp_cli.store.blocks as blocks
import lohp_cli.store.run_index as run_index
from lohp_cli.artifacts.run import STATUS_RUNNING
from lohp_cli.errors import StoreError
from lohp_cli.store.chunks import has_checksums, has_dimension_names
from lohp_cli.store.codecs import describe_codecs

Doc = tuple[list[str], list[dict[str, Any] | None]]  # run ids, attrs (None: unreadable)


class BlockLayout:
    """The runs of a version-2 store (a part of :class:`TrajectoryStore`)."""

    container = blocks.BLOCKS
    in_blocks = True
    weights_glob = f"{blocks.BLOCKS}/*/weights"

    def __init__(self, store: Any) -> None:
        self.store = store
        self.forget()

    def ignore_index(self) -> None:
        """From now on, list runs from the blocks' own documents only (``--verify``,
        ``--repair``: a run a block lists but the index does not is seen)."""
        self.forget()
        self._trusted = False

    def forget(self) -> None:
        self._trusted = getattr(self, "_trusted", True)
        self._docs: dict[str, Doc] | None = None  # block -> the document runs are listed from
        self._own: dict[str, Doc] = {}  # block -> its own document
        self._own_problem: dict[str, str] = {}  # block -> why its own document does not read
        self._slots: dict[str, tuple[str, int]] = {}
        self._entries: dict[str, run_index.Entry] = {}
        self._rejected: dict[str, str] = {}
        self._entries_done = False
        self._from_index: dict[str, dict[str, Any]] = {}
        self._sorted: list[str] = []
        self._nodes: dict[str, Any] = {}  # block array path -> the opened, checked array

    # ---- reading the documents ----------------------------------------------------------------
    def block_ids(self) -> list[str]:
        return self.store._list(blocks.BLOCKS)

    def _read_own(self, bids: list[str]) -> None:
        """Read the own documents of ``bids`` not read yet, concurrently."""
        todo = [b for b in bids if b not in self._own and b not in self._own_problem]
        if not todo:
            return
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        store = self.store.root.store
        proto = default_buffer_prototype()

        async def one(bid: str) -> Any:
            buf = await store.get(f"{blocks.BLOCKS}/{bid}/zarr.json", prototype=proto)
            if buf is None:
                raise KeyError("zarr.json missing")
            return json.loads(buf.to_bytes())

        async def every() -> list[Any]:
            return await asyncio.gather(*(one(b) for b in todo), return_exceptions=True)

        for bid, got in zip(todo, sync(every()), strict=True):
            where = f"block {bid}"
            try:
                if isinstance(got, BaseException):
                    raise StoreError(f"{where}: unreadable metadata ({type(got).__name__})")
                if not isinstance(got, dict) or got.get("node_type") != "group":
                    raise StoreError(f"{where}: not a group")
                attrs = got.get("attributes") or {}
                doc = blocks.parse_doc(attrs.get(blocks.DOC_KEY), where)
                self._own[bid] = (doc.runs, list(doc.attrs))
            except StoreError as exc:
                self._own_problem[bid] = str(exc)
                runs = self._run_coord(bid)  # the runs it holds, to name and redo them
                self._own[bid] = (runs, [None] * len(runs))

    def _run_coord(self, bid: str) -> list[str]:
        try:
            ids = self.store.root[f"{blocks.BLOCKS}/{bid}/{blocks.RUN_COORD}"][:]
            return [str(x) for x in ids]
        except Exception:  # noqa: BLE001 - a torn block: its runs are unknown
            return []

    def own_doc(self, bid: str) -> Doc:
        self._read_own([bid])
        return self._own[bid]

    def load(self, index_doc: Any) -> None:
        """List the runs, once: from the index's block documents where it is fresh (one read),
        else from the blocks' own (one read each, concurrently). Nothing is validated here:
        :meth:`indexed` says which entries of the index are trusted."""
        if self._docs is not None:
            return
        listed = self.block_ids()
        found = run_index.block_entries(index_doc, listed) if self._trusted else None
        docs: dict[str, Doc] = {}
        self._from_index: dict[str, dict[str, Any]] = {}  # block -> its index entry
        for bid, entry in (found or {}).items():
            try:
                doc = blocks.parse_doc(entry.get("block"), f"index entry of block {bid}")
            except StoreError:
                continue
            docs[bid] = (doc.runs, list(doc.attrs))
            self._from_index[bid] = entry
        self._read_own([b for b in listed if b not in docs])
        for bid in listed:
            if bid not in docs:
                docs[bid] = self._own[bid]
        self._docs = docs
        for bid in sorted(docs):
            runs, attrs = docs[bid]
            for row, rid in enumerate(runs):
                held = self._slots.get(rid)
                if held is None or (_complete(attrs[row]) and not _complete(self._attrs_at(held))):
                    self._slots[rid] = (bid, row)
        self._sorted = sorted(self._slots)

    def _trust(self) -> None:
        """The index's trusted entries of complete runs, once: per block, its document must
        match its digest and its format and codec validate; per run, its attributes validate,
        agree with its id and say T+1 states (their fingerprints were checked when the index
        was written)."""
        if self._entries_done:
            return
        self._entries_done = True
        assert self._docs is not None
        states = self.store.meta.compat.states
        for bid, entry in self._from_index.items():
            where = f"index entry of block {bid}"
            runs, attrs = self._docs[bid]
            try:
                fmt = run_index.block_format(entry, where)
            except StoreError as exc:
                for rid in runs:
                    self._rejected[rid] = str(exc)
                continue
            for row, rid in enumerate(runs):
                e, why = run_index.trusted_run(rid, attrs[row], fmt, states)
                if e is not None and self._slots[rid] == (bid, row):
                    self._entries[rid] = e
                elif why:
                    self._rejected[rid] = why

    def _attrs_at(self, slot: tuple[str, int]) -> dict[str, Any] | None:
        assert self._docs is not None
        return self._docs[slot[0]][1][slot[1]]

    # ---- what the store asks ------------------------------------------------------------------
    def indexed(self, doc: Any) -> tuple[dict[str, run_index.Entry], dict[str, str]]:
        self.load(doc)
        self._trust()
        return dict(self._entries), dict(self._rejected)

    def run_ids(self) -> list[str]:
        if self._docs is None:
            self.load(self.store.index_doc())
        return list(self._sorted)

    def slot(self, rid: str) -> tuple[str, int] | None:
        """(block, row) of a listed run."""
        if self._docs is None:
            self.load(self.store.index_doc())
        return self._slots.get(rid)

    def own_attrs(self, rid: str) -> dict[str, Any] | None:
        slot = self.slot(rid)
        if slot is None:
            return None
        runs, attrs = self.own_doc(slot[0])
        return attrs[runs.index(rid)] if rid in runs else None

    def own_attrs_many(self, rids: list[str]) -> dict[str, dict[str, Any] | None]:
        self._read_own(sorted({b[0] for r in rids if (b := self.slot(r)) is not None}))
        return {rid: self.own_attrs(rid) for rid in rids}

    def block_size(self, bid: str) -> int:
        assert self._docs is not None
        return len(self._docs[bid][0])

    def array(self, rid: str, name: str) -> tuple[Any, int | None]:
        """The block array holding run ``rid`` (checked against the layout) and its row."""
        s = self.store
        slot = self.slot(rid)
        what = f"run {rid}, array '{name}'"
        if slot is None:
            raise StoreError(f"Store '{s.location}': {what} is missing; {s.repair_hint()}.")
        bid, row = slot
        shape = blocks.array_shape(
            name, self.block_size(bid), s.meta.compat.states, s.meta.param_count
        )
        what = f"{what} (block {bid})"
        path = f"{blocks.BLOCKS}/{bid}/{name}"
        try:
            if path not in self._nodes:
                self._nodes[path] = s.node(path, what, shape)
            return self._nodes[path], row
        except KeyError:
            raise StoreError(
                f"Store '{s.location}': {what} is missing; {s.repair_hint()}."
            ) from None

    def block_format(
        self, bid: str, runs: int | None = None
    ) -> tuple[tuple[bool, bool], tuple[str, bool]]:
        """``((checksummed, dimension_names), (codec text, lossy))`` of a block's weights
        (``runs``: its number of runs, default from its document)."""
        s = self.store
        runs = self.block_size(bid) if runs is None else runs
        shape = blocks.array_shape("weights", runs, s.meta.compat.states, s.meta.param_count)
        arr = s.node(f"{blocks.BLOCKS}/{bid}/weights", f"block {bid}, array 'weights'", shape)
        return (has_checksums(arr), has_dimension_names(arr)), describe_codecs(arr)

    # ---- changing blocks ----------------------------------------------------------------------
    def delete_block(self, bid: str) -> None:
        """Remove a block (every key under ``blocks/<bid>/``)."""
        from zarr.core.sync import sync

        sync(self.store.root.store.delete_dir(f"{blocks.BLOCKS}/{bid}"))
        path = self.store.local_path()
        if path is not None:  # directories the key deletion leaves
            import shutil

            shutil.rmtree(path / blocks.BLOCKS / bid, ignore_errors=True)
        self.forget()

    def vacate(self, rid: str) -> None:
        """Make run ``rid`` not complete, so that it is redone in its row: its row of the
        block's document says running (one rewrite), and chunks holding it that do not read are
        removed (a rewrite of its row would read them). A block whose document does not read
        holds no complete run: it is removed."""
        slot = self.slot(rid)
        if slot is None:
            return
        bid, row = slot
        self._read_own([bid])
        if bid in self._own_problem:
            self.delete_block(bid)
            return
        g = self.store.root[f"{blocks.BLOCKS}/{bid}"]
        doc = blocks.parse_doc(g.attrs.get(blocks.DOC_KEY), f"block {bid}")
        if rid not in doc.runs:
            return
        row = doc.row(rid)
        attrs = {k: v for k, v in doc.attrs[row].items() if k != "fingerprint"}
        doc.attrs[row] = {**attrs, "status": STATUS_RUNNING, "steps_written": 0}
        g.attrs[blocks.DOC_KEY] = doc.to_json()
        for name in blocks.BLOCK_ARRAYS:
            try:
                arr = g[name]
            except Exception:  # noqa: BLE001 - a missing array is recreated by no one: skip
                continue
            _drop_unreadable_chunks(arr, row)
        self.forget()

    def write_index(self) -> dict[str, Any]:
        """The index document of the blocks the store has now (each block's own document)."""
        self.forget()
        listed = self.block_ids()
        self._read_own(listed)
        entries: dict[str, dict[str, Any] | None] = {}
        for bid in listed:
            if bid in self._own_problem:
                entries[bid] = None
                continue
            runs, attrs = self._own[bid]
            try:
                fmt, codec = self.block_format(bid, len(runs))
            except StoreError:  # weights that do not open: no entry, readers see it
                entries[bid] = None
                continue
            # a row goes in only when its run is complete and its own attributes check out
            # (types, run id, fingerprint, T+1): readers of the index check the block's digest,
            # not each run's fingerprint again
            rows = [a if self._sound(rid, a) else None for rid, a in zip(runs, attrs, strict=True)]
            entries[bid] = run_index.block_entry(blocks.BlockDoc(runs, rows).to_json(), fmt, codec)
        self.forget()
        return run_index.block_document(entries)


def _sound(self: BlockLayout, rid: str, attrs: dict[str, Any] | None) -> bool:
    """Whether a row's own attributes are those of a complete run that checks out."""
    if not _complete(attrs):
        return False
    meta, _ = self.store.check_attrs(rid, attrs)
    return meta is not None


BlockLayout._sound = _sound  # type: ignore[attr-defined]


def _complete(attrs: dict[str, Any] | None) -> bool:
    return isinstance(attrs, dict) and attrs.get("status") == "complete"


def _drop_unreadable_chunks(arr: Any, row: int) -> None:
    """Delete the chunks of ``arr`` holding ``row`` that do not read."""
    import itertools

    from zarr.core.sync import sync

    rows = arr.chunks[0]
    c = row // rows
    grid = [range(0, max(n, 1), k) for n, k in zip(arr.shape[1:], arr.chunks[1:], strict=True)]
    for corner in itertools.product(*grid):
        coords = (c, *(o // k for o, k in zip(corner, arr.chunks[1:], strict=True)))
        sel = (slice(c * rows, min((c + 1) * rows, arr.shape[0])),) + tuple(
            slice(o, o + k) for o, k in zip(corner, arr.chunks[1:], strict=True)
        )
        try:
            arr[sel]
        except Exception:  # noqa: BLE001 - damaged: remove, it is rewritten
            key = f"{arr.store_path.path}/{arr.metadata.encode_chunk_key(coords)}"
            sync(arr.store_path.store.delete(key))
