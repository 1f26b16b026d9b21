"""The task protocol, in the manner of learned_optimization's ``TaskFamily``/``Task``.

A :class:`TaskFamily` samples tasks by split and index (:meth:`TaskFamily.tasks`) and owns their
ids: an id is an opaque string outside the family that made it, and only
:meth:`TaskFamily.task` turns one back into a :class:`Task` (refusing a foreign or malformed id
with a :class:`~lohp_cli.errors.ConfigError` that names it). A :class:`Task` gives its data
(:meth:`Task.data`), its labelled support set and condition vector (:meth:`Task.support_set`,
:meth:`Task.condition`), what stores record about it (:meth:`Task.describe`) and its score.

A new family is one class registered with :func:`register_family`; the stages only use this
protocol. The built-in class-subset families live in :mod:`lohp_cli.tasks.classes`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from lohp_cli.config import ModelConfig, TaskConfig
from lohp_cli.errors import ConfigError
from lohp_cli.tasks.models import Frozen

Split = Literal["source", "target", "target-hard"]
AdaptPart = Literal["train", "support"]
SPLITS: tuple[str, ...] = ("source", "target", "target-hard")

FAMILIES: dict[str, type[TaskFamily]] = {}


def register_family(cls: type[TaskFamily]) -> type[TaskFamily]:
    """Class decorator: make a family available by its ``name``."""
    FAMILIES[cls.name] = cls
    return cls


def score_logits(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``logits [N, C]`` against labels ``y [N]``: a task's
    score (:meth:`Task.score`, :func:`lohp_cli.tasks.scoring.accuracy`)."""
    loss = nn.functional.cross_entropy(logits, y)
    return float((logits.argmax(1) == y).float().mean()), float(loss)


@dataclass(frozen=True)
class TaskTensors:
    """Everything a run needs of one task, on one device."""

    x_train: torch.Tensor  # [N_train, *input_shape]
    y_train: torch.Tensor  # [N_train] int64 labels in the task's label order
    x_test: torch.Tensor  # [N_test, *input_shape]
    y_test: torch.Tensor  # [N_test]
    condition: torch.Tensor  # [D] float32
    x_support: torch.Tensor  # [M, *input_shape] the support set the condition comes from
    y_support: torch.Tensor  # [M] int64 labels


class Task(ABC):
    """One task of a family; :attr:`id` is stable across runs, machines and lohp versions."""

    @property
    @abstractmethod
    def id(self) -> str:
        """The task's id: opaque outside its family."""

    @property
    @abstractmethod
    def split(self) -> Split:
        """The split the task belongs to."""

    def describe(self) -> dict[str, Any]:
        """JSON attrs stores keep with the task (e.g. ``classes``); none by default."""
        return {}

    @property
    def adapt_on(self) -> AdaptPart:
        """The labelled part a meta-learner's inner loop adapts on when this task is a
        meta-training task: ``"train"`` (the training split, what the optimizer baselines
        fine-tune on; the default) or ``"support"`` (the support set: a few-shot episode's K
        shots, even where its training split is larger)."""
        return "train"

    @property
    def class_ids(self) -> tuple[Hashable, ...] | None:
        """The class (identity) of each label, comparable across the tasks of a family: two
        labels with equal ids are the same class. Default: the task's ``classes`` attribute (the
        data set's class indices), None for a task without one."""
        classes = getattr(self, "classes", None)
        return None if classes is None else tuple(classes)

    @abstractmethod
    def support_set(
        self, model_cfg: ModelConfig, frozen: Frozen
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x_support [M, *in], y_support [M], condition [D])`` for ``model_cfg``, on the CPU."""

    @abstractmethod
    def data(self, model_cfg: ModelConfig, frozen: Frozen, device: str = "cpu") -> TaskTensors:
        """Train/test/support tensors and the condition of the task for ``model_cfg``."""

    def condition(self, model_cfg: ModelConfig, frozen: Frozen) -> torch.Tensor:
        """The condition vector ``[D]`` (computed from the labelled support set only)."""
        return self.support_set(model_cfg, frozen)[2]

    def train_set(
        self, model_cfg: ModelConfig, frozen: Frozen
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_train [N, *in], y_train [N])`` on the CPU: the training split as :meth:`data`
        gives it (the same tensors, to the bit), without encoding the test and support parts
        (what ``collect`` trains on). By default taken from :meth:`data`."""
        d = self.data(model_cfg, frozen)
        return d.x_train, d.y_train

    def score(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """(accuracy, mean cross-entropy) of ``logits [N, C]`` against labels ``y [N]``."""
        return score_logits(logits, y)


class TaskFamily(ABC):
    """A family of tasks sharing one target-model interface (input shape, ``ways`` outputs)."""

    name: ClassVar[str] = ""
    domains: ClassVar[tuple[int, ...]] = ()  # a domain family's domains; one is held out

    def __init__(self, cfg: TaskConfig) -> None:
        self.cfg = cfg

    @property
    def ways(self) -> int:
        """Outputs of the target model (classes per task)."""
        return self.cfg.ways

    @property
    @abstractmethod
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one raw input the target model sees (before any frozen part)."""

    @abstractmethod
    def tasks(self, split: Split, n: int) -> list[Task]:
        """The first ``n`` tasks of a split: a stable sequence, so a larger ``n`` extends it."""

    @abstractmethod
    def task(self, task_id: str) -> Task:
        """The task with this id; a ConfigError naming it when it is not one of this family's."""

    def check_id(self, task_id: str) -> str:
        """``task_id`` when it names a task of this family; a ConfigError otherwise."""
        return self.task(task_id).id

    def in_source_domains(self, task: Task) -> list[Task]:
        """The same task (classes, label order) in each source domain of a domain family, for
        domain-generalization baselines; a ConfigError for a family without domains."""
        raise ConfigError(
            f"Task family '{self.name}' has no domains; domain generalization needs a domain "
            "family such as rotated-fmnist (with task.test_domain)."
        )

    def foreign(self, task_id: str, why: str) -> ConfigError:
        """The error for an id this family does not own."""
        return ConfigError(f"'{task_id}' is not a task id of family '{self.name}': {why}.")

    @abstractmethod
    def condition_dim(self, model_cfg: ModelConfig) -> int:
        """Size D of a task's condition vector for this model."""

    @abstractmethod
    def describe(self) -> dict[str, object]:
        """What a store records about the family (part of its compatibility check)."""


def family_class(name: str) -> type[TaskFamily]:
    """The registered family class ``name``; a ConfigError listing the families otherwise."""
    if name not in FAMILIES:
        raise ConfigError(
            f"Unknown task family '{name}'; choose from {', '.join(sorted(FAMILIES))}."
        )
    return FAMILIES[name]


def check_domain(cfg: TaskConfig) -> None:
    """A ConfigError unless ``cfg.test_domain`` fits its family: a domain family needs one of its
    domains held out, any other family none."""
    domains = family_class(cfg.family).domains
    listed = ", ".join(map(str, domains))
    if domains and cfg.test_domain is None:
        raise ConfigError(
            f"Task family '{cfg.family}' needs task.test_domain, the held-out domain: one of "
            f"{listed}."
        )
    if cfg.test_domain is not None and cfg.test_domain not in domains:
        if not domains:
            raise ConfigError(
                f"task.test_domain={cfg.test_domain} is for domain families such as "
                f"rotated-fmnist; '{cfg.family}' has no domains."
            )
        raise ConfigError(
            f"task.test_domain={cfg.test_domain} is not a domain of '{cfg.family}'; choose one "
            f"of {listed}."
        )


def make_family(cfg: TaskConfig) -> TaskFamily:
    """Instantiate the family named by ``cfg.family`` (loads its data)."""
    check_domain(cfg)
    return family_class(cfg.family)(cfg)
