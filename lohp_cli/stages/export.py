"""``lohp export``: a generated store's weights for chosen tasks as models that run without lohp.

For each task, one directory (:mod:`lohp_cli.tasks.exported`): the target network holding that
task's generated weights (sample ``sample``), the store's frozen parts and the family's input
standardisation as one module, saved as safetensors and as a ``torch.export`` program (loads with
torch alone), with a config.json that says what it takes and returns, and a model card. Each
model is scored on its task's test split as it is written (``test_accuracy``: the accuracy
``evaluate`` reports for that sample), so an export that does not reproduce it is caught here.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import lohp_cli.store.chunks as chunks
from lohp_cli.artifacts.base import parse
from lohp_cli.artifacts.exported import EXPORT_FORMAT, ExportedMeta, new_exported_meta
from lohp_cli.checkpoint import atomic_write_json
from lohp_cli.config import ExportConfig, GenerateConfig
from lohp_cli.errors import ConfigError, StoreError
from lohp_cli.policy.context import TaskContext, store_task_context
from lohp_cli.runtime import provenance, stage_threads
from lohp_cli.store.generated import open_generated
from lohp_cli.store.trajectory_store import TrajectoryStore
from lohp_cli.tasks.exported import CLASS_NAMES, TaskClassifier
from lohp_cli.tasks.layout import load_flat

Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class ExportResult:
    out: str
    models: list[str] = field(default_factory=list)  # one directory per task
    wall_time_s: float = 0.0


def export(cfg: ExportConfig, progress: Progress | None = None) -> ExportResult:
    """Write one self-contained model per chosen task of ``cfg.generated`` into ``cfg.out``."""
    emit = progress or (lambda _e: None)
    with stage_threads(cfg.threads, emit):
        return _export(cfg, emit)


def _export(cfg: ExportConfig, emit: Progress) -> ExportResult:
    t0 = time.perf_counter()
    g, gmeta = open_generated(cfg.generated)
    gcfg = parse(
        GenerateConfig, gmeta.config, f"Generated store '{cfg.generated}' config", StoreError
    )
    tasks = list(cfg.tasks) if cfg.tasks else list(gmeta.tasks)
    unknown = [t for t in tasks if t not in gmeta.tasks]
    if unknown:
        have = ", ".join(gmeta.tasks[:5]) + (" …" if len(gmeta.tasks) > 5 else "")
        raise ConfigError(
            f"Task {unknown[0]!r} is not in generated store '{cfg.generated}' (it has "
            f"{len(gmeta.tasks)} task(s): {have}); generate it first or choose --tasks from them."
        )
    samples = int(gcfg.samples)
    if cfg.sample >= samples:
        raise ConfigError(
            f"--sample {cfg.sample}: generated store '{cfg.generated}' has {samples} sample(s) "
            f"per task (0 … {samples - 1})."
        )
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"Output '{out}' is a file; give a directory for the exported models.")
    taken = [t for t in tasks if (out / t).exists()]
    if taken and not cfg.overwrite:
        raise ConfigError(
            f"'{out / taken[0]}' exists; pass --overwrite to replace it or choose another --out."
        )
    location = cfg.store or gcfg.store or gmeta.store_location
    store = TrajectoryStore.open(location, mode="r")
    ctx = store_task_context(store, cfg.data_root if cfg.data_root else gcfg.data_root)
    emit({"event": "start", "tasks": len(tasks)})
    made = []
    for i, task_id in enumerate(tasks):
        where = f"generated store '{cfg.generated}', task {task_id}, array 'weights'"
        try:
            arr = g[f"{task_id}/weights"]
        except Exception:  # noqa: BLE001 - missing or unreadable metadata
            raise StoreError(f"{where} is missing; run 'lohp generate' again.") from None
        w = chunks.read(arr, cfg.sample, where)  # [P]
        if w.shape != (gmeta.param_count,) or not np.isfinite(w).all():
            raise StoreError(f"{where}: sample {cfg.sample} is not {gmeta.param_count} finite "
                             "weights; run 'lohp generate' again.")  # fmt: skip
        made.append(str(_write_one(cfg, ctx, gmeta, task_id, torch.from_numpy(w), out)))
        emit({"event": "model", "task": task_id, "done": i + 1, "tasks": len(tasks)})
    return ExportResult(str(out), made, round(time.perf_counter() - t0, 3))


def _classes(ctx: TaskContext, task_id: str) -> tuple[list[Any], list[str] | None]:
    """The task's class identities in label order, and their names where the data set has them."""
    task = ctx.task(task_id)
    ids = task.class_ids
    classes = list(ids) if ids is not None else list(range(ctx.family.ways))
    names = CLASS_NAMES.get(getattr(getattr(ctx.family, "data", None), "name", ""))
    if names is None or not all(isinstance(c, int) and 0 <= c < len(names) for c in classes):
        return [c if isinstance(c, int) else str(c) for c in classes], None
    return classes, [names[c] for c in classes]


def score_on_test_split(module: TaskClassifier, ctx: TaskContext, task_id: str) -> float:
    """The module's accuracy on its task's test split (uint8 images / 255, as it takes them)."""
    images, labels = ctx.task(task_id).examples("test")  # type: ignore[attr-defined]
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
        pred = torch.cat([module(x[i : i + 512]).argmax(1) for i in range(0, len(x), 512)])
    return float((pred == labels).float().mean())


def _write_one(
    cfg: ExportConfig, ctx: TaskContext, gmeta: Any, task_id: str, theta: torch.Tensor, out: Path
) -> Path:
    from safetensors.torch import save_model

    mean, std = ctx.family.channel_stats()  # type: ignore[attr-defined]
    shape = tuple(ctx.family.input_shape)
    classes, names = _classes(ctx, task_id)
    module = TaskClassifier(ctx.model_cfg, shape, len(classes), ctx.frozen, mean, std).eval()
    load_flat(module.net, theta)
    acc = score_on_test_split(module, ctx, task_id)
    meta = new_exported_meta(
        task_id=task_id,
        classes=classes,
        class_names=names,
        input={
            "shape": list(shape),
            "note": "uint8 pixels / 255, the data set's orientation and size; the module "
            "standardises them itself",
        },
        output={"shape": ["batch", len(classes)], "meaning": "class logits in label order"},
        model=ctx.model_cfg.model_dump(mode="json"),
        frozen_parts=sorted(ctx.frozen),
        standardisation={"mean": mean.tolist(), "std": std.tolist()},
        test_accuracy=round(acc, 4),
        source={
            "generated": str(Path(cfg.generated).resolve()),
            "sample": cfg.sample,
            "policy": gmeta.policy.to_json(),
            "store_location": gmeta.store_location,
            "family": ctx.family.describe(),
        },
        provenance=provenance("cpu"),
    )
    final = out / task_id
    tmp = out / f".{task_id}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(module, str(tmp / "model.safetensors"), metadata={"format": EXPORT_FORMAT})
    program = _write_program(module, shape, tmp / "model.pt2") if cfg.program else None
    meta = meta.model_copy(update={"files": meta.files.model_copy(update={"program": program})})
    atomic_write_json(tmp / "config.json", meta.model_dump(mode="json"))
    (tmp / "README.md").write_text(model_card(meta))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def _write_program(module: TaskClassifier, shape: tuple[int, ...], path: Path) -> str | None:
    """``module`` as a torch.export program with a dynamic batch size; None when torch cannot
    export it (the safetensors and config.json still load it with lohp)."""
    try:
        example = torch.rand(2, *shape)
        batch = torch.export.Dim("batch", min=1)
        program = torch.export.export(module, (example,), dynamic_shapes={"images": {0: batch}})
        torch.export.save(program, str(path))
    except Exception:  # noqa: BLE001 - a model torch.export cannot trace: weights only
        path.unlink(missing_ok=True)
        return None
    return path.name


def model_card(meta: ExportedMeta) -> str:
    """README.md of an exported model: what it is, what it takes, how to load it."""
    c, h, w = meta.input.shape
    names = meta.class_names or [str(c) for c in meta.classes]
    labels = ", ".join(f"{j}: {n}" for j, n in enumerate(names))
    src, pol = meta.source, meta.source.get("policy") or {}
    program = meta.files.program
    parts = ", ".join(meta.frozen_parts) or "none"
    torch_only = (
        [
            "With PyTorch alone (a `torch.export` program):",
            "",
            "```python",
            "import torch",
            f'model = torch.export.load("{program}").module()',
            f"logits = model(images)  # images: float32 [B, {c}, {h}, {w}] in [0, 1]",
            "labels = logits.argmax(1)",
            "```",
            "",
        ]
        if program
        else ["(torch.export could not trace this model: load it with lohp below.)", ""]
    )
    acc = "–" if meta.test_accuracy is None else f"{meta.test_accuracy:.4f}"
    return "\n".join(
        [
            f"# {meta.task_id}: a {len(names)}-way {meta.model.get('name')} classifier "
            "generated by lohp",
            "",
            f"Weights generated by `{pol.get('method')}` (k = {pol.get('k')}, N = {pol.get('N')}) "
            f"from `{pol.get('path')}`, sample {src.get('sample')} of `{src.get('generated')}`; "
            f"the frozen parts ({parts}) and the input standardisation of its store "
            f"`{src.get('store_location')}` are inside.",
            "",
            f"Labels: {labels}.",
            f"Test accuracy on the task's test split: {acc}.",
            "",
            *torch_only,
            "With lohp (rebuilds the module from `model.safetensors` and `config.json`, no "
            "pickle):",
            "",
            "```bash",
            "lohp predict --model . image1.png image2.png      # or a tensor file: images.npy",
            "```",
            "",
            "Input: images of the data set's kind, `float32 [B, C, H, W]` with pixel values in "
            "[0, 1] (uint8 / 255); the model standardises them. Output: class logits in label "
            "order.",
            "",
        ]
    )
