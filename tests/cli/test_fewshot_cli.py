"""Few-shot episodes through the CLI (CliRunner): resolved settings, and every bad input as one
error line with exit 2 and nothing written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lohp_cli.config import CollectConfig, EvaluateConfig
from tests.cli.runner import flat, invoke
from tests.cli.test_cli import assert_error, dry_run

EPISODES = ["--family", "fewshot-digits", "--model", "head", "--ways", "5"]


def test_dry_run_resolves_the_episode_settings(tmp_path: Path) -> None:
    cfg = dry_run(*EPISODES, "--set", "task.shots=5", "--batch-size", "25", "--out", tmp_path / "s")
    assert cfg["task"]["family"] == "fewshot-digits"
    assert (cfg["task"]["shots"], cfg["task"]["queries"], cfg["task"]["meta_test"]) == (5, 15, None)
    assert cfg["batch_size"] == 25
    CollectConfig.model_validate(cfg)
    cross = dry_run("--family", "fewshot-fmnist", "--set", "task.meta_test=digits")
    assert cross["task"]["meta_test"] == "digits"


BAD = {
    "shots-over-the-class-images": (["--set", "task.shots=60"], ["task.shots", "60"]),
    "ways-over-the-meta-test-classes": (["--ways", "6"], ["task.ways=6", "meta-test"]),
    "unknown-meta-test-domain": (["--set", "task.meta_test=omniglot"], ["task.meta_test"]),
    "per-class-key-of-class-subsets": (
        ["--set", "task.train_per_class=40"],
        ["task.train_per_class", "fewshot-digits"],
    ),
    "shots-of-a-class-subset-family": (
        ["--family", "digits", "--set", "task.shots=5"],
        ["task.shots", "digits"],
    ),
}


@pytest.mark.parametrize(("args", "names"), list(BAD.values()), ids=list(BAD))
def test_bad_episode_settings_exit_2(tmp_path: Path, args: list[str], names: list[str]) -> None:
    out = tmp_path / "s.zarr"
    result = invoke("collect", "--out", out, *EPISODES, *args)
    line = assert_error(result, 2, names)
    assert "omniglot" in line or "omniglot" not in " ".join(args)
    assert not out.exists()


def test_evaluate_takes_the_prototype_baseline(tmp_path: Path) -> None:
    args = ["--generated", tmp_path / "g.zarr", "--baselines", "adam,prototype,hypernetwork"]
    result = invoke("evaluate", *args, "--dry-run")
    assert result.exit_code == 0, result.output
    cfg: dict[str, Any] = json.loads(result.stdout)
    assert cfg["baselines"] == ["adam", "prototype", "hypernetwork"]
    EvaluateConfig.model_validate(cfg)
    help_text = invoke("evaluate", "--help").stdout
    assert "prototype" in help_text


def test_generate_takes_600_meta_test_episodes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The library call gets the split and the count as given (the family makes the ids)."""
    from lohp_cli.stages import generate as generate_module

    seen: list[Any] = []
    monkeypatch.setattr(generate_module, "generate", lambda cfg, progress=None: seen.append(cfg))
    result = invoke("generate", "--policy", "p", "--tasks", "target", "--num-tasks", "600",
                    "--samples", "1", "--out", "g.zarr", "--dry-run")  # fmt: skip
    assert result.exit_code == 0, result.output
    cfg = json.loads(result.stdout)
    assert (cfg["tasks"], cfg["num_tasks"], cfg["samples"]) == ("target", 600, 1)
    assert seen == []  # --dry-run calls nothing


def test_evaluate_takes_the_few_shot_peers_and_their_settings(tmp_path: Path) -> None:
    peers = "adam,prototype,reptile,fomaml,gaussian,average-16,class-rows"
    result = invoke("evaluate", "--generated", tmp_path / "g.zarr", "--baselines", peers,
                    "--set", "meta_start.meta_steps=200", "--set", "meta_start.inner_lr=null",
                    "--dry-run")  # fmt: skip
    assert result.exit_code == 0, result.output
    cfg = json.loads(result.stdout)
    assert cfg["baselines"] == peers.split(",")
    meta = {"inner_steps": 5, "inner_lr": None, "meta_steps": 200, "meta_batch": 5,
            "reptile_lr": 0.1, "fomaml_lr": 0.001}  # fmt: skip
    assert cfg["meta_start"] == meta
    EvaluateConfig.model_validate(cfg)
    bad = invoke("evaluate", "--set", "meta_start.meta_steps=0", "--set", "meta_start.outer=1",
                 "--dry-run")  # fmt: skip
    assert_error(bad, 2, ["meta_start.meta_steps", "meta_start.outer"])


def test_a_not_applicable_row_is_one_table_row_and_a_note(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from lohp_cli.stages import evaluate as evaluate_module

    def row(name: str, acc: float | None) -> dict[str, Any]:
        scored = acc is not None
        return {"name": name, "kind": "memorization", "steps": None, "acc_mean": acc,
                "acc_std": 0.01 if scored else None, "n": 6 if scored else 0,
                "n_tasks": 3 if scored else 0, "acc_ci95": [0.4, 0.6] if scored else None,
                "latency_ms_batch1": 0.5 if scored else None, "policy": None,
                **({} if scored else {"note": "not applicable: held-out classes"})}  # fmt: skip

    def fake(cfg: EvaluateConfig, progress: Any = None) -> dict[str, Any]:
        rows = [row("nearest", 0.5), row("class-rows", None)]
        for r in rows:
            progress({"event": "method", **r})
        return {"family": "fewshot-digits", "model": "head", "tasks": ["a", "b", "c"],
                "device": "cpu", "methods": rows, "config": {"out": cfg.out}}  # fmt: skip

    monkeypatch.setattr(evaluate_module, "evaluate", fake)
    result = invoke("evaluate", "--generated", tmp_path / "g.zarr", "--out", tmp_path / "r",
                    "--baselines", "nearest,class-rows")  # fmt: skip
    assert result.exit_code == 0, result.output
    out = flat(result.output)
    assert "class-rows: not applicable: held-out classes" in out
    assert "class-rows - n/a - - -" in out  # the narrow table: no kind column (report.md has it)
    assert "nearest - 0.5000±0.010 ±0.1000 0.5 -" in out
