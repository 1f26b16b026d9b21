"""Soak: a large store through every stage, with peak memory against a store 10× smaller.

Run from the repository root::

    python benchmarks/bench_soak.py                 # 100 and 1,000 runs (about 15 min on 2 cores)
    python benchmarks/bench_soak.py --quick         # 20 and 200 runs, shorter runs and training

For each store size the script runs the stages as ``lohp`` commands, each in its own process, as
a user's pipeline does: ``collect`` (Fashion-MNIST head tasks, Adam and SGD, 2 seeds),
``inspect --verify`` (reads every chunk), ``train-policy`` (lo-hp, k = 2, a fixed number of steps),
``generate`` (fixed held-out tasks) and ``evaluate`` (Adam, and the memorisation baselines that
read every run's endpoint). Each stage's peak resident memory is its own process's ``VmHWM``
(read from ``/proc/self/status`` at exit: ``ru_maxrss`` would carry a parent's peak over fork +
exec). The table gives wall time and peak RSS per stage at both sizes and their ratio; the
issue's target is a peak RSS ratio ≤ 1.10 for every stage (memory bounded, not growing with the
store). Markdown goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

RSS_TARGET = 1.10

# Runs the lohp CLI in this process and writes its peak RSS (kB) to $LOHP_HWM_FILE at exit,
# whatever the exit code.
WRAPPER = """
import os, sys
from lohp_cli.cli import main
sys.argv[0] = "lohp"
try:
    main()
finally:
    hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")][0]
    open(os.environ["LOHP_HWM_FILE"], "w").write(hwm.split()[1])
"""


def stage(args: list[str], work: Path, threads: int) -> tuple[float, float]:
    """Run ``lohp ARGS`` in a new process; ``(wall seconds, peak RSS in MB)``."""
    hwm = work / "hwm"
    env = {**os.environ, "LOHP_HWM_FILE": str(hwm), "OMP_NUM_THREADS": str(threads)}
    print("+ lohp " + " ".join(args), file=sys.stderr, flush=True)
    t = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-c", WRAPPER, "-q", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wall = time.perf_counter() - t
    if res.returncode != 0:
        sys.exit(f"stage failed ({res.returncode}): lohp {' '.join(args)}\n{res.stderr[-2000:]}")
    return wall, int(hwm.read_text()) / 1024


def pipeline(
    runs: int, work: Path, steps: int, policy_steps: int, collect_extra: list[str], threads: int
) -> dict[str, tuple[float, float]]:
    """Every stage on a new store of ``runs`` runs (Adam and SGD × 2 seeds per task)."""
    store, policy, gen = work / f"s{runs}.zarr", work / f"p{runs}", work / f"g{runs}.zarr"
    tasks = runs // 4
    out: dict[str, tuple[float, float]] = {}
    out["collect"] = stage(
        [
            "collect", "--family", "fmnist", "--model", "head", "--tasks", str(tasks),
            "--seeds", "2", "--optimizers", "adam,sgd", "--steps", str(steps),
            "--record-every", "5", "--workers", "1", "--out", str(store), *collect_extra,
        ],
        work, threads,
    )  # fmt: skip
    out["inspect --verify"] = stage(["inspect", str(store), "--verify"], work, threads)
    out["train-policy"] = stage(
        [
            "train-policy", "--config", "examples/policy-cpu.toml", "--store", str(store),
            "--method", "lo-hp", "--k", "2", "--optimizers", "adam", "--steps",
            str(policy_steps), "--out", str(policy),
        ],
        work, threads,
    )  # fmt: skip
    out["generate"] = stage(
        [
            "generate", "--policy", str(policy), "--tasks", "target", "--num-tasks", "10",
            "--samples", "2", "--out", str(gen), "--overwrite",
        ],
        work, threads,
    )  # fmt: skip
    out["evaluate"] = stage(
        [
            "evaluate", "--generated", str(gen), "--baselines", "adam,nearest,mean",
            "--latency-repeats", "3", "--out", str(work / f"r{runs}"),
        ],
        work, threads,
    )  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="20 and 200 runs, shorter settings")
    ap.add_argument("--runs", default=None, help="the two store sizes, e.g. 100,1000")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per stage")
    ap.add_argument(
        "--collect-args", default="", help="extra collect arguments, e.g. '--batch-runs 64'"
    )
    ap.add_argument("--keep", default=None, help="keep the stores in this directory")
    a = ap.parse_args()
    small, big = (int(n) for n in (a.runs or ("20,200" if a.quick else "100,1000")).split(","))
    steps, policy_steps = (50, 50) if a.quick else (200, 200)
    extra = a.collect_args.split()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        res = {n: pipeline(n, work, steps, policy_steps, extra, a.threads) for n in (small, big)}
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    lines = [
        f"### Soak: {small} vs {big} runs through every stage ({date})",
        "",
        f"{platform.node()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{a.threads} thread(s) per stage; Fashion-MNIST head tasks, Adam + SGD × 2 seeds, "
        f"{steps} steps recorded every 5; lo-hp {policy_steps} training steps; generate and "
        f"evaluate on 10 held-out tasks × 2. Extra collect arguments: `{a.collect_args or '-'}`.",
        "",
        f"| stage | wall {small} (s) | wall {big} (s) | peak RSS {small} (MB) "
        f"| peak RSS {big} (MB) | RSS ratio |",
        "|---|---|---|---|---|---|",
    ]
    worst = 0.0
    for name in res[small]:
        (w1, m1), (w2, m2) = res[small][name], res[big][name]
        worst = max(worst, m2 / m1)
        lines.append(f"| {name} | {w1:.1f} | {w2:.1f} | {m1:.0f} | {m2:.0f} | {m2 / m1:.3f}× |")
    verdict = "met" if worst <= RSS_TARGET else "missed"
    lines += ["", f"Worst peak-RSS ratio {worst:.3f}× (target ≤ {RSS_TARGET:.2f}×: {verdict})."]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
