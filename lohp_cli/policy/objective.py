"""Training objectives of the policy methods, as modules (so DistributedDataParallel wraps them).

``lo-hp``: off-policy + on-policy sub-trajectory balance (hybrid starts); ``lo-op``: on-policy only;
``lo-di``: diffusion-style local targets (regress s_i → θ_{k(i+1)} with input noise);
``hypernetwork``: regress the final weights from the task condition.

With ``loss.dagger > 0`` (lo-hp, lo-op) a DAgger term is added: the policy's mean step at states
its own rollouts visit, pulled toward the store's optimizer's step from there
(:mod:`lohp_cli.policy.dagger`).
"""

from __future__ import annotations

import torch
from torch import nn

from lohp_cli.config import LoHpTrainConfig
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
        method = self.cfg.method
        if method == "hypernetwork":
            assert isinstance(self.model, HyperNetwork)
            pred = self.model(cond, opt if self.cfg.policy.optimizer_token else None)
            loss = ((pred - x[:, -1]) ** 2).mean()
            return loss, {"mse": float(loss.detach())}
        policy = self.model
        assert isinstance(policy, LoHpPolicy)
        n = self.n_steps
        w = min(self.cfg.window or n, n)
        tok = _opt_token(policy, opt)
        if method == "lo-di":
            m = self._randint(n - w + 1)
            s = x[:, m : m + w]  # [B, W, P] inputs s_i
            sig = policy.sigma()[m : m + w].view(1, -1, 1)
            noisy = s + self.cfg.loss.lodi_noise * sig * self._randn(tuple(s.shape), s.device)
            b, ln, p = noisy.shape
            idx = torch.arange(m, m + w, device=x.device).repeat(b)
            f, _ = policy.means(
                noisy.reshape(b * ln, p),
                idx,
                cond.repeat_interleave(ln, 0),
                None if tok is None else tok.repeat_interleave(ln, 0),
                probe,
            )
            target = x[:, m + 1 : m + w + 1] - noisy  # [B, W, P]
            loss = ((f.view(b, ln, p) - target) ** 2).mean()
            return loss, {"mse": float(loss.detach())}

        lc = self.cfg.loss
        weights = pair_weights(w + 1, lc.lam, lc.pairs, lc.max_len, device=x.device)
        terms: dict[str, float] = {}
        total = x.new_zeros(())
        if method == "lo-hp" and (lc.w_off > 0 or lc.w_step > 0):
            m = self._randint(n - w + 1)
            xs = x[:, m : m + w + 1]  # [B, W+1, P]
            ratios, nll = policy.step_terms(xs, m, cond, tok, probe)
            z = policy.log_z(cond)[:, m : m + w + 1]
            off = balance_loss(ratios, xs, xs, z, self._beta(xs, m), weights)
            total = total + lc.w_off * off
            terms["off"] = float(off.detach())
            if lc.w_step > 0:  # the recorded steps' likelihood, per coordinate
                step_nll = nll.mean() / xs.shape[-1]
                total = total + lc.w_step * step_nll
                terms["step_nll"] = float(step_nll.detach())
        if lc.w_on > 0:
            # a coin per rollout: from an offline state θ_{k·m} (one m for the batch) or s_0
            offline = torch.rand(x.shape[0], generator=self.gen) < lc.hybrid_start  # [B]
            m_off = self._randint(n - w + 1)
            on = x.new_zeros(())
            for rows, m, hybrid in ((offline, m_off, True), (~offline, 0, False)):
                if not bool(rows.any()):
                    continue
                idx = rows.nonzero().squeeze(1).to(x.device)
                sub = None if probe is None else probe.rows(idx)
                part = self._on_policy(
                    policy, x[idx], cond[idx], _rows(tok, idx), sub, m, w, hybrid, weights
                )
                on = on + part * (len(idx) / x.shape[0])  # the batch mean over both groups
            total = total + lc.w_on * on
            terms["on"] = float(on.detach())
        if lc.dagger > 0 and tasks is not None and self.relabel is not None:
            dag = self._dagger(policy, x, cond, opt, probe, tasks)
            total = total + lc.dagger * dag
            terms["dagger"] = float(dag.detach())
        if "on" in terms and terms.get("off"):
            # how much more the on-policy term weighs (after w_on, w_off): it decides what is
            # learned when large (docs/policy.md, the local-policy check)
            terms["on_off_ratio"] = lc.w_on * terms["on"] / (lc.w_off * terms["off"])
        terms["loss"] = float(total.detach())
        return total, terms
