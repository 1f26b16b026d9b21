"""The ``lohp`` command line: one thin function per stage (parse → config → library call → exit).

Progress and logs go to stderr; the machine-readable result (artifact path or JSON) to stdout.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from lohp_cli import __version__
from lohp_cli.errors import EXIT_CODES_HELP, EXIT_INTERRUPTED, EXIT_UNEXPECTED, LohpError

err_console = Console(stderr=True)
T = TypeVar("T")

app = typer.Typer(
    name="lohp",
    help="Lo-Hp weight generation toolkit: collect optimizer trajectories, train the Lo-Hp policy, "
    "generate and evaluate weights.\n\n" + EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_state = {"verbosity": 0}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lohp {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
    verbose: Annotated[
        int, typer.Option("-v", "--verbose", count=True, help="More logs; -vv shows tracebacks.")
    ] = 0,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Only errors on stderr.")] = False,
) -> None:
    _state["verbosity"] = -1 if quiet else verbose


def log(message: str) -> None:
    """A log line on stderr unless --quiet."""
    if _state["verbosity"] >= 0:
        err_console.print(message, highlight=False)


def run_guarded(fn: Callable[[], T]) -> T:
    """Call a library function; map typed errors to a one-line message and their exit code."""
    try:
        return fn()
    except LohpError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]; re-run the same command to resume.")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except Exception as exc:  # noqa: BLE001 - the last line of defence for bugs
        if _state["verbosity"] >= 2:
            traceback.print_exc()
        err_console.print(
            f"[bold red]unexpected error:[/] {type(exc).__name__}: {exc} (a bug; re-run with -vv "
            "for the traceback and report it)",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_UNEXPECTED) from None


def _split_list(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


ConfigOpt = Annotated[
    str | None, typer.Option("--config", "-c", help="TOML config file (see examples/).")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config key, e.g. --set optim.sgd.lr=0.05 (repeatable)."),
]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Print the resolved config as JSON and exit.")
]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda or cuda:i.")]


@app.command(epilog=EXIT_CODES_HELP)
def collect(
    out: Annotated[
        str | None, typer.Option("--out", "-o", help="Output store: path or fsspec URL.")
    ] = None,
    family: Annotated[
        str | None, typer.Option(help="Task family: fmnist, cifar10, digits.")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Target model: head, mlp, cnn.")] = None,
    tasks: Annotated[int | None, typer.Option(help="Number of source tasks.")] = None,
    seeds: Annotated[int | None, typer.Option(help="Replicates per task and optimizer.")] = None,
    optimizers: Annotated[str | None, typer.Option(help="Comma list of sgd, adam, sam.")] = None,
    steps: Annotated[int | None, typer.Option(help="Optimizer steps per run.")] = None,
    record_every: Annotated[int | None, typer.Option(help="Record weights every N steps.")] = None,
    ways: Annotated[int | None, typer.Option(help="Classes per task.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Minibatch size.")] = None,
    seed: Annotated[int | None, typer.Option(help="Base seed.")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes.")] = None,
    shard: Annotated[
        str | None, typer.Option(help="Only share i of n of the runs (0 <= i < n).")
    ] = None,
    data_root: Annotated[
        str | None, typer.Option(help="Directory holding the data set files.")
    ] = None,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Train target networks on source tasks with SGD/Adam/SAM and record their trajectories.

    Re-running the same command resumes: complete runs are skipped, partial ones redone. Prints the
    store location on stdout.
    """

    def go() -> Any:
        from lohp_cli.config import CollectConfig, resolve

        cfg = resolve(
            CollectConfig,
            config,
            set_,
            {
                "out": out,
                "task.family": family,
                "model.name": model,
                "tasks": tasks,
                "seeds": seeds,
                "optimizers": _split_list(optimizers),
                "steps": steps,
                "record_every": record_every,
                "task.ways": ways,
                "batch_size": batch_size,
                "seed": seed,
                "workers": workers,
                "shard": shard,
                "task.data_root": data_root,
                "device": device,
            },
        )
        if dry_run:
            typer.echo(json.dumps(cfg.model_dump(mode="json"), indent=2))
            return None
        from lohp_cli.collect import collect as run_collect

        return run_collect(cfg, _collect_progress())

    result = run_guarded(go)
    if result is not None:
        log(
            f"[green]done[/]: {result.collected} run(s) collected, "
            f"{result.skipped} already complete, "
            f"{result.wall_time_s:.1f} s"
        )
        typer.echo(result.store)


def _collect_progress() -> Callable[[dict[str, Any]], None]:
    """A progress callback rendering collect events on stderr."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    bar: dict[str, Any] = {}

    def on_event(e: dict[str, Any]) -> None:
        kind = e["event"]
        if kind == "device":
            log(f"device: {e['device']}")
        elif kind == "extractor":
            log(f"training the frozen feature extractor ({e['steps']} steps, source classes only)")
        elif kind == "plan":
            log(
                f"{e['planned']} run(s) planned, {e['skipped']} already complete, "
                f"{e['pending']} to do"
            )
            if e["pending"] and _state["verbosity"] >= 0:
                p = Progress(
                    "collect",
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeElapsedColumn(),
                    console=err_console,
                    transient=True,
                )
                p.start()
                bar["p"], bar["t"] = p, p.add_task("runs", total=e["pending"])
        elif kind == "run" and "p" in bar:
            bar["p"].update(bar["t"], completed=e["done"])
            if e["done"] == e["pending"]:
                bar["p"].stop()
        if _state["verbosity"] >= 1 and kind == "run":
            log(f"  {e['run_id']} {e['wall_s']:.2f} s")

    return on_event


@app.command("train-policy", epilog=EXIT_CODES_HELP)
def train_policy_cmd(
    store: Annotated[
        str | None, typer.Option(help="Trajectory store (path or fsspec URL).")
    ] = None,
    out: Annotated[str | None, typer.Option("--out", "-o", help="Output policy directory.")] = None,
    method: Annotated[
        str | None,
        typer.Option(help="lo-hp, lo-op, lo-di, hypernetwork, or l2o, l2o-tt, l2o-flat, m-l2o."),
    ] = None,
    family: Annotated[
        str | None,
        typer.Option(help="L2O methods: store (default), or quadratic|lasso (no store needed)."),
    ] = None,
    k: Annotated[int | None, typer.Option(help="Matching factor k (N = T/k).")] = None,
    steps: Annotated[int | None, typer.Option(help="Training steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Trajectories per step.")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate (warns above 1e-3).")] = None,
    optimizers: Annotated[
        str | None, typer.Option(help="Learn only from these optimizers' runs (comma list).")
    ] = None,
    max_minutes: Annotated[float | None, typer.Option(help="Stop (resumable) after this.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed.")] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a policy trained on another store.")
    ] = False,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Train the Lo-Hp policy (or an ablation) on a store; prints the policy directory.

    Re-running the same command resumes from the last checkpoint. Under torchrun it trains with
    DistributedDataParallel (gloo on CPU, nccl on CUDA); rank 0 writes.
    """

    def go() -> Any:
        from lohp_cli.config import TrainConfig, resolve
        from lohp_cli.train import train_policy  # cheap; registers every training method

        cfg = resolve(
            TrainConfig,
            config,
            set_,
            {
                "store": store,
                "out": out,
                "method": method,
                "l2o.family": family,
                "k": k,
                "steps": steps,
                "batch_size": batch_size,
                "lr": lr,
                "optimizers": _split_list(optimizers),
                "max_minutes": max_minutes,
                "seed": seed,
                "device": device,
                "overwrite": True if overwrite else None,
            },
        )
        if dry_run:
            typer.echo(json.dumps(cfg.model_dump(mode="json"), indent=2))
            return None
        import warnings

        warnings.filterwarnings("ignore", message="policy learning rate")
        return train_policy(cfg, _train_progress())

    result = run_guarded(go)
    if result is not None and int(os.environ.get("RANK", "0")) == 0:
        state = "complete" if result.complete else "stopped early (re-run to resume)"
        loss = "-" if result.final_loss is None else f"{result.final_loss:.4g}"
        log(f"[green]done[/]: step {result.step}, {state}, loss {loss}, {result.wall_time_s:.1f} s")
        typer.echo(result.policy)


def _train_progress() -> Callable[[dict[str, Any]], None]:
    """A progress callback rendering train-policy events on stderr."""
    import os

    quiet = int(os.environ.get("RANK", "0")) != 0

    def on_event(e: dict[str, Any]) -> None:
        if quiet:
            return
        kind = e["event"]
        if kind == "warning":
            log(f"[bold yellow]warning:[/] {e['message']}")
        elif kind == "info":
            log(e["message"])
        elif kind == "device":
            log(f"device: {e['device']} (world size {e['world_size']})")
        elif kind == "stats":
            log(f"normalisation statistics over {e['runs']} run(s)")
        elif kind == "resume":
            log(f"resuming from step {e['step']}")
        elif kind == "start":
            log(f"training {e['params']:,} parameters on {e['runs']} run(s), N = {e['N']} steps")
        elif kind == "log":
            # about 20 lines per run on stderr (every logged step with -v); metrics.jsonl has all
            every = max(1, e["steps"] // 20)
            if _state["verbosity"] >= 1 or e["step"] % every == 0 or e["step"] == e["steps"]:
                terms = " ".join(f"{k}={e[k]:.4g}" for k in ("loss", "off", "on", "mse") if k in e)
                log(f"step {e['step']}/{e['steps']} {terms}")
        elif kind == "timeout":
            log(f"--max-minutes reached at step {e['step']}; re-run to continue")

    return on_event


@app.command(epilog=EXIT_CODES_HELP)
def generate(
    policy: Annotated[str | None, typer.Option(help="Policy directory.")] = None,
    out: Annotated[
        str | None, typer.Option("--out", "-o", help="Output directory (.zarr).")
    ] = None,
    tasks: Annotated[
        str | None,
        typer.Option(help="target, target-hard, source, comma-separated task ids, or @FILE."),
    ] = None,
    num_tasks: Annotated[int | None, typer.Option(help="How many tasks of a split.")] = None,
    samples: Annotated[int | None, typer.Option(help="Weight vectors per task.")] = None,
    mode: Annotated[str | None, typer.Option(help="mean or sample.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed.")] = None,
    style: Annotated[
        str | None,
        typer.Option(help="Whose steps a policy with optimizer tokens imitates: sgd, adam, sam."),
    ] = None,
    save_paths: Annotated[
        bool, typer.Option("--save-paths", help="Also store every state [S, N+1, P].")
    ] = False,
    store: Annotated[
        str | None, typer.Option(help="The policy's trajectory store, if it moved.")
    ] = None,
    data_root: Annotated[str | None, typer.Option(help="Data set directory.")] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing output.")
    ] = False,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Generate weights for tasks in N = T/k policy steps; prints the output path.

    An existing output is kept unless --overwrite; the output appears whole (temporary directory,
    lock, rename), so overlapping cron runs cannot corrupt it.
    """

    def go() -> Any:
        from lohp_cli.config import GenerateConfig, resolve

        cfg = resolve(
            GenerateConfig,
            config,
            set_,
            {
                "policy": policy,
                "out": out,
                "tasks": tasks,
                "num_tasks": num_tasks,
                "samples": samples,
                "mode": mode,
                "seed": seed,
                "style": style,
                "save_paths": True if save_paths else None,
                "store": store,
                "data_root": data_root,
                "overwrite": True if overwrite else None,
                "device": device,
            },
        )
        if dry_run:
            typer.echo(json.dumps(cfg.model_dump(mode="json"), indent=2))
            return None
        from lohp_cli.generate import generate as run_generate

        return run_generate(
            cfg,
            lambda e: (
                e["event"] == "start"
                and log(
                    f"generating {e['samples']} sample(s) for {e['tasks']} task(s) in N = {e['N']} "
                    f"steps on {e['device']}"
                )
            ),
        )

    result = run_guarded(go)
    if result is not None:
        log(
            f"[green]done[/]: {result.tasks} task(s) × {result.samples} in "
            f"{result.wall_time_s:.1f} s; batched throughput {result.batched_ms_per_sample:.3f} "
            f"ms/sample on {result.device} (batch {result.batch_size}, warm-up excluded); latency "
            f"{result.latency_ms_batch1:.3f} ms per task (batch 1, after warm-up)"
        )
        typer.echo(result.out)


@app.command(epilog=EXIT_CODES_HELP)
def evaluate(
    generated: Annotated[str | None, typer.Option(help="Output of 'lohp generate'.")] = None,
    out: Annotated[str | None, typer.Option("--out", "-o", help="Report directory.")] = None,
    baselines: Annotated[
        str | None,
        typer.Option(
            help="Comma list of sgd, adam, sam, hypernetwork, l2o, l2o-tt, l2o-flat, m-l2o "
            "(learned optimizers need --policy NAME=DIR)."
        ),
    ] = None,
    policy: Annotated[
        list[str] | None,
        typer.Option("--policy", help="Another trained policy to compare, NAME=DIR (repeatable)."),
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

    def go() -> Any:
        from lohp_cli.config import EvaluateConfig, resolve

        policies = _parse_policies(policy)
        cfg = resolve(
            EvaluateConfig,
            config,
            set_,
            {
                "generated": generated,
                "out": out,
                "baselines": _split_list(baselines),
                "policies": policies,
                "latency_repeats": latency_repeats,
                "device": device,
            },
        )
        if dry_run:
            typer.echo(json.dumps(cfg.model_dump(mode="json"), indent=2))
            return None
        from lohp_cli.evaluate import evaluate as run_evaluate

        def on_event(e: dict[str, Any]) -> None:
            if e["event"] == "info":
                log(e["message"])
            elif e["event"] == "method":
                log(f"  {e['name']}: {e['acc_mean']:.4f} ± {e['acc_std']:.4f}")

        return run_evaluate(cfg, on_event)

    report = run_guarded(go)
    if report is not None:
        _print_report(report)
        typer.echo(report["config"]["out"])


def _print_report(r: dict[str, Any]) -> None:
    from rich.table import Table

    t = Table(title=f"{r['family']} / {r['model']}: {len(r['tasks'])} task(s)")
    for col in ("method", "kind", "steps", "accuracy", "latency ms/task (batch 1)"):
        t.add_column(col, justify="left" if col in ("method", "kind") else "right")
    t.caption = (
        f"latency: weights of one task at batch size 1 on {r['device']}, median after a warm-up"
    )
    for m in r["methods"]:
        lat = "-" if m["latency_ms_batch1"] is None else f"{m['latency_ms_batch1']:.3f}"
        t.add_row(
            m["name"], m["kind"], str(m["steps"]), f"{m['acc_mean']:.4f} ± {m['acc_std']:.4f}", lat
        )
    if _state["verbosity"] >= 0:
        err_console.print(t)


@app.command("evaluate-l2o", epilog=EXIT_CODES_HELP)
def evaluate_l2o_cmd(
    policy: Annotated[
        list[str] | None,
        typer.Option("--policy", help="A learned optimizer to score, NAME=DIR (repeatable)."),
    ] = None,
    out: Annotated[str | None, typer.Option("--out", "-o", help="Report directory.")] = None,
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

    def go() -> Any:
        from lohp_cli.config import resolve
        from lohp_cli.l2o.config import L2OEvaluateConfig

        policies = _parse_policies(policy)
        cfg = resolve(
            L2OEvaluateConfig,
            config,
            set_,
            {
                "policies": policies,
                "out": out,
                "steps": steps,
                "tasks": tasks,
                "instances": instances,
                "shift": shift,
                "adapt_steps": adapt_steps,
                "baselines": _split_list(baselines),
                "seed": seed,
                "device": device,
            },
        )
        if dry_run:
            typer.echo(json.dumps(cfg.model_dump(mode="json"), indent=2))
            return None
        from lohp_cli.l2o.evaluate import evaluate_l2o

        def on_event(e: dict[str, Any]) -> None:
            if e["event"] == "info":
                log(e["message"])

        return evaluate_l2o(cfg, on_event)

    report = run_guarded(go)
    if report is not None:
        _print_l2o_report(report)
        typer.echo(report["config"]["out"])


def _parse_policies(items: list[str] | None) -> dict[str, str] | None:
    """``["NAME=DIR", ...]`` -> ``{NAME: DIR}`` (None when no --policy was given)."""
    from lohp_cli.errors import ConfigError

    if not items:
        return None
    policies = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--policy {item!r} is not of the form NAME=DIR.")
        policies[name] = path
    return policies


def _print_l2o_report(r: dict[str, Any]) -> None:
    from rich.table import Table

    from lohp_cli.l2o.evaluate import markdown_report

    if _state["verbosity"] < 0:
        return
    lines = [ln for ln in markdown_report(r).splitlines() if ln.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    t = Table(title=f"{r['family']['name']}: {r['tasks']} task(s), {r['steps']} steps")
    for col in head:
        t.add_column(col)
    for ln in lines[2:]:
        t.add_row(*[c.strip() for c in ln.strip("|").split("|")])
    err_console.print(t)


@app.command(epilog=EXIT_CODES_HELP)
def inspect(
    store: Annotated[str, typer.Argument(help="Trajectory store: path or fsspec URL.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
    verify: Annotated[
        bool, typer.Option("--verify", help="Read every complete run and check it.")
    ] = False,
) -> None:
    """Summarise a trajectory store (human table, or --json); --verify exits 3 on a bad run."""
    from lohp_cli.collect import summarize_store

    summary = run_guarded(lambda: summarize_store(store, verify=verify))
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        _print_summary(summary)
    if verify and not summary["verified"]:
        for problem in summary["problems"]:
            err_console.print(f"[bold red]damaged:[/] {problem}", highlight=False, soft_wrap=True)
        err_console.print(
            f"[bold red]error:[/] {len(summary['problems'])} problem(s) in '{store}', first: "
            f"{summary['problems'][0]}. Delete the damaged runs (runs/<run id>) and re-run "
            "'lohp collect' to redo them.",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(3)


def _print_summary(s: dict[str, Any]) -> None:
    from rich.table import Table

    out = Console()
    t = Table(title=f"lohp store {s['store']}", show_header=False)
    for key in (
        "schema",
        "schema_version",
        "family",
        "ways",
        "model",
        "param_count",
        "condition_dim",
        "steps",
        "record_every",
        "recorded_states",
        "tasks",
        "complete_runs",
        "checksums",
        "dimension_names",
        "created_at",
        "lohp_version",
    ):
        t.add_row(key, str(s[key]))
    if s["bytes_on_disk"] is not None:
        t.add_row("bytes_on_disk", f"{s['bytes_on_disk']:,}")
    if s["compression_ratio"]:
        t.add_row("weights compression", f"{s['compression_ratio']:.2f}× vs raw float32")
    out.print(t)
    r = Table(title="runs by optimizer and status")
    statuses = sorted({st for v in s["runs"].values() for st in v})
    r.add_column("optimizer")
    for st in statuses:
        r.add_column(st, justify="right")
    if "final_train_acc" in s:
        r.add_column("final train acc", justify="right")
    for opt, counts in sorted(s["runs"].items()):
        row = [opt, *(str(counts.get(st, 0)) for st in statuses)]
        if "final_train_acc" in s:
            row.append(str(s["final_train_acc"].get(opt, "-")))
        r.add_row(*row)
    out.print(r)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="lohp")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
