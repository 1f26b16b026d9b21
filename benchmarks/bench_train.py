"""Benchmark `lohp train-policy`: throughput, peak memory vs store size, policy-step latency.

Prints side-by-side numbers measured in one run, as a markdown table on stdout:

1. throughput (sub-trajectories per second) of each method and backbone on one store;
2. steps per second and peak resident memory of lo-hp training with each backbone (unet, mlp,
   rows) on a ``head`` store (P = 325) and an ``mlp`` store (P = 6,469 on Fashion-MNIST), one
   process each;
3. peak resident memory of a training process on a store and on the same setting with 4× more runs
   (streaming + bounded cache: should stay within ~10 %);
4. latency of one policy step (batch 1, mean mode) vs one Adam step of the target model: the ratio
   that decides whether N = T/k policy steps can be faster than T·record_every optimizer steps;
5. the default config (``policy.backbone = "auto"``, no other setting) on the ``mlp`` store: the
   wall time of a ``--default-steps`` run (1,000: the issue's "a 1,000-step mlp policy trains in
   under 10 minutes on 2 CPU cores"), beside the old default (the U-Net) timed over a few steps.

    python benchmarks/bench_train.py            # full (about 40 minutes on 2 CPU cores)
    python benchmarks/bench_train.py --quick    # smoke (about a minute)
    python benchmarks/bench_train.py --only-default --default-steps 1000   # section 5 alone
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

from lohp_cli.config import CollectConfig, TrainConfig  # noqa: E402
from lohp_cli.optim import build_optimizer, train_step  # noqa: E402
from lohp_cli.runtime import resolve_device  # noqa: E402
from lohp_cli.stages.collect import collect  # noqa: E402
from lohp_cli.stages.train import train_policy  # noqa: E402
from lohp_cli.store import TrajectoryStore  # noqa: E402


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
TRAIN_SCRIPT = """
import sys, json, time
from lohp_cli.config import TrainConfig
from lohp_cli.stages.train import train_policy
cfg = TrainConfig.model_validate(json.loads(sys.argv[1]))
times, cpu, info = [], [], []
def log(e):
    if e["event"] == "log":
        times.append(e["time_s"])
        cpu.append(time.process_time())
    elif e["event"] == "info":
        info.append(e["message"])
train_policy(cfg, log)
hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")][0]
print(json.dumps({"times": times, "cpu": cpu, "hwm_kb": int(hwm.split()[1]), "info": info}))
"""


def train_process(store: Path, policy: dict, steps: int, batch: int | None) -> dict:
    """One lo-hp training process of ``steps`` steps (``batch`` None: the default batch size):
    the log times and CPU times after each step, its peak RSS and its info messages."""
    with tempfile.TemporaryDirectory() as d:
        cfg = {
            "store": str(store),
            "out": d + "/p",
            "steps": steps,
            "log_every": 1,
            "checkpoint_every": 10**6,
            "policy": policy,
            **({} if batch is None else {"batch_size": batch}),
        }
        out = subprocess.run(
            [sys.executable, "-c", TRAIN_SCRIPT, json.dumps(cfg)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())},
        )
    return json.loads(out.stdout.strip().splitlines()[-1])


def train_run(store: Path, policy: dict, steps: int, batch: int) -> tuple[float, float, float]:
    """(lo-hp training steps per second and CPU seconds per step after 2 warm-up steps, peak RSS
    in MB) of one process; on a shared machine the CPU time is the steadier of the two."""
    res = train_process(store, policy, steps + 2, batch)
    times, cpu = res["times"], res["cpu"]
    return steps / (times[-1] - times[1]), (cpu[-1] - cpu[1]) / steps, res["hwm_kb"] / 1024


def default_rows(store: Path, steps: int, old_steps: int) -> list[str]:
    """Section 5: the default config (backbone auto) for ``steps`` steps on ``store``, and the
    old default (backbone unet) for ``old_steps``; per step after 2 warm-up steps, and the run's
    whole wall time (start-up and statistics included)."""
    label = f"P = {TrajectoryStore.open(str(store)).meta.param_count:,}"
    rows = []
    for name, policy, n in (("auto (now)", {}, steps), ("unet (before)", {"backbone": "unet"},
                                                        old_steps)):  # fmt: skip
        res = train_process(store, policy, n, None)
        t, c = res["times"], res["cpu"]
        step, cpu = (t[-1] - t[1]) / (n - 2), (c[-1] - c[1]) / (n - 2)
        whole = f"{t[-1] / 60:.1f} (measured)" if n == 1000 else f"{1000 * step / 60:.1f} (× 1000)"
        chosen = next((m for m in res["info"] if m.startswith("backbone auto")), "")
        rows.append(
            f"| {name}{': ' + chosen.split('→ ')[-1] if chosen else ''} | {n} | {t[-1]:.1f} "
            f"| {step:.3f} | {cpu:.3f} | {whole} | {res['hwm_kb'] / 1024:.0f} |"
        )
    return [
        f"### The default config on an mlp store ({label}, lo-hp, k = 2, batch 32, "
        f"{torch.get_num_threads()} threads)",
        "",
        "`lohp train-policy --store S` with no config, now (backbone auto) and before (unet).",
        "",
        "| default | steps | whole run (s) | s / step (wall, after 2) | CPU s / step "
        "| 1,000 steps (min, wall) | peak RSS (MB) |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]


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
    from lohp_cli.policy.directory import load_policy
    from lohp_cli.stages.runs import RunContext
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
    ccfg = CollectConfig.model_validate(TrajectoryStore.open(str(store)).meta.config)
    ctx = RunContext(ccfg, "cpu")
    x_train, y_train = ctx.train_set(ctx.store.task_ids()[0])
    net = build_target(ccfg.model, ctx.family.data.image_shape, ccfg.task.ways)
    opt = build_optimizer("adam", net.parameters(), ccfg.optim)
    xb, yb = x_train[: ccfg.batch_size], y_train[: ccfg.batch_size]
    t_adam = median_time(lambda: train_step(net, opt, xb, yb), repeats)
    return t_pol, t_adam, meta.N, ccfg.steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--family", default="fmnist")
    ap.add_argument(
        "--default-steps", type=int, default=None, help="section 5 (default 1000; --quick 20)"
    )
    ap.add_argument("--only-default", action="store_true", help="section 5 alone")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("LOHP_BENCH_THREADS", "2")))
    q = args.quick
    tasks = 4 if q else 8
    steps_run = 100 if q else 200
    policies = {
        "mlp-512": {"backbone": "mlp", "hidden": 512},
        "unet-32/64/128-p8": {"backbone": "unet", "channels": [32, 64, 128], "patch": 8},
    }
    backbones = {
        **policies,
        "rows-64x2": {"backbone": "rows", "width": 64, "blocks": 2, "heads": 4},
        "rows-32x1": {"backbone": "rows", "width": 32, "blocks": 1, "heads": 4},
        "auto (default)": {},
    }
    default_steps = args.default_steps or (20 if q else 1000)
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
        mlp_store = Path(d, "mlp.zarr")
        make_store(mlp_store, tasks, args.family, "mlp", steps_run)
        if args.only_default:
            print("\n".join(lines + default_rows(mlp_store, default_steps, 4 if q else 5)))
            return
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
        bsteps = 2 if q else 5
        lines += [
            "",
            f"### Backbones: lo-hp steps per second and peak RSS (k = 2, batch 32, {bsteps} steps)",
            "",
            "| store | backbone | steps / s | 1,000 steps (min) | CPU s / step | peak RSS (MB) |",
            "|---|---|---|---|---|---|",
        ]
        for model, store in (("head", small), ("mlp", mlp_store)):
            label = f"{model}, P = {TrajectoryStore.open(str(store)).meta.param_count:,}"
            for name, pol in backbones.items():
                sps, cps, mb = train_run(store, pol, bsteps, 32)
                lines.append(
                    f"| {label} | {name} | {sps:.2f} | {1000 / sps / 60:.1f} | {cps:.2f} "
                    f"| {mb:.0f} |"
                )
        lines += ["", f"### Peak memory ({n_small} vs {4 * n_small} runs, lo-hp, mlp-512)", ""]
        m1 = train_run(small, policies["mlp-512"], 5, 16)[2]
        m4 = train_run(big, policies["mlp-512"], 5, 16)[2]
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
        lines += ["", *default_rows(mlp_store, default_steps, 4 if q else 5)]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
