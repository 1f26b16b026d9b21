"""The one training skeleton every fit shares (Lo-Hp and its ablations, diffusion, L2O).

A fit opens a :class:`TrainingRun` on its ``--out`` directory, then, in this order:

1. :meth:`TrainingRun.open` checks the directory (resume, refuse, or ``--overwrite``);
2. :meth:`TrainingRun.norm_stats` reads the normalisation statistics of a resumed run, or computes
   them and writes them with ``config.json`` first, so that a crash never leaves a directory that
   cannot be checked (a fit without statistics, L2O, writes its config with
   :meth:`TrainingRun.write_config`);
3. the fit builds its model and optimizer (its own part);
4. :meth:`TrainingRun.resume_state` loads ``state/`` and cuts ``metrics.jsonl`` back to it;
5. :meth:`TrainingRun.loop` runs the steps until ``cfg.steps``, the deadline (``max_minutes``) or
   a stop asked by the fit's ``after_step`` hook; each step is the fit's ``step`` callable (one
   optimisation step, with :func:`gradient_step`'s finite checks, or one L2O episode) and ends
   with :func:`lohp_cli.policy.rundir.end_of_step` (metrics line, checkpoint);
6. :meth:`TrainingRun.finish` writes the policy of a run that had nothing left to do, and
   :meth:`TrainingRun.result` says how far it got.

Every step draws its randomness from generators seeded by (seed, step), so a resumed run ends
with the weights of an uninterrupted one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lohp_cli.checkpoint import (
    atomic_save_tensors,
    atomic_write_json,
    load_state,
    load_tensors,
    truncate_metrics,
)
from lohp_cli.policy.loss import check_finite
from lohp_cli.policy.rundir import TrainResult, check_out_dir, end_of_step
from lohp_cli.store.sampler import NormStats

Progress = Callable[[dict[str, Any]], None]
# one training step: step (0-based, before it) -> (its loss, the terms metrics.jsonl logs)
StepFn = Callable[[int], tuple[float | None, dict[str, Any]]]
# write the policy after a step: (step, complete)
WritePolicy = Callable[[int, bool], None]


def gradient_step(
    loss: torch.Tensor,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    grad_clip: float,
    step: int,
    run_ids: Sequence[str],
) -> torch.Tensor:
    """One optimizer step on ``loss``, the gradient norm clipped at ``grad_clip``; a non-finite
    loss or gradient raises (naming ``step`` and the batch's ``run_ids``). Returns the gradient
    norm before clipping."""
    check_finite(loss, "loss", step, run_ids)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    gnorm = nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    check_finite(gnorm, "gradient", step, run_ids)
    opt.step()
    return gnorm


@dataclass
class TrainingRun:
    """One training run into the policy directory ``out``.

    ``cfg``: the train config (``out``, ``steps``, ``max_minutes``, ``log_every``,
    ``checkpoint_every``); ``t_start``: when the run began (perf_counter seconds); ``writer``:
    this process writes files (rank 0 under torchrun); ``resume``: ``out`` holds a compatible run
    with a ``state/`` to go on from; ``start``: the step it goes on from.
    """

    cfg: Any
    out: Path
    emit: Progress
    t_start: float
    writer: bool = True
    resume: bool = False
    start: int = 0

    @classmethod
    def open(
        cls,
        cfg: Any,
        fingerprint: dict[str, Any],
        emit: Progress,
        t_start: float,
        writer: bool = True,
    ) -> TrainingRun:
        """Check ``cfg.out`` (:func:`~lohp_cli.policy.rundir.check_out_dir`; only the writer
        does, the others assume a resume until told otherwise)."""
        out = Path(cfg.out)
        resume = check_out_dir(out, cfg, fingerprint) if writer else True
        return cls(cfg, out, emit, t_start, writer, resume)

    @property
    def deadline(self) -> float | None:
        """The perf_counter time past which the run stops (``max_minutes``), or None."""
        minutes = self.cfg.max_minutes
        return None if minutes is None else self.t_start + 60 * minutes

    def write_config(self, config: dict[str, Any]) -> None:
        """``config.json`` (atomic; the writer only)."""
        if self.writer:
            atomic_write_json(self.out / "config.json", config)

    def norm_stats(
        self,
        size: int,
        cond_dim: int,
        runs: int,
        compute: Callable[[], NormStats],
        config: Callable[[], dict[str, Any]],
    ) -> NormStats:
        """The normalisation statistics: a resumed run's own, else ``compute()`` (after a
        ``stats`` event naming the ``runs``), written with ``config()`` as config.json."""
        path = self.out / "normalization.safetensors"
        if self.resume and path.exists():
            return NormStats.from_tensors(load_tensors(path), size, cond_dim, str(path))
        self.emit({"event": "stats", "runs": runs})
        stats = compute()
        if self.writer:
            atomic_save_tensors(path, stats.to_tensors())
            self.write_config(config())  # first: a crash leaves a directory that can be checked
        return stats

    def resume_state(
        self,
        model: nn.Module,
        opt: torch.optim.Optimizer,
        on_resume: Callable[[dict[str, Any], int], None] | None = None,
        on_fresh: Callable[[], None] | None = None,
    ) -> dict[str, Any] | None:
        """Load ``state/`` into ``model`` and ``opt`` when resuming and return its trainer dict
        (``on_resume(trainer, step)`` first sees it), else call ``on_fresh()`` and return None;
        then cut metrics.jsonl back to the step the run goes on from."""
        trainer = load_state(self.out, model, opt) if self.resume else None
        if trainer is not None:
            self.start = int(trainer["step"])
            if on_resume is not None:
                on_resume(trainer, self.start)
            self.emit({"event": "resume", "step": self.start})
        elif on_fresh is not None:
            on_fresh()
        if self.writer:
            truncate_metrics(self.out / "metrics.jsonl", self.start)
        return trainer

    def loop(
        self,
        step_fn: StepFn,
        write_policy: WritePolicy,
        after_step: Callable[[int], bool] | None = None,
        stopped: bool = False,
    ) -> tuple[int, float | None, bool]:
        """Steps from ``start`` until ``cfg.steps``, the deadline, or ``after_step(step)`` (run
        after each step, before its metrics and checkpoint) says stop; ``stopped``: a run that
        was stopped before (patience) takes no step. Returns ``(step, last loss, stopped)``."""
        step, last, stop = self.start, None, stopped
        while step < self.cfg.steps and not stop:
            last, terms = step_fn(step)
            step += 1
            if after_step is not None:
                stop = after_step(step)
            done = end_of_step(
                step, self.cfg, self.out, terms, self.t_start, self.deadline, self.emit,
                write_policy, self.writer,
            )  # fmt: skip
            if done:
                break
        return step, last, stop

    def finish(self, step: int, write_policy: WritePolicy) -> None:
        """A run that took no step (already complete) keeps its files; only a directory without
        a model gets one."""
        if self.writer and step == self.start and not (self.out / "model.safetensors").exists():
            write_policy(step, step >= self.cfg.steps)

    def result(
        self, step: int, complete: bool, last: float | None, reason: str | None = None
    ) -> TrainResult:
        wall = round(time.perf_counter() - self.t_start, 3)
        return TrainResult(str(self.out), step, complete, last, wall, reason)
