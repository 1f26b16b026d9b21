"""A generated task model that runs without its store: the target network with one task's
generated weights, the store's frozen parts (the ``head`` extractor, the ``lora`` backbone) and
the family's input standardisation in one ``nn.Module`` (:class:`TaskClassifier`), and the
directory ``lohp export`` writes it into (format ``lohp.exported``, docs/report.md):

```
<out>/<task_id>/
  model.safetensors   the module's tensors (safetensors: no pickle)
  model.pt2           the same module as a torch.export program: torch.export.load(...).module()
  config.json         what the tensors are: format, task, classes, input, model config, source
  README.md           a model card: the task, its accuracy, how to load it
```

``load_task_model`` rebuilds the module from config.json and model.safetensors with lohp's own
model registry; ``model.pt2`` needs torch alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lohp_cli.artifacts.exported import ExportedMeta, read_exported_meta
from lohp_cli.config import ModelConfig
from lohp_cli.errors import CompatibilityError, LohpError
from lohp_cli.tasks.models import Frozen, build_target, target_model

# class names of the data sets whose classes have them (by ImageData.name)
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "fmnist": (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
    "cifar10": (
        "airplane", "automobile", "bird", "cat", "deer",
        "dog", "frog", "horse", "ship", "truck",
    ),
    "digits": tuple(str(i) for i in range(10)),
}  # fmt: skip


class TaskClassifier(nn.Module):
    """Images of one task to its class logits: ``images [B, C, H, W]`` float32 in [0, 1] (uint8
    pixels / 255) -> standardised with the family's channel statistics -> the model's frozen
    parts (:meth:`TargetModel.encode`) -> the target network -> ``logits [B, ways]``."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        image_shape: tuple[int, ...],
        ways: int,
        frozen: Frozen,
        mean: torch.Tensor,
        std: torch.Tensor,
    ) -> None:
        super().__init__()
        self.model_name = model_cfg.name
        self.frozen = nn.ModuleDict(frozen)
        with torch.random.fork_rng(devices=[]):  # its initial weights are replaced
            self.net = build_target(model_cfg, image_shape, ways, dict(self.frozen.items()))
        self.register_buffer("mean", mean.reshape(1, -1, 1, 1).float())  # [1, C, 1, 1]
        self.register_buffer("std", std.reshape(1, -1, 1, 1).float())  # [1, C, 1, 1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> [B, ways]
        x = (images - self.mean) / self.std
        x = target_model(self.model_name).encode(x, dict(self.frozen.items()))
        return self.net(x)


def frozen_modules(model_cfg: ModelConfig, image_shape: tuple[int, ...]) -> Frozen:
    """The untrained frozen parts of a model, to load saved tensors into."""
    out: Frozen = {}
    for part in target_model(model_cfg).frozen:
        module = part.build(model_cfg, image_shape)
        module.eval()
        module.requires_grad_(False)
        out[part.name] = module
    return out


def task_model_from_config(meta: ExportedMeta) -> TaskClassifier:
    """The (untrained) module an exported directory's config.json describes."""
    model_cfg = ModelConfig.model_validate(meta.model)
    shape = tuple(meta.input.shape)
    c = shape[0]
    return TaskClassifier(
        model_cfg, shape, len(meta.classes), frozen_modules(model_cfg, shape),
        torch.zeros(c), torch.ones(c),
    ).eval()  # fmt: skip


def read_config(directory: str | Path) -> ExportedMeta:
    """An exported directory's config.json, validated; a missing or foreign directory is a
    CompatibilityError naming it."""
    d = Path(directory)
    try:
        data = json.loads((d / "config.json").read_text())
    except (OSError, ValueError):
        raise CompatibilityError(
            f"No exported model at '{d}' (config.json missing or unreadable); make one with "
            "'lohp export'."
        ) from None
    return read_exported_meta(data, str(d))


def load_task_model(directory: str | Path) -> tuple[TaskClassifier, ExportedMeta]:
    """``(module in eval mode, its config.json)`` of an exported directory, from its safetensors
    (never a pickle); a missing or foreign directory is a CompatibilityError naming it."""
    from pydantic import ValidationError
    from safetensors.torch import load_model

    d = Path(directory)
    meta = read_config(d)
    try:
        module = task_model_from_config(meta)
    except (ValidationError, LohpError) as exc:
        raise CompatibilityError(
            f"'{d}/config.json' describes a model this lohp cannot build ({exc})."
        ) from None
    try:
        load_model(module, str(d / meta.files.weights))
    except (OSError, RuntimeError, ValueError) as exc:
        raise CompatibilityError(
            f"'{d / meta.files.weights}' does not fit its config.json ({exc})."
        ) from None
    return module.eval(), meta


def inspect_exported(path: str, verify: bool = False) -> dict[str, Any]:
    """What ``lohp inspect`` says of an exported model directory; with ``verify``, whether it
    loads (and its model.pt2 is there when config.json names one)."""
    d = Path(path)
    meta = read_config(d)
    s: dict[str, Any] = {
        "kind": "exported model",
        "model_dir": str(d),
        "format": meta.format,
        "format_version": meta.format_version,
        "task_id": meta.task_id,
        "model": meta.model.get("name"),
        "classes": meta.classes,
        "class_names": meta.class_names,
        "input_shape": meta.input.shape,
        "test_accuracy": meta.test_accuracy,
        "program": meta.files.program,
        "generated": meta.source.get("generated"),
        "sample": meta.source.get("sample"),
    }
    if verify:
        problems = []
        try:
            load_task_model(d)
        except CompatibilityError as exc:
            problems.append(str(exc))
        if meta.files.program and not (d / meta.files.program).is_file():
            problems.append(f"'{d / meta.files.program}' is missing")
        s["problems"], s["verified"] = problems, not problems
    return s
