"""The flat parameter layout of a target model: what is recorded, normalised and generated.

Policies and optimizers see θ as one flat float32 vector ``[P]`` of the model's *trainable*
parameters (``requires_grad``); frozen ones (a frozen base under LoRA factors, say) stay in the
module and out of θ. :class:`ParamLayout` records names, shapes and offsets, and
:func:`functional_forward` runs a model from such a vector.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

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


def trainable(module: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """The named parameters that θ holds: those with ``requires_grad``, in module order."""
    return ((n, p) for n, p in module.named_parameters() if p.requires_grad)


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The parameters an optimizer trains (those of :func:`trainable`)."""
    return [p for _, p in trainable(module)]


@dataclass(frozen=True)
class ParamLayout:
    """Names, shapes and offsets of the flat parameter vector of a target model."""

    entries: tuple[ParamEntry, ...]

    @property
    def size(self) -> int:
        return sum(e.numel for e in self.entries)

    @classmethod
    def of(cls, module: nn.Module) -> ParamLayout:
        """The layout of the trainable parameters of ``module``."""
        entries, offset = [], 0
        for name, p in trainable(module):
            entries.append(ParamEntry(name, tuple(p.shape), offset))
            offset += p.numel()
        return cls(tuple(entries))

    @classmethod
    def flat(cls, size: int, name: str = "theta") -> ParamLayout:
        """A layout of one unnamed vector ``[size]`` (when only the size is known)."""
        return cls((ParamEntry(name, (size,), 0),))

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


def flat_params(module: nn.Module) -> torch.Tensor:
    """The trainable parameters as one detached flat vector ``[P]`` (a copy)."""
    return torch.cat([p.detach().reshape(-1) for p in trainable_parameters(module)])


def load_flat(module: nn.Module, flat: torch.Tensor) -> None:
    """Copy a flat vector ``[P]`` into the module's trainable parameters in place."""
    layout = ParamLayout.of(module)
    with torch.no_grad():
        params = trainable_parameters(module)
        for p, view in zip(params, layout.unflatten(flat).values(), strict=True):
            p.copy_(view)


def functional_forward(module: nn.Module, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Run ``module`` on ``x`` with its trainable parameters taken from ``flat`` ``[P]``
    (differentiable); frozen parameters and buffers are the module's own."""
    params = ParamLayout.of(module).unflatten(flat)
    return functional_call(module, params, (x,))
