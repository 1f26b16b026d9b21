"""Reading Zarr chunks safely: damaged chunks become :class:`DamagedChunkError`, not a crash.

New arrays end their codec pipeline with zarr v3's ``crc32c`` codec, so a flipped byte anywhere in
a chunk file is detected when it is read. Arrays written before checksums still read; there a
damaged chunk is found only when its decompression fails (or not at all).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from lohp_cli.errors import StoreError


class DamagedChunkError(StoreError):
    """A chunk that fails its checksum, does not decompress, is cut short, or is missing."""


def checksum_codec() -> Any:
    """The codec appended to every new array's bytes-to-bytes pipeline."""
    from zarr.codecs import Crc32cCodec

    return Crc32cCodec()


def has_checksums(arr: Any) -> bool:
    """Whether ``arr`` (a zarr v3 array) ends its codec pipeline with ``crc32c``."""
    try:
        codecs = arr.metadata.to_dict().get("codecs", [])
    except AttributeError:  # a zarr v2 array has no v3 codec list
        return False
    return bool(codecs) and codecs[-1].get("name") == "crc32c"


def has_dimension_names(arr: Any) -> bool:
    return getattr(arr.metadata, "dimension_names", None) is not None


def _reason(exc: BaseException) -> str:
    text = str(exc).split("\n")[0]
    if "checksum" in text.lower():
        return "checksum mismatch"
    if "decompress" in text.lower():
        return f"decompression failed ({text})"
    return f"unreadable ({type(exc).__name__}: {text})"


def read(arr: Any, selection: Any, where: str) -> np.ndarray:
    """``arr[selection]`` as numpy; a damaged chunk raises :class:`DamagedChunkError` naming
    ``where`` (e.g. ``"store 'x.zarr', run r, array 'weights'"``)."""
    try:
        return np.asarray(arr[selection])
    except Exception as exc:  # noqa: BLE001 - codecs raise ValueError, RuntimeError, zlib.error …
        raise DamagedChunkError(
            f"Damaged chunk in {where}: {_reason(exc)}. Run 'lohp inspect STORE --verify' to list "
            "every damaged chunk."
        ) from None


def _chunk_keys(arr: Any) -> set[str] | None:
    """The chunk keys of ``arr`` present in its store (one listing), or None when they cannot
    be listed."""
    from zarr.core.sync import sync

    store, prefix = arr.store_path.store, arr.store_path.path

    async def keys() -> set[str]:
        return {k async for k in store.list_prefix(f"{prefix}/")}

    try:
        return sync(keys())
    except Exception:  # noqa: BLE001 - a store that cannot list: count initialised chunks
        return None


def verify_chunks(arr: Any, where: str) -> list[tuple[str, tuple[int, ...]]]:
    """Read every chunk of ``arr``: ``(line, chunk coordinates)`` per damaged or missing chunk
    (empty when sound)."""
    problems: list[tuple[str, tuple[int, ...]]] = []
    shape, chunks = arr.shape, arr.chunks
    present = _chunk_keys(arr)
    grid = [range(0, max(n, 1), c) for n, c in zip(shape, chunks, strict=True)]
    for corner in itertools.product(*grid):
        coords = tuple(o // c for o, c in zip(corner, chunks, strict=True))
        sel = tuple(slice(o, min(o + c, n)) for o, c, n in zip(corner, chunks, shape, strict=True))
        key = ".".join(str(i) for i in coords) or "0"
        if present is not None:
            stored = f"{arr.store_path.path}/{arr.metadata.encode_chunk_key(coords)}"
            if stored not in present:
                problems.append((f"{where}, chunk {key}: missing", coords))
                continue
        try:
            arr[sel]
        except Exception as exc:  # noqa: BLE001 - see read()
            problems.append((f"{where}, chunk {key}: {_reason(exc)}", coords))
    if present is None and not problems and arr.nchunks_initialized < arr.nchunks:
        missing = arr.nchunks - arr.nchunks_initialized
        problems.append((f"{where}: {missing} of {arr.nchunks} chunk(s) missing", ()))
    return problems


def verify(arr: Any, where: str) -> list[str]:
    """Read every chunk of ``arr``; one line per damaged or missing chunk (empty when sound)."""
    return [line for line, _ in verify_chunks(arr, where)]
