"""Does the policy take the optimizer's local step? Measured along the optimizer's own path.

For one task, one optimizer and one start θ₀ (the same θ₀ evaluate's baselines start from), the
optimizer runs N·k·r steps; at every matched state θ_{k·r·i} (i < N) it is branched: M copies of
model *and optimizer state* each take the next k·r steps on their own minibatch seeds. From those:

- ``run_vs_run``: cosine between two branches' displacements — the noise ceiling, what even the
  optimizer itself reaches against a single run of itself;
- ``policy_vs_run``: cosine between the policy's step f(θ_{k·r·i}, i, c) and the displacement of
  the path's own next k·r steps (one run, as a recorded trajectory is);
- ``policy_vs_mean``: cosine between the policy's step and the branches' mean displacement (the
  seed-averaged step: what a policy that learned the local step should match).

Cosines are computed in weight space (the policy's step de-normalised: f · std) and in the
policy's normalised space. The path is advanced in k·r-step pieces, each piece restarting the
minibatch order: only θ₀ and the optimizer are shared with evaluate's baselines, not minibatches.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from lohp_cli.artifacts.policy import PolicyMeta
from lohp_cli.config import OPTIMIZERS, OptimizersConfig
from lohp_cli.methods.base import EvalContext
from lohp_cli.optim import build_optimizer
from lohp_cli.optim.loop import train_loop
from lohp_cli.optim.sam import SAM
from lohp_cli.policy.context import policy_probe
from lohp_cli.policy.directory import learned_optimizers, local_steps
from lohp_cli.policy.state import StateProbe
from lohp_cli.runtime import derive_seed
from lohp_cli.store.sampler import NormStats
from lohp_cli.tasks.families import TaskTensors
from lohp_cli.tasks.layout import flat_params, load_flat

MEASURES = ("policy_vs_mean", "policy_vs_run", "run_vs_run")
SPACES = ("weight", "normalized")


@dataclass(frozen=True)
class PathProbe:
    """Displacements along one optimizer path: ``states [N, P]`` (θ at each matched state),
    ``run [N, P]`` (the path's own next k·r steps) and ``branches [M, N, P]``."""

    states: torch.Tensor
    run: torch.Tensor
    branches: torch.Tensor


def clone_optimizer(
    opt: torch.optim.Optimizer, name: str, net: nn.Module, optim: OptimizersConfig
) -> torch.optim.Optimizer:
    """A new ``name`` optimizer over ``net``'s parameters holding a copy of ``opt``'s state
    (moments, step counts); for SAM, its base optimizer's state (SAM's own is per step)."""
    new = build_optimizer(name, net.parameters(), optim)
    src, dst = (opt, new) if not isinstance(opt, SAM) else (opt.base_optimizer, new.base_optimizer)
    dst.load_state_dict(copy.deepcopy(src.state_dict()))
    return new


def probe_path(
    make_net: Callable[[], nn.Module],
    optimizer: str,
    optim: OptimizersConfig,
    theta0: torch.Tensor,
    data: TaskTensors,
    n_steps: int,
    steps_per: int,
    batch_size: int,
    seed: int,
    branches: int,
) -> PathProbe:
    """Run ``optimizer`` from ``theta0 [P]`` for ``n_steps`` pieces of ``steps_per`` steps,
    branching ``branches`` copies at the start of every piece (see the module docstring)."""
    net = make_net()
    load_flat(net, theta0.to(next(net.parameters()).device))
    opt = build_optimizer(optimizer, net.parameters(), optim)
    states, run, branch = [], [], [[] for _ in range(branches)]

    def advance(model: nn.Module, o: torch.optim.Optimizer, tag: tuple[object, ...]) -> None:
        gen = torch.Generator().manual_seed(derive_seed(seed, *tag))
        train_loop(model, o, data.x_train, data.y_train, steps_per, steps_per, batch_size, gen)

    for i in range(n_steps):
        theta = flat_params(net)
        states.append(theta)
        for b in range(branches):
            bnet = copy.deepcopy(net)
            bopt = clone_optimizer(opt, optimizer, bnet, optim)
            advance(bnet, bopt, ("branch", i, b))
            branch[b].append(flat_params(bnet) - theta)
        advance(net, opt, ("path", i))
        run.append(flat_params(net) - theta)
    return PathProbe(
        torch.stack(states), torch.stack(run), torch.stack([torch.stack(b) for b in branch])
    )


def policy_steps(
    model: nn.Module,
    stats: NormStats,
    states: torch.Tensor,
    cond: torch.Tensor,
    token: int | None,
    probe: StateProbe | None,
) -> torch.Tensor:
    """The policy's mean step f(s_i, i, c) ``[N, P]`` at weight-space ``states [N, P]``, in the
    normalised space (``cond [D]`` already normalised)."""
    n = states.shape[0]
    dev = states.device
    tok = None if token is None else torch.full((n,), token, device=dev)
    with torch.no_grad():
        f, _ = model.means(
            stats.normalize(states), torch.arange(n, device=dev), cond.expand(n, -1), tok, probe
        )
    return f


def _cos(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return nn.functional.cosine_similarity(a, b, dim=-1).cpu().numpy()


def cosines(
    f: torch.Tensor, path: PathProbe, std: torch.Tensor
) -> dict[str, dict[str, np.ndarray]]:
    """``{space: {measure: [N]}}`` for one path; ``f [N, P]`` in normalised space."""
    out: dict[str, dict[str, np.ndarray]] = {}
    std = std.to(f)
    for space in SPACES:
        # a weight-space step Δ is Δ / std in normalised space; f is f · std in weight space
        to = (lambda v: v) if space == "weight" else (lambda v: v / std)
        pol = f * std if space == "weight" else f
        run, br = to(path.run), to(path.branches)
        pairs = list(itertools.combinations(range(br.shape[0]), 2))
        ceiling = np.mean([_cos(br[a], br[b]) for a, b in pairs], axis=0) if pairs else None
        out[space] = {
            "policy_vs_mean": _cos(pol, br.mean(0)),
            "policy_vs_run": _cos(pol, run),
            "run_vs_run": ceiling if ceiling is not None else np.full(len(pol), np.nan),
        }
    return out


def summarize(values: list[np.ndarray]) -> dict[str, Any]:
    """Per step index and overall: median and interquartile range over paths (``values``: one
    ``[N]`` array per path)."""
    v = np.stack(values)  # [paths, N]

    def stat(x: np.ndarray) -> dict[str, float | None]:
        x = x[np.isfinite(x)]
        if not x.size:
            return {"median": None, "q1": None, "q3": None}
        q1, med, q3 = np.percentile(x, [25, 50, 75])
        return {
            "median": round(float(med), 4),
            "q1": round(float(q1), 4),
            "q3": round(float(q3), 4),
        }

    return {"overall": stat(v.ravel()), "per_step": [stat(v[:, i]) for i in range(v.shape[1])]}


def collect_cosines(
    rows: list[dict[str, dict[str, np.ndarray]]],
) -> dict[str, dict[str, dict[str, Any]]]:
    """Summaries ``{space: {measure: summarize(...)}}`` over the paths' :func:`cosines`."""
    return {
        space: {m: summarize([r[space][m] for r in rows]) for m in MEASURES} for space in SPACES
    }


def check(
    ctx: EvalContext,
    model: nn.Module,
    targets: int,
    sources: int,
    branches: int,
    others: Sequence[tuple[str, nn.Module, PolicyMeta, NormStats]] = (),
) -> dict[str, Any] | None:
    """The local-policy check of a report: for every optimizer the policy learned from, on the
    first ``targets`` held-out tasks and ``sources`` source tasks, from sample 0's start θ₀ (the
    one every method of the report starts that task from). None when off, or for a policy without
    local steps (a hypernetwork, a diffusion sampler).

    ``others``: more policies ``(row name, model, meta, stats)`` checked on the same paths (one
    optimizer path per task, optimizer, N and k·r, shared by every policy that needs it); their
    results go under ``policies`` by row name (policies without local steps are left out)."""
    if targets == 0 and sources == 0:
        return None
    task = ctx.task
    splits = {
        "target": ctx.tasks[:targets],
        "source": [t.id for t in task.family.tasks("source", sources)] if sources else [],
    }
    # each task's tensors and support sets once, for every optimizer and policy
    data = {t: ctx.data.get(t) or task.task_data(t, ctx.device) for ids in splits.values()
            for t in ids}  # fmt: skip
    paths: dict[tuple[Any, ...], PathProbe] = {}

    def one(model: nn.Module, meta: PolicyMeta, stats: NormStats) -> dict[str, Any]:
        steps_per = meta.k * meta.store_compat.record_every
        bank = policy_probe(model, task, data, stats, ctx.device)
        out: dict[str, Any] = {}
        for opt in learned_optimizers(meta):
            ctx.emit({"event": "info", "message": f"local-policy check along {opt}'s path"})
            token = OPTIMIZERS.index(opt) if meta.has_tokens else None
            out[opt] = {}
            for split, ids in splits.items():
                rows = []
                for tid in ids:
                    key = (opt, tid, meta.N, steps_per)
                    if key not in paths:
                        paths[key] = probe_path(
                            lambda: copy.deepcopy(ctx.net), opt, ctx.optim,
                            ctx.starts(tid).theta0[0], data[tid], meta.N, steps_per,
                            ctx.batch_size, derive_seed(ctx.seed, "locality", tid), branches,
                        )  # fmt: skip
                    probe = None if bank is None else bank.probe([tid])
                    cond = stats.normalize_condition(data[tid].condition)
                    f = policy_steps(model, stats, paths[key].states, cond, token, probe)
                    rows.append(cosines(f, paths[key], stats.std))
                if rows:
                    out[opt][split] = {"tasks": len(rows), **collect_cosines(rows)}
        return out

    if not local_steps(ctx.meta):
        return None
    report: dict[str, Any] = {
        "optimizers": one(model, ctx.meta, ctx.stats),
        "branches": branches,
        "optimizer_steps_per_policy_step": ctx.meta.k * ctx.meta.store_compat.record_every,
        "start": "sample 0's θ₀ of each task, as every method of the report",
    }
    checked = [(n, m, me, st) for n, m, me, st in others if local_steps(me)]
    if checked:
        report["policies"] = {
            name: {"optimizers": one(m, me, st), "optimizer_steps_per_policy_step":
                   me.k * me.store_compat.record_every}
            for name, m, me, st in checked
        }  # fmt: skip
    return report
