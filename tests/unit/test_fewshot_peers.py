"""The peers of a few-shot evaluation on a tiny store of digits episodes: the meta-learned start
(reptile, fomaml) on the store's source episodes, Zeng et al.'s memorisation baselines (gaussian,
average-16) and class-rows, which is not applicable on held-out classes; then all of them through
``evaluate``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lohp_cli.config import GenerateConfig, MetaStartConfig, TrainConfig
from lohp_cli.errors import ConfigError
from lohp_cli.methods import meta_start, registry
from lohp_cli.methods.base import EvalContext, MethodResult, run_method
from lohp_cli.methods.memorization import AverageMethod, ClassRowsMethod, GaussianMethod
from lohp_cli.methods.meta_start import MetaStartMethod, SourceTasks, learned_start
from lohp_cli.methods.optimizer import run_optimizer
from lohp_cli.report.comparison import paired_section
from lohp_cli.report.document import markdown_report
from lohp_cli.report.frontier import frontier_section
from lohp_cli.runtime import derive_seed
from lohp_cli.stages.collect import collect
from lohp_cli.stages.evaluate import evaluate
from lohp_cli.stages.generate import generate
from lohp_cli.stages.train import train_policy
from lohp_cli.tasks.episodes import Episode
from lohp_cli.tasks.layout import ParamLayout, flat_params
from tests.conftest import evaluate_context, run_array, tiny_config

EPISODES = 16  # source episodes, one Adam run each: enough for average-16
SAMPLES = 2
FAST = {"meta_steps": 12, "meta_batch": 4, "inner_steps": 3}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A head store of 3-way 2-shot digits episodes, a 2-step policy, 3 meta-test episodes."""
    tmp = tmp_path_factory.mktemp("fewshot-peers")
    store, pol, gen = tmp / "s.zarr", tmp / "pol", tmp / "g.zarr"
    task = {"family": "fewshot-digits", "ways": 3, "shots": 2, "queries": 5}
    model = {"name": "head", "feature_dim": 8, "extractor_steps": 30}
    collect(tiny_config(store, task=task, model=model, optimizers=["adam"], device="cpu",
                        tasks=EPISODES))  # fmt: skip
    policy = {"backbone": "mlp", "hidden": 16, "emb_dim": 8}
    train_policy(TrainConfig.model_validate(
        {"store": str(store), "out": str(pol), "k": 2, "steps": 2, "policy": policy}
    ))  # fmt: skip
    generate(GenerateConfig.model_validate(
        {"policy": str(pol), "out": str(gen), "num_tasks": 3, "samples": SAMPLES, "device": "cpu"}
    ))  # fmt: skip
    return {"store": store, "generated": gen, "tmp": tmp}


@pytest.fixture
def ctx(run: dict[str, Any], tmp_path: Path) -> EvalContext:
    """A fresh context per test, reporting into its own directory (its own θ₀ cache)."""
    return evaluate_context(run["generated"], tmp_path / "report")[1][0]


def _endpoints(run: dict[str, Any], ctx: EvalContext) -> np.ndarray:
    """Every run's last recorded weights ``[R, P]`` in run-id order, read with plain zarr."""
    ids = sorted(ctx.task.store.task_ids())
    ends = [run_array(run["store"], f"{t}-adam-s0") for t in ids]
    return np.stack([arr[row, -1] for arr, row in ends])


# ---- the meta-learned start on the store ---------------------------------------------------------
def test_source_episodes_adapt_on_their_support_set(
    ctx: EvalContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever an episode's training split holds (a later option makes it many-shot), the inner
    loop adapts on its K-shot support set; the queries are its test split."""
    real = Episode.data

    def many_shot(self: Episode, *args: Any, **kw: Any) -> Any:
        d = real(self, *args, **kw)
        return dataclasses.replace(d, x_train=torch.cat([d.x_train] * 3),
                                   y_train=torch.cat([d.y_train] * 3))  # fmt: skip

    monkeypatch.setattr(Episode, "data", many_shot)
    src = SourceTasks.load(ctx, MetaStartConfig(), "reptile")
    assert src.ids == tuple(sorted(ctx.task.store.task_ids())) and len(src.ids) == EPISODES
    for t, d in zip(src.ids, src.data, strict=True):
        assert ctx.task.task(t).adapt_on == "support"
        full = many_shot(ctx.task.task(t), ctx.task.model_cfg, ctx.task.frozen)
        assert d.x_train.shape[0] == 3 * 2 and torch.equal(d.x_train, full.x_support)
        assert torch.equal(d.x_test, full.x_test)


def test_batched_inner_loop_equals_one_task_at_a_time(
    ctx: EvalContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = SourceTasks.load(ctx, MetaStartConfig(inner_steps=4), "fomaml")
    theta = torch.randn(ctx.size, generator=torch.Generator().manual_seed(0))
    batched = src.adapt(theta, [3, 0, 7], 5)
    monkeypatch.setattr(meta_start, "batchable", lambda _net: False)
    one_by_one = src.adapt(theta, [3, 0, 7], 5)
    torch.testing.assert_close(batched, one_by_one, atol=1e-6, rtol=1e-5)
    # and task q's row is train_loop's Adam from θ on its support set, seeded by (step, task id)
    seed = derive_seed(ctx.seed, "fomaml", "inner", 5, src.ids[0])
    net = run_optimizer(ctx.task, "adam", theta, src.data[0], 4, ctx.batch_size, src.optim, seed,
                        "cpu")  # fmt: skip
    torch.testing.assert_close(one_by_one[1], flat_params(net))


def test_the_learned_start_is_cached_and_reused_while_its_key_matches(ctx: EvalContext) -> None:
    events: list[str] = []
    ctx = dataclasses.replace(ctx, emit=lambda e: events.append(e.get("message", "")))
    cfg = MetaStartConfig(**FAST)
    first = learned_start(ctx, cfg, "reptile")
    path = Path(ctx.out) / "baselines" / "reptile" / "theta0.safetensors"
    assert path.exists() and sum("meta-training" in m for m in events) == 1
    assert torch.equal(learned_start(ctx, cfg, "reptile"), first)  # from the cache
    assert sum("meta-training" in m for m in events) == 1
    other = learned_start(ctx, cfg.model_copy(update={"meta_steps": 13}), "reptile")
    assert sum("meta-training" in m for m in events) == 2 and not torch.equal(other, first)
    path.write_bytes(b"torn")  # a torn cache is relearned, deterministically
    assert torch.equal(learned_start(ctx, cfg, "reptile"), first)
    assert not torch.equal(learned_start(ctx, cfg, "fomaml"), first)


def test_rows_fine_tune_from_the_learned_start_as_adam_does(ctx: EvalContext) -> None:
    cfg = MetaStartConfig(**FAST)
    theta0 = learned_start(ctx, cfg, "fomaml")
    t = ctx.tasks[0]
    zero = MetaStartMethod("fomaml", 0, cfg)
    zero.prepare(ctx)
    w0 = zero.weights(t, ctx.starts(t))
    assert zero.name == "fomaml-0" and w0.shape == (SAMPLES, ctx.size)
    assert all(torch.equal(row, theta0) for row in w0)  # the start itself, whatever the draw
    five = MetaStartMethod("fomaml", 5, cfg)
    five.prepare(ctx)
    w5 = five.weights(t, ctx.starts(t))
    for j in range(SAMPLES):  # the adam baseline's minibatch seeds, from θ₀
        seed = derive_seed(ctx.seed, "batches", t, j)
        net = run_optimizer(ctx.task, "adam", theta0, ctx.data[t], 5, ctx.batch_size, ctx.optim,
                            seed, "cpu")  # fmt: skip
        torch.testing.assert_close(w5[j], flat_params(net))
    row = run_method(ctx, five)
    assert (row.kind, row.steps, len(row.task_acc)) == ("meta-start", 5, len(ctx.tasks))


def test_meta_start_baselines_are_stepped_from_their_own_start() -> None:
    for name in ("reptile", "fomaml"):
        assert registry.is_stepped(name)
        assert registry.step_budgets(name, (20, 4)) == (20, 4, 0)
    assert registry.step_budgets("adam", (20, 4)) == (20, 4)


# ---- Zeng et al.'s memorisation baselines, class-rows --------------------------------------------
def test_average_16_is_the_mean_of_16_seeded_endpoints(run: dict, ctx: EvalContext) -> None:
    """Aligned to the target's labels as ``mean`` is; with no class identity in common (held-out
    classes) each endpoint's rows follow the least-cost matching of condition blocks."""
    m = AverageMethod("average-16")
    m.prepare(ctx)
    ends = _endpoints(run, ctx)  # [16, P]
    layout = ParamLayout.from_json(ctx.meta.layout)
    w, b = layout.entries[-2:]
    rows = np.concatenate([w.offset + np.arange(w.numel).reshape(w.shape), b.offset
                           + np.arange(b.numel)[:, None]], 1)  # fmt: skip # [C, F+1]
    for t in ctx.tasks:
        perms = m.memory.match(t).perms  # [Q, C]: one run per source task, in id order
        for j in range(SAMPLES):
            gen = torch.Generator().manual_seed(derive_seed(ctx.seed, "average-16", t, j))
            pick = torch.randperm(EPISODES, generator=gen)[:16].tolist()
            assert sorted(pick) == list(range(16))  # all 16 of 16 runs, each once
            aligned = [ends[q].copy() for q in pick]
            for a, q in zip(aligned, pick, strict=True):
                a[rows] = ends[q][rows[perms[q]]]
            np.testing.assert_allclose(m.one(t, j).numpy(), np.mean(aligned, 0), atol=1e-6)


def test_average_16_refuses_a_store_of_fewer_runs(ctx: EvalContext) -> None:
    short = type("Average4", (AverageMethod,), {"k": 17, "min_runs": 17})("average-16")
    with pytest.raises(ConfigError, match="at least 17 source endpoints; the store has 16"):
        short.prepare(ctx)


def test_gaussian_draws_have_the_endpoints_mean_and_std(ctx: EvalContext) -> None:
    m = GaussianMethod("gaussian")
    m.prepare(ctx)
    t = ctx.tasks[1]
    aligned = m.memory.all_aligned(t)  # [R, P]
    n = 1000
    draws = torch.stack([m.one(t, j) for j in range(n)])  # [n, P]
    mu, sd = aligned.mean(0), aligned.std(0)  # unbiased, as torch.std in Zeng et al.'s code
    assert torch.all((draws.mean(0) - mu).abs() <= 5 * sd / n**0.5 + 1e-6)
    torch.testing.assert_close(draws.std(0), sd, rtol=0.12, atol=1e-6)  # 5 × 1/√(2n)
    again = GaussianMethod("gaussian")
    again.prepare(ctx)
    assert torch.equal(again.weights(t, ctx.starts(t)), draws[:SAMPLES])  # seeded per sample


def test_class_rows_is_not_applicable_on_held_out_classes(ctx: EvalContext) -> None:
    src = {c for t in ctx.task.store.task_ids() for c in ctx.task.task(t).class_ids}
    held = {c for t in ctx.tasks for c in ctx.task.task(t).class_ids}
    assert src and held and not src & held  # digits 0-4 meta-train, 5-9 meta-test
    row = run_method(ctx, ClassRowsMethod("class-rows"))
    assert not row.applicable and row.accuracies == [] and row.note.startswith("not applicable")
    s = row.summary()
    assert (s["acc_mean"], s["acc_std"], s["acc_ci95"], s["n"]) == (None, None, None, 0)
    assert "held-out classes" in s["note"]
    source = dataclasses.replace(ctx, data={t: ctx.task.task_data(t) for t in
                                            sorted(ctx.task.store.task_ids())[:2]})  # fmt: skip
    assert run_method(source, ClassRowsMethod("class-rows")).applicable  # meta-train classes


# ---- through evaluate ----------------------------------------------------------------------------
def test_every_peer_is_a_row_of_one_evaluation(run: dict[str, Any]) -> None:
    names = ["adam", "prototype", "gaussian", "average-16", "class-rows", "reptile", "fomaml"]
    cfg, _ = evaluate_context(
        run["generated"], run["tmp"] / "report", baselines=names, frontier_steps=[1, 5],
        locality_tasks=0, locality_source_tasks=0, meta_start=FAST, plots=True,
    )  # fmt: skip
    report = evaluate(cfg)
    rows = {m["name"]: m for m in report["methods"]}
    n = report["optimizer_steps_full"]  # T·r = 20; the policy's N = 2
    frontier = report["frontier"]["points"]
    for algo in ("reptile", "fomaml"):
        assert [r for r in rows if r.startswith(f"{algo}-")] == [f"{algo}-{s}" for s in (n, 2, 0)]
        assert rows[f"{algo}-0"]["kind"] == "meta-start" and rows[f"{algo}-0"]["steps"] == 0
        assert [p["steps"] for p in frontier if p["optimizer"] == algo] == [0, 1, 2, 5, n]
    na = rows["class-rows"]
    assert na["acc_mean"] is None and na["note"].startswith("not applicable")
    assert "class-rows" not in {p["b"] for p in report["paired"]["pairs"]}
    assert "class-rows" not in {p["name"] for p in report["frontier"]["policies"]}
    assert all(rows[k]["acc_mean"] is not None for k in rows if k != "class-rows")
    md = (Path(cfg.out) / "report.md").read_text()
    assert "| class-rows | memorization | - | not applicable | - |" in md
    assert md == markdown_report(json.loads((Path(cfg.out) / "report.json").read_text()))
    assert (Path(cfg.out) / "accuracy_vs_latency.png").exists()
    cached = Path(cfg.out) / "baselines" / "reptile" / "theta0.safetensors"
    assert cached.exists()


def test_a_not_applicable_row_is_left_out_of_comparisons() -> None:
    main = MethodResult("lo-hp", "generated", [0.5, 0.7], 1.0, 4, task_acc=[0.5, 0.7])
    na = MethodResult("class-rows", "memorization", note="not applicable: no class")
    assert [p["b"] for p in paired_section([main, na])["pairs"]] == []
    assert [p["name"] for p in frontier_section([main, na], [])["policies"]] == ["lo-hp"]
