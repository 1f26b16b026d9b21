"""CLI test fixtures."""

from __future__ import annotations

import pytest

from lohp_cli import cli as cli_module


@pytest.fixture(autouse=True)
def _pin_rich_width(monkeypatch: pytest.MonkeyPatch) -> None:
    """The module's stderr console was built at import; pin its width as CliRunner pins COLUMNS."""
    monkeypatch.setattr(cli_module.err_console, "_width", 200)
