"""Executing collect's runs: one process's context (family, store, frozen parts, task data) and
blocks of runs (:class:`BlockPlan`, one block of the store each): runs of one optimizer trained
together (:mod:`lohp_cli.optim.batched`), or one after another through the training loop (cnn
and lora runs, ``batch_runs = 1``), written through one :class:`BlockWriter` per block on a
background thread, so the next block trains while this one is encoded and written.

On CPU a run's numbers do not depend on the runs beside it (a group cut short is redone exactly);
they equal the one-run path's (``batch_runs = 1``) to float tolerance.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lohp_cli.config import CollectConfig
from lohp_cli.errors import DataError
from lohp_cli.optim import build_optimizer, optimizer_hparams
from lohp_cli.optim.batched import batchable, train_batched
from lohp_cli.optim.loop import train_loop
from lohp_cli.runtime import derive_seed
from lohp_cli.store import TrajectoryStore
from lohp_cli.store.blocks import block_id
from lohp_cli.store.frozen import load_frozen
from lohp_cli.store.writer import BlockTarget, BlockWriter, WriteSink
from lohp_cli.tasks import TaskFamily, make_family
from lohp_cli.tasks.layout import ParamLayout, flat_params, load_flat, trainable_parameters
from lohp_cli.tasks.models import Frozen, build_target

TASK_CACHE_MIN = 16  # tasks whose training inputs a RunContext keeps, at the least


@dataclass(frozen=True)
class RunPlan:
    """One run to collect."""

    run_id: str
    task_id: str
    optimizer: str
    replicate: int
    seed: int


@dataclass(frozen=True)
class BlockPlan:
    """Runs written together into one block: ``plans`` into rows ``rows`` of block
    ``block_id``, whose runs are ``run_ids`` in row order; ``new``: the block is created (else it
    exists and these rows, not complete, are rewritten in place)."""

    block_id: str
    run_ids: tuple[str, ...]
    rows: tuple[int, ...]
    plans: tuple[RunPlan, ...]
    new: bool = True

    @property
    def label(self) -> str:
        """A short name for logs and Dask task keys."""
        first = self.plans[0].run_id
        return first + (f"+{len(self.plans) - 1}" if len(self.plans) > 1 else "")


def new_block(plans: Sequence[RunPlan]) -> BlockPlan:
    """A new block holding ``plans`` in their order."""
    ids = tuple(p.run_id for p in plans)
    return BlockPlan(block_id(ids), ids, tuple(range(len(ids))), tuple(plans))


def init_target(
    cfg: CollectConfig, family: TaskFamily, seed: int, frozen: Frozen | None = None
) -> torch.nn.Module:
    """A freshly initialised target model, its initial weights drawn from ``seed``, with the
    store's ``frozen`` parts in it (without them: for its initial θ only)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_target(cfg.model, family.input_shape, family.ways, frozen)


def layout_for(cfg: CollectConfig, family: TaskFamily) -> ParamLayout:
    return ParamLayout.of(build_target(cfg.model, family.input_shape, family.ways))


class RunContext:
    """What a process needs to execute runs: the family, the store, the model's frozen parts,
    the tasks."""

    def __init__(
        self,
        cfg: CollectConfig,
        device: str,
        family: TaskFamily | None = None,
        store: TrajectoryStore | None = None,
    ) -> None:
        self.cfg = cfg
        self.device = device
        self.family = family or make_family(cfg.task)
        self.store = store or TrajectoryStore.open(cfg.out, mode="r+")
        self.frozen = load_frozen(self.store, cfg.model, self.family)
        shared = self.store.shared_init()  # [P] of a shared-init store, else None
        self.theta0 = None if shared is None else torch.from_numpy(shared)
        # training inputs by task id, least recently used first: a block's runs, and the blocks
        # of the other optimizers that follow it over the same tasks, find theirs here
        self._train: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.cache_tasks = max(TASK_CACHE_MIN, cfg.batch_runs)  # at least one block's tasks
        # cnn (BatchNorm buffers) and lora (a frozen backbone inside) take the one-run path
        model = build_target(cfg.model, self.family.input_shape, self.family.ways, self.frozen)
        self.batchable = batchable(model)
        self.layout_size = ParamLayout.of(model).size  # P

    def train_set(self, task_id: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_train [N, *in], y_train [N])`` of a task on the device, as the target model sees
        them (:meth:`~lohp_cli.tasks.families.Task.train_set`: only the training images go
        through the frozen extractor). Encoded once per process while the task's runs last: kept
        for the :attr:`cache_tasks` tasks used last (``max(16, batch_runs)``; its memory is that
        many training splits, e.g. ``64 × 500 × 64`` floats = 8 MB for ``head``, 64 × 1.5 MB for
        ``mlp`` on Fashion-MNIST). Runs are planned task by task and a block's tasks are those of
        the other optimizers' blocks beside it, so a process encodes each of its tasks once."""
        hit = self._train.get(task_id)
        if hit is not None:
            self._train.move_to_end(task_id)
            return hit
        x, y = self.family.task(task_id).train_set(self.cfg.model, self.frozen)
        hit = self._train[task_id] = (x.to(self.device), y.to(self.device))
        if len(self._train) > self.cache_tasks:
            self._train.popitem(last=False)
        return hit

    def condition(self, task_id: str) -> np.ndarray:
        """The task's condition ``[D]`` float32 (from its support set only; not cached: a
        collect writes each task's once)."""
        task = self.family.task(task_id)
        return task.condition(self.cfg.model, self.frozen).cpu().numpy()

    def _model(self, plan: RunPlan) -> torch.nn.Module:
        """The run's target model at its θ_0, on the device, in train mode."""
        model = init_target(self.cfg, self.family, plan.seed, self.frozen)
        if self.theta0 is not None:
            load_flat(model, self.theta0)  # every run of a shared-init store starts here
        return model.to(self.device).train()

    def _attrs(self, plan: RunPlan) -> dict:
        """The attributes a run begins with. They do not say how it was grouped (a batched run's
        ``wall_time_s`` is its group's), so a run does not depend on the grouping."""
        cfg = self.cfg
        return {
            "task_id": plan.task_id,
            "optimizer": plan.optimizer,
            "hparams": optimizer_hparams(plan.optimizer, cfg.optim),
            "replicate": plan.replicate,
            "seed": plan.seed,
            "steps": cfg.steps,
            "record_every": cfg.record_every,
            "batch_size": cfg.batch_size,
            "device": self.device,
        }

    def _writer(self, block: BlockPlan, sink: WriteSink) -> BlockWriter:
        cfg = self.cfg
        target = BlockTarget(
            block.block_id,
            list(block.run_ids),
            list(block.rows),
            [self._attrs(p) for p in block.plans],
            block.new,
        )
        size = self.layout_size
        return self.store.block_writer(target, cfg.recorded_states, size, cfg.store, sink)

    def _non_finite(self, plan: RunPlan, step: int) -> DataError:
        return DataError(
            f"Run {plan.run_id} produced non-finite weights or loss at step {step}; lower "
            f"the learning rate (e.g. --set optim.{plan.optimizer}.lr=...)."
        )

    def _train_one(self, plan: RunPlan) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """Train one run through ``train_loop``: its recorded ``weights [T+1, P]``, ``loss``,
        ``acc [T+1]`` and wall seconds."""
        cfg = self.cfg
        t0 = time.perf_counter()
        x_train, y_train = self.train_set(plan.task_id)
        model = self._model(plan)
        opt = build_optimizer(plan.optimizer, trainable_parameters(model), cfg.optim)
        gen = torch.Generator().manual_seed(derive_seed(plan.seed, "batches"))
        states = cfg.recorded_states
        w = np.empty((states, self.layout_size), dtype=np.float32)  # [T+1, P]
        lo = np.empty(states, dtype=np.float32)
        ac = np.empty(states, dtype=np.float32)
        i = 0

        def record(theta: torch.Tensor, loss: torch.Tensor, acc: torch.Tensor) -> None:
            nonlocal i
            if not (torch.isfinite(theta).all() and torch.isfinite(loss)):
                raise self._non_finite(plan, i * cfg.record_every)
            w[i], lo[i], ac[i] = theta.cpu().numpy(), float(loss), float(acc)
            i += 1

        train_loop(
            model,
            opt,
            x_train,
            y_train,
            cfg.steps,
            cfg.record_every,
            cfg.batch_size,
            gen,
            record,
        )
        return w, lo, ac, time.perf_counter() - t0

    def execute(self, plan: RunPlan) -> float:
        """Collect one run into a block of its own (the one-run path), written before it
        returns; its wall time in seconds."""
        walls = list(self.execute_blocks([new_block([plan])], depth=0))
        return walls[0][1]

    def execute_many(self, plans: Sequence[RunPlan]) -> list[tuple[str, float]]:
        """Collect ``plans`` into new blocks of up to ``cfg.batch_runs`` runs of one optimizer;
        ``(run_id, wall seconds)`` per run, every run complete when it returns."""
        blocks = [new_block(g) for g in group_plans(plans, self.cfg.batch_runs)]
        return list(self.execute_blocks(blocks))

    def execute_blocks(
        self, blocks: Sequence[BlockPlan], depth: int = 2
    ) -> Iterator[tuple[str, float]]:
        """Collect each block's runs: trained together when they can be (one optimizer, a
        batchable model, ``batch_runs`` > 1), else one after another. A block is written on a
        background thread (``depth`` blocks' writes may wait; 0: written inline) while the next
        trains. Yields ``(run id, wall seconds)`` of each run once it is complete (a batched
        run's wall time is its block's); every run is complete when the iterator ends."""
        sink = WriteSink(depth)
        targets: list[BlockTarget] = []
        seen = 0
        try:
            for block in blocks:
                writer = self._writer(block, sink)
                targets.append(writer.target)
                together = len({p.optimizer for p in block.plans}) == 1
                if self.cfg.batch_runs > 1 and self.batchable and together:
                    self._train_block(block, writer)
                else:
                    for i, plan in enumerate(block.plans):
                        w, lo, ac, wall = self._train_one(plan)
                        writer.put_run(i, w, lo, ac, wall)
                done = [d for t in targets for d in t.done]
                yield from done[seen:]
                seen = len(done)
            sink.close()
        except BaseException:
            try:
                sink.close()  # what was queued before the failure is written
            except BaseException:  # noqa: BLE001 - the first failure is the one to report
                pass
            raise
        done = [d for t in targets for d in t.done]
        yield from done[seen:]

    def _train_block(self, block: BlockPlan, writer: BlockWriter) -> None:
        """The runs of ``block`` (one optimizer) trained together (:func:`train_batched`)."""
        cfg = self.cfg
        plans = block.plans
        models = [self._model(p) for p in plans]
        theta0 = torch.stack([flat_params(m) for m in models])  # [R, P]
        data = [self.train_set(p.task_id) for p in plans]  # [(x_train, y_train)]
        gens = [torch.Generator().manual_seed(derive_seed(p.seed, "batches")) for p in plans]
        step = 0

        def record(theta: torch.Tensor, loss: torch.Tensor, acc: torch.Tensor) -> None:
            nonlocal step
            w = theta.cpu().numpy()  # [R, P]: one copy off the device per recorded step
            lo, ac = loss.cpu().numpy(), acc.cpu().numpy()  # [R], [R]
            bad = ~(np.isfinite(w).all(1) & np.isfinite(lo))
            if bad.any():
                raise self._non_finite(plans[int(bad.argmax())], step)
            writer.append(w, lo, ac)
            step += cfg.record_every

        train_batched(
            models[0],
            plans[0].optimizer,
            cfg.optim,
            theta0,
            [x for x, _ in data],
            [y for _, y in data],
            cfg.steps,
            cfg.record_every,
            cfg.batch_size,
            gens,
            record,
        )
        writer.finish()


def group_plans(plans: Sequence[RunPlan], size: int) -> list[list[RunPlan]]:
    """``plans`` in groups of one optimizer, at most ``size`` runs each, in order of their
    first run (runs keep their plan order within a group)."""
    by_opt: dict[str, list[RunPlan]] = {}
    for p in plans:
        by_opt.setdefault(p.optimizer, []).append(p)
    groups = [g[i : i + size] for g in by_opt.values() for i in range(0, len(g), size)]
    first = {p.run_id: i for i, p in enumerate(plans)}
    return sorted(groups, key=lambda g: first[g[0].run_id])
