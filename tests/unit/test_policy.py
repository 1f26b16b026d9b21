"""The Lo-Hp policy: backbones' shapes, the zero-initialised identity, log-ratios by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import Normal

from lohp_cli.config import OPTIMIZERS, PolicyConfig
from lohp_cli.errors import ConfigError
from lohp_cli.policy.backbone import MLPBackbone, UNet1d, sinusoidal
from lohp_cli.policy.gaussian import HyperNetwork, LoHpPolicy

MLP = {"backbone": "mlp", "hidden": 32, "emb_dim": 16}
UNET = {"backbone": "unet", "channels": (8, 16), "patch": 4, "emb_dim": 16}
BACKBONES = pytest.mark.parametrize("arch", [MLP, UNET], ids=["mlp", "unet"])
SIGMA = torch.tensor([0.5, 0.4, 0.3, 0.25, 0.2])  # N = 5, not constant on purpose


def make_policy(size: int = 13, cond_dim: int = 3, **cfg: object) -> LoHpPolicy:
    torch.manual_seed(0)
    return LoHpPolicy(size, cond_dim, len(SIGMA), SIGMA, PolicyConfig(**{**MLP, **cfg}))


def randomize_output(policy: LoHpPolicy) -> None:
    """Give the zero-initialised output layer weights, so that f and b are not zero."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in policy.backbone.out.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))


def inputs(b: int = 4, size: int = 13, cond_dim: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, size, generator=g), torch.randn(b, cond_dim, generator=g)


# ---- backbones ----------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [1, 7, 13, 37])
@pytest.mark.parametrize("patch", [1, 3, 4, 8])
def test_unet_output_shape_for_odd_sizes(size: int, patch: int) -> None:
    net = UNet1d(size, 16, channels=(8, 16), patch=patch)
    assert net.padded >= size and net.padded % patch == 0 and net.length % 4 == 0
    s, emb = torch.randn(3, size), torch.randn(3, 16)
    with torch.no_grad():
        out = net(s, emb)
        assert out.shape == (3, 2, size)
        assert (out == 0).all(), "zero-initialised output layer"
        nn.init.normal_(net.out.weight)
        out = net(s, emb)
    assert out.shape == (3, 2, size) and torch.isfinite(out).all()
    assert float(out.abs().sum()) > 0


@pytest.mark.parametrize("size", [1, 7, 13])
def test_mlp_backbone_output_shape(size: int) -> None:
    net = MLPBackbone(size, 16, hidden=32)
    s, emb = torch.randn(5, size), torch.randn(5, 16)
    assert net(s, emb).shape == (5, 2, size)
    assert (net(s, emb) == 0).all()


def test_unet_every_coordinate_is_an_output() -> None:
    """Un-patching puts each coordinate back in its place: the Jacobian of a coordinate's output
    w.r.t. the bias of its own patch slot is one, for every coordinate and both channels."""
    size, patch = 11, 4
    net = UNet1d(size, 16, channels=(8, 16), patch=patch)
    s, emb = torch.randn(2, size), torch.randn(2, 16)
    with torch.no_grad():
        net.out.bias.copy_(torch.arange(2 * patch, dtype=torch.float32))
    out = net(s, emb)  # weights zero: the output is the bias of each slot
    expect = torch.stack([torch.arange(size) % patch, patch + torch.arange(size) % patch]).float()
    torch.testing.assert_close(out, expect.expand(2, -1, -1))


def test_sinusoidal_embedding() -> None:
    e = sinusoidal(torch.tensor([0, 1, 5]), 16)
    assert e.shape == (3, 16)
    torch.testing.assert_close(e[0], torch.cat([torch.zeros(8), torch.ones(8)]))
    assert not torch.allclose(e[1], e[2])


def test_odd_emb_dim_works() -> None:
    policy = make_policy(emb_dim=17)
    s, c = inputs()
    f, _ = policy.means(s, torch.zeros(4, dtype=torch.long), c)
    assert f.shape == s.shape


def test_unet_channels_not_multiple_of_8_work() -> None:
    policy = make_policy(**{**UNET, "channels": (8, 12)})
    s, c = inputs()
    assert policy.means(s, torch.zeros(4, dtype=torch.long), c)[0].shape == s.shape


# ---- the untrained policy is the identity ------------------------------------------------------
@BACKBONES
@pytest.mark.parametrize("start", [0, 2])
def test_untrained_policy_is_identity(arch: dict, start: int) -> None:
    policy = make_policy(**arch)
    s, c = inputs()
    traj = policy.rollout(s, start, c, mode="mean")
    assert traj.shape == (4, len(SIGMA) - start + 1, 13)
    for i in range(traj.shape[1]):
        assert torch.equal(traj[:, i], s)
    f, b = policy.means(s, torch.full((4,), 1), c)
    assert (f == 0).all() and (b == 0).all()


@BACKBONES
def test_sample_mode_adds_sigma_noise_reproducibly(arch: dict) -> None:
    policy = make_policy(**arch)
    s, c = inputs()
    a = policy.rollout(s, 0, c, mode="sample", gen=torch.Generator().manual_seed(3))
    b = policy.rollout(s, 0, c, mode="sample", gen=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    # untrained: each step is pure σ_i noise, so the step std is about σ_i
    steps = (a[:, 1:] - a[:, :-1]).std(dim=(0, 2))  # [N]
    torch.testing.assert_close(steps, SIGMA, rtol=0.35, atol=0)


def test_rollout_stop_and_gradients() -> None:
    policy = make_policy()
    randomize_output(policy)
    s, c = inputs()
    traj = policy.rollout(s, 1, c, stop=3)
    assert traj.shape == (4, 3, 13) and not traj.requires_grad
    traj = policy.rollout(s, 1, c, stop=3, grad=True)
    assert traj.requires_grad
    traj[:, -1].sum().backward()
    assert float(policy.backbone.out.weight.grad.abs().sum()) > 0


def test_rollout_mean_mode_follows_the_forward_mean() -> None:
    policy = make_policy()
    randomize_output(policy)
    s, c = inputs()
    traj = policy.rollout(s, 0, c)
    for i in range(len(SIGMA)):
        f, _ = policy.means(traj[:, i], torch.full((4,), i), c)
        torch.testing.assert_close(traj[:, i + 1], traj[:, i] + f)


# ---- log-probabilities --------------------------------------------------------------------------
@BACKBONES
@pytest.mark.parametrize("backward", ["fixed", "learned"])
@pytest.mark.parametrize("start", [0, 1])
def test_log_ratios_match_normal_log_probs(arch: dict, backward: str, start: int) -> None:
    policy = make_policy(**arch, backward=backward)
    randomize_output(policy)
    g = torch.Generator().manual_seed(2)
    length = 3
    states = torch.randn(2, length + 1, 13, generator=g)  # online indices start … start+3
    cond = torch.randn(2, 3, generator=g)
    got = policy.log_ratios(states, start, cond)
    assert got.shape == (2, length)
    sigma = policy.sigma()
    for i in range(length):
        j = start + i
        s0, s1 = states[:, i], states[:, i + 1]
        f, _ = policy.means(s0, torch.full((2,), j), cond)
        log_pf = Normal(s0 + f, sigma[j]).log_prob(s1).sum(-1)
        torch.testing.assert_close(policy.log_prob_forward(s0, s1, j, cond), log_pf)
        if backward == "fixed":
            mean_b = s1
        else:
            _, b = policy.means(s1, torch.full((2,), j + 1), cond)  # b(s_{i+1}, i+1, c)
            assert float(b.detach().abs().sum()) > 0
            mean_b = s1 - b
        log_pb = Normal(mean_b, sigma[j]).log_prob(s0).sum(-1)
        torch.testing.assert_close(got[:, i], log_pf - log_pb, rtol=1e-4, atol=1e-3)


def test_learned_and_fixed_backward_differ_once_trained() -> None:
    fixed, learned = make_policy(backward="fixed"), make_policy(backward="learned")
    randomize_output(fixed)
    randomize_output(learned)
    states = torch.randn(2, 3, 13, generator=torch.Generator().manual_seed(0))
    cond = torch.zeros(2, 3)
    assert not torch.allclose(
        fixed.log_ratios(states, 0, cond), learned.log_ratios(states, 0, cond)
    )


def test_log_prob_forward_has_gaussian_normaliser() -> None:
    policy = make_policy()
    s, c = inputs()
    lp = policy.log_prob_forward(s, s, 2, c)  # untrained: mean s, so only the normaliser is left
    ref = -13 * (math.log(float(SIGMA[2])) + 0.5 * math.log(2 * math.pi))
    torch.testing.assert_close(lp, torch.full((4,), ref))


# ---- σ, β and the coefficient -------------------------------------------------------------------
def test_schedule_sigma_is_a_buffer() -> None:
    policy = make_policy(sigma="schedule")
    assert "log_sigma" in dict(policy.named_buffers())
    assert "log_sigma" not in dict(policy.named_parameters())
    torch.testing.assert_close(policy.sigma(), SIGMA)


def test_learned_sigma_is_a_parameter() -> None:
    policy = make_policy(sigma="learned")
    params = dict(policy.named_parameters())
    assert "log_sigma" in params and params["log_sigma"].requires_grad
    assert "log_sigma" not in dict(policy.named_buffers())
    torch.testing.assert_close(policy.sigma(), SIGMA)


def test_sigma_min_clamps() -> None:
    torch.manual_seed(0)
    sigma = torch.tensor([0.5, 0.0, 1e-9])
    policy = LoHpPolicy(5, 2, 3, sigma, PolicyConfig(**MLP, sigma_min=1e-3))
    torch.testing.assert_close(policy.sigma(), torch.tensor([0.5, 1e-3, 1e-3]))


def test_auto_beta_is_half_inverse_variance() -> None:
    policy = make_policy(beta="auto")
    beta = policy.beta()
    assert beta.shape == (len(SIGMA) + 1,)
    sig = torch.cat([SIGMA, SIGMA[-1:]])
    torch.testing.assert_close(beta, 1 / (2 * sig**2))


def test_explicit_beta() -> None:
    beta = make_policy(beta=0.7).beta()
    torch.testing.assert_close(beta, torch.full((len(SIGMA) + 1,), 0.7))


def test_per_step_coefficient() -> None:
    policy = make_policy(coefficient="per_step")
    assert isinstance(policy.z, nn.Parameter) and policy.z.shape == (len(SIGMA) + 1,)
    z = policy.log_z(torch.zeros(4, 3))
    assert z.shape == (4, len(SIGMA) + 1) and (z == 0).all()


def test_mlp_coefficient_shape_and_condition_dependence() -> None:
    policy = make_policy(coefficient="mlp")
    _, c = inputs()
    z = policy.log_z(c)
    assert z.shape == (4, len(SIGMA) + 1)
    assert (z == 0).all(), "zero-initialised last layer"
    nn.init.normal_(policy.z_mlp[-1].weight)
    z = policy.log_z(c)
    assert z.shape == (4, len(SIGMA) + 1)
    assert not torch.allclose(z[0], z[1]), "z depends on the condition"
    assert not torch.allclose(z[0, 0], z[0, 1]), "z depends on the step"


# ---- conditioning -------------------------------------------------------------------------------
def test_optimizer_token_changes_the_step() -> None:
    policy = make_policy(optimizer_token=True)
    randomize_output(policy)
    assert policy.opt_emb is not None and policy.opt_emb.num_embeddings == len(OPTIMIZERS)
    s, c = inputs(b=2)
    i = torch.zeros(2, dtype=torch.long)
    f_sgd, _ = policy.means(s, i, c, torch.tensor([0, 0]))
    f_adam, _ = policy.means(s, i, c, torch.tensor([1, 1]))
    assert not torch.allclose(f_sgd, f_adam)
    assert make_policy().opt_emb is None


def test_step_and_condition_change_the_step() -> None:
    policy = make_policy()
    randomize_output(policy)
    s, c = inputs(b=2)
    f0, _ = policy.means(s, torch.zeros(2, dtype=torch.long), c)
    f1, _ = policy.means(s, torch.ones(2, dtype=torch.long), c)
    f2, _ = policy.means(s, torch.zeros(2, dtype=torch.long), c + 1)
    assert not torch.allclose(f0, f1) and not torch.allclose(f0, f2)


def test_hypernetwork_shapes() -> None:
    torch.manual_seed(0)
    net = HyperNetwork(13, 3, PolicyConfig(hidden=32, optimizer_token=True))
    c = torch.randn(4, 3)
    assert net(c).shape == (4, 13)
    assert not torch.allclose(net(c, torch.tensor([0, 0, 0, 0])), net(c, torch.tensor([2] * 4)))


def test_hypernetwork_with_the_rows_backbone_is_equivariant_to_the_class_order() -> None:
    """A one-shot map with the iterative policy's architecture: permuting the condition's class
    blocks permutes the predicted output rows, and the initial prediction is the zero state."""
    from lohp_cli.tasks.layout import ParamLayout
    from lohp_cli.tasks.symmetry import ClassSymmetry

    torch.manual_seed(0)
    ways, feat = 3, 4
    layout = ParamLayout.of(nn.Linear(feat, ways))
    cfg = PolicyConfig(hypernetwork_backbone="rows", width=16, blocks=1, heads=2)
    net = HyperNetwork(layout.size, ways * feat, cfg, ways, layout)
    assert torch.equal(net(torch.randn(2, ways * feat)), torch.zeros(2, layout.size))
    for p in net.parameters():  # leave the zero-initialised output layers
        p.data.normal_(0, 0.3)
    sym = ClassSymmetry.of(layout, ways, ways * feat)
    c = torch.randn(2, ways * feat)
    perms = torch.tensor([[2, 0, 1], [2, 0, 1]])
    out = net(c)  # [2, P]
    x_p, c_p = sym.permute(out.unsqueeze(1), c, perms)
    assert torch.allclose(x_p[:, 0], net(c_p), atol=1e-5)


# ---- registries reach the config ----------------------------------------------------------
def test_a_registered_backbone_is_a_config_choice_and_sees_the_layout(
    tmp_path, monkeypatch
) -> None:
    """A backbone registered outside lohp is chosen with policy.backbone and built from the
    target model's real parameter layout (layer names and shapes), not one flat vector."""
    from lohp_cli.policy import backbone as bb
    from lohp_cli.policy.fit import train_policy
    from lohp_cli.stages import check_names
    from tests.conftest import make_linear_store

    with pytest.raises(ConfigError, match="Unknown policy backbone 'outside'"):
        bb.check_backbone(PolicyConfig(backbone="outside").backbone)
    seen = {}

    def outside(layout, cond_dim, n_steps, cfg):
        seen["layout"] = [(e.name, tuple(e.shape)) for e in layout.entries]
        return bb.MLPBackbone(layout.size, cfg.emb_dim, 8)

    monkeypatch.setitem(bb.BACKBONES, "outside", outside)
    make_linear_store(tmp_path / "s.zarr", n_tasks=2, size=5, cond_dim=3, steps=2)
    from lohp_cli.config import TrainConfig

    cfg = TrainConfig.model_validate({"store": str(tmp_path / "s.zarr"), "out": str(tmp_path / "p"),
                                      "k": 1, "steps": 1, "policy": {"backbone": "outside",
                                                                     "emb_dim": 8}})  # fmt: skip
    check_names(cfg)  # registered: a name the stages accept
    train_policy(cfg)
    assert seen["layout"] == [("theta", (5,))]


def test_an_unknown_target_model_is_refused_naming_the_registered_ones() -> None:
    from lohp_cli.config import CollectConfig, ModelConfig
    from lohp_cli.stages import check_names

    cfg = CollectConfig(model=ModelConfig(name="resnet"))  # the config checks values only
    with pytest.raises(ConfigError, match="model.name: unknown target model 'resnet'.*head"):
        check_names(cfg)
