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
from typing import Any

import torch

from lohp_cli.checkpoint import write_checkpoint
from lohp_cli.diffusion.config import DiffusionTrainConfig
from lohp_cli.diffusion.model import DiffusionPolicy, build_diffusion
from lohp_cli.errors import ConfigError
from lohp_cli.policy.backbone import resolve_auto
from lohp_cli.policy.directory import store_fingerprint
from lohp_cli.policy.fit import class_symmetry
from lohp_cli.policy.rundir import TrainResult, policy_config_json
from lohp_cli.policy.skeleton import TrainingRun, gradient_step
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
    """Train (or resume) the diffusion generator ``cfg`` describes (the steps of
    :mod:`lohp_cli.policy.skeleton`)."""
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
    run = TrainingRun.open(cfg, fingerprint, emit, t_start)
    sym = class_symmetry(cfg.augment, store)
    s_steps = cfg.diffusion.sample_steps

    def config_json(step: int, complete: bool) -> dict[str, Any]:
        return policy_config_json(
            cfg, store, fingerprint, s_steps, t_rec, device, len(runs), step, complete, k=t_rec
        )

    stats = run.norm_stats(
        meta.param_count, meta.condition_dim, len(runs),
        lambda: compute_stats(store, runs, t_rec, cfg.normalize, sym=sym),
        lambda: config_json(0, False),
    )  # fmt: skip
    model = build_diffusion(
        cfg, meta.param_count, meta.condition_dim, s_steps, stats, meta.compat.classes, layout
    ).to(device)
    if not run.resume:  # a resumed run loads it with the weights
        model.x0_bound.fill_(endpoint_bound(store, runs, stats, t_rec))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    run.resume_state(model, opt)
    sampler = TrajectorySampler(store, runs, t_rec, stats, cfg.cache_mb, sym)

    def write_policy(step: int, complete: bool) -> None:
        write_checkpoint(run.out, model, opt, {"step": step}, config_json(step, complete))

    def one_step(step: int) -> tuple[float, dict[str, Any]]:
        gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "step", 0, step))
        loss, run_ids = diffusion_step(model, sampler, cfg.batch_size, gen, device)
        gnorm = gradient_step(loss, model, opt, cfg.grad_clip, step, run_ids)
        last_loss = float(loss.detach())
        return last_loss, {"loss": last_loss, "grad_norm": gnorm}

    params = sum(p.numel() for p in model.parameters())
    emit({"event": "start", "step": run.start, "steps": cfg.steps, "runs": len(runs), "N": s_steps,
          "params": params})  # fmt: skip
    model.train()
    step, last_loss, _ = run.loop(one_step, write_policy)
    run.finish(step, write_policy)
    return run.result(step, step >= cfg.steps, last_loss)
