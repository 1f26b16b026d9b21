"""The coordinate-wise LSTM optimizer and the analytical optimizers it is compared with.

Every optimizer here has the same minimal interface (as in learned_optimization's
``optimizers/base.py``): ``step(grad [B, P], state) -> (update [B, P], state)``, with ``state`` a
dict of tensors; θ_{t+1} = θ_t + update. The LSTM shares its weights across coordinates: each of
the B·P coordinates has its own hidden state, so one trained optimizer applies to any size P.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from lohp_cli.l2o.problems import Optimizee

State = dict[str, torch.Tensor]
StepFn = Callable[[torch.Tensor, State], tuple[torch.Tensor, State]]


def dm_preprocess(grad: torch.Tensor, p: float = 10.0) -> torch.Tensor:
    """Andrychowicz et al.'s gradient preprocessing: ``[N] -> [N, 2]``.

    (log|g| / p, sign g) when |g| ≥ e^−p, else (−1, e^p g): scale-free inputs for the LSTM.
    """
    mag = grad.abs()
    big = mag >= math.exp(-p)
    first = torch.where(big, torch.log(mag.clamp_min(1e-30)) / p, torch.full_like(grad, -1.0))
    second = torch.where(big, torch.sign(grad), math.exp(p) * grad)
    return torch.stack([first, second], -1)


class LSTMOptimizer(nn.Module):
    """Coordinate-wise stacked LSTM: a preprocessed gradient in, an update out, per coordinate.

    ``arch="dm"``: inputs :func:`dm_preprocess` of g, update = out_scale · W h (L2O-DM).
    ``arch="rnnprop"``: inputs (m̂/√v̂, g/√v̂) with bias-corrected moments (β = 0.95, as RNNProp),
    update = out_scale · tanh(W h).
    """

    def __init__(
        self, arch: str = "dm", hidden: int = 20, layers: int = 2, out_scale: float = 0.1
    ) -> None:
        super().__init__()
        self.arch, self.hidden, self.out_scale = arch, hidden, out_scale
        self.beta1 = self.beta2 = 0.95
        self.cells = nn.ModuleList(
            [nn.LSTMCell(2 if i == 0 else hidden, hidden) for i in range(layers)]
        )
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.head.weight.mul_(0.1)
            self.head.bias.zero_()

    def init_state(self, batch: int, size: int, device: str | torch.device = "cpu") -> State:
        """Zero hidden/cell states ``[B·P, H]`` per layer, zero moments ``[B·P]``, t = 0."""
        n = batch * size
        st: State = {"t": torch.zeros((), device=device)}
        for i in range(len(self.cells)):
            st[f"h{i}"] = torch.zeros(n, self.hidden, device=device)
            st[f"c{i}"] = torch.zeros(n, self.hidden, device=device)
        if self.arch == "rnnprop":
            st["m"] = torch.zeros(n, device=device)
            st["v"] = torch.zeros(n, device=device)
        return st

    def forward(self, grad: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One step: ``grad [B, P]`` -> ``(update [B, P], new state)``."""
        shape = grad.shape
        g = grad.reshape(-1)  # [N]
        new: State = {"t": state["t"] + 1}
        if self.arch == "rnnprop":
            t = new["t"]
            m = self.beta1 * state["m"] + (1 - self.beta1) * g
            v = self.beta2 * state["v"] + (1 - self.beta2) * g * g
            m_hat, v_hat = m / (1 - self.beta1**t), v / (1 - self.beta2**t)
            denom = v_hat.sqrt() + 1e-8
            x = torch.stack([m_hat / denom, g / denom], -1)  # [N, 2]
            new["m"], new["v"] = m, v
        else:
            x = dm_preprocess(g)  # [N, 2]
        for i, cell in enumerate(self.cells):
            h, c = cell(x, (state[f"h{i}"], state[f"c{i}"]))  # [N, H] each
            new[f"h{i}"], new[f"c{i}"] = h, c
            x = h
        out = self.head(x)[:, 0]  # [N]
        if self.arch == "rnnprop":
            out = torch.tanh(out)
        return (self.out_scale * out).reshape(shape), new

    def step(self, grad: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        return self(grad, state)


def detach_state(state: State) -> State:
    """Cut the graph at a truncation boundary."""
    return {k: v.detach() for k, v in state.items()}


def sgd_step(lr: float, momentum: float = 0.9) -> tuple[StepFn, Callable[[int, int], State]]:
    """Heavy-ball SGD as a step function and its state initialiser."""

    def step(grad: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        buf = momentum * state["buf"] + grad
        return -lr * buf, {"buf": buf}

    return step, lambda b, p: {"buf": torch.zeros(b, p)}


def adam_step(
    lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
) -> tuple[StepFn, Callable[[int, int], State]]:
    """Adam as a step function and its state initialiser (same maths as ``torch.optim.Adam``)."""
    b1, b2 = betas

    def step(grad: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        t = state["t"] + 1
        m = b1 * state["m"] + (1 - b1) * grad
        v = b2 * state["v"] + (1 - b2) * grad * grad
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        return -lr * m_hat / (v_hat.sqrt() + eps), {"t": t, "m": m, "v": v}

    return step, lambda b, p: {"t": torch.zeros(()), "m": torch.zeros(b, p), "v": torch.zeros(b, p)}


def analytical(name: str, lr: float) -> tuple[StepFn, Callable[[int, int], State]]:
    if name == "adam":
        return adam_step(lr)
    if name == "sgd":
        return sgd_step(lr)
    raise ValueError(f"no analytical optimizer {name!r}")


def run_trajectory(
    step: StepFn,
    state: State,
    problem: Optimizee,
    steps: int,
    theta: torch.Tensor | None = None,
    keep_states: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run an optimizer without meta-gradients.

    Returns ``(losses [steps+1, B], states [steps+1, B, P] or None)``; losses[t] is the training
    loss at θ_t on minibatch t. Non-finite parameters stay non-finite (callers judge them).
    """
    theta = (problem.init() if theta is None else theta).detach()
    state = {k: v.to(theta.device) for k, v in state.items()}
    losses, states = [], [theta] if keep_states else None
    for t in range(steps + 1):
        th = theta.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = problem.loss(th, t)  # [B]
            grad = torch.autograd.grad(loss.sum(), th)[0] if t < steps else None
        losses.append(loss.detach())
        if grad is None:
            break
        with torch.no_grad():
            update, state = step(grad, state)
            theta = theta + update
        if states is not None:
            states.append(theta)
    return torch.stack(losses), (torch.stack(states) if states is not None else None)


def tune_lr(
    family: object,
    name: str,
    grid: tuple[float, ...],
    steps: int,
    tasks: int,
    instances: int,
    seed: int,
) -> tuple[float, dict[str, float]]:
    """Pick ``name``'s learning rate from ``grid`` on source tasks (split ``tune``).

    The score of a rate is the mean over problems and over the last tenth of the steps of
    log f(θ_t) − log f(θ_0) (non-finite runs score +inf): the tail mean, not the last value, because
    image problems measure f on one minibatch per step, and one lucky minibatch once picked an
    Adam rate of 1.0 whose held-out loss was 18× SGD's. Returns ``(best lr, {lr: score})``.
    """
    scores: dict[str, float] = {}
    for lr in grid:
        vals = []
        for i in range(tasks):
            problem = family.sample("tune", i, seed, instances)  # type: ignore[attr-defined]
            step, init = analytical(name, lr)
            losses, _ = run_trajectory(step, init(problem.batch, problem.size), problem, steps)
            tail = losses[-max(1, steps // 10) :]  # [L, B]
            ratio = tail.abs().clamp_min(1e-30) / losses[0].abs().clamp_min(1e-30)
            vals.append(ratio.log().mean(0))
        v = torch.cat(vals)
        scores[repr(lr)] = float(v.mean()) if bool(torch.isfinite(v).all()) else float("inf")
    best = min(grid, key=lambda lr: scores[repr(lr)])
    return best, scores
