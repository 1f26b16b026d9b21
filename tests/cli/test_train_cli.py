"""``lohp train-policy`` through typer's CliRunner: help, config precedence, the printed policy
path, and the documented exit code (with one ``error:`` line naming the value) for every bad input.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import Result

from lohp_cli.cli import app
from lohp_cli.config import LoHpTrainConfig, TrainConfig
from lohp_cli.policy.directory import load_policy
from lohp_cli.policy.rundir import TrainResult
from tests.cli.runner import ENV, EXIT_CODE_TEXTS, RUNNER, flat, invoke, plain
from tests.conftest import make_linear_store

# a tiny policy: mlp backbone, k = 1 on T = 4
TINY = ["--k", "1", "--batch-size", "2", "--device", "cpu", "--set", "policy.backbone=mlp",
        "--set", "policy.hidden=16", "--set", "policy.emb_dim=8"]  # fmt: skip


@pytest.fixture(scope="module")
def base_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "lin.zarr"
    make_linear_store(path, n_tasks=2, size=5, cond_dim=3, steps=4, optimizers=("sgd", "adam"))
    return path


@pytest.fixture
def store(base_store: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(base_store, tmp_path / "store.zarr"))


def train(store: Path, out: Path, *args: object) -> Result:
    return invoke("train-policy", "--store", store, "--out", out, *TINY, *args)


def ok(result: Result) -> Result:
    assert result.exit_code == 0, plain(result.output)
    assert "Traceback" not in result.output
    return result


def assert_error(result: Result, code: int, names: tuple[str, ...] = ()) -> str:
    """Exit ``code``, no traceback, exactly one ``error:`` line on stderr naming ``names``."""
    out = plain(result.output)
    assert result.exit_code == code, f"exit {result.exit_code}, want {code}:\n{out}"
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in out
    errors = [ln for ln in plain(result.stderr).splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, f"want one error line on stderr, got:\n{result.stderr}"
    assert result.stdout == "", "nothing on stdout when it fails"
    missing = [n for n in names if n not in errors[0]]
    assert not missing, f"error line does not name {missing}: {errors[0]!r}"
    return errors[0]


# ---- help ---------------------------------------------------------------------------------------
def test_help_lists_exit_codes_and_flags() -> None:
    result = ok(invoke("train-policy", "--help"))
    text = flat(result.stdout)
    assert "Usage: lohp train-policy" in text
    for item in EXIT_CODE_TEXTS:
        assert item in text, item
    for flag in ("--store", "--out", "--method", "--k", "--steps", "--batch-size", "--lr",
                 "--optimizers", "--max-minutes", "--seed", "--overwrite", "--device",
                 "--config", "--set", "--dry-run"):  # fmt: skip
        assert flag in text, flag


def test_app_help_lists_train_policy() -> None:
    assert "train-policy" in flat(ok(invoke("--help")).stdout)


# ---- --dry-run and precedence -------------------------------------------------------------------
def dry_run(*args: object) -> dict[str, Any]:
    result = ok(invoke("train-policy", "--dry-run", *args))
    return json.loads(result.stdout)


def test_dry_run_defaults_are_the_config_defaults(tmp_path: Path) -> None:
    assert dry_run() == LoHpTrainConfig().model_dump(mode="json")


def test_dry_run_precedence(tmp_path: Path) -> None:
    cfg = tmp_path / "train.toml"
    cfg.write_text(
        'store = "from-file.zarr"\nk = 4\nsteps = 10\nlr = 5e-4\noverwrite = true\n'
        '[policy]\nhidden = 64\nbackbone = "mlp"\n[loss]\nlam = 0.5\n'
    )
    data = dry_run("--config", cfg, "--set", "steps=20", "--set", "policy.hidden=32",
                   "--set", "seed=7", "--steps", 30, "--method", "lo-di")  # fmt: skip
    assert data["store"] == "from-file.zarr"  # file
    assert data["k"] == 4 and data["lr"] == 5e-4 and data["loss"]["lam"] == 0.5  # file
    assert data["policy"]["backbone"] == "mlp"  # file
    assert data["policy"]["hidden"] == 32 and data["seed"] == 7  # --set over file
    assert data["steps"] == 30 and data["method"] == "lo-di"  # flag over --set and file
    assert data["overwrite"] is True  # an absent --overwrite does not reset the file's value
    assert data["batch_size"] == LoHpTrainConfig().batch_size  # default
    assert not Path("from-file.zarr").exists()


def test_dry_run_flags(tmp_path: Path) -> None:
    data = dry_run("--store", tmp_path / "s.zarr", "--out", tmp_path / "p", "--optimizers",
                   "sgd, adam", "--overwrite", "--max-minutes", 2.5, "--k", 2,
                   "--device", "cpu", "--batch-size", 3, "--lr", 1e-4)  # fmt: skip
    assert data["store"] == str(tmp_path / "s.zarr") and data["out"] == str(tmp_path / "p")
    assert data["optimizers"] == ["sgd", "adam"] and data["overwrite"] is True
    assert (data["max_minutes"], data["k"], data["device"]) == (2.5, 2, "cpu")
    assert (data["batch_size"], data["lr"]) == (3, 1e-4)
    assert not (tmp_path / "p").exists(), "a dry run writes nothing"


def test_dry_run_reports_every_config_error_at_once() -> None:
    result = invoke("train-policy", "--dry-run", "--set", "k=0", "--set", "policy.patch=0",
                    "--set", "nope=1")  # fmt: skip
    line = assert_error(result, 2, ("k", "policy.patch", "nope"))
    assert line.count(";") >= 2


def test_bad_set_shadowed_by_a_flag_exit_2() -> None:
    result = invoke("train-policy", "--dry-run", "--steps", 30, "--set", "steps=notanumber")
    line = assert_error(result, 2, ("steps", "notanumber"))
    assert "steps: Input should be a valid integer" in line


def test_bad_shadowed_set_and_bad_flag_in_one_message_exit_2() -> None:
    result = invoke("train-policy", "--dry-run", "--set", "lr=fast", "--lr", 1e-4,
                    "--set", "policy.patch=0", "--method", "lo-xx")  # fmt: skip
    line = assert_error(result, 2, ("lr", "fast", "policy.patch", "method", "lo-xx"))
    assert line.count("; ") == 2  # three problems, one line


def test_good_set_shadowed_by_a_flag_gives_the_flag_value() -> None:
    data = dry_run("--set", "steps=20", "--steps", 30, "--set", "lr=1e-4", "--lr", 5e-4)
    assert (data["steps"], data["lr"]) == (30, 5e-4)


def test_library_call_gets_the_resolved_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: dict[str, Any] = {}

    def fake(cfg: TrainConfig, progress: Any = None) -> TrainResult:
        seen["cfg"] = cfg
        progress({"event": "device", "device": "cpu", "world_size": 1})
        return TrainResult(str(tmp_path / "p"), 5, True, 0.25, 0.1)

    import lohp_cli.stages.train

    monkeypatch.setattr(lohp_cli.stages.train, "train_policy", fake)
    result = ok(invoke("train-policy", "--store", "s.zarr", "--out", tmp_path / "p", "--steps", 5,
                       "--set", "loss.on_policy_grad=detached"))  # fmt: skip
    cfg = seen["cfg"]
    assert isinstance(cfg, TrainConfig)
    assert (cfg.store, cfg.out, cfg.steps) == ("s.zarr", str(tmp_path / "p"), 5)
    assert cfg.loss.on_policy_grad == "detached" and cfg.overwrite is False
    assert result.stdout == f"{tmp_path / 'p'}\n"
    assert "device: cpu (world size 1)" in plain(result.stderr)
    assert "done: step 5, complete, loss 0.25" in plain(result.stderr)


# ---- real tiny runs -----------------------------------------------------------------------------
def test_prints_the_policy_path(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "p"
    result = ok(train(store, out, "--steps", 3))
    assert result.stdout == f"{out}\n"
    err = plain(result.stderr)
    assert "device: cpu" in err and "normalisation statistics over 4 run(s)" in err
    assert "done: step 3, complete" in err
    model, meta, _ = load_policy(out)
    assert meta.trained_steps == 3 and meta.N == 4


def test_rerun_resumes(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "p"
    ok(train(store, out, "--steps", 2, "--set", "checkpoint_every=2"))
    result = ok(train(store, out, "--steps", 4, "--set", "checkpoint_every=2"))
    assert "resuming from step 2" in plain(result.stderr)
    assert result.stdout == f"{out}\n"
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 4


def test_quiet_keeps_stdout(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "p"
    result = RUNNER.invoke(
        app,
        ["-q", "train-policy", "--store", str(store), "--out", str(out), *TINY, "--steps", "1"],
        env=ENV,
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{out}\n" and plain(result.stderr).strip() == ""


def test_high_learning_rate_logs_a_warning_line(store: Path, tmp_path: Path) -> None:
    result = ok(train(store, tmp_path / "p", "--steps", 1, "--lr", 0.002))
    lines = [ln for ln in plain(result.stderr).splitlines() if ln.startswith("warning:")]
    assert len(lines) == 1 and "0.002" in lines[0] and "0.001" in lines[0], result.stderr


def test_normal_learning_rate_has_no_warning(store: Path, tmp_path: Path) -> None:
    result = ok(train(store, tmp_path / "p", "--steps", 1, "--lr", 0.001))
    assert "warning" not in plain(result.stderr)


# ---- exit codes ---------------------------------------------------------------------------------
def test_output_that_is_a_file_exit_2(store: Path, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("mine")
    assert_error(train(store, tmp_path / "f", "--steps", 1), 2, (str(tmp_path / "f"), "file"))
    assert (tmp_path / "f").read_text() == "mine"


def test_k_not_dividing_t_exit_2(store: Path, tmp_path: Path) -> None:
    result = invoke("train-policy", "--store", store, "--out", tmp_path / "p", "--k", 3,
                    "--device", "cpu")  # fmt: skip
    assert_error(result, 2, ("k=3", "T=4", "[1, 2, 4]"))


def test_unknown_method_exit_2(store: Path, tmp_path: Path) -> None:
    assert_error(train(store, tmp_path / "p", "--method", "lo-xx"), 2, ("method", "lo-xx"))


@pytest.mark.parametrize(
    "args", [("--optimizers", ""), ("--optimizers", " , "), ("--set", "optimizers=[]")]
)
def test_empty_optimizer_subset_exit_2(store: Path, tmp_path: Path, args: tuple[str, ...]):
    assert_error(train(store, tmp_path / "p", *args), 2, ("optimizers", "empty"))
    assert not (tmp_path / "p").exists()


def test_optimizer_subset_without_runs_exit_2(store: Path, tmp_path: Path) -> None:
    assert_error(train(store, tmp_path / "p", "--optimizers", "sam"), 2, ("sam", "adam, sgd"))


def test_unknown_optimizer_exit_2(store: Path, tmp_path: Path) -> None:
    assert_error(train(store, tmp_path / "p", "--optimizers", "sgd,rmsprop"), 2, ("rmsprop",))


def test_missing_store_exit_3(tmp_path: Path) -> None:
    missing = tmp_path / "none.zarr"
    assert_error(train(missing, tmp_path / "p"), 3, (str(missing), "lohp collect"))


def test_newer_schema_store_exit_3(store: Path, tmp_path: Path) -> None:
    import zarr

    zarr.open_group(zarr.storage.LocalStore(store), mode="r+").attrs["schema_version"] = 3
    assert_error(train(store, tmp_path / "p"), 3, ("schema_version 3",))


def test_missing_config_file_exit_2(tmp_path: Path) -> None:
    assert_error(invoke("train-policy", "--config", tmp_path / "x.toml"), 2, ("x.toml",))


def test_policy_of_another_store_exit_4_unless_overwrite(store: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.zarr"
    make_linear_store(other, n_tasks=2, size=5, cond_dim=3, steps=4, seed=3)
    out = tmp_path / "p"
    ok(train(store, out, "--steps", 1))
    before = (out / "model.safetensors").read_bytes()
    assert_error(train(other, out, "--steps", 1), 4, (str(out), "another store", "--overwrite"))
    assert (out / "model.safetensors").read_bytes() == before
    result = ok(train(other, out, "--steps", 1, "--overwrite"))
    assert result.stdout == f"{out}\n"
    assert load_policy(out)[1].store_location == str(other)


def test_future_policy_format_exit_4(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "p"
    ok(train(store, out, "--steps", 1))
    meta = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**meta, "format": 9}))
    assert_error(train(store, out, "--steps", 2), 4, ("format 9",))


# ---- validation: --val-tasks, --patience, --log -------------------------------------------------
def test_dry_run_validation_flags(tmp_path: Path) -> None:
    data = dry_run("--val-tasks", 2, "--val-every", 5, "--val-metric", "loss", "--patience", 3,
                   "--log", "tensorboard")  # fmt: skip
    assert (data["val_tasks"], data["val_every"], data["val_metric"]) == (2, 5, "loss")
    assert (data["patience"], data["log"]) == (3, "tensorboard")
    off = dry_run()
    assert (off["val_tasks"], off["patience"], off["log"]) == (0, None, "jsonl")


def test_validation_events_are_shown(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def fake(cfg: TrainConfig, progress: Any = None) -> TrainResult:
        progress(
            {
                "event": "validation",
                "step": 10,
                "steps": 40,
                "val_loss": 1.5,
                "val_acc": 0.75,
                "best": False,
                "best_step": 5,
                "metric": "accuracy",
            }
        )
        progress({"event": "patience", "step": 10, "patience": 1, "best_step": 5,
                  "best_score": 0.8})  # fmt: skip
        return TrainResult(str(tmp_path / "p"), 10, True, 0.25, 0.1)

    import lohp_cli.stages.train

    monkeypatch.setattr(lohp_cli.stages.train, "train_policy", fake)
    err = flat(ok(invoke("train-policy", "--val-tasks", 1, "--patience", 1)).stderr)
    assert "step 10/40 validation: val_loss=1.5 val_acc=0.75 (best step 5)" in err
    assert "stopped at step 10; the policy is the best, step 5 (0.8)" in err


def test_val_tasks_and_patience_stop_a_real_run(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "p"
    result = ok(train(store, out, "--steps", 6, "--val-tasks", 1, "--patience", 1,
                      "--set", "checkpoint_every=1", "--lr", 0.05))  # fmt: skip
    err = flat(result.stderr)
    assert "validation: val_loss=" in err
    v = json.loads((out / "config.json").read_text())["validation"]
    assert len(v["tasks"]) == 1 and v["metric"] == "loss"  # synthetic tasks: no accuracy
    # lr 0.05 overshoots on this store: the held-out loss rises at step 4 and patience 1 stops
    assert (v["stop_reason"], v["best_step"], v["last_step"]) == ("patience", 3, 4)
    assert "no improvement in 1 validation(s): stopped at step 4" in err
    assert "done: step 4, complete (stopped by --patience; the policy is the best validated)" in err
    shown = flat(ok(invoke("inspect", out)).stdout)
    assert "best_step" in shown and "stop_reason" in shown


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (("--val-tasks", 2), ("val_tasks=2", "--val-tasks")),  # the store has 2 tasks
        (("--patience", 2), ("patience", "val_tasks")),
        (("--val-tasks", 1, "--val-metric", "best"), ("val_metric", "best")),
    ],
)
def test_bad_validation_settings_exit_2(store: Path, tmp_path: Path, args, names) -> None:
    assert_error(train(store, tmp_path / "p", "--steps", 2, *args), 2, names)


def test_validation_is_refused_for_other_methods(tmp_path: Path) -> None:
    result = invoke("train-policy", "--dry-run", "--method", "diffusion", "--val-tasks", 1)
    assert_error(result, 2, ("val_tasks", "diffusion"))


def test_log_tensorboard_without_the_extra_exit_2(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    line = assert_error(train(store, tmp_path / "p", "--steps", 1, "--log", "tensorboard"), 2)
    assert "lohp[tensorboard]" in line
