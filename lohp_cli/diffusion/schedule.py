"""β schedules, the forward process and the DDIM update (Ho et al. 2020; Song et al. 2021).

Time steps t = 0 … T−1 (T = T_train); ᾱ_t = Π_{i ≤ t} (1 − β_i), so t = 0 is the least noisy and
x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε. Schedules are kept in float64 and cast where they are used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

MAX_BETA = 0.999  # improved DDPM's cap: keeps every 1 − β_t away from zero


def linear_betas(timesteps: int) -> torch.Tensor:
    """DDPM's linear β ``[T]``: 1e-4 … 0.02 for T = 1000, both scaled by 1000/T (Nichol &
    Dhariwal), capped at ``MAX_BETA``."""
    scale = 1000.0 / timesteps
    betas = torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)
    return betas.clamp(max=MAX_BETA)


def cosine_betas(timesteps: int, s: float = 0.008) -> torch.Tensor:
    """Improved DDPM's cosine β ``[T]``: ᾱ(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s) · π/2),
    β_t = 1 − ᾱ(t+1)/ᾱ(t), capped at ``MAX_BETA``."""
    t = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2  # [T+1]
    return (1 - f[1:] / f[:-1]).clamp(max=MAX_BETA)


@dataclass(frozen=True)
class NoiseSchedule:
    """A β schedule and what DDPM training and DDIM sampling read off it."""

    betas: torch.Tensor  # [T] float64

    @classmethod
    def make(cls, kind: str, timesteps: int) -> NoiseSchedule:
        """``kind`` "linear" or "cosine" with ``timesteps`` steps."""
        if kind == "linear":
            return cls(linear_betas(timesteps))
        if kind == "cosine":
            return cls(cosine_betas(timesteps))
        raise ValueError(f"unknown β schedule {kind!r}; choose linear or cosine")

    @property
    def timesteps(self) -> int:
        return self.betas.shape[0]

    @property
    def alpha_bar(self) -> torch.Tensor:
        """ᾱ_t ``[T]`` (float64)."""
        return torch.cumprod(1 - self.betas, dim=0)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε for ``x0``, ``eps [B, P]`` and ``t [B]`` -> ``[B, P]``."""
        ab = self.alpha_bar.to(x0.device)[t].to(x0.dtype).unsqueeze(-1)  # [B, 1]
        return ab.sqrt() * x0 + (1 - ab).sqrt() * eps

    def sampling_steps(self, steps: int) -> list[int]:
        """The S time steps DDIM visits, descending: τ_i = round((i + 1)·T/S) − 1 for
        i = S−1 … 0 (the first is T − 1, where x_S ~ N(0, I) belongs; S = T visits every t)."""
        if not 1 <= steps <= self.timesteps:
            raise ValueError(f"DDIM steps must be 1 … {self.timesteps}, got {steps}")
        taus = [round((i + 1) * self.timesteps / steps) - 1 for i in range(steps)]
        return taus[::-1]

    def ddim_step(
        self,
        x: torch.Tensor,
        eps: torch.Tensor,
        t: int,
        t_prev: int | None,
        eta: float = 0.0,
        noise: torch.Tensor | None = None,
        clip: float | None = None,
    ) -> torch.Tensor:
        """One DDIM update from x_t ``[B, P]`` with predicted ε ``[B, P]`` to x_{t_prev}
        (``t_prev`` None: to x_0, ᾱ = 1). η = 0 is deterministic; η > 0 adds σ_t ``noise``
        with σ_t = η √((1 − ᾱ_prev)/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_prev) (η = 1: DDPM's posterior).
        ``clip``: clamp the predicted x_0 to [−clip, clip] and take ε consistent with it (the
        usual remedy for the error 1/√ᾱ_t amplifies at the noisiest steps).
        """
        ab = self.alpha_bar
        a_t = float(ab[t])
        a_prev = 1.0 if t_prev is None else float(ab[t_prev])
        x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)  # predicted x_0
        if clip is not None:
            x0 = x0.clamp(-clip, clip)
            eps = (x - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
        sigma = 0.0
        if eta > 0:
            sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        out = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps
        if sigma > 0:
            if noise is None:
                raise ValueError("η > 0 needs noise")
            out = out + sigma * noise
        return out
