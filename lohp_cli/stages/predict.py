"""``lohp predict``: classify images with a model ``lohp export`` wrote.

Inputs are image files (read with Pillow, converted to the model's channels and resized to its
input size) or tensor files (``.npy`` read without pickle, ``.safetensors``) holding images
``[B, C, H, W]`` (``[B, H, W]`` for one channel, ``[C, H, W]`` for one image), uint8 or float in
[0, 1]. One prediction per image: its label, class, class name and probabilities.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lohp_cli.config import PredictConfig
from lohp_cli.errors import ConfigError, DataError
from lohp_cli.runtime import stage_threads
from lohp_cli.tasks.exported import load_task_model

Progress = Callable[[dict[str, Any]], None]
TENSOR_SUFFIXES = (".npy", ".safetensors")


def predict(cfg: PredictConfig, progress: Progress | None = None) -> list[dict[str, Any]]:
    """One prediction per input image: ``{input, label, class, class_name, probability, top}``."""
    emit = progress or (lambda _e: None)
    with stage_threads(cfg.threads, emit):
        module, meta = load_task_model(cfg.model)
        shape, names, classes = tuple(meta.input.shape), meta.class_names, meta.classes
        out = []
        for path in cfg.inputs:
            images, labels = read_inputs(path, shape)  # [B, C, H, W] float in [0, 1]
            with torch.no_grad():
                probs = torch.softmax(module(images), dim=1)  # [B, ways]
            for name, p in zip(labels, probs, strict=True):
                order = torch.argsort(p, descending=True)[: cfg.top].tolist()
                j = order[0]
                out.append(
                    {
                        "input": name,
                        "label": j,
                        "class": classes[j],
                        "class_name": None if names is None else names[j],
                        "probability": round(float(p[j]), 6),
                        "top": [
                            {
                                "label": k,
                                "class": classes[k],
                                "class_name": None if names is None else names[k],
                                "probability": round(float(p[k]), 6),
                            }
                            for k in order
                        ],
                    }
                )
        return out


def read_inputs(path: str, shape: tuple[int, ...]) -> tuple[torch.Tensor, list[str]]:
    """``(images [B, C, H, W] float32 in [0, 1], a name per image)`` of one input file."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"Input '{path}' does not exist.")
    if p.suffix.lower() in TENSOR_SUFFIXES:
        x = _read_tensor(p)
        names = [f"{path}[{i}]" for i in range(len(x))]
    else:
        x, names = _read_image(p, shape)[None], [path]
    return _check(x, shape, path), names


def _read_tensor(p: Path) -> np.ndarray:
    if p.suffix.lower() == ".npy":
        try:
            return np.load(p, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"'{p}' is not a readable .npy array ({exc}).") from None
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(p))
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file
        raise DataError(f"'{p}' is not a readable safetensors file ({exc}).") from None
    if len(tensors) != 1 and "images" not in tensors:
        raise DataError(
            f"'{p}' holds {len(tensors)} tensors ({', '.join(sorted(tensors))}); give one, or "
            "name the images 'images'."
        )
    return tensors["images"] if "images" in tensors else next(iter(tensors.values()))


def _read_image(p: Path, shape: tuple[int, ...]) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    c, h, w = shape
    try:
        with Image.open(p) as im:
            im = im.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
            a = np.asarray(im, dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"'{p}' is not an image Pillow reads ({exc}).") from None
    return a[None] if c == 1 else a.transpose(2, 0, 1)  # [C, H, W] uint8


def _check(x: np.ndarray, shape: tuple[int, ...], path: str) -> torch.Tensor:
    """Images ``[B, C, H, W]`` float32 in [0, 1] from uint8 or float arrays of a few layouts."""
    c = shape[0]
    if x.ndim == 3 and tuple(x.shape) == tuple(shape):
        x = x[None]  # one image [C, H, W]
    elif x.ndim == 3 and c == 1:
        x = x[:, None]  # [B, H, W] of one channel
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(shape):
        raise ConfigError(
            f"Input '{path}' has shape {tuple(x.shape)}; the model takes images of shape "
            f"[B, {', '.join(map(str, shape))}] (or [B, H, W] for one channel)."
        )
    if x.dtype == np.uint8:
        return torch.from_numpy(np.array(x, dtype=np.float32)).div_(255.0)
    if not np.issubdtype(x.dtype, np.floating) or not np.isfinite(x).all():
        raise ConfigError(f"Input '{path}' is {x.dtype}; give uint8 pixels or floats in [0, 1].")
    if x.min() < -1e-3 or x.max() > 1 + 1e-3:
        raise ConfigError(
            f"Input '{path}' has values in [{x.min():.3g}, {x.max():.3g}]; float images are "
            "taken in [0, 1] (uint8 pixels / 255)."
        )
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
