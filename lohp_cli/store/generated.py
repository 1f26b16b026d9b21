"""The generated store (schema ``lohp.generated``) that ``generate`` writes and ``evaluate`` reads;
its layout is documented in :mod:`lohp_cli.generate`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lohp_cli.errors import StoreError

GEN_SCHEMA = "lohp.generated"


GEN_SCHEMA_VERSION = 1


def open_generated(path: str) -> Any:
    import zarr

    p = Path(path)
    if not p.is_dir() or not (p / "zarr.json").is_file():
        raise StoreError(f"No generated store at '{path}'; make one with 'lohp generate'.")
    try:
        g = zarr.open_group(zarr.storage.LocalStore(p), mode="r")
        attrs = dict(g.attrs)
    except Exception as exc:  # noqa: BLE001 - any zarr/json failure means a corrupt store
        raise StoreError(f"'{path}' is not a readable generated store ({exc}).") from None
    if attrs.get("schema") != GEN_SCHEMA:
        raise StoreError(
            f"'{path}' is not a lohp generated store (schema {attrs.get('schema')!r})."
        )
    if attrs.get("schema_version", 0) > GEN_SCHEMA_VERSION:
        raise StoreError(
            f"'{path}' has schema_version {attrs['schema_version']}; this lohp reads "
            f"up to {GEN_SCHEMA_VERSION}. Upgrade lohp."
        )
    return g
