"""Devices, seeds and provenance shared by every stage."""

from __future__ import annotations

import hashlib
import math
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from lohp_cli import __version__
from lohp_cli.errors import ConfigError


def resolve_device(spec: str) -> str:
    """Turn ``auto|cpu|cuda|cuda:i`` into a concrete torch device string.

    ``auto`` picks ``cuda`` when CUDA is available and ``cpu`` otherwise. Asking for CUDA on a
    machine without it is a config error, not a silent fallback.
    """
    import torch

    spec = spec.strip().lower()
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return "cpu"
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"Device '{spec}' asked for, but CUDA is not available; use --device cpu."
            )
        if ":" in spec:
            idx = spec.split(":", 1)[1]
            if not idx.isdigit() or int(idx) >= torch.cuda.device_count():
                raise ConfigError(
                    f"Device '{spec}' does not exist; this machine has "
                    f"{torch.cuda.device_count()} CUDA device(s)."
                )
        return spec
    raise ConfigError(f"Unknown device '{spec}'; use auto, cpu, cuda or cuda:i.")


def derive_seed(base: int, *parts: object) -> int:
    """A 63-bit seed that depends only on ``base`` and ``parts`` (not on worker order)."""
    text = "|".join([str(base), *map(str, parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def seed_everything(seed: int) -> int:
    """Seed ``random``, numpy and torch; return the seed so callers can record it."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return seed


def git_revision() -> str | None:
    """The git revision of the lohp source tree, when it is a checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(
            ["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def provenance(device: str | None = None) -> dict[str, Any]:
    """What made an artifact: versions, machine, command line, time."""
    import torch

    return {
        "lohp_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "threads": torch.get_num_threads(),
        "argv": list(sys.argv),
        "git_revision": git_revision(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


# ---- intra-op threads ---------------------------------------------------------------------------
PROCESSES_ENV = "LOHP_PROCESSES"  # lohp processes sharing the cores (the Makefile sets it)


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _cpu_seconds() -> tuple[float, float] | None:
    """``(busy, total)`` CPU seconds of the whole machine so far (Linux ``/proc/stat``)."""
    try:
        with open("/proc/stat") as fh:
            fields = [float(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return (sum(fields[:8]) - idle) / hz, sum(fields[:8]) / hz


@dataclass
class CoreUse:
    """A reading of how busy the machine's cores are, to compare with a later one."""

    machine: tuple[float, float] | None  # (busy, total) CPU seconds of every core
    own: float  # this process's CPU seconds
    wall: float

    @classmethod
    def now(cls) -> CoreUse:
        return cls(_cpu_seconds(), time.process_time(), time.perf_counter())

    def others_busy(self, later: CoreUse) -> float | None:
        """Cores kept busy by other processes between this reading and ``later``."""
        if self.machine is None or later.machine is None or later.wall <= self.wall:
            return None
        busy = later.machine[0] - self.machine[0] - (later.own - self.own)
        return max(0.0, busy / (later.wall - self.wall))


def others_busy_now(interval: float = 0.25) -> float | None:
    """Cores kept busy by other processes over the next ``interval`` seconds (this process
    sleeps), or the 1-minute load average where /proc/stat is missing."""
    first = CoreUse.now()
    time.sleep(interval)
    busy = first.others_busy(CoreUse.now())
    if busy is None:
        try:
            busy = os.getloadavg()[0]
        except (AttributeError, OSError):
            return None
    return busy


@dataclass(frozen=True)
class ThreadChoice:
    """The intra-op threads a stage runs with and why (``source``: ``--threads``,
    ``OMP_NUM_THREADS`` or ``auto``)."""

    threads: int
    source: str
    cores: int
    processes: int
    others_busy: float | None

    def describe(self) -> str:
        if self.source != "auto":
            return f"{self.threads} intra-op thread(s) ({self.source})"
        busy = "" if self.others_busy is None else f", {self.others_busy:.1f} busy with other work"
        return (
            f"{self.threads} intra-op thread(s): {self.cores} core(s){busy}, "
            f"{self.processes} lohp process(es) sharing them (--threads to choose)"
        )

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def concurrent_processes() -> int:
    """lohp processes sharing this machine's cores: ``LOHP_PROCESSES`` (``make -jN`` targets set
    it) times the processes of this job on this machine (torchrun's ``LOCAL_WORLD_SIZE``)."""
    n = 1
    for key in (PROCESSES_ENV, "LOCAL_WORLD_SIZE"):
        value = os.environ.get(key, "")
        if value.isdigit() and int(value) > 0:
            n *= int(value)
    return n


def auto_threads(cores: int, processes: int, others_busy: float | None) -> int:
    """The default threads: this process's share of the cores (cores ÷ processes), and no more
    than the cores other work leaves free (a core counts as free below 75 % busy); at least 1.

    Oversubscribed intra-op threads wait on each other at every parallel region: on the 2-core
    VM a policy trained with 2 threads beside one busy process took 8–10× longer than with 1."""
    share = max(1, cores // max(1, processes))
    if others_busy is None:
        return share
    return max(1, min(share, math.floor(cores - others_busy + 0.25)))


def choose_threads(requested: int | None, default: int | None = None) -> ThreadChoice:
    """The threads of a stage: ``requested`` (``--threads``), else ``OMP_NUM_THREADS`` when set,
    else the stage's own ``default`` (evaluate: 1), else :func:`auto_threads` from the cores, the
    concurrent lohp processes and the cores other processes keep busy now (read once, at the
    start: the threads never change during a run)."""
    cores, procs = usable_cores(), concurrent_processes()
    if requested is not None:
        return ThreadChoice(requested, "--threads", cores, procs, None)
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return ThreadChoice(int(env), "OMP_NUM_THREADS", cores, procs, None)
    if default is not None:
        return ThreadChoice(default, "the stage's default", cores, procs, None)
    busy = others_busy_now()
    return ThreadChoice(auto_threads(cores, procs, busy), "auto", cores, procs, busy)


@contextmanager
def stage_threads(
    requested: int | None, emit: Callable[[dict[str, Any]], None], default: int | None = None
) -> Iterator[ThreadChoice]:
    """Run a stage on :func:`choose_threads`'s intra-op threads (torch set to them, an ``info``
    event saying how many and why), restoring the caller's threads afterwards."""
    choice = choose_threads(requested, default)
    with torch_threads(choice.threads):
        emit(
            {"event": "info", "message": f"threads: {choice.describe()}", "threads": choice.threads}
        )
        yield choice


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Torch's intra-op threads set to ``n`` inside the block, the caller's count after it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
