"""The prototype baseline (lohp_cli/methods/prototype.py): linear weights that are the
nearest-class-mean classifier, scored through the evaluate path on few-shot episodes."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lohp_cli.config import GenerateConfig, ModelConfig, TrainConfig
from lohp_cli.errors import ConfigError
from lohp_cli.methods import registry
from lohp_cli.methods.base import run_method, time_methods
from lohp_cli.methods.prototype import (
    PrototypeMethod,
    nearest_mean,
    prototype_head,
    prototypes,
)
from lohp_cli.stages.collect import collect
from lohp_cli.stages.generate import generate
from lohp_cli.stages.train import train_policy
from lohp_cli.tasks.models import build_target
from tests.conftest import evaluate_context, tiny_config


def test_known_answer() -> None:
    """1-D features, classes at means 0 and 4: the boundary is 2."""
    x = torch.tensor([[-1.0], [1.0], [3.0], [5.0]])
    y = torch.tensor([0, 0, 1, 1])
    w, b = prototype_head(x, y, 2)
    assert w.tolist() == [[0.0], [8.0]] and b.tolist() == [0.0, -16.0]
    q = torch.tensor([[1.9], [2.1], [-7.0], [9.0]])
    assert (q @ w.T + b).argmax(1).tolist() == [0, 1, 0, 1] == nearest_mean(q, x, y, 2).tolist()


@settings(max_examples=40, deadline=None)
@given(
    ways=st.integers(2, 6),
    shots=st.integers(1, 5),
    dim=st.integers(1, 16),
    seed=st.integers(0, 2**31 - 1),
)
def test_linear_weights_are_the_nearest_class_mean(
    ways: int, shots: int, dim: int, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(ways * shots, dim, generator=g, dtype=torch.float64)
    y = torch.arange(ways).repeat_interleave(shots)
    q = torch.randn(200, dim, generator=g, dtype=torch.float64) * 2
    w, b = prototype_head(x, y, ways)
    logits = q @ w.T + b  # [200, ways]
    mu = prototypes(x, y, ways)
    # logits are −‖q − μ_c‖² up to ‖q‖², the same for every class
    assert torch.allclose(logits - (q * q).sum(1, keepdim=True), -(torch.cdist(q, mu) ** 2))
    assert torch.equal(logits.argmax(1), nearest_mean(q, x, y, ways))


def test_the_baseline_is_registered() -> None:
    assert "prototype" in registry.names() and not registry.is_stepped("prototype")


def test_only_a_linear_head_can_be_a_prototype_classifier() -> None:
    net = build_target(ModelConfig(name="mlp", hidden=4), (1, 8, 8), 3)
    task = SimpleNamespace(build_target=lambda: net, model_cfg=ModelConfig(name="mlp"))
    with pytest.raises(ConfigError, match="target model is 'mlp'"):
        PrototypeMethod().prepare(SimpleNamespace(task=task, device="cpu"))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A head store of 3-way 2-shot digits episodes, a 2-step policy, 4 meta-test episodes."""
    tmp = tmp_path_factory.mktemp("prototype")
    store, pol, gen = tmp / "s.zarr", tmp / "pol", tmp / "g.zarr"
    task = {"family": "fewshot-digits", "ways": 3, "shots": 2, "queries": 5}
    model = {"name": "head", "feature_dim": 8, "extractor_steps": 30}
    collect(tiny_config(store, task=task, model=model, optimizers=["adam"], device="cpu"))
    policy = {"backbone": "mlp", "hidden": 16, "emb_dim": 8}
    train_policy(TrainConfig.model_validate(
        {"store": str(store), "out": str(pol), "k": 2, "steps": 2, "policy": policy}
    ))  # fmt: skip
    generate(GenerateConfig.model_validate(
        {"policy": str(pol), "out": str(gen), "num_tasks": 4, "samples": 2, "device": "cpu"}
    ))  # fmt: skip
    return evaluate_context(gen, tmp / "report")[1][0]


def test_prototype_scores_as_nearest_mean_through_the_evaluate_path(ctx: Any) -> None:
    row = run_method(ctx, PrototypeMethod())
    time_methods(ctx, [row], 60.0)
    assert len(row.accuracies) == 4 * 2 and row.steps is None and row.latency_ms_batch1 > 0
    for t, acc in zip(ctx.tasks, row.task_acc, strict=True):
        d = ctx.data[t]
        assert d.x_train.shape == (3 * 2, 8)  # the support set: 2 shots of 3 classes
        pred = nearest_mean(d.x_test, d.x_train, d.y_train, 3)
        assert acc == pytest.approx(float((pred == d.y_test).float().mean()))
    # the same weights from every start
    w = PrototypeMethod()
    w.prepare(ctx)
    t = ctx.tasks[0]
    out = w.weights(t, ctx.starts(t))
    assert out.shape == (2, ctx.size) and torch.equal(out[0], out[1])


def test_summary_has_the_interval_over_tasks(ctx: Any) -> None:
    row = run_method(ctx, PrototypeMethod()).summary()
    assert row["n_tasks"] == 4 and row["n"] == 8
    lo, hi = row["acc_ci95"]
    assert lo <= row["acc_mean"] <= hi
