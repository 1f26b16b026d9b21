"""Stage 1: train target networks on source tasks with real optimizers and record trajectories.

The work is a deterministic list of runs (task × optimizer × replicate), each with a seed derived
from (base seed, task, optimizer, replicate), so the result does not depend on worker count, worker
order or sharding. Complete runs are skipped; partial ones are redone from scratch.

Runs of one optimizer train together, up to ``batch_runs`` at a time, in one process
(:mod:`lohp_cli.stages.runs`, :mod:`lohp_cli.optim.batched`); locally, in worker processes or on a
Dask cluster (``scheduler``; :mod:`lohp_cli.stages.collect_schedule`). On CPU a run's numbers do
not depend on the runs beside it, so the store is the same whatever the grouping, sharding, worker
count or resumption. ``--repair``: :mod:`lohp_cli.stages.collect_repair`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any

from lohp_cli.artifacts.base import first_difference
from lohp_cli.config import CollectConfig
from lohp_cli.errors import StoreError
from lohp_cli.optim import optimizer_hparams
from lohp_cli.runtime import provenance, resolve_device, torch_threads
from lohp_cli.stages import check_names
from lohp_cli.stages.collect_repair import check_damage, repair, repair_config
from lohp_cli.stages.collect_schedule import (
    plan_runs,
    run_locally,
    run_on_cluster,
)
from lohp_cli.stages.runs import (
    RunContext,
    RunPlan,
    init_target,
    layout_for,
)
from lohp_cli.store import TrajectoryStore
from lohp_cli.store.frozen import train_frozen
from lohp_cli.store.location import init_lock
from lohp_cli.tasks import TaskFamily, make_family
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
            damage = check_damage(store, family)
        store.runs_group()  # metadata that does not read: a StoreError naming --repair, now
        ctx = RunContext(cfg, device, family, store)
        if damage is not None:
            plans += repair(cfg, ctx, damage, {p.run_id for p in plans}, emit)
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
            walls = run_on_cluster(stack.enter_context(cluster()), cfg, store, pending)
        else:
            walls = run_locally(ctx, pending)
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
