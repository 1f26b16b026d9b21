"""Few-shot episodes through every stage in real subprocesses: collect (fine-tuning on meta-train
episodes' support sets) → train-policy → generate (meta-test episodes) → evaluate against Adam,
the prototype classifier and the hypernetwork, with each row's 95 % interval over episodes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.test_pipeline_subprocess import POLICY, lohp

pytestmark = pytest.mark.slow

EPISODES = 40
COLLECT = [
    "collect", "--family", "fewshot-digits", "--model", "head", "--ways", "5", "--tasks", "12",
    "--seeds", "1", "--optimizers", "adam", "--steps", "40", "--record-every", "5",
    "--set", "task.shots=1", "--set", "model.extractor_steps=150", "--set", "model.feature_dim=32",
    "--device", "cpu",
]  # fmt: skip


def test_episodes_collect_train_generate_evaluate(tmp_path: Path) -> None:
    store, pol, gen, rep = (tmp_path / n for n in ("s.zarr", "pol", "g.zarr", "report"))
    lohp(*COLLECT, "--out", str(store))
    summary = json.loads(lohp("inspect", str(store), "--json").stdout)
    assert summary["family"] == "fewshot-digits" and summary["complete_runs"] == 12
    lohp("train-policy", "--store", str(store), "--out", str(pol), "--k", "2", "--steps", "100",
         *POLICY)  # fmt: skip
    lohp("generate", "--policy", str(pol), "--tasks", "target", "--num-tasks", str(EPISODES),
         "--samples", "1", "--device", "cpu", "--out", str(gen))  # fmt: skip
    lohp("evaluate", "--generated", str(gen), "--out", str(rep),
         "--baselines", "adam,prototype,hypernetwork", "--set", "hypernetwork_steps=100",
         "--set", "frontier_steps=[1,5]", "--set", "locality_tasks=2",
         "--set", "locality_source_tasks=0", "--latency-repeats", "2",
         "--device", "cpu")  # fmt: skip
    report = json.loads((rep / "report.json").read_text())
    assert report["family"] == "fewshot-digits" and len(report["tasks"]) == EPISODES
    # meta-test episodes: classes 5..9 of digits, 1 shot, 15 queries
    assert all(t.startswith("digits-k1-q15-e") for t in report["tasks"])
    assert {int(c) for t in report["tasks"] for c in t.split("-c")[1].split("_")} <= {5, 6, 7, 8, 9}
    rows = {m["name"]: m for m in report["methods"]}
    assert set(rows) == {"lo-hp (k=2)", "prototype", "hypernetwork", "adam-40", "adam-4"}
    for m in rows.values():
        lo, hi = m["acc_ci95"]
        assert m["n_tasks"] == EPISODES and lo <= m["acc_mean"] <= hi and hi - lo < 0.3
    assert rows["prototype"]["kind"] == "prototype" and rows["prototype"]["steps"] is None
    assert rows["prototype"]["acc_mean"] > 0.3  # 5-way: chance is 0.2
    md = (rep / "report.md").read_text()
    assert f"| prototype | {EPISODES} | {rows['prototype']['acc_mean']:.4f} ± " in md
    pairs = {(p["a"], p["b"]) for p in report["paired"]["pairs"]}
    assert ("lo-hp (k=2)", "prototype") in pairs
