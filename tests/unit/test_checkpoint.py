"""Policy directories: atomic writes, optimizer state round trips, the state/ swap, load errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from lohp_cli.artifacts.policy import POLICY_FORMAT, POLICY_KIND
from lohp_cli.checkpoint import (
    atomic_save_tensors,
    atomic_write_bytes,
    atomic_write_json,
    load_tensors,
    optimizer_from_tensors,
    optimizer_to_tensors,
    read_json,
    save_state,
    state_dir,
)
from lohp_cli.config import TrainConfig
from lohp_cli.errors import CompatibilityError
from lohp_cli.policy.directory import load_policy
from lohp_cli.stages.train import train_policy
from tests.conftest import make_linear_store


def listing(path: Path) -> list[str]:
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*"))


# ---- atomic writes ------------------------------------------------------------------------------
def test_atomic_writes_leave_no_temp_files(tmp_path: Path) -> None:
    atomic_write_bytes(tmp_path / "a" / "b.bin", b"abc")
    atomic_write_json(tmp_path / "c.json", {"x": [1, 2]})
    atomic_save_tensors(tmp_path / "t.safetensors", {"w": torch.arange(6.0).view(2, 3).t()})
    atomic_write_bytes(tmp_path / "a" / "b.bin", b"replaced")
    assert listing(tmp_path) == ["a", "a/b.bin", "c.json", "t.safetensors"]
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"replaced"
    assert read_json(tmp_path / "c.json") == {"x": [1, 2]}
    assert torch.equal(
        load_tensors(tmp_path / "t.safetensors")["w"], torch.arange(6.0).view(2, 3).t()
    )


def test_failed_atomic_writes_leave_the_old_file_and_no_temp(tmp_path: Path) -> None:
    atomic_write_bytes(tmp_path / "f.bin", b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(tmp_path / "f.bin", "not bytes")  # type: ignore[arg-type]
    atomic_save_tensors(tmp_path / "t.safetensors", {"w": torch.ones(2)})
    with pytest.raises(Exception):  # noqa: B017 - whatever safetensors raises for a non-tensor
        atomic_save_tensors(tmp_path / "t.safetensors", {"w": "not a tensor"})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "c.json", {"x": object()})
    assert listing(tmp_path) == ["f.bin", "t.safetensors"]
    assert (tmp_path / "f.bin").read_bytes() == b"old"
    assert torch.equal(load_tensors(tmp_path / "t.safetensors")["w"], torch.ones(2))


def test_load_tensors_errors(tmp_path: Path) -> None:
    with pytest.raises(CompatibilityError, match="is missing"):
        load_tensors(tmp_path / "none.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CompatibilityError, match="not a readable safetensors file"):
        load_tensors(tmp_path / "bad.safetensors")


def test_read_json_errors(tmp_path: Path) -> None:
    with pytest.raises(CompatibilityError, match="is missing"):
        read_json(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text('{"kind": "lohp.pol')
    with pytest.raises(CompatibilityError, match="not valid JSON"):
        read_json(tmp_path / "bad.json")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(CompatibilityError, match="not valid JSON"):
        read_json(tmp_path / "bin.json")


# ---- optimizer state ----------------------------------------------------------------------------
def trained_adamw(seed: int = 0, steps: int = 3) -> tuple[nn.Module, torch.optim.AdamW]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 5), nn.SiLU(), nn.Linear(5, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, betas=(0.8, 0.95))
    for i in range(steps):
        loss = model(torch.randn(8, 4, generator=torch.Generator().manual_seed(i))).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, opt


def assert_same_optimizer_state(a: torch.optim.Optimizer, b: torch.optim.Optimizer) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["state"].keys() == sb["state"].keys()
    for pid in sa["state"]:
        assert sa["state"][pid].keys() == sb["state"][pid].keys()
        for key, va in sa["state"][pid].items():
            vb = sb["state"][pid][key]
            if torch.is_tensor(va):
                assert torch.equal(va, vb) and va.dtype == vb.dtype, (pid, key)
            else:
                assert va == vb, (pid, key)
    # JSON turns tuples into lists; the values must be the same
    norm = lambda g: json.loads(json.dumps(g))  # noqa: E731
    assert norm(sa["param_groups"]) == norm(sb["param_groups"])


def test_optimizer_round_trip_through_files(tmp_path: Path) -> None:
    model, opt = trained_adamw()
    tensors, meta = optimizer_to_tensors(opt)
    assert tensors and all(torch.is_tensor(v) for v in tensors.values())
    atomic_save_tensors(tmp_path / "o.safetensors", tensors)
    atomic_write_json(tmp_path / "o.json", meta)

    torch.manual_seed(99)
    model2 = nn.Sequential(nn.Linear(4, 5), nn.SiLU(), nn.Linear(5, 2))
    model2.load_state_dict(model.state_dict())
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1.0)  # hyperparameters come from the file
    optimizer_from_tensors(
        opt2, load_tensors(tmp_path / "o.safetensors"), read_json(tmp_path / "o.json")
    )
    assert_same_optimizer_state(opt, opt2)
    assert opt2.param_groups[0]["lr"] == 1e-2 and tuple(opt2.param_groups[0]["betas"]) == (
        0.8,
        0.95,
    )

    # and the next steps are identical to continuing the original
    for i in range(3):
        for m, o in ((model, opt), (model2, opt2)):
            x = torch.randn(8, 4, generator=torch.Generator().manual_seed(100 + i))
            o.zero_grad()
            m(x).pow(2).sum().backward()
            o.step()
    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(p, q)
    assert_same_optimizer_state(opt, opt2)


def test_fresh_optimizer_round_trip() -> None:
    _, opt = trained_adamw(steps=0)
    tensors, meta = optimizer_to_tensors(opt)
    assert tensors == {}
    _, opt2 = trained_adamw(seed=1, steps=0)
    optimizer_from_tensors(opt2, tensors, json.loads(json.dumps(meta)))
    assert opt2.state_dict()["state"] == {}


# ---- the state/ swap ----------------------------------------------------------------------------
def write_state(out: Path, step: int) -> tuple[dict[str, torch.Tensor], torch.optim.Optimizer]:
    model, opt = trained_adamw(seed=step)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    save_state(out, sd, opt, {"step": step})
    return sd, opt


def read_state(d: Path) -> tuple[int, dict[str, torch.Tensor]]:
    load_tensors(d / "optimizer.safetensors")
    read_json(d / "optimizer.json")
    return read_json(d / "trainer.json")["step"], load_tensors(d / "model.safetensors")


def test_save_state_writes_a_complete_state(tmp_path: Path) -> None:
    sd, opt = write_state(tmp_path, 5)
    assert listing(tmp_path) == [
        "state",
        "state/model.safetensors",
        "state/optimizer.json",
        "state/optimizer.safetensors",
        "state/trainer.json",
    ]
    assert state_dir(tmp_path) == tmp_path / "state"
    step, model = read_state(tmp_path / "state")
    assert step == 5 and all(torch.equal(model[k], sd[k]) for k in sd)
    write_state(tmp_path, 6)
    assert read_state(tmp_path / "state")[0] == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]


def test_state_survives_a_leftover_state_tmp(tmp_path: Path) -> None:
    """A crash while writing state.tmp leaves the previous state readable, and the next save
    replaces the leftover."""
    sd, _ = write_state(tmp_path, 10)
    tmp = tmp_path / "state.tmp"
    tmp.mkdir()
    (tmp / "model.safetensors").write_bytes(b"half a file")
    (tmp / ".optimizer.safetensors.x1.tmp").write_bytes(b"a temp file of the cut write")
    assert state_dir(tmp_path) == tmp_path / "state"
    step, model = read_state(tmp_path / "state")
    assert step == 10 and all(torch.equal(model[k], sd[k]) for k in sd)
    write_state(tmp_path, 20)
    assert not tmp.exists()
    assert read_state(state_dir(tmp_path))[0] == 20
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == [
        "model.safetensors", "optimizer.json", "optimizer.safetensors", "trainer.json"
    ]  # fmt: skip


def test_state_survives_a_cut_swap(tmp_path: Path) -> None:
    """A crash between the two renames of the swap leaves state.old (complete) and state.tmp."""
    write_state(tmp_path, 10)
    (tmp_path / "state").rename(tmp_path / "state.old")
    (tmp_path / "state.tmp").mkdir()
    assert state_dir(tmp_path) == tmp_path / "state.old"
    assert read_state(state_dir(tmp_path))[0] == 10
    write_state(tmp_path, 11)
    assert state_dir(tmp_path) == tmp_path / "state"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]


class Crash(BaseException):
    """Stands for a kill: nothing after it runs (BaseException, as SIGKILL skips handlers)."""


class CrashAt:
    """Counts the file-system steps of a save (renames, deletes, file writes, fsyncs) and
    "kills" the process at step ``at``: before a rename or write, halfway through a delete."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, at: int | None) -> None:
        import shutil

        import lohp_cli.checkpoint as ckpt

        self.at, self.steps = at, 0
        replace, rmtree, save_file, fsync = os.replace, shutil.rmtree, ckpt.save_file, os.fsync

        def step() -> None:
            self.steps += 1
            if self.steps == self.at:
                raise Crash

        def cut_rmtree(path, *args, **kwargs) -> None:
            if self.steps + 1 == self.at and Path(path).is_dir():
                files = sorted(p for p in Path(path).rglob("*") if p.is_file())
                for f in files[: len(files) // 2]:  # a delete cut halfway
                    f.unlink()
            step()
            rmtree(path, *args, **kwargs)

        monkeypatch.setattr(os, "replace", lambda *a, **k: (step(), replace(*a, **k))[1])
        monkeypatch.setattr(shutil, "rmtree", cut_rmtree)
        monkeypatch.setattr(ckpt, "save_file", lambda *a, **k: (step(), save_file(*a, **k))[1])
        monkeypatch.setattr(os, "fsync", lambda fd: (step(), fsync(fd))[1])


def resumable_step(out: Path) -> int:
    """The step of the checkpoint a resume would load; every file of it must read."""
    d = state_dir(out)
    assert d is not None, f"no checkpoint left: {listing(out)}"
    step, _ = read_state(d)
    return step


@pytest.mark.slow
def test_a_kill_at_any_step_of_a_save_leaves_a_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kill the save of step 2 at each of its file-system steps, then kill the next save (step 3)
    at each of its steps: a complete checkpoint is always left, never older than the last one
    that was complete, and an uncut save afterwards leaves exactly ``state``."""
    counter = CrashAt(monkeypatch, None)
    write_state(tmp_path / "count", 1)
    counter.steps = 0
    write_state(tmp_path / "count", 2)
    n_steps = counter.steps
    assert n_steps >= 8  # renames, deletes, four file writes, fsyncs
    cases = 0
    for first in range(1, n_steps + 1):
        for second in range(1, n_steps + 3):
            out = tmp_path / f"cut-{first}-{second}"
            with monkeypatch.context() as m:
                write_state(out, 1)
                crash = CrashAt(m, first)
                with pytest.raises(Crash):
                    write_state(out, 2)
                after_first = resumable_step(out)
                assert after_first in (1, 2)
                crash.at, crash.steps = second, 0
                try:
                    write_state(out, 3)
                except Crash:
                    pass
                assert resumable_step(out) >= after_first
            write_state(out, 4)
            assert resumable_step(out) == 4
            assert sorted(p.name for p in out.iterdir()) == ["state"]
            cases += 1
    assert cases == n_steps * (n_steps + 2)


def test_state_without_trainer_json_is_not_a_state(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "model.safetensors").write_bytes(b"")
    assert state_dir(tmp_path) is None
    assert state_dir(tmp_path / "nowhere") is None


# ---- load_policy --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (2-step) policy trained on a tiny linear store."""
    root = tmp_path_factory.mktemp("ckpt")
    make_linear_store(root / "s.zarr", n_tasks=2, size=5, cond_dim=3, steps=4)
    cfg = TrainConfig.model_validate(
        {
            "store": str(root / "s.zarr"),
            "out": str(root / "p"),
            "k": 1,
            "steps": 2,
            "batch_size": 2,
            "device": "cpu",
            "policy": {"backbone": "mlp", "hidden": 16, "emb_dim": 8},
        }
    )
    train_policy(cfg)
    return root / "p"


@pytest.fixture
def policy_copy(policy_dir: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(policy_dir, tmp_path / "p"))


def test_load_policy(policy_dir: Path) -> None:
    model, meta, stats = load_policy(policy_dir)
    assert meta.kind == POLICY_KIND and meta.format == POLICY_FORMAT
    assert meta.N == 4 and meta.k == 1 and meta.T == 4 and meta.complete
    assert not model.training
    saved = load_tensors(policy_dir / "model.safetensors")
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k]), k
    assert stats.mean.shape == (5,) and stats.step_rms.shape == (4,)


def test_load_policy_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(CompatibilityError, match="No policy directory") as info:
        load_policy(tmp_path / "nope")
    assert "lohp train-policy" in str(info.value)
    (tmp_path / "file").write_text("x")
    with pytest.raises(CompatibilityError, match="No policy directory"):
        load_policy(tmp_path / "file")


def test_load_policy_missing_config(policy_copy: Path) -> None:
    (policy_copy / "config.json").unlink()
    with pytest.raises(CompatibilityError, match="config.json' is missing"):
        load_policy(policy_copy)


@pytest.mark.parametrize("text", ['{"kind": "lohp.pol', "", "\udcff"])
def test_load_policy_corrupt_config(policy_copy: Path, text: str) -> None:
    (policy_copy / "config.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(CompatibilityError, match="not valid JSON"):
        load_policy(policy_copy)


def edit_config(path: Path, **values: object) -> None:
    meta = json.loads((path / "config.json").read_text())
    meta.update(values)
    (path / "config.json").write_text(json.dumps(meta))


def test_load_policy_future_format(policy_copy: Path) -> None:
    edit_config(policy_copy, format=POLICY_FORMAT + 1)
    with pytest.raises(
        CompatibilityError, match=f"has format {POLICY_FORMAT + 1}; this lohp reads"
    ):
        load_policy(policy_copy)


def test_load_policy_foreign_kind(policy_copy: Path) -> None:
    edit_config(policy_copy, kind="something.else")
    with pytest.raises(CompatibilityError, match="is not a lohp policy"):
        load_policy(policy_copy)


def test_load_policy_corrupt_weights(policy_copy: Path) -> None:
    (policy_copy / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CompatibilityError, match="not a readable safetensors"):
        load_policy(policy_copy)


def test_load_policy_weights_that_do_not_fit(policy_copy: Path) -> None:
    edit_config(policy_copy, param_count=7)
    with pytest.raises(
        CompatibilityError, match="the layout holds 5 parameters, param_count says 7"
    ):
        load_policy(policy_copy)


@pytest.mark.parametrize("text", ['{"kind": "lohp.policy", "format": 1}', "[1, 2]"])
def test_load_policy_config_without_its_keys(policy_copy: Path, text: str) -> None:
    (policy_copy / "config.json").write_text(text)
    with pytest.raises(CompatibilityError):
        load_policy(policy_copy)


def test_policy_dir_has_no_temp_files(policy_dir: Path) -> None:
    names = listing(policy_dir)
    assert not [n for n in names if n.endswith(".tmp") or "/." in n or n.startswith(".")]
    assert "state.tmp" not in names and "state.old" not in names
    assert os.path.isfile(policy_dir / "state" / "trainer.json")


def test_atomic_files_get_the_usual_permissions(tmp_path: Path) -> None:
    """Reports and policies must be readable by others, as a plain open() would make them."""
    import os

    from lohp_cli.checkpoint import atomic_save_tensors, atomic_write_json

    umask = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        atomic_save_tensors(tmp_path / "t.safetensors", {"w": torch.zeros(2)})
    finally:
        os.umask(umask)
    for name in ("a.json", "t.safetensors"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644
