"""Learned optimizers side by side: the issue-5 targets in one run (CPU, one thread).

1. quadratic and lasso: vanilla l2o vs l2o-tt (progressive unroll + imitation) vs tuned Adam/SGD,
   final loss after 100 steps on held-out tasks;
2. shifted quadratics: m-l2o after 5 self-adaptation steps vs vanilla l2o (with and without the
   same adaptation);
3. with ``--store`` (an fmnist store from ``lohp collect``): l2o vs l2o-flat, test accuracy.

    OMP_NUM_THREADS=1 python3 benchmarks/bench_l2o.py --episodes 300 --out runs/bench-l2o

Prints one table per comparison; reports (json, md, png) go under ``--out``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch


def train(method: str, family: str, out: Path, episodes: int, seed: int, **l2o: Any) -> str:
    from lohp_cli.config import TrainConfig
    from lohp_cli.stages.train import train_policy

    cfg = TrainConfig.model_validate(
        {
            "method": method,
            "out": str(out),
            "steps": episodes,
            "batch_size": 16,
            "lr": 3e-3,
            "seed": seed,
            "device": "cpu",
            "overwrite": True,
            "log_every": max(1, episodes // 10),
            "checkpoint_every": episodes,
            "store": l2o.pop("store", "runs/none.zarr"),
            "l2o": {"family": family, **l2o},
        }
    )
    t = time.perf_counter()
    train_policy(cfg)
    print(f"  trained {method:8s} on {family:9s} in {time.perf_counter() - t:6.1f} s", flush=True)
    return str(out)


def evaluate(policies: dict[str, str], out: Path, **kw: Any) -> dict[str, Any]:
    from lohp_cli.l2o.config import L2OEvaluateConfig
    from lohp_cli.stages.evaluate_l2o import evaluate_l2o

    cfg = L2OEvaluateConfig.model_validate(
        {"policies": policies, "out": str(out), "device": "cpu", **kw}
    )
    report = evaluate_l2o(cfg)
    from lohp_cli.stages.evaluate_l2o import markdown_report

    print(markdown_report(report), flush=True)
    print(f"  report: {out}/report.md, {out}/loss_curves.png\n", flush=True)
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=300, help="Meta-training episodes per policy.")
    ap.add_argument("--out", default="runs/bench-l2o")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--instances", type=int, default=8)
    ap.add_argument("--shift", type=float, default=1.0)
    ap.add_argument("--store", default=None, help="fmnist store: also run l2o vs l2o-flat.")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    t0 = time.perf_counter()
    ev = {"tasks": args.tasks, "instances": args.instances, "steps": 100, "seed": args.seed}
    for family in ("quadratic", "lasso"):
        print(f"== {family}: 100 steps, held-out tasks", flush=True)
        pol = {
            m: train(m, family, out / f"{family}-{m}", args.episodes, args.seed)
            for m in ("l2o", "l2o-tt")
        }
        evaluate(pol, out / f"report-{family}", adapt_all=False, **ev)
        if family == "quadratic":
            pol["m-l2o"] = train("m-l2o", family, out / "quadratic-m-l2o", args.episodes, args.seed)
            print(f"== quadratic, shift {args.shift}: 5 self-adaptation steps", flush=True)
            evaluate(
                {"l2o": pol["l2o"], "m-l2o": pol["m-l2o"]},
                out / "report-quadratic-shift",
                shift=args.shift,
                adapt_steps=5,
                adapt_all=True,
                **ev,
            )
    if args.store:
        print("== fmnist store: l2o vs l2o-flat (test accuracy)", flush=True)
        kw = {"store": args.store, "horizon": 100, "unroll": 20}
        pol = {
            m: train(m, "store", out / f"store-{m}", max(20, args.episodes // 10), args.seed, **kw)
            for m in ("l2o", "l2o-flat")
        }
        evaluate(pol, out / "report-store", adapt_all=False, **{**ev, "tasks": 4, "instances": 4})
    print(f"total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
