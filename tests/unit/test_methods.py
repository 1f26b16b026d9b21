"""The evaluated methods one by one, their registry, and a plugged-in method as a report row."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import lohp_cli.l2o.method  # registers the learned optimizers, as the evaluate stage does
from lohp_cli.config import EvaluateConfig
from lohp_cli.errors import ConfigError
from lohp_cli.methods import registry
from lohp_cli.methods.base import EvalContext, Starts, run_method
from lohp_cli.methods.hypernetwork import HypernetworkMethod
from lohp_cli.methods.optimizer import OptimizerMethod
from lohp_cli.methods.policy import GeneratedMethod, PolicyMethod
from lohp_cli.optim import build_optimizer
from lohp_cli.optim.loop import train_loop
from lohp_cli.policy.directory import initial_state
from lohp_cli.runtime import derive_seed
from lohp_cli.stages.collect import collect
from lohp_cli.stages.evaluate import evaluate, frontier_budgets
from lohp_cli.stats import normal_mean_ci
from lohp_cli.store.generated import open_generated
from lohp_cli.tasks.layout import flat_params, load_flat
from lohp_cli.tasks.models import build_target
from lohp_cli.tasks.scoring import accuracy
from tests.conftest import evaluate_context, tiny_config, train_and_generate

SAMPLES = 2


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny store, a Lo-Hp policy trained 3 steps on it, and 2 tasks × 2 samples generated."""
    tmp = tmp_path_factory.mktemp("methods")
    store = tmp / "s.zarr"
    collect(tiny_config(store))
    return {**train_and_generate(store, tmp, SAMPLES), "tmp": tmp}


def _cfg(run: dict[str, Path], **over: Any) -> EvaluateConfig:
    out = over.pop("out", run["tmp"] / "report")
    return evaluate_context(run["generated"], out, **over)[0]


@pytest.fixture(scope="module")
def ctx(run: dict[str, Path]) -> tuple[EvalContext, Any]:
    """The stage's evaluation context and the generating policy ``(model, meta, stats)``."""
    return evaluate_context(run["generated"], run["tmp"] / "report")[1]


# ---- the shared starts ---------------------------------------------------------------------------
def test_starts_are_generates_draws_in_both_normalisations(ctx: tuple) -> None:
    c, (_, _, stats) = ctx
    t = c.tasks[1]
    s = c.starts(t)
    assert s.s0.shape == s.theta0.shape == (SAMPLES, c.size)
    for j in range(SAMPLES):
        assert torch.equal(s.s0[j], initial_state(c.seed, t, j, c.size))
        assert torch.equal(s.theta0[j], stats.denormalize(initial_state(c.seed, t, j, c.size)))
    assert not torch.equal(c.starts(c.tasks[0]).s0, s.s0)  # tasks do not share starts


# ---- optimizers ----------------------------------------------------------------------------------
def test_optimizer_without_steps_returns_the_starts(ctx: tuple) -> None:
    c, _ = ctx
    m = OptimizerMethod("adam", 0)
    m.prepare(c)
    t = c.tasks[0]
    assert torch.equal(m.weights(t, c.starts(t)), c.starts(t).theta0)


@pytest.mark.parametrize("name", ["sgd", "sam"])
def test_optimizer_is_the_train_loop_from_each_start(ctx: tuple, name: str) -> None:
    c, _ = ctx
    m = OptimizerMethod(name, 7)
    m.prepare(c)
    t = c.tasks[1]
    starts = c.starts(t)
    got = m.weights(t, starts)
    assert (m.name, m.kind, m.steps, m.policy) == (f"{name}-7", "optimizer", 7, None)
    fam = c.task.family
    for j in range(SAMPLES):
        net = build_target(c.task.model_cfg, fam.data.image_shape, fam.cfg.ways)
        load_flat(net, starts.theta0[j])
        opt = build_optimizer(name, net.parameters(), c.optim)
        gen = torch.Generator().manual_seed(derive_seed(c.seed, "batches", t, j))
        train_loop(net, opt, c.data[t].x_train, c.data[t].y_train, 7, 7, c.batch_size, gen)
        # all starts train together (batched): the one-run loop's weights to float tolerance
        torch.testing.assert_close(got[j], flat_params(net), rtol=0, atol=1e-5)
        assert not torch.equal(got[j], starts.theta0[j])


def test_optimizer_budgets_are_distinct_and_longest_first() -> None:
    cfg = EvaluateConfig(baselines=("sgd",))
    assert registry.is_stepped("sgd") and not registry.is_stepped("hypernetwork")
    assert [m.name for m in registry.baseline("sgd", cfg, (20, 2, 10, 2))] == [
        "sgd-20",
        "sgd-10",
        "sgd-2",
    ]


# ---- policies ------------------------------------------------------------------------------------
def test_generated_method_returns_what_generate_wrote(run: dict, ctx: tuple) -> None:
    c, loaded = ctx
    g, _ = open_generated(str(run["generated"]))
    m = GeneratedMethod(g, str(run["generated"]), loaded, None)
    m.prepare(c)
    assert (m.name, m.kind, m.steps) == ("lo-hp (k=2)", "generated", loaded[1].N)
    for t in c.tasks:
        assert torch.equal(m.weights(t, c.starts(t)), torch.from_numpy(g[t]["weights"][...]))


def test_policy_method_regenerates_the_stored_weights_from_the_same_starts(
    run: dict, ctx: tuple
) -> None:
    c, loaded = ctx
    g, _ = open_generated(str(run["generated"]))
    m = registry.policy_method("again", str(run["policy"]))
    assert isinstance(m, PolicyMethod)
    m.prepare(c)
    assert (m.name, m.kind, m.steps) == ("again (k=2)", "policy", loaded[1].N)
    assert m.policy is not None and m.policy["method"] == "lo-hp"
    for t in c.tasks:  # batch 1 here, batched in generate: equal up to float rounding
        want = torch.from_numpy(g[t]["weights"][...])
        torch.testing.assert_close(m.weights(t, c.starts(t)), want, rtol=1e-5, atol=1e-5)
    one = m.timer(c.tasks[0])  # what the latency times: one task at batch size 1
    assert one is not None and tuple(one().shape) == (1, c.size)


def test_hypernetwork_baseline_is_trained_unless_given() -> None:
    given = EvaluateConfig(baselines=("hypernetwork",), policies={"hypernetwork": "h"})
    assert registry.baseline("hypernetwork", given) == []
    (m,) = registry.baseline("hypernetwork", EvaluateConfig(hypernetwork_steps=7))
    assert isinstance(m, HypernetworkMethod) and m.train_steps == 7 and m.name == "hypernetwork"


# ---- learned optimizers and the registry -------------------------------------------------------
def test_learned_optimizer_dirs_and_baselines_go_to_the_plug_in(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"method": "m-l2o"}))
    assert isinstance(registry.policy_method("mine", str(tmp_path)), lohp_cli.l2o.method.L2OMethod)
    assert isinstance(registry.policy_method("x", str(tmp_path / "nothing")), PolicyMethod)
    with pytest.raises(ConfigError, match="--policy m-l2o=DIR"):
        registry.baseline("m-l2o", EvaluateConfig(baselines=("m-l2o",)))
    assert registry.baseline("m-l2o", EvaluateConfig(policies={"m-l2o": str(tmp_path)})) == []


def test_unknown_baseline_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="'nearest-endpoint'"):
        registry.baseline("nearest-endpoint", EvaluateConfig())
    with pytest.raises(ConfigError, match="nearest-endpoint"):
        registry.is_stepped("nearest-endpoint")


def test_a_name_is_registered_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_BASELINES", dict(registry._BASELINES))
    with pytest.raises(ValueError, match="'sgd'"):
        registry.register("sgd", lambda n, c, b: [])
    with pytest.raises(ValueError, match="'m-l2o'"):
        registry.register_policy_kind("m-l2o", PolicyMethod)


class StartsBaseline:
    """A memorisation-style baseline for the test: the starting weights themselves."""

    kind = "memorised"
    steps = None
    policy = None

    def __init__(self, name: str) -> None:
        self.name = name
        self.prepared: list[EvalContext] = []

    def prepare(self, ctx: EvalContext) -> None:
        self.prepared.append(ctx)

    def weights(self, task_id: str, starts: Starts) -> torch.Tensor:
        return starts.theta0

    def time_one(self, task_id: str) -> float:
        return 2.5


def test_a_plugged_in_method_is_a_row_of_the_report(
    run: dict, ctx: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry, "_BASELINES", dict(registry._BASELINES))
    made: list[StartsBaseline] = []
    budgets: list[tuple[int, ...]] = []

    def factory(name: str, cfg: EvaluateConfig, b: tuple[int, ...]) -> list[Any]:
        budgets.append(b)
        made.append(StartsBaseline(name))
        return made[-1:]

    registry.register("starts", factory, stepped=True)
    # the config lists known names only; the registry is what evaluate consults
    cfg = _cfg(run).model_copy(update={"baselines": ("starts",)})
    report = evaluate(cfg)
    rows = {m["name"]: m for m in report["methods"]}
    assert list(rows) == ["lo-hp (k=2)", "starts"]
    c, _ = ctx
    accs = [accuracy(c.net, th, c.data[t])[0] for t in c.tasks for th in c.starts(t).theta0]
    ci = normal_mean_ci(
        [float(np.mean(accs[i : i + SAMPLES])) for i in range(0, len(accs), SAMPLES)]
    )
    assert rows["starts"] == {
        "name": "starts",
        "kind": "memorised",
        "acc_mean": round(float(np.mean(accs)), 4),
        "acc_std": round(float(np.std(accs)), 4),
        "n": len(c.tasks) * SAMPLES,
        "n_tasks": len(c.tasks),
        "acc_ci95": [round(ci.low, 4), round(ci.high, 4)],  # over the tasks' mean accuracies
        "latency_ms_batch1": 2.5,  # a method of the older protocol (time_one): timed alone
        "latency_iqr_ms": None,
        "cpu_ms_batch1": None,
        "steps": None,
        "policy": None,
    }
    first = (c.steps_full, rows["lo-hp (k=2)"]["steps"])
    # then the frontier's budgets not scored already, for the accuracy-latency frontier
    assert budgets == [first, frontier_budgets(cfg.frontier_steps, c.steps_full, first)]
    assert len(made[0].prepared) == 1
    saved = json.loads((Path(cfg.out) / "report.json").read_text())
    assert saved["methods"][1] == rows["starts"]


def test_run_method_scores_every_start_of_every_task(ctx: tuple) -> None:
    c, _ = ctx
    r = run_method(c, StartsBaseline("s"))
    assert len(r.accuracies) == len(c.tasks) * SAMPLES and r.latency_ms_batch1 == 2.5
    t = c.tasks[-1]
    assert r.accuracies[-1] == accuracy(c.net, c.starts(t).theta0[-1], c.data[t])[0]


@pytest.mark.slow
def test_report_pairs_every_row_with_the_main_one_and_has_the_frontier(
    run: dict, ctx: tuple
) -> None:
    c, _ = ctx
    cfg = _cfg(
        run,
        baselines=("sgd",),
        policies={"again": str(run["policy"])},
        frontier_steps=(1, 3, 10_000),
        plots=True,
        out=str(run["tmp"] / "paired"),
    )
    report = evaluate(cfg)
    rows = {m["name"]: m for m in report["methods"]}
    t = report["timing"]
    assert t["protocol"] == "interleaved" and t["rounds"] >= cfg.latency_repeats
    assert t["threads"] == 1 and set(t["load_average"]) >= {"before", "during_mean", "after"}
    n_steps = rows["lo-hp (k=2)"]["steps"]
    names = ["lo-hp (k=2)", "again (k=2)", f"sgd-{c.steps_full}", f"sgd-{n_steps}"]
    assert list(rows) == names  # the frontier's extra budgets are not report rows
    p = report["paired"]
    assert p["main"] == "lo-hp (k=2)" and p["confidence"] == 0.95
    assert [(q["a"], q["b"]) for q in p["pairs"]] == [(names[0], b) for b in names[1:]]
    for q in p["pairs"]:
        # every task has the same samples: the paired mean is the difference of the row means
        want = rows[q["a"]]["acc_mean"] - rows[q["b"]]["acc_mean"]
        assert q["n"] == len(c.tasks) and q["mean"] == pytest.approx(want, abs=1.5e-4)
        low, high = q["ci95"]
        assert low <= q["mean"] <= high
        assert q["side"] == ("above" if low > 0 else "below" if high < 0 else "tie")
        assert q["ladder"] is False  # one rung (lo-hp) only
    f = report["frontier"]
    steps = sorted({1, 3, c.steps_full, n_steps})  # 10,000 is over T·r
    assert [(pt["optimizer"], pt["steps"]) for pt in f["points"]] == [("sgd", s) for s in steps]
    for pt in f["points"]:
        assert set(pt) == {
            "method", "optimizer", "steps", "acc_mean", "latency_ms_batch1", "latency_iqr_ms",
        }  # fmt: skip
        assert pt["method"] == f"sgd-{pt['steps']}" and pt["latency_ms_batch1"] > 0
        q1, q3 = pt["latency_iqr_ms"]  # timed interleaved with every other row
        assert q1 <= pt["latency_ms_batch1"] <= q3
        if pt["method"] in rows:  # the report's own optimizer rows are reused
            assert pt["acc_mean"] == rows[pt["method"]]["acc_mean"]
    assert f["pareto"] and all(pt in f["points"] for pt in f["pareto"])
    assert [q["name"] for q in f["policies"]] == names[:2]
    for q in f["policies"]:
        assert q["position"] in ("on_or_above", "below")
    out = Path(cfg.out)
    assert json.loads((out / "report.json").read_text())["paired"] == p
    md = (out / "report.md").read_text()
    assert "## Paired differences" in md and "## Accuracy–latency frontier" in md
    assert (out / "frontier.png").stat().st_size > 0
    # () turns the frontier off
    off = evaluate(cfg.model_copy(update={"frontier_steps": (), "plots": False}))
    assert off["frontier"] is None and off["paired"]["pairs"]
