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
    """A NewSessionTicket arrived (client side).

    Attributes:
        ticket: the decoded ``NewSessionTicket`` message.
        session: the resumable :class:`tcpls.tls.session.Session` it makes
            (pass it as ``TLSConfig.session`` or ``TLSConnection(session=...)``);
            None for a ticket with a zero lifetime.
    """

    ticket: object = field(repr=False)
    session: Optional[object] = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class KeyUpdated(Event):
    """A traffic key was updated (``direction`` is "send" or "receive")."""

    direction: str


@dataclass(frozen=True, slots=True)
class EarlyDataAccepted(Event):
    """Client: the server accepted our 0-RTT data (RFC 9846 §4.2.10)."""


@dataclass(frozen=True, slots=True)
class EarlyDataRejected(Event):
    """Client: the server rejected our 0-RTT data; nothing of it was processed.

    ``data`` is what was sent as early data. It is not resent automatically
    (unless ``TLSConfig.resend_early_data_on_reject``): the application
    decides whether to send it again after ``HandshakeComplete``.
    """

    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class EarlyDataReceived(Event):
    """Server: application data received as 0-RTT early data (replayable!)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class PostHandshakeAuthAnswered(Event):
    """Client: the server asked for a certificate after the handshake
    (RFC 9846 §4.6.2) and we answered (with a certificate if
    ``certificate_sent``, else an empty Certificate).

    Attributes:
        context: the certificate_request_context of the request.
        certificate_sent: True if we sent a certificate and CertificateVerify.
    """

    context: bytes
    certificate_sent: bool


@dataclass(frozen=True, slots=True)
class PostHandshakeAuthCompleted(Event):
    """Server: the client answered our post-handshake CertificateRequest
    (``TLSConnection.request_client_certificate()``, RFC 9846 §4.6.2) and its
    Finished verified.

    Attributes:
        context: the certificate_request_context returned by the request.
        peer_certificate_subject: RFC 4514 subject of the client's leaf, or
            None if it declined (empty Certificate). ``peer_certificates``
            then holds the new chain.
    """

    context: bytes
    peer_certificate_subject: Optional[str] = None
