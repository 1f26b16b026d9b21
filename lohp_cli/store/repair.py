"""What ``lohp collect --repair`` finds and redoes in a trajectory store.

Everything lohp writes into a store can be made again from the store's settings, except the
frozen parts of the target model and the shared θ₀ (trained or drawn once per store, and every
run depends on them): group metadata that does not read is rewritten, a damaged task condition is
computed again, and a run that is damaged (a chunk, its metadata, a disagreement with the run
index) is deleted and collected again from its run id. The collect stage does the recomputing;
this module finds the damage and rewrites what needs no task data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import lohp_cli.store.chunks as chunks
from lohp_cli.errors import StoreError
from lohp_cli.store.summary import verify_runs
from lohp_cli.store.trajectory_store import TrajectoryStore

# groups whose own metadata holds nothing but derivable data (the run index)
REWRITABLE_GROUPS = ("blocks", "runs", "tasks")
EMPTY_GROUP = {"zarr_format": 3, "node_type": "group", "attributes": {}}


@dataclass
class Damage:
    """What a store needs repaired: ``groups`` whose metadata is rewritten, ``conditions`` (task
    id -> why) computed again, ``runs`` (run id -> why) redone, and what cannot be repaired."""

    groups: list[str] = field(default_factory=list)
    conditions: dict[str, str] = field(default_factory=dict)
    runs: dict[str, str] = field(default_factory=dict)
    unrepairable: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, list[str]]:
        """What was repaired: group, task and run names."""
        return {
            "groups": self.groups,
            "conditions": sorted(self.conditions),
            "runs": sorted(self.runs),
        }


def _group_problem(store: TrajectoryStore, name: str) -> str | None:
    try:
        store.node(name, f"group '{name}'")
    except KeyError:
        return "missing"
    except StoreError as exc:
        return str(exc)
    return None


def find_damage(store: TrajectoryStore) -> Damage:
    """Read every complete run, every condition and every saved tensor of ``store`` (as
    ``inspect --verify`` does) and say what needs repairing."""
    damage = Damage()
    groups = ("tasks", store.layout.container)
    damage.groups = [g for g in groups if _group_problem(store, g)]
    damage.runs.update(store.index_mismatches())  # the runs' own attributes, not the index
    complete = []
    for rid in store.run_ids():
        attrs = store.own_attrs(rid)
        meta, why = (
            (None, "unreadable attributes") if attrs is None else store.check_attrs(rid, attrs)
        )
        if meta is None:
            damage.runs[rid] = why or "invalid attributes"
        elif meta.complete:
            complete.append(rid)
    for rid, problems in verify_runs(store, complete).items():
        if problems:
            damage.runs[rid] = problems[0]
    for tid in store.task_ids():
        why = _condition_problem(store, tid)
        if why:
            damage.conditions[tid] = why
    for name in store.group_names():
        if name in REWRITABLE_GROUPS:
            continue
        damage.unrepairable += _tensor_group_problems(store, name)
    return damage


def _condition_problem(store: TrajectoryStore, tid: str) -> str | None:
    what = f"task {tid}, array 'condition'"
    try:
        store.node(f"tasks/{tid}", f"group 'tasks/{tid}'")
        arr = store.node(f"tasks/{tid}/condition", what, (store.meta.condition_dim,))
    except KeyError:
        return f"{what} missing"
    except StoreError as exc:
        return str(exc)
    problems = chunks.verify(arr, what)
    return problems[0] if problems else None


def _tensor_group_problems(store: TrajectoryStore, name: str) -> list[str]:
    try:
        arrays: list[tuple[str, Any]] = list(store.root[name].arrays())
    except Exception as exc:  # noqa: BLE001 - unreadable metadata
        return [f"group '{name}': unreadable metadata ({type(exc).__name__})"]
    out: list[str] = []
    for aname, arr in arrays:
        out += chunks.verify(arr, f"group '{name}', array '{aname}'")
    return out


def rewrite_group(store: TrajectoryStore, name: str) -> None:
    """Replace the metadata of group ``name`` (``runs``, ``tasks``) with an empty group's: its
    children stay; the run index it held is written again when the collect ends."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    data = json.dumps(EMPTY_GROUP).encode()
    sync(
        store.root.store.set(
            f"{name}/zarr.json", default_buffer_prototype().buffer.from_bytes(data)
        )
    )
    store.forget_metadata()


def delete_task(store: TrajectoryStore, tid: str) -> None:
    """Remove a task's group (its metadata may not read), so that it is written anew."""
    from zarr.core.sync import sync

    sync(store.root.store.delete_dir(f"tasks/{tid}"))
    store.forget_metadata()
