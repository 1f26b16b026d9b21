"""Learned optimizers as ``lohp evaluate`` methods; importing this module registers them.

A policy directory of a learned optimizer (``--policy NAME=DIR``) trains the target model from the
shared starts θ_0 for the store's T·r steps; the baselines ``l2o``, ``l2o-tt``, ``l2o-flat`` and
``m-l2o`` only insist that a policy of that name was given. Only the evaluate stage imports this
module, so the core never depends on the plug-in.
"""

from __future__ import annotations

from typing import Any

import torch

from lohp_cli.config import EvaluateConfig
from lohp_cli.errors import ConfigError
from lohp_cli.l2o import L2O_METHODS
from lohp_cli.l2o.apply import load_l2o_for, run_on_task
from lohp_cli.methods.base import EvalContext, Method, Starts
from lohp_cli.methods.registry import register, register_policy_kind
from lohp_cli.runtime import derive_seed


class L2OMethod:
    """A trained learned optimizer applied to each held-out task (not timed)."""

    kind = "l2o"
    policy: dict[str, Any] | None = None

    def __init__(self, name: str, path: str) -> None:
        self.name, self.path = name, path
        self.steps: int | None = None

    def prepare(self, ctx: EvalContext) -> None:
        self.ctx = ctx
        self.model, self.meta = load_l2o_for(self.path, ctx.meta.store_compat, ctx.device)
        self.steps = ctx.steps_full

    def weights(self, task_id: str, starts: Starts) -> torch.Tensor:
        c = self.ctx
        seed = derive_seed(c.seed, "l2o", task_id)
        return run_on_task(
            self.model, self.meta, c.net, starts.theta0, c.data[task_id], c.steps_full,
            c.batch_size, seed,
        )  # fmt: skip

    def timer(self, task_id: str) -> None:
        """Learned optimizers are not timed (their rows have no latency)."""
        return None


def paired(name: str, cfg: EvaluateConfig, budgets: tuple[int, ...]) -> list[Method]:
    """A learned-optimizer baseline is the ``--policy`` of the same name; refuse it without one."""
    if name not in cfg.policies:
        raise ConfigError(
            f"Baseline {name!r} is a learned optimizer: pass its policy with --policy "
            f"{name}=DIR (train one with 'lohp train-policy --method {name}')."
        )
    return []


for _method in L2O_METHODS:
    register(_method, paired)
    register_policy_kind(_method, L2OMethod)
