"""LoRA adaptation in real subprocesses: collect a lora store → train-policy → generate →
evaluate against Adam on the factors and full fine-tuning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.test_pipeline_subprocess import POLICY, lohp

pytestmark = pytest.mark.slow

COLLECT = [
    "collect", "--family", "digits", "--model", "lora", "--tasks", "12", "--seeds", "1",
    "--optimizers", "adam", "--steps", "40", "--record-every", "5", "--init", "shared",
    "--set", "task.train_per_class=40", "--set", "task.test_per_class=20",
    "--set", "task.support_per_class=5", "--set", "batch_size=32",
    "--set", "model.extractor_steps=150", "--set", "model.hidden=32",
    "--set", "model.feature_dim=16", "--set", "model.lora_rank=2",
]  # fmt: skip


def test_lora_collect_train_generate_evaluate(tmp_path: Path) -> None:
    store, pol, gen, rep = (tmp_path / n for n in ("s.zarr", "pol", "g.zarr", "report"))
    lohp(*COLLECT, "--out", str(store))
    info = json.loads(lohp("inspect", str(store), "--json", "--verify").stdout)
    # digits 8×8 → fc1 (32) → fc2 (16) at rank 2, and a 5-way head: θ = factors + head
    assert info["model"] == "lora" and info["verified"]
    assert info["param_count"] == 2 * (64 + 32) + 2 * (32 + 16) + 16 * 5 + 5
    lohp("train-policy", "--store", str(store), "--out", str(pol), "--k", "2", "--steps", "300",
         *POLICY)  # fmt: skip
    lohp("generate", "--policy", str(pol), "--out", str(gen), "--tasks", "source",
         "--num-tasks", "4", "--samples", "2", "--device", "cpu")  # fmt: skip
    lohp("evaluate", "--generated", str(gen), "--out", str(rep), "--baselines", "adam,full-ft",
         "--latency-repeats", "2", "--set", "frontier_steps=[]", "--set", "locality_tasks=0",
         "--set", "cosine_runs=2", "--set", "plots=false", "--device", "cpu")  # fmt: skip
    report = json.loads((rep / "report.json").read_text())
    assert report["model"] == "lora" and report["init"] == "shared"
    methods = {m["name"]: m for m in report["methods"]}
    assert set(methods) == {"lo-hp (k=2)", "adam-40", "adam-4", "full-ft-40", "full-ft-4"}
    assert methods["full-ft-40"]["kind"] == "full-ft" and methods["full-ft-4"]["steps"] == 4
    for m in methods.values():
        assert m["n"] == 8 and 0 <= m["acc_mean"] <= 1 and m["latency_ms_batch1"] > 0
    # 5-way digits over a backbone pretrained on all ten: chance is 0.2
    assert methods["adam-40"]["acc_mean"] > 0.7 and methods["full-ft-40"]["acc_mean"] > 0.7
    # measured 0.79 (Adam for its N = 4 steps: 0.43); generating starts from the shared θ₀
    assert methods["lo-hp (k=2)"]["acc_mean"] > methods["adam-4"]["acc_mean"] + 0.15
    md = (rep / "report.md").read_text()
    assert "| full-ft-40 | full-ft | 40 |" in md
