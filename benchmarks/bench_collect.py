"""Benchmarks of stage 1 (``lohp collect``): recording overhead, SAM vs SGD, store codecs.

Run from the repository root::

    python benchmarks/bench_collect.py            # full: head, mlp, cnn; a few minutes on 2 cores
    python benchmarks/bench_collect.py --quick    # head and mlp, SGD only in (a); about a minute
    python benchmarks/bench_collect.py --sections c   # only (c), the codecs
    python benchmarks/bench_collect.py --quick --sections d   # (d), batched collection, only
    python benchmarks/bench_collect.py --sections e   # (e), the layouts side by side (issue 23)

Everything is measured in one process, side by side, and printed on stdout as markdown tables
(progress goes to stderr). Timings use ``time.perf_counter`` (and ``time.process_time`` for a
CPU-time ratio), one warm-up round, then interleaved repeats (the order of the variants rotates
every repeat) and report the median. Torch runs with ``torch.set_num_threads(threads_per_worker)``
(1 by default), the value ``collect`` uses; zarr keeps its own I/O threads, as it does in
``collect``. Device: CPU.

(a) Recording overhead: ``RunContext.execute`` (train and record θ every ``record_every`` steps
    into a Zarr store) against the same ``train_loop`` with ``record=None`` (same model init,
    optimizer and batches), and against recording into a numpy buffer (θ copies, no store).
(b) Time per optimizer step (``train_step``) for SGD, Adam and SAM on the same batches.
(d) Batched collection: runs/s of the one-run path (``execute``; ``train_loop`` alone) against
    the batched path (``execute_many`` with ``batch_runs`` = R; ``train_batched`` alone), R runs
    of one optimizer over the store's tasks, and the batched path's recording overhead (θ into
    numpy buffers, and into the store) against its training with ``record=None``.
(c) Bytes on disk of real recorded weights under each codec option (the real runs collected for
    (a) are rewritten with each option), raw/disk ratio, write and read throughput, a bitwise
    round-trip check (max absolute and relative error for the lossy ``bf16`` options, and the
    test accuracy of each run's final weights as read back against the exact ones). Each
    option is a ``StoreCodecConfig`` (``transpose`` included), written with the library's own
    ``filters_for``/``serializer_for``/``codecs_for``, the codecs ``begin_run`` uses.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lohp_cli.config import CollectConfig, StoreCodecConfig
from lohp_cli.optim import build_optimizer, train_step
from lohp_cli.optim.batched import train_batched
from lohp_cli.optim.loop import train_loop
from lohp_cli.runtime import derive_seed
from lohp_cli.stages.collect import collect
from lohp_cli.stages.collect_schedule import plan_runs
from lohp_cli.stages.runs import RunContext, RunPlan, init_target
from lohp_cli.store import TrajectoryStore
from lohp_cli.store.codecs import codecs_for, filters_for, serializer_for
from lohp_cli.store.writer import BlockWriter
from lohp_cli.tasks import TaskFamily, make_family
from lohp_cli.tasks.layout import flat_params
from lohp_cli.tasks.models import build_target
from lohp_cli.tasks.scoring import accuracy

OVERHEAD_TARGET = 1.10
SPEEDUP_TARGET = 10.0
RATIO_TARGET = 1.4
DEFAULT_CODEC = StoreCodecConfig()
OLD_DEFAULT = StoreCodecConfig(codec="blosc-zstd")  # the default until pcodec (level 5, shuffle)


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def median_ms(xs: list[float]) -> float:
    return 1e3 * statistics.median(xs)


def paired_ratio(num: list[float], den: list[float]) -> float:
    """Median of per-round ratios: each round's variants ran back to back, under the same load."""
    return statistics.median(a / b for a, b in zip(num, den, strict=True))


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call; CPU time counts every thread."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A markdown table (numbers already formatted by the caller)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def machine() -> dict[str, str]:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import numcodecs
    import zarr

    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "zarr": zarr.__version__,
        "numcodecs": numcodecs.__version__,
        "pcodec": importlib.metadata.version("pcodec"),
    }


# ---- setup: one store per model, with real runs ----------------------------------------------
def collect_store(model: str, root: Path, tasks: int) -> CollectConfig:
    """Collect ``tasks`` × {sgd, adam, sam} × 1 seed real runs of ``model`` (default settings)."""
    cfg = CollectConfig.model_validate(
        {"out": str(root / f"{model}.zarr"), "model": {"name": model}, "tasks": tasks, "seeds": 1}
    ).model_copy(update={"device": "cpu"})
    t0 = time.perf_counter()
    collect(cfg)  # the head extractor (600 steps) takes most of this
    log(f"collected {model}: {len(cfg.optimizers) * tasks} runs in {time.perf_counter() - t0:.1f}s")
    return cfg


def fresh_training(
    ctx: RunContext, plan: RunPlan
) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.Generator]:
    """Model, optimizer and batch generator exactly as ``RunContext.execute`` builds them."""
    cfg = ctx.cfg
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(plan.seed)
        model = build_target(cfg.model, ctx.family.data.image_shape, cfg.task.ways)
    model.to(ctx.device).train()
    opt = build_optimizer(plan.optimizer, model.parameters(), cfg.optim)
    gen = torch.Generator().manual_seed(derive_seed(plan.seed, "batches"))
    return model, opt, gen


def run_train_only(ctx: RunContext, plan: RunPlan) -> None:
    cfg, (x_train, y_train) = ctx.cfg, ctx.train_set(plan.task_id)
    model, opt, gen = fresh_training(ctx, plan)
    train_loop(model, opt, x_train, y_train, cfg.steps, cfg.record_every, cfg.batch_size, gen)


def run_record_in_memory(ctx: RunContext, plan: RunPlan) -> np.ndarray:
    """The same loop, recording θ, loss and accuracy as ``execute`` does, into numpy (no store)."""
    cfg, (x_train, y_train) = ctx.cfg, ctx.train_set(plan.task_id)
    model, opt, gen = fresh_training(ctx, plan)
    size = sum(p.numel() for p in model.parameters())
    weights = np.empty((cfg.recorded_states, size), dtype=np.float32)  # [T+1, P]
    scalars = np.empty((cfg.recorded_states, 2), dtype=np.float32)
    i = 0

    def record(theta: torch.Tensor, loss: torch.Tensor, acc: torch.Tensor) -> None:
        nonlocal i
        if not (torch.isfinite(theta).all() and torch.isfinite(loss)):
            raise RuntimeError("non-finite weights")
        weights[i] = theta.cpu().numpy()
        scalars[i] = float(loss), float(acc)
        i += 1

    train_loop(
        model,
        opt,
        x_train,
        y_train,
        cfg.steps,
        cfg.record_every,
        cfg.batch_size,
        gen,
        record,
    )
    return weights


class Stopwatch:
    """Exclusive time per label of nested instrumented calls (callee time leaves the caller)."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self._stack: list[list[float]] = []  # [start, time spent in callees]

    def wrap(self, label: str, fn: Callable) -> Callable:
        def wrapped(*args, **kwargs):
            self._stack.append([time.perf_counter(), 0.0])
            try:
                return fn(*args, **kwargs)
            finally:
                start, inner = self._stack.pop()
                total = time.perf_counter() - start
                self.totals[label] = self.totals.get(label, 0.0) + total - inner
                if self._stack:
                    self._stack[-1][1] += total

        return wrapped


@contextmanager
def instrumented_store(watch: Stopwatch) -> Iterator[None]:
    """Time the store calls of ``execute`` (patches the classes for the duration only)."""
    patches = [
        (TrajectoryStore, "block_writer", "block_writer (block group + 4 arrays + document)"),
        (BlockWriter, "append", "append (copy into buffer)"),
        (BlockWriter, "_flush", "flush (chunk write)"),
        (BlockWriter, "finish", "finish (loss/acc + document)"),
    ]
    saved = [(cls, name, getattr(cls, name)) for cls, name, _ in patches]
    try:
        for cls, name, label in patches:
            setattr(cls, name, watch.wrap(label, getattr(cls, name)))
        yield
    finally:
        for cls, name, fn in saved:
            setattr(cls, name, fn)


@contextmanager
def counted_store_calls(store: TrajectoryStore) -> Iterator[dict[str, int]]:
    """Count the zarr store operations (reads, writes, ...) made through ``store``."""
    backend = store.root.store
    counts: dict[str, int] = {}
    names = ("get", "exists", "set", "set_if_not_exists", "delete", "delete_dir")
    saved = {n: getattr(backend, n) for n in names if hasattr(backend, n)}

    def counting(name: str, fn: Callable) -> Callable:
        async def call(*args, **kwargs):
            counts[name] = counts.get(name, 0) + 1
            return await fn(*args, **kwargs)

        return call

    try:
        for name, fn in saved.items():
            setattr(backend, name, counting(name, fn))
        yield counts
    finally:
        for name in saved:
            delattr(backend, name)  # back to the class's method


def bench_overhead(
    ctx: RunContext, plans: list[RunPlan], reps: int
) -> tuple[list[list[Any]], list[list[Any]], list[str]]:
    """(a): median wall time per run of the three variants, interleaved; and a store breakdown."""
    model = ctx.cfg.model.name
    rows: list[list[Any]] = []
    breakdown: list[list[Any]] = []
    labels: list[str] = []
    counter = 0

    def execute(plan: RunPlan) -> None:
        nonlocal counter
        counter += 1  # a fresh run id each time: the first-time path of a real collect
        ctx.execute(dataclasses.replace(plan, run_id=f"{plan.run_id}-bench{counter}"))

    for plan in plans:
        variants: dict[str, Callable[[], Any]] = {
            "train": lambda p=plan: run_train_only(ctx, p),
            "memory": lambda p=plan: run_record_in_memory(ctx, p),
            "store": lambda p=plan: execute(p),
        }
        # Same loop check: the in-memory recording equals what execute wrote for this plan.
        same = np.array_equal(
            run_record_in_memory(ctx, plan).view(np.uint32),
            ctx.store.weights(plan.run_id).view(np.uint32),
        )
        times: dict[str, list[float]] = {k: [] for k in variants}
        cpu: dict[str, list[float]] = {k: [] for k in variants}
        names = list(variants)
        for r in range(reps + 1):  # round 0 is the warm-up
            order = names[r % 3 :] + names[: r % 3]
            for name in order:
                wall, used = timed(variants[name])
                if r:
                    times[name].append(wall)
                    cpu[name].append(used)
        train, memory, store = (median_ms(times[k]) for k in names)
        ratio = paired_ratio(times["store"], times["train"])
        extra = median_ms([a - b for a, b in zip(times["store"], times["train"], strict=True)])
        rows.append(
            [
                model,
                plan.optimizer,
                f"{train:.1f}",
                f"{memory:.1f}",
                f"{store:.1f}",
                f"{paired_ratio(times['memory'], times['train']):.3f}x",
                f"**{ratio:.3f}x**",
                "yes" if ratio <= OVERHEAD_TARGET else "no",
                f"{paired_ratio(cpu['store'], cpu['train']):.3f}x",
                "yes" if same else "NO",
            ]
        )
        watch = Stopwatch()
        n = 3
        with instrumented_store(watch):
            for _ in range(n):
                execute(plan)
        with counted_store_calls(ctx.store) as calls:
            execute(plan)
        writes = sum(v for k, v in calls.items() if k.startswith("set"))
        parts = {k: 1e3 * v / n for k, v in watch.totals.items()}
        breakdown.append(
            [model, plan.optimizer]
            + [f"{v:.1f}" for v in parts.values()]
            + [
                f"{sum(parts.values()):.1f}",
                f"{extra:.1f}",
                f"{sum(calls.values())} ({writes} writes)",
            ]
        )
        labels = list(parts)
        log(f"(a) {model}/{plan.optimizer}: train {train:.1f} ms, store {store:.1f} ms")
    return rows, breakdown, labels


# ---- (b) time per optimizer step ------------------------------------------------------------
def bench_steps(ctx: RunContext, reps: int, block: int) -> list[Any]:
    """Median seconds per ``train_step`` of SGD, Adam and SAM (blocks of steps, interleaved)."""
    cfg = ctx.cfg
    plan = plan_runs(cfg, ctx.family.tasks("source", 1))[0]
    x_train, y_train = ctx.train_set(plan.task_id)
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(block):
        b = torch.randperm(y_train.shape[0], generator=gen)[: cfg.batch_size]
        batches.append((x_train[b], y_train[b]))  # [B, ...], [B]
    opts = ("sgd", "adam", "sam")
    state = {o: fresh_training(ctx, dataclasses.replace(plan, optimizer=o))[:2] for o in opts}
    times: dict[str, list[float]] = {o: [] for o in opts}
    cpu: dict[str, list[float]] = {o: [] for o in opts}

    def steps(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        for xb, yb in batches:
            train_step(model, opt, xb, yb)

    for r in range(reps + 1):  # round 0 is the warm-up
        order = opts[r % 3 :] + opts[: r % 3]
        for o in order:
            wall, used = timed(lambda o=o: steps(*state[o]))
            if r:
                times[o].append(wall / block)
                cpu[o].append(used / block)
    sgd, adam, sam = (median_ms(times[o]) for o in opts)
    cpu_ratio = paired_ratio(cpu["sam"], cpu["sgd"])
    log(f"(b) {cfg.model.name}: sgd {sgd:.3f} ms, sam {sam:.3f} ms")
    return [
        cfg.model.name,
        f"{sgd:.3f}",
        f"{adam:.3f}",
        f"{sam:.3f}",
        f"{paired_ratio(times['adam'], times['sgd']):.2f}x",
        f"**{paired_ratio(times['sam'], times['sgd']):.2f}x**",
        f"{cpu_ratio:.2f}x",
    ]


# ---- (d) batched collection ----------------------------------------------------------------
def fresh_plans(ctx: RunContext, optimizer: str, runs: int, tag: str) -> list[RunPlan]:
    """``runs`` new runs of ``optimizer`` over the store's tasks in turn (fresh ids and seeds)."""
    tasks = [t.id for t in ctx.family.tasks("source", ctx.cfg.tasks)]
    out = []
    for i in range(runs):
        task = tasks[i % len(tasks)]
        seed = derive_seed(ctx.cfg.seed, task, optimizer, i)
        out.append(RunPlan(f"{task}-{optimizer}-{tag}-{i}", task, optimizer, i, seed))
    return out


def run_batched(ctx: RunContext, plans: list[RunPlan], memory: bool) -> None:
    """``train_batched`` of ``plans`` as ``execute_many`` runs them, with ``record=None`` or
    recording θ/loss/acc into numpy buffers (no store)."""
    cfg = ctx.cfg
    starts = []
    for p in plans:
        model, _, _ = fresh_training(ctx, p)
        starts.append(flat_params(model))
    theta0 = torch.stack(starts)  # [R, P]
    data = [ctx.train_set(p.task_id) for p in plans]  # [(x_train, y_train)]
    gens = [torch.Generator().manual_seed(derive_seed(p.seed, "batches")) for p in plans]
    weights = np.empty((len(plans), cfg.recorded_states, theta0.shape[1]), dtype=np.float32)
    scalars = np.empty((len(plans), cfg.recorded_states, 2), dtype=np.float32)
    i = 0

    def record(theta: torch.Tensor, loss: torch.Tensor, acc: torch.Tensor) -> None:
        nonlocal i
        w = theta.cpu().numpy()  # [R, P]
        if not np.isfinite(w).all():
            raise RuntimeError("non-finite weights")
        weights[:, i] = w
        scalars[:, i, 0], scalars[:, i, 1] = loss.cpu().numpy(), acc.cpu().numpy()
        i += 1

    train_batched(
        model, plans[0].optimizer, cfg.optim, theta0,
        [x for x, _ in data], [y for _, y in data],
        cfg.steps, cfg.record_every, cfg.batch_size, gens, record if memory else None,
    )  # fmt: skip


def bench_batched(
    ctx: RunContext, runs: int, one_runs: int, reps: int, optimizers: tuple[str, ...]
) -> list[list[Any]]:
    """(d): ms per run of the one-run and batched paths, with and without recording, interleaved
    (the one-run variants time ``one_runs`` runs, the batched ones a group of ``runs``)."""
    model = ctx.cfg.model.name
    ctx.cfg = ctx.cfg.model_copy(update={"batch_runs": runs})
    rows = []
    counter = 0

    def plans(opt: str, n: int) -> list[RunPlan]:
        nonlocal counter
        counter += 1
        return fresh_plans(ctx, opt, n, f"bench{counter}")

    for opt in optimizers:
        variants: dict[str, tuple[int, Callable[[], Any]]] = {
            "one train": (
                one_runs,
                lambda o=opt: [run_train_only(ctx, p) for p in plans(o, one_runs)],
            ),
            "one store": (one_runs, lambda o=opt: [ctx.execute(p) for p in plans(o, one_runs)]),
            "batched train": (runs, lambda o=opt: run_batched(ctx, plans(o, runs), False)),
            "batched memory": (runs, lambda o=opt: run_batched(ctx, plans(o, runs), True)),
            "batched store": (runs, lambda o=opt: ctx.execute_many(plans(o, runs))),
        }
        names = list(variants)
        times: dict[str, list[float]] = {k: [] for k in names}  # wall seconds per run
        cpu: dict[str, list[float]] = {k: [] for k in names}  # process CPU seconds per run
        for r in range(reps + 1):  # round 0 is the warm-up
            k = r % len(names)
            for name in names[k:] + names[:k]:
                n, fn = variants[name]
                wall, used = timed(fn)
                if r:
                    times[name].append(wall / n)
                    cpu[name].append(used / n)
        ms = {k: median_ms(v) for k, v in times.items()}
        speed_train = paired_ratio(times["one train"], times["batched train"])
        speed_store = paired_ratio(times["one store"], times["batched store"])
        over_mem = paired_ratio(times["batched memory"], times["batched train"])
        over_store = paired_ratio(times["batched store"], times["batched train"])
        cpu_store = paired_ratio(cpu["one store"], cpu["batched store"])
        cpu_mem = paired_ratio(cpu["batched memory"], cpu["batched train"])
        rows.append(
            [
                model, opt, runs,
                *(f"{ms[k]:.2f}" for k in names),
                f"{1e3 / ms['one store']:.1f}", f"{1e3 / ms['batched store']:.1f}",
                f"**{speed_store:.1f}x**", f"{speed_train:.1f}x",
                "yes" if speed_store >= SPEEDUP_TARGET else "no",
                f"**{over_mem:.3f}x**", f"{over_store:.2f}x",
                "yes" if over_mem <= OVERHEAD_TARGET else "no",
                f"{cpu_store:.1f}x", f"{cpu_mem:.3f}x",
            ]
        )  # fmt: skip
        log(f"(d) {model}/{opt}: {speed_store:.1f}x runs/s, recording {over_mem:.3f}x")
    return rows


def batched_section(rows: list[list[Any]], runs: int, one_runs: int, reps: int) -> list[str]:
    """The markdown of (d)."""
    head = (
        "### (d) Batched collection: runs/s and recording overhead\n\n"
        f"ms per run, median of {reps} interleaved rounds after a warm-up round (each round "
        f"runs every variant once, in rotating order). *one*: the one-run path, {one_runs} runs "
        "one after the other (*train*: `train_loop(record=None)`; *store*: `RunContext.execute`, "
        f"today's `collect --batch-runs 1`); *batched*: {runs} runs of one optimizer over the "
        "store's tasks stepped together (*train*: `train_batched(record=None)`; *memory*: "
        "recording θ/loss/acc into numpy buffers, one [R, P] copy per recorded step; *store*: "
        f"`RunContext.execute_many` with `batch_runs` {runs}, what `collect` runs). Ratios are "
        "medians of per-round ratios. Targets: batched store ≥ "
        f"{SPEEDUP_TARGET:.0f}x the one-run store's runs/s; recording overhead ≤ "
        f"{OVERHEAD_TARGET:.2f}x. *CPU time*: the same ratios of process CPU seconds (all "
        "threads, zarr's included), which other load on the machine disturbs less than wall "
        "time.\n"
    )
    header = [
        "model", "optimizer", "R", "one train ms", "one store ms", "batched train ms",
        "batched memory ms", "batched store ms", "one runs/s", "batched runs/s",
        "runs/s batched/one (store)", "train only", f"≥ {SPEEDUP_TARGET:.0f}x",
        "memory/train", "store/train", f"≤ {OVERHEAD_TARGET:.2f}x",
        "runs/s batched/one (store), CPU time", "memory/train, CPU time",
    ]  # fmt: skip
    return [head, table(header, rows) + "\n"]


# ---- (c) codecs -----------------------------------------------------------------------------
def chunk_rows(codec: StoreCodecConfig, states: int) -> int:
    """Rows (recorded states) per weights chunk, as ``begin_run`` sets them."""
    return min(codec.chunk_steps, states)


def codec_label(codec: StoreCodecConfig) -> str:
    """Short text of a ``StoreCodecConfig``; ``(default)`` marks ``StoreCodecConfig()``."""
    c = codec
    text = f"{c.codec} {c.resolved_shuffle}" if c.codec.startswith("blosc") else c.codec
    if c.codec != "none":
        text += f" L{c.resolved_level}"
    if c.codec == "pcodec":
        text += f" delta {'auto' if c.delta is None else c.delta}"
    if c.lossy != "none":
        text = f"**{c.lossy} (lossy)** + {text}"
    text += f", chunk {c.chunk_steps}"
    if c.chunk_steps >= CollectConfig().recorded_states:
        text += " (whole run)"
    text = ("transpose + " if c.transpose else "no transpose, ") + text
    if c == DEFAULT_CODEC:
        text += " (default)"
    elif c == OLD_DEFAULT:
        text += " (default before pcodec)"
    return text


def codec_options(quick: bool) -> list[StoreCodecConfig]:
    """The options of (c), each a ``StoreCodecConfig``: the default and variations of it."""
    part = 16  # several chunks per run (the last one padded)
    opt = StoreCodecConfig
    blosc = "blosc-zstd"
    options = [
        # pcodec (the default), with the transpose: its delta runs along each time series.
        (True, opt()),
        (True, opt(level=4)),
        (False, opt(level=12)),
        (True, opt(delta=0)),
        (True, opt(delta=1)),
        (False, opt(delta=2)),
        (True, opt(chunk_steps=part)),
        (True, opt(transpose=False)),
        # blosc and zstd, with the transpose (coordinate-major chunks).
        (True, opt(codec=blosc, transpose=True)),
        (False, opt(codec=blosc, transpose=True, level=1)),
        (True, opt(codec=blosc, transpose=True, level=3)),
        (True, opt(codec=blosc, transpose=True, level=9)),
        (True, opt(codec=blosc, transpose=True, shuffle="noshuffle")),
        (True, opt(codec=blosc, transpose=True, shuffle="bitshuffle")),
        (True, opt(codec="blosc-lz4", transpose=True)),
        (True, opt(codec="zstd", transpose=True)),
        (False, opt(codec="zstd", transpose=True, level=9)),
        (False, opt(codec=blosc, transpose=True, chunk_steps=part)),
        # Without it (time-major chunks, as the store wrote before ``transpose``).
        (True, opt(codec=blosc, transpose=False)),
        (False, opt(codec=blosc, transpose=False, level=9)),
        (False, opt(codec=blosc, transpose=False, shuffle="noshuffle")),
        (False, opt(codec=blosc, transpose=False, shuffle="bitshuffle")),
        (False, opt(codec="blosc-lz4", transpose=False)),
        (False, opt(codec="zstd", transpose=False)),
        (True, opt(codec="none", transpose=False)),
        (False, opt(codec=blosc, transpose=False, chunk_steps=part)),
        (False, opt(codec="zstd", transpose=False, chunk_steps=part)),
        (False, opt(codec="none", transpose=False, chunk_steps=part)),
        # Lossy: every weight rounded to bfloat16 precision, then each compressor.
        (True, opt(lossy="bf16")),
        (True, opt(lossy="bf16", codec=blosc)),
        (False, opt(lossy="bf16", codec=blosc, shuffle="bitshuffle")),
        (True, opt(lossy="bf16", codec="zstd")),
        (False, opt(lossy="bf16", codec="blosc-lz4")),
    ]
    chosen = [o for in_quick, o in options if in_quick or not quick]
    for must in (OLD_DEFAULT, DEFAULT_CODEC):  # the defaults changed: keep a row for them
        if must not in chosen:
            chosen.insert(0, must)
    return list(dict.fromkeys(chosen))  # one row per distinct config


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def codec_trial(arrays: list[np.ndarray], option: StoreCodecConfig, root: Path) -> dict[str, Any]:
    """Write every array with ``option`` into a fresh local store, read it back, measure.

    The arrays are created as ``TrajectoryStore.begin_run`` creates ``weights``: the same
    chunks, ``filters_for``, ``serializer_for`` and ``codecs_for``; they are written through
    the array re-opened from its metadata, as ``RunWriter`` writes.
    """
    import zarr

    shutil.rmtree(root, ignore_errors=True)
    group = zarr.open_group(zarr.storage.LocalStore(root), mode="w")
    nodes = []
    for i, a in enumerate(arrays):
        nodes.append(
            group.create_array(
                f"r{i}",
                shape=a.shape,
                chunks=(chunk_rows(option, a.shape[0]), a.shape[1]),
                dtype="float32",
                filters=filters_for(option),
                serializer=serializer_for(option),
                compressors=codecs_for(option),
                fill_value=np.nan,
            )
        )
    group = zarr.open_group(zarr.storage.LocalStore(root), mode="r+")
    nodes = [group[f"r{i}"] for i in range(len(arrays))]

    def write_all() -> None:
        for node, a in zip(nodes, arrays, strict=True):
            node[...] = a

    write, write_cpu = timed(write_all)
    reopened = zarr.open_group(zarr.storage.LocalStore(root), mode="r")
    back: list[np.ndarray] = []
    read, read_cpu = timed(
        lambda: back.extend(np.asarray(reopened[f"r{i}"][...]) for i in range(len(arrays)))
    )
    lossless = all(
        np.array_equal(b.view(np.uint32), a.view(np.uint32))
        for a, b in zip(arrays, back, strict=True)
    )
    abs_err = max(float(np.abs(b - a).max()) for a, b in zip(arrays, back, strict=True))
    rel_err = max(
        float((np.abs(b - a)[a != 0] / np.abs(a[a != 0])).max(initial=0.0))
        for a, b in zip(arrays, back, strict=True)
    )
    disk = sum(dir_bytes(root / f"r{i}") for i in range(len(arrays)))
    chunks = sum(dir_bytes(root / f"r{i}" / "c") for i in range(len(arrays)))
    return {
        "write": write,
        "read": read,
        "write_cpu": write_cpu,
        "read_cpu": read_cpu,
        "lossless": lossless,
        "abs_err": abs_err,
        "rel_err": rel_err,
        "final": [b[-1] for b in back],  # each run's final weights [P] as read back
        "disk": disk,
        "chunks": chunks,
    }


def final_accuracy(ctx: RunContext, plans: list[RunPlan], finals: list[np.ndarray]) -> list[float]:
    """Test-split accuracy of each run's final weights ``[P]`` (its task's test split)."""
    out = []
    for plan, theta in zip(plans, finals, strict=True):
        model = init_target(ctx.cfg, ctx.family, plan.seed, ctx.frozen)
        data = ctx.family.task(plan.task_id).data(ctx.cfg.model, ctx.frozen)
        out.append(accuracy(model, torch.from_numpy(theta), data)[0])
    return out


def bench_codecs(
    model: str, ctx: RunContext, plans: list[RunPlan], root: Path, reps: int, quick: bool
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(c) for one model: every codec option on the same real weight arrays."""
    arrays = [ctx.store.weights(p.run_id) for p in plans]  # each [T+1, P] float32
    exact_acc = final_accuracy(ctx, plans, [a[-1] for a in arrays])
    raw = sum(a.nbytes for a in arrays)
    constant = statistics.mean(float((a == a[0]).all(0).mean()) for a in arrays)
    options = codec_options(quick)
    by_option: list[list[dict[str, Any]]] = [[] for _ in options]
    for rep in range(reps):  # interleaved: every round runs each option once, order rotating
        for i in [(rep + j) % len(options) for j in range(len(options))]:
            by_option[i].append(codec_trial(arrays, options[i], root / "codec"))
    results = []
    for option, trials in zip(options, by_option, strict=True):
        results.append(
            {
                "model": model,
                "option": option,
                "disk": trials[-1]["disk"],
                "chunks": trials[-1]["chunks"],
                "ratio": raw / trials[-1]["disk"],
                "write": raw / 1e6 / statistics.median(t["write"] for t in trials),
                "read": raw / 1e6 / statistics.median(t["read"] for t in trials),
                "write_cpu": raw / 1e6 / statistics.median(t["write_cpu"] for t in trials),
                "read_cpu": raw / 1e6 / statistics.median(t["read_cpu"] for t in trials),
                "lossless": all(t["lossless"] for t in trials),
                "abs_err": max(t["abs_err"] for t in trials),
                "rel_err": max(t["rel_err"] for t in trials),
            }
        )
        if option.lossy != "none" and option.codec == DEFAULT_CODEC.codec:
            acc = final_accuracy(ctx, plans, trials[-1]["final"])
            diffs = [a - e for a, e in zip(acc, exact_acc, strict=True)]
            results[-1]["accuracy"] = {
                "exact": statistics.mean(exact_acc),
                "lossy": statistics.mean(acc),
                "max_abs_diff": max(abs(d) for d in diffs),
                "runs": len(diffs),
            }
    shutil.rmtree(root / "codec", ignore_errors=True)
    a = arrays[0]
    log(f"(c) {model}: {len(arrays)} runs of shape {a.shape}, {constant:.0%} θ never change")
    for r in results:
        r["shape"] = a.shape
    info = {"model": model, "runs": len(arrays), "shape": a.shape, "raw_kb": raw / 1e3}
    return results, {**info, "constant": constant}


def codec_rows(results: list[dict[str, Any]]) -> list[list[Any]]:
    return [
        [
            r["model"],
            codec_label(r["option"]),
            f"{r['disk'] / 1e3:.1f}",
            f"**{r['ratio']:.3f}**",
            "yes" if r["ratio"] >= RATIO_TARGET else "no",
            f"{r['write']:.0f}",
            f"{r['write_cpu']:.0f}",
            f"{r['read']:.0f}",
            f"{r['read_cpu']:.0f}",
            "yes (bitwise)" if r["lossless"] else "no",
            "0" if r["lossless"] else f"{r['abs_err']:.1e} / {r['rel_err']:.1e}",
        ]
        for r in results
    ]


def lossy_accuracy_rows(results: list[dict[str, Any]]) -> list[list[Any]]:
    """Per model: mean test accuracy of the final weights, exact vs read back from bf16."""
    return [
        [
            r["model"],
            codec_label(r["option"]),
            r["accuracy"]["runs"],
            f"{r['accuracy']['exact']:.4f}",
            f"{r['accuracy']['lossy']:.4f}",
            f"{r['accuracy']['max_abs_diff']:.4f}",
            f"{r['rel_err']:.2e} (bf16 bound 2^-8 = {2.0**-8:.2e})",
        ]
        for r in results
        if "accuracy" in r
    ]


def codec_summary(results: list[dict[str, Any]], models: list[str]) -> list[list[Any]]:
    """Per model: the default, the old default; the best lossless option overall, as fast as the
    default, untransposed; the best lossy one."""
    rows = []
    for model in models:
        every = [r for r in results if r["model"] == model]
        mine = [r for r in every if r["lossless"]]
        if not mine:
            continue
        default = next(r for r in mine if r["option"] == DEFAULT_CODEC)
        old = next(r for r in mine if r["option"] == OLD_DEFAULT)
        fast = [r for r in mine if r["write_cpu"] >= 0.8 * default["write_cpu"]]
        plain = [r for r in mine if not r["option"].transpose]

        def cell(rs: list[dict[str, Any]]) -> str:
            if not rs:
                return "-"
            r = max(rs, key=lambda r: r["ratio"])
            label = codec_label(r["option"])
            return f"{r['ratio']:.3f}x, {r['write_cpu']:.0f} MB/CPU-s write ({label})"

        rows.append(
            [
                model,
                f"{default['ratio']:.3f}x, {default['write_cpu']:.0f} MB/CPU-s write",
                f"{old['ratio']:.3f}x, {old['write_cpu']:.0f} MB/CPU-s write",
            ]
            + [cell(mine), cell(fast), cell(plain), cell([r for r in every if not r["lossless"]])]
        )
    return rows


def bitshuffle_notes(results: list[dict[str, Any]]) -> list[str]:
    """Options whose bytes equal the no-shuffle ones: c-blosc skipped the bitshuffle."""
    notes = []
    for r in results:
        c = r["option"]
        if c.resolved_shuffle != "bitshuffle":
            continue
        twin = c.model_copy(update={"shuffle": "noshuffle"})
        rows = chunk_rows(c, r["shape"][0])
        for q in results:
            if q["model"] == r["model"] and q["option"] == twin and q["chunks"] == r["chunks"]:
                notes.append(
                    f"{r['model']}, {codec_label(c)}: byte-identical chunks to noshuffle. "
                    "c-blosc bitshuffles only multiples of 8 elements per block; this chunk "
                    f"holds {rows} × {r['shape'][1]} elements"
                    + (" (not a multiple of 8)" if rows * r["shape"][1] % 8 else "")
                    + ", so the bitshuffle was skipped."
                )
    return notes


# ---- main -----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer models, repeats and options")
    parser.add_argument("--models", default=None, help="comma list of head,mlp,cnn")
    parser.add_argument("--reps", type=int, default=None, help="timed repeats per variant")
    parser.add_argument("--sections", default="abcd", help="which of (a)-(d) to run, or e alone")
    parser.add_argument("--batched-only", action="store_true", help="section (d) only")
    parser.add_argument("--batch-runs", type=int, default=64, help="R of (d)")
    args = parser.parse_args(argv)
    sections = {"d"} if args.batched_only else set(args.sections)
    if sections == {"e"}:  # the layouts side by side, in one run (benchmarks/bench_layout.py)
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from benchmarks import bench_layout

        argv = ["--models", args.models] if args.models else []
        return bench_layout.main(argv + (["--rounds", str(args.reps)] if args.reps else []))
    if not sections or not sections <= set("abcd"):
        parser.error(f"--sections {args.sections!r}: give letters of abcd, e.g. c or ab")

    quick = args.quick
    models = (args.models or ("head,mlp" if quick else "head,mlp,cnn")).split(",")
    unknown = [m for m in models if m not in ("head", "mlp", "cnn")]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}; choose from head, mlp, cnn")
    # (a) repeats: full runs of cnn take ~1.5-3 s each, so it gets fewer.
    reps_a = {m: args.reps or (5 if quick else (5 if m == "cnn" else 11)) for m in models}
    reps_b = args.reps or (5 if quick else 9)
    tasks = 2 if quick else 4
    defaults = CollectConfig()
    threads = defaults.threads_per_worker
    torch.set_num_threads(threads)
    info = machine()
    load0 = os.getloadavg()[0]

    family: TaskFamily = make_family(defaults.task)
    t_all = time.perf_counter()
    rows_a: list[list[Any]] = []
    rows_bd: list[list[Any]] = []
    rows_b: list[list[Any]] = []
    rows_d: list[list[Any]] = []
    reps_d = args.reps or (3 if quick else 5)
    one_runs = 4 if quick else 8
    results_c: list[dict[str, Any]] = []
    runs_info: list[dict[str, Any]] = []
    labels: list[str] = []
    with tempfile.TemporaryDirectory(prefix="lohp-bench-") as tmp:
        root = Path(tmp)
        for model in models:
            cfg = collect_store(model, root, tasks)
            ctx = RunContext(cfg, "cpu", family)
            plans = plan_runs(cfg, family.tasks("source", tasks))
            first: dict[str, RunPlan] = {}
            for p in plans:
                first.setdefault(p.optimizer, p)
            # SGD has the shortest runs, so the largest overhead ratio; cnn runs take seconds.
            chosen = [first["sgd"]] if quick or model == "cnn" else list(first.values())
            if "a" in sections:
                a_rows, bd_rows, labels = bench_overhead(ctx, chosen, reps_a[model])
                rows_a += a_rows
                rows_bd += bd_rows
            if "b" in sections:
                block = {"head": 200, "mlp": 50, "cnn": 20}[model]
                rows_b.append(bench_steps(ctx, reps_b, block))
            if "c" in sections:
                res, c_info = bench_codecs(model, ctx, plans, root, 2 if quick else 3, quick)
                results_c += res
                runs_info.append(c_info)
            if "d" in sections and model != "cnn":  # cnn (BatchNorm) takes the one-run path
                rows_d += bench_batched(ctx, args.batch_runs, one_runs, reps_d, ("sgd", "adam"))
            shutil.rmtree(root / f"{model}.zarr", ignore_errors=True)
    wall = time.perf_counter() - t_all
    load1 = os.getloadavg()[0]

    reps_text = ", ".join(f"{m} {r}" for m, r in reps_a.items())
    codec = DEFAULT_CODEC  # StoreCodecConfig(): the store codec of every collect above
    assert defaults.store == codec
    states = defaults.recorded_states
    chunk = chunk_rows(codec, states)
    flushes = math.ceil(states / chunk)
    delta = "auto" if codec.delta is None else codec.delta
    codec_text = (
        f"codec {codec.codec}, level {codec.resolved_level}, delta {delta}, "
        f"lossy {codec.lossy}, chunk_steps {codec.chunk_steps}, transpose {codec.transpose}"
    )
    which_opts = (
        "SGD only (--quick)"
        if quick
        else "cnn with SGD only (its runs take seconds; SGD has the shortest runs, so the "
        "largest ratio)"
    )
    title = f"{'--quick' if quick else 'full'}, sections {''.join(sorted(sections))}"
    out: list[str] = [f"## `lohp collect` benchmarks ({title})\n"]
    out.append(
        f"{info['date']}; CPU {info['cpu']}, {info['cores']} cores; Python {info['python']}, "
        f"torch {info['torch']}, zarr {info['zarr']}, numcodecs {info['numcodecs']}, "
        f"pcodec {info['pcodec']}. "
        f"`torch.set_num_threads({threads})` (collect's `threads_per_worker` default), device "
        f"cpu. Default fmnist config: steps {defaults.steps}, record_every "
        f"{defaults.record_every}, batch {defaults.batch_size}, {states} recorded states per run. "
        f"`StoreCodecConfig()` defaults: {codec_text} ({flushes} chunk{'s' * (flushes > 1)} "
        f"of {chunk} states per run). "
        f"1-min load average {load0:.1f} at start, {load1:.1f} at end (other processes share "
        f"the cores; ratios come from interleaved repeats, so they suffer less than absolute ms)."
        "\n"
    )
    if "a" in sections:
        out += section_a(rows_a, rows_bd, labels, reps_text, which_opts, flushes, states, chunk)
    if "b" in sections:
        out += section_b(rows_b, reps_b)
    if "c" in sections:
        out += section_c(results_c, runs_info, models)
    if "d" in sections:
        out += batched_section(rows_d, args.batch_runs, one_runs, reps_d)
    out.append(f"Total benchmark wall time: {wall:.0f} s.")
    print("\n".join(out))
    return 0


def section_a(
    rows_a: list[list[Any]],
    rows_bd: list[list[Any]],
    labels: list[str],
    reps_text: str,
    which_opts: str,
    flushes: int,
    states: int,
    chunk: int,
) -> list[str]:
    defaults, codec = CollectConfig(), DEFAULT_CODEC
    out = ["### (a) Recording overhead per run\n"]
    out.append(
        f"Median wall time of one whole run (model init, optimizer, {defaults.steps} steps) over "
        f"interleaved repeats ({reps_text}) after one warm-up round; {which_opts}. *train*: "
        "`train_loop(..., record=None)`; *θ to memory*: the same loop recording θ/loss/acc "
        "into numpy as `execute` does; *store*: `RunContext.execute` into a local Zarr store "
        "(a fresh run id each time, as in a first `collect`). *same θ*: the in-memory "
        "recording is bitwise "
        "equal to what `execute` stored, so all three run the same training. *CPU time*: "
        "the same ratio of process CPU seconds (all threads, zarr's included), which other "
        "load on the machine disturbs less than wall time.\n"
    )
    out.append(
        table(
            [
                "model",
                "optimizer",
                "train ms",
                "θ to memory ms",
                "store ms",
                "memory/train",
                "store/train",
                f"≤ {OVERHEAD_TARGET:.2f}x",
                "store/train CPU time",
                "same θ",
            ],
            rows_a,
        )
        + "\n"
    )
    out.append(
        "Where the store time goes: ms per run inside each store method (exclusive; mean of 3 "
        f"instrumented runs; {flushes} chunk write{'s' * (flushes > 1)} per run with chunk_steps "
        f"{codec.chunk_steps}, "
        + (
            "each from `append` when a chunk fills, so `finish`'s flush has nothing left"
            if states % chunk == 0
            else "the last, partial one from `finish`"
        )
        + "; the run's attributes are written by "
        "`begin_run`, with the group, and once more by `finish`), and the zarr store "
        "operations of one run.\n"
    )
    out.append(
        table(
            [
                "model",
                "optimizer",
                *labels,
                "sum",
                "store − train (paired median)",
                "zarr store calls per run",
            ],
            rows_bd,
        )
        + "\n"
    )
    return out


def section_b(rows_b: list[list[Any]], reps_b: int) -> list[str]:
    defaults = CollectConfig()
    out = ["### (b) Time per optimizer step\n"]
    out.append(
        f"`train_step` on the same pre-drawn batches of {defaults.batch_size}, blocks of steps "
        f"(head 200, mlp 50, cnn 20), median of {reps_b} interleaved blocks after a warm-up "
        "block.\n"
    )
    out.append(
        table(
            ["model", "SGD ms", "Adam ms", "SAM ms", "Adam/SGD", "SAM/SGD", "SAM/SGD CPU time"],
            rows_b,
        )
        + "\n"
    )
    return out


def section_c(
    results_c: list[dict[str, Any]], runs_info: list[dict[str, Any]], models: list[str]
) -> list[str]:
    out = ["### (c) Recorded weights on disk per codec\n"]
    desc = "; ".join(
        f"{r['model']}: {r['runs']} runs × {r['shape'][0]}×{r['shape'][1]} float32 = "
        f"{r['raw_kb']:.0f} kB raw, {r['constant']:.0%} of θ entries constant over a run"
        for r in runs_info
    )
    out.append(
        f"Real trajectories ({desc}) rewritten with each option into a local store. *ratio* = "
        "raw float32 bytes / bytes on disk of the weight arrays (chunks + zarr.json, as `lohp "
        "inspect` counts). Throughput: MB/s of raw data through zarr, whole-array write and "
        "read (median of repeats, warm page cache, includes zarr's per-call overhead, which "
        "dominates for the small head arrays). Each option is a `StoreCodecConfig`, written "
        "through the library's `filters_for`/`serializer_for`/`codecs_for` as `begin_run` "
        "writes a run; "
        "*transpose* (`StoreCodecConfig.transpose`) is zarr v3's core "
        "`TransposeCodec(order=(1, 0))` before the compressor, so each chunk is stored "
        "parameter-major (one parameter's values over time side by side); pcodec is the "
        "array-to-bytes codec (`numcodecs.pcodec`, no compressor after it), its *delta* the "
        "delta-encoding order along that series (auto: pcodec picks per chunk); *bf16 (lossy)* "
        "is `BitRound(keepbits=7)` after the transpose (float32 on disk and on read). "
        "*(default)* marks `StoreCodecConfig()`. *error*: max absolute / max relative error "
        "of any weight read back (relative over non-zero weights).\n"
    )
    out.append(
        table(
            [
                "model",
                "codec",
                "disk kB",
                "ratio raw/disk",
                f"≥ {RATIO_TARGET}x",
                "write MB/s",
                "write MB/CPU-s",
                "read MB/s",
                "read MB/CPU-s",
                "lossless",
                "error abs / rel",
            ],
            codec_rows(results_c),
        )
        + "\n"
    )
    out.append("Best ratio per model (in the table above; lossless options unless marked):\n")
    out.append(
        table(
            [
                "model",
                "default",
                "default before pcodec",
                "best lossless option",
                "best lossless option with ≥ 80% of the default's write MB/CPU-s",
                "best lossless option with transpose=False",
                "best lossy option",
            ],
            codec_summary(results_c, models),
        )
        + "\n"
    )
    out.append(
        "What bf16 rounding costs: test-split accuracy (each run's own task) of each run's "
        "final recorded weights, exact vs as read back from the bf16 store; mean over runs, "
        "and the largest change of any one run.\n"
    )
    out.append(
        table(
            [
                "model",
                "codec",
                "runs",
                "test acc exact",
                "test acc bf16",
                "max abs Δ acc of a run",
                "max relative weight error",
            ],
            lossy_accuracy_rows(results_c),
        )
        + "\n"
    )
    for note in bitshuffle_notes(results_c):
        out.append(f"- {note}")
    out.append("")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
