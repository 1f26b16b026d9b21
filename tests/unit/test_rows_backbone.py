"""The ``rows`` backbone: equivariant to reordering hidden units and classes, the identity when
untrained, a parameter count that does not grow with the number of units, and a policy that
trains and loads through ``lohp train-policy``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from lohp_cli.config import ModelConfig, PolicyConfig
from lohp_cli.errors import ConfigError
from lohp_cli.policy.backbone import build_backbone
from lohp_cli.policy.directory import load_policy
from lohp_cli.policy.gaussian import LoHpPolicy
from lohp_cli.policy.rows import RowSetBackbone, unit_layers
from lohp_cli.tasks.layout import ParamLayout
from lohp_cli.tasks.models import build_target
from lohp_cli.tasks.symmetry import ClassSymmetry
from tests.cli.runner import invoke, plain
from tests.conftest import make_class_store, make_linear_store

CFG = PolicyConfig(backbone="rows", emb_dim=8, width=16, blocks=2, heads=4)
C = 5  # classes
COND = {"head": C * 6, "mlp": C * 49, "cnn": C * 49}  # class blocks of the condition


def target_layout(name: str, hidden: int = 8) -> ParamLayout:
    net = build_target(ModelConfig(name=name, hidden=hidden, feature_dim=6), (1, 28, 28), C)
    return ParamLayout.of(net)


def randomised(
    layout: ParamLayout, cond_dim: int, seed: int = 0, cfg: PolicyConfig = CFG
) -> RowSetBackbone:
    """A rows backbone whose zero-initialised output layers are random (else every output is 0
    and equivariance holds trivially)."""
    torch.manual_seed(seed)
    bb = build_backbone(layout, cond_dim, 4, cfg)
    assert isinstance(bb, RowSetBackbone)
    with torch.no_grad():
        for m in bb.modules():
            if isinstance(m, nn.Linear) and not m.weight.any():
                m.weight.normal_(0, 0.3)
                m.bias.normal_(0, 0.3)
    return bb.double()


Perms = list[tuple[str, int, torch.Tensor]]  # (entry name, dim, π)


def unit_permutation(layout: ParamLayout, perms: Perms) -> torch.Tensor:
    """Gather index ``[P]`` that reorders units: each ``(entry name, dim, π)`` is applied as
    ``new[..., j, ...] = old[..., π[j], ...]`` on that entry's dim."""
    views = layout.unflatten(torch.arange(layout.size))
    for name, dim, pi in perms:
        views[name] = views[name].index_select(dim, pi)
    return torch.cat([views[e.name].reshape(-1) for e in layout.entries])


def hidden_perms(name: str, gen: torch.Generator) -> Perms:
    """A random reordering of every hidden layer's units of target model ``name`` (hidden 8)."""
    if name == "mlp":
        pi = torch.randperm(8, generator=gen)
        return [("fc1.weight", 0, pi), ("fc1.bias", 0, pi), ("fc2.weight", 1, pi)]
    p1, p2 = torch.randperm(2, generator=gen), torch.randperm(4, generator=gen)  # c1 = 2, c2 = 4
    own = ("weight", "bias")
    return [
        *[(f"features.{m}.{w}", 0, p1) for m in (0, 1) for w in own],  # conv 1 and its BatchNorm
        ("features.4.weight", 1, p1),
        *[(f"features.{m}.{w}", 0, p2) for m in (4, 5) for w in own],  # conv 2 and its BatchNorm
        ("fc.weight", 1, p2),
    ]


def call(bb: RowSetBackbone, s: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    emb = torch.randn(s.shape[0], 8, generator=torch.Generator().manual_seed(1)).double()
    return bb(s, emb, cond)


# ---- equivariance -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_reordering_hidden_units_reorders_the_output(name: str) -> None:
    layout = target_layout(name)
    bb = randomised(layout, COND[name])
    gen = torch.Generator().manual_seed(2)
    s = torch.randn(3, layout.size, generator=gen).double()
    cond = torch.randn(3, COND[name], generator=gen).double()
    idx = unit_permutation(layout, hidden_perms(name, gen))
    assert not torch.equal(idx, torch.arange(layout.size))
    out = call(bb, s, cond)  # [B, 2, P]
    assert out.abs().max() > 1e-2
    torch.testing.assert_close(call(bb, s[:, idx], cond), out[:, :, idx])


@pytest.mark.parametrize("name", ["head", "mlp", "cnn"])
def test_with_the_gradient_channel_reordering_units_reorders_the_output(name: str) -> None:
    """state_input = "grad": the state and the gradient ``[B, 2, P]`` are read unit by unit, so
    reordering hidden units (both channels) and classes (with their condition blocks) reorders
    the step; the gradient channel changes the output."""
    layout = target_layout(name)
    cfg = CFG.model_copy(update={"state_input": "grad"})
    bb = randomised(layout, COND[name], cfg=cfg)
    gen = torch.Generator().manual_seed(3)
    s = torch.randn(3, 2, layout.size, generator=gen).double()
    cond = torch.randn(3, COND[name], generator=gen).double()
    out = call(bb, s, cond)  # [B, 2, P]
    other = s.clone()
    other[:, 1] = torch.randn(3, layout.size, generator=gen).double()
    assert not torch.allclose(call(bb, other, cond), out)
    if name != "head":
        idx = unit_permutation(layout, hidden_perms(name, gen))
        torch.testing.assert_close(call(bb, s[:, :, idx], cond), out[:, :, idx])
    sym = ClassSymmetry.of(layout, C, COND[name])
    perms = torch.randperm(C, generator=gen).repeat(3, 1)
    wi, ci = sym.weight_index(perms), sym.cond_index(perms)  # [B, P], [B, D]
    s_p = torch.gather(s, 2, wi[:, None].expand(-1, 2, -1))
    out_p = call(bb, s_p, torch.gather(cond, 1, ci))
    torch.testing.assert_close(out_p, torch.gather(out, 2, wi[:, None].expand(-1, 2, -1)))


def test_reordering_input_coordinates_is_not_a_symmetry() -> None:
    """The control: the first layer's inputs (pixels) are not a set, so reordering them changes
    the output by more than a reordering."""
    layout = target_layout("mlp")
    bb = randomised(layout, COND["mlp"])
    gen = torch.Generator().manual_seed(2)
    s = torch.randn(3, layout.size, generator=gen).double()
    cond = torch.randn(3, COND["mlp"], generator=gen).double()
    idx = unit_permutation(layout, [("fc1.weight", 1, torch.randperm(196, generator=gen))])
    assert not torch.allclose(call(bb, s[:, idx], cond), call(bb, s, cond)[:, :, idx])


@pytest.mark.parametrize("name", ["head", "mlp", "cnn"])
def test_reordering_classes_and_their_condition_blocks_reorders_the_output(name: str) -> None:
    layout = target_layout(name)
    bb = randomised(layout, COND[name])
    assert bb.takes_condition
    sym = ClassSymmetry.of(layout, C, COND[name])
    gen = torch.Generator().manual_seed(3)
    s = torch.randn(3, layout.size, generator=gen).double()
    cond = torch.randn(3, COND[name], generator=gen).double()
    perms = sym.random_perms(3, gen)
    wi, ci = sym.weight_index(perms), sym.cond_index(perms)  # [B, P], [B, D]
    out = call(bb, s, cond)
    moved = call(bb, torch.gather(s, 1, wi), torch.gather(cond, 1, ci))
    torch.testing.assert_close(moved, torch.gather(out, 2, wi[:, None].expand(-1, 2, -1)))


def test_the_policy_is_equivariant_to_classes_and_leaves_the_condition_out_of_emb() -> None:
    """Through LoHpPolicy: the condition reaches the backbone block by block, not through the
    (class-ordered) embedding, so the whole policy step is class-equivariant."""
    layout = target_layout("head")
    torch.manual_seed(0)
    policy = LoHpPolicy(layout.size, COND["head"], 4, torch.full((4,), 0.1), CFG, layout=layout)
    policy.backbone = randomised(layout, COND["head"]).float()
    assert policy.backbone_takes_condition
    sym = ClassSymmetry.of(layout, C, COND["head"])
    gen = torch.Generator().manual_seed(4)
    s = torch.randn(2, layout.size, generator=gen)
    cond = torch.randn(2, COND["head"], generator=gen)
    i = torch.tensor([0, 3])
    perms = sym.random_perms(2, gen)
    wi, ci = sym.weight_index(perms), sym.cond_index(perms)
    f, b = policy.means(s, i, cond)
    fp, bp = policy.means(torch.gather(s, 1, wi), i, torch.gather(cond, 1, ci))
    torch.testing.assert_close(fp, torch.gather(f, 1, wi), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bp, torch.gather(b, 1, wi), atol=1e-5, rtol=1e-5)


# ---- routing: what a layer reads and writes lands on its own coordinates (issue 22) -------------
def cnn_backbone() -> tuple[ParamLayout, RowSetBackbone]:
    layout = target_layout("cnn")
    torch.manual_seed(0)
    bb = build_backbone(layout, COND["cnn"], 4, CFG)
    assert isinstance(bb, RowSetBackbone)
    return layout, bb


def written(layout: ParamLayout, bb: RowSetBackbone) -> torch.Tensor:
    """The forward channel of the backbone's step ``[P]`` at a random state."""
    gen = torch.Generator().manual_seed(3)
    s = torch.randn(1, layout.size, generator=gen)
    emb = torch.randn(1, 8, generator=gen)
    cond = torch.randn(1, COND["cnn"], generator=gen)
    with torch.no_grad():
        return bb(s, emb, cond)[0, 0]


def test_a_conv_kernel_entry_is_written_to_its_own_coordinates() -> None:
    """Kernel position q of the fed conv's edge output (its bias alone) writes ``W[i, j, q]`` for
    every edge (i, j) and nothing else: the edges are scattered back in layout order."""
    layout, bb = cnn_backbone()
    io = next(io for io in bb.io if io.layer.weight.name == "features.4.weight")
    q = 5  # kernel row 1, column 2 of a 3 × 3 kernel
    with torch.no_grad():
        io.edge_out.bias[q] = 1.0  # forward channel, kernel position q
    out = layout.unflatten(written(layout, bb))
    w = out["features.4.weight"]  # [c2, c1, 3, 3]
    want = torch.zeros_like(w)
    want[:, :, 1, 2] = 1.0
    torch.testing.assert_close(w, want)
    others = [v for name, v in out.items() if name != "features.4.weight"]
    assert all(not v.any() for v in others)


@pytest.mark.parametrize("k,name", [(0, "features.4.bias"), (1, "features.5.weight"),
                                    (2, "features.5.bias")])  # fmt: skip
def test_a_per_unit_vector_is_written_to_its_own_coordinates(k: int, name: str) -> None:
    """Per-unit output k of the second conv layer writes the k-th vector after its weight (its
    bias, the BatchNorm's scale, its shift) and no other coordinate."""
    layout, bb = cnn_backbone()
    io = next(io for io in bb.io if io.layer.weight.name == "features.4.weight")
    with torch.no_grad():
        io.extra_out.bias.view(2, -1)[0, k] = 1.0  # forward channel of vector k
    out = layout.unflatten(written(layout, bb))
    assert torch.equal(out[name], torch.ones_like(out[name]))
    assert all(not v.any() for n, v in out.items() if n != name)


def test_an_edge_reads_only_its_own_kernel() -> None:
    """The fed conv's edge (i, j) embedding depends on ``W[i, j]`` (all 9 entries) and on
    nothing else of the state: the read is the inverse of the write."""
    layout, bb = cnn_backbone()
    li = next(i for i, io in enumerate(bb.io) if io.layer.weight.name == "features.4.weight")
    io = bb.io[li]
    s = torch.randn(1, 1, layout.size, requires_grad=True)
    _, edges = io.read(s)
    assert edges is not None  # [1, c2, c1, d]
    (g,) = torch.autograd.grad(edges[0, 3, 1].sum(), s)
    touched = layout.unflatten(g[0, 0].ne(0).float())
    w = touched["features.4.weight"]
    want = torch.zeros_like(w)
    want[3, 1] = 1.0
    assert torch.equal(w, want)
    assert all(not v.any() for n, v in touched.items() if n != "features.4.weight")


def test_every_coordinate_can_be_stepped() -> None:
    """With random output weights every coordinate of the cnn gets a step (no coordinate is
    left without a path to the output)."""
    layout, bb = cnn_backbone()
    with torch.no_grad():
        for m in bb.modules():
            if isinstance(m, nn.Linear) and not m.weight.any():
                m.weight.normal_(0, 0.3)
    gen = torch.Generator().manual_seed(4)
    s = torch.randn(2, layout.size, generator=gen)
    out = bb(s, torch.randn(2, 8, generator=gen), torch.randn(2, COND["cnn"], generator=gen))
    assert out[:, 0].ne(0).all()


# ---- identity, size, refusals -----------------------------------------------------------------
@pytest.mark.parametrize("name", ["head", "mlp", "cnn"])
def test_untrained_policy_is_the_identity(name: str) -> None:
    layout = target_layout(name)
    policy = LoHpPolicy(layout.size, COND[name], 4, torch.full((4,), 0.1), CFG, layout=layout)
    s = torch.randn(3, layout.size)
    cond = torch.randn(3, COND[name])
    f, b = policy.means(s, torch.tensor([0, 1, 3]), cond)
    assert torch.equal(f, torch.zeros_like(s)) and torch.equal(b, torch.zeros_like(s))
    path = policy.rollout(s, 0, cond)
    assert torch.equal(path[:, -1], s)


def test_parameter_count_by_hand() -> None:
    """A head [C, F] + bias [C] (one layer, not fed): every piece counted by hand."""
    f, e, d, dc = 6, 8, 16, 6
    n_row = (f * d + d) + (d * 2 * f + 2 * f) + (1 * d + d) + (d * 2 + 2)  # row in/out, bias
    n_top = 1 * d + (e * d + d) + 2 * (dc * d + d) + 2 * d  # layer emb, emb in, blocks, norm
    film, attn = d * 2 * d + 2 * d, (3 * d * d + 3 * d) + (d * d + d)
    n_block = film + attn + 2 * d + (d * 2 * d + 2 * d) + (2 * d * d + d)
    bb = build_backbone(target_layout("head"), COND["head"], 4, CFG)
    assert sum(p.numel() for p in bb.parameters()) == n_row + n_top + 2 * n_block


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_parameters_are_shared_by_the_units_of_a_layer(name: str) -> None:
    """Four times the hidden units, the same parameters: one network per layer, not per unit."""

    def count(hidden: int) -> int:
        bb = build_backbone(target_layout(name, hidden), COND[name], 4, CFG)
        return sum(p.numel() for p in bb.parameters())

    assert count(8) == count(32)
    assert target_layout(name, 32).size > 3 * target_layout(name, 8).size


def test_layers_of_the_target_models() -> None:
    cnn = unit_layers(target_layout("cnn"))
    assert [(lay.weight.name, lay.fed, len(lay.extras)) for lay in cnn] == [
        ("features.0.weight", False, 3),  # conv bias, BatchNorm scale and shift
        ("features.4.weight", True, 3),
        ("fc.weight", True, 1),
    ]
    assert [(lay.units, lay.kernel) for lay in cnn] == [(2, 9), (4, 9), (C, 1)]
    assert [lay.fed for lay in unit_layers(target_layout("mlp"))] == [False, True]


def test_a_layout_without_layers_is_refused() -> None:
    with pytest.raises(ConfigError, match="parameter 'theta' of shape \\[12\\].*'unet' or 'mlp'"):
        build_backbone(ParamLayout.flat(12), 4, 3, CFG)


def test_heads_must_divide_the_width() -> None:
    with pytest.raises(ValueError, match="policy.heads = 3 does not divide policy.width = 16"):
        PolicyConfig(backbone="rows", width=16, heads=3)


# ---- through lohp train-policy ------------------------------------------------------------------
ROWS = ["--k", "1", "--batch-size", "4", "--device", "cpu", "--set", "policy.backbone=rows",
        "--set", "policy.width=8", "--set", "policy.heads=2",
        "--set", "policy.emb_dim=8"]  # fmt: skip


def test_train_policy_with_rows_on_a_class_store(tmp_path: Path) -> None:
    store, out = tmp_path / "cls.zarr", tmp_path / "p"
    make_class_store(store)
    result = invoke("train-policy", "--store", store, "--out", out, "--steps", 3, *ROWS)
    assert result.exit_code == 0, plain(result.output)
    model, meta, stats = load_policy(out)
    assert isinstance(model, LoHpPolicy) and isinstance(model.backbone, RowSetBackbone)
    assert meta.trained_steps == 3 and model.backbone_takes_condition
    s0 = torch.randn(2, meta.param_count)
    cond = stats.normalize_condition(torch.randn(2, meta.condition_dim))
    assert model.rollout(s0, 0, cond).isfinite().all()


def test_train_policy_with_rows_on_a_real_tiny_store(tiny_cfg, tmp_path: Path) -> None:
    """A collected mlp store (digits, hidden 8): hidden units as well as classes."""
    from lohp_cli.stages.collect import collect

    collect(tiny_cfg)
    out = tmp_path / "p"
    result = invoke("train-policy", "--store", tiny_cfg.out, "--out", out, "--steps", 2, *ROWS)
    assert result.exit_code == 0, plain(result.output)
    model, meta, _ = load_policy(out)
    assert [lay.fed for lay in model.backbone.layers] == [False, True]


def test_train_policy_with_rows_on_a_flat_layout_exits_2(tmp_path: Path) -> None:
    store = tmp_path / "lin.zarr"
    make_linear_store(store, n_tasks=2, size=5, cond_dim=3, steps=4)
    result = invoke("train-policy", "--store", store, "--out", tmp_path / "p", "--steps", 1, *ROWS)
    assert result.exit_code == 2, plain(result.output)
    assert "policy.backbone = 'rows'" in plain(result.stderr)
