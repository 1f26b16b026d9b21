"""The trajectory store's groups other than the runs: the task conditions (``tasks/``), the
frozen parts of the target model (``extractor/``, …) and the shared θ₀ (``init/theta0``).

:class:`StoreGroups` is a part of :class:`lohp_cli.store.trajectory_store.TrajectoryStore`; every
array is opened through :meth:`StoreGroups.node`, so metadata that does not read and an array of
another shape than the store's layout are StoreErrors naming the array, not a crash.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import lohp_cli.store.chunks as chunks
from lohp_cli.artifacts.store import StoreMeta
from lohp_cli.config import StoreCodecConfig
from lohp_cli.errors import StoreError
from lohp_cli.store.codecs import codecs_for
from lohp_cli.store.location import list_dir
from lohp_cli.store.location import local_path as _local_path

# Axis names of every array (zarr v3 ``dimension_names``; xarray and Dask read them).
WEIGHT_DIMS = ("state", "param")
STATE_DIMS = ("state",)
CONDITION_DIMS = ("condition",)
PARAM_DIMS = ("param",)
INIT_GROUP = "init"  # the shared θ₀ of a shared-init store: INIT_GROUP/theta0 [P]
REPAIR_HINT = "re-run 'lohp collect --out {loc} --repair' to redo it"

# Small arrays (conditions, extractor tensors): no compression, only the checksum.
CHECKSUM_ONLY = StoreCodecConfig(codec="none")


def tensor_dims(name: str, ndim: int) -> tuple[str, ...]:
    """Axis names of a saved module tensor (e.g. the extractor's ``0.weight`` [out, in, kh, kw]):
    prefixed with the tensor's name so that arrays of one group never share an axis name with a
    different length."""
    roles = {1: ("out",), 2: ("out", "in"), 3: ("out", "in", "k"), 4: ("out", "in", "kh", "kw")}
    axes = roles.get(ndim, tuple(f"d{i}" for i in range(ndim)))
    return tuple(f"{name}.{a}" for a in axes)


class StoreGroups:
    """Tasks, tensor groups and the shared θ₀ of a trajectory store (a part of it)."""

    location: str
    root: Any
    meta: StoreMeta
    _conditions: dict[str, Any]  # task id -> its opened and checked condition array

    def _where(self, rid: str | None = None) -> str:
        return f"store '{self.location}'" + (f", run {rid}" if rid else "")

    def repair_hint(self) -> str:
        return REPAIR_HINT.format(loc=self.location)

    def node(
        self, path: str, what: str, shape: tuple[int, ...] | None = None, hint: str | None = None
    ) -> Any:
        """The group or array at ``path`` (``what`` names it in errors: ``"run r, array
        'weights'"``); with ``shape``, an array of that shape and of dtype float32. A missing
        node is a KeyError; unreadable metadata or another shape a StoreError ending in ``hint``
        (default: how ``collect --repair`` redoes it)."""
        hint = self.repair_hint() if hint is None else hint
        try:
            node = self.root[path]
        except Exception as exc:  # noqa: BLE001 - json, zarr metadata and type errors alike
            if isinstance(exc, KeyError) and exc.args == (path,):
                raise  # no such node
            reason = " ".join(str(exc).split())[:200]
            raise StoreError(
                f"Store '{self.location}': {what} has unreadable metadata "
                f"({type(exc).__name__}: {reason}); {hint}."
            ) from None
        if shape is not None:
            if not hasattr(node, "dtype"):
                raise StoreError(f"Store '{self.location}': {what} is not an array; {hint}.")
            found, dtype = tuple(node.shape), str(node.dtype)
            if found != shape or dtype != "float32":
                raise StoreError(
                    f"Store '{self.location}': {what} is {dtype} of shape {found}; the store's "
                    f"layout needs float32 of shape {shape}; {hint}."
                )
        return node

    def _list(self, prefix: str) -> list[str]:
        """Names of the sub-groups under ``prefix`` (one listing, readable or not)."""
        path = _local_path(self.location)
        if path is not None:
            d = path / prefix
            return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []
        names = list_dir(self.root, prefix)
        return sorted(n for n in names if n != "zarr.json" and not n.startswith("."))

    def group_names(self) -> list[str]:
        """The top-level groups (tasks, runs, the tensor groups, init)."""
        return self._list("")

    # ---- tensor groups (the frozen parts of the target model) -------------------------------
    def save_tensors(self, group_name: str, tensors: dict[str, np.ndarray], attrs: dict) -> None:
        """Write named float32 arrays into a sub-group (replaced whole)."""
        if group_name in self.root:
            del self.root[group_name]
        g = self.root.create_group(group_name)
        for name, arr in tensors.items():
            data = np.ascontiguousarray(arr, dtype=np.float32)
            g.create_array(
                name,
                data=data,
                compressors=codecs_for(CHECKSUM_ONLY),
                dimension_names=tensor_dims(name, data.ndim),
            )
        g.attrs.update({**attrs, "complete": True})

    def load_tensors(self, group_name: str) -> dict[str, np.ndarray]:
        where = f"group '{group_name}'"
        try:
            g = self.node(group_name, where, hint="collect it again into a new --out")
            complete = g.attrs.get("complete") is True
        except KeyError:
            complete = False
        if not complete:
            raise StoreError(
                f"Store '{self.location}' has no complete '{group_name}' group; collect it again "
                "into a new --out."
            )
        return {
            name: chunks.read(arr, ..., f"{self._where()}, {where}, array '{name}'")
            for name, arr in g.arrays()
        }

    # ---- the shared θ₀ (init = "shared") ----------------------------------------------------
    def has_shared_init(self) -> bool:
        """Whether a complete ``init/theta0`` is saved (it is marked complete last)."""
        try:
            g = self.root[INIT_GROUP]
            return bool(g.attrs.get("complete")) and "theta0" in g
        except Exception:  # noqa: BLE001 - missing or unreadable: not saved
            return False

    def write_shared_init(self, theta0: np.ndarray, seed: int) -> None:
        """Save the θ₀ ``[P]`` every run starts from (replaced whole; marked complete last)."""
        if INIT_GROUP in self.root:
            del self.root[INIT_GROUP]
        g = self.root.create_group(INIT_GROUP)
        g.create_array(
            "theta0",
            data=np.ascontiguousarray(theta0, dtype=np.float32),
            compressors=codecs_for(CHECKSUM_ONLY),
            dimension_names=PARAM_DIMS,
        )
        g.attrs.update({"seed": seed, "complete": True})

    def shared_init(self) -> np.ndarray | None:
        """The θ₀ ``[P]`` every run of a shared-init store started from; None for a store whose
        runs start from their own draws. A shared-init store without it is damaged."""
        if not self.meta.compat.shared_init:
            return None
        if not self.has_shared_init():
            raise StoreError(
                f"Store '{self.location}' starts every run from a shared θ₀ but has no complete "
                "'init/theta0'; collect it again into a new --out."
            )
        what = "array 'init/theta0'"
        hint = "collect it again into a new --out"
        arr = self.node(f"{INIT_GROUP}/theta0", what, (self.meta.param_count,), hint)
        return chunks.read(arr, ..., f"{self._where()}, {what}")

    # ---- tasks ------------------------------------------------------------------------------
    def has_task(self, task_id: str) -> bool:
        """Whether the task's condition is saved (readable or not)."""
        try:
            self.node(f"tasks/{task_id}/condition", f"task {task_id}, array 'condition'")
        except KeyError:
            return False
        except StoreError:
            return True
        return True

    def write_task(self, task_id: str, condition: np.ndarray, attrs: dict[str, Any]) -> None:
        """Write a task's condition ``[D]`` and attributes (both replaced)."""
        self._conditions.pop(task_id, None)
        g = self.root["tasks"].require_group(task_id)
        g.attrs.update(attrs)
        g.create_array(
            "condition",
            data=np.asarray(condition, dtype=np.float32),
            overwrite=True,
            compressors=codecs_for(CHECKSUM_ONLY),
            dimension_names=CONDITION_DIMS,
        )

    def task_ids(self) -> list[str]:
        """Ids of the task groups (one listing)."""
        return self._list("tasks")

    def condition_array(self, task_id: str) -> Any:
        """The zarr array of a task's condition, checked against the store's ``[D]`` (opened
        once); a missing one or one of another shape is a StoreError."""
        arr = self._conditions.get(task_id)
        if arr is None:
            what = f"task {task_id}, array 'condition'"
            try:
                arr = self.node(f"tasks/{task_id}/condition", what, (self.meta.condition_dim,))
            except KeyError:
                raise StoreError(
                    f"Store '{self.location}' has no condition of task {task_id}, which its runs "
                    f"name; {self.repair_hint()}."
                ) from None
            self._conditions[task_id] = arr
        return arr

    def condition(self, task_id: str) -> np.ndarray:
        """A task's condition ``[D]``; a missing or damaged one is a StoreError."""
        arr = self.condition_array(task_id)
        return chunks.read(arr, ..., f"{self._where()}, task {task_id}, array 'condition'")
