"""Wall time of one small ``lohp collect`` in one process, with ``--workers 2`` and with
``--scheduler local:2`` (a Dask LocalCluster started and closed by the command).

Run from the repository root::

    python benchmarks/bench_scheduler.py              # 4 tasks × 3 optimizers, 400 steps, 3 rounds
    python benchmarks/bench_scheduler.py --tasks 8 --rounds 2

Each variant is the real command in a fresh process, on a new store, timed from start to exit
(imports, store initialisation and, for Dask, starting and closing the cluster included). The
variants run interleaved, their order rotating every round; the median per variant and its ratio
to the one-process run are printed as a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = {"one process": [], "--workers 2": ["--workers", "2"],
            "--scheduler local:2": ["--scheduler", "local:2"]}  # fmt: skip


def command(out: Path, tasks: int, steps: int, extra: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "lohp_cli", "-q", "collect", "--family", "digits", "--model", "head",
        "--tasks", str(tasks), "--seeds", "1", "--steps", str(steps), "--record-every", "10",
        "--device", "cpu", "--out", str(out), *extra,
    ]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    walls: dict[str, list[float]] = {v: [] for v in VARIANTS}
    names = list(VARIANTS)
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for i, name in enumerate(names[r % len(names) :] + names[: r % len(names)]):
                out = Path(tmp, f"r{r}-{i}.zarr")
                t0 = time.perf_counter()
                subprocess.run(
                    command(out, args.tasks, args.steps, VARIANTS[name]),
                    env=env,
                    check=True,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                walls[name].append(time.perf_counter() - t0)
                print(f"round {r}: {name} {walls[name][-1]:.1f} s", file=sys.stderr)
    runs = args.tasks * 3
    base = statistics.median(walls["one process"])
    print(f"{runs} runs of {args.steps} steps (digits, head model), {os.cpu_count()} CPUs, "
          f"median of {args.rounds}\n")  # fmt: skip
    print("| variant | wall s (median) | all rounds | ratio to one process |")
    print("|---|---|---|---|")
    for name, w in walls.items():
        med = statistics.median(w)
        rounds = ", ".join(f"{x:.1f}" for x in w)
        print(f"| {name} | {med:.1f} | {rounds} | {med / base:.2f} |")


if __name__ == "__main__":
    main()
