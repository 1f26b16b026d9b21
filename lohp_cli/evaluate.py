"""Stage 4: score generated weights on their tasks' test splits against baselines.

Every method starts from the same initial-weight draws: sample j of task t starts at
θ_0 = denormalise(s_0) with s_0 ~ N(0, I) seeded by (seed, task, j), exactly as ``generate`` does,
so optimizers and policies are compared on the same tasks and starting points. Optimizers run for
the store's full run length (T·r steps) and for N steps (as many as the policy takes).

Latency (``latency_ms_batch1``, what the paper calls latency) is the time to produce the weights of
one task at batch size 1: the median of repeated timed runs after one untimed warm-up run
(CUDA-synchronised on GPU), on the report's ``device``. Batched throughput is measured by
``generate`` and copied from the generated store into ``timing.generate``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import lohp_cli.store.chunks as chunks
from lohp_cli.checkpoint import atomic_write_bytes, atomic_write_json
from lohp_cli.config import (
    OPTIMIZERS,
    EvaluateConfig,
    GenerateConfig,
    OptimizersConfig,
    TrainConfig,
)
from lohp_cli.errors import CompatibilityError, ConfigError, StoreError
from lohp_cli.policy.artifact import (
    generate_batch,
    has_tokens,
    initial_state,
    load_policy,
    style_token,
)
from lohp_cli.policy.context import TaskContext, policy_probe, support_probe_bank, task_context
from lohp_cli.policy.state import StateProbe
from lohp_cli.runtime import derive_seed, provenance, resolve_device
from lohp_cli.scoring import accuracy
from lohp_cli.store.generated import open_generated
from lohp_cli.store.sampler import matched_indices
from lohp_cli.tasks.inputs import TaskTensors
from lohp_cli.tasks.models import build_target, flat_params, load_flat
from lohp_cli.timing import time_ms

REPORT_SCHEMA = "lohp.report"
REPORT_VERSION = 1
Progress = Callable[[dict[str, Any]], None]
LATENCY_LABEL = "latency (ms per task, batch 1)"


@dataclass
class MethodResult:
    name: str
    kind: str  # "generated" | "policy" | "optimizer"
    accuracies: list[float] = field(default_factory=list)
    latency_ms_batch1: float | None = None  # one task at batch size 1, median after a warm-up
    steps: int | None = None
    policy: dict[str, Any] | None = None  # method, k, optimizers of a policy's result

    def summary(self) -> dict[str, Any]:
        a = np.asarray(self.accuracies)
        return {
            "name": self.name,
            "kind": self.kind,
            "acc_mean": round(float(a.mean()), 4),
            "acc_std": round(float(a.std()), 4),
            "n": int(a.size),
            "latency_ms_batch1": None
            if self.latency_ms_batch1 is None
            else round(self.latency_ms_batch1, 4),
            "steps": self.steps,
            "policy": self.policy,
        }


def policy_info(meta: dict[str, Any], token: int | None = None) -> dict[str, Any]:
    """What identifies a policy's row in a report: method, k, N, its optimizer subset, its state
    input and (for policies with optimizer tokens) the style it generated with."""
    tc = meta["train_config"]
    opts = tc.get("optimizers")
    return {
        "method": meta["method"],
        "k": meta["k"],
        "N": meta["N"],
        "optimizers": sorted(opts) if opts else None,
        "state_input": tc.get("policy", {}).get("state_input", "none"),
        "style": None if token is None else OPTIMIZERS[token],
    }


def _start(stats: Any, task_id: str, j: int, seed: int, size: int) -> torch.Tensor:
    """Initial weights θ_0 ``[P]`` of (task, sample j): the generator's s_0, de-normalised."""
    return stats.denormalize(initial_state(seed, task_id, j, size))


def run_optimizer(
    ctx: TaskContext,
    name: str,
    theta0: torch.Tensor,
    data: TaskTensors,
    steps: int,
    batch_size: int,
    optim: OptimizersConfig,
    seed: int,
    device: str,
) -> torch.nn.Module:
    """Train the target model from ``theta0`` for ``steps`` with a real optimizer."""
    from lohp_cli.optim import build_optimizer
    from lohp_cli.optim.loop import train_loop

    net = build_target(ctx.model_cfg, ctx.family.data.image_shape, ctx.family.cfg.ways).to(device)
    load_flat(net, theta0.to(device))
    opt = build_optimizer(name, net.parameters(), optim)
    train_loop(
        net,
        opt,
        data.x_train,
        data.y_train,
        steps,
        max(steps, 1),
        batch_size,
        torch.Generator().manual_seed(seed),
    )
    return net


def cosine_check(
    model: torch.nn.Module,
    meta: dict[str, Any],
    stats: Any,
    ctx: TaskContext,
    runs: int,
    device: str,
) -> list[float]:
    """Cosine similarity of the policy's step f(θ_{k·i}) with the matched offline step Δ_i."""
    if meta["method"] == "hypernetwork" or runs == 0:
        return []
    out: list[float] = []
    store = ctx.store
    chosen = list(store.iter_runs())[:runs]
    bank = None
    if getattr(model, "needs_probe", False):
        bank = support_probe_bank(ctx, (a["task_id"] for _, a in chosen), stats, device)
    for rid, attrs in chosen:
        w = torch.from_numpy(
            store.weights(rid)[matched_indices(attrs["steps_written"], meta["k"])]
        ).to(device)
        x = stats.normalize(w)  # [N+1, P]
        c = stats.normalize_condition(
            torch.from_numpy(store.condition(attrs["task_id"])).to(device)
        )
        n = x.shape[0] - 1
        probe = None if bank is None else bank.probe([attrs["task_id"]])
        tok = None
        if has_tokens(meta):  # each offline step is scored in its own optimizer's style
            tok = torch.full((n,), OPTIMIZERS.index(attrs["optimizer"]), device=device)
        with torch.no_grad():
            f, _ = model.means(x[:-1], torch.arange(n, device=device), c.expand(n, -1), tok, probe)
        delta = x[1:] - x[:-1]
        out += torch.nn.functional.cosine_similarity(f, delta, dim=1).cpu().tolist()
    return out


def evaluate(cfg: EvaluateConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Score the generated weights and every baseline; write report.json/.md and plots."""
    from lohp_cli.policy.fit import train_policy

    emit = progress or (lambda _e: None)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"Report directory '{out}' is a file; choose another --out.")
    g = open_generated(cfg.generated)
    gattrs = dict(g.attrs)
    device = resolve_device(cfg.device)
    gcfg = GenerateConfig.model_validate(gattrs["config"])
    model, meta, stats = load_policy(gattrs["policy"]["path"], device)
    ctx = task_context(meta, gcfg.store, gcfg.data_root)
    store_cfg = ctx.store.attrs["config"]
    steps_full, batch_size = store_cfg["steps"], store_cfg["batch_size"]
    optim = OptimizersConfig.model_validate(store_cfg["optim"])
    size = meta["param_count"]
    tasks = list(gattrs["tasks"])
    samples = gcfg.samples
    data = {t: ctx.task_data(t, device) for t in tasks}
    net = build_target(ctx.model_cfg, ctx.family.data.image_shape, ctx.family.cfg.ways).to(device)
    results: list[MethodResult] = []

    # the generated weights themselves
    tok0 = style_token(meta, gcfg.style)
    main = MethodResult(
        f"{meta['method']} (k={meta['k']})",
        "generated",
        steps=meta["N"],
        policy=policy_info(meta, tok0),
    )
    for t in tasks:
        where = f"generated store '{cfg.generated}', task {t}, array 'weights'"
        w = torch.from_numpy(chunks.read(g[t]["weights"], ..., where)).to(device)
        if not torch.isfinite(w).all():
            raise StoreError(f"Generated weights of task {t} in '{cfg.generated}' are not finite.")
        if w.shape[1] != size:
            raise CompatibilityError(
                f"Generated weights have {w.shape[1]} entries; the policy's "
                f"target model has {size}."
            )
        main.accuracies += [accuracy(net, w[j], data[t])[0] for j in range(w.shape[0])]
    c0 = next(iter(data.values())).condition
    c0 = stats.normalize_condition(c0)[None]
    s0 = torch.randn(1, size, device=device)
    bank = policy_probe(model, ctx, data, stats, device)
    p0 = None if bank is None else bank.probe(tasks[:1])
    main.latency_ms_batch1 = time_ms(
        lambda: _generate_one(model, meta, c0, s0, p0, tok0), cfg.latency_repeats, device
    )
    results.append(main)
    emit({"event": "method", **main.summary()})

    # other trained policies, generated here on the same tasks and starting points
    policies = dict(cfg.policies)
    if "hypernetwork" in cfg.baselines and "hypernetwork" not in policies:
        hdir = out / "baselines" / "hypernetwork"
        emit({"event": "info", "message": f"training the hypernetwork baseline into {hdir}"})
        train_policy(
            TrainConfig.model_validate(
                {
                    "store": ctx.store.location,
                    "out": str(hdir),
                    "method": "hypernetwork",
                    "k": meta["k"],
                    "steps": cfg.hypernetwork_steps,
                    "device": device,
                    "optimizers": meta["train_config"].get("optimizers"),
                    "seed": gcfg.seed,
                }
            )
        )
        policies["hypernetwork"] = str(hdir)
    from lohp_cli.l2o import L2O_METHODS
    from lohp_cli.l2o.apply import is_l2o_policy, l2o_accuracies

    unpaired = [b for b in cfg.baselines if b in L2O_METHODS and b not in policies]
    if unpaired:
        raise ConfigError(
            f"Baseline {unpaired[0]!r} is a learned optimizer: pass its policy with --policy "
            f"{unpaired[0]}=DIR (train one with 'lohp train-policy --method {unpaired[0]}')."
        )
    for name, pdir in policies.items():
        if is_l2o_policy(pdir):  # a learned optimizer: trained here from the same starts
            _, accs = l2o_accuracies(
                pdir, meta["store_compat"], net, data,
                lambda t, j: _start(stats, t, j, gcfg.seed, size),
                samples, steps_full, batch_size, gcfg.seed, device,
            )  # fmt: skip
            r = MethodResult(name, "l2o", accs, steps=steps_full)
            results.append(r)
            emit({"event": "method", **r.summary()})
            continue
        pm, pmeta, pstats = load_policy(pdir, device)
        if pmeta["store_compat"] != meta["store_compat"]:
            raise CompatibilityError(
                f"Policy '{pdir}' was trained for another task family or "
                "target model than the generated weights."
            )
        ptok = style_token(pmeta, None)
        r = MethodResult(
            f"{name} (k={pmeta['k']})" if pmeta["method"] != "hypernetwork" else name,
            "policy",
            steps=pmeta["N"] if pmeta["method"] != "hypernetwork" else 1,
            policy=policy_info(pmeta, ptok),
        )
        pbank = policy_probe(pm, ctx, data, pstats, device)
        for t in tasks:
            c = pstats.normalize_condition(data[t].condition)[None]
            probe = None if pbank is None else pbank.probe([t])
            for j in range(samples):
                s = initial_state(gcfg.seed, t, j, size)[None].to(device)
                with torch.no_grad():
                    th = pstats.denormalize(_generate_one(pm, pmeta, c, s, probe, ptok))[0]
                r.accuracies.append(accuracy(net, th, data[t])[0])
        cp = pstats.normalize_condition(next(iter(data.values())).condition)[None]
        pp = None if pbank is None else pbank.probe(tasks[:1])
        r.latency_ms_batch1 = time_ms(
            lambda pm=pm, pmeta=pmeta, cp=cp, pp=pp, pt=ptok: _generate_one(
                pm, pmeta, cp, s0, pp, pt
            ),
            cfg.latency_repeats,
            device,
        )
        results.append(r)
        emit({"event": "method", **r.summary()})

    # real optimizers for the full run length and for as many steps as each policy takes
    policy_steps = {r.steps for r in results if r.steps and r.steps > 1}
    optimizer_repeats = max(3, cfg.latency_repeats // 4)
    for name in [b for b in cfg.baselines if b not in ("hypernetwork", *L2O_METHODS)]:
        for steps in sorted({steps_full, *policy_steps}, reverse=True):
            r = MethodResult(f"{name}-{steps}", "optimizer", steps=steps)
            for t in tasks:
                for j in range(samples):
                    theta0 = _start(stats, t, j, gcfg.seed, size)
                    m = run_optimizer(
                        ctx,
                        name,
                        theta0,
                        data[t],
                        steps,
                        batch_size,
                        optim,
                        derive_seed(gcfg.seed, "batches", t, j),
                        device,
                    )
                    r.accuracies.append(accuracy(net, flat_params(m), data[t])[0])
            t0 = tasks[0]
            theta0 = _start(stats, t0, 0, gcfg.seed, size)
            r.latency_ms_batch1 = time_ms(
                lambda name=name, steps=steps, theta0=theta0, t0=t0: run_optimizer(
                    ctx, name, theta0, data[t0], steps, batch_size, optim, 0, device
                ),
                optimizer_repeats,
                device,
            )
            results.append(r)
            emit({"event": "method", **r.summary()})

    cos = cosine_check(model, meta, stats, ctx, cfg.cosine_runs, device)
    report = {
        "schema": REPORT_SCHEMA,
        "schema_version": REPORT_VERSION,
        "generated": cfg.generated,
        "policy": gattrs["policy"],
        "family": meta["store_compat"]["family"]["name"],
        "model": meta["store_compat"]["model"]["name"],
        "param_count": size,
        "tasks": tasks,
        "samples_per_task": samples,
        "optimizer_steps_full": steps_full,
        "device": device,
        "methods": [r.summary() for r in results],
        "timing": {
            "device": device,
            "warmup_runs": 1,
            "repeats": cfg.latency_repeats,
            "optimizer_repeats": optimizer_repeats,
            "generate": gattrs.get("timing"),
        },
        "cosine": {
            "n": len(cos),
            "mean": None if not cos else round(float(np.mean(cos)), 4),
            "median": None if not cos else round(float(np.median(cos)), 4),
            "values": [round(c, 4) for c in cos],
        },
        "config": cfg.model_dump(mode="json"),
        "provenance": provenance(device),
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "report.json", report)
    atomic_write_bytes(out / "report.md", markdown_report(report).encode())
    if cfg.plots:
        write_plots(report, out)
    return report


def _generate_one(
    model: torch.nn.Module,
    meta: dict[str, Any],
    c: torch.Tensor,
    s0: torch.Tensor,
    probe: StateProbe | None = None,
    token: int | None = None,
) -> torch.Tensor:
    """The final normalised weights ``[B, P]`` of a mean-mode generation."""
    with torch.no_grad():
        return generate_batch(model, meta, c, s0, "mean", None, False, probe, token)[:, -1]


def markdown_report(r: dict[str, Any]) -> str:
    """The report as Markdown: a result table plus the local-policy check."""
    lines = [
        f"# lohp evaluation: {r['family']} / {r['model']} (P = {r['param_count']})",
        "",
        f"{len(r['tasks'])} held-out task(s) × {r['samples_per_task']} sample(s); device "
        f"{r['device']}; generated by `{r['policy']['path']}` ({r['policy']['method']}, "
        f"k = {r['policy']['k']}, N = {r['policy']['N']}).",
        "",
        f"| method | kind | steps | accuracy (mean ± std) | {LATENCY_LABEL} |",
        "|---|---|---|---|---|",
    ]
    for m in r["methods"]:
        lat = "-" if m["latency_ms_batch1"] is None else f"{m['latency_ms_batch1']:.3f}"
        lines.append(
            f"| {m['name']} | {m['kind']} | {m['steps']} | "
            f"{m['acc_mean']:.4f} ± {m['acc_std']:.4f} | {lat} |"
        )
    ks = k_study(r)
    if len(ks) >= 2:
        opts = ks[0]["policy"]["optimizers"]
        lines += [
            "",
            f"k study (lo-hp trained on {'+'.join(opts) if opts else 'all'} runs):",
            "",
            f"| k | N | accuracy | {LATENCY_LABEL} |",
        ]
        lines.append("|---|---|---|---|")
        for row in ks:
            lat = "-" if row["latency_ms_batch1"] is None else f"{row['latency_ms_batch1']:.3f}"
            lines.append(
                f"| {row['k']} | {row['policy']['N']} | "
                f"{row['acc_mean']:.4f} ± {row['acc_std']:.4f} | {lat} |"
            )
    ref = next((m["policy"] for m in r["methods"] if m["kind"] == "generated"), None) or {}
    combos = [
        m
        for m in r["methods"]
        if (m.get("policy") or {}).get("method") == "lo-hp"
        and m["policy"]["k"] == ref.get("k")
        and m["policy"].get("state_input", "none") == "none"
    ]
    if len({str(m["policy"]["optimizers"]) for m in combos}) < 2:
        combos = []
    if combos:
        lines += ["", "Optimizer combinations (policies trained on a subset of the runs):", ""]
        lines += ["| method | k | trained on | accuracy |", "|---|---|---|---|"]
        for m in combos:
            opts = m["policy"]["optimizers"]
            on = "+".join(opts) if opts else "all"
            if m["policy"].get("style"):
                on += f" (optimizer token, generated as {m['policy']['style']})"
            lines.append(
                f"| {m['name']} | {m['policy']['k']} | {on} | "
                f"{m['acc_mean']:.4f} ± {m['acc_std']:.4f} |"
            )
    lines += ["", *timing_lines(r)]
    c = r["cosine"]
    if c["n"]:
        lines += [
            "",
            f"Local-policy check: cosine similarity of the policy's step with the matched "
            f"offline step over {c['n']} steps: mean {c['mean']:.3f}, median "
            f"{c['median']:.3f}.",
        ]
    return "\n".join(lines) + "\n"


def timing_lines(r: dict[str, Any]) -> list[str]:
    """What the report's timings measure, on which device (a report without ``timing``: the
    device only)."""
    t = r.get("timing") or {"device": r["device"]}
    reps = ""
    if "repeats" in t:
        reps = (
            f", median of {t['repeats']} timed runs (optimizers: {t['optimizer_repeats']}) after "
            f"{t['warmup_runs']} untimed warm-up run"
        )
    lines = [
        f"Latency: the time to produce the weights of one task at batch size 1 on {t['device']}"
        f"{reps}."
    ]
    g = t.get("generate")
    if g:
        lines.append(
            f"Batched throughput of `lohp generate`: {g['batched_ms_per_sample']:.3f} ms per "
            f"sample on {g['device']} (median over {g['batches_timed']} batch(es) of up to "
            f"{g['batch_size']}, after {g['warmup_batches']} untimed warm-up batch(es)); its "
            f"latency there: {g['latency_ms_batch1']:.3f} ms per task (batch 1)."
        )
    return lines


def write_plots(r: dict[str, Any], out: Path) -> None:
    """accuracy_vs_latency.png, cosine_hist.png and (with ≥ 2 Lo-Hp policies) k_study.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for m in r["methods"]:
        lat = m["latency_ms_batch1"]
        if lat:
            ax.errorbar(lat, m["acc_mean"], yerr=m["acc_std"], fmt="o", capsize=3)
            ax.annotate(
                m["name"],
                (lat, m["acc_mean"]),
                fontsize=7,
                xytext=(4, 4),
                textcoords="offset points",
            )
    ax.set_xscale("log")
    ax.set_xlabel(f"{LATENCY_LABEL}, log, {r['device']}")
    ax.set_ylabel("test accuracy")
    ax.set_title("accuracy vs latency")
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_latency.png", dpi=120)
    plt.close(fig)
    if r["cosine"]["n"]:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.hist(r["cosine"]["values"], bins=30, range=(-1, 1))
        ax.set_xlabel("cosine(policy step, offline step)")
        ax.set_ylabel("count")
        ax.set_title("local-policy check")
        fig.tight_layout()
        fig.savefig(out / "cosine_hist.png", dpi=120)
        plt.close(fig)
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
