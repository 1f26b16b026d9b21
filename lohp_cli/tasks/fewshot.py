"""Few-shot episodes as task families: N-way K-shot tasks with Q query images per class.

An **episode** is N = ``task.ways`` classes in a random label order, K = ``task.shots`` labelled
support images per class and Q = ``task.queries`` query images per class (15 by default, as in
the few-shot literature). Its support set is its training split (what ``collect``'s runs and the
optimizer baselines fine-tune on) and the labelled set its condition is computed from; its query
set is its test split. Nothing else of an episode is labelled.

**Classes.** Meta-train episodes (the ``source`` split) draw from the training images of the
meta-train classes; meta-test episodes (``target``) from the test images of the meta-test
classes, disjoint from them: the held-out classes of the family's own data set
(``task.holdout_classes``; by default the upper half of the classes), or, with
``task.meta_test = "digits"`` (cross-domain), every class of scikit-learn's digits, resized to the
family's input size with bilinear interpolation and standardised like the family's own images
(per channel, with their own training images' statistics). The ``head`` model's frozen extractor
sees the meta-train classes only, and so do the standardisation statistics of the family's own
images. There is no ``target-hard`` split.

**Ids** ``<domain>-k<K>-q<Q>-e<seed>-c<classes>`` (``fmnist-k1-q15-e17-c7_5_9_6_8``): where the
images come from, the shots and queries, the seed of the example draw and the classes in label
order; a family refuses an id of another K, Q or domain. Episode i of a split has seed i and
classes drawn from (split seed, split, i), so ``--num-tasks 600`` costs 600 ids; images are drawn
only when a stage asks for an episode's data. An episode and its image pool are
:mod:`lohp_cli.tasks.episodes`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch

from lohp_cli.config import TaskConfig
from lohp_cli.errors import ConfigError
from lohp_cli.runtime import derive_seed
from lohp_cli.tasks.datasets import ImageData, load_digits_data, load_fmnist
from lohp_cli.tasks.episodes import Episode, Pool, resize_images
from lohp_cli.tasks.families import Split, register_family
from lohp_cli.tasks.glyphs import glyph_episode_data, load_glyphs, pools_summary, refuse_holdout
from lohp_cli.tasks.images import ImageFamily, channel_stats

DOMAINS: dict[str, Callable[[TaskConfig], ImageData]] = {
    "fmnist": lambda cfg: load_fmnist(cfg.data_root, download=cfg.download),
    "digits": lambda _cfg: load_digits_data(),
    "glyphs": glyph_episode_data,
}
EPISODE_SPLITS: tuple[Split, ...] = ("source", "target")


def meta_test_data(name: str) -> Callable[[TaskConfig], ImageData]:
    """The loader of data set ``name`` (``task.meta_test``); a ConfigError listing them else."""
    if name not in DOMAINS:
        known = ", ".join(sorted(DOMAINS))
        raise ConfigError(f"Unknown meta-test domain '{name}'; choose from {known}.")
    return DOMAINS[name]


_ID = re.compile(r"^([a-z0-9]+)-k(\d+)-q(\d+)-e(\d+)-c(\d+(?:_\d+)*)$")


class FewShotFamily(ImageFamily):
    """N-way K-shot episodes: meta-train episodes over ``domain``'s meta-train classes,
    meta-test episodes over its held-out classes or another data set (``task.meta_test``)."""

    domain: ClassVar[str] = ""  # the data set of the family's own images (a key of DOMAINS)

    def __init__(self, cfg: TaskConfig) -> None:
        super().__init__(cfg)
        n = self.data.num_classes
        bad = [c for c in cfg.holdout_classes if not 0 <= c < n]
        if bad:
            raise ConfigError(
                f"task.holdout_classes has {bad}; classes of '{self.name}' are 0..{n - 1}."
            )
        test_domain = cfg.meta_test or self.domain
        cross = test_domain != self.domain
        hold = self.held_out(cross)
        self.source_classes: tuple[int, ...] = tuple(c for c in range(n) if c not in hold)
        if cross:
            test = resize_images(meta_test_data(test_domain)(cfg), self.data.image_shape)
            test_classes, test_stats = tuple(range(test.num_classes)), channel_stats(test.train_x)
        else:
            test, test_classes, test_stats = self.data, tuple(sorted(hold)), self.channel_stats()
        self.test_data = test
        for which, classes, where in (
            ("meta-test", test_classes, test_domain),
            ("meta-train", self.source_classes, self.domain),
        ):
            if cfg.ways > len(classes):
                listed = ", ".join(map(str, classes[:12])) + (", …" if len(classes) > 12 else "")
                raise ConfigError(
                    f"task.ways={cfg.ways} exceeds the {len(classes)} {which} classes of "
                    f"'{where}' ({listed or 'none'}); lower --ways or change "
                    "task.holdout_classes."
                )
        self.pools: dict[str, Pool] = {
            "source": Pool.of(
                self.domain, self.data.train_x, self.data.train_y, self.source_classes,
                self.channel_stats(),
            ),
            "target": Pool.of(test_domain, test.test_x, test.test_y, test_classes, test_stats),
        }  # fmt: skip
        need = cfg.shots + cfg.queries
        for split, pool in self.pools.items():
            kind = "training" if split == "source" else "test"
            if pool.domain == "glyphs":
                kind = "drawn (task.glyphs.drawers)"
            for c in pool.classes:
                if len(pool.rows[c]) < need:
                    raise ConfigError(
                        f"task.shots + task.queries = {cfg.shots} + {cfg.queries} = {need} "
                        "exceeds the "
                        f"{len(pool.rows[c])} {kind} images of class {c} of '{pool.domain}' "
                        f"({'meta-train' if split == 'source' else 'meta-test'} episodes); lower "
                        "--set task.shots=... or task.queries=..."
                    )

    def load(self) -> ImageData:
        return DOMAINS[self.domain](self.cfg)

    @property
    def unused_keys(self) -> tuple[str, ...]:  # type: ignore[override]
        """The class-subset keys, and ``glyphs`` unless glyphs are one of the domains."""
        own = ("train_per_class", "test_per_class", "support_per_class", "target_fraction")
        uses_glyphs = "glyphs" in (self.domain, self.cfg.meta_test)
        return own if uses_glyphs else (*own, "glyphs")

    def held_out(self, cross: bool) -> set[int]:
        """The classes of the family's own data set that meta-train episodes and the extractor
        never see: ``task.holdout_classes``, by default the upper half of the classes (none
        for a cross-domain meta-test)."""
        n = self.data.num_classes
        return set(self.cfg.holdout_classes) or (set() if cross else set(range(n - n // 2, n)))

    def many_shot_rows(self, ep: Episode) -> tuple[np.ndarray, list[int]]:
        """Rows of a many-shot episode's training images: every pool image of each class (its
        support and query images included: a glyph has only its drawers), class blocks in label
        order, and each block's size."""
        blocks = [ep.pool.rows[c] for c in ep.classes]
        return np.concatenate(blocks), [len(b) for b in blocks]

    @property
    def unused_hint(self) -> str:
        return (
            " (an episode's training split is its support set, task.shots per class, its test "
            "split its queries, task.queries per class)"
        )

    def extractor_data(self) -> tuple[np.ndarray, torch.Tensor, int]:
        """What the frozen feature extractor trains on: the training images ``[N, C, H, W]``
        (uint8) of the meta-train classes, their labels ``[N]`` renumbered 0..K-1, and K."""
        rows = np.flatnonzero(np.isin(self.data.train_y, self.source_classes))
        remap = {c: i for i, c in enumerate(self.source_classes)}
        y = torch.tensor([remap[int(c)] for c in self.data.train_y[rows]], dtype=torch.int64)
        return self.data.train_x[rows], y, len(self.source_classes)

    def extractor_scope(self) -> dict[str, Any]:
        """What the frozen extractor's attrs record about the data it saw."""
        return {"trained_on_classes": list(self.source_classes)}

    def stats_images(self) -> np.ndarray:
        """Every 7th training image of the meta-train classes only: the standardisation
        statistics never see a meta-test class."""
        rows = np.flatnonzero(np.isin(self.data.train_y, self.source_classes))
        return self.data.train_x[rows[::7]]

    # ---- ids and splits ---------------------------------------------------------------------
    def split_of(self, domain: str, classes: tuple[int, ...]) -> Split | None:
        """The split whose pool holds every class of ``classes`` of ``domain`` (None: none)."""
        for split, pool in self.pools.items():
            if domain == pool.domain and set(classes) <= set(pool.classes):
                return split  # type: ignore[return-value]
        return None

    def task(self, task_id: str) -> Episode:
        m = _ID.match(task_id)
        if m is None:
            raise self.foreign(task_id, "expected <domain>-k<K>-q<Q>-e<seed>-c<classes>, e.g. "
                               f"{self.tasks('target', 1)[0].id}")  # fmt: skip
        domain, k, q = m[1], int(m[2]), int(m[3])
        if (k, q) != (self.cfg.shots, self.cfg.queries):
            raise self.foreign(
                task_id,
                f"it is a {k}-shot episode with {q} queries per class; this family's episodes "
                f"are {self.cfg.shots}-shot with {self.cfg.queries}",
            )
        ep = Episode(domain, int(m[4]), tuple(int(c) for c in m[5].split("_")), self)
        if ep.id != task_id:  # e.g. e07 or c05_6: one episode, one id
            raise self.foreign(task_id, f"its canonical form is {ep.id}")
        if len(set(ep.classes)) != len(ep.classes) or len(ep.classes) != self.ways:
            raise self.foreign(task_id, f"not {self.ways} distinct classes")
        if self.split_of(domain, ep.classes) is None:
            pools = "; ".join(
                f"{s}: classes {', '.join(map(str, p.classes))} of '{p.domain}'"
                for s, p in self.pools.items()
            )
            raise self.foreign(task_id, f"its classes are in no split ({pools})")
        return ep

    def tasks(self, split: Split, n: int) -> list[Episode]:  # type: ignore[override]
        if split not in EPISODE_SPLITS:
            raise ConfigError(
                f"Few-shot family '{self.name}' has the splits source (meta-train episodes) and "
                f"target (meta-test episodes), not '{split}'."
            )
        pool = self.pools[split]
        out = []
        for i in range(n):
            rng = np.random.default_rng(derive_seed(self.cfg.split_seed, "episode", split, i))
            classes = rng.choice(np.asarray(pool.classes), self.ways, replace=False)
            out.append(Episode(pool.domain, i, tuple(int(c) for c in classes), self))
        return out

    # ---- examples ---------------------------------------------------------------------------
    def indices(self, ep: Episode) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the episode's pool: support ``[N·K]`` and query ``[N·Q]``, class blocks in
        label order, disjoint; they depend on the split seed, domain, seed and classes only."""
        pool, k, q = ep.pool, self.cfg.shots, self.cfg.queries
        seed = derive_seed(self.cfg.split_seed, "examples", ep.domain, ep.seed, *ep.classes)
        rng = np.random.default_rng(seed)
        support, query = [], []
        for c in ep.classes:
            rows = pool.rows[c]
            pick = rows[rng.choice(len(rows), k + q, replace=False)]
            support.append(pick[:k])
            query.append(pick[k:])
        return np.concatenate(support), np.concatenate(query)

    def describe(self) -> dict[str, object]:
        test = self.pools["target"]
        return {
            **super().describe(),
            "meta_train_classes": list(self.source_classes),
            "meta_test_domain": test.domain,
            "meta_test_classes": list(test.classes),
            "meta_test_fingerprint": self.test_data.fingerprint(),
        }


@register_family
class FewShotFashionMNIST(FewShotFamily):
    """Episodes over Fashion-MNIST (meta-test: its held-out classes, or digits at 28×28)."""

    name = "fewshot-fmnist"
    domain = "fmnist"


@register_family
class FewShotGlyphs(FewShotFamily):
    """Episodes over rendered KanjiVG characters (:mod:`lohp_cli.tasks.glyphs`): meta-train on
    the background characters, meta-test on the evaluation characters (or, cross-domain, on
    digits or Fashion-MNIST at the glyphs' size)."""

    name = "fewshot-glyphs"
    domain = "glyphs"

    def __init__(self, cfg: TaskConfig) -> None:
        refuse_holdout(cfg, self.name)
        super().__init__(cfg)

    def held_out(self, cross: bool) -> set[int]:
        """The evaluation characters, in-domain and cross-domain alike: meta-train episodes,
        the extractor and the statistics see the background characters only."""
        return set(load_glyphs(self.cfg).evaluation_classes)

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "pools": pools_summary(load_glyphs(self.cfg))}


@register_family
class FewShotDigits(FewShotFamily):
    """Episodes over scikit-learn's digits (tiny and always available: tests, quick checks)."""

    name = "fewshot-digits"
    domain = "digits"
