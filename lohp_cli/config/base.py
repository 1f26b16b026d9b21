"""Stage configs as frozen pydantic models, and how they are resolved.

Precedence: model defaults < ``--config FILE.toml`` < repeatable ``--set a.b=value`` <
explicit flags.
The highest layer gives the value, but every given value is validated, also one a later
``--set`` or flag replaces. Every error of a resolution is reported at once, on one line, each
naming its key.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lohp_cli.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigModel(BaseModel):
    """Base of every config model: immutable, unknown keys are errors, and a float must be
    finite (``inf`` and ``nan`` are refused where they are given, not found later)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


SEED_MAX = 2**64 - 1  # what torch.manual_seed takes
# A seed: 0 <= seed < 2**64, refused where it is given instead of overflowing where it is used.
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]
THREADS_HELP = (
    "Intra-op CPU threads (default: the cores this process may use ÷ the lohp processes "
    "sharing them (LOHP_PROCESSES), no more than the cores other work leaves free; "
    "OMP_NUM_THREADS when set). Results can differ in their last bits between thread counts."
)


M = TypeVar("M", bound=BaseModel)
# (config class, its raw data) -> "key: problem" for each name a registry refuses; the registries
# sit above config, so the caller (the stage layer) passes the check in
NameCheck = Callable[[type[BaseModel], dict[str, Any]], list[str]]


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file into a dict; errors name the file and the problem."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"Config file '{p}' does not exist.") from None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Config file '{p}' is not readable TOML: {exc}.") from None


def parse_value(text: str) -> Any:
    """Parse a ``--set`` value: JSON when it parses (numbers, true, lists), else the raw string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


KeyPath = tuple[str, ...]


def _parse_set(item: str) -> tuple[KeyPath, Any]:
    """``"a.b=value"`` -> ``(("a", "b"), parsed value)``; ``ConfigError`` when not key=value."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r} is not of the form key=value (e.g. optim.sgd.lr=0.05).")
    return tuple(key.strip().split(".")), parse_value(raw)


def _put(data: dict[str, Any], path: KeyPath, value: Any, item: str) -> None:
    """Set ``data[a][b]... = value`` in place, creating sections; a value on the way is an error."""
    node = data
    for part in path[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {item!r}: '{part}' is a value, not a section.")
        node = nxt
    node[path[-1]] = value


def _has(data: dict[str, Any], path: KeyPath) -> bool:
    """Whether ``data`` holds a value (or section) at ``path``."""
    node: Any = data
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _copy(data: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(data)


def apply_sets(data: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``a.b.c=value`` override applied."""
    out = _copy(data)
    for item in sets:
        path, value = _parse_set(item)
        _put(out, path, value, item)
    return out


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Merge ``extra`` into a copy of ``base``; nested dicts merge, other values replace."""
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def shadowed_paths(base: dict[str, Any], extra: dict[str, Any]) -> list[KeyPath]:
    """Paths of ``base`` whose value ``deep_merge(base, extra)`` replaces: never validated there."""
    out: list[KeyPath] = []
    for k, v in extra.items():
        if k not in base:
            continue
        if isinstance(v, dict) and isinstance(base[k], dict):
            out.extend((k, *p) for p in shadowed_paths(base[k], v))
        else:
            out.append((k,))
    return out


def _error_lines(exc: ValidationError, under: list[KeyPath] | None = None) -> list[str]:
    """One ``key: problem`` line per error; with ``under``, only errors at or below those paths."""
    lines = []
    for err in exc.errors():
        loc = tuple(str(x) for x in err["loc"])
        if under is not None and not any(loc[: len(p)] == p for p in under):
            continue
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown config key"
        elif not isinstance(err.get("input"), dict):
            msg += f" (got {err['input']!r})"
        lines.append(f"{'.'.join(loc) or 'config'}: {msg}")
    return lines


def _invalid(problems: list[str]) -> str:
    """The one message of a resolution: every problem once, in the order found."""
    unique = list(dict.fromkeys(p.rstrip(".") for p in problems))
    return "Invalid config: " + "; ".join(unique) + "."


def format_validation_error(exc: ValidationError) -> str:
    """All problems of a validation at once, joined on one line."""
    return _invalid(_error_lines(exc))


def _shadowed_errors(
    model: type[BaseModel],
    data: dict[str, Any],
    paths: list[KeyPath],
    names: NameCheck | None = None,
) -> list[str]:
    """The errors of ``data``'s values at ``paths``, which a later layer replaces (with
    ``names``, the names its registries refuse there too).

    A bad value is an error even when a ``--set`` or a flag overrides it. Errors of a whole
    section (a model validator over several keys) sit above ``paths`` and are left out.
    """
    if not paths:
        return []
    lines: list[str] = []
    try:
        model.model_validate(data)
    except ValidationError as exc:
        lines = _error_lines(exc, under=paths)
    for line in names(model, data) if names is not None else []:
        loc = tuple(line.partition(": ")[0].split("."))
        lines += [line] if any(loc[: len(p)] == p for p in paths) else []
    return lines


def resolve(
    model: type[M],
    config_file: str | Path | None = None,
    sets: list[str] | None = None,
    flags: dict[str, Any] | None = None,
    names: NameCheck | None = None,
) -> M:
    """Build a config: defaults < TOML file < ``--set`` < explicit flags (None = unset).

    The value wins by precedence, but every given value is validated, also one that a later
    ``--set`` or a flag replaces; all problems (malformed ``--set``, bad or unknown keys from
    the file, ``--set`` and flags, and with ``names`` the names its registries refuse in the
    final data, :func:`lohp_cli.stages.name_problems`) are raised together in one
    ``ConfigError``, each naming its key.
    """
    problems: list[str] = []
    data: dict[str, Any] = load_toml(config_file) if config_file else {}
    for item in sets or []:
        try:
            path, value = _parse_set(item)
            after = _copy(data)
            _put(after, path, value, item)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        problems += _shadowed_errors(model, data, [path] if _has(data, path) else [], names)
        data = after
    explicit: dict[str, Any] = {}
    for key, value in (flags or {}).items():
        if value is None:
            continue
        node = explicit
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    problems += _shadowed_errors(model, data, shadowed_paths(data, explicit), names)
    data = deep_merge(data, explicit)
    refused = names(model, data) if names is not None else []
    try:
        cfg = model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_invalid([*problems, *_error_lines(exc), *refused])) from None
    if problems or refused:
        raise ConfigError(_invalid([*problems, *refused]))
    return cfg
