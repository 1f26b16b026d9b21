"""Timings that every stage reports the same way: warm-up excluded, median of repeats, CUDA
synchronised around each measurement."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

LATENCY_LABEL = "latency (ms per task, batch 1)"  # how reports and plots name the latency


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def now() -> float:
    """The clock of every timing (seconds); tests replace it."""
    return time.perf_counter()


def time_ms(fn: Callable[[], Any], repeats: int, device: str, warmup: int = 1) -> float:
    """Median wall time (ms) of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls;
    CUDA-synchronised around each timed call."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        sync(device)
        t = now()
        fn()
        sync(device)
        ts.append(now() - t)
    return statistics.median(ts) * 1e3
