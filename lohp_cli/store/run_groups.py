"""Where the runs of a store of schema version 1 live: one group per run, ``runs/<run id>``
(``weights [T+1, P]``, ``loss``, ``train_acc [T+1]``, the run's attributes on the group), and
the run index of that version (the ``runs`` group's attribute ``index``). Read only: lohp adds
runs to version-2 stores (:mod:`lohp_cli.store.block_runs`)."""

from __future__ import annotations

from typing import Any

import lohp_cli.store.run_index as run_index
from lohp_cli.errors import StoreError
from lohp_cli.store.chunks import has_checksums, has_dimension_names
from lohp_cli.store.codecs import describe_codecs

RUNS = "runs"


class GroupLayout:
    """The runs of a version-1 store (a part of :class:`TrajectoryStore`)."""

    container = RUNS
    in_blocks = False
    weights_glob = "runs/*/weights"

    def __init__(self, store: Any) -> None:
        self.store = store

    def forget(self) -> None:
        """Nothing cached beyond what the store caches."""

    def run_ids(self) -> list[str]:
        """Names of all run groups, readable or not."""
        return self.store._list(RUNS)

    def indexed(self, doc: Any) -> tuple[dict[str, run_index.Entry], dict[str, str]]:
        """The trusted entries of the index document ``doc`` (see :mod:`run_index`)."""
        s = self.store
        return run_index.complete_entries(doc, self.run_ids(), s.meta.compat.states, s._where())

    def own_attrs(self, rid: str) -> dict[str, Any] | None:
        try:
            return dict(self.store.root[f"{RUNS}/{rid}"].attrs)
        except Exception:  # noqa: BLE001 - a half-written run reads as missing
            return None

    def own_attrs_many(self, rids: list[str]) -> dict[str, dict[str, Any] | None]:
        return {rid: self.own_attrs(rid) for rid in rids}

    def array(self, rid: str, name: str) -> tuple[Any, int | None]:
        """``runs/<rid>/<name>`` checked against the store's layout, and no row."""
        s = self.store
        states = s.meta.compat.states
        shape = (states, s.meta.param_count) if name == "weights" else (states,)
        what = f"run {rid}, array '{name}'"
        try:
            return s.node(f"{RUNS}/{rid}/{name}", what, shape), None
        except KeyError:
            raise StoreError(
                f"Store '{s.location}': {what} is missing; {s.repair_hint()}."
            ) from None

    def write_index(self) -> dict[str, Any]:
        """The index document of the runs the store has now (each read itself, but those the
        index read at open knows complete)."""
        s = self.store
        known = s._indexed()
        entries: dict[str, run_index.Entry | None] = {}
        for rid in self.run_ids():
            if rid in known:
                entries[rid] = known[rid]
                continue
            attrs = self.own_attrs(rid)
            meta = None if attrs is None else s.check_attrs(rid, attrs)[0]
            hit = None
            if meta is not None and meta.complete and attrs is not None:
                try:
                    arr, _ = self.array(rid, "weights")
                    fmt = (has_checksums(arr), has_dimension_names(arr))
                    hit = run_index.entry(meta, attrs, fmt, describe_codecs(arr))
                except StoreError:  # weights that do not open: no entry, readers see it
                    hit = None
            entries[rid] = hit
        return run_index.document(entries)
