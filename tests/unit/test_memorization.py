"""The memorisation baselines (nearest, mean, nearest-noise, class-rows), class alignment and the
source endpoints they look their weights up in."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lohp_cli.config import EvaluateConfig
from lohp_cli.config.stages import MEMORIZATION_BASELINES
from lohp_cli.errors import ConfigError
from lohp_cli.methods import registry
from lohp_cli.methods.base import EvalContext, run_method, time_methods
from lohp_cli.methods.memorization import (
    NAMES,
    ClassRowsMethod,
    MeanMethod,
    MemorizationMethod,
    NearestMethod,
    NearestNoiseMethod,
    align_endpoints,
)
from lohp_cli.stages.evaluate import evaluate
from lohp_cli.store import TrajectoryStore
from lohp_cli.store.endpoints import load_endpoints
from lohp_cli.tasks import make_family
from lohp_cli.tasks.alignment import align_classes, min_cost_assignment
from lohp_cli.tasks.classes import ClassTask
from lohp_cli.tasks.layout import ParamLayout
from lohp_cli.tasks.scoring import accuracy
from lohp_cli.tasks.symmetry import ClassSymmetry
from tests.conftest import evaluate_context, run_array, tiny_config, tiny_policy_run

SAMPLES = 2


# ---- class alignment -----------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
def test_min_cost_assignment_is_the_brute_force_minimum(n: int) -> None:
    rng = np.random.default_rng(n)
    for trial in range(20):
        cost = rng.normal(size=(n, n)) if trial % 2 else rng.integers(0, 3, (n, n)).astype(float)
        perm = min_cost_assignment(cost)
        assert sorted(perm.tolist()) == list(range(n))
        best = min(cost[np.arange(n), list(p)].sum() for p in itertools.permutations(range(n)))
        assert cost[np.arange(n), perm].sum() == pytest.approx(best)


def test_align_classes_by_identity_then_by_cost() -> None:
    prefer_diagonal = np.eye(3) * -1.0  # what cost alone would choose: the identity
    # target classes (4, 7, 2), source (7, 9, 4): 4 and 7 by identity, 2 takes what is left (9)
    assert align_classes((4, 7, 2), (7, 9, 4), prefer_diagonal).tolist() == [2, 0, 1]
    # no class identities: the least total cost
    cost = np.array([[5.0, 1.0, 9.0], [1.0, 5.0, 9.0], [9.0, 9.0, 0.0]])
    assert align_classes(None, None, cost).tolist() == [1, 0, 2]
    # one shared class (4 → source 2); labels 1 and 2 take sources 0 and 1 by cost
    cost = np.array([[0.0, 0.0, 0.0], [3.0, 1.0, 0.0], [1.0, 3.0, 0.0]])
    assert align_classes((4, 1, 2), (7, 9, 4), cost).tolist() == [2, 1, 0]


def _three_class_head() -> ClassSymmetry:
    layout = ParamLayout.from_json(
        [
            {"name": "weight", "shape": [3, 2], "offset": 0},
            {"name": "bias", "shape": [3], "offset": 6},
        ]
    )
    return ClassSymmetry.of(layout, 3, 6)


def test_align_endpoints_moves_weight_rows_with_their_biases() -> None:
    sym = _three_class_head()
    w = torch.arange(9.0)[None]  # weight rows [0, 1], [2, 3], [4, 5]; biases 6, 7, 8
    got = align_endpoints(w, sym, torch.tensor([[2, 0, 1]]))
    assert got[0].tolist() == [4, 5, 0, 1, 2, 3, 8, 6, 7]
    # a linear classifier: the aligned copy's logit j is the original's logit perm[j]
    w = torch.randn(1, 9)
    perm = torch.tensor([[1, 2, 0]])
    x = torch.randn(7, 2)
    logits = lambda v: x @ v[:6].view(3, 2).T + v[6:]  # noqa: E731
    torch.testing.assert_close(logits(align_endpoints(w, sym, perm)[0]), logits(w[0])[:, [1, 2, 0]])


# ---- the fixture: a store with Adam and SGD runs, a policy of its Adam runs ----------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Generated weights for the 2 source tasks, the first one relabelled (classes reversed) and a
    task with the two classes no source task has."""
    tmp = tmp_path_factory.mktemp("memorization")
    fam = make_family(tiny_config(tmp / "unused").task)
    src = [t.classes for t in fam.tasks("source", 2)]
    missing = sorted(set(range(10)) - set(src[0]) - set(src[1]))
    assert len(missing) >= 2  # digits, 2 source tasks of 5 classes
    mixed = tuple(dict.fromkeys([*missing[:2], src[0][1], src[1][0], *src[0], *src[1]]))[:5]
    tasks = [*src, tuple(reversed(src[0])), mixed]
    ids = [ClassTask(c, fam).id for c in tasks]
    paths = tiny_policy_run(
        tmp, gen_tasks=",".join(ids), samples=SAMPLES, optimizers=("sgd", "adam")
    )
    return {**paths, "tmp": tmp, "ids": ids, "classes": dict(zip(ids, tasks, strict=True))}


@pytest.fixture(scope="module")
def ctx(run: dict[str, Any]) -> EvalContext:
    return evaluate_context(run["generated"], run["tmp"] / "report")[1][0]


def _endpoint(run: dict[str, Any], task_id: str, optimizer: str = "adam") -> np.ndarray:
    """The last recorded weights ``[P]`` of a run, read with plain zarr."""
    arr, row = run_array(run["store"], f"{task_id}-{optimizer}-s0")
    return arr[row, -1]


def _rows(ctx: EvalContext) -> np.ndarray:
    """Flat indices ``[C, H+1]`` of each output row (its weights, then its bias), by hand."""
    w, b = ParamLayout.from_json(ctx.meta.layout).entries[-2:]
    c, h = w.shape
    return np.concatenate(
        [w.offset + np.arange(c * h).reshape(c, h), b.offset + np.arange(c)[:, None]], 1
    )


def _without_class_rows(ctx: EvalContext) -> EvalContext:
    """The context with the policy's layout as one flat vector (no per-class rows)."""
    flat = ParamLayout.flat(ctx.size).to_json()
    return dataclasses.replace(ctx, meta=ctx.meta.model_copy(update={"layout": flat}))


def _prepared(cls: type[MemorizationMethod], ctx: EvalContext) -> MemorizationMethod:
    m = cls(cls.__name__)
    m.prepare(ctx)
    return m


# ---- endpoints -----------------------------------------------------------------------------------
def test_endpoints_are_the_last_states_of_the_policys_optimizer_runs(run: dict, ctx: Any) -> None:
    store = TrajectoryStore.open(str(run["store"]))
    ends = load_endpoints(store, ctx.meta.optimizers)
    assert ctx.meta.optimizers == ["adam"]
    assert [r.run_id for r in ends.runs] == [f"{t}-adam-s0" for t in run["ids"][:2]]
    assert ends.task_ids == tuple(run["ids"][:2]) and ends.task_of_run.tolist() == [0, 1]
    for i, t in enumerate(run["ids"][:2]):
        assert np.array_equal(ends.weights[i].numpy(), _endpoint(run, t))
        assert np.array_equal(ends.conditions[i].numpy(), store.condition(t))
    assert len(load_endpoints(store, None).runs) == 4  # every optimizer


def test_a_store_without_the_policys_optimizers_is_one_clear_error(ctx: EvalContext) -> None:
    cfg = {**ctx.meta.train_config, "optimizers": ["sam"]}
    other = dataclasses.replace(ctx, meta=ctx.meta.model_copy(update={"train_config": cfg}))
    with pytest.raises(ConfigError, match=r"No complete runs of optimizer\(s\) sam .*adam, sgd"):
        NearestMethod("nearest").prepare(other)


# ---- nearest -------------------------------------------------------------------------------------
def test_nearest_of_a_source_task_is_its_run_and_scores_its_accuracy(
    run: dict, ctx: EvalContext
) -> None:
    m = _prepared(NearestMethod, ctx)
    for t in run["ids"][:2]:
        want = torch.from_numpy(_endpoint(run, t))
        w = m.weights(t, ctx.starts(t))
        assert w.shape == (SAMPLES, ctx.size)
        assert all(torch.equal(row, want) for row in w)
    r = run_method(ctx, m)
    time_methods(ctx, [r], 60.0)
    sources = run["ids"][:2]
    want = [accuracy(ctx.net, torch.from_numpy(_endpoint(run, t)), ctx.data[t])[0] for t in sources]
    assert ctx.tasks[:2] == sources and r.task_acc[:2] == want
    assert (r.kind, r.steps, r.policy) == ("memorization", None, None)
    assert r.latency_ms_batch1 is not None and r.latency_ms_batch1 > 0


def test_nearest_relabels_a_reordered_task_by_class_identity(run: dict, ctx: EvalContext) -> None:
    src, flipped = run["ids"][0], run["ids"][2]  # the same classes, in reverse order
    m = _prepared(NearestMethod, ctx)
    got = m.weights(flipped, ctx.starts(flipped))[0].numpy()
    want = _endpoint(run, src).copy()
    rows = _rows(ctx)
    want[rows] = want[rows[::-1]]  # label j of the copy is label C-1-j of the source
    assert np.array_equal(got, want)
    assert m.memory.match(flipped).perms[0].tolist() == [4, 3, 2, 1, 0]


def test_nearest_without_class_rows_copies_as_recorded(run: dict, ctx: EvalContext) -> None:
    m = _prepared(NearestMethod, _without_class_rows(ctx))
    for t in run["ids"][:2]:
        assert np.array_equal(m.weights(t, ctx.starts(t))[0].numpy(), _endpoint(run, t))


# ---- mean ----------------------------------------------------------------------------------------
def test_mean_without_class_rows_is_the_numpy_mean(run: dict, ctx: EvalContext) -> None:
    m = _prepared(MeanMethod, _without_class_rows(ctx))
    want = np.mean([_endpoint(run, t) for t in run["ids"][:2]], axis=0)
    for t in ctx.tasks:
        got = m.weights(t, ctx.starts(t))
        assert got.shape == (SAMPLES, ctx.size)
        np.testing.assert_allclose(got[0].numpy(), want, rtol=0, atol=1e-6)


def test_mean_aligns_every_endpoint_to_the_target_first(run: dict, ctx: EvalContext) -> None:
    flipped = run["ids"][2]
    m = _prepared(MeanMethod, ctx)
    perms = m.memory.match(flipped).perms  # [Q, C]: source task q's labels for the target's
    assert perms[0].tolist() == [4, 3, 2, 1, 0]
    mine, other = run["classes"][flipped], run["classes"][run["ids"][1]]
    for j, cls in enumerate(mine):  # classes the second source task has go by identity
        if cls in other:
            assert perms[1][j] == other.index(cls)
    rows, aligned = _rows(ctx), []
    for q, t in enumerate(run["ids"][:2]):
        w = _endpoint(run, t).copy()
        w[rows] = w[rows[perms[q]]]
        aligned.append(w)
    got = m.weights(flipped, ctx.starts(flipped))[0].numpy()
    np.testing.assert_allclose(got, np.mean(aligned, axis=0), rtol=0, atol=1e-6)


# ---- nearest-noise -------------------------------------------------------------------------------
def test_nearest_noise_has_the_stores_spread_and_is_reproducible(
    run: dict, ctx: EvalContext
) -> None:
    t = run["ids"][1]
    m = _prepared(NearestNoiseMethod, ctx)
    spread = np.std([_endpoint(run, s) for s in run["ids"][:2]], axis=0)  # [P]
    nearest = _endpoint(run, t)  # t is a source task: its own run is the nearest
    n = 2000
    diff = torch.stack([m.one(t, j) for j in range(n)]).numpy() - nearest  # [n, P]
    np.testing.assert_allclose(diff.std(0), spread, rtol=0.1, atol=1e-6)
    assert np.all(np.abs(diff.mean(0)) <= 5 * spread / np.sqrt(n) + 1e-6)
    w = m.weights(t, ctx.starts(t))
    assert not torch.equal(w[0], w[1])  # each sample its own noise
    again = _prepared(NearestNoiseMethod, ctx)
    assert torch.equal(again.weights(t, ctx.starts(t)), w)  # seeded by (seed, task, sample)
    other = run["ids"][0]
    assert not torch.equal(m.one(other, 0) - m.memory.nearest(other), w[0] - m.memory.nearest(t))


# ---- class-rows ----------------------------------------------------------------------------------
def test_class_rows_of_a_source_task_is_its_run(run: dict, ctx: EvalContext) -> None:
    m = _prepared(ClassRowsMethod, ctx)
    for t in run["ids"][:2]:
        assert np.array_equal(m.weights(t, ctx.starts(t))[0].numpy(), _endpoint(run, t))


def test_class_rows_takes_each_class_from_the_nearest_run_that_has_it(
    run: dict, ctx: EvalContext
) -> None:
    mixed = run["ids"][3]
    m = _prepared(ClassRowsMethod, ctx)
    got = m.one(mixed, 0).numpy()
    match = m.memory.match(mixed)
    order = np.argsort(match.dist, kind="stable")
    ends = [_endpoint(run, t) for t in run["ids"][:2]]
    srcs = [run["classes"][t] for t in run["ids"][:2]]
    rows = _rows(ctx)
    hidden = np.setdiff1d(np.arange(ctx.size), rows)
    assert np.array_equal(got[hidden], ends[order[0]][hidden])  # shared layers: the nearest run
    fallbacks = 0
    for j, cls in enumerate(run["classes"][mixed]):
        has = [q for q in order if cls in srcs[q]]
        if has:
            want = ends[has[0]][rows[srcs[has[0]].index(cls)]]
        else:  # no source run has it: the nearest class-mean block of any run
            q, i = np.unravel_index(np.argmin(match.cost[:, j, :]), match.cost[:, j, :].shape)
            want, fallbacks = ends[q][rows[i]], fallbacks + 1
        assert np.array_equal(got[rows[j]], want)
    assert fallbacks == 2


def test_class_rows_refuses_a_model_without_class_rows(ctx: EvalContext) -> None:
    with pytest.raises(ConfigError, match="'class-rows' needs a target model with one output row"):
        ClassRowsMethod("class-rows").prepare(_without_class_rows(ctx))


# ---- registry and report -------------------------------------------------------------------------
def test_the_config_knows_every_memorization_baseline() -> None:
    assert MEMORIZATION_BASELINES == NAMES  # the config cannot import methods (layers)


@pytest.mark.parametrize("name", NAMES)
def test_each_baseline_is_one_registered_untrained_row(name: str) -> None:
    cfg = EvaluateConfig(baselines=(name,))
    (m,) = registry.baseline(name, cfg)
    assert isinstance(m, MemorizationMethod) and m.name == name and m.kind == "memorization"
    assert not registry.is_stepped(name)


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A shared-init store of Adam runs, and weights generated for its source tasks."""
    tmp = tmp_path_factory.mktemp("memorization-shared")
    return {**tiny_policy_run(tmp, gen_tasks="source", init="shared", optimizers=("adam",)),
            "tmp": tmp}  # fmt: skip


def test_every_baseline_is_a_report_row_on_a_shared_init_store(shared_run: dict) -> None:
    names = [n for n in NAMES if n != "average-16"]  # 2 source runs; it averages 16
    cfg, (c, _) = evaluate_context(
        shared_run["generated"], shared_run["tmp"] / "report", baselines=names,
        locality_tasks=0, locality_source_tasks=0, frontier_steps=[],
    )  # fmt: skip
    report = evaluate(cfg)
    rows = {m["name"]: m for m in report["methods"]}
    assert report["init"] == "shared" and list(rows)[1:] == names
    assert all(rows[n]["kind"] == "memorization" and rows[n]["n"] == 2 * SAMPLES for n in names)
    store = TrajectoryStore.open(str(shared_run["store"]))
    accs = [accuracy(c.net, torch.from_numpy(store.weights(f"{t}-adam-s0")[-1]), c.data[t])[0]
            for t in c.tasks]  # fmt: skip
    assert rows["nearest"]["acc_mean"] == round(float(np.mean(accs)), 4)
    assert [q["b"] for q in report["paired"]["pairs"]] == names


def test_average_16_on_a_store_of_2_runs_is_refused_before_any_method_runs(
    shared_run: dict,
) -> None:
    out = shared_run["tmp"] / "refused"
    cfg, _ = evaluate_context(shared_run["generated"], out, baselines=["adam", "average-16"])
    with pytest.raises(ConfigError, match="'average-16' needs at least 16 source endpoints; the "
                       "store has 2 complete run"):  # fmt: skip
        evaluate(cfg)
    assert not out.exists()
