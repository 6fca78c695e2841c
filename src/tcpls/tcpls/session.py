"""The TCPLS session engine (sans-IO).

Theory of operation
-------------------
A :class:`TCPLSSession` is one TLS session spread over several TCP
connections, each named by its Connection ID. The engine is driven by
exactly three things, like aioquic's: API calls, ``receive_data(conn_id,
data, now)`` and ``handle_timer(now)``. Output is per connection
(``data_to_send(conn_id)``), events come from ``next_event()``. It never
reads a clock or touches a socket.

1. Handshake. Connection 0 runs an ordinary TLS 1.3 handshake through a
   :class:`~tcpls.tls.connection.TLSConnection`, fed one whole record at
   a time so that the engine can take over exactly at the record where the
   handshake completes. :class:`~tcpls.tcpls.migration.TCPLSHook`
   negotiates TCPLS; without it the session falls back to plain TLS and
   maps the TLS byte stream to stream 0.
2. Record protection. After the handshake the session takes the
   application traffic secrets and sequence numbers from the TLS engine
   and protects every record itself with the per-connection nonce
   (:mod:`tcpls.tcpls.path`).
3. Frames. Each record's content is parsed fully (from its end,
   :mod:`tcpls.tcpls.frames`) before any frame acts. Any violation raises
   :class:`~tcpls.errors.LocalProtocolError` after queuing the fatal alert
   on every connection; a fatal alert from the peer raises ``RemoteAlert``.
4. Sending. Written stream bytes wait in their :class:`Stream`; ``_flush``
   turns them into records, one Stream frame first (the draft's zero-copy
   layout) then control frames, on the connection the scheduler (or the
   stream's pinned connection) picks. ACK frames acknowledge records per
   connection; each connection remembers what its unacknowledged records
   carried, so a dead connection's data is sent again elsewhere and the
   receiver drops what it already has (by stream offset).
5. Joins and failover: :mod:`tcpls.tcpls.migration`.
6. Bounded state. A stream both sides have finished is forgotten (only
   its final size stays, among the newest ``max_streams``, to tell late
   duplicates from reused IDs); at most ``max_streams`` peer streams are
   open at once; reorder buffers are bounded by ``stream_window``; a
   failed or closed session withdraws its join tokens.
7. 0-RTT (:mod:`tcpls.tcpls.early`): a client resumed from a ticket sends
   the first stream bytes as TLS early data; they count as acknowledged
   when the server accepts them and are sent again under the 1-RTT keys
   when it does not. The server sends from its Finished on (0.5-RTT).
8. Key updates are per connection (:meth:`TCPLSSession.key_update`,
   automatic before the AEAD limit); ACK frames count records, not nonce
   sequence numbers, so they survive key changes (:mod:`tcpls.tcpls.path`).
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque
from dataclasses import replace
from typing import Optional

from ..errors import (
    ConnectionClosedError,
    DecodeError,
    IllegalParameter,
    LocalProtocolError,
    ProtocolError,
    RemoteAlert,
    UnexpectedMessage,
    UsageError,
)
from ..tls import events as tls_ev
from ..tls.connection import TLSConnection
from ..tls import messages as M
from ..tls.enums import AlertDescription, AlertLevel, ContentType, HandshakeType, KeyUpdateRequest
from ..tls.key_schedule import next_traffic_secret
from ..tls.record import RecordReader, encode_plaintext_records
from ..tls.session import Session
from ..tls.suites import suite_info
from . import events as ev
from . import frames as F
from .codepoints import ALL_CONNECTIONS, NON_ACK_ELICITING, FrameType, TCPSetting, TCPSettingStatus
from .config import TCPLSConfig
from . import early as _early
from .migration import TCPLSHook, new_token, parse_client_hello
from .path import ConnState, Connection, Ranges, SentRecord
from .scheduler import make_scheduler
from .stream import Stream

_MAX_CONTENT = 1 << 14
_CONTROL_RESERVE = 256  # room kept in a data record for control frames
_MAX_EARLY_JOIN_BYTES = 2 * (5 + _MAX_CONTENT + 256)  # two records
_RETRANSMITTED = (F.NewTokenFrame, F.ConnectionResetFrame, F.StreamResetFrame, F.NewAddressFrame, F.RemoveAddressFrame,
                  F.TCPSettingFrame, F.TCPSettingResultFrame)
_FRAME_TYPE_OF = {F.Padding: FrameType.PADDING, F.AckFrame: FrameType.ACK}


def _ack_eliciting(frames: list[F.Frame]) -> bool:
    return any(_FRAME_TYPE_OF.get(type(f)) not in NON_ACK_ELICITING for f in frames)


class TCPLSSession:
    """One TCPLS session, client or server. See ``docs/tcpls.md``."""

    def __init__(
        self, config: TCPLSConfig, is_client: bool, server_name: Optional[str] = None, session: Optional[Session] = None
    ) -> None:
        config.validate()
        self.config = config
        self.is_client = is_client
        self._server_name = server_name
        self._hook = TCPLSHook(config.enable, issue_token=None if is_client else self._issue_ee_token)
        # Rejected 0-RTT data is resent by the session as stream data, never by TLS.
        self._tls_config = replace(
            config.tls, extension_hooks=[*config.tls.extension_hooks, self._hook], resend_early_data_on_reject=False
        )
        self._tls = TLSConnection(self._tls_config, server_side=not is_client, server_name=server_name, session=session)
        self._early = _early.EarlyState(session if is_client else None)
        self._half_rtt = None  # server: opener of TLS records after the 0.5-RTT takeover (tcpls.tcpls.early)
        self._conns: dict[int, Connection] = {0: Connection(0, ConnState.HANDSHAKING)}
        self._events: deque[ev.Event] = deque()
        self._streams: dict[int, Stream] = {}
        self._next_stream_id = 0 if is_client else 1
        self._peer_next_stream_id = 1 if is_client else 0
        self._peer_recv_open = 0  # peer streams whose peer->us direction is not over
        # Forgotten (finished) streams: sid -> final size of the peer's
        # direction, the newest max_streams of them, to tell a late duplicate
        # (dropped) from a reused stream ID (alert).
        self._closed: OrderedDict[int, int] = OrderedDict()
        self._scheduler = make_scheduler(config.scheduler, config.inflight_limit)
        self._keys: Optional[tuple] = None  # (suite, tx secret, rx secret) of the session
        self._control: list[tuple[Optional[int], F.Frame]] = []  # (conn_id or None = any, frame)
        self._key_use: dict[int, int] = {}  # sending key generation -> records protected (all connections)
        self._tokens: dict[int, bytes] = {}  # client: unused tokens by sequence
        self._issued: dict[bytes, int] = {}  # server: outstanding tokens -> sequence
        self._next_token_seq = 1
        self._addresses: dict[int, tuple] = {}
        self._removed_addresses: set[int] = set()
        self._tcp_requests: dict[int, F.TCPSettingFrame] = {}  # our TCP Setting requests awaiting a result
        self._next_tcp_request = 0
        self._tcp_requests_seen: OrderedDict[int, None] = OrderedDict()  # newest peer request IDs handled (retransmissions)
        self.mode: Optional[str] = None  # None (handshake), "tcpls" or "tls" (fallback)
        self.terminated = False
        self.local_closed = False
        self.peer_closed = False
        self._now = 0.0
        #: Bytes of stream records one flush may queue on one connection
        #: (None: no bound). An adapter that reports writability
        #: (:meth:`set_writable`) sets it and calls :meth:`flush` until its
        #: connections are full, so stream data is assigned to a connection
        #: only when that connection can send it soon (pull scheduling).
        self.send_burst: Optional[int] = None

    # ---------------------------------------------------------------- queries
    @property
    def tls(self) -> TLSConnection:
        """The TLS engine of connection 0 (handshake details, certificates)."""
        return self._tls

    def connection_ids(self) -> list[int]:
        return sorted(self._conns)

    def connection_state(self, conn_id: int) -> ConnState:
        return self._conn(conn_id).state

    def connection_rtt(self, conn_id: int) -> Optional[float]:
        return self._conn(conn_id).srtt

    def usable_connections(self) -> list[int]:
        return [c.conn_id for c in self._conns.values() if c.usable]

    def available_tokens(self) -> list[int]:
        """Client: sequence numbers of the join tokens not used yet."""
        return sorted(self._tokens)

    def stream_ids(self) -> list[int]:
        return sorted(self._streams)

    def stream_send_buffer(self, stream_id: int) -> int:
        """Bytes written to ``stream_id`` and not yet acknowledged (0 once
        the stream is finished and forgotten)."""
        if self._forgotten(stream_id):
            return 0
        return self._stream(stream_id).buffered

    def stream_connection(self, stream_id: int) -> Optional[int]:
        if self._forgotten(stream_id):
            return None
        return self._stream(stream_id).conn_id

    def stream_forgotten(self, stream_id: int) -> bool:
        """``stream_id`` was opened and is over in both directions: the
        session freed it (an adapter may free its own state for it)."""
        return self._forgotten(stream_id)

    def can_open_stream(self) -> bool:
        """False while ``max_streams`` streams of ours are not finished on
        our side (data and FIN, or reset, acknowledged): :meth:`open_stream`
        would raise."""
        parity = 0 if self.is_client else 1
        mine = sum(1 for s in self._streams.values() if s.stream_id % 2 == parity and not s.send_closed)
        return mine < self.config.max_streams

    # -------------------------------------------------------------- transport
    def start_handshake(self, now: float = 0.0, early_data: bool = False) -> None:
        """Client: queue the ClientHello on connection 0.

        With ``early_data`` (and a ``session=`` whose ticket allows 0-RTT),
        stream bytes written before this call go out as TLS early data, in
        stream-ID order, up to the ticket's ``max_early_data`` (counted as
        record payload: Stream frames with their headers); the rest waits
        for the handshake. See :mod:`tcpls.tcpls.early`."""
        self._now = now
        if early_data and self.is_client:
            _early.queue_early_data(self, self._early)
        self._tls.start_handshake(now)
        self._drain_tls()

    # 0-RTT (see tcpls.tcpls.early)
    def early_data_limit(self) -> int:
        """Client: record payload bytes the resumption ticket allows in 0-RTT (0: none)."""
        return self._early.limit(self)

    @property
    def early_data_sent(self) -> int:
        """Client: stream bytes sent as 0-RTT early data."""
        return self._early.sent

    @property
    def early_data_accepted(self) -> Optional[bool]:
        """None if no 0-RTT was attempted (or not answered yet), else whether the server accepted it."""
        return self._early.accepted

    @property
    def early_data_received(self) -> int:
        """Server: stream bytes delivered from 0-RTT early data."""
        return self._early.received

    @property
    def resumption_session(self) -> Optional[Session]:
        """Client: the newest ticket of this TCPLS session (None before one
        arrived, and in plain TLS fallback: its tickets do not carry TCPLS)."""
        return self._tls.session if self.mode == "tcpls" else None

    def data_to_send(self, conn_id: int) -> bytes:
        conn = self._conns.get(conn_id)
        if conn is None or not conn.out:
            return b""
        data = b"".join(conn.out)
        conn.out.clear()
        return data

    def connections_with_data(self) -> list[int]:
        return [cid for cid, c in sorted(self._conns.items()) if c.out]

    def next_event(self) -> Optional[ev.Event]:
        return self._events.popleft() if self._events else None

    def receive_data(self, conn_id: int, data: bytes | bytearray | memoryview, now: float) -> None:
        """Bytes read from TCP connection ``conn_id``.

        Raises:
            LocalProtocolError: the peer violated the protocol; the fatal
                alert is queued (write out ``data_to_send`` of every
                connection, then close them).
            RemoteAlert: the peer sent a fatal alert.
        """
        if self.terminated:
            raise ConnectionClosedError("the session has failed")
        conn = self._conn(conn_id)
        self._now = now
        if conn.state in (ConnState.CLOSED, ConnState.FAILED) or not data:
            return
        conn.last_received = now
        conn.reader.feed(data)
        try:
            self._process(conn, now)
        except LocalProtocolError as exc:
            if conn.state is ConnState.JOINING and conn_id != 0:
                self._refuse_join(conn, exc)
                return
            self._fail(exc, conn)
            raise
        except RemoteAlert:
            self.terminated = True
            raise
        finally:
            if not self.terminated:
                self._flush(now)
            if self.terminated or (self.local_closed and self.peer_closed):
                self._retire_tokens()

    def receive_eof(self, conn_id: int, now: float) -> None:
        """TCP EOF on ``conn_id``: that connection is gone (not the session,
        unless it was the last one before close_notify)."""
        conn = self._conn(conn_id)
        if self.mode == "tls":
            self._tls.receive_eof()
            return
        if conn.state not in (ConnState.CLOSED, ConnState.FAILED):
            self._drop_connection(conn, ConnState.CLOSED, "peer closed the TCP connection", now, notify_peer=True)
            self._flush(now)

    def get_timer(self) -> Optional[float]:
        """When :meth:`handle_timer` must be called next (None: no timer)."""
        if self.mode != "tcpls" or self.terminated:
            return None
        deadlines = []
        for c in self._conns.values():
            if c.state not in (ConnState.ACTIVE, ConnState.JOINING):
                continue
            if c.sent:
                deadlines.append(self._dead_at(c))
            elif self.config.ping_interval is not None and c.usable:
                deadlines.append(max(c.last_sent, c.last_received) + self.config.ping_interval)
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        if self.mode != "tcpls" or self.terminated:
            return
        self._now = now
        for c in list(self._conns.values()):
            if c.state not in (ConnState.ACTIVE, ConnState.JOINING):
                continue
            if c.sent and self._dead_at(c) <= now:
                self._drop_connection(c, ConnState.FAILED, "no acknowledgment (timeout)", now, notify_peer=True)
            elif (
                not c.sent
                and c.usable
                and self.config.ping_interval is not None
                and max(c.last_sent, c.last_received) + self.config.ping_interval <= now
            ):
                self._send_record(c, [F.Ping()], [], now)
        self._flush(now)

    def _dead_at(self, c: Connection) -> float:
        """When ``c`` (with unacknowledged records) is declared dead: after
        ``dead_timeout``, or sooner with ``failover_timeout`` (only for an
        active connection with an RTT sample; a join in progress has none).

        The early clock starts when ``c`` went silent: its last ACK if
        ACKs kept coming after its oldest unacknowledged record was sent
        (a busy connection), else that record's send time. It runs out
        after ``failover_timeout`` (plus, from a send time, the RTT
        ``srtt + 4 * rttvar``), and counts only if another connection has
        been acknowledged well after ``c`` went silent: the peer is alive,
        this path is not. A stalled peer (no ACK anywhere) gets
        ``dead_timeout``."""
        oldest = c.sent[0].sent_at
        at = oldest + self.config.dead_timeout
        ft = self.config.failover_timeout
        if ft is None or c.srtt is None or c.state is not ConnState.ACTIVE:
            return at
        if c.last_ack_at > oldest:
            silent, wait = c.last_ack_at, ft
        else:
            silent, wait = oldest, max(ft, c.srtt + 4 * c.rttvar)
        early = silent + wait
        if early < at and any(
            d is not c and d.usable and d.last_ack_at > silent + wait / 2 for d in self._conns.values()
        ):
            return early
        return at

    # ------------------------------------------------------------ connections
    def add_connection(self, now: float) -> int:
        """Client: start joining a new TCP connection with the next token.

        Returns the Connection ID; write ``data_to_send(conn_id)`` (its
        ClientHello and key-possession proof) on the new TCP connection.
        """
        if not self.is_client:
            raise UsageError("only clients add connections (servers call accept_join)")
        if self.mode != "tcpls" or self._keys is None:
            raise UsageError("the TCPLS session is not established")
        if self.terminated or self.local_closed:
            raise ConnectionClosedError("the session is closed")
        if not self._tokens:
            raise UsageError("no join token available (wait for TokenReceived)")
        seq = min(self._tokens)
        token = self._tokens.pop(seq)
        conn = Connection(seq, ConnState.JOINING)
        self._conns[seq] = conn
        suite, tx, rx = self._keys
        conn.install_keys(suite, tx, 0, rx, 0)
        hook = TCPLSHook(True, join_token=token)
        cfg = replace(self.config.tls, extension_hooks=[*self.config.tls.extension_hooks, hook])
        hello = TLSConnection(cfg, server_side=False, server_name=self._server_name)
        hello.start_handshake(now)
        conn.out.append(hello.data_to_send())
        self._send_record(conn, [F.Ping()], [], now)  # the key-possession proof
        return seq

    def accept_join(self, data: bytes, now: float) -> int:
        """Server: a new TCP connection whose ClientHello joins this session.

        ``data`` holds at least the whole ClientHello (see
        :func:`tcpls.tcpls.migration.parse_client_hello` and
        :func:`route_connection`). Returns the Connection ID.

        Raises:
            IllegalParameter: the token is not one of this session's
                outstanding tokens (the caller sends
                :func:`alert_record` and closes the TCP connection).
        """
        parsed = parse_client_hello(data)
        if parsed is None:
            raise UsageError("accept_join needs the whole ClientHello")
        token, used = parsed
        seq = self._issued.pop(token, None) if token is not None else None
        if token is not None:
            self.config.token_registry.discard(token)
        if seq is None:
            raise IllegalParameter("tcpls_join with an unknown or already used token")
        conn = Connection(seq, ConnState.JOINING)
        self._conns[seq] = conn
        conn.last_received = now
        rest = bytes(data[used:])
        if self._keys is not None:
            suite, tx, rx = self._keys
            conn.install_keys(suite, tx, 0, rx, 0)
        if rest:
            self.receive_data(seq, rest, now)
        return seq

    def close_connection(self, conn_id: int, now: float) -> None:
        """Stop using ``conn_id`` (migration away from it). Its
        unacknowledged data goes out again on the other connections; the
        peer learns it through a Connection Reset frame. Write out
        ``data_to_send(conn_id)``, then close the TCP connection."""
        conn = self._conn(conn_id)
        if conn.state in (ConnState.CLOSED, ConnState.FAILED):
            return
        self._drop_connection(conn, ConnState.CLOSED, "closed locally", now, notify_peer=True)
        self._flush(now)

    def set_writable(self, conn_id: int, writable: bool, now: float) -> None:
        """Backpressure from the adapter: connection ``conn_id`` cannot take
        more bytes now (False), or can again (True; queues more stream data).
        The scheduler gives stream data only to writable connections;
        ACK and control frames go out regardless."""
        conn = self._conns.get(conn_id)
        if conn is None or conn.writable == writable:
            return
        conn.writable = writable
        if writable and not self.terminated:
            self._now = now
            self._flush(now)

    def flush(self, now: float) -> None:
        """Queue stream data on every writable connection (up to
        :attr:`send_burst` bytes each); call after writing ``data_to_send``."""
        if not self.terminated:
            self._now = now
            self._flush(now)

    def fail_connection(self, conn_id: int, now: float, reason: str = "declared dead") -> None:
        """Declare ``conn_id`` dead (e.g. the socket reported an error)."""
        conn = self._conn(conn_id)
        if conn.state in (ConnState.CLOSED, ConnState.FAILED):
            return
        self._drop_connection(conn, ConnState.FAILED, reason, now, notify_peer=True)
        self._flush(now)

    # ---------------------------------------------------------------- streams
    def open_stream(self) -> int:
        """A new stream of ours (client: even IDs, server: odd)."""
        if self.terminated or self.local_closed:
            raise ConnectionClosedError("the session is closed")
        if self.mode == "tls":
            if 0 in self._streams:
                raise UsageError("plain TLS fallback: only stream 0 exists")
            self._new_stream(0)
            return 0
        if not self.can_open_stream():
            raise UsageError(
                f"{self.config.max_streams} streams of ours are still open: finish one (FIN acknowledged) or reset it"
            )
        sid = self._next_stream_id
        if sid >= 1 << 32:
            raise UsageError("stream IDs exhausted (32-bit)")
        self._next_stream_id += 2
        self._new_stream(sid)
        return sid

    def send_stream_data(self, stream_id: int, data: bytes | bytearray | memoryview, fin: bool = False) -> None:
        """Queue ``data`` (and FIN) on ``stream_id``. Never refuses bytes:
        respect :meth:`stream_send_buffer` / ``SendBufferLow`` for backpressure."""
        if self.terminated or self.local_closed:
            raise ConnectionClosedError("the session is closed")
        if self._forgotten(stream_id):
            raise ConnectionClosedError(f"stream {stream_id} is finished")
        s = self._stream(stream_id)
        if s.fin_queued or s.reset_sent:
            raise ConnectionClosedError(f"stream {stream_id} is finished")
        if self.mode == "tls":
            self._tls.send_data(bytes(data))
            if fin:
                s.fin_queued = True
                self._tls.close()
            self._drain_tls()
            return
        s.write(bytes(data), fin)
        self._flush(self._now)

    def reset_stream(self, stream_id: int, error_code: int = 0) -> None:
        if self._forgotten(stream_id):
            return  # finished already: nothing left to abandon
        s = self._stream(stream_id)
        if s.reset_sent or self.terminated:
            return
        if self.mode == "tls":
            raise UsageError("plain TLS fallback cannot reset a stream")
        s.reset_sent = True
        self._control.append((None, F.StreamResetFrame(stream_id, s.send_end, error_code)))
        self._flush(self._now)

    def migrate_stream(self, stream_id: int, conn_id: Optional[int]) -> None:
        """Send ``stream_id``'s future frames only on ``conn_id`` (None: let the scheduler choose)."""
        s = self._stream(stream_id)
        if conn_id is not None and not self._conn(conn_id).usable:
            raise UsageError(f"connection {conn_id} is not usable")
        s.conn_id = conn_id
        self._flush(self._now)

    def key_update(self, conn_id: int, request_peer_update: bool = True) -> None:
        """Send a TLS KeyUpdate on connection ``conn_id`` (RFC 9846 §4.6.3)
        and switch that connection's sending key; with
        ``request_peer_update`` the peer switches its key on it too.
        Other connections keep their keys (updates are per connection)."""
        if self.terminated or self.local_closed:
            raise ConnectionClosedError("the session is closed")
        if self.mode != "tcpls":
            raise UsageError("key_update needs an established TCPLS session")
        conn = self._conn(conn_id)
        if not conn.usable:
            raise UsageError(f"connection {conn_id} is not usable")
        self._send_key_update(conn, request_peer_update)

    def advertise_address(self, address_id: int, address: str, port: int) -> None:
        """Tell the peer about another address of ours (New Address frame),
        e.g. a server listening on several interfaces."""
        ip = ipaddress.ip_address(address)
        if not 0 <= address_id < 256:
            raise UsageError("address_id is 8-bit")
        if self.mode == "tls":
            return  # plain TLS fallback: nowhere to say it
        self._control.append((None, F.NewAddressFrame(address_id, ip.version, ip.packed, port)))
        self._flush(self._now)

    def peer_addresses(self) -> dict[int, tuple[str, int]]:
        """Addresses the peer advertised and did not remove: ``{address_id: (host, port)}``."""
        return {aid: (str(ipaddress.ip_address(a)), port) for aid, (_v, a, port) in self._addresses.items()}

    def request_tcp_setting(self, setting: int, value: object, conn_id: Optional[int] = None) -> int:
        """Ask the peer to apply a TCP setting on its connection ``conn_id``
        (None: all of them) with a TCP Setting frame (tcpls extension, see
        docs/tcpls.md). ``value``: milliseconds (int) for
        ``TCPSetting.USER_TIMEOUT``, an algorithm name (str) for
        ``TCPSetting.CONGESTION_CONTROL``, raw bytes otherwise. Returns the
        request ID that the ``TCPSettingAnswered`` event will carry."""
        if self.mode != "tcpls":
            raise UsageError("TCP settings need an established TCPLS session")
        if isinstance(value, bool):
            raise UsageError("bad TCP setting value")
        if isinstance(value, int):
            if not 0 <= value < 1 << 32:
                raise UsageError("TCP setting value out of range (32-bit)")
            raw = value.to_bytes(4, "big")
        elif isinstance(value, str):
            try:
                raw = value.encode("ascii")
            except UnicodeEncodeError:
                raise UsageError("TCP setting name must be ASCII") from None
        elif isinstance(value, (bytes, bytearray)):
            raw = bytes(value)
        else:
            raise UsageError("bad TCP setting value")
        target = ALL_CONNECTIONS if conn_id is None else conn_id
        if len(self._tcp_requests) >= 1 << 16:
            raise UsageError("too many TCP setting requests awaiting an answer")
        while self._next_tcp_request in self._tcp_requests:
            self._next_tcp_request = (self._next_tcp_request + 1) & 0xFFFF
        rid = self._next_tcp_request
        self._next_tcp_request = (rid + 1) & 0xFFFF
        frame = F.TCPSettingFrame(rid, int(setting), target, raw)
        try:
            F.encode_frame(frame)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        self._tcp_requests[rid] = frame
        self._control.append((None, frame))
        self._flush(self._now)
        return rid

    def answer_tcp_setting(self, request_id: int, status: int, reason: str = "") -> None:
        """Answer the peer's TCP Setting ``request_id`` (from a
        ``TCPSettingRequested`` event) with a TCP Setting Result frame."""
        if self.mode != "tcpls" or self.terminated:
            return
        self._control.append((None, F.TCPSettingResultFrame(request_id, int(status), reason)))
        self._flush(self._now)

    def close(self) -> None:
        """Send close_notify on every usable connection (we send nothing more)."""
        if self.local_closed or self.terminated:
            return
        self.local_closed = True
        if self.mode != "tcpls":
            self._tls.close()
            self._drain_tls()
            return
        self._flush(self._now)
        for c in self._conns.values():
            if c.usable and c.encryptor is not None:
                self._seal(c, ContentType.ALERT, bytes((AlertLevel.WARNING, AlertDescription.close_notify)))
        if self.peer_closed:
            self._retire_tokens()

    # ============================================================== internals
    def _conn(self, conn_id: int) -> Connection:
        try:
            return self._conns[conn_id]
        except KeyError:
            raise UsageError(f"no connection {conn_id}") from None

    def _stream(self, stream_id: int) -> Stream:
        try:
            return self._streams[stream_id]
        except KeyError:
            raise UsageError(f"no stream {stream_id}") from None

    def _new_stream(self, sid: int) -> Stream:
        cfg = self.config
        s = Stream(sid, cfg.stream_window, cfg.send_high_water, cfg.send_low_water)
        self._streams[sid] = s
        return s

    def _forgotten(self, sid: int) -> bool:
        """``sid`` was opened (by either side) and has been finished and freed."""
        if sid in self._streams or self.mode != "tcpls":
            return False
        mine = sid % 2 == (0 if self.is_client else 1)
        return 0 <= sid < (self._next_stream_id if mine else self._peer_next_stream_id)

    def _recv_over(self, s: Stream) -> None:
        """The peer's direction of ``s`` is over (FIN delivered or reset)."""
        s.recv_finished = True
        if s.stream_id % 2 != (0 if self.is_client else 1):
            self._peer_recv_open -= 1

    def _maybe_free(self, s: Stream) -> None:
        """Forget ``s`` once both directions are over (bounded state over
        any number of short streams)."""
        if self.mode != "tcpls" or not s.finished or self._streams.get(s.stream_id) is not s:
            return
        del self._streams[s.stream_id]
        self._closed[s.stream_id] = s.final_size if s.final_size is not None else s.recv_offset
        while len(self._closed) > self.config.max_streams:
            self._closed.popitem(last=False)

    def _emit(self, event: ev.Event) -> None:
        self._events.append(event)

    # ------------------------------------------------------------- handshake
    def _issue_ee_token(self) -> bytes:
        return self._new_token_for_peer()

    def _new_token_for_peer(self) -> bytes:
        token = new_token()
        seq = self._next_token_seq
        self._next_token_seq += 1
        self._issued[token] = seq
        self.config.token_registry.register(token, self)
        return token

    def _drain_tls(self) -> None:
        out = self._tls.data_to_send()
        if out and self._half_rtt is not None:
            _early.reseal_tls_output(self, out)
        elif out:
            self._conns[0].out.append(out)
        while (e := self._tls.next_event()) is not None:
            if isinstance(e, tls_ev.HandshakeComplete):
                continue  # reported by _on_handshake_complete
            if isinstance(e, tls_ev.DataReceived):
                self._fallback_data(e.data)
            elif isinstance(e, tls_ev.EarlyDataReceived):
                _early.on_early_data(self, self._early, e.data)
            elif isinstance(e, tls_ev.SessionTicketReceived) and e.session is not None and self.mode == "tcpls":
                self._emit(ev.SessionTicketReceived(e.session))
            elif isinstance(e, tls_ev.CloseNotifyReceived):
                self.peer_closed = True
                s = self._streams.get(0)
                if s is not None and not s.recv_finished:
                    s.recv_finished = True
                    self._emit(ev.StreamEnded(0))
                self._emit(ev.SessionClosed())

    def _fallback_data(self, data: bytes) -> None:
        s = self._streams.get(0)
        if s is None:
            s = self._new_stream(0)
            self._emit(ev.StreamOpened(0))
        self._emit(ev.StreamDataReceived(0, data, s.recv_offset))
        s.recv_offset += len(data)

    def _on_handshake_complete(self, now: float) -> None:
        tls = self._tls
        assert tls.cipher_suite is not None
        self._drain_tls()
        early = _early.on_handshake_complete(self, self._early, self._hook.negotiated)
        if not self._hook.negotiated:
            self.mode = "tls"
            self._conns[0].state = ConnState.ACTIVE
            self._emit(ev.HandshakeCompleted(False, tls.cipher_suite, tls.alpn_protocol, early))
            for sid in list(self._streams):
                s = self._streams[sid]
                if sid != 0:
                    del self._streams[sid]
                    self._emit(ev.StreamReset(sid, 0))
                    continue
                data = bytes(s._buf)
                s._buf.clear()
                if data:
                    tls.send_data(data)
                if s.fin_queued:
                    tls.close()
            self._drain_tls()
            return
        state = tls.export_traffic_state()
        suite = suite_info(state.cipher_suite)
        tx, tx_seq, rx, rx_seq = state.tx_secret, state.tx_seq, state.rx_secret, state.rx_seq
        self._keys = (suite, tx, rx)
        self.mode = "tcpls"
        conn0 = self._conns[0]
        half = (conn0.encryptor, conn0.tx_records) if self._half_rtt is not None else None
        conn0.install_keys(suite, tx, tx_seq, rx, rx_seq)
        if half is not None:  # the session has been sending since the server's Finished
            conn0.encryptor, conn0.tx_records = half
            self._half_rtt = None
        conn0.state = ConnState.ACTIVE
        self._emit(ev.HandshakeCompleted(True, tls.cipher_suite, tls.alpn_protocol, early))
        if self.is_client and self._hook.first_token is not None:
            self._tokens[1] = self._hook.first_token
            self._emit(ev.TokenReceived(1))
        # joins that arrived before the session keys existed
        for c in self._conns.values():
            if c.conn_id != 0 and c.encryptor is None:
                c.install_keys(suite, tx, 0, rx, 0)

    # ------------------------------------------------------------- receiving
    def _process(self, conn: Connection, now: float) -> None:
        reader = conn.reader
        while True:
            if conn.state in (ConnState.CLOSED, ConnState.FAILED) or self.terminated:
                return
            if conn.state is ConnState.JOINING and conn.decryptor is None:
                # Server: a join that arrived before connection 0's handshake
                # completed (draft §"Robust session establishment") waits for
                # the session keys, with at most its proof record buffered.
                if reader.buffered() > _MAX_EARLY_JOIN_BYTES:
                    raise UnexpectedMessage("a join sent more than its proof before the session was established")
                return
            rec = reader.next_record()
            if rec is None:
                return
            ctype, header, body = rec
            if self.mode is None or self.mode == "tls":
                assert conn.conn_id == 0
                try:
                    self._tls.receive_data(bytes(header) + bytes(body), now)
                finally:
                    self._drain_tls()
                if self.mode is None and not self.is_client:
                    _early.maybe_start_half_rtt(self)  # 0.5-RTT stream data
                if self.mode is None and self._tls.handshake_complete:
                    self._on_handshake_complete(now)
                    for c in list(self._conns.values()):
                        if c is not conn and c.state is ConnState.JOINING and c.reader.buffered():
                            self._process_joining_later(c, now)
                continue
            self._process_record(conn, ctype, header, body, now)

    def _process_joining_later(self, c: Connection, now: float) -> None:
        try:
            self._process(c, now)
        except LocalProtocolError as exc:
            self._refuse_join(c, exc)

    def _process_record(self, conn: Connection, ctype: int, header, body, now: float) -> None:
        if ctype == ContentType.ALERT and conn.state is ConnState.JOINING and self.is_client:
            # the server refused our join (cleartext alert: it has no keys for us yet)
            desc = body[1] if len(body) == 2 else AlertDescription.decode_error
            self._drop_connection(conn, ConnState.FAILED, f"join refused ({AlertDescription(desc).name if desc in AlertDescription._value2member_map_ else desc})", now, notify_peer=False)
            return
        if ctype != ContentType.APPLICATION_DATA:
            raise UnexpectedMessage(f"unprotected record of type {ctype} in a TCPLS session")
        dec = conn.decryptor
        assert dec is not None
        inner, payload = dec.open(header, body)
        seq = conn.rx_records  # record number (ACKs), not the nonce sequence
        conn.rx_records += 1
        if conn.state is ConnState.JOINING:
            conn.state = ConnState.ACTIVE  # key possession proven
            self._emit(ev.ConnectionJoined(conn.conn_id))
        if inner == ContentType.APPLICATION_DATA:
            frames = F.parse_frames(payload)
            conn.highest_received = seq
            if _ack_eliciting(frames):
                conn.ack_pending = True
            for f in frames:
                self._handle_frame(conn, f, now)
        elif inner == ContentType.ALERT:
            if len(payload) != 2:
                raise DecodeError("alert record must be 2 bytes")
            if payload[1] == AlertDescription.close_notify:
                if not self.peer_closed:
                    self.peer_closed = True
                    self._emit(ev.SessionClosed())
                return
            self.terminated = True
            raise RemoteAlert(payload[1])
        elif inner == ContentType.HANDSHAKE and payload[:1] == bytes((HandshakeType.key_update,)):
            self._on_key_update(conn, payload)
        elif inner == ContentType.HANDSHAKE and self.is_client and conn.conn_id == 0 and payload[:1] == bytes((HandshakeType.new_session_ticket,)):
            # A ticket (RFC 9846 §4.6.1) for resumption and 0-RTT: the TLS
            # engine decodes it (it holds the resumption secret).
            try:
                self._tls.receive_plaintext_record(ContentType.HANDSHAKE, bytes(payload), now)
            finally:
                # the session protects connection 0 now: nothing the TLS
                # engine would seal (an alert for a bad ticket) goes out
                self._tls.data_to_send()
            self._drain_tls()
        else:
            raise UnexpectedMessage(f"content type {inner} is not allowed in a TCPLS session")

    def _handle_frame(self, conn: Connection, f: F.Frame, now: float) -> None:
        t = type(f)
        if t is F.StreamFrame:
            assert isinstance(f, F.StreamFrame)
            self._on_stream_frame(f)
        elif t is F.AckFrame:
            assert isinstance(f, F.AckFrame)
            self._on_ack(f, now)
        elif t is F.Padding or t is F.Ping or t is F.StreamChangeFrame:
            pass  # Ping only elicits an ACK; Stream Change is a zero-copy hint
        elif t is F.NewTokenFrame:
            assert isinstance(f, F.NewTokenFrame)
            if not self.is_client:
                raise UnexpectedMessage("a client must not send New Token frames")
            if f.seq == 0:
                raise IllegalParameter("token sequence 0 is connection 0's ID")
            if f.seq not in self._conns and f.seq not in self._tokens:
                self._tokens[f.seq] = f.token
                self._emit(ev.TokenReceived(f.seq))
        elif t is F.ConnectionResetFrame:
            assert isinstance(f, F.ConnectionResetFrame)
            target = self._conns.get(f.conn_id)
            if target is None:
                raise IllegalParameter(f"Connection Reset for unknown connection {f.conn_id}")
            if target.state not in (ConnState.CLOSED, ConnState.FAILED):
                self._drop_connection(target, ConnState.CLOSED, "reset by the peer", now, notify_peer=False)
        elif t is F.StreamResetFrame:
            assert isinstance(f, F.StreamResetFrame)
            s = self._peer_stream(f.stream_id)
            if s is not None and not s.recv_finished:
                if (s.final_size is not None and f.final_offset != s.final_size) or s.highest_received > f.final_offset:
                    raise IllegalParameter(f"stream {f.stream_id}: Stream Reset changes its final size")
                self._recv_over(s)
                s.final_size = f.final_offset
                s.drop_reorder_buffer()
                self._emit(ev.StreamReset(f.stream_id, f.error_code))
                self._maybe_free(s)
        elif t is F.NewAddressFrame:
            assert isinstance(f, F.NewAddressFrame)
            key = (f.version, f.address, f.port)
            if f.address_id in self._removed_addresses or self._addresses.get(f.address_id, key) != key:
                return  # draft: ignore changed or removed addresses
            if f.address_id not in self._addresses:
                self._addresses[f.address_id] = key
                self._emit(ev.AddressAdvertised(f.address_id, f.version, f.address, f.port))
        elif t is F.RemoveAddressFrame:
            assert isinstance(f, F.RemoveAddressFrame)
            if f.address_id in self._addresses:
                del self._addresses[f.address_id]
                self._removed_addresses.add(f.address_id)
                self._emit(ev.AddressRemoved(f.address_id))
        elif t is F.TCPSettingFrame:
            assert isinstance(f, F.TCPSettingFrame)
            self._on_tcp_setting(f)
        elif t is F.TCPSettingResultFrame:
            assert isinstance(f, F.TCPSettingResultFrame)
            if self._tcp_requests.pop(f.request_id, None) is not None:
                self._emit(ev.TCPSettingAnswered(f.request_id, f.status, f.reason))
            # else: a duplicate (retransmitted after a failover): already answered

    def _on_tcp_setting(self, f: F.TCPSettingFrame) -> None:
        """A TCP Setting request (tcpls extension). Unknown settings and
        connections are answered REFUSED rather than alerted: the frame is
        length-prefixed, so a newer peer's settings are skipped safely and
        the requester learns why nothing happened."""
        if f.request_id in self._tcp_requests_seen:
            return  # retransmitted after a failover; already handled
        self._tcp_requests_seen[f.request_id] = None
        if len(self._tcp_requests_seen) > 1024:  # the peer cycles through 2^16 IDs before reusing one
            self._tcp_requests_seen.popitem(last=False)
        conn_id = None if f.conn_id == ALL_CONNECTIONS else f.conn_id
        value: object
        if f.setting == TCPSetting.USER_TIMEOUT:
            value = int.from_bytes(f.value, "big")
        elif f.setting == TCPSetting.CONGESTION_CONTROL:
            value = f.value.decode("ascii")
        else:
            self._control.append((None, F.TCPSettingResultFrame(f.request_id, TCPSettingStatus.REFUSED, f"unknown setting 0x{f.setting:02x}")))
            return
        if conn_id is not None and (conn_id not in self._conns or self._conns[conn_id].state in (ConnState.CLOSED, ConnState.FAILED)):
            self._control.append((None, F.TCPSettingResultFrame(f.request_id, TCPSettingStatus.REFUSED, f"unknown connection {conn_id}")))
            return
        self._emit(ev.TCPSettingRequested(f.request_id, f.setting, value, conn_id))

    def _peer_stream(self, sid: int, end: Optional[int] = None, fin: bool = False) -> Optional[Stream]:
        """The stream ``sid`` named by the peer, opening it (and any lower
        peer streams, which may still be in flight on other connections:
        the draft opens streams in sequence) if it is new. None for a
        finished stream we forgot: ``end``/``fin`` (a Stream frame's end
        offset and FIN) must then fit its final size, else the peer reuses
        a stream ID."""
        s = self._streams.get(sid)
        if s is not None:
            return s
        if self._forgotten(sid):
            final = self._closed.get(sid)
            if final is not None and end is not None and (end > final or (fin and end != final)):
                raise IllegalParameter(f"stream {sid} is finished: its ID cannot be reused")
            return None  # a late duplicate (retransmission after a failover)
        peer_parity = 1 if self.is_client else 0
        if sid % 2 != peer_parity:
            raise IllegalParameter(f"stream {sid} was never opened by us")
        opened = (sid - self._peer_next_stream_id) // 2 + 1
        if self._peer_recv_open + opened > self.config.max_streams:
            raise IllegalParameter(
                f"stream {sid} exceeds the stream limit ({self.config.max_streams} streams open at once)"
            )
        while self._peer_next_stream_id <= sid:
            n = self._peer_next_stream_id
            self._peer_next_stream_id += 2
            self._new_stream(n)
            self._peer_recv_open += 1
            self._emit(ev.StreamOpened(n))
        return self._streams[sid]

    def _on_stream_frame(self, f: F.StreamFrame, early: bool = False) -> None:
        s = self._peer_stream(f.stream_id, f.offset + len(f.data), f.fin)
        if s is None:
            return
        for offset, data in s.receive(f.offset, f.data, f.fin):
            self._emit(ev.StreamDataReceived(f.stream_id, data, offset, early))
        if s.fin_complete and not s.recv_finished:
            self._recv_over(s)
            self._emit(ev.StreamEnded(f.stream_id))
            self._maybe_free(s)

    def _on_ack(self, f: F.AckFrame, now: float) -> None:
        target = self._conns.get(f.conn_id)
        if target is None or target.encryptor is None:
            raise IllegalParameter(f"ACK for unknown connection {f.conn_id}")
        if f.highest_seq >= target.tx_records:
            raise IllegalParameter(f"ACK of record {f.highest_seq} never sent on connection {f.conn_id}")
        touched: dict[int, Stream] = {}
        for rec in target.on_ack(f.highest_seq, now):
            for sid, offset, length, fin in rec.ranges:
                s = self._streams.get(sid)
                if s is not None:
                    s.on_acked(offset, length, fin)
                    touched[sid] = s
            for c in rec.controls:
                if isinstance(c, F.StreamResetFrame) and (s := self._streams.get(c.stream_id)) is not None:
                    s.reset_acked = True
                    touched[c.stream_id] = s
        for s in self._streams.values():
            if s.blocked and s.buffered < s.low_water:
                s.blocked = False
                self._emit(ev.SendBufferLow(s.stream_id, s.buffered))
        for s in touched.values():
            self._maybe_free(s)

    # ------------------------------------------------------- failure, joins
    def _drop_connection(self, conn: Connection, state: ConnState, reason: str, now: float, notify_peer: bool) -> None:
        was_joined = conn.conn_id != 0 and conn.state in (ConnState.ACTIVE, ConnState.JOINING)
        conn.state = state
        for rec in conn.take_unacked():
            for sid, offset, length, fin in rec.ranges:
                s = self._streams.get(sid)
                if s is not None:
                    s.on_lost(offset, length, fin)
            self._control.extend((None, f) for f in rec.controls)
        for s in self._streams.values():
            if s.conn_id == conn.conn_id:
                s.conn_id = None
        if notify_peer and self.mode == "tcpls" and any(c.usable for c in self._conns.values()):
            self._control.append((None, F.ConnectionResetFrame(conn.conn_id)))
        self._emit(ev.ConnectionFailed(conn.conn_id, reason))
        if was_joined and not self.is_client:
            self._replenish_tokens()

    def _refuse_join(self, conn: Connection, exc: ProtocolError) -> None:
        """Server: a joining connection failed to prove key possession
        (or sent garbage): alert it in clear and forget it; the session lives on."""
        out: list = []
        encode_plaintext_records(ContentType.ALERT, bytes((AlertLevel.FATAL, exc.alert)), out)
        conn.out.extend(out)
        conn.reader = RecordReader()  # nothing more is read from it
        self._drop_connection(conn, ConnState.FAILED, f"join refused: {exc}", self._now, notify_peer=False)

    def _retire_tokens(self) -> None:
        """Server: the session is over (failed, or closed both ways): its
        outstanding tokens leave the listener's registry, which then holds
        nothing of it, and a join that shows one is refused."""
        for token in self._issued:
            self.config.token_registry.discard(token)
        self._issued.clear()

    def _replenish_tokens(self) -> None:
        if self.is_client or self.mode != "tcpls" or self.terminated or (self.local_closed and self.peer_closed):
            return
        joined = sum(1 for c in self._conns.values() if c.conn_id != 0 and c.state in (ConnState.ACTIVE, ConnState.JOINING))
        while len(self._issued) + joined < self.config.max_joins and self._next_token_seq < 256:
            seq = self._next_token_seq
            token = self._new_token_for_peer()
            self._control.append((None, F.NewTokenFrame(seq, token)))

    def _fail(self, exc: ProtocolError, culprit: Optional[Connection] = None) -> None:
        """Session-fatal error: queue the alert on every connection, and on
        ``culprit`` (where the violation arrived) even if the same record
        had just closed it (e.g. a Connection Reset frame for itself)."""
        if self.terminated:
            return
        self.terminated = True
        payload = bytes((AlertLevel.FATAL, exc.alert))
        if self.mode != "tcpls" and not self._tls.terminated:
            self._tls._fail(exc)  # raised by the session during the handshake (0-RTT frames)
        for c in self._conns.values():
            if c.conn_id == 0 and self.mode != "tcpls":
                continue  # the TLS engine queued it (drained below)
            live = c.state in (ConnState.ACTIVE, ConnState.JOINING) or (c is culprit and c.state is ConnState.CLOSED)
            if live and c.encryptor is not None:
                self._seal(c, ContentType.ALERT, payload)
        try:
            self._drain_tls()
        except Exception:  # noqa: BLE001 - best effort while failing
            pass

    # ------------------------------------------------------------ key updates
    def _on_key_update(self, conn: Connection, payload: bytes | memoryview) -> None:
        """The peer switched its sending key on ``conn`` (RFC 9846 §4.6.3)."""
        # One KeyUpdate (4-byte header + body) is the whole record: TCPLS
        # sessions do not reassemble handshake messages across records, and
        # §5.1: a message preceding a key change must end at a record boundary.
        if len(payload) < 4 or int.from_bytes(payload[1:4], "big") > len(payload) - 4:
            raise DecodeError("truncated KeyUpdate")
        if int.from_bytes(payload[1:4], "big") < len(payload) - 4:
            raise UnexpectedMessage("data after a KeyUpdate in its record (RFC 9846 §5.1)")
        ku = M.decode_handshake(HandshakeType.key_update, memoryview(payload)[4:])
        assert isinstance(ku, M.KeyUpdate)
        dec = conn.decryptor
        assert dec is not None
        dec.update(next_traffic_secret(dec.suite.hash_name, dec.secret))
        conn.rx_gen += 1
        self._emit(ev.KeyUpdated(conn.conn_id, "receive"))
        if ku.request_update == KeyUpdateRequest.update_requested and conn.usable and not self.local_closed:
            self._send_key_update(conn, False)

    def _send_key_update(self, conn: Connection, request_peer: bool) -> None:
        """Send KeyUpdate on ``conn`` under the current key, then switch ours."""
        enc = conn.encryptor
        assert enc is not None
        req = KeyUpdateRequest.update_requested if request_peer else KeyUpdateRequest.update_not_requested
        self._seal(conn, ContentType.HANDSHAKE, M.encode_handshake(M.KeyUpdate(req)), auto_update=False)
        enc.update(next_traffic_secret(enc.suite.hash_name, enc.secret))
        conn.tx_gen += 1
        self._emit(ev.KeyUpdated(conn.conn_id, "send"))

    def _seal(self, conn: Connection, ctype: int, payload: bytes, auto_update: bool = True) -> int:
        """Protect ``payload`` on ``conn``; returns the first record number.

        Every connection that has not updated its key yet shares the
        session's key of that generation, so records are counted per
        generation over all connections; a connection whose generation has
        protected ``key_update_records - 1`` records sends a KeyUpdate
        first (RFC 9846 §5.5: AES-GCM allows 2^24.5 records per key). A key
        protects at most ``key_update_records`` records plus one KeyUpdate
        per other connection still using it.
        """
        enc = conn.encryptor
        assert enc is not None
        if auto_update and ctype != ContentType.ALERT and self._key_use.get(conn.tx_gen, 0) + 1 >= self._key_limit(enc.suite):
            self._send_key_update(conn, False)  # keep room for the KeyUpdate itself
        before = enc.seq
        enc.seal(ctype, payload, conn.out)
        n = enc.seq - before
        first = conn.tx_records
        conn.tx_records += n
        self._key_use[conn.tx_gen] = self._key_use.get(conn.tx_gen, 0) + n
        return first

    def _key_limit(self, suite) -> int:
        return min(self.config.key_update_records, suite.record_limit)

    # ---------------------------------------------------------------- sending
    def _send_record(self, conn: Connection, frames: list[F.Frame], ranges: Ranges, now: float) -> None:
        seq = self._seal(conn, ContentType.APPLICATION_DATA, F.encode_frames(frames))
        conn.last_sent = now
        if _ack_eliciting(frames):
            controls = [f for f in frames if isinstance(f, _RETRANSMITTED)]
            conn.sent.append(SentRecord(seq, now, ranges, True, controls))
            conn.in_flight += sum(r[2] for r in ranges)

    def _flush(self, now: float) -> None:
        if self.terminated:
            return
        if self.mode != "tcpls":
            if self._half_rtt is None or self.mode is not None:
                return
            usable = [self._conns[0]]  # server 0.5-RTT: connection 0's sending half only
        else:
            if not self.is_client:
                self._replenish_tokens()
            usable = [c for c in self._conns.values() if c.usable]
        if not usable:
            return
        # ACK frames: on the acknowledged connection if possible, else any.
        for c in self._conns.values():
            if c.ack_pending:
                c.ack_pending = False
                self._control.append((c.conn_id if c.usable else None, F.AckFrame(c.conn_id, c.highest_received)))
        if not self.local_closed:
            self._flush_streams(usable, now)
        # leftover control frames, one record per connection
        by_conn: dict[int, list[F.Frame]] = {}
        for target, frame in self._control:
            conn = self._conns.get(target) if target is not None else None
            if conn is None or not conn.usable:
                conn = min(usable, key=lambda c: (c.rtt, c.conn_id))
            by_conn.setdefault(conn.conn_id, []).append(frame)
        self._control = []
        for cid, frames in by_conn.items():
            for i in range(0, len(frames), 64):
                self._send_record(self._conns[cid], frames[i : i + 64], [], now)

    def _take_controls(self, conn: Connection) -> list[F.Frame]:
        mine = [f for t, f in self._control if t == conn.conn_id or t is None]
        mine = mine[: _CONTROL_RESERVE // 40]
        if mine:
            ids = {id(f) for f in mine}
            self._control = [(t, f) for t, f in self._control if id(f) not in ids]
        return mine

    def _flush_streams(self, usable: list[Connection], now: float) -> None:
        streams = [s for s in self._streams.values() if s.has_data_to_send()]
        burst = self.send_burst
        sendable = [c for c in usable if c.writable and (burst is None or c.queued() < burst)]
        while streams:
            progressed = False
            for s in streams:
                conn: Optional[Connection] = None
                if s.conn_id is not None:
                    pinned = self._conns.get(s.conn_id)
                    if pinned is not None and pinned.usable:
                        if pinned not in sendable:
                            continue  # pinned to a connection that is full now
                        conn = pinned
                if conn is None:
                    conn = self._scheduler.choose(sendable, _MAX_CONTENT)
                if conn is None:
                    return
                controls = self._take_controls(conn)
                room = _MAX_CONTENT - F.STREAM_FRAME_OVERHEAD - sum(len(F.encode_frame(f)) for f in controls)
                chunk = s.next_chunk(room)
                if chunk is None:
                    self._control[:0] = [(conn.conn_id, f) for f in controls]
                    continue
                offset, data, fin = chunk
                frames: list[F.Frame] = [F.StreamFrame(s.stream_id, offset, data, fin), *controls]
                self._send_record(conn, frames, [(s.stream_id, offset, len(data), fin)], now)
                progressed = True
                if burst is not None and conn.queued() >= burst:
                    sendable.remove(conn)
            if not progressed:
                return
            streams = [s for s in streams if s.has_data_to_send()]


def alert_record(alert: int = AlertDescription.illegal_parameter) -> bytes:
    """A cleartext fatal alert record (to refuse a connection no session owns)."""
    out: list = []
    encode_plaintext_records(ContentType.ALERT, bytes((AlertLevel.FATAL, alert)), out)
    return b"".join(out)


def route_connection(config: TCPLSConfig, data: bytes) -> Optional[tuple[Optional[TCPLSSession], bool]]:
    """Server: decide what a new TCP connection is, from its first bytes.

    Returns None while the ClientHello is incomplete; else ``(session,
    is_join)``: ``(s, True)`` means call ``s.accept_join(data, now)``;
    ``(None, False)`` means a new session (``TCPLSSession(config,
    is_client=False)`` then ``receive_data(0, data, now)``). A join with
    an unknown or used token also yields ``(None, False)``: the new
    session's handshake refuses it with illegal_parameter.
    """
    parsed = parse_client_hello(data, config.tls.max_handshake_message_size)
    if parsed is None:
        return None
    token, _ = parsed
    if token is None:
        return None, False
    session = config.token_registry.claim(token)
    if session is None:
        return None, False
    # claim() removed it from the registry; accept_join checks the session's own list
    config.token_registry.register(token, session)
    return session, True
