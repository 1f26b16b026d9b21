"""``train_policy`` as a library: it learns, it resumes to the same bytes, it guards its output.

The learning tests use ``make_linear_store``: runs follow θ_{t+1} = θ_t + α (θ*(c) − θ_t) exactly,
so the right answer (the normalised θ*(c) of each task) is known and the generated endpoint can be
measured against it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lohp_cli.checkpoint import state_dir
from lohp_cli.config import TrainConfig, resolve
from lohp_cli.errors import CompatibilityError, ConfigError, DataError, StoreError
from lohp_cli.policy.directory import build_model, load_policy, store_fingerprint
from lohp_cli.policy.objective import Objective
from lohp_cli.stages.train import train_policy
from lohp_cli.store import TrajectoryStore, run_id
from tests.conftest import make_linear_store, run_array

MLP = {"backbone": "mlp", "hidden": 32, "emb_dim": 16}


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread: faster on small, busy machines, and the same floats in every test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def linear(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    """8 tasks, P = 12, D = 4, T = 8 (one sgd run per task)."""
    path = tmp_path_factory.mktemp("train") / "lin.zarr"
    return str(path), make_linear_store(path)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> str:
    """3 tasks × (sgd, adam), P = 6, D = 3, T = 4: for tests that only need a store."""
    path = tmp_path_factory.mktemp("train") / "small.zarr"
    make_linear_store(path, n_tasks=3, size=6, cond_dim=3, steps=4, optimizers=("sgd", "adam"))
    return str(path)


def config(store: str, out: Path | str, **over: Any) -> TrainConfig:
    data: dict[str, Any] = {
        "store": store,
        "out": str(out),
        "k": 1,
        "steps": 6,
        "batch_size": 4,
        "device": "cpu",
        "log_every": 1,
        "checkpoint_every": 100,
        "policy": dict(MLP),
    }
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return TrainConfig.model_validate(data)


def metrics(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def assert_same_tensors(a: Path, b: Path) -> None:
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), f"{a.name}: tensor {key!r} differs"


# ---- it learns ----------------------------------------------------------------------------------
def endpoint_distances(
    out: Path, truth: dict, store: str, start: str = "randn"
) -> tuple[float, float]:
    """Mean distance of the start state and of the generated endpoint to the normalised θ*(c)."""
    model, meta, stats = load_policy(out)
    st = TrajectoryStore.open(store)
    runs = list(st.iter_runs())
    tids = [a.task_id for _, a in runs]
    cond = stats.normalize_condition(torch.tensor(np.stack([truth["conditions"][t] for t in tids])))
    target = stats.normalize(torch.tensor(np.stack([truth["targets"][t] for t in tids])))
    if start == "randn":
        s0 = torch.randn(target.shape, generator=torch.Generator().manual_seed(123))
    else:  # the optimizers' own starts θ_0
        s0 = stats.normalize(torch.tensor(np.stack([st.weights(rid)[0] for rid, _ in runs])))
    with torch.no_grad():
        if meta.method == "hypernetwork":
            end = model(cond)
        else:
            traj = model.rollout(s0, 0, cond, mode="mean")
            assert traj.shape == (len(tids), meta.N + 1, target.shape[1])
            end = traj[:, -1]
    return float((s0 - target).norm(dim=1).mean()), float((end - target).norm(dim=1).mean())


def loss_drop(out: Path, key: str) -> tuple[float, float]:
    lines = metrics(out)
    return lines[0][key], lines[-1][key]


@pytest.mark.slow
def test_lohp_learns_the_linear_store(linear: tuple[str, dict], tmp_path: Path) -> None:
    store, truth = linear
    out = tmp_path / "p"
    cfg = config(store, out, steps=400, batch_size=8, lr=1e-3, log_every=10, checkpoint_every=400)
    result = train_policy(cfg)
    assert result.complete and result.step == 400
    first, last = loss_drop(out, "loss")
    assert last < first / 10, (first, last)
    assert metrics(out)[-1]["off"] < metrics(out)[0]["off"]
    d_start, d_end = endpoint_distances(out, truth, store)
    assert d_end * 3 < d_start, f"endpoint {d_end:.3f} not 3× closer than the start {d_start:.3f}"


def test_hypernetwork_learns_the_linear_store(linear: tuple[str, dict], tmp_path: Path) -> None:
    store, truth = linear
    out = tmp_path / "h"
    train_policy(config(store, out, method="hypernetwork", steps=200, batch_size=8, log_every=10))
    first, last = loss_drop(out, "mse")
    assert last < first / 10, (first, last)
    d_start, d_end = endpoint_distances(out, truth, store)
    assert d_end * 3 < d_start, (d_start, d_end)


def test_lodi_learns_the_linear_store(linear: tuple[str, dict], tmp_path: Path) -> None:
    """Lo-Di regresses local steps around the offline states, so it is judged from the
    optimizers' starts θ_0 (from s_0 ~ N(0, I) it has only ever seen 8 starts)."""
    store, truth = linear
    out = tmp_path / "d"
    train_policy(config(store, out, method="lo-di", steps=300, batch_size=8, log_every=10))
    first, last = loss_drop(out, "mse")
    assert last < first / 5, (first, last)
    d_start, d_end = endpoint_distances(out, truth, store, start="theta0")
    assert d_end * 3 < d_start, (d_start, d_end)


def test_lo_op_trains_on_policy_only(small: str, tmp_path: Path) -> None:
    out = tmp_path / "o"
    result = train_policy(config(small, out, method="lo-op", steps=3))
    assert result.complete
    assert all("on" in m and "off" not in m for m in metrics(out))
    assert all("off" in m and "on" in m for m in metrics_of(small, tmp_path / "h", "lo-hp"))


def metrics_of(store: str, out: Path, method: str) -> list[dict[str, Any]]:
    train_policy(config(store, out, method=method, steps=2))
    return metrics(out)


# ---- the artifact -------------------------------------------------------------------------------
def test_policy_directory_contents(small: str, tmp_path: Path) -> None:
    out = tmp_path / "p"
    result = train_policy(config(small, out, steps=5, log_every=2, checkpoint_every=2))
    assert result.policy == str(out) and result.step == 5 and result.complete
    assert result.final_loss is not None and np.isfinite(result.final_loss)
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "config.json", "metrics.jsonl", "model.safetensors", "normalization.safetensors", "state"
    ]  # fmt: skip
    meta = json.loads((out / "config.json").read_text())
    st = TrajectoryStore.open(small)
    assert meta["kind"] == "lohp.policy" and meta["format"] == 1
    assert (meta["method"], meta["k"], meta["N"], meta["T"]) == ("lo-hp", 1, 4, 4)
    assert meta["param_count"] == 6 and meta["condition_dim"] == 3 and meta["runs_used"] == 6
    assert meta["store_fingerprint"] == store_fingerprint(st)
    assert meta["trained_steps"] == 5 and meta["complete"] is True
    assert meta["train_config"]["steps"] == 5 and meta["provenance"]["device"] == "cpu"
    assert TrainConfig.model_validate(meta["train_config"]) == config(
        small, out, steps=5, log_every=2, checkpoint_every=2
    )
    lines = metrics(out)
    assert [m["step"] for m in lines] == [2, 4, 5]  # every log_every steps, and the last
    for m in lines:
        assert {"step", "loss", "off", "on", "grad_norm", "time_s"} <= m.keys()
        assert np.isfinite(m["loss"]) and m["loss"] == pytest.approx(m["off"] + m["on"], rel=1e-5)
    assert json.loads((out / "state" / "trainer.json").read_text()) == {"step": 5}
    assert_same_tensors(out / "model.safetensors", out / "state" / "model.safetensors")


def test_progress_events(small: str, tmp_path: Path) -> None:
    events: list[dict[str, Any]] = []
    train_policy(config(small, tmp_path / "p", steps=3), events.append)
    assert events[0]["event"] == "info" and events[0]["threads"] == 1  # the stage's threads
    kinds = [e["event"] for e in events[1:]]
    assert kinds[:3] == ["device", "stats", "start"]
    assert kinds.count("log") == 3
    start = events[3]
    assert start["runs"] == 6 and start["N"] == 4 and start["step"] == 0 and start["params"] > 0


def test_same_seed_same_weights_other_seed_other_weights(small: str, tmp_path: Path) -> None:
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        train_policy(config(small, tmp_path / name, steps=3, seed=seed))
    assert_same_tensors(tmp_path / "a" / "model.safetensors", tmp_path / "b" / "model.safetensors")
    a, c = (
        tensors(tmp_path / "a" / "model.safetensors"),
        tensors(tmp_path / "c" / "model.safetensors"),
    )
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_load_policy_gives_the_trained_model(small: str, tmp_path: Path) -> None:
    cfg = config(small, tmp_path / "p", steps=3, policy={"sigma": "learned"})
    train_policy(cfg)
    model, meta, stats = load_policy(tmp_path / "p")
    saved = tensors(tmp_path / "p" / "model.safetensors")
    assert model.state_dict().keys() == saved.keys()
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    assert "log_sigma" in dict(model.named_parameters())
    ref = build_model(cfg, 6, 3, 4, stats)
    assert ref.state_dict().keys() == saved.keys()


# ---- resume -------------------------------------------------------------------------------------
RESUME_CASES = {
    "lo-hp": {},
    "lo-hp-learned": {
        "policy": {"sigma": "learned", "backward": "learned", "coefficient": "mlp"},
        "window": 2,
        "loss": {"on_policy_grad": "detached", "pairs": "equal"},
    },
    "lo-hp-unet": {"policy": {"backbone": "unet", "channels": (8, 16), "patch": 4}},
    "lo-di": {"method": "lo-di"},
    "hypernetwork": {"method": "hypernetwork"},
    # a validation split: the best score, step and bad count resume from trainer.json (a run
    # cut by a crash: tests/unit/test_validation.py; here the first part's last step, 3, is
    # validated as the end of a run, so val_every = 3 for the same validations as the whole)
    "lo-hp-val": {"val_tasks": 1, "val_every": 3, "patience": 5},
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_resume_equals_uninterrupted(small: str, tmp_path: Path, case: str) -> None:
    over = RESUME_CASES[case]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train_policy(config(small, whole, steps=6, checkpoint_every=3, **over))
    # a "crash" right after the checkpoint at step 3, then the same command with steps=6
    first = train_policy(config(small, parts, steps=3, checkpoint_every=3, **over))
    assert first.step == 3 and first.complete
    events: list[dict[str, Any]] = []
    second = train_policy(config(small, parts, steps=6, checkpoint_every=3, **over), events.append)
    assert {"event": "resume", "step": 3} in events
    assert second.step == 6 and second.complete
    assert_same_tensors(whole / "model.safetensors", parts / "model.safetensors")
    assert_same_tensors(
        whole / "state" / "optimizer.safetensors", parts / "state" / "optimizer.safetensors"
    )
    steps = [m["step"] for m in metrics(parts) if "val_loss" not in m]  # training lines
    assert steps == sorted(set(steps)) == list(range(1, 7))
    assert json.loads((parts / "config.json").read_text())["trained_steps"] == 6
    val = [[(m["step"], m["val_loss"], m["best"]) for m in metrics(d) if "val_loss" in m]
           for d in (whole, parts)]  # fmt: skip
    assert val[0] == val[1] and [s for s, _, _ in val[0]] == ([3, 6] if "val_tasks" in over else [])
    if "val_tasks" in over:  # model.safetensors is the best; state/ has the last weights
        cw, cp = (json.loads((d / "config.json").read_text())["validation"] for d in (whole, parts))
        assert cw == cp and cw["stop_reason"] == "steps"
        last = [d / "state" / "model.safetensors" for d in (whole, parts)]
        assert_same_tensors(*last)


class Crash(Exception):
    pass


def crash_at(step: int):
    def on_event(e: dict[str, Any]) -> None:
        if e["event"] == "log" and e["step"] == step:
            raise Crash

    return on_event


def test_resume_after_a_crash_between_checkpoints(small: str, tmp_path: Path) -> None:
    """Metrics logged after the last checkpoint are dropped and redone: no duplicate steps."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    train_policy(config(small, whole, steps=8, checkpoint_every=3))
    with pytest.raises(Crash):
        train_policy(config(small, cut, steps=8, checkpoint_every=3), crash_at(5))
    assert [m["step"] for m in metrics(cut)] == [1, 2, 3, 4, 5]  # 4 and 5 are past the checkpoint
    assert json.loads((cut / "state" / "trainer.json").read_text()) == {"step": 3}
    result = train_policy(config(small, cut, steps=8, checkpoint_every=3))
    assert result.step == 8
    assert [m["step"] for m in metrics(cut)] == list(range(1, 9))
    assert_same_tensors(whole / "model.safetensors", cut / "model.safetensors")
    lw, lc = metrics(whole), metrics(cut)
    assert [m["loss"] for m in lw] == [m["loss"] for m in lc]


def test_resume_after_a_cut_metrics_line(small: str, tmp_path: Path) -> None:
    out = tmp_path / "p"
    train_policy(config(small, out, steps=3, checkpoint_every=3))
    with open(out / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 4, "lo')  # a crash in the middle of a line
    train_policy(config(small, out, steps=5, checkpoint_every=3))
    assert [m["step"] for m in metrics(out)] == [1, 2, 3, 4, 5]


def test_rerun_after_a_crash_before_the_first_checkpoint(small: str, tmp_path: Path) -> None:
    """Stopped before any checkpoint (Ctrl-C says 're-run the same command'): it starts over."""
    out = tmp_path / "p"
    with pytest.raises(Crash):
        train_policy(config(small, out, steps=6, checkpoint_every=4), crash_at(2))
    assert state_dir(out) is None
    result = train_policy(config(small, out, steps=6, checkpoint_every=4))
    assert result.complete and result.step == 6
    assert [m["step"] for m in metrics(out)] == list(range(1, 7))
    train_policy(config(small, tmp_path / "ref", steps=6, checkpoint_every=4))
    assert_same_tensors(tmp_path / "ref" / "model.safetensors", out / "model.safetensors")


@pytest.mark.parametrize("files", [["normalization.safetensors"], ["state.tmp/"], []])
def test_rerun_after_a_crash_before_config_json(small: str, tmp_path: Path, files: list[str]):
    """What a kill before config.json is written can leave: our own files only."""
    out = tmp_path / "p"
    out.mkdir()
    for name in files:
        if name.endswith("/"):
            (out / name).mkdir()
        else:
            (out / name).write_bytes(b"partial")
    assert train_policy(config(small, out, steps=2)).complete
    train_policy(config(small, tmp_path / "ref", steps=2))
    assert_same_tensors(tmp_path / "ref" / "model.safetensors", out / "model.safetensors")


@pytest.mark.parametrize("name", [".normalization.safetensors.k2j3.tmp", ".config.json.x1y2.tmp"])
def test_rerun_after_a_kill_inside_an_atomic_write(small: str, tmp_path: Path, name: str):
    out = tmp_path / "p"
    out.mkdir()
    (out / name).write_bytes(b"half a file")
    assert train_policy(config(small, out, steps=2)).complete


def test_leftover_temp_files_do_not_block_a_resume(small: str, tmp_path: Path) -> None:
    out = tmp_path / "p"
    train_policy(config(small, out, steps=2, checkpoint_every=2))
    (out / ".model.safetensors.abcd.tmp").write_bytes(b"half a file")
    (out / "state.tmp").mkdir()
    result = train_policy(config(small, out, steps=4, checkpoint_every=2))
    assert result.step == 4
    train_policy(config(small, tmp_path / "ref", steps=4, checkpoint_every=2))
    assert_same_tensors(tmp_path / "ref" / "model.safetensors", out / "model.safetensors")


def test_max_minutes_stops_resumably(small: str, tmp_path: Path) -> None:
    whole, timed = tmp_path / "whole", tmp_path / "timed"
    train_policy(config(small, whole, steps=5))
    events: list[dict[str, Any]] = []
    first = train_policy(config(small, timed, steps=5, max_minutes=1e-9), events.append)
    assert first.step == 1 and not first.complete
    assert {"event": "timeout", "step": 1} in events
    assert json.loads((timed / "config.json").read_text())["complete"] is False
    second = train_policy(config(small, timed, steps=5))
    assert second.step == 5 and second.complete
    assert_same_tensors(whole / "model.safetensors", timed / "model.safetensors")


def test_rerunning_a_complete_policy_changes_nothing(small: str, tmp_path: Path) -> None:
    out = tmp_path / "p"
    train_policy(config(small, out, steps=3))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    events: list[dict[str, Any]] = []
    result = train_policy(config(small, out, steps=3), events.append)
    assert result.step == 3 and result.complete and result.final_loss is None
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert not [e for e in events if e["event"] == "log"]


def test_resume_from_a_moved_store(small: str, tmp_path: Path) -> None:
    """The store fingerprint does not depend on its location: a copied store resumes."""
    moved = tmp_path / "moved.zarr"
    shutil.copytree(small, moved)
    out = tmp_path / "p"
    train_policy(config(small, out, steps=3, checkpoint_every=3))
    events: list[dict[str, Any]] = []
    train_policy(config(str(moved), out, steps=6, checkpoint_every=3), events.append)
    assert {"event": "resume", "step": 3} in events
    train_policy(config(small, tmp_path / "ref", steps=6, checkpoint_every=3))
    assert_same_tensors(tmp_path / "ref" / "model.safetensors", out / "model.safetensors")


# ---- the output directory -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def other_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Same shape as ``small``, but another store (other seed, other trajectories)."""
    path = tmp_path_factory.mktemp("other") / "other.zarr"
    make_linear_store(path, n_tasks=3, size=6, cond_dim=3, steps=4, optimizers=("sgd", "adam"),
                      seed=1)  # fmt: skip
    return str(path)


def test_policy_of_another_store_is_refused(small: str, other_store: str, tmp_path: Path) -> None:
    out = tmp_path / "p"
    train_policy(config(small, out, steps=2))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(CompatibilityError, match="another store") as info:
        train_policy(config(other_store, out, steps=2))
    assert "--overwrite" in str(info.value) and str(out) in str(info.value)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_overwrite_replaces_a_policy_of_another_store(
    small: str, other_store: str, tmp_path: Path
) -> None:
    out = tmp_path / "p"
    train_policy(config(small, out, steps=4, checkpoint_every=2))
    result = train_policy(config(other_store, out, steps=3, overwrite=True))
    assert result.step == 3 and result.complete
    meta = json.loads((out / "config.json").read_text())
    assert meta["store_fingerprint"] == store_fingerprint(TrajectoryStore.open(other_store))
    assert [m["step"] for m in metrics(out)] == [1, 2, 3]
    train_policy(config(other_store, tmp_path / "fresh", steps=3))  # same as a fresh start
    assert_same_tensors(tmp_path / "fresh" / "model.safetensors", out / "model.safetensors")
    assert_same_tensors(
        tmp_path / "fresh" / "normalization.safetensors", out / "normalization.safetensors"
    )


def test_policy_with_other_settings_is_refused(small: str, tmp_path: Path) -> None:
    out = tmp_path / "p"
    train_policy(config(small, out, steps=2))
    with pytest.raises(CompatibilityError, match="other settings"):
        train_policy(config(small, out, steps=2, lr=5e-4))
    with pytest.raises(CompatibilityError, match="other settings"):
        train_policy(config(small, out, steps=2, policy={"hidden": 16}))


def test_a_policy_from_before_a_new_setting_resumes(small: str, tmp_path: Path) -> None:
    """A stored train_config without a field added since (at its default) is the same setting."""
    out = tmp_path / "p"
    train_policy(config(small, out, steps=2, checkpoint_every=2))
    meta = json.loads((out / "config.json").read_text())
    for key in ("width", "blocks", "heads"):  # the rows backbone's settings came later
        del meta["train_config"]["policy"][key]
    (out / "config.json").write_text(json.dumps(meta))
    events: list[dict[str, Any]] = []
    train_policy(config(small, out, steps=4, checkpoint_every=2), events.append)
    assert {"event": "resume", "step": 2} in events


def test_output_that_is_a_file(small: str, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("mine")
    with pytest.raises(ConfigError, match="is a file"):
        train_policy(config(small, tmp_path / "f"))
    assert (tmp_path / "f").read_text() == "mine"


def test_output_that_is_someone_elses_directory(small: str, tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="non-empty directory without a lohp policy"):
        train_policy(config(small, tmp_path / "d"))
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["notes.txt"]


def test_output_config_of_a_foreign_kind(small: str, tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "config.json").write_text('{"kind": "other"}')
    with pytest.raises(CompatibilityError, match="not a lohp policy config"):
        train_policy(config(small, tmp_path / "d"))


def test_output_of_a_future_format(small: str, tmp_path: Path) -> None:
    out = tmp_path / "p"
    train_policy(config(small, out, steps=2))
    meta = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**meta, "format": 99}))
    with pytest.raises(CompatibilityError, match="format 99"):
        train_policy(config(small, out, steps=4))


# ---- config and data errors ---------------------------------------------------------------------
def test_k_not_dividing_t(small: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"k=3 does not divide T=4 .* \[1, 2, 4\]"):
        train_policy(config(small, tmp_path / "p", k=3))
    assert not (tmp_path / "p").exists()


def test_window_longer_than_n(small: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="window=3 exceeds N=2"):
        train_policy(config(small, tmp_path / "p", k=2, window=3))


def test_unknown_method() -> None:
    with pytest.raises(ConfigError, match="method"):
        resolve(TrainConfig, flags={"method": "lo-xx"})


def test_empty_optimizer_subset() -> None:
    with pytest.raises(ConfigError, match="optimizer subset is empty"):
        resolve(TrainConfig, flags={"optimizers": []})


def test_optimizer_subset_without_runs(small: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No complete runs of optimizer.*sam"):
        train_policy(config(small, tmp_path / "p", optimizers=("sam",)))


def test_optimizer_subset_uses_only_its_runs(small: str, tmp_path: Path) -> None:
    events: list[dict[str, Any]] = []
    train_policy(config(small, tmp_path / "p", optimizers=("adam",), steps=1), events.append)
    assert [e["runs"] for e in events if e["event"] == "start"] == [3]


def test_missing_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="No trajectory store"):
        train_policy(config(str(tmp_path / "none.zarr"), tmp_path / "p"))


def test_store_of_a_newer_schema(small: str, tmp_path: Path) -> None:
    loc = tmp_path / "new.zarr"
    shutil.copytree(small, loc)
    TrajectoryStore.open(str(loc), mode="r+").update_attrs(schema_version=3)
    with pytest.raises(StoreError, match="schema_version 3"):
        train_policy(config(str(loc), tmp_path / "p"))


def test_store_with_nan_weights(tmp_path: Path) -> None:
    loc = str(tmp_path / "nan.zarr")
    make_linear_store(loc, n_tasks=2, size=4, steps=4)
    arr, row = run_array(loc, run_id("c0_1", "sgd", 0), mode="r+")
    arr[row, 1] = np.nan
    with pytest.raises(DataError, match="c0_1-sgd-s0"):
        train_policy(config(loc, tmp_path / "p"))


def test_high_learning_rate_warns(small: str, tmp_path: Path) -> None:
    events: list[dict[str, Any]] = []
    with pytest.warns(UserWarning, match="learning rate 0.002 is above 0.001"):
        train_policy(config(small, tmp_path / "p", lr=2e-3, steps=1), events.append)
    warnings = [e for e in events if e["event"] == "warning"]
    assert len(warnings) == 1 and "0.002" in warnings[0]["message"]


def test_learning_rate_at_the_limit_does_not_warn(small: str, tmp_path: Path) -> None:
    import warnings

    events: list[dict[str, Any]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        train_policy(config(small, tmp_path / "p", lr=1e-3, steps=1), events.append)
    assert not [e for e in events if e["event"] == "warning"]


@pytest.mark.parametrize(
    "over", [{"method": "lo-op", "loss": {"w_on": 0.0}}, {"loss": {"w_on": 0.0, "w_off": 0.0}}]
)
def test_loss_without_any_term_is_a_config_error(small: str, tmp_path: Path, over: dict) -> None:
    from lohp_cli.config import resolve

    flags = {"store": small, "out": str(tmp_path / "p"), "method": over.get("method")}
    sets = [f"loss.{k}={v}" for k, v in over["loss"].items()]
    with pytest.raises(ConfigError, match="no loss term"):
        resolve(TrainConfig, None, sets, flags)
    assert not (tmp_path / "p").exists()


# ---- the objective ------------------------------------------------------------------------------
def objective_grads(small: str, grad_mode: str) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss and gradients of the on-policy term only, at a fixed batch and generator."""
    from lohp_cli.store.sampler import TrajectorySampler, compute_stats, select_runs

    cfg = config(small, "unused", loss={"w_off": 0.0, "hybrid_start": 0.0,
                                        "on_policy_grad": grad_mode})  # fmt: skip
    st = TrajectoryStore.open(small)
    runs = select_runs(st, None)
    stats = compute_stats(st, runs, 1, "init")
    model = build_model(cfg, 6, 3, 4, stats)
    with torch.no_grad():  # a policy that is not the identity
        model.backbone.out.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
    batch = TrajectorySampler(st, runs, 1, stats).batch(4, torch.Generator().manual_seed(0))
    obj = Objective(model, cfg, 4)
    obj.gen = torch.Generator().manual_seed(5)
    loss, terms = obj(batch.x, batch.cond, batch.opt)
    assert set(terms) == {"on", "loss"}
    loss.backward()
    return float(loss.detach()), {
        n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
    }


def test_pathwise_and_detached_on_policy_gradients(small: str) -> None:
    loss_p, grads_p = objective_grads(small, "pathwise")
    loss_d, grads_d = objective_grads(small, "detached")
    assert loss_p == pytest.approx(loss_d, rel=1e-6), "same samples, same loss value"
    for g in (*grads_p.values(), *grads_d.values()):
        assert torch.isfinite(g).all()
    w = "backbone.out.weight"
    assert not torch.allclose(grads_p[w], grads_d[w]), "pathwise adds the rollout's gradient"


# ---- class-order augmentation -------------------------------------------------------------------
def test_class_augmentation_generalises_to_unseen_tasks(tmp_path: Path) -> None:
    """Three tasks teach a hypernetwork little; their 3! reorderings teach it six times more."""
    from tests.conftest import make_class_store

    store = str(tmp_path / "cls.zarr")
    truth = make_class_store(store, n_tasks=3)
    rng = np.random.default_rng(7)
    conds = rng.normal(size=(16, 6)).astype(np.float32)  # unseen tasks
    targets = np.stack([truth["target"](c) for c in conds])
    errors = {}
    for augment in ("auto", "none"):
        out = tmp_path / augment
        train_policy(
            config(store, out, method="hypernetwork", steps=300, batch_size=8, augment=augment)
        )
        model, _, stats = load_policy(out)
        with torch.no_grad():
            pred = stats.denormalize(model(stats.normalize_condition(torch.from_numpy(conds))))
        errors[augment] = float(np.abs(pred.numpy() - targets).mean())
    assert errors["auto"] < 0.6 * errors["none"], errors


def test_class_augmentation_symmetrises_the_statistics(tmp_path: Path) -> None:
    from tests.conftest import make_class_store

    store = str(tmp_path / "cls.zarr")
    make_class_store(store)
    train_policy(config(store, tmp_path / "p", steps=1))
    _, _, stats = load_policy(tmp_path / "p")
    rows = torch.tensor([[0, 1, 6], [2, 3, 7], [4, 5, 8]])  # weight row j, then bias j
    assert torch.equal(stats.std[rows], stats.std[rows[:1]].expand(3, -1))
    assert torch.equal(stats.cond_mean.view(3, 2), stats.cond_mean[:2].expand(3, -1))
    train_policy(config(store, tmp_path / "n", steps=1, augment="none"))
    _, _, plain = load_policy(tmp_path / "n")
    assert not torch.equal(plain.std[rows], plain.std[rows[:1]].expand(3, -1))


def test_class_augmentation_needs_class_structure(linear: tuple[str, dict], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="augment='none'"):
        train_policy(config(linear[0], tmp_path / "p", augment="classes"))


def test_policy_records_the_store_as_an_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """generate and evaluate find the store from any working directory."""
    monkeypatch.chdir(tmp_path)
    make_linear_store("rel.zarr", n_tasks=2, size=4, cond_dim=2, steps=2)
    train_policy(config("rel.zarr", "p", steps=1))
    meta = json.loads((tmp_path / "p" / "config.json").read_text())
    assert meta["store_location"] == str((tmp_path / "rel.zarr").resolve())
