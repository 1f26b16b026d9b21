"""What every artifact model shares: extra keys kept (older and newer writers add some), one
JSON form, and validation that names the first bad field."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from lohp_cli.errors import LohpError

M = TypeVar("M", bound=BaseModel)


class ArtifactModel(BaseModel):
    """A part of an artifact's metadata; keys it does not know are kept as they are."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    def to_json(self) -> dict[str, Any]:
        """The JSON as it is stored: the keys that were given (no defaults added), by alias."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


def parse(cls: type[M], data: Any, where: str, error: type[LohpError]) -> M:
    """``cls`` validated from ``data``; ``error`` naming ``where`` and the first bad field."""
    if not isinstance(data, dict):
        raise error(f"{where} is not a JSON object (got {type(data).__name__}).")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        msg = first["msg"].removeprefix("Value error, ")
        raise error(f"{where}: field {field!r}: {msg}" if field else f"{where}: {msg}") from None


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_layout(layout: list[dict[str, Any]], param_count: int) -> None:
    """A ValueError unless ``layout`` is a flat parameter layout of ``param_count`` entries:
    ``{name, shape, offset}`` each, the offsets consecutive (``ParamLayout.to_json``). An empty
    layout (a store of a synthetic target) says nothing and passes."""
    offset = 0
    for i, e in enumerate(layout):
        name, shape, at = e.get("name"), e.get("shape"), e.get("offset")
        if not isinstance(name, str) or not isinstance(shape, list) or not all(map(_int, shape)):
            raise ValueError(f"layout entry {i} is not {{name, shape, offset}} ({e!r:.80})")
        if at != offset:
            raise ValueError(f"layout entry {i} ({name}) starts at {at!r}, not at {offset}")
        size = 1
        for n in shape:
            size *= n
        offset += size
    if layout and offset != param_count:
        raise ValueError(f"the layout holds {offset} parameters, param_count says {param_count}")


def newer(version: Any, newest: int) -> bool:
    """Whether ``version`` (an int, else not judged here) is newer than this lohp reads."""
    return isinstance(version, int) and not isinstance(version, bool) and version > newest


def first_difference(
    a: Any, b: Any, path: str = "", left: str = "store has", right: str = "this command"
) -> str | None:
    """The first key where two JSON values differ (``name`` first, then sorted), as
    ``"<path>: <left> <a>, <right> <b>"``; None when they are equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=lambda k: (k != "name", k)):
            d = first_difference(a.get(k), b.get(k), f"{path}.{k}" if path else k, left, right)
            if d:
                return d
        return None
    return None if a == b else f"{path}: {left} {a!r}, {right} {b!r}"
