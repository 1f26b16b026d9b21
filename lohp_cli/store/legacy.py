"""Writing runs in the layout of schema version 1 (a group per run, ``runs/<run id>``).

lohp reads such stores (:mod:`lohp_cli.store.run_groups`) but no longer adds runs to them;
this writer is kept so that tests can make stores of that layout and the collect benchmark can
compare it with the blocks of version 2 (docs/store.md).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from lohp_cli.artifacts.run import STATUS_COMPLETE, STATUS_RUNNING, new_run_meta, run_fingerprint
from lohp_cli.config import StoreCodecConfig
from lohp_cli.store.codecs import codecs_for, filters_for, serializer_for

WEIGHT_DIMS = ("state", "param")
STATE_DIMS = ("state",)


class GroupRunWriter:
    """Buffers recorded states and writes one whole time chunk at a time into ``runs/<rid>``;
    the final attribute update marks the run complete."""

    def __init__(
        self, group: Any, states: int, size: int, chunk: int, arrays: dict[str, Any],
        rid: str, attrs: dict[str, Any],
    ) -> None:  # fmt: skip
        self.group, self.rid, self.attrs, self.arrays = group, rid, dict(attrs), arrays
        self.states, self.chunk = states, chunk
        self.buf = np.empty((chunk, size), dtype=np.float32)  # [chunk, P]
        self.loss = np.full(states, np.nan, dtype=np.float32)  # [T+1]
        self.acc = np.full(states, np.nan, dtype=np.float32)
        self.written = self.filled = 0
        self.t0 = time.perf_counter()

    def append(self, weights: np.ndarray, loss: float, acc: float) -> None:
        """Record one state ``weights [P]`` with its minibatch loss and accuracy."""
        i = self.written + self.filled
        if i >= self.states:
            raise ValueError("more states appended than the run has")
        self.buf[self.filled] = weights
        self.loss[i], self.acc[i] = loss, acc
        self.filled += 1
        if self.filled == self.chunk:
            self.flush()

    def flush(self) -> None:
        if self.filled:
            self.arrays["weights"][self.written : self.written + self.filled] = self.buf[
                : self.filled
            ]
            self.written += self.filled
            self.filled = 0

    def finish(self, extra: dict[str, Any] | None = None) -> float:
        """Write the rest, then mark the run complete (the last write). Returns wall seconds."""
        self.flush()
        if self.written != self.states:
            raise ValueError(f"run has {self.written} of {self.states} states")
        self.arrays["loss"][:] = self.loss
        self.arrays["train_acc"][:] = self.acc
        wall = time.perf_counter() - self.t0
        final = {**(extra or {}), "wall_time_s": round(wall, 4), "steps_written": self.written,
                 "status": STATUS_COMPLETE}  # fmt: skip
        final["fingerprint"] = run_fingerprint(self.rid, {**self.attrs, **final})
        self.group.attrs.update(final)
        return wall


def begin_group_run(
    root: Any, rid: str, states: int, size: int, codec: StoreCodecConfig, attrs: dict[str, Any]
) -> GroupRunWriter:
    """Start run ``rid`` as the group ``runs/<rid>`` of the zarr group ``root`` (a store of
    schema version 1; any earlier group of that name is replaced)."""
    attrs = {**attrs, "status": STATUS_RUNNING, "steps_written": 0}
    new_run_meta(rid, attrs)
    runs = root.require_group("runs")
    if rid in runs:
        del runs[rid]
    g = runs.create_group(rid, attributes=attrs)
    compressors, serializer = codecs_for(codec), serializer_for(codec)
    chunk = min(codec.chunk_steps, states)
    arrays = {
        "weights": g.create_array(
            "weights", shape=(states, size), chunks=(chunk, size), dtype="float32",
            filters=filters_for(codec), serializer=serializer, compressors=compressors,
            fill_value=np.nan, dimension_names=WEIGHT_DIMS,
        )
    }  # fmt: skip
    for name in ("loss", "train_acc"):
        arrays[name] = g.create_array(
            name, shape=(states,), chunks=(states,), dtype="float32", serializer=serializer,
            compressors=compressors, fill_value=np.nan, dimension_names=STATE_DIMS,
        )  # fmt: skip
    return GroupRunWriter(g, states, size, chunk, arrays, rid, attrs)
