"""Writing runs into a block (:mod:`lohp_cli.store.blocks`), on a background thread.

:class:`BlockWriter` takes the recorded states of R runs, either one state of every run at a
time (runs trained together) or one whole run at a time (runs trained one after another), and
hands the zarr work to a :class:`WriteSink`: a bounded queue drained in order by one thread, so
that the next batch trains while this one is encoded and written. Each run is complete only
after the last job of its row: its chunks, its loss and accuracy, then the block's document
rewritten with ``status = "complete"``; a process killed before that leaves the run running, and
the next ``lohp collect`` redoes it. Memory is bounded by one time chunk of the block (batched)
or one row chunk of whole runs (one after another), plus what waits in the queue.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import lohp_cli.store.blocks as blocks
from lohp_cli.artifacts.run import STATUS_COMPLETE, STATUS_RUNNING, new_run_meta, run_fingerprint
from lohp_cli.config import StoreCodecConfig

Job = Callable[[], None]


class WriteSink:
    """Runs write jobs in order, on one background thread (``depth`` > 0) or inline (0).

    ``submit`` blocks while ``depth`` jobs wait, which bounds the memory of what is queued. After
    a job fails, the later ones are skipped (no run is marked complete after a failed write)
    and the error is raised in the caller's thread by the next ``submit`` or by ``drain``.
    """

    def __init__(self, depth: int = 2) -> None:
        self.depth = depth
        self.error: BaseException | None = None
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=max(depth, 1))
        self._thread: threading.Thread | None = None
        if depth > 0:
            self._thread = threading.Thread(
                target=self._work, name="lohp-store-writer", daemon=True
            )
            self._thread.start()

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                if self.error is None:
                    job()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                self.error = exc
            finally:
                self._queue.task_done()

    def _raise(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def submit(self, job: Job) -> None:
        """Queue ``job`` (run it now without a thread); raise an earlier job's error."""
        self._raise()
        if self._thread is None:
            job()
            return
        self._queue.put(job)

    def drain(self) -> None:
        """Wait until every queued job has run; raise the first error of one."""
        if self._thread is not None:
            self._queue.join()
        self._raise()

    def close(self) -> None:
        """Drain, then stop the thread (also when a job failed: its error is raised)."""
        try:
            self.drain()
        finally:
            if self._thread is not None and self._thread.is_alive():
                self._queue.put(None)
                self._thread.join()


@dataclass
class BlockTarget:
    """Where a writer writes: block ``block_id`` (of ``run_ids`` in row order), its rows
    ``rows`` with the attributes ``attrs`` each run begins with; ``new``: the block is created
    (else it exists, with these rows not complete, and they are rewritten in place)."""

    block_id: str
    run_ids: list[str]
    rows: list[int]
    attrs: list[dict[str, Any]]
    new: bool
    done: list[tuple[str, float]] = field(default_factory=list)  # (run id, wall s), when complete


class BlockWriter:
    """Writes the runs of ``target`` into the store group ``parent`` (``blocks``) through
    ``sink``: ``append`` one state of every run (``[R, P]``), or ``put_run`` one whole run.

    ``states`` = T+1 and ``size`` = P of the store; ``codec`` its chunking and compression.
    ``on_open(parent, target)`` runs first in the writer's thread (it removes what a crashed
    writer left of a new block).
    """

    def __init__(
        self,
        parent: Any,
        target: BlockTarget,
        states: int,
        size: int,
        codec: StoreCodecConfig,
        sink: WriteSink,
        on_open: Callable[[Any, BlockTarget], None] | None = None,
    ) -> None:
        self.target = target
        self.states, self.size, self.codec, self.sink = states, size, codec, sink
        runs = len(target.rows)
        self.attrs = [{**a, "status": STATUS_RUNNING, "steps_written": 0} for a in target.attrs]
        for rid, a in zip(self.rid_of_rows(), self.attrs, strict=True):
            new_run_meta(rid, a)  # what is written is valid
        self.chunk_steps = min(codec.chunk_steps, states)
        total = len(target.run_ids)
        self.chunk_runs = blocks.chunk_runs(codec, states, size, total)
        self.buf = np.empty((runs, self.chunk_steps, size), dtype=np.float32)  # [R, c, P]
        self.loss = np.full((runs, states), np.nan, dtype=np.float32)  # [R, T+1]
        self.acc = np.full((runs, states), np.nan, dtype=np.float32)
        self.written = 0  # states of every row queued for writing (append)
        self.filled = 0  # states in the buffer
        self.whole: dict[int, np.ndarray] = {}  # index into rows -> [T+1, P] (put_run)
        self.walls: dict[int, float] = {}  # index into rows -> its seconds (put_run)
        self.t0 = time.perf_counter()
        self._arrays: dict[str, Any] = {}
        self._doc: blocks.BlockDoc | None = None
        self._parent = parent
        sink.submit(lambda: self._open(on_open))

    def rid_of_rows(self) -> list[str]:
        return [self.target.run_ids[r] for r in self.target.rows]

    # ---- jobs (the writer's thread) ---------------------------------------------------------
    def _open(self, on_open: Callable[[Any, BlockTarget], None] | None) -> None:
        t = self.target
        if on_open is not None:
            on_open(self._parent, t)
        if t.new:
            doc = blocks.BlockDoc(list(t.run_ids), list(self.attrs))
            self._arrays = blocks.create_block(
                self._parent, t.block_id, doc, self.states, self.size, self.codec
            )
            self._doc = doc
            return
        g = self._parent[t.block_id]
        doc = blocks.parse_doc(g.attrs.get(blocks.DOC_KEY), f"block {t.block_id}")
        for r, a in zip(t.rows, self.attrs, strict=True):
            doc.attrs[r] = a
        g.attrs[blocks.DOC_KEY] = doc.to_json()
        self._doc = doc
        self._arrays = {n: g[n] for n in blocks.BLOCK_ARRAYS}

    def _write(self, rows: list[int], name: str, data: np.ndarray, states: slice | None) -> None:
        blocks.write_rows(self._arrays[name], [self.target.rows[i] for i in rows], data, states)

    def _complete(self, rows: list[int], walls: list[float], extra: dict[str, Any]) -> None:
        """Rewrite the block's document with ``rows`` (indices into the target's rows)
        complete, each with its wall seconds: the last write of those runs."""
        assert self._doc is not None
        t = self.target
        for i, wall in zip(rows, walls, strict=True):
            rid = t.run_ids[t.rows[i]]
            final = {
                **self.attrs[i],
                **extra,
                "wall_time_s": round(wall, 4),
                "steps_written": self.states,
                "status": STATUS_COMPLETE,
            }
            final["fingerprint"] = run_fingerprint(rid, final)
            self._doc.attrs[t.rows[i]] = final
        self._parent[t.block_id].attrs[blocks.DOC_KEY] = self._doc.to_json()
        t.done.extend((t.run_ids[t.rows[i]], round(w, 4)) for i, w in zip(rows, walls, strict=True))

    # ---- the caller's thread ----------------------------------------------------------------
    def append(self, weights: np.ndarray, loss: np.ndarray, acc: np.ndarray) -> None:
        """One recorded state of every run: ``weights [R, P]``, ``loss [R]``, ``acc [R]``."""
        i = self.written + self.filled
        if i >= self.states:
            raise ValueError("more states appended than the runs have")
        self.buf[:, self.filled] = weights
        self.loss[:, i], self.acc[:, i] = loss, acc
        self.filled += 1
        if self.filled == self.chunk_steps or i + 1 == self.states:
            self._flush()

    def _flush(self) -> None:
        if not self.filled:
            return
        data, start, n = self.buf[:, : self.filled].copy(), self.written, self.filled
        rows = list(range(len(self.target.rows)))
        self.sink.submit(lambda: self._write(rows, "weights", data, slice(start, start + n)))
        self.written += n
        self.filled = 0

    def put_run(
        self, i: int, weights: np.ndarray, loss: np.ndarray, acc: np.ndarray, wall: float
    ) -> None:
        """The whole run of row ``i`` (an index into the target's rows): ``weights [T+1, P]``,
        ``loss``, ``acc [T+1]``, and the seconds it took. When every run of its row chunk is in,
        they are written and marked complete (rows of one chunk are written together)."""
        if weights.shape != (self.states, self.size):
            raise ValueError(f"run has {weights.shape[0]} of {self.states} states")
        self.whole[i] = weights
        self.walls[i] = wall
        self.loss[i], self.acc[i] = loss, acc
        chunk = self.target.rows[i] // self.chunk_runs
        mates = [j for j, r in enumerate(self.target.rows) if r // self.chunk_runs == chunk]
        if all(j in self.whole for j in mates):
            self._submit_rows(mates, np.stack([self.whole.pop(j) for j in mates]), {})

    def _submit_rows(self, rows: list[int], weights: np.ndarray | None, extra: dict) -> None:
        loss, acc = self.loss[rows].copy(), self.acc[rows].copy()
        block_wall = time.perf_counter() - self.t0
        walls = [self.walls.pop(i, block_wall) for i in rows]

        def job() -> None:
            if weights is not None:
                self._write(rows, "weights", weights, None)
            self._write(rows, "loss", loss, None)
            self._write(rows, "train_acc", acc, None)
            self._complete(rows, walls, extra)

        self.sink.submit(job)

    def finish(self, extra: dict[str, Any] | None = None) -> None:
        """After every state was appended: queue the rest, the loss and accuracy, and the
        document marking every run complete (the last write)."""
        self._flush()
        if self.written != self.states:
            raise ValueError(f"runs have {self.written} of {self.states} states")
        self._submit_rows(list(range(len(self.target.rows))), None, extra or {})


def one_run_target(rid: str, attrs: dict[str, Any]) -> BlockTarget:
    """A new block holding the one run ``rid``."""
    return BlockTarget(blocks.block_id([rid]), [rid], [0], [attrs], new=True)


class RunWriter:
    """One run written into a block of its own, synchronously: ``append`` a state ``[P]`` at a
    time, ``finish`` marks it complete (tests, fixtures and small tools; ``collect`` writes many
    runs per block)."""

    def __init__(self, writer: BlockWriter) -> None:
        self.writer = writer

    def append(self, weights: np.ndarray, loss: float, acc: float) -> None:
        self.writer.append(np.asarray(weights)[None], np.array([loss]), np.array([acc]))

    def finish(self, extra: dict[str, Any] | None = None) -> float:
        self.writer.finish(extra)
        self.writer.sink.drain()
        return self.writer.target.done[-1][1]


def rows_of(runs: Sequence[str], block_runs: Sequence[str]) -> list[int]:
    """Rows of ``runs`` in a block of ``block_runs``."""
    where = {rid: r for r, rid in enumerate(block_runs)}
    return [where[rid] for rid in runs]
