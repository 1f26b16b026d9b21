"""The generated store (schema ``lohp.generated``) that ``generate`` writes and ``evaluate`` reads;
its layout is documented in :mod:`lohp_cli.stages.generate`, its attributes are
:class:`lohp_cli.artifacts.generated.GeneratedMeta`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lohp_cli.artifacts.generated import (
    GEN_SCHEMA,
    GEN_SCHEMA_VERSION,
    GeneratedMeta,
    read_generated_meta,
)
from lohp_cli.errors import StoreError

__all__ = ["GEN_SCHEMA", "GEN_SCHEMA_VERSION", "GeneratedMeta", "open_generated"]


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


def summarize_generated(path: str, verify: bool = False) -> dict[str, Any]:
    """What ``lohp inspect`` says of a generated store; with ``verify``, every array is read
    (checksums) and ``problems`` lists each damaged chunk or missing array."""
    from lohp_cli.store import chunks

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
            for name in ("weights", "condition", *(("path",) if cfg.get("save_paths") else ())):
                where = f"generated store '{path}', task {task}, array '{name}'"
                try:
                    arr = g[f"{task}/{name}"]
                except Exception:  # noqa: BLE001 - missing or unreadable metadata
                    problems.append(f"{where}: missing or unreadable")
                    continue
                problems += chunks.verify(arr, where)
        s["problems"], s["verified"] = problems, not problems
    return s
