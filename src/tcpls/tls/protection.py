"""Record protection, one object per direction (RFC 9846 §5.2–§5.5).

Theory of operation
-------------------
A :class:`RecordEncryptor` (sending) or :class:`RecordDecryptor` (receiving)
holds one traffic secret, the AEAD object keyed with its ``write_key``, the
``write_iv`` (as an ``int``) and the 64-bit sequence number. The per-record
nonce is ``write_iv XOR seq`` (§5.3), the additional data the 5-byte record
header (§5.2), and the AEAD plaintext the TLSInnerPlaintext
``content || ContentType || zeros`` (§5.2, §5.4).

:meth:`update` swaps in a new traffic secret (KeyUpdate, §4.6.3, or the move
from handshake to application keys) and resets the sequence number to zero.

Performance notes (measured, see tests/test_protection.py benchmark): the
AEAD object is built once per key; per record the only Python work is one
``int`` XOR + ``to_bytes`` for the nonce, one header ``bytes`` and one
``encrypt``/``decrypt`` call. ``encrypt_into``/``decrypt_into`` with
preallocated buffers were measured and were not faster for 16 KiB records
(the extra bookkeeping costs what the saved allocation gains), so the plain
calls are used.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag

from ..errors import BadRecordMac, InternalError, RecordOverflow, UnexpectedMessage
from .enums import ContentType
from .key_schedule import traffic_key_iv
from .record import MAX_CIPHERTEXT, MAX_PLAINTEXT
from .suites import CipherSuiteInfo

__all__ = ["RecordEncryptor", "RecordDecryptor", "MAX_PLAINTEXT", "MAX_CIPHERTEXT", "SEQ_LIMIT"]

#: The last usable sequence number is ``SEQ_LIMIT - 1`` (= 2^64 - 1).
SEQ_LIMIT = 2**64

_APPLICATION_DATA = int(ContentType.APPLICATION_DATA)
_HEADER_PREFIX = b"\x17\x03\x03"  # opaque_type = application_data, legacy_record_version = 0x0303


class _Direction:
    __slots__ = ("suite", "secret", "seq", "records_protected", "_aead", "_iv", "_max_plaintext", "_tag_len")

    def __init__(self, suite: CipherSuiteInfo, secret: bytes) -> None:
        self.suite = suite
        self._tag_len = suite.tag_len
        self._max_plaintext = MAX_PLAINTEXT
        self._install(secret)

    def _install(self, secret: bytes) -> None:
        key, iv = traffic_key_iv(self.suite, secret)
        self.secret = secret
        self._aead = self.suite.new_aead(key)
        self._iv = int.from_bytes(iv, "big")
        self.seq = 0
        #: Records protected/unprotected under the current key (§5.5 limits).
        self.records_protected = 0

    def update(self, new_secret: bytes) -> None:
        """Switch to ``new_secret`` (new key and IV); the sequence number restarts at 0."""
        self._install(new_secret)

    @property
    def max_plaintext(self) -> int:
        """Largest TLSInnerPlaintext.content per record (default 2^14).

        With the record_size_limit extension (RFC 8449) set it to
        ``limit - 1``: the limit counts the inner content type and padding.
        """
        return self._max_plaintext

    @max_plaintext.setter
    def max_plaintext(self, value: int) -> None:
        if not 0 < value <= MAX_PLAINTEXT:
            raise ValueError("max_plaintext must be in 1..2^14")
        self._max_plaintext = value

    @property
    def key_usage_exhausted(self) -> bool:
        """True once the suite's per-key record limit (RFC 9846 §5.5) is reached."""
        return self.records_protected >= self.suite.record_limit


class RecordEncryptor(_Direction):
    """Protects outgoing records for one direction.

    Args:
        suite: the negotiated cipher suite.
        secret: the sending traffic secret (handshake, early or application).
    """

    __slots__ = ()

    def seal(
        self,
        content_type: int,
        data: bytes | bytearray | memoryview,
        out: list,
        padding: int = 0,
    ) -> None:
        """Append TLSCiphertext records carrying ``data`` to the list ``out``.

        Each record adds two buffers (its header and its ciphertext), ready for
        ``b"".join`` or scatter-gather ``sendmsg``: no buffer is ever regrown.

        ``data`` is cut into fragments of at most :attr:`max_plaintext` bytes;
        each record gets ``padding`` zero bytes after its inner content type
        (clipped so the record stays within the limit). Empty ``data``
        produces one empty record, which only application_data may carry
        (RFC 9846 §5.4).

        Raises:
            InternalError: the sequence number space is exhausted (a
                KeyUpdate is required first).
            ValueError: empty handshake/alert content, or negative padding.
        """
        n = len(data)
        if padding < 0:
            raise ValueError("negative padding")
        if n == 0 and content_type != _APPLICATION_DATA:
            raise ValueError("handshake and alert records must not be empty (RFC 9846 §5.4)")
        limit = self._max_plaintext
        n_records = max(1, -(-n // limit))
        seq = self.seq
        if seq + n_records > SEQ_LIMIT:
            raise InternalError("record sequence number exhausted; a key update is required")
        encrypt = self._aead.encrypt
        iv = self._iv
        tag_len = self._tag_len
        type_byte = bytes((content_type,))
        if n <= limit and not padding:
            # Fast path: one unpadded record.
            header = _HEADER_PREFIX + (n + 1 + tag_len).to_bytes(2, "big")
            out.append(header)
            out.append(encrypt((iv ^ seq).to_bytes(12, "big"), b"".join((data, type_byte)), header))
            self.seq = seq + 1
            self.records_protected += 1
            return
        view = memoryview(data)
        append = out.append
        join = b"".join
        pos = 0
        full_header = _HEADER_PREFIX + (limit + 1 + tag_len).to_bytes(2, "big")
        for _ in range(n_records):
            chunk = view[pos : pos + limit]
            size = len(chunk)
            pos += size
            if padding:
                pad = min(padding, limit - size)
                tail = type_byte + bytes(pad) if pad else type_byte
                header = _HEADER_PREFIX + (size + len(tail) + tag_len).to_bytes(2, "big")
            else:
                tail = type_byte
                header = full_header if size == limit else _HEADER_PREFIX + (size + 1 + tag_len).to_bytes(2, "big")
            append(header)
            append(encrypt((iv ^ seq).to_bytes(12, "big"), join((chunk, tail)), header))
            seq += 1
        view.release()
        self.seq = seq
        self.records_protected += n_records


class RecordDecryptor(_Direction):
    """Removes protection from incoming records for one direction.

    Args:
        suite: the negotiated cipher suite.
        secret: the peer's traffic secret.
    """

    __slots__ = ()

    def open(self, header: bytes | memoryview, ciphertext: bytes | memoryview) -> tuple[int, bytes | memoryview]:
        """Decrypt one record; ``header`` is its 5-byte header (the AAD).

        Returns:
            ``(inner content type, content)`` with the zero padding removed.
            ``content`` may be a memoryview over an immutable bytes object.

        Raises:
            RecordOverflow: the ciphertext or plaintext exceeds the limit
                (2^14 + 256, or :attr:`max_plaintext` + 1 + tag length).
            BadRecordMac: AEAD authentication failed.
            UnexpectedMessage: the plaintext is all zeros (no content type).
            InternalError: the sequence number space is exhausted.
        """
        n = len(ciphertext)
        # The AEAD expansion is fixed (tag_len), so this bounds the
        # TLSInnerPlaintext to max_plaintext + 1 and also enforces the
        # 2^14 + 256 ciphertext limit (RFC 9846 §5.2, §5.4, RFC 8449).
        if n > self._max_plaintext + 1 + self._tag_len:
            raise RecordOverflow(f"protected record of {n} bytes exceeds the limit")
        seq = self.seq
        if seq >= SEQ_LIMIT:
            raise InternalError("record sequence number exhausted")
        try:
            plaintext = self._aead.decrypt((self._iv ^ seq).to_bytes(12, "big"), ciphertext, header)
        except InvalidTag:
            raise BadRecordMac("record authentication failed") from None
        self.seq = seq + 1
        self.records_protected += 1
        end = len(plaintext) - 1
        if end >= 0 and plaintext[end]:
            return plaintext[end], memoryview(plaintext)[:end]
        # Padded (or empty) record: scan back for the content type (§5.4).
        end = len(plaintext.rstrip(b"\x00")) - 1
        if end < 0:
            raise UnexpectedMessage("protected record has no non-zero content type")
        return plaintext[end], memoryview(plaintext)[:end]
