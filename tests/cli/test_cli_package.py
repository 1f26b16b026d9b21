"""The ``lohp_cli.cli`` package: one module per command, one app, and no torch at import."""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict

from lohp_cli.cli import COMMAND_MODULES, app
from tests.cli.runner import invoke, plain

EXPECTED = {
    "collect": ["collect"],
    "train": ["train-policy"],
    "generate": ["generate"],
    "evaluate": ["evaluate", "evaluate-l2o"],
    "report_dg": ["report-dg"],
    "export": ["export"],
    "predict": ["predict"],
    "inspect": ["inspect"],
}


def test_each_command_module_registers_exactly_its_commands() -> None:
    by_module: dict[str, list[str]] = defaultdict(list)
    for info in app.registered_commands:
        assert info.callback is not None and info.name is not None
        by_module[info.callback.__module__].append(info.name)
    assert dict(by_module) == {f"lohp_cli.cli.{m}": names for m, names in EXPECTED.items()}
    assert list(COMMAND_MODULES) == list(EXPECTED)


def test_help_lists_the_commands_in_order() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    rows = plain(result.stdout).split("Commands")[-1].splitlines()
    listed = [row.strip("│ ").split()[0] for row in rows if row.startswith("│")]
    assert listed == [name for names in EXPECTED.values() for name in names]


def test_importing_the_cli_does_not_import_torch() -> None:
    code = "import lohp_cli.cli, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
