"""The report's comparisons in numbers: paired per-task differences with confidence intervals
(``paired``: the main row and the ablation ladder), the k study and the one-line verdict, as
report.json sections and report.md lines; the accuracy-latency frontier and the speed-up at
matched accuracy are :mod:`lohp_cli.report.frontier`. The statistics are :mod:`lohp_cli.stats`;
the format is docs/report.md."""

from __future__ import annotations

from typing import Any

from lohp_cli.methods.base import MethodResult
from lohp_cli.stats import paired_difference

CONFIDENCE = 0.95
LADDER = ("hypernetwork", "lo-di", "lo-op", "lo-hp")  # the ablation ladder, lowest rung first
_SAME_RUNG = ("k", "optimizers", "state_input")  # what a rung shares with the main row


def rounded(v: float | None) -> float | None:
    """``v`` to 4 decimals, as report.json keeps its numbers (None stays None)."""
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
    ci = None if d.low is None else [rounded(d.low), rounded(d.high)]
    return {
        "a": a.name,
        "b": b.name,
        "n": d.n,
        "mean": rounded(d.mean),
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
