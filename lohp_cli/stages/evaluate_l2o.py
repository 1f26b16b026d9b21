"""Score learned optimizers against tuned Adam/SGD on held-out tasks: loss-vs-step curves.

Every method optimises the same problems from the same starts for the same number of steps.
Held-out tasks come from the ``target`` split (synthetic: fresh draws, optionally shifted out of
the training distribution; image families: the family's held-out class subsets). Self-adaptation
(M-L2O) uses other problems of the same task than the ones scored. Adam/SGD learning rates are
picked from the policy's ``l2o.lr_grid`` on source tasks, never on the held-out ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lohp_cli.checkpoint import atomic_write_bytes, atomic_write_json
from lohp_cli.errors import ConfigError
from lohp_cli.l2o.apply import learned_step, load_l2o, run_learned
from lohp_cli.l2o.config import L2OConfig, L2OEvaluateConfig, L2OTrainConfig
from lohp_cli.l2o.optimizer import analytical, run_trajectory, tune_lr
from lohp_cli.l2o.problems import (
    LeastSquares,
    check_same_family,
    make_problem_family,
)
from lohp_cli.runtime import provenance, resolve_device

REPORT_SCHEMA = "lohp.l2o-report"
REPORT_VERSION = 1
Progress = Callable[[dict[str, Any]], None]


def _summary(values: torch.Tensor) -> dict[str, float | None]:
    v = values.double()
    ok = torch.isfinite(v)
    if not bool(ok.any()):
        return {"mean": None, "std": None, "median": None, "finite": 0.0}
    v = v[ok]
    return {
        "mean": float(v.mean()),
        "std": float(v.std(unbiased=False)),
        "median": float(v.median()),
        "finite": float(ok.double().mean()),
    }


def _curve(losses: list[torch.Tensor]) -> list[float]:
    """Mean over tasks and problems per step of ``[S+1, B]`` curves (non-finite -> NaN)."""
    c = torch.cat(losses, 1).double()  # [S+1, tasks·B]
    return [
        round(float(x), 8) for x in torch.nanmean(torch.where(torch.isfinite(c), c, torch.nan), 1)
    ]


Method = tuple[str, dict[str, Any], Callable[..., Any]]
"""``(row label, what it is, runner(query, support) -> (losses [S+1, B], θ, adapt history))``"""


@dataclass
class Scores:
    """Every method's results over the held-out tasks, per label: loss curves ``[S+1, B]`` per
    task, final metrics per task, the adaptation losses; and the synthetic tasks' optima f*."""

    curves: dict[str, list[torch.Tensor]]
    finals: dict[str, dict[str, list[torch.Tensor]]]
    adapt: dict[str, list[list[float]]]
    optima: list[torch.Tensor] = field(default_factory=list)


def evaluate_l2o(cfg: L2OEvaluateConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Run every policy and baseline on the held-out tasks; write report.json/.md and plots."""
    emit = progress or (lambda _e: None)
    t_start = time.perf_counter()
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"Report directory '{out}' is a file; choose another --out.")
    device = resolve_device(cfg.device)
    loaded = {name: load_l2o(path, "cpu") for name, path in cfg.policies.items()}
    lc, family = held_out_family(cfg, loaded)
    emit({"event": "info", "message": f"{len(loaded)} learned optimizer(s) on {lc.family}"})
    tuned = tune_baselines(cfg, family, lc.lr_grid, emit)
    methods = learned_methods(cfg, loaded) + baseline_methods(cfg, tuned)
    scores = score_tasks(cfg, family, lc.family != "store", methods, emit)
    report = {
        "schema": REPORT_SCHEMA,
        "schema_version": REPORT_VERSION,
        "family": family.describe(),
        "policies": {
            n: {"path": cfg.policies[n], "method": m.method, "trained_steps": m.trained_steps}
            for n, (_, m) in loaded.items()
        },
        "tasks": cfg.tasks,
        "instances": cfg.instances,
        "steps": cfg.steps,
        "shift": cfg.shift,
        "tuning": tuned,
        "methods": method_rows(methods, scores, emit),
        "config": cfg.model_dump(mode="json"),
        "wall_time_s": round(time.perf_counter() - t_start, 3),
        "provenance": provenance(device),
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "report.json", report)
    atomic_write_bytes(out / "report.md", markdown_report(report).encode())
    if cfg.plots:
        write_curves(report, out / "loss_curves.png")
    return report


def held_out_family(cfg: L2OEvaluateConfig, loaded: dict[str, Any]) -> tuple[L2OConfig, Any]:
    """``(the first policy's l2o settings, the problem family)`` of the policies ``loaded``,
    which must share their family; a ConfigError for ``--shift`` on image tasks."""
    ref_meta = next(iter(loaded.values()))[1]
    for name, (_, meta) in loaded.items():
        check_same_family(ref_meta.family, meta.family, f"Policy {name!r}")
    lc = L2OTrainConfig.from_stored(ref_meta.train_config).l2o
    store = cfg.store or ref_meta.store_location
    family = make_problem_family(lc, store if lc.family == "store" else None, cfg.data_root)
    if cfg.shift and lc.family == "store":
        raise ConfigError("--shift applies to quadratic/lasso policies; image tasks use splits.")
    return lc, family


def tune_baselines(
    cfg: L2OEvaluateConfig, family: Any, grid: Any, emit: Progress
) -> dict[str, dict[str, Any]]:
    """The analytical baselines' learning rates, tuned over ``grid`` on source tasks:
    ``{name: {lr, scores}}``."""
    tuned: dict[str, dict[str, Any]] = {}
    for name in cfg.baselines:
        lr, scores = tune_lr(family, name, grid, cfg.steps, cfg.tune_tasks, cfg.instances, cfg.seed)
        tuned[name] = {"lr": lr, "scores": scores}
        emit({"event": "info", "message": f"{name}: tuned lr = {lr}"})
    return tuned


def learned_methods(cfg: L2OEvaluateConfig, loaded: dict[str, Any]) -> list[Method]:
    """Each learned optimizer, without and (M-L2O, or every policy with ``adapt_all``) with its
    self-adaptation steps on the support problems."""
    methods: list[Method] = []
    for name, (model, meta) in loaded.items():
        plc = L2OTrainConfig.from_stored(meta.train_config).l2o
        k = plc.adapt_steps if cfg.adapt_steps is None else cfg.adapt_steps
        variants = [k] if meta.method == "m-l2o" else ([0, k] if cfg.adapt_all and k else [0])
        for steps_k in variants:
            label = name if steps_k == 0 else f"{name} +{steps_k} adapt"

            def runner(q: Any, s: Any, model=model, steps_k=steps_k, plc=plc) -> Any:
                step, hist = learned_step(model, s, steps_k, plc)
                losses, theta = run_learned(step, model, q, cfg.steps)
                return losses, theta, hist

            info = {"kind": "learned", "method": meta.method, "adapt_steps": steps_k}
            methods.append((label, info, runner))
    return methods


def baseline_methods(cfg: L2OEvaluateConfig, tuned: dict[str, dict[str, Any]]) -> list[Method]:
    """Each analytical optimizer at its tuned learning rate."""
    methods: list[Method] = []
    for name, t in tuned.items():

        def base_runner(q: Any, s: Any, name=name, lr=t["lr"]) -> Any:
            step, init = analytical(name, lr)
            losses, states = run_trajectory(
                step, init(q.batch, q.size), q, cfg.steps, keep_states=True
            )
            return losses, states[-1], []

        methods.append(
            (f"{name} (lr {t['lr']:g})", {"kind": "optimizer", "lr": t["lr"]}, base_runner)
        )
    return methods


def score_tasks(
    cfg: L2OEvaluateConfig, family: Any, synthetic: bool, methods: list[Method], emit: Progress
) -> Scores:
    """Run every method on each held-out task's query problems (the support problems: other
    problems of the same task, for self-adaptation)."""
    labels = [m[0] for m in methods]
    scores = Scores({lb: [] for lb in labels}, {lb: {} for lb in labels}, {lb: [] for lb in labels})
    for i in range(cfg.tasks):
        both = family.sample("target", i, cfg.seed, 2 * cfg.instances, cfg.shift)
        query = both.subset(slice(0, cfg.instances))
        support = both.subset(slice(cfg.instances, 2 * cfg.instances))
        if synthetic:
            assert isinstance(query, LeastSquares)
            scores.optima.append(query.optimum())
        for label, _, runner in methods:
            losses, theta, hist = runner(query, support)
            scores.curves[label].append(losses)
            for key, val in query.metrics(theta).items():
                scores.finals[label].setdefault(key, []).append(val)
            if hist:
                scores.adapt[label].append(hist)
        emit({"event": "task", "done": i + 1, "tasks": cfg.tasks})
    return scores


def method_rows(methods: list[Method], scores: Scores, emit: Progress) -> list[dict[str, Any]]:
    """The report's row of each method: final metrics, mean curves (and the gap to f* on
    synthetic tasks), mean adaptation losses."""
    fstar = torch.cat(scores.optima) if scores.optima else None
    rows = []
    for label, info, _ in methods:
        curves = scores.curves[label]
        row: dict[str, Any] = {"name": label, **info}
        for key, vals in scores.finals[label].items():
            row[f"final_{key}"] = _summary(torch.cat(vals))
        row["curve"] = _curve(curves)
        if fstar is not None:
            gap = torch.cat([c[-1] for c in curves]).double() - fstar
            row["final_gap"] = _summary(gap)
            row["curve_gap"] = _curve(
                [c.double() - f for c, f in zip(curves, scores.optima, strict=True)]
            )
        if scores.adapt[label]:
            h = np.asarray(scores.adapt[label])
            row["adapt_loss"] = [round(float(x), 6) for x in h.mean(0)]
        rows.append(row)
        emit({"event": "method", "name": label, "final_loss": row["final_loss"]["mean"]})
    return rows


def _fmt(s: dict[str, Any] | None) -> str:
    if not s or s["mean"] is None:
        return "diverged"
    text = f"{s['mean']:.4g} ± {s['std']:.2g}"
    return text if s["finite"] == 1.0 else f"{text} ({s['finite']:.0%} finite)"


def markdown_report(r: dict[str, Any]) -> str:
    """The report as Markdown: one row per method."""
    fam = r["family"]["name"]
    cols = [("final_loss", "final loss")]
    if any("final_gap" in m for m in r["methods"]):
        cols.append(("final_gap", "f − f* (final)"))
    if any("final_test_acc" in m for m in r["methods"]):
        cols.append(("final_test_acc", "test accuracy"))
    lines = [
        f"# L2O evaluation: {fam}",
        "",
        f"{r['tasks']} held-out task(s) × {r['instances']} problem(s), {r['steps']} steps, "
        f"shift {r['shift']}. Mean ± std over all problems.",
        "",
        "| method | kind | adapt steps | " + " | ".join(c[1] for c in cols) + " |",
        "|---|---|---|" + "---|" * len(cols),
    ]
    for m in r["methods"]:
        cells = [_fmt(m.get(key)) for key, _ in cols]
        lines.append(
            f"| {m['name']} | {m['kind']} | {m.get('adapt_steps', '-')} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines) + "\n"


def write_curves(r: dict[str, Any], path: Path) -> None:
    """Mean loss (or gap to the optimum) against steps, log scale, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = "curve_gap" if all("curve_gap" in m for m in r["methods"]) else "curve"
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in r["methods"]:
        ys = np.asarray(m[key], dtype=float)
        ax.plot(np.arange(len(ys)), np.clip(ys, 1e-12, None), label=m["name"])
    ax.set_yscale("log")
    ax.set_xlabel("optimizee step")
    ax.set_ylabel("mean f − f*" if key == "curve_gap" else "mean training loss")
    ax.set_title(f"{r['family']['name']}: shift {r['shift']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
