"""Domain generalization end to end in real subprocesses, on Rotated Fashion-MNIST held out at
75°: collect (source domains) → train-policy → generate (held-out domain) → evaluate (adam, erm,
hypernetwork) → report-dg."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import zarr

from tests.conftest import needs_fmnist
from tests.integration.test_pipeline_subprocess import POLICY, lohp

pytestmark = [pytest.mark.slow, needs_fmnist]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "rotated-fmnist.toml"

TINY = ["--set", "task.train_per_class=40", "--set", "task.test_per_class=20",
        "--set", "task.support_per_class=5", "--set", "model.extractor_steps=150",
        "--set", "model.feature_dim=32", "--set", "batch_size=32"]  # fmt: skip


def test_collect_train_generate_evaluate_report_dg(tmp_path: Path) -> None:
    store, policy, gen = tmp_path / "s.zarr", tmp_path / "p", tmp_path / "g.zarr"
    rep, dg = tmp_path / "dg-75", tmp_path / "dg"
    lohp("collect", "--config", str(EXAMPLE), "--test-domain", "75",
         "--tasks", "8", "--seeds", "1", "--steps", "40", "--workers", "1", "--device", "cpu",
         *TINY, "--out", str(store))  # fmt: skip
    root = zarr.open_group(str(store), mode="r")
    domains = {dict(g.attrs)["domain"] for _, g in root["tasks"].groups()}
    assert domains and 75 not in domains  # source tasks in source domains only
    assert dict(root["extractor"].attrs)["trained_on_domains"] == [0, 15, 30, 45, 60]
    lohp("train-policy", "--store", str(store), "--out", str(policy), "--k", "2",
         "--steps", "200", *POLICY)  # fmt: skip
    lohp("generate", "--policy", str(policy), "--out", str(gen), "--tasks", "target",
         "--num-tasks", "3", "--samples", "2", "--device", "cpu")  # fmt: skip
    lohp("evaluate", "--generated", str(gen), "--out", str(rep), "--baselines",
         "adam,erm,hypernetwork", "--set", "hypernetwork_steps=100", "--set", "frontier_steps=[]",
         "--set", "locality_tasks=1", "--set", "locality_source_tasks=1", "--latency-repeats",
         "2", "--device", "cpu")  # fmt: skip
    report = json.loads((rep / "report.json").read_text())
    assert report["family"] == "rotated-fmnist" and report["test_domain"] == 75
    assert len(report["tasks"]) == 3 and all(t.startswith("r75_c") for t in report["tasks"])
    methods = {m["name"]: m for m in report["methods"]}
    assert set(methods) == {"lo-hp (k=2)", "erm", "hypernetwork", "adam-40", "adam-4"}
    assert methods["erm"]["kind"] == "erm" and methods["erm"]["steps"] == 40
    for m in methods.values():
        assert m["n"] == 6 and 0 <= m["acc_mean"] <= 1
    # 5-way: chance is 0.2; Adam on the held-out task's own images and ERM on the source domains
    # both learn (ERM from rotated images of the same classes)
    assert methods["adam-40"]["acc_mean"] > 0.5 and methods["erm"]["acc_mean"] > 0.4
    out = lohp("report-dg", str(rep), "--out", str(dg))
    assert out.stdout.strip() == str(dg)
    md = (dg / "dg.md").read_text()
    assert "| method | 75° | Avg |" in md and "| erm |" in md
