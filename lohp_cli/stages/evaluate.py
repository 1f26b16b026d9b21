"""Stage 4: score generated weights on their tasks' test splits against baselines.

Every method starts from the same initial weights, exactly as ``generate`` does
(``policy.directory.StartRule``): sample j of task t starts at θ_0 = denormalise(s_0) with
s_0 ~ N(0, I) seeded by (seed, task, j), or, on a shared-init store, at the store's θ₀ itself, so
optimizers and policies are compared on the same tasks and starting points. Optimizers run for
the store's full run length (T·r steps) and for N steps (as many as the policy takes), and for the
accuracy-latency frontier at each other budget of ``frontier_steps`` up to T·r (points of the
report's ``frontier``, not rows).

Latency (``latency_ms_batch1``, what the paper calls latency) is the time to produce the weights of
one task at batch size 1, measured after every method is scored, interleaved across all of them
(round-robin, so load from other processes hits every method alike: ``methods.base.time_methods``):
the median of the timed runs after one untimed warm-up run (CUDA-synchronised on GPU), with its
interquartile range and the process's CPU time, on the report's ``device``; the load average
during the timing is in the report. Batched throughput is measured by ``generate`` and copied
from the generated store into ``timing.generate``.

The methods themselves live in :mod:`lohp_cli.methods` (one per baseline and generator, looked up
through its registry); the report's files in :mod:`lohp_cli.report.document`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

import lohp_cli.diffusion  # noqa: F401 - registers the diffusion generator, which load_policy builds
import lohp_cli.l2o.method  # noqa: F401 - registers the learned optimizers as methods
from lohp_cli.artifacts.base import parse
from lohp_cli.artifacts.generated import GeneratedMeta
from lohp_cli.artifacts.policy import PolicyMeta
from lohp_cli.config import OPTIMIZERS, EvaluateConfig, GenerateConfig, OptimizersConfig
from lohp_cli.errors import ConfigError, StoreError
from lohp_cli.methods import registry
from lohp_cli.methods.base import (
    EvalContext,
    Method,
    MethodResult,
    Progress,
    run_method,
    time_methods,
)
from lohp_cli.methods.policy import GeneratedMethod, PolicyMethod, split_sample_steps
from lohp_cli.policy.context import TaskContext, support_probe_bank, task_context
from lohp_cli.policy.directory import check_policy_dir, load_policy, local_steps
from lohp_cli.policy.generator import Generator
from lohp_cli.report import locality, path_diagnosis
from lohp_cli.report.document import build_report, write_report
from lohp_cli.runtime import resolve_device, stage_threads
from lohp_cli.stages import check_names
from lohp_cli.store.generated import open_generated
from lohp_cli.store.sampler import NormStats, RunRef, check_runs, matched_indices, select_runs
from lohp_cli.tasks.models import build_target


def cosine_runs(ctx: TaskContext, meta: PolicyMeta, runs: int) -> list[RunRef]:
    """The first ``runs`` complete runs of the store for the cosine check, checked against the
    store's layout now (before any method is scored); none when the check does not apply."""
    if not local_steps(meta) or runs == 0:
        return []
    chosen = select_runs(ctx.store, None, check=False)[:runs]
    check_runs(ctx.store, chosen)
    return chosen


def cosine_check(
    model: torch.nn.Module,
    meta: PolicyMeta,
    stats: Any,
    ctx: TaskContext,
    chosen: list[RunRef],
    device: str,
) -> list[float]:
    """Cosine similarity of the policy's step f(θ_{k·i}) with the matched offline step Δ_i on
    the runs ``chosen`` (:func:`cosine_runs`)."""
    out: list[float] = []
    store = ctx.store
    bank = None
    if chosen and getattr(model, "needs_probe", False):
        bank = support_probe_bank(ctx, (r.task_id for r in chosen), stats, device)
    for ref in chosen:
        w = torch.from_numpy(store.weights(ref.run_id)[matched_indices(ref.states, meta.k)])
        x = stats.normalize(w.to(device))  # [N+1, P]
        c = stats.normalize_condition(torch.from_numpy(store.condition(ref.task_id)).to(device))
        n = x.shape[0] - 1
        probe = None if bank is None else bank.probe([ref.task_id])
        tok = None
        if meta.has_tokens:  # each offline step is scored in its own optimizer's style
            tok = torch.full((n,), OPTIMIZERS.index(ref.optimizer), device=device)
        with torch.no_grad():
            f, _ = model.means(x[:-1], torch.arange(n, device=device), c.expand(n, -1), tok, probe)
        delta = x[1:] - x[:-1]
        out += torch.nn.functional.cosine_similarity(f, delta, dim=1).cpu().tolist()
    return out


def evaluate(cfg: EvaluateConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Score the generated weights and every baseline; write report.json/.md and plots."""
    check_names(cfg)
    emit = progress or (lambda _e: None)
    with stage_threads(cfg.threads, emit, default=1):
        return _evaluate(cfg, emit)


def _evaluate(cfg: EvaluateConfig, emit: Progress) -> dict[str, Any]:
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"Report directory '{out}' is a file; choose another --out.")
    for name, path in cfg.policies.items():  # before anything is built: found, readable
        check_policy_dir(path, split_sample_steps(name)[1])
    g, gmeta = open_generated(cfg.generated)
    gcfg = parse(
        GenerateConfig, gmeta.config, f"Generated store '{cfg.generated}' config", StoreError
    )
    ctx, loaded = context(cfg, gcfg, gmeta, emit)
    # every input is checked before any method is scored: the baselines' contexts, the other
    # policies (loaded now), the generated arrays and the runs of the cosine check
    for b in cfg.baselines:
        registry.check(b, ctx)
    policies = [registry.policy_method(name, path) for name, path in cfg.policies.items()]
    for m in policies:
        m.prepare(ctx)
    generated = GeneratedMethod(g, cfg.generated, loaded, gcfg.style)
    generated.check(ctx)
    chosen = cosine_runs(ctx.task, loaded[1], cfg.cosine_runs)
    first: list[Method] = [generated, *policies]
    stepped = [b for b in cfg.baselines if registry.is_stepped(b)]
    first += [m for b in cfg.baselines if b not in stepped for m in registry.baseline(b, cfg)]
    # progress: (method, task) pairs to score; the stepped baselines' count is known once the
    # rows before them have their steps
    emit({"event": "plan", "methods": len(first), "tasks": len(ctx.tasks)})
    rows = [run_method(ctx, m, prepared=m in policies) for m in first]
    budgets = _step_budgets(ctx, rows)
    extra = frontier_budgets(cfg.frontier_steps, ctx.steps_full, budgets)
    todo = [(b, registry.baseline(b, cfg, registry.step_budgets(b, budgets))) for b in stepped]
    more = [(b, registry.baseline(b, cfg, extra) if extra else []) for b in stepped]
    n = len(first) + sum(len(ms) for _, ms in todo) + sum(len(ms) for _, ms in more)
    emit({"event": "plan", "methods": n, "tasks": len(ctx.tasks)})
    points: list[tuple[str, MethodResult]] = []
    for (b, main), (_, frontier_only) in zip(todo, more, strict=True):
        done = [run_method(ctx, m) for m in main]
        rows += done
        if frontier_only:
            steps = ", ".join(map(str, extra))
            ctx.emit({"event": "info", "message": f"frontier: {b} for {steps} steps"})
            done += [run_method(ctx, m) for m in frontier_only]
        points += [(b, r) for r in done]
    timed = [*rows, *(r for _, r in points if all(r is not q for q in rows))]
    timing_run = time_methods(ctx, timed, cfg.latency_budget_s)
    model, meta, stats = loaded
    cos = cosine_check(model, meta, stats, ctx.task, chosen, ctx.device)
    others = [
        (m.name, m.model, m.meta, m.stats)
        for m in first
        if type(m) is PolicyMethod  # the extra policies, already loaded
    ]
    local = locality.check(
        ctx, model, cfg.locality_tasks, cfg.locality_source_tasks, cfg.locality_branches, others
    )
    diagnosis = path_diagnosis.diagnose(ctx, model, cfg.path_diagnosis_tasks, gcfg.style)
    frontier = points if cfg.frontier_steps else None
    report = build_report(cfg, ctx, gmeta, rows, cos, local, frontier, timing_run, diagnosis)
    write_report(report, out, cfg.plots)
    return report


def context(
    cfg: EvaluateConfig, gcfg: GenerateConfig, gmeta: GeneratedMeta, emit: Progress
) -> tuple[EvalContext, tuple[Generator, PolicyMeta, NormStats]]:
    """The methods' shared context, and the generating policy ``(model, meta, stats)``."""
    device = resolve_device(cfg.device)
    model, meta, stats = load_policy(gmeta.policy.path, device, gcfg.sample_steps)
    task = task_context(meta, gcfg.store, gcfg.data_root)
    store = task.store.meta
    where = f"Store '{task.store.location}' optimizer settings (config.optim)"
    data = {t: task.task_data(t, device) for t in gmeta.tasks}
    fam = task.family
    net = build_target(task.model_cfg, fam.data.image_shape, fam.cfg.ways, task.frozen).to(device)
    ctx = EvalContext(
        task, data, gcfg.samples, gcfg.seed, device, meta, stats, net,
        store.compat.steps, store.compat.batch_size,
        parse(OptimizersConfig, store.config.get("optim"), where, StoreError), cfg.latency_repeats,
        torch.randn(1, meta.param_count, device=device), cfg.out, emit,
    )  # fmt: skip
    return ctx, (model, meta, stats)


def _step_budgets(ctx: EvalContext, rows: list[MethodResult]) -> tuple[int, ...]:
    """The optimizers' step budgets: the store's T·r and the N of each stepwise row so far."""
    return (ctx.steps_full, *(r.steps for r in rows if r.steps and r.steps > 1))


def frontier_budgets(
    steps: tuple[int, ...], steps_full: int, done: tuple[int, ...]
) -> tuple[int, ...]:
    """The frontier's step budgets not scored already: ``steps`` up to T·r, less ``done``."""
    return tuple(s for s in steps if s <= steps_full and s not in done)
