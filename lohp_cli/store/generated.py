"""The generated store (schema ``lohp.generated`` v1): ``generate`` writes it
(:func:`write_generated`), ``evaluate``, ``export`` and ``inspect`` read it
(:func:`open_generated`); its attributes are :class:`lohp_cli.artifacts.generated.GeneratedMeta`.

Layout::

    generated.zarr/            attrs: schema, schema_version, policy (method, k, N, fingerprint),
                               layout, param_count, store_location, tasks, config, timing,
                               provenance
      <task_id>/weights        float32 [S, P]        generated weights (de-normalised); axes
                                                     ("sample", "param")
      <task_id>/path           float32 [S, N+1, P]   every state (with --save-paths); axes
                                                     ("sample", "step", "param"), one chunk
                                                     per sample
      <task_id>/condition      float32 [D]           the task condition the policy saw; axis
                                                     "condition"

Every array is zstd-compressed and ends with a crc32c checksum (see docs/store.md). The store is
written into a temporary directory beside its path and renamed into place, under a lock file, so
a crash or two overlapping runs (cron) never leave a half-written output.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lohp_cli.artifacts.generated import (
    GEN_SCHEMA,
    GEN_SCHEMA_VERSION,
    GeneratedMeta,
    read_generated_meta,
)
from lohp_cli.config import StoreCodecConfig
from lohp_cli.errors import StoreError
from lohp_cli.store import chunks
from lohp_cli.store.codecs import codecs_for
from lohp_cli.store.groups import CONDITION_DIMS
from lohp_cli.store.location import file_lock

__all__ = [
    "GEN_SCHEMA",
    "GEN_SCHEMA_VERSION",
    "GeneratedMeta",
    "GeneratedTask",
    "open_generated",
    "output_lock",
    "read_task_arrays",
    "task_arrays",
    "write_generated",
]

CODEC = StoreCodecConfig(codec="zstd", level=3)  # zstd, then crc32c
WEIGHTS_DIMS = ("sample", "param")
PATH_DIMS = ("sample", "step", "param")


def task_arrays(save_paths: bool) -> tuple[str, ...]:
    """The arrays of each task: weights and condition, and the path with ``save_paths``."""
    return ("weights", "condition", *(("path",) if save_paths else ()))


@dataclass(frozen=True)
class GeneratedTask:
    """One task's group of a generated store."""

    id: str
    weights: np.ndarray  # float32 [S, P]
    condition: np.ndarray  # float32 [D]
    path: np.ndarray | None = None  # float32 [S, N+1, P], with --save-paths
    attrs: dict[str, Any] = field(default_factory=dict)  # e.g. ``classes`` of a class subset


@contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """An exclusive lock beside ``out`` (``.<name>.lock``, removed on release); a second run
    waits for the first to finish."""
    with file_lock(out.parent / f".{out.name}.lock"):
        yield


def write_generated(out: Path, meta: GeneratedMeta, tasks: Iterable[GeneratedTask]) -> None:
    """Write a generated store with attributes ``meta`` and one group per task (in order) to
    ``out``: into a temporary directory beside it, renamed into place under
    :func:`output_lock` (an existing store at ``out`` is replaced)."""
    import zarr

    with output_lock(out):
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        root = zarr.open_group(zarr.storage.LocalStore(tmp), mode="w")
        root.attrs.update(meta.to_json())
        codecs = codecs_for(CODEC)
        for task in tasks:
            g = root.create_group(task.id)
            g.create_array(
                "weights", data=task.weights, compressors=codecs, dimension_names=WEIGHTS_DIMS
            )
            g.create_array(
                "condition",
                data=task.condition,
                compressors=codecs,
                dimension_names=CONDITION_DIMS,
            )
            if task.path is not None:
                g.create_array(
                    "path",
                    data=task.path,
                    chunks=(1, *task.path.shape[1:]),
                    compressors=codecs,
                    dimension_names=PATH_DIMS,
                )
            g.attrs.update(task.attrs)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)


def open_generated(path: str) -> tuple[Any, GeneratedMeta]:
    """``(zarr group, its validated attributes)`` of the generated store at ``path``."""
    import zarr

    p = Path(path)
    if not p.is_dir() or not (p / "zarr.json").is_file():
        raise StoreError(f"No generated store at '{path}'; make one with 'lohp generate'.")
    try:
        g = zarr.open_group(zarr.storage.LocalStore(p), mode="r")
        attrs = dict(g.attrs)
    except Exception as exc:  # noqa: BLE001 - any zarr/json failure means a corrupt store
        raise StoreError(f"'{path}' is not a readable generated store ({exc}).") from None
    return g, read_generated_meta(attrs, path)


def read_task_arrays(g: Any, path: str, task: str, names: Iterable[str]) -> dict[str, np.ndarray]:
    """The arrays ``names`` of ``task`` in the opened generated store ``g`` at ``path``, read
    whole (checksums verified; a StoreError names a damaged chunk)."""
    return {
        n: chunks.read(g[f"{task}/{n}"], ..., f"generated store '{path}', task {task}")
        for n in names
    }


def summarize_generated(path: str, verify: bool = False) -> dict[str, Any]:
    """What ``lohp inspect`` says of a generated store; with ``verify``, every array is read
    (checksums) and ``problems`` lists each damaged chunk or missing array."""
    g, meta = open_generated(path)
    cfg = meta.config
    timing = meta.timing or {}
    s: dict[str, Any] = {
        "kind": "generated store",
        "store": path,
        "schema": meta.schema_,
        "schema_version": meta.schema_version,
        "policy": meta.policy.path,
        "method": meta.policy.method,
        "k": meta.policy.k,
        "N": meta.policy.N,
        "style": meta.policy.style,
        "param_count": meta.param_count,
        "trajectory_store": meta.store_location,
        "tasks": len(meta.tasks),
        "first_tasks": meta.tasks[:5],
        "samples_per_task": cfg.get("samples"),
        "mode": cfg.get("mode"),
        "seed": cfg.get("seed"),
        "paths_saved": bool(cfg.get("save_paths")),
        "latency_ms_batch1": timing.get("latency_ms_batch1"),
        "batched_ms_per_sample": timing.get("batched_ms_per_sample"),
        "timing_device": timing.get("device"),
        "created_at": meta.provenance.get("created_at"),
        "lohp_version": meta.provenance.get("lohp_version"),
    }
    if verify:
        problems: list[str] = []
        for task in meta.tasks:
            for name in task_arrays(bool(cfg.get("save_paths"))):
                where = f"generated store '{path}', task {task}, array '{name}'"
                try:
                    arr = g[f"{task}/{name}"]
                except Exception:  # noqa: BLE001 - missing or unreadable metadata
                    problems.append(f"{where}: missing or unreadable")
                    continue
                problems += chunks.verify(arr, where)
        s["problems"], s["verified"] = problems, not problems
    return s
