"""Task inputs as plain functions (kept for scripts and tests); each delegates.

A task's tensors and condition come from :meth:`~lohp_cli.tasks.families.Task.data` and
:meth:`~lohp_cli.tasks.families.Task.support_set`, image standardisation from
:class:`~lohp_cli.tasks.images.ImageFamily`, the frozen extractor from the ``head`` entry of the
model registry.
"""

from __future__ import annotations

import numpy as np
import torch

from lohp_cli.config import ModelConfig
from lohp_cli.tasks.families import TaskFamily, TaskTensors
from lohp_cli.tasks.images import ImageFamily, class_means
from lohp_cli.tasks.models import train_extractor

__all__ = [
    "TaskTensors",
    "channel_stats",
    "class_means",
    "condition_dim",
    "standardise",
    "train_extractor",
]


def standardise(family: ImageFamily, images: np.ndarray) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` -> float32 standardised with the training set's channel stats."""
    return family.standardise(images)


def channel_stats(family: ImageFamily) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std ``[C]`` of the family's training images in [0, 1] (cached)."""
    return family.channel_stats()


def condition_dim(cfg: ModelConfig, family: TaskFamily) -> int:
    """Size D of the condition vector for this model on this family."""
    return family.condition_dim(cfg)
