"""What every ``lohp`` command shares: the Typer app, consoles, logging, error mapping, options,
and :func:`run_stage`, the one skeleton of a stage command (config → dry run → library call).

Stays import-light (no torch): the stage modules are imported inside the commands.
"""

from __future__ import annotations

import importlib
import json
import traceback
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from lohp_cli import __version__
from lohp_cli.errors import EXIT_CODES_HELP, EXIT_INTERRUPTED, EXIT_UNEXPECTED, LohpError

err_console = Console(stderr=True)
T = TypeVar("T")
Event = dict[str, Any]

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


def verbosity() -> int:
    """-1 with --quiet, else the number of -v flags."""
    return _state["verbosity"]


def command(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a command on the app, with the exit codes as its help epilog."""
    return app.command(name, epilog=EXIT_CODES_HELP)


def log(message: str) -> None:
    """A log line on stderr unless --quiet."""
    if _state["verbosity"] >= 0:
        err_console.print(message, highlight=False)


def log_info(e: Event) -> None:
    """A progress callback logging the ``info`` events only."""
    if e["event"] == "info":
        log(e["message"])


def run_guarded(fn: Callable[[], T]) -> T:
    """Call a library function; map typed errors to a one-line message and their exit code."""
    try:
        return fn()
    except LohpError as exc:
        # escaped: a message may hold brackets (pip install 'lohp[cluster]', a list of values)
        err_console.print(
            f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]; re-run the same command to resume.")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except Exception as exc:  # noqa: BLE001 - the last line of defence for bugs
        if _state["verbosity"] >= 2:
            traceback.print_exc()
        err_console.print(
            f"[bold red]unexpected error:[/] {type(exc).__name__}: {escape(str(exc))} (a bug; "
            "re-run with -vv for the traceback and report it)",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_UNEXPECTED) from None


def _load(spec: str) -> Any:
    """``"package.module:name"`` -> that object, importing the module only now."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def run_stage(
    config_cls: str,
    library: str,
    progress: Callable[[Event], None],
    done: Callable[[Any], None],
    config: str | None,
    sets: list[str] | None,
    flags: dict[str, Any],
    dry_run: bool,
) -> None:
    """The skeleton of a stage command, all under :func:`run_guarded` but ``done``.

    Resolve ``config_cls`` from the config file, the ``--set`` overrides and the explicit flags
    (None = not given); with ``--dry-run`` print the resolved config as JSON on stdout, else call
    ``library(cfg, progress)`` and hand its result to ``done``. Both are ``"module:name"``
    strings, imported only when the command runs, so that ``lohp --help`` never loads torch.
    """

    def go() -> Any:
        from lohp_cli.config import resolve
        from lohp_cli.stages import name_problems

        # the registries' names too, on --dry-run as well, in the one message of every problem
        cfg = resolve(_load(config_cls), config, sets, flags, names=name_problems)
        if dry_run:
            typer.echo(json.dumps(cfg.model_dump(mode="json"), indent=2))
            return None
        return _load(library)(cfg, progress)

    result = run_guarded(go)
    if result is not None:
        done(result)


def split_list(value: str | None) -> list[str] | None:
    """``"a, b,"`` -> ``["a", "b"]`` (None when the option was not given)."""
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_policies(items: list[str] | None) -> dict[str, str] | None:
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


# ---- options several commands declare alike ---------------------------------------------------
ConfigOpt = Annotated[
    str | None, typer.Option("--config", "-c", help="TOML config file (see examples/).")
]


def set_option(example: str) -> Any:
    """The ``--set KEY=VALUE`` option of a command, with an ``example`` key of its own config
    (each command's key: optim.sgd.lr is collect's, policy.backbone train-policy's)."""
    return Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help=f"Override a config key (repeatable), e.g. --set {example}; --dry-run shows "
            "every key.",
        ),
    ]


SetOpt = set_option("optim.sgd.lr=0.05")  # collect's
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Print the resolved config as JSON and exit.")
]


def with_default(help_text: str, value: object) -> str:
    """``help_text`` ending in ``[default: value]``: the default of the config key an option
    sets (options default to None, so that only a given flag overrides the config file;
    tests/cli/test_cli.py checks each shown default against the config)."""
    return f"{help_text} \\[default: {value}]"


DeviceOpt = Annotated[
    str | None, typer.Option("--device", help=with_default("auto, cpu, cuda or cuda:i.", "auto"))
]
SeedOpt = Annotated[int | None, typer.Option(help=with_default("Seed.", 0))]
ReportOutOpt = Annotated[str | None, typer.Option("--out", "-o", help="Report directory.")]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(
        "--threads",
        help=with_default(
            "Intra-op CPU threads. auto: this process's share of the cores (cores ÷ "
            "LOHP_PROCESSES), no more than other work leaves free; OMP_NUM_THREADS when set.",
            "auto",
        ),
    ),
]


def _element_type(shown: str | None) -> str | None:
    """``<list[str]>`` -> ``<str>`` (a repeatable option or argument takes one value each time)."""
    if shown and shown.startswith("<list[") and shown.endswith("]>"):
        return f"<{shown[6:-2]}>"
    return shown


def _value_free_flags() -> None:
    """Show no type for flags (Typer 0.2x writes ``<bool>`` beside ``--dry-run``, which takes no
    value) and the element type of a repeatable option (``<str>``, not ``<list[str]>``)."""
    from typer import core

    original = getattr(core.TyperOption, "display_type_rich", None)
    if original is None or getattr(original, "_lohp", False):
        return

    def display_type_rich(self: Any, ctx: Any) -> str | None:
        if self.metavar is not None:
            return self.metavar
        if getattr(self, "is_flag", False) or getattr(self, "count", False):
            return ""
        return _element_type(original(self, ctx))

    display_type_rich._lohp = True  # type: ignore[attr-defined]
    core.TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]
    arg = getattr(core.TyperArgument, "display_type_rich", None)
    if arg is not None and not getattr(arg, "_lohp", False):

        def argument_type(self: Any, ctx: Any) -> str | None:
            return _element_type(arg(self, ctx))

        argument_type._lohp = True  # type: ignore[attr-defined]
        core.TyperArgument.display_type_rich = argument_type  # type: ignore[method-assign]


_value_free_flags()
