"""The prototype classifier (Snell et al., 2017) as an ``evaluate`` baseline (``prototype``).

Each class is the mean μ_c of its labelled examples' frozen features and an input goes to the
nearest mean (squared Euclidean distance). Over the ``head`` model (a linear layer on the frozen
extractor's features) that is exactly a set of linear weights:
−‖f − μ_c‖² = 2 μ_c·f − ‖μ_c‖² − ‖f‖², and ‖f‖² is the same for every class, so
w_c = 2 μ_c and b_c = −‖μ_c‖² make the nearest mean the argmax. The baseline writes those
weights and is scored through the same path as every other method. The means come from the
task's training split, the labelled data the optimizer baselines train on (for a few-shot
episode, its support set); they do not depend on the start.

Importing this module registers the baseline (``lohp_cli.methods`` imports it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lohp_cli.config import EvaluateConfig
from lohp_cli.errors import ConfigError
from lohp_cli.methods.base import EvalContext, Starts
from lohp_cli.methods.registry import register
from lohp_cli.tasks.layout import flat_params


def prototypes(x: torch.Tensor, y: torch.Tensor, ways: int) -> torch.Tensor:
    """Class means ``[ways, F]`` of features ``x [M, F]`` with labels ``y [M]`` (label order)."""
    sums = torch.zeros(ways, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, y, x)
    counts = torch.bincount(y, minlength=ways).clamp_min(1).to(x.dtype)  # [ways]
    return sums / counts[:, None]


def prototype_head(
    x: torch.Tensor, y: torch.Tensor, ways: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear weights ``[ways, F]`` and bias ``[ways]`` whose argmax is the nearest class mean."""
    mu = prototypes(x, y, ways)  # [ways, F]
    return 2 * mu, -(mu * mu).sum(1)


def nearest_mean(q: torch.Tensor, x: torch.Tensor, y: torch.Tensor, ways: int) -> torch.Tensor:
    """The reference classifier: the label ``[N]`` of the class mean nearest each query
    ``q [N, F]`` (Euclidean distance)."""
    return torch.cdist(q, prototypes(x, y, ways)).argmin(1)


class PrototypeMethod:
    """Nearest class mean of the frozen features, as the ``head`` model's linear weights."""

    kind = "prototype"
    steps = None  # not a stepwise method
    policy = None

    def __init__(self, name: str = "prototype") -> None:
        self.name = name

    def prepare(self, ctx: EvalContext) -> None:
        net = ctx.task.build_target().to(ctx.device)
        model = ctx.task.model_cfg.name
        if not isinstance(net, nn.Linear):
            raise ConfigError(
                f"The prototype baseline needs a linear classifier over frozen features (the "
                f"head model); this store's target model is '{model}'. Leave prototype out of "
                "--baselines."
            )
        self.ctx, self.net = ctx, net

    def _flat(self, task_id: str) -> torch.Tensor:
        d = self.ctx.data[task_id]
        w, b = prototype_head(d.x_train, d.y_train, self.net.out_features)
        with torch.no_grad():
            self.net.weight.copy_(w)
            self.net.bias.copy_(b)
        return flat_params(self.net)  # [P]

    def weights(self, task_id: str, starts: Starts) -> torch.Tensor:
        return self._flat(task_id).expand(len(starts.theta0), -1).clone()  # [S, P]

    def timer(self, task_id: str) -> Callable[[], Any]:
        """The task's prototype head from its support set, as the latency times it."""
        return lambda: self._flat(task_id)


def prototype_baseline(
    name: str, _cfg: EvaluateConfig, _budgets: tuple[int, ...]
) -> list[PrototypeMethod]:
    return [PrototypeMethod(name)]


register("prototype", prototype_baseline)
