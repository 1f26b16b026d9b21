"""Shared CliRunner helpers for the CLI tests (tests/cli/conftest.py pins the Rich width)."""

from __future__ import annotations

import re

from typer.testing import CliRunner, Result

from lohp_cli.cli import app

RUNNER = CliRunner()
ENV = {"COLUMNS": "200", "NO_COLOR": "1"}
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
EXIT_CODE_TEXTS = (
    "0 ok",
    "1 unexpected error",
    "2 usage or config error",
    "3 store or data error",
    "4 checkpoint or compatibility error",
    "130 interrupted",
)


def invoke(*args: object) -> Result:
    return RUNNER.invoke(app, [str(a) for a in args], env=ENV)


def plain(text: str) -> str:
    return ANSI.sub("", text)


def flat(text: str) -> str:
    """Output with all whitespace runs (line wraps, table borders aside) collapsed to one space."""
    return " ".join(plain(text).replace("│", " ").split())
