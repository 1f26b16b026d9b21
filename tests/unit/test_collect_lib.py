"""Stage 1 as a library: determinism, resume, refusal of mismatched stores
(lohp_cli/stages/collect.py).

Every collect here is the tiny digits config of ``tests/conftest.py`` (about a second on CPU).
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lohp_cli.stages.runs as runs
import lohp_cli.store.chunks as chunks
from lohp_cli.config import OPTIMIZERS, CollectConfig, StoreCodecConfig, TaskConfig
from lohp_cli.errors import DataError, StoreError
from lohp_cli.optim import optimizer_hparams
from lohp_cli.optim.loop import train_loop
from lohp_cli.policy.directory import store_fingerprint
from lohp_cli.runtime import derive_seed
from lohp_cli.stages.collect import collect
from lohp_cli.stages.collect_schedule import plan_runs
from lohp_cli.stages.runs import RunContext, init_target
from lohp_cli.store import TrajectoryStore, parse_run_id, run_id
from lohp_cli.store.summary import summarize_store
from lohp_cli.tasks import make_family
from lohp_cli.tasks.images import ImageTask
from lohp_cli.tasks.layout import flat_params
from lohp_cli.tasks.models import build_target
from tests.conftest import TINY, block_of, ident, run_array, tiny_config

DIGITS3 = make_family(TaskConfig(family="digits", ways=3))
STATES = 5  # steps 20, record_every 5
PARAMS = 64 * 8 + 8 + 8 * 5 + 5  # mlp on 8×8 digits, hidden 8, 5 ways


def cfg_at(out: str | Path, **overrides: Any) -> CollectConfig:
    return tiny_config(out, device="cpu", **overrides)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A clean tiny collect, shared read-only by the tests of this module."""
    out = tmp_path_factory.mktemp("reference") / "store.zarr"
    collect(cfg_at(out))
    return str(out)


@pytest.fixture
def copy_of_reference(reference: str, tmp_path: Path) -> str:
    dst = tmp_path / "copy.zarr"
    shutil.copytree(reference, dst)
    return str(dst)


def assert_same_runs(a: str, b: str, only: list[str] | None = None) -> None:
    """Runs of store ``b`` equal those of ``a``: all of them, or the ones listed in ``only``."""
    sa, sb = TrajectoryStore.open(a), TrajectoryStore.open(b)
    rids = only
    if rids is None:
        rids = sa.run_ids()
        assert sb.run_ids() == rids
    for rid in rids:
        assert sa.run_status(rid) == sb.run_status(rid) == "complete", rid
        assert torch.equal(torch.from_numpy(sa.weights(rid)), torch.from_numpy(sb.weights(rid))), (
            rid
        )
        for name in ("loss", "train_acc"):
            np.testing.assert_array_equal(sa.run_array(rid, name), sb.run_array(rid, name))
        keep = ("seed", "hparams", "task_id", "optimizer", "replicate", "steps_written")
        assert {k: sa.run_attrs(rid)[k] for k in keep} == {k: sb.run_attrs(rid)[k] for k in keep}


# ---- determinism -------------------------------------------------------------------------------
def test_two_collects_are_identical(reference: str, tmp_path: Path) -> None:
    events: list[dict[str, Any]] = []
    torch.set_num_threads(2)
    try:
        result = collect(cfg_at(tmp_path / "b.zarr"), progress=events.append)
        assert torch.get_num_threads() == 2  # restored after the runs (which use 1)
    finally:
        torch.set_num_threads(1)
    assert (result.planned, result.skipped, result.collected) == (6, 0, 6)
    assert json.loads(json.dumps(result.to_json()))["store"] == str(tmp_path / "b.zarr")
    assert_same_runs(reference, str(tmp_path / "b.zarr"))
    kinds = [e["event"] for e in events]
    assert kinds[0] == "device" and events[0]["device"] == "cpu"
    assert (
        kinds.count("run") == 6
        and {"event": "plan", "planned": 6, "skipped": 0, "pending": 6} in events
    )


def test_store_contents(reference: str) -> None:
    cfg = cfg_at(reference)
    store = TrajectoryStore.open(reference)
    attrs = store.attrs
    assert attrs["init_complete"] is True and attrs["param_count"] == PARAMS
    assert attrs["condition_dim"] == 5 * 49
    assert attrs["compat"]["model"] == cfg.model.model_dump(mode="json")
    assert (attrs["compat"]["steps"], attrs["compat"]["record_every"]) == (20, 5)
    assert attrs["config"] == cfg.model_dump(mode="json")
    assert attrs["provenance"]["device"] == "cpu"
    names = [e["name"] for e in attrs["layout"]]
    assert names == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]

    family = make_family(cfg.task)
    tasks = family.tasks("source", 2)
    assert store.task_ids() == sorted(t.id for t in tasks)
    for t in tasks:
        assert store.condition(t.id).shape == (5 * 49,)
        assert dict(store.root["tasks"][t.id].attrs)["split"] == "source"
    rids = store.run_ids()
    assert rids == sorted(run_id(t.id, o, 0) for t in tasks for o in OPTIMIZERS)
    for rid in rids:
        task_id, opt, rep = parse_run_id(rid)
        a = store.run_attrs(rid)
        seed = derive_seed(0, task_id, opt, rep)
        assert a["seed"] == seed and a["status"] == "complete" and a["steps_written"] == STATES
        assert a["hparams"] == json.loads(json.dumps(optimizer_hparams(opt, cfg.optim)))
        w = store.weights(rid)
        assert w.shape == (STATES, PARAMS) and np.isfinite(w).all()
        # θ_0 is the model initialised from the run's seed.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            init = flat_params(build_target(cfg.model, (1, 8, 8), 5))
        assert torch.equal(torch.from_numpy(w[0]), init), rid
        assert (np.abs(np.diff(w, axis=0)).max(axis=1) > 0).all()  # every record moved
        loss = store.run_array(rid, "loss")
        assert np.isfinite(loss).all() and loss[-1] < loss[0]
    # Different optimizers on one task start from different seeds, so different θ_0.
    assert not np.array_equal(store.weights(rids[0])[0], store.weights(rids[1])[0])


def test_rerun_skips_everything(copy_of_reference: str) -> None:
    before = TrajectoryStore.open(copy_of_reference)
    walls = {r: before.run_attrs(r)["wall_time_s"] for r in before.run_ids()}
    events: list[dict[str, Any]] = []
    result = collect(cfg_at(copy_of_reference), progress=events.append)
    assert (result.planned, result.skipped, result.collected) == (6, 6, 0)
    assert not [e for e in events if e["event"] == "run"]
    after = TrajectoryStore.open(copy_of_reference)
    assert {r: after.run_attrs(r)["wall_time_s"] for r in after.run_ids()} == walls


def test_more_tasks_extend_the_store(reference: str, copy_of_reference: str) -> None:
    result = collect(cfg_at(copy_of_reference, tasks=3))
    assert (result.planned, result.skipped, result.collected) == (9, 6, 3)
    assert_same_runs(reference, copy_of_reference, TrajectoryStore.open(reference).run_ids())
    assert len(TrajectoryStore.open(copy_of_reference).task_ids()) == 3


def test_shards_together_equal_one_collect(reference: str, tmp_path: Path) -> None:
    out = tmp_path / "sharded.zarr"
    first = collect(cfg_at(out, shard=(0, 2)))
    assert (first.planned, first.collected) == (3, 3)
    assert len(TrajectoryStore.open(str(out)).complete_runs()) == 3
    second = collect(cfg_at(out, shard=(1, 2)))
    assert (second.planned, second.skipped, second.collected) == (3, 0, 3)
    assert_same_runs(reference, str(out))


def test_memory_store_equals_disk_store(reference: str) -> None:
    url = f"memory://lohp-collect-{uuid.uuid4().hex}"
    assert collect(cfg_at(url)).collected == 6
    assert_same_runs(reference, url)
    with pytest.raises(StoreError, match="use --workers 1"):
        collect(cfg_at(f"memory://lohp-collect-{uuid.uuid4().hex}", workers=2))


# ---- task data: each task's images encoded once per process -----------------------------------
def count_calls(monkeypatch: pytest.MonkeyPatch, cls: type, names: tuple[str, ...]) -> Counter:
    """Calls of ``cls``'s methods ``names`` by (name, task id), counted from now on."""
    calls: Counter = Counter()
    for name in names:
        method = getattr(cls, name)

        def counted(self: Any, *a: Any, _m: Any = method, _n: str = name, **k: Any) -> Any:
            calls[_n, self.id] += 1
            return _m(self, *a, **k)

        monkeypatch.setattr(cls, name, counted)
    return calls


def test_each_task_is_encoded_once_per_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The set-up encodes a task's support set (its condition), the runs its training images,
    each once, even where the tasks outnumber the cache (2 here, blocks of 2 runs); the test
    images are not encoded at all."""
    monkeypatch.setattr(runs, "TASK_CACHE_MIN", 1)
    calls = count_calls(monkeypatch, ImageTask, ("train_set", "support_set", "data"))
    collect(cfg_at(tmp_path / "s.zarr", tasks=5, batch_runs=2))
    tasks = TrajectoryStore.open(str(tmp_path / "s.zarr")).task_ids()
    assert len(tasks) == 5
    assert calls == Counter({(n, t): 1 for t in tasks for n in ("train_set", "support_set")})


def test_runs_equal_those_trained_on_each_tasks_whole_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store is the one the path before gave, to the byte: each task's whole data
    (:meth:`Task.data`: train, test and support encoded together through the frozen extractor,
    the condition from it), prepared again wherever it was asked for."""
    over = {"model": {**TINY["model"], "name": "head"}, "tasks": 3, "batch_runs": 2}
    collect(cfg_at(tmp_path / "a.zarr", **over))

    def whole(ctx: RunContext, tid: str) -> Any:
        return ctx.family.task(tid).data(ctx.cfg.model, ctx.frozen, ctx.device)

    monkeypatch.setattr(
        RunContext, "train_set", lambda c, t: (whole(c, t).x_train, whole(c, t).y_train)
    )
    monkeypatch.setattr(RunContext, "condition", lambda c, t: whole(c, t).condition.numpy())
    collect(cfg_at(tmp_path / "b.zarr", **over))
    a, b = (str(tmp_path / n) for n in ("a.zarr", "b.zarr"))
    assert_same_runs(a, b)
    sa, sb = TrajectoryStore.open(a), TrajectoryStore.open(b)
    assert len(sa.run_ids()) == 9 and sa.task_ids() == sb.task_ids()
    for rid in sa.run_ids():
        assert sa.weights(rid).tobytes() == sb.weights(rid).tobytes(), rid
    for tid in sa.task_ids():
        assert sa.condition(tid).tobytes() == sb.condition(tid).tobytes(), tid


# ---- refusing mismatched stores ----------------------------------------------------------------
def test_changed_lr_is_refused(copy_of_reference: str) -> None:
    cfg = cfg_at(copy_of_reference, optim={"sgd": {"lr": 0.05}})
    with pytest.raises(
        StoreError,
        match=r"-sgd-s0 .*other hyperparameters \(lr: store has 0.1, this command 0.05\)",
    ):
        collect(cfg)
    cfg = cfg_at(copy_of_reference, optim={"sam": {"rho": 0.1}})
    with pytest.raises(StoreError, match=r"-sam-s0 .*\(rho: store has 0.05, this command 0.1\)"):
        collect(cfg)
    # The store is left as it was.
    assert len(TrajectoryStore.open(copy_of_reference).complete_runs()) == 6


def test_changed_lr_of_an_unused_optimizer_is_fine(copy_of_reference: str) -> None:
    cfg = cfg_at(copy_of_reference, optimizers=["adam"], optim={"sgd": {"lr": 0.05}})
    assert collect(cfg).skipped == 2


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"model": {**TINY["model"], "hidden": 16}}, "model.hidden: store has 8, this command 16"),
        (
            {"model": {**TINY["model"], "name": "cnn"}},
            "model.name: store has 'mlp', this command 'cnn'",
        ),
        ({"steps": 40}, "steps: store has 20, this command 40"),
        ({"batch_size": 8}, "batch_size: store has 16, this command 8"),
        ({"seed": 1}, "seed: store has 0, this command 1"),
        ({"init": "shared"}, "init: store has None, this command 'shared'"),
        (
            {"task": {**TINY["task"], "split_seed": 3}},
            "family.split_seed: store has 0, this command 3",
        ),
    ],
)
def test_store_made_with_other_settings_is_refused(
    copy_of_reference: str, overrides: dict, match: str
) -> None:
    with pytest.raises(StoreError, match=match + r"\); use a new --out"):
        collect(cfg_at(copy_of_reference, **overrides))


# ---- partial runs ------------------------------------------------------------------------------
def test_partial_run_is_redone(reference: str, copy_of_reference: str) -> None:
    """A half-written block (a run of it running, cut short after some of its chunks): its
    complete runs are kept, the other is redone in its own row, to the uninterrupted store."""
    store = TrajectoryStore.open(copy_of_reference, mode="r+")
    rid = store.run_ids()[2]
    block = store.slot(rid)
    store.delete_run(rid)  # its row says running, as before its last write
    arr, row = run_array(copy_of_reference, rid, mode="r+")
    arr[row, :2] = 7.0  # what a cut-short write left
    store = TrajectoryStore.open(copy_of_reference)
    assert store.run_status(rid) == "running"
    assert store.run_attrs(rid)["steps_written"] == 0  # only the final update counts
    result = collect(cfg_at(copy_of_reference))
    assert (result.skipped, result.collected) == (5, 1)
    assert_same_runs(reference, copy_of_reference)
    again = TrajectoryStore.open(copy_of_reference)
    assert again.run_attrs(rid)["steps_written"] == STATES
    assert again.slot(rid) == block  # back in its row, no new block
    assert sorted(p.name for p in (Path(copy_of_reference) / "blocks").iterdir() if p.is_dir()) == (
        sorted(p.name for p in (Path(reference) / "blocks").iterdir() if p.is_dir())
    )


@pytest.mark.parametrize("batch_runs", [1, 8])
def test_non_finite_run_fails_and_is_redone(tmp_path: Path, batch_runs: int) -> None:
    out = tmp_path / "nan.zarr"
    with pytest.raises(
        DataError,
        match=r"Run (\S+) produced non-finite weights or loss at step \d+; lower the learning "
        r"rate \(e.g. --set optim.sgd.lr",
    ) as err:
        collect(cfg_at(out, optimizers=["sgd"], optim={"sgd": {"lr": 1e30}}, batch_runs=batch_runs))
    store = TrajectoryStore.open(str(out))
    cfg = cfg_at(out, optimizers=["sgd"])
    plans = [p.run_id for p in plan_runs(cfg, make_family(cfg.task).tasks("source", 2))]
    assert str(err.value).split()[1] == plans[0]  # both blow up; the first in plan order is named
    # one at a time, the first run stops collect; batched, its whole group was begun
    assert store.run_ids() == sorted(plans[: 1 if batch_runs == 1 else 2])
    assert all(store.run_status(r) == "running" for r in store.run_ids())  # never complete
    # Partial runs carry no hyperparameter check: a saner lr redoes them.
    result = collect(cfg_at(out, optimizers=["sgd"], batch_runs=batch_runs))
    assert (result.skipped, result.collected) == (0, 2)
    assert all(TrajectoryStore.open(str(out)).run_status(r) == "complete" for r in store.run_ids())


# ---- a shared initialisation (init = "shared") -------------------------------------------------
SHARED_SEED = derive_seed(0, "shared-init")  # the default: derived from the base seed


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny collect with every run starting from one θ₀."""
    out = tmp_path_factory.mktemp("shared") / "store.zarr"
    collect(cfg_at(out, init="shared"))
    return str(out)


def test_every_run_of_a_shared_store_starts_bit_identically_at_its_theta0(
    shared: str, reference: str
) -> None:
    cfg = cfg_at(shared, init="shared")
    store = TrajectoryStore.open(shared)
    theta0 = store.shared_init()
    assert theta0 is not None and theta0.dtype == np.float32 and theta0.shape == (PARAMS,)
    # one draw of the target model's own initialisation, from the derived seed
    want = flat_params(init_target(cfg, make_family(cfg.task), SHARED_SEED)).numpy()
    np.testing.assert_array_equal(theta0, want)
    rids = store.run_ids()
    assert len(rids) == 6
    for rid in rids:
        w = store.weights(rid)
        assert w[0].tobytes() == theta0.tobytes(), rid  # the recorded θ_0, bit for bit
        assert not np.array_equal(w[-1], theta0), rid
    # each run keeps its own minibatches (and optimizer): the runs part after the start
    assert len({store.weights(r)[-1].tobytes() for r in rids}) == len(rids)
    # what a worker process loads (collect --workers N) is the same θ₀
    assert torch.equal(RunContext(cfg, "cpu").theta0, torch.from_numpy(theta0))
    # per-run starts: every run its own θ_0, and no θ₀ in the store
    ref = TrajectoryStore.open(reference)
    assert len({ref.weights(r)[0].tobytes() for r in ref.run_ids()}) == len(ref.run_ids())
    assert ref.shared_init() is None and not ref.has_shared_init()


def test_the_shared_theta0_is_checksummed_named_and_in_the_compat(
    shared: str, reference: str, tmp_path: Path
) -> None:
    store, ref = TrajectoryStore.open(shared), TrajectoryStore.open(reference)
    arr = store.root["init"]["theta0"]
    assert chunks.has_checksums(arr) and tuple(arr.metadata.dimension_names) == ("param",)
    assert dict(store.root["init"].attrs) == {"seed": SHARED_SEED, "complete": True}
    compat = store.attrs["compat"]
    assert (compat["init"], compat["init_seed"]) == ("shared", SHARED_SEED)
    assert store.meta.compat.shared_init and not ref.meta.compat.shared_init
    assert "init" not in ref.attrs["compat"]  # a per-run store's compat is what it always was
    assert store_fingerprint(store)["compat_sha"] != store_fingerprint(ref)["compat_sha"]
    s = summarize_store(shared, verify=True)
    assert (s["init"], s["verified"]) == ("shared", True)
    assert summarize_store(reference)["init"] == "per_run"
    # a flipped byte in θ₀ is found by --verify and refused by every reader
    damaged = tmp_path / "damaged.zarr"
    shutil.copytree(shared, damaged)
    (chunk,) = [p for p in (damaged / "init" / "theta0").rglob("*") if p.is_file()
                and p.name != "zarr.json"]  # fmt: skip
    data = bytearray(chunk.read_bytes())
    data[7] ^= 0xFF
    chunk.write_bytes(bytes(data))
    problems = summarize_store(str(damaged), verify=True)["problems"]
    assert len(problems) == 1 and "group 'init', array 'theta0'" in problems[0]
    with pytest.raises(StoreError, match="array 'init/theta0'"):
        TrajectoryStore.open(str(damaged)).shared_init()


def test_a_partial_run_of_a_shared_store_is_redone_from_the_same_theta0(
    shared: str, tmp_path: Path
) -> None:
    copy = tmp_path / "copy.zarr"
    shutil.copytree(shared, copy)
    store = TrajectoryStore.open(str(copy), mode="r+")
    rid = store.run_ids()[2]
    store.delete_run(rid)  # its row says running, as before its last write
    arr, row = run_array(copy, rid, mode="r+")
    arr[row, 0] = 7.0  # what a cut-short write left
    result = collect(cfg_at(copy, init="shared"))
    assert (result.skipped, result.collected) == (5, 1)
    assert_same_runs(shared, str(copy))
    np.testing.assert_array_equal(
        TrajectoryStore.open(str(copy)).shared_init(), TrajectoryStore.open(shared).shared_init()
    )


def test_a_saved_theta0_is_reused_never_redrawn(shared: str, tmp_path: Path) -> None:
    """A crash after θ₀ was saved and before the store's set-up completed: the next collect
    starts every run from the saved θ₀ (here a marker no draw gives), it does not draw again."""
    out = tmp_path / "crashed.zarr"
    shutil.copytree(shared, out)
    store = TrajectoryStore.open(str(out), mode="r+")
    for rid in store.run_ids():
        store.delete_run(rid)
    marker = np.linspace(-0.1, 0.1, PARAMS, dtype=np.float32)
    store.write_shared_init(marker, SHARED_SEED)
    store.update_attrs(init_complete=False)
    events: list[dict[str, Any]] = []
    collect(cfg_at(out, init="shared"), progress=events.append)
    assert not [e for e in events if e["event"] == "shared_init"]
    store = TrajectoryStore.open(str(out))
    assert store.meta.init_complete
    np.testing.assert_array_equal(store.shared_init(), marker)
    assert all(store.weights(r)[0].tobytes() == marker.tobytes() for r in store.run_ids())


def test_a_theta0_cut_short_is_written_again(tmp_path: Path) -> None:
    """θ₀ is marked complete last: a write cut short before that is redone (the same draw)."""
    out = tmp_path / "cut.zarr"
    events: list[dict[str, Any]] = []
    collect(cfg_at(out, init="shared", optimizers=["sgd"], tasks=1), progress=events.append)
    assert {"event": "shared_init", "seed": SHARED_SEED} in events
    store = TrajectoryStore.open(str(out), mode="r+")
    first = store.shared_init()
    store.root["init"].attrs.update({"complete": False})
    store.update_attrs(init_complete=False)
    assert not store.has_shared_init()
    with pytest.raises(StoreError, match="no complete 'init/theta0'"):
        store.shared_init()
    assert collect(cfg_at(out, init="shared", optimizers=["sgd"], tasks=1)).skipped == 1
    np.testing.assert_array_equal(TrajectoryStore.open(str(out)).shared_init(), first)


def test_a_shared_store_refuses_another_init_seed(shared: str, tmp_path: Path) -> None:
    copy = tmp_path / "copy.zarr"
    shutil.copytree(shared, copy)
    with pytest.raises(StoreError, match=f"init_seed: store has {SHARED_SEED}, this command 5"):
        collect(cfg_at(copy, init="shared", init_seed=5))
    with pytest.raises(StoreError, match="init: store has 'shared', this command None"):
        collect(cfg_at(copy))


# ---- summarize_store ---------------------------------------------------------------------------
def test_summary_of_a_clean_store(reference: str) -> None:
    s = summarize_store(reference, verify=True)
    assert s["verified"] is True and s["problems"] == []
    assert s["complete_runs"] == 6 and s["runs"] == {o: {"complete": 2} for o in OPTIMIZERS}
    assert (s["family"], s["ways"], s["model"]) == ("digits", 5, "mlp")
    assert (s["param_count"], s["recorded_states"], s["tasks"]) == (PARAMS, STATES, 2)
    assert s["raw_weight_bytes"] == 6 * STATES * PARAMS * 4
    assert s["compression_ratio"] == round(s["raw_weight_bytes"] / s["weight_bytes_on_disk"], 3)
    store = TrajectoryStore.open(reference)
    for opt in OPTIMIZERS:
        finals = [store.run_array(r, "train_acc")[-1] for r in store.run_ids() if f"-{opt}-" in r]
        assert s["final_train_acc"][opt] == round(float(np.mean(finals)), 4)
    assert "verified" not in summarize_store(reference)


def test_summary_flags_bad_complete_runs(copy_of_reference: str) -> None:
    store = TrajectoryStore.open(copy_of_reference, mode="r+")
    codec = StoreCodecConfig()
    nan_run = "c0_1_2_3_4-sgd-s9"
    writer = store.begin_run(nan_run, STATES, PARAMS, codec, ident(nan_run))
    for i in range(STATES):
        w = np.zeros(PARAMS, np.float32)
        w[i] = np.nan
        writer.append(w, 1.0, 0.5)
    writer.finish()
    short_run = "c0_1_2_3_4-adam-s9"
    writer = store.begin_run(short_run, STATES - 1, PARAMS, codec, ident(short_run))
    for _ in range(STATES - 1):
        writer.append(np.zeros(PARAMS, np.float32), 1.0, 0.5)
    writer.finish()
    running = "c0_1_2_3_4-sam-s9"
    store.begin_run(running, STATES, PARAMS, codec, ident(running))
    assert store.run_status(nan_run) == "complete"

    s = summarize_store(copy_of_reference, verify=True)
    assert s["verified"] is False
    # a run of another length than the store's is not complete (its attributes say so)
    assert s["problems"] == [
        f"run {short_run} attributes: steps_written is {STATES - 1}, the store records {STATES} "
        "states; re-run 'lohp collect' to redo the run",
        f"run {nan_run}: non-finite weights",
    ]
    assert s["complete_runs"] == 7 and s["runs"]["?"] == {"invalid": 1}
    assert s["runs"]["sam"] == {"complete": 2, "running": 1}
    assert summarize_store(copy_of_reference)["complete_runs"] == 7


def _tear(store: str, rid: str | None = None, keep_index: bool = False) -> list[str]:
    """Cut a block's document short (its runs' attributes), as a crash in its last write did
    before writes were atomic; returns the runs of the block (2: one optimizer's). A crash
    happens inside a collect, which has removed the run index (unless ``keep_index``: damage
    after the collect)."""
    rid = rid or TrajectoryStore.open(store).run_ids()[0]
    block, _ = block_of(store, rid)
    runs = list(zarr.open_array(str(block / "run"))[:])
    if not keep_index:
        group = zarr.open_group(store, mode="r+")["blocks"]
        del group.attrs["index"]
    (block / "zarr.json").write_text('{"zarr_format": 3, "no')
    return sorted(runs)


def test_summary_counts_a_torn_block_as_unreadable_runs(copy_of_reference: str) -> None:
    _tear(copy_of_reference)
    s = summarize_store(copy_of_reference, verify=True)
    assert s["runs"]["?"] == {"unreadable": 2} and s["complete_runs"] == 4
    assert s["verified"] is True


def test_torn_block_is_redone_by_collect(reference: str, copy_of_reference: str) -> None:
    _tear(copy_of_reference)
    result = collect(cfg_at(copy_of_reference))
    assert (result.skipped, result.collected) == (4, 2)
    assert_same_runs(reference, copy_of_reference)


def test_damage_after_the_index_is_found_by_verify_and_repaired(
    reference: str, copy_of_reference: str
) -> None:
    """The run index trusts the runs it lists as complete; --verify reads each run's own
    attributes, reports a run damaged since, and deleting the run (as it says) redoes it."""
    rids = _tear(copy_of_reference, keep_index=True)
    block, _ = block_of(copy_of_reference, rids[0])
    assert summarize_store(copy_of_reference)["complete_runs"] == 6  # the index, unchecked
    s = summarize_store(copy_of_reference, verify=True)
    assert s["runs"]["?"] == {"unreadable": 2} and s["complete_runs"] == 4
    assert s["verified"] is False
    assert s["problems"] == [
        f"run {rid}: the run index lists it as complete but its attributes are unreadable; "
        "re-run 'lohp collect --repair' to redo it"
        for rid in rids
    ]
    shutil.rmtree(block)
    assert (collect(cfg_at(copy_of_reference)).collected) == 2
    assert_same_runs(reference, copy_of_reference)
    assert summarize_store(copy_of_reference, verify=True)["verified"] is True


# ---- planning ----------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    n_tasks=st.integers(1, 6),
    seeds=st.integers(1, 3),
    opts=st.lists(st.sampled_from(OPTIMIZERS), min_size=1, max_size=3, unique=True),
    n=st.integers(1, 7),
    base=st.integers(0, 5),
)
def test_shards_partition_the_plan(
    n_tasks: int, seeds: int, opts: list[str], n: int, base: int
) -> None:
    tasks = DIGITS3.tasks("source", n_tasks)
    cfg = CollectConfig(seeds=seeds, optimizers=tuple(opts), seed=base, steps=10, record_every=5)
    full = plan_runs(cfg, tasks)
    assert len(full) == n_tasks * len(opts) * seeds
    assert len({p.run_id for p in full}) == len(full)
    for p in full:
        assert p.run_id == run_id(p.task_id, p.optimizer, p.replicate)
        assert p.seed == derive_seed(base, p.task_id, p.optimizer, p.replicate)
    shards = [plan_runs(cfg.model_copy(update={"shard": (i, n)}), tasks) for i in range(n)]
    seen = [p for shard in shards for p in shard]
    assert sorted(seen, key=lambda p: p.run_id) == sorted(full, key=lambda p: p.run_id)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    order = {p.run_id: i for i, p in enumerate(full)}
    for shard in shards:  # each shard keeps the fixed order
        assert [order[p.run_id] for p in shard] == sorted(order[p.run_id] for p in shard)


def test_train_loop_by_hand() -> None:
    """SGD without momentum: θ_{t+1} = θ_t − lr ∇L(θ_t; batch_t), batches epoch-shuffled by gen."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 3, generator=g)
    y = torch.randint(0, 2, (10,), generator=g)
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    w0, b0 = model.weight.detach().clone(), model.bias.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    records: list[tuple[torch.Tensor, float, float]] = []
    train_loop(
        model, opt, x, y, steps=6, record_every=2, batch_size=4,
        gen=torch.Generator().manual_seed(7),
        record=lambda th, loss, acc: records.append((th.clone(), float(loss), float(acc))),
    )  # fmt: skip
    # Rebuild the batches: a fresh permutation whenever the next batch would not fit.
    gen = torch.Generator().manual_seed(7)
    perm, pos, batches = torch.randperm(10, generator=gen), 0, []
    for _ in range(7):
        if pos + 4 > 10:
            perm, pos = torch.randperm(10, generator=gen), 0
        batches.append(perm[pos : pos + 4])
        pos += 4
    w, b = w0, b0
    expected = []
    for t, idx in enumerate(batches):
        wt, bt = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
        logits = x[idx] @ wt.T + bt
        loss = nn.functional.cross_entropy(logits, y[idx])
        if t % 2 == 0:
            acc = float((logits.argmax(1) == y[idx]).float().mean())
            expected.append((torch.cat([w.reshape(-1), b]), float(loss.detach()), acc))
        if t == 6:
            break
        gw, gb = torch.autograd.grad(loss, (wt, bt))
        w, b = (w - 0.5 * gw).detach(), (b - 0.5 * gb).detach()
    assert len(records) == len(expected) == 4  # t = 0, 2, 4, 6
    for (th, loss, acc), (eth, eloss, eacc) in zip(records, expected, strict=True):
        torch.testing.assert_close(th, eth, rtol=1e-6, atol=1e-7)
        assert loss == pytest.approx(eloss, rel=1e-6) and acc == eacc
    torch.testing.assert_close(flat_params(model), records[-1][0], rtol=0, atol=0)


# ---- head model (frozen extractor) -------------------------------------------------------------
def test_head_model_collect_is_deterministic(tmp_path: Path) -> None:
    head = {"name": "head", "hidden": 8, "extractor_steps": 3, "feature_dim": 8}
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    for out in (a, b):
        collect(cfg_at(out, model=head, optimizers=["sgd"], tasks=1))
    sa = TrajectoryStore.open(str(a))
    ext_a, ext_b = (
        sa.load_tensors("extractor"),
        TrajectoryStore.open(str(b)).load_tensors("extractor"),
    )
    assert set(ext_a) == set(ext_b) and all(np.array_equal(ext_a[k], ext_b[k]) for k in ext_a)
    assert sa.root["extractor"].attrs["trained_on_classes"] == list(range(10))
    assert sa.attrs["param_count"] == 8 * 5 + 5 and sa.attrs["condition_dim"] == 5 * 8
    assert_same_runs(str(a), str(b))


# ---- batched collection (runs of one optimizer trained together) -------------------------------
def test_one_run_at_a_time_equals_the_batched_store(reference: str, tmp_path: Path) -> None:
    """``batch_runs=1`` (the one-run path) and the batched default give the same runs, to
    float tolerance (stacked matmuls round differently)."""
    out = tmp_path / "one.zarr"
    collect(cfg_at(out, batch_runs=1))
    sa, sb = TrajectoryStore.open(reference), TrajectoryStore.open(str(out))
    assert sa.run_ids() == sb.run_ids()
    for rid in sa.run_ids():
        assert sb.run_status(rid) == "complete"
        np.testing.assert_allclose(sa.weights(rid), sb.weights(rid), rtol=0, atol=1e-5)
        np.testing.assert_allclose(sa.run_array(rid, "loss"), sb.run_array(rid, "loss"), atol=1e-5)
        acc_a, acc_b = sa.run_array(rid, "train_acc"), sb.run_array(rid, "train_acc")
        np.testing.assert_array_equal(acc_a, acc_b)


def test_a_group_cut_short_is_resumed_to_the_same_runs(
    reference: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A collect killed in the writer's thread while it marks a block complete (the second
    block: its chunks written, its document not) leaves that block's runs running; the next
    collect redoes them in their rows, bit for bit as in the uninterrupted store."""
    from lohp_cli.store.writer import BlockWriter

    out = tmp_path / "cut.zarr"
    complete, calls = BlockWriter._complete, []

    def dying(self: BlockWriter, *args: Any) -> None:
        if len(calls) == 1:
            raise KeyboardInterrupt
        calls.append(self)
        complete(self, *args)

    monkeypatch.setattr(BlockWriter, "_complete", dying)
    with pytest.raises(KeyboardInterrupt):
        collect(cfg_at(out))
    monkeypatch.setattr(BlockWriter, "_complete", complete)
    store = TrajectoryStore.open(str(out))
    status = {r: store.run_status(r) for r in store.run_ids()}
    assert sorted(status.values()) == ["complete", "complete", "running", "running"]
    result = collect(cfg_at(out))
    assert (result.skipped, result.collected) == (2, 4)
    assert_same_runs(reference, str(out))


def test_runs_collected_alone_equal_the_same_runs_in_a_group(tmp_path: Path) -> None:
    """A run's numbers do not depend on the size of its group (what makes resumed, sharded and
    cluster stores bit-identical to the one-process store): head runs of every optimizer, SAM's
    per-run gradient norm included (a row-wise norm over [R, n] once rounded by R)."""
    settings = {"model": {**TINY["model"], "name": "head"}, "tasks": 2, "steps": 100}
    grouped, alone = tmp_path / "grouped.zarr", tmp_path / "alone.zarr"
    collect(cfg_at(grouped, **settings))
    cfg = cfg_at(alone, **settings)
    collect(cfg.model_copy(update={"tasks": 1, "optimizers": ("sgd",)}))  # the store, one run
    ctx = RunContext(cfg, "cpu")
    for plan in plan_runs(cfg, ctx.family.tasks("source", cfg.tasks)):
        if ctx.store.run_status(plan.run_id) != "complete":
            ctx.execute_many([plan])  # a group of one
    a, b = TrajectoryStore.open(str(grouped)), TrajectoryStore.open(str(alone))
    assert a.run_ids() == b.run_ids() and len(a.run_ids()) == 2 * len(OPTIMIZERS)
    for rid in a.run_ids():
        np.testing.assert_array_equal(a.weights(rid), b.weights(rid), err_msg=rid)
        np.testing.assert_array_equal(a.run_array(rid, "loss"), b.run_array(rid, "loss"))


@pytest.mark.parametrize("error", [DataError("the data ran out"), KeyboardInterrupt()])
def test_a_failed_store_initialisation_leaves_no_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    """A store this collect created and could not initialise is removed, so a re-run (with the
    same or corrected settings) starts afresh instead of failing on the half-made store."""

    def fail(*_a: object, **_k: object) -> None:
        raise error

    out = tmp_path / "s.zarr"
    monkeypatch.setattr("lohp_cli.stages.collect.train_frozen", fail)
    with pytest.raises(type(error)):
        collect(tiny_config(out))
    assert not out.exists() or not any(out.iterdir())
    monkeypatch.undo()
    result = collect(tiny_config(out, tasks=1))  # other settings: fine, nothing was left
    assert result.collected == result.planned == 3


def test_a_failed_initialisation_of_an_existing_store_leaves_it(
    copy_of_reference: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = TrajectoryStore.open(copy_of_reference, mode="r+")
    store.update_attrs(init_complete=False)  # as a collect killed during its initialisation
    monkeypatch.setattr("lohp_cli.stages.collect.train_frozen", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        collect(cfg_at(copy_of_reference))
    assert len(TrajectoryStore.open(copy_of_reference).complete_runs()) == 6
