"""Typed errors. Library code raises these; only the CLI turns them into a message and an exit code.

Exit codes (stable, documented in ``lohp --help`` and the README):

==== ==========================================
0    ok
1    unexpected error (a bug: please report it)
2    usage or config error
3    store or data error
4    checkpoint or compatibility error
130  interrupted
==== ==========================================
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_USAGE = 2
EXIT_DATA = 3
EXIT_COMPAT = 4
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = (
    "Exit codes: 0 ok, 1 unexpected error, 2 usage or config error, 3 store or data error, "
    "4 checkpoint or compatibility error, 130 interrupted."
)


class LohpError(Exception):
    """Base class of every error a user can cause; ``exit_code`` says how the CLI exits."""

    exit_code: int = EXIT_UNEXPECTED


class ConfigError(LohpError):
    """A bad flag, config file, config key or value."""

    exit_code = EXIT_USAGE


class DataError(LohpError):
    """A data set that is missing or unreadable, or data that is not finite."""

    exit_code = EXIT_DATA


class StoreError(LohpError):
    """A trajectory store that is missing, corrupt, foreign, from a newer schema, or mismatched."""

    exit_code = EXIT_DATA


class CompatibilityError(LohpError):
    """A checkpoint or artifact that does not fit what it is used with."""

    exit_code = EXIT_COMPAT
