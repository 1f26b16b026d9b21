"""``lohp evaluate`` and ``lohp evaluate-l2o``: score generated weights, or learned optimizers,
against baselines; a report directory on stdout, a table on stderr."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape

from lohp_cli.cli.common import (
    ConfigOpt,
    DeviceOpt,
    DryRunOpt,
    Event,
    ReportOutOpt,
    command,
    err_console,
    log_info,
    parse_policies,
    run_guarded,
    run_stage,
    set_option,
    split_list,
    verbosity,
    with_default,
)
from lohp_cli.cli.progress import StageProgress

EvaluateSetOpt = set_option("'frontier_steps=[1,2,5,10,20]'")
L2OSetOpt = set_option("instances=16")
EvaluateThreadsOpt = Annotated[
    int | None,
    typer.Option(
        "--threads",
        help=with_default(
            "Intra-op CPU threads (evaluate times one task at batch size 1, which one thread does "
            "steadily on a shared machine; OMP_NUM_THREADS when set).",
            1,
        ),
    ),
]
CONFIG = "lohp_cli.config:EvaluateConfig"
LIBRARY = "lohp_cli.stages.evaluate:evaluate"  # imported when the command runs (torch)
L2O_CONFIG = "lohp_cli.l2o.config:L2OEvaluateConfig"
L2O_LIBRARY = "lohp_cli.stages.evaluate_l2o:evaluate_l2o"


@command("evaluate")
def evaluate(
    generated: Annotated[str | None, typer.Option(help="Output of 'lohp generate'.")] = None,
    out: ReportOutOpt = None,
    baselines: Annotated[
        str | None,
        typer.Option(
            help="Comma list of sgd, adam, sam, hypernetwork, nearest, mean, nearest-noise, "
            "class-rows, gaussian, average-16, reptile, fomaml (a meta-learned start, then Adam; "
            "settings --set meta_start.KEY=...), erm (domain families), prototype (head model), "
            "full-ft (lora stores: Adam on every weight), "
            "l2o, l2o-tt, l2o-flat, m-l2o (learned optimizers need --policy NAME=DIR). "
            "\\[default: sgd,adam,sam,hypernetwork]"
        ),
    ] = None,
    policy: Annotated[
        list[str] | None,
        typer.Option(
            "--policy",
            help="Another trained policy to compare, NAME=DIR (repeatable); NAME@S=DIR: a "
            "diffusion policy with S DDIM steps.",
        ),
    ] = None,
    latency_repeats: Annotated[
        int | None,
        typer.Option(
            help=with_default(
                "Timing rounds (every method timed once per round, interleaved; more are added "
                "while a median is unstable).",
                20,
            )
        ),
    ] = None,
    device: DeviceOpt = None,
    threads: EvaluateThreadsOpt = None,
    config: ConfigOpt = None,
    set_: EvaluateSetOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Score generated weights on held-out tasks against optimizers and other policies.

    Writes report.json, report.md and PNG plots into --out; prints a table on stderr and the
    report directory on stdout.
    """
    flags = {
        "generated": generated,
        "out": out,
        "baselines": split_list(baselines),
        "policies": run_guarded(lambda: parse_policies(policy)),
        "latency_repeats": latency_repeats,
        "device": device,
        "threads": threads,
    }
    run_stage(CONFIG, LIBRARY, _progress, _done, config, set_, flags, dry_run)


_BAR = StageProgress()


def _progress(e: Event) -> None:
    """evaluate's events on stderr: a bar over (method, task) pairs scored, a line per method
    with its accuracy, then a bar over the rounds of the interleaved latency timing."""
    kind = e["event"]
    if kind == "info":
        _BAR.log(e["message"])
    elif kind == "plan":
        total = e["methods"] * e["tasks"]
        if _BAR.active:
            _BAR.update(total=total)
        else:
            _BAR.start("evaluate", total, info="methods × tasks")
    elif kind == "task":
        _BAR.update(advance=1, info=e["method"])
    elif kind == "method" and e["acc_mean"] is None:
        _BAR.log(f"  {escape(e['name'])}: {escape(e.get('note') or 'not applicable')}")
    elif kind == "method":
        _BAR.log(f"  {escape(e['name'])}: {e['acc_mean']:.4f} ± {e['acc_std']:.4f}")
    elif kind == "timing":
        if _BAR.label != "latency" or not _BAR.active:
            _BAR.start("latency", e["rounds"], info=f"rounds over {e['methods']} timed rows")
            _BAR.label = "latency"
        _BAR.update(completed=e["done"], total=e["rounds"])
        if e.get("finished"):
            _BAR.stop()


def _done(r: dict[str, Any]) -> None:
    _BAR.stop()
    if verbosity() >= 0:
        err_console.print(summary_table(r))
    typer.echo(r["config"]["out"])


def summary_table(r: dict[str, Any]) -> Any:
    """The result table for stderr, narrow enough for 80 columns (report.md has every column)."""
    from rich import box
    from rich.table import Table

    t = Table(title=f"{r['family']} / {r['model']}: {len(r['tasks'])} task(s)", box=box.SIMPLE)
    t.add_column("method", overflow="fold", max_width=26)
    for col in ("steps", "accuracy", "95 % CI", "ms/task", "IQR"):
        t.add_column(col, justify="right", no_wrap=True)
    for m in r["methods"]:
        lat, iqr = m["latency_ms_batch1"], m.get("latency_iqr_ms")
        ci = m.get("acc_ci95")
        t.add_row(
            escape(m["name"]),
            "-" if m["steps"] is None else str(m["steps"]),
            "n/a" if m["acc_mean"] is None else f"{m['acc_mean']:.4f}±{m['acc_std']:.3f}",
            "-" if not ci else f"±{(ci[1] - ci[0]) / 2:.4f}",
            "-" if lat is None else f"{lat:.3g}",
            "-" if not iqr else f"{iqr[0]:.3g}–{iqr[1]:.3g}",
        )
    timing = r.get("timing") or {}
    rounds = timing.get("rounds")
    t.caption = (
        f"ms/task: one task at batch size 1 on {r['device']}, median"
        + (f" of {rounds} interleaved rounds" if rounds else "")
        + "; 95 % CI: ±1.96·s/√n over tasks"
    )
    notes = [f"{m['name']}: {m['note']}" for m in r["methods"] if m.get("note")]
    if timing.get("warning"):
        notes.append(f"warning: noisy latencies: {timing['warning']}")
    if notes:
        t.caption += "\n" + "\n".join(escape(n) for n in notes)
    return t


@command("evaluate-l2o")
def evaluate_l2o_cmd(
    policy: Annotated[
        list[str] | None,
        typer.Option("--policy", help="A learned optimizer to score, NAME=DIR (repeatable)."),
    ] = None,
    out: ReportOutOpt = None,
    steps: Annotated[
        int | None, typer.Option(help=with_default("Optimizee steps of every method.", 100))
    ] = None,
    tasks: Annotated[int | None, typer.Option(help=with_default("Held-out tasks.", 8))] = None,
    instances: Annotated[int | None, typer.Option(help="Problems per task.")] = None,
    shift: Annotated[
        float | None, typer.Option(help="Distribution shift of synthetic held-out tasks.")
    ] = None,
    adapt_steps: Annotated[
        int | None, typer.Option(help="Self-adaptation steps (default: the policy's).")
    ] = None,
    baselines: Annotated[str | None, typer.Option(help="Comma list of adam, sgd.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the held-out tasks.")] = None,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
    set_: L2OSetOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Score learned optimizers against tuned Adam/SGD: loss-vs-step curves on held-out tasks.

    Writes report.json, report.md and loss_curves.png into --out; prints a table on stderr and
    the report directory on stdout.
    """
    flags = {
        "policies": run_guarded(lambda: parse_policies(policy)),
        "out": out,
        "steps": steps,
        "tasks": tasks,
        "instances": instances,
        "shift": shift,
        "adapt_steps": adapt_steps,
        "baselines": split_list(baselines),
        "seed": seed,
        "device": device,
    }
    run_stage(L2O_CONFIG, L2O_LIBRARY, log_info, _l2o_done, config, set_, flags, dry_run)


def _l2o_done(r: dict[str, Any]) -> None:
    from rich.table import Table

    from lohp_cli.stages.evaluate_l2o import markdown_report

    if verbosity() >= 0:
        lines = [ln for ln in markdown_report(r).splitlines() if ln.startswith("|")]
        head = [c.strip() for c in lines[0].strip("|").split("|")]
        t = Table(title=f"{r['family']['name']}: {r['tasks']} task(s), {r['steps']} steps")
        for col in head:
            t.add_column(col)
        for ln in lines[2:]:
            t.add_row(*[c.strip() for c in ln.strip("|").split("|")])
        err_console.print(t)
    typer.echo(r["config"]["out"])
