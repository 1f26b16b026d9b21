"""The ``lohp`` CLI through typer's CliRunner: help, version, config precedence, every bad input.

Rich width is pinned (``COLUMNS=200``) so wrapped output is stable. Bad inputs must give the
documented exit code, exactly one ``error:`` line naming the offending value, no traceback, and
leave any store already on disk byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from typer.testing import Result

from lohp_cli import __version__
from lohp_cli import cli as cli_module
from lohp_cli.cli import app
from lohp_cli.config import CollectConfig
from tests.cli.runner import EXIT_CODE_TEXTS, flat, invoke, plain
from tests.conftest import TINY, needs_fmnist, plain_runs, run_array, tiny_config

# stderr lines a failing command may print before its error line
LOG_LINE = re.compile(
    r"^(device: \S+"
    r"|damaged: .*"
    r"|\d+ run\(s\) planned, \d+ already complete, \d+ to do"
    r"|training the frozen feature extractor \(.*\))$"
)


# ---- helpers ------------------------------------------------------------------------------------


def toml_dump(data: dict[str, Any], prefix: str = "") -> str:
    """A tiny TOML writer for the nested dicts of scalars used here (no tomli_w dependency)."""
    lines, tables = [], []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    text = (f"[{prefix}]\n" if prefix and lines else "") + "".join(f"{ln}\n" for ln in lines)
    for key, value in tables:
        text += "\n" + toml_dump(value, f"{prefix}.{key}" if prefix else key)
    return text


def tiny_sets(**overrides: object) -> list[str]:
    """``--set`` arguments for the TINY settings (top-level keys replaced by ``overrides``)."""
    data = {**TINY, **overrides}
    out: list[str] = []

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                out.extend(["--set", f"{prefix}{key}={json.dumps(value)}"])

    walk(data, "")
    return out


def snapshot(path: Path) -> dict[str, str]:
    """sha256 of every file under ``path`` (or of ``path`` itself), plus the directory names."""
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    out = {}
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path).as_posix()
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
    return out


def word_in(token: str, text: str) -> bool:
    """``token`` occurs in ``text`` as a whole value (``0`` is not found in ``10`` or ``0.5``)."""
    return re.search(rf"(?<![\w.]){re.escape(token)}(?![\w]|\.\d)", text) is not None


def assert_error(result: Result, code: int, names: Iterable[str]) -> str:
    """Exit ``code``, no traceback, exactly one ``error:`` line on stderr naming every value."""
    out = plain(result.output)
    assert result.exit_code == code, f"exit {result.exit_code}, want {code}:\n{out}"
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in out
    lines = [ln for ln in plain(result.stderr).splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1, f"want one error line on stderr, got:\n{result.stderr}"
    others = [ln for ln in lines if ln not in errors]
    assert all(LOG_LINE.match(ln) for ln in others), f"error spread over lines:\n{result.stderr}"
    (line,) = errors
    missing = [n for n in names if not word_in(n, line)]
    assert not missing, f"error line does not name {missing}: {line!r}"
    return line


# ---- a small store to damage or extend ----------------------------------------------------------
@pytest.fixture(scope="module")
def base_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real one-run TINY store (digits, mlp, sgd) built by the library once per module."""
    from lohp_cli.stages.collect import collect

    path = tmp_path_factory.mktemp("base") / "base.zarr"
    collect(tiny_config(path, tasks=1, optimizers=("sgd",)))
    return path


@pytest.fixture
def store(base_store: Path, tmp_path: Path) -> Path:
    """A private copy of the base store."""
    dst = tmp_path / "store.zarr"
    shutil.copytree(base_store, dst)
    return dst


# ---- help and version ---------------------------------------------------------------------------
COMMANDS = sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def test_commands_registered() -> None:
    assert {"collect", "inspect"} <= set(COMMANDS)


def test_app_help_lists_commands_and_exit_codes() -> None:
    result = invoke("--help")
    assert result.exit_code == 0, result.output
    text = flat(result.stdout)
    assert "Usage: lohp" in text
    for name in COMMANDS:
        assert name in text
    for item in EXIT_CODE_TEXTS:
        assert item in text, item


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help_exits_0(command: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0, result.output
    assert f"Usage: lohp {command}" in flat(result.stdout)


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help_lists_exit_codes(command: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0, result.output
    text = flat(result.stdout)
    for item in EXIT_CODE_TEXTS:
        assert item in text, item


def test_collect_help_documents_config_flags() -> None:
    text = flat(invoke("collect", "--help").stdout)
    for flag in ("--config", "--set", "--dry-run", "--out", "--shard", "--workers", "--optimizers"):
        assert flag in text, flag


def test_collect_init_flags(tmp_path: Path) -> None:
    from lohp_cli.runtime import derive_seed

    text = flat(invoke("collect", "--help").stdout)
    assert "--init" in text and "--init-seed" in text and "shared" in text
    assert (dry_run()["init"], dry_run()["init_seed"]) == ("per_run", None)
    cfg = dry_run("--init", "shared", "--init-seed", "7")
    assert (cfg["init"], cfg["init_seed"]) == ("shared", 7)
    assert dry_run("--set", "init=shared")["init"] == "shared"
    resolved = CollectConfig.model_validate(dry_run("--init", "shared", "--seed", "3"))
    assert resolved.shared_init_seed == derive_seed(3, "shared-init")
    out = tmp_path / "s.zarr"
    line = assert_error(invoke("collect", "--out", out, "--init-seed", "7"), 2, ["init_seed", "7"])
    assert "set init = 'shared' (--init shared)" in line
    assert_error(invoke("collect", "--out", out, "--init", "same"), 2, ["init", "same"])
    assert not out.exists()


def test_collect_with_a_shared_init_and_its_resume(tmp_path: Path) -> None:
    """The option through the CLI: the log names the draw, every run starts from the saved θ₀;
    the same command again resumes (nothing redone), another --init is refused (exit 3)."""
    from lohp_cli.store import TrajectoryStore

    out = tmp_path / "s.zarr"
    args = ["collect", "--out", out, *tiny_sets(tasks=1, optimizers=["sgd", "adam"])]
    result = invoke(*args, "--init", "shared")
    assert result.exit_code == 0, result.output
    assert "drawing the shared θ₀ every run starts from (seed" in flat(result.stderr)
    store = TrajectoryStore.open(str(out))
    theta0 = store.shared_init()
    assert theta0 is not None
    assert all(store.weights(r)[0].tobytes() == theta0.tobytes() for r in store.run_ids())
    again = invoke(*args, "--init", "shared")
    assert again.exit_code == 0 and "0 run(s) collected, 2 already complete" in flat(again.stderr)
    assert "drawing" not in again.stderr
    before = snapshot(out)
    line = assert_error(invoke(*args), 3, ["init", "'shared'", "None"])
    assert "init: store has 'shared', this command None" in line
    assert snapshot(out) == before


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"lohp {__version__}\n"


# ---- --dry-run and precedence -------------------------------------------------------------------
def dry_run(*args: object) -> dict[str, Any]:
    result = invoke("collect", "--dry-run", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def toml_file(tmp_path: Path) -> Path:
    path = tmp_path / "layer.toml"
    path.write_text(
        toml_dump(
            {
                "tasks": 5,
                "seeds": 3,
                "optimizers": ["sgd", "adam"],
                "task": {"family": "digits", "ways": 3},
                "optim": {"sgd": {"lr": 0.2, "momentum": 0.5}},
            }
        )
    )
    return path


def test_dry_run_defaults_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "never.zarr"
    cfg = dry_run("--out", out)
    assert cfg == {**CollectConfig().model_dump(mode="json"), "out": str(out)}
    assert cfg["tasks"] == 32 and cfg["optim"]["sgd"]["lr"] == 0.1
    assert not out.exists()


def test_config_file_beats_defaults(toml_file: Path) -> None:
    cfg = dry_run("--config", toml_file)
    assert cfg["tasks"] == 5 and cfg["seeds"] == 3
    assert cfg["optimizers"] == ["sgd", "adam"]
    assert cfg["task"]["family"] == "digits" and cfg["task"]["ways"] == 3
    assert cfg["optim"]["sgd"] == {**cfg["optim"]["sgd"], "lr": 0.2, "momentum": 0.5}
    assert cfg["steps"] == 200  # untouched keys keep their defaults
    assert cfg["task"]["train_per_class"] == 100


def test_set_beats_config_file(toml_file: Path) -> None:
    cfg = dry_run(
        "--config", toml_file, "--set", "tasks=6", "--set", "optim.sgd.lr=0.3",
        "--set", "task.ways=4", "--set", 'optimizers=["sam"]',
    )  # fmt: skip
    assert cfg["tasks"] == 6
    assert cfg["optim"]["sgd"]["lr"] == 0.3
    assert cfg["optim"]["sgd"]["momentum"] == 0.5  # the rest of the file's section survives
    assert cfg["task"]["ways"] == 4 and cfg["task"]["family"] == "digits"
    assert cfg["optimizers"] == ["sam"]
    assert cfg["seeds"] == 3


def test_explicit_flags_beat_set_and_config_file(toml_file: Path) -> None:
    cfg = dry_run(
        "--config", toml_file, "--set", "tasks=6", "--set", "task.ways=4",
        "--set", 'optimizers=["sam"]', "--set", "seed=11",
        "--tasks", "7", "--ways", "2", "--optimizers", "adam,sgd", "--seed", "12",
        "--shard", "1/3",
    )  # fmt: skip
    assert cfg["tasks"] == 7
    assert cfg["task"]["ways"] == 2 and cfg["task"]["family"] == "digits"
    assert cfg["optimizers"] == ["adam", "sgd"]
    assert cfg["seed"] == 12
    assert cfg["shard"] == [1, 3]
    assert cfg["seeds"] == 3 and cfg["optim"]["sgd"]["lr"] == 0.2


def test_each_flag_reaches_its_config_key(tmp_path: Path) -> None:
    cfg = dry_run(
        "--out", tmp_path / "x.zarr", "--family", "digits", "--model", "cnn", "--tasks", "3",
        "--seeds", "4", "--optimizers", "sam", "--steps", "30", "--record-every", "6",
        "--ways", "3", "--batch-size", "8", "--seed", "9", "--workers", "2", "--shard", "0/2",
        "--data-root", tmp_path, "--device", "cpu", "--batch-runs", "5",
    )  # fmt: skip
    assert cfg["out"] == str(tmp_path / "x.zarr")
    assert cfg["task"] == {**cfg["task"], "family": "digits", "ways": 3, "data_root": str(tmp_path)}
    assert cfg["model"]["name"] == "cnn"
    assert (cfg["tasks"], cfg["seeds"], cfg["steps"], cfg["record_every"]) == (3, 4, 30, 6)
    assert (cfg["batch_size"], cfg["seed"], cfg["workers"], cfg["batch_runs"]) == (8, 9, 2, 5)
    assert cfg["optimizers"] == ["sam"] and cfg["shard"] == [0, 2] and cfg["device"] == "cpu"


# ---- bad inputs ---------------------------------------------------------------------------------
CONFIG_ERRORS = {
    "unknown-optimizer": (["--optimizers", "sgd,rmsprop"], ["rmsprop"]),
    "unknown-family": (["--family", "nosuchfamily"], ["nosuchfamily"]),
    "record-every-not-dividing": (["--record-every", "7", "--steps", "20"], ["7", "20"]),
    "set-unknown-key": (["--set", "nope=1"], ["nope"]),
    "set-unknown-nested-key": (["--set", "optim.sgd.nope=1"], ["optim.sgd.nope"]),
    "shard-out-of-range": (["--shard", "3/2"], ["3/2"]),
    "shard-not-i/n": (["--shard", "abc"], ["abc"]),
    "set-not-key=value": (["--set", "tasks"], ["tasks"]),
    "store-unknown-codec": (["--set", "store.codec=lz5"], ["store.codec", "lz5"]),
    "store-lossy-without-compressor": (
        ["--set", "store.codec=none", "--set", "store.lossy=bf16"],
        ["store", "'bf16'", "'none'"],
    ),
    "store-delta-without-pcodec": (
        ["--set", "store.codec=zstd", "--set", "store.delta=2"],
        ["store", "delta=2", "'zstd'"],
    ),
    "store-shuffle-without-blosc": (["--set", "store.shuffle=bitshuffle"], ["'bitshuffle'"]),
    "store-level-out-of-range": (
        ["--set", "store.codec=blosc-lz4", "--set", "store.level=11"],
        ["level=11", "blosc-lz4", "0-9"],
    ),
}


@pytest.mark.parametrize(
    ("args", "names"), list(CONFIG_ERRORS.values()), ids=list(CONFIG_ERRORS.keys())
)
def test_config_error_exit_2_store_untouched(
    store: Path, args: list[str], names: list[str]
) -> None:
    before = snapshot(store)
    result = invoke("collect", "--out", store, *tiny_sets(), *args)
    assert_error(result, 2, names)
    assert snapshot(store) == before


@pytest.mark.parametrize(
    ("args", "names"),
    [
        pytest.param(["--tasks", "0"], ["tasks"], id="tasks-0-key"),
        pytest.param(["--seeds", "-1"], ["seeds"], id="seeds--1-key"),
        pytest.param(["--tasks", "0"], ["tasks", "0"], id="tasks-0-value"),
        pytest.param(["--seeds", "-1"], ["seeds", "-1"], id="seeds--1-value"),
    ],
)
def test_out_of_range_count_exit_2(store: Path, args: list[str], names: list[str]) -> None:
    before = snapshot(store)
    result = invoke("collect", "--out", store, *tiny_sets(), *args)
    assert_error(result, 2, names)
    assert snapshot(store) == before


def test_bad_set_shadowed_by_a_flag_exit_2(store: Path) -> None:
    # The flag wins on the value, but the --set value it replaces is still validated.
    before = snapshot(store)
    result = invoke("collect", "--out", store, *tiny_sets(), "--steps", "20",
                    "--set", "steps=notanumber")  # fmt: skip
    line = assert_error(result, 2, ["steps", "notanumber"])
    assert "steps: Input should be a valid integer" in line
    assert snapshot(store) == before


@pytest.mark.parametrize(
    ("args", "names"),
    [
        pytest.param(["--set", "steps=notanumber", "--steps", "20", "--family", "bogus"],
                     ["steps", "notanumber", "task.family", "bogus"], id="set-and-flag"),
        pytest.param(["--set", "seeds=x", "--seeds", "2", "--shard", "abc"],
                     ["seeds", "x", "shard", "abc"], id="set-and-shard-flag"),
    ],
)  # fmt: skip
def test_two_bad_keys_one_message_exit_2(store: Path, args: list[str], names: list[str]) -> None:
    before = snapshot(store)
    line = assert_error(invoke("collect", "--out", store, *tiny_sets(), *args), 2, names)
    assert line.startswith("error: Invalid config: ")
    assert snapshot(store) == before


def test_bad_file_key_and_bad_shadowed_set_one_message_exit_2(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml_dump({"tasks": 0}))
    result = invoke("collect", "--dry-run", "--config", cfg, "--set", "steps=notanumber",
                    "--steps", "20")  # fmt: skip
    line = assert_error(result, 2, ["tasks", "0", "steps", "notanumber"])
    assert result.stdout == "", "no config printed when it is invalid"
    assert "tasks: Input should be greater than or equal to 1" in line


def test_good_set_shadowed_by_a_flag_gives_the_flag_value() -> None:
    cfg = dry_run("--set", "steps=40", "--steps", "30", "--set", "seed=5", "--record-every", "6")
    assert (cfg["steps"], cfg["record_every"], cfg["seed"]) == (30, 6, 5)


# every command that takes --set: (command, flag, its config key, a valid value, needed args)
SET_COMMANDS = [
    ("collect", "--steps", "steps", 20, []),
    ("train-policy", "--steps", "steps", 7, []),
    ("generate", "--num-tasks", "num_tasks", 3, []),
    ("evaluate", "--latency-repeats", "latency_repeats", 3, []),
    ("evaluate-l2o", "--steps", "steps", 9, ["--policy", "a=dir"]),
]


@pytest.mark.parametrize(("command", "flag", "key", "value", "extra"), SET_COMMANDS,
                         ids=[c[0] for c in SET_COMMANDS])  # fmt: skip
def test_each_command_validates_a_shadowed_set(
    command: str, flag: str, key: str, value: int, extra: list[str]
) -> None:
    result = invoke(command, "--dry-run", *extra, flag, value, "--set", f"{key}=notanumber")
    assert_error(result, 2, [key, "notanumber"])
    result = invoke(command, "--dry-run", *extra, flag, value, "--set", f"{key}=1",
                    "--set", "nope=1")  # fmt: skip
    assert_error(result, 2, ["nope"])  # an unknown key is still an error
    result = invoke(command, "--dry-run", *extra, flag, value, "--set", f"{key}=1")
    assert result.exit_code == 0, plain(result.output)
    assert json.loads(result.stdout)[key] == value  # the flag still wins


def test_garbage_toml_exit_2(store: Path, tmp_path: Path) -> None:
    bad = tmp_path / "garbage.toml"
    bad.write_text("this is = = not [[ toml\n")
    before = snapshot(store)
    result = invoke("collect", "--out", store, "--config", bad)
    assert_error(result, 2, [str(bad)])
    assert snapshot(store) == before


def test_missing_config_file_exit_2(store: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    result = invoke("collect", "--out", store, "--config", missing)
    assert_error(result, 2, [str(missing)])


def test_unknown_key_in_toml_exit_2(store: Path, tmp_path: Path) -> None:
    cfg_file = tmp_path / "extra.toml"
    cfg_file.write_text(toml_dump({**TINY, "nope": 1, "model": {**TINY["model"], "depth": 3}}))
    before = snapshot(store)
    result = invoke("collect", "--out", store, "--config", cfg_file)
    line = assert_error(result, 2, ["nope", "model.depth"])
    assert "unknown config key" in line
    assert snapshot(store) == before


def test_output_is_a_file_exit_3(tmp_path: Path) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("precious\n")
    result = invoke("collect", "--out", target, *tiny_sets())
    assert_error(result, 3, [str(target)])
    assert target.read_text() == "precious\n"


def test_output_is_a_non_zarr_directory_exit_3(tmp_path: Path) -> None:
    target = tmp_path / "mine"
    (target / "sub").mkdir(parents=True)
    (target / "a.txt").write_text("keep")
    (target / "sub" / "b.bin").write_bytes(b"\x00\x01")
    before = snapshot(target)
    result = invoke("collect", "--out", target, *tiny_sets())
    assert_error(result, 3, [str(target)])
    assert snapshot(target) == before


def test_output_is_an_empty_directory_is_fine(tmp_path: Path) -> None:
    target = tmp_path / "empty"
    target.mkdir()
    result = invoke("collect", "--out", target, *tiny_sets(tasks=1, optimizers=["sgd"]))
    assert result.exit_code == 0, result.output
    assert (target / "zarr.json").is_file()


def test_store_of_another_schema_exit_3(tmp_path: Path) -> None:
    import zarr

    target = tmp_path / "other.zarr"
    g = zarr.open_group(zarr.storage.LocalStore(target), mode="w")
    g.attrs.update({"schema": "other", "schema_version": 1})
    g.create_array("x", data=np.arange(4, dtype=np.float32))
    before = snapshot(target)
    result = invoke("collect", "--out", target, *tiny_sets())
    assert_error(result, 3, [str(target), "'other'"])
    assert snapshot(target) == before
    result = invoke("inspect", target)
    assert_error(result, 3, [str(target), "'other'"])
    assert snapshot(target) == before


def test_store_of_newer_schema_version_exit_3(store: Path) -> None:
    import zarr

    zarr.open_group(zarr.storage.LocalStore(store), mode="r+").attrs["schema_version"] = 3
    before = snapshot(store)
    result = invoke("collect", "--out", store, *tiny_sets())
    line = assert_error(result, 3, [str(store), "3"])
    assert "schema_version" in line
    assert snapshot(store) == before
    assert_error(invoke("inspect", store), 3, [str(store), "3"])


def test_store_with_other_model_refuses_more_runs_exit_3(store: Path) -> None:
    before = snapshot(store)
    result = invoke("collect", "--out", store, *tiny_sets(), "--model", "cnn")
    assert_error(result, 3, [str(store), "'mlp'", "'cnn'"])
    assert snapshot(store) == before


def test_store_with_other_steps_refuses_more_runs_exit_3(store: Path) -> None:
    before = snapshot(store)
    result = invoke("collect", "--out", store, *tiny_sets(), "--steps", "40")
    assert_error(result, 3, [str(store), "steps", "20", "40"])
    assert snapshot(store) == before


def test_store_with_other_family_refuses_more_runs_exit_3(store: Path) -> None:
    """digits with other task settings is another family spec (fmnist below, when installed)."""
    before = snapshot(store)
    result = invoke("collect", "--out", store, *tiny_sets(), "--ways", "3")
    assert_error(result, 3, [str(store), "family.ways", "5", "3"])
    assert snapshot(store) == before


@needs_fmnist
def test_store_with_other_family_name_is_named_exit_3(store: Path) -> None:
    before = snapshot(store)
    result = invoke("collect", "--out", store, *tiny_sets(), "--family", "fmnist")
    assert_error(result, 3, [str(store), "'digits'", "'fmnist'"])
    assert snapshot(store) == before


@pytest.mark.parametrize(
    ("existing", "make_root"),
    [(True, True), (False, True), (True, False)],
    ids=["existing-store-empty-root", "new-store-empty-root", "existing-store-no-such-root"],
)
def test_missing_data_set_exit_3(
    store: Path, tmp_path: Path, existing: bool, make_root: bool
) -> None:
    root = tmp_path / "no-data-here"
    if make_root:
        root.mkdir()
    out = store if existing else tmp_path / "new.zarr"
    before = snapshot(store)
    args = ["--family", "fmnist", "--data-root", root]
    result = invoke("collect", "--out", out, *tiny_sets(), *args)
    assert_error(result, 3, [str(root)])
    assert snapshot(store) == before
    if not existing:
        assert not out.exists()  # nothing half-made left behind


def test_inspect_missing_path_exit_3(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.zarr"
    result = invoke("inspect", missing)
    assert_error(result, 3, [str(missing)])
    assert not missing.exists()


def test_inspect_verify_nan_in_complete_run_exit_3(store: Path) -> None:

    (rid,) = plain_runs(store)
    assert plain_runs(store)[rid]["attrs"]["status"] == "complete"
    w, row = run_array(store, rid, mode="r+")
    w[row, 1, 3] = np.nan
    before = snapshot(store)
    assert invoke("inspect", store).exit_code == 0  # without --verify the data is not read
    result = invoke("inspect", store, "--json", "--verify")
    assert_error(result, 3, [rid])
    summary = json.loads(result.stdout)
    assert summary["verified"] is False
    assert summary["problems"] == [f"run {rid}: non-finite weights"]
    assert snapshot(store) == before


def test_inspect_verify_missing_chunk_exit_3(store: Path) -> None:
    chunks = sorted((store / "blocks").glob("*/weights/c/*/*/*"))
    assert chunks, "expected chunk files under blocks/<id>/weights/c/"
    chunks[-1].unlink()  # a lost chunk would read as the NaN fill value
    before = snapshot(store)
    result = invoke("inspect", store, "--verify")
    assert_error(result, 3, ["missing", "weights"])
    assert snapshot(store) == before


# ---- a real (tiny) collect ----------------------------------------------------------------------
def test_collect_then_inspect(tmp_path: Path) -> None:
    cfg_file = tmp_path / "tiny.toml"
    cfg_file.write_text(toml_dump(TINY))
    out = tmp_path / "tiny.zarr"
    result = invoke("collect", "--config", cfg_file, "--out", out)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{out}\n"  # only the store location on stdout
    assert "6 run(s) collected" in flat(result.stderr)

    expect = TINY["tasks"] * TINY["seeds"] * 3
    result = invoke("inspect", out, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["complete_runs"] == expect == 6
    assert summary["tasks"] == TINY["tasks"]
    assert summary["runs"] == {o: {"complete": 2} for o in ("sgd", "adam", "sam")}
    assert summary["recorded_states"] == TINY["steps"] // TINY["record_every"] + 1
    assert (summary["family"], summary["model"]) == ("digits", "mlp")

    result = invoke("inspect", out, "--json", "--verify")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["verified"] is True

    pipeline = "transpose > pcodec L8 delta auto > crc32c"  # the default codec
    assert (summary["weight_codecs"], summary["lossy"]) == ({pipeline: 6}, "none")

    result = invoke("inspect", out)
    assert result.exit_code == 0, result.output
    assert "lohp.trajectories" in result.stdout
    assert f"weights codec {pipeline} (6 runs)" in flat(result.stdout)

    # the same command again resumes: nothing to do, nothing rewritten
    before = snapshot(out)
    result = invoke("collect", "--config", cfg_file, "--out", out)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{out}\n"
    assert "0 run(s) collected, 6 already complete" in flat(result.stderr)
    assert snapshot(out) == before


def test_inspect_shows_a_lossy_store(tmp_path: Path) -> None:
    out = tmp_path / "bf16.zarr"
    args = [*tiny_sets(tasks=1, optimizers=["sgd"]), "--set", "store.lossy=bf16"]
    result = invoke("collect", "--out", out, *args)
    assert result.exit_code == 0, result.output
    summary = json.loads(invoke("inspect", out, "--json", "--verify").stdout)
    assert (summary["lossy"], summary["verified"]) == ("all", True)
    (pipeline,) = summary["weight_codecs"]
    assert pipeline == (
        "transpose > bitround keepbits=7 (bf16, lossy) > pcodec L8 delta auto > crc32c"
    )
    text = flat(invoke("inspect", out).stdout)
    assert "lossy all" in text and f"weights codec {pipeline} (1 run)" in text


def test_diverging_run_exit_3_and_not_marked_complete(tmp_path: Path) -> None:

    out = tmp_path / "diverge.zarr"
    args = [*tiny_sets(tasks=1, optimizers=["sgd"]), "--set", "optim.sgd.lr=1e30"]
    result = invoke("collect", "--out", out, *args)
    line = assert_error(result, 3, ["optim.sgd.lr"])
    assert "non-finite" in line
    runs = plain_runs(out)
    (rid,) = runs
    assert rid in line
    assert runs[rid]["attrs"]["status"] != "complete"


# ---- the library call, patched ------------------------------------------------------------------
def test_collect_passes_resolved_config_and_prints_store(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from lohp_cli.stages import collect as collect_module

    seen: list[CollectConfig] = []

    def fake(cfg: CollectConfig, progress: Any = None) -> collect_module.CollectResult:
        seen.append(cfg)
        progress({"event": "device", "device": "cpu"})
        return collect_module.CollectResult(cfg.out, 4, 1, 3, 0.5)

    monkeypatch.setattr(collect_module, "collect", fake)
    out = tmp_path / "patched.zarr"
    result = invoke("collect", "--out", out, "--set", "task.family=digits", "--tasks", "4")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{out}\n"
    (cfg,) = seen
    assert isinstance(cfg, CollectConfig)
    assert (cfg.out, cfg.task.family, cfg.tasks) == (str(out), "digits", 4)
    err = flat(result.stderr)
    assert "device: cpu" in err and "3 run(s) collected, 1 already complete" in err
    result = invoke("-q", "collect", "--out", out)
    assert result.exit_code == 0 and result.stderr == ""  # --quiet: nothing on stderr


@pytest.mark.parametrize("verbose", [False, True], ids=["default", "-vv"])
def test_unexpected_error_exit_1(monkeypatch: pytest.MonkeyPatch, verbose: bool) -> None:
    from lohp_cli.stages import collect as collect_module

    def boom(cfg: CollectConfig, progress: Any = None) -> None:
        raise RuntimeError("kaboom 42")

    monkeypatch.setattr(collect_module, "collect", boom)
    result = invoke(*(["-vv"] if verbose else []), "collect")
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    err = plain(result.stderr)
    lines = [ln for ln in err.splitlines() if ln.startswith("unexpected error:")]
    assert len(lines) == 1 and "RuntimeError: kaboom 42" in lines[0] and "-vv" in lines[0]
    assert ("Traceback" in err) is verbose


def test_keyboard_interrupt_exit_130(monkeypatch: pytest.MonkeyPatch) -> None:
    from lohp_cli.stages import collect as collect_module

    def interrupted(cfg: CollectConfig, progress: Any = None) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(collect_module, "collect", interrupted)
    result = invoke("collect")
    assert result.exit_code == 130
    assert "Traceback" not in result.output
    assert "re-run the same command" in flat(result.stderr)


# ---- one line even on a narrow terminal ---------------------------------------------------------
@pytest.fixture
def narrow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_module.err_console, "_width", 40)


def test_store_error_one_line_on_narrow_terminal(narrow: None, tmp_path: Path) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("x")
    assert_error(invoke("collect", "--out", target, *tiny_sets()), 3, [str(target)])


def test_config_error_one_line_on_narrow_terminal(narrow: None, store: Path) -> None:
    result = invoke("collect", "--out", store, "--optimizers", "sgd,rmsprop,adagrad")
    assert_error(result, 2, ["rmsprop"])


def test_verify_error_one_line_on_narrow_terminal(narrow: None, store: Path) -> None:

    (rid,) = plain_runs(store)
    w, row = run_array(store, rid, mode="r+")
    w[row, 0, 0] = np.nan
    assert_error(invoke("inspect", store, "--verify"), 3, [rid])
