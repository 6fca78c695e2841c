"""Sessions, tickets, pre-shared keys and 0-RTT anti-replay.

Theory of operation
-------------------
*Client side.* Every NewSessionTicket (RFC 9846 §4.6.1) becomes a
:class:`Session`: the ticket (the PSK identity), the PSK derived from the
resumption secret, ``ticket_age_add``, the lifetime and when the ticket was
received, ``max_early_data_size`` and the parameters 0-RTT must reuse (suite,
ALPN, SNI). ``Session.to_bytes()`` / ``Session.from_bytes()`` store it.
An :class:`ExternalPSK` is a provisioned identity + key + hash (§4.2.11).

*Server side.* The state of a ticket is a :class:`TicketState`. By default
tickets are *stateless*: the ticket is that state sealed with AES-256-GCM
under a rotating key held by :class:`TicketKeys`. With a ``ticket_store``
(any :class:`KeyValueStore`) tickets are *stateful*: the ticket is a random
label, the state lives in the store and is taken out exactly once on use
(single-use tickets, §8.1).

*Anti-replay.* :class:`AntiReplay` accepts 0-RTT only for a ClientHello
whose expected arrival time is within a window of the server's clock
(freshness, §8.3) and whose validated PSK binder it has not recorded before
within that window (ClientHello recording, §8.2). Both stores use the same
small :class:`KeyValueStore` interface (``put``/``get``/``add``/``pop``,
the last two being the atomic insert-if-absent and delete-once operations
a shared backend such as Redis provides); :class:`MemoryStore` is the
in-process default.

Nothing here reads a clock: every time is a ``now`` argument, in seconds
since the epoch (wall-clock time, since tickets outlive processes).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Optional, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .._buffer import Buffer
from ..errors import DecodeError
from .suites import suite_info

__all__ = [
    "Session",
    "ExternalPSK",
    "TicketState",
    "TicketKeys",
    "KeyValueStore",
    "MemoryStore",
    "AntiReplay",
    "EarlyDataOffer",
    "MAX_TICKET_LIFETIME",
]

# RFC 9846 §4.6.1: servers MUST NOT use more; clients MUST NOT use tickets longer.
MAX_TICKET_LIFETIME = 604800

_SESSION_MAGIC = b"TCPLS-S1"
# 2: the protocol version (TLS 1.3 / DTLS 1.3) is part of the state; older
# states carry none and are not usable (a full handshake follows).
# 3: the client's certificate chain follows (version 2 states still resume,
# without it).
_STATE_VERSION = 3
_TLS_1_3 = 0x0304


def _push_str(buf: Buffer, s: Optional[str]) -> None:
    buf.push_opaque(2, b"" if s is None else b"\x01" + s.encode("utf-8"))


def _push_certs(buf: Buffer, certs: tuple[bytes, ...]) -> None:
    """DER certificates as ``opaque certs<0..2^24-1>`` of ``opaque cert<1..2^24-1>``."""
    inner = Buffer()
    for der in certs:
        inner.push_opaque(3, der)
    buf.push_opaque(3, inner.data())


def _pull_certs(buf: Buffer) -> tuple[bytes, ...]:
    inner = Buffer(buf.pull_opaque(3))
    out = []
    while not inner.eof():
        der = inner.pull_opaque(3)
        if not der:
            raise DecodeError("empty certificate")
        out.append(der)
    return tuple(out)


def _pull_str(buf: Buffer) -> Optional[str]:
    raw = buf.pull_opaque(2)
    if not raw:
        return None
    if raw[:1] != b"\x01":
        raise DecodeError("bad string encoding")
    return raw[1:].decode("utf-8")


@dataclass(frozen=True)
class Session:
    """A resumable session (client side), made from one NewSessionTicket.

    Attributes:
        cipher_suite: suite of the connection that issued the ticket.
        psk: the resumption PSK (§4.6.1).
        ticket: the opaque ticket, sent as the PSK identity.
        ticket_age_add: obfuscation added to the ticket age (§4.2.11.1).
        lifetime: seconds the ticket is valid for, from ``received_at``.
        received_at: when the NewSessionTicket arrived (``now``, epoch seconds).
        max_early_data: bytes of 0-RTT data allowed (0: none).
        alpn_protocol: ALPN of the issuing connection (0-RTT must reuse it).
        server_name: SNI of the issuing connection.
        peer_certificates: the server's certificate chain (DER, leaf first)
            as verified on the issuing connection; a connection resumed with
            this session reports it as its peer's (RFC 9846 §2.2: the PSK
            carries the original authentication).
    """

    cipher_suite: int
    psk: bytes = field(repr=False)
    ticket: bytes = field(repr=False)
    ticket_age_add: int = field(repr=False)
    lifetime: int
    received_at: float
    max_early_data: int = 0
    alpn_protocol: Optional[str] = None
    server_name: Optional[str] = None
    peer_certificates: tuple[bytes, ...] = field(default=(), repr=False)

    @property
    def hash_name(self) -> str:
        return suite_info(self.cipher_suite).hash_name

    def is_valid(self, now: float) -> bool:
        """Not expired (``lifetime``, and never beyond 7 days)."""
        age = now - self.received_at
        return 0 <= age <= min(self.lifetime, MAX_TICKET_LIFETIME) and self.lifetime > 0

    def obfuscated_age(self, now: float) -> int:
        """``obfuscated_ticket_age`` for a ClientHello sent at ``now`` (§4.2.11.1)."""
        age_ms = max(0, int((now - self.received_at) * 1000))
        return (age_ms + self.ticket_age_add) & 0xFFFFFFFF

    def to_bytes(self) -> bytes:
        """Serialise (contains the PSK: store it as a secret)."""
        buf = Buffer()
        buf.push_bytes(_SESSION_MAGIC)
        buf.push_uint16(self.cipher_suite)
        buf.push_opaque(1, self.psk)
        buf.push_opaque(2, self.ticket)
        buf.push_uint32(self.ticket_age_add)
        buf.push_uint32(self.lifetime)
        buf.push_uint64(int(self.received_at * 1000))
        buf.push_uint32(self.max_early_data)
        _push_str(buf, self.alpn_protocol)
        _push_str(buf, self.server_name)
        _push_certs(buf, self.peer_certificates)
        return buf.data()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Session":
        """Inverse of :meth:`to_bytes`; raises ``ValueError`` on bad input."""
        try:
            buf = Buffer(data)
            if buf.pull_bytes(len(_SESSION_MAGIC)) != _SESSION_MAGIC:
                raise ValueError("not a tcpls session")
            suite = buf.pull_uint16()
            suite_info(suite)
            s = cls(
                cipher_suite=suite,
                psk=buf.pull_opaque(1),
                ticket=buf.pull_opaque(2),
                ticket_age_add=buf.pull_uint32(),
                lifetime=buf.pull_uint32(),
                received_at=buf.pull_uint64() / 1000,
                max_early_data=buf.pull_uint32(),
                alpn_protocol=_pull_str(buf),
                server_name=_pull_str(buf),
                # Absent from sessions saved before it was added.
                peer_certificates=() if buf.eof() else _pull_certs(buf),
            )
            buf.expect_end("session")
            return s
        except (DecodeError, KeyError, UnicodeDecodeError) as exc:
            raise ValueError(f"invalid session encoding: {exc}") from None


@dataclass(frozen=True)
class ExternalPSK:
    """An externally provisioned PSK (RFC 9846 §4.2.11).

    Attributes:
        identity: the PSK identity sent in the clear.
        key: the secret.
        hash_name: ``"sha256"`` (the default the RFC mandates when none is
            provisioned) or ``"sha384"``; restricts the usable suites.
    """

    identity: bytes
    key: bytes = field(repr=False)
    hash_name: str = "sha256"

    def __post_init__(self) -> None:
        if self.hash_name not in ("sha256", "sha384"):
            raise ValueError("external PSK hash must be 'sha256' or 'sha384'")
        if not self.identity or not self.key:
            raise ValueError("external PSK identity and key must not be empty")


@dataclass(frozen=True)
class TicketState:
    """What the server needs to resume from a ticket (sealed into stateless tickets)."""

    cipher_suite: int
    psk: bytes = field(repr=False)
    ticket_age_add: int
    created_at: float
    lifetime: int
    max_early_data: int = 0
    alpn_protocol: Optional[str] = None
    server_name: Optional[str] = None
    #: The protocol of the connection that issued the ticket (supported_versions
    #: value: 0x0304 TLS 1.3, 0xfefc DTLS 1.3). A ticket resumes only a
    #: connection of the same protocol.
    protocol_version: int = _TLS_1_3
    #: The client's certificate chain (DER, leaf first) if it authenticated:
    #: a resumed connection reports it as its peer's (RFC 9846 §2.2).
    peer_certificates: tuple[bytes, ...] = ()

    def encode(self) -> bytes:
        buf = Buffer()
        buf.push_uint8(_STATE_VERSION)
        buf.push_uint16(self.protocol_version)
        buf.push_uint16(self.cipher_suite)
        buf.push_opaque(1, self.psk)
        buf.push_uint32(self.ticket_age_add)
        buf.push_uint64(int(self.created_at * 1000))
        buf.push_uint32(self.lifetime)
        buf.push_uint32(self.max_early_data)
        _push_str(buf, self.alpn_protocol)
        _push_str(buf, self.server_name)
        _push_certs(buf, self.peer_certificates)
        return buf.data()

    @classmethod
    def decode(cls, data: bytes) -> Optional["TicketState"]:
        try:
            buf = Buffer(data)
            version = buf.pull_uint8()
            if version not in (2, _STATE_VERSION):
                return None
            protocol_version = buf.pull_uint16()
            st = cls(
                protocol_version=protocol_version,
                cipher_suite=buf.pull_uint16(),
                psk=buf.pull_opaque(1),
                ticket_age_add=buf.pull_uint32(),
                created_at=buf.pull_uint64() / 1000,
                lifetime=buf.pull_uint32(),
                max_early_data=buf.pull_uint32(),
                alpn_protocol=_pull_str(buf),
                server_name=_pull_str(buf),
                peer_certificates=_pull_certs(buf) if version >= 3 else (),
            )
            buf.expect_end("ticket state")
            return st
        except (DecodeError, UnicodeDecodeError):
            return None


class TicketKeys:
    """Rotating AES-256-GCM keys that seal stateless tickets.

    A new key is made when the current one is older than ``rotation``
    seconds; old keys are kept (for decryption only) while tickets sealed
    under them can still be valid (``rotation + max_lifetime``).

    Ticket format: ``key_name (16) || nonce (12) || AES-GCM(state, aad=key_name)``.
    """

    NAME_LEN = 16
    NONCE_LEN = 12

    def __init__(self, rotation: float = 3600.0, max_lifetime: int = MAX_TICKET_LIFETIME) -> None:
        self.rotation = rotation
        self.max_lifetime = max_lifetime
        self._keys: list[tuple[bytes, AESGCM, float]] = []  # newest first: (name, aead, created_at)
        self._lock = threading.Lock()

    def add_key(self, name: bytes, key: bytes, created_at: float) -> None:
        """Install a key (e.g. shared by several servers); it becomes the current one."""
        if len(name) != self.NAME_LEN or len(key) != 32:
            raise ValueError("ticket key name must be 16 bytes and the key 32 bytes")
        with self._lock:
            self._keys.insert(0, (name, AESGCM(key), created_at))

    def _current(self, now: float) -> tuple[bytes, AESGCM]:
        with self._lock:
            if not self._keys or now - self._keys[0][2] >= self.rotation:
                self._keys.insert(0, (os.urandom(self.NAME_LEN), AESGCM(AESGCM.generate_key(256)), now))
            keep = self.rotation + self.max_lifetime
            self._keys = [k for i, k in enumerate(self._keys) if i == 0 or now - k[2] < keep]
            name, aead, _ = self._keys[0]
            return name, aead

    def seal(self, plaintext: bytes, now: float) -> bytes:
        name, aead = self._current(now)
        nonce = os.urandom(self.NONCE_LEN)
        return name + nonce + aead.encrypt(nonce, plaintext, name)

    def open(self, ticket: bytes) -> Optional[bytes]:
        """The sealed plaintext, or None for a ticket not sealed by one of our keys."""
        name = ticket[: self.NAME_LEN]
        with self._lock:
            aead = next((a for n, a, _ in self._keys if n == name), None)
        if aead is None or len(ticket) < self.NAME_LEN + self.NONCE_LEN + 16:
            return None
        nonce = ticket[self.NAME_LEN : self.NAME_LEN + self.NONCE_LEN]
        try:
            return aead.decrypt(nonce, ticket[self.NAME_LEN + self.NONCE_LEN :], name)
        except InvalidTag:
            return None


class KeyValueStore(Protocol):
    """Shared storage for stateful tickets and anti-replay records.

    ``ttl`` is in seconds; ``now`` is the caller's clock (backends with their
    own expiry, like Redis, may ignore it).
    """

    def put(self, key: bytes, value: bytes, now: float, ttl: float) -> None: ...
    def get(self, key: bytes, now: float) -> Optional[bytes]: ...
    def add(self, key: bytes, value: bytes, now: float, ttl: float) -> bool:
        """Insert only if absent (atomically); True if inserted."""
        ...

    def pop(self, key: bytes, now: float) -> Optional[bytes]:
        """Remove and return (atomically): at most one caller gets the value."""
        ...


class MemoryStore:
    """In-process :class:`KeyValueStore` (thread-safe; expired entries are swept lazily)."""

    def __init__(self, max_entries: int = 1 << 20) -> None:
        self._data: dict[bytes, tuple[bytes, float]] = {}
        self._lock = threading.Lock()
        self._max = max_entries
        self._next_sweep = 0.0

    def _sweep(self, now: float) -> None:
        if now >= self._next_sweep or len(self._data) >= self._max:
            self._data = {k: v for k, v in self._data.items() if v[1] > now}
            self._next_sweep = now + 10.0
            if len(self._data) >= self._max:
                raise MemoryError("MemoryStore is full")

    def put(self, key: bytes, value: bytes, now: float, ttl: float) -> None:
        with self._lock:
            self._sweep(now)
            self._data[key] = (value, now + ttl)

    def get(self, key: bytes, now: float) -> Optional[bytes]:
        with self._lock:
            item = self._data.get(key)
            return item[0] if item is not None and item[1] > now else None

    def add(self, key: bytes, value: bytes, now: float, ttl: float) -> bool:
        with self._lock:
            item = self._data.get(key)
            if item is not None and item[1] > now:
                return False
            self._sweep(now)
            self._data[key] = (value, now + ttl)
            return True

    def pop(self, key: bytes, now: float) -> Optional[bytes]:
        with self._lock:
            item = self._data.pop(key, None)
            return item[0] if item is not None and item[1] > now else None

    def __len__(self) -> int:
        return len(self._data)


class AntiReplay:
    """0-RTT anti-replay (RFC 9846 §8): freshness window + ClientHello recording.

    Args:
        store: where ClientHello records live (default: in-process). Share
            one store among all server instances that accept the same tickets.
        window: seconds of allowed difference between the ClientHello's
            expected arrival time and ``now`` (§8.3), and how long records are kept.
        started_at: when the recording store started empty; 0-RTT is refused
            until ``started_at + window`` (§8.2). Needed only when ticket keys
            outlive the store (e.g. keys loaded from disk, store in memory);
            with the default per-process :class:`TicketKeys`, tickets issued
            before a restart cannot be decrypted at all.
    """

    def __init__(self, store: Optional[KeyValueStore] = None, window: float = 10.0, started_at: Optional[float] = None) -> None:
        self.store: KeyValueStore = store if store is not None else MemoryStore()
        self.window = window
        self.started_at = started_at

    def is_fresh(self, expected_arrival: float, now: float) -> bool:
        if self.started_at is not None and now < self.started_at + self.window:
            return False
        return abs(now - expected_arrival) <= self.window

    def record_once(self, key: bytes, now: float) -> bool:
        """Record a validated ClientHello value; False if already seen (a replay)."""
        return self.store.add(b"ch:" + key, b"", now, 2 * self.window)


@dataclass(frozen=True)
class EarlyDataOffer:
    """What a server's ``early_data_callback`` sees about a 0-RTT attempt
    that passed the protocol and anti-replay checks."""

    server_name: Optional[str]
    alpn_protocol: Optional[str]
    identity: bytes = field(repr=False)
    ticket_age: float  # seconds, as the client reports it
