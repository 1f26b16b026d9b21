"""Real optimizers as methods: SGD/Adam/SAM train the target model from each start θ_0 for a step
budget, with the store's hyperparameters and minibatch size, batches seeded per (task, sample)."""

from __future__ import annotations

import torch

from lohp_cli.config import OptimizersConfig
from lohp_cli.methods.base import EvalContext, Starts
from lohp_cli.optim import build_optimizer
from lohp_cli.optim.loop import train_loop
from lohp_cli.policy.context import TaskContext
from lohp_cli.runtime import derive_seed
from lohp_cli.tasks.inputs import TaskTensors
from lohp_cli.tasks.models import flat_params, load_flat, trainable_parameters
from lohp_cli.timing import time_ms


def optimizer_repeats(latency_repeats: int) -> int:
    """Timed runs of an optimizer's latency: fewer than a policy's, at least 3."""
    return max(3, latency_repeats // 4)


def run_optimizer(
    ctx: TaskContext,
    name: str,
    theta0: torch.Tensor,
    data: TaskTensors,
    steps: int,
    batch_size: int,
    optim: OptimizersConfig,
    seed: int,
    device: str,
) -> torch.nn.Module:
    """Train the target model from ``theta0`` for ``steps`` with a real optimizer."""
    net = ctx.build_target().to(device)
    load_flat(net, theta0.to(device))
    opt = build_optimizer(name, trainable_parameters(net), optim)
    train_loop(
        net,
        opt,
        data.x_train,
        data.y_train,
        steps,
        max(steps, 1),
        batch_size,
        torch.Generator().manual_seed(seed),
    )
    return net


class OptimizerMethod:
    """``name`` (sgd, adam, sam) for ``steps`` steps; its row is ``name-steps``.

    The base of every method that trains from each start: a subclass overrides ``_train``
    (and ``prepare``) and keeps the per-sample minibatch seeds (``seed_label``) and the timing.
    """

    kind = "optimizer"
    policy = None
    seed_label = "batches"  # sample j of task t draws its minibatches from (seed, label, t, j)

    def __init__(self, optimizer: str, steps: int) -> None:
        self.optimizer, self.steps = optimizer, steps
        self.name = f"{optimizer}-{steps}"

    def prepare(self, ctx: EvalContext) -> None:
        self.ctx = ctx

    def _train(self, task_id: str, theta0: torch.Tensor, seed: int) -> torch.nn.Module:
        c = self.ctx
        return run_optimizer(
            c.task, self.optimizer, theta0, c.data[task_id], self.steps, c.batch_size, c.optim,
            seed, c.device,
        )  # fmt: skip

    def weights(self, task_id: str, starts: Starts) -> torch.Tensor:
        seed = self.ctx.seed
        return torch.stack(
            [
                flat_params(
                    self._train(task_id, th, derive_seed(seed, self.seed_label, task_id, j))
                )
                for j, th in enumerate(starts.theta0)
            ]
        )

    def time_one(self, task_id: str) -> float:
        theta0 = self.ctx.starts(task_id).theta0[0]
        reps = optimizer_repeats(self.ctx.latency_repeats)
        return time_ms(lambda: self._train(task_id, theta0, 0), reps, self.ctx.device)


def optimizer_methods(name: str, budgets: tuple[int, ...]) -> list[OptimizerMethod]:
    """One method per step budget, longest first."""
    return [OptimizerMethod(name, steps) for steps in sorted(set(budgets), reverse=True)]
