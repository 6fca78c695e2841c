"""Events produced by :class:`tcpls.tcpls.session.TCPLSSession`.

Frozen dataclasses, past tense; pulled with ``session.next_event()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


class Event:
    """Base class of all TCPLS session events."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class HandshakeCompleted(Event):
    """The TLS handshake of connection 0 finished.

    ``tcpls`` is False when the peer did not negotiate TCPLS: the session
    then runs plain TLS 1.3 and exposes its byte stream as stream 0.
    """

    tcpls: bool
    cipher_suite: int
    alpn_protocol: Optional[str] = None
    #: 0-RTT (RFC 9846 §4.2.10): None if no early data was offered, else
    #: whether the server accepted it (client: our early stream bytes count
    #: as delivered; if False they are sent again under the 1-RTT keys).
    early_data: Optional[bool] = None


@dataclass(frozen=True, slots=True)
class StreamOpened(Event):
    """The peer opened ``stream_id`` (its first frame arrived)."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamDataReceived(Event):
    """In-order bytes of ``stream_id`` starting at ``offset``.

    ``early`` is True for bytes that arrived in TLS 0-RTT early data
    (server side): they were not protected against replay by the handshake
    (RFC 9846 §8), only by the TLS layer's anti-replay check. Early bytes
    are always a prefix of their stream.
    """

    stream_id: int
    data: bytes
    offset: int
    early: bool = False


@dataclass(frozen=True, slots=True)
class StreamEnded(Event):
    """The peer finished sending on ``stream_id`` (FIN) and all its bytes were delivered."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset(Event):
    """The peer abandoned ``stream_id``; no more data will be delivered."""

    stream_id: int
    error_code: int


@dataclass(frozen=True, slots=True)
class SendBufferLow(Event):
    """``stream_id``'s send buffer fell below the low-water mark: write more."""

    stream_id: int
    buffered: int


@dataclass(frozen=True, slots=True)
class ConnectionJoined(Event):
    """Connection ``conn_id`` completed its join and now carries records."""

    conn_id: int


@dataclass(frozen=True, slots=True)
class ConnectionFailed(Event):
    """Connection ``conn_id`` is gone (declared dead, reset by the peer,
    closed, or its join refused); its unacknowledged data moves elsewhere."""

    conn_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class TokenReceived(Event):
    """Client: a join token arrived (``seq`` becomes the Connection ID)."""

    seq: int


@dataclass(frozen=True, slots=True)
class AddressAdvertised(Event):
    address_id: int
    version: int
    address: bytes
    port: int


@dataclass(frozen=True, slots=True)
class AddressRemoved(Event):
    address_id: int


@dataclass(frozen=True, slots=True)
class SessionClosed(Event):
    """The peer sent close_notify: it will send nothing more on the session."""


@dataclass(frozen=True, slots=True)
class KeyUpdated(Event):
    """Connection ``conn_id`` switched to the next traffic key in
    ``direction`` (``"send"`` or ``"receive"``), RFC 9846 §4.6.3."""

    conn_id: int
    direction: str


@dataclass(frozen=True, slots=True)
class TCPSettingRequested(Event):
    """The peer asks us to apply TCP setting ``setting`` (a
    :class:`~tcpls.tcpls.codepoints.TCPSetting`) with ``value`` (an int for
    USER_TIMEOUT, a str for CONGESTION_CONTROL) on connection ``conn_id``
    (None: every connection). Answer with
    ``session.answer_tcp_setting(request_id, status, reason)``; the
    adapters do so after their policy hook and ``setsockopt``."""

    request_id: int
    setting: int
    value: object
    conn_id: Optional[int]


@dataclass(frozen=True, slots=True)
class TCPSettingAnswered(Event):
    """The peer answered our TCP Setting ``request_id``: ``status`` is a
    :class:`~tcpls.tcpls.codepoints.TCPSettingStatus` (APPLIED, REFUSED,
    FAILED), ``reason`` its explanation."""

    request_id: int
    status: int
    reason: str

    @property
    def applied(self) -> bool:
        return self.status == 0


@dataclass(frozen=True, slots=True)
class ConnectionAttemptFailed(Event):
    """Adapter event (happy-eyeballs connect): the TCP connection attempt to
    ``host:port`` failed or was abandoned, with ``reason``."""

    host: str
    port: int
    reason: str


@dataclass(frozen=True, slots=True)
class ConnectionEstablished(Event):
    """Adapter event: TCP connection ``conn_id`` is up between ``local`` and
    ``remote`` (``(host, port)``); for connection 0, the winner of the
    happy-eyeballs race."""

    conn_id: int
    local: tuple
    remote: tuple


@dataclass(frozen=True, slots=True)
class SessionTicketReceived(Event):
    """Client: the server sent a NewSessionTicket in the TCPLS session;
    ``session`` (a :class:`tcpls.tls.session.Session`) resumes it, with
    0-RTT stream data if its ``max_early_data`` is above 0."""

    session: object
