"""The report's timings: the ``timing`` section of report.json (how the latencies were measured,
what the machine was doing meanwhile, a warning when they are noisy) and its report.md lines.
docs/report.md ("Latency") documents the protocol."""

from __future__ import annotations

from typing import Any

from lohp_cli.timing import SPREAD_WARN, TimingRun

# what report.json keeps of the generated store's timing: its batched throughput (the latency
# generate measured is left out: the report's one latency per method is evaluate's)
GENERATE_KEYS = ("batched_ms_per_sample", "batch_size", "batches_timed", "warmup_batches", "device")


def generate_timing(timing: dict[str, Any] | None) -> dict[str, Any] | None:
    """The generated store's batched throughput, without its own latency."""
    if not timing:
        return None
    return {k: timing[k] for k in GENERATE_KEYS if k in timing}


WAIT_WARN = 1.25  # a wall time above this many times the CPU time: the process waited for a core


def timing_warning(methods: list[dict[str, Any]], run: dict[str, Any]) -> str | None:
    """Why the report's latencies are not to be trusted as measured, or None: a row whose
    interquartile range exceeds ``SPREAD_WARN`` of its median, or, with one thread, a row whose
    median wall time exceeds ``WAIT_WARN`` times its CPU time (the process waited for a core:
    the machine's other work, whose load average is named, took it)."""
    why = []
    noisy = [
        m["name"]
        for m in methods
        if m.get("latency_iqr_ms") and m["latency_ms_batch1"]
        and (m["latency_iqr_ms"][1] - m["latency_iqr_ms"][0]) > SPREAD_WARN * m["latency_ms_batch1"]
    ]  # fmt: skip
    if noisy:
        names = ", ".join(noisy[:5]) + (f" and {len(noisy) - 5} more" if len(noisy) > 5 else "")
        why.append(
            f"the interquartile range of {len(noisy)} row(s) exceeds {SPREAD_WARN:.0%} of its "
            f"median ({names})"
        )
    load = (run.get("load_average") or {}).get("during_mean")
    cores = run.get("cores", 1)
    waited = [
        m["name"]
        for m in methods
        if run.get("threads", 1) == 1 and m.get("cpu_ms_batch1") and m["latency_ms_batch1"]
        and m["latency_ms_batch1"] > WAIT_WARN * m["cpu_ms_batch1"]
    ]  # fmt: skip
    if waited:
        names = ", ".join(waited[:5]) + (f" and {len(waited) - 5} more" if len(waited) > 5 else "")
        busy = "" if load is None else f" (load average {load:.2f} on {cores} core(s))"
        why.append(
            f"the process waited for a core{busy}: the wall time of {len(waited)} row(s) exceeds "
            f"{WAIT_WARN:g}× its CPU time ({names})"
        )
    if not why:
        return None
    return "; ".join(why) + ". Re-run evaluate on an idle machine before reading latencies."


def timing_section(
    device: str,
    repeats: int,
    run: TimingRun | None,
    methods: list[dict[str, Any]],
    generate: dict[str, Any] | None,
) -> dict[str, Any]:
    """report.json's ``timing``: the device, the warm-up, the rounds asked (``repeats``) and run,
    the machine during the timing (:class:`lohp_cli.timing.TimingRun`), the warning and the
    generated store's batched throughput."""
    measured = run.to_json() if run is not None else {"protocol": "interleaved", "rounds": 0}
    out = {"device": device, "warmup_runs": 1, "repeats": repeats, **measured}
    out["warning"] = timing_warning(methods, out)
    out["generate"] = generate_timing(generate)
    return out


def latency_cells(m: dict[str, Any]) -> list[str]:
    """A row's latency cells in report.md: median, interquartile range, CPU time (ms)."""
    lat, iqr, cpu = m["latency_ms_batch1"], m.get("latency_iqr_ms"), m.get("cpu_ms_batch1")
    return [
        "-" if lat is None else f"{lat:.3f}",
        "-" if not iqr else f"{iqr[0]:.3g}–{iqr[1]:.3g}",
        "-" if cpu is None else f"{cpu:.3g}",
    ]


def timing_lines(r: dict[str, Any]) -> list[str]:
    """What the report's timings measure, on which device, how the machine was meanwhile, and
    the warning (a report from before the interleaved timing: its device and repeats only)."""
    t = r.get("timing") or {"device": r["device"]}
    if t.get("protocol") != "interleaved":  # a report of an older lohp
        reps = ""
        if "repeats" in t:
            reps = f", median of {t['repeats']} timed runs after 1 untimed warm-up run"
        lines = [
            "Latency: the time to produce the weights of one task at batch size 1 on "
            f"{t['device']}{reps}."
        ]
    else:
        load = t.get("load_average") or {}

        def num(v: float | None) -> str:
            return "–" if v is None else f"{v:.2f}"

        lines = [
            "Latency: the time to produce the weights of one task at batch size 1 on "
            f"{t['device']} with {t.get('threads', 1)} intra-op thread(s), timed after every "
            f"method was scored: {t['rounds']} round(s) in which every method ran once, in an "
            "order rotated each round (interleaved, so load from other processes hits every "
            "method alike), after 1 untimed warm-up run each. Median, interquartile range (IQR) "
            "and the process's CPU time per run; a wall time far above the CPU time means the "
            f"process waited for a core. Load average (1 min) on {t.get('cores', '?')} core(s): "
            f"{num(load.get('before'))} before, {num(load.get('during_mean'))} during (max "
            f"{num(load.get('during_max'))}), {num(load.get('after'))} after; "
            f"{t.get('wall_s', 0):.0f} s of timing."
        ]
        if t.get("warning"):
            said = t["warning"][:1].upper() + t["warning"][1:]
            lines += ["", f"**Warning: noisy latencies.** {said}", ""]
    g = t.get("generate")
    if g:
        lines.append(
            f"Batched throughput of `lohp generate`: {g['batched_ms_per_sample']:.3f} ms per "
            f"sample on {g['device']} (median over {g['batches_timed']} batch(es) of up to "
            f"{g['batch_size']}, after {g['warmup_batches']} untimed warm-up batch(es)); a "
            "batch shares each step's fixed cost, so this is not a latency."
        )
    return lines
