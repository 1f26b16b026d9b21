"""The ``lora`` model through every stage, and evaluate's full fine-tuning baseline
(lohp_cli/methods/full_finetune.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from lohp_cli.config import GenerateConfig, ModelConfig
from lohp_cli.errors import CompatibilityError, ConfigError
from lohp_cli.methods import registry
from lohp_cli.methods.base import EvalContext, run_method, time_methods
from lohp_cli.methods.full_finetune import FullFineTune, check_adapted
from lohp_cli.stages.collect import collect
from lohp_cli.stages.generate import generate
from lohp_cli.store import TrajectoryStore
from lohp_cli.tasks.layout import ParamLayout
from lohp_cli.tasks.lora import lora_layers
from lohp_cli.tasks.scoring import accuracy
from tests.conftest import evaluate_context, tiny_config, train_and_generate

LORA = {"name": "lora", "hidden": 8, "feature_dim": 6, "extractor_steps": 20, "lora_rank": 2}
SAMPLES = 2


def lora_store(out: Path, **model: Any) -> Path:
    collect(tiny_config(out, model={**LORA, **model}, init="shared", optimizers=("adam",)))
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny lora store (digits 8×8, shared θ₀), a policy trained 3 steps, 2 tasks generated."""
    tmp = tmp_path_factory.mktemp("lora")
    return {**train_and_generate(lora_store(tmp / "s.zarr"), tmp, SAMPLES), "tmp": tmp}


@pytest.fixture(scope="module")
def ctx(run: dict[str, Path]) -> EvalContext:
    return evaluate_context(run["generated"], run["tmp"] / "report")[1][0]


def test_a_lora_store_records_the_factors_and_head(run: dict[str, Path]) -> None:
    store = TrajectoryStore.open(str(run["store"]))
    meta = store.meta
    assert meta.compat.model.to_json() == {
        **ModelConfig.model_validate(LORA).model_dump(mode="json"),
        "lora_alpha": 8.0, "lora_targets": [], "lora_backbone": "mlp",
    }  # fmt: skip
    # digits: 8×8 inputs; fc1 64 → 8, fc2 8 → 6, head 6 → 5
    assert meta.param_count == 2 * (64 + 8) + 2 * (8 + 6) + 6 * 5 + 5
    assert [e["name"] for e in meta.layout][-2:] == ["head.weight", "head.bias"]
    assert store.root["backbone"].attrs["architecture"] == "MLPBackbone"
    rid = next(iter(store.run_ids()))
    w = store.weights(rid)  # [T+1, P]
    b1 = slice(2 * 64, 2 * 64 + 8 * 2)  # fc1.lora_b: zero at the shared start, then trained
    assert (w[0, b1] == 0).all() and (w[-1, b1] != 0).any()


def test_evaluate_scores_with_the_stores_backbone(ctx: EvalContext) -> None:
    assert lora_layers(ctx.net) and ctx.net.pretrained
    assert ParamLayout.of(ctx.net).size == ctx.size


def test_full_ft_from_zero_steps_is_the_start(ctx: EvalContext) -> None:
    """Merged, the start is the same function: 0 steps of full-ft score as the start itself."""
    m = FullFineTune(0)
    m.prepare(ctx)
    t = ctx.tasks[0]
    starts = ctx.starts(t)
    w = m.weights(t, starts)
    p_full = sum(p.numel() for p in m.net.parameters())
    assert w.shape == (SAMPLES, p_full) and p_full > ctx.size
    for j in range(SAMPLES):
        assert accuracy(m.net, w[j], ctx.data[t]) == pytest.approx(
            accuracy(ctx.net, starts.theta0[j], ctx.data[t]), abs=1e-6
        )


def test_full_ft_trains_every_weight_reproducibly(ctx: EvalContext) -> None:
    m = FullFineTune(6, lr=3e-3)
    m.prepare(ctx)
    assert m.optim.adam.lr == 3e-3 and m.optim.adam.betas == ctx.optim.adam.betas
    t = ctx.tasks[0]
    w0 = FullFineTune(0)
    w0.prepare(ctx)
    start = w0.weights(t, ctx.starts(t))
    w = m.weights(t, ctx.starts(t))
    assert torch.equal(w, m.weights(t, ctx.starts(t)))  # seeded minibatches
    layout = ParamLayout.of(m.net)
    moved = {
        e.name
        for e in layout.entries
        if not torch.equal(
            w[0, e.offset : e.offset + e.numel], start[0, e.offset : e.offset + e.numel]
        )
    }
    assert moved == {e.name for e in layout.entries}  # backbone weights included
    assert {"backbone.fc1.weight", "head.weight"} <= moved
    row = run_method(ctx, m)
    time_methods(ctx, [row], 60.0)
    assert (row.name, row.kind, row.steps) == ("full-ft-6", "full-ft", 6)
    assert len(row.accuracies) == 2 * SAMPLES and row.latency_ms_batch1 > 0
    default = FullFineTune(6)
    default.prepare(ctx)
    assert default.optim == ctx.optim  # the store's Adam


def test_full_ft_is_a_stepped_baseline() -> None:
    assert "full-ft" in registry.names() and registry.is_stepped("full-ft")
    from lohp_cli.config import EvaluateConfig

    cfg = EvaluateConfig(baselines=("full-ft",), full_ft_lr=1e-3)
    rows = registry.baseline("full-ft", cfg, (40, 4, 40))
    assert [m.name for m in rows] == ["full-ft-40", "full-ft-4"] and rows[0].lr == 1e-3


def test_full_ft_needs_an_adapted_model() -> None:
    plain = SimpleNamespace(net=nn.Linear(3, 2), task=SimpleNamespace(model_cfg=ModelConfig()))
    with pytest.raises(ConfigError, match="model 'head' has none"):
        check_adapted(plain)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="full-ft"):
        registry.check("full-ft", plain)  # type: ignore[arg-type]
    registry.check("adam", plain)  # type: ignore[arg-type]  # no check: nothing raised


def test_a_lora_policy_refuses_a_store_of_another_rank(run: dict[str, Path]) -> None:
    other = lora_store(run["tmp"] / "rank1.zarr", lora_rank=1)
    cfg = GenerateConfig.model_validate(
        {"policy": str(run["policy"]), "out": str(run["tmp"] / "x.zarr"), "store": str(other),
         "num_tasks": 1, "samples": 1, "device": "cpu"}
    )  # fmt: skip
    with pytest.raises(CompatibilityError, match="model.lora_rank: the policy's store has 2"):
        generate(cfg)
