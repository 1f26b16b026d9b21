"""Fuzz on a real (tiny digits) pipeline: damaged documents of a store, a policy directory and a
generated store, read by generate and evaluate in-process (many seeds) and by the real CLI in
subprocesses (a few): exit 0 with a sound result or 2-4 with one error line, never 1, never a
traceback, and the damaged input is left as it was (issue 25). The fast fuzz on a synthetic
store is tests/unit/test_fuzz_metadata.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from tests.cli.runner import invoke, plain
from tests.fuzz import Mutation, metadata_files, mutate, snapshot
from tests.unit.test_fuzz_metadata import POLICY_FILES, check

pytestmark = pytest.mark.slow

QUIET = ["--device", "cpu", "--latency-repeats", "1", "--set", "cosine_runs=1",
         "--set", "locality_tasks=0", "--set", "locality_source_tasks=0",
         "--set", "frontier_steps=[]", "--set", "plots=false", "--baselines", "mean"]  # fmt: skip


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tests.conftest import tiny_policy_run

    return tiny_policy_run(tmp_path_factory.mktemp("fuzz-pipeline"), optimizers=("sgd", "adam"))


def generated_sound(gen: Path, samples: int = 2) -> None:
    """A generated store that succeeded: every task's weights finite, [samples, P]."""
    g = zarr.open_group(str(gen), mode="r")
    size = g.attrs["param_count"]
    for tid in g.attrs["tasks"]:
        w = g[tid]["weights"][:]
        assert w.shape == (samples, size) and np.isfinite(w).all()


@pytest.mark.parametrize("seed", range(40))
def test_a_damaged_policy_read_by_generate_and_evaluate(
    made: dict[str, Path], tmp_path: Path, seed: int
) -> None:
    policy = Path(shutil.copytree(made["policy"], tmp_path / "policy"))
    mutation = mutate(policy, metadata_files(policy, POLICY_FILES), 1000 + seed)
    before = snapshot(policy)
    gen = tmp_path / "g.zarr"
    result = invoke("generate", "--policy", policy, "--out", gen, "--num-tasks", 2,
                    "--samples", 2, "--device", "cpu")  # fmt: skip
    if check(result, mutation, "generate"):
        generated_sound(gen)
    report = tmp_path / "r"
    result = invoke("evaluate", "--generated", made["generated"], "--out", report,
                    "--policy", f"other={policy}", *QUIET)  # fmt: skip
    if check(result, mutation, "evaluate --policy"):
        names = [m["name"] for m in json.loads((report / "report.json").read_text())["methods"]]
        assert any(n.startswith("other") for n in names), mutation
    assert snapshot(policy) == before, f"{mutation} changed by a reader"


@pytest.mark.parametrize("seed", range(30))
def test_a_damaged_generated_store_read_by_evaluate(
    made: dict[str, Path], tmp_path: Path, seed: int
) -> None:
    gen = Path(shutil.copytree(made["generated"], tmp_path / "g.zarr"))
    mutation = mutate(gen, metadata_files(gen), 2000 + seed)
    before = snapshot(gen)
    report = tmp_path / "r"
    if check(invoke("evaluate", "--generated", gen, "--out", report, *QUIET), mutation, "evaluate"):
        assert json.loads((report / "report.json").read_text())["methods"], mutation
    assert snapshot(gen) == before, f"{mutation} changed by evaluate"


@pytest.mark.parametrize("seed", range(30))
def test_a_damaged_store_read_by_generate(made: dict[str, Path], tmp_path: Path, seed: int) -> None:
    """generate --store: the policy's own store, damaged."""
    store = Path(shutil.copytree(made["store"], tmp_path / "s.zarr"))
    mutation = mutate(store, metadata_files(store), 3000 + seed)
    before = snapshot(store)
    gen = tmp_path / "g.zarr"
    result = invoke("generate", "--policy", made["policy"], "--store", store, "--out", gen,
                    "--num-tasks", 2, "--samples", 2, "--device", "cpu")  # fmt: skip
    if check(result, mutation, "generate --store"):
        generated_sound(gen)
    assert snapshot(store) == before, f"{mutation} changed by generate"


def cli(*args: object) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "lohp_cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def check_process(
    out: subprocess.CompletedProcess[str], mutation: Mutation, stage: str, report: bool = False
) -> None:
    """Exit 0, or 2-4 with one ``error:`` line and (but for a ``report`` on stdout, as
    ``inspect --verify`` prints its table) nothing on stdout."""
    where = f"{stage} after {mutation}"
    assert out.returncode in (0, 2, 3, 4), f"{where}: exit {out.returncode}\n{out.stderr}"
    assert "Traceback" not in out.stderr and "unexpected error" not in out.stderr, where
    if out.returncode:
        errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and (report or out.stdout == ""), f"{where}\n{out.stderr}"


@pytest.mark.parametrize("seed", range(4))
def test_the_real_cli_on_damaged_documents(
    made: dict[str, Path], tmp_path: Path, seed: int
) -> None:
    """Each stage in its own process, as a user runs it: one error line on stderr at most."""
    store = Path(shutil.copytree(made["store"], tmp_path / "s.zarr"))
    policy = Path(shutil.copytree(made["policy"], tmp_path / "p"))
    m_store = mutate(store, metadata_files(store), 4000 + seed)
    m_policy = mutate(policy, metadata_files(policy, POLICY_FILES), 5000 + seed)
    before: dict[str, Any] = {"s": snapshot(store), "p": snapshot(policy)}
    check_process(cli("inspect", store, "--verify"), m_store, "inspect --verify", report=True)
    train = cli("train-policy", "--store", store, "--out", tmp_path / "t", "--k", 2, "--steps", 1,
                "--device", "cpu", "--set", "policy.backbone=mlp", "--set", "policy.hidden=8",
                "--set", "policy.emb_dim=8")  # fmt: skip
    check_process(train, m_store, "train-policy")
    gen = cli("generate", "--policy", policy, "--out", tmp_path / "g.zarr", "--num-tasks", 1,
              "--samples", 1, "--device", "cpu")  # fmt: skip
    check_process(gen, m_policy, "generate")
    assert {"s": snapshot(store), "p": snapshot(policy)} == before
    assert plain(gen.stderr).count("error:") <= 1
