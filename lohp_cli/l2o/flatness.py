"""Flatness-aware regularizers of seed 003, for batches of optimizees ``theta [B, P]``.

All take ``loss_fn(theta [B, P]) -> [B]`` and return per-problem values ``[B]`` that stay
differentiable with respect to whatever ``theta`` depends on (the learned optimizer's weights, when
``theta`` is the end of an unroll), through double back-propagation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

LossFn = Callable[[torch.Tensor], torch.Tensor]


def _leaf_if_needed(theta: torch.Tensor) -> torch.Tensor:
    return theta if theta.requires_grad else theta.detach().requires_grad_(True)


def hvp(loss_fn: LossFn, theta: torch.Tensor, v: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """Hessian-vector products ``H_b v_b`` ``[B, P]`` of each problem's loss (double backprop)."""
    theta = _leaf_if_needed(theta)
    (g,) = torch.autograd.grad(loss_fn(theta).sum(), theta, create_graph=True)  # [B, P]
    (hv,) = torch.autograd.grad((g * v).sum(), theta, create_graph=create_graph)
    return hv


def hutchinson_trace(
    loss_fn: LossFn, theta: torch.Tensor, probes: int, gen: torch.Generator
) -> torch.Tensor:
    """Hutchinson's estimate of tr(H) ``[B]``: the mean of vᵀHv over Rademacher probes v."""
    theta = _leaf_if_needed(theta)
    (g,) = torch.autograd.grad(loss_fn(theta).sum(), theta, create_graph=True)  # [B, P]
    est = torch.zeros(theta.shape[0], device=theta.device)
    for _ in range(probes):
        v = (torch.randint(0, 2, theta.shape, generator=gen) * 2 - 1).to(theta)  # [B, P] ±1
        (hv,) = torch.autograd.grad((g * v).sum(), theta, create_graph=True, retain_graph=True)
        est = est + (v * hv).sum(-1)
    return est / probes


def top_eigenvalue(
    loss_fn: LossFn, theta: torch.Tensor, iters: int, gen: torch.Generator
) -> torch.Tensor:
    """Largest-magnitude Hessian eigenvalue ``[B]`` by power iteration.

    The iterations run on a detached copy; the final Rayleigh quotient vᵀHv is differentiable.
    """
    v = torch.randn(theta.shape, generator=gen).to(theta)
    v = v / v.norm(dim=-1, keepdim=True)
    for _ in range(iters):
        hv = hvp(loss_fn, theta.detach(), v, create_graph=False)
        v = hv / hv.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return (v * hvp(loss_fn, theta, v, create_graph=True)).sum(-1)


@torch.no_grad()
def langevin_mean(
    loss_fn: LossFn,
    theta: torch.Tensor,
    steps: int,
    lr: float,
    noise: float,
    gamma: float,
    gen: torch.Generator,
) -> torch.Tensor:
    """Mean μ ``[B, P]`` of a short Langevin chain on f(θ') + γ/2 ‖θ' − θ‖², started at θ.

    μ estimates the mean of the local Gibbs measure; the local entropy F_γ(θ) has gradient
    γ (θ − μ) (Chaudhari et al.'s Entropy-SGD identity).
    """
    anchor = theta.detach()
    x = anchor.clone()
    total = torch.zeros_like(x)
    for _ in range(steps):
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(loss_fn(xg).sum(), xg)
        xi = torch.randn(x.shape, generator=gen).to(x)
        x = x - lr * (g + gamma * (x - anchor)) + (2 * lr) ** 0.5 * noise * xi
        total = total + x
    return total / steps


def local_entropy_penalty(theta: torch.Tensor, mu: torch.Tensor, gamma: float) -> torch.Tensor:
    """γ/2 ‖θ − sg(μ)‖² ``[B]``: its gradient in θ is the local-entropy gradient γ (θ − μ)."""
    return 0.5 * gamma * ((theta - mu.detach()) ** 2).sum(-1)
