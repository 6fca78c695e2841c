"""The handshake transcript hash (RFC 9846 §4.4.1).

The hash function is the cipher suite's, which a client only learns from the
ServerHello (or HelloRetryRequest). Until :meth:`Transcript.set_hash` is
called the transcript therefore just buffers the raw handshake messages
(type + 24-bit length + body, no record headers); afterwards it keeps a running
:mod:`hashlib` object and answers :meth:`digest` by hashing a ``copy()``.

HelloRetryRequest: :meth:`Transcript.rewrite_for_hello_retry` replaces
ClientHello1 by the synthetic ``message_hash`` message
``254 || 00 00 Hash.length || Hash(ClientHello1)``.
"""

from __future__ import annotations

import hashlib
from typing import Any

from ..errors import InternalError
from .enums import HandshakeType

__all__ = ["Transcript", "message_hash"]


def message_hash(hash_name: str, client_hello1: bytes) -> bytes:
    """The synthetic ``message_hash`` handshake message replacing ClientHello1."""
    digest = hashlib.new(hash_name, client_hello1).digest()
    return bytes((HandshakeType.message_hash, 0, 0, len(digest))) + digest


class Transcript:
    """Running Transcript-Hash of the handshake messages.

    Args:
        hash_name: if already known (e.g. server side after choosing the
            suite), the hashlib name; otherwise call :meth:`set_hash` later.
    """

    __slots__ = ("_hash_name", "_hash", "_buffered")

    def __init__(self, hash_name: str | None = None) -> None:
        self._hash_name: str | None = None
        self._hash: Any = None
        self._buffered: list[bytes] = []
        if hash_name is not None:
            self.set_hash(hash_name)

    @property
    def hash_name(self) -> str | None:
        return self._hash_name

    def set_hash(self, hash_name: str) -> None:
        """Fix the hash function and hash everything buffered so far."""
        if self._hash_name is not None:
            if hash_name != self._hash_name:
                raise InternalError(f"transcript hash already set to {self._hash_name}")
            return
        h = hashlib.new(hash_name)
        for msg in self._buffered:
            h.update(msg)
        self._hash_name = hash_name
        self._hash = h
        self._buffered = []

    def update(self, msg_bytes: bytes | bytearray | memoryview) -> None:
        """Append one or more complete handshake messages."""
        if self._hash is None:
            self._buffered.append(bytes(msg_bytes))
        else:
            self._hash.update(msg_bytes)

    def digest(self) -> bytes:
        """Transcript-Hash of the messages so far (does not consume the state)."""
        if self._hash is None:
            raise InternalError("transcript hash requested before the hash is known")
        # hashlib's digest() leaves the running state untouched (it finishes
        # a copy of its own): no copy() here.
        return self._hash.digest()

    def digest_with(self, extra: bytes | bytearray | memoryview) -> bytes:
        """Transcript-Hash of the messages so far followed by ``extra``, without recording it.

        Used for PSK binders, computed over a truncated ClientHello.
        """
        if self._hash is None:
            raise InternalError("transcript hash requested before the hash is known")
        h = self._hash.copy()
        h.update(extra)
        return h.digest()

    def rewrite_for_hello_retry(self) -> None:
        """Replace ClientHello1 by ``message_hash`` (RFC 9846 §4.4.1).

        Call this after :meth:`set_hash` and before adding the
        HelloRetryRequest; the transcript must hold exactly ClientHello1.
        """
        if self._hash_name is None:
            raise InternalError("hello retry rewrite before the hash is known")
        # The transcript holds exactly ClientHello1, so its running hash is
        # Hash(ClientHello1).
        digest = self._hash.digest()
        h = hashlib.new(self._hash_name)
        h.update(bytes((HandshakeType.message_hash, 0, 0, len(digest))) + digest)
        self._hash = h

    def copy(self) -> Transcript:
        """An independent copy (e.g. to try several PSK binders)."""
        t = Transcript.__new__(Transcript)
        t._hash_name = self._hash_name
        t._hash = self._hash.copy() if self._hash is not None else None
        t._buffered = list(self._buffered)
        return t
