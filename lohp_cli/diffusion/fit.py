"""Fit a diffusion generator (``train-policy --method diffusion``) on a trajectory store.

The data are the runs' endpoints θ_T (the last recorded state), normalised with the store's
:class:`~lohp_cli.store.sampler.NormStats` exactly as Lo-Hp's (same ``normalize``, optimizer subset
and class-order augmentation), with the task conditions normalised alike. Each step draws a batch
of runs, time steps t ~ U{0 … T−1} and noise ε with one generator seeded by (seed, step), and
minimises ‖ε_θ(x_t, t, c) − ε‖². The policy directory and its resumption are Lo-Hp's
(:mod:`lohp_cli.policy.fit`): ``config.json`` (method "diffusion", k = T: one matched step from
θ_0 to θ_T, N = S), ``normalization.safetensors``, ``model.safetensors``, ``metrics.jsonl`` and
``state/``, all written atomically; a resumed run ends with the weights of an uninterrupted one.
One process (no DDP).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lohp_cli.checkpoint import (
    atomic_save_tensors,
    atomic_write_json,
    load_state,
    load_tensors,
    truncate_metrics,
    write_checkpoint,
)
from lohp_cli.diffusion.config import DiffusionTrainConfig
from lohp_cli.diffusion.model import DiffusionPolicy, build_diffusion
from lohp_cli.errors import ConfigError
from lohp_cli.policy.artifact import store_fingerprint
from lohp_cli.policy.backbone import resolve_auto
from lohp_cli.policy.fit import class_symmetry
from lohp_cli.policy.loss import check_finite
from lohp_cli.policy.rundir import TrainResult, check_out_dir, end_of_step, policy_config_json
from lohp_cli.runtime import derive_seed, resolve_device
from lohp_cli.store.sampler import (
    NormStats,
    RunRef,
    TrajectorySampler,
    compute_stats,
    select_runs,
)
from lohp_cli.store.trajectory_store import TrajectoryStore
from lohp_cli.tasks.layout import ParamLayout

Progress = Callable[[dict[str, Any]], None]


def endpoint_bound(
    store: TrajectoryStore, runs: list[RunRef], stats: NormStats, t_rec: int
) -> float:
    """The largest |coordinate| of the runs' normalised endpoints θ_T (one chunk read per run),
    where DDIM clamps its predicted x_0 (reordering classes does not change it)."""
    bound = 0.0
    for ref in runs:
        w = torch.from_numpy(store.weights(ref.run_id, start=t_rec, stop=t_rec + 1))  # [1, P]
        bound = max(bound, float(stats.normalize(w).abs().max()))
    return bound


def diffusion_step(
    model: DiffusionPolicy, sampler: TrajectorySampler, batch_size: int, gen: torch.Generator,
    device: str,
) -> tuple[torch.Tensor, list[str]]:  # fmt: skip
    """The loss of one batch drawn with ``gen`` (runs, then t ``[B]`` and ε ``[B, P]``), and the
    batch's run ids (for error messages)."""
    batch = sampler.batch(batch_size, gen)
    x0 = batch.x[:, -1].to(device)  # [B, P] normalised θ_T
    t = torch.randint(0, model.timesteps, (batch_size,), generator=gen).to(device)
    eps = torch.randn(x0.shape, generator=gen).to(device)
    return model.loss(x0, batch.cond.to(device), t, eps), batch.run_ids


def train_diffusion(cfg: DiffusionTrainConfig, progress: Progress | None = None) -> TrainResult:
    """Train (or resume) the diffusion generator ``cfg`` describes."""
    emit = progress or (lambda _e: None)
    t_start = time.perf_counter()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("method diffusion trains in one process; run it without torchrun.")
    device = resolve_device(cfg.device)
    emit({"event": "device", "device": device, "world_size": 1})
    store = TrajectoryStore.open(cfg.store, mode="r")
    meta = store.meta
    t_rec = meta.compat.states - 1  # T recorded steps: θ_T is state k·1 with k = T
    runs = select_runs(store, cfg.optimizers)
    fingerprint = store_fingerprint(store)
    layout = ParamLayout.from_json(meta.layout)
    cfg = resolve_auto(cfg, layout, meta.compat.model.name, emit)
    out = Path(cfg.out)
    resume = check_out_dir(out, cfg, fingerprint)
    sym = class_symmetry(cfg.augment, store)
    s_steps = cfg.diffusion.sample_steps

    def config_json(step: int, complete: bool) -> dict[str, Any]:
        return policy_config_json(
            cfg, store, fingerprint, s_steps, t_rec, device, len(runs), step, complete, k=t_rec
        )

    norm_path = out / "normalization.safetensors"
    if resume and norm_path.exists():
        stats = NormStats.from_tensors(
            load_tensors(norm_path), meta.param_count, meta.condition_dim, str(norm_path)
        )
    else:
        emit({"event": "stats", "runs": len(runs)})
        stats = compute_stats(store, runs, t_rec, cfg.normalize, sym=sym)
        atomic_save_tensors(norm_path, stats.to_tensors())
        atomic_write_json(out / "config.json", config_json(0, False))  # first: see policy.fit
    model = build_diffusion(
        cfg, meta.param_count, meta.condition_dim, s_steps, stats, meta.compat.classes, layout
    ).to(device)
    if not resume:  # a resumed run loads it with the weights
        model.x0_bound.fill_(endpoint_bound(store, runs, stats, t_rec))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = 0
    trainer = load_state(out, model, opt) if resume else None
    if trainer is not None:
        start = int(trainer["step"])
        emit({"event": "resume", "step": start})
    truncate_metrics(out / "metrics.jsonl", start)
    sampler = TrajectorySampler(store, runs, t_rec, stats, cfg.cache_mb, sym)

    def write_policy(step: int, complete: bool) -> None:
        write_checkpoint(out, model, opt, {"step": step}, config_json(step, complete))

    params = sum(p.numel() for p in model.parameters())
    emit({"event": "start", "step": start, "steps": cfg.steps, "runs": len(runs), "N": s_steps,
          "params": params})  # fmt: skip
    deadline = None if cfg.max_minutes is None else t_start + 60 * cfg.max_minutes
    step, last_loss = start, None
    model.train()
    while step < cfg.steps:
        gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "step", 0, step))
        loss, run_ids = diffusion_step(model, sampler, cfg.batch_size, gen, device)
        check_finite(loss, "loss", step, run_ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        check_finite(gnorm, "gradient", step, run_ids)
        opt.step()
        step += 1
        last_loss = float(loss.detach())
        terms = {"loss": last_loss, "grad_norm": gnorm}
        if end_of_step(step, cfg, out, terms, t_start, deadline, emit, write_policy):
            break
    if step == start and not (out / "model.safetensors").exists():
        write_policy(step, step >= cfg.steps)
    return TrainResult(
        str(out), step, step >= cfg.steps, last_loss, round(time.perf_counter() - t_start, 3)
    )
