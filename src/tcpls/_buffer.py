"""A cursor over bytes for TLS-style wire formats (RFC 9846 §3).

``Buffer`` reads big-endian integers and length-prefixed vectors from
received bytes, and appends them when building messages. It implements the
"full recognition before processing" rule: :meth:`Buffer.pull_block` checks
that the body of a length-prefixed vector was consumed exactly, and every
short read raises :class:`~tcpls.errors.DecodeError` (decode_error alert).
"""

from __future__ import annotations

import struct
from typing import Callable, TypeVar

from .errors import DecodeError

T = TypeVar("T")

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_TLV_HEADER = struct.Struct("!HH")


class Buffer:
    """Read cursor (``Buffer(data=...)``) or write buffer (``Buffer()``)."""

    __slots__ = ("_data", "_pos", "_end")

    def __init__(self, data: bytes | bytearray | memoryview | None = None) -> None:
        if data is None:
            self._data: bytearray | bytes | memoryview = bytearray()
            self._end = 0
        else:
            self._data = data
            self._end = len(data)
        self._pos = 0

    # ------------------------------------------------------------------ reading
    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int) -> None:
        if not 0 <= pos <= self._end:
            raise DecodeError("seek out of bounds")
        self._pos = pos

    @property
    def remaining(self) -> int:
        return self._end - self._pos

    def eof(self) -> bool:
        return self._pos >= self._end

    def _take(self, n: int) -> int:
        pos = self._pos
        if n < 0 or pos + n > self._end:
            raise DecodeError("message is shorter than its encoding says")
        self._pos = pos + n
        return pos

    # The hot readers below inline _take: a handshake decodes a few hundred
    # fields and the extra call was a measurable part of its cost.
    def pull_bytes(self, n: int) -> bytes:
        pos = self._pos
        end = pos + n
        if n < 0 or end > self._end:
            raise DecodeError("message is shorter than its encoding says")
        self._pos = end
        return bytes(self._data[pos:end])

    def pull_uint8(self) -> int:
        pos = self._pos
        if pos >= self._end:
            raise DecodeError("message is shorter than its encoding says")
        self._pos = pos + 1
        return self._data[pos]

    def pull_uint16(self) -> int:
        pos = self._pos
        if pos + 2 > self._end:
            raise DecodeError("message is shorter than its encoding says")
        self._pos = pos + 2
        return _U16.unpack_from(self._data, pos)[0]

    def pull_uint24(self) -> int:
        pos = self._take(3)
        d = self._data
        return (d[pos] << 16) | (d[pos + 1] << 8) | d[pos + 2]

    def pull_uint32(self) -> int:
        pos = self._pos
        if pos + 4 > self._end:
            raise DecodeError("message is shorter than its encoding says")
        self._pos = pos + 4
        return _U32.unpack_from(self._data, pos)[0]

    def pull_uint48(self) -> int:
        pos = self._take(6)
        return int.from_bytes(self._data[pos : pos + 6], "big")

    def pull_uint64(self) -> int:
        pos = self._take(8)
        return _U64.unpack_from(self._data, pos)[0]

    def pull_length(self, size: int) -> int:
        if size == 1:
            return self.pull_uint8()
        if size == 2:
            return self.pull_uint16()
        if size == 3:
            return self.pull_uint24()
        if size == 4:
            return self.pull_uint32()
        raise ValueError(f"bad length size {size}")

    def pull_opaque(self, size: int, min_len: int = 0, max_len: int | None = None) -> bytes:
        """``opaque x<min..max>`` with a ``size``-byte length prefix."""
        pos = self._pos
        start = pos + size
        if size == 2 and start <= self._end:
            n = _U16.unpack_from(self._data, pos)[0]
        elif size == 1 and start <= self._end:
            n = self._data[pos]
        else:
            n = self.pull_length(size)
            start = self._pos
        if n < min_len or (max_len is not None and n > max_len):
            raise DecodeError(f"vector length {n} outside <{min_len}..{max_len}>")
        end = start + n
        if end > self._end:
            raise DecodeError("message is shorter than its encoding says")
        self._pos = end
        return bytes(self._data[start:end])

    def pull_block(self, size: int, min_len: int = 0) -> "_PullBlock":
        """Read a ``size``-byte length and limit reads to that many bytes.

        Use as ``with buf.pull_block(2) as n: ...``. On exit the block must
        have been consumed exactly: trailing bytes inside a vector are a
        decode_error (RFC 9846 §4).
        """
        n = self.pull_length(size)
        if n < min_len:
            raise DecodeError(f"vector shorter than its minimum {min_len}")
        end = self._pos + n
        if end > self._end:
            raise DecodeError("vector longer than the enclosing data")
        return _PullBlock(self, n, end)

    def pull_tlv_block(self, min_len: int = 0) -> list[tuple[int, bytes]]:
        """``Entry entries<min_len..2^16-1>`` of ``struct { uint16 type; opaque
        data<0..2^16-1>; } Entry`` (the TLS extension block, RFC 9846 §4.2),
        in order, duplicates included.

        What ``with pull_block(2, min_len)`` around ``pull_uint16()`` and
        ``pull_opaque(2)`` reads, with the same errors, in one call: every
        hello, EncryptedExtensions and NewSessionTicket has such a block.
        """
        data = self._data
        pos = self._pos
        if pos + 2 > self._end:
            raise DecodeError("message is shorter than its encoding says")
        n = _U16.unpack_from(data, pos)[0]
        if n < min_len:
            raise DecodeError(f"vector shorter than its minimum {min_len}")
        pos += 2
        end = pos + n
        if end > self._end:
            raise DecodeError("vector longer than the enclosing data")
        self._pos = end
        # One copy of the block (the data is often a memoryview), then each
        # entry's body is a plain bytes slice of it.
        raw = data[pos:end]
        if type(raw) is not bytes:
            raw = bytes(raw)
        entries = []
        unpack = _TLV_HEADER.unpack_from
        pos = 0
        while pos < n:
            if pos + 4 > n:
                raise DecodeError("message is shorter than its encoding says")
            entry_type, length = unpack(raw, pos)
            pos += 4
            stop = pos + length
            if stop > n:
                raise DecodeError("message is shorter than its encoding says")
            entries.append((entry_type, raw[pos:stop]))
            pos = stop
        return entries

    def pull_list(self, size: int, item: Callable[[], T], min_len: int = 0) -> list[T]:
        """A vector of items, each read by ``item()``."""
        out: list[T] = []
        with self.pull_block(size, min_len):
            while self._pos < self._end:
                out.append(item())
        return out

    def pull_rest(self) -> bytes:
        pos = self._pos
        self._pos = self._end
        return bytes(self._data[pos : self._end])

    def expect_end(self, what: str = "message") -> None:
        if self._pos != self._end:
            raise DecodeError(f"trailing bytes after {what}")

    # ------------------------------------------------------------------ writing
    def data(self) -> bytes:
        return bytes(self._data)

    def view_written(self) -> bytes | bytearray | memoryview:
        """What was written so far, without a copy (do not keep it across writes)."""
        return self._data

    def push_bytes(self, b: bytes | bytearray | memoryview) -> None:
        self._data += b  # type: ignore[operator]

    def push_uint8(self, v: int) -> None:
        self._data.append(v)  # type: ignore[union-attr]

    def push_uint16(self, v: int) -> None:
        self._data += _U16.pack(v)  # type: ignore[operator]

    def push_uint24(self, v: int) -> None:
        self._data += v.to_bytes(3, "big")  # type: ignore[operator]

    def push_uint32(self, v: int) -> None:
        self._data += _U32.pack(v)  # type: ignore[operator]

    def push_uint48(self, v: int) -> None:
        self._data += v.to_bytes(6, "big")  # type: ignore[operator]

    def push_uint64(self, v: int) -> None:
        self._data += _U64.pack(v)  # type: ignore[operator]

    def push_opaque(self, size: int, b: bytes) -> None:
        if len(b) >= 1 << (8 * size):
            raise ValueError("vector too long for its length prefix")
        self._data += len(b).to_bytes(size, "big")  # type: ignore[operator]
        self._data += b  # type: ignore[operator]

    def push_block(self, size: int) -> "_PushBlock":
        """Reserve a ``size``-byte length prefix and back-patch it on exit."""
        data = self._data
        assert isinstance(data, bytearray)
        start = len(data)
        data += bytes(size)
        return _PushBlock(data, start, size)

    def push_list(self, size: int, push_item: Callable[[T], None], items: "list[T] | tuple[T, ...]") -> None:
        with self.push_block(size):
            for it in items:
                push_item(it)


class _PullBlock:
    """Context manager of :meth:`Buffer.pull_block` (a class: contextlib's
    generator-based managers cost several microseconds per vector)."""

    __slots__ = ("buf", "n", "end", "outer_end")

    def __init__(self, buf: Buffer, n: int, end: int) -> None:
        self.buf = buf
        self.n = n
        self.end = end
        self.outer_end = buf._end

    def __enter__(self) -> int:
        self.buf._end = self.end
        return self.n

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        buf = self.buf
        buf._end = self.outer_end
        if exc_type is None and buf._pos != self.end:
            raise DecodeError("extra bytes at the end of a vector")


class _PushBlock:
    """Context manager of :meth:`Buffer.push_block`: back-patches the length."""

    __slots__ = ("data", "start", "size")

    def __init__(self, data: bytearray, start: int, size: int) -> None:
        self.data = data
        self.start = start
        self.size = size

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            return
        start, size = self.start, self.size
        n = len(self.data) - start - size
        if n >= 1 << (8 * size):
            raise ValueError("vector too long for its length prefix")
        self.data[start : start + size] = n.to_bytes(size, "big")
