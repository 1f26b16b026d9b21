"""Writing one run of the trajectory store: a whole time chunk at a time, completion last."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from lohp_cli.artifacts.run import STATUS_COMPLETE, run_fingerprint


class RunWriter:
    """Buffers recorded states and writes one whole time chunk at a time.

    Memory is bounded by one chunk (``chunk_steps × P`` floats). A run that does not finish is
    redone from scratch, so nothing but the final attribute update marks progress: no attribute
    is rewritten per chunk (each rewrite cost a store round trip per chunk).
    """

    def __init__(
        self,
        group: Any,
        states: int,
        size: int,
        chunk: int,
        arrays: dict[str, Any] | None = None,
        rid: str | None = None,
        attrs: dict[str, Any] | None = None,
    ) -> None:
        self.group = group
        # the run's id and the attributes it was begun with: the fingerprint written at the end
        # covers both (see lohp_cli.artifacts.run)
        self.rid = rid
        self.attrs = dict(attrs or {})
        # the run's arrays as created (each lookup by name is a metadata read from the store)
        self.arrays = arrays or {n: group[n] for n in ("weights", "loss", "train_acc")}
        self.states = states
        self.chunk = chunk
        self.buf = np.empty((chunk, size), dtype=np.float32)
        self.loss = np.full(states, np.nan, dtype=np.float32)
        self.acc = np.full(states, np.nan, dtype=np.float32)
        self.written = 0  # states flushed to the store
        self.filled = 0  # states in the buffer
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
            w = self.arrays["weights"]
            w[self.written : self.written + self.filled] = self.buf[: self.filled]
            self.written += self.filled
            self.filled = 0

    def finish(self, extra: dict[str, Any] | None = None) -> float:
        """Write the rest, then mark the run complete (the last write), with the fingerprint of
        its attributes. Returns wall seconds."""
        self.flush()
        if self.written != self.states:
            raise ValueError(f"run has {self.written} of {self.states} states")
        self.arrays["loss"][:] = self.loss
        self.arrays["train_acc"][:] = self.acc
        wall = time.perf_counter() - self.t0
        final = {
            **(extra or {}),
            "wall_time_s": round(wall, 4),
            "steps_written": self.written,
            "status": STATUS_COMPLETE,
        }
        if self.rid is not None:
            final["fingerprint"] = run_fingerprint(self.rid, {**self.attrs, **final})
        self.group.attrs.update(final)
        return wall
