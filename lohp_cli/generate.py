"""Stage 3: generate weights for tasks with a trained policy, in N = T/k policy steps.

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
  one task at batch size 1 (median of ``LATENCY_REPEATS`` runs after one untimed run).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lohp_cli.config import (
    OPTIMIZERS,
    GenerateConfig,
    ModelConfig,
    StoreCodecConfig,
    TaskConfig,
)
from lohp_cli.errors import CompatibilityError, ConfigError, StoreError
from lohp_cli.policy.state import ProbeBank, StateProbe
from lohp_cli.runtime import derive_seed, provenance, resolve_device
from lohp_cli.store.sampler import NormStats
from lohp_cli.store.trajectory_store import (
    CONDITION_DIMS,
    TrajectoryStore,
    absolute_location,
    codecs_for,
)
from lohp_cli.tasks import TaskFamily, TaskSpec, make_family
from lohp_cli.tasks.families import SPLITS
from lohp_cli.tasks.inputs import TaskTensors, support_set, task_tensors
from lohp_cli.tasks.models import FeatureExtractor, build_target

GEN_SCHEMA = "lohp.generated"
GEN_SCHEMA_VERSION = 1
Progress = Callable[[dict[str, Any]], None]
WARMUP_BATCHES = 1  # untimed batches before the batched-throughput timing
LATENCY_REPEATS = 5  # timed batch-1 generations behind latency_ms_batch1 (after one untimed)


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

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def initial_state(seed: int, task_id: str, sample: int, size: int) -> torch.Tensor:
    """s_0 ~ N(0, I) ``[P]`` of one (task, sample): the start every method shares for that pair."""
    gen = torch.Generator().manual_seed(derive_seed(seed, task_id, sample))
    return torch.randn(size, generator=gen)


@dataclass
class TaskContext:
    """The task family, target model and extractor a policy was trained for."""

    family: TaskFamily
    model_cfg: ModelConfig
    extractor: FeatureExtractor | None
    store: TrajectoryStore


def task_context(
    meta: dict[str, Any], store_location: str | None = None, data_root: str | None = None
) -> TaskContext:
    """Rebuild the family/model of a policy from its config; refuse a mismatched data set."""
    from lohp_cli.collect import load_extractor
    from lohp_cli.config import CollectConfig

    location = store_location or meta["store_location"]
    store = TrajectoryStore.open(location, mode="r")
    compat = store.attrs.get("compat", {})
    if compat != meta["store_compat"]:
        raise CompatibilityError(
            f"Store '{location}' does not match the policy's store (task family, model or "
            "trajectory settings differ); pass the store the policy was trained on with --store."
        )
    fam = dict(compat["family"])
    stored_cfg = store.attrs.get("config", {}).get("task", {})
    task_cfg = TaskConfig.model_validate(
        {
            "family": fam["name"],
            **{k: v for k, v in fam.items() if k in TaskConfig.model_fields and k != "family"},
            "data_root": data_root if data_root is not None else stored_cfg.get("data_root"),
        }
    )
    family = make_family(task_cfg)
    if family.data.fingerprint() != fam["data_fingerprint"]:
        raise CompatibilityError(
            f"The '{fam['name']}' data set found ({family.data.source}) differs from the one the "
            "policy's store was collected on (data fingerprint); point --data-root at that copy."
        )
    model_cfg = ModelConfig.model_validate(compat["model"])
    collect_cfg = CollectConfig.model_validate(
        {"task": task_cfg.model_dump(), "model": model_cfg.model_dump()}
    )
    return TaskContext(family, model_cfg, load_extractor(store, collect_cfg, family), store)


def has_tokens(meta: dict[str, Any]) -> bool:
    """Whether a policy was trained with ``policy.optimizer_token`` (and so needs a token)."""
    return bool(meta["train_config"].get("policy", {}).get("optimizer_token", False))


def style_token(meta: dict[str, Any], style: str | None) -> int | None:
    """The optimizer-token index a policy generates with, or None for a policy without tokens.

    A policy trained with ``policy.optimizer_token`` always saw a token; it imitates ``style``
    (default: Adam when it learned from Adam runs, else the first optimizer it learned from).
    """
    tc = meta["train_config"]
    if not has_tokens(meta):
        if style is not None:
            raise ConfigError(
                f"--style {style}: the policy was trained without policy.optimizer_token, so it "
                "has one style only; leave --style out."
            )
        return None
    learned = list(tc.get("optimizers") or meta.get("store_optimizers") or OPTIMIZERS)
    if style is None:
        style = "adam" if "adam" in learned else learned[0]
    if style not in learned:
        raise ConfigError(
            f"--style {style}: the policy learned from {', '.join(learned)} runs only."
        )
    return OPTIMIZERS.index(style)


def probe_bank(
    ctx: TaskContext,
    supports: dict[str, tuple[torch.Tensor, torch.Tensor]],
    stats: NormStats,
    device: str,
) -> ProbeBank:
    """Support sets ``{task_id: (x [M, *in], y [M])}`` for a state-aware policy."""
    net = build_target(ctx.model_cfg, ctx.family.data.image_shape, ctx.family.cfg.ways)
    bank = ProbeBank(net, stats.mean, stats.std)
    for task_id, (x, y) in supports.items():
        bank.add(task_id, x, y, ctx.family.cfg.ways)
    return bank.to(device)


def support_probe_bank(
    ctx: TaskContext, task_ids: Iterable[str], stats: NormStats, device: str
) -> ProbeBank:
    """The support sets of ``task_ids`` (each built once, without its train/test tensors)."""
    supports = {}
    for tid in sorted(set(task_ids)):
        x, y, _ = support_set(ctx.family, TaskSpec.from_id(tid), ctx.model_cfg, ctx.extractor)
        supports[tid] = (x, y)
    return probe_bank(ctx, supports, stats, device)


def policy_probe(
    model: torch.nn.Module,
    ctx: TaskContext,
    tasks: dict[str, TaskTensors],
    stats: NormStats,
    device: str,
) -> ProbeBank | None:
    """A probe bank when ``model`` is a state-aware policy, else None."""
    if not getattr(model, "needs_probe", False):
        return None
    return probe_bank(ctx, {k: (t.x_support, t.y_support) for k, t in tasks.items()}, stats, device)


def resolve_tasks(spec: str, family: TaskFamily, n: int) -> list[TaskSpec]:
    """Tasks from a split name, comma-separated ids, or ``@FILE`` (one id per line, # comments)."""
    if spec in SPLITS:
        return family.tasks(spec, n)  # type: ignore[arg-type]
    if spec.startswith("@"):
        path = Path(spec[1:])
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"Cannot read task list '{path}': {exc.strerror}.") from None
        ids = [ln.split("#", 1)[0].strip() for ln in lines]
    else:
        ids = [t.strip() for t in spec.split(",")]
    specs = [TaskSpec.from_id(t) for t in ids if t]
    if not specs:
        raise ConfigError(f"No task ids in {spec!r}.")
    nclass = family.data.num_classes
    for s in specs:
        if (
            len(s.classes) != family.cfg.ways
            or len(set(s.classes)) != len(s.classes)
            or not all(0 <= c < nclass for c in s.classes)
        ):
            raise ConfigError(
                f"Task '{s.task_id}' is not a {family.cfg.ways}-way task of distinct classes "
                f"0..{nclass - 1} of '{family.name}'."
            )
    return specs


@contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """An exclusive lock beside ``out``; a second run waits for the first to finish."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _now() -> float:
    """The clock of every timing (seconds); tests replace it."""
    return time.perf_counter()


def time_ms(fn: Callable[[], Any], repeats: int, device: str, warmup: int = 1) -> float:
    """Median wall time (ms) of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls;
    CUDA-synchronised around each timed call."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        _sync(device)
        t = _now()
        fn()
        _sync(device)
        ts.append(_now() - t)
    return statistics.median(ts) * 1e3


def generate_batch(
    model: torch.nn.Module,
    meta: dict[str, Any],
    cond: torch.Tensor,
    s0: torch.Tensor,
    mode: str,
    gen: torch.Generator | None,
    keep_path: bool,
    probe: StateProbe | None = None,
    token: int | None = None,
) -> torch.Tensor:
    """Normalised states: ``[B, N+1, P]`` with ``keep_path``, else ``[B, 1, P]`` (the last).

    ``token``: the optimizer style of a policy trained with optimizer tokens (see style_token).
    """
    opt = None if token is None else torch.full((s0.shape[0],), token, device=s0.device)
    if meta["method"] == "hypernetwork":
        out = model(cond, opt).unsqueeze(1)  # [B, 1, P]
        return torch.cat([s0.unsqueeze(1), out], dim=1) if keep_path else out
    path = model.rollout(s0, 0, cond, opt, mode=mode, gen=gen, probe=probe)  # [B, N+1, P]
    return path if keep_path else path[:, -1:]


def generate(cfg: GenerateConfig, progress: Progress | None = None) -> GenerateResult:
    """Generate ``cfg.samples`` weight vectors for each task and write them to ``cfg.out``."""
    import zarr

    from lohp_cli.train import load_policy

    emit = progress or (lambda _e: None)
    t0 = time.perf_counter()
    out = Path(cfg.out)
    if "://" in cfg.out:
        raise ConfigError("generate writes a local directory; give a path for --out.")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"Output '{out}' is a file; give a directory path.")
    if out.exists() and not cfg.overwrite:
        raise ConfigError(f"Output '{out}' exists; pass --overwrite to replace it.")
    device = resolve_device(cfg.device)
    model, meta, stats = load_policy(cfg.policy, device)
    ctx = task_context(meta, cfg.store, cfg.data_root)
    if ctx.store.attrs.get("param_count") != meta["param_count"]:
        raise CompatibilityError("The policy's parameter count does not match its store.")
    tasks = resolve_tasks(cfg.tasks, ctx.family, cfg.num_tasks)
    token = style_token(meta, cfg.style)
    emit(
        {
            "event": "start",
            "tasks": len(tasks),
            "samples": cfg.samples,
            "N": meta["N"],
            "device": device,
        }
    )
    size = meta["param_count"]
    rows: list[tuple[TaskSpec, torch.Tensor]] = []
    tensors: dict[str, TaskTensors] = {}
    for spec in tasks:
        t = task_tensors(ctx.family, spec, ctx.model_cfg, ctx.extractor, device)
        if t.condition.numel() != meta["condition_dim"]:
            raise CompatibilityError(
                f"Task condition has {t.condition.numel()} entries; the policy expects "
                f"{meta['condition_dim']}."
            )
        rows.append((spec, stats.normalize_condition(t.condition)))
        tensors[spec.task_id] = t
    bank = policy_probe(model, ctx, tensors, stats, device)

    weights: dict[str, np.ndarray] = {}
    paths: dict[str, np.ndarray] = {}
    per_sample: list[float] = []  # seconds per row of each timed batch
    flat = [(spec, c, j) for spec, c in rows for j in range(cfg.samples)]

    def inputs(chunk: list[tuple[TaskSpec, torch.Tensor, int]]) -> tuple[Any, ...]:
        s0 = torch.stack([initial_state(cfg.seed, spec.task_id, j, size) for spec, _, j in chunk])
        cond = torch.stack([c for _, c, _ in chunk])
        probe = None if bank is None else bank.probe([spec.task_id for spec, _, _ in chunk])
        return s0.to(device), cond, probe  # s0 [B, P], cond [B, D]

    # untimed warm-up batches of the first batch's shape (own noise: the output bytes are unchanged)
    ws0, wcond, wprobe = inputs(flat[: cfg.batch_size])
    for w in range(WARMUP_BATCHES):
        gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "warmup", w))
        with torch.no_grad():
            generate_batch(model, meta, wcond, ws0, cfg.mode, gen, cfg.save_paths, wprobe, token)
    for start in range(0, len(flat), cfg.batch_size):
        chunk = flat[start : start + cfg.batch_size]
        s0, cond, probe = inputs(chunk)
        gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "noise", start))
        _sync(device)
        t = _now()
        with torch.no_grad():
            states = generate_batch(
                model, meta, cond, s0, cfg.mode, gen, cfg.save_paths, probe, token
            )
        _sync(device)
        per_sample.append((_now() - t) / len(chunk))
        theta = stats.denormalize(states).cpu().numpy()  # [B, L, P]
        if not np.isfinite(theta).all():
            raise StoreError("The policy generated non-finite weights; check the policy's metrics.")
        for (spec, _, j), th in zip(chunk, theta, strict=True):
            weights.setdefault(spec.task_id, np.zeros((cfg.samples, size), np.float32))[j] = th[-1]
            if cfg.save_paths:
                paths.setdefault(
                    spec.task_id, np.zeros((cfg.samples, th.shape[0], size), np.float32)
                )[j] = th
        emit({"event": "batch", "done": min(start + cfg.batch_size, len(flat)), "total": len(flat)})

    # latency: the first task's first sample alone (batch size 1), after one untimed run
    s1, c1, p1 = inputs(flat[:1])

    def one_task() -> torch.Tensor:
        gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "latency"))
        return generate_batch(model, meta, c1, s1, cfg.mode, gen, cfg.save_paths, p1, token)

    with torch.no_grad():
        latency = time_ms(one_task, LATENCY_REPEATS, device)
    timing = {
        "batched_ms_per_sample": round(statistics.median(per_sample) * 1e3, 4),
        "batch_size": min(cfg.batch_size, len(flat)),
        "batches_timed": len(per_sample),
        "warmup_batches": WARMUP_BATCHES,
        "latency_ms_batch1": round(latency, 4),
        "latency_repeats": LATENCY_REPEATS,
        "device": device,
    }

    with output_lock(out):
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        root = zarr.open_group(zarr.storage.LocalStore(tmp), mode="w")
        root.attrs.update(
            {
                "schema": GEN_SCHEMA,
                "schema_version": GEN_SCHEMA_VERSION,
                "policy": {
                    "path": str(cfg.policy),
                    "method": meta["method"],
                    "k": meta["k"],
                    "N": meta["N"],
                    "store_fingerprint": meta["store_fingerprint"],
                    "trained_steps": meta["trained_steps"],
                    "style": None if token is None else OPTIMIZERS[token],
                },
                "layout": meta["layout"],
                "param_count": size,
                "store_location": absolute_location(ctx.store.location),
                "tasks": [s.task_id for s, _ in rows],
                "config": cfg.model_dump(mode="json"),
                "timing": timing,
                "provenance": provenance(device),
            }
        )
        codecs = codecs_for(StoreCodecConfig(codec="zstd", level=3))  # zstd, then crc32c
        for spec, c in rows:
            g = root.create_group(spec.task_id)
            g.create_array(
                "weights",
                data=weights[spec.task_id],
                compressors=codecs,
                dimension_names=("sample", "param"),
            )
            g.create_array(
                "condition",
                data=c.cpu().numpy(),
                compressors=codecs,
                dimension_names=CONDITION_DIMS,
            )
            if cfg.save_paths:
                g.create_array(
                    "path",
                    data=paths[spec.task_id],
                    chunks=(1, *paths[spec.task_id].shape[1:]),
                    compressors=codecs,
                    dimension_names=("sample", "step", "param"),
                )
            g.attrs["classes"] = list(spec.classes)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    return GenerateResult(
        str(out),
        len(rows),
        cfg.samples,
        batched_ms_per_sample=timing["batched_ms_per_sample"],
        batch_size=timing["batch_size"],
        latency_ms_batch1=timing["latency_ms_batch1"],
        device=device,
        wall_time_s=round(time.perf_counter() - t0, 3),
    )
