"""Shared fixtures: tiny configs on scikit-learn's digits (always available) and GPU skipping."""

from __future__ import annotations

from pathlib import Path

import pytest

from lohp_cli.config import CollectConfig
from lohp_cli.tasks.datasets import FMNIST_SYSTEM_DIRS

FMNIST_AVAILABLE = any(Path(d, "train-images-idx3-ubyte.gz").exists() for d in FMNIST_SYSTEM_DIRS)
needs_fmnist = pytest.mark.skipif(
    not FMNIST_AVAILABLE, reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)"
)

# Settings small enough that a whole collect takes about a second on CPU.
TINY = {
    "task": {"family": "digits", "train_per_class": 30, "test_per_class": 10, "support_per_class": 5},
    "model": {"name": "mlp", "hidden": 8, "extractor_steps": 20, "feature_dim": 16},
    "tasks": 2,
    "seeds": 1,
    "steps": 20,
    "record_every": 5,
    "batch_size": 16,
}


def tiny_config(out: str | Path, **overrides: object) -> CollectConfig:
    """A validated tiny collect config writing to ``out``; ``overrides`` replace top-level keys."""
    data = {**TINY, "out": str(out), **overrides}
    return CollectConfig.model_validate(data)


@pytest.fixture
def tiny_cfg(tmp_path: Path) -> CollectConfig:
    return tiny_config(tmp_path / "store.zarr")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
