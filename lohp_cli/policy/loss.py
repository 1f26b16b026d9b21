"""Sub-trajectory balance for Lo-Hp, in small documented pieces (after torchgfn's SubTB).

For states s_0 … s_L of one (sub-)trajectory, matched offline states θ_0 … θ_L (targets), per-step
log-ratios r_i = log P_F(s_{i+1}|s_i) − log P_B(s_i|s_{i+1}), coefficients z_t and sharpness β_t:

    log F^{(n)}_t(s) = z_t − β_t ||s − θ_n||²       (or β_{t,n} per pair, see :func:`path_beta`)
    δ(m, n) = log F^{(n)}_m(s_m) + Σ_{i=m}^{n−1} r_i − log F^{(n)}_n(s_n)          (m < n)

and the loss is Σ_{m<n} w(m, n) δ(m, n)² / P² with weights w ∝ λ^{n−m} summing to one. The 1/P² is a
uniform scale (the balance is unchanged) that keeps the loss readable for any parameter count.
"""

from __future__ import annotations

import torch

from lohp_cli.errors import DataError


def cumulative_log_ratios(log_ratios: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` -> ``[B, L+1]`` with C_0 = 0 and C_j = Σ_{i<j} r_i."""
    zero = torch.zeros_like(log_ratios[:, :1])
    return torch.cat([zero, log_ratios.cumsum(dim=1)], dim=1)


def pairwise_sq_dist(states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``D[b, m, n] = ||s_m − θ_n||²``; inputs ``[B, L+1, P]`` -> ``[B, L+1, L+1]``."""
    return torch.cdist(states, targets, compute_mode="donot_use_mm_for_euclid_dist") ** 2


def log_flows(z: torch.Tensor, beta: torch.Tensor, sq_dist: torch.Tensor) -> torch.Tensor:
    """``logF[b, m, n] = z[b, m] − β · D[b, m, n]``: flow of state m w.r.t. endpoint n, with
    ``β[m]`` (``beta [L+1]``) or ``β[b, m, n]`` (``beta [B, L+1, L+1]``, per pair)."""
    b = beta.view(1, -1, 1) if beta.dim() == 1 else beta
    return z.unsqueeze(-1) - b * sq_dist


PATH_BETA_CAP = 4.0  # β_{t,n} ≤ 4 × the one-step β_t: a sub-trajectory that returns near its start


def path_beta(targets: torch.Tensor, sigma: torch.Tensor, one_step: torch.Tensor) -> torch.Tensor:
    """Pair-level sharpness ``β [B, L+1, L+1]`` from the matched offline states ``targets
    [B, L+1, P]``, the step σ_i of the window ``sigma [L]`` and the one-step ``β_t [L+1]``.

    With a fixed Brownian P_B, the policy that takes the optimizer's own steps (f_i = Δ_i) has
    Σ_{i=t}^{n−1} r_i = Σ ||Δ_i||²/(2σ_i²) over a sub-trajectory, the largest value the sum can
    take (each r_i is maximised by f_i = Δ_i). The offline residual δ(t, n) = z_t − z_n then
    vanishes for every pair exactly when

        β_{t,n} = Σ_{i=t}^{n−1} (||Δ_i||²/σ_i²) / (2 ||θ_t − θ_n||²),

    so that f = Δ is the unique balanced policy. A straight sub-trajectory of equal steps gives
    1/(2 Σ σ_i²) (the scalar ``auto`` β overshoots by n − t); a random walk gives 1/(2σ²) in
    expectation. The diagonal (the endpoint's own flow) keeps the one-step β; β_{t,n} is capped
    at ``PATH_BETA_CAP`` × β_t where ||θ_t − θ_n|| is near zero.
    """
    steps = ((targets[:, 1:] - targets[:, :-1]) ** 2).sum(-1) / sigma.view(1, -1) ** 2  # [B, L]
    cum = cumulative_log_ratios(steps)  # [B, L+1]: Σ_{i<j} ||Δ_i||²/σ_i²
    spent = cum.unsqueeze(1) - cum.unsqueeze(2)  # [B, t, n] = Σ_{i=t}^{n−1}
    dist = pairwise_sq_dist(targets, targets)  # [B, t, n] = ||θ_t − θ_n||²
    cap = (PATH_BETA_CAP * one_step).view(1, -1, 1)
    beta = torch.minimum(spent / (2 * dist.clamp_min(1e-12)), cap)
    upper = torch.ones_like(dist, dtype=torch.bool).triu(1)
    return torch.where(upper, beta, one_step.view(1, -1, 1).expand_as(beta)).detach()


def subtb_residuals(cum: torch.Tensor, logf: torch.Tensor) -> torch.Tensor:
    """``δ[b, m, n] = logF[b, m, n] + C_n − C_m − logF[b, n, n]`` (only m < n is meaningful)."""
    diag = torch.diagonal(logf, dim1=1, dim2=2)  # [B, L+1]: logF[b, n, n]
    return logf + cum.unsqueeze(1) - cum.unsqueeze(2) - diag.unsqueeze(1)


def pair_weights(
    length: int,
    lam: float,
    mode: str = "lambda",
    max_len: int | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``W [L+1, L+1]``: λ^{n−m} (or 1) on pairs m < n (n − m ≤ max_len), normalised to sum 1."""
    i = torch.arange(length, device=device)
    gap = (i.view(1, -1) - i.view(-1, 1)).float()  # gap[m, n] = n − m
    mask = gap > 0
    if max_len is not None:
        mask &= gap <= max_len
    w = torch.where(
        mask, lam**gap if mode == "lambda" else torch.ones_like(gap), torch.zeros_like(gap)
    )
    return w / w.sum()


def subtb_loss(residuals: torch.Tensor, weights: torch.Tensor, size: int) -> torch.Tensor:
    """Weighted mean of squared residuals (scaled by 1/size²): a scalar."""
    return ((residuals / size) ** 2 * weights).sum(dim=(1, 2)).mean()


def check_finite(value: torch.Tensor, what: str, step: int, run_ids: list[str]) -> None:
    """Raise :class:`DataError` naming the step and runs when ``value`` has NaN/Inf."""
    if not torch.isfinite(value).all():
        shown = ", ".join(run_ids[:3]) + (" …" if len(run_ids) > 3 else "")
        raise DataError(
            f"Non-finite {what} at training step {step} (runs {shown}); lower the learning rate "
            "or check the store with 'lohp inspect --verify'."
        )


def balance_loss(
    log_ratios: torch.Tensor,
    states: torch.Tensor,
    targets: torch.Tensor,
    z: torch.Tensor,
    beta: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """SubTB loss of trajectories ``states`` against matched ``targets`` (both ``[B, L+1, P]``).

    ``log_ratios [B, L]``, ``z [B, L+1]``, ``beta [L+1]``, ``weights [L+1, L+1]``.
    """
    logf = log_flows(z, beta, pairwise_sq_dist(states, targets))
    delta = subtb_residuals(cumulative_log_ratios(log_ratios), logf)
    return subtb_loss(delta, weights, states.shape[-1])


def step_sq_error(f: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """||target − f||² over the last axis: ``[..., P]`` -> ``[...]``; the exponent of the
    Gaussian step likelihood N(f, σ² I) of a step ``target`` (times 2σ²)."""
    return ((target - f) ** 2).sum(-1)


def gaussian_step_nll(sq_error: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The negative log-likelihood of a step under the forward policy's N(f, σ² I), without the
    normaliser, from its :func:`step_sq_error`: ||target − f||² / (2σ²) ``[...]`` (``sigma``
    broadcast against ``sq_error``, e.g. σ_i ``[L]`` for ``[B, L]``)."""
    return sq_error / (2 * sigma**2)


def step_nll(f: torch.Tensor, target: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """DAgger's term: the :func:`gaussian_step_nll` of relabelled steps ``target [B, P]`` at
    their states, ``f [B, P]`` the policy's mean steps (both in normalised units), averaged over
    the batch and per coordinate: mean_b ||f_b − target_b||² / (2 σ² P). Zero exactly when the
    policy's mean step is the target; ``sigma`` a scalar. The batch mean is taken before the one
    division (as it always was: dividing each step first would change the last bits)."""
    return step_sq_error(f, target).mean() / (2 * sigma**2 * f.shape[-1])
