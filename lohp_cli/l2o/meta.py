"""Meta-training pieces: unrolls, the meta-loss, imitation, flatness terms and M-L2O adaptation.

Each piece is a small function of tensors so that it can be tested on its own; the loop that
strings them together (episodes, checkpoints) is :mod:`lohp_cli.l2o.train`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import functional_call

from lohp_cli.errors import DataError
from lohp_cli.l2o.config import L2OConfig
from lohp_cli.l2o.flatness import (
    hutchinson_trace,
    langevin_mean,
    local_entropy_penalty,
    top_eigenvalue,
)
from lohp_cli.l2o.optimizer import LSTMOptimizer, State, StepFn, detach_state
from lohp_cli.l2o.problems import Optimizee


@dataclass
class Unroll:
    """One truncated unroll: ``theta [B, P]`` and ``state`` at its end (still in the graph) and
    the losses ``[T, B]`` at θ_{t0+1} … θ_{t0+T} (in the graph)."""

    theta: torch.Tensor
    state: State
    losses: torch.Tensor


def unroll(
    step: StepFn,
    problem: Optimizee,
    theta: torch.Tensor,
    state: State,
    start: int,
    length: int,
    second_order: bool = False,
) -> Unroll:
    """Run ``length`` optimizer steps from θ_start, keeping the graph for BPTT.

    The gradient fed to the optimizer at θ_t is ∇f(θ_t) on minibatch t. With ``second_order``
    False it is a constant (L2O-DM drops the second-derivative terms); with True the meta-gradient
    also flows through it (exact BPTT, needed to match finite differences).
    """
    if not theta.requires_grad:
        theta = theta.detach().requires_grad_(True)
    loss = problem.loss(theta, start)  # [B]
    losses = []
    for t in range(start, start + length):
        (grad,) = torch.autograd.grad(
            loss.sum(), theta, create_graph=second_order, retain_graph=True
        )
        update, state = step(grad if second_order else grad.detach(), state)
        theta = theta + update  # [B, P]
        loss = problem.loss(theta, t + 1)  # [B]
        losses.append(loss)
    return Unroll(theta, state, torch.stack(losses))


def meta_loss(
    losses: torch.Tensor, initial: torch.Tensor, objective: str = "ratio"
) -> torch.Tensor:
    """Mean over steps and problems of f(θ_t) / f(θ_0) (``ratio``: a scale-free L2O-DM
    objective) or of log(f(θ_t) / f(θ_0)) (``log``).

    ``losses [T, B]``, ``initial [B]`` (constants). The ratio objective weighs a step by its loss,
    so once f has dropped a few decades the late steps contribute almost nothing; the log
    objective gives every decade the same weight (its gradient is ∇f/f).
    """
    ratio = losses / initial.detach().abs().clamp_min(1e-12)
    if objective == "log":
        return ratio.clamp_min(1e-30).log().mean()
    return ratio.mean()


def imitation_loss(
    step: StepFn,
    problem: Optimizee,
    states: torch.Tensor,
    state: State,
    first_step: int = 0,
    record_every: int = 1,
) -> tuple[torch.Tensor, State]:
    """Off-policy imitation of an analytical optimizer's recorded trajectory.

    ``states [L+1, B, P]``: teacher states θ_j (recorded every ``record_every`` optimizer steps,
    the first at optimizer step ``first_step``). The learned optimizer is teacher-forced along
    them: at θ_j it sees ∇f(θ_j) and its update u_j is compared with the teacher's mean per-step
    update Δ_j = (θ_{j+1} − θ_j) / record_every. Returns ``(Σ‖u − Δ‖² / Σ‖Δ‖², state)``: zero
    exactly when the learned optimizer reproduces the teacher's updates.
    """
    num = torch.zeros((), device=states.device)
    den = torch.zeros((), device=states.device)
    for j in range(states.shape[0] - 1):
        th = states[j].detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(problem.loss(th, first_step + j * record_every).sum(), th)
        update, state = step(grad, state)
        target = (states[j + 1] - states[j]) / record_every  # [B, P]
        num = num + ((update - target) ** 2).sum()
        den = den + (target**2).sum()
    return num / den.clamp_min(1e-20), state


def flatness_terms(
    problem: Optimizee,
    theta: torch.Tensor,
    step_index: int,
    cfg: L2OConfig,
    gen: torch.Generator,
) -> dict[str, torch.Tensor]:
    """The weighted l2o-flat terms at ``theta [B, P]`` (scalars, differentiable through θ).

    ``hessian``: tr(H)/P (Hutchinson) or λ_max (power iteration), mean over problems;
    ``entropy``: γ/2 ‖θ − μ‖²/P with μ the Langevin mean, mean over problems.
    """
    out: dict[str, torch.Tensor] = {}

    def loss_fn(th: torch.Tensor) -> torch.Tensor:
        return problem.loss(th, step_index)

    size = theta.shape[-1]
    if cfg.hessian_weight > 0:
        if cfg.hessian == "trace":
            h = hutchinson_trace(loss_fn, theta, cfg.hessian_probes, gen) / size
        else:
            h = top_eigenvalue(loss_fn, theta, cfg.power_iters, gen)
        out["hessian"] = h.mean()
    if cfg.entropy_weight > 0:
        c = cfg
        mu = langevin_mean(
            loss_fn, theta, c.langevin_steps, c.langevin_lr, c.langevin_noise, c.entropy_gamma, gen
        )
        out["entropy"] = (local_entropy_penalty(theta, mu, c.entropy_gamma) / size).mean()
    return out


def functional_step(model: LSTMOptimizer, params: dict[str, torch.Tensor]) -> StepFn:
    """The learned optimizer's step with weights ``params`` instead of its own."""

    def step(grad: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        return functional_call(model, params, (grad, state))

    return step


def adapt(
    model: LSTMOptimizer,
    problem: Optimizee,
    steps: int,
    lr: float,
    unroll_length: int,
    second_order: bool = False,
    grad_clip: float = 1.0,
    objective: str = "ratio",
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """M-L2O test-time self-adaptation: ``steps`` Adam steps of the optimizer's own weights.

    Each step continues optimizing ``problem`` for ``unroll_length`` steps with the current
    weights and descends the meta-loss of that stretch (BPTT through it). Returns the adapted
    weights (new leaf tensors; the model is unchanged) and the meta-loss before each step.
    First-order in the outer loop: callers differentiate the loss after adaptation with respect
    to these adapted weights and apply that gradient to the original ones (FOMAML).
    """
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    opt = torch.optim.Adam(list(params.values()), lr=lr)
    theta = problem.init()
    state = model.init_state(problem.batch, problem.size, theta.device)
    with torch.no_grad():
        initial = problem.loss(theta, 0)
    history = []
    for k in range(steps):
        u = unroll(
            functional_step(model, params), problem, theta, state, k * unroll_length,
            unroll_length, second_order,
        )  # fmt: skip
        loss = meta_loss(u.losses, initial, objective)
        if not torch.isfinite(loss):
            raise DataError(f"Non-finite loss during self-adaptation step {k}; lower l2o.adapt_lr.")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), grad_clip)
        opt.step()
        history.append(float(loss.detach()))
        theta, state = u.theta.detach(), detach_state(u.state)
    return {k: v.detach().requires_grad_(True) for k, v in params.items()}, history
