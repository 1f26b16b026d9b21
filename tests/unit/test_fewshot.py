"""Few-shot episode families (lohp_cli/tasks/fewshot.py): class splits, support/query sets, ids,
bad input, and a collect run on an episode's support set."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lohp_cli.config import CollectConfig, ModelConfig, TaskConfig
from lohp_cli.errors import ConfigError
from lohp_cli.stages import check_names
from lohp_cli.stages.collect import collect
from lohp_cli.store import TrajectoryStore
from lohp_cli.tasks import FAMILIES, Episode, FewShotFamily, make_family
from lohp_cli.tasks.episodes import resize_images
from lohp_cli.tasks.fewshot import meta_test_data
from lohp_cli.tasks.images import class_means
from lohp_cli.tasks.layout import load_flat
from lohp_cli.tasks.models import FeatureExtractor, build_target
from tests.conftest import needs_fmnist, tiny_config

CFG = TaskConfig(family="fewshot-digits", ways=3, shots=5, queries=7)


@pytest.fixture(scope="module")
def fam() -> FewShotFamily:
    return make_family(CFG)  # type: ignore[return-value]


def test_the_families_are_registered() -> None:
    assert {"fewshot-fmnist", "fewshot-digits"} <= set(FAMILIES)


# ---- classes -----------------------------------------------------------------------------------
def test_meta_train_and_meta_test_classes_are_disjoint(fam: FewShotFamily) -> None:
    # no holdout_classes given: the meta-test classes are the upper half
    assert fam.source_classes == (0, 1, 2, 3, 4)
    assert fam.pools["target"].classes == (5, 6, 7, 8, 9)
    for split, allowed in (("source", {0, 1, 2, 3, 4}), ("target", {5, 6, 7, 8, 9})):
        for ep in fam.tasks(split, 50):  # type: ignore[arg-type]
            assert set(ep.classes) <= allowed and ep.split == split
            assert len(set(ep.classes)) == 3


def test_holdout_classes_are_the_meta_test_classes() -> None:
    f = make_family(CFG.model_copy(update={"holdout_classes": (1, 3, 8)}))
    assert f.source_classes == (0, 2, 4, 5, 6, 7, 9)  # type: ignore[attr-defined]
    assert f.pools["target"].classes == (1, 3, 8)  # type: ignore[attr-defined]
    assert {c for e in f.tasks("target", 20) for c in e.classes} == {1, 3, 8}


def test_meta_train_images_are_training_images_meta_test_images_test_images(
    fam: FewShotFamily,
) -> None:
    d = fam.data
    for split, (x, y) in (("source", (d.train_x, d.train_y)), ("target", (d.test_x, d.test_y))):
        ep = fam.tasks(split, 1)[0]  # type: ignore[arg-type]
        support, query = fam.indices(ep)
        images, labels = ep.examples("test")
        assert np.array_equal(images, x[query])
        # label j is data set class classes[j]
        assert np.array_equal(y[query], np.asarray(ep.classes)[labels.numpy()])
        assert np.array_equal(y[support], np.repeat(ep.classes, CFG.shots))


def test_the_standardisation_sees_the_meta_train_classes_only(fam: FewShotFamily) -> None:
    d = fam.data
    rows = np.flatnonzero(np.isin(d.train_y, (0, 1, 2, 3, 4)))[::7]
    x = d.train_x[rows].astype(np.float64) / 255.0
    mean, std = fam.channel_stats()
    assert mean.item() == pytest.approx(x.mean(), rel=1e-6)
    assert std.item() == pytest.approx(x.std() + 1e-6, rel=1e-6)


# ---- support and query -------------------------------------------------------------------------
def test_support_and_query_are_disjoint_and_sized(fam: FewShotFamily) -> None:
    for ep in [*fam.tasks("source", 20), *fam.tasks("target", 20)]:
        support, query = fam.indices(ep)
        assert support.shape == (3 * 5,) and query.shape == (3 * 7,)
        assert not set(support) & set(query)
        assert len(set(support)) == 15 and len(set(query)) == 21


def test_the_training_split_is_the_support_set(fam: FewShotFamily) -> None:
    ep = fam.tasks("target", 1)[0]
    ext = FeatureExtractor(1, 8).eval().requires_grad_(False)
    model = ModelConfig(name="head", feature_dim=8)
    t = ep.data(model, {"extractor": ext})
    assert torch.equal(t.x_train, t.x_support) and torch.equal(t.y_train, t.y_support)
    assert t.y_train.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    assert t.y_test.tolist() == [0] * 7 + [1] * 7 + [2] * 7
    support_images, _ = ep.examples("support")
    assert torch.equal(t.x_train, ext(fam.standardise(support_images)))
    # the condition: class means of the support features only, in label order
    assert torch.allclose(t.condition, class_means(t.x_train, t.y_train, 3))


def test_examples_are_deterministic(fam: FewShotFamily) -> None:
    again = make_family(CFG)
    for ep in fam.tasks("target", 5):
        a, b = fam.indices(ep), again.indices(again.task(ep.id))  # type: ignore[attr-defined]
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    other = make_family(CFG.model_copy(update={"split_seed": 1}))
    ep = fam.tasks("target", 1)[0]
    same_id = other.task(ep.id)
    assert not np.array_equal(fam.indices(ep)[0], other.indices(same_id)[0])  # type: ignore[attr-defined]


# ---- ids ---------------------------------------------------------------------------------------
def test_ids_round_trip(fam: FewShotFamily) -> None:
    for split in ("source", "target"):
        for ep in fam.tasks(split, 30):  # type: ignore[arg-type]
            again = fam.task(ep.id)
            assert again == ep and again.id == ep.id and fam.check_id(ep.id) == ep.id
            assert again.split == split
    ep = fam.task("digits-k5-q7-e123-c7_5_9")
    assert (ep.domain, ep.seed, ep.classes) == ("digits", 123, (7, 5, 9))
    assert ep.describe() == {
        "domain": "digits", "classes": [7, 5, 9], "seed": 123, "shots": 5, "queries": 7,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("c5_6_7", "expected <domain>-k<K>-q<Q>-e<seed>-c<classes>"),
        ("digits-k1-q7-e0-c5_6_7", "1-shot episode with 7 queries"),
        ("digits-k5-q15-e0-c5_6_7", "5-shot episode with 15 queries"),
        ("digits-k5-q7-e00-c5_6_7", "canonical form is digits-k5-q7-e0-c5_6_7"),
        ("digits-k5-q7-e0-c5_6", "not 3 distinct classes"),
        ("digits-k5-q7-e0-c5_5_7", "not 3 distinct classes"),
        ("digits-k5-q7-e0-c4_5_6", "in no split"),  # a meta-train class among meta-test ones
        ("fmnist-k5-q7-e0-c5_6_7", "in no split"),  # another domain
        ("digits-k5-q7-e0-c5_6_17", "in no split"),
    ],
)
def test_foreign_ids_are_refused_by_name(fam: FewShotFamily, bad: str, why: str) -> None:
    with pytest.raises(ConfigError, match=f"'{bad}' is not a task id of family 'fewshot-digits'"):
        fam.task(bad)
    with pytest.raises(ConfigError, match=why):
        fam.task(bad)


def test_600_episodes_are_cheap_and_prefix_stable(fam: FewShotFamily) -> None:
    t0 = time.perf_counter()
    eps = fam.tasks("target", 600)
    assert time.perf_counter() - t0 < 5  # ids only: no image is read
    assert len({e.id for e in eps}) == 600
    assert [e.id for e in fam.tasks("target", 10)] == [e.id for e in eps[:10]]
    assert [e.seed for e in eps[:3]] == [0, 1, 2]
    assert isinstance(eps[0], Episode)


def test_there_is_no_target_hard_split(fam: FewShotFamily) -> None:
    with pytest.raises(ConfigError, match="source .*target .*not 'target-hard'"):
        fam.tasks("target-hard", 1)


# ---- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("update", "match"),
    [
        # digits has about 60 test images per class
        (
            {"shots": 50, "queries": 15},
            r"task.shots \+ task.queries = 50 \+ 15 = 65 exceeds the \d+ "
            r"test images of class \d of 'digits' \(meta-test episodes\)",
        ),
        (
            {"ways": 6},
            "task.ways=6 exceeds the 5 meta-test classes of 'digits' \\(5, 6, 7, 8, 9\\)",
        ),
        ({"ways": 4, "holdout_classes": (0, 1, 2, 3, 4, 5, 6)}, "exceeds the 3 meta-train classes"),
        ({"holdout_classes": (3, 12)}, "task.holdout_classes has \\[12\\]"),
        (
            {"train_per_class": 40},
            "task.train_per_class does not apply to task family 'fewshot-digits'.*support set",
        ),
    ],
)
def test_bad_settings_are_config_errors(update: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make_family(CFG.model_copy(update=update))


def test_few_shot_keys_are_refused_by_other_families() -> None:
    with pytest.raises(ConfigError, match="task.shots, task.meta_test do not apply to task family "
                       "'digits'"):  # fmt: skip
        make_family(TaskConfig(family="digits", shots=5, meta_test="digits"))


def test_an_unknown_meta_test_domain_is_refused_by_its_registry() -> None:
    cfg = TaskConfig(family="fewshot-fmnist", meta_test="omniglot")  # values only
    with pytest.raises(ConfigError, match="^Unknown meta-test domain 'omniglot'; choose from "
                       "digits, fmnist"):  # fmt: skip
        meta_test_data(cfg.meta_test)  # what the family loads its meta-test episodes with
    with pytest.raises(ConfigError, match="task.meta_test: unknown meta-test domain 'omniglot'"):
        check_names(CollectConfig(task=cfg))


def test_describe_names_the_classes_and_other_families_keep_theirs(fam: FewShotFamily) -> None:
    d = fam.describe()
    assert d["meta_train_classes"] == [0, 1, 2, 3, 4] and d["meta_test_classes"] == [5, 6, 7, 8, 9]
    assert (d["shots"], d["queries"], d["meta_test"]) == (5, 7, None)
    assert "train_per_class" not in d and "target_fraction" not in d
    # the class-subset families describe themselves as before (old stores' compat unchanged)
    plain = make_family(TaskConfig(family="digits")).describe()
    assert not {"shots", "queries", "meta_test"} & set(plain)
    assert {"train_per_class", "support_per_class", "target_fraction"} <= set(plain)


# ---- cross-domain ------------------------------------------------------------------------------
def test_resize_images() -> None:
    f = make_family(CFG)
    big = resize_images(f.data, (1, 28, 28))
    assert big.train_x.shape[1:] == (1, 28, 28) and big.test_x.shape[0] == f.data.test_x.shape[0]
    assert big.train_x.dtype == np.uint8 and np.array_equal(big.train_y, f.data.train_y)
    # a constant image stays constant; the same shape is returned as it is
    flat = resize_images(
        type(f.data)("flat", np.full((2, 1, 8, 8), 77, np.uint8), np.zeros(2, np.int64),
                     np.full((1, 1, 8, 8), 77, np.uint8), np.zeros(1, np.int64), 1, "test"),
        (1, 28, 28),
    )  # fmt: skip
    assert (flat.train_x == 77).all() and (flat.test_x == 77).all()
    assert resize_images(f.data, (1, 8, 8)) is f.data
    with pytest.raises(ConfigError, match="1 channel\\(s\\), the family's 3"):
        resize_images(f.data, (3, 28, 28))


@needs_fmnist
def test_cross_domain_meta_test_on_digits() -> None:
    f = make_family(TaskConfig(family="fewshot-fmnist", ways=5, shots=1, meta_test="digits"))
    assert f.source_classes == tuple(range(10))  # type: ignore[attr-defined]
    target = f.pools["target"]  # type: ignore[attr-defined]
    assert target.domain == "digits" and target.classes == tuple(range(10))
    assert target.images.shape[1:] == (1, 28, 28) == f.input_shape
    ep = f.tasks("target", 1)[0]
    assert ep.id.startswith("digits-k1-q15-e0-c") and f.task(ep.id) == ep
    assert f.tasks("source", 1)[0].id.startswith("fmnist-k1-q15-e0-c")
    # digits images are standardised with their own statistics, fmnist's with theirs
    images, _ = ep.examples("test")
    x = target.standardise(images)
    assert x.shape == (75, 1, 28, 28) and torch.isfinite(x).all()
    assert not torch.equal(target.mean, f.pools["source"].mean)  # type: ignore[attr-defined]
    d = f.describe()
    assert d["meta_test_domain"] == "digits" and d["meta_test_fingerprint"] != d["data_fingerprint"]
    # class identities carry the domain: digit 3 is not Fashion-MNIST class 3
    src = {c for e in f.tasks("source", 20) for c in e.class_ids}
    assert ep.class_ids == tuple(f"digits:{c}" for c in ep.classes) and not src & set(ep.class_ids)


def test_episodes_adapt_on_their_support_set_class_subsets_on_their_training_split(
    fam: FewShotFamily,
) -> None:
    ep = fam.tasks("source", 1)[0]
    assert ep.adapt_on == "support" and ep.class_ids == tuple(f"digits:{c}" for c in ep.classes)
    task = make_family(TaskConfig(family="digits")).tasks("source", 1)[0]
    assert task.adapt_on == "train" and task.class_ids == task.classes  # type: ignore[attr-defined]


@needs_fmnist
def test_fashion_mnist_episodes_hold_out_the_upper_half() -> None:
    f = make_family(TaskConfig(family="fewshot-fmnist", ways=5, shots=5))
    assert f.source_classes == (0, 1, 2, 3, 4)  # type: ignore[attr-defined]
    assert {c for e in f.tasks("target", 30) for c in e.classes} == {5, 6, 7, 8, 9}


# ---- collect on the support set ----------------------------------------------------------------
def test_collect_fine_tunes_on_the_support_set_full_batch(tmp_path: Path) -> None:
    """N·K = 3 support images, batch size 16: every step is the full support set."""
    task = {"family": "fewshot-digits", "ways": 3, "shots": 1, "queries": 4}
    cfg = tiny_config(
        tmp_path / "s.zarr",
        task=task,
        model={"name": "head", "feature_dim": 8, "extractor_steps": 5},
        optimizers=["adam"],
        device="cpu",
    )
    collect(cfg)
    store = TrajectoryStore.open(cfg.out, mode="r")
    fam = make_family(cfg.task)
    rids = list(store.run_ids())
    assert len(rids) == 2 and all(r.startswith("digits-k1-q4-e") for r in rids)
    from lohp_cli.store.frozen import load_frozen

    frozen = load_frozen(store, cfg.model, fam)
    for rid in rids:
        attrs = store.run_attrs(rid)
        data = fam.task(attrs["task_id"]).data(cfg.model, frozen)
        assert data.x_train.shape == (3, 8)
        w, loss = store.weights(rid), store.run_array(rid, "loss")
        net = build_target(cfg.model, fam.input_shape, 3)
        for t in (0, 1, len(w) - 1):  # θ_t's recorded loss is its loss on the whole support set
            load_flat(net, torch.from_numpy(w[t]))
            with torch.no_grad():
                full = torch.nn.functional.cross_entropy(net(data.x_train), data.y_train)
            assert loss[t] == pytest.approx(float(full), rel=1e-5)
        assert np.allclose(store.condition(attrs["task_id"]), data.condition.numpy())
    ext = store.load_tensors("extractor")
    assert ext  # trained on the meta-train classes only:
    assert store.root["extractor"].attrs["trained_on_classes"] == [0, 1, 2, 3, 4]
