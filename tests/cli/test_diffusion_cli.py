"""``train-policy --method diffusion``, ``generate`` and ``evaluate --policy`` through the CLI on
the tiny digits store: finite weights from the start rule's s_0, rows named by their DDIM steps S,
and every bad S refused with one error line and exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from typer.testing import Result

from lohp_cli.policy.directory import initial_state, load_policy
from lohp_cli.stages.collect import collect
from tests.cli.runner import invoke, plain
from tests.conftest import tiny_config

DENOISER = ["--set", "policy.backbone=mlp", "--set", "policy.hidden=32", "--set",
            "policy.emb_dim=16", "--set", "diffusion.timesteps=100"]  # fmt: skip


def ok(result: Result) -> Result:
    assert result.exit_code == 0, plain(result.output)
    assert "Traceback" not in result.output
    return result


def assert_usage_error(result: Result, *names: str) -> None:
    """Exit 2, no traceback, one ``error:`` line on stderr naming ``names``, nothing on stdout."""
    out = plain(result.output)
    assert result.exit_code == 2, f"exit {result.exit_code}:\n{out}"
    assert "Traceback" not in out and result.stdout == ""
    errors = [ln for ln in plain(result.stderr).splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for name in names:
        assert name in errors[0], errors[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny digits store, a diffusion policy (S = 10 of T_train = 100) trained 30 steps on
    it, and 2 tasks × 2 samples generated with their paths."""
    tmp = tmp_path_factory.mktemp("diffusion-cli")
    store, pol, gen = tmp / "s.zarr", tmp / "pol", tmp / "g.zarr"
    collect(tiny_config(store))
    result = ok(invoke("train-policy", "--store", store, "--out", pol, "--method", "diffusion",
                       "--steps", 30, "--batch-size", 4, "--device", "cpu", *DENOISER,
                       "--set", "diffusion.sample_steps=10"))  # fmt: skip
    assert result.stdout == f"{pol}\n"
    ok(invoke("generate", "--policy", pol, "--out", gen, "--num-tasks", 2, "--samples", 2,
              "--device", "cpu", "--save-paths"))  # fmt: skip
    return {"store": store, "policy": pol, "generated": gen, "tmp": tmp}


def test_generate_starts_from_the_start_rule_and_writes_finite_weights(run: dict) -> None:
    g = zarr.open_group(str(run["generated"]), mode="r")
    assert g.attrs["policy"]["method"] == "diffusion" and g.attrs["policy"]["N"] == 10
    _, meta, stats = load_policy(run["policy"])
    for tid in g.attrs["tasks"]:
        w, path = g[tid]["weights"][:], g[tid]["path"][:]
        assert w.shape == (2, meta.param_count) and np.isfinite(w).all()
        assert path.shape == (2, 11, meta.param_count)  # x_S … x_0
        np.testing.assert_array_equal(path[:, -1], w)
        for j in range(2):  # x_S is Lo-Hp's s_0 of (seed 0, task, sample j)
            s0 = initial_state(0, tid, j, meta.param_count)
            np.testing.assert_allclose(path[j, 0], stats.denormalize(s0).numpy(), rtol=1e-6)


def test_generate_takes_other_sample_steps(run: dict) -> None:
    out = run["tmp"] / "g5.zarr"
    ok(invoke("generate", "--policy", run["policy"], "--out", out, "--num-tasks", 1,
              "--samples", 1, "--device", "cpu", "--sample-steps", 5, "--save-paths"))  # fmt: skip
    g = zarr.open_group(str(out), mode="r")
    assert g.attrs["policy"]["N"] == 5 and g.attrs["config"]["sample_steps"] == 5
    tid = g.attrs["tasks"][0]
    assert g[tid]["path"].shape[1] == 6 and np.isfinite(g[tid]["weights"][:]).all()


def test_evaluate_scores_the_policy_at_each_s(run: dict) -> None:
    out = run["tmp"] / "report"
    ok(invoke("evaluate", "--generated", run["generated"], "--out", out, "--baselines", "adam",
              "--policy", f"d@5={run['policy']}", "--policy", f"d={run['policy']}",
              "--latency-repeats", 2, "--device", "cpu", "--set", "plots=false",
              "--set", "frontier_steps=[]"))  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    rows = {m["name"]: m for m in report["methods"]}
    assert {"diffusion (S=10)", "d (S=5)", "d (S=10)", "adam-10", "adam-5"} <= set(rows)
    assert rows["diffusion (S=10)"]["kind"] == "generated"
    for name, steps in (("diffusion (S=10)", 10), ("d (S=5)", 5), ("d (S=10)", 10)):
        row = rows[name]
        assert row["steps"] == steps and row["policy"]["N"] == steps
        assert 0 <= row["acc_mean"] <= 1 and row["latency_ms_batch1"] > 0
    # the same policy at the generated store's S scores the generated weights again
    assert rows["d (S=10)"]["acc_mean"] == pytest.approx(rows["diffusion (S=10)"]["acc_mean"])
    # DDIM steps are not optimizer steps: no cosine or local-policy check of a diffusion policy
    assert report["locality"] is None and report["cosine"]["n"] == 0


# ---- bad S: one line, exit 2 ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "words"),
    [("0", ("diffusion.sample_steps", "greater than or equal to 1")),
     ("101", ("sample_steps = 101 exceeds diffusion.timesteps = 100",))],
)  # fmt: skip
def test_train_refuses_sample_steps_out_of_range(
    run: dict, tmp_path: Path, value: str, words: tuple[str, ...]
) -> None:
    result = invoke("train-policy", "--store", run["store"], "--out", tmp_path / "p", "--method",
                    "diffusion", "--steps", 1, *DENOISER, "--set",
                    f"diffusion.sample_steps={value}")  # fmt: skip
    assert_usage_error(result, *words)
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize(
    ("value", "words"),
    [("0", ("sample_steps", "greater than or equal to 1")), ("101", ("1 … 100 DDIM steps",))],
)
def test_generate_refuses_sample_steps_out_of_range(
    run: dict, tmp_path: Path, value: str, words: tuple[str, ...]
) -> None:
    result = invoke("generate", "--policy", run["policy"], "--out", tmp_path / "g.zarr",
                    "--device", "cpu", "--sample-steps", value)  # fmt: skip
    assert_usage_error(result, *words)
    assert not (tmp_path / "g.zarr").exists()


@pytest.mark.parametrize(
    ("name", "words"),
    [("d@0", ("d@0", "positive integer")), ("d@x", ("d@x",)), ("d@101", ("1 … 100 DDIM steps",))],
)
def test_evaluate_refuses_bad_s(run: dict, tmp_path: Path, name: str, words: tuple[str, ...]):
    result = invoke("evaluate", "--generated", run["generated"], "--out", tmp_path / "r",
                    "--baselines", "", "--policy", f"{name}={run['policy']}", "--device", "cpu",
                    "--latency-repeats", 1, "--set", "plots=false", "--set", "cosine_runs=0",
                    "--set", "locality_tasks=0", "--set", "locality_source_tasks=0")  # fmt: skip
    assert_usage_error(result, *words)


def test_the_loaded_denoiser_is_the_trained_one(run: dict) -> None:
    model, meta, _ = load_policy(run["policy"])
    assert meta.method == "diffusion" and meta.N == 10 and torch.isfinite(model.x0_bound)


def test_the_rows_backbone_denoises_a_layered_target(run: dict, tmp_path: Path) -> None:
    """rows reads the target's layout (and the condition's class blocks itself)."""
    pol = tmp_path / "rows"
    ok(invoke("train-policy", "--store", run["store"], "--out", pol, "--method", "diffusion",
              "--steps", 2, "--batch-size", 2, "--device", "cpu", "--set", "policy.backbone=rows",
              "--set", "policy.width=8", "--set", "policy.heads=2", "--set", "policy.blocks=1",
              "--set", "policy.emb_dim=8", "--set", "diffusion.timesteps=20",
              "--set", "diffusion.sample_steps=4"))  # fmt: skip
    model, meta, _ = load_policy(pol)
    assert model.backbone_takes_condition
    x = model.rollout(torch.randn(2, meta.param_count), 0, torch.randn(2, meta.condition_dim))
    assert x.shape == (2, 5, meta.param_count) and bool(torch.isfinite(x).all())
