"""Timings that every stage reports the same way: warm-up excluded, CUDA synchronised around each
measurement, the median with its interquartile range, the process's CPU time beside the wall time,
and the machine's load average while it ran.

Latency on a shared machine: :func:`interleaved` times several methods round-robin (round r
times every method once, in an order rotated by r), so a burst of load from other processes hits
every method alike instead of whichever was being timed; it runs at least ``repeats`` rounds and
adds rounds (up to ``MORE_ROUNDS`` × ``repeats``, within a time budget) while a median is still
unstable. :func:`measure` times one function the same way.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from lohp_cli.runtime import usable_cores

LATENCY_LABEL = "latency (ms per task, batch 1)"  # how reports and plots name the latency
SPREAD_WARN = 0.25  # a median whose interquartile range exceeds this fraction of it is flagged
STABLE_RSE = 0.02  # rounds are added while a median's relative standard error is above this
MORE_ROUNDS = 3  # at most this many times the asked rounds
MIN_ROUNDS = 5  # rounds run whatever the time budget (fewer only when fewer are asked)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def now() -> float:
    """The wall clock of every timing (seconds); tests replace it."""
    return time.perf_counter()


def cpu_now() -> float:
    """The process's CPU time (seconds, every thread); tests replace it."""
    return time.process_time()


def load_average() -> float | None:
    """The machine's 1-minute load average (None where the platform has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """``(q1, median, q3)`` of ``values`` (linear interpolation, as numpy's default)."""
    v = sorted(values)
    if len(v) == 1:
        return v[0], v[0], v[0]

    def q(p: float) -> float:
        x = p * (len(v) - 1)
        lo = math.floor(x)
        hi = min(lo + 1, len(v) - 1)
        return v[lo] + (v[hi] - v[lo]) * (x - lo)

    return q(0.25), q(0.5), q(0.75)


@dataclass(frozen=True)
class Latency:
    """Repeated timings of one function: wall-time median and interquartile range, and the
    median CPU time of the process per call (all in ms)."""

    median_ms: float
    q1_ms: float
    q3_ms: float
    cpu_ms: float
    repeats: int

    @classmethod
    def of(cls, wall_s: list[float], cpu_s: list[float]) -> Latency:
        q1, med, q3 = quartiles(wall_s)
        return cls(med * 1e3, q1 * 1e3, q3 * 1e3, statistics.median(cpu_s) * 1e3, len(wall_s))

    @property
    def spread(self) -> float:
        """The interquartile range over the median (0 for a single run)."""
        return (self.q3_ms - self.q1_ms) / self.median_ms if self.median_ms > 0 else 0.0

    @property
    def relative_se(self) -> float:
        """The median's relative standard error, from the interquartile range as a normal
        sample's (σ ≈ IQR / 1.349, se(median) ≈ 1.2533 σ / √n); infinite with one run."""
        if self.repeats < 2 or self.median_ms <= 0:
            return math.inf
        return 1.2533 * (self.q3_ms - self.q1_ms) / 1.349 / math.sqrt(self.repeats) / self.median_ms

    def to_json(self) -> dict[str, Any]:
        return {
            "latency_ms_batch1": round(self.median_ms, 4),
            "latency_iqr_ms": [round(self.q1_ms, 4), round(self.q3_ms, 4)],
            "cpu_ms_batch1": round(self.cpu_ms, 4),
        }


@dataclass
class TimingRun:
    """What an interleaved measurement saw of the machine: the rounds run, the 1-minute load
    average before, during (one reading per round) and after, the intra-op threads and cores,
    and its wall time."""

    rounds: int = 0
    load_before: float | None = None
    load_during: list[float] = field(default_factory=list)
    load_after: float | None = None
    threads: int = 1
    cores: int = 1
    wall_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        during = self.load_during
        return {
            "protocol": "interleaved",
            "rounds": self.rounds,
            "threads": self.threads,
            "cores": self.cores,
            "load_average": {
                "before": self.load_before,
                "during_mean": round(statistics.fmean(during), 2) if during else None,
                "during_max": max(during) if during else None,
                "after": self.load_after,
            },
            "wall_s": round(self.wall_s, 2),
        }


def _timed(fn: Callable[[], Any], device: str) -> tuple[float, float]:
    sync(device)
    t, c = now(), cpu_now()
    fn()
    sync(device)
    return now() - t, cpu_now() - c


def measure(fn: Callable[[], Any], repeats: int, device: str, warmup: int = 1) -> Latency:
    """``repeats`` timed calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    runs = [_timed(fn, device) for _ in range(repeats)]
    return Latency.of([w for w, _ in runs], [c for _, c in runs])


def time_ms(fn: Callable[[], Any], repeats: int, device: str, warmup: int = 1) -> float:
    """Median wall time (ms) of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls;
    CUDA-synchronised around each timed call."""
    return measure(fn, repeats, device, warmup).median_ms


def interleaved(
    fns: dict[str, Callable[[], Any]],
    repeats: int,
    device: str,
    budget_s: float = 300.0,
    warmup: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, Latency], TimingRun]:
    """Time every function of ``fns`` round-robin: ``warmup`` untimed calls each, then rounds in
    which each is called once, the order rotated by one per round. At least ``repeats`` rounds
    (``min(repeats, MIN_ROUNDS)`` when the rounds outlast ``budget_s`` seconds); then more, up to
    ``MORE_ROUNDS × repeats`` and within the budget, while any median's relative standard error
    is above ``STABLE_RSE``. ``progress(round, planned)`` after each round (planned: ``repeats``,
    then the most rounds it may run)."""
    names = list(fns)
    run = TimingRun(threads=torch.get_num_threads(), cores=usable_cores())
    run.load_before = load_average()
    start = now()
    for name in names:
        for _ in range(warmup):
            fns[name]()
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    most = max(repeats, MORE_ROUNDS * repeats)
    while names:
        r = run.rounds
        for name in names[r % len(names) :] + names[: r % len(names)]:
            w, c = _timed(fns[name], device)
            wall[name].append(w)
            cpu[name].append(c)
        run.rounds += 1
        load = load_average()
        if load is not None:
            run.load_during.append(load)
        done = run.rounds >= most or (
            run.rounds >= min(repeats, MIN_ROUNDS) and now() - start > budget_s
        )
        if not done and run.rounds >= repeats:
            stats = [Latency.of(wall[n], cpu[n]) for n in names]
            done = all(s.relative_se <= STABLE_RSE for s in stats)
        if progress is not None:  # rounds planned: the asked ones, then the most it may add
            progress(run.rounds, run.rounds if done else repeats if run.rounds < repeats else most)
        if done:
            break
    run.load_after = load_average()
    run.wall_s = now() - start
    return {n: Latency.of(wall[n], cpu[n]) for n in names if wall[n]}, run
