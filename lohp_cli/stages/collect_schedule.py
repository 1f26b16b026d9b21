"""Where collect's runs go: the plan (task × optimizer × replicate, a shard of it), its blocks,
and the three places blocks run: this process, a pool of local worker processes, or the workers
of a Dask cluster (:func:`run_plans`, a worker's task). Only :mod:`lohp_cli.stages.collect`
imports it."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
from collections.abc import Iterator
from typing import Any

import torch

from lohp_cli.config import CollectConfig
from lohp_cli.runtime import derive_seed, resolve_device, torch_threads
from lohp_cli.stages.runs import BlockPlan, RunContext, RunPlan, group_plans, new_block
from lohp_cli.store import TrajectoryStore, run_id
from lohp_cli.store.location import absolute_location
from lohp_cli.store.schema import STATUS_COMPLETE
from lohp_cli.tasks import Task


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


def run_locally(ctx: RunContext, pending: list[RunPlan]) -> Iterator[tuple[str, float]]:
    """``(run id, wall seconds)`` of each run of ``pending``, collected in this process or, with
    ``workers`` > 1 and more than one block, by a pool of local worker processes. The blocks are
    planned (and blocks that cannot take their runs back removed) before this returns."""
    cfg = ctx.cfg
    # groups small enough that every worker gets some (results do not depend on grouping)
    size = max(1, min(cfg.batch_runs, math.ceil(len(pending) / cfg.workers)))
    blocks = plan_blocks(ctx.store, pending, size)
    if cfg.workers == 1 or len(blocks) <= 1:
        return _run_here(ctx, blocks)
    return _run_in_pool(cfg, ctx.device, blocks)


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


def run_on_cluster(
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
