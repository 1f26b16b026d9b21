"""The ``lohp`` command line: one thin module per stage command (parse → config → library call →
exit), all on the app of :mod:`lohp_cli.cli.common`.

Progress and logs go to stderr; the machine-readable result (artifact path or JSON) to stdout.
"""

from __future__ import annotations

import importlib

from lohp_cli.cli.common import app, err_console, log, run_guarded

# registration order is the order of ``lohp --help``
COMMAND_MODULES = (
    "collect", "train", "generate", "evaluate", "report_dg", "export", "predict", "inspect",
)  # fmt: skip
for _name in COMMAND_MODULES:
    importlib.import_module(f"{__name__}.{_name}")


def main() -> None:
    """Console-script entry point."""
    app(prog_name="lohp")


__all__ = ["COMMAND_MODULES", "app", "err_console", "log", "main", "run_guarded"]
