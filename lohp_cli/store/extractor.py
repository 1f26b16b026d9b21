"""The frozen feature extractor a ``head`` store saves once (group ``extractor``)."""

from __future__ import annotations

import torch

from lohp_cli.config import ModelConfig
from lohp_cli.store.trajectory_store import TrajectoryStore
from lohp_cli.tasks import TaskFamily
from lohp_cli.tasks.models import FeatureExtractor

EXTRACTOR_GROUP = "extractor"


def load_extractor(
    store: TrajectoryStore, model: ModelConfig, family: TaskFamily
) -> FeatureExtractor | None:
    """The store's frozen feature extractor (head model), or None for whole-network models."""
    if model.name != "head":
        return None
    tensors = store.load_tensors(EXTRACTOR_GROUP)
    ext = FeatureExtractor(family.data.image_shape[0], model.feature_dim)
    ext.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()})
    ext.eval()
    ext.requires_grad_(False)
    return ext
