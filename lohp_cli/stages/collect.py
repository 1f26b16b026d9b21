"""Stage 1: train target networks on source tasks with real optimizers and record trajectories.

The work is a deterministic list of runs (task × optimizer × replicate), each with a seed derived
from (base seed, task, optimizer, replicate), so the result does not depend on worker count, worker
order or sharding. Complete runs are skipped; partial ones are redone from scratch.

Runs of one optimizer train together, up to ``batch_runs`` at a time, in one process
(:mod:`lohp_cli.stages.runs`, :mod:`lohp_cli.optim.batched`); locally, in worker processes or on a
Dask cluster (``scheduler``). On CPU a run's numbers do not depend on the runs beside it, so the
store is the same whatever the grouping, sharding, worker count or resumption.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from pydantic import ValidationError

from lohp_cli.artifacts.base import first_difference
from lohp_cli.config import OPTIMIZERS, CollectConfig, deep_merge, format_validation_error
from lohp_cli.errors import StoreError
from lohp_cli.optim import optimizer_hparams
from lohp_cli.runtime import derive_seed, provenance, resolve_device, torch_threads
from lohp_cli.stages import check_names
from lohp_cli.stages.runs import (  # RunContext, RunPlan, init_target: also imported from here
    BlockPlan,
    RunContext,
    RunPlan,
    group_plans,
    init_target,
    layout_for,
    new_block,
)
from lohp_cli.store import TrajectoryStore, run_id
from lohp_cli.store.frozen import train_frozen
from lohp_cli.store.location import absolute_location, init_lock, local_path
from lohp_cli.store.repair import Damage, delete_task, find_damage, rewrite_group
from lohp_cli.store.schema import STATUS_COMPLETE, parse_run_id, split_run_id
from lohp_cli.store.summary import summarize_store  # noqa: F401 - re-exported
from lohp_cli.tasks import Task, TaskFamily, make_family
from lohp_cli.tasks.layout import flat_params

Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class CollectResult:
    store: str
    planned: int
    skipped: int
    collected: int
    wall_time_s: float
    repaired: dict[str, list[str]] | None = None  # with --repair: groups, conditions, runs

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def plan_runs(cfg: CollectConfig, tasks: list[Task]) -> list[RunPlan]:
    """All runs of the config in a fixed order, restricted to ``cfg.shard`` when set."""
    plans = [
        RunPlan(run_id(t.id, opt, rep), t.id, opt, rep, derive_seed(cfg.seed, t.id, opt, rep))
        for t in tasks
        for opt in cfg.optimizers
        for rep in range(cfg.seeds)
    ]
    if cfg.shard is not None:
        i, n = cfg.shard
        plans = plans[i::n]
    return plans


def plan_blocks(store: TrajectoryStore, pending: list[RunPlan], size: int) -> list[BlockPlan]:
    """The blocks that collect ``pending``: a run that a block lists (not complete there: cut
    short by a crash, or vacated by ``--repair``) is redone in its own row, with the other such
    runs of its block; the rest go into new blocks of up to ``size`` runs of one optimizer. A
    block that cannot take its runs back (its document or an array does not read) is removed
    when it holds no complete run, else left as it is, its runs redone in new blocks. In the
    order of each block's first run in ``pending``."""
    order = {p.run_id: i for i, p in enumerate(pending)}
    back: dict[str, list[RunPlan]] = {}
    fresh: list[RunPlan] = []
    for plan in pending:
        slot = store.slot(plan.run_id)
        if slot is None:
            fresh.append(plan)
        else:
            back.setdefault(slot[0], []).append(plan)
    out: list[BlockPlan] = []
    for bid, plans in back.items():
        if store.block_problem(bid) is None:
            ids = tuple(store.block_runs(bid))
            rows = tuple(ids.index(p.run_id) for p in plans)
            out.append(BlockPlan(bid, ids, rows, tuple(plans), new=False))
            continue
        if not any(store.run_status(rid) == STATUS_COMPLETE for rid in store.block_runs(bid)):
            store.delete_block(bid)
        fresh += plans
    out += [new_block(g) for g in group_plans(sorted(fresh, key=lambda p: order[p.run_id]), size)]
    return sorted(out, key=lambda b: order[b.plans[0].run_id])


def compat_spec(cfg: CollectConfig, family: TaskFamily) -> dict[str, Any]:
    """What every run of one store must share; a store refuses runs made with anything else.

    ``init``/``init_seed`` only for a shared-init store: a per-run store keeps the compat (and
    fingerprint) of the stores made before the option."""
    spec: dict[str, Any] = {
        "family": family.describe(),
        "model": cfg.model.model_dump(mode="json"),
        "steps": cfg.steps,
        "record_every": cfg.record_every,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
    }
    if cfg.init == "shared":
        spec |= {"init": "shared", "init_seed": cfg.shared_init_seed}
    return spec


def _init_store(
    cfg: CollectConfig, family: TaskFamily, device: str, progress: Progress
) -> TrajectoryStore:
    compat = compat_spec(cfg, family)
    layout = layout_for(cfg, family)
    root = {
        "compat": compat,
        "layout": layout.to_json(),
        "param_count": layout.size,
        "condition_dim": family.condition_dim(cfg.model),
        "config": cfg.model_dump(mode="json"),
        "provenance": provenance(device),
    }
    store, created = TrajectoryStore.create_or_open(cfg.out, root)
    if not created:
        diff = first_difference(store.meta.compat.to_json(), compat)
        if diff:
            raise StoreError(
                f"Store '{cfg.out}' was made with other settings ({diff}); use a new --out or "
                "the store's own settings (see 'lohp inspect')."
            )
    if not store.meta.init_complete:
        try:
            seed = cfg.shared_init_seed
            if seed is not None and not store.has_shared_init():  # written once, never redrawn
                progress({"event": "shared_init", "seed": seed})
                store.write_shared_init(flat_params(init_target(cfg, family, seed)).numpy(), seed)
            # on a fixed number of threads, like the runs: the store does not depend on the
            # machine's cores or load (a thread count can change the last bits of the extractor)
            with torch_threads(cfg.threads_per_worker):
                train_frozen(store, cfg.model, family, cfg.seed, progress)
            store.update_attrs(init_complete=True)
        except BaseException:
            if created:  # nothing half-made is left: a re-run, with any settings, starts afresh
                store.destroy()
            raise
    return store


def _check_complete_run(store: TrajectoryStore, plan: RunPlan, cfg: CollectConfig) -> None:
    meta = store.run_meta(plan.run_id)
    want = optimizer_hparams(plan.optimizer, cfg.optim)
    diff = first_difference(None if meta is None else meta.hparams, want)
    if diff:
        raise StoreError(
            f"Run {plan.run_id} in '{cfg.out}' was collected with other hyperparameters ({diff}); "
            "use a new --out or the original settings."
        )


_WORKER: RunContext | None = None


def _worker_init(cfg_json: dict[str, Any], device: str, threads: int, parent: int) -> None:
    global _WORKER
    torch.set_num_threads(threads)
    _WORKER = RunContext(CollectConfig.model_validate(cfg_json), device)
    _WORKER.parent = parent  # type: ignore[attr-defined]


def _worker_run(block: BlockPlan) -> list[tuple[str, float]]:
    assert _WORKER is not None
    if os.getppid() != _WORKER.parent:  # type: ignore[attr-defined]
        os._exit(1)  # the collect process died (e.g. kill -9): stop instead of running on
    return list(_WORKER.execute_blocks([block]))  # written before the result is sent


def collect(cfg: CollectConfig, progress: Progress | None = None) -> CollectResult:
    """Run stage 1 for ``cfg``; safe to re-run (complete runs are skipped)."""
    check_names(cfg)
    emit = progress or (lambda _e: None)
    t0 = time.perf_counter()
    if cfg.repair:
        cfg = repair_config(cfg)
    if cfg.scheduler is None:
        return _collect(cfg, emit, t0, None)
    if cfg.out.startswith("memory://"):
        raise StoreError(
            "A memory:// store lives in one process, out of the Dask workers' reach; give "
            "--scheduler a store path or URL they all reach."
        )
    from lohp_cli.cluster import connect, require

    require(cfg.scheduler)
    if cfg.scheduler.startswith("local:"):  # started only when there are runs to do
        return _collect(cfg, emit, t0, partial(connect, cfg.scheduler))
    with connect(cfg.scheduler) as client:  # first, so that a bad address writes nothing
        return _collect(cfg, emit, t0, partial(nullcontext, client))


def _collect(
    cfg: CollectConfig,
    emit: Progress,
    t0: float,
    cluster: Callable[[], AbstractContextManager[Any]] | None,
) -> CollectResult:
    """:func:`collect`; with ``cluster``, the runs go to the Dask client it opens (opened only
    when some are pending)."""
    device = resolve_device(cfg.device)
    emit({"event": "device", "device": device})
    family = make_family(cfg.task)
    if cfg.workers > 1 and cfg.out.startswith("memory://"):
        raise StoreError("A memory:// store lives in one process; use --workers 1 with it.")
    tasks = family.tasks("source", cfg.tasks)
    plans = plan_runs(cfg, tasks)
    damage = None
    with init_lock(cfg.out):  # shards started at once take turns; the first one creates
        store = _init_store(cfg, family, device, emit)
        store.check_writable()  # a version-1 store: exit 4 before anything changes
        if cfg.repair:
            damage = _find_damage(store, family)
        store.runs_group()  # metadata that does not read: a StoreError naming --repair, now
        ctx = RunContext(cfg, device, family, store)
        if damage is not None:
            plans += _repair(cfg, ctx, damage, {p.run_id for p in plans}, emit)
        needed = {p.task_id for p in plans}
        with torch_threads(cfg.threads_per_worker):  # as the runs encode their training images
            for task in tasks:
                if task.id in needed and not store.has_task(task.id):
                    # only the support set is encoded here; the runs encode the training images
                    store.write_task(
                        task.id,
                        ctx.condition(task.id),
                        {**task.describe(), "split": task.split, "family": family.name},
                    )

    pending = []
    for plan in plans:
        if store.run_status(plan.run_id) == "complete":
            _check_complete_run(store, plan, cfg)
        else:
            pending.append(plan)
    skipped = len(plans) - len(pending)
    emit({"event": "plan", "planned": len(plans), "skipped": skipped, "pending": len(pending)})

    done = 0
    with ExitStack() as stack:
        if cluster is not None and pending:
            walls = _run_on_cluster(stack.enter_context(cluster()), cfg, store, pending)
        else:
            # groups small enough that every worker gets some (results do not depend on grouping)
            size = max(1, min(cfg.batch_runs, math.ceil(len(pending) / cfg.workers)))
            blocks = plan_blocks(store, pending, size)
            if cfg.workers == 1 or len(blocks) <= 1:
                walls = _run_here(ctx, blocks)
            else:
                walls = _run_in_pool(cfg, device, blocks)
        stack.callback(walls.close)  # on a failure: stop the pool, cancel the cluster's tasks
        for rid, wall in walls:
            done += 1
            event = {"event": "run", "run_id": rid, "wall_s": wall, "done": done}
            emit({**event, "pending": len(pending)})
    # the run index, so that readers list the runs with one read (an interrupted collect leaves
    # none, and readers then read each run)
    store.write_run_index()
    wall = round(time.perf_counter() - t0, 3)
    repaired = None if damage is None else damage.to_json()
    return CollectResult(cfg.out, len(plans), skipped, done, wall, repaired)


# ---- --repair ---------------------------------------------------------------------------------
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


def _find_damage(store: TrajectoryStore, family: TaskFamily) -> Damage:
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


def _repair(
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
        task_id, opt, rep = parts = parse_run_id(rid)  # each checked by _find_damage
        store.delete_run(rid)
        emit({"event": "repaired", "what": f"run {rid}", "why": why})
        if rid not in planned:
            extra.append(RunPlan(rid, task_id, opt, rep, derive_seed(cfg.seed, *parts)))
    return extra


def _run_here(ctx: RunContext, blocks: list[BlockPlan]) -> Iterator[tuple[str, float]]:
    """``(run id, wall seconds)`` of each run, collected in this process a block at a time (the
    next block trains while the last one is written)."""
    with torch_threads(ctx.cfg.threads_per_worker):
        yield from ctx.execute_blocks(blocks)


def _run_in_pool(
    cfg: CollectConfig, device: str, blocks: list[BlockPlan]
) -> Iterator[tuple[str, float]]:
    """``(run id, wall seconds)`` of each run, collected by ``cfg.workers`` local processes a
    block at a time."""
    mpctx = mp.get_context("spawn")
    init_args = (cfg.model_dump(mode="json"), device, cfg.threads_per_worker, os.getpid())
    with mpctx.Pool(cfg.workers, initializer=_worker_init, initargs=init_args) as pool:
        for walls in pool.imap_unordered(_worker_run, blocks):
            yield from walls
        pool.close()  # a clean shutdown: terminate() at exit leaks semaphores
        pool.join()


def _run_on_cluster(
    client: Any, cfg: CollectConfig, store: TrajectoryStore, pending: list[RunPlan]
) -> Iterator[tuple[str, float]]:
    """``(run id, wall seconds)`` of each run, collected by the workers of a Dask cluster.

    One task per group of runs (batched on the worker; at most ``batch_runs``, and small enough
    that each worker gets about four, so that a dead worker costs little); the workers write into
    the store themselves, so its location is sent absolute. A task whose worker dies is re-run
    elsewhere, its runs not yet complete from scratch (``begin_run`` removes what the dead one
    wrote)."""
    from lohp_cli.cluster import map_unordered

    workers = max(1, len(client.scheduler_info().get("workers", {})))
    size = max(1, min(cfg.batch_runs, math.ceil(len(pending) / (4 * workers))))
    cfg_json = cfg.model_copy(update={"out": absolute_location(cfg.out)}).model_dump(mode="json")
    items = {
        block.label: (cfg_json, store.meta.created_at, block)
        for block in plan_blocks(store, pending, size)
    }
    for walls in map_unordered(client, run_plans, items, "lohp-collect"):
        yield from walls


_CONTEXTS: dict[str, RunContext] = {}  # per worker process: one per (config, store)


def run_plans(
    cfg_json: dict[str, Any], created_at: str, block: BlockPlan
) -> list[tuple[str, float]]:
    """Collect ``block`` into the config's store from this process (a Dask worker's task):
    ``[(run id, wall seconds)]``.

    The RunContext is built once per process, config and store (``created_at`` tells a store
    made again at the same place apart). A run already complete is kept: a task is re-run when
    the worker holding its result died before the result was sent, or when its worker died
    halfway (its block's runs not complete are redone in their rows)."""
    key = json.dumps([cfg_json, created_at], sort_keys=True)
    ctx = _CONTEXTS.get(key)
    if ctx is None:
        if len(_CONTEXTS) >= 4:
            _CONTEXTS.clear()
        cfg = CollectConfig.model_validate(cfg_json)
        ctx = _CONTEXTS[key] = RunContext(cfg, resolve_device(cfg.device))
    torch.set_num_threads(ctx.cfg.threads_per_worker)
    store = ctx.store
    store.forget_metadata()  # another worker may have written since
    out, todo = [], []
    for plan in block.plans:
        meta = store.run_meta(plan.run_id)
        if meta is not None and meta.status == STATUS_COMPLETE:
            out.append((plan.run_id, float(meta.wall_time_s or 0.0)))
        else:
            todo.append(plan)
    if not todo:
        return out
    blocks = [block] if len(todo) == len(block.plans) and block.new else []
    if not blocks:  # a block cut short: its runs not complete, back in their rows
        blocks = plan_blocks(store, todo, len(todo))
    return out + list(ctx.execute_blocks(blocks, depth=0))
