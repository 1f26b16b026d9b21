"""Turn a task into model-ready tensors and a condition vector.

Images are scaled to [0, 1] and standardised per channel with the data set's training statistics.
``head`` tasks see features of the frozen extractor; ``mlp``/``cnn`` tasks see images. The condition
vector c of a task is computed from its labelled support set only, so a policy can be asked for
weights for any task that has a few labelled examples:
``head``: class-mean extractor features in label order, ``[C * feature_dim]``;
``mlp``/``cnn``: class-mean 7×7 average-pooled images in label order, ``[C * channels * 49]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lohp_cli.config import ModelConfig
from lohp_cli.tasks.families import TaskFamily, TaskSpec
from lohp_cli.tasks.models import FeatureExtractor


@dataclass(frozen=True)
class TaskTensors:
    """Everything a run needs of one task, on one device."""

    x_train: torch.Tensor  # [N_train, *input_shape]
    y_train: torch.Tensor  # [N_train] int64 labels in the task's label order
    x_test: torch.Tensor  # [N_test, *input_shape]
    y_test: torch.Tensor  # [N_test]
    condition: torch.Tensor  # [D] float32
    x_support: torch.Tensor  # [M, *input_shape] the support set the condition comes from
    y_support: torch.Tensor  # [M] int64 labels


def standardise(family: TaskFamily, images: np.ndarray) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` -> float32 standardised with the training set's channel stats."""
    mean, std = channel_stats(family)
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def channel_stats(family: TaskFamily) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std ``[C]`` of the family's training images in [0, 1] (cached)."""
    cached = getattr(family, "_channel_stats", None)
    if cached is None:
        x = family.data.train_x[::7].astype(np.float64) / 255.0
        mean = x.mean(axis=(0, 2, 3))
        std = x.std(axis=(0, 2, 3)) + 1e-6
        cached = (torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32))
        family._channel_stats = cached  # type: ignore[attr-defined]
    return cached


def class_means(x: torch.Tensor, y: torch.Tensor, classes: int) -> torch.Tensor:
    """Mean of ``x`` ``[N, F]`` per label, in label order, flattened to ``[classes * F]``."""
    out = torch.zeros(classes, x.shape[1], dtype=x.dtype)
    out.index_add_(0, y, x)
    counts = torch.bincount(y, minlength=classes).clamp_min(1).to(x.dtype)
    return (out / counts[:, None]).reshape(-1)


def condition_dim(cfg: ModelConfig, family: TaskFamily) -> int:
    """Size D of the condition vector for this model on this family."""
    ways = family.cfg.ways
    if cfg.name == "head":
        return ways * cfg.feature_dim
    return ways * family.data.image_shape[0] * 49


def support_set(
    family: TaskFamily,
    spec: TaskSpec,
    model_cfg: ModelConfig,
    extractor: FeatureExtractor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_support [M, *in], y_support [M], condition [D])`` of one task, on the CPU."""
    idx = family.indices(spec)
    ways = family.cfg.ways
    y = torch.from_numpy(family.labels(spec, [family.cfg.support_per_class] * ways))
    x = _model_inputs(family, family.data.train_x[idx.support], model_cfg, extractor)
    if model_cfg.name == "head":
        cond = class_means(x, y, ways)
    else:
        cond = class_means(nn.functional.adaptive_avg_pool2d(x, 7).flatten(1), y, ways)
    return x, y, cond.float()


def _model_inputs(
    family: TaskFamily,
    images: np.ndarray,
    model_cfg: ModelConfig,
    extractor: FeatureExtractor | None,
) -> torch.Tensor:
    """What the target model sees: standardised images, or extractor features for ``head``."""
    x = standardise(family, images)
    if model_cfg.name != "head":
        return x
    if extractor is None:
        raise ValueError("head model needs the store's feature extractor")
    with torch.no_grad():
        return extractor(x)


def task_tensors(
    family: TaskFamily,
    spec: TaskSpec,
    model_cfg: ModelConfig,
    extractor: FeatureExtractor | None,
    device: str = "cpu",
) -> TaskTensors:
    """Build the tensors of one task (train/test splits, condition) for ``model_cfg``."""
    idx = family.indices(spec)
    cfg = family.cfg
    data = family.data
    ways = cfg.ways
    y_train = torch.from_numpy(family.labels(spec, [cfg.train_per_class] * ways))
    test_counts = [int((data.test_y[idx.test] == c).sum()) for c in spec.classes]
    y_test = torch.from_numpy(family.labels(spec, test_counts))
    x_train = _model_inputs(family, data.train_x[idx.train], model_cfg, extractor)
    x_test = _model_inputs(family, data.test_x[idx.test], model_cfg, extractor)
    x_support, y_support, cond = support_set(family, spec, model_cfg, extractor)
    return TaskTensors(
        x_train.to(device),
        y_train.to(device),
        x_test.to(device),
        y_test.to(device),
        cond.to(device),
        x_support.to(device),
        y_support.to(device),
    )


def train_extractor(
    family: TaskFamily, model_cfg: ModelConfig, seed: int, batch_size: int = 128
) -> FeatureExtractor:
    """Train the frozen feature extractor on the training images of source classes only.

    Deterministic on CPU for a given seed. Returns the extractor in eval mode, gradients off.
    """
    data = family.data
    classes = family.source_classes
    keep = np.isin(data.train_y, classes)
    remap = {c: i for i, c in enumerate(classes)}
    x_all = data.train_x[keep]
    y_all = torch.tensor([remap[int(c)] for c in data.train_y[keep]], dtype=torch.int64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ext = FeatureExtractor(data.image_shape[0], model_cfg.feature_dim)
        clf = nn.Linear(model_cfg.feature_dim, len(classes))
        opt = torch.optim.Adam([*ext.parameters(), *clf.parameters()], lr=1e-3)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(model_cfg.extractor_steps):
            b = torch.randint(0, len(y_all), (batch_size,), generator=gen)
            xb = standardise(family, x_all[b.numpy()])
            loss = nn.functional.cross_entropy(clf(ext(xb)), y_all[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    ext.eval()
    ext.requires_grad_(False)
    return ext
