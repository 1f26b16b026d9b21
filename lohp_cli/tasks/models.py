"""Target models (the networks whose weights are optimized or generated) and their flat layout.

Policies and optimizers both see θ as one flat float32 vector ``[P]``; :class:`ParamLayout` records
names, shapes and offsets, and :func:`functional_forward` runs a model from such a vector.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from lohp_cli.config import ModelConfig
from lohp_cli.errors import CompatibilityError


@dataclass(frozen=True)
class ParamEntry:
    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass(frozen=True)
class ParamLayout:
    """Names, shapes and offsets of the flat parameter vector of a target model."""

    entries: tuple[ParamEntry, ...]

    @property
    def size(self) -> int:
        return sum(e.numel for e in self.entries)

    @classmethod
    def of(cls, module: nn.Module) -> ParamLayout:
        entries, offset = [], 0
        for name, p in module.named_parameters():
            entries.append(ParamEntry(name, tuple(p.shape), offset))
            offset += p.numel()
        return cls(tuple(entries))

    def to_json(self) -> list[dict[str, Any]]:
        return [{"name": e.name, "shape": list(e.shape), "offset": e.offset} for e in self.entries]

    @classmethod
    def from_json(cls, data: list[dict[str, Any]]) -> ParamLayout:
        return cls(tuple(ParamEntry(d["name"], tuple(d["shape"]), int(d["offset"])) for d in data))

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of ``flat`` ``[P]`` as named parameter tensors."""
        if flat.shape[-1] != self.size:
            raise CompatibilityError(
                f"Weight vector has {flat.shape[-1]} entries; this model's layout has {self.size}."
            )
        return {e.name: flat[e.offset : e.offset + e.numel].view(e.shape) for e in self.entries}


class MLP(nn.Module):
    """Pool to at most 14×14, flatten, one hidden ReLU layer, linear classifier."""

    def __init__(self, in_shape: tuple[int, int, int], hidden: int, classes: int) -> None:
        super().__init__()
        c, h, w = in_shape
        self.side = (min(h, 14), min(w, 14))
        self.pool = nn.AdaptiveAvgPool2d(self.side)
        self.fc1 = nn.Linear(c * self.side[0] * self.side[1], hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> [B, classes]
        return self.fc2(torch.relu(self.fc1(self.pool(x).flatten(1))))


class SmallCNN(nn.Module):
    """Two conv-BN-ReLU-pool blocks, global average pool, linear classifier."""

    def __init__(self, in_channels: int, hidden: int, classes: int) -> None:
        super().__init__()
        c1, c2 = max(hidden // 4, 1), max(hidden // 2, 1)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1),
            nn.BatchNorm2d(c1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.BatchNorm2d(c2),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.fc = nn.Linear(c2, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> [B, classes]
        return self.fc(self.features(x).flatten(1))


class FeatureExtractor(nn.Module):
    """Frozen image encoder for the ``head`` model: two conv blocks and a linear projection."""

    def __init__(self, in_channels: int, feature_dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(7),
            nn.Flatten(),
            nn.Linear(32 * 7 * 7, feature_dim),
        )  # linear features: a final ReLU left a third of them dead, and their head weights idle

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> [B, feature_dim]
        return self.body(x)


def build_target(cfg: ModelConfig, image_shape: tuple[int, int, int], classes: int) -> nn.Module:
    """A freshly initialised target model (uses the global torch RNG for its initial weights)."""
    if cfg.name == "head":
        return nn.Linear(cfg.feature_dim, classes)
    if cfg.name == "mlp":
        return MLP(image_shape, cfg.hidden, classes)
    return SmallCNN(image_shape[0], cfg.hidden, classes)


def flat_params(module: nn.Module) -> torch.Tensor:
    """All parameters as one detached flat vector ``[P]`` (a copy)."""
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def load_flat(module: nn.Module, flat: torch.Tensor) -> None:
    """Copy a flat vector ``[P]`` into the module's parameters in place."""
    layout = ParamLayout.of(module)
    with torch.no_grad():
        for p, view in zip(module.parameters(), layout.unflatten(flat).values(), strict=True):
            p.copy_(view)


def functional_forward(module: nn.Module, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Run ``module`` on ``x`` with parameters taken from ``flat`` ``[P]`` (differentiable)."""
    params = ParamLayout.of(module).unflatten(flat)
    return functional_call(module, params, (x,))
