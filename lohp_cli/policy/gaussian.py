"""The Lo-Hp policy: Gaussian forward/backward policies over a shared backbone, σ, and z_i.

States live in the normalised weight space (``NormStats``). With N online steps:

- P_F(s_{i+1} | s_i) = N(s_i + f(s_i, i, c), σ_i² I)
- P_B(s_i | s_{i+1}) = N(s_{i+1} − b(s_{i+1}, i+1, c), σ_i² I); ``backward="fixed"`` sets b = 0
- log F^{(n)}_t(s) = z_t − β_t ||s − θ_{k·n}||², with β_t = 1/(2σ_t²) when ``beta="auto"``
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from lohp_cli.config import OPTIMIZERS, PolicyConfig
from lohp_cli.policy.backbone import build_backbone, sinusoidal
from lohp_cli.policy.loss import gaussian_step_nll, step_sq_error
from lohp_cli.policy.state import StateProbe
from lohp_cli.tasks.layout import ParamLayout


class LoHpPolicy(nn.Module):
    """Forward/backward Gaussian policies, σ schedule and learnable coefficient.

    The backbone (``(s, emb) -> [B, 2, P]``) is injected: pass a built module as ``backbone``, or
    leave it None to build ``cfg.backbone`` from the registry over ``layout`` (default: one flat
    vector of ``size``) at the point of the constructor where it always was built, so a seed gives
    the same initial weights as before the registry.
    """

    def __init__(
        self,
        size: int,
        cond_dim: int,
        n_steps: int,
        sigma: torch.Tensor,
        cfg: PolicyConfig,
        classes: int = 0,
        backbone: nn.Module | None = None,
        layout: ParamLayout | None = None,
    ) -> None:
        super().__init__()
        self.size, self.cond_dim, self.n_steps, self.cfg = size, cond_dim, n_steps, cfg
        e = cfg.emb_dim
        self.step_mlp = nn.Sequential(nn.Linear(e, e), nn.SiLU(), nn.Linear(e, e))
        self.cond_mlp = nn.Sequential(nn.Linear(cond_dim, e), nn.SiLU(), nn.Linear(e, e))
        self.opt_emb = nn.Embedding(len(OPTIMIZERS), e) if cfg.optimizer_token else None
        self.state_mlp: nn.Module | None = None
        if cfg.state_input != "none":
            if classes < 2:
                raise ValueError(f"state_input={cfg.state_input!r} needs the number of classes")
            width = classes * classes if cfg.state_input == "support" else 1  # grad: log RMS
            self.state_mlp = nn.Sequential(nn.Linear(width, e), nn.SiLU(), nn.Linear(e, e))
        if layout is not None and layout.size != size:
            raise ValueError(f"layout has {layout.size} parameters, the policy {size}")
        if backbone is None:
            backbone = build_backbone(layout or ParamLayout.flat(size), cond_dim, n_steps, cfg)
        self.backbone: nn.Module = backbone
        # read before a torch.compile wrapper hides it: the backbone reads the condition itself
        self.backbone_takes_condition = bool(getattr(backbone, "takes_condition", False))
        log_sigma = torch.log(sigma.clamp_min(cfg.sigma_min))  # [N]
        # the schedule σ was built from: β follows it, not a learned σ (with β = 1/(2σ²) tied to
        # a learned σ the loss falls as σ grows, a degenerate optimum); rebuilt on load
        self.register_buffer("log_sigma0", log_sigma.clone(), persistent=False)
        if cfg.sigma == "learned":
            self.log_sigma = nn.Parameter(log_sigma.clone())
        else:
            self.register_buffer("log_sigma", log_sigma.clone())
        if cfg.coefficient == "per_step":
            self.z = nn.Parameter(torch.zeros(n_steps + 1))
        else:
            self.z_mlp = nn.Sequential(nn.Linear(2 * e, e), nn.SiLU(), nn.Linear(e, 1))
            nn.init.zeros_(self.z_mlp[-1].weight)
            nn.init.zeros_(self.z_mlp[-1].bias)

    # ---- pieces -----------------------------------------------------------------------------
    @property
    def needs_probe(self) -> bool:
        """Whether every call needs a :class:`StateProbe` (``state_input = "support"``)."""
        return self.state_mlp is not None

    def embed(
        self,
        i: torch.Tensor,
        cond: torch.Tensor | None,
        opt: torch.Tensor | None,
        state: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Conditioning embedding ``[B, E]`` of step ``i [B]``, condition ``[B, D]``, optimizer
        and state features ``[B, C·C]``; ``cond=None`` leaves the condition out."""
        if not self.cfg.time_embedding:  # a stationary step rule: the same at every index
            i = torch.zeros_like(i)
        h = self.step_mlp(sinusoidal(i, self.cfg.emb_dim))
        if cond is not None:
            h = h + self.cond_mlp(cond)
        if self.opt_emb is not None and opt is not None:
            h = h + self.opt_emb(opt)
        if self.state_mlp is not None and state is not None:
            h = h + self.state_mlp(state)
        return nn.functional.silu(h)

    def means(
        self,
        s: torch.Tensor,
        i: torch.Tensor,
        cond: torch.Tensor,
        opt: torch.Tensor | None = None,
        probe: StateProbe | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward step f and backward step b at states ``s [B, P]``: two ``[B, P]`` tensors.

        ``probe`` holds the support sets of the B' tasks of ``s`` (B = B'·r, r rows per task in
        a row); the policy needs it when ``state_input`` is not "none". With "grad" the
        backbone's input is ``[B, 2, P]``: the state and the gradient direction.
        """
        state, x = None, s
        if self.state_mlp is not None:
            if probe is None:
                raise ValueError("this policy is state-aware: pass the tasks' support sets")
            if self.cfg.state_input == "grad":
                direction, state = probe.gradient(s)
                x = torch.stack([s, direction], dim=1)
            else:
                state = probe.features(s)
        if self.backbone_takes_condition:
            out = self.backbone(x, self.embed(i, None, opt, state), cond)  # [B, 2, P]
        else:
            out = self.backbone(x, self.embed(i, cond, opt, state))
        return out[:, 0], out[:, 1]

    def sigma(self) -> torch.Tensor:
        """σ_i ``[N]``."""
        return self.log_sigma.exp().clamp_min(self.cfg.sigma_min)

    def sigma0(self) -> torch.Tensor:
        """The σ schedule ``[N]`` the policy was built with (equal to σ unless σ is learned)."""
        return self.log_sigma0.exp().clamp_min(self.cfg.sigma_min)

    def beta(self) -> torch.Tensor:
        """β_t ``[N+1]`` for the flow at state t (the last state reuses σ_{N−1}); for
        ``beta = "path"`` the one-step values, which :func:`lohp_cli.policy.loss.path_beta` refines
        per pair."""
        if self.cfg.beta in ("auto", "path"):
            sig = self.sigma0()
            sig = torch.cat([sig, sig[-1:]])
            return 1.0 / (2 * sig**2)
        return torch.full((self.n_steps + 1,), float(self.cfg.beta), device=self.log_sigma.device)

    def log_z(self, cond: torch.Tensor) -> torch.Tensor:
        """z_t for every state t: ``[B, N+1]``."""
        b = cond.shape[0]
        if self.cfg.coefficient == "per_step":
            return self.z.unsqueeze(0).expand(b, -1)
        t = torch.arange(self.n_steps + 1, device=cond.device)
        ti = sinusoidal(t, self.cfg.emb_dim).unsqueeze(0).expand(b, -1, -1)  # [B, N+1, E]
        ci = self.cond_mlp(cond).unsqueeze(1).expand(-1, self.n_steps + 1, -1)
        return self.z_mlp(torch.cat([ti, ci], dim=-1)).squeeze(-1)

    # ---- trajectories -----------------------------------------------------------------------
    def log_ratios(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """log P_F(s_{i+1}|s_i) − log P_B(s_i|s_{i+1}) for each step: ``[B, L]``, the first of
        :meth:`step_terms` (same arguments)."""
        return self.step_terms(*args, **kwargs)[0]

    def step_terms(
        self,
        states: torch.Tensor,
        start: int,
        cond: torch.Tensor,
        opt: torch.Tensor | None = None,
        probe: StateProbe | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The log-ratios log P_F(s_{i+1}|s_i) − log P_B(s_i|s_{i+1}) ``[B, L]`` of each step of
        ``states [B, L+1, P]`` (the states at online indices ``start … start+L``) and, from the
        same backbone call (every state evaluated once), the forward negative log-likelihood of
        each step without its normaliser, ||s_{i+1} − s_i − f_i||² / (2σ_i²) ``[B, L]``
        (``loss.w_step``: the recorded steps' likelihood at offline states)."""
        b, l1, p = states.shape
        idx = torch.arange(start, start + l1, device=states.device)  # [L+1]
        flat = states.reshape(b * l1, p)
        f, bw = self.means(
            flat,
            idx.repeat(b),
            cond.repeat_interleave(l1, 0),
            None if opt is None else opt.repeat_interleave(l1, 0),
            probe,
        )
        f, bw = f.view(b, l1, p), bw.view(b, l1, p)
        sig = self.sigma()[start : start + l1 - 1]  # [L]
        s0, s1 = states[:, :-1], states[:, 1:]  # [B, L, P]
        err = step_sq_error(f[:, :-1], s1 - s0)  # [B, L] ||Δ_i − f_i||²
        fwd = -err
        if self.cfg.backward == "fixed":
            bwd = -((s0 - s1) ** 2).sum(-1)
        else:
            bwd = -((s0 - (s1 - bw[:, 1:])) ** 2).sum(-1)
        # the Gaussian normalisers cancel because P_F and P_B share σ_i
        return (fwd - bwd) / (2 * sig**2), gaussian_step_nll(err, sig)

    def log_prob_forward(
        self,
        s0: torch.Tensor,
        s1: torch.Tensor,
        i: int,
        cond: torch.Tensor,
        opt: torch.Tensor | None = None,
        probe: StateProbe | None = None,
    ) -> torch.Tensor:
        """log P_F(s1 | s0) at online step ``i``: ``[B]`` (with the Gaussian normaliser)."""
        f, _ = self.means(s0, torch.full((s0.shape[0],), i, device=s0.device), cond, opt, probe)
        sig = self.sigma()[i]
        return -((s1 - s0 - f) ** 2).sum(-1) / (2 * sig**2) - self.size * (
            torch.log(sig) + 0.5 * math.log(2 * math.pi)
        )

    def rollout(
        self,
        s: torch.Tensor,
        start: int,
        cond: torch.Tensor,
        opt: torch.Tensor | None = None,
        mode: str = "mean",
        gen: torch.Generator | None = None,
        stop: int | None = None,
        grad: bool = False,
        probe: StateProbe | None = None,
    ) -> torch.Tensor:
        """Run the forward policy from ``s [B, P]`` at index ``start`` to ``stop`` (default N).

        Returns all states ``[B, stop−start+1, P]``. ``mode="sample"`` adds σ_i noise. With
        ``grad=True`` the states keep their graph (reparameterised, pathwise gradients).
        """
        with torch.set_grad_enabled(grad):
            return self._rollout(s, start, cond, opt, mode, gen, stop, probe)

    def _rollout(
        self,
        s: torch.Tensor,
        start: int,
        cond: torch.Tensor,
        opt: torch.Tensor | None,
        mode: str,
        gen: torch.Generator | None,
        stop: int | None,
        probe: StateProbe | None = None,
    ) -> torch.Tensor:
        stop = self.n_steps if stop is None else stop
        out = [s]
        sig = self.sigma()
        for i in range(start, stop):
            f, _ = self.means(s, torch.full((s.shape[0],), i, device=s.device), cond, opt, probe)
            s = s + f
            if mode == "sample":
                noise = torch.randn(s.shape, generator=gen, device="cpu").to(s.device)
                s = s + sig[i] * noise
            out.append(s)
        return torch.stack(out, dim=1)


class HyperNetwork(nn.Module):
    """Baseline: the task condition (and optimizer token) straight to θ_T in one step.

    ``policy.hypernetwork_backbone = "mlp"`` (default) is the paper's baseline, an MLP from the
    condition; another registered backbone is applied once as a one-step policy from the zero
    state (θ_T = f(0, 0, c)), so that a one-shot map and the iterative policy can share an
    architecture (``rows``: equivariant to the order of the classes).
    """

    def __init__(
        self,
        size: int,
        cond_dim: int,
        cfg: PolicyConfig,
        classes: int = 0,
        layout: ParamLayout | None = None,
    ) -> None:
        super().__init__()
        self.size = size
        self.one_step: LoHpPolicy | None = None
        if cfg.hypernetwork_backbone != "mlp":
            one = cfg.model_copy(update={"backbone": cfg.hypernetwork_backbone})
            self.one_step = LoHpPolicy(
                size, cond_dim, 1, torch.ones(1), one, classes, layout=layout
            )
            return
        self.opt_emb = nn.Embedding(len(OPTIMIZERS), cond_dim) if cfg.optimizer_token else None
        hidden = cfg.hidden
        self.net = nn.Sequential(
            nn.Linear(cond_dim, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, size),
        )

    def forward(self, cond: torch.Tensor, opt: torch.Tensor | None = None) -> torch.Tensor:
        """``cond [B, D]`` -> normalised final weights ``[B, P]``."""
        if self.one_step is not None:
            zero = cond.new_zeros(cond.shape[0], self.size)  # [B, P]
            step = torch.zeros(cond.shape[0], dtype=torch.long, device=cond.device)
            return self.one_step.means(zero, step, cond, opt)[0]
        if self.opt_emb is not None and opt is not None:
            cond = cond + self.opt_emb(opt)
        return self.net(cond)

    def rollout(
        self,
        s: torch.Tensor,
        start: int,
        cond: torch.Tensor,
        opt: torch.Tensor | None = None,
        mode: str = "mean",
        gen: torch.Generator | None = None,
        stop: int | None = None,
        grad: bool = False,
        probe: StateProbe | None = None,
    ) -> torch.Tensor:
        """The generator contract (:class:`lohp_cli.policy.generator.Generator`) of a one-step
        map: ``[B, 2, P]``, the start ``s [B, P]`` and θ_T = h(c) (``s``, ``mode``, ``gen`` and
        ``probe`` do not change θ_T)."""
        if start != 0 or stop not in (None, 1):
            raise ValueError("a hypernetwork generates in its one step")
        with torch.set_grad_enabled(grad):
            return torch.stack([s, self(cond, opt)], dim=1)
