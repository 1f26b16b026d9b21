"""Policy backbones and their registry: a 1-D U-Net over the padded parameter vector (the
paper's), an MLP, attention over the target network's neurons (``rows``,
:mod:`lohp_cli.policy.rows`) and a coordinate-wise MLP (``coordinate``).

Every backbone maps ``(s [B, P], emb [B, E])`` to two output channels ``[B, 2, P]``: the forward
mean step f and the backward mean step b. With ``policy.state_input = "grad"`` the input is
``[B, 2, P]`` (the state and the support-loss gradient direction, :func:`input_channels`). Output
layers start at zero: an untrained policy is the identity. A builder registered with
:func:`register_backbone` receives the target model's parameter layout, the condition size, the
number of policy steps and the policy config;
:class:`~lohp_cli.policy.gaussian.LoHpPolicy` takes the module it returns. A backbone whose
``takes_condition`` attribute is True is called as ``(s, emb, cond)`` with the normalised task
condition, and the policy leaves the condition out of ``emb``.

``policy.backbone = "auto"`` (the default) follows the target model (:func:`choose_backbone`):
the paper's U-Net where the generated vector is one linear layer (a ``head``), ``rows`` where it
is a chain of layers (a whole ``mlp`` or ``cnn``, LoRA factors). Training resolves it once, from
the store's layout, and saves the resolved name in the policy (:func:`resolve_auto`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from pydantic import BaseModel
from torch import nn

from lohp_cli.config import PolicyConfig
from lohp_cli.errors import ConfigError
from lohp_cli.policy.rows import RowSetBackbone, unit_layers
from lohp_cli.tasks.layout import ParamLayout

BackboneBuilder = Callable[[ParamLayout, int, int, PolicyConfig], nn.Module]
BACKBONES: dict[str, BackboneBuilder] = {}
AUTO = "auto"
# what the generated vector is, by the store's target model (the auto choice's message)
VECTOR_KIND = {"head": "linear head", "mlp": "whole network", "cnn": "whole network",
               "lora": "LoRA factors"}  # fmt: skip
M = TypeVar("M", bound=BaseModel)


def choose_backbone(layout: ParamLayout, model: str | None = None) -> tuple[str, str]:
    """``(backbone, why)``: what ``policy.backbone = "auto"`` builds over ``layout`` (``model``:
    the store's target model, named in ``why`` only; the choice depends on the layout alone).

    One linear layer (a weight ``[out, in]`` and its bias: the ``head`` model) gets the paper's
    U-Net; a chain of two or more layers (a whole ``mlp`` or ``cnn``, LoRA factors whose A and B
    read as layers of rank units) gets ``rows``, whose cost grows with the number of units and
    edges rather than with a convolution over all P coordinates; a vector ``rows`` cannot read
    as layers (a flat L2O problem) gets the U-Net.
    """
    size = layout.size
    try:
        layers = unit_layers(layout)
    except ConfigError:
        return "unet", f"not a chain of layers, P = {size}"
    kind = VECTOR_KIND.get(model or "")
    if len(layers) == 1:
        return "unet", f"{kind or 'one linear layer'}, P = {size}"
    return "rows", f"{kind or f'{len(layers)} layers'}, P = {size}"


def resolve_auto(
    cfg: M, layout: ParamLayout, model: str | None, emit: Callable[[dict[str, Any]], None]
) -> M:
    """``cfg`` (a train config with a ``policy`` field) with ``policy.backbone = "auto"``
    replaced by :func:`choose_backbone`'s choice, said as an ``info`` progress event; any other
    config unchanged. Training calls it once, before the policy directory is checked or written,
    so config.json (and a resumption's comparison) holds the resolved name."""
    policy = getattr(cfg, "policy", None)
    if not isinstance(policy, PolicyConfig) or policy.backbone != AUTO:
        return cfg
    name, why = choose_backbone(layout, model)
    emit({"event": "info", "message": f"backbone auto → {name} ({why})"})
    return cfg.model_copy(update={"policy": policy.model_copy(update={"backbone": name})})


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
    """The backbone named by ``cfg.backbone`` (uses the global torch RNG for its weights);
    ``auto``: :func:`choose_backbone`'s over ``layout`` (training saves the resolved name)."""
    if check_backbone(cfg.backbone) == AUTO:
        cfg = cfg.model_copy(update={"backbone": choose_backbone(layout)[0]})
    return BACKBONES[cfg.backbone](layout, cond_dim, n_steps, cfg)


def check_backbone(name: str) -> str:
    """``name`` when ``policy.backbone`` may say it (``auto`` or a registered builder); a
    ConfigError listing the choices otherwise."""
    if name != AUTO and name not in BACKBONES:
        known = ", ".join(sorted([AUTO, *BACKBONES]))
        raise ConfigError(f"Unknown policy backbone '{name}'; choose from {known}.")
    return name


def input_channels(cfg: PolicyConfig) -> int:
    """Values per coordinate a backbone gets: the state, and the gradient for ``grad`` input."""
    return 2 if cfg.state_input == "grad" else 1


def channels_first(s: torch.Tensor) -> torch.Tensor:
    """``[B, P]`` or ``[B, ch, P]`` -> ``[B, ch, P]``."""
    return s.unsqueeze(1) if s.dim() == 2 else s


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
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        self.size = size
        self.patch = patch
        self.in_channels = in_channels
        mult = 2 ** len(channels)
        positions = math.ceil(size / patch)
        self.length = math.ceil(positions / mult) * mult  # sequence length after patching
        self.padded = self.length * patch
        self.pos = nn.Parameter(torch.randn(pos_channels, self.length) * 0.1)
        self.inp = nn.Conv1d(in_channels * patch + pos_channels, channels[0], 3, padding=1)
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
        """``s [B, P]`` (or ``[B, in_channels, P]``), ``emb [B, E]`` -> ``[B, 2, P]``."""
        s = channels_first(s)
        b, ch = s.shape[0], s.shape[1]
        x = nn.functional.pad(s, (0, self.padded - self.size))  # [B, ch, L * patch]
        x = x.view(b, ch, self.length, self.patch).transpose(2, 3)  # [B, ch, patch, L]
        x = x.reshape(b, ch * self.patch, self.length)
        x = torch.cat([x, self.pos.unsqueeze(0).expand(b, -1, -1)], dim=1)  # [B, ch·patch+pos, L]
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

    def __init__(
        self, size: int, emb_dim: int, hidden: int = 512, depth: int = 2, in_channels: int = 1
    ) -> None:
        super().__init__()
        self.size = size
        layers: list[nn.Module] = []
        d = in_channels * size + emb_dim
        for _ in range(depth):
            layers += [nn.Linear(d, hidden), nn.SiLU()]
            d = hidden
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(d, 2 * size)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, s: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """``s [B, P]`` (or ``[B, in_channels, P]``), ``emb [B, E]`` -> ``[B, 2, P]``."""
        x = channels_first(s).flatten(1)
        return self.out(self.body(torch.cat([x, emb], dim=1))).view(-1, 2, self.size)


class CoordinateBackbone(nn.Module):
    """One small MLP shared by every coordinate (as coordinate-wise learned optimizers are).

    Coordinate j sees its own inputs (the state s_j and, with ``state_input = "grad"``, the
    gradient direction g_j), a learned embedding of the parameter tensor it belongs to, and the
    step/condition embedding through FiLM; nothing else of the vector. The policy is therefore
    equivariant to any permutation of the coordinates within a tensor, and a step can only differ
    between tasks through the gradient and the embedding: it cannot store a per-coordinate
    destination. Zero-initialised output (the identity policy).
    """

    def __init__(
        self,
        layout: ParamLayout,
        emb_dim: int,
        hidden: int = 64,
        in_channels: int = 1,
        tensor_dim: int = 8,
    ) -> None:
        super().__init__()
        self.size = layout.size
        ids = torch.cat([torch.full((e.numel,), k) for k, e in enumerate(layout.entries)])
        self.register_buffer("tensor_id", ids, persistent=False)  # [P]
        self.tensor_emb = nn.Embedding(len(layout.entries), tensor_dim)
        self.inp = nn.Linear(in_channels + tensor_dim, hidden)
        self.film = nn.Linear(emb_dim, 2 * hidden)
        self.mid = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 2)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, s: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """``s [B, P]`` (or ``[B, in_channels, P]``), ``emb [B, E]`` -> ``[B, 2, P]``."""
        x = channels_first(s).transpose(1, 2)  # [B, P, ch]
        t = self.tensor_emb(self.tensor_id).expand(x.shape[0], -1, -1)  # [B, P, tensor_dim]
        h = self.inp(torch.cat([x, t], dim=-1))  # [B, P, H]
        scale, shift = self.film(emb).unsqueeze(1).chunk(2, dim=-1)  # [B, 1, H] each
        h = nn.functional.silu(h * (1 + scale) + shift)
        h = nn.functional.silu(self.mid(h))
        return self.out(h).transpose(1, 2)  # [B, 2, P]


@register_backbone("unet")
def unet_backbone(layout: ParamLayout, cond_dim: int, n_steps: int, cfg: PolicyConfig) -> nn.Module:
    return UNet1d(
        layout.size, cfg.emb_dim, tuple(cfg.channels), cfg.patch, in_channels=input_channels(cfg)
    )


@register_backbone("mlp")
def mlp_backbone(layout: ParamLayout, cond_dim: int, n_steps: int, cfg: PolicyConfig) -> nn.Module:
    return MLPBackbone(layout.size, cfg.emb_dim, cfg.hidden, in_channels=input_channels(cfg))


@register_backbone("rows")
def rows_backbone(layout: ParamLayout, cond_dim: int, n_steps: int, cfg: PolicyConfig) -> nn.Module:
    return RowSetBackbone(
        layout, cond_dim, cfg.emb_dim, cfg.width, cfg.blocks, cfg.heads, input_channels(cfg)
    )


@register_backbone("coordinate")
def coordinate_backbone(
    layout: ParamLayout, cond_dim: int, n_steps: int, cfg: PolicyConfig
) -> nn.Module:
    return CoordinateBackbone(
        layout, cfg.emb_dim, cfg.coordinate_hidden, in_channels=input_channels(cfg)
    )
