"""Stage 3: generate weights for tasks with a trained policy, in N = T/k policy steps (a diffusion
policy: N = S DDIM steps, ``sample_steps``).

The output is a generated store (schema ``lohp.generated`` v1; its layout, and how it is written
atomically under a lock, in :mod:`lohp_cli.store.generated`): per task the generated weights
``[S, P]``, the condition the policy saw and, with ``--save-paths``, every state ``[S, N+1, P]``.
The same arguments and seed give the same weight bytes. The policy is called through the
generator contract (:class:`lohp_cli.policy.generator.Generator`).

Timing (attrs ``timing``), warm-up excluded from both measures, on the device it ran on:

- ``batched_ms_per_sample``: batched throughput, the median over the timed batches of a batch's
  wall time divided by its rows; one untimed warm-up batch of the first batch's shape runs first
  (lazy initialisation, allocator and kernel caches), so every batch of the output is timed.
- ``latency_ms_batch1``: latency as the paper means it, the wall time of generating the weights of
  one task at batch size 1 (median of ``LATENCY_REPEATS`` runs after one untimed run), with its
  interquartile range (``latency_iqr_ms``), the process's CPU time per run (``cpu_ms_batch1``)
  and the load average before and after. ``evaluate`` times the policy again, interleaved with
  the methods it compares, and reports that latency only.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import lohp_cli.diffusion  # noqa: F401 - registers the diffusion generator, which load_policy builds
import lohp_cli.l2o  # noqa: F401 - registers the learned optimizers, which load_policy refuses
from lohp_cli import timing as clock
from lohp_cli.artifacts.generated import GeneratedMeta, new_generated_meta
from lohp_cli.artifacts.policy import PolicyMeta
from lohp_cli.config import OPTIMIZERS, GenerateConfig
from lohp_cli.errors import CompatibilityError, ConfigError, StoreError
from lohp_cli.policy.context import TaskContext, policy_probe, resolve_tasks, task_context
from lohp_cli.policy.directory import StartRule, load_policy, start_rule, style_token
from lohp_cli.policy.generator import Generator, generate_states
from lohp_cli.policy.state import ProbeBank
from lohp_cli.runtime import derive_seed, provenance, resolve_device, stage_threads
from lohp_cli.store.generated import (
    GeneratedTask,
    open_generated,
    read_task_arrays,
    task_arrays,
    write_generated,
)
from lohp_cli.store.location import absolute_location
from lohp_cli.store.sampler import NormStats
from lohp_cli.tasks import Task
from lohp_cli.tasks.families import TaskTensors

Progress = Callable[[dict[str, Any]], None]
WARMUP_BATCHES = 1  # untimed batches before the batched-throughput timing
LATENCY_REPEATS = 20  # timed batch-1 generations behind latency_ms_batch1 (after one untimed)
Row = tuple[Task, torch.Tensor, int]  # (task, its normalised condition [D], sample j)


@dataclass(frozen=True)
class GenerateResult:
    out: str
    tasks: int
    samples: int
    batched_ms_per_sample: float  # median over timed batches of (batch time / rows), warm-up excl.
    batch_size: int  # rows of a full timed batch
    latency_ms_batch1: float  # one task at batch size 1, median after a warm-up run
    device: str  # where both were timed
    wall_time_s: float
    new_tasks: int = 0  # tasks generated now (the others were kept: generate --update)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def generate(cfg: GenerateConfig, progress: Progress | None = None) -> GenerateResult:
    """Generate ``cfg.samples`` weight vectors for each task and write them to ``cfg.out``."""
    emit = progress or (lambda _e: None)
    with stage_threads(cfg.threads, emit):
        return _generate(cfg, emit)


def _generate(cfg: GenerateConfig, emit: Progress) -> GenerateResult:
    t0 = time.perf_counter()
    out = check_output(cfg)
    device = resolve_device(cfg.device)
    model, meta, stats = load_policy(cfg.policy, device, cfg.sample_steps)
    ctx = task_context(meta, cfg.store, cfg.data_root)
    if ctx.store.meta.param_count != meta.param_count:
        raise CompatibilityError("The policy's parameter count does not match its store.")
    tasks = resolve_tasks(cfg.tasks, ctx.family, cfg.num_tasks)
    token = style_token(meta, cfg.style)
    policy = policy_record(cfg, meta, token)
    earlier, before = reusable(cfg, out, policy) if cfg.update else ({}, None)
    kept = {task.id: earlier[task.id] for task in tasks if task.id in earlier}
    todo = [task for task in tasks if task.id not in kept]
    if before is not None and not todo and before.tasks == [task.id for task in tasks]:
        emit({"event": "info", "message": f"{out} is up to date: no new task"})
        wall = round(time.perf_counter() - t0, 3)
        fields = _timing_fields(before.timing)
        return GenerateResult(str(out), len(tasks), cfg.samples, *fields, wall, new_tasks=0)
    if kept:
        emit({"event": "info", "message": f"{len(kept)} task(s) kept from {out}, "
              f"{len(todo)} new"})  # fmt: skip
    emit(
        {
            "event": "start",
            "tasks": len(todo),
            "samples": cfg.samples,
            "N": meta.N,
            "device": device,
        }
    )
    conditions, tensors = task_conditions(todo, ctx, meta, stats, device)
    bank = policy_probe(model, ctx, tensors, stats, device)
    run = Generation(cfg, model, meta, stats, device, token, start_rule(ctx.store, cfg.seed), bank)
    flat = [(task, c, j) for task, c in conditions for j in range(cfg.samples)]
    # the new tasks' weights, and the timing of their generation (the kept tasks: none to time)
    earlier_timing = dict(before.timing) if before is not None else {}
    timing = run.generate_all(flat, emit) if flat else earlier_timing
    attrs = new_generated_meta(
        policy=policy,
        layout=meta.layout,
        param_count=meta.param_count,
        store_location=absolute_location(ctx.store.location),
        tasks=[task.id for task in tasks],
        config=cfg.model_dump(mode="json"),
        timing=timing,
        provenance=provenance(device),
    )
    new = {task.id: c.cpu().numpy() for task, c in conditions}
    write_generated(out, attrs, (run.task_group(t, new, kept) for t in tasks))
    wall = round(time.perf_counter() - t0, 3)
    fields = _timing_fields(timing)
    return GenerateResult(str(out), len(tasks), cfg.samples, *fields, wall, new_tasks=len(todo))


def check_output(cfg: GenerateConfig) -> Path:
    """``cfg.out`` as a local path where this run may write (a ConfigError otherwise)."""
    out = Path(cfg.out)
    if "://" in cfg.out:
        raise ConfigError("generate writes a local directory; give a path for --out.")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"Output '{out}' is a file; give a directory path.")
    if out.exists() and not (cfg.overwrite or cfg.update):
        raise ConfigError(
            f"Output '{out}' exists; pass --update to add the tasks it lacks, or --overwrite to "
            "replace it."
        )
    return out


def policy_record(cfg: GenerateConfig, meta: PolicyMeta, token: int | None) -> dict[str, Any]:
    """The store's ``policy`` attribute: what identifies the generating policy and its style."""
    return {
        "path": str(cfg.policy),
        "method": meta.method,
        "k": meta.k,
        "N": meta.N,
        "store_fingerprint": meta.store_fingerprint,
        "trained_steps": meta.trained_steps,
        "style": None if token is None else OPTIMIZERS[token],
    }


def task_conditions(
    tasks: list[Task], ctx: TaskContext, meta: PolicyMeta, stats: NormStats, device: str
) -> tuple[list[tuple[Task, torch.Tensor]], dict[str, TaskTensors]]:
    """``([(task, normalised condition [D])], {task id: its tensors})``; a CompatibilityError
    for a condition the policy does not take."""
    rows: list[tuple[Task, torch.Tensor]] = []
    tensors: dict[str, TaskTensors] = {}
    for task in tasks:
        t = task.data(ctx.model_cfg, ctx.frozen, device)
        if t.condition.numel() != meta.condition_dim:
            raise CompatibilityError(
                f"Task condition has {t.condition.numel()} entries; the policy expects "
                f"{meta.condition_dim}."
            )
        rows.append((task, stats.normalize_condition(t.condition)))
        tensors[task.id] = t
    return rows, tensors


@dataclass
class Generation:
    """One run's generation: the policy, its starts and probes, and what it has generated
    (``weights`` ``{task: [S, P]}``, ``paths`` ``{task: [S, N+1, P]}``, de-normalised)."""

    cfg: GenerateConfig
    model: Generator
    meta: PolicyMeta
    stats: NormStats
    device: str
    token: int | None
    starts: StartRule  # s_0: the store's shared θ₀, else N(0, I) draws
    bank: ProbeBank | None
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    paths: dict[str, np.ndarray] = field(default_factory=dict)

    def inputs(self, chunk: list[Row]) -> tuple[Any, ...]:
        """``(s0 [B, P], cond [B, D], probe)`` of the rows ``chunk``."""
        s0 = torch.stack([self.starts.s0(task.id, j, self.stats) for task, _, j in chunk])
        cond = torch.stack([c for _, c, _ in chunk])
        probe = None if self.bank is None else self.bank.probe([task.id for task, _, _ in chunk])
        return s0.to(self.device), cond, probe

    def states(self, inputs: tuple[Any, ...], gen: torch.Generator) -> torch.Tensor:
        """Normalised states ``[B, L, P]`` of one batch (:func:`generate_states`)."""
        s0, cond, probe = inputs
        cfg = self.cfg
        return generate_states(
            self.model, cond, s0, cfg.mode, gen, cfg.save_paths, probe, self.token
        )

    def generate_all(self, flat: list[Row], emit: Progress) -> dict[str, Any]:
        """Generate every row of ``flat`` (into ``weights``, ``paths``): an untimed warm-up,
        the timed batches, then the batch-1 latency; returns the timing record."""
        cfg = self.cfg
        # untimed warm-up batches of the first batch's shape (own noise: the bytes are unchanged)
        warm = self.inputs(flat[: cfg.batch_size])
        for w in range(WARMUP_BATCHES):
            gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "warmup", w))
            with torch.no_grad():
                self.states(warm, gen)
        per_sample: list[float] = []  # seconds per row of each timed batch
        for start in range(0, len(flat), cfg.batch_size):
            chunk = flat[start : start + cfg.batch_size]
            per_sample.append(self.batch(chunk, start))
            done = min(start + cfg.batch_size, len(flat))
            emit({"event": "batch", "done": done, "total": len(flat)})
        return {
            "batched_ms_per_sample": round(statistics.median(per_sample) * 1e3, 4),
            "batch_size": min(cfg.batch_size, len(flat)),
            "batches_timed": len(per_sample),
            "warmup_batches": WARMUP_BATCHES,
            **self.latency(flat[0], emit),
        }

    def batch(self, chunk: list[Row], start: int) -> float:
        """Generate the rows ``chunk`` (flat index ``start`` on) and keep their weights;
        returns the seconds per row."""
        inputs = self.inputs(chunk)
        gen = torch.Generator().manual_seed(derive_seed(self.cfg.seed, "noise", start))
        clock.sync(self.device)
        t = clock.now()
        with torch.no_grad():
            states = self.states(inputs, gen)
        clock.sync(self.device)
        seconds = (clock.now() - t) / len(chunk)
        theta = self.stats.denormalize(states).cpu().numpy()  # [B, L, P]
        if not np.isfinite(theta).all():
            raise StoreError("The policy generated non-finite weights; check the policy's metrics.")
        samples, size = self.cfg.samples, self.meta.param_count
        for (task, _, j), th in zip(chunk, theta, strict=True):
            self.weights.setdefault(task.id, np.zeros((samples, size), np.float32))[j] = th[-1]
            if self.cfg.save_paths:
                shape = (samples, th.shape[0], size)
                self.paths.setdefault(task.id, np.zeros(shape, np.float32))[j] = th
        return seconds

    def latency(self, first: Row, emit: Progress) -> dict[str, Any]:
        """The first task's first sample alone (batch size 1), ``LATENCY_REPEATS`` timed runs
        after one untimed run: the latency part of the timing record."""
        one = self.inputs([first])

        def one_task() -> torch.Tensor:
            gen = torch.Generator().manual_seed(derive_seed(self.cfg.seed, "latency"))
            return self.states(one, gen)

        emit({"event": "timing", "repeats": LATENCY_REPEATS})
        load_before = clock.load_average()
        with torch.no_grad():
            latency = clock.measure(one_task, LATENCY_REPEATS, self.device)
        return {
            **latency.to_json(),  # latency_ms_batch1 (median), its interquartile range, CPU time
            "latency_repeats": LATENCY_REPEATS,
            "load_average": {"before": load_before, "after": clock.load_average()},
            "threads": torch.get_num_threads(),
            "device": self.device,
        }

    def task_group(
        self, task: Task, conditions: dict[str, np.ndarray], kept: dict[str, dict[str, np.ndarray]]
    ) -> GeneratedTask:
        """What the store holds of ``task``: generated now, or ``kept`` from an earlier store."""
        old = kept.get(task.id)
        if old is None:
            path = self.paths[task.id] if self.cfg.save_paths else None
            arrays = (self.weights[task.id], conditions[task.id], path)
        else:
            arrays = (old["weights"], old["condition"], old.get("path"))
        return GeneratedTask(task.id, *arrays, attrs=task.describe())


def _timing_fields(timing: dict[str, Any]) -> tuple[float, int, float, str]:
    """``(batched_ms_per_sample, batch_size, latency_ms_batch1, device)`` of a timing record."""
    return (
        timing.get("batched_ms_per_sample", float("nan")),
        timing.get("batch_size", 0),
        timing.get("latency_ms_batch1", float("nan")),
        timing.get("device", "?"),
    )


# what must be equal for an earlier output's weights to be what this run would generate (the
# batch size is not: the bytes do not depend on it)
SAME_WEIGHTS = ("samples", "mode", "sample_steps", "seed", "save_paths")


def reusable(
    cfg: GenerateConfig, out: Path, policy: dict[str, Any]
) -> tuple[dict[str, dict[str, np.ndarray]], GeneratedMeta | None]:
    """``generate --update``: the arrays of the tasks an earlier output at ``out`` already holds
    from this very policy and settings (``{task: {weights, condition[, path]}}``), and its
    attributes; nothing when there is none, or it was made otherwise (then every task is made
    again). With ``--mode sample`` a kept task keeps its earlier draw."""
    if not out.is_dir():
        return {}, None
    try:
        g, before = open_generated(str(out))
    except StoreError:
        return {}, None
    keys = ("method", "k", "N", "store_fingerprint", "trained_steps", "style")
    same_policy = all(before.policy.to_json().get(k) == policy[k] for k in keys)
    same = same_policy and all(before.config.get(k) == getattr(cfg, k) for k in SAME_WEIGHTS)
    if not same:
        return {}, None
    kept = {}
    for task in before.tasks:
        try:
            kept[task] = read_task_arrays(g, str(out), task, task_arrays(cfg.save_paths))
        except Exception:  # noqa: BLE001 - a damaged task is generated again
            continue
    return kept, before
