"""Task families: C-way class-subset tasks with a fixed label order, and their source/target split.

A task is an ordered tuple of classes: position j of the tuple is label j. Its id encodes that order
(``c3_1_7_0_9``), so ids are stable across runs, machines and lohp versions. A new family is one
class registered with :func:`register_family`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar, Literal

import numpy as np

from lohp_cli.config import TaskConfig
from lohp_cli.errors import ConfigError, DataError
from lohp_cli.runtime import derive_seed
from lohp_cli.tasks.datasets import ImageData, load_cifar10, load_digits_data, load_fmnist

Split = Literal["source", "target", "target-hard"]
SPLITS: tuple[str, ...] = ("source", "target", "target-hard")

FAMILIES: dict[str, type[TaskFamily]] = {}


def register_family(cls: type[TaskFamily]) -> type[TaskFamily]:
    """Class decorator: make a family available by its ``name``."""
    FAMILIES[cls.name] = cls
    return cls


@dataclass(frozen=True)
class TaskSpec:
    """One task: ``classes[j]`` is the data set class that gets label ``j``."""

    classes: tuple[int, ...]

    @property
    def task_id(self) -> str:
        return "c" + "_".join(map(str, self.classes))

    @classmethod
    def from_id(cls, task_id: str) -> TaskSpec:
        try:
            if not task_id.startswith("c"):
                raise ValueError
            return cls(tuple(int(x) for x in task_id[1:].split("_")))
        except ValueError:
            raise ConfigError(f"'{task_id}' is not a task id (expected e.g. c3_1_7_0_9).") from None


@dataclass(frozen=True)
class TaskIndices:
    """Row indices into the family's data set for one task (label order = the task's classes)."""

    train: np.ndarray  # [C * train_per_class] indices into train_x
    support: np.ndarray  # [C * support_per_class] indices into train_x, disjoint from train
    test: np.ndarray  # [C * test_per_class] indices into test_x


class TaskFamily:
    """A family of C-way classification tasks over one labelled image data set."""

    name: ClassVar[str] = ""

    def __init__(self, cfg: TaskConfig) -> None:
        self.cfg = cfg
        self.data = self.load()
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

    def load(self) -> ImageData:
        raise NotImplementedError

    # ---- splits -----------------------------------------------------------------------------
    @property
    def source_classes(self) -> tuple[int, ...]:
        """Classes that source tasks (and the feature extractor) may use."""
        hold = set(self.cfg.holdout_classes)
        return tuple(c for c in range(self.data.num_classes) if c not in hold)

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

    def tasks(self, split: Split, n: int) -> list[TaskSpec]:
        """The first ``n`` tasks of a split: a stable sequence, so a larger ``n`` extends it."""
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
        out: list[TaskSpec] = []
        while len(out) < n:
            combo = combos[int(rng.integers(len(combos)))]
            order = tuple(int(combo[i]) for i in rng.permutation(len(combo)))
            if order not in seen:
                seen.add(order)
                out.append(TaskSpec(order))
        return out

    def split_of(self, spec: TaskSpec) -> Split:
        combo = tuple(sorted(spec.classes))
        if set(combo) & set(self.cfg.holdout_classes):
            return "target-hard"
        return "target" if self._is_target_combo(combo) else "source"

    # ---- examples ---------------------------------------------------------------------------
    def indices(self, spec: TaskSpec) -> TaskIndices:
        """Deterministic example indices of a task (depend on the split seed and the task only)."""
        cfg = self.cfg
        if len(spec.classes) != cfg.ways or len(set(spec.classes)) != cfg.ways:
            raise ConfigError(
                f"Task '{spec.task_id}' is not a {cfg.ways}-way task of distinct classes."
            )
        rng = np.random.default_rng(derive_seed(cfg.split_seed, "examples", spec.task_id))
        train, support, test = [], [], []
        for cls in spec.classes:
            pool = rng.permutation(np.flatnonzero(self.data.train_y == cls))
            need = cfg.train_per_class + cfg.support_per_class
            if len(pool) < need:
                raise DataError(
                    f"Class {cls} of '{self.name}' has {len(pool)} training images; train_per_class"
                    f" + support_per_class = {need}. Lower them with --set task.train_per_class=..."
                )
            train.append(pool[: cfg.train_per_class])
            support.append(pool[cfg.train_per_class : need])
            tpool = rng.permutation(np.flatnonzero(self.data.test_y == cls))
            test.append(tpool[: cfg.test_per_class])
        return TaskIndices(np.concatenate(train), np.concatenate(support), np.concatenate(test))

    def labels(self, spec: TaskSpec, counts: list[int]) -> np.ndarray:
        """Task labels ``[sum(counts)]`` for per-class blocks of the given sizes."""
        return np.concatenate([np.full(c, j, dtype=np.int64) for j, c in enumerate(counts)])

    def describe(self) -> dict[str, object]:
        """What the store records about the family (part of its compatibility check)."""
        return {
            "name": self.name,
            "num_classes": self.data.num_classes,
            "image_shape": list(self.data.image_shape),
            "data_fingerprint": self.data.fingerprint(),
            **self.cfg.model_dump(mode="json", exclude={"data_root", "family", "download"}),
        }


@register_family
class FashionMNISTFamily(TaskFamily):
    """Fashion-MNIST (28×28 grey): the embedded default, read offline from the Debian package."""

    name = "fmnist"

    def load(self) -> ImageData:
        return load_fmnist(self.cfg.data_root, download=self.cfg.download)


@register_family
class Cifar10Family(TaskFamily):
    """CIFAR-10 (32×32 colour) from ``--data-root``."""

    name = "cifar10"

    def load(self) -> ImageData:
        return load_cifar10(self.cfg.data_root)


@register_family
class DigitsFamily(TaskFamily):
    """scikit-learn's 8×8 digits: tiny and always available, for tests and quick checks."""

    name = "digits"

    def load(self) -> ImageData:
        return load_digits_data()


def make_family(cfg: TaskConfig) -> TaskFamily:
    """Instantiate the family named by ``cfg.family`` (loads its data)."""
    if cfg.family not in FAMILIES:
        raise ConfigError(
            f"Unknown task family '{cfg.family}'; choose from {', '.join(sorted(FAMILIES))}."
        )
    return FAMILIES[cfg.family](cfg)
