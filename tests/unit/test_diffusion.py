"""The diffusion generator (lohp_cli/diffusion/): its schedules against their formulas, DDIM against
closed forms (a perfect ε-predictor inverts the forward process; Gaussian data come out with their
moments), two condition-tied weight clusters generated each from its own condition, resume to the
same bytes, and the policy directory it writes and loads."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

import lohp_cli.diffusion  # noqa: F401 - registers the method, as the stages do
from lohp_cli.config import TrainConfig, resolve
from lohp_cli.diffusion.config import DiffusionTrainConfig
from lohp_cli.diffusion.fit import train_diffusion
from lohp_cli.diffusion.model import DiffusionPolicy, build_diffusion
from lohp_cli.diffusion.schedule import NoiseSchedule, cosine_betas, linear_betas
from lohp_cli.errors import ConfigError
from lohp_cli.policy.directory import load_policy, local_steps
from lohp_cli.stages.train import train_policy
from lohp_cli.store import TrajectoryStore
from tests.conftest import make_linear_store

MLP = {"backbone": "mlp", "hidden": 32, "emb_dim": 16}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> str:
    """3 tasks × (sgd, adam), P = 6, D = 3, T = 4."""
    path = tmp_path_factory.mktemp("diffusion") / "small.zarr"
    make_linear_store(path, n_tasks=3, size=6, cond_dim=3, steps=4, optimizers=("sgd", "adam"))
    return str(path)


def config(store: str, out: Path, **over: Any) -> DiffusionTrainConfig:
    data: dict[str, Any] = {
        "store": store, "out": str(out), "method": "diffusion", "steps": 6, "batch_size": 4,
        "device": "cpu", "log_every": 1, "checkpoint_every": 100, "policy": dict(MLP),
        "diffusion": {"timesteps": 50, "sample_steps": 10}, **over,
    }  # fmt: skip
    return TrainConfig.model_validate(data)


# ---- the schedules -------------------------------------------------------------------------------
def test_linear_schedule_is_ddpms() -> None:
    b = linear_betas(1000)
    assert b.dtype == torch.float64 and b.shape == (1000,)
    assert math.isclose(float(b[0]), 1e-4) and math.isclose(float(b[-1]), 0.02)
    assert torch.allclose(b[1:] - b[:-1], torch.full((999,), (0.02 - 1e-4) / 999, dtype=b.dtype))
    assert math.isclose(float(linear_betas(100)[-1]), 0.2)  # scaled by 1000/T
    ab = NoiseSchedule(b).alpha_bar
    assert math.isclose(float(ab[0]), 1 - 1e-4)
    assert torch.allclose(ab, torch.cumprod(1 - b, 0))
    assert 1e-5 < float(ab[-1]) < 1e-4  # exp(−Σβ) ≈ 4e-5: nearly pure noise at t = T − 1


def test_cosine_schedule_follows_its_alpha_bar() -> None:
    t, s = 1000, 0.008
    ab = NoiseSchedule(cosine_betas(t)).alpha_bar
    f = [math.cos((i / t + s) / (1 + s) * math.pi / 2) ** 2 for i in range(t + 1)]
    want = torch.tensor([f[i + 1] / f[0] for i in range(t)], dtype=torch.float64)
    assert torch.allclose(ab[:-1], want[:-1], rtol=1e-9)  # every step but the capped last one
    assert math.isclose(float(cosine_betas(t)[-1]), 0.999)
    assert bool((ab[1:] < ab[:-1]).all())


def test_ddim_visits_every_step_at_s_equal_t_and_starts_at_the_noisiest() -> None:
    sched = NoiseSchedule.make("linear", 1000)
    assert sched.sampling_steps(1000) == list(range(999, -1, -1))
    assert sched.sampling_steps(10) == list(range(999, 0, -100))
    assert sched.sampling_steps(1) == [999]
    for bad in (0, 1001):
        with pytest.raises(ValueError, match="1 … 1000"):
            sched.sampling_steps(bad)


# ---- DDIM against closed forms -------------------------------------------------------------------
def ddim(sched: NoiseSchedule, eps_fn: Any, x: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """Every state of a deterministic DDIM run from ``x`` with the predictor ``eps_fn(x, t)``."""
    taus = sched.sampling_steps(steps)
    path = [x]
    for i, t in enumerate(taus):
        t_prev = taus[i + 1] if i + 1 < len(taus) else None
        x = sched.ddim_step(x, eps_fn(x, t), t, t_prev)
        path.append(x)
    return path


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_ddim_with_a_perfect_predictor_inverts_the_forward_process(kind: str) -> None:
    """Data = one point x0: the optimal ε(x_t, t) = (x_t − √ᾱ_t x0)/√(1 − ᾱ_t). DDIM (η = 0,
    S = T) then stays on the forward process of the noise it started from: x_τ = q(x0, τ, ε)."""
    sched = NoiseSchedule.make(kind, 200)
    ab = sched.alpha_bar
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 5, generator=gen, dtype=torch.float64) * 3
    xs = torch.randn(4, 5, generator=gen, dtype=torch.float64)  # x_S

    def eps_fn(x: torch.Tensor, t: int) -> torch.Tensor:
        return (x - ab[t].sqrt() * x0) / (1 - ab[t]).sqrt()

    path = ddim(sched, eps_fn, xs, 200)
    eps = eps_fn(xs, 199)  # the noise x_S stands for
    for x, t in zip(path[1:-1], sched.sampling_steps(200)[1:], strict=True):
        torch.testing.assert_close(x, sched.q_sample(x0.expand(4, -1), torch.full((4,), t), eps))
    torch.testing.assert_close(path[-1], x0.expand(4, -1), rtol=0, atol=1e-9)
    # fewer steps land there too (every x_0 prediction is exact)
    torch.testing.assert_close(ddim(sched, eps_fn, xs, 7)[-1], x0.expand(4, -1), rtol=0, atol=1e-9)


@pytest.mark.parametrize(("steps", "tol"), [(1000, 0.03), (50, 0.15)])
def test_ddim_turns_noise_into_gaussian_data_with_its_moments(steps: int, tol: float) -> None:
    """Data x0 ~ N(μ, s²I): the optimal ε is √(1−ᾱ)(x − √ᾱ μ)/(ᾱ s² + 1 − ᾱ); DDIM's
    deterministic samples from N(0, I) must have mean μ and standard deviation s (S = 50 is a
    coarser discretisation of the same ODE: its spread is off by about 9 %)."""
    sched = NoiseSchedule.make("linear", 1000)
    ab = sched.alpha_bar
    mu, s = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64), 0.3

    def eps_fn(x: torch.Tensor, t: int) -> torch.Tensor:
        a = ab[t]
        return (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * s**2 + 1 - a)

    xs = torch.randn(6000, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = ddim(sched, eps_fn, xs, steps)[-1]
    torch.testing.assert_close(out.mean(0), mu, rtol=0, atol=0.01)
    torch.testing.assert_close(out.std(0), torch.full((3,), s, dtype=torch.float64), rtol=tol,
                               atol=0)  # fmt: skip


def test_stochastic_ddim_needs_noise_and_clamps_its_x0() -> None:
    sched = NoiseSchedule.make("linear", 100)
    x, eps = torch.ones(2, 3), torch.zeros(2, 3)
    with pytest.raises(ValueError, match="noise"):
        sched.ddim_step(x, eps, 99, 50, eta=1.0)
    out = sched.ddim_step(x, eps, 99, None, clip=2.0)  # x0 = x/√ᾱ ≫ 2 without the clamp
    torch.testing.assert_close(out, torch.full((2, 3), 2.0))


# ---- it learns: two clusters, each tied to its condition -----------------------------------------
def test_two_condition_tied_clusters_are_generated_each_from_its_condition() -> None:
    torch.manual_seed(0)
    p, d = 8, 2
    sign = torch.tensor([1.0, -1.0] * (p // 2))
    centers = torch.stack([1.5 * sign, -1.5 * sign])  # [2, P], 8.5 apart
    conds = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # condition A, B
    cfg = DiffusionTrainConfig.model_validate(
        {"policy": {"backbone": "mlp", "hidden": 64, "emb_dim": 32},
         "diffusion": {"timesteps": 100, "sample_steps": 20}}
    )  # fmt: skip
    model = build_diffusion(cfg, p, d, 20, None)  # type: ignore[arg-type]
    model.x0_bound.fill_(2.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        k = torch.randint(0, 2, (64,), generator=gen)
        x0 = centers[k] + 0.1 * torch.randn(64, p, generator=gen)  # [B, P]
        t = torch.randint(0, 100, (64,), generator=gen)
        loss = model.loss(x0, conds[k], t, torch.randn(64, p, generator=gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    for steps in (10, 20):
        model.set_sample_steps(steps)
        for c in (0, 1):
            with torch.no_grad():
                x = model.rollout(torch.randn(32, p, generator=gen), 0, conds[c].expand(32, -1))
            assert x.shape == (32, steps + 1, p)
            dist = torch.cdist(x[:, -1], centers)  # [32, 2]
            assert bool((dist[:, c] < 2.0).all()), f"S={steps}, condition {c}: {dist[:, c]}"
            assert bool((dist[:, 1 - c] > 6.0).all()), f"S={steps}, condition {c}: other cluster"


# ---- training on a store: resume, the policy directory -------------------------------------------
def tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def assert_same_tensors(a: Path, b: Path) -> None:
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), f"{a.name}: tensor {key!r} differs"


def test_resume_equals_uninterrupted(small: str, tmp_path: Path) -> None:
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train_diffusion(config(small, whole, steps=6, checkpoint_every=3))
    first = train_diffusion(config(small, parts, steps=3, checkpoint_every=3))
    assert first.step == 3 and first.complete
    events: list[dict[str, Any]] = []
    second = train_policy(config(small, parts, steps=6, checkpoint_every=3), events.append)
    assert {"event": "resume", "step": 3} in events
    assert second.step == 6 and second.complete
    assert_same_tensors(whole / "model.safetensors", parts / "model.safetensors")
    assert_same_tensors(whole / "state" / "optimizer.safetensors",
                        parts / "state" / "optimizer.safetensors")  # fmt: skip
    lines = [json.loads(ln) for ln in (parts / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == list(range(1, 7))


def test_policy_directory_and_loading(small: str, tmp_path: Path) -> None:
    out = tmp_path / "p"
    train_policy(config(small, out))
    meta = json.loads((out / "config.json").read_text())
    assert meta["method"] == "diffusion" and meta["complete"] and meta["trained_steps"] == 6
    assert (meta["k"], meta["N"], meta["T"]) == (4, 10, 4)  # k = T: θ_0 → θ_T; N = S
    assert meta["train_config"]["diffusion"] == {"schedule": "linear", "timesteps": 50,
                                                 "sample_steps": 10}  # fmt: skip
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "normalization.safetensors",
                                              "config.json", "metrics.jsonl", "state"}  # fmt: skip
    model, pmeta, stats = load_policy(out)
    assert isinstance(model, DiffusionPolicy) and not model.training and not local_steps(pmeta)
    store = TrajectoryStore.open(small)
    ends = torch.stack([torch.from_numpy(store.weights(r)[-1]) for r, _ in store.iter_runs()])
    assert float(model.x0_bound) == pytest.approx(float(stats.normalize(ends).abs().max()))
    model, pmeta, _ = load_policy(out, sample_steps=50)
    assert model.sample_steps == pmeta.N == 50
    with pytest.raises(ConfigError, match=r"1 … 50 DDIM steps"):
        load_policy(out, sample_steps=51)


def test_normalisation_is_lo_hps(small: str, tmp_path: Path) -> None:
    """The same store, optimizer subset and settings give Lo-Hp's normalisation statistics."""
    train_policy(config(small, tmp_path / "d", steps=1, optimizers=["adam"]))
    lohp = {"store": small, "out": str(tmp_path / "l"), "k": 1, "steps": 1, "batch_size": 2,
            "device": "cpu", "optimizers": ["adam"], "policy": MLP}  # fmt: skip
    train_policy(TrainConfig.model_validate(lohp))
    a = tensors(tmp_path / "d" / "normalization.safetensors")
    b = tensors(tmp_path / "l" / "normalization.safetensors")
    for key in ("mean", "std", "cond_mean", "cond_std"):
        assert torch.equal(a[key], b[key]), key
    assert json.loads((tmp_path / "d" / "config.json").read_text())["runs_used"] == 3


def test_a_lo_hp_policy_takes_no_sample_steps(small: str, tmp_path: Path) -> None:
    lohp = {"store": small, "out": str(tmp_path / "l"), "k": 1, "steps": 1, "batch_size": 2,
            "device": "cpu", "policy": MLP}  # fmt: skip
    train_policy(TrainConfig.model_validate(lohp))
    with pytest.raises(ConfigError, match=r"\(lo-hp\) takes the N = 4 steps it was trained for"):
        load_policy(tmp_path / "l", sample_steps=4)


# ---- the config ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("sets", "words"),
    [
        (["diffusion.sample_steps=2000"], "sample_steps = 2000 exceeds diffusion.timesteps = 1000"),
        (["diffusion.sample_steps=0"], "diffusion.sample_steps: Input should be greater than"),
        (["policy.sigma=learned"], "sigma: Lo-Hp setting(s) the diffusion denoiser does not use"),
        (["k=2"], "k: belongs to the methods lo-hp, lo-op, lo-di, hypernetwork, not to diffusion"),
        (["diffusion.schedule=sqrt"], "diffusion.schedule: Input should be 'linear' or 'cosine'"),
    ],
)
def test_bad_settings_are_refused_by_name(sets: list[str], words: str) -> None:
    with pytest.raises(ConfigError) as err:
        resolve(TrainConfig, sets=sets, flags={"method": "diffusion"})
    assert words in str(err.value)


def test_the_denoiser_takes_each_registered_backbone() -> None:
    """unet, mlp and coordinate (rows needs a layered target: tests/cli/test_diffusion_cli.py)."""
    for backbone in ("unet", "mlp", "coordinate"):
        cfg = DiffusionTrainConfig.model_validate(
            {"policy": {"backbone": backbone, "channels": [8], "patch": 2, "hidden": 8,
                        "coordinate_hidden": 8, "emb_dim": 8},
             "diffusion": {"timesteps": 10, "sample_steps": 3}}
        )  # fmt: skip
        model = build_diffusion(cfg, 7, 2, 3, None)  # type: ignore[arg-type]
        x = model.rollout(torch.randn(2, 7), 0, torch.randn(2, 2))
        assert x.shape == (2, 4, 7) and bool(torch.isfinite(x).all())


def test_the_example_config_loads() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "diffusion-cpu.toml"
    cfg = resolve(TrainConfig, example, sets=["diffusion.sample_steps=10"])
    assert type(cfg) is DiffusionTrainConfig and cfg.policy.backbone == "mlp"
    assert cfg.diffusion.sample_steps == 10 and cfg.diffusion.timesteps == 1000


def test_sample_mode_is_stochastic_ddim_seeded_by_its_generator() -> None:
    cfg = DiffusionTrainConfig.model_validate(
        {"policy": MLP, "diffusion": {"timesteps": 20, "sample_steps": 5}}
    )
    model = build_diffusion(cfg, 6, 2, 5, None)  # type: ignore[arg-type]
    model.x0_bound.fill_(3.0)
    xs, c = torch.randn(3, 6), torch.randn(3, 2)

    def run(mode: str, seed: int | None = None) -> torch.Tensor:
        gen = None if seed is None else torch.Generator().manual_seed(seed)
        with torch.no_grad():
            return model.rollout(xs, 0, c, mode=mode, gen=gen)

    assert torch.equal(run("mean"), run("mean"))
    assert torch.equal(run("sample", 1), run("sample", 1))
    assert not torch.equal(run("sample", 1), run("sample", 2))
    assert not torch.equal(run("sample", 1), run("mean"))
    assert float(run("mean")[:, -1].abs().max()) <= 3.0  # the clamped x_0
