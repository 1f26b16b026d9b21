"""One few-shot episode (:class:`Episode`, a task of :mod:`lohp_cli.tasks.fewshot`'s families):
its id, split, support and query images and their encoding; the standardised image pool its
split draws from (:class:`Pool`); and the resizing of a cross-domain meta-test data set to the
family's images (:func:`resize_images`)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from lohp_cli.config import ModelConfig
from lohp_cli.errors import ConfigError
from lohp_cli.tasks.datasets import ImageData
from lohp_cli.tasks.families import Split, TaskTensors
from lohp_cli.tasks.images import ImageTask, Part, standardise_images
from lohp_cli.tasks.models import Frozen, target_model

if TYPE_CHECKING:
    from lohp_cli.tasks.fewshot import FewShotFamily


def resize_images(data: ImageData, shape: tuple[int, ...]) -> ImageData:
    """``data`` with every image resized to ``shape`` ``[C, H, W]`` (bilinear, antialiased,
    rounded back to uint8); the channels must agree."""
    if data.image_shape == tuple(shape):
        return data
    if data.image_shape[0] != shape[0]:
        raise ConfigError(
            f"'{data.name}' images have {data.image_shape[0]} channel(s), the family's "
            f"{shape[0]}; choose a meta-test data set with {shape[0]} channel(s)."
        )

    def one(x: np.ndarray) -> np.ndarray:  # uint8 [N, C, h, w] -> uint8 [N, C, H, W]
        t = torch.from_numpy(np.ascontiguousarray(x)).float()
        t = torch.nn.functional.interpolate(
            t, size=tuple(shape[1:]), mode="bilinear", align_corners=False, antialias=True
        )
        return t.round_().clamp_(0, 255).to(torch.uint8).numpy()

    name = f"{data.name}@{shape[1]}x{shape[2]}"
    return replace(data, name=name, train_x=one(data.train_x), test_x=one(data.test_x))


@dataclass(frozen=True)
class Pool:
    """The images one split's episodes draw from, standardised with ``mean``/``std`` ``[C]``."""

    domain: str
    images: np.ndarray = field(repr=False)  # uint8 [N, C, H, W]
    labels: np.ndarray = field(repr=False)  # int64 [N]
    classes: tuple[int, ...]
    mean: torch.Tensor
    std: torch.Tensor
    rows: dict[int, np.ndarray] = field(repr=False)  # class -> its row indices into images

    @classmethod
    def of(
        cls, domain: str, images: np.ndarray, labels: np.ndarray, classes: tuple[int, ...],
        stats: tuple[torch.Tensor, torch.Tensor],
    ) -> Pool:  # fmt: skip
        rows = {c: np.flatnonzero(labels == c) for c in classes}
        return cls(domain, images, labels, classes, *stats, rows)

    def standardise(self, images: np.ndarray) -> torch.Tensor:
        return standardise_images(images, self.mean, self.std)


@dataclass(frozen=True)
class Episode(ImageTask):
    """One episode: ``classes[j]`` of ``domain`` gets label j; ``seed`` draws its images."""

    domain: str
    seed: int
    classes: tuple[int, ...]
    family: FewShotFamily = field(compare=False, repr=False)  # type: ignore[assignment]

    @property
    def id(self) -> str:
        cfg = self.family.cfg
        classes = "_".join(map(str, self.classes))
        return f"{self.domain}-k{cfg.shots}-q{cfg.queries}-e{self.seed}-c{classes}"

    @property
    def split(self) -> Split:
        split = self.family.split_of(self.domain, self.classes)
        if split is None:
            raise self.family.foreign(self.id, "its classes are no split's classes")
        return split

    @property
    def pool(self) -> Pool:
        return self.family.pools[self.split]

    @property
    def adapt_on(self) -> Literal["support"]:
        """A meta-learner adapts on the K-shot support set, whatever the training split holds."""
        return "support"

    @property
    def class_ids(self) -> tuple[str, ...]:
        """``<domain>:<class>`` per label: class 3 of digits is not class 3 of Fashion-MNIST."""
        return tuple(f"{self.domain}:{c}" for c in self.classes)

    def describe(self) -> dict[str, Any]:
        cfg = self.family.cfg
        return {
            "domain": self.domain,
            "classes": list(self.classes),
            "seed": self.seed,
            "shots": cfg.shots,
            "queries": cfg.queries,
        }

    @property
    def many_shot(self) -> bool:
        """Whether the episode trains on every pool image of its classes (``task.source_train =
        "all"``, meta-train episodes only)."""
        return self.family.cfg.source_train == "all" and self.split == "source"

    def examples(self, part: Part) -> tuple[np.ndarray, torch.Tensor]:
        """Support images for ``support``, query images for ``test``; for ``train`` the support
        images, or of a many-shot episode every pool image of its classes."""
        support, query = self.family.indices(self)
        cfg = self.family.cfg
        if part == "train" and self.many_shot:
            rows, counts = self.family.many_shot_rows(self)
            labels = np.repeat(np.arange(len(self.classes), dtype=np.int64), counts)
            return self.pool.images[rows], torch.from_numpy(labels)
        rows, per = (query, cfg.queries) if part == "test" else (support, cfg.shots)
        labels = np.repeat(np.arange(len(self.classes), dtype=np.int64), per)
        return self.pool.images[rows], torch.from_numpy(labels)

    def inputs(self, images: np.ndarray, model_cfg: ModelConfig, frozen: Frozen) -> torch.Tensor:
        return target_model(model_cfg).encode(self.pool.standardise(images), frozen)

    def train_set(
        self, model_cfg: ModelConfig, frozen: Frozen
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The support set (a many-shot episode: its many-shot set), as :meth:`data` trains on."""
        if self.many_shot:
            train_images, y_t = self.examples("train")
            return self.inputs(train_images, model_cfg, frozen), y_t
        x_s, y_s, _ = self.support_set(model_cfg, frozen)
        return x_s, y_s

    def data(self, model_cfg: ModelConfig, frozen: Frozen, device: str = "cpu") -> TaskTensors:
        """The support set as the training split (encoded once; a many-shot episode: its
        many-shot set) and the queries as the test split."""
        x_s, y_s, cond = self.support_set(model_cfg, frozen)
        images, y_q = self.examples("test")
        x_q = self.inputs(images, model_cfg, frozen)
        x_s, y_s = x_s.to(device), y_s.to(device)
        x_t, y_t = x_s, y_s
        if self.many_shot:
            train_images, y_t = self.examples("train")
            x_t, y_t = self.inputs(train_images, model_cfg, frozen).to(device), y_t.to(device)
        return TaskTensors(x_t, y_t, x_q.to(device), y_q.to(device), cond.to(device), x_s, y_s)
