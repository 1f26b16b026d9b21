"""Fuzz: the metadata documents of a small store and of a policy directory, damaged one at a time
(seeded: tests/fuzz.py), never make a stage exit 1 or print more than one error line, and never
change the input. A stage that succeeds gives the right result: the runs it trained on are the
runs whose own metadata is sound, and when those are all of them, the very policy it trains on
the undamaged store (issue 25).

Fast (in-process, a synthetic store, a few seconds); tests/integration/test_fuzz_subprocess.py
runs more seeds through the real CLI on a digits store (slow).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import Result

from lohp_cli.artifacts.run import read_run_meta
from lohp_cli.errors import StoreError
from lohp_cli.store import TrajectoryStore
from tests.cli.runner import invoke, plain
from tests.conftest import make_linear_store
from tests.fuzz import Mutation, metadata_files, mutate, snapshot

# seeds run by default (fast); LOHP_FUZZ_SEEDS=N runs N of each (200 of each pass)
SEEDS = range(int(os.environ.get("LOHP_FUZZ_SEEDS", "8")))
TRAIN = ["--k", "2", "--batch-size", "2", "--steps", "2", "--device", "cpu",
         "--set", "policy.backbone=mlp", "--set", "policy.hidden=8", "--set", "policy.emb_dim=8",
         "--set", "checkpoint_every=1"]  # fmt: skip
POLICY_FILES = ("normalization.safetensors", "model.safetensors", "metrics.jsonl",
                "state/model.safetensors", "state/optimizer.safetensors")  # fmt: skip


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A synthetic store (2 tasks × sgd, adam, with its run index) and a policy trained on it."""
    d = tmp_path_factory.mktemp("fuzz")
    store = d / "store.zarr"
    make_linear_store(store, n_tasks=2, size=5, cond_dim=3, steps=4, optimizers=("sgd", "adam"))
    TrajectoryStore.open(str(store), mode="r+").write_run_index()  # as collect ends
    policy = d / "policy"
    ok(invoke("train-policy", "--store", store, "--out", policy, *TRAIN), "reference")
    return {"store": store, "policy": policy, "model": (policy / "model.safetensors").read_bytes()}


def ok(result: Result, what: str) -> Result:
    assert result.exit_code == 0, f"{what}: {plain(result.output)}"
    return result


def check(result: Result, mutation: Mutation, stage: str) -> bool:
    """Exit 0, or 2-4 with exactly one line on stderr (an ``error:`` line); never 1, never a
    traceback. Returns whether the stage succeeded."""
    out = plain(result.output)
    where = f"{stage} after {mutation}"
    assert result.exit_code in (0, 2, 3, 4), f"{where}: exit {result.exit_code}\n{out}"
    assert "Traceback" not in out and "unexpected error" not in out, f"{where}\n{out}"
    if result.exit_code == 0:
        return True
    errors = [ln for ln in plain(result.stderr).splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, f"{where}: want one error line\n{result.stderr}"
    return False


def sound_runs(store: Path) -> set[str]:
    """The runs whose own attributes still validate (what a stage may use)."""
    out = set()
    for block in sorted(p for p in (store / "blocks").iterdir() if p.is_dir()):
        try:
            doc = json.loads((block / "zarr.json").read_text())["attributes"]["block"]
            rows = list(zip(doc["runs"], doc["attrs"], strict=True))
        except (ValueError, KeyError, TypeError):
            continue
        for rid, attrs in rows:
            try:
                read_run_meta(rid, attrs, rid)
            except (ValueError, KeyError, TypeError, StoreError):
                continue
            out.add(rid)
    return out


@pytest.mark.parametrize("seed", SEEDS)
def test_a_damaged_store_document(made: dict[str, Any], tmp_path: Path, seed: int) -> None:
    store = Path(shutil.copytree(made["store"], tmp_path / "store.zarr"))
    mutation = mutate(store, metadata_files(store), seed)
    before = snapshot(store)
    for args in (["--json"], ["--verify", "--json"]):
        result = invoke("inspect", store, *args)
        if check(result, mutation, f"inspect {' '.join(args)}"):
            json.loads(result.stdout)
    pol = tmp_path / "pol"
    if check(invoke("train-policy", "--store", store, "--out", pol, *TRAIN), mutation, "train"):
        # the runs whose own metadata is sound, and those a trusted index entry vouches for
        used = json.loads((pol / "config.json").read_text())["runs_used"]
        assert len(sound_runs(store)) <= used <= 4, mutation
        if used == 4:  # all the runs: the policy of the undamaged store, byte for byte
            assert (pol / "model.safetensors").read_bytes() == made["model"], mutation
    assert snapshot(store) == before, f"{mutation} changed by a reader"


@pytest.mark.parametrize("seed", SEEDS)
def test_a_damaged_policy_document(made: dict[str, Any], tmp_path: Path, seed: int) -> None:
    policy = Path(shutil.copytree(made["policy"], tmp_path / "policy"))
    mutation = mutate(policy, metadata_files(policy, POLICY_FILES), seed)
    before = snapshot(policy)
    # generate reads the policy first; the synthetic store's family then ends it (exit 3)
    result = invoke("generate", "--policy", policy, "--out", tmp_path / "g.zarr", "--device", "cpu")
    check(result, mutation, "generate")
    assert snapshot(policy) == before, f"{mutation} changed by generate"
    resumed = invoke("train-policy", "--store", made["store"], "--out", policy, *TRAIN)
    if not check(resumed, mutation, "train-policy (resume)"):
        assert snapshot(policy) == before, f"{mutation} changed by a refused resume"
