"""lohp export, lohp predict and lohp inspect of every artifact: an exported model reproduces the
accuracy evaluate scores for its sample, loads from safetensors without lohp's store and as a
torch.export program with torch alone; predict reads images and tensor files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from lohp_cli.config import ExportConfig, GenerateConfig, PredictConfig, TrainConfig
from lohp_cli.errors import CompatibilityError, ConfigError, DataError
from lohp_cli.policy.context import store_task_context
from lohp_cli.stages.collect import collect
from lohp_cli.stages.export import export
from lohp_cli.stages.generate import generate
from lohp_cli.stages.predict import predict
from lohp_cli.store.trajectory_store import TrajectoryStore
from lohp_cli.tasks.exported import load_task_model
from lohp_cli.tasks.layout import load_flat
from lohp_cli.tasks.models import build_target
from lohp_cli.tasks.scoring import accuracy
from tests.cli.runner import flat, invoke
from tests.conftest import tiny_config

POLICY = {"backbone": "mlp", "hidden": 16, "emb_dim": 8}
HEAD = {"name": "head", "feature_dim": 16, "extractor_steps": 20}


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A head store (a frozen extractor) and an mlp store, a policy and a generated store each."""
    d = tmp_path_factory.mktemp("export")
    out: dict[str, Path] = {}
    for name, model in (("head", HEAD), ("mlp", None)):
        store = d / f"{name}.zarr"
        collect(tiny_config(store, **({"model": model} if model else {})))
        pol, gen = d / f"pol-{name}", d / f"gen-{name}.zarr"
        train_policy_quick(store, pol)
        generate(GenerateConfig.model_validate(
            {"policy": str(pol), "out": str(gen), "num_tasks": 2, "samples": 2, "device": "cpu"}
        ))  # fmt: skip
        out[f"{name}-store"], out[f"{name}-policy"], out[f"{name}-gen"] = store, pol, gen
    out["root"] = d
    return out


def train_policy_quick(store: Path, out: Path) -> None:
    from lohp_cli.stages.train import train_policy

    train_policy(TrainConfig.model_validate(
        {"store": str(store), "out": str(out), "k": 2, "steps": 3, "policy": POLICY,
         "device": "cpu"}
    ))  # fmt: skip


def _export(gen: Path, out: Path, **kw: object) -> list[str]:
    cfg = ExportConfig.model_validate({"generated": str(gen), "out": str(out), **kw})
    return export(cfg).models


@pytest.mark.parametrize("model", ["head", "mlp"])
def test_an_exported_model_scores_what_evaluate_scores(
    made: dict[str, Path], tmp_path: Path, model: str
) -> None:
    gen = made[f"{model}-gen"]
    g = zarr.open_group(str(gen), mode="r")
    tasks = list(g.attrs["tasks"])
    dirs = _export(gen, tmp_path / "m", sample=1)
    assert [Path(p).name for p in dirs] == tasks
    ctx = store_task_context(TrajectoryStore.open(str(made[f"{model}-store"]), mode="r"))
    for task, d in zip(tasks, dirs, strict=True):
        files = sorted(p.name for p in Path(d).iterdir())
        assert files == ["README.md", "config.json", "model.pt2", "model.safetensors"]
        config = json.loads((Path(d) / "config.json").read_text())
        assert config["format"] == "lohp.exported" and config["task_id"] == task
        assert config["classes"] == g[task].attrs["classes"]  # label order
        assert config["class_names"] == [str(c) for c in config["classes"]]  # digits
        # the sample's weights in the target model, scored as evaluate scores them
        w = torch.from_numpy(g[task]["weights"][1])
        net = build_target(ctx.model_cfg, ctx.family.input_shape, ctx.family.ways, ctx.frozen)
        want = accuracy(net, w, ctx.task_data(task))[0]
        assert config["test_accuracy"] == pytest.approx(want, abs=1e-4)
        # rebuilt from safetensors and config.json alone, the same function as the weights
        module, meta = load_task_model(d)
        assert meta.classes == config["classes"] and meta.files.program == "model.pt2"
        images, _ = ctx.task(task).examples("test")
        x = torch.from_numpy(images).float() / 255
        load_flat(net, w)
        with torch.no_grad():
            enc = ctx.task(task).inputs(images, ctx.model_cfg, ctx.frozen)
            torch.testing.assert_close(module(x), net(enc), rtol=1e-5, atol=1e-5)
        card = (Path(d) / "README.md").read_text()
        assert "torch.export.load" in card and f"{config['test_accuracy']:.4f}" in card


@pytest.mark.slow  # a fresh interpreter (about 5 s)
def test_the_program_loads_with_torch_alone(made: dict[str, Path], tmp_path: Path) -> None:
    (d,) = _export(made["head-gen"], tmp_path / "m", tasks=[_tasks(made["head-gen"])[0]])
    module, meta = load_task_model(d)
    x = torch.rand(3, *meta.input.shape)
    np.save(tmp_path / "x.npy", x.numpy())
    code = (
        "import sys, numpy, torch\n"
        f"m = torch.export.load({str(Path(d) / 'model.pt2')!r}).module()\n"
        f"y = m(torch.from_numpy(numpy.load({str(tmp_path / 'x.npy')!r})))\n"
        f"numpy.save({str(tmp_path / 'y.npy')!r}, y.detach().numpy())\n"
        "assert not any(k.startswith('lohp') for k in sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
    with torch.no_grad():
        np.testing.assert_allclose(np.load(tmp_path / "y.npy"), module(x).numpy(), atol=1e-5)


def _tasks(gen: Path) -> list[str]:
    return list(zarr.open_group(str(gen), mode="r").attrs["tasks"])


def test_export_refuses_what_it_cannot_do(made: dict[str, Path], tmp_path: Path) -> None:
    gen = made["mlp-gen"]
    with pytest.raises(ConfigError, match="'c9_9' is not in generated store"):
        _export(gen, tmp_path / "a", tasks=["c9_9"])
    with pytest.raises(ConfigError, match="--sample 2: .* has 2 sample"):
        _export(gen, tmp_path / "b", sample=2)
    _export(gen, tmp_path / "c")
    with pytest.raises(ConfigError, match="pass --overwrite"):
        _export(gen, tmp_path / "c")
    assert len(_export(gen, tmp_path / "c", overwrite=True)) == 2
    with pytest.raises(CompatibilityError, match="No exported model"):
        load_task_model(tmp_path)


def test_predict_reads_images_and_tensor_files(made: dict[str, Path], tmp_path: Path) -> None:
    from PIL import Image
    from safetensors.numpy import save_file

    task = _tasks(made["head-gen"])[0]
    (d,) = _export(made["head-gen"], tmp_path / "m", tasks=[task])
    ctx = store_task_context(TrajectoryStore.open(str(made["head-store"]), mode="r"))
    images, labels = ctx.task(task).examples("test")  # uint8 [N, 1, 8, 8]
    png = tmp_path / "a.png"
    Image.fromarray(images[0, 0]).save(png)
    np.save(tmp_path / "x.npy", images[:3])
    save_file({"images": images[:3, 0]}, str(tmp_path / "x.safetensors"))  # [B, H, W]
    files = (str(png), str(tmp_path / "x.npy"), str(tmp_path / "x.safetensors"))
    rows = predict(PredictConfig(model=d, inputs=files, top=2))
    named = [f"{f}[{i}]" for f in files[1:] for i in range(3)]
    assert [r["input"] for r in rows] == [str(png), *named]
    assert rows[0]["label"] == rows[1]["label"] == rows[4]["label"]  # the same image thrice
    module, meta = load_task_model(d)
    with torch.no_grad():
        want = module(torch.from_numpy(images[:3]).float() / 255).argmax(1).tolist()
    assert [r["label"] for r in rows[1:4]] == want
    assert all(r["class"] == meta.classes[r["label"]] for r in rows)
    assert all(len(r["top"]) == 2 and r["top"][0]["label"] == r["label"] for r in rows)
    np.save(tmp_path / "bad.npy", np.zeros((2, 3, 5, 5), np.uint8))
    with pytest.raises(ConfigError, match=r"shape \(2, 3, 5, 5\)"):
        predict(PredictConfig(model=d, inputs=(str(tmp_path / "bad.npy"),)))
    np.save(tmp_path / "big.npy", np.full((1, 1, 8, 8), 255.0, np.float32))
    with pytest.raises(ConfigError, match=r"in \[0, 1\]"):
        predict(PredictConfig(model=d, inputs=(str(tmp_path / "big.npy"),)))
    with pytest.raises(DataError, match="does not exist"):
        predict(PredictConfig(model=d, inputs=(str(tmp_path / "nope.png"),)))


def test_the_cli_exports_predicts_and_inspects_every_artifact(
    made: dict[str, Path], tmp_path: Path
) -> None:
    from PIL import Image

    gen, models = made["head-gen"], tmp_path / "models"
    task = _tasks(gen)[0]
    r = invoke("export", "--generated", gen, "--out", models, "--tasks", task, "--no-program")
    assert r.exit_code == 0, r.output
    assert r.stdout.strip().splitlines() == [str(models / task)]
    assert not (models / task / "model.pt2").exists()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "z.png")
    p = invoke("predict", "--model", models / task, tmp_path / "z.png")
    assert p.exit_code == 0, p.output
    (line,) = p.stdout.strip().splitlines()
    assert json.loads(line)["input"] == str(tmp_path / "z.png")
    kinds = {
        gen: "generated store",
        made["head-policy"]: "policy",
        models / task: "exported model",
    }
    for path, kind in kinds.items():
        j = invoke("inspect", path, "--json", "--verify")
        assert j.exit_code == 0, j.output
        s = json.loads(j.stdout)
        assert s["kind"] == kind and s["verified"] is True
        assert f"lohp {kind}" in flat(invoke("inspect", path).stdout)
    # a damaged weights chunk of the generated store: --verify names it, exit 3
    broken = tmp_path / "broken.zarr"
    import shutil

    shutil.copytree(gen, broken)
    chunk = broken / task / "weights" / "c" / "0" / "0"  # the only chunk of [S, P]
    chunk.write_bytes(chunk.read_bytes()[:-4] + b"\0\0\0\0")
    bad = invoke("inspect", broken, "--verify")
    assert bad.exit_code == 3 and "checksum" in flat(bad.stderr)
    assert "lohp generate" in flat(bad.stderr)
