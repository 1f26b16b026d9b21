"""``train-policy --val-tasks``: the held-out split, the patience rule, the best policy kept, and
a resumed run that ends where an uninterrupted one does (lohp_cli.policy.validation)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from lohp_cli.checkpoint import read_metrics
from lohp_cli.errors import CompatibilityError, ConfigError
from lohp_cli.policy.validation import EarlyStopping, split_runs
from lohp_cli.stages.train import train_policy
from lohp_cli.store.sampler import RunRef
from tests.conftest import make_linear_store, tiny_config
from tests.unit.test_train import Crash, assert_same_tensors, config, tensors


def refs(tasks: int, per_task: int = 2) -> list[RunRef]:
    return [RunRef(f"t{t}/r{j}", f"t{t}", "sgd", 5) for t in range(tasks) for j in range(per_task)]


# ---- the split ----------------------------------------------------------------------------------
def test_split_is_deterministic_disjoint_and_whole() -> None:
    runs = refs(7)
    a, b = split_runs(runs, 3, seed=1), split_runs(list(reversed(runs)), 3, seed=1)
    assert a.tasks == b.tasks and len(a.tasks) == 3  # the run order does not matter
    assert {r.task_id for r in a.val} == set(a.tasks)
    assert not {r.task_id for r in a.train} & set(a.tasks)
    assert sorted(a.train + a.val, key=lambda r: r.run_id) == sorted(runs, key=lambda r: r.run_id)
    others = {tuple(split_runs(runs, 3, seed=s).tasks) for s in range(8)}
    assert len(others) > 1  # the seed chooses


def test_split_off_and_refused() -> None:
    runs = refs(3)
    off = split_runs(runs, 0, seed=0)
    assert off.train == runs and off.val == [] and off.tasks == []
    assert len(split_runs(runs, 2, seed=0).train) == 2
    with pytest.raises(ConfigError, match="val_tasks=3 holds out every task"):
        split_runs(runs, 3, seed=0)


# ---- patience -----------------------------------------------------------------------------------
def run_patience(
    scores: list[float], patience: int | None, higher: bool, ties: list[float] | None = None
) -> tuple[int, int]:
    """(stop step, best step) of validations at steps 10, 20, … with these scores (and these
    tiebreaks)."""
    es = EarlyStopping(higher)
    for i, score in enumerate(scores):
        step = 10 * (i + 1)
        es.update(step, score, None if ties is None else ties[i])
        if es.exhausted(patience):
            return step, es.best_step
    return 10 * len(scores), es.best_step


@pytest.mark.parametrize(
    ("scores", "patience", "higher", "expected"),
    [
        ([0.5, 0.6, 0.6, 0.55, 0.7], 2, True, (40, 20)),  # a tie is no improvement
        ([0.5, 0.6, 0.6, 0.65, 0.6, 0.6], 2, True, (60, 40)),
        ([0.5, 0.6, 0.6, 0.55, 0.7], None, True, (50, 50)),  # never stops early
        ([3.0, 2.0, 2.5, 1.0, 1.5, 1.2, 1.1], 3, False, (70, 40)),  # loss: lower is better
        ([3.0, 3.0], 1, False, (20, 10)),
    ],
)
def test_patience_stops_at_the_known_step(scores, patience, higher, expected) -> None:
    assert run_patience(scores, patience, higher) == expected


def test_an_accuracy_tie_is_broken_by_the_loss() -> None:
    acc = [0.5, 0.6, 0.6, 0.6, 0.6, 0.6]
    loss = [2.0, 1.5, 1.4, 1.4, 1.6, 1.3]
    assert run_patience(acc, 2, True, loss) == (50, 30)  # 1.4 again is no improvement
    assert run_patience(acc, 3, True, loss) == (60, 60)
    assert run_patience(acc, 2, True) == (40, 20)  # without tiebreaks the earlier step stays


def test_stopping_state_round_trips_and_refuses_another_metric() -> None:
    es = EarlyStopping(False)
    for step, score in ((5, 2.0), (10, 1.0), (15, 1.5)):
        es.update(step, score)
    back = EarlyStopping.from_json(json.loads(json.dumps(es.to_json())), False, "here")
    assert back == es and back.bad == 1 and back.best_step == 10
    with pytest.raises(CompatibilityError, match="another val_metric"):
        EarlyStopping.from_json(es.to_json(), True, "here")


# ---- training -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def six(tmp_path_factory: pytest.TempPathFactory) -> str:
    """6 tasks, one sgd run each, P = 6, D = 3, T = 4."""
    path = tmp_path_factory.mktemp("val") / "six.zarr"
    make_linear_store(path, n_tasks=6, size=6, cond_dim=3, steps=4)
    return str(path)


VAL = {"val_tasks": 2, "checkpoint_every": 2, "log_every": 1}


def val_lines(out: Path) -> list[dict[str, Any]]:
    lines = read_metrics(out / "metrics.jsonl")
    return [{k: v for k, v in m.items() if k != "time_s"} for m in lines if "val_loss" in m]


def test_held_out_runs_are_not_trained_on(six: str, tmp_path: Path) -> None:
    out = tmp_path / "p"
    train_policy(config(six, out, steps=2, **VAL))
    cfg = json.loads((out / "config.json").read_text())
    held = cfg["validation"]["tasks"]
    assert len(held) == 2 and cfg["runs_used"] == 4
    assert cfg["validation"]["metric"] == "loss"  # synthetic tasks cannot be rebuilt
    assert cfg["validation"]["stop_reason"] == "steps" and cfg["complete"]
    # the normalisation is that of the 4 training runs alone
    from lohp_cli.store import TrajectoryStore
    from lohp_cli.store.sampler import compute_stats, select_runs

    st = TrajectoryStore.open(six)
    train = [r for r in select_runs(st, None) if r.task_id not in held]
    stats = compute_stats(st, train, 1, "init")
    assert torch.equal(tensors(out / "normalization.safetensors")["mean"], stats.mean)


def test_patience_stops_and_the_policy_is_the_best(six: str, tmp_path: Path) -> None:
    """lr 0.05 makes the held-out loss rise after a few steps: patience stops the run, and
    model.safetensors is the state/ weights of the best step (an uninterrupted run to it)."""
    over = {**VAL, "lr": 0.05, "patience": 2, "checkpoint_every": 1, "val_every": 1}
    out = tmp_path / "p"
    events: list[dict[str, Any]] = []
    with pytest.warns(UserWarning, match="learning rate"):
        result = train_policy(config(six, out, steps=40, **over), events.append)
    v = json.loads((out / "config.json").read_text())["validation"]
    lines = val_lines(out)
    losses = [m["val_loss"] for m in lines]
    best = min(range(len(losses)), key=losses.__getitem__)
    assert v["stop_reason"] == "patience" and result.complete and result.step < 40
    assert v["best_step"] == lines[best]["step"] == result.step - 2
    assert v["best_score"] == pytest.approx(losses[best])
    assert [e["step"] for e in events if e["event"] == "patience"] == [result.step]
    # the best weights: those an uninterrupted run has after best_step steps
    ref = tmp_path / "ref"
    with pytest.warns(UserWarning):
        train_policy(config(six, ref, steps=v["best_step"], **{**over, "patience": None}))
    assert_same_tensors(ref / "state" / "model.safetensors", out / "model.safetensors")
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    # re-running the stopped command does nothing: it stays stopped
    again = train_policy(config(six, out, steps=40, **over))
    assert again.step == result.step and again.complete
    assert val_lines(out) == lines
    # a larger patience (a stop rule, resumable) goes on from there
    more = {**over, "patience": 100}
    with pytest.warns(UserWarning):
        further = train_policy(config(six, out, steps=result.step + 2, **more))
    assert further.step == result.step + 2 and further.stop_reason == "steps"


def test_resume_keeps_the_best_and_the_metrics(six: str, tmp_path: Path) -> None:
    over = {**VAL, "lr": 0.05, "patience": 3, "checkpoint_every": 2, "val_every": 2}
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    with pytest.warns(UserWarning):
        train_policy(config(six, whole, steps=40, **over))

    def crash(e: dict[str, Any]) -> None:
        if e["event"] == "log" and e["step"] == 9:  # past the checkpoint (and validation) at 8
            raise Crash

    with pytest.warns(UserWarning), pytest.raises(Crash):
        train_policy(config(six, cut, steps=40, **over), crash)
    trainer = json.loads((cut / "state" / "trainer.json").read_text())
    assert trainer["step"] == 8 and trainer["validation"]["count"] == 4
    with pytest.warns(UserWarning):
        train_policy(config(six, cut, steps=40, **over))
    assert_same_tensors(whole / "model.safetensors", cut / "model.safetensors")
    assert val_lines(whole) == val_lines(cut)
    cw, cc = (json.loads((d / "config.json").read_text())["validation"] for d in (whole, cut))
    assert cw == cc and cw["stop_reason"] == "patience"


def test_a_crash_between_an_improvement_and_its_checkpoint(six: str, tmp_path: Path) -> None:
    """model.safetensors already holds step 4's weights when the run dies before the checkpoint
    at 6: the resume puts back the best of the checkpoint it resumes (state/best.safetensors)."""
    over = {**VAL, "val_every": 1, "checkpoint_every": 3}
    out = tmp_path / "p"

    def crash(e: dict[str, Any]) -> None:
        if e["event"] == "log" and e["step"] == 4:  # validated (a new best), not checkpointed
            raise Crash

    with pytest.raises(Crash):
        train_policy(config(six, out, steps=8, **over), crash)
    assert [m["best"] for m in val_lines(out)] == [True] * 4  # the loss fell at every step
    best_at_3 = tensors(out / "state" / "best.safetensors")
    published = tensors(out / "model.safetensors")
    assert any(not torch.equal(published[k], best_at_3[k]) for k in best_at_3)
    assert json.loads((out / "config.json").read_text())["validation"]["best_step"] == 4
    # resumed with steps = 3 (a stop rule may change): nothing to train, the best put back
    assert train_policy(config(six, out, steps=3, **over)).step == 3
    assert_same_tensors(out / "state" / "best.safetensors", out / "model.safetensors")
    v = json.loads((out / "config.json").read_text())["validation"]
    assert (v["best_step"], v["stop_reason"], v["validations"]) == (3, "steps", 3)


def test_max_minutes_stops_resumably_with_validation(six: str, tmp_path: Path) -> None:
    over = {**VAL, "val_every": 1}
    whole, timed = tmp_path / "whole", tmp_path / "timed"
    train_policy(config(six, whole, steps=4, **over))
    first = train_policy(config(six, timed, steps=4, max_minutes=1e-9, **over))
    assert first.step == 1 and not first.complete
    cfg = json.loads((timed / "config.json").read_text())
    assert cfg["complete"] is False and cfg["validation"]["stop_reason"] == "time"
    assert cfg["validation"]["best_step"] == 1  # the best so far is the policy
    second = train_policy(config(six, timed, steps=4, **over))
    assert second.step == 4 and second.complete
    assert_same_tensors(whole / "model.safetensors", timed / "model.safetensors")
    assert val_lines(whole) == val_lines(timed)
    cw, ct = (json.loads((d / "config.json").read_text())["validation"] for d in (whole, timed))
    assert cw == ct and cw["stop_reason"] == "steps"


def test_settings_need_a_split_and_are_checked_on_resume(six: str, tmp_path: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="need.*val_tasks"):
        config(six, tmp_path / "p", patience=3)
    with pytest.raises(ConfigError, match="val_tasks=6 holds out every task"):
        train_policy(config(six, tmp_path / "q", val_tasks=6))
    out = tmp_path / "r"
    train_policy(config(six, out, steps=2, **VAL))
    # another split is other settings; patience is a stop rule and may change
    with pytest.raises(CompatibilityError, match="other settings"):
        train_policy(config(six, out, steps=4, **{**VAL, "val_tasks": 1}))
    assert train_policy(config(six, out, steps=4, **VAL, patience=5)).step == 4


def test_accuracy_asked_of_a_store_without_tasks_is_refused_first(six: str, tmp_path: Path):
    events: list[dict[str, Any]] = []
    with pytest.raises(ConfigError, match="val_metric='accuracy' needs the store's tasks"):
        train_policy(config(six, tmp_path / "p", val_tasks=2, val_metric="accuracy"))
    assert not (tmp_path / "p").exists()  # nothing written: the same --out can be used again
    train_policy(config(six, tmp_path / "q", steps=1, val_tasks=2), events.append)
    assert any("validation by loss: no task accuracy" in e.get("message", "") for e in events)


def test_accuracy_validation_on_a_digits_store(tmp_path: Path) -> None:
    """Where the tasks rebuild, the held-out accuracy of the generated weights chooses."""
    from lohp_cli.config import GenerateConfig, TrainConfig
    from lohp_cli.stages.collect import collect
    from lohp_cli.stages.generate import generate

    store = tmp_path / "d.zarr"
    collect(tiny_config(store, tasks=3, optimizers=["adam"]))
    out = tmp_path / "p"
    cfg = TrainConfig.model_validate(
        {
            "store": str(store),
            "out": str(out),
            "k": 2,
            "steps": 4,
            "batch_size": 2,
            "device": "cpu",
            "checkpoint_every": 2,
            "val_tasks": 1,
            "policy": {"backbone": "mlp", "hidden": 8, "emb_dim": 8},
        }  # fmt: skip
    )
    train_policy(cfg)
    v = json.loads((out / "config.json").read_text())["validation"]
    assert v["metric"] == "accuracy" and set(v["best_scores"]) == {"val_loss", "val_acc"}
    assert 0.0 <= v["best_score"] <= 1.0
    # the score is generate's weights' test accuracy: mean mode, generate's s_0 of sample 0
    gen = tmp_path / "g.zarr"
    tid = v["tasks"][0]
    generate(GenerateConfig.model_validate({"policy": str(out), "out": str(gen), "tasks": tid,
                                            "samples": 1, "mode": "mean", "seed": 0,
                                            "device": "cpu"}))  # fmt: skip
    from lohp_cli.policy.context import store_task_context
    from lohp_cli.store import TrajectoryStore
    from lohp_cli.store.generated import open_generated
    from lohp_cli.tasks.scoring import accuracy

    g, _ = open_generated(str(gen))
    ctx = store_task_context(TrajectoryStore.open(str(store)))
    w = torch.from_numpy(g[f"{tid}/weights"][:])[0]
    acc, _ = accuracy(ctx.build_target(), w, ctx.task_data(tid))
    lines = val_lines(out)
    best = next(m for m in lines if m["step"] == v["best_step"])
    assert best["val_acc"] == v["best_score"] == pytest.approx(acc, abs=1e-6)


def test_tensorboard_missing_is_a_config_error(six: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match=r"lohp\[tensorboard\]"):
        train_policy(config(six, tmp_path / "p", log="tensorboard"))
    assert not (tmp_path / "p").exists()  # refused before any work


def test_tensorboard_scalars(six: str, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "p"
    train_policy(config(six, out, steps=4, log="tensorboard", **VAL))
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "train/loss" in tags and "val/loss" in tags
    assert [e.step for e in acc.Scalars("val/loss")] == [2, 4]
    assert [e.value for e in acc.Scalars("val/loss")] == pytest.approx(
        [m["val_loss"] for m in val_lines(out)]
    )


def test_tensorboard_after_a_resume_has_each_step_once(six: str, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, over = tmp_path / "p", {**VAL, "log": "tensorboard"}

    def crash(e: dict[str, Any]) -> None:
        if e["event"] == "log" and e["step"] == 3:  # past the checkpoint at 2
            raise Crash

    with pytest.raises(Crash):
        train_policy(config(six, out, steps=4, **over), crash)
    train_policy(config(six, out, steps=4, **over))
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.step for e in acc.Scalars("val/loss")] == [2, 4]
    losses = [m["loss"] for m in read_metrics(out / "metrics.jsonl") if "loss" in m]
    assert [e.value for e in acc.Scalars("train/loss")] == pytest.approx(losses)
