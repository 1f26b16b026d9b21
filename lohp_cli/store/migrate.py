"""Copying a trajectory store of schema version 1 (a group per run) into a new store of version
2 (runs in blocks), run ids, numbers and attributes unchanged (fingerprints included); the script
``scripts/migrate_store.py OLD.zarr NEW.zarr [--block-runs 64]`` runs it.

The root attributes, the tasks, the frozen parts and the shared θ₀ are copied as they are; the
complete runs go into blocks of up to ``--block-runs`` runs of one optimizer. Runs that are not
complete are left out (``lohp collect --out NEW.zarr`` with the store's settings redoes them).
Then ``lohp inspect NEW.zarr --verify``.
"""

from __future__ import annotations

import numpy as np
import zarr

from lohp_cli.config import StoreCodecConfig
from lohp_cli.errors import StoreError
from lohp_cli.store.blocks import block_id
from lohp_cli.store.trajectory_store import TrajectoryStore
from lohp_cli.store.writer import BlockTarget, WriteSink

IDENTITY_LATER = ("status", "steps_written", "fingerprint", "wall_time_s")


def migrate(src: str, dst: str, block_runs: int = 64) -> int:
    """Copy ``src`` (version 1) into a new store ``dst`` (version 2); returns the runs copied."""
    old = TrajectoryStore.open(src)
    if old.blocks:
        raise StoreError(f"'{src}' already has schema_version {old.meta.schema_version}.")
    attrs = {k: v for k, v in old.attrs.items() if k not in ("schema", "schema_version")}
    new, created = TrajectoryStore.create_or_open(dst, attrs)
    if not created:
        raise StoreError(f"'{dst}' exists; give the migration a new path.")
    for name in old.group_names():
        if name in ("runs", "blocks", "tasks"):
            continue
        _copy_group(old.root[name], new.root, name)
    for tid in old.task_ids():  # conditions and task attributes
        new.write_task(tid, old.condition(tid), dict(old.root[f"tasks/{tid}"].attrs))
    codec = StoreCodecConfig.model_validate(old.meta.config.get("store", {}))
    states, size = old.meta.compat.states, old.meta.param_count
    by_opt: dict[str, list[str]] = {}
    for rid, meta in old.iter_runs():
        by_opt.setdefault(meta.optimizer, []).append(rid)
    sink = WriteSink(depth=2)
    copied = 0
    for rids in by_opt.values():
        for i in range(0, len(rids), block_runs):
            group = rids[i : i + block_runs]
            begin = [
                {k: v for k, v in (old.run_attrs(r) or {}).items() if k not in IDENTITY_LATER}
                for r in group
            ]
            target = BlockTarget(block_id(group), group, list(range(len(group))), begin, True)
            writer = new.block_writer(target, states, size, codec, sink)
            for row, rid in enumerate(group):
                wall = float((old.run_attrs(rid) or {}).get("wall_time_s") or 0.0)
                writer.put_run(row, old.weights(rid), old.run_array(rid, "loss"),
                               old.run_array(rid, "train_acc"), wall)  # fmt: skip
            copied += len(group)
    sink.close()
    new.write_run_index()
    return copied


def _copy_group(src: zarr.Group, parent: zarr.Group, name: str) -> None:
    """A group of arrays and sub-groups, copied with its attributes and codecs."""
    g = parent.require_group(name)
    g.attrs.update(dict(src.attrs))
    for key, node in src.members():
        if isinstance(node, zarr.Group):
            _copy_group(node, g, key)
        else:
            arr = g.create_array(key, shape=node.shape, dtype=node.dtype, chunks=node.chunks,
                                 filters=node.filters, serializer=node.serializer,
                                 compressors=node.compressors, fill_value=node.fill_value,
                                 dimension_names=node.metadata.dimension_names,
                                 attributes=dict(node.attrs))  # fmt: skip
            arr[...] = np.asarray(node[...])
