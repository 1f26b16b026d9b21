"""What a user reads: every command's help (shown defaults equal to the config's, no type of a
flag, a --set example that applies to the command), the progress of long stages when stderr is
not a terminal, and evaluate's table at 80 columns."""

from __future__ import annotations

import io
import json
import re
from typing import Any

import pytest
from rich.console import Console

from lohp_cli.cli import progress as progress_module
from lohp_cli.cli.evaluate import summary_table
from lohp_cli.cli.progress import StageProgress, clock
from lohp_cli.config import CollectConfig, EvaluateConfig, GenerateConfig
from lohp_cli.config.train import LoHpTrainConfig
from tests.cli.runner import flat, invoke, plain

STAGES = (
    "collect", "train-policy", "generate", "evaluate", "evaluate-l2o", "export", "predict",
    "inspect",
)  # fmt: skip

# (command, option, the config value its shown default must equal)
DEFAULTS = [
    ("collect", "--family", CollectConfig().task.family),
    ("collect", "--model", CollectConfig().model.name),
    ("collect", "--tasks", CollectConfig().tasks),
    ("collect", "--seeds", CollectConfig().seeds),
    ("collect", "--optimizers", ",".join(CollectConfig().optimizers)),
    ("collect", "--steps", CollectConfig().steps),
    ("collect", "--record-every", CollectConfig().record_every),
    ("collect", "--ways", CollectConfig().task.ways),
    ("collect", "--batch-size", CollectConfig().batch_size),
    ("collect", "--seed", CollectConfig().seed),
    ("collect", "--init", CollectConfig().init),
    ("collect", "--workers", CollectConfig().workers),
    ("collect", "--batch-runs", CollectConfig().batch_runs),
    ("collect", "--device", CollectConfig().device),
    ("train-policy", "--method", LoHpTrainConfig().method),
    ("train-policy", "--k", LoHpTrainConfig().k),
    ("train-policy", "--steps", LoHpTrainConfig().steps),
    ("train-policy", "--batch-size", LoHpTrainConfig().batch_size),
    ("train-policy", "--lr", LoHpTrainConfig().lr),
    ("train-policy", "--seed", LoHpTrainConfig().seed),
    ("train-policy", "--threads", "auto"),
    ("generate", "--tasks", GenerateConfig().tasks),
    ("generate", "--num-tasks", GenerateConfig().num_tasks),
    ("generate", "--samples", GenerateConfig().samples),
    ("generate", "--mode", GenerateConfig().mode),
    ("generate", "--seed", GenerateConfig().seed),
    ("generate", "--threads", "auto"),
    ("evaluate", "--baselines", ",".join(EvaluateConfig().baselines)),
    ("evaluate", "--latency-repeats", EvaluateConfig().latency_repeats),
    ("evaluate", "--threads", 1),
]


def _help(command: str) -> str:
    result = invoke(command, "--help")
    assert result.exit_code == 0, result.output
    return plain(result.stdout)


def _option_text(text: str, option: str) -> str:
    """The help of ``option`` (its row and the rows its text wraps onto), whitespace collapsed."""
    rows = text.splitlines()
    start = next(i for i, r in enumerate(rows) if re.search(rf"{re.escape(option)}\b(?!-)", r))
    out = [rows[start]]
    for r in rows[start + 1 :]:
        if re.match(r"^│\s+--|^│\s+-\w|^╰", r):
            break
        out.append(r)
    return flat("\n".join(out))


@pytest.mark.parametrize(("command", "option", "value"), DEFAULTS)
def test_help_shows_the_configs_default(command: str, option: str, value: Any) -> None:
    assert f"[default: {value}]" in _option_text(_help(command), option)


@pytest.mark.parametrize("command", STAGES)
def test_help_shows_no_type_for_flags_and_no_list_types(command: str) -> None:
    text = _help(command)
    assert "<bool>" not in text and "<list[" not in text
    assert "[default: (" not in text  # a default in brackets, not "(…)"


def test_the_cluster_extra_and_the_shard_help_read_right() -> None:
    text = flat(_help("collect"))
    assert "pip install 'lohp[cluster]'" in text
    assert "Run only shard i of n of the planned runs, as i/n" in text
    assert "Only share" not in text


@pytest.mark.parametrize(
    ("command", "args"),
    [
        ("collect", []),
        ("train-policy", []),
        ("generate", []),
        ("evaluate", []),
    ],
)
def test_each_commands_set_example_is_one_of_its_keys(command: str, args: list[str]) -> None:
    """The --set example in a command's help applies to that command's config (optim.sgd.lr is
    collect's, not generate's)."""
    text = flat(_help(command))
    example = re.search(r"e\.g\. --set (\S+?);", text)
    assert example is not None, text
    result = invoke(command, "--set", example.group(1).strip("'"), *args, "--dry-run")
    assert result.exit_code == 0, result.output
    json.loads(result.stdout)


def test_evaluate_table_fits_80_columns() -> None:
    names = ["lo-hp (k=2)", "hypernetwork", "grad-coordinate-w-on-0-all-token (k=2)", "adam-200"]
    methods = [
        {"name": n, "kind": "policy", "steps": 20, "acc_mean": 0.9017, "acc_std": 0.0429,
         "acc_ci95": [0.88, 0.92], "latency_ms_batch1": 1234.5678,
         "latency_iqr_ms": [1200.25, 1300.75]}
        for n in names
    ]  # fmt: skip
    r = {"family": "fmnist", "model": "head", "tasks": ["t"] * 20, "device": "cpu",
         "methods": methods, "timing": {"rounds": 20, "warning": None}}  # fmt: skip
    out = io.StringIO()
    Console(file=out, width=80, legacy_windows=False).print(summary_table(r))
    lines = out.getvalue().splitlines()
    assert max(len(ln) for ln in lines) <= 80
    rows = [ln for ln in lines if "0.9017" in ln]
    assert len(rows) == len(names)  # one line per row: no number wraps
    assert all("1.23e+03" in ln and "1.2e+03–1.3e+03" in ln for ln in rows)


def test_plain_progress_lines_say_elapsed_and_eta(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: now[0])
    out = io.StringIO()
    bar = StageProgress(Console(file=out, width=200, force_terminal=False))
    assert bar.mode == "plain"
    bar.start("train-policy", 100)
    for step in range(1, 101):
        now[0] += 0.5
        bar.update(completed=step, info=f"loss={1000 / step:.4g}")
    bar.stop()
    lines = out.getvalue().splitlines()
    assert len(lines) == 10  # every 10 %
    assert lines[0] == "train-policy: 10/100 (10 %) loss=100, elapsed 0:05, eta 0:45"
    assert lines[-1] == "train-policy: 100/100 (100 %) loss=10, elapsed 0:50, eta 0:00"
    assert clock(3725) == "1:02:05" and clock(None) == "-"


def test_plain_progress_prints_at_least_every_30_s(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: now[0])
    out = io.StringIO()
    bar = StageProgress(Console(file=out, width=200, force_terminal=False))
    bar.start("evaluate", 1000, completed=0)
    for i in range(1, 5):  # slow: 0.4 % per 40 s
        now[0] += 40.0
        bar.update(completed=i)
    assert len(out.getvalue().splitlines()) == 4


def test_quiet_prints_no_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    from lohp_cli.cli import common

    monkeypatch.setitem(common._state, "verbosity", -1)
    out = io.StringIO()
    bar = StageProgress(Console(file=out, width=200, force_terminal=True))
    assert bar.mode == "quiet"
    bar.start("x", 10)
    bar.update(completed=10)
    bar.log("hello")
    bar.stop()
    assert out.getvalue() == ""


def test_a_terminal_gets_a_rich_bar_with_an_eta() -> None:
    out = io.StringIO()
    bar = StageProgress(Console(file=out, width=120, force_terminal=True))
    assert bar.mode == "rich"
    bar.start("generate", 4, info="samples")
    bar.update(completed=2)
    assert bar.bar is not None
    columns = [type(c).__name__ for c in bar.bar.columns]
    assert "TimeElapsedColumn" in columns and "TimeRemainingColumn" in columns
    bar.stop()
    assert bar.bar is None


def test_a_count_is_printed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """evaluate's timing rounds end with the same count twice (the last round, then finished)."""
    out = io.StringIO()
    bar = StageProgress(Console(file=out, width=200, force_terminal=False))
    bar.start("latency", 20)
    bar.update(completed=60, total=60)
    bar.update(completed=60, total=60)
    assert len(out.getvalue().splitlines()) == 1
