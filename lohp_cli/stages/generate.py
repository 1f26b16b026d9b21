"""Stage 3: generate weights for tasks with a trained policy, in N = T/k policy steps (a diffusion
policy: N = S DDIM steps, ``sample_steps``).

The output is a Zarr store (schema ``lohp.generated`` v1)::

    generated.zarr/            attrs: schema, schema_version, policy (method, k, N, fingerprint),
                               layout, param_count, store_location, tasks, config, timing,
                               provenance
      <task_id>/weights        float32 [S, P]        generated weights (de-normalised); axes
                                                     ("sample", "param")
      <task_id>/path           float32 [S, N+1, P]   every state (with --save-paths); axes
                                                     ("sample", "step", "param")
      <task_id>/condition      float32 [D]           the task condition the policy saw; axis
                                                     "condition"

Every array is zstd-compressed and ends with a crc32c checksum (see docs/store.md).

It is written into a temporary directory beside ``out`` and renamed into place, under a lock file,
so a crash or two overlapping runs (cron) never leave a half-written output. The same arguments and
seed give the same weight bytes.

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

import os
import shutil
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import lohp_cli.diffusion  # noqa: F401 - registers the diffusion generator, which load_policy builds
import lohp_cli.l2o  # noqa: F401 - registers the learned optimizers, which load_policy refuses
import lohp_cli.store.chunks as chunks
from lohp_cli import timing as clock
from lohp_cli.artifacts.generated import GeneratedMeta, new_generated_meta
from lohp_cli.config import (
    OPTIMIZERS,
    GenerateConfig,
    StoreCodecConfig,
)
from lohp_cli.errors import CompatibilityError, ConfigError, StoreError
from lohp_cli.policy.artifact import generate_batch, load_policy, start_rule, style_token
from lohp_cli.policy.context import policy_probe, resolve_tasks, task_context
from lohp_cli.runtime import derive_seed, provenance, resolve_device, stage_threads
from lohp_cli.store.generated import open_generated
from lohp_cli.store.location import absolute_location, file_lock
from lohp_cli.store.trajectory_store import CONDITION_DIMS, codecs_for
from lohp_cli.tasks import Task
from lohp_cli.tasks.families import TaskTensors

Progress = Callable[[dict[str, Any]], None]
WARMUP_BATCHES = 1  # untimed batches before the batched-throughput timing
LATENCY_REPEATS = 20  # timed batch-1 generations behind latency_ms_batch1 (after one untimed)


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


@contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """An exclusive lock beside ``out`` (``.<name>.lock``, removed on release); a second run
    waits for the first to finish."""
    with file_lock(out.parent / f".{out.name}.lock"):
        yield


def generate(cfg: GenerateConfig, progress: Progress | None = None) -> GenerateResult:
    """Generate ``cfg.samples`` weight vectors for each task and write them to ``cfg.out``."""
    emit = progress or (lambda _e: None)
    with stage_threads(cfg.threads, emit):
        return _generate(cfg, emit)


def _generate(cfg: GenerateConfig, emit: Progress) -> GenerateResult:
    import zarr

    t0 = time.perf_counter()
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
    device = resolve_device(cfg.device)
    model, meta, stats = load_policy(cfg.policy, device, cfg.sample_steps)
    ctx = task_context(meta, cfg.store, cfg.data_root)
    if ctx.store.meta.param_count != meta.param_count:
        raise CompatibilityError("The policy's parameter count does not match its store.")
    tasks = resolve_tasks(cfg.tasks, ctx.family, cfg.num_tasks)
    token = style_token(meta, cfg.style)
    policy = {
        "path": str(cfg.policy),
        "method": meta.method,
        "k": meta.k,
        "N": meta.N,
        "store_fingerprint": meta.store_fingerprint,
        "trained_steps": meta.trained_steps,
        "style": None if token is None else OPTIMIZERS[token],
    }
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
    size = meta.param_count
    rows: list[tuple[Task, torch.Tensor]] = []
    tensors: dict[str, TaskTensors] = {}
    for task in todo:
        t = task.data(ctx.model_cfg, ctx.frozen, device)
        if t.condition.numel() != meta.condition_dim:
            raise CompatibilityError(
                f"Task condition has {t.condition.numel()} entries; the policy expects "
                f"{meta.condition_dim}."
            )
        rows.append((task, stats.normalize_condition(t.condition)))
        tensors[task.id] = t
    bank = policy_probe(model, ctx, tensors, stats, device)
    starts = start_rule(ctx.store, cfg.seed)  # s_0: the store's shared θ₀, else N(0, I) draws

    weights: dict[str, np.ndarray] = {}
    paths: dict[str, np.ndarray] = {}
    per_sample: list[float] = []  # seconds per row of each timed batch
    flat = [(task, c, j) for task, c in rows for j in range(cfg.samples)]

    def inputs(chunk: list[tuple[Task, torch.Tensor, int]]) -> tuple[Any, ...]:
        s0 = torch.stack([starts.s0(task.id, j, stats) for task, _, j in chunk])
        cond = torch.stack([c for _, c, _ in chunk])
        probe = None if bank is None else bank.probe([task.id for task, _, _ in chunk])
        return s0.to(device), cond, probe  # s0 [B, P], cond [B, D]

    def generate_new() -> dict[str, Any]:
        """The new tasks' weights (into ``weights``, ``paths``) and the timing record."""
        # untimed warm-up batches of the first batch's shape (own noise: the bytes are unchanged)
        ws0, wcond, wprobe = inputs(flat[: cfg.batch_size])
        for w in range(WARMUP_BATCHES):
            gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "warmup", w))
            with torch.no_grad():
                generate_batch(
                    model, meta, wcond, ws0, cfg.mode, gen, cfg.save_paths, wprobe, token
                )
        for start in range(0, len(flat), cfg.batch_size):
            chunk = flat[start : start + cfg.batch_size]
            s0, cond, probe = inputs(chunk)
            gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "noise", start))
            clock.sync(device)
            t = clock.now()
            with torch.no_grad():
                states = generate_batch(
                    model, meta, cond, s0, cfg.mode, gen, cfg.save_paths, probe, token
                )
            clock.sync(device)
            per_sample.append((clock.now() - t) / len(chunk))
            theta = stats.denormalize(states).cpu().numpy()  # [B, L, P]
            if not np.isfinite(theta).all():
                raise StoreError(
                    "The policy generated non-finite weights; check the policy's metrics."
                )
            for (task, _, j), th in zip(chunk, theta, strict=True):
                weights.setdefault(task.id, np.zeros((cfg.samples, size), np.float32))[j] = th[-1]
                if cfg.save_paths:
                    paths.setdefault(
                        task.id, np.zeros((cfg.samples, th.shape[0], size), np.float32)
                    )[j] = th
            emit(
                {
                    "event": "batch",
                    "done": min(start + cfg.batch_size, len(flat)),
                    "total": len(flat),
                }
            )

        # latency: the first task's first sample alone (batch size 1), after one untimed run
        s1, c1, p1 = inputs(flat[:1])

        def one_task() -> torch.Tensor:
            gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "latency"))
            return generate_batch(model, meta, c1, s1, cfg.mode, gen, cfg.save_paths, p1, token)

        emit({"event": "timing", "repeats": LATENCY_REPEATS})
        load_before = clock.load_average()
        with torch.no_grad():
            latency = clock.measure(one_task, LATENCY_REPEATS, device)
        timing = {
            "batched_ms_per_sample": round(statistics.median(per_sample) * 1e3, 4),
            "batch_size": min(cfg.batch_size, len(flat)),
            "batches_timed": len(per_sample),
            "warmup_batches": WARMUP_BATCHES,
            **latency.to_json(),  # latency_ms_batch1 (median), its interquartile range, CPU time
            "latency_repeats": LATENCY_REPEATS,
            "load_average": {"before": load_before, "after": clock.load_average()},
            "threads": torch.get_num_threads(),
            "device": device,
        }
        return timing

    # the new tasks' weights, and the timing of their generation (the kept tasks: none to time)
    timing = generate_new() if flat else dict(before.timing if before is not None else {})

    with output_lock(out):
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        root = zarr.open_group(zarr.storage.LocalStore(tmp), mode="w")
        attrs = new_generated_meta(
            policy=policy,
            layout=meta.layout,
            param_count=size,
            store_location=absolute_location(ctx.store.location),
            tasks=[task.id for task in tasks],
            config=cfg.model_dump(mode="json"),
            timing=timing,
            provenance=provenance(device),
        )
        root.attrs.update(attrs.to_json())
        codecs = codecs_for(StoreCodecConfig(codec="zstd", level=3))  # zstd, then crc32c
        new = {task.id: c.cpu().numpy() for task, c in rows}
        for task in tasks:
            old = kept.get(task.id)
            g = root.create_group(task.id)
            g.create_array(
                "weights",
                data=weights[task.id] if old is None else old["weights"],
                compressors=codecs,
                dimension_names=("sample", "param"),
            )
            g.create_array(
                "condition",
                data=new[task.id] if old is None else old["condition"],
                compressors=codecs,
                dimension_names=CONDITION_DIMS,
            )
            if cfg.save_paths:
                path = paths[task.id] if old is None else old["path"]
                g.create_array(
                    "path",
                    data=path,
                    chunks=(1, *path.shape[1:]),
                    compressors=codecs,
                    dimension_names=("sample", "step", "param"),
                )
            g.attrs.update(task.describe())  # e.g. ``classes`` of a class-subset task
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    return GenerateResult(
        str(out),
        len(tasks),
        cfg.samples,
        *_timing_fields(timing),
        wall_time_s=round(time.perf_counter() - t0, 3),
        new_tasks=len(todo),
    )


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
    names = ("weights", "condition", *(("path",) if cfg.save_paths else ()))
    kept = {}
    for task in before.tasks:
        try:
            kept[task] = {
                n: chunks.read(g[f"{task}/{n}"], ..., f"generated store '{out}', task {task}")
                for n in names
            }
        except Exception:  # noqa: BLE001 - a damaged task is generated again
            continue
    return kept, before
