"""Where does a generated path leave the recorded manifold? A diagnosis along the policy's states.

For each of the first ``path_diagnosis_tasks`` held-out tasks, from sample 0's start θ₀ (the one
every method of the report starts that task from), two paths of N + 1 states:

- the policy's own states s_0 … s_N, as ``generate`` rolls them out (mean mode), de-normalised;
- the reference optimizer's path (Adam where the policy learned from Adam runs, else the first
  optimizer it learned from): one run of N·k·r steps with evaluate's minibatch seeds for sample 0
  (the same run as the report's ``<optimizer>-<T·r>`` row, and its first k·r·i steps those of the
  ``<optimizer>-<k·r·i>`` row), its state recorded every k·r steps.

At every policy step i, for both paths:

- ``nearest``: the Euclidean distance from the state to the nearest recorded state of the store's
  runs (those of the optimizers the policy learned from), over the states at the matched step
  (recorded index k·i, which is k·r·i optimizer steps) and over every recorded step, in weight
  space (‖θ − θ'‖₂) and in the policy's normalised space (‖(θ − θ') / std‖₂);
- ``support_loss`` / ``support_acc``: cross-entropy and accuracy on the task's training (support)
  set;
- ``distance_from_start``: ‖θ_i − θ₀‖₂ (weight space);

and per layer of the target model's :class:`~lohp_cli.tasks.layout.ParamLayout`: the norm of the
policy's step i over the reference's step i (``step_ratio``), and each path's distance from θ₀.
Every value is summarised per step index and overall by its median and interquartile range over
tasks (:func:`lohp_cli.report.locality.summarize`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from lohp_cli.config import OptimizersConfig
from lohp_cli.methods.base import EvalContext
from lohp_cli.methods.policy import policy_info
from lohp_cli.optim import build_optimizer
from lohp_cli.optim.loop import train_loop
from lohp_cli.policy.context import policy_probe
from lohp_cli.policy.directory import learned_optimizers, local_steps, style_token
from lohp_cli.policy.generator import generate_states
from lohp_cli.report.locality import summarize
from lohp_cli.runtime import derive_seed
from lohp_cli.store.sampler import NormStats, select_runs
from lohp_cli.tasks.families import TaskTensors
from lohp_cli.tasks.layout import ParamLayout, load_flat, trainable_parameters
from lohp_cli.tasks.scoring import accuracy

PATHS = ("policy", "reference")
SPACES = ("weight", "normalized")
SCOPES = ("matched", "any")


def reference_path(
    make_net: Callable[[], nn.Module],
    optimizer: str,
    optim: OptimizersConfig,
    theta0: torch.Tensor,
    data: TaskTensors,
    n_steps: int,
    steps_per: int,
    batch_size: int,
    seed: int,
) -> torch.Tensor:
    """The states ``[n_steps + 1, P]`` of one ``optimizer`` run of ``n_steps · steps_per`` steps
    from ``theta0 [P]``, recorded every ``steps_per`` steps (minibatches drawn from ``seed``, as
    evaluate's optimizer rows draw them)."""
    net = make_net()
    load_flat(net, theta0.to(next(net.parameters()).device))
    opt = build_optimizer(optimizer, trainable_parameters(net), optim)
    states: list[torch.Tensor] = []
    gen = torch.Generator().manual_seed(seed)
    train_loop(
        net, opt, data.x_train, data.y_train, n_steps * steps_per, steps_per, batch_size, gen,
        record=lambda theta, _loss, _acc: states.append(theta),
    )  # fmt: skip
    return torch.stack(states)


@dataclass
class NearestStates:
    """Running minima, over the store's runs, of the distance from query states to the recorded
    states: ``queries [Q, N+1, P]`` (weights), ``matched`` the recorded index of each query step
    (k·i), ``std [P]`` the normalisation scale. Feed every run with :meth:`add`."""

    queries: torch.Tensor
    matched: list[int]
    std: torch.Tensor
    runs: int = 0

    def __post_init__(self) -> None:
        q, n = self.queries.shape[0], self.queries.shape[1]
        if len(self.matched) != n:
            raise ValueError(f"{len(self.matched)} matched indices for {n} query steps")
        inf = torch.full((q, n), float("inf"), dtype=torch.float64)
        self.best = {(sp, sc): inf.clone() for sp in SPACES for sc in SCOPES}

    def add(self, states: torch.Tensor) -> None:
        """One run's recorded states ``[T+1, P]`` (weights)."""
        q, n, p = self.queries.shape
        if max(self.matched) >= states.shape[0]:
            raise ValueError(f"a run of {states.shape[0]} states has no state {max(self.matched)}")
        idx = torch.tensor(self.matched)
        for space in SPACES:
            scale = 1.0 if space == "weight" else 1.0 / self.std.double()
            a = (self.queries.double() * scale).reshape(q * n, p)
            b = states.double() * scale
            # exact differences (the matrix-product form loses the zero of a recorded state)
            d = torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist").view(q, n, -1)
            for scope, dist in (("any", d.min(-1).values), ("matched", d[:, torch.arange(n), idx])):
                key = (space, scope)
                self.best[key] = torch.minimum(self.best[key], dist)
        self.runs += 1

    def distances(self, space: str, scope: str) -> np.ndarray:
        """``[Q, N+1]`` nearest distances so far."""
        return self.best[(space, scope)].numpy()


def nearest_distances(
    queries: torch.Tensor, runs: Iterable[torch.Tensor], matched: list[int], std: torch.Tensor
) -> NearestStates:
    """:class:`NearestStates` fed with every run of ``runs`` (each ``[T+1, P]``, weights)."""
    near = NearestStates(queries.detach().cpu(), matched, std.detach().cpu())
    for w in runs:
        near.add(w.detach().cpu())
    return near


def support_scores(net: nn.Module, path: torch.Tensor, data: TaskTensors) -> np.ndarray:
    """``[2, N+1]``: cross-entropy (row 0) and accuracy (row 1) of each state of ``path
    [N+1, P]`` on the task's training (support) set."""
    rows = [accuracy(net, theta, data, split="train") for theta in path]
    return np.array([[loss for _, loss in rows], [acc for acc, _ in rows]])


def layer_norms(path: torch.Tensor, layout: ParamLayout) -> tuple[np.ndarray, np.ndarray]:
    """Per layer of ``layout`` along ``path [N+1, P]``: the step norms ‖θ_{i+1} − θ_i‖ ``[N, L]``
    and the distances from the start ‖θ_i − θ_0‖ ``[N+1, L]``."""
    steps = path[1:] - path[:-1]  # [N, P]
    moved = path - path[:1]  # [N+1, P]
    cols = [(e.offset, e.offset + e.numel) for e in layout.entries]
    step = torch.stack([steps[:, a:b].norm(dim=1) for a, b in cols], 1)
    dist = torch.stack([moved[:, a:b].norm(dim=1) for a, b in cols], 1)
    return step.double().cpu().numpy(), dist.double().cpu().numpy()


def step_ratios(policy: torch.Tensor, reference: torch.Tensor, layout: ParamLayout) -> np.ndarray:
    """``[N, L]``: per layer, the policy's step norm over the reference's at the same index (NaN
    where the reference did not move the layer)."""
    pol, _ = layer_norms(policy, layout)
    ref, _ = layer_norms(reference, layout)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ref > 0, pol / np.where(ref > 0, ref, 1.0), np.nan)


def reference_optimizer(learned: list[str]) -> str:
    """The optimizer a policy's path is compared with: Adam where it learned from Adam's runs,
    else the first it learned from (the style it generates in, :func:`style_token`)."""
    return "adam" if "adam" in learned else learned[0]


def target_layout(net: nn.Module, size: int) -> ParamLayout:
    """The layers of the target model, or one unnamed vector when its layout is not P long."""
    layout = ParamLayout.of(net)
    return layout if layout.size == size else ParamLayout.flat(size)


@dataclass(frozen=True)
class TaskPaths:
    """One task's paths ``policy``, ``reference`` ``[N+1, P]`` (weights)."""

    task_id: str
    policy: torch.Tensor
    reference: torch.Tensor


def policy_path(
    ctx: EvalContext, model: nn.Module, stats: NormStats, task_id: str, token: int | None, bank: Any
) -> torch.Tensor:
    """The policy's states ``[N+1, P]`` (weights) from sample 0's start of ``task_id``, generated
    in mean mode as evaluate's policy rows generate."""
    s0 = ctx.starts(task_id).s0_for(stats)[:1].to(ctx.device)  # [1, P]
    c = stats.normalize_condition(ctx.data[task_id].condition)[None]
    probe = None if bank is None else bank.probe([task_id])
    with torch.no_grad():
        path = generate_states(model, c, s0, "mean", None, True, probe, token)
    return stats.denormalize(path[0])


def diagnose(
    ctx: EvalContext, model: nn.Module, tasks: int, style: str | None = None
) -> dict[str, Any] | None:
    """The path diagnosis of a report (module docstring) for the generating policy ``model``
    (``ctx.meta``, ``ctx.stats``) on the first ``tasks`` held-out tasks; None when off or for a
    policy without local steps (a hypernetwork, a diffusion sampler)."""
    meta, stats = ctx.meta, ctx.stats
    if tasks == 0 or not local_steps(meta):
        return None
    ref_opt = reference_optimizer(learned_optimizers(meta))
    steps_per = meta.k * meta.store_compat.record_every
    token = style_token(meta, style)
    bank = policy_probe(model, ctx.task, ctx.data, stats, ctx.device)
    layout = target_layout(ctx.net, ctx.size)
    paths: list[TaskPaths] = []
    for tid in ctx.tasks[:tasks]:
        ctx.emit({"event": "info", "message": f"path diagnosis: task {tid}"})
        ref = reference_path(
            lambda: ctx.task.build_target().to(ctx.device), ref_opt, ctx.optim,
            ctx.starts(tid).theta0[0], ctx.data[tid], meta.N, steps_per, ctx.batch_size,
            derive_seed(ctx.seed, "batches", tid, 0),
        )  # fmt: skip
        paths.append(TaskPaths(tid, policy_path(ctx, model, stats, tid, token, bank), ref))
    runs = select_runs(ctx.task.store, tuple(learned_optimizers(meta)), check=False)
    states = runs[0].states
    matched = [meta.k * i for i in range(meta.N + 1)]
    queries = torch.stack([torch.stack([p.policy, p.reference]) for p in paths])  # [Q, 2, N+1, P]
    q = queries.shape[0]
    near = nearest_distances(
        queries.reshape(q * 2, meta.N + 1, -1),
        (torch.from_numpy(ctx.task.store.weights(r.run_id)) for r in runs),
        matched,
        stats.std,
    )
    return {
        "policy": policy_info(meta, token),
        "reference": ref_opt,
        "tasks": [p.task_id for p in paths],
        "optimizer_steps_per_policy_step": steps_per,
        "store_runs": near.runs,
        "store_states": states,
        "start": "sample 0's θ₀ of each task, as every method of the report",
        "mode": "mean",
        **summaries(paths, near, ctx, layout),
    }


def summaries(
    paths: list[TaskPaths], near: NearestStates, ctx: EvalContext, layout: ParamLayout
) -> dict[str, Any]:
    """The per-step and per-layer summaries of the diagnosis over ``paths`` (their query rows in
    ``near`` are policy, reference for each task in turn)."""
    scores = {
        name: [support_scores(ctx.net, getattr(p, name), ctx.data[p.task_id]) for p in paths]
        for name in PATHS
    }
    nearest = {
        space: {
            scope: {
                name: summarize(list(near.distances(space, scope)[j :: len(PATHS)]))
                for j, name in enumerate(PATHS)
            }
            for scope in SCOPES
        }
        for space in SPACES
    }
    norms = {name: [layer_norms(getattr(p, name), layout) for p in paths] for name in PATHS}
    ratios = [step_ratios(p.policy, p.reference, layout) for p in paths]  # each [N, L]
    layers = [
        {
            "name": e.name,
            "shape": list(e.shape),
            "numel": e.numel,
            "step_ratio": summarize([r[:, j] for r in ratios]),
            "distance_from_start": {
                name: summarize([dist[:, j] for _, dist in norms[name]]) for name in PATHS
            },
        }
        for j, e in enumerate(layout.entries)
    ]
    return {
        "nearest": nearest,
        "support_loss": {name: summarize([s[0] for s in scores[name]]) for name in PATHS},
        "support_acc": {name: summarize([s[1] for s in scores[name]]) for name in PATHS},
        "distance_from_start": {
            name: summarize(
                [
                    (getattr(p, name) - getattr(p, name)[:1]).norm(dim=1).double().cpu().numpy()
                    for p in paths
                ]
            )
            for name in PATHS
        },  # fmt: skip
        "layers": layers,
    }
