"""Class-subset families: C-way tasks with a fixed label order, and their source/target split.

A task is an ordered tuple of classes: position j of the tuple is label j. Its id encodes that order
(``c3_1_7_0_9``), so ids are stable across runs, machines and lohp versions; only
:meth:`ClassSubsetFamily.task` reads one. The label-order symmetry
(:mod:`lohp_cli.tasks.symmetry`) is a property of these tasks.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import torch

from lohp_cli.config import TaskConfig
from lohp_cli.errors import ConfigError, DataError
from lohp_cli.runtime import derive_seed
from lohp_cli.tasks.datasets import ImageData, load_cifar10, load_digits_data, load_fmnist
from lohp_cli.tasks.families import SPLITS, Split, register_family
from lohp_cli.tasks.images import ImageFamily, ImageTask, Part


@dataclass(frozen=True)
class TaskIndices:
    """Row indices into the family's data set for one task (label order = the task's classes)."""

    train: np.ndarray  # [C * train_per_class] indices into train_x
    support: np.ndarray  # [C * support_per_class] indices into train_x, disjoint from train
    test: np.ndarray  # [C * test_per_class] indices into test_x


@dataclass(frozen=True)
class ClassTask(ImageTask):
    """One task: ``classes[j]`` is the data set class that gets label ``j``."""

    classes: tuple[int, ...]
    family: ClassSubsetFamily = field(compare=False, repr=False)  # type: ignore[assignment]

    @property
    def id(self) -> str:
        return "c" + "_".join(map(str, self.classes))

    @property
    def split(self) -> Split:
        return self.family.split_of(self)

    def describe(self) -> dict[str, Any]:
        return {"classes": list(self.classes)}

    def examples(self, part: Part) -> tuple[np.ndarray, torch.Tensor]:
        fam, cfg = self.family, self.family.cfg
        idx = fam.indices(self)
        if part == "test":
            test_y = fam.data.test_y[idx.test]
            counts = [int((test_y == c).sum()) for c in self.classes]
            return fam.images("test", idx.test), torch.from_numpy(fam.labels(counts))
        if part == "train":
            rows, per = idx.train, cfg.train_per_class
        else:
            rows, per = idx.support, cfg.support_per_class
        return fam.images("train", rows), torch.from_numpy(fam.labels([per] * cfg.ways))


class ClassSubsetFamily(ImageFamily):
    """A family of C-way classification tasks over one labelled image data set."""

    def __init__(self, cfg: TaskConfig) -> None:
        super().__init__(cfg)
        n = self.data.num_classes
        if cfg.ways > n:
            raise ConfigError(f"task.ways={cfg.ways} exceeds the {n} classes of '{self.name}'.")
        bad = [c for c in cfg.holdout_classes if not 0 <= c < n]
        if bad:
            raise ConfigError(
                f"task.holdout_classes has {bad}; classes of '{self.name}' are 0..{n - 1}."
            )
        if n - len(set(cfg.holdout_classes)) < cfg.ways:
            raise ConfigError("task.holdout_classes leaves fewer classes than task.ways.")

    # ---- ids --------------------------------------------------------------------------------
    def task(self, task_id: str) -> ClassTask:
        n, ways = self.data.num_classes, self.cfg.ways
        try:
            if not task_id.startswith("c"):
                raise ValueError
            classes = tuple(int(x) for x in task_id[1:].split("_"))
        except ValueError:
            raise self.foreign(task_id, "expected e.g. c3_1_7_0_9") from None
        task = ClassTask(classes, self)
        if task.id != task_id:  # e.g. c03_1 or c+3_1: one task, one id
            raise self.foreign(task_id, f"its canonical form is {task.id}")
        distinct = len(set(classes)) == len(classes) == ways
        if not distinct or not all(0 <= c < n for c in classes):
            raise self.foreign(task_id, f"not a {ways}-way task of distinct classes 0..{n - 1}")
        return task

    # ---- splits -----------------------------------------------------------------------------
    @property
    def source_classes(self) -> tuple[int, ...]:
        """Classes that source tasks (and the feature extractor) may use."""
        hold = set(self.cfg.holdout_classes)
        return tuple(c for c in range(self.data.num_classes) if c not in hold)

    def extractor_rows(self) -> np.ndarray:
        """Rows of the training images a frozen feature extractor may train on: those of the
        source classes."""
        return np.flatnonzero(np.isin(self.data.train_y, self.source_classes))

    def extractor_data(self) -> tuple[np.ndarray, torch.Tensor, int]:
        """What a frozen feature extractor trains on: uint8 images ``[N, C, H, W]`` (the
        :meth:`extractor_rows`), their labels ``[N]`` renumbered 0..K-1 over the source classes,
        and K."""
        rows, classes = self.extractor_rows(), self.source_classes
        remap = {c: i for i, c in enumerate(classes)}
        y = torch.tensor([remap[int(c)] for c in self.data.train_y[rows]], dtype=torch.int64)
        return self.images("train", rows), y, len(classes)

    def extractor_scope(self) -> dict[str, Any]:
        """What the frozen extractor's attrs record about the data it saw."""
        return {"trained_on_classes": list(self.source_classes)}

    def _is_target_combo(self, combo: tuple[int, ...]) -> bool:
        u = derive_seed(self.cfg.split_seed, "combo", *combo) / 2**63
        return u < self.cfg.target_fraction

    @lru_cache(maxsize=4)  # noqa: B019 - families are few and long-lived
    def combos(self, split: Split) -> tuple[tuple[int, ...], ...]:
        """Sorted class combinations of a split."""
        ways = self.cfg.ways
        if split == "target-hard":
            hold = set(self.cfg.holdout_classes)
            allc = itertools.combinations(range(self.data.num_classes), ways)
            return tuple(c for c in allc if hold & set(c))
        base = list(itertools.combinations(self.source_classes, ways))
        want_target = split == "target"
        return tuple(c for c in base if self._is_target_combo(c) == want_target)

    def tasks(self, split: Split, n: int) -> list[ClassTask]:  # type: ignore[override]
        if split not in SPLITS:
            raise ConfigError(f"Unknown split '{split}'; choose from {', '.join(SPLITS)}.")
        combos = self.combos(split)
        capacity = len(combos) * int(np.prod(range(1, self.cfg.ways + 1)))
        if n > capacity:
            raise ConfigError(
                f"{n} {split} tasks asked for, but '{self.name}' with ways={self.cfg.ways} has "
                f"only "
                f"{capacity}; lower --tasks or change task.target_fraction / holdout_classes."
            )
        rng = np.random.default_rng(derive_seed(self.cfg.split_seed, "tasks", split))
        seen: set[tuple[int, ...]] = set()
        out: list[ClassTask] = []
        while len(out) < n:
            combo = combos[int(rng.integers(len(combos)))]
            order = tuple(int(combo[i]) for i in rng.permutation(len(combo)))
            if order not in seen:
                seen.add(order)
                out.append(ClassTask(order, self))
        return out

    def split_of(self, task: ClassTask) -> Split:
        combo = tuple(sorted(task.classes))
        if set(combo) & set(self.cfg.holdout_classes):
            return "target-hard"
        return "target" if self._is_target_combo(combo) else "source"

    # ---- examples ---------------------------------------------------------------------------
    def indices(self, task: ClassTask) -> TaskIndices:
        """Deterministic example indices of a task (depend on the split seed and the task only)."""
        cfg = self.cfg
        if len(task.classes) != cfg.ways or len(set(task.classes)) != cfg.ways:
            raise ConfigError(f"Task '{task.id}' is not a {cfg.ways}-way task of distinct classes.")
        rng = np.random.default_rng(derive_seed(cfg.split_seed, "examples", task.id))
        train, support, test = [], [], []
        for cls in task.classes:
            pool = rng.permutation(self.pool(task, cls, "train"))
            need = cfg.train_per_class + cfg.support_per_class
            if len(pool) < need:
                raise DataError(
                    f"Class {cls} of '{self.name}'{self.pool_note(task)} has {len(pool)} training "
                    f"images; train_per_class + support_per_class = {need}. Lower them with --set "
                    "task.train_per_class=..."
                )
            train.append(pool[: cfg.train_per_class])
            support.append(pool[cfg.train_per_class : need])
            tpool = rng.permutation(self.pool(task, cls, "test"))
            test.append(tpool[: cfg.test_per_class])
        return TaskIndices(np.concatenate(train), np.concatenate(support), np.concatenate(test))

    def pool(self, task: ClassTask, cls: int, part: Literal["train", "test"]) -> np.ndarray:
        """Rows of the ``part`` images of class ``cls`` that ``task`` may draw from: all of them
        (a domain family: those of the task's domain)."""
        labels = self.data.train_y if part == "train" else self.data.test_y
        return np.flatnonzero(labels == cls)

    def pool_note(self, task: ClassTask) -> str:
        """Where :meth:`pool` draws from, for error messages (a domain family: the domain)."""
        return ""

    def images(self, part: Literal["train", "test"], rows: np.ndarray) -> np.ndarray:
        """uint8 images ``[len(rows), C, H, W]`` of the ``part`` split, as tasks see them."""
        return (self.data.train_x if part == "train" else self.data.test_x)[rows]

    def labels(self, counts: list[int]) -> np.ndarray:
        """Task labels ``[sum(counts)]`` for per-class blocks of the given sizes."""
        return np.concatenate([np.full(c, j, dtype=np.int64) for j, c in enumerate(counts)])


@register_family
class FashionMNISTFamily(ClassSubsetFamily):
    """Fashion-MNIST (28×28 grey): the embedded default, read offline from the Debian package."""

    name = "fmnist"

    def load(self) -> ImageData:
        return load_fmnist(self.cfg.data_root, download=self.cfg.download)


@register_family
class Cifar10Family(ClassSubsetFamily):
    """CIFAR-10 (32×32 colour) from ``--data-root``."""

    name = "cifar10"

    def load(self) -> ImageData:
        return load_cifar10(self.cfg.data_root)


@register_family
class DigitsFamily(ClassSubsetFamily):
    """scikit-learn's 8×8 digits: tiny and always available, for tests and quick checks."""

    name = "digits"

    def load(self) -> ImageData:
        return load_digits_data()
