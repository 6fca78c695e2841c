"""Events produced by :class:`tcpls.tls.connection.TLSConnection`.

Frozen dataclasses, past tense (h11/aioquic style). The application pulls
them with ``conn.next_event()`` after ``receive_data()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


class Event:
    """Base class of all TLS engine events."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class HandshakeComplete(Event):
    """The handshake finished; application data may flow both ways.

    Attributes:
        version: negotiated version (0x0304).
        cipher_suite: negotiated ``CipherSuite``.
        group: key-exchange group (``NamedGroup``), None for psk_ke.
        alpn_protocol: selected ALPN protocol, or None.
        server_name: SNI sent (client) or received (server).
        hello_retry: True when a HelloRetryRequest happened.
        session_resumed: True when a PSK was accepted.
        peer_certificate_subject: RFC 4514 subject of the peer's leaf certificate.
    """

    version: int
    cipher_suite: int
    group: Optional[int]
    alpn_protocol: Optional[str]
    server_name: Optional[str]
    hello_retry: bool = False
    session_resumed: bool = False
    peer_certificate_subject: Optional[str] = None


@dataclass(frozen=True, slots=True)
class DataReceived(Event):
    """Application data from the peer (one or more records, coalesced)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class CloseNotifyReceived(Event):
    """The peer sent close_notify: it will send no more data (half-close).

    We may still send; call ``close()`` to answer with our own close_notify.
    """


@dataclass(frozen=True, slots=True)
class AlertReceived(Event):
    """The peer sent a fatal alert; the connection is dead.

    ``receive_data`` also raises :class:`tcpls.errors.RemoteAlert` for it.
    """

    description: int
    level: int = 2


@dataclass(frozen=True, slots=True)
class SessionTicketReceived(Event):
    """A NewSessionTicket arrived (client side)."""

    ticket: object = field(repr=False)


@dataclass(frozen=True, slots=True)
class KeyUpdated(Event):
    """A traffic key was updated (``direction`` is "send" or "receive")."""

    direction: str
