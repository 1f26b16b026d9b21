"""``lohp evaluate`` and ``lohp evaluate-l2o``: score generated weights, or learned optimizers,
against baselines; a report directory on stdout, a table on stderr."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from lohp_cli.cli.common import (
    ConfigOpt,
    DeviceOpt,
    DryRunOpt,
    Event,
    ReportOutOpt,
    SetOpt,
    command,
    err_console,
    log,
    log_info,
    parse_policies,
    run_guarded,
    run_stage,
    split_list,
    verbosity,
)

CONFIG = "lohp_cli.config:EvaluateConfig"
LIBRARY = "lohp_cli.evaluate:evaluate"  # imported when the command runs (torch)
L2O_CONFIG = "lohp_cli.l2o.config:L2OEvaluateConfig"
L2O_LIBRARY = "lohp_cli.l2o.evaluate:evaluate_l2o"


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
            "l2o, l2o-tt, l2o-flat, m-l2o (learned optimizers need --policy NAME=DIR)."
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
    latency_repeats: Annotated[int | None, typer.Option(help="Timed repetitions.")] = None,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
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
    }
    run_stage(CONFIG, LIBRARY, _progress, _done, config, set_, flags, dry_run)


def _progress(e: Event) -> None:
    if e["event"] == "info":
        log(e["message"])
    elif e["event"] == "method" and e["acc_mean"] is None:
        log(f"  {e['name']}: {e.get('note') or 'not applicable'}")
    elif e["event"] == "method":
        log(f"  {e['name']}: {e['acc_mean']:.4f} ± {e['acc_std']:.4f}")


def _done(r: dict[str, Any]) -> None:
    from rich.table import Table

    t = Table(title=f"{r['family']} / {r['model']}: {len(r['tasks'])} task(s)")
    cols = ("method", "kind", "steps", "accuracy ± std", "95 % CI (tasks)", "latency ms/task")
    for col in cols:
        t.add_column(col, justify="left" if col in ("method", "kind") else "right")
    t.caption = (
        f"latency: weights of one task at batch size 1 on {r['device']}, median after a warm-up;"
        " 95 % CI: ± 1.96 · s / √n over the tasks' mean accuracies"
    )
    for m in r["methods"]:
        lat = "-" if m["latency_ms_batch1"] is None else f"{m['latency_ms_batch1']:.3f}"
        ci = m.get("acc_ci95")
        half = "-" if not ci else f"± {(ci[1] - ci[0]) / 2:.4f}"
        acc = "n/a" if m["acc_mean"] is None else f"{m['acc_mean']:.4f} ± {m['acc_std']:.4f}"
        t.add_row(m["name"], m["kind"], str(m["steps"]), acc, half, lat)
    notes = [f"{m['name']}: {m['note']}" for m in r["methods"] if m.get("note")]
    if notes:
        t.caption += "\n" + "\n".join(notes)
    if verbosity() >= 0:
        err_console.print(t)
    typer.echo(r["config"]["out"])


@command("evaluate-l2o")
def evaluate_l2o_cmd(
    policy: Annotated[
        list[str] | None,
        typer.Option("--policy", help="A learned optimizer to score, NAME=DIR (repeatable)."),
    ] = None,
    out: ReportOutOpt = None,
    steps: Annotated[int | None, typer.Option(help="Optimizee steps of every method.")] = None,
    tasks: Annotated[int | None, typer.Option(help="Held-out tasks.")] = None,
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
    set_: SetOpt = None,
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

    from lohp_cli.l2o.evaluate import markdown_report

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
