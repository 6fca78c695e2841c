"""TCPLS settings (on top of a :class:`~tcpls.tls.config.TLSConfig`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from ..tls.config import TLSConfig
from .migration import TokenRegistry
from .scheduler import SCHEDULERS


@dataclass
class TCPLSConfig:
    """Attributes:
        tls: the TLS settings of the handshake connection.
        enable: offer (client) / accept (server) TCPLS; False = plain TLS 1.3.
        scheduler: ``"round_robin"``, ``"lowest_rtt"`` or ``"fill_fastest_first"``.
        stream_window: per-stream flow-control window and reorder-buffer
            bound in bytes. Must be the same on both sides (the draft has no
            frame to advertise it): a sender never has more than this many
            unacknowledged bytes of a stream in flight, a receiver refuses
            (alert) data further than this past its in-order point.
        send_high_water / send_low_water: a stream's send buffer (bytes not
            yet acknowledged) is "full" at ``send_high_water``;
            ``SendBufferLow`` fires when it drops below ``send_low_water``.
        max_joins: server: tokens outstanding + joined connections (the
            number of extra TCP connections a client may have at once).
        max_streams: streams the peer may have open at once (its
            direction not yet finished by FIN or reset); a new peer stream
            beyond that is an alert. ``open_stream`` holds us to the same
            number (our streams whose data and FIN, or reset, are not yet
            acknowledged), so use the same value on both sides.
        dead_timeout: seconds an ack-eliciting record may stay
            unacknowledged before its connection is declared dead.
        ping_interval: seconds of silence after which an idle connection
            is probed with a Ping (None: never probe idle connections).
        failover_timeout: with several connections, declare an active one
            dead once it has had records unacknowledged and no ACK for
            ``failover_timeout`` seconds (counted from its last ACK, or
            for a connection that was idle from its oldest record's send
            time plus ``srtt + 4 * rttvar``) while another connection kept
            being acknowledged: a path that went silent while the others
            deliver. None: only ``dead_timeout``.
        inflight_limit: bytes per connection for ``fill_fastest_first``.
        key_update_records: records one sending key may protect (summed
            over the connections sharing it) before the connection using it
            sends a KeyUpdate; the suite's AEAD limit (RFC 9846 §5.5)
            caps it.
        token_registry: server: maps join tokens to sessions; share one
            registry between all sessions of a listener.
        tcp_setting_policy: policy hook for the peer's TCP Setting requests
            (tcpls extension), called by the adapters as
            ``policy(setting, value, conn_id)`` (a ``TCPSetting``, an int
            or str, a Connection ID or None for all); it returns None to
            accept or a reason (str) to refuse. None: the adapter's default
            policy (``tcpls.aio.tcp_settings.default_policy``).
    """

    tls: TLSConfig
    enable: bool = True
    scheduler: str = "round_robin"
    stream_window: int = 1 << 23
    send_high_water: int = 1 << 22
    send_low_water: int = 1 << 20
    max_joins: int = 4
    max_streams: int = 1024
    dead_timeout: float = 3.0
    ping_interval: Optional[float] = None
    failover_timeout: Optional[float] = None
    inflight_limit: int = 1 << 18
    key_update_records: int = 1 << 23
    token_registry: TokenRegistry = field(default_factory=TokenRegistry)
    tcp_setting_policy: Optional[Callable[[int, object, Optional[int]], Optional[str]]] = None

    def validate(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {self.scheduler!r} (known: {', '.join(SCHEDULERS)})")
        if not 0 < self.send_low_water <= self.send_high_water:
            raise ValueError("need 0 < send_low_water <= send_high_water")
        if self.stream_window < 1 << 14:
            raise ValueError("stream_window must be at least 16384 bytes")
        if self.key_update_records < 1:
            raise ValueError("key_update_records must be positive")
        if self.max_streams < 1:
            raise ValueError("max_streams must be positive")
        if self.failover_timeout is not None and self.failover_timeout <= 0:
            raise ValueError("failover_timeout must be positive")
        if not 0 <= self.max_joins < 256:
            raise ValueError("max_joins must be 0..255 (token sequence numbers are 8-bit)")
