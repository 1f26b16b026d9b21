"""The meta-learned start: a θ₀ learned on the store's source tasks, then N Adam steps from it
(``--baselines reptile`` and ``--baselines fomaml``; rows ``reptile-N``, ``fomaml-N``).

The standard answer to "where should fine-tuning start?": meta-train θ₀ so that a few optimizer
steps from it do well on a new task of the family, then fine-tune each held-out task from it
exactly as the ``adam`` baseline does (the store's Adam hyperparameters and minibatch size, the
same minibatch seeds per task and sample, :class:`~lohp_cli.methods.optimizer.OptimizerMethod`),
at every step budget the stepped baselines take (T·r, each policy's N, ``frontier_steps``) and
at 0 steps (the start itself).

**Meta-training** (:func:`meta_train`). From θ (the store's shared θ₀, else the target model's
own initialisation drawn from ``derive_seed(seed, "meta-start", "init")``), each outer step draws
``meta_batch`` distinct source tasks and adapts θ to each with ``inner_steps`` Adam steps (a fresh
Adam state per task, as at meta-test) on the part the task names (:attr:`Task.adapt_on`: the
training split, a few-shot episode's K-shot support set) to θ'_b, then

- **Reptile** (Nichol, Achiam and Schulman 2018, "On First-Order Meta-Learning Algorithms",
  the batched version): θ ← θ + ε_i · mean_b(θ'_b − θ), ε_i = ``reptile_lr`` · (1 − i/M)
  annealed linearly to 0 over the M meta steps, as in their few-shot runs;
- **FOMAML** (Finn, Abbeel and Levine 2017, first-order approximation): the outer gradient is
  mean_b ∇L_query,b(θ'_b), the loss on each task's test split (an episode's queries) at its
  adapted weights, with dθ'/dθ taken as the identity; an Adam step of ``fomaml_lr`` (Finn et
  al.'s meta-optimizer) follows.

Both match learn2learn's reference (``learn2learn/algorithms/maml.py`` with ``first_order=True``:
the adapted parameters carry no graph to θ; ``examples/vision/reptile_miniimagenet.py``: Adam in
the inner loop, θ moved toward the mean adapted weights). The inner loop is the meta-test
adaptation's optimizer (Adam with the store's hyperparameters and minibatch size) at the rate
``inner_lr``, 0.001 by default as in Nichol et al. (``null``: the store's rate, the one held-out
tasks fine-tune with); under the first-order approximation any inner optimizer is allowed. One
difference from Nichol et al.'s code (and learn2learn's Reptile example): there the inner Adam
state carries over from task to task; here each inner loop starts a fresh Adam, as a held-out
task's fine-tuning does, so its first steps are ``lr · sign(g)`` whatever the gradient's size.
At the store's rate (0.01 in the few-shot examples) that overshoots a 1-shot support set and
Reptile's outer steps compound it (θ₀'s norm grew 10–15× in 1000 meta steps and fine-tuning from
it lost 4–27 points on new meta-train episodes); hence the smaller inner rate, and ε = 0.1
(their code's default ``--meta-step``) rather than their runs' 1.0. Everything is seeded from the
generate seed: task draws from ``derive_seed(seed, algorithm, "tasks")``, minibatches of meta
step i on source task q from ``derive_seed(seed, algorithm, "inner", i, q)``.

**Why not learn2learn** (the field's library): learn2learn 0.2.0 does not build on Python 3.11
(its pre-generated Cython C files in ``learn2learn/data`` include ``longintrepr.h``, which 3.11
removed) and it pulls gym, gsutil and qpth (and through it cvxpy) into the install; the two
first-order algorithms are a few lines over lohp's own batched Adam loop
(:func:`~lohp_cli.optim.batched.train_batched`), so they are written here.

**Label order.** Episodes and class-subset tasks relabel their classes at random, so no output
row of θ₀ can prefer a class: a meta-learned classifier head learns (nearly) equal rows, and what
it learns is the shared part (the rows' common direction and scale, a hidden layer's weights).
That is expected of a meta-learned start on such a family, not a fault.

**Cache.** θ₀ is written atomically to ``<report>/baselines/<algorithm>/theta0.safetensors``
with its key (store fingerprint, source tasks, settings, the Adam hyperparameters, batch size,
seed) in the file's metadata, and reused while the key matches; otherwise it is learned again
and replaced. Latency is the fine-tuning's (as the ``adam`` rows'), not the meta-training's,
which is amortised over every task like a policy's training.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from lohp_cli.checkpoint import atomic_save_tensors
from lohp_cli.config import EvaluateConfig, MetaStartConfig, OptimizersConfig
from lohp_cli.config.stages import META_START_BASELINES
from lohp_cli.errors import ConfigError
from lohp_cli.methods.base import EvalContext, Starts
from lohp_cli.methods.optimizer import OptimizerMethod, run_optimizer
from lohp_cli.optim.batched import batchable, train_batched
from lohp_cli.policy.directory import store_fingerprint
from lohp_cli.runtime import derive_seed
from lohp_cli.tasks.families import TaskTensors
from lohp_cli.tasks.layout import flat_params, functional_forward

KIND = "meta-start"
ALGORITHMS = META_START_BASELINES  # the baseline names, listed in lohp_cli.config.stages
CACHE_VERSION = 1

# (θ [P], source task indices [B], meta step i) -> adapted weights θ' [B, P]
Adapt = Callable[[torch.Tensor, list[int], int], torch.Tensor]
# (adapted weights θ' [B, P], source task indices [B]) -> query-loss gradients at θ' [B, P]
QueryGrad = Callable[[torch.Tensor, list[int]], torch.Tensor]


# ---- the algorithms ------------------------------------------------------------------------------
def reptile_update(theta: torch.Tensor, adapted: torch.Tensor, eps: float) -> torch.Tensor:
    """Reptile's outer step: θ ``[P]`` moved by ``eps`` toward the mean of ``adapted [B, P]``."""
    return theta + eps * (adapted.mean(0) - theta)


def query_gradients(
    net: torch.nn.Module,
    adapted: torch.Tensor,
    queries: Sequence[tuple[torch.Tensor, torch.Tensor]],
) -> torch.Tensor:
    """FOMAML's per-task outer gradients ``[B, P]``: row b is ∇ of the mean cross-entropy of
    ``net`` on ``queries[b] = (x [M, *in], y [M])`` at the weights ``adapted[b]`` (first order:
    no graph back to the start)."""
    out = []
    for w, (x, y) in zip(adapted, queries, strict=True):
        w = w.detach().requires_grad_(True)  # [P]
        loss = torch.nn.functional.cross_entropy(functional_forward(net, w, x), y)
        out.append(torch.autograd.grad(loss, w)[0])
    return torch.stack(out)


def meta_train(
    algorithm: str,
    theta0: torch.Tensor,
    n_tasks: int,
    adapt: Adapt,
    query_grad: QueryGrad,
    steps: int,
    batch: int,
    outer_lr: float,
    gen: torch.Generator,
) -> torch.Tensor:
    """Meta-train a start from ``theta0 [P]`` over ``n_tasks`` source tasks; returns θ₀ ``[P]``.

    Each of ``steps`` outer steps draws ``min(batch, n_tasks)`` distinct tasks with ``gen``,
    adapts θ to each (``adapt``) and takes Reptile's step (``outer_lr`` annealed linearly to 0)
    or FOMAML's Adam step on the mean query gradient (``query_grad``).
    """
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"Unknown meta-learning algorithm {algorithm!r}; choose from reptile, "
                          "fomaml.")  # fmt: skip
    theta = theta0.detach().clone()  # [P]
    opt = torch.optim.Adam([theta], lr=outer_lr) if algorithm == "fomaml" else None
    b = min(batch, n_tasks)
    for i in range(steps):
        idx = torch.randperm(n_tasks, generator=gen)[:b].tolist()
        adapted = adapt(theta, idx, i)  # [B, P]
        if opt is None:
            theta = reptile_update(theta, adapted, outer_lr * (1 - i / steps))
        else:
            theta.grad = query_grad(adapted, idx).mean(0)  # [P]
            opt.step()
    return theta.detach()


# ---- the store's source tasks --------------------------------------------------------------------
def source_ids(ctx: EvalContext) -> tuple[str, ...]:
    """The store's tasks (sorted ids): what the start is meta-learned on."""
    ids = tuple(sorted(ctx.task.store.task_ids()))
    if not ids:
        raise ConfigError(
            f"Store '{ctx.task.store.location}' has no tasks to meta-learn a start from; run "
            "'lohp collect' first."
        )
    return ids


def inner_optim(ctx: EvalContext, cfg: MetaStartConfig) -> OptimizersConfig:
    """The store's optimizer settings with Adam's learning rate set to ``inner_lr`` (if given)."""
    lr = cfg.inner_lr if cfg.inner_lr is not None else ctx.optim.adam.lr
    return ctx.optim.model_copy(update={"adam": ctx.optim.adam.model_copy(update={"lr": lr})})


@dataclass(frozen=True)
class SourceTasks:
    """The store's source tasks as a meta-learner sees them, and the inner loop on them.

    ``data[q]``: task q's tensors with ``x_train``/``y_train`` replaced by the part it adapts on
    (:attr:`Task.adapt_on`) and its test split as the queries."""

    ctx: EvalContext
    ids: tuple[str, ...]
    data: tuple[TaskTensors, ...]
    optim: OptimizersConfig  # the store's, with the inner learning rate
    inner_steps: int
    label: str  # the algorithm: part of the inner minibatch seeds

    @classmethod
    def load(cls, ctx: EvalContext, cfg: MetaStartConfig, label: str) -> SourceTasks:
        """Every source task's tensors (:func:`source_ids`), on the evaluation's device."""
        ids, data = source_ids(ctx), []
        for t in ids:
            task = ctx.task.task(t)
            d = task.data(ctx.task.model_cfg, ctx.task.frozen, ctx.device)
            if task.adapt_on == "support":
                d = replace(d, x_train=d.x_support, y_train=d.y_support)
            data.append(d)
        return cls(ctx, ids, tuple(data), inner_optim(ctx, cfg), cfg.inner_steps, label)

    def template(self) -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):  # its own initial weights are never used
            return self.ctx.task.build_target().to(self.ctx.device)

    def adapt(self, theta: torch.Tensor, idx: list[int], step: int) -> torch.Tensor:
        """``inner_steps`` Adam steps from θ ``[P]`` on each task of ``idx`` ``[B, P]``: all
        together where the model and the tasks' batch widths allow (the batched trainer), else
        one task at a time (the one-run loop); the same numbers either way."""
        c, bs, data = self.ctx, self.ctx.batch_size, [self.data[q] for q in idx]
        seeds = [derive_seed(c.seed, self.label, "inner", step, self.ids[q]) for q in idx]
        net = self.template()
        if batchable(net) and len({min(len(d.y_train), bs) for d in data}) == 1:
            return train_batched(
                net, "adam", self.optim, theta.expand(len(idx), -1).contiguous(),
                [d.x_train for d in data], [d.y_train for d in data], self.inner_steps,
                self.inner_steps, bs, [torch.Generator().manual_seed(s) for s in seeds],
            )  # fmt: skip
        return torch.stack([
            flat_params(run_optimizer(c.task, "adam", theta, d, self.inner_steps, bs, self.optim,
                                      s, c.device))
            for d, s in zip(data, seeds, strict=True)
        ])  # fmt: skip

    def query_grad(self, adapted: torch.Tensor, idx: list[int]) -> torch.Tensor:
        queries = [(self.data[q].x_test, self.data[q].y_test) for q in idx]
        return query_gradients(self.template(), adapted, queries)


# ---- the learned start and its cache -------------------------------------------------------------
def initial_start(ctx: EvalContext) -> tuple[torch.Tensor, str]:
    """Where meta-training starts ``[P]`` and what that is: the store's shared θ₀, else the
    target model's own initialisation drawn from ``derive_seed(seed, "meta-start", "init")``."""
    if ctx.rule.shared:
        return ctx.rule.weights("", 0, ctx.stats).to(ctx.device), "shared"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(ctx.seed, KIND, "init"))
        return flat_params(ctx.task.build_target()).to(ctx.device), "model"


def cache_key(ctx: EvalContext, cfg: MetaStartConfig, algorithm: str, init: str) -> dict[str, Any]:
    """What the learned θ₀ depends on (compared as JSON)."""
    ids = hashlib.sha256("\n".join(source_ids(ctx)).encode()).hexdigest()[:16]
    return {
        "version": CACHE_VERSION,
        "algorithm": algorithm,
        "store": store_fingerprint(ctx.task.store),
        "source_tasks": {"n": len(source_ids(ctx)), "sha256": ids},
        "meta_start": cfg.model_dump(mode="json"),
        "adam": inner_optim(ctx, cfg).adam.model_dump(mode="json"),
        "batch_size": ctx.batch_size,
        "seed": ctx.seed,
        "init": init,
    }


def _cached(path: Path, key: str) -> torch.Tensor | None:
    """θ₀ from ``path`` when the file is there, readable and was learned under ``key``."""
    try:
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("key") != key:
                return None
            return f.get_tensor("theta0")
    except Exception:  # noqa: BLE001 - a missing or torn cache is relearned
        return None


def learned_start(ctx: EvalContext, cfg: MetaStartConfig, algorithm: str) -> torch.Tensor:
    """The meta-learned θ₀ ``[P]`` of ``algorithm``: from the report directory's cache when its
    key matches, else meta-trained on the store's source tasks and cached."""
    path = Path(ctx.out) / "baselines" / algorithm / "theta0.safetensors"
    theta, init = initial_start(ctx)
    key = json.dumps(cache_key(ctx, cfg, algorithm, init), sort_keys=True)
    cached = _cached(path, key)
    if cached is not None:
        return cached.to(ctx.device)
    src = SourceTasks.load(ctx, cfg, algorithm)
    ctx.emit({"event": "info", "message": f"meta-training the {algorithm} start: "
              f"{cfg.meta_steps} steps on {len(src.ids)} source tasks"})  # fmt: skip
    t0 = time.perf_counter()
    outer = cfg.reptile_lr if algorithm == "reptile" else cfg.fomaml_lr
    gen = torch.Generator().manual_seed(derive_seed(ctx.seed, algorithm, "tasks"))
    theta = meta_train(
        algorithm, theta, len(src.ids), src.adapt, src.query_grad, cfg.meta_steps,
        cfg.meta_batch, outer, gen,
    )  # fmt: skip
    atomic_save_tensors(path, {"theta0": theta}, {"key": key})
    took = time.perf_counter() - t0
    ctx.emit({"event": "info", "message": f"{algorithm} start learned in {took:.1f} s: {path}"})
    return theta


# ---- the baseline --------------------------------------------------------------------------------
class MetaStartMethod(OptimizerMethod):
    """``steps`` Adam steps from the meta-learned θ₀ of ``algorithm`` on each held-out task's
    training split, as the ``adam`` baseline takes them (same minibatches); row
    ``algorithm-steps``; every sample starts at θ₀."""

    kind = KIND

    def __init__(self, algorithm: str, steps: int, cfg: MetaStartConfig) -> None:
        super().__init__("adam", steps)
        self.algorithm, self.cfg = algorithm, cfg
        self.name = f"{algorithm}-{steps}"

    def prepare(self, ctx: EvalContext) -> None:
        super().prepare(ctx)
        self.start = learned_start(ctx, self.cfg, self.algorithm).to(ctx.device)  # [P]

    def theta0(self, starts: Starts) -> torch.Tensor:
        return self.start.expand(len(starts.theta0), -1).clone()  # [S, P]


def meta_start_methods(
    name: str, cfg: EvaluateConfig, budgets: tuple[int, ...]
) -> list[MetaStartMethod]:
    """One row per step budget, longest first (0: the start itself)."""
    return [MetaStartMethod(name, s, cfg.meta_start) for s in sorted(set(budgets), reverse=True)]
