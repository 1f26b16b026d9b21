"""Learned optimizers through the CLI: ``train-policy --method l2o…`` and ``evaluate-l2o``,
with the documented exit code and one ``error:`` line for each bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cli.runner import EXIT_CODE_TEXTS, flat, invoke, plain
from tests.cli.test_train_cli import assert_error, ok
from tests.conftest import make_linear_store

# a tiny synthetic meta-training run: a few episodes of a 6-step horizon on 4-d quadratics
TINY = ["--steps", "2", "--batch-size", "2", "--device", "cpu", "--set", "l2o.horizon=6",
        "--set", "l2o.unroll=3", "--set", "l2o.hidden=4", "--set", "l2o.quadratic.dim=4",
        "--set", "l2o.quadratic.rows=4", "--set", "l2o.lasso.dim=4", "--set", "l2o.lasso.rows=3",
        "--set", "l2o.adapt_steps=1", "--set", "l2o.adapt_unroll=2"]  # fmt: skip


def train(out: Path, method: str = "l2o", family: str = "quadratic", *args: object) -> Any:
    return invoke("train-policy", "--method", method, "--family", family, "--out", out, *TINY,
                  *args)  # fmt: skip


@pytest.fixture(scope="module")
def policies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("l2o")
    out = {}
    for method in ("l2o", "m-l2o"):
        out[method] = root / method
        ok(train(out[method], method))
    out["lasso"] = root / "lasso"
    ok(train(out["lasso"], "l2o", "lasso"))
    return out


def test_help_lists_the_l2o_options() -> None:
    text = flat(ok(invoke("train-policy", "--help")).stdout)
    assert "--family" in text and "l2o-tt" in text and "m-l2o" in text
    text = flat(ok(invoke("evaluate-l2o", "--help")).stdout)
    assert "Usage: lohp evaluate-l2o" in text
    for item in EXIT_CODE_TEXTS:
        assert item in text, item
    for flag in ("--policy", "--out", "--steps", "--tasks", "--instances", "--shift",
                 "--adapt-steps", "--baselines", "--seed", "--device", "--config", "--set",
                 "--dry-run"):  # fmt: skip
        assert flag in text, flag
    assert "evaluate-l2o" in flat(ok(invoke("--help")).stdout)


def test_dry_run_resolves_the_l2o_section(tmp_path: Path) -> None:
    result = ok(invoke("train-policy", "--method", "l2o-tt", "--family", "lasso", "--dry-run",
                       "--set", "l2o.progressive=[2,4]"))  # fmt: skip
    data = json.loads(result.stdout)
    assert data["method"] == "l2o-tt" and data["l2o"]["family"] == "lasso"
    assert data["l2o"]["progressive"] == [2, 4]
    assert not (tmp_path / "p").exists()


def test_train_prints_the_policy_directory(tmp_path: Path) -> None:
    out = tmp_path / "p"
    result = ok(train(out, "l2o-tt"))
    assert result.stdout == f"{out}\n"
    err = plain(result.stderr)
    assert "teacher adam lr" in err and "done: step 2, complete" in err
    meta = json.loads((out / "config.json").read_text())
    assert meta["kind"] == "lohp.policy" and meta["method"] == "l2o-tt" and meta["complete"]
    assert (out / "model.safetensors").is_file() and (out / "state" / "trainer.json").is_file()


def test_evaluate_l2o_writes_a_report(policies: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "r"
    result = ok(invoke("evaluate-l2o", "--policy", f"l2o={policies['l2o']}", "--policy",
                       f"m-l2o={policies['m-l2o']}", "--out", out, "--steps", 5, "--tasks", 1,
                       "--instances", 2, "--shift", 0.5, "--device", "cpu"))  # fmt: skip
    assert result.stdout == f"{out}\n"
    report = json.loads((out / "report.json").read_text())
    names = [m["name"] for m in report["methods"]]
    assert names[:3] == ["l2o", "l2o +1 adapt", "m-l2o +1 adapt"]
    assert any(n.startswith("adam (lr ") for n in names)
    assert all(len(m["curve"]) == 6 for m in report["methods"])
    assert (out / "report.md").is_file() and (out / "loss_curves.png").is_file()
    assert "m-l2o +1 adapt" in flat(result.stderr)


# ---- exit codes ---------------------------------------------------------------------------------
def test_unknown_method_exit_2(tmp_path: Path) -> None:
    assert_error(train(tmp_path / "p", "l2o-xx"), 2, ("method", "l2o-xx"))


def test_unknown_family_exit_2(tmp_path: Path) -> None:
    assert_error(train(tmp_path / "p", "l2o", "rosenbrock"), 2, ("l2o.family", "rosenbrock"))


def test_flat_without_terms_exit_2(tmp_path: Path) -> None:
    result = train(tmp_path / "p", "l2o-flat", "quadratic", "--set", "l2o.hessian_weight=0",
                   "--set", "l2o.entropy_weight=0")  # fmt: skip
    assert_error(result, 2, ("l2o-flat", "flatness"))


def test_non_finite_losses_exit_3(tmp_path: Path) -> None:
    result = train(tmp_path / "p", "l2o", "quadratic", "--set", "l2o.out_scale=1e30")
    assert_error(result, 3, ("Non-finite", "episode 0"))


def test_incompatible_store_exit_3(tmp_path: Path) -> None:
    store = tmp_path / "lin.zarr"
    make_linear_store(store, n_tasks=2, size=5, cond_dim=3, steps=4)
    result = invoke("train-policy", "--method", "l2o", "--store", store, "--out", tmp_path / "p",
                    *TINY)  # fmt: skip
    assert_error(result, 3, (str(store), "synthetic-linear", "--family quadratic|lasso"))


def test_missing_store_exit_3(tmp_path: Path) -> None:
    missing = tmp_path / "none.zarr"
    result = invoke("train-policy", "--method", "l2o", "--store", missing, "--out",
                    tmp_path / "p", *TINY)  # fmt: skip
    assert_error(result, 3, (str(missing),))


def test_evaluate_l2o_without_policy_exit_2() -> None:
    assert_error(invoke("evaluate-l2o", "--steps", 3), 2, ("policies", "--policy NAME=DIR"))


def test_evaluate_l2o_mixed_families_exit_4(policies: dict[str, Path], tmp_path: Path) -> None:
    a, b = f"a={policies['l2o']}", f"b={policies['lasso']}"
    result = invoke("evaluate-l2o", "--policy", a, "--policy", b, "--out", tmp_path / "r")
    assert_error(result, 4, ("'b'", "another optimizee family"))


def test_evaluate_l2o_of_a_missing_policy_exit_4(tmp_path: Path) -> None:
    result = invoke("evaluate-l2o", "--policy", f"a={tmp_path / 'nope'}", "--out", tmp_path / "r")
    assert_error(result, 4, (str(tmp_path / "nope"), "train-policy"))


def test_generate_refuses_an_l2o_policy_exit_4(policies: dict[str, Path], tmp_path: Path) -> None:
    result = invoke("generate", "--policy", policies["l2o"], "--out", tmp_path / "g.zarr",
                    "--device", "cpu")  # fmt: skip
    assert_error(result, 4, ("learned optimizer", "evaluate-l2o"))


def test_evaluate_accepts_l2o_baselines_in_its_config() -> None:
    data = json.loads(ok(invoke("evaluate", "--dry-run", "--baselines", "adam,l2o")).stdout)
    assert data["baselines"] == ["adam", "l2o"]
    assert json.loads(ok(invoke("evaluate", "--dry-run")).stdout)["baselines"] == [
        "sgd", "adam", "sam", "hypernetwork",
    ]  # fmt: skip
