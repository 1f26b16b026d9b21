"""Issue 25 through the CLI: every failure a user can cause is one line and exit 2-4, checked
before work starts, and leaves nothing half-written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.runner import invoke, plain
from tests.cli.test_cli import assert_error, tiny_sets

BIG = str(2**70)


def test_an_init_seed_beyond_64_bits_is_a_config_error_and_writes_nothing(tmp_path: Path) -> None:
    """Before: exit 1 (Overflow when unpacking long long) and a half-initialised store that
    failed the same way on every re-run."""
    out = tmp_path / "s.zarr"
    result = invoke("collect", "--out", out, *tiny_sets(), "--init", "shared", "--init-seed", BIG)
    assert_error(result, 2, ["init_seed", BIG])
    assert not out.exists()


# every command's seed(s): 0 <= seed < 2**64 (what torch.manual_seed takes)
SEEDS = [
    ("collect", "seed", []),
    ("train-policy", "seed", []),
    ("generate", "seed", []),
    ("evaluate-l2o", "seed", ["--policy", "a=dir"]),
    ("collect", "task.split_seed", []),
]


@pytest.mark.parametrize(("command", "key", "extra"), SEEDS, ids=[f"{c}-{k}" for c, k, _ in SEEDS])
@pytest.mark.parametrize("value", [BIG, "-1"])
def test_every_seed_fits_64_bits(command: str, key: str, extra: list[str], value: str) -> None:
    result = invoke(command, "--dry-run", *extra, "--set", f"{key}={value}")
    assert_error(result, 2, [key, value])
    ok = invoke(command, "--dry-run", *extra, "--set", f"{key}={2**64 - 1}")
    assert ok.exit_code == 0, plain(ok.output)


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "Infinity", "NaN"])
@pytest.mark.parametrize(
    ("command", "key", "extra"),
    [
        ("collect", "model.lora_alpha", []),
        ("collect", "optim.sgd.lr", []),
        ("train-policy", "lr", []),
        ("evaluate", "full_ft_lr", []),
    ],
)
def test_a_float_that_is_not_finite_is_a_config_error(
    command: str, key: str, extra: list[str], value: str
) -> None:
    """Before: --set model.lora_alpha=inf passed validation, failed later with a misleading
    hint ("lower the learning rate") and was saved in the store's settings."""
    result = invoke(command, "--dry-run", *extra, "--set", f"{key}={value}")
    line = assert_error(result, 2, [key])
    assert "finite" in line, line


def test_collect_help_shows_the_cluster_extra() -> None:
    """Before: Rich markup ate '[cluster]' in pip install 'lohp[cluster]'."""
    text = " ".join(plain(invoke("collect", "--help").stdout).replace("│", " ").split())
    assert "pip install 'lohp[cluster]'" in text


def test_dry_run_still_prints_json() -> None:
    result = invoke("collect", "--dry-run", *tiny_sets())
    assert result.exit_code == 0 and json.loads(result.stdout)["seed"] == 0


def test_every_bracket_in_a_help_text_survives_rich_markup() -> None:
    """Rich treats '[word]' as a markup tag and drops it; help texts escape it ('\\[')."""
    import re

    import typer

    from lohp_cli.cli import app

    group = typer.main.get_command(app)
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        shown = " ".join(plain(invoke(name, "--help").stdout).replace("│", " ").split())
        for param in command.params:
            text = (getattr(param, "help", None) or "").replace("\\[", "[")
            for token in re.findall(r"\[[a-z][^\]]*\]", text):
                assert token in shown, f"{name} {param.name}: {token!r} lost in --help"
