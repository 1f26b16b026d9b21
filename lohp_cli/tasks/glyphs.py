"""Glyph tasks: many classes of rendered KanjiVG characters, in two disjoint pools.

Every character (:mod:`lohp_cli.tasks.glyph_render`: ``task.glyphs.characters`` of KanjiVG's set,
each drawn by ``task.glyphs.drawers`` synthetic drawers) is one class. Characters are split into a
**background** pool (meta-train episodes, source tasks, the frozen extractor's pretraining, the
standardisation statistics) and an **evaluation** pool (meta-test episodes, target tasks) by whole
radical groups, as Omniglot splits by alphabet, so no radical group has characters on both sides:

    order the radical groups by SHA-256 of ``"<split seed>:<radical>"`` (hex digest, ascending)
    and move them, in that order, into the evaluation pool until it holds at least
    ``task.glyphs.eval_fraction`` of the characters; the rest are the background pool.

Class c of the data is the c-th character in codepoint order.

Families:

- ``fewshot-glyphs``: N-way K-shot episodes (:mod:`lohp_cli.tasks.fewshot`); an episode draws its
  K support and Q query images from the character's drawers (K + Q ≤ drawers). Meta-test on the
  evaluation pool, or cross-domain (``task.meta_test = "digits"`` or ``"fmnist"``); meta-train on
  the background pool in both cases.
- ``glyphs``: C-way class-subset transfer tasks; source tasks over background characters, target
  tasks over evaluation characters only (no ``target-hard`` split). A character's first
  ``drawers − test_per_class`` drawers are its training images (``train_per_class`` of them train
  a task, ``support_per_class`` others are its support set), its last ``test_per_class`` its test
  images.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from lohp_cli.config import GlyphConfig, TaskConfig
from lohp_cli.errors import ConfigError
from lohp_cli.runtime import derive_seed
from lohp_cli.tasks.classes import ClassSubsetFamily, ClassTask
from lohp_cli.tasks.datasets import ImageData
from lohp_cli.tasks.families import Split, register_family
from lohp_cli.tasks.glyph_render import kanjivg_version, render_all, select_characters


def evaluation_pool(radicals: tuple[str, ...], fraction: float, split_seed: int) -> np.ndarray:
    """bool ``[characters]``: which characters are in the evaluation pool (module docstring)."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(radicals):
        groups.setdefault(r, []).append(i)

    def order(radical: str) -> str:
        return hashlib.sha256(f"{split_seed}:{radical}".encode()).hexdigest()

    out = np.zeros(len(radicals), dtype=bool)
    target = fraction * len(radicals)
    for radical in sorted(groups, key=order):
        if out.sum() >= target:
            break
        out[groups[radical]] = True
    return out


@dataclass(frozen=True)
class GlyphSet:
    """Rendered characters: ``images`` uint8 ``[characters, drawers, 1, size, size]``, their
    codepoints, radical groups and pool (``evaluation`` bool ``[characters]``)."""

    images: np.ndarray = field(repr=False)
    codepoints: tuple[int, ...]
    radicals: tuple[str, ...]
    evaluation: np.ndarray = field(repr=False)
    source: str

    @property
    def background_classes(self) -> tuple[int, ...]:
        return tuple(int(c) for c in np.flatnonzero(~self.evaluation))

    @property
    def evaluation_classes(self) -> tuple[int, ...]:
        return tuple(int(c) for c in np.flatnonzero(self.evaluation))

    def as_data(self, test_drawers: int | None = None) -> ImageData:
        """The images as one labelled data set, label c = character c: every drawer in both the
        training and the test split (episodes), or the last ``test_drawers`` drawers of each
        character as its test images and the others as its training images (transfer tasks)."""
        n, d = self.images.shape[:2]
        shape = self.images.shape[2:]
        cut = d if test_drawers is None else d - test_drawers
        train = self.images[:, :cut].reshape(-1, *shape)
        labels = np.repeat(np.arange(n, dtype=np.int64), cut)
        if test_drawers is None:
            return ImageData("glyphs", train, labels, train, labels, n, self.source)
        test = self.images[:, cut:].reshape(-1, *shape)
        test_y = np.repeat(np.arange(n, dtype=np.int64), test_drawers)
        return ImageData("glyphs", train, labels, test, test_y, n, self.source)


@lru_cache(maxsize=4)
def _glyph_set(cfg: GlyphConfig, split_seed: int, data_root: str | None) -> GlyphSet:
    chars = select_characters(cfg)
    images = render_all(chars, cfg, split_seed, data_root)
    radicals = tuple(c.radical for c in chars)
    return GlyphSet(
        images,
        tuple(c.codepoint for c in chars),
        radicals,
        evaluation_pool(radicals, cfg.eval_fraction, split_seed),
        f"kanjivg {kanjivg_version()}",
    )


def load_glyphs(cfg: TaskConfig) -> GlyphSet:
    """The glyphs of a task config (rendered once per process, then from the disk cache)."""
    return _glyph_set(cfg.glyphs, cfg.split_seed, cfg.data_root)


def glyph_episode_data(cfg: TaskConfig) -> ImageData:
    """The glyphs as a few-shot data set: every drawer of every character in both splits."""
    return load_glyphs(cfg).as_data()


def refuse_holdout(cfg: TaskConfig, name: str) -> None:
    """Glyph pools are fixed by radical groups: ``task.holdout_classes`` is an error."""
    if cfg.holdout_classes:
        raise ConfigError(
            f"task.holdout_classes does not apply to '{name}': its background and evaluation "
            "characters are split by radical group; change the split with task.split_seed or "
            "task.glyphs.eval_fraction."
        )


@register_family
class GlyphFamily(ClassSubsetFamily):
    """C-way transfer tasks over rendered characters: source tasks on background characters,
    target tasks on evaluation characters (never seen by the store)."""

    name = "glyphs"
    unused_keys = ("shots", "queries", "meta_test", "source_train", "target_fraction")

    def __init__(self, cfg: TaskConfig) -> None:
        refuse_holdout(cfg, self.name)
        super().__init__(cfg)
        d, g = cfg.glyphs.drawers, cfg
        need = g.train_per_class + g.support_per_class + g.test_per_class
        if need > d:
            raise ConfigError(
                f"task.train_per_class + support_per_class + test_per_class = "
                f"{g.train_per_class} + {g.support_per_class} + {g.test_per_class} = {need} "
                f"exceeds the {d} drawers of each character (task.glyphs.drawers); lower them."
            )
        for split, pool in (("source", self.glyphs.background_classes),
                            ("target", self.glyphs.evaluation_classes)):  # fmt: skip
            if len(pool) < cfg.ways:
                raise ConfigError(
                    f"task.ways={cfg.ways} exceeds the {len(pool)} characters of the {split} "
                    "pool; lower --ways or raise task.glyphs.characters."
                )

    def load(self) -> ImageData:
        self.glyphs = load_glyphs(self.cfg)
        return self.glyphs.as_data(test_drawers=self.cfg.test_per_class)

    @property
    def unused_hint(self) -> str:
        return " (shots, queries, meta_test and source_train belong to the few-shot families)"

    @property
    def source_classes(self) -> tuple[int, ...]:
        return self.glyphs.background_classes

    def pool_of(self, split: Split) -> tuple[int, ...]:
        if split == "source":
            return self.glyphs.background_classes
        if split == "target":
            return self.glyphs.evaluation_classes
        raise ConfigError(
            f"Task family '{self.name}' has the splits source (background characters) and target "
            f"(evaluation characters), not '{split}'."
        )

    def tasks(self, split: Split, n: int) -> list[ClassTask]:  # type: ignore[override]
        """Task i of a split: ``ways`` distinct characters of the split's pool in an order drawn
        from (split seed, split, i); a longer list extends a shorter one."""
        pool = np.asarray(self.pool_of(split))
        out = []
        for i in range(n):
            rng = np.random.default_rng(derive_seed(self.cfg.split_seed, "glyph-task", split, i))
            out.append(ClassTask(tuple(int(c) for c in rng.choice(pool, self.ways, False)), self))
        return out

    def task(self, task_id: str) -> ClassTask:
        task = super().task(task_id)
        task.split  # noqa: B018 - refuses a task that mixes the pools, naming it
        return task

    def split_of(self, task: ClassTask) -> Split:
        ev = self.glyphs.evaluation
        inside = [bool(ev[c]) for c in task.classes]
        if all(inside):
            return "target"
        if not any(inside):
            return "source"
        raise self.foreign(task.id, "it mixes background and evaluation characters")

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "pools": pools_summary(self.glyphs)}


def pools_summary(glyphs: GlyphSet) -> dict[str, int]:
    """What a store records about the pools (their sizes)."""
    return {
        "background_characters": len(glyphs.background_classes),
        "evaluation_characters": len(glyphs.evaluation_classes),
        "radical_groups": len(set(glyphs.radicals)),
    }
