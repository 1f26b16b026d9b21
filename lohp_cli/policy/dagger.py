"""DAgger for Lo-Hp (``loss.dagger``): the recorded optimizer's step from the policy's own states.

The SubTB objective rewards being near the recorded states θ_{k·t}; it never says which step to
take from a state off the recorded paths. DAgger (Ross et al., 2011) asks the expert there: a few
states per batch that the policy's own rollouts visit are *relabelled* with the step the store's
optimizer takes from them — the optimizer run for k·r steps from that state, on that source
task's training data, with the store's hyperparameters and minibatch size, from a seed drawn from
the training step's generator — and the policy's mean step at the state is pulled toward it
(:func:`lohp_cli.policy.loss.step_nll`).

Optimizer state: the policy sees no moment history, and the store records none, so a relabelling
cannot start from the recorded run's moments. At a state of step index m the optimizer is *warmed
at the state*: it takes min(m·k·r, ``loss.dagger_warmup``) steps from it (m·k·r: the steps the
recorded run had taken there), the weights are put back, and the k·r relabelled steps follow with
the warmed state (Adam's moments and step count, SGD's momentum buffer); m = 0 (or
``dagger_warmup = 0``) starts it fresh, as a run starts. What it cannot reproduce is the long
memory of Adam's second moment (β₂ = 0.999 remembers the large gradients of a run's first steps,
which keeps the recorded later steps small): on the main job's store the relabelled step from a
recorded state at m = 5 is 2–3× the recorded one, with cosine 0.4–0.5 to it (fresh
moments: 3×, cosine 0.2–0.5; docs/policy.md).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from lohp_cli.artifacts.base import parse
from lohp_cli.config import OPTIMIZERS, OptimizersConfig
from lohp_cli.errors import StoreError
from lohp_cli.optim import build_optimizer
from lohp_cli.optim.loop import train_loop
from lohp_cli.policy.context import TaskContext
from lohp_cli.store.sampler import NormStats
from lohp_cli.tasks.layout import flat_params, load_flat


@dataclass(frozen=True)
class BatchTasks:
    """Which source task each batch row is a run of: ``task_ids`` (B of them) and the class
    reordering ``perms [B, C]`` the sampler applied to its weights (None: none)."""

    task_ids: list[str]
    perms: torch.Tensor | None = None


def permuted_labels(y: torch.Tensor, perm: torch.Tensor | None) -> torch.Tensor:
    """Labels ``y [M]`` in a row's class order: new label j is old label ``perm[j]`` (as
    :meth:`lohp_cli.policy.state.ProbeBank.probe` reorders a support set)."""
    if perm is None:
        return y
    return torch.argsort(perm.to(y.device))[y]


class Relabeler:
    """The store's optimizer as DAgger's expert: its k·r-step displacement from any state of a
    source task (training data built once per task, on first use)."""

    def __init__(
        self,
        ctx: TaskContext,
        stats: NormStats,
        optim: OptimizersConfig,
        steps: int,
        batch_size: int,
        device: str = "cpu",
    ) -> None:
        self.ctx, self.stats, self.optim = ctx, stats, optim
        self.steps, self.batch_size, self.device = steps, batch_size, device
        with torch.random.fork_rng(devices=[]):  # the template's init never moves torch's RNG
            self.net: nn.Module = ctx.build_target().to(device)
        self._data: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def of_store(cls, ctx: TaskContext, stats: NormStats, k: int, device: str) -> Relabeler:
        """The relabeler of ``ctx``'s store: its optimizer settings, minibatch size and k·r."""
        meta = ctx.store.meta
        where = f"Store '{ctx.store.location}' optimizer settings (config.optim)"
        optim = parse(OptimizersConfig, meta.config.get("optim"), where, StoreError)
        steps = k * meta.compat.record_every
        return cls(ctx, stats, optim, steps, meta.compat.batch_size, device)

    def data(self, task_id: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The training set ``x [M, *in]``, ``y [M]`` of a source task (cached)."""
        if task_id not in self._data:
            t = self.ctx.task_data(task_id, self.device)
            self._data[task_id] = (t.x_train, t.y_train)
        return self._data[task_id]

    def displacement(
        self,
        theta: torch.Tensor,
        task_id: str,
        perm: torch.Tensor | None,
        optimizer: str,
        seed: int,
        warmup: int = 0,
    ) -> torch.Tensor:
        """Weight-space θ' − θ ``[P]`` after the optimizer's k·r steps from ``theta [P]`` on the
        task's training data in the row's class order, minibatches drawn with a generator seeded
        ``seed``. ``warmup`` > 0: the optimizer first takes that many steps from θ, then the
        weights are put back to θ and its state (moments, step count) kept: moments warmed at
        the state; 0: a fresh optimizer."""
        net = copy.deepcopy(self.net)
        start = theta.detach().to(self.device)
        load_flat(net, start)
        opt = build_optimizer(optimizer, net.parameters(), self.optim)
        x, y = self.data(task_id)
        y = permuted_labels(y, perm)
        gen = torch.Generator().manual_seed(seed)
        if warmup:
            train_loop(net, opt, x, y, warmup, warmup, self.batch_size, gen)
            load_flat(net, start)  # in place: the optimizer's state stays attached
        train_loop(net, opt, x, y, self.steps, self.steps, self.batch_size, gen)
        return flat_params(net) - start

    def targets(
        self,
        s: torch.Tensor,
        tasks: BatchTasks,
        opt: torch.Tensor,
        seeds: torch.Tensor,
        warmup: int = 0,
    ) -> torch.Tensor:
        """The relabelled steps ``[B, P]`` in normalised units (Δ / std) at normalised states
        ``s [B, P]`` of the rows ``tasks`` names; ``opt [B]`` optimizer indices, ``seeds [B]``,
        ``warmup`` as :meth:`displacement`."""
        std = self.stats.std.to(s.device)
        theta = self.stats.denormalize(s.detach())  # [B, P]
        out = []
        for b, tid in enumerate(tasks.task_ids):
            perm = None if tasks.perms is None else tasks.perms[b]
            name = OPTIMIZERS[int(opt[b])]
            step = self.displacement(theta[b], tid, perm, name, int(seeds[b]), warmup)
            out.append(step.to(s.device))
        return torch.stack(out) / std
