"""Training objectives of the policy methods, as modules (so DistributedDataParallel wraps them).

``lo-hp``: off-policy + on-policy sub-trajectory balance (hybrid starts); ``lo-op``: on-policy only;
``lo-di``: diffusion-style local targets (regress s_i → θ_{k(i+1)} with input noise);
``hypernetwork``: regress the final weights from the task condition.

With ``loss.dagger > 0`` (lo-hp, lo-op) a DAgger term is added: the policy's mean step at states
its own rollouts visit, pulled toward the store's optimizer's step from there
(:mod:`lohp_cli.policy.dagger`).

Each method's loss is a function in :data:`METHOD_LOSSES`; the balance methods are sums of term
functions (:func:`balance_loss_of`), so a new method adds an entry, not a branch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from lohp_cli.config import LoHpTrainConfig
from lohp_cli.errors import ConfigError
from lohp_cli.policy.dagger import BatchTasks, Relabeler
from lohp_cli.policy.gaussian import HyperNetwork, LoHpPolicy
from lohp_cli.policy.loss import balance_loss, pair_weights, path_beta, step_nll
from lohp_cli.policy.state import StateProbe


def _rows(t: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor | None:
    return None if t is None else t[idx]


def _opt_token(model: nn.Module, opt: torch.Tensor) -> torch.Tensor | None:
    return opt if getattr(model.cfg, "optimizer_token", False) else None


class Objective(nn.Module):
    """Computes one method's loss on a batch of matched trajectories ``x [B, N+1, P]``."""

    def __init__(
        self, model: nn.Module, cfg: LoHpTrainConfig, n_steps: int, shared_init: bool = False
    ) -> None:
        super().__init__()
        if cfg.method not in METHOD_LOSSES:
            raise ConfigError(
                f"method {cfg.method!r} has no policy objective; choose from "
                f"{', '.join(METHOD_LOSSES)}."
            )
        self.model = model
        self.cfg = cfg
        self.n_steps = n_steps
        # a shared-init store: on-policy rollouts "from s_0" start at the run's recorded θ_0
        # (normalise(θ₀), where generation starts), not at N(0, I) draws
        self.shared_init = shared_init
        self.gen: torch.Generator | None = None  # set per step: window, starts and noise
        # DAgger's expert (set by the trainer when loss.dagger > 0); batches that name their
        # tasks (``forward(..., tasks=...)``) get the term, the validation loss does not
        self.relabel: Relabeler | None = None

    def _randint(self, high: int) -> int:
        return int(torch.randint(0, high, (1,), generator=self.gen))

    def _rand(self) -> float:
        return float(torch.rand((), generator=self.gen))

    def _randn(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        return torch.randn(shape, generator=self.gen).to(device)

    def _beta(self, targets: torch.Tensor, m: int) -> torch.Tensor:
        """β of a window starting at m: ``[W+1]``, or ``[B, W+1, W+1]`` per pair (``path``)."""
        policy = self.model
        one_step = policy.beta()[m : m + targets.shape[1]]
        if policy.cfg.beta != "path":
            return one_step
        return path_beta(targets, policy.sigma0()[m : m + targets.shape[1] - 1], one_step)

    def _on_policy(
        self,
        policy: LoHpPolicy,
        x: torch.Tensor,
        cond: torch.Tensor,
        tok: torch.Tensor | None,
        probe: StateProbe | None,
        m: int,
        w: int,
        hybrid: bool,
        weights: torch.Tensor,
    ) -> torch.Tensor:
        """On-policy SubTB of rollouts over the window m … m + w, from the offline state θ_{k·m}
        (``hybrid``) or from s_0 (then m = 0): N(0, I), or a shared-init store's θ₀."""
        lc = self.cfg.loss
        if hybrid or self.shared_init:
            s0 = x[:, m]  # [B, P]; m = 0 when not hybrid: the run's own θ_0
        else:
            s0 = self._randn(tuple(x[:, 0].shape), x.device)
        traj = policy.rollout(s0, m, cond, tok, mode="sample", gen=self.gen, stop=m + w,
                              grad=lc.on_policy_grad == "pathwise", probe=probe)  # fmt: skip
        ratios = policy.log_ratios(traj, m, cond, tok, probe)
        targets = x[:, m : m + w + 1]
        z = policy.log_z(cond)[:, m : m + w + 1]
        return balance_loss(ratios, traj, targets, z, self._beta(targets, m), weights)

    def _dagger(
        self,
        policy: LoHpPolicy,
        x: torch.Tensor,
        cond: torch.Tensor,
        opt: torch.Tensor,
        probe: StateProbe | None,
        tasks: BatchTasks,
    ) -> torch.Tensor:
        """DAgger's term on ``loss.dagger_states`` rows of the batch, all at one step index m:
        each row's rollout starts at its recorded state θ_{k·a} (a uniform in 0 … m; a = m is
        the recorded state itself) and runs the policy (sampled, no gradient) to index m; the
        state reached is relabelled with the optimizer's k·r-step displacement from there (its
        moments warmed at the state by min(m·k·r, ``loss.dagger_warmup``) steps) and the
        policy's mean step at it is scored by :func:`step_nll` with σ_m."""
        assert self.relabel is not None
        rows = torch.randperm(x.shape[0], generator=self.gen)[: self.cfg.loss.dagger_states]
        m = self._randint(self.n_steps)
        a = self._randint(m + 1)
        seeds = torch.randint(0, 2**62, (len(rows),), generator=self.gen)
        idx = rows.to(x.device)
        sub = None if probe is None else probe.rows(idx)
        c, t, o = cond[idx], _rows(_opt_token(policy, opt), idx), opt[idx]
        s = policy.rollout(x[idx, a], a, c, t, mode="sample", gen=self.gen, stop=m, probe=sub)
        s = s[:, -1].detach()  # [R, P] the policy's state at index m
        perms = None if tasks.perms is None else tasks.perms[rows]
        picked = BatchTasks([tasks.task_ids[int(r)] for r in rows], perms)
        warm = min(m * self.relabel.steps, self.cfg.loss.dagger_warmup)  # the run's steps so far
        target = self.relabel.targets(s, picked, o, seeds, warm)  # [R, P]
        f, _ = policy.means(s, torch.full((len(rows),), m, device=x.device), c, t, sub)
        return step_nll(f, target, policy.sigma0()[m])

    def forward(
        self,
        x: torch.Tensor,
        cond: torch.Tensor,
        opt: torch.Tensor,
        probe: StateProbe | None = None,
        tasks: BatchTasks | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``(loss, logged terms)`` of the method's loss function (:data:`METHOD_LOSSES`) on
        the batch ``x [B, N+1, P]``, ``cond [B, D]``, ``opt [B]``."""
        return METHOD_LOSSES[self.cfg.method](self, Batch(x, cond, opt, probe, tasks))

    def window(self) -> int:
        """The window W of a step-wise method: ``loss.window`` or all N steps."""
        return min(self.cfg.window or self.n_steps, self.n_steps)


class Batch(NamedTuple):
    """One training batch as a method's loss sees it: matched trajectories ``x [B, N+1, P]``,
    conditions ``cond [B, D]``, optimizer indices ``opt [B]``, the state probe and (DAgger) the
    batch's tasks."""

    x: torch.Tensor
    cond: torch.Tensor
    opt: torch.Tensor
    probe: StateProbe | None
    tasks: BatchTasks | None


# a method's loss on one batch: (objective, batch) -> (loss, logged terms)
MethodLoss = Callable[[Objective, Batch], tuple[torch.Tensor, dict[str, float]]]
# the terms of a balance method: (objective, policy, batch, window W, pair weights [W+1, W+1],
# optimizer tokens) -> [(name, weight, value)], empty where its weights are off
TermsFn = Callable[
    [Objective, LoHpPolicy, Batch, int, torch.Tensor, torch.Tensor | None],
    list[tuple[str, float, torch.Tensor]],
]


def hypernetwork_loss(obj: Objective, b: Batch) -> tuple[torch.Tensor, dict[str, float]]:
    """Regress the final weights θ_T from the condition (MSE)."""
    assert isinstance(obj.model, HyperNetwork)
    pred = obj.model(b.cond, b.opt if obj.cfg.policy.optimizer_token else None)
    loss = ((pred - b.x[:, -1]) ** 2).mean()
    return loss, {"mse": float(loss.detach())}


def lodi_loss(obj: Objective, b: Batch) -> tuple[torch.Tensor, dict[str, float]]:
    """Lo-Di: regress each local target θ_{k(i+1)} − s̃_i from the noised state s̃_i of a window
    (noise ``loss.lodi_noise`` × σ_i)."""
    policy, x = obj.model, b.x
    assert isinstance(policy, LoHpPolicy)
    n, w = obj.n_steps, obj.window()
    tok = _opt_token(policy, b.opt)
    m = obj._randint(n - w + 1)
    s = x[:, m : m + w]  # [B, W, P] inputs s_i
    sig = policy.sigma()[m : m + w].view(1, -1, 1)
    noisy = s + obj.cfg.loss.lodi_noise * sig * obj._randn(tuple(s.shape), s.device)
    bs, ln, p = noisy.shape
    idx = torch.arange(m, m + w, device=x.device).repeat(bs)
    f, _ = policy.means(
        noisy.reshape(bs * ln, p),
        idx,
        b.cond.repeat_interleave(ln, 0),
        None if tok is None else tok.repeat_interleave(ln, 0),
        b.probe,
    )
    target = x[:, m + 1 : m + w + 1] - noisy  # [B, W, P]
    loss = ((f.view(bs, ln, p) - target) ** 2).mean()
    return loss, {"mse": float(loss.detach())}


def off_policy_terms(
    obj: Objective, policy: LoHpPolicy, b: Batch, w: int, weights: torch.Tensor,
    tok: torch.Tensor | None,
) -> list[tuple[str, float, torch.Tensor]]:  # fmt: skip
    """The off-policy SubTB of an offline window (``loss.w_off``) and, from the same backbone
    call, the recorded steps' likelihood per coordinate (``loss.w_step``)."""
    lc, x = obj.cfg.loss, b.x
    if not (lc.w_off > 0 or lc.w_step > 0):
        return []
    m = obj._randint(obj.n_steps - w + 1)
    xs = x[:, m : m + w + 1]  # [B, W+1, P]
    ratios, nll = policy.step_terms(xs, m, b.cond, tok, b.probe)
    z = policy.log_z(b.cond)[:, m : m + w + 1]
    out = [("off", lc.w_off, balance_loss(ratios, xs, xs, z, obj._beta(xs, m), weights))]
    if lc.w_step > 0:  # the recorded steps' likelihood, per coordinate
        out.append(("step_nll", lc.w_step, nll.mean() / xs.shape[-1]))
    return out


def on_policy_terms(
    obj: Objective, policy: LoHpPolicy, b: Batch, w: int, weights: torch.Tensor,
    tok: torch.Tensor | None,
) -> list[tuple[str, float, torch.Tensor]]:  # fmt: skip
    """The on-policy SubTB (``loss.w_on``): a coin per rollout, from an offline state θ_{k·m}
    (one m for the batch) or from s_0."""
    lc, x = obj.cfg.loss, b.x
    if not lc.w_on > 0:
        return []
    offline = torch.rand(x.shape[0], generator=obj.gen) < lc.hybrid_start  # [B]
    m_off = obj._randint(obj.n_steps - w + 1)
    on = x.new_zeros(())
    for rows, m, hybrid in ((offline, m_off, True), (~offline, 0, False)):
        if not bool(rows.any()):
            continue
        idx = rows.nonzero().squeeze(1).to(x.device)
        sub = None if b.probe is None else b.probe.rows(idx)
        part = obj._on_policy(
            policy, x[idx], b.cond[idx], _rows(tok, idx), sub, m, w, hybrid, weights
        )
        on = on + part * (len(idx) / x.shape[0])  # the batch mean over both groups
    return [("on", lc.w_on, on)]


def dagger_terms(
    obj: Objective, policy: LoHpPolicy, b: Batch, w: int, weights: torch.Tensor,
    tok: torch.Tensor | None,
) -> list[tuple[str, float, torch.Tensor]]:  # fmt: skip
    """DAgger's term (``loss.dagger``) on batches that name their tasks."""
    lc = obj.cfg.loss
    if not (lc.dagger > 0 and b.tasks is not None and obj.relabel is not None):
        return []
    return [("dagger", lc.dagger, obj._dagger(policy, b.x, b.cond, b.opt, b.probe, b.tasks))]


def balance_loss_of(*parts: TermsFn) -> MethodLoss:
    """A balance method's loss: the weighted sum of its ``parts`` (each a list of ``(name,
    weight, value)``, in this order: the order of their random draws), the on/off ratio where
    both are there, and the total as ``loss``."""

    def loss(obj: Objective, b: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        policy = obj.model
        assert isinstance(policy, LoHpPolicy)
        w, lc = obj.window(), obj.cfg.loss
        tok = _opt_token(policy, b.opt)
        weights = pair_weights(w + 1, lc.lam, lc.pairs, lc.max_len, device=b.x.device)
        terms: dict[str, float] = {}
        total = b.x.new_zeros(())
        for part in parts:
            for name, weight, value in part(obj, policy, b, w, weights, tok):
                total = total + weight * value
                terms[name] = float(value.detach())
        if "on" in terms and terms.get("off") and lc.w_off > 0:
            # how much more the on-policy term weighs (after w_on, w_off): it decides what is
            # learned when large (docs/policy.md, the local-policy check); none where the
            # off-policy SubTB is only logged (w_off = 0 beside w_step)
            terms["on_off_ratio"] = lc.w_on * terms["on"] / (lc.w_off * terms["off"])
        terms["loss"] = float(total.detach())
        return total, terms

    return loss


# method -> its loss; a new method adds its entry (and its name to the config's choices)
METHOD_LOSSES: dict[str, MethodLoss] = {
    "lo-hp": balance_loss_of(off_policy_terms, on_policy_terms, dagger_terms),
    "lo-op": balance_loss_of(on_policy_terms, dagger_terms),
    "lo-di": lodi_loss,
    "hypernetwork": hypernetwork_loss,
}
