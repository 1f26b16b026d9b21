"""Few-shot episodes through the CLI (CliRunner): resolved settings, and every bad input as one
error line with exit 2 and nothing written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lohp_cli.config import CollectConfig, EvaluateConfig
from tests.cli.runner import invoke
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
    from lohp_cli import generate as generate_module

    seen: list[Any] = []
    monkeypatch.setattr(generate_module, "generate", lambda cfg, progress=None: seen.append(cfg))
    result = invoke("generate", "--policy", "p", "--tasks", "target", "--num-tasks", "600",
                    "--samples", "1", "--out", "g.zarr", "--dry-run")  # fmt: skip
    assert result.exit_code == 0, result.output
    cfg = json.loads(result.stdout)
    assert (cfg["tasks"], cfg["num_tasks"], cfg["samples"]) == ("target", 600, 1)
    assert seen == []  # --dry-run calls nothing
