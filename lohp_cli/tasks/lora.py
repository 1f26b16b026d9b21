"""LoRA adapters over any torch module: low-rank factors on its linear and conv layers.

:func:`apply_lora` wraps every ``nn.Linear`` / ``nn.Conv2d`` of a module whose name matches
``targets`` (peft's ``target_modules``: a layer matches a target equal to its qualified name or
to its last components, ``"fc1"`` matches ``"backbone.fc1"``) in :class:`LoRALinear` /
:class:`LoRAConv2d`: the layer is frozen and gains factors A ``[r, fan_in]`` and B ``[out, r]``,
and computes ``base(x) + (alpha / r) · B A x`` (peft's ``r`` and ``lora_alpha``). B starts at
zero, so a wrapped module starts as its base. :func:`merge` folds the factors into plain layers,
``W' = W + (alpha / r) · B A`` (peft's ``merge_and_unload``). Adapter modules name their own
parameters (``adapter_params()``, torchtune's ``AdapterModule`` protocol), and
:func:`freeze_all_but_adapters` makes those the only trainable ones, so θ is the factors.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from lohp_cli.errors import ConfigError

__all__ = [
    "LoRAConv2d",
    "LoRALinear",
    "adapter_params",
    "apply_lora",
    "freeze_all_but_adapters",
    "load_base_state",
    "lora_layers",
    "merge",
]


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update ``(alpha / rank) · B A``.

    Only ``lora_a [rank, in]`` and ``lora_b [out, rank]`` are adapter parameters; ``B`` starts at
    zero, so the layer starts as its base.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float = 1.0) -> None:
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def adapter_params(self) -> list[str]:
        """Names of this module's adapter parameters (torchtune's ``AdapterModule`` protocol)."""
        return ["lora_a", "lora_b"]

    def delta(self) -> torch.Tensor:
        """The update of the base weight, ``(alpha / r) · B A`` ``[out, in]``."""
        return self.scale * (self.lora_b @ self.lora_a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., in] -> [..., out]
        return self.base(x) + self.scale * ((x @ self.lora_a.T) @ self.lora_b.T)


class LoRAConv2d(nn.Module):
    """A frozen conv layer plus a trainable low-rank update, as peft's ``Conv2d`` LoRA.

    A is a conv with the base's kernel, stride, padding and dilation and ``rank`` output channels
    (``lora_a [rank, in, kh, kw]``), B a 1×1 conv back to the base's channels (``lora_b [out,
    rank]``). Both are linear, so B∘A is one conv whose kernel ``(alpha / r) · B A`` (A flattened
    to ``[rank, in·kh·kw]``) adds to the base kernel: its fan-in is ``in·kh·kw``.
    """

    def __init__(self, base: nn.Conv2d, rank: int, alpha: float = 1.0) -> None:
        super().__init__()
        if base.groups != 1 or base.padding_mode != "zeros":
            raise ConfigError(
                f"LoRA wraps ordinary convolutions (groups 1, zero padding); this one has groups "
                f"{base.groups} and padding_mode {base.padding_mode!r}."
            )
        self.base = base
        self.scale = alpha / rank
        kh, kw = base.kernel_size
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_channels, kh, kw))
        self.lora_b = nn.Parameter(torch.zeros(base.out_channels, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def adapter_params(self) -> list[str]:
        return ["lora_a", "lora_b"]

    def delta(self) -> torch.Tensor:
        """The update of the base kernel ``[out, in, kh, kw]``."""
        a = self.lora_a.flatten(1)  # [r, in·kh·kw]
        return (self.scale * (self.lora_b @ a)).view_as(self.base.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, in, H, W] -> [B, out, H', W']
        b = self.base
        h = nn.functional.conv2d(x, self.lora_a, None, b.stride, b.padding, b.dilation)
        return b(x) + self.scale * torch.einsum("or,brhw->bohw", self.lora_b, h)


LoRALayer = LoRALinear | LoRAConv2d
_WRAPS: dict[type[nn.Module], type[nn.Module]] = {nn.Linear: LoRALinear, nn.Conv2d: LoRAConv2d}


def _fan(layer: nn.Module) -> tuple[int, int]:
    """(fan-in of A, out) of a linear or conv layer: the bounds of a useful rank."""
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    assert isinstance(layer, nn.Conv2d)
    kh, kw = layer.kernel_size
    return layer.in_channels * kh * kw, layer.out_channels


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def apply_lora(
    module: nn.Module, rank: int, alpha: float, targets: tuple[str, ...] = ()
) -> list[str]:
    """Wrap the layers of ``module`` named by ``targets`` (all its linear and conv layers when
    empty) in LoRA adapters, in place; returns the wrapped layers' names in module order.

    A ConfigError names a target that matches no layer, a target that is not a linear or conv
    layer, and a rank larger than min(fan-in, out) of a wrapped layer (the factors would be no
    lower-rank than the weight they update).
    """
    if type(module) in _WRAPS:
        raise ValueError("apply_lora wraps the layers inside a module; put this layer in one")
    layers = {n: m for n, m in module.named_modules() if type(m) in _WRAPS}
    if targets:
        named = dict(module.named_modules())
        for t in targets:
            hits = [n for n in named if n and _matches(n, t)]
            if not hits:
                raise ConfigError(
                    f"model.lora_targets: {t!r} matches no layer; the adaptable layers are "
                    f"{', '.join(layers) or 'none'}."
                )
            bad = [n for n in hits if type(named[n]) not in _WRAPS]
            if bad:
                raise ConfigError(
                    f"model.lora_targets: {t!r} names {bad[0]!r}, a {type(named[bad[0]]).__name__}"
                    f"; LoRA wraps nn.Linear and nn.Conv2d layers ({', '.join(layers)})."
                )
        layers = {n: m for n, m in layers.items() if any(_matches(n, t) for t in targets)}
    if not layers:
        raise ConfigError("The model has no linear or conv layer to adapt with LoRA.")
    for name, layer in layers.items():
        fan_in, out = _fan(layer)
        if rank > min(fan_in, out):
            raise ConfigError(
                f"model.lora_rank={rank} is larger than min(in, out) = {min(fan_in, out)} of "
                f"layer {name!r} ({fan_in} → {out}); use a rank of at most {min(fan_in, out)} "
                "or leave that layer out of model.lora_targets."
            )
    for name, layer in layers.items():
        parent, _, leaf = name.rpartition(".")
        owner = module.get_submodule(parent) if parent else module
        setattr(owner, leaf, _WRAPS[type(layer)](layer, rank, alpha))
    return list(layers)


def lora_layers(module: nn.Module) -> dict[str, LoRALayer]:
    """The LoRA layers of ``module`` by name."""
    return {n: m for n, m in module.named_modules() if isinstance(m, LoRALinear | LoRAConv2d)}


def load_base_state(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load the state dict of the plain module into ``module`` after :func:`apply_lora` (a wrapped
    layer's ``fc.weight`` goes to ``fc.base.weight``); every base tensor must be given."""
    own = module.state_dict()
    mapped = {}
    for key, value in state.items():
        if key not in own:
            head, _, leaf = key.rpartition(".")
            key = f"{head}.base.{leaf}" if head else f"base.{leaf}"
        mapped[key] = value
    missing = [k for k in own if k not in mapped and ".lora_" not in f".{k}"]
    unexpected = [k for k in mapped if k not in own]
    if missing or unexpected:
        raise ValueError(f"base state does not fit: missing {missing}, unexpected {unexpected}")
    with torch.no_grad():
        for key, value in mapped.items():
            own[key].copy_(value)


@torch.no_grad()
def merge(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with every LoRA layer replaced by its base layer holding
    ``W + (alpha / r) · B A``: the same function with plain layers (peft's ``merge_and_unload``).
    Other parameters keep their values and ``requires_grad``."""
    out = copy.deepcopy(module)
    for name, layer in lora_layers(out).items():
        base = layer.base
        base.weight.add_(layer.delta())
        parent, _, leaf = name.rpartition(".")
        setattr(out.get_submodule(parent) if parent else out, leaf, base)
    return out


def adapter_params(module: nn.Module) -> list[str]:
    """Full names of the adapter parameters of every submodule that declares some."""
    out = []
    for prefix, sub in module.named_modules():
        names = getattr(sub, "adapter_params", None)
        if callable(names):
            out += [f"{prefix}.{n}" if prefix else n for n in names()]
    return out


def freeze_all_but_adapters(module: nn.Module) -> nn.Module:
    """Make the adapter parameters the only trainable ones (θ is then just the adapters)."""
    keep = set(adapter_params(module))
    for name, p in module.named_parameters():
        p.requires_grad_(name in keep)
    return module
