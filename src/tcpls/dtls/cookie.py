"""Stateless HelloRetryRequest cookies (RFC 9147 §5.1; RFC 9846 §4.2.2, §4.4.1).

Theory of operation
-------------------
A DTLS server answers a ClientHello without a valid cookie with a
HelloRetryRequest carrying a cookie, and keeps no state at all: everything
needed to continue travels in the cookie, protected by an HMAC.

Cookie layout (all integers big-endian)::

    version(1) = 1
    period(8)          key rotation period the MAC key belongs to
    suite(2)           cipher suite of the HelloRetryRequest
    group(2)           group asked for in its key_share (0: none, cookie only)
    hash_len(1) hash   Hash(ClientHello1) with the suite's hash
    mac(32)            HMAC-SHA256(key(period), address || everything above)

``key(period) = HMAC-SHA256(secret, "tcpls dtls cookie" || period)``: the
key changes every ``rotation`` seconds; a cookie is accepted under the
current and the previous key, so a client that got its cookie just before a
rotation still gets in (the overlapping-lifetime scheme of §5.1). Binding
the client's transport address into the MAC stops an attacker from reusing
a cookie it received at its own address for spoofed ones.

With the cookie back, the server rebuilds the transcript as
``message_hash(Hash(ClientHello1))`` followed by the HelloRetryRequest
encoded again from the same fields (RFC 9846 §4.4.1), see
:meth:`tcpls.tls.handshake.server.ServerHandshake.restore_hello_retry`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from typing import Optional

__all__ = ["CookieSecret", "CookieContents", "address_bytes"]

_VERSION = 1
_MAC_LEN = 32
_LABEL = b"tcpls dtls cookie"


def address_bytes(address: object) -> bytes:
    """A canonical byte form of a transport address (``(host, port, ...)``,
    ``bytes`` or anything with a stable ``str``), for binding into cookies."""
    if isinstance(address, (bytes, bytearray)):
        return bytes(address)
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}|{address[1]}".encode()
    return str(address).encode()


@dataclass(frozen=True, slots=True)
class CookieContents:
    """What a valid cookie carries."""

    suite: int
    group: Optional[int]
    client_hello_hash: bytes


class CookieSecret:
    """The endpoint secret from which rotating cookie MAC keys are derived.

    Args:
        secret: at least 16 bytes; random if omitted. Servers sharing one
            address (or a restart-safe deployment) pass the same secret.
        rotation: seconds between key changes; a cookie stays valid for
            between one and two periods.
    """

    def __init__(self, secret: Optional[bytes] = None, rotation: float = 60.0) -> None:
        if secret is not None and len(secret) < 16:
            raise ValueError("the cookie secret must be at least 16 bytes")
        if rotation <= 0:
            raise ValueError("rotation must be positive")
        self._secret = secret if secret is not None else os.urandom(32)
        self.rotation = rotation
        self._keys: dict[int, bytes] = {}

    def _key(self, period: int) -> bytes:
        key = self._keys.get(period)
        if key is None:
            key = hmac.digest(self._secret, _LABEL + period.to_bytes(8, "big"), "sha256")
            # Only the current and previous periods are ever needed.
            self._keys = {p: k for p, k in self._keys.items() if p >= period - 1}
            self._keys[period] = key
        return key

    def _period(self, now: float) -> int:
        return max(int(now // self.rotation), 0)

    def mint(self, address: object, contents: CookieContents, now: float) -> bytes:
        """A cookie for ``contents`` bound to ``address``."""
        period = self._period(now)
        h = contents.client_hello_hash
        body = b"".join(
            (
                bytes((_VERSION,)),
                period.to_bytes(8, "big"),
                contents.suite.to_bytes(2, "big"),
                (contents.group or 0).to_bytes(2, "big"),
                bytes((len(h),)),
                h,
            )
        )
        return body + hmac.digest(self._key(period), address_bytes(address) + body, "sha256")

    def open(self, cookie: bytes, address: object, now: float) -> Optional[CookieContents]:
        """The contents of ``cookie`` if it is authentic, bound to ``address``
        and minted during the current or the previous period; else None."""
        if len(cookie) < 14 + _MAC_LEN or cookie[0] != _VERSION:
            return None
        body, mac = cookie[:-_MAC_LEN], cookie[-_MAC_LEN:]
        period = int.from_bytes(body[1:9], "big")
        current = self._period(now)
        if period not in (current, current - 1):
            return None
        expected = hmac.digest(self._key(period), address_bytes(address) + body, "sha256")
        if not hmac.compare_digest(expected, mac):
            return None
        hash_len = body[13]
        if len(body) != 14 + hash_len:
            return None
        group = int.from_bytes(body[11:13], "big")
        return CookieContents(int.from_bytes(body[9:11], "big"), group or None, bytes(body[14:]))


def client_hello_hash(hash_name: str, client_hello: bytes) -> bytes:
    """Hash(ClientHello1) over the TLS-style message (RFC 9147 §5.2)."""
    return hashlib.new(hash_name, client_hello).digest()
