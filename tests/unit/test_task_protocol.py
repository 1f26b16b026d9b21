"""The task protocol, the target-model registry and the policy-backbone registry.

A family owns its ids; a new family is one class and one registration and runs through the
stages unchanged; a target model declares which parameters θ holds (LoRA factors over a frozen
base included); a policy takes its backbone injected, and the registered names keep their
initial weights.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lohp_cli.config import ModelConfig, PolicyConfig, TaskConfig, TrainConfig
from lohp_cli.errors import ConfigError
from lohp_cli.policy.backbone import BACKBONES, MLPBackbone, build_backbone, register_backbone
from lohp_cli.policy.gaussian import LoHpPolicy
from lohp_cli.stages.collect import collect
from lohp_cli.stages.train import train_policy
from lohp_cli.store import TrajectoryStore
from lohp_cli.tasks import FAMILIES, TaskFamily, make_family, register_family
from lohp_cli.tasks.datasets import load_digits_data
from lohp_cli.tasks.families import Split
from lohp_cli.tasks.images import ImageFamily, ImageTask, Part
from lohp_cli.tasks.layout import ParamLayout, flat_params, functional_forward, load_flat
from lohp_cli.tasks.lora import LoRALinear, freeze_all_but_adapters
from lohp_cli.tasks.models import MODELS, TargetModel, build_target, register_model, target_model
from tests.conftest import tiny_config


# ---- a toy family: "classes k, k+1, k+2 of digits", ids "shift-k" ----------------------------
class ShiftTask(ImageTask):
    def __init__(self, family: ShiftFamily, k: int) -> None:
        self.family, self.k = family, k

    @property
    def id(self) -> str:
        return f"shift-{self.k}"

    @property
    def split(self) -> Split:
        return "source" if self.k < 5 else "target"

    def examples(self, part: Part) -> tuple[np.ndarray, torch.Tensor]:
        d = self.family.data
        x, y = (d.test_x, d.test_y) if part == "test" else (d.train_x, d.train_y)
        per = {"train": 12, "test": 6, "support": 3}[part]
        skip = 12 if part == "support" else 0  # support images are not training images
        rows = [np.flatnonzero(y == (self.k + j) % 10)[skip : skip + per] for j in range(3)]
        labels = torch.arange(3).repeat_interleave(per)
        return x[np.concatenate(rows)], labels


class ShiftFamily(ImageFamily):
    name = "toy-shift"

    def load(self):  # type: ignore[no-untyped-def]
        return load_digits_data()

    def tasks(self, split: Split, n: int) -> list[ShiftTask]:  # type: ignore[override]
        first = 0 if split == "source" else 5
        if n > 5:
            raise ConfigError(f"{n} {split} tasks asked for; toy-shift has 5")
        return [ShiftTask(self, first + i) for i in range(n)]

    def task(self, task_id: str) -> ShiftTask:
        k = task_id.removeprefix("shift-")
        if not (task_id.startswith("shift-") and k.isdigit() and int(k) < 10):
            raise self.foreign(task_id, "expected shift-0 … shift-9")
        return ShiftTask(self, int(k))


@pytest.fixture
def toy_family(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[TaskFamily]]:
    monkeypatch.setitem(FAMILIES, ShiftFamily.name, ShiftFamily)  # removed after the test
    yield register_family(ShiftFamily)


def test_a_foreign_id_is_refused_with_its_name() -> None:
    fam = make_family(TaskConfig(family="digits", ways=3))
    for bad in ("shift-3", "c1_2", "c1_2_3_4"):
        with pytest.raises(ConfigError, match=f"'{bad}' is not a task id of family 'digits'"):
            fam.task(bad)


def test_a_new_family_runs_through_collect_and_train(
    toy_family: type[TaskFamily], tmp_path: Path
) -> None:
    fam = make_family(TaskConfig(family="toy-shift", ways=3))
    assert [t.id for t in fam.tasks("source", 2)] == ["shift-0", "shift-1"]
    assert fam.task("shift-7").split == "target" and fam.check_id("shift-7") == "shift-7"
    with pytest.raises(ConfigError, match="'c0_1_2' is not a task id of family 'toy-shift'"):
        fam.task("c0_1_2")

    store_path = tmp_path / "toy.zarr"
    cfg = tiny_config(store_path, device="cpu", task={"family": "toy-shift", "ways": 3})
    result = collect(cfg)
    assert result.collected == 2 * len(cfg.optimizers)
    store = TrajectoryStore.open(str(store_path))
    assert store.task_ids() == ["shift-0", "shift-1"]
    assert dict(store.root["tasks"]["shift-0"].attrs) == {"split": "source", "family": "toy-shift"}
    assert store.attrs["condition_dim"] == 3 * 49

    tcfg = TrainConfig.model_validate(
        {
            "store": str(store_path),
            "out": str(tmp_path / "policy"),
            "k": 1,
            "steps": 3,
            "batch_size": 2,
            "device": "cpu",
            "checkpoint_every": 100,
            "policy": {"backbone": "mlp", "hidden": 16, "emb_dim": 8},
        }
    )
    assert train_policy(tcfg).complete


# ---- target models ---------------------------------------------------------------------------
def test_model_registry() -> None:
    assert {"head", "mlp", "cnn"} <= set(MODELS)
    assert [p.name for p in target_model("head").frozen] == ["extractor"]
    assert target_model("mlp").frozen == () and target_model("cnn").frozen == ()
    assert target_model(ModelConfig(name="cnn")) is MODELS["cnn"]
    with pytest.raises(ConfigError, match="Unknown target model 'nope'"):
        target_model("nope")
    fam = make_family(TaskConfig(family="digits", ways=3))
    assert fam.condition_dim(ModelConfig(name="head", feature_dim=6)) == 18
    assert fam.condition_dim(ModelConfig(name="mlp")) == 3 * 49


class LoRAModel(TargetModel):
    name = "lora-test"

    def build(self, cfg: ModelConfig, input_shape: tuple[int, ...], ways: int) -> nn.Module:
        d_in = int(np.prod(input_shape))
        return freeze_all_but_adapters(
            nn.Sequential(nn.Flatten(), LoRALinear(nn.Linear(d_in, ways), 2))
        )


def test_lora_factors_are_the_whole_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(MODELS, LoRAModel.name, LoRAModel())
    register_model(LoRAModel)
    torch.manual_seed(0)
    net = target_model("lora-test").build(ModelConfig(), (1, 4, 4), 3)
    layout = ParamLayout.of(net)
    assert [(e.name, e.shape) for e in layout.entries] == [
        ("1.lora_a", (2, 16)),
        ("1.lora_b", (3, 2)),
    ]
    assert layout.size == 2 * 16 + 3 * 2 == flat_params(net).numel()
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    assert frozen == {"1.base.weight", "1.base.bias"}

    x = torch.randn(5, 1, 4, 4)
    theta = torch.randn(layout.size, requires_grad=True)
    out = functional_forward(net, theta, x)
    base = net[1].base(x.flatten(1))
    a, b = layout.unflatten(theta).values()
    torch.testing.assert_close(out, base + net[1].scale * (x.flatten(1) @ a.T @ b.T))
    out.sum().backward()
    assert theta.grad is not None and net[1].base.weight.grad is None
    load_flat(net, theta.detach())
    torch.testing.assert_close(net(x), out.detach())  # θ went into the factors only
    assert torch.equal(flat_params(net), theta.detach())


def test_build_target_is_the_registry() -> None:
    cfg = ModelConfig(name="head", feature_dim=6)
    net = build_target(cfg, (1, 8, 8), 4)
    assert isinstance(net, nn.Linear) and (net.in_features, net.out_features) == (6, 4)


# ---- policy backbones -------------------------------------------------------------------------
# Initial weights of LoHpPolicy(37, 6, 5, linspace(0.5, 0.1, 5), cfg, classes=3) after
# manual_seed(3), computed before backbones had a registry: the names keep their weights.
BEFORE_REGISTRY = {
    "mlp": "58c833903fa86abe088d52ed475fc60aef1ed278b0838621ea1dc87860318e21",
    "mlp+": "0a5a468b81680c36fed290ea44ef1127bcb5644d3f18ab1602abfa1db14f7afe",
    "unet": "e6ac8afb82db7f361a560843d2c0bede3d76bbdec37660548aac4eebe9402263",
    "unet+": "c78936591f5d77d5bbab343ced8c5dfa9f13fa300971a527781577611b1d92ba",
}
ARCH = {
    "mlp": {"backbone": "mlp", "hidden": 32, "emb_dim": 16},
    "unet": {"backbone": "unet", "channels": (8, 16), "patch": 4, "emb_dim": 16},
}
EXTRA = {"optimizer_token": True, "state_input": "support", "coefficient": "per_step"}


def _digest(module: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("key", sorted(BEFORE_REGISTRY))
def test_registered_backbones_keep_their_initial_weights(key: str) -> None:
    cfg = PolicyConfig(**ARCH[key.rstrip("+")], **(EXTRA if key.endswith("+") else {}))
    torch.manual_seed(3)
    policy = LoHpPolicy(37, 6, 5, torch.linspace(0.5, 0.1, 5), cfg, classes=3)
    assert _digest(policy) == BEFORE_REGISTRY[key]


def test_backbone_registry_and_injection(monkeypatch: pytest.MonkeyPatch) -> None:
    assert {"unet", "mlp"} <= set(BACKBONES)
    cfg = PolicyConfig(**ARCH["mlp"])
    layout = ParamLayout.flat(11)
    assert isinstance(build_backbone(layout, 4, 3, cfg), MLPBackbone)
    with pytest.raises(ConfigError, match="Unknown policy backbone 'nope'"):
        build_backbone(layout, 4, 3, cfg.model_copy(update={"backbone": "nope"}))

    seen: list[tuple[ParamLayout, int, int]] = []

    def zeros(lay: ParamLayout, cond_dim: int, n_steps: int, c: PolicyConfig) -> nn.Module:
        seen.append((lay, cond_dim, n_steps))
        return ZeroBackbone(lay.size)

    monkeypatch.setitem(BACKBONES, "zeros", zeros)
    register_backbone("zeros")(zeros)
    built = build_backbone(layout, 4, 3, cfg.model_copy(update={"backbone": "zeros"}))
    assert seen == [(layout, 4, 3)]
    policy = LoHpPolicy(11, 4, 3, torch.ones(3), cfg, backbone=built)
    assert policy.backbone is built  # injected, not rebuilt
    s = torch.randn(2, 11)
    f, b = policy.means(s, torch.zeros(2, dtype=torch.long), torch.randn(2, 4))
    assert torch.equal(f, torch.zeros(2, 11)) and torch.equal(b, torch.zeros(2, 11))
    with pytest.raises(ValueError, match="layout has 5 parameters"):
        LoHpPolicy(11, 4, 3, torch.ones(3), cfg, layout=ParamLayout.flat(5))


class ZeroBackbone(nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.unused = nn.Linear(1, 1)

    def forward(self, s: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return torch.zeros(s.shape[0], 2, self.size)
