"""The hybrid objective's on-policy starts (lohp_cli/policy/objective.py)."""

from __future__ import annotations

import pytest
import torch

from lohp_cli.config import TrainConfig
from lohp_cli.policy.gaussian import LoHpPolicy
from lohp_cli.policy.objective import Objective

B, N, P, D = 64, 4, 6, 3


def objective(hybrid_start: float, beta: str = "auto", shared_init: bool = False) -> Objective:
    cfg = TrainConfig.model_validate(
        {
            "method": "lo-hp",
            "loss": {"w_off": 0.0, "hybrid_start": hybrid_start},
            "policy": {"backbone": "mlp", "hidden": 8, "emb_dim": 8, "beta": beta},
        }
    )
    torch.manual_seed(0)
    policy = LoHpPolicy(P, D, N, torch.full((N,), 0.3), cfg.policy)
    obj = Objective(policy, cfg, N, shared_init)
    obj.gen = torch.Generator().manual_seed(1)
    return obj


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(B, N + 1, P, generator=g).cumsum(1)
    return x, torch.randn(B, D, generator=g), torch.zeros(B, dtype=torch.long)


def record_rollouts(monkeypatch: pytest.MonkeyPatch, obj: Objective) -> list[tuple]:
    calls: list[tuple] = []
    real = obj.model.rollout

    def rollout(s, start, cond, *a, **kw):
        calls.append((s.detach().clone(), start))
        return real(s, start, cond, *a, **kw)

    monkeypatch.setattr(obj.model, "rollout", rollout)
    return calls


def test_each_rollout_tosses_its_own_hybrid_start_coin(monkeypatch: pytest.MonkeyPatch) -> None:
    """hybrid_start = 0.5: about half the rollouts of one batch start at an offline state, the
    rest at s_0 ~ N(0, I) (one coin for the whole batch made every batch all of one kind)."""
    obj = objective(0.5)
    calls = record_rollouts(monkeypatch, obj)
    x, cond, opt = batch()
    loss, terms = obj(x, cond, opt)
    assert torch.isfinite(loss) and "on" in terms
    assert len(calls) == 2
    (offline, m), (fresh, zero) = calls
    assert zero == 0 and len(offline) + len(fresh) == B
    assert 16 < len(offline) < 48  # Binomial(64, 0.5)
    rows = [int(((x[:, m] - s).abs().sum(-1) == 0).nonzero()) for s in offline]
    assert len(set(rows)) == len(offline)  # each is the offline state of its own row
    assert all(not bool(((x[:, 0] - s).abs().sum(-1) == 0).any()) for s in fresh)


@pytest.mark.parametrize(("p", "kinds"), [(0.0, {"fresh"}), (1.0, {"offline"})])
def test_hybrid_start_zero_and_one_give_one_kind(monkeypatch, p: float, kinds: set) -> None:
    obj = objective(p)
    calls = record_rollouts(monkeypatch, obj)
    x, cond, opt = batch()
    obj(x, cond, opt)
    assert len(calls) == 1 and len(calls[0][0]) == B
    s, m = calls[0]
    is_offline = bool((s == x[:, m]).all())
    assert {"offline" if is_offline else "fresh"} == kinds


def test_a_shared_init_store_starts_fresh_rollouts_at_the_runs_theta0(monkeypatch) -> None:
    """Generation on a shared-init store starts at normalise(θ₀), each run's recorded θ_0: the
    rollouts "from s_0" start there too, not at N(0, I) draws."""
    obj = objective(0.0, shared_init=True)
    calls = record_rollouts(monkeypatch, obj)
    x, cond, opt = batch()
    obj(x, cond, opt)
    ((s, m),) = calls
    assert m == 0 and torch.equal(s, x[:, 0])


def test_path_beta_objective_runs_and_backpropagates() -> None:
    obj = objective(0.5, beta="path")
    x, cond, opt = batch()
    loss, _ = obj(x, cond, opt)
    loss.backward()
    grads = [p.grad for p in obj.model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_both_terms_and_their_weighted_ratio_are_logged() -> None:
    cfg = objective(0.5).cfg.model_copy(
        update={"loss": objective(0.5).cfg.loss.model_copy(update={"w_off": 2.0, "w_on": 0.5})}
    )
    obj = objective(0.5)
    obj.cfg = cfg
    x, cond, opt = batch()
    _, terms = obj(x, cond, opt)
    assert terms["on_off_ratio"] == pytest.approx(0.5 * terms["on"] / (2.0 * terms["off"]))
    assert terms["loss"] == pytest.approx(2.0 * terms["off"] + 0.5 * terms["on"], rel=1e-5)


# ---- loss.w_step: the recorded steps' likelihood (issue 22) --------------------------------------
def with_loss(obj: Objective, **update: float) -> Objective:
    obj.cfg = obj.cfg.model_copy(update={"loss": obj.cfg.loss.model_copy(update=update)})
    return obj


def test_step_terms_of_the_identity_policy_are_the_steps_over_two_sigma_squared() -> None:
    """An untrained policy steps f = 0: each step's negative log-likelihood is ||Δ_i||²/(2σ_i²),
    and the log-ratios are those of :meth:`log_ratios`."""
    policy = objective(0.5).model
    with torch.no_grad():
        for p in policy.backbone.parameters():
            p.zero_()
    x, cond, _ = batch()
    ratios, nll = policy.step_terms(x, 0, cond)
    want = (x[:, 1:] - x[:, :-1]).pow(2).sum(-1) / (2 * 0.3**2)  # [B, N]
    torch.testing.assert_close(nll, want)
    torch.testing.assert_close(ratios, policy.log_ratios(x, 0, cond))


def test_w_step_adds_the_mean_step_likelihood_per_coordinate() -> None:
    """The loss grows by w_step × the logged step term, the balance terms are unchanged (the same
    draws), and the term is the mean over the window of ||Δ_i − f_i||²/(2σ_i² P)."""
    x, cond, opt = batch()
    base = with_loss(objective(0.5), w_off=1.0)
    loss0, terms0 = base(x, cond, opt)
    obj = with_loss(objective(0.5), w_off=1.0, w_step=3.0)
    loss1, terms1 = obj(x, cond, opt)
    assert "step_nll" not in terms0
    assert terms1["off"] == terms0["off"] and terms1["on"] == terms0["on"]
    assert float(loss1) == pytest.approx(float(loss0) + 3.0 * terms1["step_nll"], rel=1e-5)
    policy = obj.model
    with torch.no_grad():  # the same term by hand: every window of the tiny store is the whole run
        idx = torch.arange(N).repeat(B)
        f, _ = policy.means(x[:, :-1].reshape(B * N, P), idx, cond.repeat_interleave(N, 0))
        err = (x[:, 1:] - x[:, :-1] - f.view(B, N, P)).pow(2).sum(-1) / (2 * 0.3**2)
    assert terms1["step_nll"] == pytest.approx(float(err.mean()) / P, rel=1e-5)


def test_w_step_beside_w_on_without_w_off_has_no_on_off_ratio() -> None:
    """w_off = 0 with w_step > 0: the off-policy balance is logged (the step term shares its
    backbone call) but weighs nothing, so there is no on/off ratio (it divided by zero)."""
    x, cond, opt = batch()
    obj = with_loss(objective(0.5), w_off=0.0, w_on=1.0, w_step=1.0)
    loss, terms = obj(x, cond, opt)
    assert "off" in terms and "on" in terms and "on_off_ratio" not in terms
    assert float(loss) == pytest.approx(terms["on"] + terms["step_nll"], rel=1e-5)


def test_w_step_alone_pulls_the_step_towards_the_recorded_one() -> None:
    """With only the step term (w_off = w_on = 0), a few optimizer steps lower the error of the
    policy's step at the offline states: the term is a training signal on every coordinate."""
    obj = with_loss(objective(0.5), w_off=0.0, w_on=0.0, w_step=1.0)
    _, cond, opt = batch()
    steps = torch.randn(1, N, P, generator=torch.Generator().manual_seed(3))  # the same every run
    x = torch.cat([torch.zeros(B, 1, P), steps.expand(B, -1, -1).cumsum(1)], dim=1)
    opt_ = torch.optim.Adam(obj.model.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        obj.gen = torch.Generator().manual_seed(1)
        loss, terms = obj(x, cond, opt)
        first = terms["step_nll"] if first is None else first
        opt_.zero_grad()
        loss.backward()
        opt_.step()
    assert terms["step_nll"] < 0.5 * first


def test_every_policy_method_has_a_loss_and_others_are_refused() -> None:
    """Each method a Lo-Hp config accepts has its entry in METHOD_LOSSES (a new method adds one);
    an objective for a method without one is a ConfigError naming the choices."""
    from typing import get_args

    from lohp_cli.config import LoHpTrainConfig
    from lohp_cli.errors import ConfigError
    from lohp_cli.policy.objective import METHOD_LOSSES

    methods = get_args(LoHpTrainConfig.model_fields["method"].annotation)
    assert set(methods) == set(METHOD_LOSSES)
    obj = objective(0.5)
    cfg = obj.cfg.model_copy(update={"method": "lo-new"})
    with pytest.raises(ConfigError, match="'lo-new' has no policy objective; choose from lo-hp"):
        Objective(obj.model, cfg, N)
