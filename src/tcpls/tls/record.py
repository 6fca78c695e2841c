"""TLS record framing (RFC 9846 §5.1): stream bytes → records, and back.

Theory of operation
-------------------
:class:`RecordReader` turns the TCP byte stream into whole records. It does
not decrypt: it hands ``(outer content type, header, body)`` to the caller,
which passes protected records (outer type application_data) to a
:class:`~tcpls.tls.protection.RecordDecryptor` with ``header`` as the AAD.

Buffering. Fed chunks are kept as immutable ``bytes`` in a list and only
joined when a whole record (or a whole header) is available, so trickling a
record in one byte at a time costs O(1) per feed, and feeding 256 KiB at once
costs no copy beyond the one ``bytes(data)`` needed when the caller passes a
mutable buffer. Records are returned as ``memoryview`` slices of that
immutable buffer: no per-record copy, and a slice stays valid for as long as
the caller keeps it (the docs only promise "until the next :meth:`feed`").

Header checks, done as soon as the 5 header bytes are in (before the body
is buffered):

* unknown content type → ``unexpected_message`` (§5);
* length above 2^14 (plaintext types) or 2^14 + 256 (application_data, i.e.
  protected records) → ``record_overflow`` (§5.1, §5.2);
* legacy_record_version: the major byte must be 3 and the minor 1..3, else
  ``protocol_version`` (as OpenSSL does). Protected records must carry 0x0303
  (§5.2; OpenSSL answers other values with ``decode_error``). For
  plaintext records the field "MUST be ignored" (§5.1), so 0x0301–0x0303 are
  all accepted (the first ClientHello record commonly uses 0x0301);
* zero-length handshake or alert records → ``unexpected_message`` (§5.1,
  §5.4); a change_cipher_spec record must be exactly the byte 0x01 (§5),
  else ``unexpected_message``. Whether a CCS is allowed *at this point* is
  the handshake engine's decision.
"""

from __future__ import annotations

from collections import deque

from ..errors import ProtocolVersionError, RecordOverflow, UnexpectedMessage
from .enums import ContentType

__all__ = ["MAX_PLAINTEXT", "MAX_CIPHERTEXT", "RecordReader", "encode_plaintext_records"]

MAX_PLAINTEXT = 2**14
MAX_CIPHERTEXT = 2**14 + 256

_CCS = int(ContentType.CHANGE_CIPHER_SPEC)
_ALERT = int(ContentType.ALERT)
_HANDSHAKE = int(ContentType.HANDSHAKE)
_APPLICATION_DATA = int(ContentType.APPLICATION_DATA)
# Maximum TLSPlaintext/TLSCiphertext length per outer content type.
_MAX_LENGTH = {_CCS: MAX_PLAINTEXT, _ALERT: MAX_PLAINTEXT, _HANDSHAKE: MAX_PLAINTEXT, _APPLICATION_DATA: MAX_CIPHERTEXT}


class RecordReader:
    """Reassembles TLS records from a byte stream.

    Usage::

        reader.feed(data)
        while (record := reader.next_record()) is not None:
            content_type, header, body = record
    """

    __slots__ = ("_buf", "_view", "_pos", "_chunks", "_chunks_len", "_borrowed")

    def __init__(self) -> None:
        self._buf: bytes = b""
        self._view = memoryview(self._buf)
        self._pos = 0
        # Fed data not yet in _buf, as (immutable bytes, start offset).
        self._chunks: deque[tuple[bytes, int]] = deque()
        self._chunks_len = 0
        self._borrowed = False  # some buffered bytes live in a caller's buffer

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add received bytes (copied if ``data`` is mutable)."""
        if not len(data):
            return
        chunk = data if type(data) is bytes else bytes(data)
        self._chunks.append((chunk, 0))
        self._chunks_len += len(chunk)

    def feed_borrowed(self, data: bytes | bytearray | memoryview) -> None:
        """Add received bytes *without copying* them.

        ``data`` must stay unchanged until :meth:`release` is called; records
        returned until then may point into it. This lets a transport read
        into one reusable buffer (``recv_into``) instead of allocating a new
        bytes object per read.
        """
        if not len(data):
            return
        view = memoryview(data).cast("B") if not isinstance(data, bytes) else data
        self._chunks.append((view, 0))  # type: ignore[arg-type]
        self._chunks_len += len(view)
        self._borrowed = True

    def release(self) -> None:
        """Copy whatever is still buffered out of borrowed buffers."""
        if not self._borrowed:
            return
        self._borrowed = False
        rest = bytes(self._view[self._pos :])
        if self._chunks:
            rest += b"".join(memoryview(obj)[off:] for obj, off in self._chunks)
        self._chunks.clear()
        self._chunks_len = 0
        self._buf, self._view, self._pos = rest, memoryview(rest), 0

    def buffered(self) -> int:
        """Number of received bytes not yet returned as records."""
        return len(self._buf) - self._pos + self._chunks_len

    def bytes_to_boundary(self) -> int:
        """Bytes missing from the buffered partial record (0 when none is buffered)."""
        have = self.buffered()
        if have == 0:
            return 0
        if have < 5:
            return 5 - have
        self._join(5)
        p = self._pos
        return 5 + ((self._buf[p + 3] << 8) | self._buf[p + 4]) - have

    def _join(self, need: int) -> None:
        """Make ``need`` bytes contiguous at the read position.

        When the current buffer is used up, the next fed chunk becomes the
        buffer as it is (no copy). Only a record that straddles two chunks is
        stitched together, and only up to its own end: the rest of the chunk
        stays where it is.
        """
        chunks = self._chunks
        if self._pos == len(self._buf):
            obj, off = chunks.popleft()
            self._chunks_len -= len(obj) - off
            self._buf, self._view, self._pos = obj, memoryview(obj), off
            if len(obj) - off >= need:
                return
        pieces = [self._view[self._pos :]]
        got = len(pieces[0])
        while got < need:
            obj, off = chunks[0]
            take = min(len(obj) - off, need - got)
            pieces.append(memoryview(obj)[off : off + take])
            got += take
            self._chunks_len -= take
            if off + take == len(obj):
                chunks.popleft()
            else:
                chunks[0] = (obj, off + take)
        joined = b"".join(pieces)
        self._buf, self._view, self._pos = joined, memoryview(joined), 0

    def next_record(self) -> tuple[int, memoryview, memoryview] | None:
        """The next whole record as ``(outer type, 5-byte header, body)``, or None.

        Raises:
            UnexpectedMessage, RecordOverflow, ProtocolVersionError, DecodeError:
                see the module docstring; the reader must not be used after.
        """
        buf = self._buf
        pos = self._pos
        avail = len(buf) - pos
        if avail < 5:
            if avail + self._chunks_len < 5:
                return None
            self._join(5)
            buf = self._buf
            pos = self._pos
            avail = len(buf) - pos
        content_type = buf[pos]
        major = buf[pos + 1]
        minor = buf[pos + 2]
        length = (buf[pos + 3] << 8) | buf[pos + 4]
        max_length = _MAX_LENGTH.get(content_type)
        if max_length is None:
            raise UnexpectedMessage(f"unknown record content type {content_type}")
        # RFC 9846 §5.1: legacy_record_version is ignored on plaintext
        # records (peers send 0x0300..0x0303 in their first flight); only a
        # major version other than 3 says this is not TLS at all.
        if major != 3:
            raise ProtocolVersionError(f"bad record version 0x{major:02x}{minor:02x}")
        # A protected record's header is its AEAD additional data, so a wrong
        # legacy_record_version fails authentication (bad_record_mac); before
        # keys exist the engine reports it as an unexpected record.
        if content_type != _APPLICATION_DATA and length == 0:
            raise UnexpectedMessage("empty handshake, alert or change_cipher_spec record")
        if length > max_length:
            raise RecordOverflow(f"record of {length} bytes exceeds the limit")
        end = pos + 5 + length
        if end > len(buf):
            if avail + self._chunks_len < 5 + length:
                return None
            self._join(5 + length)
            pos = self._pos
            end = pos + 5 + length
        view = self._view
        body = view[pos + 5 : end]
        if content_type == _CCS and (length != 1 or body[0] != 1):
            raise UnexpectedMessage("change_cipher_spec record is not the single byte 0x01")
        self._pos = end
        return content_type, view[pos : pos + 5], body


def encode_plaintext_records(
    content_type: int, data: bytes | bytearray | memoryview, out: list, legacy_version: int = 0x0303
) -> None:
    """Append unprotected TLSPlaintext records carrying ``data`` to the list ``out``.

    ``data`` is cut into fragments of at most 2^14 bytes. Empty ``data``
    appends nothing (zero-length handshake/alert fragments are forbidden,
    RFC 9846 §5.1). ``legacy_version`` is 0x0303, or 0x0301 for an initial
    ClientHello.
    """
    n = len(data)
    if not n:
        return
    prefix = bytes((content_type,)) + legacy_version.to_bytes(2, "big")
    if n <= MAX_PLAINTEXT:
        out.append(prefix + n.to_bytes(2, "big") + bytes(data))
        return
    view = memoryview(data)
    for pos in range(0, n, MAX_PLAINTEXT):
        chunk = view[pos : pos + MAX_PLAINTEXT]
        out.append(prefix + len(chunk).to_bytes(2, "big") + bytes(chunk))
