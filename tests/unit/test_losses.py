"""Sub-trajectory balance pieces against brute-force double loops, and what the loss must teach.

The fast implementation (cumulative sums and one pairwise distance matrix) is checked against a
plain loop over every pair (m, n); then the two properties LOHP.md asks for: the untrained policy
has a clearly non-zero off-policy loss on a trajectory that moves (the reward is centred on the
sub-trajectory's endpoint, not on each state's own offline state), and with β = 1/(2σ²) and a
fixed P_B a forward step equal to the optimizer's own step balances every one-step pair.
"""

from __future__ import annotations

import math

import pytest
import torch

from lohp_cli.config import PolicyConfig
from lohp_cli.errors import DataError
from lohp_cli.policy.gaussian import LoHpPolicy
from lohp_cli.policy.loss import (
    PATH_BETA_CAP,
    balance_loss,
    check_finite,
    cumulative_log_ratios,
    log_flows,
    pair_weights,
    pairwise_sq_dist,
    path_beta,
    subtb_loss,
    subtb_residuals,
)

TINY_MLP = {"backbone": "mlp", "hidden": 32, "emb_dim": 16}


# ---- brute-force references ---------------------------------------------------------------------
def ref_weights(length: int, lam: float, mode: str, max_len: int | None) -> torch.Tensor:
    w = torch.zeros(length, length, dtype=torch.float64)
    for m in range(length):
        for n in range(m + 1, length):
            if max_len is not None and n - m > max_len:
                continue
            w[m, n] = lam ** (n - m) if mode == "lambda" else 1.0
    return w / w.sum()


def ref_residual(r, s, t, z, beta, b: int, m: int, n: int) -> torch.Tensor:
    """δ(m, n) of trajectory b, straight from the formula in LOHP.md."""
    log_f_m = z[b, m] - beta[m] * ((s[b, m] - t[b, n]) ** 2).sum()
    log_f_n = z[b, n] - beta[n] * ((s[b, n] - t[b, n]) ** 2).sum()
    return log_f_m + r[b, m:n].sum() - log_f_n


def ref_loss(r, s, t, z, beta, w) -> torch.Tensor:
    bsz, l1, p = s.shape
    total = torch.zeros((), dtype=s.dtype)
    for b in range(bsz):
        for m in range(l1):
            for n in range(m + 1, l1):
                total = total + w[m, n] * ref_residual(r, s, t, z, beta, b, m, n) ** 2
    return total / bsz / p**2


def random_batch(seed: int, bsz: int = 3, length: int = 5, size: int = 7):
    g = torch.Generator().manual_seed(seed)
    kw = {"generator": g, "dtype": torch.float64}
    r = torch.randn(bsz, length, **kw)
    s = torch.randn(bsz, length + 1, size, **kw)
    t = torch.randn(bsz, length + 1, size, **kw)
    z = torch.randn(bsz, length + 1, **kw)
    beta = torch.rand(length + 1, **kw) + 0.1
    return r, s, t, z, beta


# ---- pieces -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("length", "lam", "mode", "max_len"),
    [(6, 0.9, "lambda", None), (6, 0.5, "lambda", 2), (6, 0.9, "equal", None), (5, 0.7, "equal", 1),
     (4, 1.0, "lambda", 10), (2, 0.9, "lambda", None)],
)  # fmt: skip
def test_pair_weights_match_double_loop(length: int, lam: float, mode: str, max_len: int | None):
    w = pair_weights(length, lam, mode, max_len)
    assert w.shape == (length, length)
    torch.testing.assert_close(w.double(), ref_weights(length, lam, mode, max_len))
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-6)
    m, n = torch.meshgrid(torch.arange(length), torch.arange(length), indexing="ij")
    assert (w[m >= n] == 0).all(), "pairs with m >= n must have zero weight"
    if max_len is not None:
        assert (w[(n - m) > max_len] == 0).all()


def test_pair_weights_lambda_decays_with_gap() -> None:
    w = pair_weights(5, 0.5, "lambda")
    assert float(w[0, 1]) == pytest.approx(2 * float(w[0, 2]))
    assert float(w[0, 1]) == pytest.approx(float(w[3, 4]))  # depends on the gap only
    e = pair_weights(5, 0.5, "equal")
    assert float(e[0, 1]) == pytest.approx(float(e[0, 4])) == pytest.approx(1 / 10)


def test_cumulative_log_ratios() -> None:
    r = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]])
    torch.testing.assert_close(
        cumulative_log_ratios(r), torch.tensor([[0.0, 1.0, 3.0, 6.0], [0.0, 0.5, -0.5, -0.5]])
    )


def test_pairwise_sq_dist_matches_loop() -> None:
    _, s, t, _, _ = random_batch(1)
    d = pairwise_sq_dist(s, t)
    for b in range(s.shape[0]):
        for m in range(s.shape[1]):
            for n in range(t.shape[1]):
                assert float(d[b, m, n]) == pytest.approx(float(((s[b, m] - t[b, n]) ** 2).sum()))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_subtb_residuals_match_double_loop(seed: int) -> None:
    r, s, t, z, beta = random_batch(seed)
    delta = subtb_residuals(cumulative_log_ratios(r), log_flows(z, beta, pairwise_sq_dist(s, t)))
    bsz, l1, _ = s.shape
    for b in range(bsz):
        for m in range(l1):
            for n in range(m + 1, l1):
                ref = ref_residual(r, s, t, z, beta, b, m, n)
                assert float(delta[b, m, n]) == pytest.approx(float(ref), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize(
    ("lam", "mode", "max_len"), [(0.9, "lambda", None), (0.6, "lambda", 2), (0.9, "equal", None)]
)
def test_balance_loss_matches_double_loop(lam: float, mode: str, max_len: int | None) -> None:
    r, s, t, z, beta = random_batch(3)
    w = pair_weights(s.shape[1], lam, mode, max_len).double()
    got = balance_loss(r, s, t, z, beta, w)
    assert got.shape == ()
    assert float(got) == pytest.approx(float(ref_loss(r, s, t, z, beta, w)), rel=1e-9)


def test_subtb_loss_scales_by_size_squared() -> None:
    delta = torch.full((2, 3, 3), 4.0)
    w = pair_weights(3, 0.9)
    assert float(subtb_loss(delta, w, 1)) == pytest.approx(16.0)
    assert float(subtb_loss(delta, w, 2)) == pytest.approx(4.0)


# ---- what the off-policy term teaches ------------------------------------------------------------
def moving_trajectory(bsz: int = 2, length: int = 4, size: int = 9, seed: int = 0):
    """A trajectory that moves towards a target: x_{i+1} = x_i + 0.4 (θ* − x_i)."""
    g = torch.Generator().manual_seed(seed)
    x = [torch.randn(bsz, size, generator=g)]
    target = 3 * torch.randn(bsz, size, generator=g)
    for _ in range(length):
        x.append(x[-1] + 0.4 * (target - x[-1]))
    return torch.stack(x, dim=1)  # [B, L+1, P]


def make_policy(n_steps: int, size: int, cond_dim: int = 3, **cfg: object) -> LoHpPolicy:
    torch.manual_seed(0)
    sigma = torch.linspace(0.5, 0.2, n_steps)
    return LoHpPolicy(size, cond_dim, n_steps, sigma, PolicyConfig(**{**TINY_MLP, **cfg}))


def off_policy_loss(policy: LoHpPolicy, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    n = x.shape[1] - 1
    ratios = policy.log_ratios(x, 0, cond)
    w = pair_weights(n + 1, 0.9)
    return balance_loss(ratios, x, x, policy.log_z(cond), policy.beta(), w)


def test_untrained_policy_has_nonzero_off_policy_loss_on_a_moving_trajectory() -> None:
    x = moving_trajectory()
    policy = make_policy(4, 9)
    cond = torch.zeros(2, 3)
    with torch.no_grad():
        ratios = policy.log_ratios(x, 0, cond)
        loss = off_policy_loss(policy, x, cond)
    # identity step and symmetric P_F/P_B: every log-ratio is zero, z is zero ...
    torch.testing.assert_close(ratios, torch.zeros_like(ratios))
    # ... so δ(m, n) = −β_m ||θ_m − θ_n||², the endpoint reward of state m, and nothing cancels
    beta = policy.beta()
    w = pair_weights(5, 0.9)
    ref = torch.zeros(())
    for b in range(2):
        for m in range(5):
            for n in range(m + 1, 5):
                ref = ref + w[m, n] * (beta[m] * ((x[b, m] - x[b, n]) ** 2).sum()) ** 2
    ref = ref / 2 / 9**2
    assert float(loss) == pytest.approx(float(ref), rel=1e-5)
    assert float(loss) > 1.0, "the off-policy term must teach the untrained policy something"
    # the endpoint-reward term alone vanishes on offline states: δ(n−1, n) keeps only state n−1's
    d = pairwise_sq_dist(x, x)
    torch.testing.assert_close(torch.diagonal(d, dim1=1, dim2=2), torch.zeros(2, 5))


def test_still_trajectory_has_zero_off_policy_loss() -> None:
    """Control for the test above: if nothing moves, the untrained policy is already balanced."""
    x = moving_trajectory()[:, :1].expand(-1, 5, -1).contiguous()
    policy = make_policy(4, 9)
    with torch.no_grad():
        assert float(off_policy_loss(policy, x, torch.zeros(2, 3))) == pytest.approx(0.0, abs=1e-9)


def true_step_means(monkeypatch: pytest.MonkeyPatch, policy: LoHpPolicy, x: torch.Tensor) -> None:
    """Make the forward mean the offline step Δ_i = x_{i+1} − x_i (at every state of ``x``)."""
    b, l1, p = x.shape
    delta = torch.cat([x[:, 1:] - x[:, :-1], torch.zeros(b, 1, p)], dim=1)  # [B, L+1, P]

    def means(s, i, cond, opt=None, probe=None):  # the flat states log_ratios passes, b-major
        assert s.shape == (b * l1, p)
        torch.testing.assert_close(s, x.reshape(b * l1, p))
        return delta.reshape(b * l1, p), torch.zeros(b * l1, p)

    monkeypatch.setattr(policy, "means", means)


def one_step_residuals(policy: LoHpPolicy, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    cum = cumulative_log_ratios(policy.log_ratios(x, 0, torch.zeros(x.shape[0], 3)))
    delta = subtb_residuals(cum, log_flows(z, policy.beta(), pairwise_sq_dist(x, x)))
    return torch.diagonal(delta, offset=1, dim1=1, dim2=2)  # [B, L]: δ(m, m+1)


def test_auto_beta_balances_the_true_step(monkeypatch: pytest.MonkeyPatch) -> None:
    x = moving_trajectory()
    policy = make_policy(4, 9, beta="auto", backward="fixed")
    true_step_means(monkeypatch, policy, x)
    z = torch.full((2, 5), 1.7)
    with torch.no_grad():
        one = one_step_residuals(policy, x, z)
        scale = (policy.beta()[:-1] * ((x[:, 1:] - x[:, :-1]) ** 2).sum(-1)).abs()  # [B, L]
    assert float(scale.min()) > 1.0, "the steps must be large enough to make the test meaningful"
    torch.testing.assert_close(one, torch.zeros_like(one), atol=1e-4 * float(scale.max()), rtol=0)


@pytest.mark.parametrize("beta", [1.0, 50.0])
def test_explicit_beta_does_not_balance_the_true_step(
    monkeypatch: pytest.MonkeyPatch, beta: float
) -> None:
    """β and σ are coupled: any other β leaves a residual on the optimizer's own step."""
    x = moving_trajectory()
    policy = make_policy(4, 9, beta=beta, backward="fixed")
    true_step_means(monkeypatch, policy, x)
    with torch.no_grad():
        one = one_step_residuals(policy, x, torch.zeros(2, 5))
    assert float(one.abs().min()) > 0.1


def test_identity_policy_does_not_balance_the_true_step() -> None:
    x = moving_trajectory()
    policy = make_policy(4, 9)
    with torch.no_grad():
        one = one_step_residuals(policy, x, torch.zeros(2, 5))
    assert float(one.abs().min()) > 0.1


@pytest.mark.parametrize(
    "cfg",
    [{}, {"backward": "learned", "sigma": "learned", "coefficient": "mlp"},
     {"backbone": "unet", "channels": (8, 16), "patch": 4}],
)  # fmt: skip
def test_gradients_of_the_off_policy_loss_are_finite(cfg: dict) -> None:
    x = moving_trajectory(size=9)
    policy = make_policy(4, 9, **cfg)
    cond = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    loss = off_policy_loss(policy, x, cond)
    loss.backward()
    grads = [p.grad for p in policy.parameters() if p.grad is not None]
    assert grads, "no parameter received a gradient"
    assert all(torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)
    out = policy.backbone.out.weight.grad  # the zero-initialised output layer must learn
    assert out is not None and float(out.abs().sum()) > 0


def test_gradients_are_finite_when_states_coincide() -> None:
    """Zero distances (a still trajectory) must not give NaN gradients through the distances."""
    s = torch.zeros(1, 3, 4, requires_grad=True)
    r = torch.zeros(1, 2, requires_grad=True)
    loss = balance_loss(r, s, s, torch.zeros(1, 3), torch.ones(3), pair_weights(3, 0.9))
    loss.backward()
    assert torch.isfinite(s.grad).all() and torch.isfinite(r.grad).all()


# ---- guards -------------------------------------------------------------------------------------
def test_check_finite_passes_finite_values() -> None:
    check_finite(torch.tensor([1.0, -2.0]), "loss", 3, ["r1"])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_check_finite_names_step_and_run(bad: float) -> None:
    with pytest.raises(DataError) as info:
        check_finite(torch.tensor([1.0, bad]), "loss", 17, ["c0_1-sgd-s0", "c1_2-adam-s0"])
    msg = str(info.value)
    assert "loss" in msg and "step 17" in msg
    assert "c0_1-sgd-s0" in msg and "c1_2-adam-s0" in msg


def test_check_finite_shortens_long_run_lists() -> None:
    runs = [f"run{i}" for i in range(6)]
    with pytest.raises(DataError, match="step 2") as info:
        check_finite(torch.tensor(float("nan")), "gradient", 2, runs)
    assert "run0, run1, run2 …" in str(info.value) and "run5" not in str(info.value)


def test_nan_state_makes_the_loss_non_finite() -> None:
    """What check_finite guards: one NaN in a state poisons the whole loss."""
    r, s, t, z, beta = random_batch(0)
    s[1, 2, 3] = float("nan")
    loss = balance_loss(r, s, t, z, beta, pair_weights(s.shape[1], 0.9).double())
    with pytest.raises(DataError, match="step 5"):
        check_finite(loss, "loss", 5, ["c0_1-sgd-s0"])


# ---- pair-level β (beta = "path") -----------------------------------------------------------
def straight_line(bsz: int = 2, length: int = 6, size: int = 9) -> torch.Tensor:
    g = torch.Generator().manual_seed(4)
    start, step = torch.randn(bsz, 1, size, generator=g), torch.randn(bsz, 1, size, generator=g)
    return start + 0.3 * step * torch.arange(length + 1).view(1, -1, 1).float()


def random_walk(bsz: int = 2, length: int = 6, size: int = 9) -> torch.Tensor:
    """In P = 9 dimensions a walk often comes back near where it was; see the cap test."""
    g = torch.Generator().manual_seed(5)
    steps = 0.3 * torch.randn(bsz, length, size, generator=g)
    return torch.cat([torch.zeros(bsz, 1, size), steps.cumsum(1)], dim=1)


def all_pair_residuals(policy: LoHpPolicy, x: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """δ(m, n) for every pair m < n with z = 0: ``[B, pairs]``."""
    cum = cumulative_log_ratios(policy.log_ratios(x, 0, torch.zeros(x.shape[0], 3)))
    z = torch.zeros(x.shape[0], x.shape[1])
    delta = subtb_residuals(cum, log_flows(z, beta, pairwise_sq_dist(x, x)))
    mask = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).triu(1)
    return delta[:, mask]


@pytest.mark.parametrize(
    "shape", [straight_line, lambda: random_walk(size=400)], ids=["line", "random-walk"]
)
def test_path_beta_balances_the_true_step_on_every_pair(
    monkeypatch: pytest.MonkeyPatch, shape
) -> None:
    """With β per pair, f = Δ balances every sub-trajectory, not only one-step pairs; the scalar
    one-step β leaves residuals on the longer pairs (for a straight line, (n − m − 1)/(n − m) of
    the reward)."""
    x = shape()
    policy = make_policy(6, x.shape[-1], beta="path", backward="fixed")
    true_step_means(monkeypatch, policy, x)
    with torch.no_grad():
        pb = path_beta(x, policy.sigma0(), policy.beta())
        assert float((pb / policy.beta().view(1, -1, 1)).max()) < PATH_BETA_CAP  # never capped
        exact = all_pair_residuals(policy, x, pb)
        scalar = all_pair_residuals(policy, x, policy.beta())
        reward = (pb * pairwise_sq_dist(x, x))[:, torch.ones(7, 7, dtype=torch.bool).triu(1)]
    assert float(reward.min()) > 0.1
    torch.testing.assert_close(
        exact, torch.zeros_like(exact), atol=1e-4 * float(reward.max()), rtol=0
    )
    assert float(scalar.abs().max()) > 0.1 * float(reward.max())


def test_path_beta_of_a_straight_line_is_one_over_the_summed_variance() -> None:
    x = straight_line(bsz=1)
    sigma = torch.full((6,), 0.5)
    one = torch.full((7,), 1 / (2 * 0.25))
    pb = path_beta(x, sigma, one)[0]
    for m in range(7):
        for n in range(m + 1, 7):
            assert float(pb[m, n]) == pytest.approx(1 / (2 * 0.25 * (n - m)), rel=1e-4)
        assert float(pb[m, m]) == pytest.approx(float(one[m]))


def test_path_beta_balances_only_the_true_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """f = 0.7 Δ is not balanced under the pair-level β (the balance is unique)."""
    x = straight_line()
    policy = make_policy(6, 9, beta="path", backward="fixed")
    true_step_means(monkeypatch, policy, 0.7 * x)  # Δ scaled by 0.7 …
    monkeypatch.setattr(policy, "means", _scaled(policy.means, x))
    with torch.no_grad():
        res = all_pair_residuals(policy, x, path_beta(x, policy.sigma0(), policy.beta()))
    assert float(res.abs().min()) > 1e-2


def _scaled(means, x):
    def inner(s, i, cond, opt=None, probe=None):  # … at the states of x itself
        return means(0.7 * s, i, cond, opt, probe)

    return inner


def test_path_beta_is_capped_where_a_sub_trajectory_returns_to_its_start() -> None:
    x = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1e-7]]])  # a closed loop
    one = torch.full((4,), 2.0)
    pb = path_beta(x, torch.ones(3), one)
    assert float(pb[0, 0, 3]) == pytest.approx(PATH_BETA_CAP * 2.0)
    assert torch.isfinite(pb).all()


# ---- learned σ does not move β ----------------------------------------------------------------
@pytest.mark.parametrize("beta", ["auto", "path"])
def test_learned_sigma_leaves_beta_on_the_schedule(beta: str) -> None:
    """β = 1/(2σ²) tied to a learned σ has a degenerate optimum (σ grows, every residual shrinks
    as 1/σ²); β follows the schedule σ₀ the policy was built with instead."""
    policy = make_policy(4, 9, sigma="learned", beta=beta, backward="fixed")
    before = policy.beta().clone()
    with torch.no_grad():
        policy.log_sigma.add_(math.log(10.0))
    torch.testing.assert_close(policy.beta(), before)
    assert float(policy.sigma()[0].detach()) == pytest.approx(
        10 * float(policy.sigma0()[0]), rel=1e-5
    )


def test_growing_a_learned_sigma_does_not_zero_the_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    x = straight_line(length=4)
    policy = make_policy(4, 9, sigma="learned", beta="auto", backward="fixed")
    true_step_means(monkeypatch, policy, x)
    with torch.no_grad():
        at_schedule = off_policy_loss(policy, x, torch.zeros(2, 3))
        policy.log_sigma.add_(math.log(30.0))
        grown = off_policy_loss(policy, x, torch.zeros(2, 3))
    assert float(grown) > 0.5 * float(at_schedule)
