"""A trained learned optimizer as an artifact: building and loading it, and applying it to
problems and to image tasks (what ``evaluate`` and ``evaluate-l2o`` share)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from lohp_cli.artifacts.policy import L2OPolicyMeta, read_l2o_meta
from lohp_cli.artifacts.store import Compat
from lohp_cli.errors import CompatibilityError, DataError
from lohp_cli.l2o import L2O_METHODS
from lohp_cli.l2o.config import L2OConfig, L2OTrainConfig
from lohp_cli.l2o.meta import adapt, functional_step
from lohp_cli.l2o.optimizer import LSTMOptimizer, StepFn, run_trajectory
from lohp_cli.l2o.problems import ImageProblems, Optimizee
from lohp_cli.policy.directory import load_weights, open_policy_dir
from lohp_cli.runtime import derive_seed


def learned_step(
    model: LSTMOptimizer, problem: Optimizee, adapt_steps: int, lc: Any
) -> tuple[StepFn, list[float]]:
    """The optimizer's step function, after ``adapt_steps`` self-adaptation steps on ``problem``.

    Returns ``(step, meta-loss before each adaptation step)``.
    """
    if adapt_steps == 0:
        return model, []
    params, history = adapt(
        model, problem, adapt_steps, lc.adapt_lr, lc.adapt_unroll, objective=lc.objective
    )
    return functional_step(model, {k: v.detach() for k, v in params.items()}), history


def run_learned(
    step: StepFn, model: LSTMOptimizer, problem: Optimizee, steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimize ``problem`` for ``steps``: ``(losses [steps+1, B], final θ [B, P])``."""
    losses, states = run_trajectory(
        step, model.init_state(problem.batch, problem.size), problem, steps, keep_states=True
    )
    assert states is not None
    return losses, states[-1]


def run_on_task(
    model: LSTMOptimizer,
    meta: L2OPolicyMeta,
    net: torch.nn.Module,
    theta0: torch.Tensor,
    data: Any,
    steps: int,
    batch_size: int,
    seed: int,
) -> torch.Tensor:
    """Train the target model on one image task from each of ``theta0 [B, P]``: ``[B, P]``.

    Used by ``lohp evaluate`` to score an L2O policy from the same starts as the other methods;
    an m-l2o policy first adapts itself on the task's training loss from other starts (the given
    ones shifted by a fixed permutation of rows, so no start is scored after adapting on itself
    when B > 1).
    """
    problem = ImageProblems(net, [data] * theta0.shape[0], theta0, batch_size, seed)
    lc = L2OTrainConfig.from_stored(meta.train_config).l2o
    k = lc.adapt_steps if meta.method == "m-l2o" else 0
    support = ImageProblems(net, [data] * theta0.shape[0], theta0.roll(1, 0), batch_size, seed + 1)
    step, _ = learned_step(model, support, k, lc)
    _, theta = run_learned(step, model, problem, steps)
    if not bool(torch.isfinite(theta).all()):
        raise DataError(f"Learned optimizer {meta.method} diverged (non-finite weights).")
    return theta


def l2o_accuracies(
    path: str | Path,
    store_compat: Compat,
    net: torch.nn.Module,
    data: dict[str, Any],
    start: Callable[[str, int], torch.Tensor],
    samples: int,
    steps: int,
    batch_size: int,
    seed: int,
    device: str = "cpu",
) -> tuple[dict[str, Any], list[float]]:
    """Test accuracies of an L2O policy trained on image tasks, for ``lohp evaluate``.

    Each task ``t`` of ``data`` (task id -> TaskTensors) is trained from ``start(t, j) [P]`` for
    j < ``samples`` for ``steps`` steps; returns ``(policy config, accuracies)``.
    """
    from lohp_cli.tasks.scoring import accuracy

    model, meta = load_l2o_for(path, store_compat, device)
    accs: list[float] = []
    for t, d in data.items():
        theta0 = torch.stack([start(t, j) for j in range(samples)])  # [S, P]
        theta = run_on_task(
            model, meta, net, theta0, d, steps, batch_size, derive_seed(seed, "l2o", t)
        )
        accs += [accuracy(net, theta[j], d)[0] for j in range(samples)]
    return meta, accs


def load_l2o_for(
    path: str | Path, store_compat: Compat, device: str = "cpu"
) -> tuple[LSTMOptimizer, L2OPolicyMeta]:
    """:func:`load_l2o`, refusing an optimizer trained for another task family or target model
    than ``store_compat`` (the generated weights')."""
    model, meta = load_l2o(path, device)
    mine = None if meta.store_compat is None else meta.store_compat.to_json()
    if mine != store_compat.to_json():
        raise CompatibilityError(
            f"Learned optimizer '{path}' was trained on {meta.family_name!r} problems, "
            "not on the task family and target model of the generated weights."
        )
    return model, meta


def build_l2o(lc: L2OConfig, seed: int) -> LSTMOptimizer:
    """A freshly initialised learned optimizer (weights from ``seed``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "init"))
        return LSTMOptimizer(lc.arch, lc.hidden, lc.layers, lc.out_scale)


def load_l2o(path: str | Path, device: str = "cpu") -> tuple[LSTMOptimizer, L2OPolicyMeta]:
    """Load an L2O policy directory: ``(optimizer in eval mode, its validated config.json)``."""
    out, data, method = open_policy_dir(path, "lohp train-policy --method l2o")
    if method not in L2O_METHODS:
        raise CompatibilityError(
            f"'{out}' is a {method!r} policy, not a learned optimizer "
            f"({', '.join(L2O_METHODS)}); score it with 'lohp evaluate'."
        )
    meta = read_l2o_meta(data, out)
    try:
        cfg = L2OTrainConfig.from_stored(meta.train_config)
    except (ValidationError, KeyError):
        raise CompatibilityError(
            f"Policy '{out}' has a train config this lohp cannot read; it was made by another "
            "version."
        ) from None
    model = build_l2o(cfg.l2o, cfg.seed)
    load_weights(model, out)
    return model.to(device).eval(), meta
