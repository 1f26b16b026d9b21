"""Learned optimizers: BPTT against finite differences, the Hessian estimators against an exact
Hessian, imitation, M-L2O adaptation, problem families, and meta-training determinism/resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lohp_cli.config import TrainConfig
from lohp_cli.errors import CompatibilityError, ConfigError, DataError
from lohp_cli.l2o.apply import load_l2o
from lohp_cli.l2o.config import LassoConfig, QuadraticConfig
from lohp_cli.l2o.fit import train_l2o
from lohp_cli.l2o.flatness import hutchinson_trace, langevin_mean, top_eigenvalue
from lohp_cli.l2o.meta import adapt, imitation_loss, meta_loss, unroll
from lohp_cli.l2o.optimizer import (
    LSTMOptimizer,
    adam_step,
    dm_preprocess,
    run_trajectory,
    sgd_step,
    tune_lr,
)
from lohp_cli.l2o.problems import LassoFamily, LeastSquares, QuadraticFamily


def quad3(dtype: torch.dtype = torch.float64) -> LeastSquares:
    """One 3-parameter quadratic ½‖Ax − b‖²/3 (fixed numbers)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(1, 3, 3, generator=gen, dtype=dtype)
    b = torch.randn(1, 3, generator=gen, dtype=dtype)
    x0 = torch.randn(1, 3, generator=gen, dtype=dtype)
    return LeastSquares(a, b, x0, torch.zeros(1, dtype=dtype))


# ---- BPTT ---------------------------------------------------------------------------------------
def test_bptt_gradient_matches_finite_differences() -> None:
    torch.manual_seed(0)
    model = LSTMOptimizer("rnnprop", hidden=4, layers=2, out_scale=0.1).double()
    problem = quad3()
    params = dict(model.named_parameters())

    def objective() -> torch.Tensor:
        theta = problem.init()
        state = {k: v.double() for k, v in model.init_state(1, 3).items()}
        u = unroll(model, problem, theta, state, 0, 4, second_order=True)
        return meta_loss(u.losses, problem.loss(theta))

    loss = objective()
    grads = torch.autograd.grad(loss, list(params.values()))
    eps = 1e-6
    for (name, p), g in zip(params.items(), grads, strict=True):
        flat = p.data.view(-1)
        for i in range(0, flat.numel(), max(1, flat.numel() // 5)):
            old = flat[i].item()
            flat[i] = old + eps
            up = objective().detach()
            flat[i] = old - eps
            down = objective().detach()
            flat[i] = old
            fd = (up - down) / (2 * eps)
            assert torch.allclose(g.view(-1)[i], fd, rtol=1e-5, atol=1e-9), (name, i)


def test_unroll_with_sgd_step_is_gradient_descent() -> None:
    problem = quad3()
    step, init = sgd_step(0.1, momentum=0.0)
    u = unroll(step, problem, problem.init(), init(1, 3), 0, 3)
    x = problem.init()
    for _ in range(3):
        xg = x.clone().requires_grad_(True)
        x = x - 0.1 * torch.autograd.grad(problem.loss(xg).sum(), xg)[0]
    assert torch.allclose(u.theta, x)
    assert torch.allclose(u.losses[-1], problem.loss(x))


def test_dm_preprocess_small_and_large() -> None:
    g = torch.tensor([1.0, -1e-6, 0.0])
    x = dm_preprocess(g)
    assert torch.allclose(x[0], torch.tensor([0.0, 1.0]))
    assert x[1, 0] == pytest.approx(-1.0) and x[1, 1] == pytest.approx(-1e-6 * torch.e**10)
    assert torch.equal(x[2], torch.tensor([-1.0, 0.0]))


def test_adam_step_matches_torch_adam() -> None:
    problem = quad3(torch.float32)
    step, init = adam_step(0.05)
    losses, states = run_trajectory(step, init(1, 3), problem, 5, keep_states=True)
    p = problem.init().clone().requires_grad_(True)
    opt = torch.optim.Adam([p], lr=0.05)
    for _ in range(5):
        opt.zero_grad()
        problem.loss(p).sum().backward()
        opt.step()
    assert torch.allclose(states[-1], p.detach(), atol=1e-6)


# ---- flatness -----------------------------------------------------------------------------------
def tiny_net_loss() -> tuple[torch.Tensor, callable]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(12, 3, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 2, (12,), generator=gen)

    def loss_fn(theta: torch.Tensor) -> torch.Tensor:  # [B, 3·4 + 4·2] -> [B]
        out = []
        for th in theta:
            w1, w2 = th[:12].view(3, 4), th[12:].view(4, 2)
            out.append(torch.nn.functional.cross_entropy(torch.tanh(x @ w1) @ w2, y))
        return torch.stack(out)

    theta = torch.randn(1, 20, generator=gen, dtype=torch.float64)
    return theta, loss_fn


def test_hutchinson_trace_matches_exact_hessian() -> None:
    theta, loss_fn = tiny_net_loss()
    exact = torch.autograd.functional.hessian(lambda t: loss_fn(t[None])[0], theta[0])
    est = hutchinson_trace(loss_fn, theta, 4000, torch.Generator().manual_seed(0))
    assert est.item() == pytest.approx(torch.trace(exact).item(), rel=0.05)


def test_top_eigenvalue_matches_exact_hessian() -> None:
    theta, loss_fn = tiny_net_loss()
    exact = torch.autograd.functional.hessian(lambda t: loss_fn(t[None])[0], theta[0])
    eig = torch.linalg.eigvalsh(exact)
    top = eig[eig.abs().argmax()]
    est = top_eigenvalue(loss_fn, theta, 200, torch.Generator().manual_seed(0))
    assert est.item() == pytest.approx(top.item(), rel=1e-3)


def test_hessian_terms_are_differentiable_through_theta() -> None:
    problem = quad3()
    w = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    est = hutchinson_trace(
        lambda t: problem.loss(t) * w, problem.init() * 1.0, 2, torch.Generator()
    )
    (g,) = torch.autograd.grad(est.sum(), w)
    assert g.item() == pytest.approx(est.item())  # tr(wH) = w·tr(H)


def test_langevin_mean_without_noise_moves_downhill() -> None:
    problem = quad3()
    theta = problem.init()
    mu = langevin_mean(problem.loss, theta, 5, 0.01, 0.0, 1.0, torch.Generator())
    assert problem.loss(mu).item() < problem.loss(theta).item()


# ---- imitation ----------------------------------------------------------------------------------
def test_imitation_loss_zero_when_reproducing_stored_updates() -> None:
    problem = QuadraticFamily(QuadraticConfig(dim=5, rows=5)).sample("source", 0, 0, 3)
    step, init = sgd_step(0.05, momentum=0.0)
    _, states = run_trajectory(step, init(3, 5), problem, 6, keep_states=True)
    loss, _ = imitation_loss(step, problem, states, init(3, 5))
    assert loss.item() < 1e-10
    # recorded every 2 steps: the target is the mean of the two updates, close to one update
    lo, _ = imitation_loss(step, problem, states[::2], init(3, 5), record_every=2)
    assert 0 < lo.item() < 0.1
    other, _ = sgd_step(0.1, momentum=0.0)
    assert imitation_loss(other, problem, states, init(3, 5))[0].item() > 0.5


def test_imitation_loss_is_differentiable_in_the_l2o_weights() -> None:
    problem = QuadraticFamily(QuadraticConfig(dim=4, rows=4)).sample("source", 0, 0, 2)
    step, init = adam_step(0.1)
    _, states = run_trajectory(step, init(2, 4), problem, 4, keep_states=True)
    model = LSTMOptimizer(hidden=4)
    loss, _ = imitation_loss(model, problem, states, model.init_state(2, 4))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# ---- M-L2O --------------------------------------------------------------------------------------
def test_adaptation_changes_the_weights_and_lowers_the_task_loss() -> None:
    torch.manual_seed(0)
    model = LSTMOptimizer(hidden=8)
    problem = QuadraticFamily(QuadraticConfig(dim=6, rows=6)).sample("target", 0, 0, 4, 1.0)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    params, history = adapt(model, problem, 5, 1e-2, 10)
    assert len(history) == 5
    assert any(not torch.equal(params[k], before[k]) for k in before)
    assert all(torch.equal(p, before[k]) for k, p in model.named_parameters())  # a copy
    from lohp_cli.l2o.meta import functional_step

    def task_loss(step) -> float:
        losses, _ = run_trajectory(step, model.init_state(4, 6), problem, 10)
        return float(losses[-1].mean())

    assert task_loss(functional_step(model, params)) < task_loss(model)


# ---- problems -----------------------------------------------------------------------------------
def test_families_are_deterministic_and_split_apart() -> None:
    fam = QuadraticFamily(QuadraticConfig())
    a, b = fam.sample("source", 3, 0, 2), fam.sample("source", 3, 0, 2)
    assert torch.equal(a.a, b.a) and torch.equal(a.x0, b.x0)
    assert not torch.equal(fam.sample("target", 3, 0, 2).a, a.a)


def test_quadratic_condition_number_and_shift() -> None:
    cfg = QuadraticConfig(dim=8, rows=8, log10_cond=(2.0, 2.0), log10_scale=(0.0, 0.0))
    fam = QuadraticFamily(cfg)
    for shift, want in ((0.0, 100.0), (1.0, 1000.0)):
        p = fam.sample("source", 0, 0, 1, shift)
        eig = torch.linalg.eigvalsh(p.a[0].T @ p.a[0] / 8).double()
        assert (eig.max() / eig.min()).item() == pytest.approx(want, rel=1e-2)


def test_lasso_optimum_is_below_every_optimizer() -> None:
    p = LassoFamily(LassoConfig(dim=10, rows=6)).sample("source", 0, 0, 3)
    fstar = p.optimum()
    step, init = adam_step(0.05)
    losses, _ = run_trajectory(step, init(3, 10), p, 300)
    assert (losses[-1].double() >= fstar - 1e-5).all()
    assert (losses[-1].double() - fstar).max() < 0.05


def test_tune_lr_picks_a_converging_rate() -> None:
    fam = QuadraticFamily(QuadraticConfig(dim=5, rows=5))
    lr, scores = tune_lr(fam, "sgd", (1e-4, 0.1, 100.0), 30, 2, 2, 0)
    assert lr == 0.1 and scores["100.0"] == float("inf")


# ---- meta-training ------------------------------------------------------------------------------
def cfg_for(tmp_path: Path, method: str = "l2o", **over: object) -> TrainConfig:
    l2o = {"family": "quadratic", "horizon": 6, "unroll": 3, "hidden": 4, "progressive": (2, 3),
           "quadratic": {"dim": 4, "rows": 4}, "adapt_steps": 2, "adapt_unroll": 2,
           **over.pop("l2o", {})}  # fmt: skip
    data = {"method": method, "out": str(tmp_path / method), "steps": 4, "batch_size": 2,
            "device": "cpu", "log_every": 1, "checkpoint_every": 2, "l2o": l2o, **over}  # fmt: skip
    return TrainConfig.model_validate(data)


@pytest.mark.parametrize("method", ["l2o", "l2o-tt", "l2o-flat", "m-l2o"])
def test_every_method_trains_and_loads(tmp_path: Path, method: str) -> None:
    result = train_l2o(cfg_for(tmp_path, method))
    assert result.complete and result.step == 4 and result.final_loss is not None
    model, meta = load_l2o(result.policy)
    assert meta.method == method and meta.complete and meta.trained_steps == 4
    assert meta.family["name"] == "quadratic"
    if method == "l2o-tt":
        assert meta.teacher["name"] == "adam" and meta.teacher["lr"] > 0
    init = LSTMOptimizer(hidden=4)
    assert any(
        not torch.equal(p, q) for p, q in zip(model.parameters(), init.parameters(), strict=True)
    )


def test_same_seed_same_bytes_and_resume_equals_uninterrupted(tmp_path: Path) -> None:
    # l2o-tt's schedules depend on the total number of episodes: resume it with the same steps
    a = train_l2o(cfg_for(tmp_path / "a", "l2o-tt"))
    a2 = train_l2o(cfg_for(tmp_path / "a2", "l2o-tt"))
    assert (Path(a.policy) / "model.safetensors").read_bytes() == (
        Path(a2.policy) / "model.safetensors"
    ).read_bytes()
    c = train_l2o(cfg_for(tmp_path / "c", "l2o"))
    train_l2o(cfg_for(tmp_path / "d", "l2o", steps=2))
    d = train_l2o(cfg_for(tmp_path / "d", "l2o"))
    assert d.step == 4
    lines = (Path(d.policy) / "metrics.jsonl").read_text().splitlines()
    assert [__import__("json").loads(x)["step"] for x in lines] == [1, 2, 3, 4]
    assert (Path(c.policy) / "model.safetensors").read_bytes() == (
        Path(d.policy) / "model.safetensors"
    ).read_bytes()


def test_progressive_schedule_and_imitation_decay(tmp_path: Path) -> None:
    from lohp_cli.l2o.fit import imitation_weight, unroll_length

    cfg = cfg_for(
        tmp_path, "l2o-tt", steps=10, l2o={"progressive": (5, 10, 20), "imitation_weight": 1.0}
    )
    assert [unroll_length(cfg, e) for e in range(10)] == [5] * 4 + [10] * 3 + [20] * 3
    assert imitation_weight(cfg, 0) == 1.0 and imitation_weight(cfg, 5) == 0.0
    assert imitation_weight(cfg_for(tmp_path, "l2o"), 0) == 0.0


def test_meta_loss_objectives() -> None:
    losses, initial = torch.tensor([[1.0, 4.0], [0.1, 0.4]]), torch.tensor([10.0, 4.0])
    assert torch.isclose(
        meta_loss(losses, initial, "ratio"), torch.tensor((0.1 + 1 + 0.01 + 0.1) / 4)
    )
    log = torch.log(torch.tensor([0.1, 1.0, 0.01, 0.1])).mean()
    assert torch.isclose(meta_loss(losses, initial, "log"), log)
    assert TrainConfig.model_validate({"method": "l2o"}).l2o.objective == "log"


@pytest.mark.parametrize("method", ["l2o", "m-l2o"])
def test_m_l2o_updates_as_often_as_l2o(tmp_path: Path, method: str) -> None:
    # one meta-update per unroll for both (m-l2o: the gradient at the adapted copy, first order)
    from lohp_cli.l2o.apply import build_l2o
    from lohp_cli.l2o.fit import run_episode
    from lohp_cli.l2o.problems import make_problem_family

    cfg = cfg_for(tmp_path, method)
    model = build_l2o(cfg.l2o, 0)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    run_episode(cfg, model, opt, make_problem_family(cfg.l2o), 2, None, 0, "cpu")
    steps = {int(st["step"]) for st in opt.state.values()}
    assert steps == {cfg.l2o.horizon // cfg.l2o.unroll}
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))


def test_non_finite_meta_loss_is_a_data_error(tmp_path: Path) -> None:
    cfg = cfg_for(tmp_path, "l2o", l2o={"out_scale": 1e30})
    with pytest.raises(DataError, match="Non-finite"):
        train_l2o(cfg)


def test_method_settings_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no flatness term"):
        train_l2o(cfg_for(tmp_path, "l2o-flat", l2o={"hessian_weight": 0, "entropy_weight": 0}))
    with pytest.raises(ConfigError, match="adapt_steps"):
        train_l2o(cfg_for(tmp_path, "m-l2o", l2o={"adapt_steps": 0}))


def test_lohp_loader_refuses_an_l2o_policy(tmp_path: Path) -> None:
    from lohp_cli.policy.directory import load_policy

    result = train_l2o(cfg_for(tmp_path))
    with pytest.raises(CompatibilityError, match="learned optimizer"):
        load_policy(result.policy)


# ---- image families (a tiny digits store) -------------------------------------------------------
@pytest.fixture(scope="module")
def digits_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lohp_cli.stages.collect import collect
    from tests.conftest import tiny_config

    out = tmp_path_factory.mktemp("digits") / "store.zarr"
    collect(tiny_config(out, optimizers=("sgd", "adam")))
    return out


@pytest.mark.parametrize("method", ["l2o-tt", "l2o-flat"])
def test_store_family_trains_with_stored_imitation(
    digits_store: Path, tmp_path: Path, method: str
) -> None:
    over = {"family": "store", "horizon": 4, "unroll": 2, "progressive": (2,), "teacher": "sgd",
            "hessian_probes": 1, "langevin_steps": 2}  # fmt: skip
    cfg = cfg_for(tmp_path, method, steps=2, store=str(digits_store), l2o=over)
    result = train_l2o(cfg)
    model, meta = load_l2o(result.policy)
    assert meta.store_compat.family.name == "digits" and meta.param_count > 0
    lines = (Path(result.policy) / "metrics.jsonl").read_text().splitlines()
    first = __import__("json").loads(lines[0])
    assert ("imitation" in first) == (method == "l2o-tt")
    assert ("hessian" in first and "entropy" in first) == (method == "l2o-flat")


def test_store_teacher_without_runs_is_a_config_error(digits_store: Path, tmp_path: Path) -> None:
    over = {"family": "store", "horizon": 4, "unroll": 2, "teacher": "sam"}
    with pytest.raises(ConfigError, match="no complete sam runs"):
        train_l2o(cfg_for(tmp_path, "l2o-tt", steps=1, store=str(digits_store), l2o=over))


def test_l2o_accuracies_for_lohp_evaluate(digits_store: Path, tmp_path: Path) -> None:
    from lohp_cli.l2o.apply import l2o_accuracies
    from lohp_cli.l2o.problems import ImageProblemFamily

    over = {"family": "store", "horizon": 4, "unroll": 2}
    result = train_l2o(cfg_for(tmp_path, "m-l2o", steps=1, store=str(digits_store), l2o=over))
    fam = ImageProblemFamily(str(digits_store))
    tid = fam.task_ids("target", 0)
    data = {tid: fam.task_data(tid)}
    meta, accs = l2o_accuracies(
        result.policy, fam.compat, fam.net, data, lambda t, j: fam.initial(0, t, j), 2, 5, 16, 0
    )
    assert meta.method == "m-l2o" and len(accs) == 2 and all(0 <= a <= 1 for a in accs)
    with pytest.raises(CompatibilityError, match="not on the task family"):
        other = fam.compat.model_copy(update={"seed": fam.compat.seed + 1})
        l2o_accuracies(result.policy, other, fam.net, data, lambda t, j: None, 1, 1, 1, 0)
