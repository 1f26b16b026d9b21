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
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lohp_cli.artifacts.policy import read_policy_meta
from lohp_cli.checkpoint import (
    atomic_save_tensors,
    atomic_write_json,
    state_dir,
    write_checkpoint,
)
from lohp_cli.config import LoHpTrainConfig, TrainConfig
from lohp_cli.errors import ConfigError
from lohp_cli.policy.backbone import resolve_auto
from lohp_cli.policy.context import store_task_context, support_probe_bank
from lohp_cli.policy.curves import write_curves
from lohp_cli.policy.dagger import BatchTasks, Relabeler
from lohp_cli.policy.directory import build_model, store_fingerprint
from lohp_cli.policy.gaussian import LoHpPolicy
from lohp_cli.policy.objective import Objective
from lohp_cli.policy.rundir import TrainResult, policy_config_json
from lohp_cli.policy.skeleton import TrainingRun, gradient_step
from lohp_cli.policy.state import ProbeBank
from lohp_cli.policy.validation import (
    Validator,
    held_out_tasks,
    split_runs,
    stop_reason,
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
from lohp_cli.tasks.layout import ParamLayout
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


@dataclass(frozen=True)
class _Env:
    """Where this process trains: the torchrun world, its rank, the device, AMP and compile."""

    world: int
    rank: int
    local: int
    device: str
    amp: bool
    compile: bool


def _environment(cfg: LoHpTrainConfig, emit: Progress) -> _Env:
    """The process's :class:`_Env` (the device and what it switches off are logged; a learning
    rate where Lo-Hp tends to diverge is warned of)."""
    world, rank, local = _dist_info()
    device = resolve_device(cfg.device)
    if world > 1 and device.startswith("cuda"):
        device = f"cuda:{local}"
    if cfg.lr > LR_WARN:
        warnings.warn(
            f"policy learning rate {cfg.lr} is above {LR_WARN}; Lo-Hp tends to diverge "
            "there (the paper uses ≤ 1e-3)",
            stacklevel=3,  # train_policy's caller
        )
        emit({"event": "warning", "message": f"lr {cfg.lr} > {LR_WARN}: training may diverge"})
    amp = cfg.amp and device.startswith("cuda")
    compile_ = cfg.compile and device.startswith("cuda")
    if (cfg.amp and not amp) or (cfg.compile and not compile_):
        emit({"event": "info", "message": "amp/compile are CUDA-only; switched off on this device"})
    emit({"event": "device", "device": device, "world_size": world})
    return _Env(world, rank, local, device, amp, compile_)


def train_policy(cfg: TrainConfig, progress: Progress | None = None) -> TrainResult:
    """Train (or resume) a policy as configured; returns where it is and how far it got."""
    if not isinstance(cfg, LoHpTrainConfig):
        raise ConfigError(
            f"method {cfg.method!r} is not fitted here: "
            "train it with lohp_cli.stages.train.train_policy."
        )
    emit = progress or (lambda _e: None)
    t_start = time.perf_counter()
    return _LoHpFit(cfg, _environment(cfg, emit), emit, t_start).train()


class _LoHpFit:
    """One Lo-Hp training run: the parts of its own (the store's data, the model and objective,
    ``--val-tasks``, DDP) on the steps of :class:`~lohp_cli.policy.skeleton.TrainingRun`."""

    def __init__(self, cfg: LoHpTrainConfig, env: _Env, emit: Progress, t_start: float) -> None:
        if cfg.loss.dagger > 0 and cfg.method not in DAGGER_METHODS:
            raise ConfigError(
                f"loss.dagger is a term of the step-wise objectives ({', '.join(DAGGER_METHODS)}), "
                f"not of method {cfg.method!r}; leave it at 0."
            )
        self.env, self.emit = env, emit
        self.store = store = TrajectoryStore.open(cfg.store, mode="r")
        meta = store.meta
        self.n_steps = len(matched_indices(meta.compat.states, cfg.k)) - 1
        if cfg.window is not None and cfg.window > self.n_steps:
            raise ConfigError(f"window={cfg.window} exceeds N={self.n_steps} policy steps (T/k).")
        self.split = split_runs(select_runs(store, cfg.optimizers), cfg.val_tasks, cfg.seed)
        # the held-out tasks' runs enter neither training nor the statistics
        self.runs = self.split.train
        self.held = held_out_tasks(cfg, self.split, store, env.device, emit)  # before any write
        self.fingerprint = store_fingerprint(store)
        self.layout = ParamLayout.from_json(meta.layout)  # the backbone builder sees the layers
        # the hypernetwork builds policy.hypernetwork_backbone, never policy.backbone: no message
        said = emit if cfg.method != "hypernetwork" and env.rank == 0 else (lambda _e: None)
        self.cfg = cfg = resolve_auto(cfg, self.layout, meta.compat.model.name, said)
        self.run = TrainingRun.open(cfg, self.fingerprint, emit, t_start, env.rank == 0)
        if env.world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("nccl" if env.device.startswith("cuda") else "gloo")
            flag = [self.run.resume]
            dist.broadcast_object_list(flag, src=0)
            self.run.resume = bool(flag[0])
        self.sym = class_symmetry(cfg.augment, store)
        self.val: Validator | None = None
        self.written: list[int] = []  # the steps write_policy wrote (with --val-tasks)

    def config_json(
        self, step: int, complete: bool, validation: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return policy_config_json(
            self.cfg, self.store, self.fingerprint, self.n_steps, self.store.meta.compat.states - 1,
            self.env.device, len(self.runs), step, complete, validation=validation,
        )  # fmt: skip

    def build(self) -> None:
        """Statistics (config.json first), the model, its probe bank, objective and optimizer,
        the validator."""
        cfg, meta, device, emit = self.cfg, self.store.meta, self.env.device, self.emit
        split_json = {"tasks": self.split.tasks} if cfg.val_tasks else None
        self.stats = stats = self.run.norm_stats(
            meta.param_count, meta.condition_dim, len(self.runs),
            lambda: compute_stats(self.store, self.runs, cfg.k, cfg.normalize, sym=self.sym,
                                  scope=cfg.policy.normalization),
            lambda: self.config_json(0, False, split_json),
        )  # fmt: skip
        self.model = model = build_model(
            cfg, meta.param_count, meta.condition_dim, self.n_steps, stats, meta.compat.classes,
            self.layout,
        ).to(device)  # fmt: skip
        self.bank = None
        if getattr(model, "needs_probe", False):
            said = "state input: loading the source tasks' support sets"
            emit({"event": "info", "message": said})
            self.bank = _store_probe_bank(
                cfg, self.store, self.runs + self.split.val, stats, device
            )
        self.objective = Objective(model, cfg, self.n_steps, meta.compat.shared_init)
        if cfg.loss.dagger > 0:
            said = "DAgger: the policy's states relabelled by the store's optimizer"
            emit({"event": "info", "message": said})
            ctx = store_task_context(self.store)
            self.objective.relabel = Relabeler.of_store(ctx, stats, cfg.k, device)
        self.opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        if cfg.val_tasks:
            meta_now = read_policy_meta(self.config_json(0, False), self.run.out)
            self.val = Validator(
                cfg, self.split, self.store, self.objective, stats, meta_now, device, self.bank,
                self.held, self.env.amp, emit,
            )  # fmt: skip

    def publish_best(self, step: int) -> None:
        """The best policy into model.safetensors (atomic), config.json saying so."""
        val, cfg = self.val, self.cfg
        assert val is not None and val.best is not None
        complete = step >= cfg.steps or val.stopped
        record = val.record(step, stop_reason(step, cfg.steps, val.stopped, None))
        atomic_save_tensors(self.run.out / "model.safetensors", val.best)
        atomic_write_json(self.run.out / "config.json", self.config_json(step, complete, record))

    def write_policy(self, step: int, complete: bool) -> None:
        """The checkpoint after ``step``; with --val-tasks model.safetensors holds the best
        policy once there is one (written by publish_best), and state/ keeps a copy, so a crash
        between an improvement and a checkpoint loses nothing."""
        out, val = self.run.out, self.val
        if val is None:
            write_checkpoint(
                out, self.model, self.opt, {"step": step}, self.config_json(step, complete)
            )
            return
        complete = complete or val.stopped
        reason = stop_reason(step, self.cfg.steps, val.stopped, self.run.deadline)
        config = self.config_json(step, complete, val.record(step, reason))
        trainer = {"step": step, "validation": val.state()}
        best = None if val.best is None else {"best": val.best}
        write_checkpoint(out, self.model, self.opt, trainer, config, val.best is None, best)
        self.written.append(step)

    def on_resume(self, trainer: dict[str, Any], start: int) -> None:
        val = self.val
        if val is not None:
            val.load(trainer.get("validation"), state_dir(self.run.out) or self.run.out / "state")
            if self.env.rank == 0 and val.best is not None:  # undo what a crash after an
                self.publish_best(start)  # improvement left

    def wrap(self) -> None:
        """The compiled backbone (CUDA), DDP around the objective (torchrun), the sampler."""
        env, model = self.env, self.model
        if env.compile and isinstance(model, LoHpPolicy):
            model.backbone = torch.compile(model.backbone)  # type: ignore[assignment]
        self.runner: nn.Module = self.objective
        if env.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.runner = DistributedDataParallel(
                self.objective,
                device_ids=[env.local] if env.device.startswith("cuda") else None,
                find_unused_parameters=True,
            )
        cfg = self.cfg
        self.sampler = TrajectorySampler(
            self.store, self.runs, cfg.k, self.stats, cfg.cache_mb, self.sym
        )

    def one_step(self, step: int) -> tuple[float, dict[str, Any]]:
        """One optimisation step on a batch drawn with a generator seeded by (seed, rank, step)."""
        cfg, env = self.cfg, self.env
        gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "step", env.rank, step))
        batch = self.sampler.batch(cfg.batch_size, gen).to(env.device)
        self.objective.gen = gen
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=env.amp):
            probe = None if self.bank is None else self.bank.probe(batch.task_ids, batch.perms)
            tasks = BatchTasks(batch.task_ids, batch.perms) if cfg.loss.dagger > 0 else None
            loss, terms = self.runner(batch.x, batch.cond, batch.opt, probe, tasks)
        gnorm = gradient_step(loss, self.model, self.opt, cfg.grad_clip, step, batch.run_ids)
        return float(loss.detach()), {**terms, "grad_norm": gnorm}

    def after_step(self, step: int) -> bool:
        """Validate when due (publishing an improvement); True: patience says stop."""
        val, rank = self.val, self.env.rank
        assert val is not None
        if not val.due(step):
            return False
        if val.validate(step, self.run.out, self.run.t_start, rank == 0) and rank == 0:
            self.publish_best(step)
        return _agreed(val.stopped, self.env.world)

    def train(self) -> TrainResult:
        self.build()
        run, cfg, val, writer = self.run, self.cfg, self.val, self.env.rank == 0
        run.resume_state(self.model, self.opt, self.on_resume)
        self.wrap()
        params = sum(p.numel() for p in self.model.parameters())
        self.emit({"event": "start", "step": run.start, "steps": cfg.steps, "runs": len(self.runs),
                   "N": self.n_steps, "params": params})  # fmt: skip
        self.model.train()
        stopped = val is not None and val.stopped  # a run stopped by patience stays stopped
        after = None if val is None else self.after_step
        step, last_loss, stop = run.loop(self.one_step, self.write_policy, after, stopped)
        if writer and val is not None and stop and step > run.start and self.written[-1:] != [step]:
            self.write_policy(step, True)  # stopped by patience between checkpoints
        run.finish(step, self.write_policy)
        if writer and val is not None:
            write_curves(run.out)
        if self.env.world > 1:
            import torch.distributed as dist

            dist.barrier()
        reason = None if val is None else stop_reason(step, cfg.steps, val.stopped, run.deadline)
        return run.result(step, step >= cfg.steps or stop, last_loss, reason)


def _agreed(flag: bool, world: int) -> bool:
    """Rank 0's ``flag`` on every rank (under torchrun), so that all stop at the same step."""
    if world == 1:
        return flag
    import torch.distributed as dist

    box = [flag]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])
