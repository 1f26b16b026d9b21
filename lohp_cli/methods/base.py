"""What every evaluated method shares: the context it runs in, the protocol it implements and the
loop that scores and times it into one report row.

Every method starts where ``generate`` did (``policy.directory.StartRule``): sample j of task t
is s_0 ~ N(0, I) seeded by (seed, t, j), policies start from s_0 in their own normalisation,
optimizers from θ_0 = denormalise(s_0) with the generating policy's statistics; on a
shared-init store every start is the store's θ₀ (optimizers start from it exactly, policies from
its normalisation).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

import numpy as np
import torch

from lohp_cli.artifacts.policy import PolicyMeta
from lohp_cli.config import OptimizersConfig
from lohp_cli.policy.context import TaskContext
from lohp_cli.policy.directory import StartRule, start_rule
from lohp_cli.stats import normal_mean_ci
from lohp_cli.store.sampler import NormStats
from lohp_cli.tasks.families import TaskTensors
from lohp_cli.tasks.scoring import accuracy
from lohp_cli.timing import Latency, TimingRun, interleaved

Progress = Callable[[dict[str, Any]], None]


class NotApplicable(Exception):  # noqa: N818 - a verdict, not an error: it never reaches the CLI
    """Raised by a method's ``prepare`` when it has no answer in this evaluation (``class-rows``
    on held-out classes): ``run_method`` turns it into a row without accuracy whose ``note``
    says why; comparisons and plots skip such rows. The message is that reason."""


@dataclass(frozen=True)
class Starts:
    """The starting points of one task's samples: ``s0`` (normalised, in the generating policy's
    normalisation) and ``theta0`` (weights), both ``[S, P]``, row j for sample j."""

    s0: torch.Tensor
    theta0: torch.Tensor
    task_id: str
    rule: StartRule

    def s0_for(self, stats: NormStats) -> torch.Tensor:
        """The normalised starts ``[S, P]`` of a policy with its own normalisation ``stats``."""
        return torch.stack([self.rule.s0(self.task_id, j, stats) for j in range(len(self.s0))])


@dataclass
class EvalContext:
    """What ``evaluate`` hands every method: the held-out tasks, their tensors, the shared starts
    and the run's settings."""

    task: TaskContext  # family, target model config, extractor and source store of the policy
    data: dict[str, TaskTensors]  # held-out task id -> its tensors, in report order
    samples: int  # starts per task
    seed: int  # the generate seed every start is drawn from
    device: str
    meta: PolicyMeta  # config.json of the policy that made the generated weights
    stats: NormStats  # that policy's normalisation: θ_0 = stats.denormalize(s_0)
    net: torch.nn.Module  # the target model that scores flat weights
    steps_full: int  # the store's run length T·r
    batch_size: int  # the store's minibatch size
    optim: OptimizersConfig  # the store's optimizer hyperparameters
    latency_repeats: int  # timed runs per latency (median), after one untimed warm-up
    timing_s0: torch.Tensor  # [1, P] normalised start that policies are timed from
    out: str  # the report directory (baselines trained here go below it)
    emit: Progress = field(default=lambda _e: None)

    @property
    def tasks(self) -> list[str]:
        return list(self.data)

    @property
    def size(self) -> int:
        return self.meta.param_count

    @cached_property
    def rule(self) -> StartRule:
        """Where every method starts: the source store's shared θ₀, else generate's draws."""
        return start_rule(self.task.store, self.seed)

    def starts(self, task_id: str) -> Starts:
        rule, stats, js = self.rule, self.stats, range(self.samples)
        s0 = torch.stack([rule.s0(task_id, j, stats) for j in js])  # [S, P]
        theta0 = torch.stack([rule.weights(task_id, j, stats) for j in js])  # [S, P]
        return Starts(s0, theta0, task_id, rule)


class Method(Protocol):
    """One row of the report. ``name``, ``steps`` and ``policy`` may be settled by ``prepare``.

    A method whose weights are not the target model's θ (full fine-tuning trains every weight of
    the merged network) sets ``net`` in ``prepare``: the module that scores them.
    """

    name: str
    kind: str  # "generated" | "policy" | "optimizer" | "l2o" | ...
    steps: int | None  # steps taken to produce the weights (None: not a stepwise method)
    policy: dict[str, Any] | None  # a policy's identity (see methods.policy.policy_info)

    def prepare(self, ctx: EvalContext) -> None:
        """Load, train or check what the method needs, before any ``weights`` call; raise
        :class:`NotApplicable` when the method has no answer here."""

    def weights(self, task_id: str, starts: Starts) -> torch.Tensor:
        """The final flat weights ``[S, P]`` of the task, row j from start j."""

    def timer(self, task_id: str) -> Callable[[], Any] | None:
        """What the latency times: producing one task's weights at batch size 1 (called after
        every method is scored, interleaved with the other methods' timers; see
        :func:`time_methods`); None when the method is not timed."""


@dataclass
class MethodResult:
    name: str
    kind: str  # "generated" | "policy" | "optimizer" | "l2o"
    accuracies: list[float] = field(default_factory=list)
    latency_ms_batch1: float | None = None  # one task at batch size 1, median after a warm-up
    steps: int | None = None
    policy: dict[str, Any] | None = None  # method, k, optimizers of a policy's result
    task_acc: list[float] = field(default_factory=list)  # per task, mean over its samples
    note: str | None = None  # why a row was not scored ("not applicable: …")
    latency_iqr_ms: tuple[float, float] | None = None  # the latency's interquartile range
    cpu_ms_batch1: float | None = None  # the process's CPU time per timed run (median)
    timer: Callable[[], Any] | None = field(default=None, repr=False, compare=False)

    def set_latency(self, latency: Latency) -> None:
        """The row's latency from its timed runs (median, interquartile range, CPU time)."""
        self.latency_ms_batch1 = latency.median_ms
        self.latency_iqr_ms = (latency.q1_ms, latency.q3_ms)
        self.cpu_ms_batch1 = latency.cpu_ms

    @property
    def applicable(self) -> bool:
        """Whether the row was scored (a not-applicable row has no accuracies and a note)."""
        return self.note is None

    def summary(self) -> dict[str, Any]:
        """The row of report.json: accuracy mean and std over every (task, start), and the 95 %
        interval of the mean over the tasks' mean accuracies (1.96 · s / √n_tasks; None with
        fewer than two tasks). A not-applicable row has ``acc_mean``, ``acc_std``, ``acc_ci95``
        and ``latency_ms_batch1`` null, ``n`` 0 and its ``note``."""
        if not self.applicable:
            return {
                "name": self.name, "kind": self.kind, "acc_mean": None, "acc_std": None,
                "n": 0, "n_tasks": 0, "acc_ci95": None, "latency_ms_batch1": None,
                "latency_iqr_ms": None, "cpu_ms_batch1": None, "steps": self.steps,
                "policy": self.policy, "note": self.note,
            }  # fmt: skip
        a = np.asarray(self.accuracies)
        ci = normal_mean_ci(self.task_acc) if self.task_acc else None
        interval = None
        if ci is not None and ci.low is not None and ci.high is not None:
            interval = [round(ci.low, 4), round(ci.high, 4)]
        return {
            "name": self.name,
            "kind": self.kind,
            "acc_mean": round(float(a.mean()), 4),
            "acc_std": round(float(a.std()), 4),
            "n": int(a.size),
            "n_tasks": len(self.task_acc),
            "acc_ci95": interval,
            "latency_ms_batch1": None
            if self.latency_ms_batch1 is None
            else round(self.latency_ms_batch1, 4),
            "latency_iqr_ms": None
            if self.latency_iqr_ms is None
            else [round(v, 4) for v in self.latency_iqr_ms],
            "cpu_ms_batch1": None if self.cpu_ms_batch1 is None else round(self.cpu_ms_batch1, 4),
            "steps": self.steps,
            "policy": self.policy,
        }


def run_method(ctx: EvalContext, method: Method, prepared: bool = False) -> MethodResult:
    """Prepare ``method`` (unless ``prepared``: the stage did, to check it before scoring any),
    score its weights on every task's test split from the shared starts (each start's accuracy,
    and each task's mean over its starts; a ``task`` event after each), keep its timer on the
    first task for :func:`time_methods`, and report the row as a ``method`` event. A method that
    is not applicable here (its ``prepare`` raised :class:`NotApplicable`) is a row with its
    reason and no accuracy."""
    try:
        if not prepared:
            method.prepare(ctx)
    except NotApplicable as why:
        r = MethodResult(method.name, method.kind, note=f"not applicable: {why}")
        r.steps, r.policy = method.steps, method.policy
        ctx.emit({"event": "method", **r.summary()})
        return r
    accs: list[float] = []
    per_task: list[float] = []
    net = getattr(method, "net", None)
    net = ctx.net if net is None else net
    for i, (t, data) in enumerate(ctx.data.items()):
        w = method.weights(t, ctx.starts(t))
        task = [accuracy(net, w[j], data)[0] for j in range(w.shape[0])]
        accs += task
        per_task.append(float(np.mean(task)))
        ctx.emit({"event": "task", "method": method.name, "done": i + 1, "tasks": len(ctx.data)})
    r = MethodResult(method.name, method.kind, accs)
    r.steps, r.policy, r.task_acc = method.steps, method.policy, per_task
    if hasattr(method, "timer"):
        r.timer = method.timer(ctx.tasks[0])
    elif hasattr(method, "time_one"):  # a method of the older protocol: timed alone, now
        r.latency_ms_batch1 = method.time_one(ctx.tasks[0])
    ctx.emit({"event": "method", **r.summary()})
    return r


def time_methods(ctx: EvalContext, rows: list[MethodResult], budget_s: float) -> TimingRun | None:
    """Every row's latency, timed interleaved (:func:`lohp_cli.timing.interleaved`: round-robin
    over the rows' timers, so load from other processes hits them alike), set on the rows; a
    ``timing`` event after each round. None when no row has a timer."""
    timed = [r for r in rows if r.timer is not None]
    if not timed:
        return None
    fns = {str(i): r.timer for i, r in enumerate(timed) if r.timer is not None}

    def progress(done: int, planned: int) -> None:
        ctx.emit({"event": "timing", "done": done, "rounds": planned, "methods": len(fns)})

    latencies, run = interleaved(fns, ctx.latency_repeats, ctx.device, budget_s, progress=progress)
    ctx.emit({"event": "timing", "done": run.rounds, "rounds": run.rounds, "methods": len(fns),
              "finished": True})  # fmt: skip
    for key, latency in latencies.items():
        timed[int(key)].set_latency(latency)
    for r in timed:
        r.timer = None  # the methods it holds can go
    return run
