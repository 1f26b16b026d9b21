"""Benchmark `lohp train-policy`: throughput, peak memory vs store size, policy-step latency.

Prints side-by-side numbers measured in one run, as a markdown table on stdout:

1. throughput (sub-trajectories per second) of each method and backbone on one store;
2. peak resident memory of a training process on a store and on the same setting with 4× more runs
   (streaming + bounded cache: should stay within ~10 %);
3. latency of one policy step (batch 1, mean mode) vs one Adam step of the target model: the ratio
   that decides whether N = T/k policy steps can be faster than T·record_every optimizer steps.

    python benchmarks/bench_train.py            # full (a few minutes on 2 CPU cores)
    python benchmarks/bench_train.py --quick    # smoke (about a minute)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lohp_cli.collect import collect  # noqa: E402
from lohp_cli.config import CollectConfig, TrainConfig  # noqa: E402
from lohp_cli.optim import build_optimizer, train_step  # noqa: E402
from lohp_cli.runtime import resolve_device  # noqa: E402
from lohp_cli.train import train_policy  # noqa: E402


def make_store(path: Path, tasks: int, family: str, model: str, steps: int) -> None:
    cfg = CollectConfig.model_validate(
        {
            "out": str(path),
            "tasks": tasks,
            "seeds": 1,
            "steps": steps,
            "record_every": 5,
            "task": {"family": family, "train_per_class": 60 if family == "digits" else 100},
            "model": {"name": model, "extractor_steps": 200},
        }
    )
    collect(cfg)


def throughput(store: Path, method: str, policy: dict, steps: int, batch: int) -> float:
    """Sub-trajectories per second over ``steps`` training steps (after 2 warm-up steps)."""
    with tempfile.TemporaryDirectory() as d:
        cfg = TrainConfig.model_validate(
            {
                "store": str(store),
                "out": d + "/p",
                "method": method,
                "steps": steps + 2,
                "batch_size": batch,
                "log_every": 1,
                "checkpoint_every": 10**6,
                "policy": policy,
            }
        )
        times: list[float] = []
        train_policy(cfg, lambda e: e["event"] == "log" and times.append(e["time_s"]))
    dt = times[-1] - times[1]
    return steps * batch / dt


# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork + exec, so a
# child started by a big parent would report the parent's peak.
PEAK_SCRIPT = """
import sys, json
from lohp_cli.config import TrainConfig
from lohp_cli.train import train_policy
cfg = TrainConfig.model_validate(json.loads(sys.argv[1]))
train_policy(cfg)
hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")][0]
print(int(hwm.split()[1]))
"""


def peak_rss_mb(store: Path, steps: int, policy: dict) -> float:
    with tempfile.TemporaryDirectory() as d:
        cfg = {
            "store": str(store),
            "out": d + "/p",
            "steps": steps,
            "batch_size": 16,
            "checkpoint_every": 10**6,
            "policy": policy,
        }
        out = subprocess.run(
            [sys.executable, "-c", PEAK_SCRIPT, json.dumps(cfg)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())},
        )
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def median_time(fn, repeats: int) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def latency(store: Path, policy_cfg: dict, repeats: int) -> tuple[float, float, int, int]:
    """(policy step seconds, Adam step seconds, N, optimizer steps of a run)."""
    from lohp_cli.collect import RunContext
    from lohp_cli.policy.artifact import load_policy
    from lohp_cli.tasks.models import build_target

    with tempfile.TemporaryDirectory() as d:
        cfg = TrainConfig.model_validate(
            {"store": str(store), "out": d + "/p", "steps": 1, "policy": policy_cfg}
        )
        train_policy(cfg)
        model, meta, _ = load_policy(d + "/p")
    s = torch.randn(1, meta.param_count)
    c = torch.randn(1, meta.condition_dim)
    i = torch.zeros(1, dtype=torch.long)
    with torch.no_grad():
        t_pol = median_time(lambda: model.means(s, i, c), repeats)
    from lohp_cli.store import TrajectoryStore

    ccfg = CollectConfig.model_validate(TrajectoryStore.open(str(store)).meta.config)
    ctx = RunContext(ccfg, "cpu")
    task = ctx.task(ctx.store.task_ids()[0])
    net = build_target(ccfg.model, ctx.family.data.image_shape, ccfg.task.ways)
    opt = build_optimizer("adam", net.parameters(), ccfg.optim)
    xb, yb = task.x_train[: ccfg.batch_size], task.y_train[: ccfg.batch_size]
    t_adam = median_time(lambda: train_step(net, opt, xb, yb), repeats)
    return t_pol, t_adam, meta.N, ccfg.steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--family", default="fmnist")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("LOHP_BENCH_THREADS", "2")))
    q = args.quick
    tasks = 4 if q else 8
    steps_run = 100 if q else 200
    policies = {
        "mlp-512": {"backbone": "mlp", "hidden": 512},
        "unet-32/64/128-p8": {"backbone": "unet", "channels": [32, 64, 128], "patch": 8},
    }
    lines = [
        f"machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, training on {resolve_device('auto')}"
        f"{' (' + torch.cuda.get_device_name() + ')' if torch.cuda.is_available() else ''}, "
        "latencies on cpu",
        "",
    ]
    with tempfile.TemporaryDirectory() as d:
        small, big = Path(d, "small.zarr"), Path(d, "big.zarr")
        make_store(small, tasks, args.family, "head", steps_run)
        make_store(big, 4 * tasks, args.family, "head", steps_run)
        n_small = 3 * tasks
        lines += [
            "### Throughput (head model, P = 325, k = 2, batch 32)",
            "",
            "| method | backbone | sub-trajectories / s |",
            "|---|---|---|",
        ]
        tsteps = 3 if q else 8
        for name, pol in policies.items():
            for method in ("lo-hp", "lo-di", "hypernetwork"):
                if method == "hypernetwork" and name != "mlp-512":
                    continue
                tp = throughput(small, method, pol, tsteps, 32)
                lines.append(
                    f"| {method} | {name if method != 'hypernetwork' else '-'} | {tp:.1f} |"
                )
        lines += ["", f"### Peak memory ({n_small} vs {4 * n_small} runs, lo-hp, mlp-512)", ""]
        m1 = peak_rss_mb(small, 5, policies["mlp-512"])
        m4 = peak_rss_mb(big, 5, policies["mlp-512"])
        lines += [
            "| runs | peak RSS (MB) |",
            "|---|---|",
            f"| {n_small} | {m1:.0f} |",
            f"| {4 * n_small} | {m4:.0f} |",
            "",
            f"ratio 4× runs / 1× runs: **{m4 / m1:.3f}×** (target ≤ 1.10×)",
            "",
        ]
        lines += [
            "### Policy step vs Adam step (batch 1 policy forward; target minibatch 64)",
            "",
            "| backbone | policy step (ms) | Adam step (ms) | ratio | N policy steps (ms) "
            "| T·r Adam steps (ms) | generation speed-up |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, pol in policies.items():
            tp, ta, n, opt_steps = latency(small, pol, 20 if q else 100)
            lines.append(
                f"| {name} | {tp * 1e3:.3f} | {ta * 1e3:.3f} | {tp / ta:.2f}× "
                f"| {n * tp * 1e3:.2f} | {opt_steps * ta * 1e3:.2f} "
                f"| {opt_steps * ta / (n * tp):.1f}× |"
            )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
