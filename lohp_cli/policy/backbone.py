"""Policy backbones and their registry: a 1-D U-Net over the padded parameter vector (the
paper's), an MLP, and attention over the target network's neurons (``rows``,
:mod:`lohp_cli.policy.rows`).

Every backbone maps ``(s [B, P], emb [B, E])`` to two output channels ``[B, 2, P]``: the forward
mean step f and the backward mean step b. Output layers start at zero: an untrained policy is the
identity. A builder registered with :func:`register_backbone` receives the target model's
parameter layout, the condition size, the number of policy steps and the policy config;
:class:`~lohp_cli.policy.gaussian.LoHpPolicy` takes the module it returns. A backbone whose
``takes_condition`` attribute is True is called as ``(s, emb, cond)`` with the normalised task
condition, and the policy leaves the condition out of ``emb``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from lohp_cli.config import PolicyConfig
from lohp_cli.errors import ConfigError
from lohp_cli.policy.rows import RowSetBackbone
from lohp_cli.tasks.layout import ParamLayout

BackboneBuilder = Callable[[ParamLayout, int, int, PolicyConfig], nn.Module]
BACKBONES: dict[str, BackboneBuilder] = {}


def register_backbone(name: str) -> Callable[[BackboneBuilder], BackboneBuilder]:
    """Decorator: make ``builder(layout, cond_dim, n_steps, cfg) -> nn.Module`` available as
    ``policy.backbone = name``."""

    def register(builder: BackboneBuilder) -> BackboneBuilder:
        BACKBONES[name] = builder
        return builder

    return register


def build_backbone(
    layout: ParamLayout, cond_dim: int, n_steps: int, cfg: PolicyConfig
) -> nn.Module:
    """The backbone named by ``cfg.backbone`` (uses the global torch RNG for its weights)."""
    if cfg.backbone not in BACKBONES:
        known = ", ".join(sorted(BACKBONES))
        raise ConfigError(f"Unknown policy backbone '{cfg.backbone}'; choose from {known}.")
    return BACKBONES[cfg.backbone](layout, cond_dim, n_steps, cfg)


def sinusoidal(i: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding ``[B, dim]`` of step indices ``i [B]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=i.device) / max(half - 1, 1))
    ang = i.float()[:, None] * freqs[None]  # [B, half]
    out = torch.cat([ang.sin(), ang.cos()], dim=1)
    return nn.functional.pad(out, (0, dim % 2))  # odd dim: one zero column


class FiLMBlock(nn.Module):
    """Conv1d → GroupNorm → FiLM(emb) → SiLU → Conv1d, with a residual connection."""

    def __init__(self, cin: int, cout: int, emb: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(cin, cout, 3, padding=1)
        self.norm1 = nn.GroupNorm(math.gcd(8, cout), cout)
        self.film = nn.Linear(emb, 2 * cout)
        self.conv2 = nn.Conv1d(cout, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(math.gcd(8, cout), cout)
        self.skip = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.norm1(self.conv1(x))  # [B, cout, L]
        scale, shift = self.film(emb).unsqueeze(-1).chunk(2, dim=1)  # [B, cout, 1] each
        h = nn.functional.silu(h * (1 + scale) + shift)
        h = self.norm2(self.conv2(h))
        return nn.functional.silu(h + self.skip(x))


class UNet1d(nn.Module):
    """1-D U-Net over the parameter vector with FiLM conditioning and a global-context bottleneck.

    The vector is padded and cut into patches of ``patch`` consecutive coordinates, which become
    the channels of a sequence of length ``ceil(P / patch)`` (padded to a multiple of
    ``2**len(channels)``): this keeps the cost per state at about P/patch positions. A learned
    per-position embedding tells the convolutions which parameters they look at (convolutions
    alone are shift-invariant).
    """

    def __init__(
        self,
        size: int,
        emb_dim: int,
        channels: tuple[int, ...] = (32, 64, 128),
        patch: int = 8,
        pos_channels: int = 8,
    ) -> None:
        super().__init__()
        self.size = size
        self.patch = patch
        mult = 2 ** len(channels)
        positions = math.ceil(size / patch)
        self.length = math.ceil(positions / mult) * mult  # sequence length after patching
        self.padded = self.length * patch
        self.pos = nn.Parameter(torch.randn(pos_channels, self.length) * 0.1)
        self.inp = nn.Conv1d(patch + pos_channels, channels[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.pool = nn.ModuleList()
        cin = channels[0]
        for c in channels:
            self.down.append(FiLMBlock(cin, c, emb_dim))
            self.pool.append(nn.Conv1d(c, c, 4, stride=2, padding=1))
            cin = c
        self.mid = FiLMBlock(cin, cin, emb_dim)
        self.context = nn.Sequential(nn.Linear(cin + emb_dim, cin), nn.SiLU(), nn.Linear(cin, cin))
        self.up = nn.ModuleList()
        self.unpool = nn.ModuleList()
        for c in reversed(channels):
            self.unpool.append(nn.ConvTranspose1d(cin, c, 4, stride=2, padding=1))
            self.up.append(FiLMBlock(2 * c, c, emb_dim))
            cin = c
        self.out = nn.Conv1d(cin, 2 * patch, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, s: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """``s [B, P]``, ``emb [B, E]`` -> ``[B, 2, P]``."""
        b = s.shape[0]
        x = nn.functional.pad(s, (0, self.padded - self.size))  # [B, L * patch]
        x = x.view(b, self.length, self.patch).transpose(1, 2)  # [B, patch, L]
        x = torch.cat([x, self.pos.unsqueeze(0).expand(b, -1, -1)], dim=1)  # [B, patch+pos, L]
        h = self.inp(x)
        skips = []
        for block, pool in zip(self.down, self.pool, strict=True):
            h = block(h, emb)
            skips.append(h)
            h = pool(h)  # length halves
        h = self.mid(h, emb)
        g = self.context(torch.cat([h.mean(-1), emb], dim=1))  # [B, C] global context
        h = h + g.unsqueeze(-1)
        for unpool, block in zip(self.unpool, self.up, strict=True):
            h = unpool(h)
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        out = self.out(h).view(b, 2, self.patch, self.length)  # [B, 2, patch, L]
        return out.transpose(2, 3).reshape(b, 2, self.padded)[:, :, : self.size]


class MLPBackbone(nn.Module):
    """A plain MLP on ``[s, emb]`` (the prototype's policy), zero-initialised output."""

    def __init__(self, size: int, emb_dim: int, hidden: int = 512, depth: int = 2) -> None:
        super().__init__()
        self.size = size
        layers: list[nn.Module] = []
        d = size + emb_dim
        for _ in range(depth):
            layers += [nn.Linear(d, hidden), nn.SiLU()]
            d = hidden
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(d, 2 * size)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, s: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """``s [B, P]``, ``emb [B, E]`` -> ``[B, 2, P]``."""
        return self.out(self.body(torch.cat([s, emb], dim=1))).view(-1, 2, self.size)


@register_backbone("unet")
def unet_backbone(layout: ParamLayout, cond_dim: int, n_steps: int, cfg: PolicyConfig) -> nn.Module:
    return UNet1d(layout.size, cfg.emb_dim, tuple(cfg.channels), cfg.patch)


@register_backbone("mlp")
def mlp_backbone(layout: ParamLayout, cond_dim: int, n_steps: int, cfg: PolicyConfig) -> nn.Module:
    return MLPBackbone(layout.size, cfg.emb_dim, cfg.hidden)


@register_backbone("rows")
def rows_backbone(layout: ParamLayout, cond_dim: int, n_steps: int, cfg: PolicyConfig) -> nn.Module:
    return RowSetBackbone(layout, cond_dim, cfg.emb_dim, cfg.width, cfg.blocks, cfg.heads)
