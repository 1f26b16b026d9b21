"""Target models, flat parameter layout, task inputs (lohp_cli/tasks/models.py, inputs.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lohp_cli.config import ModelConfig, TaskConfig
from lohp_cli.errors import CompatibilityError
from lohp_cli.tasks import TaskFamily, make_family
from lohp_cli.tasks.images import class_means
from lohp_cli.tasks.layout import (
    ParamEntry,
    ParamLayout,
    flat_params,
    functional_forward,
    load_flat,
)
from lohp_cli.tasks.models import MLP, FeatureExtractor, SmallCNN, build_target, train_extractor

TASK = TaskConfig(family="digits", ways=3, train_per_class=6, support_per_class=4, test_per_class=5)


@pytest.fixture(scope="module")
def fam() -> TaskFamily:
    return make_family(TASK)


def models() -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    torch.manual_seed(0)
    return [
        ("head", build_target(ModelConfig(name="head", feature_dim=6), (1, 8, 8), 3), (6,)),
        ("mlp", build_target(ModelConfig(name="mlp", hidden=5), (1, 8, 8), 3), (1, 8, 8)),
        ("mlp-big", MLP((2, 20, 18), 4, 3), (2, 20, 18)),
        ("cnn", build_target(ModelConfig(name="cnn", hidden=8), (3, 8, 8), 4).eval(), (3, 8, 8)),
    ]


# ---- parameter counts --------------------------------------------------------------------------
def test_param_counts() -> None:
    def count(m: nn.Module) -> int:
        return ParamLayout.of(m).size

    assert (
        count(build_target(ModelConfig(name="head", feature_dim=64), (1, 28, 28), 5)) == 64 * 5 + 5
    )
    # mlp pools 28×28 to 14×14: 196 inputs per channel.
    assert count(build_target(ModelConfig(name="mlp", hidden=32), (1, 28, 28), 5)) == (
        196 * 32 + 32 + 32 * 5 + 5
    )
    assert count(build_target(ModelConfig(name="mlp", hidden=8), (3, 8, 8), 2)) == (
        3 * 64 * 8 + 8 + 8 * 2 + 2
    )
    c1, c2 = 8, 16  # hidden // 4, hidden // 2
    cnn = build_target(ModelConfig(name="cnn", hidden=32), (3, 32, 32), 10)
    assert isinstance(cnn, SmallCNN)
    assert count(cnn) == (3 * c1 * 9 + c1) + 2 * c1 + (c1 * c2 * 9 + c2) + 2 * c2 + c2 * 10 + 10


def test_build_target_uses_the_global_rng() -> None:
    cfg = ModelConfig(name="mlp", hidden=4)
    torch.manual_seed(3)
    a = flat_params(build_target(cfg, (1, 8, 8), 3))
    torch.manual_seed(3)
    b = flat_params(build_target(cfg, (1, 8, 8), 3))
    c = flat_params(build_target(cfg, (1, 8, 8), 3))
    assert torch.equal(a, b) and not torch.equal(a, c)


# ---- layout ------------------------------------------------------------------------------------
@pytest.mark.parametrize("idx", range(4))
def test_layout_matches_named_parameters(idx: int) -> None:
    _, m, _ = models()[idx]
    layout = ParamLayout.of(m)
    named = list(m.named_parameters())
    assert [e.name for e in layout.entries] == [n for n, _ in named]
    assert [e.shape for e in layout.entries] == [tuple(p.shape) for _, p in named]
    offsets = np.cumsum([0] + [p.numel() for _, p in named])[:-1].tolist()
    assert [e.offset for e in layout.entries] == offsets
    assert layout.size == sum(p.numel() for _, p in named) == flat_params(m).numel()


@pytest.mark.parametrize("idx", range(4))
def test_layout_json_round_trip(idx: int) -> None:
    layout = ParamLayout.of(models()[idx][1])
    again = ParamLayout.from_json(json.loads(json.dumps(layout.to_json())))
    assert again == layout


@given(st.lists(st.lists(st.integers(1, 4), min_size=0, max_size=3), min_size=1, max_size=5))
def test_unflatten_round_trip(shapes: list[list[int]]) -> None:
    entries, offset = [], 0
    for i, shape in enumerate(shapes):
        e = ParamEntry(f"p{i}", tuple(shape), offset)
        entries.append(e)
        offset += e.numel
    layout = ParamLayout(tuple(entries))
    assert layout.size == offset
    flat = torch.arange(offset, dtype=torch.float32)
    parts = layout.unflatten(flat)
    assert list(parts) == [e.name for e in entries]
    for e in entries:
        assert parts[e.name].shape == e.shape
    rebuilt = torch.cat([t.reshape(-1) for t in parts.values()]) if parts else flat
    assert torch.equal(rebuilt, flat)
    # Views, not copies: writing through one changes the flat vector.
    first = entries[0]
    parts[first.name].reshape(-1)[0] = -1.0
    assert flat[first.offset] == -1.0
    assert ParamLayout.from_json(layout.to_json()) == layout


def test_unflatten_wrong_size() -> None:
    _, m, shape = models()[1]
    n = ParamLayout.of(m).size
    with pytest.raises(
        CompatibilityError, match=f"has {n + 1} entries; this model's layout has {n}"
    ):
        ParamLayout.of(m).unflatten(torch.zeros(n + 1))
    with pytest.raises(CompatibilityError, match=f"has {n - 1} entries"):
        load_flat(m, torch.zeros(n - 1))
    with pytest.raises(CompatibilityError):
        functional_forward(m, torch.zeros(n + 3), torch.zeros(2, *shape))


# ---- flat parameters ---------------------------------------------------------------------------
@settings(max_examples=20, deadline=None)
@given(hidden=st.integers(1, 6), classes=st.integers(2, 5), seed=st.integers(0, 2**31))
def test_load_flat_flat_params_round_trip(hidden: int, classes: int, seed: int) -> None:
    m = MLP((1, 8, 8), hidden, classes)
    g = torch.Generator().manual_seed(seed)
    flat = torch.randn(ParamLayout.of(m).size, generator=g)
    load_flat(m, flat)
    assert torch.equal(flat_params(m), flat)
    # Each named parameter holds its slice.
    for e in ParamLayout.of(m).entries:
        p = dict(m.named_parameters())[e.name]
        assert torch.equal(p.detach().reshape(-1), flat[e.offset : e.offset + e.numel])


def test_flat_params_is_a_detached_copy() -> None:
    m = models()[1][1]
    before = [p.detach().clone() for p in m.parameters()]
    flat = flat_params(m)
    assert not flat.requires_grad
    flat.add_(1.0)
    for p, b in zip(m.parameters(), before, strict=True):
        assert torch.equal(p.detach(), b)


@pytest.mark.parametrize("idx", range(4))
def test_functional_forward_equals_module_forward(idx: int) -> None:
    name, m, in_shape = models()[idx]
    x = torch.randn(4, *in_shape, generator=torch.Generator().manual_seed(idx))
    with torch.no_grad():
        expected = m(x)
    assert torch.equal(functional_forward(m, flat_params(m), x), expected)
    # Other weights: same as loading them into a copy of the module.
    other = torch.randn(ParamLayout.of(m).size, generator=torch.Generator().manual_seed(9))
    before = flat_params(m)
    out = functional_forward(m, other, x)
    assert torch.equal(flat_params(m), before), "functional_forward must not touch the module"
    load_flat(m, other)
    with torch.no_grad():
        assert torch.equal(out, m(x)), name


def test_functional_forward_is_differentiable() -> None:
    _, m, in_shape = models()[1]
    x = torch.randn(5, *in_shape, generator=torch.Generator().manual_seed(0))
    flat = flat_params(m).requires_grad_(True)
    functional_forward(m, flat, x).square().sum().backward()
    m.zero_grad()
    m(x).square().sum().backward()
    expected = torch.cat([p.grad.reshape(-1) for p in m.parameters()])
    torch.testing.assert_close(flat.grad, expected, rtol=0, atol=0)


# ---- task inputs -------------------------------------------------------------------------------
@given(
    n=st.integers(1, 12),
    classes=st.integers(1, 4),
    feat=st.integers(1, 3),
    seed=st.integers(0, 1000),
)
def test_class_means_brute_force(n: int, classes: int, feat: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, feat, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=g)
    out = class_means(x, y, classes)
    assert out.shape == (classes * feat,)
    expected = torch.zeros(classes, feat, dtype=torch.float64)
    for c in range(classes):
        rows = [x[i] for i in range(n) if int(y[i]) == c]
        if rows:  # an empty class gives zeros
            expected[c] = sum(rows) / len(rows)
    torch.testing.assert_close(out, expected.reshape(-1))


def test_channel_stats_and_standardise(fam: TaskFamily) -> None:
    mean, std = fam.channel_stats()
    sample = fam.data.train_x[::7].astype(np.float64) / 255.0
    assert mean.shape == (1,) and std.shape == (1,)
    assert float(mean[0]) == pytest.approx(sample.mean(), rel=1e-6)
    assert float(std[0]) == pytest.approx(sample.std() + 1e-6, rel=1e-6)
    imgs = fam.data.train_x[:3]
    out = fam.standardise(imgs)
    expected = (torch.from_numpy(imgs.astype(np.float32)) / 255.0 - mean[0]) / std[0]
    torch.testing.assert_close(out, expected)
    assert out.dtype == torch.float32 and out.shape == (3, 1, 8, 8)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_image_condition_brute_force(fam: TaskFamily, name: str) -> None:
    cfg = ModelConfig(name=name, hidden=8)
    spec = fam.tasks("source", 2)[1]
    t = spec.data(cfg, {})
    assert t.condition.shape == (fam.condition_dim(cfg),) == (3 * 1 * 49,)
    assert t.condition.dtype == torch.float32
    # Brute force: mean over each class's support images of the 7×7 average-pooled image.
    idx = fam.indices(spec)
    expected = []
    for j, cls in enumerate(spec.classes):
        rows = idx.support[j * 4 : (j + 1) * 4]
        assert (fam.data.train_y[rows] == cls).all()
        pooled = nn.functional.adaptive_avg_pool2d(fam.standardise(fam.data.train_x[rows]), 7)
        expected.append(pooled.reshape(4, -1).mean(0))
    torch.testing.assert_close(t.condition, torch.cat(expected))
    # Train/test tensors: standardised images in label order.
    assert t.x_train.shape == (18, 1, 8, 8) and t.x_test.shape == (15, 1, 8, 8)
    assert torch.equal(t.y_train, torch.arange(3).repeat_interleave(6))
    assert torch.equal(t.y_test, torch.arange(3).repeat_interleave(5))
    assert torch.equal(t.x_train, fam.standardise(fam.data.train_x[idx.train]))


def test_head_condition(fam: TaskFamily) -> None:
    cfg = ModelConfig(name="head", feature_dim=5)
    torch.manual_seed(0)
    ext = FeatureExtractor(1, 5).eval()
    spec = fam.tasks("source", 1)[0]
    t = spec.data(cfg, {"extractor": ext})
    assert t.condition.shape == (fam.condition_dim(cfg),) == (15,)
    idx = fam.indices(spec)
    with torch.no_grad():
        feats = ext(fam.standardise(fam.data.train_x[idx.support]))  # [12, 5]
        expected = torch.cat([feats[j * 4 : (j + 1) * 4].mean(0) for j in range(3)])
        assert torch.equal(t.x_train, ext(fam.standardise(fam.data.train_x[idx.train])))
    torch.testing.assert_close(t.condition, expected)
    assert t.x_train.shape == (18, 5)
    with pytest.raises(ValueError, match="feature extractor"):
        spec.data(cfg, {})


def test_condition_dim_multichannel(tmp_path) -> None:
    from tests.unit.test_datasets import write_cifar

    write_cifar(tmp_path, sizes=(40,), test=20)
    f = make_family(TaskConfig(family="cifar10", data_root=str(tmp_path), ways=2))
    assert f.condition_dim(ModelConfig(name="cnn")) == 2 * 3 * 49
    assert f.condition_dim(ModelConfig(name="head", feature_dim=7)) == 14


def test_train_extractor_is_deterministic_and_frozen(fam: TaskFamily) -> None:
    cfg = ModelConfig(name="head", feature_dim=4, extractor_steps=3)
    a = train_extractor(fam, cfg, seed=11, batch_size=8)
    b = train_extractor(fam, cfg, seed=11, batch_size=8)
    c = train_extractor(fam, cfg, seed=12, batch_size=8)
    assert not a.training and not any(p.requires_grad for p in a.parameters())
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    # Training moved it away from its seeded initialisation.
    torch.manual_seed(11)
    init = FeatureExtractor(1, 4).state_dict()
    assert any(not torch.equal(sa[k], init[k]) for k in sa)
