"""Blocks: the runs of one batch sharing their arrays (schema ``lohp.trajectories`` v2).

A block is the group ``blocks/<block id>`` holding R runs (row r of every array is one run)::

    run        string  [R]            the run ids (the xarray coordinate of dimension "run")
    weights    float32 [R, T+1, P]    dims (run, state, param); chunks (chunk_runs, chunk_steps, P)
    loss       float32 [R, T+1]       dims (run, state); chunks (chunk_runs, T+1)
    train_acc  float32 [R, T+1]       dims (run, state)
    attrs      {"block": {"version": 1, "runs": [run id, …], "shared": {…}, "attrs": [{…}, …]}}

Run r's attributes are ``shared`` (what every run of the block has alike: optimizer, hparams,
steps, …) updated with ``attrs[r]``: its attributes (a :class:`lohp_cli.artifacts.run.RunMeta` when
read), ``status`` and ``fingerprint`` included: a run is complete only when its row says so, and
the document is rewritten (one atomic write of the block's ``zarr.json``) only after the run's
chunks. Loss and accuracy are chunked by rows like the weights, so a damaged chunk of any array
concerns the same runs. Nothing here reads the run index; see :mod:`lohp_cli.store.run_index`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

import lohp_cli.store.chunks as chunks
from lohp_cli.config import StoreCodecConfig
from lohp_cli.errors import StoreError
from lohp_cli.store.codecs import codecs_for, filters_for, serializer_for

BLOCKS = "blocks"  # the group of the blocks (its attribute "index": the run index)
DOC_KEY = "block"  # the block group's attribute holding its document
DOC_VERSION = 1
RUN_COORD = "run"  # the array of run ids, xarray's coordinate of dimension "run"
BLOCK_ARRAYS = ("weights", "loss", "train_acc")
BLOCK_DIMS = {
    "weights": ("run", "state", "param"),
    "loss": ("run", "state"),
    "train_acc": ("run", "state"),
    RUN_COORD: ("run",),
}
CHUNK_BYTES = 1 << 20  # default raw size of a weights chunk (several runs of a small model)

# the run-id array: no compression, a checksum
_PLAIN = StoreCodecConfig(codec="none")


def block_id(run_ids: Sequence[str]) -> str:
    """The id of the block of ``run_ids`` (in row order): the same runs give the same block, so a
    group redone after a crash (a Dask task re-run, a resumed collect) finds its own block."""
    digest = hashlib.sha256("\n".join(run_ids).encode()).hexdigest()[:16]
    return f"b-{digest}"


def chunk_runs(codec: StoreCodecConfig, states: int, size: int, runs: int) -> int:
    """Runs per chunk of a block of ``runs`` runs of ``states`` states and ``size`` parameters:
    ``codec.chunk_runs``, else as many as fit in :data:`CHUNK_BYTES` of raw float32."""
    if codec.chunk_runs is not None:
        return max(1, min(codec.chunk_runs, runs))
    per_run = min(codec.chunk_steps, states) * size * 4
    return max(1, min(runs, CHUNK_BYTES // max(per_run, 1)))


# Attributes that the runs of a block usually share: stored once, under "shared", when every
# run has the same value (the document is then about half as long, and a reader checks the
# runs' fingerprints with the shared values encoded once).
SHARED_KEYS = ("optimizer", "hparams", "steps", "record_every", "batch_size", "device")


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON (1 and 1.0, or True and 1, are not)."""
    if isinstance(a, (dict, list)) or isinstance(b, (dict, list)):
        return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    return type(a) is type(b) and a == b


@dataclass
class BlockDoc:
    """A block's document: its run ids in row order and each row's run attributes (in memory,
    whole; stored with the values every run shares under ``shared``)."""

    runs: list[str]
    attrs: list[dict[str, Any] | None]  # None: a row left out (the run index's)

    def to_json(self) -> dict[str, Any]:
        present = [a for a in self.attrs if a is not None]
        shared = {}
        for key in SHARED_KEYS:
            if present and all(key in a for a in present):
                first = present[0][key]
                if all(_same(a[key], first) for a in present[1:]):
                    shared[key] = first
        rows = [
            None if a is None else {k: v for k, v in a.items() if k not in shared}
            for a in self.attrs
        ]
        out: dict[str, Any] = {"version": DOC_VERSION, "runs": list(self.runs)}
        if shared:
            out["shared"] = shared
        out["attrs"] = rows
        return out

    def row(self, rid: str) -> int:
        return self.runs.index(rid)


def parse_doc(data: Any, where: str) -> BlockDoc:
    """A block's document from its group attributes' ``block`` value; a StoreError naming
    ``where`` when it is not one (its runs are then unreadable)."""
    if not isinstance(data, dict):
        raise StoreError(f"{where}: no block document (attribute '{DOC_KEY}')")
    if data.get("version") != DOC_VERSION:
        raise StoreError(f"{where}: block document version {data.get('version')!r} is not known")
    runs, attrs = data.get("runs"), data.get("attrs")
    if (
        not isinstance(runs, list)
        or not all(isinstance(r, str) and r for r in runs)
        or len(set(runs)) != len(runs)
        or not isinstance(attrs, list)
        or len(attrs) != len(runs)
    ):
        raise StoreError(f"{where}: malformed block document (runs and attrs do not pair up)")
    shared = data.get("shared", {})
    if not isinstance(shared, dict):
        raise StoreError(f"{where}: malformed block document ('shared' is not an object)")
    # every row's attributes: the shared values (the same objects in every row) and its own
    return BlockDoc(list(runs), [{**shared, **a} if isinstance(a, dict) else {} for a in attrs])


def array_shape(name: str, runs: int, states: int, size: int) -> tuple[int, ...]:
    """The shape a block's array must have."""
    if name == "weights":
        return (runs, states, size)
    if name == RUN_COORD:
        return (runs,)
    return (runs, states)


def create_block(
    parent: Any,
    bid: str,
    doc: BlockDoc,
    states: int,
    size: int,
    codec: StoreCodecConfig,
) -> dict[str, Any]:
    """Create block ``bid`` under the group ``parent`` with ``doc`` (every row running) and its
    empty arrays; returns the arrays by name. Its run-id array is written at once."""
    runs = len(doc.runs)
    rows = chunk_runs(codec, states, size, runs)
    steps = min(codec.chunk_steps, states)
    g = parent.create_group(bid, attributes={DOC_KEY: doc.to_json()})
    compressors, serializer = codecs_for(codec), serializer_for(codec)
    arrays: dict[str, Any] = {}
    arrays["weights"] = g.create_array(
        "weights",
        shape=(runs, states, size),
        chunks=(rows, steps, size),
        dtype="float32",
        filters=filters_for(codec, 3),
        serializer=serializer,
        compressors=compressors,
        fill_value=np.nan,
        dimension_names=BLOCK_DIMS["weights"],
    )
    for name in ("loss", "train_acc"):
        arrays[name] = g.create_array(
            name,
            shape=(runs, states),
            chunks=(rows, states),
            dtype="float32",
            serializer=serializer,  # lossless: the rounding of lossy="bf16" is for weights
            compressors=compressors,
            fill_value=np.nan,
            dimension_names=BLOCK_DIMS[name],
        )
    arrays[RUN_COORD] = g.create_array(
        RUN_COORD,
        shape=(runs,),
        dtype=str,  # zarr's variable-length UTF-8 strings
        compressors=codecs_for(_PLAIN),
        dimension_names=BLOCK_DIMS[RUN_COORD],
    )
    arrays[RUN_COORD][:] = np.array(doc.runs, dtype=object)
    return arrays


def row_selection(rows: Sequence[int]) -> slice | np.ndarray:
    """Rows as a slice when they are consecutive (a plain write), else an index array."""
    first = rows[0]
    if list(rows) == list(range(first, first + len(rows))):
        return slice(first, first + len(rows))
    return np.asarray(rows)


def write_rows(
    arr: Any, rows: Sequence[int], data: np.ndarray, states: slice | None = None
) -> None:
    """``arr[rows, states] = data`` (``states``: a slice of the state axis, default all)."""
    sel = row_selection(rows)
    key = (sel,) if states is None else (sel, states)
    if isinstance(sel, slice):
        arr[key] = data
    else:
        arr.oindex[key] = data


def damaged_rows(arr: Any, where: str) -> dict[int, str]:
    """Row -> the first problem of a chunk holding it, for every damaged or missing chunk of a
    block's array (``where``: e.g. ``"block b-…, array 'weights'"``). A chunk covers several
    runs: each of them is named."""
    out: dict[int, str] = {}
    rows = arr.chunks[0]
    for problem, coords in chunks.verify_chunks(arr, where):
        first, last = (coords[0] * rows, (coords[0] + 1) * rows) if coords else (0, arr.shape[0])
        for r in range(first, min(last, arr.shape[0])):
            out.setdefault(r, problem)
    return out
