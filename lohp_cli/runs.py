"""Executing collect's runs: one process's context (family, store, frozen parts, task data), one
run through the training loop, or a group of runs of one optimizer trained together
(:mod:`lohp_cli.optim.batched`), each written through its own :class:`RunWriter`.

On CPU a run's numbers do not depend on the runs beside it (a group cut short is redone exactly);
they equal the one-run path's (``batch_runs = 1``) to float tolerance. cnn and lora runs go one at
a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lohp_cli.config import CollectConfig
from lohp_cli.errors import DataError
from lohp_cli.optim import build_optimizer, optimizer_hparams
from lohp_cli.optim.batched import batchable, train_batched
from lohp_cli.optim.loop import train_loop
from lohp_cli.runtime import derive_seed
from lohp_cli.store import RunWriter, TrajectoryStore
from lohp_cli.store.frozen import load_frozen
from lohp_cli.tasks import TaskFamily, make_family
from lohp_cli.tasks.families import TaskTensors
from lohp_cli.tasks.models import (
    Frozen,
    ParamLayout,
    build_target,
    flat_params,
    load_flat,
    trainable_parameters,
)


@dataclass(frozen=True)
class RunPlan:
    """One run to collect."""

    run_id: str
    task_id: str
    optimizer: str
    replicate: int
    seed: int


def init_target(
    cfg: CollectConfig, family: TaskFamily, seed: int, frozen: Frozen | None = None
) -> torch.nn.Module:
    """A freshly initialised target model, its initial weights drawn from ``seed``, with the
    store's ``frozen`` parts in it (without them: for its initial θ only)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_target(cfg.model, family.input_shape, family.ways, frozen)


def layout_for(cfg: CollectConfig, family: TaskFamily) -> ParamLayout:
    return ParamLayout.of(build_target(cfg.model, family.input_shape, family.ways))


class RunContext:
    """What a process needs to execute runs: the family, the store, the model's frozen parts,
    the tasks."""

    def __init__(
        self,
        cfg: CollectConfig,
        device: str,
        family: TaskFamily | None = None,
        store: TrajectoryStore | None = None,
    ) -> None:
        self.cfg = cfg
        self.device = device
        self.family = family or make_family(cfg.task)
        self.store = store or TrajectoryStore.open(cfg.out, mode="r+")
        self.frozen = load_frozen(self.store, cfg.model, self.family)
        shared = self.store.shared_init()  # [P] of a shared-init store, else None
        self.theta0 = None if shared is None else torch.from_numpy(shared)
        self._tasks: dict[str, TaskTensors] = {}
        # cnn (BatchNorm buffers) and lora (a frozen backbone inside) take the one-run path
        model = build_target(cfg.model, self.family.input_shape, self.family.ways, self.frozen)
        self.batchable = batchable(model)

    def task(self, task_id: str) -> TaskTensors:
        if task_id not in self._tasks:
            if len(self._tasks) >= max(16, self.cfg.batch_runs):  # a group's tasks stay cached
                self._tasks.clear()
            task = self.family.task(task_id)
            self._tasks[task_id] = task.data(self.cfg.model, self.frozen, self.device)
        return self._tasks[task_id]

    def _model(self, plan: RunPlan) -> torch.nn.Module:
        """The run's target model at its θ_0, on the device, in train mode."""
        model = init_target(self.cfg, self.family, plan.seed, self.frozen)
        if self.theta0 is not None:
            load_flat(model, self.theta0)  # every run of a shared-init store starts here
        return model.to(self.device).train()

    def _begin(self, plan: RunPlan, size: int) -> RunWriter:
        """Start the run in the store. Its attrs do not say how it was grouped (a batched run's
        ``wall_time_s`` is its group's), so a store does not depend on the grouping."""
        cfg = self.cfg
        attrs = {
            "task_id": plan.task_id,
            "optimizer": plan.optimizer,
            "hparams": optimizer_hparams(plan.optimizer, cfg.optim),
            "replicate": plan.replicate,
            "seed": plan.seed,
            "steps": cfg.steps,
            "record_every": cfg.record_every,
            "batch_size": cfg.batch_size,
            "device": self.device,
        }
        return self.store.begin_run(plan.run_id, cfg.recorded_states, size, cfg.store, attrs)

    def _non_finite(self, plan: RunPlan, step: int) -> DataError:
        return DataError(
            f"Run {plan.run_id} produced non-finite weights or loss at step {step}; lower "
            f"the learning rate (e.g. --set optim.{plan.optimizer}.lr=...)."
        )

    def execute(self, plan: RunPlan) -> float:
        """Collect one run into the store (the one-run path); returns its wall time in seconds."""
        cfg = self.cfg
        data = self.task(plan.task_id)
        model = self._model(plan)
        opt = build_optimizer(plan.optimizer, trainable_parameters(model), cfg.optim)
        gen = torch.Generator().manual_seed(derive_seed(plan.seed, "batches"))
        writer = self._begin(plan, ParamLayout.of(model).size)

        def record(theta: torch.Tensor, loss: torch.Tensor, acc: torch.Tensor) -> None:
            if not (torch.isfinite(theta).all() and torch.isfinite(loss)):
                raise self._non_finite(plan, (writer.written + writer.filled) * cfg.record_every)
            writer.append(theta.cpu().numpy(), float(loss), float(acc))

        train_loop(
            model,
            opt,
            data.x_train,
            data.y_train,
            cfg.steps,
            cfg.record_every,
            cfg.batch_size,
            gen,
            record,
        )
        return writer.finish()

    def execute_many(self, plans: Sequence[RunPlan]) -> list[tuple[str, float]]:
        """Collect ``plans`` into the store: runs of one optimizer trained together in groups of
        up to ``cfg.batch_runs`` (one at a time with 1, or for a model that cannot be batched).

        Returns ``(run_id, wall seconds)`` per run; a batched run's wall time is its group's.
        Each run is written through its own writer and is complete only after its ``finish``.
        """
        if self.cfg.batch_runs == 1 or not self.batchable:
            return [(p.run_id, self.execute(p)) for p in plans]
        done: list[tuple[str, float]] = []
        for group in group_plans(plans, self.cfg.batch_runs):
            done += self._execute_group(group)
        return done

    def _execute_group(self, plans: list[RunPlan]) -> list[tuple[str, float]]:
        """Runs of one optimizer trained together (:func:`train_batched`)."""
        cfg = self.cfg
        models = [self._model(p) for p in plans]
        theta0 = torch.stack([flat_params(m) for m in models])  # [R, P]
        data = [self.task(p.task_id) for p in plans]
        gens = [torch.Generator().manual_seed(derive_seed(p.seed, "batches")) for p in plans]
        writers = [self._begin(p, theta0.shape[1]) for p in plans]
        step = 0

        def record(theta: torch.Tensor, loss: torch.Tensor, acc: torch.Tensor) -> None:
            nonlocal step
            w = theta.cpu().numpy()  # [R, P]: one copy off the device per recorded step
            lo, ac = loss.cpu().numpy(), acc.cpu().numpy()  # [R], [R]
            bad = ~(np.isfinite(w).all(1) & np.isfinite(lo))
            if bad.any():
                raise self._non_finite(plans[int(bad.argmax())], step)
            for r, writer in enumerate(writers):
                writer.append(w[r], lo[r], ac[r])
            step += cfg.record_every

        train_batched(
            models[0],
            plans[0].optimizer,
            cfg.optim,
            theta0,
            [d.x_train for d in data],
            [d.y_train for d in data],
            cfg.steps,
            cfg.record_every,
            cfg.batch_size,
            gens,
            record,
        )
        return [(p.run_id, w.finish()) for p, w in zip(plans, writers, strict=True)]


def group_plans(plans: Sequence[RunPlan], size: int) -> list[list[RunPlan]]:
    """``plans`` in groups of one optimizer, at most ``size`` runs each, in order of their
    first run (runs keep their plan order within a group)."""
    by_opt: dict[str, list[RunPlan]] = {}
    for p in plans:
        by_opt.setdefault(p.optimizer, []).append(p)
    groups = [g[i : i + size] for g in by_opt.values() for i in range(0, len(g), size)]
    first = {p.run_id: i for i, p in enumerate(plans)}
    return sorted(groups, key=lambda g: first[g[0].run_id])
