"""What ``lohp inspect`` reports of a trajectory store, and what ``--verify`` checks: every
complete run's attributes and chunks, the run index, the task conditions and the tensor groups."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

import lohp_cli.store.chunks as chunks
from lohp_cli.errors import StoreError
from lohp_cli.store.blocks import damaged_rows
from lohp_cli.store.trajectory_store import RUN_ARRAYS, TrajectoryStore


def verify_run(store: TrajectoryStore, rid: str) -> list[str]:
    """Read every chunk of a run's arrays: one line per missing, misshapen or damaged one."""
    return verify_runs(store, [rid])[rid]


def verify_runs(store: TrajectoryStore, rids: list[str]) -> dict[str, list[str]]:
    """Run id -> one line per missing, misshapen or damaged chunk or array holding it. A
    block's chunks are read once for all its runs; a damaged chunk names every run it holds."""
    out: dict[str, list[str]] = {rid: [] for rid in rids}
    by_block: dict[str, list[str]] = {}
    for rid in rids:
        slot = store.slot(rid)
        if slot is None:  # a version-1 run group
            for name in RUN_ARRAYS:
                try:
                    arr, _ = store.run_array_meta(rid, name)
                except StoreError as exc:
                    out[rid].append(str(exc))
                    continue
                out[rid] += chunks.verify(arr, f"run {rid}, array '{name}'")
        else:
            by_block.setdefault(slot[0], []).append(rid)
    for bid, members in by_block.items():
        damaged: dict[int, list[str]] = {}
        for name in RUN_ARRAYS:
            try:
                arr, _ = store.run_array_meta(members[0], name)
            except StoreError as exc:
                for rid in members:
                    out[rid].append(str(exc))
                continue
            for row, line in damaged_rows(arr, f"{RUN_MARK}, array '{name}' (block {bid})").items():
                damaged.setdefault(row, []).append(line)
        for rid in members:
            row = store.slot(rid)[1]  # type: ignore[index]
            out[rid] += [line.replace(RUN_MARK, f"run {rid}") for line in damaged.get(row, [])]
    return out


RUN_MARK = "\x00run"  # replaced by each run's name in the lines of a shared chunk


def verify_metadata(store: TrajectoryStore) -> list[str]:
    """The runs group, the run index's entries, every chunk of the task conditions and of the
    saved tensor groups: one line per problem."""
    problems: list[str] = []
    if store.runs_group_problem:
        problems.append(store.runs_group_problem)
    for rid, why in sorted(store.index_rejected.items()):
        problems.append(
            f"run {rid}: its run index entry is ignored ({why}); the run was read itself; re-run "
            "'lohp collect' to rewrite the index"
        )
    for tid in store.task_ids():
        what = f"task {tid}, array 'condition'"
        try:
            arr = store.node(f"tasks/{tid}/condition", what, (store.meta.condition_dim,))
        except KeyError:
            problems.append(f"{what} missing; {store.repair_hint()}")
            continue
        except StoreError as exc:
            problems.append(str(exc))
            continue
        problems += chunks.verify(arr, what)
    for name in store.group_names():
        if name in ("tasks", store.layout.container):
            continue
        try:
            arrays = list(store.root[name].arrays())
        except Exception as exc:  # noqa: BLE001 - unreadable group metadata
            problems.append(f"group '{name}': unreadable metadata ({type(exc).__name__})")
            continue
        for aname, arr in arrays:
            problems += chunks.verify(arr, f"group '{name}', array '{aname}'")
    return problems


def _share(n: int, total: int) -> str:
    """``all``, ``none`` or ``n of total`` (complete runs with a storage feature)."""
    if n == total:
        return "all" if total else "none"
    return "none" if n == 0 else f"{n} of {total}"


@dataclass
class RunCensus:
    """The runs of a store by optimizer and status, and what the complete ones are written
    with (checksums, dimension names, weight codecs, lossy rounding)."""

    runs: dict[str, dict[str, int]] = field(default_factory=dict)  # optimizer -> status -> n
    complete: int = 0
    with_checksums: int = 0
    with_dims: int = 0
    lossy: int = 0
    codecs: dict[str, int] = field(default_factory=dict)  # weight codec -> complete runs
    to_verify: list[tuple[str, str]] = field(default_factory=list)  # (run id, optimizer)


def count_runs(store: TrajectoryStore, verify: bool, problems: list[str]) -> RunCensus:
    """Every run's status and format; with ``verify`` what does not read goes to ``problems``
    (without it, a complete run whose format does not read raises) and the complete runs to
    verify are listed."""
    census = RunCensus()
    for rid in store.run_ids():
        readable, run, why = store.run_check(rid)
        status = "unreadable" if not readable else "invalid" if run is None else run.status
        opt = run.optimizer if run is not None else "?"
        census.runs.setdefault(opt, {}).setdefault(status, 0)
        census.runs[opt][status] += 1
        if verify and why:
            problems.append(f"{why}; re-run 'lohp collect' to redo the run")
        if run is None or not run.complete:
            continue
        census.complete += 1
        try:
            checksummed, named = store.run_format(rid)
            codec, rounded = store.run_codec(rid)
        except StoreError as exc:
            if not verify:
                raise
            problems.append(str(exc))
            continue
        census.with_checksums += checksummed
        census.with_dims += named
        census.codecs[codec] = census.codecs.get(codec, 0) + 1
        census.lossy += rounded
        if verify:
            census.to_verify.append((rid, opt))
    return census


def verify_complete_runs(
    store: TrajectoryStore, to_verify: list[tuple[str, str]], problems: list[str]
) -> dict[str, list[float]]:
    """Read and check each ``(run id, optimizer)``: its damage and non-finite weights go to
    ``problems``; returns each optimizer's final training accuracies of the undamaged runs."""
    final_acc: dict[str, list[float]] = {}
    if not to_verify:
        return final_acc
    damage = verify_runs(store, [rid for rid, _ in to_verify])
    for rid, opt in to_verify:
        problems += damage[rid]
        if damage[rid]:
            continue
        if not np.isfinite(store.weights(rid)).all():
            problems.append(f"run {rid}: non-finite weights")
        acc = store.run_array(rid, "train_acc")
        final_acc.setdefault(opt, []).append(float(acc[-1]))
    return final_acc


def summarize_store(location: str, verify: bool = False) -> dict[str, Any]:
    """A JSON-able summary of a store; with ``verify``, every complete run is read and checked.

    Runs whose attributes do not read count as ``unreadable``, those that do not validate as
    ``invalid`` (both under optimizer ``"?"``: what they say of themselves is not trusted); with
    ``verify`` an invalid run is a problem (a run cut short by a crash is unreadable, not
    invalid)."""
    store = TrajectoryStore.open(location, mode="r")
    meta = store.meta
    compat = meta.compat
    # --verify reads every run's own attributes (not the run index) and checks the index by them
    problems: list[str] = list(store.index_mismatches().values()) if verify else []
    census = count_runs(store, verify, problems)
    final_acc = verify_complete_runs(store, census.to_verify, problems)
    complete = census.complete
    size = store.bytes_on_disk()
    weight_bytes = store.weight_bytes_on_disk()
    raw = complete * compat.states * meta.param_count * 4
    out: dict[str, Any] = {
        "store": location,
        "schema": meta.schema_,
        "schema_version": meta.schema_version,
        "layout": "blocks" if store.blocks else "run groups",
        "family": compat.family.name,
        "ways": compat.family.ways,
        "test_domain": compat.family.test_domain,
        "model": compat.model.name,
        "param_count": meta.param_count,
        "condition_dim": meta.condition_dim,
        "steps": compat.steps,
        "record_every": compat.record_every,
        "recorded_states": compat.states,
        "init": compat.init,
        "tasks": len(store.task_ids()),
        "runs": census.runs,
        "complete_runs": complete,
        "bytes_on_disk": size,
        "weight_bytes_on_disk": weight_bytes,
        "raw_weight_bytes": raw,
        "compression_ratio": round(raw / weight_bytes, 3) if weight_bytes else None,
        # runs written before lohp 0.2 have neither (they still read; damage is found only where
        # decompression fails)
        "checksums": _share(census.with_checksums, complete),
        "dimension_names": _share(census.with_dims, complete),
        "weight_codecs": census.codecs,  # codec pipeline of the weights -> complete runs using it
        "lossy": _share(census.lossy, complete),  # runs whose weights were rounded (lossy = "bf16")
        "created_at": meta.created_at,
        "lohp_version": meta.provenance.get("lohp_version"),
    }
    if verify:
        problems += verify_metadata(store)
        out["verified"] = not problems
        out["problems"] = problems
        out["final_train_acc"] = {k: round(float(np.mean(v)), 4) for k, v in final_acc.items()}
    return out
