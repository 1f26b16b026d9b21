"""ERM, DomainBed's baseline for domain generalization, as an ``evaluate`` method.

For each held-out task it trains the target model with Adam on the pooled source domains, never
on the held-out domain: the same task (classes and label order) in each source domain of the
family (:meth:`~lohp_cli.tasks.families.TaskFamily.in_source_domains`), each contributing its
training split (``train_per_class`` images per class), pooled into one training set. It runs the
store's T·r steps at the store's minibatch size with the store's Adam hyperparameters from each
shared start θ_0; ``run_method`` then scores it on the held-out task's test split, like every
row. A family without domains is refused (a ConfigError naming it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from lohp_cli.config import EvaluateConfig
from lohp_cli.methods.base import EvalContext, Method
from lohp_cli.methods.optimizer import OptimizerMethod
from lohp_cli.tasks.families import TaskTensors


def pooled_source_data(ctx: EvalContext, task_id: str) -> TaskTensors:
    """The held-out task's tensors with its training split replaced by the pooled training
    splits of the same task in every source domain (``x_train [D·N, …]``, ``y_train [D·N]``)."""
    task = ctx.task.task(task_id)
    parts = [
        t.data(ctx.task.model_cfg, ctx.task.frozen, ctx.device)
        for t in ctx.task.family.in_source_domains(task)
    ]
    own = ctx.data[task_id]
    return TaskTensors(
        torch.cat([p.x_train for p in parts]),
        torch.cat([p.y_train for p in parts]),
        own.x_test, own.y_test, own.condition, own.x_support, own.y_support,
    )  # fmt: skip


class ERMMethod(OptimizerMethod):
    """Adam on the pooled source domains of each task for the store's T·r steps; row ``erm``."""

    kind = "erm"
    seed_label = "erm"

    def __init__(self, name: str = "erm") -> None:
        self.optimizer, self.name = "adam", name
        self.steps: int | None = None
        self._pooled: dict[str, TaskTensors] = {}

    def prepare(self, ctx: EvalContext) -> None:
        self.ctx, self.steps = ctx, ctx.steps_full
        for t in ctx.tasks:  # refuse a family without domains before any training
            ctx.task.family.in_source_domains(ctx.task.task(t))

    def data(self, task_id: str) -> TaskTensors:
        """The task's pooled source-domain training set (built once per task)."""
        if task_id not in self._pooled:
            self._pooled[task_id] = pooled_source_data(self.ctx, task_id)
        return self._pooled[task_id]

    def timer(self, task_id: str) -> Callable[[], Any]:
        self.data(task_id)  # the pooled set is built once, outside the timing
        return super().timer(task_id)


def erm_baseline(name: str, _cfg: EvaluateConfig, _budgets: tuple[int, ...]) -> list[Method]:
    return [ERMMethod(name)]
