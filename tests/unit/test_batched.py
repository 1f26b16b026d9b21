"""The batched trainer (lohp_cli/optim/batched.py) against the one-run path (``train_loop``).

R runs stepped together must give each run the weights, losses and accuracies its own
``train_loop`` gives, to float tolerance (stacked matmuls and reductions round differently), and
a run's numbers must not depend on which runs share its batch (what makes a resumed collect exact).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from lohp_cli.config import OptimizersConfig
from lohp_cli.optim import build_optimizer
from lohp_cli.optim.batched import BatchSchedule, batchable, train_batched
from lohp_cli.optim.loop import train_loop
from lohp_cli.tasks.layout import flat_params
from lohp_cli.tasks.lora import LoRALinear
from lohp_cli.tasks.models import MLP, SmallCNN

STEPS, EVERY, BATCH = 12, 3, 8
OPTIMIZERS = {
    "sgd": ("sgd", {"sgd": {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}}),
    "adam": ("adam", {"adam": {"weight_decay": 1e-3}}),
    "adamw": ("adam", {"adam": {"decoupled": True, "weight_decay": 0.05}}),
    "sam-sgd": ("sam", {"sam": {"base": "sgd", "rho": 0.1}}),
    "sam-adam-adaptive": ("sam", {"sam": {"base": "adam", "adaptive": True, "rho": 0.5}}),
}
MODELS = {
    "head": (lambda: nn.Linear(6, 3), (6,)),
    "mlp": (lambda: MLP((1, 4, 4), 5, 3), (1, 4, 4)),
}


def tasks(shape: tuple[int, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Three tasks of different data (and sizes: 40, 40, 29 examples)."""
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(n, *shape, generator=g), torch.randint(0, 3, (n,), generator=g))
        for n in (40, 40, 29)
    ]


def one_run(make: Any, name: str, cfg: OptimizersConfig, seed: int, x, y, gen_seed: int):
    """``train_loop`` of one run: its records [(θ [P], loss, acc)] and final θ."""
    torch.manual_seed(seed)
    model = make()
    opt = build_optimizer(name, list(model.parameters()), cfg)
    records: list[tuple[torch.Tensor, float, float]] = []
    gen = torch.Generator().manual_seed(gen_seed)
    train_loop(model, opt, x, y, STEPS, EVERY, BATCH, gen,
               lambda th, lo, ac: records.append((th.clone(), float(lo), float(ac))))  # fmt: skip
    return records, flat_params(model)


def batched(make: Any, name: str, cfg: OptimizersConfig, seeds, data, gen_seeds, device="cpu"):
    """``train_batched`` of the runs: records [(θ [R, P], loss [R], acc [R])] and final θ."""
    starts = []
    for s in seeds:
        torch.manual_seed(s)
        starts.append(flat_params(make()))
    records: list[tuple[torch.Tensor, ...]] = []
    final = train_batched(
        make().to(device), name, cfg, torch.stack(starts).to(device),
        [x.to(device) for x, _ in data], [y.to(device) for _, y in data],
        STEPS, EVERY, BATCH, [torch.Generator().manual_seed(s) for s in gen_seeds],
        lambda th, lo, ac: records.append((th.cpu(), lo.cpu(), ac.cpu())), block=5,
    )  # fmt: skip
    return records, final.cpu()


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_batched_runs_equal_their_one_run_loops(model: str, opt: str) -> None:
    make, shape = MODELS[model]
    name, over = OPTIMIZERS[opt]
    cfg = OptimizersConfig.model_validate(over)
    data = tasks(shape)
    which = [0, 1, 0, 2, 1]  # runs of different tasks (and task sizes) in one batch
    seeds, gen_seeds = [11, 12, 13, 14, 15], [21, 22, 23, 24, 25]
    records, final = batched(make, name, cfg, seeds, [data[i] for i in which], gen_seeds)
    assert len(records) == STEPS // EVERY + 1
    for r, t in enumerate(which):
        want, want_final = one_run(make, name, cfg, seeds[r], *data[t], gen_seeds[r])
        for (th, lo, ac), (wth, wlo, wac) in zip(records, want, strict=True):
            torch.testing.assert_close(th[r], wth, rtol=0, atol=1e-5)
            assert float(lo[r]) == pytest.approx(wlo, abs=1e-5) and float(ac[r]) == wac
        torch.testing.assert_close(final[r], want_final, rtol=0, atol=1e-5)
        assert not torch.equal(final[r], records[0][0][r])  # it trained


@pytest.mark.parametrize("opt", ["adam", "sam-adam-adaptive"])
def test_a_run_does_not_depend_on_the_runs_beside_it(opt: str) -> None:
    make, shape = MODELS["mlp"]
    name, over = OPTIMIZERS[opt]
    cfg = OptimizersConfig.model_validate(over)
    data = tasks(shape)
    group, group_final = batched(make, name, cfg, [1, 2, 3], [data[0], data[1], data[2]], [4, 5, 6])
    alone, alone_final = batched(make, name, cfg, [2], [data[1]], [5])
    assert torch.equal(group_final[1], alone_final[0])  # bit for bit: a resumed run is the same
    for g, a in zip(group, alone, strict=True):
        assert all(torch.equal(gi[1], ai[0]) for gi, ai in zip(g, a, strict=True))


@pytest.mark.parametrize(("n", "batch"), [(10, 4), (12, 4), (3, 4)])
def test_batch_schedule_draws_train_loops_batches(n: int, batch: int) -> None:
    """A fresh permutation whenever the next batch would not fit; all n when batch > n."""
    gen = torch.Generator().manual_seed(7)
    perm, pos, want = torch.randperm(n, generator=gen), 0, []
    for _ in range(9):
        if pos + batch > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        want.append(perm[pos : pos + batch])
        pos += batch
    sched = BatchSchedule(n, batch, torch.Generator().manual_seed(7))
    got = torch.cat([sched.take(2), sched.take(5), sched.take(2)])  # [9, min(n, batch)]
    assert torch.equal(got, torch.stack(want))


def test_models_with_buffers_or_frozen_weights_are_not_batched() -> None:
    assert batchable(nn.Linear(3, 2)) and batchable(MLP((1, 4, 4), 5, 3))
    assert not batchable(SmallCNN(1, 8, 3))  # BatchNorm running statistics
    frozen_base = LoRALinear(nn.Linear(4, 4).requires_grad_(False), 2, 4.0)
    assert not batchable(frozen_base)
    with pytest.raises(ValueError, match="cannot be batched"):
        x, y = torch.zeros(4, 1, 4, 4), torch.zeros(4, dtype=torch.long)
        train_batched(SmallCNN(1, 8, 3), "sgd", OptimizersConfig(), torch.zeros(1, 5), [x], [y],
                      1, 1, 1, [torch.Generator()])  # fmt: skip


@pytest.mark.gpu
@pytest.mark.parametrize("opt", ["sgd", "adam", "sam-sgd"])
def test_batched_on_cuda_equals_the_one_run_path_on_cpu(opt: str) -> None:
    make, shape = MODELS["mlp"]
    name, over = OPTIMIZERS[opt]
    cfg = OptimizersConfig.model_validate(over)
    data = tasks(shape)
    records, final = batched(make, name, cfg, [1, 2], [data[0], data[2]], [3, 4], device="cuda")
    for r, t in enumerate([0, 2]):
        want, want_final = one_run(make, name, cfg, [1, 2][r], *data[t], [3, 4][r])
        for (th, lo, _), (wth, wlo, _) in zip(records, want, strict=True):
            torch.testing.assert_close(th[r], wth, rtol=0, atol=1e-4)
            assert float(lo[r]) == pytest.approx(wlo, abs=1e-4)
        torch.testing.assert_close(final[r], want_final, rtol=0, atol=1e-4)
