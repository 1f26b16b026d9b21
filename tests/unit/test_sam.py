"""SAM against a manual two-pass computation; optimizer factory (lohp_cli/optim/)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call

from lohp_cli.config import OptimizersConfig, SAMConfig
from lohp_cli.errors import ConfigError
from lohp_cli.optim import SAM, bn_frozen, build_optimizer, optimizer_hparams, train_step
from lohp_cli.tasks.models import SmallCNN

F = nn.functional


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))


def batches(n: int, shape: tuple[int, ...] = (4,), size: int = 8, classes: int = 3):
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(size, *shape, generator=g), torch.randint(0, classes, (size,), generator=g))
        for _ in range(n)
    ]


def cfg_for(base: str, adaptive: bool, rho: float = 0.05) -> OptimizersConfig:
    return OptimizersConfig.model_validate(
        {
            "sgd": {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3},
            "adam": {"lr": 0.01, "betas": [0.8, 0.9], "weight_decay": 1e-3},
            "sam": {"base": base, "rho": rho, "adaptive": adaptive},
        }
    )


def manual_sam_grad(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, rho: float, adaptive: bool
) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """SAM's gradient by hand: g at w, e = ρ s²g/||s g|| (s = |w| or 1), g' at w + e.

    Returns (g' per parameter, model buffers after both passes); the module itself is not changed:
    both passes run functionally on copies of the buffers, so BatchNorm sees each pass separately.
    """
    names = [n for n, _ in model.named_parameters()]
    w = [p.detach().clone() for _, p in model.named_parameters()]
    buffers = {n: b.clone() for n, b in model.named_buffers()}

    # Pass 1 at w (updates BN running stats in ``buffers``).
    wg = [t.clone().requires_grad_(True) for t in w]
    loss = F.cross_entropy(
        functional_call(model, {**dict(zip(names, wg, strict=True)), **buffers}, (x,)), y
    )
    g = torch.autograd.grad(loss, wg)
    s = [t.abs() if adaptive else torch.ones_like(t) for t in w]
    norm = torch.sqrt(sum(((si * gi) ** 2).sum() for si, gi in zip(s, g, strict=True)))
    e = [rho * si * si * gi / norm for si, gi in zip(s, g, strict=True)]

    # Pass 2 at w + e, on throwaway buffers.
    scratch = {n: b.clone() for n, b in buffers.items()}
    wp = [(t + ei).requires_grad_(True) for t, ei in zip(w, e, strict=True)]
    loss2 = F.cross_entropy(
        functional_call(model, {**dict(zip(names, wp, strict=True)), **scratch}, (x,)), y
    )
    g2 = list(torch.autograd.grad(loss2, wp))
    return g2, buffers


def reference_step(ref: nn.Module, base: torch.optim.Optimizer, x, y, rho, adaptive) -> None:
    """One reference SAM step: manual gradient, then the plain base optimizer at w."""
    g2, _ = manual_sam_grad(ref, x, y, rho, adaptive)
    for p, gi in zip(ref.parameters(), g2, strict=True):
        p.grad = gi
    base.step()


def base_for(name: str, params, cfg: OptimizersConfig) -> torch.optim.Optimizer:
    if name == "sgd":
        c = cfg.sgd
        return torch.optim.SGD(
            params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay, nesterov=c.nesterov
        )
    c = cfg.adam
    return torch.optim.Adam(params, lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay)


def params_of(m: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in m.parameters()])


TOL = dict(rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("base", ["sgd", "adam"])
@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_train_step_equals_manual_two_pass(base: str, adaptive: bool) -> None:
    cfg = cfg_for(base, adaptive)
    model = mlp()
    ref = copy.deepcopy(model)
    plain = copy.deepcopy(model)
    opt = build_optimizer("sam", model.parameters(), cfg)
    assert isinstance(opt, SAM)
    ref_opt = base_for(base, ref.parameters(), cfg)
    plain_opt = build_optimizer(base, plain.parameters(), cfg)
    for x, y in batches(4):
        w0 = params_of(model)
        with torch.no_grad():
            logits = model(x)
        loss, acc = train_step(model, opt, x, y)
        # Loss and accuracy are those of the weights before the step.
        torch.testing.assert_close(loss, F.cross_entropy(logits, y), rtol=0, atol=0)
        assert acc == (logits.argmax(1) == y).float().mean()
        reference_step(ref, ref_opt, x, y, cfg.sam.rho, adaptive)
        train_step(plain, plain_opt, x, y)
        torch.testing.assert_close(params_of(model), params_of(ref), **TOL)
        assert not torch.equal(params_of(model), w0)
        assert all(p.grad is not None for p in model.parameters())
    # SAM is not the base optimizer: the difference is far above the tolerance.
    assert (params_of(model) - params_of(plain)).abs().max() > 1e-4


def test_sam_first_sgd_step_by_hand() -> None:
    """First SGD step fully by hand: buf = g' + wd·w, w1 = w − lr·buf."""
    cfg = cfg_for("sgd", adaptive=False)
    model = mlp()
    w = [p.detach().clone() for p in model.parameters()]
    ((x, y),) = batches(1)
    g2, _ = manual_sam_grad(model, x, y, rho=0.05, adaptive=False)
    train_step(model, build_optimizer("sam", model.parameters(), cfg), x, y)
    for p, wi, gi in zip(model.parameters(), w, g2, strict=True):
        torch.testing.assert_close(p.detach(), wi - 0.1 * (gi + 1e-3 * wi), **TOL)


def test_sam_first_adam_step_by_hand() -> None:
    """First Adam step: m̂ = g, v̂ = g², w1 = w − lr·g/(|g| + eps), with g = g' + wd·w."""
    cfg = cfg_for("adam", adaptive=True)
    model = mlp()
    w = [p.detach().clone() for p in model.parameters()]
    ((x, y),) = batches(1)
    g2, _ = manual_sam_grad(model, x, y, rho=0.05, adaptive=True)
    train_step(model, build_optimizer("sam", model.parameters(), cfg), x, y)
    for p, wi, gi in zip(model.parameters(), w, g2, strict=True):
        g = gi + 1e-3 * wi
        torch.testing.assert_close(p.detach(), wi - 0.01 * g / (g.abs() + 1e-8), **TOL)


def test_adaptive_changes_the_step() -> None:
    ((x, y),) = batches(1)
    out = []
    for adaptive in (False, True):
        model = mlp()
        train_step(
            model, build_optimizer("sam", model.parameters(), cfg_for("sgd", adaptive)), x, y
        )
        out.append(params_of(model))
    assert (out[0] - out[1]).abs().max() > 1e-5


def test_sam_step_with_closure_equals_train_step() -> None:
    cfg = cfg_for("sgd", adaptive=False)
    a, b = mlp(), mlp()
    opt_a = build_optimizer("sam", a.parameters(), cfg)
    opt_b = build_optimizer("sam", b.parameters(), cfg)
    for x, y in batches(3):
        train_step(a, opt_a, x, y)
        opt_b.zero_grad()
        F.cross_entropy(b(x), y).backward()

        def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
            opt_b.zero_grad()
            loss = F.cross_entropy(b(x), y)
            loss.backward()
            return loss

        opt_b.step(closure)
        assert torch.equal(params_of(a), params_of(b))
    with pytest.raises(ValueError, match="closure"):
        opt_b.step()


def test_sam_restores_w_before_the_base_step() -> None:
    """With lr → tiny, the weights after a step are w (not w + e)."""
    cfg = OptimizersConfig.model_validate(
        {"sgd": {"lr": 1e-12, "momentum": 0.0}, "sam": {"rho": 0.5}}
    )
    model = mlp()
    w0 = params_of(model)
    opt = build_optimizer("sam", model.parameters(), cfg)
    ((x, y),) = batches(1)
    train_step(model, opt, x, y)
    torch.testing.assert_close(params_of(model), w0, rtol=0, atol=1e-6)
    assert all("e_w" not in opt.state[p] for p in model.parameters())


def test_sam_rejects_non_positive_rho() -> None:
    with pytest.raises(ValueError, match="rho must be positive"):
        SAM(mlp().parameters(), torch.optim.SGD, rho=0.0, lr=0.1)


# ---- batch norm --------------------------------------------------------------------------------
def bn_layers(m: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [x for x in m.modules() if isinstance(x, nn.modules.batchnorm._BatchNorm)]


def bn_buffers(m: nn.Module) -> dict[str, torch.Tensor]:
    return {n: b.clone() for n, b in m.named_buffers()}


@pytest.mark.parametrize("base", ["sgd", "adam"])
@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_with_batchnorm(base: str, adaptive: bool) -> None:
    torch.manual_seed(0)
    model = SmallCNN(1, 8, 3).train()
    assert len(bn_layers(model)) == 2
    ref = copy.deepcopy(model)
    cfg = cfg_for(base, adaptive, rho=0.2)
    opt = build_optimizer("sam", model.parameters(), cfg)
    ref_opt = base_for(base, ref.parameters(), cfg)
    for step, (x, y) in enumerate(batches(3, shape=(1, 8, 8)), start=1):
        # Expected BN state: exactly one forward pass (at w) in train mode.
        g2, expected_buffers = manual_sam_grad(ref, x, y, cfg.sam.rho, adaptive)
        # A second pass that updated the stats would have moved them (what SAM must avoid).
        two_pass = copy.deepcopy(ref)
        two_pass.load_state_dict({**two_pass.state_dict(), **expected_buffers})
        with torch.no_grad():
            two_pass(x)

        train_step(model, opt, x, y)

        buffers = bn_buffers(model)
        assert set(buffers) == set(expected_buffers)
        for name, value in expected_buffers.items():
            if name.endswith("num_batches_tracked"):
                assert int(buffers[name]) == step, name
                assert int(value) == step
            else:
                torch.testing.assert_close(buffers[name], value, rtol=1e-6, atol=1e-7)
        rm = "features.1.running_mean"
        assert (buffers[rm] - dict(two_pass.named_buffers())[rm]).abs().max() > 1e-4
        # Weights: manual gradient at w + e, base step at w.
        for p, gi in zip(ref.parameters(), g2, strict=True):
            p.grad = gi
        ref_opt.step()
        ref.load_state_dict({**ref.state_dict(), **expected_buffers})
        torch.testing.assert_close(params_of(model), params_of(ref), **TOL)
    # Momenta are restored after the frozen pass.
    assert all(m.momentum == 0.1 for m in bn_layers(model))


def test_bn_frozen_leaves_running_stats_alone() -> None:
    torch.manual_seed(0)
    model = SmallCNN(1, 8, 3).train()
    layers = bn_layers(model)
    layers[1].momentum = None  # cumulative averaging must be frozen too
    x = torch.randn(6, 1, 8, 8)
    model(x)
    before = bn_buffers(model)
    with bn_frozen(model):
        assert all(m.momentum == 0.0 for m in layers)
        out_frozen = model(torch.randn(6, 1, 8, 8) * 3 + 1)
    after = bn_buffers(model)
    for name in before:
        assert torch.equal(before[name], after[name]), name
    assert layers[0].momentum == 0.1 and layers[1].momentum is None
    # Inside the block the forward still normalises with batch statistics (train mode).
    assert out_frozen.shape == (6, 3)
    model(x)
    assert not torch.equal(
        bn_buffers(model)["features.1.running_mean"], before["features.1.running_mean"]
    )


def test_bn_frozen_restores_on_error() -> None:
    model = SmallCNN(1, 8, 3).train()
    with pytest.raises(RuntimeError, match="boom"), bn_frozen(model):
        model(torch.randn(4, 1, 8, 8))
        raise RuntimeError("boom")
    assert all(m.momentum == 0.1 for m in bn_layers(model))
    assert all(int(m.num_batches_tracked) == 0 for m in bn_layers(model))


# ---- factory -----------------------------------------------------------------------------------
def test_build_optimizer_hyperparameters() -> None:
    cfg = OptimizersConfig.model_validate(
        {
            "sgd": {"lr": 0.3, "momentum": 0.5, "nesterov": True, "weight_decay": 0.01},
            "adam": {"lr": 0.02, "betas": [0.7, 0.8], "eps": 1e-6, "decoupled": True},
            "sam": {"base": "adam", "rho": 0.1, "adaptive": True},
        }
    )
    ps = list(mlp().parameters())
    sgd = build_optimizer("sgd", ps, cfg)
    assert type(sgd) is torch.optim.SGD
    g = sgd.param_groups[0]
    assert (g["lr"], g["momentum"], g["nesterov"], g["weight_decay"]) == (0.3, 0.5, True, 0.01)
    adam = build_optimizer("adam", ps, cfg)
    assert type(adam) is torch.optim.AdamW  # decoupled
    g = adam.param_groups[0]
    assert (g["lr"], tuple(g["betas"]), g["eps"]) == (0.02, (0.7, 0.8), 1e-6)
    sam = build_optimizer("sam", ps, cfg)
    assert isinstance(sam, SAM) and type(sam.base_optimizer) is torch.optim.AdamW
    g = sam.param_groups[0]
    assert (g["rho"], g["adaptive"], g["lr"]) == (0.1, True, 0.02)
    assert sam.param_groups is sam.base_optimizer.param_groups
    plain_adam = OptimizersConfig().model_copy(update={"sam": SAMConfig(base="sgd")})
    assert type(build_optimizer("adam", ps, plain_adam)) is torch.optim.Adam
    with pytest.raises(ConfigError, match="Unknown optimizer 'lbfgs'"):
        build_optimizer("lbfgs", ps, cfg)


def test_optimizer_hparams() -> None:
    cfg = cfg_for("adam", adaptive=True, rho=0.07)
    assert optimizer_hparams("sgd", cfg) == {
        "optimizer": "sgd",
        "lr": 0.1,
        "momentum": 0.9,
        "nesterov": False,
        "weight_decay": 1e-3,
    }
    assert optimizer_hparams("adam", cfg)["betas"] == [0.8, 0.9]
    sam = optimizer_hparams("sam", cfg)
    assert sam["rho"] == 0.07 and sam["adaptive"] is True and sam["base"] == "adam"
    assert sam["base_hparams"] == cfg.adam.model_dump(mode="json")
    assert sam["bn_running_stats"] == "first pass only"
    with pytest.raises(ConfigError, match="Unknown optimizer"):
        optimizer_hparams("rmsprop", cfg)


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_train_step_plain_optimizers(name: str) -> None:
    cfg = cfg_for("sgd", adaptive=False)
    model, ref = mlp(), mlp()
    opt = build_optimizer(name, model.parameters(), cfg)
    ref_opt = build_optimizer(name, ref.parameters(), cfg)
    for x, y in batches(3):
        loss, _ = train_step(model, opt, x, y)
        ref_opt.zero_grad()
        ref_loss = F.cross_entropy(ref(x), y)
        ref_loss.backward()
        ref_opt.step()
        assert torch.equal(loss, ref_loss.detach())
        assert torch.equal(params_of(model), params_of(ref))
