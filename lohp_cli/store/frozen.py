"""The frozen parts of a target model (the ``head`` model's feature extractor, say), saved once
per store, each in the group named after it (``extractor``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from lohp_cli.config import ModelConfig
from lohp_cli.runtime import derive_seed
from lohp_cli.store.trajectory_store import TrajectoryStore
from lohp_cli.tasks import TaskFamily
from lohp_cli.tasks.models import Frozen, target_model


def train_frozen(
    store: TrajectoryStore,
    model: ModelConfig,
    family: TaskFamily,
    seed: int,
    progress: Callable[[dict[str, Any]], None],
) -> None:
    """Train each frozen part of ``model`` (seeded by ``seed`` and its name) and save it."""
    for part in target_model(model).frozen:
        progress({"event": part.name, **part.progress(model)})
        module, attrs = part.train(family, model, derive_seed(seed, part.name))
        store.save_tensors(part.name, {k: v.numpy() for k, v in module.state_dict().items()}, attrs)


def load_frozen(store: TrajectoryStore, model: ModelConfig, family: TaskFamily) -> Frozen:
    """The store's frozen parts of ``model`` by name, in eval mode with gradients off (none for
    whole-network models)."""
    out: Frozen = {}
    for part in target_model(model).frozen:
        tensors = store.load_tensors(part.name)
        module = part.build(model, family.input_shape)
        module.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()})
        module.eval()
        module.requires_grad_(False)
        out[part.name] = module
    return out
