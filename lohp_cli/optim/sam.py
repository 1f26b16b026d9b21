"""Sharpness-Aware Minimization (Foret et al. 2021), following davda54/sam.

One SAM step takes two forward/backward passes:

1. at w, gradient g; ascend to w + e with e = ρ · s ⊙ g / ||s ⊙ g|| where s = |w| for adaptive SAM
   (ASAM) and s = 1 otherwise (for ASAM the step is e = ρ · s² ⊙ g / ||s ⊙ g||);
2. at w + e, gradient g'; restore w and let the base optimizer step with g'.

Batch-norm running statistics are updated only in the first pass: during the second pass every
BatchNorm's momentum is set to 0 (``bn_frozen``), so the perturbed weights never leak into them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn


class SAM(torch.optim.Optimizer):
    """SAM wrapper around a base optimizer built over the same parameters."""

    def __init__(
        self,
        params,
        base_optimizer: Callable[..., torch.optim.Optimizer],
        rho: float = 0.05,
        adaptive: bool = False,
        **base_kwargs,
    ) -> None:
        if rho <= 0:
            raise ValueError(f"rho must be positive, got {rho}")
        super().__init__(params, dict(rho=rho, adaptive=adaptive))
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups

    @torch.no_grad()
    def _grad_norm(self) -> torch.Tensor:
        norms = [
            ((torch.abs(p) if g["adaptive"] else 1.0) * p.grad).norm(p=2)
            for g in self.param_groups
            for p in g["params"]
            if p.grad is not None
        ]
        if not norms:
            return torch.zeros(())
        return torch.stack(norms).norm(p=2)

    @torch.no_grad()
    def first_step(self) -> None:
        """Move to the worst-case neighbour w + e (uses the gradients at w)."""
        norm = self._grad_norm()
        for g in self.param_groups:
            scale = g["rho"] / (norm + 1e-12)
            for p in g["params"]:
                if p.grad is None:
                    continue
                e = (torch.pow(p, 2) if g["adaptive"] else 1.0) * p.grad * scale
                p.add_(e)
                self.state[p]["e_w"] = e

    @torch.no_grad()
    def second_step(self) -> None:
        """Return to w and take the base step with the gradients at w + e."""
        for g in self.param_groups:
            for p in g["params"]:
                if "e_w" in self.state[p]:
                    p.sub_(self.state[p].pop("e_w"))
        self.base_optimizer.step()

    def step(self, closure=None):  # type: ignore[override]
        """Full SAM step; ``closure`` zeroes grads, runs forward + backward, returns the loss."""
        if closure is None:
            raise ValueError("SAM.step needs a closure that recomputes the loss")
        closure = torch.enable_grad()(closure)
        self.first_step()
        loss = closure()
        self.second_step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none=set_to_none)


@contextmanager
def bn_frozen(model: nn.Module) -> Iterator[None]:
    """Inside the block, BatchNorm layers use batch stats but leave running stats alone."""
    saved = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            saved.append(
                (
                    m,
                    m.momentum,
                    m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None,
                )
            )
            m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, tracked in saved:
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)
