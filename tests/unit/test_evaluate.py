"""Report helpers of evaluate: policy rows, the k study, the optimizer-combination table and the
names of the timings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import lohp_cli.timing
from lohp_cli.artifacts.policy import PolicyMeta
from lohp_cli.methods.base import MethodResult
from lohp_cli.methods.policy import policy_info
from lohp_cli.report.document import LATENCY_LABEL, k_study, markdown_report, write_plots
from lohp_cli.timing import time_ms


def _row(
    name: str, acc: float, policy: dict[str, Any] | None, lat: float = 1.0, kind: str = "policy"
) -> dict:
    kind = kind if policy else "optimizer"
    return MethodResult(name, kind, [acc], lat, 1, policy).summary()


def _meta(method: str, k: int, opts: list[str] | None = None, state: str = "none") -> PolicyMeta:
    return PolicyMeta.model_construct(
        method=method,
        k=k,
        N=40 // k,
        train_config={"optimizers": opts, "policy": {"state_input": state}},
    )


def _report(methods: list[dict]) -> dict[str, Any]:
    return {
        "family": "fmnist",
        "model": "head",
        "param_count": 325,
        "tasks": ["c0_1"],
        "samples_per_task": 1,
        "device": "cpu",
        "policy": {"path": "p", "method": "lo-hp", "k": 2, "N": 20},
        "methods": methods,
        "cosine": {"n": 0},
    }


def test_policy_info_sorts_the_optimizer_subset() -> None:
    assert policy_info(_meta("lo-hp", 2, ["sgd", "adam"])) == {
        "method": "lo-hp",
        "k": 2,
        "N": 20,
        "optimizers": ["adam", "sgd"],
        "state_input": "none",
        "style": None,
    }
    assert policy_info(_meta("lo-di", 1))["optimizers"] is None


def test_k_study_keeps_the_generated_policys_kind_of_row_per_k() -> None:
    adam = ["adam"]
    rows = [
        _row("main", 0.8, policy_info(_meta("lo-hp", 2, adam)), kind="generated"),
        _row("lo-hp k4", 0.7, policy_info(_meta("lo-hp", 4, adam))),
        _row("lo-hp k1", 0.9, policy_info(_meta("lo-hp", 1, adam))),
        _row("all runs k4", 0.5, policy_info(_meta("lo-hp", 4))),
        _row("state k1", 0.95, policy_info(_meta("lo-hp", 1, adam, "support"))),
        _row("lo-op", 0.6, policy_info(_meta("lo-op", 2, adam))),
        _row("adam-20", 0.9, None),
    ]
    ks = k_study(_report(rows))
    assert [(r["k"], r["name"]) for r in ks] == [(1, "lo-hp k1"), (2, "main"), (4, "lo-hp k4")]
    # a hypernetwork report has no k study
    hyper = _row("h", 0.8, policy_info(_meta("hypernetwork", 2)), kind="generated")
    assert k_study(_report([hyper, *rows[1:]])) == []


def test_markdown_has_k_study_and_optimizer_tables_only_when_there_is_data() -> None:
    rows = [
        _row("lo-hp (k=2)", 0.8, policy_info(_meta("lo-hp", 2)), kind="generated"),
        _row("lo-hp k4", 0.7, policy_info(_meta("lo-hp", 4)), 0.5),
        _row("sgd+adam", 0.75, policy_info(_meta("lo-hp", 2, ["sgd", "adam"]))),
    ]
    md = markdown_report(_report(rows))
    assert "k study (lo-hp trained on all runs)" in md
    assert "| 4 | 10 | 0.7000 ± 0.0000 | 0.500 |" in md
    assert "| sgd+adam | 2 | adam+sgd | 0.7500 ± 0.0000 |" in md
    assert "| lo-hp (k=2) | 2 | all | 0.8000 ± 0.0000 |" in md
    assert "| lo-hp k4 | 4 |" not in md  # the optimizer table compares one k
    plain = markdown_report(_report(rows[:1]))
    assert "k study" not in plain and "Optimizer combinations" not in plain


def test_markdown_gives_each_rows_interval_over_tasks() -> None:
    row = MethodResult("prototype", "prototype", [0.0, 1.0, 0.0, 1.0], 0.1)
    row.task_acc = [0.0, 1.0, 0.0, 1.0]  # four tasks of one sample each
    summary = row.summary()
    assert summary["n_tasks"] == 4 and summary["acc_ci95"] == [-0.0658, 1.0658]
    md = markdown_report(_report([summary]))
    assert "mean ± 1.96 · s / √n" in md
    assert "| prototype | 4 | 0.5000 ± 0.5658 | [-0.0658, 1.0658] |" in md
    assert "| prototype | prototype | - | 0.5000 ± 0.5000 |" in md  # no steps: "-"
    # rows of one task (and reports from before acc_ci95) have no interval section
    one = MethodResult("adam-5", "optimizer", [0.5], 1.0, 5)
    one.task_acc = [0.5]
    assert one.summary()["acc_ci95"] is None
    assert "95 % interval" not in markdown_report(_report([one.summary()]))


def test_method_rows_name_the_latency_they_hold() -> None:
    row = MethodResult("lo-hp (k=2)", "generated", [0.5], 2.34567, 20).summary()
    assert row["latency_ms_batch1"] == 2.3457 and "latency_ms" not in row
    assert MethodResult("l2o", "l2o", [0.5]).summary()["latency_ms_batch1"] is None


def test_time_ms_leaves_the_warm_up_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake clock: the first call takes 1000 s (lazy initialisation), later ones 2 ms each."""
    now, calls = [0.0], []

    def fn() -> None:
        now[0] += 1000.0 if not calls else 2e-3
        calls.append(1)

    monkeypatch.setattr(lohp_cli.timing, "now", lambda: now[0])
    assert time_ms(fn, 3, "cpu") == pytest.approx(2.0)
    assert len(calls) == 4  # one untimed warm-up, three timed


TIMING = {
    "device": "cpu",
    "warmup_runs": 1,
    "repeats": 10,
    "protocol": "interleaved",
    "rounds": 12,
    "threads": 1,
    "cores": 2,
    "load_average": {"before": 0.5, "during_mean": 0.75, "during_max": 1.0, "after": 0.6},
    "wall_s": 3.0,
    "warning": None,
    "generate": {
        "batched_ms_per_sample": 0.95,
        "batch_size": 256,
        "batches_timed": 2,
        "warmup_batches": 1,
        "device": "cuda",
    },
}


def test_markdown_says_what_the_timings_measure() -> None:
    rows = [
        _row("lo-hp (k=2)", 0.8, policy_info(_meta("lo-hp", 2)), 11.4, kind="generated"),
        _row("lo-hp k4", 0.7, policy_info(_meta("lo-hp", 4)), 5.0),
    ]
    md = markdown_report({**_report(rows), "timing": TIMING})
    assert LATENCY_LABEL == "latency (ms per task, batch 1)"
    # the result table and the k-study table both name the measure in their headers
    header = (
        "| method | kind | steps | accuracy (mean ± std) | latency (ms per task, batch 1) "
        "| IQR (ms) | CPU (ms) |"
    )
    assert header in md
    assert "| k | N | accuracy | latency (ms per task, batch 1) |" in md
    assert "| lo-hp (k=2) | generated | 1 | 0.8000 ± 0.0000 | 11.400 | - | - |" in md
    assert "latency (ms)" not in md and "latency (ms, median)" not in md
    assert (
        "Latency: the time to produce the weights of one task at batch size 1 on cpu with 1 "
        "intra-op thread(s), timed after every method was scored: 12 round(s)" in md
    )
    assert "0.50 before, 0.75 during (max 1.00), 0.60 after" in md
    assert "Warning" not in md
    # one latency per method: generate's own latency is not repeated
    assert (
        "Batched throughput of `lohp generate`: 0.950 ms per sample on cuda (median over 2 "
        "batch(es) of up to 256, after 1 untimed warm-up batch(es)); a batch shares" in md
    )
    assert "its latency there" not in md
    noisy = markdown_report({**_report(rows), "timing": {**TIMING, "warning": "too busy."}})
    assert "**Warning: noisy latencies.** Too busy." in noisy
    # a generated store older than the timing dict: no throughput line, the device still named
    old = markdown_report({**_report(rows), "timing": {**TIMING, "generate": None}})
    assert "Batched throughput" not in old and "at batch size 1 on cpu" in old
    # a report of an older lohp (sequential timing): its repeats
    older = {"device": "cpu", "warmup_runs": 1, "repeats": 10, "optimizer_repeats": 3}
    assert "on cpu, median of 10 timed runs after 1 untimed warm-up run." in markdown_report(
        {**_report(rows), "timing": older}
    )


def test_plots_label_the_latency_axis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    labels: dict[str, list[str]] = {}

    def record(fig: Figure, path: Path, **_kw: object) -> None:
        labels[Path(path).name] = [
            s for ax in fig.axes for s in (ax.get_xlabel(), ax.get_ylabel()) if s
        ]

    monkeypatch.setattr(Figure, "savefig", record)
    rows = [
        _row("lo-hp (k=2)", 0.8, policy_info(_meta("lo-hp", 2)), 11.4, kind="generated"),
        _row("lo-hp k4", 0.7, policy_info(_meta("lo-hp", 4)), 5.0),
    ]
    point = {"method": "adam-5", "optimizer": "adam", "steps": 5, "acc_mean": 0.7}
    points = [{**point, "latency_ms_batch1": 2.0}, {**point, "latency_ms_batch1": 2.5}]
    policy = {"name": "lo-hp (k=2)", "acc_mean": 0.8, "latency_ms_batch1": 11.4}
    frontier = {"points": points, "pareto": points[:1], "policies": [policy]}
    write_plots({**_report(rows), "timing": TIMING, "frontier": frontier}, tmp_path)
    assert labels["accuracy_vs_latency.png"][0] == "latency (ms per task, batch 1), log, cpu"
    assert "latency (ms per task, batch 1)" in labels["k_study.png"]
    assert labels["frontier.png"] == ["latency (ms per task, batch 1), log, cpu", "test accuracy"]
