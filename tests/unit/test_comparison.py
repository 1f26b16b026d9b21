"""The report's comparisons from method rows: paired differences (main row and ablation ladder)
and the accuracy-latency frontier, as report.json sections and report.md tables."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lohp_cli.methods.base import MethodResult
from lohp_cli.report.comparison import ladder, paired_lines, paired_section, verdict
from lohp_cli.report.frontier import (
    frontier_lines,
    frontier_section,
    matched_lines,
    matched_section,
)
from lohp_cli.stats import paired_difference


def _policy(method: str, k: int = 2, opts: list[str] | None = None) -> dict[str, Any]:
    return {"method": method, "k": k, "N": 40 // k, "optimizers": opts, "state_input": "none"}


def _row(
    name: str,
    task_acc: list[float],
    policy: dict[str, Any] | None = None,
    lat: float | None = 1.0,
    steps: int | None = None,
    kind: str = "policy",
) -> MethodResult:
    """A row whose every task has one sample (accuracies = per-task accuracies)."""
    return MethodResult(name, kind if policy else "optimizer", task_acc, lat, steps, policy,
                        task_acc)  # fmt: skip


ADAM = ["adam"]
MAIN = _row("lo-hp (k=2)", [0.9, 0.8, 0.7], _policy("lo-hp", 2, ADAM), 5.0, 20, "generated")
ROWS = [
    MAIN,
    _row("k4 (k=4)", [0.8, 0.8, 0.8], _policy("lo-hp", 4, ADAM), 2.5, 10),  # other k: no rung
    _row("lo-op (k=2)", [0.85, 0.8, 0.7], _policy("lo-op", 2, ADAM), 5.0, 20),
    _row("lo-di-all (k=2)", [0.5, 0.5, 0.5], _policy("lo-di", 2), 5.0, 20),  # all runs: no rung
    _row("lo-di (k=2)", [0.7, 0.7, 0.6], _policy("lo-di", 2, ADAM), 5.0, 20),
    _row("hypernetwork", [0.7, 0.7, 0.7], _policy("hypernetwork", 2, ADAM), 0.1, 1),
    _row("adam-200", [0.95, 0.85, 0.75], None, 80.0, 200),
]


def test_the_ladder_is_one_comparable_row_per_method_lowest_first() -> None:
    assert [r.name for r in ladder(ROWS)] == [
        "hypernetwork",
        "lo-di (k=2)",
        "lo-op (k=2)",
        "lo-hp (k=2)",
    ]
    assert ladder(ROWS[-1:]) == []  # an optimizer first: no policy to compare with


def test_paired_compares_the_main_row_with_every_row_and_adds_the_ladder_steps() -> None:
    p = paired_section(ROWS)
    assert p is not None and p["main"] == "lo-hp (k=2)" and p["confidence"] == 0.95
    pairs = {(q["a"], q["b"]): q for q in p["pairs"]}
    assert list(pairs)[: len(ROWS) - 1] == [("lo-hp (k=2)", r.name) for r in ROWS[1:]]
    # the ladder steps: lo-hp − lo-op is already a main-row pair; the two lower ones are added
    assert [k for k, q in pairs.items() if q["ladder"]] == [
        ("lo-hp (k=2)", "lo-op (k=2)"),
        ("lo-op (k=2)", "lo-di (k=2)"),
        ("lo-di (k=2)", "hypernetwork"),
    ]
    assert len(pairs) == len(ROWS) - 1 + 2
    # adam-200 beats the main row by exactly 0.05 on every task: a zero-width interval, below
    q = pairs[("lo-hp (k=2)", "adam-200")]
    assert q == {
        "a": "lo-hp (k=2)",
        "b": "adam-200",
        "n": 3,
        "mean": -0.05,
        "ci95": [-0.05, -0.05],
        "side": "below",
        "ladder": False,
    }
    # differences 0.1, 0, −0.1 against k = 4: mean 0, a tie
    q = pairs[("lo-hp (k=2)", "k4 (k=4)")]
    assert q["mean"] == 0.0 and q["side"] == "tie"
    d = paired_difference([0.9, 0.8, 0.7], [0.8, 0.8, 0.8])
    assert q["ci95"] == [round(d.low, 4), round(d.high, 4)]


def test_paired_also_pairs_a_named_row_with_every_scored_row() -> None:
    p = paired_section(ROWS, also=("k4",))  # the --policy name; its row is "k4 (k=4)"
    assert p is not None
    extra = [(q["a"], q["b"]) for q in p["pairs"] if q["a"] == "k4 (k=4)"]
    assert extra == [("k4 (k=4)", r.name) for r in ROWS[2:]]  # not itself, not the main row
    q = next(q for q in p["pairs"] if (q["a"], q["b"]) == ("k4 (k=4)", "adam-200"))
    d = paired_difference([0.8, 0.8, 0.8], [0.95, 0.85, 0.75])
    assert q["mean"] == round(d.mean, 4) and not q["ladder"]
    base = paired_section(ROWS)
    assert base is not None and len(p["pairs"]) == len(base["pairs"]) + len(ROWS) - 2


def test_paired_also_must_name_a_policy() -> None:
    from pydantic import ValidationError

    from lohp_cli.config import EvaluateConfig

    cfg = EvaluateConfig(policies={"grad": "p/grad"}, paired_also=("grad",))
    assert cfg.paired_also == ("grad",)
    with pytest.raises(ValidationError, match="not --policy NAME=DIR names"):
        EvaluateConfig(policies={"grad": "p/grad"}, paired_also=("adam-20",))


def test_paired_with_one_task_has_no_interval() -> None:
    rows = [_row("main", [0.9], _policy("lo-hp"), kind="generated"), _row("adam-5", [0.8])]
    (q,) = paired_section(rows)["pairs"]
    assert (q["n"], q["mean"], q["ci95"], q["side"]) == (1, 0.1, None, None)
    assert "| main | adam-5 | 1 | +0.1000 | – | – |  |" in paired_lines(paired_section(rows))
    assert paired_section([]) is None


def _opt(name: str, acc: float, lat: float, steps: int) -> tuple[str, MethodResult]:
    return name.split("-")[0], _row(name, [acc], None, lat, steps)


def test_frontier_points_pareto_and_each_method_against_it() -> None:
    points = [
        _opt("adam-200", 0.92, 80.0, 200),
        _opt("adam-20", 0.90, 8.0, 20),
        _opt("adam-1", 0.50, 0.5, 1),
        _opt("sgd-200", 0.89, 70.0, 200),  # dominated by adam-20 (slower, less accurate)
        _opt("sgd-20", 0.80, 7.0, 20),  # on the frontier: the best at ≤ 7 ms
    ]
    rows = [
        _row("lo-hp (k=2)", [0.85], _policy("lo-hp"), 7.5, 20, "generated"),  # above sgd-20
        _row("slow", [0.86], _policy("lo-op"), 9.0, 20),  # below adam-20 (0.90 at 8 ms)
        _row("hypernetwork", [0.7], _policy("hypernetwork"), 0.1, 1),  # faster than every point
        _row("l2o", [0.9], None, None, 200),  # not timed: left out
        *(r for _, r in points),
    ]
    f = frontier_section(rows, points)
    assert [(p["optimizer"], p["steps"]) for p in f["points"]] == [
        ("adam", 1),
        ("adam", 20),
        ("adam", 200),
        ("sgd", 20),
        ("sgd", 200),
    ]
    assert f["points"][0] == {
        "method": "adam-1",
        "optimizer": "adam",
        "steps": 1,
        "acc_mean": 0.5,
        "latency_ms_batch1": 0.5,
        "latency_iqr_ms": None,  # a row timed without its runs (set_latency gives them)
    }
    assert [p["method"] for p in f["pareto"]] == ["adam-1", "sgd-20", "adam-20", "adam-200"]
    pol = {q["name"]: q for q in f["policies"]}
    assert list(pol) == ["lo-hp (k=2)", "slow", "hypernetwork"]
    assert pol["lo-hp (k=2)"] == {
        "name": "lo-hp (k=2)",
        "acc_mean": 0.85,
        "latency_ms_batch1": 7.5,
        "frontier_method": "sgd-20",
        "frontier_acc": 0.8,
        "margin": 0.05,
        "position": "on_or_above",
    }
    assert pol["slow"]["frontier_method"] == "adam-20"
    assert pol["slow"]["margin"] == pytest.approx(-0.04)
    assert pol["slow"]["position"] == "below"
    assert pol["hypernetwork"]["frontier_acc"] is None
    assert pol["hypernetwork"]["position"] == "on_or_above"
    md = "\n".join(frontier_lines(f))
    assert "## Accuracy–latency frontier" in md
    assert "| slow | 0.8600 | 9.000 | adam-20 | 0.9000 | -0.0400 | below |" in md
    assert "| hypernetwork | 0.7000 | 0.100 | – | – | – | on or above |" in md
    assert "| sgd | 200 | 0.8900 | 70.000 |  |" in md
    assert "| sgd | 20 | 0.8000 | 7.000 | yes |" in md
    assert frontier_section(rows, None) is None and frontier_lines(None) == []


def _adam(steps: int, accs: list[float], lat: float) -> tuple[str, MethodResult]:
    return "adam", _row(f"adam-{steps}", accs, None, lat, steps)


def test_matched_budget_is_the_smallest_reaching_the_main_accuracy() -> None:
    # MAIN: mean 0.8 in 5 ms; adam-5 is below everywhere, adam-10 ties (mean 0.8), adam-20 is
    # above on every task (its interval lies above 0)
    pts = [
        _adam(20, [0.95, 0.85, 0.75], 20.0),
        _adam(5, [0.5, 0.4, 0.45], 4.0),
        _adam(10, [0.85, 0.75, 0.8], 10.0),
    ]
    m = matched_section([MAIN, *(r for _, r in pts)], pts)
    assert m is not None and m["acc_mean"] == 0.8 and m["latency_ms_batch1"] == 5.0
    (q,) = m["against"]
    assert q["against"] == "adam" and q["budgets"] == [5, 10, 20]
    assert q["matched"] == "adam-10" and q["steps"] == 10
    assert q["speedup"] == pytest.approx(2.0)  # 10 ms over 5 ms
    # interval: adam-10 is the first not below beyond the interval, adam-20 the first above
    assert q["ci_budgets"] == [10, 20]
    assert q["speedup_ci95"] == pytest.approx([2.0, 4.0])
    text = "\n".join(matched_lines(m))
    assert "Speed-up at matched accuracy" in text and "2.00×" in text and "4.00×" in text


def test_no_budget_reaching_the_main_row_is_said_and_diffusion_rows_are_matched() -> None:
    diff = [
        _row("diffusion-s10", [0.5, 0.5, 0.4], _policy("diffusion"), 10.0, 10),
        _row("diffusion-s50", [0.9, 0.8, 0.7], _policy("diffusion"), 50.0, 50),
    ]
    pts = [_adam(5, [0.5, 0.4, 0.45], 4.0)]
    m = matched_section([MAIN, *diff, pts[0][1]], pts)
    assert m is not None
    by = {q["against"]: q for q in m["against"]}
    assert by["adam"]["matched"] is None and by["adam"]["speedup"] is None
    assert by["diffusion"]["matched"] == "diffusion-s50"  # equal accuracy reaches it
    assert by["diffusion"]["speedup"] == pytest.approx(10.0)
    assert by["diffusion"]["speedup_ci95"] == [pytest.approx(10.0), None]  # nothing above
    assert "none of 5 reaches it" in "\n".join(matched_lines(m))
    assert matched_section([MAIN], None) is None  # no frontier: no section


def test_the_matched_interval_is_never_inverted_by_noisy_latencies() -> None:
    """The issue's report: a larger budget timed faster than a smaller one (load) gave
    [4.96×, 3.95×]. The interval is the least and greatest speed-up over the budgets from the
    first not below the main row to the first above it, so it holds the matched budget's."""
    pts = [
        _adam(5, [0.5, 0.4, 0.45], 4.0),
        _adam(10, [0.85, 0.75, 0.8], 24.8),  # ties the main row (the matched budget), slow
        _adam(20, [0.95, 0.85, 0.75], 19.75),  # above on every task, timed faster than adam-10
    ]
    m = matched_section([MAIN, *(r for _, r in pts)], pts)
    assert m is not None
    (q,) = m["against"]
    assert q["ci_budgets"] == [10, 20] and q["speedup"] == pytest.approx(4.96)
    assert q["speedup_ci95"] == pytest.approx([3.95, 4.96])
    low, high = q["speedup_ci95"]
    assert low <= q["speedup"] <= high


@given(
    lats=st.lists(st.floats(0.01, 1000.0), min_size=1, max_size=8),
    accs=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=8),
)
@settings(max_examples=200, deadline=None)
def test_matched_interval_property(lats: list[float], accs: list[float]) -> None:
    n = min(len(lats), len(accs))
    pts = [
        _adam(s, [min(1.0, a + d) for d in (0.0, 0.05, -0.05)], lat)
        for s, a, lat in zip(range(1, n + 1), accs[:n], lats[:n], strict=True)
    ]
    m = matched_section([MAIN, *(r for _, r in pts)], pts)
    assert m is not None
    (q,) = m["against"]
    low, high = q["speedup_ci95"]
    if low is not None and high is not None:
        assert low <= high
    if q["speedup"] is not None and low is not None:
        assert low <= q["speedup"] and (high is None or q["speedup"] <= high)


def test_the_verdict_says_accuracy_speed_and_the_frontier_in_one_line() -> None:
    adam = [_adam(20, [0.95, 0.85, 0.75], 20.0), _adam(5, [0.85, 0.75, 0.7], 4.0)]
    rows = [MAIN, *(r for _, r in adam)]
    r = {
        "tasks": ["a", "b", "c"],
        "methods": [x.summary() for x in rows],
        "paired": paired_section(rows),
        "frontier": frontier_section(rows, adam),
    }
    said = verdict(r)
    assert said is not None
    assert said.startswith("lo-hp (k=2) reaches 0.8000 on 3 held-out task(s): 5.0 points below ")
    assert "adam-20 (0.8500, 95 % interval [-5.0, -5.0]) at 4.0× lower latency" in said
    assert "below the optimizers' accuracy–latency frontier: adam-5 reaches 0.7667" not in said
    assert said.endswith("on or above the optimizers' accuracy–latency frontier.")
    noisy = verdict({**r, "timing": {"warning": "busy"}})
    assert noisy is not None and noisy.endswith(
        "(latencies noisy: see the warning under the table)."
    )
    slow = [_adam(20, [0.95, 0.85, 0.75], 20.0), _adam(5, [0.85, 0.85, 0.75], 4.0)]
    rows = [MAIN, *(r for _, r in slow)]
    below = verdict({**r, "methods": [x.summary() for x in rows],
                     "frontier": frontier_section(rows, slow)})  # fmt: skip
    assert below is not None
    frontier = "below the optimizers' accuracy–latency frontier: adam-5 reaches 0.8167 in 4 ms"
    assert f"{frontier} (lo-hp (k=2): 5 ms)" in below
    assert verdict({**r, "methods": []}) is None
