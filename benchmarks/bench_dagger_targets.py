"""How close can DAgger's relabelled targets (``loss.dagger``) come to the step the local-policy
check scores against? (docs/policy.md "DAgger")

Run from the repository root, on a store and a policy trained on it (for its normalisation)::

    python benchmarks/bench_dagger_targets.py STORE POLICY [--tasks 10] [--k 2]

Along Adam's own path from a fresh θ₀ on the first ``--tasks`` held-out tasks (as ``lohp
evaluate``'s check: N pieces of k·r steps, 4 branches per state carrying the path's moments), the
cosine between the relabelled step at each path state and the branches' mean (the seed-averaged
step), for fresh moments, moments warmed by min(m·k·r, 30) steps and by all m·k·r steps; and for
the warmed targets, two relabelling seeds against each other and the mean of 4 seeds against the
branches. Prints the median over tasks, overall and per step index, as a markdown table.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable

import numpy as np
import torch

from lohp_cli.checkpoint import load_tensors
from lohp_cli.policy.context import store_task_context
from lohp_cli.policy.dagger import Relabeler
from lohp_cli.report.locality import probe_path
from lohp_cli.store.sampler import NormStats
from lohp_cli.store.trajectory_store import TrajectoryStore
from lohp_cli.tasks.layout import flat_params


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("store")
    ap.add_argument("policy", help="a policy directory of the store (its normalisation)")
    ap.add_argument("--tasks", type=int, default=10)
    ap.add_argument("--k", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    store = TrajectoryStore.open(args.store, mode="r")
    meta = store.meta
    stats = NormStats.from_tensors(
        load_tensors(f"{args.policy}/normalization.safetensors"),
        meta.param_count, meta.condition_dim, args.policy,
    )  # fmt: skip
    ctx = store_task_context(store)
    rel = Relabeler.of_store(ctx, stats, args.k, "cpu")
    n = (meta.compat.states - 1) // args.k
    per = rel.steps  # k·r optimizer steps per policy step
    warm: dict[str, Callable[[int], int]] = {
        "fresh moments": lambda i: 0,
        "warmed 30 steps": lambda i: min(per * i, 30),
        "warmed m·k·r steps": lambda i: per * i,
    }
    rows: dict[str, list[list[float]]] = {}
    for ti, task in enumerate(ctx.family.tasks("target", args.tasks)):
        data = ctx.task_data(task.id)
        torch.manual_seed(ti)
        net = ctx.build_target()
        path = probe_path(lambda net=net: copy.deepcopy(net), "adam", rel.optim,
                          flat_params(net), data, n, per, rel.batch_size, ti, 4)  # fmt: skip
        mean = path.branches.mean(0)  # [N, P] the seed-averaged step

        def step(
            i: int, seed: int, w: int, tid: str = task.id, states: torch.Tensor = path.states
        ) -> torch.Tensor:
            return rel.displacement(states[i], tid, None, "adam", seed, w)

        for name, w in warm.items():
            rows.setdefault(name, []).append(
                [_cos(step(i, 1000 + i, w(i)), mean[i]) for i in range(n)]
            )
        w30 = warm["warmed 30 steps"]
        rows.setdefault("warmed 30: seed vs seed", []).append(
            [_cos(step(i, 1000 + i, w30(i)), step(i, 5000 + i, w30(i))) for i in range(n)]
        )
        rows.setdefault("warmed 30: mean of 4 seeds", []).append(
            [
                _cos(
                    torch.stack([step(i, 7000 + 10 * i + j, w30(i)) for j in range(4)]).mean(0),
                    mean[i],
                )  # fmt: skip
                for i in range(n)
            ]
        )
    print("| relabelled target | median | lowest step index | per step index |")
    print("|---|---|---|---|")
    for name, v in rows.items():
        a = np.array(v)  # [tasks, N]
        med = np.median(a, 0)
        steps = " ".join(f"{x:.2f}" for x in med)
        print(f"| {name} | {np.median(a):.3f} | {med.min():.2f} | {steps} |")


if __name__ == "__main__":
    main()
