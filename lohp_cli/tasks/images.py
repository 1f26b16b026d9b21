"""Families over one labelled image data set, and tasks that are labelled image subsets.

An :class:`ImageFamily` loads its data set and standardises images (per channel, with the training
set's statistics). An :class:`ImageTask` only says which images and labels it has
(:meth:`ImageTask.examples`); turning them into model inputs and a condition is shared: the
registered target model encodes the images (``head`` runs its frozen extractor) and gives
per-example features, and the condition is their class means in label order. So the condition
comes from the labelled support set only, and a policy can be asked for weights for any task with
a few labelled examples.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import torch

from lohp_cli.config import ModelConfig, TaskConfig
from lohp_cli.errors import ConfigError
from lohp_cli.tasks.datasets import ImageData
from lohp_cli.tasks.families import Task, TaskFamily, TaskTensors
from lohp_cli.tasks.models import Frozen, target_model

Part = Literal["train", "test", "support"]


def class_means(x: torch.Tensor, y: torch.Tensor, classes: int) -> torch.Tensor:
    """Mean of ``x`` ``[N, F]`` per label, in label order, flattened to ``[classes * F]``."""
    out = torch.zeros(classes, x.shape[1], dtype=x.dtype)
    out.index_add_(0, y, x)
    counts = torch.bincount(y, minlength=classes).clamp_min(1).to(x.dtype)
    return (out / counts[:, None]).reshape(-1)


def channel_stats(images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std ``[C]`` of uint8 images ``[N, C, H, W]``, in [0, 1]."""
    x = images.astype(np.float64) / 255.0
    mean, std = x.mean(axis=(0, 2, 3)), x.std(axis=(0, 2, 3)) + 1e-6
    return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)


def standardise_images(images: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` -> float32 ``(x / 255 - mean) / std`` per channel."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


class ImageFamily(TaskFamily):
    """A family of tasks over one labelled image data set (:meth:`load`).

    ``unused_keys``: the ``task`` config keys the family does not read (left out of
    :meth:`describe`, and an error when set to anything but their default).
    """

    unused_keys: ClassVar[tuple[str, ...]] = (
        "shots", "queries", "meta_test", "source_train", "glyphs",
    )  # fmt: skip

    def __init__(self, cfg: TaskConfig) -> None:
        super().__init__(cfg)
        fields = TaskConfig.model_fields
        wrong = [
            k for k in self.unused_keys
            if getattr(cfg, k) != fields[k].get_default(call_default_factory=True)
        ]  # fmt: skip
        if wrong:
            keys = ", ".join(f"task.{k}" for k in wrong)
            raise ConfigError(
                f"{keys} {'does' if len(wrong) == 1 else 'do'} not apply to task family "
                f"'{self.name}'; leave {'it' if len(wrong) == 1 else 'them'} out{self.unused_hint}."
            )
        self.data = self.load()
        self._stats: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def unused_hint(self) -> str:
        """What to use instead of the unused keys (the end of that error)."""
        return (
            " (shots, queries, meta_test and source_train belong to the few-shot families, "
            "glyphs to the glyph families)"
        )

    def load(self) -> ImageData:
        raise NotImplementedError

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.data.image_shape

    def stats_images(self) -> np.ndarray:
        """uint8 images ``[N, C, H, W]`` the standardisation statistics come from: every 7th
        training image (a domain family: of its source domains only)."""
        return self.data.train_x[::7]

    def channel_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and std ``[C]`` of :meth:`stats_images` in [0, 1] (cached)."""
        if self._stats is None:
            self._stats = channel_stats(self.stats_images())
        return self._stats

    def standardise(self, images: np.ndarray) -> torch.Tensor:
        """uint8 ``[N, C, H, W]`` -> float32 standardised with the training set's channel stats."""
        return standardise_images(images, *self.channel_stats())

    def condition_dim(self, model_cfg: ModelConfig) -> int:
        return self.ways * target_model(model_cfg).feature_dim(model_cfg, self.input_shape)

    def describe(self) -> dict[str, object]:
        # source_train is recorded only when it is not the default, so that stores made before
        # the option keep their compat
        later = {"source_train"} if self.cfg.source_train == "support" else set()
        return {
            "name": self.name,
            "num_classes": self.data.num_classes,
            "image_shape": list(self.data.image_shape),
            "data_fingerprint": self.data.fingerprint(),
            # test_domain: a domain family records it itself (older stores lack the key)
            **self.cfg.model_dump(
                mode="json",
                exclude={
                    "data_root",
                    "family",
                    "download",
                    "test_domain",
                    *self.unused_keys,
                    *later,
                },
            ),
        }


class ImageTask(Task):
    """A task of an :class:`ImageFamily`: labelled uint8 images for train, test and support."""

    family: ImageFamily

    def examples(self, part: Part) -> tuple[np.ndarray, torch.Tensor]:
        """uint8 images ``[N, C, H, W]`` and int64 labels ``[N]`` of one part of the task."""
        raise NotImplementedError

    def inputs(self, images: np.ndarray, model_cfg: ModelConfig, frozen: Frozen) -> torch.Tensor:
        """What the target model sees of ``images``."""
        return target_model(model_cfg).encode(self.family.standardise(images), frozen)

    def support_set(
        self, model_cfg: ModelConfig, frozen: Frozen
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images, y = self.examples("support")
        x = self.inputs(images, model_cfg, frozen)
        feats = target_model(model_cfg).condition_features(x, frozen)  # [M, F]
        cond = class_means(feats, y, self.family.ways)
        return x, y, cond.float()

    def train_set(
        self, model_cfg: ModelConfig, frozen: Frozen
    ) -> tuple[torch.Tensor, torch.Tensor]:
        train_images, y_train = self.examples("train")
        return self.inputs(train_images, model_cfg, frozen), y_train

    def data(self, model_cfg: ModelConfig, frozen: Frozen, device: str = "cpu") -> TaskTensors:
        x_train, y_train = self.train_set(model_cfg, frozen)
        test_images, y_test = self.examples("test")
        x_test = self.inputs(test_images, model_cfg, frozen)
        x_support, y_support, cond = self.support_set(model_cfg, frozen)
        return TaskTensors(
            x_train.to(device),
            y_train.to(device),
            x_test.to(device),
            y_test.to(device),
            cond.to(device),
            x_support.to(device),
            y_support.to(device),
        )
