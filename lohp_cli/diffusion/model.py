"""The diffusion generator: an ε-predicting denoiser over Lo-Hp's backbone registry, trained as a
DDPM on normalised endpoint weights, sampled with DDIM.

The denoiser is built like :class:`~lohp_cli.policy.gaussian.LoHpPolicy`: the backbone of
``policy.backbone`` gets the noisy weights x_t ``[B, P]`` and an embedding ``[B, E]`` of the
diffusion time step t (sinusoidal → MLP, where Lo-Hp embeds its step index) plus the task
condition (MLP), and its first output channel is the predicted ε. Its sampler implements the
generator contract (:class:`lohp_cli.policy.generator.Generator`, :meth:`DiffusionPolicy.rollout`),
so ``generate``, ``evaluate`` and their latency timing run it unchanged: from s_0 = x_S (the start
rule's draw) S DDIM steps to x_0.
"""

from __future__ import annotations

import torch
from torch import nn

from lohp_cli.diffusion.config import DiffusionTrainConfig
from lohp_cli.diffusion.schedule import NoiseSchedule
from lohp_cli.errors import ConfigError
from lohp_cli.policy.backbone import build_backbone, sinusoidal
from lohp_cli.policy.state import StateProbe
from lohp_cli.runtime import derive_seed
from lohp_cli.store.sampler import NormStats
from lohp_cli.tasks.layout import ParamLayout


class DiffusionPolicy(nn.Module):
    """ε_θ(x_t, t, c) over a registered backbone, its noise schedule and DDIM sampler."""

    def __init__(
        self, cfg: DiffusionTrainConfig, size: int, cond_dim: int, layout: ParamLayout | None = None
    ) -> None:
        super().__init__()
        d, pcfg = cfg.diffusion, cfg.policy
        self.size, self.cond_dim = size, cond_dim
        self.schedule = NoiseSchedule.make(d.schedule, d.timesteps)
        self.sample_steps = d.sample_steps
        e = pcfg.emb_dim
        self.emb_dim = e
        self.step_mlp = nn.Sequential(nn.Linear(e, e), nn.SiLU(), nn.Linear(e, e))
        self.cond_mlp = nn.Sequential(nn.Linear(cond_dim, e), nn.SiLU(), nn.Linear(e, e))
        if layout is not None and layout.size != size:
            raise ValueError(f"layout has {layout.size} parameters, the denoiser {size}")
        layout = layout or ParamLayout.flat(size)
        self.backbone = build_backbone(layout, cond_dim, d.timesteps, pcfg)
        self.backbone_takes_condition = bool(getattr(self.backbone, "takes_condition", False))
        # the largest |x_0| coordinate of the training endpoints (set by the fit, saved with the
        # weights): DDIM clamps its predicted x_0 there; inf (no clamp) until it is set
        self.register_buffer("x0_bound", torch.tensor(float("inf")))

    @property
    def timesteps(self) -> int:
        return self.schedule.timesteps

    def set_sample_steps(self, steps: int) -> None:
        """Sample with ``steps`` DDIM steps from now on (1 … T_train; a ConfigError otherwise)."""
        if not 1 <= steps <= self.timesteps:
            raise ConfigError(
                f"{steps} sampling steps: a diffusion policy takes 1 … {self.timesteps} DDIM "
                f"steps (its diffusion.timesteps = {self.timesteps})."
            )
        self.sample_steps = steps

    def _clip(self) -> float | None:
        bound = float(self.x0_bound)
        return bound if bound < float("inf") else None

    def embed(self, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """Embedding ``[B, E]`` of time steps ``t [B]`` and conditions ``cond [B, D]`` (None:
        left out, for a backbone that reads the condition itself)."""
        h = self.step_mlp(sinusoidal(t, self.emb_dim))
        if cond is not None:
            h = h + self.cond_mlp(cond)
        return nn.functional.silu(h)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Predicted ε ``[B, P]`` at noisy weights ``x [B, P]``, steps ``t [B]`` and conditions
        ``cond [B, D]``."""
        if self.backbone_takes_condition:
            out = self.backbone(x, self.embed(t, None), cond)  # [B, 2, P]
        else:
            out = self.backbone(x, self.embed(t, cond))
        return out[:, 0]

    def loss(
        self, x0: torch.Tensor, cond: torch.Tensor, t: torch.Tensor, eps: torch.Tensor
    ) -> torch.Tensor:
        """DDPM's simple loss: mean of (ε_θ(x_t, t, c) − ε)² for endpoints ``x0 [B, P]``,
        ``cond [B, D]``, steps ``t [B]`` and noise ``eps [B, P]``."""
        xt = self.schedule.q_sample(x0, t, eps)  # [B, P]
        return ((self(xt, t, cond) - eps) ** 2).mean()

    def rollout(
        self,
        s: torch.Tensor,
        start: int,
        cond: torch.Tensor,
        opt: torch.Tensor | None = None,
        mode: str = "mean",
        gen: torch.Generator | None = None,
        stop: int | None = None,
        grad: bool = False,
        probe: StateProbe | None = None,
    ) -> torch.Tensor:
        """DDIM from x_S = ``s [B, P]`` in ``sample_steps`` steps: every state ``[B, S+1, P]``,
        the last the generated (normalised) weights. ``mode`` "mean": η = 0 (deterministic);
        "sample": η = 1 with noise from ``gen``. The signature is the generator contract's
        (:class:`~lohp_cli.policy.generator.Generator`; ``start``, ``opt``, ``stop`` and
        ``probe`` are not used: a diffusion policy always runs all S)."""
        if start != 0 or stop is not None:
            raise ValueError("a diffusion policy samples all of its S steps")
        eta = 0.0 if mode == "mean" else 1.0
        taus = self.schedule.sampling_steps(self.sample_steps)
        out = [s]
        with torch.set_grad_enabled(grad):
            for i, t in enumerate(taus):
                t_prev = taus[i + 1] if i + 1 < len(taus) else None
                eps = self(s, torch.full((s.shape[0],), t, device=s.device), cond)
                noise = None
                if eta > 0 and t_prev is not None:
                    noise = torch.randn(s.shape, generator=gen, device="cpu").to(s)
                s = self.schedule.ddim_step(s, eps, t, t_prev, eta, noise, self._clip())  # [B, P]
                out.append(s)
        return torch.stack(out, dim=1)


def build_diffusion(
    cfg: DiffusionTrainConfig,
    size: int,
    cond_dim: int,
    n_steps: int,
    stats: NormStats,
    classes: int = 0,
    layout: ParamLayout | None = None,
) -> DiffusionPolicy:
    """The denoiser of a diffusion policy (initialised from ``cfg.seed``); the signature of
    :func:`lohp_cli.policy.directory.build_model`, registered for ``load_policy``. ``n_steps``,
    ``stats`` and ``classes`` are not needed (S is the config's ``diffusion.sample_steps``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, "init"))
        return DiffusionPolicy(cfg, size, cond_dim, layout)
