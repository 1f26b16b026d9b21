"""Per-tensor normalisation (``policy.normalization = "tensor"``): known pooled statistics on a
tiny layout, the default unchanged to the bit, the setting saved, checked on resume and refused
when unknown."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lohp_cli.config import TrainConfig, resolve
from lohp_cli.errors import CompatibilityError, ConfigError
from lohp_cli.policy.directory import load_policy
from lohp_cli.stages.train import train_policy
from lohp_cli.store import TrajectoryStore
from lohp_cli.store.sampler import CONSTANT_SCALE, compute_stats, pool_by_tensor, select_runs
from lohp_cli.tasks.layout import ParamLayout
from tests.unit.test_sampler import write_runs
from tests.unit.test_train import config, tensors

# P = 5: a [2] vector, b [1, 2] (constant at θ_0, then moving: batch-norm-like), c [1] (never moves)
LAYOUT = [
    {"name": "a", "shape": [2], "offset": 0},
    {"name": "b", "shape": [1, 2], "offset": 2},
    {"name": "c", "shape": [1], "offset": 4},
]
RUNS = [
    np.array([[0, 2, 10, 10, 1], [1, 3, 11, 9, 1], [2, 4, 12, 8, 1]], np.float64),
    np.array([[4, 6, 10, 10, 1], [5, 7, 9, 11, 1], [6, 8, 8, 12, 1]], np.float64),
]


@pytest.fixture
def tiny(tmp_path: Path) -> TrajectoryStore:
    store = write_runs(str(tmp_path / "tiny.zarr"), [w.copy() for w in RUNS])
    TrajectoryStore.open(store.location, mode="r+").update_attrs(layout=LAYOUT)
    return TrajectoryStore.open(store.location)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Class-subset tasks with a head-like layout: weight [C, H], bias [C]."""
    from tests.conftest import make_class_store

    path = str(tmp_path_factory.mktemp("scope") / "cls.zarr")
    make_class_store(path)
    return path


def test_pool_by_tensor_broadcasts_each_tensors_mean() -> None:
    layout = ParamLayout.from_json(LAYOUT)
    got = pool_by_tensor(np.array([1.0, 3.0, 4.0, 8.0, 5.0]), layout)
    np.testing.assert_array_equal(got, [2.0, 2.0, 6.0, 6.0, 5.0])
    with pytest.raises(CompatibilityError, match="5 parameters, its runs 4"):
        pool_by_tensor(np.zeros(4), layout)


def test_tensor_statistics_known_answers(tiny: TrajectoryStore) -> None:
    """init: a pools θ_0 = 0, 2, 4, 6 (mean 3, std √5); b is 10 at every θ_0, so it takes its
    spread over all states, pooled (√(5/3)); c never moves (CONSTANT_SCALE). Steps: a +1, b ±1,
    c 0 per coordinate, so step_rms² = (2/5 + 2·3/5 + 0) / 5 at both steps."""
    stats = compute_stats(tiny, select_runs(tiny, None), 1, "init", scope="tensor")
    np.testing.assert_allclose(stats.mean.numpy(), [3, 3, 10, 10, 1], rtol=1e-6)
    want = [5**0.5 + 1e-6] * 2 + [(5 / 3) ** 0.5] * 2 + [CONSTANT_SCALE]
    np.testing.assert_allclose(stats.std.numpy(), want, rtol=1e-6)
    np.testing.assert_allclose(stats.step_rms.numpy(), [0.32**0.5] * 2, rtol=1e-5)
    # per coordinate, a's two coordinates differ (means 2 and 4, std 2 each)
    coord = compute_stats(tiny, select_runs(tiny, None), 1, "init")
    np.testing.assert_allclose(coord.mean.numpy()[:2], [2, 4], rtol=1e-6)
    np.testing.assert_allclose(coord.std.numpy()[:2], [2 + 1e-6] * 2, rtol=1e-6)


def test_tensor_statistics_over_every_state_match_numpy(tiny: TrajectoryStore) -> None:
    stats = compute_stats(tiny, select_runs(tiny, None), 2, "all", scope="tensor")
    x = np.stack([w[[0, 2]] for w in RUNS])  # [R, N+1, P], k = 2
    for e, part in (("a", slice(0, 2)), ("b", slice(2, 4))):
        vals = x[..., part]
        np.testing.assert_allclose(stats.mean.numpy()[part], vals.mean(), rtol=1e-6, err_msg=e)
        np.testing.assert_allclose(stats.std.numpy()[part], vals.std() + 1e-6, rtol=1e-6)


def test_unknown_scope_is_a_config_error(tiny: TrajectoryStore) -> None:
    with pytest.raises(ConfigError, match="normalization scope 'layer'"):
        compute_stats(tiny, select_runs(tiny, None), 1, "init", scope="layer")
    with pytest.raises(ConfigError, match="normalization") as info:
        resolve(TrainConfig, sets=["policy.normalization=layer"])
    assert "\n" not in str(info.value).strip()
    # the diffusion generator normalises per coordinate only: it refuses the setting by name
    import lohp_cli.diffusion  # noqa: F401  (registers the method)

    with pytest.raises(ConfigError, match="normalization: Lo-Hp setting"):
        resolve(TrainConfig, sets=["policy.normalization=tensor"], flags={"method": "diffusion"})


def test_default_is_per_coordinate_to_the_bit(store: str, tmp_path: Path) -> None:
    """The default config trains exactly the policy an explicit "coordinate" does, and its
    statistics are the per-coordinate ones compute_stats gives without a scope."""
    assert TrainConfig.model_validate({}).policy.normalization == "coordinate"
    train_policy(config(store, tmp_path / "d", steps=2))
    train_policy(config(store, tmp_path / "c", steps=2, policy={"normalization": "coordinate"}))
    for name in ("model.safetensors", "normalization.safetensors"):
        a, b = tensors(tmp_path / "d" / name), tensors(tmp_path / "c" / name)
        assert all(torch.equal(a[key], b[key]) for key in a) and a.keys() == b.keys()
    st = TrajectoryStore.open(store)
    from lohp_cli.policy.fit import class_symmetry

    plain = compute_stats(st, select_runs(st, None), 1, "init", sym=class_symmetry("auto", st))
    saved = tensors(tmp_path / "d" / "normalization.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in plain.to_tensors().items())


def test_tensor_policy_saves_pooled_stats_and_its_setting(store: str, tmp_path: Path) -> None:
    out = tmp_path / "t"
    train_policy(config(store, out, steps=2, policy={"normalization": "tensor"}))
    _, _, stats = load_policy(out)  # loads as any policy: [P] vectors
    layout = ParamLayout.from_json(TrajectoryStore.open(store).meta.layout)
    for e in layout.entries:
        part = slice(e.offset, e.offset + e.numel)
        for v in (stats.mean[part], stats.std[part]):
            assert torch.allclose(v, v[:1].expand_as(v), rtol=1e-6, atol=0), e.name
    meta = json.loads((out / "config.json").read_text())
    assert meta["train_config"]["policy"]["normalization"] == "tensor"


def retrain(
    store: str, out: Path, scope: str | None, events: list[dict[str, Any]], steps: int = 4
) -> None:
    policy = {"normalization": scope} if scope else {}
    train_policy(config(store, out, steps=steps, checkpoint_every=2, policy=policy), events.append)


def test_resume_keeps_the_scope_and_refuses_another(store: str, tmp_path: Path) -> None:
    out, whole = tmp_path / "p", tmp_path / "whole"
    retrain(store, out, "tensor", [], steps=2)
    with pytest.raises(CompatibilityError, match="other settings"):
        retrain(store, out, None, [])
    events: list[dict[str, Any]] = []
    retrain(store, out, "tensor", events)
    assert {"event": "resume", "step": 2} in events
    retrain(store, whole, "tensor", [])
    for name in ("model.safetensors", "normalization.safetensors"):
        a, b = tensors(whole / name), tensors(out / name)
        assert all(torch.equal(a[key], b[key]) for key in a)


def test_a_policy_from_before_the_setting_resumes_per_coordinate(
    store: str, tmp_path: Path
) -> None:
    out = tmp_path / "old"
    retrain(store, out, None, [], steps=2)
    meta = json.loads((out / "config.json").read_text())
    del meta["train_config"]["policy"]["normalization"]
    (out / "config.json").write_text(json.dumps(meta))
    _, loaded, _ = load_policy(out)
    events: list[dict[str, Any]] = []
    retrain(store, out, None, events)
    assert {"event": "resume", "step": 2} in events
    assert loaded.method == "lo-hp"
