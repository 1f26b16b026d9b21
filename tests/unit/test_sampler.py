"""The trajectory sampler: statistics against numpy on the whole store, matching, run selection,
batches and the bounded run cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lohp_cli.config import OPTIMIZERS, StoreCodecConfig, TrainConfig, resolve
from lohp_cli.errors import ConfigError, DataError, StoreError
from lohp_cli.store import TrajectoryStore, run_id
from lohp_cli.store.sampler import (
    CONSTANT_SCALE,
    NormStats,
    TrajectorySampler,
    compute_stats,
    matched_indices,
    select_runs,
)
from tests.conftest import make_linear_store, run_array

STEPS = 8  # T = 8 recorded steps: k in {1, 2, 4, 8}


@pytest.fixture(scope="module")
def linear_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    path = tmp_path_factory.mktemp("sampler") / "lin.zarr"
    truth = make_linear_store(path, n_tasks=3, size=6, cond_dim=4, steps=STEPS,
                              optimizers=("sgd", "adam"))  # fmt: skip
    return str(path), truth


@pytest.fixture
def store(linear_store: tuple[str, dict]) -> TrajectoryStore:
    return TrajectoryStore.open(linear_store[0])


def all_weights(store: TrajectoryStore) -> dict[str, np.ndarray]:
    return {rid: store.weights(rid).astype(np.float64) for rid, _ in store.iter_runs()}


# ---- matching -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("states", "k", "expect"),
    [(9, 1, list(range(9))), (9, 2, [0, 2, 4, 6, 8]), (9, 4, [0, 4, 8]), (9, 8, [0, 8]),
     (41, 5, [0, 5, 10, 15, 20, 25, 30, 35, 40])],
)  # fmt: skip
def test_matched_indices(states: int, k: int, expect: list[int]) -> None:
    assert matched_indices(states, k) == expect


@pytest.mark.parametrize(
    ("states", "k", "valid"),
    [(9, 3, "[1, 2, 4, 8]"), (13, 5, "[1, 2, 3, 4, 6, 12]"), (9, 16, "[1, 2, 4, 8]")],
)
def test_k_not_dividing_t_lists_valid_k(states: int, k: int, valid: str) -> None:
    with pytest.raises(ConfigError) as info:
        matched_indices(states, k)
    msg = str(info.value)
    assert f"k={k}" in msg and f"T={states - 1}" in msg and valid in msg


# ---- run selection ------------------------------------------------------------------------------
def test_select_all_runs(store: TrajectoryStore) -> None:
    runs = select_runs(store, None)
    assert len(runs) == 6
    assert {r.optimizer for r in runs} == {"sgd", "adam"}
    assert all(r.run_id == run_id(r.task_id, r.optimizer, 0) for r in runs)


@pytest.mark.parametrize("subset", [("sgd",), ("adam",), ("adam", "sam")])
def test_select_runs_of_an_optimizer_subset(store: TrajectoryStore, subset: tuple[str, ...]):
    runs = select_runs(store, subset)
    assert len(runs) == 3
    assert {r.optimizer for r in runs} == set(subset) & {"sgd", "adam"}


@pytest.mark.parametrize("subset", [(), ("sam",)])
def test_select_runs_with_no_matching_runs_is_a_config_error(
    store: TrajectoryStore, subset: tuple[str, ...]
) -> None:
    with pytest.raises(ConfigError, match="No complete runs of optimizer") as info:
        select_runs(store, subset)
    assert "adam, sgd" in str(info.value), "the message lists what the store has"


def test_empty_optimizer_subset_is_rejected_by_the_config() -> None:
    with pytest.raises(ConfigError, match="optimizer subset is empty"):
        resolve(TrainConfig, sets=["optimizers=[]"])
    with pytest.raises(ConfigError, match="unknown optimizer 'rmsprop'"):
        resolve(TrainConfig, flags={"optimizers": ["rmsprop"]})


def test_store_without_complete_runs(tmp_path: Path) -> None:
    make_linear_store(tmp_path / "empty.zarr", n_tasks=0)
    with pytest.raises(StoreError, match="no complete runs"):
        select_runs(TrajectoryStore.open(str(tmp_path / "empty.zarr")), None)


def test_partial_runs_are_not_selected(tmp_path: Path) -> None:
    loc = str(tmp_path / "s.zarr")
    make_linear_store(loc, n_tasks=2, size=3)
    store = TrajectoryStore.open(loc, mode="r+")
    w = store.begin_run(run_id("c0_1", "adam", 0), STEPS + 1, 3, StoreCodecConfig(),
                        {"task_id": "c0_1", "optimizer": "adam", "replicate": 0})  # fmt: skip
    w.append(np.zeros(3, np.float32), 0.0, 0.0)  # never finished
    runs = select_runs(TrajectoryStore.open(loc), None)
    assert [r.optimizer for r in runs] == ["sgd", "sgd"]
    with pytest.raises(ConfigError):
        select_runs(TrajectoryStore.open(loc), ("adam",))


# ---- statistics ---------------------------------------------------------------------------------
def brute_stats(store: TrajectoryStore, k: int, normalize: str) -> dict[str, np.ndarray]:
    """The same statistics from every matched state of the store at once (numpy, float64)."""
    ws = all_weights(store)
    x = np.stack([w[matched_indices(w.shape[0], k)] for w in ws.values()])  # [R, N+1, P]
    rows = x[:, 0] if normalize == "init" else x.reshape(-1, x.shape[-1])
    mean = rows.mean(0)
    std = rows.std(0) + 1e-6
    std = np.where(std < 1e-4, 1.0, std)
    xn = (x - mean) / std
    step_rms = np.sqrt((np.diff(xn, axis=1) ** 2).mean(axis=(0, 2)))  # [N]
    tasks = sorted({a.task_id for _, a in store.iter_runs()})
    c = np.stack([store.condition(t).astype(np.float64) for t in tasks])
    return {
        "mean": mean,
        "std": std,
        "step_rms": step_rms,
        "cond_mean": c.mean(0),
        "cond_std": c.std(0) + 1e-3,
    }


@pytest.mark.parametrize("normalize", ["init", "all"])
@pytest.mark.parametrize("k", [1, 2, 4])
def test_compute_stats_matches_brute_force(store: TrajectoryStore, normalize: str, k: int) -> None:
    stats = compute_stats(store, select_runs(store, None), k, normalize)
    ref = brute_stats(store, k, normalize)
    assert stats.step_rms.shape == (STEPS // k,)
    for name, value in ref.items():
        got = getattr(stats, name)
        assert got.dtype == torch.float32
        np.testing.assert_allclose(got.numpy(), value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_init_and_all_normalisation_differ(store: TrajectoryStore) -> None:
    runs = select_runs(store, None)
    init, every = compute_stats(store, runs, 1, "init"), compute_stats(store, runs, 1, "all")
    assert not torch.allclose(init.mean, every.mean)
    # "init" makes the optimizers' starts look like s_0 ~ N(0, I)
    x0 = torch.stack([torch.from_numpy(store.weights(r.run_id)[0]) for r in runs])
    z = init.normalize(x0)
    torch.testing.assert_close(z.mean(0), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(0, unbiased=False), torch.ones(6), atol=1e-4, rtol=0)


def test_compute_stats_of_a_subset_uses_only_those_runs(store: TrajectoryStore) -> None:
    runs = select_runs(store, ("sgd",))
    stats = compute_stats(store, runs, 1, "init")
    x0 = np.stack([store.weights(r.run_id)[0].astype(np.float64) for r in runs])
    np.testing.assert_allclose(stats.mean.numpy(), x0.mean(0), rtol=1e-5, atol=1e-6)


def write_runs(loc: str, weights: list[np.ndarray], cond_dim: int = 2) -> TrajectoryStore:
    """A store holding exactly ``weights`` (one run per array, one task per run)."""
    size = weights[0].shape[1]
    make_linear_store(loc, n_tasks=0, size=size, cond_dim=cond_dim, steps=weights[0].shape[0] - 1)
    store = TrajectoryStore.open(loc, mode="r+")
    for t, w in enumerate(weights):
        tid = f"c{t}_{t + 1}"
        store.write_task(tid, np.full(cond_dim, float(t), np.float32), {"split": "source"})
        writer = store.begin_run(run_id(tid, "sgd", 0), w.shape[0], size, StoreCodecConfig(),
                                 {"task_id": tid, "optimizer": "sgd", "replicate": 0})  # fmt: skip
        for row in w:
            writer.append(row.astype(np.float32), 0.0, 0.0)
        writer.finish()
    return TrajectoryStore.open(loc)


def test_constant_coordinate_stays_put(tmp_path: Path) -> None:
    """A weight that never moves gets a tiny scale: s_0 ~ N(0, I) leaves it where it is (a unit
    scale used to move it by O(1) in weight space)."""
    rng = np.random.default_rng(0)
    ws = [rng.normal(size=(5, 3)) for _ in range(4)]
    for w in ws:
        w[:, 1] = 2.5  # a weight that never moves and starts everywhere at the same value
    store = write_runs(str(tmp_path / "c.zarr"), ws)
    stats = compute_stats(store, select_runs(store, None), 1, "init")
    assert float(stats.std[1]) == pytest.approx(CONSTANT_SCALE) and float(stats.mean[1]) == 2.5
    start = stats.denormalize(torch.randn(1000, 3, generator=torch.Generator().manual_seed(0)))
    assert float((start[:, 1] - 2.5).abs().max()) < 1e-3
    assert torch.isfinite(stats.step_rms).all()


def test_batchnorm_like_coordinate_moves_at_its_own_scale(tmp_path: Path) -> None:
    """γ = 1 at every θ_0, then trained: its scale is its spread over the trajectories, so the
    generation's starts stay near 1 and its recorded steps are O(1) in normalised units."""
    rng = np.random.default_rng(1)
    ws = []
    for _ in range(6):
        w = rng.normal(size=(9, 3))
        w[:, 2] = 1.0 + np.cumsum(np.r_[0.0, rng.normal(0, 0.01, 8)])  # starts at exactly 1
        ws.append(w)
    store = write_runs(str(tmp_path / "bn.zarr"), ws)
    stats = compute_stats(store, select_runs(store, None), 1, "init")
    spread = np.concatenate([w[:, 2] for w in ws]).std()
    assert float(stats.mean[2]) == 1.0
    assert float(stats.std[2]) == pytest.approx(spread, rel=1e-4)
    start = stats.denormalize(torch.randn(1000, 3, generator=torch.Generator().manual_seed(0)))
    assert float((start[:, 2] - 1.0).abs().max()) < 6 * spread < 0.3


def test_norm_stats_round_trip_and_inverse(store: TrajectoryStore) -> None:
    stats = compute_stats(store, select_runs(store, None), 2, "init")
    again = NormStats.from_tensors(stats.to_tensors())
    for name in ("mean", "std", "cond_mean", "cond_std", "step_rms"):
        assert torch.equal(getattr(again, name), getattr(stats, name))
    theta = torch.randn(3, 6)
    torch.testing.assert_close(stats.denormalize(stats.normalize(theta)), theta)


# ---- non-finite data ----------------------------------------------------------------------------
@pytest.fixture
def nan_store(tmp_path: Path) -> tuple[TrajectoryStore, str]:
    """A linear store with one NaN in the third recorded state of one run."""
    loc = str(tmp_path / "nan.zarr")
    make_linear_store(loc, n_tasks=2, size=4, steps=STEPS)
    bad = run_id("c1_2", "sgd", 0)
    arr, row = run_array(loc, bad, mode="r+")
    arr[row, 2, 1] = np.nan
    return TrajectoryStore.open(loc), bad


def test_nan_weights_make_compute_stats_raise(nan_store: tuple[TrajectoryStore, str]) -> None:
    store, bad = nan_store
    with pytest.raises(DataError, match=f"Run {bad} .* non-finite weights"):
        compute_stats(store, select_runs(store, None), 1, "init")


def test_nan_weights_make_the_sampler_raise(nan_store: tuple[TrajectoryStore, str]) -> None:
    store, bad = nan_store
    runs = select_runs(store, None)
    good = [r for r in runs if r.run_id != bad]
    stats = compute_stats(store, good, 1, "init")
    sampler = TrajectorySampler(store, runs, 1, stats)
    with pytest.raises(DataError, match=f"Run {bad} .* non-finite weights"):
        for seed in range(20):  # some batch draws the bad run
            sampler.batch(2, torch.Generator().manual_seed(seed))
    assert bad not in sampler.cache


# ---- batches and the cache ----------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 2])
def test_batch_holds_normalised_matched_states(store: TrajectoryStore, k: int) -> None:
    runs = select_runs(store, None)
    stats = compute_stats(store, runs, k, "init")
    sampler = TrajectorySampler(store, runs, k, stats)
    batch = sampler.batch(5, torch.Generator().manual_seed(0))
    assert batch.x.shape == (5, STEPS // k + 1, 6) and batch.cond.shape == (5, 4)
    assert batch.x.dtype == torch.float32 and batch.opt.dtype == torch.long
    by_id = {r.run_id: r for r in runs}
    for b, rid in enumerate(batch.run_ids):
        ref = by_id[rid]
        w = torch.from_numpy(store.weights(rid)[matched_indices(STEPS + 1, k)])
        torch.testing.assert_close(batch.x[b], (w - stats.mean) / stats.std)
        c = torch.from_numpy(store.condition(ref.task_id))
        torch.testing.assert_close(batch.cond[b], (c - stats.cond_mean) / stats.cond_std)
        assert int(batch.opt[b]) == OPTIMIZERS.index(ref.optimizer)


def test_batches_depend_only_on_the_generator(store: TrajectoryStore) -> None:
    runs = select_runs(store, None)
    stats = compute_stats(store, runs, 1, "init")
    a = TrajectorySampler(store, runs, 1, stats).batch(4, torch.Generator().manual_seed(7))
    b = TrajectorySampler(store, runs, 1, stats, cache_mb=0).batch(
        4, torch.Generator().manual_seed(7)
    )
    assert a.run_ids == b.run_ids and torch.equal(a.x, b.x) and torch.equal(a.cond, b.cond)


def test_cache_hits_do_not_reread(store: TrajectoryStore) -> None:
    runs = select_runs(store, None)
    sampler = TrajectorySampler(store, runs, 1, compute_stats(store, runs, 1, "init"))
    seen: set[str] = set()
    for seed in range(10):
        seen |= set(sampler.batch(4, torch.Generator().manual_seed(seed)).run_ids)
    assert sampler.reads == len(seen)


@pytest.mark.parametrize("fit", [0, 1, 2, 3])
def test_cache_never_exceeds_cache_mb(store: TrajectoryStore, fit: int) -> None:
    runs = select_runs(store, None)
    item = (STEPS + 1) * 6 * 4  # bytes of one cached run: [N+1, P] float32
    cache_mb = (fit * item + item // 2) / 2**20  # room for `fit` runs and a half
    sampler = TrajectorySampler(store, runs, 1, compute_stats(store, runs, 1, "init"), cache_mb)
    limit = cache_mb * 2**20
    draws = 0
    for seed in range(15):
        sampler.batch(3, torch.Generator().manual_seed(seed))
        draws += 3
        held = sum(x.numel() * 4 for x, _ in sampler.cache.values())
        assert held == sampler.cache_bytes <= limit
        assert len(sampler.cache) <= fit
    assert len(sampler.cache) == fit
    if fit == 0:
        assert sampler.reads == draws
    else:
        assert sampler.reads < draws
