"""Memorisation baselines: weights looked up in the endpoints of the policy's source runs, never
trained. If a policy is no better than these, it has memorised its store rather than learned to
produce weights for new tasks.

``nearest``        the endpoint of the source task whose condition is nearest the target's.
``mean``           the mean endpoint (in weight space).
``nearest-noise``  ``nearest`` plus Gaussian noise with the endpoints' per-coordinate spread.
``class-rows``     a classifier assembled row by row from the source runs that have each class;
                   not applicable (a row without accuracy) when no held-out class is in the store.
``gaussian``       Zeng et al. (2025): a draw from the per-coordinate Gaussian of the endpoints.
``average-16``     Zeng et al. (2025): the average of 16 endpoints drawn without replacement.

The last two are the baselines of Zeng, Li, Chen, Liu and Xie, "Generative Modeling of Weights:
Generalization or Memorization?" (arXiv 2506.07998; github.com/boyazeng/weight_memorization,
``P-diff/evaluation/baseline.py``): their ``gaussian`` fits the mean and the standard deviation
(``torch.std``: unbiased) of every coordinate over the training checkpoints and draws each
coordinate independently; their ``average`` averages ``random.sample(checkpoints, 16)``. Here the
checkpoints are the source endpoints, each aligned to the target's labels first, as for ``mean``.

The endpoints are the last recorded states of the store's complete runs of the optimizers the
policy learned from (``store.endpoints``); the condition is the one the policy is conditioned on
(``TaskTensors.condition``, the class means of the support set's features, for the target; the
stored condition for a source task), compared in the policy's normalisation. Where the target
model ends in one output row per class (``ClassSymmetry.applies``: ``head``, ``mlp``, ``cnn``),
every source endpoint is first aligned to the target's labels (``tasks.alignment``): a class both
tasks have keeps its identity, the other labels are matched by their class-mean condition blocks;
its output rows (weights and bias) are reordered accordingly, and the distance of a source task is
the one after that reordering. Without such rows endpoints are used as recorded. Every start is
ignored: each sample of ``nearest``, ``mean`` and ``class-rows`` is the same weights.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lohp_cli.config import EvaluateConfig
from lohp_cli.errors import ConfigError
from lohp_cli.methods.base import EvalContext, Method, NotApplicable, Starts
from lohp_cli.runtime import derive_seed
from lohp_cli.store.endpoints import Endpoints, load_endpoints
from lohp_cli.store.sampler import select_runs
from lohp_cli.tasks.alignment import align_classes
from lohp_cli.tasks.layout import ParamLayout
from lohp_cli.tasks.symmetry import ClassSymmetry

KIND = "memorization"


def class_symmetry(ctx: EvalContext) -> ClassSymmetry | None:
    """Where the target model's per-class output rows are, or None when it has none."""
    layout = ParamLayout.from_json(ctx.meta.layout)
    ways, dim = ctx.task.family.ways, ctx.meta.condition_dim
    return ClassSymmetry.of(layout, ways, dim) if ClassSymmetry.applies(layout, ways, dim) else None


def align_endpoints(w: torch.Tensor, sym: ClassSymmetry, perms: torch.Tensor) -> torch.Tensor:
    """Endpoints ``w [B, P]`` with their output rows (weights and bias) reordered: row j of
    endpoint b becomes its row ``perms[b, j]`` (``perms [B, C]``) ``[B, P]``."""
    return torch.gather(w, 1, sym.weight_index(perms).to(w.device))


@dataclass(frozen=True)
class Match:
    """Every source task against one target: ``dist [Q]`` (squared distance of normalised
    conditions, after alignment), ``perms [Q, C]`` (each source task's alignment; None without
    class rows) and ``cost [Q, C, C]`` (``cost[q, j, i]``: target block j against block i of
    source task q, normalised at position j; None without class rows)."""

    dist: np.ndarray
    perms: np.ndarray | None
    cost: np.ndarray | None

    @property
    def nearest(self) -> int:
        return int(np.argmin(self.dist))  # the first of equally near tasks


class Memory:
    """The source endpoints of an evaluation and the lookups every memorisation baseline makes."""

    def __init__(self, ctx: EvalContext) -> None:
        self.ctx = ctx
        self.ends: Endpoints = load_endpoints(ctx.task.store, ctx.meta.optimizers)
        if self.ends.weights.shape[1] != ctx.size:
            raise ConfigError(
                f"The source runs have {self.ends.weights.shape[1]} weights; the policy's target "
                f"model has {ctx.size}."
            )
        self.weights = self.ends.weights.to(ctx.device)  # [R, P]
        self.sym = class_symmetry(ctx)
        self.mean_c = ctx.stats.cond_mean.cpu().double()  # [D]
        self.std_c = ctx.stats.cond_std.cpu().double()  # [D]
        src = self.ends.conditions.double()  # [Q, D]
        self.classes = [self.task_classes(t) for t in self.ends.task_ids]
        if self.sym is None:
            self.norm = ((src - self.mean_c) / self.std_c).numpy()  # [Q, D]
        else:
            b = self.sym.blocks  # [C, F]
            m, s = self.mean_c[b], self.std_c[b]  # [C, F] each position's statistics
            # blocks[q, j, i]: source block i normalised as if it stood at position j
            self.blocks = ((src[:, None, b] - m[None, :, None]) / s[None, :, None]).numpy()
            self.rows = self.sym.rows.to(ctx.device)  # [C, H+1]: weight row j, then bias j

    def task_classes(self, task_id: str) -> tuple[Hashable, ...] | None:
        """The class (identity) of each label of a task (``Task.class_ids``), or None when its
        family has none."""
        return self.ctx.task.task(task_id).class_ids

    def match(self, task_id: str) -> Match:
        """Every source task against target ``task_id`` (its condition as the policy sees it)."""
        c = self.ctx.data[task_id].condition.cpu().double()
        target = ((c - self.mean_c) / self.std_c).numpy()  # [D]
        if self.sym is None:
            return Match(((self.norm - target) ** 2).sum(1), None, None)
        t = target[self.sym.blocks.numpy()]  # [C, F]
        cost = ((self.blocks - t[None, :, None]) ** 2).sum(-1)  # [Q, C, C]
        mine = self.task_classes(task_id)
        perms = np.stack(
            [align_classes(mine, src, q) for src, q in zip(self.classes, cost, strict=True)]
        )
        dist = np.take_along_axis(cost, perms[:, :, None], 2)[:, :, 0].sum(1)  # [Q]
        return Match(dist, perms, cost)

    def aligned(self, runs: torch.Tensor, perms: np.ndarray | None) -> torch.Tensor:
        """Endpoints ``runs [B]`` aligned by ``perms [B, C]`` (as stored without) ``[B, P]``."""
        w = self.weights[runs.to(self.weights.device)]  # [B, P]
        return w if perms is None else align_endpoints(w, self.sym, torch.from_numpy(perms))

    def all_aligned(self, task_id: str) -> torch.Tensor:
        """Every endpoint, aligned to target ``task_id`` where the model has class rows (as
        recorded otherwise) ``[R, P]``."""
        if self.sym is None:
            return self.weights
        perms = self.match(task_id).perms[self.ends.task_of_run]  # [R, C]
        return self.aligned(torch.arange(len(self.ends.runs)), perms)

    def nearest(self, task_id: str) -> torch.Tensor:
        """The first endpoint of the nearest source task, aligned to the target ``[P]``."""
        m = self.match(task_id)
        q = m.nearest
        run = torch.tensor([self.ends.first_run(q)])
        return self.aligned(run, None if m.perms is None else m.perms[q : q + 1])[0]


class MemorizationMethod:
    """A baseline that looks its weights up in the source endpoints (``one``), timed at one
    sample of one task."""

    kind = KIND
    steps: int | None = None
    policy = None
    min_runs = 1  # source endpoints the baseline needs

    def __init__(self, name: str) -> None:
        self.name = name

    def prepare(self, ctx: EvalContext) -> None:
        self.ctx, self.memory = ctx, Memory(ctx)
        require_runs(self.name, self.min_runs, len(self.memory.ends.runs))

    def one(self, task_id: str, j: int) -> torch.Tensor:
        """Sample j of the task's weights ``[P]``."""
        raise NotImplementedError

    def weights(self, task_id: str, starts: Starts) -> torch.Tensor:
        return torch.stack([self.one(task_id, j) for j in range(starts.s0.shape[0])])  # [S, P]

    def timer(self, task_id: str) -> Callable[[], Any]:
        """One sample of the task (the endpoints already loaded), as the latency times it."""
        return lambda: self.one(task_id, 0)


class NearestMethod(MemorizationMethod):
    """The endpoint of the source task nearest the target (the first of its runs by run id)."""

    def one(self, task_id: str, j: int) -> torch.Tensor:
        return self.memory.nearest(task_id)


class MeanMethod(MemorizationMethod):
    """The mean of every endpoint, each aligned to the target first (where the model has class
    rows; otherwise the plain mean, the same for every task)."""

    def prepare(self, ctx: EvalContext) -> None:
        super().prepare(ctx)
        self.plain = self.memory.weights.mean(0)  # [P]

    def one(self, task_id: str, j: int) -> torch.Tensor:
        if self.memory.sym is None:
            return self.plain.clone()
        return self.memory.all_aligned(task_id).mean(0)


class NearestNoiseMethod(MemorizationMethod):
    """``nearest`` plus ε ~ N(0, diag(spread²)), spread ``[P]`` the per-coordinate standard
    deviation of the (unaligned) endpoints over runs; ε of sample j of task t is drawn from
    ``derive_seed(seed, "nearest-noise", t, j)``."""

    def prepare(self, ctx: EvalContext) -> None:
        super().prepare(ctx)
        self.spread = self.memory.weights.std(0, correction=0)  # [P]

    def one(self, task_id: str, j: int) -> torch.Tensor:
        seed = derive_seed(self.ctx.seed, "nearest-noise", task_id, j)
        gen = torch.Generator().manual_seed(seed)
        eps = torch.randn(self.spread.shape[0], generator=gen).to(self.spread.device)  # [P]
        return self.memory.nearest(task_id) + self.spread * eps


class ClassRowsMethod(MemorizationMethod):
    """A classifier assembled from per-class rows: output row j (weights and bias) is the row of
    target class j in the nearest source run that has the class (by identity); a class no source
    run has takes the row whose class-mean block is nearest target block j over all runs. Every
    other weight (hidden layers) is the nearest run's.

    Not applicable (:class:`NotApplicable`) when no class of any held-out task is the class of a
    source run (few-shot meta-test classes, a cross-domain meta-test, tasks without class
    identities): every row would be the fallback, which is ``nearest`` block by block, not a
    lookup by class."""

    def prepare(self, ctx: EvalContext) -> None:
        super().prepare(ctx)
        mem = self.memory
        if mem.sym is None:
            raise ConfigError(
                f"Baseline 'class-rows' needs a target model with one output row per class; "
                f"'{ctx.task.model_cfg.name}' ends otherwise. Leave it out of --baselines."
            )
        stored = {c for classes in mem.classes if classes is not None for c in classes}
        if not any(c in stored for t in ctx.tasks for c in mem.task_classes(t) or ()):
            raise NotApplicable(
                "no class of the held-out tasks is the class of a source run (held-out classes), "
                "so no output row can be looked up by class"
            )

    def one(self, task_id: str, j: int) -> torch.Tensor:
        mem, ends = self.memory, self.memory.ends
        m = mem.match(task_id)
        order = np.argsort(m.dist, kind="stable")  # source tasks, nearest first
        w = mem.weights[ends.first_run(m.nearest)].clone()  # [P]
        mine = mem.task_classes(task_id)
        for label in range(mem.rows.shape[0]):
            cls = None if mine is None else mine[label]
            has = [q for q in order if mem.classes[q] is not None and cls in mem.classes[q]]
            if has:
                q, i = has[0], mem.classes[has[0]].index(cls)
            else:  # no source run has the class: the nearest class-mean block of any run
                q, i = divmod(int(np.argmin(m.cost[:, label, :])), m.cost.shape[2])
            w[mem.rows[label]] = mem.weights[ends.first_run(int(q)), mem.rows[i]]
        return w


class GaussianMethod(MemorizationMethod):
    """Zeng et al.'s Gaussian: coordinate i of sample j of task t is μ_i + σ_i ε_i with
    ε ~ N(0, I) drawn from ``derive_seed(seed, "gaussian", t, j)``; μ, σ ``[P]`` the mean and
    the (unbiased) standard deviation of the endpoints aligned to the task (the same for every
    task without class rows)."""

    min_runs = 2  # a standard deviation

    def moments(self, task_id: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and unbiased standard deviation ``[P]`` of the endpoints aligned to the task."""
        w = self.memory.all_aligned(task_id)  # [R, P]
        return w.mean(0), w.std(0)

    def one(self, task_id: str, j: int) -> torch.Tensor:
        mu, sd = self.moments(task_id)
        gen = torch.Generator().manual_seed(derive_seed(self.ctx.seed, self.name, task_id, j))
        return mu + sd * torch.randn(mu.shape[0], generator=gen).to(mu.device)  # [P]


class AverageMethod(MemorizationMethod):
    """Zeng et al.'s average: the mean of ``k`` = 16 endpoints drawn without replacement (a
    ``randperm`` from ``derive_seed(seed, "average-16", t, j)``), each aligned to the task."""

    k = 16
    min_runs = k

    def picks(self, task_id: str, j: int) -> torch.Tensor:
        """The endpoints ``[k]`` (run indices, in draw order) sample j of the task averages."""
        gen = torch.Generator().manual_seed(derive_seed(self.ctx.seed, self.name, task_id, j))
        return torch.randperm(len(self.memory.ends.runs), generator=gen)[: self.k]

    def one(self, task_id: str, j: int) -> torch.Tensor:
        mem, runs = self.memory, self.picks(task_id, j)
        perms = None
        if mem.sym is not None:  # each picked endpoint's alignment: its task's
            perms = mem.match(task_id).perms[mem.ends.task_of_run[runs].numpy()]  # [k, C]
        return mem.aligned(runs, perms).mean(0)  # [P]


_METHODS: dict[str, type[MemorizationMethod]] = {
    "nearest": NearestMethod,
    "mean": MeanMethod,
    "nearest-noise": NearestNoiseMethod,
    "class-rows": ClassRowsMethod,
    "gaussian": GaussianMethod,
    "average-16": AverageMethod,
}
NAMES = tuple(_METHODS)


def require_runs(name: str, need: int, have: int) -> None:
    """A ConfigError when baseline ``name`` needs ``need`` source endpoints and has ``have``."""
    if have < need:
        raise ConfigError(
            f"Baseline '{name}' needs at least {need} source endpoints; the store has {have} "
            "complete run(s) of the policy's optimizers. Collect more (--tasks, --seeds) or leave "
            "it out of --baselines."
        )


def check_runs(name: str) -> Callable[[EvalContext], None]:
    """Baseline ``name``'s up-front check: enough complete runs of the policy's optimizers (read
    from the run index, before any method runs)."""

    def check(ctx: EvalContext) -> None:
        opts = ctx.meta.optimizers
        have = len(select_runs(ctx.task.store, tuple(opts) if opts else None))
        require_runs(name, _METHODS[name].min_runs, have)

    return check


def memorization_baseline(
    name: str, _cfg: EvaluateConfig, _budgets: tuple[int, ...]
) -> list[Method]:
    """The memorisation baseline ``name`` (one of :data:`NAMES`) as one report row."""
    return [_METHODS[name](name)]
