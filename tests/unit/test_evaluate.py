"""Report helpers of evaluate: policy rows, the k study and the optimizer-combination table."""

from __future__ import annotations

from typing import Any

from lohp_cli.evaluate import MethodResult, k_study, markdown_report, policy_info


def _row(
    name: str, acc: float, policy: dict[str, Any] | None, lat: float = 1.0, kind: str = "policy"
) -> dict:
    kind = kind if policy else "optimizer"
    return MethodResult(name, kind, [acc], lat, 1, policy).summary()


def _meta(method: str, k: int, opts: list[str] | None = None, state: str = "none") -> dict:
    return {
        "method": method,
        "k": k,
        "N": 40 // k,
        "train_config": {"optimizers": opts, "policy": {"state_input": state}},
    }


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
