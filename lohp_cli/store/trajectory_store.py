"""Read and write the Zarr v3 trajectory store (schema ``lohp.trajectories`` v1).

Layout::

    <store>/                   root attrs: schema, schema_version, compat, layout, config, ...
      extractor/<param>        float32 weights of the frozen feature extractor (head model only)
      init/theta0              float32 [P]: the θ₀ every run starts from (init = "shared" only)
      tasks/<task_id>/condition  float32 [D]; attrs: task spec
      runs/                      attrs: index, every run's attrs in one document (run_index.py)
      runs/<run_id>/weights      float32 [T+1, P], chunked along time
      runs/<run_id>/loss, train_acc  float32 [T+1]
                                 attrs: optimizer hparams, seed, status running|complete, ...

A run is marked ``complete`` by the last write, after every chunk; anything else is partial and is
redone by the next ``collect``. A plain ``zarr.open_group`` reads everything. A location is a
local path (or ``file://`` URL) or an fsspec URL (``s3://``, ``memory://``) opened through zarr's
``FsspecStore``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np

import lohp_cli.store.chunks as chunks
import lohp_cli.store.run_index as run_index
from lohp_cli.artifacts.store import StoreMeta, new_store_meta, read_store_meta
from lohp_cli.config import StoreCodecConfig
from lohp_cli.errors import StoreError
from lohp_cli.store.codecs import codecs_for, describe_codecs, filters_for, serializer_for
from lohp_cli.store.location import list_dir, remote_exists
from lohp_cli.store.location import local_path as _local_path
from lohp_cli.store.location import open_group as _open_group
from lohp_cli.store.schema import STATUS_COMPLETE, STATUS_RUNNING
from lohp_cli.store.writer import RunWriter

# Axis names of every array (zarr v3 ``dimension_names``; xarray and Dask read them).
WEIGHT_DIMS = ("state", "param")
STATE_DIMS = ("state",)
CONDITION_DIMS = ("condition",)
PARAM_DIMS = ("param",)
INIT_GROUP = "init"  # the shared θ₀ of a shared-init store: INIT_GROUP/theta0 [P]


def tensor_dims(name: str, ndim: int) -> tuple[str, ...]:
    """Axis names of a saved module tensor (e.g. the extractor's ``0.weight`` [out, in, kh, kw]):
    prefixed with the tensor's name so that arrays of one group never share an axis name with a
    different length."""
    roles = {1: ("out",), 2: ("out", "in"), 3: ("out", "in", "k"), 4: ("out", "in", "kh", "kw")}
    axes = roles.get(ndim, tuple(f"d{i}" for i in range(ndim)))
    return tuple(f"{name}.{a}" for a in axes)


# Small arrays (conditions, extractor tensors): no compression, only the checksum.
_CHECKSUM_ONLY = StoreCodecConfig(codec="none")


class TrajectoryStore:
    """A trajectory store opened for reading (``mode="r"``) or appending runs (``mode="r+"``)."""

    def __init__(self, location: str, group: Any, meta: StoreMeta | None = None) -> None:
        self.location = location
        self.root = group
        self.meta = read_store_meta(dict(group.attrs), location) if meta is None else meta
        # the run index's entries of complete runs (None: not read yet; {}: none or stale), and
        # whether this process has removed the stored index before changing a run
        self._index: dict[str, run_index.Entry] | None = None
        self._index_removed = False

    # ---- opening ----------------------------------------------------------------------------
    @classmethod
    def open(cls, location: str, mode: str = "r") -> TrajectoryStore:
        """Open an existing store and check its schema; raise :class:`StoreError` otherwise."""
        path = _local_path(location)
        if path is not None:
            if not path.exists():
                raise StoreError(
                    f"No trajectory store at '{location}'. Create one with 'lohp collect --out "
                    f"{location}'."
                )
            if path.is_file():
                raise StoreError(f"'{location}' is a file, not a trajectory store (a directory).")
            if not (path / "zarr.json").is_file():
                raise StoreError(f"'{location}' is not a Zarr v3 store (no zarr.json).")
        return cls(location, _open_group(location, mode))  # validates the root attributes

    @classmethod
    def create_or_open(
        cls, location: str, root_attrs: dict[str, Any]
    ) -> tuple[TrajectoryStore, bool]:
        """Open a store for appending, or create it with ``root_attrs``.

        Returns ``(store, created)``. Refuses a path that is a file or a non-empty directory that
        is not a Zarr store, so nothing of the user's is ever overwritten.
        """
        path = _local_path(location)
        exists = True
        if path is not None:
            if path.is_file():
                raise StoreError(
                    f"Output '{location}' is a file; give a directory path for the store."
                )
            if path.is_dir() and not (path / "zarr.json").exists():
                if any(path.iterdir()):
                    raise StoreError(
                        f"Output '{location}' is a non-empty directory that is not a Zarr store; "
                        "choose another --out."
                    )
                exists = False
            elif not path.exists():
                exists = False
        else:
            exists = remote_exists(location)
        if exists:
            return cls.open(location, mode="r+"), False
        meta = new_store_meta(root_attrs, location)  # what is written is valid
        group = _open_group(location, "w-")
        group.attrs.update(meta.to_json())
        group.require_group("tasks")
        group.require_group("runs")
        return cls(location, group, meta), True

    # ---- root metadata ----------------------------------------------------------------------
    @property
    def attrs(self) -> dict[str, Any]:
        """The root attributes as stored (raw JSON); read them through :attr:`meta`."""
        return dict(self.root.attrs)

    def update_attrs(self, **values: Any) -> None:
        """Set root attributes (and the same fields of :attr:`meta`)."""
        self.root.attrs.update(values)
        self.meta = self.meta.model_copy(update=values)

    # ---- feature extractor ------------------------------------------------------------------
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
                compressors=codecs_for(_CHECKSUM_ONLY),
                dimension_names=tensor_dims(name, data.ndim),
            )
        g.attrs.update({**attrs, "complete": True})

    def load_tensors(self, group_name: str) -> dict[str, np.ndarray]:
        if group_name not in self.root or not self.root[group_name].attrs.get("complete"):
            raise StoreError(f"Store '{self.location}' has no complete '{group_name}' group.")
        g = self.root[group_name]
        return {
            name: chunks.read(arr, ..., f"{self._where()}, group '{group_name}', array '{name}'")
            for name, arr in g.arrays()
        }

    # ---- the shared θ₀ (init = "shared") ----------------------------------------------------
    def has_shared_init(self) -> bool:
        """Whether a complete ``init/theta0`` is saved (it is marked complete last)."""
        try:
            g = self.root[INIT_GROUP]
            return bool(g.attrs.get("complete")) and "theta0" in g
        except KeyError:
            return False

    def write_shared_init(self, theta0: np.ndarray, seed: int) -> None:
        """Save the θ₀ ``[P]`` every run starts from (replaced whole; marked complete last)."""
        if INIT_GROUP in self.root:
            del self.root[INIT_GROUP]
        g = self.root.create_group(INIT_GROUP)
        g.create_array(
            "theta0",
            data=np.ascontiguousarray(theta0, dtype=np.float32),
            compressors=codecs_for(_CHECKSUM_ONLY),
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
        where = f"{self._where()}, array 'init/theta0'"
        theta0 = chunks.read(self.root[INIT_GROUP]["theta0"], ..., where)
        if theta0.shape != (self.meta.param_count,):
            raise StoreError(
                f"Store '{self.location}': 'init/theta0' has shape {theta0.shape}; its runs have "
                f"{self.meta.param_count} parameters."
            )
        return theta0

    def _where(self, rid: str | None = None) -> str:
        return f"store '{self.location}'" + (f", run {rid}" if rid else "")

    # ---- tasks ------------------------------------------------------------------------------
    def has_task(self, task_id: str) -> bool:
        return task_id in self.root["tasks"] and "condition" in self.root["tasks"][task_id]

    def write_task(self, task_id: str, condition: np.ndarray, attrs: dict[str, Any]) -> None:
        g = self.root["tasks"].require_group(task_id)
        g.attrs.update(attrs)
        g.create_array(
            "condition",
            data=np.asarray(condition, dtype=np.float32),
            overwrite=True,
            compressors=codecs_for(_CHECKSUM_ONLY),
            dimension_names=CONDITION_DIMS,
        )

    def task_ids(self) -> list[str]:
        return sorted(k for k in self.root["tasks"].group_keys())

    def condition(self, task_id: str) -> np.ndarray:
        arr = self.root["tasks"][task_id]["condition"]
        return chunks.read(arr, ..., f"{self._where()}, task {task_id}, array 'condition'")

    # ---- runs -------------------------------------------------------------------------------
    def run_ids(self) -> list[str]:
        """Names of all run groups, readable or not (a torn one reads as unreadable later)."""
        path = _local_path(self.location)
        if path is not None:
            runs = path / "runs"
            return sorted(p.name for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []
        names = list_dir(self.root, "runs")
        return sorted(n for n in names if n != "zarr.json" and not n.startswith("."))

    def _indexed(self, listed: list[str] | None = None) -> dict[str, run_index.Entry]:
        """The run index's entries of complete runs, read once (``{}`` if absent or stale)."""
        if self._index is None:
            try:
                doc = self.root["runs"].attrs.get(run_index.INDEX_ATTR)
            except KeyError:
                doc = None
            listed = self.run_ids() if listed is None else listed
            self._index = run_index.complete_entries(doc, listed)
        return self._index

    def _run_group(self, rid: str) -> Any:
        # a path from the root: one read of the run's zarr.json, not also the (large) runs/zarr.json
        try:
            return self.root[f"runs/{rid}"]
        except (json.JSONDecodeError, ValueError, TypeError) as exc:
            raise StoreError(
                f"Run {rid} in '{self.location}' has unreadable metadata ({exc}); check the store "
                "with 'lohp inspect --verify'."
            ) from None

    def index_mismatches(self) -> list[str]:
        """Runs a fresh run index lists as complete whose own attributes say otherwise (each is
        read): damage after the index was written. From then on, reads bypass the index."""
        indexed, self._index = self._indexed(), {}
        return run_index.mismatches(indexed, {rid: self.run_attrs(rid) for rid in indexed})

    def run_attrs(self, rid: str) -> dict[str, Any] | None:
        """A run's attrs, or None when it is missing or its metadata is unreadable."""
        hit = self._indexed().get(rid)
        if hit is not None:
            return dict(hit["attrs"])
        try:
            return dict(self._run_group(rid).attrs)
        except Exception:  # noqa: BLE001 - a half-written run reads as missing
            return None

    def run_status(self, rid: str) -> str | None:
        attrs = self.run_attrs(rid)
        return None if attrs is None else attrs.get("status")

    def complete_runs(self) -> list[str]:
        return [rid for rid, _ in self.iter_runs()]

    def _forget(self, rid: str) -> None:
        """Before this process first changes a run: remove the stored run index (see
        ``run_index``); and forget what the index said of ``rid``."""
        if not self._index_removed:
            runs = self.root["runs"]
            if run_index.INDEX_ATTR in runs.attrs:
                del runs.attrs[run_index.INDEX_ATTR]  # one atomic rewrite of runs/zarr.json
            self._index_removed = True
        if self._index:
            self._index.pop(rid, None)

    def write_run_index(self) -> int:
        """Write the run index of the runs the store has now; returns how many it lists.

        Reads the attributes of every run not already known complete (from the index read at
        open), so a collect that adds a few runs to a large indexed store reads only those.
        """
        listed = self.run_ids()
        known = self._indexed(listed)
        entries: dict[str, run_index.Entry | None] = {}
        for rid in listed:
            hit = known.get(rid)
            if hit is None:
                attrs = self.run_attrs(rid)
                if attrs is not None and attrs.get("status") == STATUS_COMPLETE:
                    hit = run_index.entry(attrs, self.run_format(rid), self.run_codec(rid))
            entries[rid] = hit
        self.root["runs"].attrs[run_index.INDEX_ATTR] = run_index.document(entries)
        self._index = {rid: e for rid, e in entries.items() if e is not None}
        self._index_removed = False
        return len(entries)

    def delete_run(self, rid: str) -> None:
        self._forget(rid)
        runs = self.root["runs"]
        try:
            del runs[rid]
        except KeyError:
            pass
        path = _local_path(self.location)
        if path is not None:  # a run whose metadata was cut short may not be a valid zarr node
            import shutil

            shutil.rmtree(path / "runs" / rid, ignore_errors=True)

    def begin_run(
        self, rid: str, states: int, size: int, codec: StoreCodecConfig, attrs: dict[str, Any]
    ) -> RunWriter:
        """Start (or restart) a run: any earlier partial data of ``rid`` is removed first."""
        self._forget(rid)
        path = _local_path(self.location)
        if path is None or (path / "runs" / rid).exists():
            self.delete_run(rid)
        g = self.root["runs"].create_group(
            rid, attributes={**attrs, "status": STATUS_RUNNING, "steps_written": 0}
        )
        compressors, serializer = codecs_for(codec), serializer_for(codec)
        chunk = min(codec.chunk_steps, states)
        arrays = {}
        arrays["weights"] = g.create_array(
            "weights",
            shape=(states, size),
            chunks=(chunk, size),
            dtype="float32",
            filters=filters_for(codec),
            serializer=serializer,
            compressors=compressors,
            fill_value=np.nan,
            dimension_names=WEIGHT_DIMS,
        )
        for name in ("loss", "train_acc"):
            arrays[name] = g.create_array(
                name,
                shape=(states,),
                chunks=(states,),
                dtype="float32",
                serializer=serializer,  # lossless: the rounding of lossy="bf16" is for weights
                compressors=compressors,
                fill_value=np.nan,
                dimension_names=STATE_DIMS,
            )
        return RunWriter(g, states, size, chunk, arrays)

    def weights(self, rid: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Recorded weights ``[stop - start, P]`` of a run."""
        return self.run_array(rid, "weights", slice(start, stop))

    def run_array(self, rid: str, name: str, selection: Any = ...) -> np.ndarray:
        """``runs/<rid>/<name>[selection]``; a damaged chunk raises ``DamagedChunkError``."""
        arr = self._run_group(rid)[name]
        return chunks.read(arr, selection, f"{self._where(rid)}, array '{name}'")

    def verify_run(self, rid: str) -> list[str]:
        """Read every chunk of a run's arrays: one line per damaged or missing chunk."""
        group = self._run_group(rid)
        problems: list[str] = []
        for name in ("weights", "loss", "train_acc"):
            if name not in group:
                problems.append(f"run {rid}: array '{name}' missing")
                continue
            problems += chunks.verify(group[name], f"run {rid}, array '{name}'")
        return problems

    def verify_metadata(self) -> list[str]:
        """Read every chunk of the task conditions and the saved tensor groups."""
        problems: list[str] = []
        for tid in self.task_ids():
            task = self.root["tasks"][tid]
            if "condition" in task:
                problems += chunks.verify(task["condition"], f"task {tid}, array 'condition'")
        for name, group in self.root.groups():
            if name in ("tasks", "runs"):
                continue
            for aname, arr in group.arrays():
                problems += chunks.verify(arr, f"group '{name}', array '{aname}'")
        return problems

    def run_format(self, rid: str) -> tuple[bool, bool]:
        """``(checksummed, dimension_names)`` of a run's weights array (False for old stores)."""
        hit = self._indexed().get(rid)
        if hit is not None:
            return hit["format"][0], hit["format"][1]
        arr = self._run_group(rid)["weights"]
        return chunks.has_checksums(arr), chunks.has_dimension_names(arr)

    def run_codec(self, rid: str) -> tuple[str, bool]:
        """``(codec pipeline text, lossy)`` of a run's weights array, from its zarr metadata
        (or the run index)."""
        codec = self._indexed().get(rid, {}).get("codec")
        if isinstance(codec, list) and len(codec) == 2:
            return str(codec[0]), bool(codec[1])
        return describe_codecs(self._run_group(rid)["weights"])

    def iter_runs(self, complete_only: bool = True) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(run id, attrs)`` of the (complete) runs in id order; from the run index when it is
        fresh (one listing and one read), else one read per run."""
        listed = self.run_ids()
        self._indexed(listed)
        for rid in listed:
            attrs = self.run_attrs(rid)
            if attrs is None or (complete_only and attrs.get("status") != STATUS_COMPLETE):
                continue
            yield rid, attrs

    def bytes_on_disk(self, sub: str = "") -> int | None:
        """Bytes under ``sub`` (glob, e.g. ``runs/*/weights``) on a local disk; None if remote."""
        path = _local_path(self.location)
        if path is None:
            return None
        dirs = list(path.glob(sub)) if sub else [path]
        return sum(f.stat().st_size for d in dirs for f in d.rglob("*") if f.is_file())
