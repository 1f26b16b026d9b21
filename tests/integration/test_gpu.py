"""CUDA paths (skipped without a GPU): collect, train-policy with AMP, generate on the device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lohp_cli.config import GenerateConfig, TrainConfig
from lohp_cli.policy.directory import load_policy
from lohp_cli.runtime import resolve_device
from lohp_cli.stages.collect import collect
from lohp_cli.stages.generate import generate
from lohp_cli.stages.train import train_policy
from tests.conftest import tiny_config

pytestmark = pytest.mark.gpu


def test_auto_picks_cuda() -> None:
    assert resolve_device("auto") == "cuda"


def test_pipeline_on_cuda(tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    collect(tiny_config(store, device="cuda"))
    pol = tmp_path / "p"
    result = train_policy(
        TrainConfig.model_validate(
            {
                "store": str(store),
                "out": str(pol),
                "k": 2,
                "steps": 5,
                "device": "cuda",
                "amp": True,
                "policy": {"backbone": "unet", "channels": [8, 16], "patch": 4, "emb_dim": 16},
            }
        )
    )
    assert result.complete and result.final_loss is not None
    model, _, _ = load_policy(pol, "cuda")
    assert next(model.parameters()).is_cuda
    out = tmp_path / "g.zarr"
    generate(
        GenerateConfig.model_validate(
            {"policy": str(pol), "out": str(out), "num_tasks": 1, "samples": 2, "device": "cuda"}
        )
    )
    assert out.is_dir()
    assert torch.cuda.is_available()


def test_state_input_and_class_augmentation_on_cuda(tmp_path: Path) -> None:
    """The state-aware policy's support-set forward passes and the augmented batches on CUDA."""
    import json

    from lohp_cli.config import EvaluateConfig
    from lohp_cli.stages.evaluate import evaluate

    store = tmp_path / "s.zarr"
    collect(
        tiny_config(
            store, device="cuda", model={"name": "head", "feature_dim": 8, "extractor_steps": 20}
        )
    )
    pol = tmp_path / "p"
    train_policy(
        TrainConfig.model_validate(
            {
                "store": str(store),
                "out": str(pol),
                "k": 2,
                "steps": 5,
                "device": "cuda",
                "augment": "classes",
                "policy": {"backbone": "mlp", "hidden": 32, "state_input": "support"},
            }
        )
    )
    gen = tmp_path / "g.zarr"
    generate(
        GenerateConfig.model_validate(
            {"policy": str(pol), "out": str(gen), "num_tasks": 2, "samples": 2, "device": "cuda"}
        )
    )
    evaluate(
        EvaluateConfig.model_validate(
            {
                "generated": str(gen),
                "out": str(tmp_path / "r"),
                "baselines": ["adam"],
                "latency_repeats": 2,
                "plots": False,
                "device": "cuda",
            }
        )
    )
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["device"] == report["timing"]["device"] == "cuda"
    assert all(m["latency_ms_batch1"] > 0 for m in report["methods"])
    assert report["timing"]["generate"]["device"] == "cuda"
