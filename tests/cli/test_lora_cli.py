"""The ``lora`` target model and the ``full-ft`` baseline through the CLI (CliRunner): resolved
settings, and one clean error line with the documented exit code for each bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import Result

from lohp_cli.config import GenerateConfig, TrainConfig
from lohp_cli.stages.collect import collect
from lohp_cli.stages.generate import generate
from lohp_cli.stages.train import train_policy
from tests.cli.runner import flat, invoke, plain
from tests.conftest import TINY, tiny_config

LORA = {"name": "lora", "hidden": 8, "feature_dim": 6, "extractor_steps": 20, "lora_rank": 2}
POLICY = {"backbone": "mlp", "hidden": 16, "emb_dim": 8}


def tiny_sets(**model: object) -> list[str]:
    """``--set`` arguments for the TINY collect settings with a lora model."""
    out: list[str] = []
    for section in ("task", "model"):
        items = {**TINY[section], **LORA, **model} if section == "model" else TINY[section]
        out += [a for k, v in items.items() for a in ("--set", f"{section}.{k}={json.dumps(v)}")]
    for key in ("tasks", "seeds", "steps", "record_every", "batch_size"):
        out += ["--set", f"{key}={TINY[key]}"]
    return out


def error_line(result: Result, code: int, *names: str) -> str:
    """Exit ``code``, no traceback, exactly one ``error:`` line, naming every one of ``names``."""
    out = plain(result.output)
    assert result.exit_code == code, f"exit {result.exit_code}, want {code}:\n{out}"
    assert "Traceback" not in out
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, out
    missing = [n for n in names if n not in errors[0]]
    assert not missing, f"{errors[0]!r} does not name {missing}"
    return errors[0]


def test_collect_resolves_the_lora_settings(tmp_path: Path) -> None:
    result = invoke(
        "collect", "--dry-run", "--model", "lora", "--set", "model.lora_rank=3",
        "--set", "model.lora_alpha=6", "--set", 'model.lora_targets=["fc2"]',
        "--set", "model.lora_backbone=cnn", "--out", tmp_path / "s.zarr",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    model = json.loads(result.stdout)["model"]
    assert model["name"] == "lora"
    assert (model["lora_rank"], model["lora_alpha"], model["lora_targets"]) == (3, 6.0, ["fc2"])
    assert model["lora_backbone"] == "cnn"
    head = json.loads(invoke("collect", "--dry-run").stdout)["model"]
    assert not any(k.startswith("lora_") for k in head)  # other models' JSON is unchanged


def test_collect_a_lora_store(tmp_path: Path) -> None:
    out = tmp_path / "s.zarr"
    result = invoke("collect", "--model", "lora", *tiny_sets(), "--out", out)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{out}\n"
    assert "pretraining the frozen mlp backbone of the lora model (20 steps" in flat(result.stderr)
    summary = json.loads(invoke("inspect", out, "--json").stdout)
    # digits 8×8: fc1 64 → 8, fc2 8 → 6 at rank 2, and the 5-way head over 6 features
    assert summary["model"] == "lora"
    assert summary["param_count"] == 2 * (64 + 8) + 2 * (8 + 6) + 6 * 5 + 5


@pytest.mark.parametrize(
    ("sets", "names"),
    [
        pytest.param(["--set", "model.lora_rank=7"], ["lora_rank=7", "'fc2'", "(8 → 6)"],
                     id="rank-over-min-in-out"),
        pytest.param(["--set", 'model.lora_targets=["fc1","fc9"]'], ["'fc9'", "fc1, fc2"],
                     id="target-matching-no-layer"),
    ],
)  # fmt: skip
def test_bad_lora_settings_exit_2_and_write_nothing(
    tmp_path: Path, sets: list[str], names: list[str]
) -> None:
    out = tmp_path / "s.zarr"
    result = invoke("collect", "--model", "lora", *tiny_sets(), *sets, "--out", out)
    error_line(result, 2, *names)
    assert not out.exists()


def test_lora_settings_on_another_model_exit_2(tmp_path: Path) -> None:
    result = invoke("collect", "--model", "head", "--set", "model.lora_rank=4", "--dry-run")
    error_line(result, 2, "lora_rank", "lora model only")


def test_evaluate_resolves_full_ft(tmp_path: Path) -> None:
    result = invoke(
        "evaluate", "--dry-run", "--generated", tmp_path / "g.zarr", "--baselines", "adam,full-ft",
        "--set", "full_ft_lr=0.001",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    cfg = json.loads(result.stdout)
    assert cfg["baselines"] == ["adam", "full-ft"] and cfg["full_ft_lr"] == 0.001


# ---- a LoRA policy on another store, full-ft on a store without adapters ------------------------
def _policy(store: Path, out: Path) -> Path:
    train_policy(
        TrainConfig.model_validate(
            {"store": str(store), "out": str(out), "k": 2, "steps": 2, "policy": POLICY}
        )
    )
    return out


@pytest.fixture(scope="module")
def lora_policy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("lora-cli")
    store, other = tmp / "r2.zarr", tmp / "r1.zarr"
    collect(tiny_config(store, model=LORA, optimizers=("adam",), tasks=1))
    collect(tiny_config(other, model={**LORA, "lora_rank": 1}, optimizers=("adam",), tasks=1))
    return {"policy": _policy(store, tmp / "pol"), "other": other, "tmp": tmp}


def test_a_lora_policy_on_a_store_of_another_rank_exit_4(lora_policy: dict[str, Path]) -> None:
    out = lora_policy["tmp"] / "g.zarr"
    result = invoke(
        "generate", "--policy", lora_policy["policy"], "--store", lora_policy["other"],
        "--out", out, "--num-tasks", "1", "--device", "cpu",
    )  # fmt: skip
    error_line(result, 4, "model.lora_rank", "has 2", "this one 1")
    assert not out.exists()


def test_full_ft_on_a_model_without_adapters_exit_2(tmp_path: Path) -> None:
    store, gen, rep = tmp_path / "s.zarr", tmp_path / "g.zarr", tmp_path / "report"
    collect(tiny_config(store, tasks=1, optimizers=("adam",)))  # mlp
    generate(
        GenerateConfig.model_validate(
            {
                "policy": str(_policy(store, tmp_path / "pol")),
                "out": str(gen),
                "num_tasks": 1,
                "samples": 1,
                "device": "cpu",
            }
        )
    )
    result = invoke("evaluate", "--generated", gen, "--baselines", "full-ft", "--out", rep)
    error_line(result, 2, "full-ft", "'mlp'")
    assert not rep.exists()  # refused before any method ran
