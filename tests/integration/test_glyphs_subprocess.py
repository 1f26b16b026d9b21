"""Glyph episodes through every stage in real subprocesses, on a tiny glyph setting: collect
(many-shot Adam runs on meta-train episodes of background characters) → train-policy (the rows
backbone) → generate (meta-test episodes of evaluation characters) → evaluate against the
prototype classifier, the meta-learned start and the memorisation baselines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lohp_cli.config import TaskConfig
from lohp_cli.tasks.glyphs import load_glyphs
from tests.integration.test_pipeline_subprocess import POLICY, lohp

pytestmark = pytest.mark.slow

EPISODES = 12
GLYPHS = ["--set", "task.glyphs.characters=40", "--set", "task.glyphs.drawers=6",
          "--set", "task.glyphs.size=16"]  # fmt: skip


def test_glyph_episodes_through_every_stage(tmp_path: Path) -> None:
    store, pol, gen, rep = (tmp_path / n for n in ("s.zarr", "pol", "g.zarr", "report"))
    cache = tmp_path / "cache"
    lohp("collect", "--family", "fewshot-glyphs", "--model", "head", "--ways", "3",
         "--tasks", "10", "--seeds", "1", "--optimizers", "adam", "--steps", "20",
         "--record-every", "5", "--batch-size", "20", *GLYPHS,
         "--set", "task.queries=3", "--set", "task.source_train=all",
         "--set", f"task.data_root={cache}", "--set", "model.extractor_steps=300",
         "--set", "model.feature_dim=16", "--device", "cpu", "--out", str(store))  # fmt: skip
    summary = json.loads(lohp("inspect", str(store), "--json").stdout)
    assert summary["family"] == "fewshot-glyphs" and summary["complete_runs"] == 10
    lohp("train-policy", "--store", str(store), "--out", str(pol), "--k", "2", "--steps", "20",
         *POLICY, "--set", "policy.backbone=rows", "--set", "policy.width=16",
         "--set", "policy.blocks=1")  # fmt: skip
    lohp("generate", "--policy", str(pol), "--tasks", "target", "--num-tasks", str(EPISODES),
         "--samples", "1", "--device", "cpu", "--out", str(gen))  # fmt: skip
    lohp("evaluate", "--generated", str(gen), "--out", str(rep),
         "--baselines", "adam,prototype,reptile,gaussian,class-rows",
         "--set", "frontier_steps=[1]", "--set", "meta_start.meta_steps=5",
         "--set", "locality_tasks=0", "--latency-repeats", "1", "--device", "cpu")  # fmt: skip
    report = json.loads((rep / "report.json").read_text())
    evaluation = set(
        load_glyphs(
            TaskConfig.model_validate(
                {
                    "family": "fewshot-glyphs",
                    "data_root": str(cache),
                    "glyphs": {"characters": 40, "drawers": 6, "size": 16},
                }  # fmt: skip
            )
        ).evaluation_classes
    )
    assert len(report["tasks"]) == EPISODES
    for t in report["tasks"]:  # meta-test episodes: evaluation characters only
        assert t.startswith("glyphs-k1-q3-e")
        assert {int(c) for c in t.split("-c")[1].split("_")} <= evaluation
    rows = {m["name"]: m for m in report["methods"]}
    assert {"lo-hp (k=2)", "prototype", "reptile-0", "gaussian", "class-rows"} <= set(rows)
    assert rows["class-rows"]["acc_mean"] is None  # no evaluation character is in the store
    assert "not applicable" in rows["class-rows"]["note"]
    assert rows["prototype"]["acc_mean"] > 0.4  # 3-way: chance is 1/3
