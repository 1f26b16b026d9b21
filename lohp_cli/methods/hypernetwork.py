"""The hypernetwork baseline: trained here on the generating policy's store (same k, optimizer
subset and seed) through :mod:`lohp_cli.policy.fit`, then scored like any policy directory."""

from __future__ import annotations

from pathlib import Path

from lohp_cli.config import EvaluateConfig, TrainConfig
from lohp_cli.methods.base import EvalContext
from lohp_cli.methods.policy import PolicyMethod


class HypernetworkMethod(PolicyMethod):
    """Trains ``steps`` steps into ``<report>/baselines/hypernetwork`` in ``prepare``."""

    def __init__(self, steps: int, name: str = "hypernetwork") -> None:
        super().__init__(name, "")
        self.train_steps = steps

    def prepare(self, ctx: EvalContext) -> None:
        from lohp_cli.policy.fit import train_policy

        self.path = str(Path(ctx.out) / "baselines" / "hypernetwork")
        message = f"training the hypernetwork baseline into {self.path}"
        ctx.emit({"event": "info", "message": message})
        train_policy(
            TrainConfig.model_validate(
                {
                    "store": ctx.task.store.location,
                    "out": self.path,
                    "method": "hypernetwork",
                    "k": ctx.meta.k,
                    "steps": self.train_steps,
                    "device": ctx.device,
                    "optimizers": ctx.meta.optimizers,
                    "seed": ctx.seed,
                }
            )
        )
        super().prepare(ctx)


def hypernetwork_baseline(
    name: str, cfg: EvaluateConfig, budgets: tuple[int, ...]
) -> list[PolicyMethod]:
    """Trained here unless ``--policy hypernetwork=DIR`` gives one (then that row covers it)."""
    return [] if name in cfg.policies else [HypernetworkMethod(cfg.hypernetwork_steps, name)]
