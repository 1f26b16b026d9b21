"""Devices, seeds and provenance (lohp_cli/runtime.py)."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from datetime import datetime

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import lohp_cli
from lohp_cli import runtime
from lohp_cli.errors import ConfigError
from lohp_cli.runtime import derive_seed, provenance, resolve_device, seed_everything

PART = st.one_of(st.integers(), st.text(max_size=10))


# ---- resolve_device ----------------------------------------------------------------------------
def _fake_cuda(monkeypatch: pytest.MonkeyPatch, available: bool, count: int = 0) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_auto_picks_cpu_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_cuda(monkeypatch, False)
    assert resolve_device("auto") == "cpu"
    assert resolve_device(" AUTO ") == "cpu"


def test_auto_picks_cuda_when_present(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_cuda(monkeypatch, True, 2)
    assert resolve_device("auto") == "cuda"
    assert resolve_device("cuda") == "cuda"
    assert resolve_device("cuda:1") == "cuda:1"
    assert resolve_device("cpu") == "cpu"


def test_cuda_without_cuda_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_cuda(monkeypatch, False)
    with pytest.raises(ConfigError, match="CUDA is not available; use --device cpu"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda:0")


@pytest.mark.parametrize("spec", ["cuda:2", "cuda:x", "cuda:"])
def test_missing_cuda_index(monkeypatch: pytest.MonkeyPatch, spec: str) -> None:
    _fake_cuda(monkeypatch, True, 2)
    with pytest.raises(ConfigError, match="has 2 CUDA device"):
        resolve_device(spec)


def test_unknown_device() -> None:
    with pytest.raises(ConfigError, match="Unknown device 'tpu'; use auto, cpu, cuda or cuda:i"):
        resolve_device("tpu")


# ---- derive_seed -------------------------------------------------------------------------------
def test_derive_seed_pinned_values() -> None:
    # Pinned: stores rely on these seeds staying the same across lohp versions and machines.
    assert derive_seed(0) == 2033344993903900207
    assert derive_seed(0, "c1_2", "sgd", 0) == 331261005263517174
    assert derive_seed(123, "batches") == 5351880097787682539


@given(st.integers(-(2**70), 2**70), st.lists(PART, max_size=4))
def test_derive_seed_is_a_stable_63_bit_function(base: int, parts: list[object]) -> None:
    s = derive_seed(base, *parts)
    assert 0 <= s < 2**63
    assert derive_seed(base, *parts) == s
    assert derive_seed(base, *parts, "x") != s  # extra part changes it (no collision expected)


def test_derive_seed_depends_on_every_part_and_order() -> None:
    ref = derive_seed(0, "c1_2", "sgd", 0)
    variants = [
        derive_seed(1, "c1_2", "sgd", 0),
        derive_seed(0, "c2_1", "sgd", 0),
        derive_seed(0, "c1_2", "adam", 0),
        derive_seed(0, "c1_2", "sgd", 1),
        derive_seed(0, "sgd", "c1_2", 0),
    ]
    assert len({ref, *variants}) == 6


def test_derive_seed_same_in_another_process() -> None:
    # Independent of PYTHONHASHSEED (no use of hash()).
    code = "from lohp_cli.runtime import derive_seed; print(derive_seed(7, 'c3_1', 'sam', 2))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert int(out.stdout) == derive_seed(7, "c3_1", "sam", 2)


# ---- seed_everything ---------------------------------------------------------------------------
def _draw() -> tuple[float, float, torch.Tensor]:
    return random.random(), float(np.random.rand()), torch.rand(3)


@pytest.mark.parametrize("seed", [0, 17, 2**40 + 5])
def test_seed_everything_reproduces_every_generator(seed: int) -> None:
    assert seed_everything(seed) == seed
    a = _draw()
    seed_everything(seed)
    b = _draw()
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])
    seed_everything(seed + 1)
    c = _draw()
    assert a[0] != c[0] and a[1] != c[1] and not torch.equal(a[2], c[2])


def test_seed_everything_reduces_large_seeds_for_numpy() -> None:
    seed_everything(2**32 + 3)
    x = np.random.rand()
    np.random.seed(3)
    assert x == np.random.rand()


# ---- provenance --------------------------------------------------------------------------------
def test_provenance_fields() -> None:
    p = provenance("cpu")
    assert p["lohp_version"] == lohp_cli.__version__
    assert p["torch_version"] == torch.__version__
    assert p["device"] == "cpu"
    assert p["argv"] == list(sys.argv)
    assert datetime.fromisoformat(p["created_at"]).tzinfo is not None
    rev = p["git_revision"]
    assert rev is None or re.fullmatch(r"[0-9a-f]{40}", rev)
    assert set(p) == {
        "lohp_version",
        "torch_version",
        "threads",
        "python_version",
        "platform",
        "device",
        "argv",
        "git_revision",
        "created_at",
    }


def test_git_revision_none_when_git_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_git(*_a: object, **_k: object) -> None:
        raise OSError("no git")

    monkeypatch.setattr(runtime.subprocess, "run", no_git)
    assert runtime.git_revision() is None

    def not_a_repo(*_a: object, **_k: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess([], 128, stdout="", stderr="fatal")

    monkeypatch.setattr(runtime.subprocess, "run", not_a_repo)
    assert runtime.git_revision() is None

    def a_repo(*_a: object, **_k: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess([], 0, stdout="ab" * 20 + "\n", stderr="")

    monkeypatch.setattr(runtime.subprocess, "run", a_repo)
    assert runtime.git_revision() == "ab" * 20
