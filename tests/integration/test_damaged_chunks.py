"""A damaged chunk on disk: `inspect --verify` lists it, and every stage that reads it exits 3
naming where it is (never 1, never a traceback), leaving what was written untouched."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import zarr

from lohp_cli.config import TrainConfig
from lohp_cli.stages.collect import collect
from lohp_cli.stages.train import train_policy
from lohp_cli.store import TrajectoryStore
from tests.cli.runner import invoke, plain
from tests.conftest import block_of, tiny_config
from tests.unit.test_chunks import flip_byte, truncate


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny head store (so that there is an extractor), a policy, and a generated store."""
    d = tmp_path_factory.mktemp("damage")
    store = d / "store.zarr"
    collect(tiny_config(store, model={"name": "head", "feature_dim": 8, "extractor_steps": 10}))
    policy = d / "policy"
    cfg = {"store": str(store), "out": str(policy), "k": 2, "steps": 2,
           "policy": {"backbone": "mlp", "hidden": 8, "emb_dim": 8}}  # fmt: skip
    train_policy(TrainConfig.model_validate(cfg))
    gen = d / "gen.zarr"
    result = invoke("generate", "--policy", policy, "--out", gen, "--num-tasks", "1",
                    "--samples", "1", "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, plain(result.output)
    return {"store": store, "policy": policy, "gen": gen}


def copy(src: Path, dst: Path) -> Path:
    return Path(shutil.copytree(src, dst))


def error_line(result, code: int = 3) -> str:
    out = plain(result.output)
    assert result.exit_code == code, out
    assert "Traceback" not in out and "unexpected error" not in out
    (line,) = [ln for ln in plain(result.stderr).splitlines() if ln.startswith("error:")]
    return line


def chunk(array_dir: Path) -> Path:
    """The first chunk file of a zarr v3 array directory."""
    return sorted(p for p in (array_dir / "c").rglob("*") if p.is_file())[0]


def first_run(store: Path) -> str:
    return TrajectoryStore.open(str(store)).complete_runs()[0]


@pytest.mark.parametrize("damage", [flip_byte, truncate])
def test_inspect_verify_lists_each_damaged_chunk(made, tmp_path: Path, damage) -> None:
    store = copy(made["store"], tmp_path / "s.zarr")
    rid = first_run(store)
    block, _ = block_of(store, rid)
    damage(chunk(block / "weights"))  # the first chunk: the block's first chunk_runs runs
    damage(chunk(block / "loss"))
    rows = zarr.open_array(str(block / "weights")).chunks[0]
    held = sorted(zarr.open_array(str(block / "run"))[:rows])  # every run the chunks hold
    before = {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    result = invoke("inspect", store, "--verify")
    line = error_line(result)
    assert f"{2 * len(held)} problem(s)" in line and held[0] in line
    damaged = [ln for ln in plain(result.stderr).splitlines() if ln.startswith("damaged:")]
    assert damaged == [
        line
        for r in held
        for line in (
            f"damaged: run {r}, array 'weights' (block {block.name}), chunk 0.0.0: checksum "
            "mismatch",
            f"damaged: run {r}, array 'loss' (block {block.name}), chunk 0.0: checksum mismatch",
        )
    ]
    assert {p: p.read_bytes() for p in store.rglob("*") if p.is_file()} == before


def test_train_policy_on_a_damaged_run_exits_3(made, tmp_path: Path) -> None:
    store = copy(made["store"], tmp_path / "s.zarr")
    block, _ = block_of(store, first_run(store))
    flip_byte(chunk(block / "weights"))  # its first chunk: the runs of its first rows
    rows = zarr.open_array(str(block / "weights")).chunks[0]
    held = list(zarr.open_array(str(block / "run"))[:rows])
    out = tmp_path / "pol"
    result = invoke("train-policy", "--store", store, "--out", out, "--k", "2", "--steps", "2",
                    "--set", "policy.backbone=mlp", "--set", "policy.hidden=8",
                    "--device", "cpu")  # fmt: skip
    line = error_line(result)
    assert any(f"run {r}, array 'weights'" in line for r in held), line
    assert "checksum mismatch" in line


def test_generate_with_a_damaged_extractor_exits_3(made, tmp_path: Path) -> None:
    store = copy(made["store"], tmp_path / "s.zarr")
    flip_byte(chunk(next(p for p in (store / "extractor").iterdir() if p.is_dir())))
    out = tmp_path / "g.zarr"
    result = invoke("generate", "--policy", made["policy"], "--store", store, "--out", out,
                    "--num-tasks", "1", "--device", "cpu")  # fmt: skip
    line = error_line(result)
    assert "group 'extractor'" in line and "checksum mismatch" in line
    assert not (tmp_path / "g.zarr").exists()


def test_evaluate_with_damaged_generated_weights_exits_3(made, tmp_path: Path) -> None:
    gen = copy(made["gen"], tmp_path / "g.zarr")
    (task,) = [p for p in gen.iterdir() if p.is_dir()]
    flip_byte(chunk(task / "weights"))
    report = tmp_path / "report"
    result = invoke("evaluate", "--generated", gen, "--baselines", "adam", "--out", report,
                    "--device", "cpu")  # fmt: skip
    line = error_line(result)
    assert f"task {task.name}, array 'weights'" in line and "checksum mismatch" in line
    assert not (report / "report.json").exists()


def test_xarray_opens_a_generated_store(made) -> None:
    """Issue 16: generated stores carry dimension names, so xarray reads them as lohp does."""
    xr = pytest.importorskip("xarray")
    import zarr

    g = zarr.open_group(str(made["gen"]), mode="r")
    (task,) = g.attrs["tasks"]
    ds = xr.open_zarr(str(made["gen"]), group=task, consolidated=False)
    assert ds["weights"].dims == ("sample", "param") and ds["condition"].dims == ("condition",)
    assert ds.sizes["param"] == TrajectoryStore.open(str(made["store"])).attrs["param_count"]
    assert (ds["weights"].values == g[task]["weights"][:]).all()
