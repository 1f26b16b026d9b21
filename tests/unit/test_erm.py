"""The ERM baseline (lohp_cli/methods/erm.py): Adam on the pooled source domains of each task."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lohp_cli.config import EvaluateConfig, ModelConfig, OptimizersConfig, TaskConfig
from lohp_cli.errors import ConfigError
from lohp_cli.methods import registry
from lohp_cli.methods.erm import ERMMethod, pooled_source_data
from lohp_cli.methods.optimizer import run_optimizer
from lohp_cli.policy.context import TaskContext
from lohp_cli.runtime import derive_seed
from lohp_cli.tasks import make_family
from lohp_cli.tasks.layout import flat_params
from lohp_cli.tasks.models import build_target
from tests.unit.test_datasets import write_fmnist
from tests.unit.test_rotated import config, fake_data

MODEL = ModelConfig(name="mlp", hidden=4)
TASK = "r75_c2_0_5"


def eval_context(family_cfg: TaskConfig, tasks: tuple[str, ...] = (TASK,)) -> SimpleNamespace:
    """What ERM reads of ``evaluate``'s context, for an ``mlp`` target on ``family_cfg``."""
    fam = make_family(family_cfg)
    task = TaskContext(fam, MODEL, {}, None)  # type: ignore[arg-type]
    return SimpleNamespace(
        task=task, data={t: task.task_data(t) for t in tasks}, tasks=list(tasks), device="cpu",
        steps_full=6, batch_size=8, optim=OptimizersConfig(), seed=3, latency_repeats=4,
    )  # fmt: skip


def starts(ctx: SimpleNamespace, n: int = 2) -> SimpleNamespace:
    torch.manual_seed(0)
    fam = ctx.task.family
    theta0 = torch.stack([flat_params(build_target(MODEL, fam.input_shape, fam.ways)) for _ in
                          range(n)])  # fmt: skip
    return SimpleNamespace(theta0=theta0)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("fmnist")
    fake_data(d)
    return d


def test_pooled_data_is_the_task_in_every_source_domain(root: Path) -> None:
    ctx = eval_context(config(root))
    pooled = pooled_source_data(ctx, TASK)  # type: ignore[arg-type]
    parts = [ctx.task.task_data(f"r{d}_c2_0_5") for d in (0, 15, 30, 45, 60)]
    assert torch.equal(pooled.x_train, torch.cat([p.x_train for p in parts]))
    assert torch.equal(pooled.y_train, torch.cat([p.y_train for p in parts]))
    assert len(pooled.y_train) == 5 * 3 * 5  # source domains × ways × train_per_class
    own = ctx.data[TASK]  # scored on the held-out task's own test split
    assert torch.equal(pooled.x_test, own.x_test) and torch.equal(pooled.y_test, own.y_test)


def test_weights_are_adam_on_the_pooled_data_from_each_start(root: Path) -> None:
    ctx = eval_context(config(root))
    m = ERMMethod()
    m.prepare(ctx)  # type: ignore[arg-type]
    assert m.steps == 6 and m.name == "erm" and m.kind == "erm"
    s = starts(ctx)
    w = m.weights(TASK, s)  # type: ignore[arg-type]
    pooled = pooled_source_data(ctx, TASK)  # type: ignore[arg-type]
    for j in range(2):
        seed = derive_seed(3, "erm", TASK, j)
        net = run_optimizer(ctx.task, "adam", s.theta0[j], pooled, 6, 8, ctx.optim, seed, "cpu")
        torch.testing.assert_close(w[j], flat_params(net), rtol=0, atol=1e-5)  # batched starts
    assert not torch.equal(w, s.theta0)
    ctx.starts = lambda _t: s
    one = m.timer(TASK)  # one start's run on the pooled data, as the latency times it
    assert isinstance(one(), torch.nn.Module)


def test_erm_never_reads_the_held_out_domain(tmp_path: Path) -> None:
    """Known answer: inverting every held-out-domain image leaves ERM's weights unchanged."""
    arrays = fake_data(tmp_path / "a")
    held = make_family(config(tmp_path / "a")).domain_of("train") == 75
    poisoned = {**arrays, "train_x": arrays["train_x"].copy()}
    poisoned["train_x"][held] = 255 - poisoned["train_x"][held]
    write_fmnist(tmp_path / "b", poisoned)
    out = []
    for root in (tmp_path / "a", tmp_path / "b"):
        ctx = eval_context(config(root))
        m = ERMMethod()
        m.prepare(ctx)  # type: ignore[arg-type]
        out.append(m.weights(TASK, starts(ctx)))  # type: ignore[arg-type]
        out.append(ctx.data[TASK].x_train)  # the target task's own training split
    assert torch.equal(out[0], out[2])
    assert not torch.equal(out[1], out[3])  # which the per-task optimizers do train on


def test_erm_refuses_a_family_without_domains() -> None:
    digits = make_family(TaskConfig(family="digits", train_per_class=10, support_per_class=3))
    tid = digits.tasks("target", 1)[0].id
    ctx = eval_context(digits.cfg, (tid,))
    with pytest.raises(ConfigError, match="'digits' has no domains"):
        ERMMethod().prepare(ctx)  # type: ignore[arg-type]


def test_erm_is_a_registered_baseline() -> None:
    cfg = EvaluateConfig(baselines=("adam", "erm"))
    assert "erm" in registry.names() and not registry.is_stepped("erm")
    (m,) = registry.baseline("erm", cfg, (200, 20))
    assert isinstance(m, ERMMethod) and cfg.baselines == ("adam", "erm")
