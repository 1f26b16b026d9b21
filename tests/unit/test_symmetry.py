"""Class-order augmentation: a permuted run is a valid run of the permuted task."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lohp_cli.config import ModelConfig
from lohp_cli.errors import ConfigError
from lohp_cli.tasks.images import class_means
from lohp_cli.tasks.layout import ParamLayout, flat_params, functional_forward
from lohp_cli.tasks.models import build_target
from lohp_cli.tasks.symmetry import ClassSymmetry

C = 4


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_target(ModelConfig(name=name, hidden=8, feature_dim=6), (1, 8, 8), C)


def _inputs(name: str, n: int = 24) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn((n, 6) if name == "head" else (n, 1, 8, 8), generator=g)


def _sym(model: torch.nn.Module, cond_dim: int = C * 3) -> ClassSymmetry:
    return ClassSymmetry.of(ParamLayout.of(model), C, cond_dim)


@pytest.mark.parametrize("name", ["head", "mlp", "cnn"])
def test_permuted_weights_predict_the_permuted_labels(name: str) -> None:
    model = _model(name)
    sym = _sym(model)
    theta = flat_params(model) + 0.3 * torch.randn(ParamLayout.of(model).size)
    perm = torch.tensor([2, 0, 3, 1])
    new = theta[sym.weight_index(perm[None])[0]]
    x = _inputs(name)
    model.train()
    old_logits = functional_forward(model, theta, x)
    new_logits = functional_forward(model, new, x)
    # new label j is old class perm[j]
    torch.testing.assert_close(new_logits, old_logits[:, perm])
    assert not torch.equal(new, theta)


def test_condition_blocks_follow_the_labels() -> None:
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(40, 3, generator=g)
    y = torch.arange(40) % C
    perm = torch.tensor([3, 1, 0, 2])
    inverse = torch.argsort(perm)
    cond = class_means(feats, y, C)  # [C*3]
    cond_new = class_means(feats, inverse[y], C)  # the reordered task's condition
    sym = _sym(_model("head"))
    torch.testing.assert_close(cond[sym.cond_index(perm[None])[0]], cond_new)


def test_adam_is_equivariant_to_reordering_the_classes() -> None:
    """The premise of the augmentation: an optimizer's run on the reordered task from the reordered
    start is the reordered run."""
    model = _model("head")
    sym = _sym(model)
    x, y = _inputs("head", 32), torch.arange(32) % C
    perm = torch.tensor([1, 3, 0, 2])
    idx = sym.weight_index(perm[None])[0]

    def run(theta: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        theta = theta.clone().requires_grad_(True)
        opt = torch.optim.Adam([theta], lr=0.05)
        for _ in range(5):
            loss = torch.nn.functional.cross_entropy(functional_forward(model, theta, x), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return theta.detach()

    theta0 = flat_params(model)
    torch.testing.assert_close(run(theta0[idx], torch.argsort(perm)[y]), run(theta0, y)[idx])


@settings(max_examples=25, deadline=None)
@given(st.permutations(list(range(C))), st.integers(0, 2**16))
def test_symmetrized_vectors_are_invariant(perm: list[int], seed: int) -> None:
    sym = _sym(_model("mlp"))
    g = torch.Generator().manual_seed(seed)
    v = sym.symmetrize(torch.randn(sym.size, generator=g))
    c = sym.symmetrize_cond(torch.randn(sym.cond_dim, generator=g))
    p = torch.tensor(perm)[None]
    torch.testing.assert_close(v[sym.weight_index(p)[0]], v)
    torch.testing.assert_close(c[sym.cond_index(p)[0]], c)


def test_permute_batches_and_random_perms_are_permutations() -> None:
    sym = _sym(_model("head"))
    g = torch.Generator().manual_seed(0)
    perms = sym.random_perms(6, g)
    assert sorted(perms[0].tolist()) == list(range(C))
    x = torch.randn(6, 3, sym.size)
    cond = torch.randn(6, sym.cond_dim)
    px, pc = sym.permute(x, cond, perms)
    for b in range(6):
        for t in range(3):
            assert sorted(px[b, t].tolist()) == sorted(x[b, t].tolist())
        torch.testing.assert_close(px[b], x[b][:, sym.weight_index(perms[b : b + 1])[0]])
        torch.testing.assert_close(pc[b], cond[b][sym.cond_index(perms[b : b + 1])[0]])


def test_models_without_a_class_output_layer_are_refused() -> None:
    layout = ParamLayout.from_json([{"name": "theta", "shape": [12], "offset": 0}])
    assert not ClassSymmetry.applies(layout, C, 8)
    assert not ClassSymmetry.applies(ParamLayout.of(_model("head")), None, 8)
    assert not ClassSymmetry.applies(ParamLayout.of(_model("head")), C, 7)
    with pytest.raises(ConfigError, match="augment='none'"):
        ClassSymmetry.of(layout, C, 8)
