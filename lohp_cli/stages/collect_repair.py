"""``lohp collect --repair``: the config it runs with (the store's own settings), what it finds
damaged and can redo, and the rewriting and deleting before the runs are collected again. Only
:mod:`lohp_cli.stages.collect` imports it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from lohp_cli.config import OPTIMIZERS, CollectConfig, deep_merge, format_validation_error
from lohp_cli.errors import StoreError
from lohp_cli.runtime import derive_seed, torch_threads
from lohp_cli.stages.runs import RunContext, RunPlan
from lohp_cli.store import TrajectoryStore
from lohp_cli.store.location import local_path
from lohp_cli.store.repair import Damage, delete_task, find_damage, rewrite_group
from lohp_cli.store.schema import parse_run_id, split_run_id
from lohp_cli.tasks import TaskFamily

Progress = Callable[[dict[str, Any]], None]

# how a collect runs, not what it makes: taken from the command, never from the store's settings
EXECUTION_KEYS = ("out", "workers", "batch_runs", "threads_per_worker", "shard", "scheduler",
                  "device", "repair")  # fmt: skip


def repair_config(cfg: CollectConfig) -> CollectConfig:
    """The config of ``collect --repair``: the store's own settings (its ``config``), with the
    ones given explicitly (``cfg.model_fields_set``) on top, and how to run from ``cfg``."""
    path = local_path(cfg.out)
    if path is not None and not (path / "zarr.json").is_file():
        raise StoreError(
            f"No trajectory store at '{cfg.out}': nothing to repair. Make one with 'lohp collect "
            f"--out {cfg.out}'."
        )
    stored = TrajectoryStore.open(cfg.out).meta.config
    base = {k: v for k, v in stored.items() if k not in EXECUTION_KEYS}
    try:
        return CollectConfig.model_validate(deep_merge(base, cfg.model_dump(exclude_unset=True)))
    except ValidationError as exc:
        raise StoreError(
            f"Store '{cfg.out}': its settings (root attribute 'config') do not read "
            f"({format_validation_error(exc)}); give them with --config to repair it."
        ) from None


def check_damage(store: TrajectoryStore, family: TaskFamily) -> Damage:
    """What --repair redoes; a StoreError (or the family's ConfigError for a task id it cannot
    make) for what it cannot, before anything changes. Group metadata that does not read is
    rewritten at once (the runs and conditions read through it)."""
    damage = find_damage(store)
    if damage.unrepairable:
        raise StoreError(
            f"Store '{store.location}': cannot repair {damage.unrepairable[0]} (the frozen parts "
            "and the shared θ₀ are made once per store and every run depends on them); collect "
            "the store again into a new --out."
        )
    for rid, why in sorted(damage.runs.items()):
        parts = split_run_id(rid)
        if parts is None or parts[1] not in OPTIMIZERS:
            raise StoreError(
                f"Store '{store.location}': run {rid} is damaged ({why}) and its id does not say "
                f"which run it is; {store.removal_hint(rid)}."
            )
        family.task(parts[0])
    for tid in damage.conditions:
        family.task(tid)
    for name in damage.groups:
        rewrite_group(store, name)
    return damage


def repair(
    cfg: CollectConfig, ctx: RunContext, damage: Damage, planned: set[str], emit: Progress
) -> list[RunPlan]:
    """Rewrite the damaged conditions and delete the damaged runs; returns the plans of the
    deleted runs that ``cfg``'s plan lacks (made from their run ids)."""
    store, family = ctx.store, ctx.family
    for name in damage.groups:
        emit({"event": "repaired", "what": f"group '{name}' metadata"})
    for tid, why in sorted(damage.conditions.items()):
        task = family.task(tid)
        delete_task(store, tid)
        attrs = {**task.describe(), "split": task.split, "family": family.name}
        with torch_threads(cfg.threads_per_worker):
            store.write_task(tid, ctx.condition(tid), attrs)
        emit({"event": "repaired", "what": f"condition of task {tid}", "why": why})
    extra = []
    for rid, why in sorted(damage.runs.items()):
        task_id, opt, rep = parts = parse_run_id(rid)  # each checked by check_damage
        store.delete_run(rid)
        emit({"event": "repaired", "what": f"run {rid}", "why": why})
        if rid not in planned:
            extra.append(RunPlan(rid, task_id, opt, rep, derive_seed(cfg.seed, *parts)))
    return extra
