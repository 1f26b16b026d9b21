"""A shared-init store downstream of collect: generation, evaluate's baselines and the local-policy
check start from its θ₀ (``policy.directory.StartRule``), and its policies are refused elsewhere.

The store is the tiny digits collect of ``tests/conftest.py`` with ``init = "shared"``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr

import lohp_cli.stages.generate as generate_mod
from lohp_cli.config import GenerateConfig, TrainConfig
from lohp_cli.errors import CompatibilityError
from lohp_cli.methods.optimizer import OptimizerMethod
from lohp_cli.methods.policy import PolicyMethod
from lohp_cli.optim import build_optimizer
from lohp_cli.optim.loop import train_loop
from lohp_cli.policy.directory import load_policy
from lohp_cli.report import locality
from lohp_cli.runtime import derive_seed
from lohp_cli.stages.collect import collect
from lohp_cli.stages.evaluate import evaluate
from lohp_cli.stages.generate import generate
from lohp_cli.stages.train import train_policy
from lohp_cli.store import TrajectoryStore
from lohp_cli.tasks.layout import flat_params, load_flat
from lohp_cli.tasks.models import build_target
from tests.conftest import evaluate_context, tiny_config

SAMPLES = 2
POLICY = {"backbone": "mlp", "hidden": 16, "emb_dim": 8}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A shared-init store, a per-run store of the same settings, a Lo-Hp policy trained 3 steps
    on the shared one, and 2 tasks × 2 samples generated with their paths."""
    tmp = tmp_path_factory.mktemp("shared")
    store, per_run, pol, gen = (tmp / n for n in ("s.zarr", "p.zarr", "pol", "g.zarr"))
    collect(tiny_config(store, init="shared"))
    collect(tiny_config(per_run))
    train_policy(TrainConfig.model_validate(
        {"store": str(store), "out": str(pol), "k": 2, "steps": 3, "policy": POLICY}))  # fmt: skip
    generate(GenerateConfig.model_validate({
        "policy": str(pol), "out": str(gen), "num_tasks": 2, "samples": SAMPLES,
        "save_paths": True, "device": "cpu"}))  # fmt: skip
    return {"store": store, "per_run": per_run, "policy": pol, "generated": gen, "tmp": tmp}


def theta0_of(run: dict[str, Path]) -> torch.Tensor:
    theta0 = TrajectoryStore.open(str(run["store"])).shared_init()
    assert theta0 is not None
    return torch.from_numpy(theta0)


def record_arg(monkeypatch: pytest.MonkeyPatch, module: Any, name: str, index: int) -> list:
    """Patch ``module.name`` to keep a copy of its positional argument ``index`` at every call."""
    seen: list[torch.Tensor] = []
    real = getattr(module, name)

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(args[index].clone())
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return seen


@pytest.fixture(scope="module")
def ctx(run: dict[str, Path]) -> tuple[Any, Any]:
    """evaluate's context on the generated store, and the policy ``(model, meta, stats)``."""
    return evaluate_context(run["generated"], run["tmp"] / "report")[1]


# ---- generate ------------------------------------------------------------------------------------
def test_generate_starts_every_sample_at_the_normalised_theta0(
    run: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, stats = load_policy(run["policy"])
    want = stats.normalize(theta0_of(run))  # [P]
    starts = record_arg(monkeypatch, generate_mod, "generate_states", 2)  # s0 [B, P]
    out = tmp_path / "g.zarr"
    generate(GenerateConfig.model_validate(
        {"policy": str(run["policy"]), "out": str(out), "num_tasks": 2, "samples": SAMPLES,
         "device": "cpu"}))  # fmt: skip
    rows = torch.cat(starts)  # warm-up, every batch and the latency runs
    assert rows.shape[1] == want.numel() and len(rows) >= 2 * SAMPLES
    assert all(torch.equal(r, want) for r in rows)
    # the stored paths begin at denormalise(normalise(θ₀)), θ₀ up to rounding
    g = zarr.open_group(str(run["generated"]), mode="r")
    for t in g.attrs["tasks"]:
        path = torch.from_numpy(g[t]["path"][:])  # [S, N+1, P]
        for j in range(SAMPLES):
            assert torch.equal(path[j, 0], stats.denormalize(want))
            torch.testing.assert_close(path[j, 0], theta0_of(run), rtol=0, atol=1e-6)


def test_mean_mode_is_one_trajectory_per_task_and_sample_mode_varies(
    run: dict[str, Path], tmp_path: Path
) -> None:
    g = zarr.open_group(str(run["generated"]), mode="r")  # mean mode
    tasks = g.attrs["tasks"]
    for t in tasks:
        w = g[t]["weights"][:]
        np.testing.assert_allclose(w[0], w[1], rtol=1e-6, atol=1e-9)  # rows of one batch matmul
    assert not np.array_equal(g[tasks[0]]["weights"][0], g[tasks[1]]["weights"][0])
    out = tmp_path / "sampled.zarr"
    generate(GenerateConfig.model_validate(
        {"policy": str(run["policy"]), "out": str(out), "num_tasks": 2, "samples": SAMPLES,
         "mode": "sample", "device": "cpu"}))  # fmt: skip
    s = zarr.open_group(str(out), mode="r")
    for t in tasks:
        w = s[t]["weights"][:]
        assert np.abs(w[0] - w[1]).max() > 1e-4


# ---- evaluate ------------------------------------------------------------------------------------
def test_evaluate_starts_are_theta0_exactly_and_its_normalisation(
    run: dict[str, Path], ctx: tuple
) -> None:
    c, (_, _, stats) = ctx
    theta0 = theta0_of(run)
    for t in c.tasks:
        s = c.starts(t)
        assert s.theta0.shape == s.s0.shape == (SAMPLES, c.size)
        assert all(torch.equal(row, theta0) for row in s.theta0)  # weight space: exactly θ₀
        assert all(torch.equal(row, stats.normalize(theta0)) for row in s.s0)
    # another policy reads the same θ₀ in its own normalisation
    other = type(stats)(stats.mean + 1.0, stats.std * 2.0, stats.cond_mean, stats.cond_std,
                        stats.step_rms)  # fmt: skip
    got = c.starts(c.tasks[0]).s0_for(other)
    assert all(torch.equal(row, other.normalize(theta0)) for row in got)


def test_optimizer_baselines_start_from_theta0(run: dict[str, Path], ctx: tuple) -> None:
    c, _ = ctx
    theta0 = theta0_of(run)
    t = c.tasks[1]
    still = OptimizerMethod("adam", 0)
    still.prepare(c)
    assert all(torch.equal(row, theta0) for row in still.weights(t, c.starts(t)))
    m = OptimizerMethod("adam", 7)
    m.prepare(c)
    got = m.weights(t, c.starts(t))
    fam = c.task.family
    for j in range(SAMPLES):  # the train loop from θ₀ itself, minibatches seeded per sample
        net = build_target(c.task.model_cfg, fam.data.image_shape, fam.cfg.ways)
        load_flat(net, theta0)
        opt = build_optimizer("adam", net.parameters(), c.optim)
        gen = torch.Generator().manual_seed(derive_seed(c.seed, "batches", t, j))
        train_loop(net, opt, c.data[t].x_train, c.data[t].y_train, 7, 7, c.batch_size, gen)
        torch.testing.assert_close(got[j], flat_params(net), rtol=0, atol=1e-5)  # batched starts
    assert not torch.equal(got[0], got[1])  # same start, own minibatches


def test_a_policy_method_regenerates_the_stored_weights(run: dict[str, Path], ctx: tuple) -> None:
    c, _ = ctx
    m = PolicyMethod("again", str(run["policy"]))
    m.prepare(c)
    g = zarr.open_group(str(run["generated"]), mode="r")
    for t in c.tasks:
        want = torch.from_numpy(g[t]["weights"][:])
        torch.testing.assert_close(m.weights(t, c.starts(t)), want, rtol=1e-5, atol=1e-5)


def test_the_local_policy_check_starts_from_theta0(
    run: dict[str, Path], ctx: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    c, (model, _, _) = ctx
    seen = record_arg(monkeypatch, locality, "probe_path", 3)  # theta0 [P]
    out = locality.check(c, model, targets=1, sources=1, branches=2)
    assert out is not None and len(seen) == 2 * len(out["optimizers"])  # a target, a source
    assert all(torch.equal(s, theta0_of(run)) for s in seen)


def test_the_report_says_its_starts_were_shared(run: dict[str, Path]) -> None:
    cfg, _ = evaluate_context(run["generated"], run["tmp"] / "rep", baselines=["adam"])
    report = evaluate(cfg)
    assert report["init"] == "shared"
    saved = json.loads((run["tmp"] / "rep" / "report.json").read_text())
    assert saved["init"] == "shared"
    assert {m["name"] for m in saved["methods"]} >= {"adam-20", "adam-2"}


# ---- a policy of a shared store on a per-run store ----------------------------------------------
def test_a_shared_store_policy_is_refused_on_a_per_run_store(
    run: dict[str, Path], tmp_path: Path
) -> None:
    from tests.cli.runner import invoke, plain

    out = tmp_path / "g.zarr"
    cfg = {"policy": str(run["policy"]), "out": str(out), "store": str(run["per_run"]),
           "num_tasks": 1, "samples": 1, "device": "cpu"}  # fmt: skip
    with pytest.raises(CompatibilityError, match="init: the policy's store has 'shared', this one"):
        generate(GenerateConfig.model_validate(cfg))
    result = invoke("generate", "--policy", run["policy"], "--store", run["per_run"],
                    "--out", out, "--num-tasks", "1", "--device", "cpu")  # fmt: skip
    assert result.exit_code == 4, result.output
    errors = [ln for ln in plain(result.stderr).splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "init: the policy's store has 'shared', this one None" in errors[0]
    assert "Traceback" not in result.output and not out.exists()
