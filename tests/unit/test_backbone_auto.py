"""``policy.backbone = "auto"``: the U-Net for a linear head, ``rows`` for whole networks and LoRA
factors, resolved once when training starts, said, and saved in the policy (so that ``generate``
and ``evaluate`` build the same network and a resumption compares like with like)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from lohp_cli.config import LoHpTrainConfig, ModelConfig, PolicyConfig
from lohp_cli.errors import ConfigError
from lohp_cli.policy.backbone import (
    UNet1d,
    build_backbone,
    check_backbone,
    choose_backbone,
    resolve_auto,
)
from lohp_cli.policy.directory import load_policy
from lohp_cli.policy.rows import RowSetBackbone
from lohp_cli.policy.rundir import config_differences
from lohp_cli.stages import check_names
from lohp_cli.tasks.layout import ParamLayout
from lohp_cli.tasks.models import build_target
from tests.cli.runner import invoke, plain
from tests.conftest import make_class_store, make_linear_store

TARGETS: dict[str, dict[str, Any]] = {
    "head": {"name": "head", "feature_dim": 6},
    "mlp": {"name": "mlp", "hidden": 8},
    "cnn": {"name": "cnn", "hidden": 8},
    "lora": {"name": "lora", "hidden": 8, "feature_dim": 6},
    "lora-conv": {"name": "lora", "hidden": 8, "feature_dim": 6, "lora_backbone": "cnn"},
    "lora-fc2-r1": {"name": "lora", "hidden": 8, "feature_dim": 6, "lora_rank": 1,
                    "lora_targets": ["fc2"]},
}  # fmt: skip
CHOSEN = {"head": "unet", "mlp": "rows", "cnn": "rows", "lora": "rows", "lora-conv": "rows",
          "lora-fc2-r1": "rows"}  # fmt: skip


def layout_of(target: str) -> ParamLayout:
    net = build_target(ModelConfig(**TARGETS[target]), (1, 28, 28), 5)
    return ParamLayout.of(net)


# ---- the choice ---------------------------------------------------------------------------------
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_auto_follows_the_target_model(target: str) -> None:
    layout = layout_of(target)
    name, why = choose_backbone(layout, TARGETS[target]["name"])
    assert name == CHOSEN[target]
    what = {"head": "linear head", "mlp": "whole network", "cnn": "whole network"}
    assert why == f"{what.get(target, 'LoRA factors')}, P = {layout.size}"


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_the_chosen_backbone_builds_and_runs_on_every_layout(target: str) -> None:
    layout = layout_of(target)
    cfg = PolicyConfig(emb_dim=8)  # auto: resolved over the layout when built directly
    assert cfg.backbone == "auto"
    bb = build_backbone(layout, 5 * 6, 4, cfg)
    assert isinstance(bb, RowSetBackbone if CHOSEN[target] == "rows" else UNet1d)
    s, emb = torch.randn(2, layout.size), torch.randn(2, 8)
    out = bb(s, emb, torch.randn(2, 30)) if getattr(bb, "takes_condition", False) else bb(s, emb)
    assert out.shape == (2, 2, layout.size)


def test_auto_without_a_model_name_reads_the_layout() -> None:
    # P = 8·(196 + 1) + 5·(8 + 1): 14×14 pooled pixels → 8 hidden units → 5 classes
    assert choose_backbone(layout_of("mlp")) == ("rows", "2 layers, P = 1621")
    assert choose_backbone(layout_of("head")) == ("unet", "one linear layer, P = 35")
    flat = ParamLayout.flat(12)  # a vector that is not a chain of layers (an L2O problem's)
    assert choose_backbone(flat, "vector") == ("unet", "not a chain of layers, P = 12")


def test_resolve_auto_says_the_choice_once_and_keeps_explicit_names() -> None:
    said: list[dict[str, Any]] = []
    cfg = LoHpTrainConfig()
    resolved = resolve_auto(cfg, layout_of("mlp"), "mlp", said.append)
    assert resolved.policy.backbone == "rows" and cfg.policy.backbone == "auto"
    assert resolved.policy.model_dump() == {**cfg.policy.model_dump(), "backbone": "rows"}
    assert said == [{"event": "info", "message": "backbone auto → rows (whole network, P = 1621)"}]
    explicit = LoHpTrainConfig(policy=PolicyConfig(backbone="unet"))
    assert resolve_auto(explicit, layout_of("mlp"), "mlp", said.append) is explicit
    assert len(said) == 1


def test_unknown_backbone_lists_auto() -> None:
    cfg = LoHpTrainConfig(policy=PolicyConfig(backbone="transformer"))  # values only
    with pytest.raises(ConfigError, match="choose from auto, coordinate, mlp, rows, unet"):
        check_backbone(cfg.policy.backbone)
    with pytest.raises(ConfigError, match="policy.backbone: unknown policy backbone 'transformer'"):
        check_names(cfg)


def test_config_differences_name_the_dotted_keys() -> None:
    there = {"lr": 1e-3, "policy": {"backbone": "unet", "width": 32}, "gone": 1}
    here = {"lr": 1e-3, "policy": {"backbone": "rows", "width": 32}}
    assert config_differences(there, here) == [
        "gone: 1 there, None here",
        "policy.backbone: 'unet' there, 'rows' here",
    ]
    assert config_differences(here, here) == []


# ---- through lohp train-policy ------------------------------------------------------------------
SMALL = ["--k", "1", "--batch-size", "4", "--device", "cpu", "--set", "policy.emb_dim=8",
         "--set", "policy.width=8", "--set", "policy.heads=2"]  # fmt: skip


def train(store: Path, out: Path, steps: int, *extra: object) -> Any:
    return invoke("train-policy", "--store", store, "--out", out, "--steps", steps, *SMALL, *extra)


def stored_backbone(out: Path) -> str:
    return json.loads((out / "config.json").read_text())["train_config"]["policy"]["backbone"]


def test_dry_run_shows_auto() -> None:
    result = invoke("train-policy", "--dry-run")
    assert result.exit_code == 0, plain(result.output)
    assert json.loads(result.stdout)["policy"]["backbone"] == "auto"


@pytest.mark.slow
def test_auto_on_an_mlp_store_trains_rows_saves_it_and_resumes(tiny_cfg, tmp_path: Path) -> None:
    """A collected mlp store: rows is said, saved and loaded; the same command (auto) resumes."""
    from lohp_cli.stages.collect import collect

    collect(tiny_cfg)
    out = tmp_path / "p"
    result = train(tiny_cfg.out, out, 2)
    assert result.exit_code == 0, plain(result.output)
    size = json.loads((out / "config.json").read_text())["param_count"]
    assert f"backbone auto → rows (whole network, P = {size})" in plain(result.stderr)
    assert stored_backbone(out) == "rows"
    model, _, _ = load_policy(out)
    assert isinstance(model.backbone, RowSetBackbone)
    again = train(tiny_cfg.out, out, 3)  # a run started with auto, resumed with auto
    assert again.exit_code == 0, plain(again.output)
    assert "resuming from step 2" in plain(again.stderr)
    assert json.loads((out / "config.json").read_text())["trained_steps"] == 3
    other = train(tiny_cfg.out, out, 4, "--set", "policy.backbone=unet")
    assert other.exit_code == 4
    assert "policy.backbone: 'rows' there, 'unet' here" in plain(other.stderr)


def test_auto_on_a_head_store_is_the_unet(tmp_path: Path) -> None:
    store, out = tmp_path / "cls.zarr", tmp_path / "p"
    make_class_store(store)
    result = train(store, out, 2)
    assert result.exit_code == 0, plain(result.output)
    assert "backbone auto → unet (linear head, P = 9)" in plain(result.stderr)
    assert stored_backbone(out) == "unet"
    assert isinstance(load_policy(out)[0].backbone, UNet1d)


def test_an_old_policy_with_an_explicit_backbone_loads_and_resumes(tmp_path: Path) -> None:
    """A policy of the old default (backbone "unet" written out, rows' old width and depth among
    its settings) loads as it was made; the new default resumes it where auto also picks the
    U-Net, and names the setting where it would not."""
    store, out = tmp_path / "cls.zarr", tmp_path / "p"
    make_class_store(store)
    assert train(store, out, 2, "--set", "policy.backbone=unet").exit_code == 0
    cfg_path = out / "config.json"
    data = json.loads(cfg_path.read_text())
    data["train_config"]["policy"].update(width=64, blocks=2)  # as stored before auto
    cfg_path.write_text(json.dumps(data))
    model, meta, _ = load_policy(out)
    assert isinstance(model.backbone, UNet1d)
    assert meta.train_config["policy"]["width"] == 64
    resumed = train(store, out, 3, "--set", "policy.width=64", "--set", "policy.blocks=2")
    assert resumed.exit_code == 0, plain(resumed.output)  # auto → unet, as stored
    assert stored_backbone(out) == "unet"

    lin, lout = tmp_path / "lin.zarr", tmp_path / "q"
    make_linear_store(lin, n_tasks=2, size=5, cond_dim=3, steps=4)
    assert train(lin, lout, 1, "--set", "policy.backbone=mlp").exit_code == 0
    refused = train(lin, lout, 2)  # auto → unet here, not the stored mlp
    assert refused.exit_code == 4
    assert "policy.backbone: 'mlp' there, 'unet' here" in plain(refused.stderr)


def test_the_diffusion_generator_resolves_auto_too(tiny_cfg, tmp_path: Path) -> None:
    from lohp_cli.stages.collect import collect

    collect(tiny_cfg)
    out = tmp_path / "d"
    result = invoke("train-policy", "--store", tiny_cfg.out, "--out", out, "--steps", 1,
                    "--method", "diffusion", "--device", "cpu", "--batch-size", 4,
                    "--set", "policy.emb_dim=8", "--set", "policy.width=8",
                    "--set", "policy.heads=2")  # fmt: skip
    assert result.exit_code == 0, plain(result.output)
    assert "backbone auto → rows (whole network" in plain(result.stderr)
    assert stored_backbone(out) == "rows"
    assert isinstance(load_policy(out)[0].backbone, RowSetBackbone)


def test_a_resumed_auto_run_ends_where_an_uninterrupted_one_does(tmp_path: Path) -> None:
    from lohp_cli.checkpoint import load_tensors

    store = tmp_path / "cls.zarr"
    make_class_store(store)
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert train(store, whole, 3).exit_code == 0
    assert train(store, split, 2).exit_code == 0
    resumed = train(store, split, 3)  # auto again
    assert resumed.exit_code == 0 and "resuming from step 2" in plain(resumed.stderr)
    a, b = load_tensors(whole / "model.safetensors"), load_tensors(split / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_hypernetwork_resolves_silently(tmp_path: Path) -> None:
    """The hypernetwork builds ``hypernetwork_backbone``: auto is resolved (config.json holds no
    "auto") but not said, since it builds nothing from it."""
    store, out = tmp_path / "cls.zarr", tmp_path / "h"
    make_class_store(store)
    result = train(store, out, 1, "--method", "hypernetwork")
    assert result.exit_code == 0, plain(result.output)
    assert "backbone auto" not in plain(result.stderr)
    assert stored_backbone(out) == "unet"
