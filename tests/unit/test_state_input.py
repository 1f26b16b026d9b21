"""State-aware policy input: features, their symmetry, and the train → generate → evaluate path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lohp_cli.config import EvaluateConfig, GenerateConfig, ModelConfig, PolicyConfig, TrainConfig
from lohp_cli.policy.directory import load_policy
from lohp_cli.policy.gaussian import LoHpPolicy
from lohp_cli.policy.state import ProbeBank
from lohp_cli.stages.collect import collect
from lohp_cli.stages.evaluate import evaluate
from lohp_cli.stages.generate import generate
from lohp_cli.stages.train import train_policy
from lohp_cli.tasks.layout import ParamLayout, functional_forward
from lohp_cli.tasks.models import build_target
from lohp_cli.tasks.symmetry import ClassSymmetry
from tests.conftest import tiny_config

C, M = 3, 12


def _net(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_target(ModelConfig(name=name, hidden=8, feature_dim=5), (1, 8, 8), C)


def _bank(net: torch.nn.Module, name: str, tasks: int = 2) -> ProbeBank:
    size = ParamLayout.of(net).size
    g = torch.Generator().manual_seed(3)
    bank = ProbeBank(net, 0.1 * torch.randn(size, generator=g), 1 + torch.rand(size, generator=g))
    for t in range(tasks):
        x = torch.randn((M, 5) if name == "head" else (M, 1, 8, 8), generator=g)
        bank.add(f"t{t}", x, torch.arange(M) % C, C)
    return bank


@pytest.mark.parametrize("name", ["head", "mlp", "cnn"])
def test_features_are_class_mean_softmax_minus_identity(name: str) -> None:
    net = _net(name)
    bank = _bank(net, name)
    probe = bank.probe(["t0", "t1"])
    s = torch.randn(2 * 3, ParamLayout.of(net).size)  # 3 states per task, task-major
    feats = probe.features(s)
    assert feats.shape == (6, C * C)
    for row in range(6):
        task = f"t{row // 3}"
        theta = s[row] * bank.std + bank.mean
        p = functional_forward(net, theta, bank.x[task]).softmax(-1)  # [M, C]
        want = torch.stack([p[bank.y[task] == j].mean(0) for j in range(C)]) - torch.eye(C)
        torch.testing.assert_close(feats[row].view(C, C), want, atol=1e-5, rtol=1e-5)


def test_features_follow_a_class_reordering() -> None:
    """Reordered weights on the reordered support labels see the reordered matrix."""
    net = _net("head")
    size = ParamLayout.of(net).size
    net_bank = _bank(net, "head")
    # symmetric statistics, as class augmentation makes them
    sym = ClassSymmetry.of(ParamLayout.of(net), C, C * 5)
    net_bank.mean, net_bank.std = sym.symmetrize(net_bank.mean), sym.symmetrize(net_bank.std)
    perm = torch.tensor([[2, 0, 1]])
    s = torch.randn(1, size)
    plain = net_bank.probe(["t0"]).features(s).view(C, C)
    moved = s[:, sym.weight_index(perm)[0]]
    permuted = net_bank.probe(["t0"], perm).features(moved).view(C, C)
    torch.testing.assert_close(permuted, plain[perm[0]][:, perm[0]], atol=1e-6, rtol=1e-5)


def test_gradients_flow_through_the_features() -> None:
    net = _net("mlp")
    s = torch.randn(2, ParamLayout.of(net).size, requires_grad=True)
    _bank(net, "mlp").probe(["t0", "t1"]).features(s).pow(2).sum().backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_a_batch_norm_model_is_probed_on_a_copy_without_running_statistics() -> None:
    """cnn (issue 22): the probe runs a copy whose BatchNorm layers keep no running statistics
    (so vmap can run it); the model handed in keeps its own, and the layout is the same."""
    net = _net("cnn")
    bank = _bank(net, "cnn")
    assert bank.net is not net and bank.net.training
    bns = [m for m in bank.net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.running_mean is None and not m.track_running_stats for m in bns)
    assert all(m.running_mean is not None for m in net.modules()
               if isinstance(m, torch.nn.BatchNorm2d))  # fmt: skip
    assert ParamLayout.of(bank.net) == ParamLayout.of(net)
    mlp = _net("mlp")
    assert _bank(mlp, "mlp").net is mlp  # nothing to replace: the model itself


def test_state_aware_policy_needs_its_probe() -> None:
    cfg = PolicyConfig(backbone="mlp", hidden=8, emb_dim=8, state_input="support")
    policy = LoHpPolicy(12, 4, 3, torch.ones(3), cfg, classes=C)
    assert policy.needs_probe
    with pytest.raises(ValueError, match="support sets"):
        policy.rollout(torch.zeros(1, 12), 0, torch.zeros(1, 4))


@pytest.mark.slow
@pytest.mark.parametrize("state", ["support", "grad"])
def test_train_generate_evaluate_with_state_input(tmp_path: Path, state: str) -> None:
    store = str(tmp_path / "s.zarr")
    collect(tiny_config(store))
    pol = tmp_path / "pol"
    policy = {"backbone": "mlp", "hidden": 16, "emb_dim": 8, "state_input": state}
    train_policy(
        TrainConfig.model_validate(
            {"store": store, "out": str(pol), "k": 2, "steps": 3, "policy": policy}
        )
    )
    model, meta, _ = load_policy(pol)
    assert model.needs_probe and any(k.startswith("state_mlp") for k in model.state_dict())
    gen = tmp_path / "g.zarr"
    generate(
        GenerateConfig.model_validate(
            {"policy": str(pol), "out": str(gen), "num_tasks": 2, "samples": 2, "device": "cpu"}
        )
    )
    rep = tmp_path / "r"
    evaluate(
        EvaluateConfig.model_validate(
            {
                "generated": str(gen),
                "out": str(rep),
                "baselines": ["adam"],
                "policies": {"again": str(pol)},
                "latency_repeats": 1,
                "cosine_runs": 2,
                "plots": False,
                "device": "cpu",
            }
        )
    )
    report = json.loads((rep / "report.json").read_text())
    md = (rep / "report.md").read_text()
    assert ("(gradient input)" in md) == (state == "grad")  # a learned optimizer is labelled
    rows = {m["name"]: m for m in report["methods"]}
    # the same policy, from the same starts: the same accuracies
    assert rows["lo-hp (k=2)"]["acc_mean"] == rows["again (k=2)"]["acc_mean"]
    assert report["cosine"]["n"] > 0


@pytest.mark.parametrize("name", ["head", "mlp", "cnn"])
def test_gradient_features_are_the_class_balanced_support_loss_gradient(name: str) -> None:
    """Against autograd of the target model in train mode (for cnn: batch-norm on the support
    set's own statistics, as scoring runs generated weights)."""
    net = _net(name)
    bank = _bank(net, name)
    perm = torch.tensor([[1, 2, 0], [0, 1, 2]])
    probe = bank.probe(["t0", "t1"], perm)
    s = torch.randn(2 * 3, ParamLayout.of(net).size)
    direction, log_rms = probe.gradient(s)
    assert direction.shape == s.shape and log_rms.shape == (6, 1)
    for row in range(6):
        b = row // 3
        task = f"t{b}"
        theta = (s[row] * bank.std + bank.mean).requires_grad_(True)
        y = torch.argsort(perm[b])[bank.y[task]]  # the reordered labels
        logp = functional_forward(net, theta, bank.x[task]).log_softmax(-1)
        per_class = [-logp[y == j, j].mean() for j in range(C)]
        (g,) = torch.autograd.grad(torch.stack(per_class).sum() / C, theta)
        rms = g.pow(2).mean().sqrt()
        # a conv bias before batch norm has a zero gradient: float noise there, up to 1e-3 of RMS
        atol = 1e-3 if name == "cnn" else 1e-5
        torch.testing.assert_close(direction[row], g / rms, atol=atol, rtol=1e-4)
        torch.testing.assert_close(log_rms[row, 0], rms.log(), atol=1e-5, rtol=1e-4)
        assert direction[row].pow(2).mean().item() == pytest.approx(1.0, rel=1e-4)


def test_gradient_features_are_constants_for_the_policy() -> None:
    """No second-order terms: the features do not carry the states' graph."""
    net = _net("mlp")
    s = torch.randn(2, ParamLayout.of(net).size, requires_grad=True)
    direction, log_rms = _bank(net, "mlp").probe(["t0", "t1"]).gradient(s)
    assert not direction.requires_grad and not log_rms.requires_grad


@pytest.mark.parametrize("backbone", ["mlp", "unet"])
def test_gradient_policy_is_the_identity_at_init_and_reacts_to_the_gradient(backbone: str) -> None:
    net = _net("head")
    size = ParamLayout.of(net).size
    cfg = PolicyConfig(
        backbone=backbone, hidden=8, emb_dim=8, channels=(4, 8), patch=2, state_input="grad"
    )
    torch.manual_seed(0)
    policy = LoHpPolicy(size, 4, 3, torch.ones(3), cfg, classes=C)
    probe = _bank(net, "head").probe(["t0"])
    s, cond, i = torch.randn(1, size), torch.randn(1, 4), torch.zeros(1, dtype=torch.long)
    f, _ = policy.means(s, i, cond, probe=probe)
    assert torch.equal(f, torch.zeros_like(f))  # zero-initialised output
    torch.nn.init.normal_(policy.backbone.out.weight)
    f1, _ = policy.means(s, i, cond, probe=probe)
    other = _bank(net, "head", tasks=2).probe(["t1"])  # another support set, another gradient
    f2, _ = policy.means(s, i, cond, probe=other)
    assert not torch.allclose(f1, f2)


def test_coordinate_backbone_is_equivariant_within_a_tensor() -> None:
    """Permuting coordinates within one parameter tensor permutes the steps the same way."""
    net = _net("head")
    layout = ParamLayout.of(net)
    cfg = PolicyConfig(backbone="coordinate", coordinate_hidden=8, emb_dim=8, state_input="grad")
    torch.manual_seed(0)
    policy = LoHpPolicy(layout.size, 4, 3, torch.ones(3), cfg, classes=C, layout=layout)
    torch.nn.init.normal_(policy.backbone.out.weight)
    x = torch.randn(2, 2, layout.size)  # state and gradient channels
    emb = torch.randn(2, 8)
    weight = layout.entries[0]
    perm = torch.arange(layout.size)
    perm[: weight.numel] = torch.randperm(weight.numel)  # within the weight matrix only
    out = policy.backbone(x, emb)
    torch.testing.assert_close(policy.backbone(x[..., perm], emb), out[..., perm])
    # a coordinate's step depends on its own inputs only
    moved = x.clone()
    moved[:, :, 1] += 1.0
    changed = (policy.backbone(moved, emb) - out).abs().sum((0, 1)) > 0
    assert changed.nonzero().flatten().tolist() == [1]


def test_without_time_embedding_the_step_rule_is_the_same_at_every_index() -> None:
    size = 12
    for time_embedding in (True, False):
        cfg = PolicyConfig(backbone="mlp", hidden=8, emb_dim=8, time_embedding=time_embedding)
        torch.manual_seed(0)
        policy = LoHpPolicy(size, 4, 3, torch.ones(3), cfg)
        torch.nn.init.normal_(policy.backbone.out.weight)
        s, cond = torch.randn(1, size), torch.randn(1, 4)
        f0, _ = policy.means(s, torch.tensor([0]), cond)
        f2, _ = policy.means(s, torch.tensor([2]), cond)
        assert torch.equal(f0, f2) == (not time_embedding)
