"""Fit the Lo-Hp policy (or an ablation: lo-op, lo-di, hypernetwork) on a trajectory store.

Resumable: the policy directory's ``state/`` holds model and optimizer tensors and the step; every
batch is drawn with a generator seeded from (seed, rank, step), so a resumed run sees exactly the
batches an uninterrupted one would and ends with the same weights (CPU). Under ``torchrun`` the
objective is wrapped in DistributedDataParallel (gloo on CPU, nccl on CUDA) and rank 0 writes.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lohp_cli.artifacts.policy import read_policy_meta
from lohp_cli.checkpoint import (
    atomic_save_tensors,
    atomic_write_json,
    load_state,
    load_tensors,
    state_dir,
    truncate_metrics,
    write_checkpoint,
)
from lohp_cli.config import LoHpTrainConfig, TrainConfig
from lohp_cli.errors import ConfigError
from lohp_cli.policy.artifact import (
    TrainResult,
    build_model,
    check_out_dir,
    end_of_step,
    policy_config_json,
    store_fingerprint,
)
from lohp_cli.policy.backbone import resolve_auto
from lohp_cli.policy.context import store_task_context, support_probe_bank
from lohp_cli.policy.dagger import BatchTasks, Relabeler
from lohp_cli.policy.gaussian import LoHpPolicy
from lohp_cli.policy.loss import check_finite
from lohp_cli.policy.objective import Objective
from lohp_cli.policy.state import ProbeBank
from lohp_cli.policy.validation import (
    Validator,
    held_out_tasks,
    split_runs,
    stop_reason,
    write_curves,
)
from lohp_cli.runtime import derive_seed, resolve_device
from lohp_cli.store.sampler import (
    NormStats,
    TrajectorySampler,
    compute_stats,
    matched_indices,
    select_runs,
)
from lohp_cli.store.trajectory_store import TrajectoryStore
from lohp_cli.tasks.models import ParamLayout
from lohp_cli.tasks.symmetry import ClassSymmetry

Progress = Callable[[dict[str, Any]], None]
LR_WARN = 1e-3
DAGGER_METHODS = ("lo-hp", "lo-op")  # the methods whose objective has the DAgger term


def _store_probe_bank(
    cfg: LoHpTrainConfig, store: TrajectoryStore, runs: list[Any], stats: NormStats, device: str
) -> ProbeBank:
    """Support sets of the runs' tasks, rebuilt from the store's task family (state input)."""
    if store.meta.compat.classes < 2:
        raise ConfigError(
            f"policy.state_input='{cfg.policy.state_input}' needs a store of class-subset tasks."
        )
    ctx = store_task_context(store)
    return support_probe_bank(ctx, (r.task_id for r in runs), stats, device)


def class_symmetry(augment: str, store: TrajectoryStore) -> ClassSymmetry | None:
    """The class-order augmentation ``augment`` ("auto", "classes", "none") asks for on
    ``store``: auto where its tasks, model and condition have class structure; classes insists
    (a ConfigError from ``ClassSymmetry.of`` where they do not)."""
    if augment == "none":
        return None
    meta = store.meta
    layout = ParamLayout.from_json(meta.layout)
    ways, cond_dim = meta.compat.classes, meta.condition_dim
    if augment == "classes" or ClassSymmetry.applies(layout, ways, cond_dim):
        return ClassSymmetry.of(layout, ways, cond_dim)
    return None


def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local


def train_policy(cfg: TrainConfig, progress: Progress | None = None) -> TrainResult:
    """Train (or resume) a policy as configured; returns where it is and how far it got."""
    if not isinstance(cfg, LoHpTrainConfig):
        raise ConfigError(
            f"method {cfg.method!r} is not fitted here: "
            "train it with lohp_cli.stages.train.train_policy."
        )
    emit = progress or (lambda _e: None)
    t_start = time.perf_counter()
    world, rank, local = _dist_info()
    device = resolve_device(cfg.device)
    if world > 1 and device.startswith("cuda"):
        device = f"cuda:{local}"
    if cfg.lr > LR_WARN:
        warnings.warn(
            f"policy learning rate {cfg.lr} is above {LR_WARN}; Lo-Hp tends to diverge "
            "there (the paper uses ≤ 1e-3)",
            stacklevel=2,
        )
        emit({"event": "warning", "message": f"lr {cfg.lr} > {LR_WARN}: training may diverge"})
    amp = cfg.amp and device.startswith("cuda")
    compile_ = cfg.compile and device.startswith("cuda")
    if (cfg.amp and not amp) or (cfg.compile and not compile_):
        emit({"event": "info", "message": "amp/compile are CUDA-only; switched off on this device"})
    emit({"event": "device", "device": device, "world_size": world})

    if cfg.loss.dagger > 0 and cfg.method not in DAGGER_METHODS:
        raise ConfigError(
            f"loss.dagger is a term of the step-wise objectives ({', '.join(DAGGER_METHODS)}), "
            f"not of method {cfg.method!r}; leave it at 0."
        )
    store = TrajectoryStore.open(cfg.store, mode="r")
    meta = store.meta
    states = meta.compat.states
    n_steps = len(matched_indices(states, cfg.k)) - 1
    if cfg.window is not None and cfg.window > n_steps:
        raise ConfigError(f"window={cfg.window} exceeds N={n_steps} policy steps (T/k).")
    split = split_runs(select_runs(store, cfg.optimizers), cfg.val_tasks, cfg.seed)
    runs = split.train  # the held-out tasks' runs enter neither training nor the statistics
    held = held_out_tasks(cfg, split, store, device, emit)  # before anything is written
    fingerprint = store_fingerprint(store)
    layout = ParamLayout.from_json(meta.layout)  # the backbone builder sees the target's layers
    # the hypernetwork builds policy.hypernetwork_backbone, never policy.backbone: no message
    said = emit if cfg.method != "hypernetwork" and rank == 0 else (lambda _e: None)
    cfg = resolve_auto(cfg, layout, meta.compat.model.name, said)
    out = Path(cfg.out)
    resume = check_out_dir(out, cfg, fingerprint) if rank == 0 else True
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        flag = [resume]
        dist.broadcast_object_list(flag, src=0)
        resume = bool(flag[0])

    size, cond_dim = meta.param_count, meta.condition_dim
    ways = meta.compat.classes
    sym = class_symmetry(cfg.augment, store)
    norm_path = out / "normalization.safetensors"
    if resume and norm_path.exists():
        stats = NormStats.from_tensors(load_tensors(norm_path), size, cond_dim, str(norm_path))
    else:
        emit({"event": "stats", "runs": len(runs)})
        stats = compute_stats(
            store, runs, cfg.k, cfg.normalize, sym=sym, scope=cfg.policy.normalization
        )
        if rank == 0:
            atomic_save_tensors(norm_path, stats.to_tensors())
            # config.json first, so that a crash never leaves a directory that cannot be checked
            split_json = {"tasks": split.tasks} if cfg.val_tasks else None
            atomic_write_json(
                out / "config.json",
                policy_config_json(cfg, store, fingerprint, n_steps, states - 1, device,
                                   len(runs), 0, False, validation=split_json),
            )  # fmt: skip
    model = build_model(cfg, size, cond_dim, n_steps, stats, ways, layout).to(device)
    bank = None
    if getattr(model, "needs_probe", False):
        emit({"event": "info", "message": "state input: loading the source tasks' support sets"})
        bank = _store_probe_bank(cfg, store, runs + split.val, stats, device)
    objective = Objective(model, cfg, n_steps, meta.compat.shared_init)
    if cfg.loss.dagger > 0:
        said = "DAgger: the policy's states relabelled by the store's optimizer"
        emit({"event": "info", "message": said})
        objective.relabel = Relabeler.of_store(store_task_context(store), stats, cfg.k, device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def config_json(step: int, complete: bool, validation: dict[str, Any] | None = None) -> Any:
        return policy_config_json(cfg, store, fingerprint, n_steps, states - 1, device,
                                  len(runs), step, complete, validation=validation)  # fmt: skip

    def publish_best(step: int) -> None:
        """The best policy into model.safetensors (atomic), config.json saying so."""
        assert val is not None and val.best is not None
        complete = step >= cfg.steps or val.stopped
        record = val.record(step, stop_reason(step, cfg.steps, val.stopped, None))
        atomic_save_tensors(out / "model.safetensors", val.best)
        atomic_write_json(out / "config.json", config_json(step, complete, record))

    val = None
    if cfg.val_tasks:
        meta_now = read_policy_meta(config_json(0, False), out)
        val = Validator(
            cfg, split, store, objective, stats, meta_now, device, bank, held, amp, emit
        )
    start = 0
    trainer = load_state(out, model, opt) if resume else None
    if trainer is not None:
        start = int(trainer["step"])
        if val is not None:
            val.load(trainer.get("validation"), state_dir(out) or out / "state")
            if rank == 0 and val.best is not None:  # undo what a crash after an improvement left
                publish_best(start)
        emit({"event": "resume", "step": start})
    if rank == 0:
        truncate_metrics(out / "metrics.jsonl", start)

    if compile_ and isinstance(model, LoHpPolicy):
        model.backbone = torch.compile(model.backbone)  # type: ignore[assignment]
    runner: nn.Module = objective
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        runner = DistributedDataParallel(
            objective,
            device_ids=[local] if device.startswith("cuda") else None,
            find_unused_parameters=True,
        )
    sampler = TrajectorySampler(store, runs, cfg.k, stats, cfg.cache_mb, sym)

    def write_policy(step: int, complete: bool) -> None:
        if val is None:
            write_checkpoint(out, model, opt, {"step": step}, config_json(step, complete))
            return
        complete = complete or val.stopped
        reason = stop_reason(step, cfg.steps, val.stopped, deadline)
        config = config_json(step, complete, val.record(step, reason))
        trainer = {"step": step, "validation": val.state()}
        # model.safetensors holds the best policy once there is one (written by publish_best);
        # state/ keeps a copy, so a crash between an improvement and a checkpoint loses nothing
        best = None if val.best is None else {"best": val.best}
        write_checkpoint(out, model, opt, trainer, config, val.best is None, best)
        written.append(step)

    written: list[int] = []

    emit(
        {
            "event": "start",
            "step": start,
            "steps": cfg.steps,
            "runs": len(runs),
            "N": n_steps,
            "params": sum(p.numel() for p in model.parameters()),
        }
    )
    deadline = None if cfg.max_minutes is None else t_start + 60 * cfg.max_minutes
    step, last_loss = start, None
    model.train()
    stop = val is not None and val.stopped  # a run stopped by patience stays stopped
    while step < cfg.steps and not stop:
        gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "step", rank, step))
        batch = sampler.batch(cfg.batch_size, gen).to(device)
        objective.gen = gen
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            probe = None if bank is None else bank.probe(batch.task_ids, batch.perms)
            tasks = BatchTasks(batch.task_ids, batch.perms) if cfg.loss.dagger > 0 else None
            loss, terms = runner(batch.x, batch.cond, batch.opt, probe, tasks)
        check_finite(loss, "loss", step, batch.run_ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        check_finite(gnorm, "gradient", step, batch.run_ids)
        opt.step()
        step += 1
        last_loss = float(loss.detach())
        terms_now = {**terms, "grad_norm": gnorm}
        if val is not None and val.due(step):
            if val.validate(step, out, t_start, rank == 0) and rank == 0:
                publish_best(step)
            stop = _agreed(val.stopped, world)
        if end_of_step(step, cfg, out, terms_now, t_start, deadline, emit, write_policy, rank == 0):
            break
    if rank == 0 and val is not None and stop and step > start and written[-1:] != [step]:
        write_policy(step, True)  # stopped by patience between checkpoints
    if rank == 0 and step == start:  # nothing to do (already complete): keep the files as they are
        if not (out / "model.safetensors").exists():
            write_policy(step, step >= cfg.steps)
    if rank == 0 and val is not None:
        write_curves(out)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    done = step >= cfg.steps or stop
    reason = None if val is None else stop_reason(step, cfg.steps, val.stopped, deadline)
    wall = round(time.perf_counter() - t_start, 3)
    return TrainResult(str(out), step, done, last_loss, wall, reason)


def _agreed(flag: bool, world: int) -> bool:
    """Rank 0's ``flag`` on every rank (under torchrun), so that all stop at the same step."""
    if world == 1:
        return flag
    import torch.distributed as dist

    box = [flag]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])
