"""lohp evaluate: bad input gives one clean line and the right exit code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import zarr
from typer.testing import CliRunner

from lohp_cli.cli import app


def run(*args: str):
    return CliRunner().invoke(app, ["evaluate", *args])


def assert_clean(result, code: int, *names: str) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, result.output
    for name in names:
        assert name in errors[0]


def test_missing_generated_store(tmp_path: Path) -> None:
    assert_clean(
        run("--generated", str(tmp_path / "nope.zarr"), "--out", str(tmp_path / "r")),
        3,
        "nope.zarr",
        "lohp generate",
    )
    assert not (tmp_path / "r").exists()


def test_corrupt_generated_store(tmp_path: Path) -> None:
    g = tmp_path / "g.zarr"
    g.mkdir()
    (g / "zarr.json").write_text("{not json")
    assert_clean(run("--generated", str(g), "--out", str(tmp_path / "r")), 3, "g.zarr")


@pytest.mark.parametrize(
    ("attrs", "word"),
    [
        ({"schema": "other"}, "not a lohp generated"),
        ({"schema": "lohp.generated", "schema_version": 9}, "schema_version 9"),
    ],
)
def test_foreign_or_future_generated_store(tmp_path: Path, attrs: dict, word: str) -> None:
    g = tmp_path / "g.zarr"
    zarr.open_group(str(g), mode="w").attrs.update(attrs)
    assert_clean(run("--generated", str(g), "--out", str(tmp_path / "r")), 3, word)


def test_unknown_baseline(tmp_path: Path) -> None:
    assert_clean(run("--generated", str(tmp_path), "--baselines", "adam,rmsprop"), 2, "rmsprop")


def test_bad_policy_option(tmp_path: Path) -> None:
    assert_clean(run("--generated", str(tmp_path), "--policy", "nodir"), 2, "nodir")


def test_report_dir_that_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "report"
    f.write_text("keep")
    assert_clean(run("--generated", str(tmp_path / "g.zarr"), "--out", str(f)), 2, "is a file")
    assert f.read_text() == "keep"


# ---- the memorisation baselines ------------------------------------------------------------------
MEMORIZATION = ("nearest", "mean", "nearest-noise", "class-rows")
QUIET = ["--device", "cpu", "--latency-repeats", "1", "--set", "cosine_runs=0",
         "--set", "locality_tasks=0", "--set", "locality_source_tasks=0",
         "--set", "frontier_steps=[]", "--set", "plots=false"]  # fmt: skip


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weights generated for 2 target tasks by a policy of a tiny store's Adam runs."""
    from tests.conftest import tiny_policy_run

    tmp = tmp_path_factory.mktemp("evaluate-cli")
    return tiny_policy_run(tmp, optimizers=("sgd", "adam"))["generated"]


def test_memorization_baselines_are_report_rows_and_pairs(generated: Path, tmp_path: Path) -> None:
    out = tmp_path / "r"
    result = run("--generated", str(generated), "--out", str(out),
                 "--baselines", ",".join(MEMORIZATION), *QUIET)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(out)
    report = json.loads((out / "report.json").read_text())
    rows = report["methods"][1:]
    assert [(m["name"], m["kind"], m["steps"]) for m in rows] == [
        (n, "memorization", None) for n in MEMORIZATION
    ]
    assert all(m["n"] == 4 and m["latency_ms_batch1"] > 0 for m in rows)
    main = report["methods"][0]["name"]
    assert [(q["a"], q["b"]) for q in report["paired"]["pairs"]] == [
        (main, n) for n in MEMORIZATION
    ]
    md = (out / "report.md").read_text()
    for n in MEMORIZATION:
        assert f"| {n} | memorization |" in md and f"| {main} | {n} |" in md


def test_class_rows_without_class_rows_is_one_line_exit_2(
    generated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lohp_cli.methods.memorization as memorization

    monkeypatch.setattr(memorization, "class_symmetry", lambda _ctx: None)
    result = run("--generated", str(generated), "--out", str(tmp_path / "r"),
                 "--baselines", "class-rows", *QUIET)  # fmt: skip
    assert_clean(result, 2, "'class-rows'", "one output row per class", "--baselines")


def test_no_source_runs_of_the_policys_optimizers_is_one_line_exit_2(
    generated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lohp_cli.methods.memorization as memorization

    real = memorization.load_endpoints  # as if the policy had learned from SAM runs
    monkeypatch.setattr(memorization, "load_endpoints", lambda store, _opts: real(store, ["sam"]))
    result = run("--generated", str(generated), "--out", str(tmp_path / "r"),
                 "--baselines", "nearest", *QUIET)  # fmt: skip
    assert_clean(result, 2, "No complete runs of optimizer(s) sam", "adam, sgd")


@pytest.mark.parametrize(
    ("policy", "code", "names"),
    [
        ("other={missing}", 4, ["No policy directory at", "nope"]),
        ("other@5={policy}", 2, ["takes the N = ", "--sample-steps"]),  # not a diffusion policy
    ],
)
def test_a_bad_policy_is_refused_before_any_method_is_scored(
    generated: Path, tmp_path: Path, policy: str, code: int, names: list[str]
) -> None:
    """Before: a bad --policy NAME@S=DIR or a missing policy directory was found only after the
    generated weights (and every baseline before it) had been scored."""
    item = policy.format(missing=tmp_path / "nope", policy=generated.parent / "pol")
    result = run("--generated", str(generated), "--out", str(tmp_path / "r"),
                 "--policy", item, "--baselines", "mean", *QUIET)  # fmt: skip
    assert_clean(result, code, *names)
    assert "±" not in result.output  # no method row was scored
    assert not (tmp_path / "r").exists()


def test_generated_weights_of_another_shape_are_refused_before_scoring(
    generated: Path, tmp_path: Path
) -> None:
    import shutil

    gen = Path(shutil.copytree(generated, tmp_path / "g.zarr"))
    g = zarr.open_group(str(gen), mode="r+")
    last = g.attrs["tasks"][-1]
    w = g[last]["weights"][:]
    del g[last]["weights"]
    g[last].create_array("weights", data=w[:, :-1])
    result = run("--generated", str(gen), "--out", str(tmp_path / "r"), *QUIET)
    assert_clean(result, 3, f"the weights of task {last}", str(tuple(w[:, :-1].shape)))
    assert "±" not in result.output
