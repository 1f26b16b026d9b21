"""The zarr v3 codec pipeline of a :class:`StoreCodecConfig`, and what a stored array used.

A weights chunk ``[states, P]`` goes through, in order::

    transpose      -> bitround (bf16 only) -> serializer     -> compressor     -> crc32c
    [P, states]       array -> array          array -> bytes    bytes -> bytes    bytes -> bytes

The serializer is zarr's ``bytes`` codec, except for ``pcodec``, which is itself the array-to-bytes
step (it compresses numbers, not bytes), so no compressor follows it. ``crc32c`` always ends the
pipeline, so it covers exactly the bytes on disk. Every codec here is one a plain
``zarr.open_group`` reads (with numcodecs and, for pcodec, the ``pcodec`` package installed).
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import numpy as np

import lohp_cli.store.chunks as chunks
from lohp_cli.config import StoreCodecConfig

BF16_KEEPBITS = 7  # bfloat16 keeps 7 of float32's 23 mantissa bits

# zarr warns at every construction of a numcodecs codec (also when it opens an array that uses
# one) that such codecs are outside the zarr v3 spec; the README says what reads these stores.
_OUTSIDE_SPEC = "Numcodecs codecs are not in the Zarr version 3 specification"
warnings.filterwarnings("ignore", message=_OUTSIDE_SPEC)


@functools.cache
def contiguous_pcodec() -> type:
    """zarr's ``numcodecs.pcodec`` codec, encoding the chunk in its logical (C) order; from the
    first call on, zarr uses it for every array that names ``numcodecs.pcodec``.

    After ``TransposeCodec`` a chunk is an F-contiguous view; zarr 3.1 passes it to numcodecs
    as is and numcodecs flattens it in memory order, while decoding reshapes in C order, so the
    stock codec silently scrambles transposed chunks (zarr-python #4116, numcodecs #850). Only
    the encoder differs: the bytes written are what the stock codec decodes, under its name.
    It is registered as zarr's implementation of the name (not only passed to
    ``create_array``) because zarr rebuilds codecs from the metadata whenever it opens an
    array, and ``RunWriter`` writes through the re-opened ``weights`` array; every store lohp
    opens registers it (:func:`lohp_cli.store.location.open_group`).
    """
    import zarr
    from zarr.codecs.numcodecs import PCodec
    from zarr.registry import register_codec

    class ContiguousPCodec(PCodec):
        def __init__(self, **codec_config: Any) -> None:
            # zarr warns at every construction (each time an array is opened) that numcodecs
            # codecs are outside the v3 spec; the module-level filter is lost when a caller
            # resets the filters (pytest.warns, python -W error), so silence it here too
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=_OUTSIDE_SPEC)
                super().__init__(**codec_config)

        async def _encode_single(self, chunk_data: Any, chunk_spec: Any) -> Any:
            arr = np.ascontiguousarray(chunk_data.as_numpy_array())
            contiguous = chunk_spec.prototype.nd_buffer.from_numpy_array(arr)
            return await super()._encode_single(contiguous, chunk_spec)

    name = "lohp_cli.store.codecs.ContiguousPCodec"
    register_codec(PCodec.codec_name, ContiguousPCodec, qualname=name)
    zarr.config.set({"codecs": {**zarr.config.get("codecs"), PCodec.codec_name: name}})
    return ContiguousPCodec


def filters_for(cfg: StoreCodecConfig, ndim: int = 2) -> list[Any]:
    """Array-to-array filters of a weights array whose last two axes are ``(state, param)``
    (``[T+1, P]`` of a run, ``[R, T+1, P]`` of a block): a transpose of those two axes so that
    each coordinate's time series is contiguous, then, for ``lossy="bf16"``, rounding to
    bfloat16 precision (still stored as float32)."""
    from zarr.codecs import TransposeCodec

    order = (*range(ndim - 2), ndim - 1, ndim - 2)  # (1, 0) or (0, 2, 1)
    out: list[Any] = [TransposeCodec(order=order)] if cfg.transpose else []
    if cfg.lossy == "bf16":
        from zarr.codecs.numcodecs import BitRound

        out.append(BitRound(keepbits=BF16_KEEPBITS))
    return out


def serializer_for(cfg: StoreCodecConfig) -> Any:
    """The array-to-bytes codec: pcodec for ``codec="pcodec"``, else zarr's default ``bytes``."""
    if cfg.codec != "pcodec":
        return "auto"
    if cfg.delta is None:
        delta: dict[str, Any] = {"delta_spec": "auto"}
    else:  # numcodecs' delta_spec "none" fails with pcodec 1.x; consecutive order 0 is no delta
        delta = {"delta_spec": "try_consecutive", "delta_encoding_order": cfg.delta}
    return contiguous_pcodec()(level=cfg.resolved_level, **delta)


def codecs_for(cfg: StoreCodecConfig) -> list[Any]:
    """The zarr v3 bytes-to-bytes codecs for a codec config: the compressor (none for
    ``none`` and ``pcodec``, which compresses as the serializer), then the ``crc32c`` checksum
    (last, so it covers the compressed bytes)."""
    from zarr.codecs import BloscCodec, ZstdCodec

    crc = [chunks.checksum_codec()] if cfg.checksum else []
    if cfg.codec in ("none", "pcodec"):
        return crc
    if cfg.codec == "zstd":
        return [ZstdCodec(level=cfg.resolved_level), *crc]
    cname = "zstd" if cfg.codec == "blosc-zstd" else "lz4"
    return [BloscCodec(cname=cname, clevel=cfg.resolved_level, shuffle=cfg.resolved_shuffle), *crc]


def describe_codecs(arr: Any) -> tuple[str, bool]:
    """``(text, lossy)`` of a zarr v3 array's codec pipeline, from its metadata: e.g.
    ``("transpose > pcodec L8 > crc32c", False)``; lossy when it rounds values (bitround)."""
    try:
        codecs = arr.metadata.to_dict().get("codecs", [])
    except AttributeError:  # a zarr v2 array
        return "zarr v2", False
    parts: list[str] = []
    lossy = False
    for c in codecs:
        name = c.get("name", "?").removeprefix("numcodecs.")
        conf = c.get("configuration") or {}
        if name == "bytes":
            continue  # the plain serializer: nothing to say
        if name == "bitround":
            lossy = True
            name = f"bitround keepbits={conf.get('keepbits')}"
            if conf.get("keepbits") == BF16_KEEPBITS:
                name += " (bf16, lossy)"
        elif name == "blosc":
            name = f"blosc-{conf.get('cname')} {conf.get('shuffle')} L{conf.get('clevel')}"
        elif name == "zstd":
            name = f"zstd L{conf.get('level')}"
        elif name == "pcodec":
            order = conf.get("delta_encoding_order")
            name = f"pcodec L{conf.get('level')} delta {'auto' if order is None else order}"
        parts.append(name)
    return " > ".join(parts) or "none", lossy
