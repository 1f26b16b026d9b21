"""Meta-train a learned optimizer (l2o, l2o-tt, l2o-flat, m-l2o) into a policy directory.

One training *step* is one episode: B fresh problems of one task optimised for ``l2o.horizon``
steps, cut into truncated unrolls. l2o, l2o-tt and l2o-flat update the optimizer after every
unroll (truncated BPTT); m-l2o adapts a copy of the optimizer to the task on other problems first,
then, after every unroll on the task's query problems, applies the gradient at the adapted copy to
the original weights (first-order meta-gradient; as many meta-updates per episode as l2o).
Resumable at episode boundaries: every episode draws its problems and noise from seeds of
(seed, episode), so a resumed run ends with the same weights as an uninterrupted one.

The policy directory follows the Lo-Hp conventions: ``config.json`` (kind ``lohp.policy``, method,
family, train config, provenance, complete flag), ``model.safetensors``, ``metrics.jsonl`` and
``state/`` (written by :func:`lohp_cli.checkpoint.save_state`), all written atomically.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lohp_cli.artifacts.policy import new_l2o_meta
from lohp_cli.checkpoint import write_checkpoint
from lohp_cli.errors import ConfigError, DataError
from lohp_cli.l2o import L2O_METHODS
from lohp_cli.l2o.apply import build_l2o
from lohp_cli.l2o.config import L2OTrainConfig
from lohp_cli.l2o.meta import (
    adapt,
    flatness_terms,
    functional_step,
    imitation_loss,
    meta_loss,
    unroll,
)
from lohp_cli.l2o.optimizer import (
    LSTMOptimizer,
    analytical,
    detach_state,
    run_trajectory,
    tune_lr,
)
from lohp_cli.l2o.problems import ImageProblemFamily, ProblemFamily, make_problem_family
from lohp_cli.policy.directory import store_fingerprint
from lohp_cli.policy.rundir import TrainResult
from lohp_cli.policy.skeleton import TrainingRun
from lohp_cli.runtime import derive_seed, provenance, resolve_device


def check_method_settings(cfg: L2OTrainConfig) -> None:
    """Settings a method needs, as one :class:`ConfigError` listing every problem."""
    lc, problems = cfg.l2o, []
    if cfg.method == "l2o-flat" and lc.hessian_weight == 0 and lc.entropy_weight == 0:
        problems.append(
            "l2o-flat with l2o.hessian_weight=0 and l2o.entropy_weight=0 has no flatness term; "
            "give one a positive weight"
        )
    if cfg.method == "m-l2o" and lc.adapt_steps == 0:
        problems.append("m-l2o needs l2o.adapt_steps >= 1")
    if cfg.method == "l2o-tt" and lc.family != "store" and lc.teacher == "sam":
        problems.append(
            "l2o.teacher=sam needs a store of SAM runs; synthetic families imitate adam or sgd"
        )
    if problems:
        raise ConfigError("Invalid config: " + "; ".join(problems) + ".")


def unroll_length(cfg: L2OTrainConfig, episode: int) -> int:
    """The unroll length of an episode: fixed, or l2o-tt's progressive stages."""
    lc = cfg.l2o
    if cfg.method != "l2o-tt":
        return lc.unroll
    stages = lc.progressive
    return stages[min(len(stages) - 1, episode * len(stages) // cfg.steps)]


def imitation_weight(cfg: L2OTrainConfig, episode: int) -> float:
    """l2o-tt's imitation weight: ``imitation_weight`` decaying linearly to 0 (0 otherwise)."""
    lc = cfg.l2o
    if cfg.method != "l2o-tt" or lc.imitation_weight == 0:
        return 0.0
    if lc.imitation_decay == 0:
        return lc.imitation_weight
    return lc.imitation_weight * max(0.0, 1.0 - episode / (lc.imitation_decay * cfg.steps))


def _family_fingerprint(cfg: L2OTrainConfig, family: ProblemFamily) -> dict[str, Any]:
    if isinstance(family, ImageProblemFamily):
        return store_fingerprint(family.store)
    return {"family": family.describe()}


def _config_json(
    cfg: L2OTrainConfig,
    family: ProblemFamily,
    fingerprint: dict[str, Any],
    teacher: dict[str, Any] | None,
    device: str,
    step: int,
    complete: bool,
) -> dict[str, Any]:
    """The learned optimizer's config.json (a validated ``L2OPolicyMeta``, as JSON)."""
    image: dict[str, Any] = {}
    if isinstance(family, ImageProblemFamily):
        image = {
            "store_location": family.store.location,
            "store_compat": family.compat.to_json(),
            "param_count": sum(p.numel() for p in family.net.parameters()),
        }
    return new_l2o_meta(
        method=cfg.method,
        family=family.describe(),
        store_fingerprint=fingerprint,
        teacher=teacher,
        train_config=cfg.model_dump(mode="json"),
        trained_steps=step,
        complete=complete,
        provenance=provenance(device),
        **image,
    ).to_json()


def _teacher(
    cfg: L2OTrainConfig, family: ProblemFamily, instances: int, emit: Any
) -> dict[str, Any] | None:
    """l2o-tt's teacher: stored runs (image families) or a tuned on-the-fly optimizer."""
    if cfg.method != "l2o-tt" or cfg.l2o.imitation_weight == 0:
        return None
    lc = cfg.l2o
    if isinstance(family, ImageProblemFamily):
        return {"name": lc.teacher, "source": "store"}
    emit({"event": "info", "message": f"tuning the {lc.teacher} teacher's lr on source tasks"})
    lr, scores = tune_lr(family, lc.teacher, lc.lr_grid, lc.horizon, 4, instances, cfg.seed)
    emit({"event": "info", "message": f"teacher {lc.teacher} lr = {lr}"})
    return {"name": lc.teacher, "source": "on-the-fly", "lr": lr, "scores": scores}


def train_l2o(cfg: L2OTrainConfig, progress: Any = None) -> TrainResult:
    """Meta-train (or resume) a learned optimizer as configured (the steps of
    :mod:`lohp_cli.policy.skeleton`, one episode a step)."""
    emit = progress or (lambda _e: None)
    t_start = time.perf_counter()
    if cfg.method not in L2O_METHODS:
        raise ConfigError(f"method {cfg.method!r} is not an L2O method ({', '.join(L2O_METHODS)}).")
    check_method_settings(cfg)
    lc = cfg.l2o
    device = resolve_device(cfg.device)
    emit({"event": "device", "device": device, "world_size": 1})
    family = make_problem_family(lc, cfg.store if lc.family == "store" else None)
    instances = lc.instances or cfg.batch_size
    fingerprint = _family_fingerprint(cfg, family)
    run = TrainingRun.open(cfg, fingerprint, emit, t_start)

    model = build_l2o(lc, cfg.seed).to(device)
    meta_opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    teacher: dict[str, Any] | None = None

    def on_resume(trainer: dict[str, Any], _start: int) -> None:
        nonlocal teacher
        teacher = trainer.get("teacher")

    def on_fresh() -> None:
        nonlocal teacher
        teacher = _teacher(cfg, family, instances, emit)
        run.write_config(_config_json(cfg, family, fingerprint, teacher, device, 0, False))

    run.resume_state(model, meta_opt, on_resume, on_fresh)

    def write_policy(step: int, complete: bool) -> None:
        config = _config_json(cfg, family, fingerprint, teacher, device, step, complete)
        write_checkpoint(run.out, model, meta_opt, {"step": step, "teacher": teacher}, config)

    def one_episode(step: int) -> tuple[float, dict[str, Any]]:
        terms = run_episode(cfg, model, meta_opt, family, instances, teacher, step, device)
        return terms["loss"], terms

    n_params = sum(p.numel() for p in model.parameters())
    emit(
        {
            "event": "info",
            "message": f"meta-training {cfg.method} ({n_params:,} weights, {lc.arch}) on "
            f"{family.describe()['name']} for {cfg.steps} episode(s) of {lc.horizon} steps × "
            f"{instances} problem(s)",
        }
    )
    step, last, _ = run.loop(one_episode, write_policy)
    run.finish(step, write_policy)
    return run.result(step, step >= cfg.steps, last)


def _check(value: torch.Tensor, what: str, episode: int) -> None:
    if not bool(torch.isfinite(value).all()):
        raise DataError(
            f"Non-finite {what} in meta-training episode {episode}; lower --lr or "
            "l2o.out_scale, or shorten l2o.unroll."
        )


@dataclass
class _Episode:
    """What one episode optimises: its problems, the step it unrolls (m-l2o: the copy adapted on
    support problems, whose weights are ``params``), and the teacher's states to imitate (every
    ``record_every`` steps) where it has them."""

    problem: Any
    step_fn: Any
    params: dict[str, torch.Tensor] | None
    states: torch.Tensor | None
    record_every: int


def _episode(
    cfg: L2OTrainConfig,
    model: LSTMOptimizer,
    family: ProblemFamily,
    instances: int,
    teacher: dict[str, Any] | None,
    episode: int,
    w_imit: float,
) -> _Episode:
    """The problems of ``episode`` (drawn from seeds of (seed, episode)), m-l2o's adaptation, and
    the teacher's states (stored runs, or an on-the-fly trajectory)."""
    lc = cfg.l2o
    index = derive_seed(cfg.seed, "episode", episode)
    states, record_every = None, 1
    if w_imit > 0 and isinstance(family, ImageProblemFamily):
        problem, states, record_every = family.sample_stored(lc.teacher, index, cfg.seed, instances)
    else:
        problem = family.sample(
            "source", index, cfg.seed, instances * (2 if cfg.method == "m-l2o" else 1)
        )
    params: dict[str, torch.Tensor] | None = None
    if cfg.method == "m-l2o":
        support, problem = (
            problem.subset(slice(0, instances)),
            problem.subset(slice(instances, 2 * instances)),
        )
        params, _ = adapt(
            model, support, lc.adapt_steps, lc.adapt_lr, lc.adapt_unroll, objective=lc.objective
        )
        step_fn = functional_step(model, params)
    else:
        step_fn = model
    if w_imit > 0 and states is None and teacher is not None:
        t_step, t_init = analytical(teacher["name"], teacher["lr"])
        _, states = run_trajectory(
            t_step, t_init(problem.batch, problem.size), problem, lc.horizon, keep_states=True
        )
    return _Episode(problem, step_fn, params, states, record_every)


def _unroll_loss(
    cfg: L2OTrainConfig,
    model: LSTMOptimizer,
    ep: _Episode,
    u: Any,
    initial: torch.Tensor,
    imit_state: Any,
    seg_start: int,
    seg: int,
    w_imit: float,
    gen: torch.Generator,
    device: str,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], Any]:
    """The meta-loss of one unroll ``u`` (steps ``seg_start`` … ``seg_start + seg``), with
    l2o-tt's imitation and l2o-flat's flatness terms: ``(loss, terms, imitation state)``."""
    lc, states, record_every = cfg.l2o, ep.states, ep.record_every
    loss = meta_loss(u.losses, initial, lc.objective)
    terms = {"meta": loss}
    if states is not None and w_imit > 0:
        # the teacher transitions j -> j+1 that start inside this unroll, each counted once
        lo = -(-seg_start // record_every)
        hi = min(-(-(seg_start + seg) // record_every), len(states) - 1)
        if hi > lo:
            imit, imit_state = imitation_loss(
                model, ep.problem, states[lo : hi + 1].to(device), imit_state,
                lo * record_every, record_every,
            )  # fmt: skip
            terms["imitation"] = imit
            loss = loss + w_imit * imit
    if cfg.method == "l2o-flat":
        flat = flatness_terms(ep.problem, u.theta, seg_start + seg, lc, gen)
        if "hessian" in flat:
            terms["hessian"] = flat["hessian"]
            loss = loss + lc.hessian_weight * flat["hessian"]
        if "entropy" in flat:
            terms["entropy"] = flat["entropy"]
            loss = loss + lc.entropy_weight * flat["entropy"]
    return loss, terms, imit_state


def _meta_update(
    cfg: L2OTrainConfig,
    model: LSTMOptimizer,
    meta_opt: torch.optim.Optimizer,
    loss: torch.Tensor,
    params: dict[str, torch.Tensor] | None,
    episode: int,
) -> None:
    """One meta-update on ``loss`` (the meta-gradient clipped at ``cfg.grad_clip``; non-finite
    values raise)."""
    _check(loss, "meta-loss", episode)
    meta_opt.zero_grad(set_to_none=True)
    loss.backward()
    if params is not None:
        # first-order M-L2O: the gradient at the adapted weights moves the original ones,
        # after every query unroll (as many meta-updates per episode as l2o)
        for name, p in model.named_parameters():
            g = params[name].grad
            p.grad = None if g is None else g.clone()
            params[name].grad = None
    gnorm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    _check(gnorm, "meta-gradient", episode)
    meta_opt.step()


def run_episode(
    cfg: L2OTrainConfig,
    model: LSTMOptimizer,
    meta_opt: torch.optim.Optimizer,
    family: ProblemFamily,
    instances: int,
    teacher: dict[str, Any] | None,
    episode: int,
    device: str,
) -> dict[str, float]:
    """One meta-training episode; returns its logged terms (means over its unrolls)."""
    lc = cfg.l2o
    length = unroll_length(cfg, episode)
    w_imit = imitation_weight(cfg, episode)
    gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "noise", episode))
    ep = _episode(cfg, model, family, instances, teacher, episode, w_imit)
    problem = ep.problem
    theta = problem.init().to(device)
    state = model.init_state(problem.batch, problem.size, device)
    imit_state = model.init_state(problem.batch, problem.size, device)
    with torch.no_grad():
        initial = problem.loss(theta, 0)
    _check(initial, "initial loss", episode)
    sums: dict[str, float] = {}
    count = 0
    for seg_start in range(0, lc.horizon, length):
        seg = min(length, lc.horizon - seg_start)
        u = unroll(ep.step_fn, problem, theta, state, seg_start, seg, lc.second_order)
        loss, terms, imit_state = _unroll_loss(
            cfg, model, ep, u, initial, imit_state, seg_start, seg, w_imit, gen, device
        )
        _meta_update(cfg, model, meta_opt, loss, ep.params, episode)
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        count += 1
        theta, state = u.theta.detach(), detach_state(u.state)
        imit_state = detach_state(imit_state)
    with torch.no_grad():
        final = problem.loss(theta, lc.horizon) / initial.abs().clamp_min(1e-12)
    out = {k: round(v / count, 6) for k, v in sums.items()}
    out["loss"] = out.pop("meta")
    out["final_ratio"] = round(float(final.mean()), 6)
    out["unroll"] = length
    if w_imit > 0:
        out["imitation_weight"] = round(w_imit, 4)
    return out
