"""The meta-learning algorithms of the meta-learned start (lohp_cli/methods/meta_start.py) on
problems with known answers: a family of quadratics whose tasks' optima are known, and a linear
classifier whose query gradient is written out by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lohp_cli.errors import ConfigError
from lohp_cli.methods.meta_start import meta_train, query_gradients, reptile_update

OPTIMA = torch.tensor([[-1.0, 4.0], [0.5, 0.0], [3.0, -2.0], [1.5, 1.0], [-2.0, 3.0]])  # [Q, P]


def sgd_adapt(lr: float = 0.1, steps: int = 5):
    """The inner loop on task q, L_q(θ) = ½‖θ − a_q‖²: ``steps`` SGD steps in closed form,
    θ' = a_q + (1 − lr)^steps (θ − a_q)."""

    def adapt(theta: torch.Tensor, idx: list[int], _step: int) -> torch.Tensor:
        a = OPTIMA[idx]  # [B, P]
        return a + (1 - lr) ** steps * (theta - a)

    return adapt


def quadratic_query_grad(adapted: torch.Tensor, idx: list[int]) -> torch.Tensor:
    """∇L_q at θ'_q: θ'_q − a_q ``[B, P]``."""
    return adapted - OPTIMA[idx]


def test_reptile_update_moves_toward_the_mean_adapted_weights() -> None:
    theta = torch.tensor([0.0, 2.0])
    adapted = torch.tensor([[1.0, 2.0], [3.0, 6.0]])  # mean [2, 4]
    assert reptile_update(theta, adapted, 0.5).tolist() == [1.0, 3.0]
    assert reptile_update(theta, adapted, 1.0).tolist() == [2.0, 4.0]


@pytest.mark.parametrize("batch", [5, 2])
def test_reptile_on_quadratics_lands_at_the_mean_of_the_task_optima(batch: int) -> None:
    """Every task pulls θ toward its optimum by the same fraction c = 1 − (1 − lr)^k, so the
    expected step is ε c (ā − θ): the fixed point is the mean optimum ā. With all tasks in every
    batch the iterate reaches it exactly (up to the annealed tail); with random batches of 2 it
    ends near it."""
    theta0 = torch.tensor([10.0, -10.0])
    gen = torch.Generator().manual_seed(0)
    got = meta_train("reptile", theta0, 5, sgd_adapt(), quadratic_query_grad, 200, batch, 1.0, gen)
    tol = 1e-4 if batch == 5 else 0.15
    torch.testing.assert_close(got, OPTIMA.mean(0), atol=tol, rtol=0)


def test_fomaml_on_quadratics_lands_at_the_mean_of_the_task_optima() -> None:
    """The first-order outer gradient mean_q (θ'_q − a_q) = (1 − lr)^k (θ − ā) vanishes at ā."""
    theta0 = torch.tensor([2.0, -1.0])
    gen = torch.Generator().manual_seed(0)
    got = meta_train("fomaml", theta0, 5, sgd_adapt(), quadratic_query_grad, 1000, 5, 0.02, gen)
    torch.testing.assert_close(got, OPTIMA.mean(0), atol=0.02, rtol=0)


def _linear() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(4, 3)


def test_fomaml_outer_gradient_is_the_query_gradient_at_the_adapted_weights() -> None:
    """For a linear classifier, ∇ of the mean cross-entropy is dW = (p − Y)ᵀ X / n and
    db = mean(p − Y), p = softmax(X Wᵀ + b), Y the one-hot labels: by hand, at each task's
    adapted weights (layout: weight [3, 4] then bias [3])."""
    net = _linear()
    g = torch.Generator().manual_seed(1)
    adapted = torch.randn(2, 15, generator=g)  # [B, P]
    queries = [(torch.randn(6, 4, generator=g), torch.tensor([0, 1, 2, 0, 1, 2])) for _ in range(2)]
    got = query_gradients(net, adapted, queries)
    assert got.shape == (2, 15)
    for b, (x, y) in enumerate(queries):
        w, bias = adapted[b, :12].view(3, 4), adapted[b, 12:]
        d = torch.softmax(x @ w.T + bias, 1) - nn.functional.one_hot(y, 3).float()  # [n, 3]
        want = torch.cat([(d.T @ x / len(y)).reshape(-1), d.mean(0)])
        torch.testing.assert_close(got[b], want)


def test_fomaml_takes_an_adam_step_on_the_mean_query_gradient() -> None:
    """One meta step: Adam's first step is lr · g / (|g| + eps) per coordinate (bias-corrected),
    g the mean over the batch of the query gradients at the adapted weights."""
    net, lr = _linear(), 0.01
    g = torch.Generator().manual_seed(2)
    theta0 = torch.randn(15, generator=g)
    fixed = torch.randn(3, 15, generator=g)  # what adapt returns for tasks 0, 1, 2
    queries = [(torch.randn(5, 4, generator=g), torch.randint(0, 3, (5,), generator=g))
               for _ in range(3)]  # fmt: skip
    seen: list[list[int]] = []

    def adapt(theta: torch.Tensor, idx: list[int], _step: int) -> torch.Tensor:
        torch.testing.assert_close(theta, theta0)
        seen.append(idx)
        return fixed[idx]

    def grads(adapted: torch.Tensor, idx: list[int]) -> torch.Tensor:
        return query_gradients(net, adapted, [queries[q] for q in idx])

    got = meta_train("fomaml", theta0, 3, adapt, grads, 1, 3, lr, torch.Generator().manual_seed(0))
    assert sorted(seen[0]) == [0, 1, 2]  # a batch of distinct tasks
    mean_grad = query_gradients(net, fixed, queries).mean(0)
    want = theta0 - lr * mean_grad / (mean_grad.abs() + 1e-8)
    torch.testing.assert_close(got, want)


def test_batches_hold_distinct_tasks_and_are_seeded() -> None:
    draws: list[list[int]] = []

    def adapt(theta: torch.Tensor, idx: list[int], _step: int) -> torch.Tensor:
        draws.append(idx)
        return theta.expand(len(idx), -1)

    for _ in range(2):
        meta_train("reptile", torch.zeros(1), 6, adapt, quadratic_query_grad, 20, 4, 1.0,
                   torch.Generator().manual_seed(3))  # fmt: skip
    assert all(len(set(d)) == 4 for d in draws) and draws[:20] == draws[20:]
    draws.clear()
    meta_train("reptile", torch.zeros(1), 2, adapt, quadratic_query_grad, 3, 5, 1.0,
               torch.Generator().manual_seed(3))  # fmt: skip
    assert all(sorted(d) == [0, 1] for d in draws)  # a batch larger than the tasks: all of them


def test_an_unknown_algorithm_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="reptile, fomaml"):
        meta_train("maml", torch.zeros(1), 1, sgd_adapt(), quadratic_query_grad, 1, 1, 1.0,
                   torch.Generator())  # fmt: skip
