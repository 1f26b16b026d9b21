"""The optimizers' accuracy-latency frontier (``frontier``: every timed row against it) and the
main row's speed-up at matched accuracy (``matched``), as report.json sections and report.md lines;
the paired comparisons are :mod:`lohp_cli.report.comparison`, the format docs/report.md."""

from __future__ import annotations

from typing import Any

import numpy as np

from lohp_cli.methods.base import MethodResult
from lohp_cli.report.comparison import CONFIDENCE, md_table, rounded
from lohp_cli.stats import best_within, paired_difference, pareto_front
from lohp_cli.timing import LATENCY_LABEL


def cell(v: float | None, fmt: str) -> str:
    """A report.md table cell: ``v`` formatted by ``fmt``, or a dash for None."""
    return "–" if v is None else format(v, fmt)


def frontier_section(
    rows: list[MethodResult], points: list[tuple[str, MethodResult]] | None
) -> dict[str, Any] | None:
    """``frontier``: every timed optimizer row ``(optimizer, row)`` as a point, their Pareto
    frontier, and every other timed row against it (the most accurate point at most as slow)."""
    if points is None:
        return None
    opts = list(dict.fromkeys(opt for opt, _ in points))  # in the report's order
    pts = [
        {
            "method": r.name,
            "optimizer": opt,
            "steps": r.steps,
            "acc_mean": round(float(np.mean(r.accuracies)), 4),
            "latency_ms_batch1": round(r.latency_ms_batch1, 4),
            "latency_iqr_ms": None
            if r.latency_iqr_ms is None
            else [round(v, 4) for v in r.latency_iqr_ms],
        }
        for opt, r in sorted(points, key=lambda p: (opts.index(p[0]), p[1].steps or 0))
        if r.latency_ms_batch1 is not None
    ]
    xy = [(p["latency_ms_batch1"], p["acc_mean"]) for p in pts]
    scored = {id(r) for _, r in points}
    policies = []
    for r in rows:
        if id(r) in scored or r.latency_ms_batch1 is None:
            continue
        s = r.summary()
        best = best_within(xy, s["latency_ms_batch1"])
        acc = None if best is None else pts[best]["acc_mean"]
        policies.append(
            {
                "name": s["name"],
                "acc_mean": s["acc_mean"],
                "latency_ms_batch1": s["latency_ms_batch1"],
                "frontier_method": None if best is None else pts[best]["method"],
                "frontier_acc": acc,
                "margin": None if acc is None else round(s["acc_mean"] - acc, 4),
                "position": "on_or_above" if acc is None or s["acc_mean"] >= acc else "below",
            }
        )
    return {"points": pts, "pareto": [pts[i] for i in pareto_front(xy)], "policies": policies}


# rows of these policy methods at several step/sample budgets are matched like an optimizer's
MATCHED_METHODS = ("diffusion",)


def _budget_groups(
    rows: list[MethodResult], points: list[tuple[str, MethodResult]]
) -> dict[str, list[MethodResult]]:
    """Each optimizer's points, and each policy method of ``MATCHED_METHODS`` with its rows,
    by budget (steps) ascending; timed rows with a step count only."""
    groups: dict[str, list[MethodResult]] = {}
    for key, r in points:
        groups.setdefault(key, []).append(r)
    for r in rows[1:]:
        method = (r.policy or {}).get("method")
        if method in MATCHED_METHODS:
            groups.setdefault(method, []).append(r)
    return {
        key: sorted(
            (r for r in rs if r.steps is not None and r.latency_ms_batch1 is not None),
            key=lambda r: r.steps or 0,
        )
        for key, rs in groups.items()
    }


def _first(budgets: list[tuple[MethodResult, Any]], test: Any) -> MethodResult | None:
    return next((r for r, d in budgets if test(d)), None)


def speedup_interval(
    ratios: list[float | None],
    low: MethodResult | None,
    high: MethodResult | None,
    budgets: list[tuple[MethodResult, Any]],
) -> list[float | None]:
    """The speed-up interval over the budgets from ``low`` to ``high`` (ascending steps; their
    ``ratios``, latency over the main row's): the least and the greatest ratio among them, so
    it is never inverted even when a larger budget timed faster than a smaller one, and it holds
    the matched budget's ratio (which lies between them). No ``low``: [None, None]; no
    ``high``: up to the last budget, and the upper end open (None)."""
    if low is None:
        return [None, None]
    rows = [r for r, _ in budgets]
    i = rows.index(low)
    j = rows.index(high) if high is not None else len(rows) - 1
    inside = [v for v in ratios[i : j + 1] if v is not None]
    if not inside:
        return [None, None]
    return [min(inside), max(inside) if high is not None else None]


def matched_section(
    rows: list[MethodResult], points: list[tuple[str, MethodResult]] | None
) -> dict[str, Any] | None:
    """``matched``: for each optimizer (and diffusion generator) the smallest budget whose mean
    accuracy reaches the main row's, and the main row's speed-up over it (its latency over the
    main row's). The interval brackets the budget by the paired 95 % interval of (budget − main)
    over the tasks: from the smallest budget not below the main row beyond the interval to the
    smallest one above it beyond the interval (None: no budget is)."""
    if points is None or not rows or rows[0].latency_ms_batch1 is None or not rows[0].task_acc:
        return None
    main = rows[0]
    base = float(main.latency_ms_batch1 or 0.0)
    acc = float(np.mean(main.accuracies))
    out = []
    for key, group in _budget_groups(rows, points).items():
        budgets = [
            (r, paired_difference(r.task_acc, main.task_acc, CONFIDENCE))
            for r in group
            if len(r.task_acc) == len(main.task_acc)
        ]
        hit = next((r for r, _ in budgets if float(np.mean(r.accuracies)) >= acc), None)
        low = _first(budgets, lambda d: d.high is None or d.high >= 0)
        high = _first(budgets, lambda d: d.low is not None and d.low > 0)

        def ratio(r: MethodResult | None) -> float | None:
            return None if r is None or base <= 0 else rounded(r.latency_ms_batch1 / base)

        interval = speedup_interval([ratio(r) for r, _ in budgets], low, high, budgets)

        out.append(
            {
                "against": key,
                "budgets": [r.steps for r, _ in budgets],
                "matched": None if hit is None else hit.name,
                "steps": None if hit is None else hit.steps,
                "acc_mean": None if hit is None else round(float(np.mean(hit.accuracies)), 4),
                "latency_ms_batch1": None if hit is None else rounded(hit.latency_ms_batch1),
                "speedup": ratio(hit),
                "speedup_ci95": interval,
                "ci_budgets": [None if r is None else r.steps for r in (low, high)],
            }
        )
    return {
        "main": main.name,
        "acc_mean": round(acc, 4),
        "latency_ms_batch1": rounded(base),
        "confidence": CONFIDENCE,
        "against": out,
    }


def frontier_lines(f: dict[str, Any] | None) -> list[str]:
    """report.md's frontier section: each row against the frontier, then the optimizer points."""
    if not f or not f["points"]:
        return []
    against = [
        [
            q["name"],
            f"{q['acc_mean']:.4f}",
            f"{q['latency_ms_batch1']:.3f}",
            q["frontier_method"] or "–",
            cell(q["frontier_acc"], ".4f"),
            cell(q["margin"], "+.4f"),
            q["position"].replace("_", " "),
        ]
        for q in f["policies"]
    ]
    front = {p["method"] for p in f["pareto"]}
    points = [
        [
            p["optimizer"],
            str(p["steps"]),
            f"{p['acc_mean']:.4f}",
            f"{p['latency_ms_batch1']:.3f}",
            "yes" if p["method"] in front else "",
        ]
        for p in f["points"]
    ]
    header = ["method", "accuracy", LATENCY_LABEL, "best optimizer at most as slow"]
    return [
        "",
        "## Accuracy–latency frontier",
        "",
        "The optimizer baselines (and meta-learned starts) scored at several step budgets on the "
        "same tasks. The frontier is, for each latency, the most accurate optimizer point at most "
        "that slow; a method is on or above it when it is at least as accurate as that point "
        "(always, when no optimizer point is as fast).",
        "",
        *md_table([*header, "its accuracy", "difference", "position"], against),
        "",
        *md_table(["optimizer", "steps", "accuracy", LATENCY_LABEL, "on the frontier"], points),
    ]


def matched_lines(m: dict[str, Any] | None) -> list[str]:
    """report.md's speed-up at matched accuracy."""
    if not m or not m["against"]:
        return []

    def x(v: float | None) -> str:
        return "–" if v is None else f"{v:.2f}×"

    rows = [
        [
            q["against"],
            q["matched"] or f"none of {q['budgets'][-1] if q['budgets'] else '–'} reaches it",
            cell(q["acc_mean"], ".4f"),
            cell(q["latency_ms_batch1"], ".3f"),
            x(q["speedup"]),
            f"[{x(q['speedup_ci95'][0])}, {x(q['speedup_ci95'][1])}]",
        ]
        for q in m["against"]
    ]
    return [
        "",
        "## Speed-up at matched accuracy",
        "",
        f"{m['main']} reaches {m['acc_mean']:.4f} in {m['latency_ms_batch1']:.3f} ms per task. "
        "For each optimizer (and diffusion generator): the smallest step (sample) budget whose "
        "mean accuracy reaches it, and the speed-up (that budget's latency over the main row's). "
        f"Interval: from the smallest budget not below the main row beyond the paired "
        f"{m['confidence']:.0%} interval over tasks to the smallest above it beyond the interval "
        "(– where no budget is).",
        "",
        *md_table(
            ["against", "matched budget", "its accuracy", LATENCY_LABEL, "speed-up", "interval"],
            rows,
        ),
    ]
