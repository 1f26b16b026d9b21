"""The ``lora`` target model: LoRA factors and a task head over a backbone pretrained per store.

``collect`` pretrains the backbone once per store on the source classes (a :class:`FrozenPart`
named ``backbone``, with its own classifier over those classes, exactly as the ``head`` model's
extractor is trained); every stage loads it from the store. A task's network is that backbone,
frozen, with rank-r LoRA factors on the layers named by ``model.lora_targets`` (all its linear
and conv layers by default), followed by a fresh C-way head. θ, what is recorded and generated,
is the factors and the head; the backbone's own weights never change.

The head is trained in full (peft's ``modules_to_save`` for a classifier) rather than adapted:
a task's classes and label order are its own, so there is no pretrained C-way layer to adapt
(the pretraining classifier has other classes in another order), and LoRA on a frozen random head
would only let a rank-r update move C·F weights the task needs in full. It is small (F·C + C),
and it keeps the head's rows last in θ, so class-order augmentation applies unchanged.
:func:`lohp_cli.tasks.lora.merge` folds the factors into a plain network with the same outputs;
evaluate's ``full-ft`` baseline fine-tunes that plain network, backbone included.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lohp_cli.config import ModelConfig
from lohp_cli.tasks.lora import apply_lora, freeze_all_but_adapters, load_base_state
from lohp_cli.tasks.models import Frozen, FrozenPart, TargetModel, pretrain, register_model


class MLPBackbone(nn.Module):
    """Pool to at most 14×14, flatten, ``fc1`` (hidden) and ``fc2`` (feature_dim), both ReLU."""

    def __init__(self, in_shape: tuple[int, ...], hidden: int, feature_dim: int) -> None:
        super().__init__()
        c, h, w = in_shape
        self.side = (min(h, 14), min(w, 14))
        self.fc1 = nn.Linear(c * self.side[0] * self.side[1], hidden)
        self.fc2 = nn.Linear(hidden, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> [B, feature_dim]
        x = nn.functional.adaptive_avg_pool2d(x, self.side).flatten(1)  # [B, C·h·w]
        return torch.relu(self.fc2(torch.relu(self.fc1(x))))


class ConvBackbone(nn.Module):
    """The head model's extractor with named layers: ``conv1`` (hidden/2 channels) and ``conv2``
    (hidden), 3×3 with ReLU, max-pool between, average-pool to 7×7, linear ``proj``."""

    def __init__(self, in_channels: int, hidden: int, feature_dim: int) -> None:
        super().__init__()
        c1, c2 = max(hidden // 2, 1), hidden
        self.conv1 = nn.Conv2d(in_channels, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.proj = nn.Linear(c2 * 49, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> [B, feature_dim]
        h = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)  # [B, c1, H/2, W/2]
        h = nn.functional.adaptive_avg_pool2d(torch.relu(self.conv2(h)), 7)  # [B, c2, 7, 7]
        return self.proj(h.flatten(1))


def build_backbone(cfg: ModelConfig, input_shape: tuple[int, ...]) -> nn.Module:
    """The untrained backbone ``cfg.lora_backbone`` (global torch RNG)."""
    if cfg.lora_backbone == "cnn":
        return ConvBackbone(input_shape[0], cfg.hidden, cfg.feature_dim)
    return MLPBackbone(input_shape, cfg.hidden, cfg.feature_dim)


def _pretrained_backbone(
    family: Any, cfg: ModelConfig, seed: int
) -> tuple[nn.Module, dict[str, Any]]:
    shape = family.input_shape
    net = pretrain(
        family, lambda: build_backbone(cfg, shape), cfg.feature_dim, cfg.extractor_steps, seed
    )
    attrs = {
        "architecture": type(net).__name__,
        "hidden": cfg.hidden,
        "feature_dim": cfg.feature_dim,
        "steps": cfg.extractor_steps,
        "trained_on_classes": list(family.source_classes),
    }
    return net, attrs


BACKBONE = FrozenPart(
    "backbone",
    build=build_backbone,
    train=_pretrained_backbone,
    progress=lambda cfg: {"steps": cfg.extractor_steps, "backbone": cfg.lora_backbone},
)


class LoRANet(nn.Module):
    """``head(backbone(x))``: a backbone with LoRA adapters and a trainable C-way head.

    Runs only once the store's pretrained backbone is in it (``pretrained``): a model built for
    its layout alone has a random backbone, and scoring that would be silently wrong.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, ways: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, ways)  # last: the class rows end θ
        self.pretrained = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> [B, ways]
        if not self.pretrained:
            raise ValueError(
                "lora model without its pretrained backbone: build it with "
                "build_target(..., frozen=<the store's frozen parts>)"
            )
        return self.head(self.backbone(x))


@register_model
class LoRAModel(TargetModel):
    """LoRA factors on a frozen pretrained backbone plus a C-way head (see the module doc)."""

    name = "lora"
    frozen = (BACKBONE,)

    def build(self, cfg: ModelConfig, input_shape: tuple[int, ...], ways: int) -> nn.Module:
        backbone = build_backbone(cfg, input_shape)
        apply_lora(backbone, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
        net = freeze_all_but_adapters(LoRANet(backbone, cfg.feature_dim, ways))
        net.head.requires_grad_(True)
        return net

    def attach_frozen(self, module: nn.Module, frozen: Frozen) -> None:
        if BACKBONE.name not in frozen:
            raise ValueError("lora model needs the store's pretrained backbone")
        assert isinstance(module, LoRANet)
        load_base_state(module.backbone, frozen[BACKBONE.name].state_dict())
        module.pretrained = True

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise ValueError("lora condition features need the pretrained backbone")

    def condition_features(self, x: torch.Tensor, frozen: Frozen) -> torch.Tensor:
        """The pretrained backbone's features (without adapters), as the head model's."""
        if BACKBONE.name not in frozen:
            raise ValueError("lora model needs the store's pretrained backbone")
        with torch.no_grad():
            return frozen[BACKBONE.name](x)

    def feature_dim(self, cfg: ModelConfig, input_shape: tuple[int, ...]) -> int:
        return cfg.feature_dim
