"""The path diagnosis (lohp_cli/report/path_diagnosis.py) on cases whose answer is known."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from lohp_cli.config import OptimizersConfig
from lohp_cli.methods.optimizer import run_optimizer
from lohp_cli.report.path_diagnosis import (
    layer_norms,
    nearest_distances,
    reference_optimizer,
    reference_path,
    step_ratios,
    support_scores,
    target_layout,
)
from lohp_cli.tasks.families import TaskTensors
from lohp_cli.tasks.layout import ParamLayout, flat_params
from lohp_cli.tasks.scoring import accuracy
from tests.conftest import tiny_config


def test_nearest_state_of_a_tiny_store() -> None:
    """Two runs of three states in P = 2; the query's nearest state is known by hand."""
    runs = [
        torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]]),
        torch.tensor([[0.0, 0.0], [0.0, 3.0], [0.0, 4.0]]),
    ]
    # one path of two states, matched to recorded states 0 and 2
    q = torch.tensor([[[0.0, 1.0], [1.0, 0.5]]])  # [1, 2, 2]
    std = torch.tensor([1.0, 2.0])
    near = nearest_distances(q, runs, [0, 2], std)
    assert near.runs == 2
    w_matched, w_any = near.distances("weight", "matched"), near.distances("weight", "any")
    # state 0: nearest is (0, 0) in both runs; state 1 at recorded index 2: (2, 0) or (0, 4)
    np.testing.assert_allclose(w_matched[0], [1.0, math.hypot(1.0, 0.5)])
    # any step: (0, 1) is 1 from (0, 0); (1, 0.5) is 0.5 from (1, 0) (run 0, state 1)
    np.testing.assert_allclose(w_any[0], [1.0, 0.5])
    # normalised space: the second coordinate is halved
    np.testing.assert_allclose(near.distances("normalized", "any")[0], [0.5, 0.25])
    np.testing.assert_allclose(
        near.distances("normalized", "matched")[0], [0.5, math.hypot(1.0, 0.25)]
    )


def test_a_recorded_run_is_at_distance_zero_and_other_states_are_not() -> None:
    g = torch.Generator().manual_seed(0)
    runs = [torch.randn(9, 50, generator=g) * 10 for _ in range(3)]
    matched = [0, 2, 4, 6, 8]  # k = 2
    path = runs[1][matched]  # the run's own matched states
    off = path + 0.01 * torch.randn(path.shape, generator=g)
    near = nearest_distances(torch.stack([path, off]), runs, matched, torch.rand(50) + 0.5)
    for space in ("weight", "normalized"):
        for scope in ("matched", "any"):
            d = near.distances(space, scope)
            assert (d[0] == 0).all()
            assert (d[1] > 0).all()
    # a path run ahead of its matched steps is 0 from some recorded state, not from the matched one
    ahead = runs[2][[1, 3, 5, 7, 8]]
    near = nearest_distances(ahead[None], runs, matched, torch.ones(50))
    assert (near.distances("weight", "any")[0] == 0).all()
    assert (near.distances("weight", "matched")[0, :4] > 1).all()


def test_layer_norms_and_ratios() -> None:
    layout = ParamLayout.of(nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1)))
    assert [e.name for e in layout.entries] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    g = torch.Generator().manual_seed(1)
    ref = torch.cumsum(torch.randn(5, layout.size, generator=g), 0)  # [N+1, P]
    # a path equal to the reference's: every ratio is 1
    np.testing.assert_allclose(step_ratios(ref, ref, layout), 1.0)
    # doubling one layer's steps doubles its ratio only
    e = layout.entries[2]
    pol = ref.clone()
    pol[:, e.offset : e.offset + e.numel] = 2 * ref[:, e.offset : e.offset + e.numel]
    r = step_ratios(pol, ref, layout)
    np.testing.assert_allclose(r[:, 2], 2.0, rtol=1e-6)
    np.testing.assert_allclose(r[:, [0, 1, 3]], 1.0)
    step, dist = layer_norms(ref, layout)
    assert step.shape == (4, 4) and dist.shape == (5, 4)
    b = layout.entries[1]
    want = (ref[3, b.offset : b.offset + b.numel] - ref[0, b.offset : b.offset + b.numel]).norm()
    assert dist[3, 1] == pytest.approx(float(want), rel=1e-6)
    assert (dist[0] == 0).all()
    # a layer the reference does not move has no ratio
    still = ref.clone()
    still[:, b.offset : b.offset + b.numel] = ref[0, b.offset : b.offset + b.numel]
    assert np.isnan(step_ratios(ref, still, layout)[:, 1]).all()


def test_layout_falls_back_to_one_vector_when_sizes_differ() -> None:
    net = nn.Linear(3, 2)
    assert target_layout(net, 8).entries[0].name == "weight"
    assert [e.name for e in target_layout(net, 5).entries] == ["theta"]


@pytest.mark.parametrize(
    ("name", "extra", "want"),
    [
        ("head", {"feature_dim": 6}, ["weight", "bias"]),
        ("mlp", {"hidden": 5}, ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]),
        ("cnn", {"hidden": 8}, None),
        ("lora", {"hidden": 16, "feature_dim": 8, "lora_rank": 2}, None),
    ],
)
def test_every_target_models_layers(name: str, extra: dict, want: list[str] | None) -> None:
    """The layer table names the target model's trainable parameters (LoRA: the factors and the
    head, not the frozen base) and the layers' norms add up to the whole vector's."""
    from lohp_cli.config import ModelConfig
    from lohp_cli.tasks.models import build_target

    net = build_target(ModelConfig.model_validate({"name": name, **extra}), (1, 28, 28), 3)
    size = sum(p.numel() for p in net.parameters() if p.requires_grad)
    layout = target_layout(net, size)
    names = [e.name for e in layout.entries]
    assert names == [n for n, p in net.named_parameters() if p.requires_grad]
    if want is not None:
        assert names == want
    if name == "lora":
        assert any("lora_a" in n for n in names) and not any("base" in n for n in names)
    assert len(names) > 1 and layout.size == size
    path = torch.randn(3, size, generator=torch.Generator().manual_seed(0))
    step, dist = layer_norms(path, layout)
    whole = (path[1:] - path[:-1]).norm(dim=1).double().numpy()
    np.testing.assert_allclose(np.sqrt((step**2).sum(1)), whole, rtol=1e-5)
    assert dist.shape == (3, len(names))


def test_reference_optimizer() -> None:
    assert reference_optimizer(["sgd", "adam"]) == "adam"
    assert reference_optimizer(["sam", "sgd"]) == "sam"


def _data() -> TaskTensors:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 4, generator=g)
    y = torch.randint(0, 3, (40,), generator=g)
    return TaskTensors(x, y, x[:10], y[:10], torch.zeros(2), x[:6], y[:6])


class _Ctx:
    """The part of a TaskContext that run_optimizer uses."""

    def build_target(self) -> nn.Module:
        torch.manual_seed(5)
        return nn.Linear(4, 3)


def test_reference_path_is_the_optimizer_rows_run() -> None:
    """State i of the reference path is the weights of evaluate's optimizer row of i · k·r steps
    (same start, same minibatch seed)."""
    optim = OptimizersConfig()
    theta0 = flat_params(_Ctx().build_target()) + 0.2
    path = reference_path(_Ctx().build_target, "adam", optim, theta0, _data(), 3, 4, 8, 11)
    assert path.shape == (4, 15)
    torch.testing.assert_close(path[0], theta0)
    for i in (1, 3):
        ctx = _Ctx()
        net = run_optimizer(ctx, "adam", theta0, _data(), 4 * i, 8, optim, 11, "cpu")  # type: ignore[arg-type]
        torch.testing.assert_close(path[i], flat_params(net))


def test_support_scores_are_the_training_split_scores() -> None:
    net, data = nn.Linear(4, 3), _data()
    path = torch.randn(3, 15, generator=torch.Generator().manual_seed(2))
    s = support_scores(net, path, data)
    assert s.shape == (2, 3)
    acc, loss = accuracy(net, path[1], data, split="train")
    assert s[0, 1] == pytest.approx(loss) and s[1, 1] == pytest.approx(acc)


# ---- the diagnosis inside `lohp evaluate` ------------------------------------------------------
def test_evaluate_writes_the_diagnosis(tmp_path) -> None:
    """Through collect (shared θ₀) → train-policy → generate → evaluate: the start is every run's
    recorded state 0, so both paths begin at distance 0 from the store; the policy's path is the
    one generate saved; the layers are the target model's."""
    from lohp_cli.config import EvaluateConfig, GenerateConfig, TrainConfig
    from lohp_cli.policy.context import task_context
    from lohp_cli.policy.directory import load_policy
    from lohp_cli.stages.collect import collect
    from lohp_cli.stages.evaluate import evaluate
    from lohp_cli.stages.generate import generate
    from lohp_cli.stages.train import train_policy
    from lohp_cli.store.generated import open_generated

    store = tmp_path / "s.zarr"
    collect(tiny_config(store, init="shared", optimizers=("sgd", "adam")))
    pol = tmp_path / "p"
    train_policy(TrainConfig.model_validate({
        "store": str(store), "out": str(pol), "k": 2, "steps": 2, "optimizers": ["adam"],
        "policy": {"backbone": "mlp", "hidden": 8, "emb_dim": 8}}))  # fmt: skip
    gen = tmp_path / "g.zarr"
    generate(GenerateConfig.model_validate({
        "policy": str(pol), "out": str(gen), "num_tasks": 2, "samples": 1, "device": "cpu",
        "save_paths": True}))  # fmt: skip
    rep = tmp_path / "r"
    evaluate(EvaluateConfig.model_validate({
        "generated": str(gen), "out": str(rep), "baselines": ["adam"], "latency_repeats": 1,
        "frontier_steps": [], "locality_tasks": 0, "locality_source_tasks": 0,
        "path_diagnosis_tasks": 2}))  # fmt: skip
    r = json.loads((rep / "report.json").read_text())
    d = r["path_diagnosis"]
    assert d["reference"] == "adam" and d["optimizer_steps_per_policy_step"] == 10
    assert d["store_runs"] == 2  # the adam runs the policy learned from, not sgd's
    assert d["store_states"] == 5 and len(d["tasks"]) == 2
    for space in ("weight", "normalized"):
        for scope in ("matched", "any"):
            for name in ("policy", "reference"):
                steps = d["nearest"][space][scope][name]["per_step"]
                assert len(steps) == 3  # N + 1 = T / k + 1
                assert steps[0]["median"] == 0.0 and steps[0]["q3"] == 0.0
    assert d["distance_from_start"]["policy"]["per_step"][0]["median"] == 0.0
    assert all(0 <= p["median"] <= 1 for p in d["support_acc"]["reference"]["per_step"])
    _, meta, _ = load_policy(str(pol), "cpu")
    names = [e.name for e in ParamLayout.of(task_context(meta).build_target()).entries]
    assert [layer["name"] for layer in d["layers"]] == names
    assert all(len(layer["step_ratio"]["per_step"]) == 2 for layer in d["layers"])
    # the policy's path is the one generate saved (sample 0 of each task, mean mode)
    g, _ = open_generated(str(gen))
    saved = [np.asarray(g[f"{t}/path"])[0] for t in d["tasks"]]  # each [N+1, P]
    moved = np.median([np.linalg.norm(p - p[:1], axis=1) for p in saved], axis=0)
    got = [s["median"] for s in d["distance_from_start"]["policy"]["per_step"]]
    np.testing.assert_allclose(got, moved, atol=1e-3)
    md = (rep / "report.md").read_text()
    assert "## Path diagnosis" in md and f"| {names[0]} |" in md
    assert (rep / "path_diagnosis.png").is_file()
