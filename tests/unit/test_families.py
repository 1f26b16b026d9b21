"""Task families: splits, stable task sequences, example indices (lohp_cli/tasks/families.py)."""

from __future__ import annotations

import itertools
from math import comb, factorial
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lohp_cli.config import ModelConfig, TaskConfig
from lohp_cli.errors import ConfigError, DataError
from lohp_cli.tasks import (
    FAMILIES,
    ClassSubsetFamily,
    ClassTask,
    TaskFamily,
    make_family,
    register_family,
)
from lohp_cli.tasks.datasets import ImageData
from lohp_cli.tasks.models import FeatureExtractor
from tests.conftest import needs_fmnist
from tests.unit.test_datasets import fake_fmnist, write_cifar, write_fmnist

CFG = TaskConfig(
    family="digits",
    ways=3,
    train_per_class=20,
    test_per_class=8,
    support_per_class=5,
    holdout_classes=(9,),
    target_fraction=0.3,
    split_seed=0,
)


@pytest.fixture(scope="module")
def fam() -> TaskFamily:
    return make_family(CFG)


@pytest.fixture(scope="module")
def plain() -> TaskFamily:
    """Five-way digits with no held-out classes."""
    return make_family(TaskConfig(family="digits", train_per_class=10, support_per_class=3))


# ---- task ids ----------------------------------------------------------------------------------
@given(st.permutations(range(10)))
def test_task_id_round_trip(fam: TaskFamily, perm: list[int]) -> None:
    task = fam.task("c" + "_".join(map(str, perm[:3])))
    assert task.classes == tuple(perm[:3])
    assert task.id == "c" + "_".join(map(str, perm[:3]))  # the byte-identical id format
    assert fam.task(task.id) == task


def test_ids_round_trip_through_the_family_only(fam: TaskFamily) -> None:
    for split in ("source", "target", "target-hard"):
        for task in fam.tasks(split, 5):  # type: ignore[arg-type]
            assert fam.task(task.id) == task and fam.check_id(task.id) == task.id
            assert fam.task(task.id).split == split
            assert task.describe() == {"classes": list(task.classes)}


@pytest.mark.parametrize(
    "bad",
    ["", "c", "3_1_7", "x3_1", "c3__1", "c3_a", "c3_1_", "c1_2", "c1_1_2", "c1_2_10", "c01_2_3"],
)
def test_foreign_task_ids_are_refused_by_name(fam: TaskFamily, bad: str) -> None:
    with pytest.raises(ConfigError, match=f"'{bad}' is not a task id of family 'digits'"):
        fam.task(bad)


# ---- splits ------------------------------------------------------------------------------------
def test_combos_partition(fam: TaskFamily) -> None:
    source, target, hard = (set(fam.combos(s)) for s in ("source", "target", "target-hard"))
    assert not source & target
    assert source | target == set(itertools.combinations(range(9), 3))  # 9 = held out
    assert hard == {c for c in itertools.combinations(range(10), 3) if 9 in c}
    assert len(hard) == comb(9, 2)
    assert source and target  # both splits are populated at target_fraction 0.3
    assert all(list(c) == sorted(c) for c in fam.combos("source"))


def test_target_fraction_roughly_respected(plain: TaskFamily) -> None:
    n_target = len(plain.combos("target"))
    n_all = comb(10, 5)
    assert n_target + len(plain.combos("source")) == n_all
    assert 0.1 < n_target / n_all < 0.3  # fraction 0.2 of 252 combinations


def test_source_and_target_tasks_are_disjoint(fam: TaskFamily) -> None:
    src = fam.tasks("source", 200)
    tgt = fam.tasks("target", 100)
    assert not {t.classes for t in src} & {t.classes for t in tgt}
    assert not {tuple(sorted(t.classes)) for t in src} & {tuple(sorted(t.classes)) for t in tgt}
    for split, tasks in (("source", src), ("target", tgt)):
        assert all(fam.split_of(t) == split for t in tasks)
        assert all(tuple(sorted(t.classes)) in fam.combos(split) for t in tasks)


def test_holdout_classes(fam: TaskFamily) -> None:
    assert fam.source_classes == tuple(range(9))
    for split in ("source", "target"):
        assert all(9 not in t.classes for t in fam.tasks(split, 80))
    hard = fam.tasks("target-hard", 60)
    assert all(9 in t.classes for t in hard)
    assert all(fam.split_of(t) == "target-hard" for t in hard)


def test_tasks_are_distinct_ordered_ways_tuples(fam: TaskFamily) -> None:
    tasks = fam.tasks("source", 300)
    assert len({t.classes for t in tasks}) == 300
    assert all(len(set(t.classes)) == 3 for t in tasks)
    # Label orders vary: not every task lists its classes sorted.
    assert any(list(t.classes) != sorted(t.classes) for t in tasks)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(0, 60), split=st.sampled_from(["source", "target", "target-hard"]))
def test_task_sequence_is_prefix_stable(fam: TaskFamily, n: int, split: str) -> None:
    assert fam.tasks(split, n) == fam.tasks(split, n + 5)[:n]


def test_task_sequence_is_the_same_in_a_new_family(fam: TaskFamily) -> None:
    again = make_family(CFG)
    assert again.tasks("source", 40) == fam.tasks("source", 40)
    other = make_family(CFG.model_copy(update={"split_seed": 1}))
    assert other.tasks("source", 40) != fam.tasks("source", 40)


def test_capacity_is_exact() -> None:
    # Classes 0..2, ways 2, split_seed 1 puts all three pairs in the source split.
    cfg = TaskConfig(
        family="digits",
        ways=2,
        holdout_classes=tuple(range(3, 10)),
        target_fraction=0.4,
        split_seed=1,
    )
    f = make_family(cfg)
    assert f.combos("source") == ((0, 1), (0, 2), (1, 2))
    cap = 3 * factorial(2)
    every = f.tasks("source", cap)
    assert {t.classes for t in every} == set(itertools.permutations(range(3), 2))
    with pytest.raises(
        ConfigError, match=r"7 source tasks asked for, but 'digits' with ways=2 has only 6"
    ):
        f.tasks("source", cap + 1)
    with pytest.raises(ConfigError, match="has only 0"):
        f.tasks("target", 1)
    assert f.tasks("target", 0) == []


def test_too_many_tasks(plain: TaskFamily) -> None:
    cap = len(plain.combos("source")) * factorial(5)
    with pytest.raises(ConfigError, match=f"has only {cap}; lower --tasks"):
        plain.tasks("source", cap + 1)


def test_unknown_split(fam: TaskFamily) -> None:
    with pytest.raises(ConfigError, match="Unknown split 'train'"):
        fam.tasks("train", 1)  # type: ignore[arg-type]


# ---- example indices ---------------------------------------------------------------------------
def test_indices_layout_and_disjointness(fam: TaskFamily) -> None:
    for spec in fam.tasks("source", 10) + fam.tasks("target-hard", 3):
        idx = fam.indices(spec)
        assert idx.train.shape == (3 * 20,) and idx.support.shape == (3 * 5,)
        assert idx.test.shape == (3 * 8,)
        assert not set(idx.train) & set(idx.support)
        assert len(set(idx.train)) == len(idx.train) and len(set(idx.test)) == len(idx.test)
        y = fam.data
        # Blocks in label order: block j holds class spec.classes[j].
        np.testing.assert_array_equal(y.train_y[idx.train], np.repeat(spec.classes, 20))
        np.testing.assert_array_equal(y.train_y[idx.support], np.repeat(spec.classes, 5))
        np.testing.assert_array_equal(y.test_y[idx.test], np.repeat(spec.classes, 8))
        labels = fam.labels([20] * 3)
        np.testing.assert_array_equal(labels, np.repeat(np.arange(3), 20))


def test_indices_deterministic_and_seeded(fam: TaskFamily) -> None:
    spec = fam.tasks("source", 1)[0]
    a = fam.indices(spec)
    b = make_family(CFG).indices(spec)
    for x, y in zip((a.train, a.support, a.test), (b.train, b.support, b.test), strict=True):
        np.testing.assert_array_equal(x, y)
    # Only the split seed and the task matter, not e.g. the target fraction.
    c = make_family(CFG.model_copy(update={"target_fraction": 0.6})).indices(spec)
    np.testing.assert_array_equal(a.train, c.train)
    d = make_family(CFG.model_copy(update={"split_seed": 5})).indices(spec)
    assert not np.array_equal(a.train, d.train)
    # The same classes in another order is another task with its own examples.
    rev = fam.task("c" + "_".join(map(str, reversed(spec.classes))))
    assert not np.array_equal(np.sort(fam.indices(rev).train), np.sort(a.train))


def test_indices_errors(fam: TaskFamily) -> None:
    with pytest.raises(ConfigError, match="is not a 3-way task of distinct classes"):
        fam.indices(ClassTask((1, 2), fam))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="is not a 3-way task"):
        fam.indices(ClassTask((1, 1, 2), fam))  # type: ignore[arg-type]
    greedy = make_family(CFG.model_copy(update={"train_per_class": 200}))
    with pytest.raises(DataError, match=r"Class \d of 'digits' has \d+ training images"):
        greedy.indices(greedy.task("c0_1_2"))


# ---- family construction -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("update", "match"),
    [
        ({"ways": 11}, "task.ways=11 exceeds the 10 classes of 'digits'"),
        (
            {"holdout_classes": (3, 10)},
            r"task.holdout_classes has \[10\]; classes of 'digits' are 0..9",
        ),
        ({"holdout_classes": tuple(range(8))}, "leaves fewer classes than task.ways"),
    ],
)
def test_family_config_errors(update: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make_family(CFG.model_copy(update=update))


def test_unknown_family() -> None:
    with pytest.raises(ConfigError, match="Unknown task family 'nope'"):
        make_family(CFG.model_copy(update={"family": "nope"}))


def test_describe(fam: TaskFamily) -> None:
    d = fam.describe()
    assert d["name"] == "digits" and d["num_classes"] == 10 and d["image_shape"] == [1, 8, 8]
    assert d["data_fingerprint"] == fam.data.fingerprint()
    assert d["ways"] == 3 and d["holdout_classes"] == [9] and d["split_seed"] == 0
    assert "data_root" not in d and "family" not in d  # a store does not pin where data lives


def test_register_family(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(FAMILIES, "toy", None)  # restored (removed) after the test

    @register_family
    class Toy(ClassSubsetFamily):
        name = "toy"

        def load(self) -> ImageData:
            y = np.repeat(np.arange(4), 5)
            x = np.zeros((20, 1, 2, 2), np.uint8)
            return ImageData("toy", x, y, x, y, 4, "memory")

    assert FAMILIES["toy"] is Toy
    f = make_family(
        TaskConfig(family="toy", ways=2, train_per_class=3, support_per_class=2, test_per_class=1)
    )
    assert isinstance(f, Toy)
    assert len(f.combos("source")) + len(f.combos("target")) == comb(4, 2)


# ---- families over files the test writes -------------------------------------------------------
def test_fmnist_family_from_data_root(tmp_path: Path) -> None:
    write_fmnist(tmp_path, fake_fmnist(np.random.default_rng(0), n_train=60, n_test=30))
    cfg = TaskConfig(
        family="fmnist",
        data_root=str(tmp_path),
        ways=2,
        train_per_class=4,
        support_per_class=2,
        test_per_class=3,
    )
    f = make_family(cfg)
    assert f.data.image_shape == (1, 6, 6)
    spec = f.tasks("source", 3)[2]
    idx = f.indices(spec)
    np.testing.assert_array_equal(f.data.train_y[idx.train], np.repeat(spec.classes, 4))


def test_cifar10_family_from_data_root(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    f = make_family(TaskConfig(family="cifar10", data_root=str(tmp_path), ways=2))
    assert f.data.image_shape == (3, 32, 32) and f.describe()["image_shape"] == [3, 32, 32]


@needs_fmnist
def test_real_fmnist_family() -> None:
    f = make_family(TaskConfig(family="fmnist", holdout_classes=(9,)))
    tasks = f.tasks("source", 20)
    assert all(9 not in t.classes for t in tasks)
    idx = f.indices(tasks[0])
    assert idx.train.shape == (500,) and not set(idx.train) & set(idx.support)


# ---- the training split alone (what collect encodes) ------------------------------------------
@pytest.mark.parametrize(
    "cfg",
    [
        CFG,
        TaskConfig(family="fewshot-digits", ways=3, shots=5, queries=7),
        TaskConfig(family="fewshot-digits", ways=3, shots=5, queries=7, source_train="all"),
    ],
    ids=["class-subset", "episode", "many-shot episode"],
)
def test_the_training_split_alone_is_the_one_data_gives(cfg: TaskConfig) -> None:
    """``Task.train_set`` (what collect trains on, without the test and support parts) equals
    ``Task.data``'s training split to the bit, through a frozen extractor."""
    family = make_family(cfg)
    torch.manual_seed(0)
    frozen = {"extractor": FeatureExtractor(1, 8).eval().requires_grad_(False)}
    model = ModelConfig(name="head", feature_dim=8)
    for task in family.tasks("source", 2):
        x, y = task.train_set(model, frozen)
        d = task.data(model, frozen)
        assert x.numpy().tobytes() == d.x_train.numpy().tobytes() and torch.equal(y, d.y_train)
        if cfg.source_train == "all":  # a many-shot episode trains on more than its shots
            assert x.shape[0] > 5 * 3
