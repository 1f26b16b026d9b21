"""The report's comparisons in numbers: paired per-task differences with confidence intervals
(``paired``), the optimizers' accuracy-latency frontier (``frontier``) and the main row's speed-up
at matched accuracy (``matched``), as report.json sections and report.md lines. The statistics
are :mod:`lohp_cli.stats`; the format is docs/report.md."""

from __future__ import annotations

from typing import Any

import numpy as np

from lohp_cli.methods.base import MethodResult
from lohp_cli.stats import best_within, paired_difference, pareto_front
from lohp_cli.timing import LATENCY_LABEL

CONFIDENCE = 0.95
LADDER = ("hypernetwork", "lo-di", "lo-op", "lo-hp")  # the ablation ladder, lowest rung first
_SAME_RUNG = ("k", "optimizers", "state_input")  # what a rung shares with the main row


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 4)


def ladder(rows: list[MethodResult]) -> list[MethodResult]:
    """The ablation ladder's rungs among ``rows``, lowest first: for each method of ``LADDER``
    the first row of a policy of that method with the main row's (``rows[0]``) k, optimizer
    subset and state input."""
    ref = rows[0].policy if rows else None
    if not ref:
        return []
    rungs = []
    for method in LADDER:
        for r in rows:
            p = r.policy or {}
            if p.get("method") == method and all(p.get(k) == ref.get(k) for k in _SAME_RUNG):
                rungs.append(r)
                break
    return rungs


def _pair(a: MethodResult, b: MethodResult, on_ladder: bool) -> dict[str, Any]:
    d = paired_difference(a.task_acc, b.task_acc, CONFIDENCE)
    ci = None if d.low is None else [_round(d.low), _round(d.high)]
    return {
        "a": a.name,
        "b": b.name,
        "n": d.n,
        "mean": _round(d.mean),
        "ci95": ci,
        "side": d.side,
        "ladder": on_ladder,
    }


def _named(row: str, names: tuple[str, ...]) -> bool:
    """Whether a report row is the row of one of the ``--policy`` names (``"grad"`` names the
    row ``"grad (k=2)"``)."""
    return any(row == n or row.startswith(f"{n} (") for n in names)


def paired_section(rows: list[MethodResult], also: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """``paired``: the main row (``rows[0]``, the generated weights) against every other scored
    row (not a not-applicable one), then each row named in ``also`` against every scored row
    after the main one, then each step of the ablation ladder not already among them (upper
    rung − lower rung, top down); per task the accuracy averaged over its samples, paired over
    the tasks."""
    if not rows or not rows[0].task_acc:
        return None
    main = rows[0]
    rungs = ladder(rows)
    steps = list(zip(rungs[1:], rungs, strict=False))  # (upper, lower)
    scored = [r for r in rows[1:] if r.applicable and len(r.task_acc) == len(main.task_acc)]
    pairs = [_pair(main, r, any(hi is main and lo is r for hi, lo in steps)) for r in scored]
    for a in (r for r in scored if _named(r.name, also)):
        pairs += [_pair(a, r, False) for r in scored if r is not a]
    pairs += [_pair(hi, lo, True) for hi, lo in reversed(steps) if hi is not main]
    return {"main": main.name, "confidence": CONFIDENCE, "ladder": list(LADDER), "pairs": pairs}


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
            return None if r is None or base <= 0 else _round(r.latency_ms_batch1 / base)

        interval = speedup_interval([ratio(r) for r, _ in budgets], low, high, budgets)

        out.append(
            {
                "against": key,
                "budgets": [r.steps for r, _ in budgets],
                "matched": None if hit is None else hit.name,
                "steps": None if hit is None else hit.steps,
                "acc_mean": None if hit is None else round(float(np.mean(hit.accuracies)), 4),
                "latency_ms_batch1": None if hit is None else _round(hit.latency_ms_batch1),
                "speedup": ratio(hit),
                "speedup_ci95": interval,
                "ci_budgets": [None if r is None else r.steps for r in (low, high)],
            }
        )
    return {
        "main": main.name,
        "acc_mean": round(acc, 4),
        "latency_ms_batch1": _round(base),
        "confidence": CONFIDENCE,
        "against": out,
    }


def k_study(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Lo-Hp rows comparable to the generated policy (its optimizer subset and state input), one
    per k (the first row of each k), sorted by k."""
    ref = next((m["policy"] for m in r["methods"] if m["kind"] == "generated"), None)
    if ref is None or ref["method"] != "lo-hp":
        return []
    rows = {}
    for m in r["methods"]:
        p = m.get("policy")
        if (
            p
            and p["method"] == "lo-hp"
            and p["optimizers"] == ref["optimizers"]
            and p.get("state_input", "none") == ref.get("state_input", "none")
        ):
            rows.setdefault(p["k"], m)
    return [{"k": k, **rows[k]} for k in sorted(rows)]


def verdict(r: dict[str, Any]) -> str | None:
    """report.md's one-line verdict on the main row (the generated weights): its accuracy against
    the most accurate optimizer row (paired difference and interval, latency ratio), and where it
    lies against the optimizers' accuracy-latency frontier; None without a scored main row."""
    main = r["methods"][0] if r["methods"] else None
    if main is None or main["acc_mean"] is None:
        return None
    said = f"{main['name']} reaches {main['acc_mean']:.4f} on {len(r['tasks'])} held-out task(s)"
    opts = [m for m in r["methods"] if m["kind"] == "optimizer" and m["acc_mean"] is not None]
    if opts:
        best = max(opts, key=lambda m: (m["acc_mean"], -(m["steps"] or 0)))
        pairs = (r.get("paired") or {}).get("pairs", [])
        q = next((q for q in pairs if q["a"] == main["name"] and q["b"] == best["name"]), None)
        diff = 100 * (main["acc_mean"] - best["acc_mean"]) if q is None else 100 * q["mean"]
        ci = ""
        if q is not None and q["ci95"] is not None:
            ci = f", 95 % interval [{100 * q['ci95'][0]:+.1f}, {100 * q['ci95'][1]:+.1f}]"
        side = (q or {}).get("side")
        if side in ("above", "below"):
            how = f"{abs(diff):.1f} points {side}"
        else:  # a tie (the interval holds 0), or no interval (one task)
            how = f"{'tied with' if side == 'tie' else 'against'} ({diff:+.1f} points)"
        said += f": {how} {best['name']} ({best['acc_mean']:.4f}{ci})"
        a, b = main["latency_ms_batch1"], best["latency_ms_batch1"]
        if a and b:
            said += f" at {b / a:.1f}× lower latency" if b >= a else f" at {a / b:.1f}× its latency"
    f = r.get("frontier") or {}
    place = next((p for p in f.get("policies", []) if p["name"] == main["name"]), None)
    if place is not None and place["position"] == "below":
        pt = next((p for p in f["points"] if p["method"] == place["frontier_method"]), None)
        lat = "" if pt is None else f" in {pt['latency_ms_batch1']:.3g} ms"
        said += (
            f"; below the optimizers' accuracy–latency frontier: {place['frontier_method']} "
            f"reaches {place['frontier_acc']:.4f}{lat} ({main['name']}: "
            f"{place['latency_ms_batch1']:.3g} ms)"
        )
    elif place is not None:
        said += "; on or above the optimizers' accuracy–latency frontier"
    if (r.get("timing") or {}).get("warning"):
        said += " (latencies noisy: see the warning under the table)"
    return said + "."


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table's lines: the header, its rule, one line per row."""
    rule = "|" + "---|" * len(header)
    return [f"| {' | '.join(header)} |", rule, *(f"| {' | '.join(row)} |" for row in rows)]


def _fixed(v: float | None, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


def paired_lines(p: dict[str, Any] | None) -> list[str]:
    """report.md's paired-difference table."""
    if not p or not p["pairs"]:
        return []
    rows = [
        [
            q["a"],
            q["b"],
            str(q["n"]),
            f"{q['mean']:+.4f}",
            "–" if q["ci95"] is None else f"[{q['ci95'][0]:+.4f}, {q['ci95'][1]:+.4f}]",
            q["side"] or "–",
            "yes" if q["ladder"] else "",
        ]
        for q in p["pairs"]
    ]
    return [
        "",
        "## Paired differences",
        "",
        f"Accuracy of a minus accuracy of b per held-out task (each task's accuracy averaged over "
        f"its samples; every method starts from the same draws), paired over the tasks: mean and "
        f"{p['confidence']:.0%} confidence interval (Student t over tasks; none with one task). "
        "a is above or below b when the interval lies above or below 0, a tie when it contains "
        f"0. `ladder`: a step of the ablation ladder {' < '.join(p['ladder'])} (same k, "
        "optimizer subset and state input as the main row).",
        "",
        *md_table(["a", "b", "tasks", "mean difference", "95 % CI", "a vs b", "ladder"], rows),
    ]


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
            _fixed(q["frontier_acc"], ".4f"),
            _fixed(q["margin"], "+.4f"),
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
            _fixed(q["acc_mean"], ".4f"),
            _fixed(q["latency_ms_batch1"], ".3f"),
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
