"""The evaluation report's plots (PNG, matplotlib on the Agg backend): accuracy against latency,
the recorded-step cosine, the local-policy check, the path diagnosis, the accuracy-latency frontier
and the k study;
read from a ``report.json`` dict (docs/report.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lohp_cli.report.comparison import k_study
from lohp_cli.timing import LATENCY_LABEL


def write_plots(r: dict[str, Any], out: Path) -> None:
    """accuracy_vs_latency.png, cosine_hist.png, locality.png, path_diagnosis.png, frontier.png
    and (with ≥ 2 Lo-Hp policies) k_study.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for m in r["methods"]:
        lat = m["latency_ms_batch1"]
        if lat and m["acc_mean"] is not None:
            ax.errorbar(lat, m["acc_mean"], yerr=m["acc_std"], xerr=_iqr_err(m), fmt="o", capsize=3)
            _label(ax, m["name"], lat, m["acc_mean"])
    _accuracy_vs_latency(ax, r["device"], "accuracy vs latency")
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_latency.png", dpi=120)
    plt.close(fig)
    if r["cosine"]["n"]:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.hist(r["cosine"]["values"], bins=30, range=(-1, 1))
        ax.set_xlabel("cosine(policy step, recorded step), normalised space")
        ax.set_ylabel("steps")
        ax.set_title("recorded-step cosine (the store's source runs)")
        fig.tight_layout()
        fig.savefig(out / "cosine_hist.png", dpi=120)
        plt.close(fig)
    if r.get("locality"):
        locality_plot(r["locality"], out)
    if r.get("path_diagnosis"):
        path_diagnosis_plot(r["path_diagnosis"], out)
    if (r.get("frontier") or {}).get("points"):
        frontier_plot(r["frontier"], r["device"], out)
    ks = k_study(r)
    if len(ks) >= 2:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        k = [row["k"] for row in ks]
        ax.errorbar(k, [row["acc_mean"] for row in ks], [row["acc_std"] for row in ks], fmt="o-")
        ax.set_xscale("log", base=2)
        ax.set_xticks(k, [str(v) for v in k])
        ax.set_xlabel("matching factor k (N = T / k)")
        ax.set_ylabel("test accuracy", color="C0")
        ax2 = ax.twinx()
        ax2.plot(k, [row["latency_ms_batch1"] for row in ks], "s--", color="C1")
        ax2.set_ylabel(LATENCY_LABEL, color="C1")
        ax.set_title("k study (lo-hp)")
        fig.tight_layout()
        fig.savefig(out / "k_study.png", dpi=120)
        plt.close(fig)


def locality_plot(loc: dict[str, Any], out: Path) -> None:
    """locality.png: per step index, the median (and interquartile band) of the cosine between
    the policy's step and the seed-averaged step, beside the run-vs-run ceiling; one panel per
    optimizer, one colour per split (weight space)."""
    import matplotlib.pyplot as plt

    opts = list(loc["optimizers"])
    fig, axes = plt.subplots(1, len(opts), figsize=(5 * len(opts), 3.5), squeeze=False)
    for ax, opt in zip(axes[0], opts, strict=True):
        for c, (split, s) in enumerate(loc["optimizers"][opt].items()):
            for measure, style in (("policy_vs_mean", "-"), ("run_vs_run", ":")):
                steps = s["weight"][measure]["per_step"]
                x = list(range(len(steps)))
                med = [p["median"] for p in steps]
                label = f"{split} tasks: {LOCALITY_LABELS[measure]}"
                ax.plot(x, med, style, color=f"C{c}", label=label)
                if measure == "policy_vs_mean":
                    lo, hi = [p["q1"] for p in steps], [p["q3"] for p in steps]
                    ax.fill_between(x, lo, hi, color=f"C{c}", alpha=0.2)
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_ylim(-1, 1)
        ax.set_xlabel("policy step i")
        ax.set_ylabel("cosine (weight space)")
        ax.set_title(f"local-policy check: the policy's step vs {opt}'s, along {opt}'s path")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "locality.png", dpi=120)
    plt.close(fig)


def _band(ax: Any, s: dict[str, Any], style: str, color: str, label: str) -> None:
    """A summary's per-step medians as a line, its interquartile range as a band."""
    steps = s["per_step"]
    x = list(range(len(steps)))
    ax.plot(x, [p["median"] for p in steps], style, color=color, label=label)
    lo, hi = [p["q1"] for p in steps], [p["q3"] for p in steps]
    if style == "-" and all(v is not None for v in [*lo, *hi]):
        ax.fill_between(x, lo, hi, color=color, alpha=0.2)


def path_diagnosis_plot(d: dict[str, Any], out: Path) -> None:
    """path_diagnosis.png: per policy step, the policy's path against the reference optimizer's:
    the distance to the nearest recorded state of the store (weight space), the support loss,
    and per layer the step-norm ratio and the distance from θ₀ (medians over tasks)."""
    import matplotlib.pyplot as plt

    ref = d["reference"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    ax = axes[0][0]
    for c, name in enumerate(("policy", "reference")):
        who = "policy" if name == "policy" else ref
        _band(ax, d["nearest"]["weight"]["matched"][name], "-", f"C{c}", f"{who}: same step")
        _band(ax, d["nearest"]["weight"]["any"][name], ":", f"C{c}", f"{who}: any step")
    ax.set_ylabel("to the nearest recorded state (weight L2)")
    ax.set_title("how far from the store's recorded states")
    ax = axes[0][1]
    for c, name in enumerate(("policy", "reference")):
        _band(ax, d["support_loss"][name], "-", f"C{c}", "policy" if name == "policy" else ref)
    ax.set_yscale("log")
    ax.set_ylabel("support-set loss (log)")
    ax.set_title("task loss on the support set")
    ax = axes[1][0]
    for c, layer in enumerate(d["layers"]):
        steps = layer["step_ratio"]["per_step"]
        y = [p["median"] for p in steps]
        ax.plot(range(len(y)), y, "-", color=f"C{c % 10}", label=layer["name"])
    ax.axhline(1, color="grey", lw=0.5)
    ax.set_yscale("log")
    ax.set_ylabel(f"‖policy step‖ / ‖{ref} step‖ (log)")
    ax.set_title("per layer: the policy's step against the optimizer's")
    ax = axes[1][1]
    for c, layer in enumerate(d["layers"]):
        for name, style in (("policy", "-"), ("reference", "--")):
            y = [p["median"] for p in layer["distance_from_start"][name]["per_step"]]
            label = layer["name"] if name == "policy" else None
            ax.plot(range(len(y)), y, style, color=f"C{c % 10}", label=label)
    ax.set_ylabel("‖θ − θ₀‖ per layer")
    ax.set_title(f"per layer: distance from θ₀ (solid: policy, dashed: {ref})")
    for ax in axes.ravel():
        ax.set_xlabel("policy step i")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "path_diagnosis.png", dpi=120)
    plt.close(fig)


LOCALITY_LABELS = {
    "policy_vs_mean": "policy vs seed-averaged step",
    "policy_vs_run": "policy vs one run",
    "run_vs_run": "run vs run (ceiling)",
}


def _iqr_err(m: dict[str, Any]) -> list[list[float]] | None:
    """A point's latency interquartile range as matplotlib's asymmetric ``xerr``, or None."""
    iqr, lat = m.get("latency_iqr_ms"), m["latency_ms_batch1"]
    if not iqr or lat is None:
        return None
    return [[max(0.0, lat - iqr[0])], [max(0.0, iqr[1] - lat)]]


def _label(ax: Any, text: str, x: float, y: float, **style: Any) -> None:
    """``text`` beside the point (x, y)."""
    kw = {"fontsize": 7, "xytext": (4, 4), **style}
    ax.annotate(text, (x, y), textcoords="offset points", **kw)


def _accuracy_vs_latency(ax: Any, device: str, title: str) -> None:
    """Test accuracy against latency on a log scale."""
    ax.set_xscale("log")
    ax.set_xlabel(f"{LATENCY_LABEL}, log, {device}")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)


def frontier_plot(f: dict[str, Any], device: str, out: Path) -> None:
    """frontier.png: accuracy against latency (log), one curve per optimizer over its step
    budgets, the frontier as a step function, the other methods as labelled points."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for c, opt in enumerate(dict.fromkeys(p["optimizer"] for p in f["points"])):
        pts = [p for p in f["points"] if p["optimizer"] == opt]
        x, y = [p["latency_ms_batch1"] for p in pts], [p["acc_mean"] for p in pts]
        ax.plot(x, y, "-", color=f"C{c}", lw=1, alpha=0.6)
        xerr = [_iqr_err(p) for p in pts]
        if all(e is not None for e in xerr):  # every point has its interquartile range
            lo = [e[0][0] for e in xerr if e is not None]
            hi = [e[1][0] for e in xerr if e is not None]
            ax.errorbar(x, y, xerr=[lo, hi], fmt="o", color=f"C{c}", ms=4, capsize=2, label=opt)
        else:
            ax.plot(x, y, "o", color=f"C{c}", ms=4, label=opt)
        for p in pts:
            style = {"fontsize": 6, "xytext": (2, -8), "color": f"C{c}"}
            _label(ax, str(p["steps"]), p["latency_ms_batch1"], p["acc_mean"], **style)
    front = f["pareto"]
    xs = [p["latency_ms_batch1"] for p in front]
    right = max(p["latency_ms_batch1"] for p in [*f["points"], *f["policies"]]) * 1.2
    ys = [p["acc_mean"] for p in [*front, front[-1]]]
    ax.step([*xs, right], ys, where="post", color="black", ls="--", lw=1, label="frontier")
    for q in f["policies"]:
        ax.plot(q["latency_ms_batch1"], q["acc_mean"], "*", color="black", ms=9)
        _label(ax, q["name"], q["latency_ms_batch1"], q["acc_mean"])
    _accuracy_vs_latency(
        ax, device, "accuracy-latency frontier (numbers: optimizer steps; bars: latency IQR)"
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "frontier.png", dpi=120)
    plt.close(fig)
