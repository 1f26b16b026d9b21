"""The local-policy check (lohp_cli/report/locality.py) on cases whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lohp_cli.config import OptimizersConfig
from lohp_cli.optim import build_optimizer
from lohp_cli.optim.loop import train_loop
from lohp_cli.report.locality import collect_cosines, cosines, policy_steps, probe_path, summarize
from lohp_cli.store.sampler import NormStats
from lohp_cli.tasks.families import TaskTensors
from lohp_cli.tasks.layout import flat_params, load_flat

N_TRAIN, STEPS_PER, N = 32, 3, 4


def data() -> TaskTensors:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N_TRAIN, 4, generator=g)
    y = torch.randint(0, 3, (N_TRAIN,), generator=g)
    return TaskTensors(x, y, x, y, torch.zeros(2), x[:6], y[:6])


def make_net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Linear(4, 3)


def stats(p: int) -> NormStats:
    g = torch.Generator().manual_seed(2)
    return NormStats(
        mean=torch.randn(p, generator=g),
        std=torch.rand(p, generator=g) + 0.5,
        cond_mean=torch.zeros(2),
        cond_std=torch.ones(2),
        step_rms=torch.ones(N),
    )


class OraclePolicy(nn.Module):
    """Takes exactly the next ``STEPS_PER`` full-batch SGD steps (in normalised space)."""

    def __init__(self, st: NormStats, optim: OptimizersConfig) -> None:
        super().__init__()
        self.st, self.optim = st, optim

    def means(self, s, i, cond, opt=None, probe=None):
        out = []
        for row in self.st.denormalize(s):
            net = make_net()
            load_flat(net, row)
            o = build_optimizer("sgd", net.parameters(), self.optim)
            gen = torch.Generator().manual_seed(0)
            d = data()
            with torch.enable_grad():  # policy_steps asks under no_grad
                train_loop(net, o, d.x_train, d.y_train, STEPS_PER, STEPS_PER, N_TRAIN, gen)
            out.append((flat_params(net) - row) / self.st.std)
        return torch.stack(out), torch.zeros_like(s)


class RandomPolicy(nn.Module):
    def means(self, s, i, cond, opt=None, probe=None):
        return torch.randn(s.shape, generator=torch.Generator().manual_seed(3)), s


def theta0() -> torch.Tensor:
    return flat_params(make_net()) + 0.1


def probe(optimizer: str, batch: int, branches: int = 3):
    optim = OptimizersConfig.model_validate({"sgd": {"lr": 0.1, "momentum": 0.0}})
    return optim, probe_path(
        make_net, optimizer, optim, theta0(), data(), N, STEPS_PER, batch, 7, branches
    )


def test_full_batch_sgd_oracle_policy_matches_every_measure() -> None:
    optim, path = probe("sgd", N_TRAIN)
    assert path.states.shape == (N, 15) and path.branches.shape == (3, N, 15)
    st = stats(15)
    f = policy_steps(OraclePolicy(st, optim), st, path.states, torch.zeros(2), None, None)
    cos = cosines(f, path, st.std)
    for space in ("weight", "normalized"):
        for measure in ("policy_vs_mean", "policy_vs_run", "run_vs_run"):
            np.testing.assert_allclose(cos[space][measure], 1.0, atol=1e-5)
    rnd = cosines(policy_steps(RandomPolicy(), st, path.states, torch.zeros(2), None, None),
                  path, st.std)  # fmt: skip
    assert np.abs(rnd["weight"]["policy_vs_mean"]).max() < 0.9


def test_branches_carry_the_optimizer_state() -> None:
    """Full-batch Adam: every branch repeats the path's own step exactly, which holds only when
    the branch starts from the path's moment estimates (a fresh Adam would step differently)."""
    _, path = probe("adam", N_TRAIN, branches=2)
    for b in range(2):
        torch.testing.assert_close(path.branches[b], path.run)
    assert not torch.allclose(path.run[1], path.run[0])


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "sam"])
def test_branches_of_every_optimizer_repeat_the_full_batch_path(optimizer: str) -> None:
    """SAM keeps its momentum in a base optimizer: that state must reach the branches too."""
    optim = OptimizersConfig.model_validate({"sgd": {"lr": 0.1, "momentum": 0.9}})
    path = probe_path(make_net, optimizer, optim, theta0(), data(), N, STEPS_PER, N_TRAIN, 7, 2)
    for b in range(2):
        torch.testing.assert_close(path.branches[b], path.run)


def test_minibatch_noise_lowers_the_ceiling() -> None:
    _, path = probe("sgd", 4, branches=4)
    st = stats(15)
    ceiling = cosines(torch.zeros(N, 15) + 1e-3, path, st.std)["weight"]["run_vs_run"]
    assert (ceiling < 0.9999).all() and (ceiling > 0).all()


def test_summaries_per_step_and_overall() -> None:
    s = summarize([np.array([0.0, 1.0]), np.array([1.0, np.nan]), np.array([0.5, 0.5])])
    assert s["per_step"][0] == {"median": 0.5, "q1": 0.25, "q3": 0.75}
    assert s["per_step"][1]["median"] == pytest.approx(0.75)
    assert s["overall"]["median"] == 0.5
    rows = [{sp: {m: np.ones(2) for m in ("policy_vs_mean", "policy_vs_run", "run_vs_run")}
             for sp in ("weight", "normalized")}]  # fmt: skip
    out = collect_cosines(rows)
    assert out["weight"]["run_vs_run"]["overall"]["median"] == 1.0


# ---- the check inside `lohp evaluate` ------------------------------------------------------------
def test_evaluate_reports_the_check_per_optimizer_and_split(tmp_path) -> None:
    """Full-batch runs (batch ≥ the training set): every branch takes the same step, so the
    ceiling is exactly 1 and one run equals the seed-averaged step — a known answer that goes
    through collect → train-policy → generate → evaluate's wiring."""
    import json

    from lohp_cli.config import EvaluateConfig, GenerateConfig, TrainConfig
    from lohp_cli.stages.collect import collect
    from lohp_cli.stages.evaluate import evaluate
    from lohp_cli.stages.generate import generate
    from lohp_cli.stages.train import train_policy
    from tests.conftest import tiny_config

    store = tmp_path / "s.zarr"
    collect(tiny_config(store, batch_size=1000, optimizers=("sgd", "adam")))
    pol = tmp_path / "p"
    train_policy(TrainConfig.model_validate({
        "store": str(store), "out": str(pol), "k": 2, "steps": 2, "optimizers": ["adam"],
        "policy": {"backbone": "mlp", "hidden": 8, "emb_dim": 8}}))  # fmt: skip
    gen = tmp_path / "g.zarr"
    gcfg = {"policy": str(pol), "out": str(gen), "num_tasks": 2, "samples": 1, "device": "cpu"}
    generate(GenerateConfig.model_validate(gcfg))
    rep = tmp_path / "r"
    evaluate(EvaluateConfig.model_validate({
        "generated": str(gen), "out": str(rep), "baselines": ["adam"], "latency_repeats": 1,
        "policies": {"again": str(pol)},
        "locality_tasks": 2, "locality_source_tasks": 1, "locality_branches": 2}))  # fmt: skip
    r = json.loads((rep / "report.json").read_text())
    loc = r["locality"]
    assert list(loc["optimizers"]) == ["adam"]  # the policy learned from Adam runs only
    assert loc["optimizer_steps_per_policy_step"] == 2 * 5  # k · record_every
    for split, tasks in (("target", 2), ("source", 1)):
        s = loc["optimizers"]["adam"][split]
        assert s["tasks"] == tasks
        for space in ("weight", "normalized"):
            ceiling = s[space]["run_vs_run"]["per_step"]
            assert len(ceiling) == 2  # N = T / k = 4 / 2
            assert all(p["median"] == pytest.approx(1.0, abs=1e-4) for p in ceiling)
            one, mean = s[space]["policy_vs_run"], s[space]["policy_vs_mean"]
            assert one["overall"]["median"] == pytest.approx(mean["overall"]["median"], abs=1e-4)
    # another policy of the report is checked on the same paths: the same policy, the same values
    assert loc["policies"]["again (k=2)"]["optimizers"] == loc["optimizers"]
    md = (rep / "report.md").read_text()
    assert "## Local-policy check" in md and "| generated | adam | target | 2 |" in md
    assert "| again (k=2) | adam | target | 2 |" in md
    assert (rep / "locality.png").is_file()
