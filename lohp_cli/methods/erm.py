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

import torch

from lohp_cli.config import EvaluateConfig
from lohp_cli.methods.base import EvalContext, Method, Starts
from lohp_cli.methods.optimizer import optimizer_repeats, run_optimizer
from lohp_cli.runtime import derive_seed
from lohp_cli.tasks.inputs import TaskTensors
from lohp_cli.tasks.models import flat_params
from lohp_cli.timing import time_ms


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


class ERMMethod:
    """Adam on the pooled source domains of each task for the store's T·r steps; row ``erm``."""

    kind = "erm"
    policy = None

    def __init__(self, name: str = "erm") -> None:
        self.name = name
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

    def _train(self, task_id: str, theta0: torch.Tensor, seed: int) -> torch.nn.Module:
        c = self.ctx
        return run_optimizer(
            c.task, "adam", theta0, self.data(task_id), c.steps_full, c.batch_size, c.optim,
            seed, c.device,
        )  # fmt: skip

    def weights(self, task_id: str, starts: Starts) -> torch.Tensor:
        seed = self.ctx.seed
        return torch.stack(
            [
                flat_params(self._train(task_id, th, derive_seed(seed, "erm", task_id, j)))
                for j, th in enumerate(starts.theta0)
            ]
        )

    def time_one(self, task_id: str) -> float:
        theta0 = self.ctx.starts(task_id).theta0[0]
        self.data(task_id)  # the pooled set is built once, outside the timing
        reps = optimizer_repeats(self.ctx.latency_repeats)
        return time_ms(lambda: self._train(task_id, theta0, 0), reps, self.ctx.device)


def erm_baseline(name: str, _cfg: EvaluateConfig, _budgets: tuple[int, ...]) -> list[Method]:
    return [ERMMethod(name)]
