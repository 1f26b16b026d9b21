"""Train until it stops improving: the validation split of ``train-policy --val-tasks N``, the
held-out score, the best step so far and the patience that stops training.

``val_tasks`` of the store's tasks (chosen from the seed) are held out: none of their runs is
trained on or enters the normalisation. Every ``val_every`` steps and at the last step the policy is
scored on them, deterministically (eval mode, no gradients, fixed generators):

- ``val_loss``: the training objective on every held-out run (batches in a fixed order, the
  generator of batch b seeded by (seed, "val", b), so that two validations differ only by the
  weights);
- ``val_acc``: where the store's tasks can be rebuilt (as ``generate`` and ``evaluate`` do), the
  test accuracy of the weights the policy generates for each held-out task in mean mode from
  ``generate``'s start s_0 (sample 0 of seed ``cfg.seed``), averaged over the tasks.

``val_metric`` picks the score that chooses the best policy (auto: accuracy where available).
The state of the search (:class:`EarlyStopping`) lives in the checkpoint's ``trainer.json``, so a
resumed run keeps the same best policy as an uninterrupted one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from lohp_cli.artifacts.policy import PolicyMeta
from lohp_cli.checkpoint import append_metrics, load_tensors
from lohp_cli.errors import CompatibilityError, ConfigError, LohpError
from lohp_cli.policy.context import TaskContext, policy_probe, store_task_context
from lohp_cli.policy.directory import start_rule, style_token
from lohp_cli.policy.generator import generate_states
from lohp_cli.policy.state import ProbeBank
from lohp_cli.runtime import derive_seed
from lohp_cli.store.sampler import NormStats, RunRef, TrajectorySampler
from lohp_cli.store.trajectory_store import TrajectoryStore
from lohp_cli.tasks.families import TaskTensors
from lohp_cli.tasks.scoring import accuracy

Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Split:
    """The runs trained on, the runs held out and the held-out task ids (sorted)."""

    train: list[RunRef]
    val: list[RunRef]
    tasks: list[str]


def split_runs(runs: list[RunRef], n: int, seed: int) -> Split:
    """Hold out ``n`` of the distinct task ids of ``runs`` (a permutation seeded by (seed,
    "val-split") of the sorted ids, its first ``n``) with all their runs; ``n = 0``: none.

    A ConfigError when ``n`` leaves no task to train on."""
    ids = sorted({r.task_id for r in runs})
    if n == 0:
        return Split(list(runs), [], [])
    if n >= len(ids):
        raise ConfigError(
            f"val_tasks={n} holds out every task: the runs have {len(ids)} task(s); choose "
            f"--val-tasks below {len(ids)}."
        )
    gen = torch.Generator().manual_seed(derive_seed(seed, "val-split"))
    order = torch.randperm(len(ids), generator=gen).tolist()
    held = sorted(ids[i] for i in order[:n])
    keep = set(held)
    return Split(
        [r for r in runs if r.task_id not in keep], [r for r in runs if r.task_id in keep], held
    )


@dataclass
class EarlyStopping:
    """The best score so far and how many validations since have not improved on it.

    ``higher_better``: accuracy (True) or loss (False). An improvement is a strictly better
    score, or the same score with a strictly lower ``tiebreak`` (accuracy over a few held-out
    tasks moves in coarse steps: the held-out loss then decides); anything else keeps the
    earlier step."""

    higher_better: bool
    best_score: float | None = None
    best_step: int | None = None
    best_tiebreak: float | None = None
    bad: int = 0  # validations since the best
    count: int = 0  # validations so far

    def update(self, step: int, score: float, tiebreak: float | None = None) -> bool:
        """Record the score (and tiebreak, lower is better) of step ``step``; True when it is
        the new best."""
        self.count += 1
        best, low = self.best_score, self.best_tiebreak
        better = (
            best is None
            or (score > best if self.higher_better else score < best)
            or (score == best and tiebreak is not None and low is not None and tiebreak < low)
        )
        if better:
            self.best_score, self.best_step, self.bad = score, step, 0
            self.best_tiebreak = tiebreak
        else:
            self.bad += 1
        return better

    def exhausted(self, patience: int | None) -> bool:
        """Whether ``patience`` validations in a row have not improved (None: never)."""
        return patience is not None and self.bad >= patience

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any, higher_better: bool, where: str) -> EarlyStopping:
        """The state saved by :meth:`to_json`; a CompatibilityError naming ``where`` when it
        does not read or was kept for the other direction (another metric)."""
        try:
            state = cls(**data)
            ok = state.higher_better == higher_better and state.bad >= 0 and state.count >= 0
        except TypeError:
            ok = False
        if not ok:
            raise CompatibilityError(
                f"{where} has a validation state {data!r} that does not fit this run (another "
                "val_metric?); pass --overwrite to train from the start."
            )
        return state


@dataclass(frozen=True)
class HeldOutTasks:
    """The held-out tasks rebuilt from the store's family: their tensors and the target model."""

    ctx: TaskContext
    data: dict[str, TaskTensors]  # task id -> its tensors (on the training device)
    net: torch.nn.Module  # the target model that scores flat weights


def held_out_tasks(
    cfg: Any, split: Split, store: TrajectoryStore, device: str, emit: Progress
) -> HeldOutTasks | None:
    """The held-out tasks for the accuracy, or None where ``val_metric`` is loss or (auto) they
    cannot be rebuilt (a log line says why); ``val_metric='accuracy'`` then is a ConfigError.
    Called before training writes anything, so a refused run leaves no directory behind."""
    if cfg.val_metric == "loss" or not split.tasks:
        return None
    try:
        ctx = store_task_context(store)
        data = {t: ctx.task_data(t, device) for t in split.tasks}
        with torch.random.fork_rng(devices=[]):  # the target's init draws from the global RNG
            net = ctx.build_target().to(device)
    except LohpError as exc:
        if cfg.val_metric == "accuracy":
            raise ConfigError(
                f"val_metric='accuracy' needs the store's tasks, which cannot be rebuilt here "
                f"({exc}); use val_metric='loss'."
            ) from None
        emit({"event": "info", "message": f"validation by loss: no task accuracy ({exc})"})
        return None
    return HeldOutTasks(ctx, data, net)


class Validator:
    """Scores a policy on the held-out runs and tasks of a :class:`Split` (see the module);
    ``held``: the rebuilt tasks (:func:`held_out_tasks`), None for the loss alone."""

    def __init__(
        self,
        cfg: Any,
        split: Split,
        store: TrajectoryStore,
        objective: torch.nn.Module,
        stats: NormStats,
        meta: PolicyMeta,
        device: str,
        bank: ProbeBank | None = None,
        held: HeldOutTasks | None = None,
        amp: bool = False,
        emit: Progress | None = None,
    ) -> None:
        self.cfg, self.split, self.objective, self.stats = cfg, split, objective, stats
        self.meta = meta
        self.model: torch.nn.Module = objective.model
        self.device, self.bank, self.amp = device, bank, amp
        self.emit = emit or (lambda _e: None)
        self.every = cfg.val_every or cfg.checkpoint_every
        self.sampler = TrajectorySampler(store, split.val, cfg.k, stats, cfg.cache_mb)
        self.tasks = None if held is None else self._inputs(held, store)
        self.metric = "accuracy" if self.tasks is not None else "loss"
        self.stopping = EarlyStopping(self.metric == "accuracy")
        self.last: dict[str, float] = {}  # the scores of the best step
        self.best: dict[str, torch.Tensor] | None = None  # the best step's weights (CPU copies)

    def _inputs(self, held: HeldOutTasks, store: TrajectoryStore) -> dict[str, Any]:
        """``{net, data, probe, s0, cond, token}``: what generating and scoring weights for the
        held-out tasks takes, built once."""
        ctx, data = held.ctx, held.data
        rule = start_rule(store, self.cfg.seed)
        s0 = torch.stack([rule.s0(t, 0, self.stats) for t in self.split.tasks])  # [V, P]
        cond = torch.stack([self.stats.normalize_condition(data[t].condition.cpu())
                            for t in self.split.tasks])  # fmt: skip  # [V, D]
        probe = policy_probe(self.model, ctx, data, self.stats, self.device)
        return {
            "net": held.net,
            "data": data,
            "s0": s0.to(self.device),
            "cond": cond.to(self.device),
            "probe": None if probe is None else probe.probe(self.split.tasks),
            "token": style_token(self.meta, None),
        }

    def due(self, step: int) -> bool:
        """Whether step ``step`` (1-based) is validated: every ``val_every`` and the last."""
        return step % self.every == 0 or step == self.cfg.steps

    @torch.no_grad()
    def loss(self) -> float:
        """The objective's mean loss over every held-out run (fixed batches and generators)."""
        runs, size = self.split.val, self.cfg.batch_size
        total = 0.0
        for b, first in enumerate(range(0, len(runs), size)):
            batch = self.sampler.take(runs[first : first + size]).to(self.device)
            self.objective.gen = torch.Generator().manual_seed(derive_seed(self.cfg.seed, "val", b))
            probe = None if self.bank is None else self.bank.probe(batch.task_ids)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
                value, _ = self.objective(batch.x, batch.cond, batch.opt, probe)
            total += float(value) * len(batch.run_ids)
        return total / len(runs)

    @torch.no_grad()
    def accuracy(self) -> float:
        """Mean test accuracy over the held-out tasks of the weights generated for them (mean
        mode, from generate's s_0 of sample 0, in one batch)."""
        t = self.tasks
        assert t is not None
        states = generate_states(self.model, t["cond"], t["s0"], "mean", None, False,
                                 t["probe"], t["token"])  # fmt: skip  # [V, 1, P]
        theta = self.stats.denormalize(states[:, -1].float().cpu())  # [V, P]
        accs = [accuracy(t["net"], w, t["data"][tid])[0]
                for tid, w in zip(self.split.tasks, theta, strict=True)]  # fmt: skip
        return sum(accs) / len(accs)

    def validate(self, step: int, out: Path, t_start: float, writer: bool = True) -> bool:
        """Score the policy after step ``step``; append the line to metrics.jsonl (``writer``),
        emit it; True when it is the best so far."""
        was_training = self.model.training
        self.model.eval()
        try:
            scores = {"val_loss": self.loss()}
            if self.tasks is not None:
                scores["val_acc"] = self.accuracy()
        finally:
            self.model.train(was_training)
        by_acc = self.metric == "accuracy"
        score = scores["val_acc" if by_acc else "val_loss"]
        if score != score:  # NaN never improves: it would stop nothing and keep a broken policy
            score = float("-inf") if self.stopping.higher_better else float("inf")
        improved = self.stopping.update(step, score, scores["val_loss"] if by_acc else None)
        if improved:
            self.last = scores
            weights = self.model.state_dict().items()
            self.best = {k: v.detach().to("cpu", copy=True) for k, v in weights}
        line = {"step": step, **scores, "best": improved,
                "time_s": round(time.perf_counter() - t_start, 3)}  # fmt: skip
        if writer:
            append_metrics(out / "metrics.jsonl", line)
        s = self.stopping
        self.emit({"event": "validation", **line, "metric": self.metric, "steps": self.cfg.steps,
                   "best_step": s.best_step, "best_score": s.best_score, "bad": s.bad})  # fmt: skip
        if self.stopped:
            self.emit({"event": "patience", "step": step, "patience": self.cfg.patience,
                       "best_step": s.best_step, "best_score": s.best_score})  # fmt: skip
        return improved

    @property
    def stopped(self) -> bool:
        """Whether patience has run out."""
        return self.stopping.exhausted(self.cfg.patience)

    def state(self) -> dict[str, Any]:
        """What the checkpoint keeps (trainer.json's ``validation``)."""
        return {**self.stopping.to_json(), "metric": self.metric, "best_scores": self.last}

    def load(self, state: Any, sdir: Path) -> None:
        """Resume from :meth:`state` of the checkpoint ``sdir`` (None: one from before the
        first validation), and the best weights it keeps (``best.safetensors``)."""
        where = f"Resume state '{sdir}'"
        if state is None:
            return
        if not isinstance(state, dict) or state.get("metric") != self.metric:
            found = state.get("metric") if isinstance(state, dict) else state
            raise CompatibilityError(
                f"{where} was validated by {found!r}, this run by {self.metric!r} (can the "
                "store's tasks still be rebuilt?); pass --overwrite to train from the start."
            )
        rest = {k: v for k, v in state.items() if k not in ("metric", "best_scores")}
        self.stopping = EarlyStopping.from_json(rest, self.metric == "accuracy", where)
        self.last = dict(state.get("best_scores") or {})
        if self.stopping.best_step is not None:
            self.best = load_tensors(sdir / "best.safetensors")

    def record(self, step: int, stop_reason: str | None) -> dict[str, Any]:
        """config.json's ``validation``: the split, the metric, the best step and its scores,
        and why training stopped (steps, patience, time; None while it runs)."""
        s = self.stopping
        return {
            "tasks": self.split.tasks,
            "runs": len(self.split.val),
            "metric": self.metric,
            "every": self.every,
            "patience": self.cfg.patience,
            "validations": s.count,
            "best_step": s.best_step,
            "best_score": s.best_score,
            "best_scores": self.last,
            "bad_validations": s.bad,
            "stop_reason": stop_reason,
            "last_step": step,
        }


def stop_reason(step: int, steps: int, stopped: bool, deadline: float | None) -> str | None:
    """Why training stops after ``step``: patience, steps (all of them), time (``max_minutes``,
    resumable), or None (it goes on)."""
    if stopped:
        return "patience"
    if step >= steps:
        return "steps"
    if deadline is not None and time.perf_counter() > deadline:
        return "time"
    return None
