"""Real optimizers as methods: SGD/Adam/SAM train the target model from each start θ_0 for a step
budget, with the store's hyperparameters and minibatch size, batches seeded per (task, sample)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from lohp_cli.config import OptimizersConfig
from lohp_cli.methods.base import EvalContext, Starts
from lohp_cli.optim import build_optimizer
from lohp_cli.optim.batched import batchable, train_batched
from lohp_cli.optim.loop import train_loop
from lohp_cli.policy.context import TaskContext
from lohp_cli.runtime import derive_seed
from lohp_cli.tasks.families import TaskTensors
from lohp_cli.tasks.layout import flat_params, load_flat, trainable_parameters


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

    The base of every method that trains from each start: a subclass overrides ``data``
    (its training set), ``theta0`` (where it starts), or ``_train`` (and sets
    ``batched = False``), and ``prepare``, and keeps the per-sample minibatch seeds
    (``seed_label``) and the timer. All starts of a task train together (``_train_many``);
    latency is one start's run (``_train``).
    """

    kind = "optimizer"
    policy = None
    seed_label = "batches"  # sample j of task t draws its minibatches from (seed, label, t, j)
    batched = True  # weights trains all starts of a task together (_train_many)

    def __init__(self, optimizer: str, steps: int) -> None:
        self.optimizer, self.steps = optimizer, steps
        self.name = f"{optimizer}-{steps}"

    def prepare(self, ctx: EvalContext) -> None:
        self.ctx = ctx

    def data(self, task_id: str) -> TaskTensors:
        """The training set of task ``task_id``."""
        return self.ctx.data[task_id]

    def theta0(self, starts: Starts) -> torch.Tensor:
        """Where each sample's run starts ``[S, P]``: the shared starts."""
        return starts.theta0

    def _train(self, task_id: str, theta0: torch.Tensor, seed: int) -> torch.nn.Module:
        c = self.ctx
        return run_optimizer(
            c.task, self.optimizer, theta0, self.data(task_id), self.steps, c.batch_size,
            c.optim, seed, c.device,
        )  # fmt: skip

    def _train_many(
        self, task_id: str, theta0: torch.Tensor, seeds: list[int]
    ) -> torch.Tensor | None:
        """:meth:`_train` from every start ``theta0 [S, P]`` at once (start j draws its batches
        from ``seeds[j]``, as its own run would); the final weights ``[S, P]``, or None for a
        model that cannot be batched (cnn, lora: one start at a time)."""
        c, data, runs = self.ctx, self.data(task_id), len(seeds)
        with torch.random.fork_rng(devices=[]):  # the template's own init is never used
            net = c.task.build_target().to(c.device)
        if not batchable(net):
            return None
        return train_batched(
            net, self.optimizer, c.optim, theta0.to(c.device), [data.x_train] * runs,
            [data.y_train] * runs, self.steps, max(self.steps, 1), c.batch_size,
            [torch.Generator().manual_seed(s) for s in seeds],
        )  # fmt: skip

    def weights(self, task_id: str, starts: Starts) -> torch.Tensor:
        c, theta0 = self.ctx, self.theta0(starts)
        js = range(len(theta0))
        seeds = [derive_seed(c.seed, self.seed_label, task_id, j) for j in js]
        out = self._train_many(task_id, theta0, seeds) if self.batched else None
        if out is not None:
            return out
        runs = zip(theta0, seeds, strict=True)
        return torch.stack([flat_params(self._train(task_id, th, s)) for th, s in runs])

    def timer(self, task_id: str) -> Callable[[], Any]:
        """One start's run of the task (batch size 1), as the latency times it."""
        theta0 = self.theta0(self.ctx.starts(task_id))[0]
        return lambda: self._train(task_id, theta0, 0)


def optimizer_methods(name: str, budgets: tuple[int, ...]) -> list[OptimizerMethod]:
    """One method per step budget, longest first."""
    return [OptimizerMethod(name, steps) for steps in sorted(set(budgets), reverse=True)]
