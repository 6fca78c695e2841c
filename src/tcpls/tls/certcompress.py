"""Certificate compression algorithms (RFC 8879).

zlib comes from the standard library and is always available. brotli and
zstd are used only when the optional ``brotli`` / ``zstandard`` packages are
installed (``pip install tcpls[compression]``); :func:`available` lists what
this process can do, and the handshakes never offer anything else.

Decompression is bounded: the output may not exceed the announced
``uncompressed_length`` (itself bounded by the handshake message size
limit), so a "compression bomb" costs at most that much memory. Any failure
or length mismatch is the caller's bad_certificate (RFC 8879 §4).
"""

from __future__ import annotations

import zlib
from typing import Optional

from .enums import CertificateCompressionAlgorithm as Alg

try:  # optional extra
    import brotli as _brotli  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the environment
    _brotli = None
try:  # optional extra
    import zstandard as _zstd  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the environment
    _zstd = None


class DecompressionFailed(ValueError):
    """Corrupt data, or output longer or shorter than announced."""


def available() -> list[int]:
    """Algorithms usable in this process, in our preference order."""
    out: list[int] = []
    if _zstd is not None:
        out.append(Alg.zstd)
    if _brotli is not None:
        out.append(Alg.brotli)
    out.append(Alg.zlib)
    return out


def compress(algorithm: int, data: bytes) -> bytes:
    if algorithm == Alg.zlib:
        return zlib.compress(data, 9)
    if algorithm == Alg.brotli and _brotli is not None:
        return bytes(_brotli.compress(data))
    if algorithm == Alg.zstd and _zstd is not None:
        return bytes(_zstd.ZstdCompressor(level=19).compress(data))
    raise ValueError(f"certificate compression algorithm {algorithm} is not available")


def decompress(algorithm: int, data: bytes, expected_length: int) -> bytes:
    """Decompress at most ``expected_length`` bytes; exactly that many or fail."""
    try:
        out = _decompress(algorithm, data, expected_length)
    except DecompressionFailed:
        raise
    except Exception as exc:  # noqa: BLE001 - every codec error means the same
        raise DecompressionFailed(f"{_name(algorithm)} decompression failed: {exc}") from None
    if len(out) != expected_length:
        raise DecompressionFailed(
            f"decompressed certificate is {'longer' if len(out) > expected_length else 'shorter'} than announced"
        )
    return out


def _decompress(algorithm: int, data: bytes, limit: int) -> bytes:
    if algorithm == Alg.zlib:
        d = zlib.decompressobj()
        out = d.decompress(data, limit + 1)  # one more byte detects "too long"
        if len(out) <= limit and not d.eof:
            raise DecompressionFailed("truncated zlib stream")
        if d.unused_data:
            raise DecompressionFailed("trailing data after the zlib stream")
        return out
    if algorithm == Alg.brotli and _brotli is not None:
        dec = _brotli.Decompressor()
        out = b""
        # Feed in small pieces so a bomb stops soon after passing the limit.
        for i in range(0, len(data), 1024):
            out += dec.process(data[i : i + 1024])
            if len(out) > limit:
                return out
        if not dec.is_finished():
            raise DecompressionFailed("truncated brotli stream")
        return out
    if algorithm == Alg.zstd and _zstd is not None:
        return bytes(_zstd.ZstdDecompressor().decompress(data, max_output_size=limit + 1))
    raise DecompressionFailed(f"algorithm {algorithm} is not available")


def choose(ours: list[int], theirs: list[int]) -> Optional[int]:
    """The first of our algorithms the peer offered that we can run."""
    usable = set(available())
    return next((a for a in ours if a in theirs and a in usable), None)


def _name(algorithm: int) -> str:
    try:
        return Alg(algorithm).name
    except ValueError:
        return f"algorithm {algorithm}"
