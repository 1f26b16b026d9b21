"""Target models (the networks whose weights are optimized or generated) and their registry.

A registered :class:`TargetModel` says how to build the network for an input shape and a number of
outputs, which of its parameters are trainable (recorded and generated, see
:mod:`lohp_cli.tasks.layout`), and which frozen parts it needs (:class:`FrozenPart`: trained once
per store, saved in the store's group of that name, loaded by every later stage; a model uses
them on its inputs, as ``head`` runs its extractor in :meth:`TargetModel.encode`, or inside the
network, as ``lora`` holds its pretrained backbone, put in by :meth:`TargetModel.attach_frozen`).
Adapter modules (:mod:`lohp_cli.tasks.lora`) mark their own parameters the way torchtune's
``AdapterModule`` does (``adapter_params()``), and ``lora.freeze_all_but_adapters`` makes only
those trainable: a frozen base with LoRA factors is an ordinary model whose θ is its factors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from lohp_cli.config import ModelConfig
from lohp_cli.errors import ConfigError

Frozen = dict[str, nn.Module]  # the frozen parts of a target model, by name


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


# ---- registry ------------------------------------------------------------------------------
@dataclass(frozen=True)
class FrozenPart:
    """A frozen piece of a target model, trained once per store and saved in group ``name``.

    ``build(cfg, input_shape)`` makes the untrained architecture (to load saved tensors into);
    ``train(family, cfg, seed)`` returns the trained module and the attrs saved with it;
    ``progress(cfg)`` is what the collect progress event about it says.
    """

    name: str
    build: Callable[[ModelConfig, tuple[int, ...]], nn.Module]
    train: Callable[[Any, ModelConfig, int], tuple[nn.Module, dict[str, Any]]]
    progress: Callable[[ModelConfig], dict[str, Any]] = lambda _cfg: {}


class TargetModel:
    """A registered target model. Subclasses set ``name`` and implement :meth:`build`.

    By default the model sees standardised images, all its parameters are trainable, and a task's
    condition is built from 7×7 average-pooled images.
    """

    name: ClassVar[str] = ""
    frozen: ClassVar[tuple[FrozenPart, ...]] = ()

    def build(self, cfg: ModelConfig, input_shape: tuple[int, ...], ways: int) -> nn.Module:
        raise NotImplementedError

    def encode(self, x: torch.Tensor, frozen: Frozen) -> torch.Tensor:
        """What the model sees of standardised images ``x [N, C, H, W]``."""
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-example features ``[N, F]`` of encoded inputs, for the task condition."""
        return nn.functional.adaptive_avg_pool2d(x, 7).flatten(1)

    def condition_features(self, x: torch.Tensor, frozen: Frozen) -> torch.Tensor:
        """:meth:`features` of encoded inputs for a model whose features need its frozen parts
        (``lora``: its pretrained backbone); by default the frozen parts are not needed."""
        return self.features(x)

    def attach_frozen(self, module: nn.Module, frozen: Frozen) -> None:
        """Put the store's frozen parts into a built ``module`` (a no-op for models that use
        them on their inputs only)."""

    def feature_dim(self, cfg: ModelConfig, input_shape: tuple[int, ...]) -> int:
        """F of :meth:`features`."""
        return input_shape[0] * 49


MODELS: dict[str, TargetModel] = {}


def register_model(cls: type[TargetModel]) -> type[TargetModel]:
    """Class decorator: make a target model available by its ``name``."""
    MODELS[cls.name] = cls()
    return cls


def target_model(cfg: ModelConfig | str) -> TargetModel:
    """The registered model named by ``cfg.name`` (or by a name)."""
    name = cfg if isinstance(cfg, str) else cfg.name
    if name not in MODELS:
        known = ", ".join(sorted(MODELS))
        raise ConfigError(f"Unknown target model '{name}'; choose from {known}.")
    return MODELS[name]


def build_target(
    cfg: ModelConfig, image_shape: tuple[int, ...], classes: int, frozen: Frozen | None = None
) -> nn.Module:
    """A freshly initialised target model (uses the global torch RNG for its initial weights),
    with the store's ``frozen`` parts in it. Without them it is good for its layout and initial
    θ only: a model that holds a frozen part (``lora``) refuses to run without it."""
    model = target_model(cfg)
    net = model.build(cfg, image_shape, classes)
    if frozen is not None:
        model.attach_frozen(net, frozen)
    return net


def pretrain(
    family: Any,
    make: Callable[[], nn.Module],
    out_dim: int,
    steps: int,
    seed: int,
    batch_size: int = 128,
) -> nn.Module:
    """Train ``make()`` (a network of ``out_dim`` outputs) with a linear classifier over the
    family's source classes, on what the family allows (``extractor_data``: the training images
    of its source classes only; a domain family: of its source domains only), then freeze it.

    ``family`` is an image family (``extractor_data``, ``standardise``). Deterministic
    on CPU for a given seed. Returns the network in eval mode, gradients off; the classifier is
    dropped (tasks bring their own classes and label order).
    """
    x_all, y_all, n_classes = family.extractor_data()  # [N, C, H, W] uint8, [N] in 0..K-1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = make()
        clf = nn.Linear(out_dim, n_classes)
        opt = torch.optim.Adam([*net.parameters(), *clf.parameters()], lr=1e-3)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            b = torch.randint(0, len(y_all), (batch_size,), generator=gen)
            xb = family.standardise(x_all[b.numpy()])
            loss = nn.functional.cross_entropy(clf(net(xb)), y_all[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval()
    net.requires_grad_(False)
    return net


def train_extractor(
    family: Any, model_cfg: ModelConfig, seed: int, batch_size: int = 128
) -> FeatureExtractor:
    """Train the frozen feature extractor on the training images of source classes only
    (:func:`pretrain`)."""
    channels, dim = family.data.image_shape[0], model_cfg.feature_dim
    ext = pretrain(
        family,
        lambda: FeatureExtractor(channels, dim),
        dim,
        model_cfg.extractor_steps,
        seed,
        batch_size,
    )
    return ext  # type: ignore[return-value]


def _trained_extractor(
    family: Any, cfg: ModelConfig, seed: int
) -> tuple[nn.Module, dict[str, Any]]:
    ext = train_extractor(family, cfg, seed)
    attrs = {
        "architecture": "FeatureExtractor",
        "feature_dim": cfg.feature_dim,
        **family.extractor_scope(),
    }
    return ext, attrs


EXTRACTOR = FrozenPart(
    "extractor",
    build=lambda cfg, shape: FeatureExtractor(shape[0], cfg.feature_dim),
    train=_trained_extractor,
    progress=lambda cfg: {"steps": cfg.extractor_steps},
)


@register_model
class Head(TargetModel):
    """A linear classifier over the features of a frozen extractor trained once per store."""

    name = "head"
    frozen = (EXTRACTOR,)

    def build(self, cfg: ModelConfig, input_shape: tuple[int, ...], ways: int) -> nn.Module:
        return nn.Linear(cfg.feature_dim, ways)

    def encode(self, x: torch.Tensor, frozen: Frozen) -> torch.Tensor:
        if EXTRACTOR.name not in frozen:
            raise ValueError("head model needs the store's feature extractor")
        with torch.no_grad():
            return frozen[EXTRACTOR.name](x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def feature_dim(self, cfg: ModelConfig, input_shape: tuple[int, ...]) -> int:
        return cfg.feature_dim


@register_model
class MLPModel(TargetModel):
    name = "mlp"

    def build(self, cfg: ModelConfig, input_shape: tuple[int, ...], ways: int) -> nn.Module:
        return MLP(input_shape, cfg.hidden, ways)  # type: ignore[arg-type]


@register_model
class CNNModel(TargetModel):
    name = "cnn"

    def build(self, cfg: ModelConfig, input_shape: tuple[int, ...], ways: int) -> nn.Module:
        return SmallCNN(input_shape[0], cfg.hidden, ways)
