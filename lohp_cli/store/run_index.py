"""The run index: every run's attributes in one document, so that opening a store of many runs
reads one document instead of one per run (on S3, one GET instead of 10,000).

The index is the ``index`` attribute of the ``runs`` group (``runs/zarr.json``; one atomic write):
``{"version": 1, "count": R, "runs": {run_id: entry}}``, where the entry of a run that was complete
when the index was written is ``{"attrs": {...}, "format": [checksummed, dimension_names],
"codec": [pipeline text, lossy]}`` (``codec`` may be absent: an index written before it) and
that of any other run (running, unreadable) is null: its state is read from the run itself.

What the index is trusted for (docs/store.md, "Run index"): which runs were complete when it was
written, and their attributes, nothing else; and only entry by entry, after checks that need no
read of the run:

- The index is used only when it lists exactly the runs the store lists (one listing of ``runs/``):
  runs added or removed since it was written (by an interrupted collect, an older lohp, a user
  deleting a damaged run) make it stale, and readers then read every run as before.
- An entry is used only when it validates (:func:`lohp_cli.artifacts.run.read_index_entry`: a
  :class:`RunMeta` of a complete run, consistent with its run id and its fingerprint) and says
  the store's number of states. Any other entry is ignored and its run read itself, so an entry
  whose attributes were edited or swapped cannot change which runs a stage uses.
- Arrays (shapes, chunks) are never taken from the index: readers check them where they open them.
- lohp never turns a complete run into an incomplete one in place; it only deletes and redoes runs
  that are not complete. And before a lohp process first changes a run it removes the index, which
  the collect that made the change writes again when it ends. So a crashed or concurrent collect
  cannot leave an index that marks complete a run that is not.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from lohp_cli.artifacts.run import RunMeta, read_index_entry, read_index_format, read_run_meta
from lohp_cli.errors import StoreError

INDEX_ATTR = "index"  # the attribute of the ``runs`` group
INDEX_VERSION = 1


@dataclass(frozen=True)
class Entry:
    """A complete run as the index (or the run itself, when the index is rewritten) says."""

    meta: RunMeta
    attrs: dict[str, Any]  # as stored (written back unchanged)
    format: tuple[bool, bool]  # (checksummed, dimension_names) of its weights
    codec: tuple[str, bool] | None  # (pipeline text, lossy); None: an index written before it

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"attrs": self.attrs, "format": list(self.format)}
        if self.codec is not None:
            out["codec"] = list(self.codec)
        return out


def entry(
    meta: RunMeta, attrs: dict[str, Any], fmt: tuple[bool, bool], codec: tuple[str, bool]
) -> Entry:
    """The index entry of a complete run: its attributes, storage format and weights codec."""
    return Entry(meta, dict(attrs), (bool(fmt[0]), bool(fmt[1])), (str(codec[0]), bool(codec[1])))


def document(entries: dict[str, Entry | None]) -> dict[str, Any]:
    """The index document of the runs ``entries`` (None: a run that is not complete)."""
    runs = {rid: None if e is None else e.to_json() for rid, e in sorted(entries.items())}
    return {"version": INDEX_VERSION, "count": len(entries), "runs": runs}


def complete_entries(
    doc: Any, listed: list[str], states: int, where: str
) -> tuple[dict[str, Entry], dict[str, str]]:
    """``(trusted entries of the complete runs, {run id: why its entry was ignored})`` of an
    index document that lists exactly ``listed`` (``states``: T+1 of the store; ``where``: e.g.
    ``"store 's.zarr'"``).

    No entries when there is no index, one of another version, a malformed one, or a stale one
    (its runs are not the listed runs): the reader then reads each run's own attributes. An entry
    that does not validate, or says another number of states, is left out: its run is read.
    """
    if not isinstance(doc, dict) or doc.get("version") != INDEX_VERSION:
        return {}, {}
    runs = doc.get("runs")
    if not isinstance(runs, dict) or doc.get("count") != len(runs) or set(runs) != set(listed):
        return {}, {}
    out, ignored = {}, {}
    for rid, data in runs.items():
        if data is None:
            continue
        try:
            e, meta = read_index_entry(rid, data, "index entry")
        except StoreError as exc:
            ignored[rid] = str(exc)
            continue
        if not meta.complete or meta.steps_written != states:
            ignored[rid] = f"it says {meta.status} with {meta.steps_written} of {states} states"
            continue
        out[rid] = Entry(meta, e.attrs, e.format, e.codec)
    return out, ignored


def mismatches(
    indexed: dict[str, Entry], attrs: dict[str, dict[str, Any] | None]
) -> dict[str, str]:
    """Run id -> a line, for each run whose own ``attrs`` (None: unreadable) are not what the
    index says."""
    problems = {}
    for rid, hit in indexed.items():
        if attrs[rid] != hit.attrs:
            state = "are unreadable" if attrs[rid] is None else "differ"
            problems[rid] = (
                f"run {rid}: the run index lists it as complete but its attributes {state}; "
                "re-run 'lohp collect --repair' to redo it"
            )
    return problems


# ---- schema version 2: one entry per block ----------------------------------------------------
# ``{"version": 2, "count": B, "blocks": {block id: {"block": <block document>, "format":
# [checksummed, dimension_names], "codec": [pipeline text, lossy]} or null}}``: the documents of
# every block (null: one whose document did not read when the index was written). Trusted as
# version 1 is: only when it lists exactly the blocks listed, and run by run.
BLOCK_INDEX_VERSION = 2


def block_document(entries: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    """The index document of blocks ``{block id: entry or None}``."""
    blocks = {bid: entries[bid] for bid in sorted(entries)}
    return {"version": BLOCK_INDEX_VERSION, "count": len(blocks), "blocks": blocks}


def block_entries(doc: Any, listed: list[str]) -> dict[str, dict[str, Any]] | None:
    """The block entries of an index document that lists exactly the blocks ``listed`` (None
    when there is no usable index: absent, of another version, malformed or stale). Entries
    that are null are left out (their blocks are read themselves)."""
    if not isinstance(doc, dict) or doc.get("version") != BLOCK_INDEX_VERSION:
        return None
    blocks = doc.get("blocks")
    if not isinstance(blocks, dict) or doc.get("count") != len(blocks):
        return None
    if set(blocks) != set(listed):
        return None
    return {bid: e for bid, e in blocks.items() if isinstance(e, dict)}


def block_digest(doc: Any) -> str:
    """16 hex digits of the SHA-256 of a block document as canonical JSON."""
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def block_entry(doc: dict[str, Any], fmt: tuple[bool, bool], codec: tuple[str, bool]) -> dict:
    """The index entry of a block: its document (only the rows of complete runs that check
    out; the others null), the format and codec of its weights, and the document's digest."""
    return {"block": doc, "format": list(fmt), "codec": list(codec), "digest": block_digest(doc)}


def block_format(entry: dict[str, Any], where: str) -> tuple[tuple[bool, bool], tuple[str, bool]]:
    """The ``format`` and ``codec`` of a block's index entry, validated once for its runs, after
    its document matched its digest; a StoreError otherwise (its block is then read itself)."""
    if entry.get("digest") != block_digest(entry.get("block")):
        raise StoreError(
            f"{where}: its block document does not match its digest (changed after the index "
            "was written)"
        )
    e = read_index_format(entry.get("format"), entry.get("codec"), where)
    return e.format, e.codec or ("?", False)


def trusted_run(
    rid: str, attrs: Any, fmt: tuple[tuple[bool, bool], tuple[str, bool]], states: int
) -> tuple[Entry | None, str | None]:
    """``(entry, None)`` for a run a block's index entry (whose digest matched) lists as
    complete, when its attributes validate, agree with its id and say ``states`` states;
    ``(None, why)`` when they do not; ``(None, None)`` for a run the entry does not list as
    complete (it is read itself). Its fingerprint was checked when the index was written, and
    the digest stands for it since."""
    if not isinstance(attrs, dict) or attrs.get("status") != "complete":
        return None, None
    try:
        meta = read_run_meta(rid, attrs, "index entry", fingerprint=False)
    except StoreError as exc:
        return None, str(exc)
    if meta.steps_written != states:
        return None, f"it says {meta.status} with {meta.steps_written} of {states} states"
    return Entry(meta, attrs, fmt[0], fmt[1]), None
