"""A run of the trajectory store: its id, its attributes (``runs/<run id>`` attrs, docs/store.md
"Run attributes") as :class:`RunMeta`, the fingerprint that ties them to the run, and its entry
in the run index (:class:`IndexEntry`).

A run's attributes are validated wherever they are read (the run's own ``zarr.json`` or its
entry in the run index). Beyond the types, two cheap checks tie them to their run:

- the run id: a run named ``<task_id>-<optimizer>-s<replicate>`` (every run lohp writes) must say
  that task, optimizer and replicate;
- the fingerprint: a complete run records a hash of its run id and of the attributes that say
  what it is (:data:`IDENTITY`); attributes that no longer hash to it were changed after the run
  was written (an index entry edited, swapped or torn apart from its run).

Neither is a defence against a forger, who can recompute both; they catch damage and mistakes,
as DVC's checksums do. Nothing here knows a store's layout: a future layout (runs sharing arrays)
produces the same :class:`RunMeta`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import Field, StrictBool, StrictFloat, StrictInt, StrictStr

from lohp_cli.artifacts.base import ArtifactModel, parse
from lohp_cli.errors import StoreError

RunStatus = Literal["running", "complete"]
STATUS_RUNNING: RunStatus = "running"
STATUS_COMPLETE: RunStatus = "complete"

# What says what a run is (and so which runs a stage uses): covered by the fingerprint. Other keys
# (wall_time_s, device, extra notes) may change without making the run another run.
IDENTITY = (
    "task_id",
    "optimizer",
    "replicate",
    "seed",
    "hparams",
    "steps",
    "record_every",
    "batch_size",
    "status",
    "steps_written",
)


def run_id(task_id: str, optimizer: str, replicate: int) -> str:
    """Deterministic run id ``<task_id>-<optimizer>-s<replicate>`` so that re-runs resume."""
    return f"{task_id}-{optimizer}-s{replicate}"


def split_run_id(rid: str) -> tuple[str, str, int] | None:
    """``(task_id, optimizer, replicate)`` of a run id of :func:`run_id`'s form, else None."""
    parts = rid.rsplit("-", 2)
    if len(parts) != 3 or not all(parts) or not parts[2].startswith("s"):
        return None
    rep = parts[2].removeprefix("s")
    if not rep.isdigit() or not rep.isascii():
        return None
    return parts[0], parts[1], int(rep)


def parse_run_id(rid: str) -> tuple[str, str, int]:
    """Inverse of :func:`run_id`: ``(task_id, optimizer, replicate)``; ValueError otherwise."""
    parts = split_run_id(rid)
    if parts is None:
        raise ValueError(f"run id {rid!r} is not of the form <task_id>-<optimizer>-s<replicate>")
    return parts


class RunMeta(ArtifactModel):
    """A run's attributes. Identity and progress are required; how it was trained is optional
    (runs written by older lohp versions, or by tests, may lack it). Other keys are kept."""

    task_id: StrictStr = Field(min_length=1, description="The task the run trained on.")
    optimizer: StrictStr = Field(min_length=1, description="sgd, adam or sam.")
    replicate: StrictInt = Field(ge=0, description="Replicate index of (task, optimizer).")
    status: RunStatus = Field(description="running while written, complete after the last write.")
    steps_written: StrictInt = Field(0, ge=0, description="T+1 once complete, else 0.")
    hparams: dict[str, Any] = Field(default_factory=dict, description="Optimizer settings.")
    seed: StrictInt | None = Field(None, ge=0, description="The run's derived seed.")
    steps: StrictInt | None = Field(None, ge=1, description="Optimizer steps.")
    record_every: StrictInt | None = Field(None, ge=1, description="Steps between records.")
    batch_size: StrictInt | None = Field(None, ge=1, description="Minibatch size.")
    device: StrictStr | None = Field(None, description="Where it was trained.")
    wall_time_s: StrictFloat | StrictInt | None = Field(None, description="Seconds it took.")
    fingerprint: StrictStr | None = Field(None, description="run_fingerprint() at completion.")

    @property
    def complete(self) -> bool:
        return self.status == STATUS_COMPLETE


_SORTED_IDENTITY = tuple(sorted(IDENTITY))
_ascii = json.encoder.encode_basestring_ascii  # what json.dumps writes a str as (C)
_INF = float("inf")


def _canonical(value: Any, cache: dict[int, str] | None) -> str:
    """``json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=True)``, written
    directly for scalars; containers through json.dumps, remembered in ``cache`` by object id
    (a cache lives as long as the objects it names: one block's document)."""
    kind = type(value)
    if kind is str:
        return _ascii(value)
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return int.__repr__(value)
    if value is None:
        return "null"
    if kind is float:
        if value != value:
            return "NaN"
        if value in (_INF, -_INF):
            return "Infinity" if value > 0 else "-Infinity"
        return float.__repr__(value)
    if cache is not None and id(value) in cache:
        return cache[id(value)]
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=True)
    if cache is not None:
        cache[id(value)] = text
    return text


def run_fingerprint(rid: str, attrs: dict[str, Any], cache: dict[int, str] | None = None) -> str:
    """The fingerprint of run ``rid`` with attributes ``attrs``: 16 hex digits of the SHA-256 of
    the run id and the :data:`IDENTITY` attributes as canonical JSON (``json.dumps([rid,
    identity], sort_keys=True, separators=(",", ":"))``, written field by field: listing 10,000
    runs checks 10,000 fingerprints). ``cache``: see :func:`_canonical`."""
    fields = ",".join(f'"{k}":{_canonical(attrs.get(k), cache)}' for k in _SORTED_IDENTITY)
    text = f"[{_ascii(rid)},{{{fields}}}]"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_run_meta(
    rid: str,
    attrs: Any,
    where: str,
    cache: dict[int, str] | None = None,
    fingerprint: bool = True,
) -> RunMeta:
    """A run's attributes, validated and checked against its run id and (unless
    ``fingerprint`` is False: a reader that checked a digest covering them) its fingerprint; a
    StoreError naming ``where`` (e.g. ``"Run r in 's.zarr'"``) and what is wrong otherwise.
    ``cache``: see :func:`_canonical`."""
    meta = parse(RunMeta, attrs, f"{where} attributes", StoreError)
    parts = split_run_id(rid)
    if parts is not None:
        said = (meta.task_id, meta.optimizer, meta.replicate)
        for name, want, got in zip(("task_id", "optimizer", "replicate"), parts, said, strict=True):
            if want != got:
                raise StoreError(f"{where} attributes: {name} is {got!r}, its run id says {want!r}")
    if not fingerprint or meta.fingerprint is None:
        return meta
    if meta.fingerprint != run_fingerprint(rid, attrs, cache):
        raise StoreError(
            f"{where} attributes: they do not match their fingerprint {meta.fingerprint} (changed "
            "after the run was written)"
        )
    return meta


def new_run_meta(rid: str, attrs: dict[str, Any]) -> RunMeta:
    """The attributes a run is written with, validated (what is written is valid)."""
    return read_run_meta(rid, attrs, f"Run {rid}")


class IndexEntry(ArtifactModel):
    """A complete run's entry in the run index: its attributes (a :class:`RunMeta`, read with
    :func:`read_run_meta`), the ``format`` of its weights (checksummed, dimension names) and
    their ``codec`` (pipeline text, lossy; absent from indexes written before it)."""

    attrs: dict[str, Any]
    format: tuple[StrictBool, StrictBool]
    codec: tuple[StrictStr, StrictBool] | None = None


def read_index_entry(rid: str, data: Any, where: str) -> tuple[IndexEntry, RunMeta]:
    """An index entry and its run's attributes, validated as :func:`read_run_meta` does."""
    entry = parse(IndexEntry, data, where, StoreError)
    return entry, read_run_meta(rid, entry.attrs, where)


def read_index_format(fmt: Any, codec: Any, where: str) -> IndexEntry:
    """The ``format`` and ``codec`` of an index entry (of a block: its runs share them),
    validated; a StoreError naming ``where`` otherwise."""
    return parse(IndexEntry, {"attrs": {}, "format": fmt, "codec": codec}, where, StoreError)
