"""Rotated Fashion-MNIST, the domain-generalization family (lohp_cli/tasks/rotated.py).

Every data set here is a tiny fake Fashion-MNIST written by the test (``--data-root``), so the
tests neither need nor read the real one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lohp_cli.config import CollectConfig, ModelConfig, TaskConfig
from lohp_cli.errors import ConfigError, DataError
from lohp_cli.stages import check_names
from lohp_cli.tasks import RotatedFamily, RotatedTask, make_family
from lohp_cli.tasks.families import check_domain
from lohp_cli.tasks.models import train_extractor
from lohp_cli.tasks.rotated import ROTATIONS, deal_domains, rotate_images
from tests.unit.test_datasets import fake_fmnist, write_fmnist

SIDE = 8


def fake_data(root: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Write a fake Fashion-MNIST (12 training and 4 test images per class and domain, 8×8)."""
    arrays = fake_fmnist(np.random.default_rng(seed), n_train=720, n_test=240, side=SIDE)
    write_fmnist(root, arrays)
    return arrays


def config(root: Path, test_domain: int = 75, **over: object) -> TaskConfig:
    data = {"family": "rotated-fmnist", "test_domain": test_domain, "ways": 3,
            "train_per_class": 5, "support_per_class": 2, "test_per_class": 2,
            "data_root": str(root), **over}  # fmt: skip
    return TaskConfig.model_validate(data)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("fmnist")
    fake_data(d)
    return d


@pytest.fixture(scope="module")
def fam(root: Path) -> RotatedFamily:
    return make_family(config(root))  # type: ignore[return-value]


# ---- rotation ----------------------------------------------------------------------------------
def test_rotation_by_90_degrees_is_a_quarter_turn_counter_clockwise() -> None:
    img = np.arange(2 * 28 * 28, dtype=np.int64).reshape(2, 1, 28, 28).astype(np.uint8)
    out = rotate_images(img, 90)
    np.testing.assert_array_equal(out, np.rot90(img, 1, axes=(2, 3)))
    # the known corner: the top-right pixel moves to the top-left
    assert out[0, 0, 0, 0] == img[0, 0, 0, 27]
    np.testing.assert_array_equal(rotate_images(img, 180), np.rot90(img, 2, axes=(2, 3)))
    assert rotate_images(img, 0) is img and rotate_images(img, 360) is img
    assert out.dtype == np.uint8 and out.shape == img.shape


def test_rotation_is_deterministic_and_fills_corners_with_zero() -> None:
    img = np.full((3, 1, SIDE, SIDE), 200, np.uint8)
    a, b = rotate_images(img, 45), rotate_images(img, 45)
    assert a.tobytes() == b.tobytes()
    assert a[0, 0, 0, 0] == 0 and a[0, 0, SIDE // 2, SIDE // 2] == 200  # corner out, centre kept


def test_domains_are_dealt_disjointly_in_near_equal_shares() -> None:
    d = deal_domains(20, 6, seed=3)
    counts = np.bincount(d, minlength=6)
    assert counts.sum() == 20 and counts.max() - counts.min() <= 1
    np.testing.assert_array_equal(d, deal_domains(20, 6, seed=3))
    assert not np.array_equal(d, deal_domains(20, 6, seed=4))


# ---- config ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"family": "rotated-fmnist"}, "needs task.test_domain.*0, 15, 30, 45, 60, 75"),
        ({"family": "rotated-fmnist", "test_domain": 90}, "test_domain=90 is not a domain"),
        ({"family": "fmnist", "test_domain": 15}, "'fmnist' has no domains"),
    ],
)
def test_test_domain_is_checked_by_the_family_registry(data: dict, match: str) -> None:
    cfg = TaskConfig.model_validate(data)  # the config checks values only
    with pytest.raises(ConfigError, match=match):
        check_domain(cfg)
    with pytest.raises(ConfigError, match=rf"^Invalid config: task: .*{match}"):
        check_names(CollectConfig(task=cfg))


def test_family_refuses_held_out_classes(root: Path) -> None:
    with pytest.raises(ConfigError, match="holds out a domain.*not classes"):
        make_family(config(root, holdout_classes=(3,)))


def test_describe_records_the_domains_and_fmnist_keeps_its_keys(fam: RotatedFamily) -> None:
    d = fam.describe()
    assert d["name"] == "rotated-fmnist" and d["test_domain"] == 75
    assert d["domains"] == [0, 15, 30, 45, 60, 75]
    assert d["data_fingerprint"] == fam.data.fingerprint()  # of the unrotated images
    plain = make_family(TaskConfig(family="digits")).describe()
    assert "test_domain" not in plain and "domains" not in plain  # older stores stay compatible


# ---- task ids ----------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(st.sampled_from(ROTATIONS), st.permutations(range(10)))
def test_task_id_round_trip(fam: RotatedFamily, domain: int, perm: list[int]) -> None:
    tid = f"r{domain}_c" + "_".join(map(str, perm[:3]))
    task = fam.task(tid)
    assert (task.domain, task.classes) == (domain, tuple(perm[:3]))
    assert task.id == tid and fam.task(task.id) == task and fam.check_id(tid) == tid
    assert task.describe() == {"classes": list(perm[:3]), "domain": domain}


@pytest.mark.parametrize(
    "bad",
    ["", "c1_2_3", "r15", "r15_", "x15_c1_2_3", "r90_c1_2_3", "r015_c1_2_3", "r15_c1_1_2",
     "r15_c1_2", "r15_c1_2_10", "r15_1_2_3", "r-0_c1_2_3"],
)  # fmt: skip
def test_foreign_task_ids_are_refused_by_name(fam: RotatedFamily, bad: str) -> None:
    with pytest.raises(ConfigError, match=f"'{bad}' is not a task id of family 'rotated-fmnist'"):
        fam.task(bad)


# ---- the domain split --------------------------------------------------------------------------
@pytest.mark.parametrize("held_out", ROTATIONS)
def test_no_source_task_uses_the_held_out_domain(root: Path, held_out: int) -> None:
    f = make_family(config(root, held_out))
    source, target = f.tasks("source", 60), f.tasks("target", 20)
    assert {t.domain for t in source} == set(ROTATIONS) - {held_out}  # 60 draws reach all five
    assert {t.domain for t in target} == {held_out}
    assert all(t.split == "source" for t in source) and all(t.split == "target" for t in target)
    assert len({t.id for t in source}) == 60  # no task twice
    for t in source[:10]:
        idx = f.indices(t)
        for part, rows in (("train", idx.train), ("train", idx.support), ("test", idx.test)):
            assert set(f.domain_of(part)[rows]) == {t.domain} != {held_out}


def test_any_class_combination_can_be_a_target_task(fam: RotatedFamily) -> None:
    """DG holds out a domain, not classes: a source task's classes appear in the target domain."""
    src = fam.tasks("source", 5)[0]
    same = fam.task(f"r75_c{'_'.join(map(str, src.classes))}")
    assert same.split == "target" and same.classes == src.classes
    targets = fam.tasks("target", 200)
    assert set().union(*(t.classes for t in targets)) == set(range(10))


def test_task_sequences_are_stable_prefixes(fam: RotatedFamily) -> None:
    assert [t.id for t in fam.tasks("source", 4)] == [t.id for t in fam.tasks("source", 9)[:4]]


def test_split_errors(fam: RotatedFamily) -> None:
    with pytest.raises(ConfigError, match="no target-hard split.*--tasks target"):
        fam.tasks("target-hard", 1)
    with pytest.raises(ConfigError, match="721 target tasks asked for.*only 720"):
        fam.tasks("target", 721)  # 10·9·8 ordered 3-way tasks in one domain
    greedy = make_family(fam.cfg.model_copy(update={"train_per_class": 40}))
    with pytest.raises(DataError, match=r"Class \d of 'rotated-fmnist' in domain 15°"):
        greedy.indices(greedy.task("r15_c0_1_2"))


def test_task_images_are_their_domain_images_rotated(fam: RotatedFamily, root: Path) -> None:
    raw = make_family(TaskConfig(family="fmnist", data_root=str(root))).data
    task = fam.task("r45_c3_1_7")
    images, y = task.examples("train")
    rows = fam.indices(task).train
    np.testing.assert_array_equal(images, rotate_images(raw.train_x[rows], 45))
    assert set(raw.train_y[rows[y.numpy() == 0]]) == {3}  # label 0 is class 3
    test_images, _ = task.examples("test")
    rows = fam.indices(task).test
    np.testing.assert_array_equal(test_images, rotate_images(raw.test_x[rows], 45))


def test_in_source_domains_is_the_same_task_elsewhere(fam: RotatedFamily) -> None:
    task = fam.task("r75_c2_0_5")
    others = fam.in_source_domains(task)
    assert [t.id for t in others] == [f"r{d}_c2_0_5" for d in (0, 15, 30, 45, 60)]
    assert all(isinstance(t, RotatedTask) and t.split == "source" for t in others)
    digits = make_family(TaskConfig(family="digits"))
    with pytest.raises(ConfigError, match="'digits' has no domains"):
        digits.in_source_domains(digits.tasks("target", 1)[0])


# ---- what is trained once per store sees source domains only ----------------------------------
def test_extractor_data_excludes_the_held_out_domain(fam: RotatedFamily) -> None:
    rows = fam.extractor_rows()
    domains = fam.domain_of("train")[rows]
    assert 75 not in domains and set(domains) == {0, 15, 30, 45, 60}
    assert len(rows) == (fam.domain_of("train") != 75).sum()  # every source-domain image
    x, y, k = fam.extractor_data()
    assert k == 10 and len(x) == len(y) == len(rows)
    assert fam.extractor_scope()["trained_on_domains"] == [0, 15, 30, 45, 60]


def test_extractor_and_statistics_never_read_the_held_out_domain(tmp_path: Path) -> None:
    """Known answer: replacing every held-out-domain image changes neither the extractor nor the
    standardisation; replacing one source-domain image changes both."""
    arrays = fake_data(tmp_path / "a")
    ref = make_family(config(tmp_path / "a"))
    held = ref.domain_of("train") == 75
    poisoned = {**arrays, "train_x": arrays["train_x"].copy()}
    poisoned["train_x"][held] = 255 - poisoned["train_x"][held]
    write_fmnist(tmp_path / "b", poisoned)
    source = {**arrays, "train_x": arrays["train_x"].copy()}
    source["train_x"][np.flatnonzero(~held)[:40]] = 0
    write_fmnist(tmp_path / "c", source)
    model = ModelConfig(feature_dim=4, extractor_steps=3)

    def trained(root: Path) -> tuple[list[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        f = make_family(config(root))
        ext = train_extractor(f, model, seed=0, batch_size=64)
        return list(ext.state_dict().values()), f.channel_stats()

    (wa, sa), (wb, sb), (wc, sc) = (trained(tmp_path / d) for d in "abc")
    assert all(torch.equal(a, b) for a, b in zip(wa, wb, strict=True))
    assert torch.equal(sa[0], sb[0]) and torch.equal(sa[1], sb[1])
    assert not all(torch.equal(a, c) for a, c in zip(wa, wc, strict=True))
    assert not torch.equal(sa[0], sc[0])
