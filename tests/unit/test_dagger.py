"""DAgger (``loss.dagger``): relabelled targets are the optimizer's run from the state, the term
is zero at the target, and training with it is deterministic and resumes to the same bytes."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from lohp_cli.config import OPTIMIZERS, OptimizersConfig, TrainConfig
from lohp_cli.errors import ConfigError
from lohp_cli.optim.loop import BatchSchedule
from lohp_cli.policy.context import store_task_context
from lohp_cli.policy.dagger import BatchTasks, Relabeler, permuted_labels
from lohp_cli.policy.gaussian import LoHpPolicy
from lohp_cli.policy.loss import step_nll
from lohp_cli.policy.objective import Objective
from lohp_cli.stages.collect import collect
from lohp_cli.stages.train import train_policy
from lohp_cli.store.sampler import NormStats
from lohp_cli.store.trajectory_store import TrajectoryStore
from lohp_cli.tasks.layout import ParamLayout, flat_params, load_flat
from tests.conftest import tiny_config
from tests.unit.test_train import assert_same_tensors

ADAM = OPTIMIZERS.index("adam")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny digits head store (2 tasks, Adam and SGD, 20 steps recorded every 5)."""
    path = tmp_path_factory.mktemp("dagger") / "s.zarr"
    model = {"name": "head", "extractor_steps": 20, "feature_dim": 16}
    collect(tiny_config(path, model=model, optimizers=["sgd", "adam"], tasks=3))
    return str(path)


def _relabeler(store: str, k: int = 2) -> tuple[Relabeler, NormStats, int]:
    ctx = store_task_context(TrajectoryStore.open(store, mode="r"))
    size = ctx.store.meta.param_count
    g = torch.Generator().manual_seed(0)
    stats = NormStats(0.1 * torch.randn(size, generator=g), 0.5 + torch.rand(size, generator=g),
                      torch.zeros(1), torch.ones(1), torch.ones(1))  # fmt: skip
    return Relabeler.of_store(ctx, stats, k, "cpu"), stats, size


def _adam_by_hand(
    net: nn.Module,
    theta: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    seed: int,
    warmup: int,
) -> torch.Tensor:
    """Adam (the store's default settings) from θ for ``steps`` minibatch steps, written out;
    after ``warmup`` steps from θ whose weights are then thrown away (the moments kept)."""
    load_flat(net, theta)
    c = OptimizersConfig().adam
    opt = torch.optim.Adam(net.parameters(), lr=c.lr, betas=c.betas, eps=c.eps)
    gen = torch.Generator().manual_seed(seed)

    def phase(n: int) -> None:  # a fresh epoch order from gen; one batch drawn past the last step
        schedule = BatchSchedule(y.shape[0], 16, gen)
        for t in range(n + 1):
            b = schedule.take(1)[0]
            if t == n:
                return
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[b]), y[b]).backward()
            opt.step()

    if warmup:
        phase(warmup)
        load_flat(net, theta)
    phase(steps)
    return flat_params(net) - theta


@pytest.mark.parametrize(("perm", "warmup"), [(None, 0), ([2, 0, 1, 4, 3], 0), (None, 7)])
def test_relabelled_target_is_the_optimizer_run_from_the_state(
    store: str, perm: list[int] | None, warmup: int
) -> None:
    relabel, stats, size = _relabeler(store, k=2)
    assert relabel.steps == 10 and relabel.batch_size == 16  # k · r, the store's minibatch
    tid = store_task_context(TrajectoryStore.open(store, mode="r")).family.tasks("source", 1)[0].id
    s = torch.randn(1, size, generator=torch.Generator().manual_seed(1))
    p = None if perm is None else torch.tensor([perm])
    opt, seeds = torch.tensor([ADAM]), torch.tensor([7])
    got = relabel.targets(s, BatchTasks([tid], p), opt, seeds, warmup)
    x, y = relabel.data(tid)
    if perm is not None:  # new label j is old label perm[j]
        y = torch.tensor([perm.index(int(v)) for v in y])
    net = copy.deepcopy(relabel.net)
    want = _adam_by_hand(net, stats.denormalize(s[0]), x, y, 10, 7, warmup)
    torch.testing.assert_close(got[0], want / stats.std, atol=1e-6, rtol=1e-5)
    assert got.abs().sum() > 0
    if warmup:  # warmed moments give another step than fresh ones
        assert not torch.allclose(got, relabel.targets(s, BatchTasks([tid]), opt, seeds))


def test_permuted_labels_follow_the_probe_convention() -> None:
    y = torch.tensor([0, 1, 2, 2])
    assert permuted_labels(y, None) is y
    assert permuted_labels(y, torch.tensor([2, 0, 1])).tolist() == [1, 2, 0, 0]


def test_step_nll_known_values() -> None:
    f = torch.randn(3, 5)
    assert float(step_nll(f, f.clone(), torch.tensor(0.3))) == 0.0
    # ||0 − 1||² = P per row: P / (2 σ² P) = 1 / (2 · 0.25) = 2
    value = step_nll(torch.zeros(3, 5), torch.ones(3, 5), torch.tensor(0.5))
    assert float(value) == pytest.approx(2)


class _Echo:
    """A relabeler whose target is the policy's own mean step (a stationary policy): the term
    must then be zero; records the states it was asked about."""

    def __init__(self, policy: LoHpPolicy, cond: torch.Tensor) -> None:
        self.policy, self.cond, self.seen = policy, cond, []
        self.steps = 10  # k · r

    def targets(
        self, s: torch.Tensor, tasks: BatchTasks, opt: torch.Tensor, seeds: torch.Tensor, warm: int
    ) -> torch.Tensor:
        self.seen.append((s.clone(), list(tasks.task_ids), seeds.clone()))
        zero = torch.zeros(s.shape[0], dtype=torch.long)
        return self.policy.means(s, zero, self.cond[: s.shape[0]])[0].detach()


def _objective(dagger: float) -> tuple[Objective, LoHpPolicy, torch.Tensor, torch.Tensor]:
    cfg = TrainConfig.model_validate(
        {"store": "x", "out": "y", "policy": {"backbone": "mlp", "hidden": 16, "emb_dim": 8,
         "time_embedding": False}, "loss": {"dagger": dagger, "dagger_states": 2}}
    )  # fmt: skip
    torch.manual_seed(0)
    n, size = 4, 6
    policy = LoHpPolicy(size, 3, n, torch.full((n,), 0.2), cfg.policy)
    x = torch.randn(5, n + 1, size)
    cond = torch.randn(1, 3).expand(5, -1)  # one task condition: the rows are interchangeable
    return Objective(policy, cfg, n), policy, x, cond


def test_the_term_is_zero_at_the_target_and_deterministic() -> None:
    obj, policy, x, cond = _objective(1.0)
    obj.relabel = _Echo(policy, cond)  # type: ignore[assignment]
    tasks = BatchTasks([f"t{i}" for i in range(5)])
    opt = torch.full((5,), ADAM)
    runs = []
    for _ in range(2):
        obj.gen = torch.Generator().manual_seed(11)
        loss, terms = obj(x, cond, opt, None, tasks)
        runs.append((float(loss.detach()), terms))
    assert runs[0] == runs[1]
    assert runs[0][1]["dagger"] == 0.0
    (s1, ids1, seeds1), (s2, ids2, seeds2) = obj.relabel.seen  # type: ignore[attr-defined]
    assert s1.shape == (2, 6) and torch.equal(s1, s2) and ids1 == ids2
    assert torch.equal(seeds1, seeds2)
    # without tasks (the validation loss) or at weight 0 there is no term, and nothing changes
    obj.gen = torch.Generator().manual_seed(11)
    _, no_tasks = obj(x, cond, opt, None, None)
    off, _, _, _ = _objective(0.0)
    off.gen = torch.Generator().manual_seed(11)
    _, plain = off(x, cond, opt, None, tasks)
    assert "dagger" not in no_tasks and "dagger" not in plain
    assert no_tasks["loss"] == plain["loss"]


def test_the_term_pulls_the_mean_step_toward_the_target() -> None:
    obj, policy, x, cond = _objective(1.0)

    class Zero(_Echo):
        def targets(self, s, tasks, opt, seeds, warm):  # type: ignore[no-untyped-def]
            return torch.zeros_like(s) + 1.0

    obj.relabel = Zero(policy, cond)  # type: ignore[assignment]
    obj.gen = torch.Generator().manual_seed(3)
    dag = obj._dagger(policy, x, cond, torch.full((5,), ADAM), None, BatchTasks(["t"] * 5))
    dag.backward()
    grads = [p.grad for p in policy.parameters() if p.grad is not None]
    assert dag > 0 and any(g.abs().sum() > 0 for g in grads)


def _cfg(store: str, out: Path, **over: Any) -> TrainConfig:
    data = {"store": store, "out": str(out), "k": 2, "steps": 4, "batch_size": 4,
            "device": "cpu", "log_every": 1, "checkpoint_every": 2, "optimizers": ["adam"],
            "policy": {"backbone": "mlp", "hidden": 16, "emb_dim": 8},
            "loss": {"dagger": 10.0, "dagger_states": 2}, **over}  # fmt: skip
    return TrainConfig.model_validate(data)


def test_training_with_dagger_resumes_to_the_same_weights(store: str, tmp_path: Path) -> None:
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train_policy(_cfg(store, whole))
    train_policy(_cfg(store, parts, steps=2))
    train_policy(_cfg(store, parts))
    assert_same_tensors(whole / "model.safetensors", parts / "model.safetensors")
    lines = (whole / "metrics.jsonl").read_text().splitlines()
    assert all('"dagger"' in ln for ln in lines if '"step"' in ln)


def test_dagger_is_refused_for_methods_without_steps(store: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="loss.dagger"):
        train_policy(_cfg(store, tmp_path / "h", method="hypernetwork"))


def test_layout_of_head_store(store: str) -> None:
    relabel, _, size = _relabeler(store)
    assert ParamLayout.of(relabel.net).size == size


def test_dagger_with_the_gradient_input(store: str, tmp_path: Path) -> None:
    """A state-aware policy relabels with its rows' support sets (the probe follows the rows)."""
    pol = {"backbone": "coordinate", "state_input": "grad", "coordinate_hidden": 8, "emb_dim": 8}
    train_policy(_cfg(store, tmp_path / "g", steps=2, policy=pol))
    lines = (tmp_path / "g" / "metrics.jsonl").read_text().splitlines()
    assert [ln for ln in lines if '"dagger"' in ln]
