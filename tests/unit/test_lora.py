"""LoRA adapters (lohp_cli/tasks/lora.py) and the ``lora`` target model (tasks/lora_model.py)."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from lohp_cli.config import CollectConfig, ModelConfig, TaskConfig
from lohp_cli.errors import ConfigError
from lohp_cli.optim import build_optimizer
from lohp_cli.optim.loop import train_loop
from lohp_cli.tasks import make_family
from lohp_cli.tasks.layout import (
    ParamLayout,
    flat_params,
    functional_forward,
    load_flat,
    trainable_parameters,
)
from lohp_cli.tasks.lora import (
    LoRAConv2d,
    LoRALinear,
    adapter_params,
    apply_lora,
    load_base_state,
    lora_layers,
    merge,
)
from lohp_cli.tasks.lora_model import BACKBONE, ConvBackbone, LoRANet, MLPBackbone, build_backbone
from lohp_cli.tasks.models import build_target, target_model
from lohp_cli.tasks.symmetry import ClassSymmetry

SHAPE = (1, 28, 28)


def lora_cfg(**over: object) -> ModelConfig:
    data = {"name": "lora", "hidden": 16, "feature_dim": 8, "lora_rank": 2, "lora_alpha": 4.0}
    return ModelConfig.model_validate({**data, **over})


def pretrained(cfg: ModelConfig, shape: tuple[int, ...] = SHAPE, seed: int = 1) -> dict:
    """Frozen parts as the store gives them: a (here randomly initialised) plain backbone."""
    torch.manual_seed(seed)
    return {"backbone": build_backbone(cfg, shape).eval().requires_grad_(False)}


def randomise_factors(net: nn.Module, seed: int = 2) -> None:
    """Non-zero B (it starts at zero) so the factors change the function."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(net).values():
            layer.lora_b.copy_(torch.randn(layer.lora_b.shape, generator=gen) * 0.3)


class Mixed(nn.Module):
    """A module of every adaptable kind: strided/padded conv, dilated conv, 1×1 conv, linears."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.block = nn.Sequential(nn.Conv2d(6, 5, 3, padding=2, dilation=2), nn.ReLU())
        self.point = nn.Conv2d(5, 4, 1)
        self.fc = nn.Linear(4 * 25, 7)
        self.out = nn.Linear(7, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, 3, 10, 10] -> [B, 3]
        h = self.point(self.block(torch.relu(self.stem(x))))  # [B, 4, 5, 5]
        return self.out(torch.tanh(self.fc(h.flatten(1))))


# ---- merge: W' = W + (alpha / r) B A gives the adapter model's outputs --------------------------
@pytest.mark.parametrize("backbone", ["mlp", "cnn"])
def test_merged_plain_model_gives_the_adapter_models_logits(backbone: str) -> None:
    cfg = lora_cfg(lora_backbone=backbone)
    frozen = pretrained(cfg)
    torch.manual_seed(0)
    net = build_target(cfg, SHAPE, 5, frozen)
    randomise_factors(net)
    plain = merge(net)
    assert not lora_layers(plain) and lora_layers(net)  # a copy: the adapter model is unchanged
    x = torch.randn(6, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), net(x), rtol=1e-5, atol=1e-5)
        unadapted = net.head(frozen["backbone"](x))
    assert (net(x) - unadapted).abs().max() > 1e-3  # the factors do change the function
    kinds = {type(m) for m in plain.modules()}
    assert LoRALinear not in kinds and LoRAConv2d not in kinds


def test_merge_of_a_generic_module_and_the_merged_weights() -> None:
    torch.manual_seed(0)
    net = Mixed()
    wrapped = apply_lora(net, 2, 3.0)
    assert wrapped == ["stem", "block.0", "point", "fc", "out"]
    randomise_factors(net)
    x = torch.randn(4, 3, 10, 10)
    plain = merge(net)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), net(x), rtol=1e-5, atol=1e-5)
    # the merged weight is W + (alpha / r) B A, with A flattened over (in, kh, kw) for a conv
    stem = net.stem
    a = stem.lora_a.detach().reshape(2, -1)  # [r, 3·3·3]
    want = stem.base.weight + 1.5 * (stem.lora_b @ a).view(6, 3, 3, 3)
    torch.testing.assert_close(plain.stem.weight, want)
    want = net.out.base.weight + 1.5 * net.out.lora_b @ net.out.lora_a
    torch.testing.assert_close(plain.out.weight, want)


def test_lora_conv_is_a_low_rank_kernel_update() -> None:
    torch.manual_seed(0)
    base = nn.Conv2d(4, 6, 3, stride=2, padding=1)
    layer = LoRAConv2d(base, 3, alpha=6.0)
    nn.init.normal_(layer.lora_b)
    x = torch.randn(2, 4, 9, 9)
    kernel = base.weight + layer.delta()
    with torch.no_grad():
        brute = nn.functional.conv2d(x, kernel, base.bias, stride=2, padding=1)
        torch.testing.assert_close(layer(x), brute, rtol=1e-5, atol=1e-5)
    assert torch.linalg.matrix_rank(layer.delta().reshape(6, -1)) == 3


def test_adapters_start_as_their_base() -> None:
    torch.manual_seed(0)
    net = Mixed()
    ref = merge(net)  # no LoRA layers yet: a plain copy
    apply_lora(net, 2, 8.0)
    x = torch.randn(3, 3, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref(x))


# ---- the parameters θ holds ---------------------------------------------------------------------
@pytest.mark.parametrize("rank", [1, 2, 4])
def test_parameter_count_is_r_times_in_plus_out_plus_the_head(rank: int) -> None:
    cfg = lora_cfg(lora_rank=rank, hidden=16, feature_dim=8)
    net = build_target(cfg, SHAPE, 5)
    factors = rank * (196 + 16) + rank * (16 + 8)  # fc1: 196 → 16, fc2: 16 → 8
    head = 8 * 5 + 5
    layout = ParamLayout.of(net)
    assert layout.size == factors + head == flat_params(net).numel()
    names = [e.name for e in layout.entries]
    assert names == [
        "backbone.fc1.lora_a",
        "backbone.fc1.lora_b",
        "backbone.fc2.lora_a",
        "backbone.fc2.lora_b",
        "head.weight",
        "head.bias",
    ]
    adapter = sum(p.numel() for n, p in net.named_parameters() if n in adapter_params(net))
    assert adapter == factors

    cnn = build_target(lora_cfg(lora_backbone="cnn", lora_rank=rank), SHAPE, 5)
    c1, c2 = 8, 16  # hidden // 2, hidden
    fan = rank * (1 * 9 + c1) + rank * (c1 * 9 + c2) + rank * (c2 * 49 + 8)
    assert ParamLayout.of(cnn).size == fan + head


def test_targets_choose_the_adapted_layers() -> None:
    net = build_target(lora_cfg(lora_targets=("fc2",)), SHAPE, 3)
    assert list(lora_layers(net)) == ["backbone.fc2"]
    assert isinstance(net.backbone.fc1, nn.Linear) and not net.backbone.fc1.weight.requires_grad
    assert ParamLayout.of(net).size == 2 * (16 + 8) + 8 * 3 + 3
    both = build_target(lora_cfg(lora_targets=("fc1", "fc2")), SHAPE, 3)
    assert list(lora_layers(both)) == ["backbone.fc1", "backbone.fc2"]
    assert ParamLayout.of(both).size == ParamLayout.of(build_target(lora_cfg(), SHAPE, 3)).size


def test_only_the_factors_and_head_train() -> None:
    cfg = lora_cfg()
    frozen = pretrained(cfg)
    torch.manual_seed(0)
    net = build_target(cfg, SHAPE, 3, frozen)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {
        "backbone.fc1.lora_a", "backbone.fc1.lora_b", "backbone.fc2.lora_a",
        "backbone.fc2.lora_b", "head.weight", "head.bias",
    }  # fmt: skip
    base = {k: v.clone() for k, v in frozen["backbone"].state_dict().items()}
    theta0 = flat_params(net)
    x, y = torch.randn(40, *SHAPE), torch.randint(0, 3, (40,))
    opt = build_optimizer("adam", trainable_parameters(net), CollectConfig().optim)
    train_loop(net, opt, x, y, 10, 10, 8, torch.Generator().manual_seed(0))
    assert not torch.equal(flat_params(net), theta0)
    for name in ("fc1", "fc2"):
        layer = getattr(net.backbone, name)
        assert torch.equal(layer.base.weight, base[f"{name}.weight"])
        assert torch.equal(layer.base.bias, base[f"{name}.bias"])
        assert layer.base.weight.grad is None
    # θ runs the model functionally, as policies and scoring do
    with torch.no_grad():
        torch.testing.assert_close(functional_forward(net, flat_params(net), x), net(x))


def test_built_model_holds_the_stores_backbone_and_starts_there() -> None:
    cfg = lora_cfg()
    frozen = pretrained(cfg)
    torch.manual_seed(0)
    net = build_target(cfg, SHAPE, 4, frozen)
    assert torch.equal(net.backbone.fc1.base.weight, frozen["backbone"].fc1.weight)
    x = torch.randn(5, *SHAPE)
    with torch.no_grad():  # B = 0: the adapted backbone is the pretrained one
        torch.testing.assert_close(net(x), net.head(frozen["backbone"](x)))
    # the initial θ does not depend on whether the backbone is in it (collect's shared θ₀)
    torch.manual_seed(0)
    assert torch.equal(flat_params(build_target(cfg, SHAPE, 4)), flat_params(net))


def test_a_model_without_its_backbone_refuses_to_run() -> None:
    net = build_target(lora_cfg(), SHAPE, 3)
    assert isinstance(net, LoRANet) and not net.pretrained
    with pytest.raises(ValueError, match="without its pretrained backbone"):
        net(torch.randn(2, *SHAPE))
    with pytest.raises(ValueError, match="pretrained backbone"):
        target_model("lora").attach_frozen(net, {})


def test_load_base_state_names_a_misfit() -> None:
    net = MLPBackbone(SHAPE, 6, 4)
    apply_lora(net, 2, 2.0, ("fc1",))
    other = MLPBackbone(SHAPE, 6, 4).state_dict()
    load_base_state(net, other)
    assert torch.equal(net.fc1.base.weight, other["fc1.weight"])
    with pytest.raises(ValueError, match="missing"):
        load_base_state(net, {"fc1.weight": other["fc1.weight"]})


def test_class_rows_end_theta_so_class_augmentation_applies() -> None:
    cfg = lora_cfg()
    layout = ParamLayout.of(build_target(cfg, SHAPE, 5))
    assert ClassSymmetry.applies(layout, 5, 5 * cfg.feature_dim)


# ---- bad input: one ConfigError each ------------------------------------------------------------
def test_rank_larger_than_a_layer_is_refused() -> None:
    # fc2: 16 → 8, so rank 9 is too large for it (fc1 has min 16)
    want = r"lora_rank=9 is larger than min\(in, out\) = 8 of layer 'fc2' \(16 → 8\)"
    with pytest.raises(ConfigError, match=want):
        build_target(lora_cfg(lora_rank=9), SHAPE, 3)
    build_target(lora_cfg(lora_rank=9, lora_targets=("fc1",)), SHAPE, 3)  # fc1 alone: fine
    with pytest.raises(ConfigError, match="'conv1'"):  # conv1: fan-in 1·3·3 = 9, out 8
        build_target(lora_cfg(lora_backbone="cnn", lora_rank=9), SHAPE, 3)


def test_a_target_that_matches_no_layer_is_refused() -> None:
    want = "'fc3' matches no layer; the adaptable layers are fc1, fc2"
    with pytest.raises(ConfigError, match=want):
        build_target(lora_cfg(lora_targets=("fc1", "fc3")), SHAPE, 3)
    with pytest.raises(ConfigError, match="'block' names 'block', a Sequential"):
        apply_lora(Mixed(), 2, 1.0, ("block",))
    with pytest.raises(ValueError, match="inside a module"):
        apply_lora(nn.Linear(3, 2), 1, 1.0)
    with pytest.raises(ConfigError, match="groups 2"):
        LoRAConv2d(nn.Conv2d(4, 4, 3, groups=2), 1)


def test_lora_settings_belong_to_the_lora_model() -> None:
    with pytest.raises(ValidationError, match="lora_rank applies to the lora model only"):
        ModelConfig(name="head", lora_rank=8)
    with pytest.raises(ValidationError, match="distinct"):
        lora_cfg(lora_targets=("fc1", "fc1"))
    # the JSON of other models (a store's compat) is what it was before LoRA
    assert set(ModelConfig(name="head").model_dump(mode="json")) == {
        "name", "hidden", "feature_dim", "extractor_steps",
    }  # fmt: skip
    spec = lora_cfg(lora_targets=("fc1",)).model_dump(mode="json")
    assert spec["lora_rank"] == 2 and spec["lora_targets"] == ["fc1"]
    assert spec["lora_backbone"] == "mlp" and spec["lora_alpha"] == 4.0
    assert ModelConfig.model_validate(spec) == lora_cfg(lora_targets=("fc1",))


# ---- the pretrained backbone: a frozen part, trained on source classes ---------------------------
def test_backbone_pretraining_is_deterministic_and_frozen() -> None:
    fam = make_family(TaskConfig(family="digits", ways=3, holdout_classes=(8, 9)))
    cfg = lora_cfg(extractor_steps=5, hidden=8, feature_dim=4)
    a, attrs = BACKBONE.train(fam, cfg, 3)
    b, _ = BACKBONE.train(fam, cfg, 3)
    assert isinstance(a, MLPBackbone) and not a.training
    assert not any(p.requires_grad for p in a.parameters())
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert attrs["trained_on_classes"] == list(range(8)) and attrs["architecture"] == "MLPBackbone"
    torch.manual_seed(3)
    init = build_backbone(cfg, fam.input_shape).state_dict()
    assert any(not torch.equal(v, init[k]) for k, v in a.state_dict().items())
    cnn, _ = BACKBONE.train(fam, cfg.model_copy(update={"lora_backbone": "cnn"}), 3)
    assert isinstance(cnn, ConvBackbone)


def test_condition_is_class_means_of_the_pretrained_features() -> None:
    fam = make_family(TaskConfig(family="digits", ways=3, train_per_class=4, support_per_class=3))
    cfg = lora_cfg(hidden=8, feature_dim=4)
    frozen = pretrained(cfg, fam.input_shape)
    task = fam.tasks("source", 1)[0]
    x, y, cond = task.support_set(cfg, frozen)
    assert x.shape[1:] == fam.input_shape  # the model sees images
    feats = frozen["backbone"](x)  # [M, 4]
    want = torch.stack([feats[y == j].mean(0) for j in range(3)]).reshape(-1)
    torch.testing.assert_close(cond, want)
    assert fam.condition_dim(cfg) == 3 * 4 == cond.numel()
    data = task.data(cfg, frozen)
    net = build_target(cfg, fam.input_shape, 3, frozen)
    load_flat(net, flat_params(net))
    assert net(data.x_test).shape == (data.x_test.shape[0], 3)


def test_the_example_config_is_valid_and_its_p_is_as_documented() -> None:
    from pathlib import Path

    from lohp_cli.config.base import load_toml

    path = Path(__file__).resolve().parents[2] / "examples" / "fmnist-lora.toml"
    cfg = CollectConfig.model_validate(load_toml(path))
    assert cfg.model.name == "lora" and cfg.init == "shared"
    assert ParamLayout.of(build_target(cfg.model, SHAPE, cfg.task.ways)).size == 2389
