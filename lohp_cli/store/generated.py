"""The generated store (schema ``lohp.generated``) that ``generate`` writes and ``evaluate`` reads;
its layout is documented in :mod:`lohp_cli.generate`, its attributes are
:class:`lohp_cli.artifacts.generated.GeneratedMeta`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lohp_cli.artifacts.generated import (
    GEN_SCHEMA,
    GEN_SCHEMA_VERSION,
    GeneratedMeta,
    read_generated_meta,
)
from lohp_cli.errors import StoreError

__all__ = ["GEN_SCHEMA", "GEN_SCHEMA_VERSION", "GeneratedMeta", "open_generated"]


def open_generated(path: str) -> tuple[Any, GeneratedMeta]:
    """``(zarr group, its validated attributes)`` of the generated store at ``path``."""
    import zarr

    p = Path(path)
    if not p.is_dir() or not (p / "zarr.json").is_file():
        raise StoreError(f"No generated store at '{path}'; make one with 'lohp generate'.")
    try:
        g = zarr.open_group(zarr.storage.LocalStore(p), mode="r")
        attrs = dict(g.attrs)
    except Exception as exc:  # noqa: BLE001 - any zarr/json failure means a corrupt store
        raise StoreError(f"'{path}' is not a readable generated store ({exc}).") from None
    return g, read_generated_meta(attrs, path)
