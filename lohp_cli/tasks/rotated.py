"""Rotated Fashion-MNIST: a domain-generalization family in the manner of DomainBed's RotatedMNIST.

Six domains, the images rotated by 0°, 15°, 30°, 45°, 60° and 75° (DomainBed's angles). As in
DomainBed, the domains share no image: a seeded permutation of the training images (and, apart,
of the test images) deals them out in turn, so each domain holds a sixth of each split, and each
image is rotated by its own domain's angle only.

``task.test_domain`` (an angle) is the held-out domain. A task is a C-way class-subset task (as
fmnist's: an ordered tuple of classes, position j is label j) inside one domain, its id
``r<angle>_c<classes>`` (``r15_c1_3_0_9_4``). Source tasks lie in the other five domains, target
tasks in the held-out one. Any class combination can be a target task: domain generalization
holds out a domain, not classes (so ``task.holdout_classes`` and the ``target-hard`` split do not
apply, and ``task.target_fraction`` is unused). Everything trained once per store sees source
domains only: the frozen feature extractor of the ``head`` model trains on the source domains'
training images, and the standardisation statistics come from them.

A task's own train, support and test images come from its domain; the condition is built from
its labelled support set as for every image task (docs/domains.md states what each method sees).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from math import perm
from typing import Any, Literal

import numpy as np
import torch

from lohp_cli.config import TaskConfig
from lohp_cli.errors import ConfigError
from lohp_cli.runtime import derive_seed
from lohp_cli.tasks.classes import ClassSubsetFamily, ClassTask
from lohp_cli.tasks.datasets import ImageData, load_fmnist
from lohp_cli.tasks.families import SPLITS, Split, Task, check_domain, register_family

ROTATIONS: tuple[int, ...] = (0, 15, 30, 45, 60, 75)  # DomainBed's RotatedMNIST angles (degrees)


def rotate_images(images: np.ndarray, angle: float) -> np.ndarray:
    """uint8 images ``[N, C, H, W]`` rotated counter-clockwise by ``angle`` degrees about their
    centre (bilinear, corners filled with 0, as DomainBed's RotatedMNIST); deterministic."""
    if angle % 360 == 0 or len(images) == 0:
        return images
    import torchvision.transforms.functional as tf
    from torchvision.transforms import InterpolationMode

    x = torch.from_numpy(np.ascontiguousarray(images))  # [N, C, H, W] uint8
    out = tf.rotate(x, float(angle), interpolation=InterpolationMode.BILINEAR, fill=[0.0])
    return out.numpy()


def deal_domains(n: int, domains: int, seed: int) -> np.ndarray:
    """Domain index ``[n]`` of each of ``n`` images: a seeded permutation dealt out in turn, so
    the domains are disjoint and their sizes differ by at most one (DomainBed's split)."""
    out = np.empty(n, dtype=np.int64)
    perm = np.random.default_rng(seed).permutation(n)
    for i in range(domains):
        out[perm[i::domains]] = i
    return out


@dataclass(frozen=True)
class RotatedTask(ClassTask):
    """A class-subset task inside one domain (``domain``: its rotation angle in degrees)."""

    domain: int

    @property
    def id(self) -> str:
        return f"r{self.domain}_" + super().id

    def describe(self) -> dict[str, Any]:
        return {"classes": list(self.classes), "domain": self.domain}


class RotatedFamily(ClassSubsetFamily):
    """Class-subset tasks in rotated domains of one data set; one domain held out."""

    domains = ROTATIONS

    def __init__(self, cfg: TaskConfig) -> None:
        check_domain(cfg)  # make_family checks it; a family made by hand too
        if cfg.holdout_classes:
            raise ConfigError(
                f"'{self.name}' holds out a domain (task.test_domain), not classes; leave "
                "task.holdout_classes empty."
            )
        super().__init__(cfg)

    def load_base(self) -> ImageData:
        raise NotImplementedError

    def load(self) -> ImageData:
        return self.load_base()  # the unrotated images: their fingerprint is the data set's

    # ---- domains ----------------------------------------------------------------------------
    @property
    def test_domain(self) -> int:
        return int(self.cfg.test_domain)  # type: ignore[arg-type]

    @property
    def source_domains(self) -> tuple[int, ...]:
        return tuple(d for d in self.domains if d != self.test_domain)

    @cached_property
    def _domain_of(self) -> dict[str, np.ndarray]:
        """Per split, the angle ``[N]`` of each image's domain."""
        angles = np.asarray(self.domains)
        seed = self.cfg.split_seed
        return {
            part: angles[deal_domains(len(y), len(angles), derive_seed(seed, "domains", part))]
            for part, y in (("train", self.data.train_y), ("test", self.data.test_y))
        }

    def domain_of(self, part: Literal["train", "test"]) -> np.ndarray:
        """The angle ``[N]`` of the domain of each ``part`` image."""
        return self._domain_of[part]

    def images(self, part: Literal["train", "test"], rows: np.ndarray) -> np.ndarray:
        raw = super().images(part, rows)
        angle = self.domain_of(part)[rows]
        out = np.empty_like(raw)
        for d in np.unique(angle):
            pick = angle == d
            out[pick] = rotate_images(raw[pick], float(d))
        return out

    def pool(self, task: ClassTask, cls: int, part: Literal["train", "test"]) -> np.ndarray:
        rows = super().pool(task, cls, part)
        return rows[self.domain_of(part)[rows] == task.domain]  # type: ignore[attr-defined]

    def pool_note(self, task: ClassTask) -> str:
        return f" in domain {task.domain}°"  # type: ignore[attr-defined]

    def extractor_rows(self) -> np.ndarray:
        rows = super().extractor_rows()
        return rows[self.domain_of("train")[rows] != self.test_domain]

    def extractor_scope(self) -> dict[str, Any]:
        return {**super().extractor_scope(), "trained_on_domains": list(self.source_domains)}

    def stats_images(self) -> np.ndarray:
        return self.images("train", self.extractor_rows()[::7])

    def in_source_domains(self, task: Task) -> list[Task]:
        own = self.task(task.id)  # refuses a foreign task
        return [RotatedTask(own.classes, self, d) for d in self.source_domains]

    # ---- ids ----------------------------------------------------------------------------------
    def task(self, task_id: str) -> RotatedTask:
        head, sep, rest = task_id.partition("_")
        try:
            if not (sep and head.startswith("r")):
                raise ValueError
            domain = int(head[1:])
        except ValueError:
            raise self.foreign(task_id, "expected e.g. r15_c3_1_7_0_9") from None
        if domain not in self.domains:
            why = f"domain {domain} is not one of {', '.join(map(str, self.domains))}"
            raise self.foreign(task_id, why)
        try:
            classes = super().task(rest).classes
        except ConfigError:
            n, ways = self.data.num_classes, self.cfg.ways
            why = f"expected r<angle>_c<{ways} distinct classes 0..{n - 1}>, e.g. r15_c3_1_7_0_9"
            raise self.foreign(task_id, why) from None
        task = RotatedTask(classes, self, domain)
        if task.id != task_id:  # r015_c…: one task, one id
            raise self.foreign(task_id, f"its canonical form is {task.id}")
        return task

    # ---- splits -------------------------------------------------------------------------------
    def split_of(self, task: ClassTask) -> Split:
        return "target" if task.domain == self.test_domain else "source"  # type: ignore[attr-defined]

    def tasks(self, split: Split, n: int) -> list[RotatedTask]:  # type: ignore[override]
        if split not in SPLITS:
            raise ConfigError(f"Unknown split '{split}'; choose from {', '.join(SPLITS)}.")
        if split == "target-hard":
            raise ConfigError(
                f"'{self.name}' has no target-hard split: it holds out a domain "
                f"(task.test_domain={self.test_domain}), not classes; use --tasks target."
            )
        domains = (self.test_domain,) if split == "target" else self.source_domains
        ways, classes = self.cfg.ways, self.data.num_classes
        capacity = len(domains) * perm(classes, ways)
        if n > capacity:
            raise ConfigError(
                f"{n} {split} tasks asked for, but '{self.name}' with ways={ways} has only "
                f"{capacity}; lower --tasks."
            )
        rng = np.random.default_rng(derive_seed(self.cfg.split_seed, "tasks", split))
        seen: set[RotatedTask] = set()
        out: list[RotatedTask] = []
        while len(out) < n:
            domain = domains[int(rng.integers(len(domains)))]
            order = tuple(int(c) for c in rng.choice(classes, ways, replace=False))
            task = RotatedTask(order, self, domain)
            if task not in seen:
                seen.add(task)
                out.append(task)
        return out

    def describe(self) -> dict[str, object]:
        domains = {"domains": list(self.domains), "test_domain": self.test_domain}
        return {**super().describe(), **domains}


@register_family
class RotatedFashionMNISTFamily(RotatedFamily):
    """Fashion-MNIST in six rotated domains (DomainBed's RotatedMNIST protocol), offline."""

    name = "rotated-fmnist"

    def load_base(self) -> ImageData:
        return load_fmnist(self.cfg.data_root, download=self.cfg.download)
