"""The run index: every run's attributes in one document, so that opening a store of many runs
reads one document instead of one per run (on S3, one GET instead of 10,000).

The index is the ``index`` attribute of the ``runs`` group (``runs/zarr.json``; one atomic write):
``{"version": 1, "count": R, "runs": {run_id: entry}}``, where the entry of a run that was complete
when the index was written is ``{"attrs": {...}, "format": [checksummed, dimension_names],
"codec": [pipeline text, lossy]}`` (``codec`` may be absent: an index written before it) and
that of any other run (running, unreadable) is null: its state is read from the run itself.

Trust rules (docs/store.md, "Run index"):

- The index is used only when it lists exactly the runs the store lists (one listing of ``runs/``):
  runs added or removed since it was written (by an interrupted collect, an older lohp, a user
  deleting a damaged run) make it stale, and readers then read every run as before.
- lohp never turns a complete run into an incomplete one in place; it only deletes and redoes runs
  that are not complete. And before a lohp process first changes a run it removes the index, which
  the collect that made the change writes again when it ends. So a crashed or concurrent collect
  cannot leave an index that marks complete a run that is not.
"""

from __future__ import annotations

from typing import Any

from lohp_cli.store.schema import STATUS_COMPLETE

INDEX_ATTR = "index"  # the attribute of the ``runs`` group
INDEX_VERSION = 1

Entry = dict[str, Any]  # {"attrs": run attrs, "format": [checksummed, dimension_names], "codec"}


def entry(attrs: dict[str, Any], fmt: tuple[bool, bool], codec: tuple[str, bool]) -> Entry:
    """The index entry of a complete run: its attributes, storage format and weights codec."""
    return {
        "attrs": attrs,
        "format": [bool(fmt[0]), bool(fmt[1])],
        "codec": [str(codec[0]), bool(codec[1])],
    }


def document(entries: dict[str, Entry | None]) -> dict[str, Any]:
    """The index document of the runs ``entries`` (None: a run that is not complete)."""
    return {"version": INDEX_VERSION, "count": len(entries), "runs": dict(sorted(entries.items()))}


def complete_entries(doc: Any, listed: list[str]) -> dict[str, Entry]:
    """The entries of the complete runs of an index document that lists exactly ``listed``.

    Empty when there is no index, one of another version, a malformed one, or a stale one (its
    runs are not the listed runs): the reader then reads each run's own attributes.
    """
    if not isinstance(doc, dict) or doc.get("version") != INDEX_VERSION:
        return {}
    runs = doc.get("runs")
    if not isinstance(runs, dict) or doc.get("count") != len(runs) or set(runs) != set(listed):
        return {}
    return {
        rid: e
        for rid, e in runs.items()
        if isinstance(e, dict)
        and isinstance(e.get("attrs"), dict)
        and e["attrs"].get("status") == STATUS_COMPLETE
        and isinstance(e.get("format"), list)
        and len(e["format"]) == 2
    }


def mismatches(indexed: dict[str, Entry], attrs: dict[str, dict[str, Any] | None]) -> list[str]:
    """One line per run whose own ``attrs`` (None: unreadable) are not what the index says."""
    problems = []
    for rid, hit in indexed.items():
        if attrs[rid] != hit["attrs"]:
            state = "are unreadable" if attrs[rid] is None else "differ"
            problems.append(
                f"run {rid}: the run index lists it as complete but its attributes {state}; "
                f"delete runs/{rid} and re-run 'lohp collect'"
            )
    return problems
