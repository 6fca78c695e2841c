"""asyncio adapter for TCPLS: one :class:`TCPLSSession` over several TCP connections.

Theory of operation
-------------------
A :class:`SessionDriver` owns one sans-IO
:class:`~tcpls.tcpls.session.TCPLSSession` and one :class:`_ConnProtocol`
(an :class:`asyncio.Protocol`) per TCP connection, keyed by Connection ID.
It is driven by exactly three kinds of input, and each ends in the same
step, :meth:`SessionDriver._after` (the aioquic adapter loop):

* **network**: ``data_received`` / ``eof_received`` / ``connection_lost`` of
  one TCP connection → ``session.receive_data(conn_id, ...)`` /
  ``receive_eof`` / ``fail_connection``;
* **timer**: the single ``loop.call_at(session.get_timer())`` →
  ``session.handle_timer``;
* **application**: stream writes, ``join``, ``migrate``, ``close``.

``_after`` then (1) dispatches the engine's events (stream readers, drain
and join waiters, the public event queue), (2) writes
``data_to_send(conn_id)`` on every connection that has output, and
(3) re-arms the timer. Time is ``loop.time()`` everywhere, so the engine's
deadlines are directly ``call_at`` times.

Invariants:

1. No engine call returns to the event loop without ``_after``: alerts,
   ACKs and retransmissions after a failover are never stuck.
2. Stream bytes reach a reader only from ``StreamDataReceived``, its EOF
   only from ``StreamEnded``, errors only through ``set_exception``.
3. Backpressure is real in both directions:

   * *writing*: ``drain()`` waits while the stream's unacknowledged bytes
     (``session.stream_send_buffer``) are at or above the engine's
     ``send_high_water`` (woken by ``SendBufferLow``); in plain TLS
     fallback also while every usable TCP transport is paused. Bytes
     become "acknowledged" only when the peer's *engine* has them, so a
     slow network or a peer that stops reading both hold the writer.
   * *per connection* (pull scheduling): every socket has
     ``TCP_NOTSENT_LOWAT``; a transport that pauses is reported to the
     engine (``set_writable``), whose scheduler then skips it, and
     ``_after`` calls ``session.flush`` until every usable connection is
     paused or no stream data is left. Records are bound to a connection
     only when it can send them soon.
   * *reading*: each stream's :class:`asyncio.StreamReader` pauses reading
     on *all* TCP connections of the session when its buffer passes twice
     its limit (a shared gate counts the paused readers), which stops the
     ACKs and hence the sender. Caveat: the sender's ``dead_timeout`` then
     runs, so a reader that stops for longer than that makes the peer
     declare connections dead; pick ``dead_timeout`` accordingly.

4. Failure of one TCP connection is never the session's failure: the
   engine moves its data elsewhere. A protocol error or peer alert is
   session-fatal: :meth:`_fail` writes the queued alerts, fails every
   reader and waiter and closes every transport after a FIN and a bounded
   drain of its input (so the peer reads the alert even while it sends).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import socket
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, Optional, Sequence, Union

from ..errors import ConnectionClosedError, ProtocolError
from ..tcpls import events as ev
from ..tcpls.config import TCPLSConfig
from ..tcpls.path import ConnState
from ..tcpls.codepoints import TCPSetting
from ..tcpls.session import TCPLSSession, alert_record, route_connection
from ..tls.session import Session
from . import happy_eyeballs, tcp_settings
from . import tfo as _tfo

__all__ = [
    "TCPLSClient",
    "TCPLSServer",
    "ServerSession",
    "SessionDriver",
    "TCPLSStreamWriter",
    "StreamMigrated",
    "Failover",
    "connect",
    "serve",
    "TCP_USER_TIMEOUT",
    "DEFAULT_LIMIT",
]

logger = logging.getLogger("tcpls.aio.tcpls")

TCP_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", 18)  # Linux
TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)  # Linux
#: Unsent bytes the kernel may hold per TCP connection (TCP_NOTSENT_LOWAT):
#: beyond that the socket refuses writes, the transport pauses and the
#: engine's scheduler sends the next records on another connection.
NOTSENT_LOWAT = 1 << 17
#: Bytes of records one engine flush may queue on one connection (see
#: ``TCPLSSession.send_burst``); the driver flushes until the connections
#: are full.
SEND_BURST = 1 << 16
DEFAULT_LIMIT = 1 << 20
EVENTS_KEPT = 4096  # SessionDriver.events keeps at most this many unread events
#: Seconds a failed session keeps draining its connections after the alerts
#: and FINs before it closes them (see SessionDriver._close_after_failure).
FAILURE_LINGER = 2.0

Addr = tuple[str, int]


# Adapter events, queued on ``SessionDriver.events`` next to the engine's.
@dataclass(frozen=True, slots=True)
class StreamMigrated(ev.Event):
    """Our ``stream_id`` now sends only on ``conn_id`` (None: the scheduler
    again), by :meth:`SessionDriver.migrate` or :meth:`TCPLSClient.migrate_to`."""

    stream_id: int
    conn_id: Optional[int]


@dataclass(frozen=True, slots=True)
class Failover(ev.Event):
    """Connection ``conn_id`` died while the session lived on (it follows
    the engine's ``ConnectionFailed``): its unacknowledged data goes out on
    ``remaining`` (the usable connections left; empty until a rejoin)."""

    conn_id: int
    reason: str
    remaining: tuple[int, ...]


def set_notsent_lowat(sock: Any, n: int = NOTSENT_LOWAT) -> None:
    """Keep at most about ``n`` unsent bytes in the kernel's send buffer, so
    that a connection is "full" while its data still waits to be sent and
    the scheduler can use another connection (Linux; ignored elsewhere)."""
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, n)
    except OSError as exc:  # pragma: no cover - non-Linux
        logger.debug("TCP_NOTSENT_LOWAT not set: %s", exc)


def set_user_timeout(sock: Any, ms: Optional[int]) -> None:
    """``TCP_USER_TIMEOUT``: the kernel aborts the TCP connection when sent
    data stays unacknowledged for ``ms`` milliseconds (Linux only)."""
    if ms is None or sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_USER_TIMEOUT, int(ms))
    except OSError as exc:  # pragma: no cover - non-Linux
        logger.warning("TCP_USER_TIMEOUT not set: %s", exc)


class _ReadGate:
    """The "transport" of one stream reader: pausing it pauses every TCP
    connection of the session (see invariant 3)."""

    def __init__(self, driver: "SessionDriver") -> None:
        self._driver = driver
        self._paused = False

    def pause_reading(self) -> None:
        if not self._paused:
            self._paused = True
            self._driver._gate(+1)

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            self._driver._gate(-1)

    def release(self) -> None:
        self.resume_reading()


class TCPLSStreamWriter:
    """The sending half of one TCPLS stream (shaped like :class:`asyncio.StreamWriter`)."""

    def __init__(self, driver: "SessionDriver", stream_id: int, reader: asyncio.StreamReader) -> None:
        self._driver = driver
        self.stream_id = stream_id
        self._reader = reader
        self._eof = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if data:
            self._driver._send(self.stream_id, bytes(data), False)

    def writelines(self, data: Iterable[bytes]) -> None:
        for d in data:
            self.write(d)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if not self._eof:
            self._eof = True
            self._driver._send(self.stream_id, b"", True)

    async def drain(self) -> None:
        """Wait until the stream's send buffer is below the high-water mark
        and some TCP connection accepts writes (raises if the session failed)."""
        await self._driver._wait_writable(self.stream_id)

    def reset(self, error_code: int = 0) -> None:
        self._eof = True
        self._driver._reset(self.stream_id, error_code)

    def close(self) -> None:
        """Finish the stream (FIN); the session stays open."""
        if not self._eof and self._driver._error is None and not self._driver.session.local_closed:
            self.write_eof()

    def is_closing(self) -> bool:
        return self._eof

    async def wait_closed(self) -> None:
        await self._driver.wait_acked([self.stream_id])

    @property
    def session(self) -> "SessionDriver":
        return self._driver

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "stream_id":
            return self.stream_id
        if name == "connection":
            return self._driver.session.stream_connection(self.stream_id)
        return self._driver.get_extra_info(name, default)


class _ConnProtocol(asyncio.Protocol):
    """One TCP connection. Server side, it routes itself to a session from
    the ClientHello (``route_connection``) before it has a Connection ID."""

    def __init__(self, driver: Optional["SessionDriver"], conn_id: Optional[int], server: Optional["TCPLSServer"] = None) -> None:
        self.driver = driver
        self.conn_id = conn_id
        self.server = server
        self.transport: Optional[asyncio.Transport] = None
        self.write_paused = False
        self.bytes_received = 0
        self.bytes_sent = 0
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending = bytearray()  # server: bytes before routing
        self.refused = False  # server: refused before routing; input is dropped

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        set_notsent_lowat(transport.get_extra_info("socket"))
        if self.server is not None:
            set_user_timeout(transport.get_extra_info("socket"), self.server.user_timeout)
        if self.driver is not None:
            self.driver._attached(self)

    def data_received(self, data: bytes) -> None:
        self.bytes_received += len(data)
        if self.refused:
            return
        if self.driver is None:
            assert self.server is not None
            self._pending += data
            self.server._route(self)
            return
        self.driver._data(self, data)

    def eof_received(self) -> bool:
        if self.driver is not None:
            self.driver._eof(self)
        return False

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if self.driver is not None:
            self.driver._lost(self, exc)
        if not self.lost.done():
            self.lost.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.driver is not None and self.conn_id is not None:
            self.driver._set_writable(self.conn_id, False)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.driver is not None and self.conn_id is not None:
            self.driver._set_writable(self.conn_id, True)
            self.driver._after()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.bytes_sent += len(data)
            self.transport.write(data)


class SessionDriver:
    """Drives one TCPLS session over its TCP connections (see the module doc)."""

    def __init__(self, session: TCPLSSession, *, limit: int = DEFAULT_LIMIT, on_stream: Optional[Callable[..., Any]] = None) -> None:
        self.session = session
        session.send_burst = SEND_BURST  # pull scheduling: see _after
        self._loop = asyncio.get_running_loop()
        self._limit = limit
        self._conns: dict[int, _ConnProtocol] = {}
        self._streams: dict[int, tuple[asyncio.StreamReader, TCPLSStreamWriter, _ReadGate]] = {}
        self._ending: set[int] = set()  # streams with one direction over: freed once the engine forgets them
        self._incoming: asyncio.Queue[tuple[asyncio.StreamReader, TCPLSStreamWriter]] = asyncio.Queue()
        self._on_stream = on_stream
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._timer: Optional[asyncio.TimerHandle] = None
        self._timer_at: Optional[float] = None
        self._paused_readers = 0
        self._reading_paused = False
        self._error: Optional[BaseException] = None
        self._linger_until: Optional[float] = None  # set by _close_after_failure
        self._handshake: asyncio.Future[ev.HandshakeCompleted] = self._loop.create_future()
        self.peer_closed: asyncio.Future[None] = self._loop.create_future()
        # every event but stream data; the oldest are dropped past EVENTS_KEPT (nobody may read them)
        self.events: asyncio.Queue[ev.Event] = asyncio.Queue()
        self.failovers = 0  # connections lost while the session lived on
        self.migrations = 0
        self.local_addrs: dict[int, Any] = {}
        self.peer_addrs: dict[int, Any] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._early: dict[int, bytearray] = {}  # output for connections still being connected
        self.observer: Optional[Callable[[int, int], None]] = None  # observer(conn_id, n) on every TCP read
        self._tcp_answers: dict[int, asyncio.Future[ev.TCPSettingAnswered]] = {}
        self._peer_tcp_settings: dict[int, object] = {}  # settings the peer set on all connections (for later ones)
        self.early_received: dict[int, int] = {}  # stream -> leading bytes that arrived as 0-RTT early data

    # ---------------------------------------------------------------- queries
    @property
    def error(self) -> Optional[BaseException]:
        return self._error

    def connection_ids(self) -> list[int]:
        return self.session.usable_connections()

    def bytes_received(self) -> dict[int, int]:
        """Raw TCP bytes received per Connection ID (records included)."""
        return {cid: p.bytes_received for cid, p in self._conns.items()}

    def bytes_sent(self) -> dict[int, int]:
        return {cid: p.bytes_sent for cid, p in self._conns.items()}

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        tls = self.session.tls
        if name == "tcpls":
            return self.session.mode == "tcpls"
        if name == "cipher_suite":
            return tls.cipher_suite
        if name == "alpn_protocol":
            return tls.alpn_protocol
        if name == "peer_certificates":
            return getattr(tls, "peer_certificates", default)
        if name == "connections":
            return self.connection_ids()
        p = self._conns.get(0)
        if p is not None and p.transport is not None:
            return p.transport.get_extra_info(name, default)
        return default

    def advertise_address(self, address_id: int, host: str, port: int) -> None:
        """Announce another address of ours (IPv4 or IPv6, with its port) to
        the peer (New Address frame); clients and servers alike."""
        self._check()
        self.session.advertise_address(address_id, host, port)
        self._after()

    # ------------------------------------------------------ peer TCP settings
    async def request_peer_tcp_setting(self, setting: int, value: object, conn_id: Optional[int] = None,
                                       *, timeout: Optional[float] = 10.0) -> ev.TCPSettingAnswered:
        """Ask the peer to apply a TCP setting on its side of connection
        ``conn_id`` (None: all, including connections joined later) and wait
        for its answer (``.applied``, ``.status``, ``.reason``)."""
        self._check()
        rid = self.session.request_tcp_setting(setting, value, conn_id)
        fut: asyncio.Future[ev.TCPSettingAnswered] = self._loop.create_future()
        self._tcp_answers[rid] = fut
        self._after()
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        finally:
            self._tcp_answers.pop(rid, None)

    async def set_peer_user_timeout(self, ms: int, conn_id: Optional[int] = None, **kw: Any) -> ev.TCPSettingAnswered:
        """Ask the peer for ``TCP_USER_TIMEOUT`` = ``ms`` on its sockets."""
        return await self.request_peer_tcp_setting(TCPSetting.USER_TIMEOUT, int(ms), conn_id, **kw)

    async def set_peer_congestion_control(self, name: str, conn_id: Optional[int] = None, **kw: Any) -> ev.TCPSettingAnswered:
        """Ask the peer for congestion control ``name`` (``TCP_CONGESTION``) on its sockets."""
        return await self.request_peer_tcp_setting(TCPSetting.CONGESTION_CONTROL, name, conn_id, **kw)

    def _on_tcp_setting_requested(self, e: ev.TCPSettingRequested) -> None:
        """Policy hook, then setsockopt, then the answer to the peer."""
        if e.conn_id is None:  # every live connection (joining ones too); later ones in _attached
            targets = [c for c in self._conns if self.session.connection_state(c) not in (ConnState.CLOSED, ConnState.FAILED)]
        else:
            targets = [e.conn_id] if e.conn_id in self._conns else []
        socks = [self._conns[c].transport.get_extra_info("socket") for c in targets  # type: ignore[union-attr]
                 if self._conns[c].transport is not None]
        status, reason = tcp_settings.handle_request(self.session.config.tcp_setting_policy, e.setting, e.value, e.conn_id, socks)
        if status == 0 and e.conn_id is None:
            self._peer_tcp_settings[e.setting] = e.value
        self.session.answer_tcp_setting(e.request_id, status, reason)

    def early_bytes(self, stream_id: int) -> int:
        """How many leading bytes of ``stream_id``'s reader arrived as 0-RTT
        early data (server side; replayable, see docs/tcpls.md)."""
        return self.early_received.get(stream_id, 0)

    def tfo_used(self, conn_id: int = 0) -> Optional[bool]:
        """Client: whether connection ``conn_id``'s SYN carried data the
        server acknowledged (TCP Fast Open; Linux ``TCP_INFO``), None if unknown."""
        p = self._conns.get(conn_id)
        if p is None or p.transport is None:
            return None
        return _tfo.syn_data_acked(p.transport.get_extra_info("socket"))

    # ------------------------------------------------------------ streams API
    def open_stream(self) -> tuple[asyncio.StreamReader, TCPLSStreamWriter]:
        self._check()
        sid = self.session.open_stream()
        reader, writer = self._new_stream(sid)
        self._after()
        return reader, writer

    async def wait_open_stream(self, timeout: Optional[float] = None) -> tuple[asyncio.StreamReader, TCPLSStreamWriter]:
        """:meth:`open_stream`, waiting while ``max_streams`` streams of ours
        are unfinished (until the peer acknowledged the end of one); raises
        :class:`asyncio.TimeoutError` after ``timeout`` seconds."""
        s = self.session
        deadline = None if timeout is None else self._loop.time() + timeout
        while not s.can_open_stream():
            # another waiter may take the slot between the wake-up and here: check again
            left = None if deadline is None else max(0.0, deadline - self._loop.time())
            await asyncio.wait_for(self._wait(s.can_open_stream), left)
        return self.open_stream()

    def stream_count(self) -> int:
        """Streams the adapter still tracks (bounded: see :meth:`_release_streams`)."""
        return len(self._streams)

    async def accept_stream(self) -> tuple[asyncio.StreamReader, TCPLSStreamWriter]:
        """The next stream the peer opened."""
        if self._incoming.empty():
            self._check()
        getter = asyncio.ensure_future(self._incoming.get())
        await asyncio.wait([getter, self.peer_closed], return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            return getter.result()
        getter.cancel()
        self._check()
        raise ConnectionClosedError("the peer closed the session")

    def migrate(self, stream: Union[int, TCPLSStreamWriter], conn_id: Optional[int]) -> None:
        """Send ``stream``'s future data only on ``conn_id`` (None: the scheduler)."""
        sid = stream.stream_id if isinstance(stream, TCPLSStreamWriter) else stream
        self._check()
        self.session.migrate_stream(sid, conn_id)
        self.migrations += 1
        self._put_event(StreamMigrated(sid, conn_id))
        self._after()

    def close_connection(self, conn_id: int) -> None:
        """Stop using ``conn_id``; its unacknowledged data moves to the others."""
        self.session.close_connection(conn_id, self._loop.time())
        self._after()

    async def wait_acked(self, stream_ids: Optional[Sequence[int]] = None, timeout: Optional[float] = None) -> None:
        """Wait until every byte written on ``stream_ids`` (default: all
        streams) is acknowledged by the peer's engine."""

        def done() -> bool:
            ids = self.session.stream_ids() if stream_ids is None else stream_ids
            return all(self.session.stream_send_buffer(s) == 0 for s in ids if s in self.session.stream_ids())

        await asyncio.wait_for(self._wait(done), timeout)

    async def wait_handshake(self) -> ev.HandshakeCompleted:
        return await self._handshake

    async def close(self, timeout: float = 10.0) -> None:
        """Wait for our data to be acknowledged, send close_notify on every
        connection, close the TCP connections and wait for them."""
        if self._error is None and not self.session.local_closed and not self.session.terminated:
            try:
                await self.wait_acked(timeout=timeout)
            except (asyncio.TimeoutError, ConnectionError, ProtocolError):
                pass
            if not self.session.terminated:
                self.session.close()
                self._after()
        if self._linger_until is not None:
            # failed: the connections drain until the peer closes them (bounded)
            lost = [p.lost for p in self._conns.values() if not p.lost.done()]
            left = self._linger_until - self._loop.time()
            if lost and left > 0:
                await asyncio.wait(lost, timeout=left)
        for p in list(self._conns.values()):
            if p.transport is not None:
                p.transport.close()
        lost = [p.lost for p in self._conns.values()]
        if lost:
            done, pending = await asyncio.wait(lost, timeout=timeout)
            for p in self._conns.values():
                if not p.lost.done() and p.transport is not None:
                    p.transport.abort()
        self._cancel_timer()

    def abort(self) -> None:
        """Drop every TCP connection at once (no close_notify; also ends the
        drain of a session that already failed)."""
        self._fail(ConnectionAbortedError("session aborted locally"))
        for p in self._conns.values():
            if p.transport is not None and not p.transport.is_closing():
                p.transport.close()

    def abort_connection(self, conn_id: int) -> None:
        """Test helper / failure injection: abort one TCP connection (RST)."""
        p = self._conns.get(conn_id)
        if p is not None and p.transport is not None:
            p.transport.abort()

    # -------------------------------------------------------------- internals
    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def _new_stream(self, sid: int) -> tuple[asyncio.StreamReader, TCPLSStreamWriter]:
        reader = asyncio.StreamReader(limit=self._limit, loop=self._loop)
        gate = _ReadGate(self)
        reader.set_transport(gate)  # type: ignore[arg-type]
        writer = TCPLSStreamWriter(self, sid, reader)
        self._streams[sid] = (reader, writer, gate)
        return reader, writer

    def _send(self, sid: int, data: bytes, fin: bool) -> None:
        self._check()
        self.session.send_stream_data(sid, data, fin)
        if fin:
            self._ending.add(sid)
        self._after()

    def _reset(self, sid: int, code: int) -> None:
        self._check()
        self.session.reset_stream(sid, code)
        self._ending.add(sid)
        self._after()

    def _release_streams(self) -> None:
        """Free the entries of streams the engine forgot (both directions
        over: our FIN or reset acknowledged, the peer's FIN delivered or its
        reset received). Every byte was fed to the reader before, and the
        application keeps its reader and writer objects (buffered bytes
        stay readable, a paused reader still resumes the session on read),
        so the table only holds streams still in use."""
        s = self.session
        done = [sid for sid in self._ending if s.stream_forgotten(sid)]
        for sid in done:
            self._ending.discard(sid)
            self._streams.pop(sid, None)

    def _writable(self, sid: int) -> bool:
        s = self.session
        if s.stream_send_buffer(sid) >= s.config.send_high_water:
            return False
        if s.mode == "tcpls":
            # Paused transports are the engine's business (pull scheduling):
            # the stream buffer must stay full for the next resume_writing.
            return True
        usable = [self._conns[c] for c in s.usable_connections() if c in self._conns]
        return not usable or not all(p.write_paused for p in usable)

    async def _wait_writable(self, sid: int) -> None:
        await self._wait(lambda: self._writable(sid))

    async def _wait(self, cond: Callable[[], bool]) -> None:
        while True:
            self._check()
            if cond():
                return
            fut: asyncio.Future[None] = self._loop.create_future()
            self._waiters.append((cond, fut))
            self._update_reading()
            try:
                await fut
            finally:
                self._waiters = [(c, f) for c, f in self._waiters if f is not fut]

    def _wake(self) -> None:
        for cond, fut in self._waiters:
            if fut.done():
                continue
            if self._error is not None or cond():
                fut.set_result(None)

    def _gate(self, delta: int) -> None:
        self._paused_readers += delta
        self._update_reading()

    def _update_reading(self) -> None:
        """Pause TCP reading while a stream reader is full (invariant 3),
        except while one of our writers waits for acknowledgments: ACKs
        share the records with data, so pausing then would deadlock a peer
        that reads and writes (an echo). The readers may then grow up to
        ``8 * limit`` before reading stops anyway."""
        pause = self._paused_readers > 0
        if pause and any(not f.done() for _c, f in self._waiters):
            pause = sum(len(getattr(r, "_buffer", b"")) for r, _w, _g in self._streams.values()) >= 8 * self._limit
        if pause == self._reading_paused:
            return
        self._reading_paused = pause
        for p in self._conns.values():
            if p.transport is not None and not p.transport.is_closing():
                if pause:
                    p.transport.pause_reading()
                else:
                    p.transport.resume_reading()

    def _attached(self, proto: _ConnProtocol) -> None:
        """A TCP connection for ``proto.conn_id`` is up."""
        assert proto.conn_id is not None and proto.transport is not None
        self._conns[proto.conn_id] = proto
        if proto.write_paused:
            self._set_writable(proto.conn_id, False)
        self.local_addrs[proto.conn_id] = proto.transport.get_extra_info("sockname")
        self.peer_addrs[proto.conn_id] = proto.transport.get_extra_info("peername")
        for setting, value in self._peer_tcp_settings.items():  # the peer asked for them on every connection
            try:
                tcp_settings.apply_setting(proto.transport.get_extra_info("socket"), setting, value)
            except (OSError, ValueError, OverflowError, TypeError, AttributeError) as exc:
                logger.warning("peer TCP setting %s not applied to connection %s: %s", setting, proto.conn_id, exc)
        self._put_event(ev.ConnectionEstablished(proto.conn_id, self.local_addrs[proto.conn_id], self.peer_addrs[proto.conn_id]))
        if self._reading_paused:
            proto.transport.pause_reading()
        self._after()

    def _data(self, proto: _ConnProtocol, data: bytes) -> None:
        if self._error is not None or proto.conn_id is None:
            return
        if self.observer is not None:
            self.observer(proto.conn_id, len(data))
        try:
            self.session.receive_data(proto.conn_id, data, self._loop.time())
        except ProtocolError as exc:
            self._fail(exc)
            return
        self._after()

    def _eof(self, proto: _ConnProtocol) -> None:
        if self._error is not None or proto.conn_id is None:
            return
        try:
            self.session.receive_eof(proto.conn_id, self._loop.time())
        except ProtocolError as exc:
            self._fail(exc)
            return
        self._after()

    def _lost(self, proto: _ConnProtocol, exc: Optional[Exception]) -> None:
        cid = proto.conn_id
        if self._error is not None or cid is None or self._conns.get(cid) is not proto:
            return
        state = self.session.connection_state(cid)
        if state not in (ConnState.CLOSED, ConnState.FAILED):
            if self.session.mode != "tcpls":
                self._fail(exc or ConnectionResetError("connection lost"))
                return
            self.session.fail_connection(cid, self._loop.time(), f"TCP connection lost: {exc or 'closed'}")
        self._after()
        if self.session.mode == "tcpls" and not self.session.usable_connections() and not self._joining():
            self._no_connection_left()

    def _joining(self) -> bool:
        return any(self.session.connection_state(c) is ConnState.JOINING for c in self.session.connection_ids())

    def _no_connection_left(self) -> None:
        """Hook: every connection is gone (a client may rejoin; a server waits)."""

    def _set_writable(self, conn_id: int, writable: bool) -> None:
        if self._error is None and conn_id in self.session.connection_ids():
            self.session.set_writable(conn_id, writable, self._loop.time())

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self._error is not None:
            return
        try:
            self.session.handle_timer(self._loop.time())
        except ProtocolError as exc:
            self._fail(exc)
            return
        self._after()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = None

    def _after(self) -> None:
        """Events → transmit → timer (the single step after every input)."""
        if self._error is not None:
            return
        self._dispatch()
        if self._ending:
            self._release_streams()
        self._transmit()
        self._fill()
        t = self.session.get_timer()
        if t != self._timer_at:
            self._cancel_timer()
            if t is not None:
                self._timer_at = t
                self._timer = self._loop.call_at(t, self._on_timer)
        self._wake()
        self._update_reading()

    def _fill(self) -> None:
        """Pull scheduling: the engine queued at most ``SEND_BURST`` bytes per
        connection; hand out more until every connection with room is full
        (its transport paused: the kernel holds ``NOTSENT_LOWAT`` unsent
        bytes and the transport its high-water mark) or no data is left."""
        s = self.session
        for _ in range(256):
            if s.terminated:
                return
            conns = self._conns
            if not any(c in conns and not conns[c].write_paused for c in s.usable_connections()):
                return
            s.flush(self._loop.time())
            if not s.connections_with_data():
                return
            self._transmit()

    def _transmit(self) -> None:
        s = self.session
        for cid in s.connections_with_data():
            data = s.data_to_send(cid)
            p = self._conns.get(cid)
            if p is not None:
                p.write(data)
            # else: a connection still being connected; its protocol writes the bytes below
            elif data:
                self._early.setdefault(cid, bytearray()).extend(data)

    def _dispatch(self) -> None:
        s = self.session
        while (e := s.next_event()) is not None:
            t = type(e)
            if t is ev.StreamDataReceived:
                st = self._streams.get(e.stream_id)  # type: ignore[attr-defined]
                if e.early:  # type: ignore[attr-defined]
                    self.early_received[e.stream_id] = self.early_received.get(e.stream_id, 0) + len(e.data)  # type: ignore[attr-defined]
                if st is not None:
                    st[0].feed_data(e.data)  # type: ignore[attr-defined]
                continue
            if t is ev.StreamOpened:
                reader, writer = self._new_stream(e.stream_id)  # type: ignore[attr-defined]
                if self._on_stream is not None:
                    self._spawn(self._on_stream(reader, writer))
                else:
                    self._incoming.put_nowait((reader, writer))
            elif t is ev.StreamEnded:
                st = self._streams.get(e.stream_id)  # type: ignore[attr-defined]
                if st is not None:
                    st[0].feed_eof()
                self._ending.add(e.stream_id)  # type: ignore[attr-defined]
            elif t is ev.StreamReset:
                st = self._streams.get(e.stream_id)  # type: ignore[attr-defined]
                self._ending.add(e.stream_id)  # type: ignore[attr-defined]
                if st is not None:
                    st[0].set_exception(ConnectionResetError(f"stream reset by peer (error {e.error_code})"))  # type: ignore[attr-defined]
            elif t is ev.HandshakeCompleted:
                if not self._handshake.done():
                    self._handshake.set_result(e)  # type: ignore[arg-type]
                self._on_handshake()
            elif t is ev.ConnectionFailed:
                failovers = self.failovers
                self._on_connection_failed(e)  # type: ignore[arg-type]
                if self.failovers != failovers:
                    self._put_event(e)
                    e = Failover(e.conn_id, e.reason, tuple(s.usable_connections()))  # type: ignore[attr-defined]
            elif t is ev.SessionClosed:
                if not self.peer_closed.done():
                    self.peer_closed.set_result(None)
                self._on_peer_closed()
            elif t is ev.TCPSettingRequested:
                self._on_tcp_setting_requested(e)  # type: ignore[arg-type]
            elif t is ev.TCPSettingAnswered:
                fut = self._tcp_answers.get(e.request_id)  # type: ignore[attr-defined]
                if fut is not None and not fut.done():
                    fut.set_result(e)  # type: ignore[arg-type]
            self._put_event(e)

    def _put_event(self, e: ev.Event) -> None:
        """Put ``e`` on :attr:`events` (engine events and the adapter's own),
        dropping the oldest beyond ``EVENTS_KEPT``."""
        if self.events.qsize() >= EVENTS_KEPT:
            self.events.get_nowait()
        self.events.put_nowait(e)


    async def next_event(self, timeout: Optional[float] = None) -> ev.Event:
        """The next session event (engine events but stream data, plus
        :class:`StreamMigrated` and :class:`Failover`); raises
        :class:`asyncio.TimeoutError` after ``timeout`` seconds."""
        return await asyncio.wait_for(self.events.get(), timeout)

    def _on_handshake(self) -> None:
        """Hook: the handshake of connection 0 completed."""

    def _on_peer_closed(self) -> None:
        """Hook: the peer sent close_notify."""

    def _on_connection_failed(self, e: ev.ConnectionFailed) -> None:
        p = self._conns.get(e.conn_id)
        state = self.session.connection_state(e.conn_id)
        s = self.session
        if (e.reason not in ("closed locally",) and not e.reason.startswith("join refused")
                and not s.local_closed and not s.peer_closed):
            self.failovers += 1  # a path died (here or as seen by the peer) while the session lived on
        if state is ConnState.FAILED:
            if p is not None and p.transport is not None:
                p.transport.abort()  # dead path: do not wait for its buffer
        elif p is not None and p.transport is not None:
            p.transport.close()  # migrated away: flush, then FIN

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                logger.error("stream handler failed", exc_info=t.exception())

        task.add_done_callback(done)

    def _fail(self, exc: BaseException) -> None:
        """Session-fatal error (invariant 4)."""
        if self._error is not None:
            return
        self._error = exc
        self._cancel_timer()
        try:
            for cid in self.session.connections_with_data():
                p = self._conns.get(cid)
                if p is not None:
                    p.write(self.session.data_to_send(cid))
        except Exception:  # noqa: BLE001 - best effort
            pass
        for reader, _w, _g in self._streams.values():
            if not reader.at_eof():
                reader.set_exception(exc)  # type: ignore[arg-type]
        if not self._handshake.done():
            self._handshake.set_exception(exc)
            self._handshake.exception()
        if not self.peer_closed.done():
            self.peer_closed.set_result(None)
        self._close_after_failure()
        for _c, fut in self._waiters:
            if not fut.done():
                fut.set_result(None)  # the waiter re-checks and raises
        for answer in self._tcp_answers.values():
            if not answer.done():
                answer.set_exception(exc)
                answer.exception()

    def _close_after_failure(self) -> None:
        """Close every TCP connection without destroying the alert on it.

        Closing a socket whose peer is still sending makes the kernel answer
        with a TCP reset, and the peer may lose the alert it has not read
        yet. So send FIN after the alert, keep reading and dropping input
        (``_data`` ignores it once failed) until the peer closes (the
        transport then closes itself), and close anyway after
        ``FAILURE_LINGER`` seconds. A local abort closes at once.
        """
        linger = not isinstance(self._error, ConnectionAbortedError)
        pending = []
        for p in self._conns.values():
            t = p.transport
            if t is None or t.is_closing():
                continue
            if linger and t.can_write_eof():
                try:
                    t.write_eof()
                    t.resume_reading()  # reading may be paused by a full stream reader
                    pending.append(t)
                    continue
                except (OSError, RuntimeError):
                    pass
            t.close()
        if pending:
            self._linger_until = self._loop.time() + FAILURE_LINGER
            self._loop.call_later(FAILURE_LINGER, lambda: [t.close() for t in pending])


# ==================================================================== client
class TCPLSClient(SessionDriver):
    """Client side: connection 0 plus joined connections (see :func:`connect`)."""

    def __init__(self, session: TCPLSSession, *, port: int, limit: int = DEFAULT_LIMIT, user_timeout: Optional[int] = None,
                 on_stream: Optional[Callable[..., Any]] = None, rejoin: bool = False,
                 rejoin_paths: Sequence[tuple[Optional[str], str]] = (), tfo: bool = False) -> None:
        super().__init__(session, limit=limit, on_stream=on_stream)
        self.port = port
        self.tfo = tfo  # TCP Fast Open on connection 0 and on joins
        self.early_stream: Optional[tuple[asyncio.StreamReader, TCPLSStreamWriter]] = None
        self.user_timeout = user_timeout
        self.rejoin = rejoin
        self.rejoin_paths = list(rejoin_paths)  # (local, remote) candidates for a rejoin
        self.paths: dict[int, tuple[Optional[str], str]] = {}  # conn_id -> (local, remote)
        self.rejoins = 0
        self._rejoining = False

    async def _connect(self, conn_id: int, host: str, port: int, local: Optional[str], timeout: Optional[float],
                       sock: Optional[socket.socket] = None) -> _ConnProtocol:
        proto = _ConnProtocol(None, conn_id)
        if sock is not None:  # already connected (happy eyeballs)
            await asyncio.wait_for(self._loop.create_connection(lambda: proto, sock=sock), timeout)
        elif self.tfo:
            # TCP_FASTOPEN_CONNECT: the first write (ClientHello, early data,
            # or a join's ClientHello and proof) rides in the SYN once a cookie is cached.
            sock = await asyncio.wait_for(_tfo.connect_socket(self._loop, host, port, local), timeout)
            await self._loop.create_connection(lambda: proto, sock=sock)
        else:
            kw: dict[str, Any] = {}
            if local:
                kw["local_addr"] = (local, 0)
            await asyncio.wait_for(self._loop.create_connection(lambda: proto, host, port, **kw), timeout)
        assert proto.transport is not None
        set_user_timeout(proto.transport.get_extra_info("socket"), self.user_timeout)
        self.paths[conn_id] = (local, host)
        proto.driver = self
        early = self._early.pop(conn_id, None)
        if early:
            proto.write(bytes(early))
        self._attached(proto)
        return proto

    async def join(self, remote_addr: Union[str, Addr], local_addr: Optional[str] = None, *, timeout: float = 10.0) -> int:
        """Open a TCP connection to ``remote_addr`` (host, or (host, port);
        port defaults to the session's) from ``local_addr`` and join it to
        the session. Returns its Connection ID once the server proved key
        possession on it."""
        host, port = (remote_addr, self.port) if isinstance(remote_addr, str) else remote_addr
        await asyncio.wait_for(self._wait(lambda: bool(self.session.available_tokens())), timeout)
        cid = self.session.add_connection(self._loop.time())
        self._transmit_early(cid)
        try:
            await self._connect(cid, host, port, local_addr, timeout)
        except BaseException as exc:
            if self._error is None and self.session.connection_state(cid) is ConnState.JOINING:
                self.session.fail_connection(cid, self._loop.time(), f"connect failed: {exc}")
                self._after()
            raise

        def settled() -> bool:
            return self.session.connection_state(cid) is not ConnState.JOINING

        await asyncio.wait_for(self._wait(settled), timeout)
        if self.session.connection_state(cid) is not ConnState.ACTIVE:
            raise ConnectionError(f"join of connection {cid} failed")
        return cid

    def resumption_session(self) -> Optional[Session]:
        """The newest ticket of this TCPLS session, its ``received_at`` in
        wall-clock seconds (the engine runs on ``loop.time()``), ready for
        ``Session.to_bytes()`` and for :func:`connect`'s ``session=``."""
        t = self.session.resumption_session
        if t is None:
            return None
        return dataclasses.replace(t, received_at=t.received_at - self._loop.time() + time.time())

    def _transmit_early(self, cid: int) -> None:
        data = self.session.data_to_send(cid)
        if data:
            self._early.setdefault(cid, bytearray()).extend(data)

    async def migrate_to(self, remote_addr: Union[str, Addr], local_addr: Optional[str] = None, *, close_old: bool = True) -> int:
        """Join a connection to ``remote_addr``, move every stream of ours to
        it, and (by default) close the others: application-level migration."""
        if isinstance(remote_addr, str):
            remote_addr = (remote_addr, self.port)
        existing = [c for c in self.session.usable_connections() if self.peer_addrs.get(c, (None,))[:2] == remote_addr
                    and (local_addr is None or self.local_addrs.get(c, (None,))[0] == local_addr)]
        cid = existing[0] if existing else await self.join(remote_addr, local_addr)
        for sid in self.session.stream_ids():
            if sid % 2 == 0:
                self.session.migrate_stream(sid, cid)
                self._put_event(StreamMigrated(sid, cid))
        self.migrations += 1
        if close_old:
            for other in self.session.usable_connections():
                if other != cid:
                    self.session.close_connection(other, self._loop.time())
        self._after()
        return cid

    def _no_connection_left(self) -> None:
        if self.rejoin and not self._rejoining and self._error is None and not self.session.local_closed:
            self._spawn(self._rejoin())

    async def _rejoin(self) -> None:
        """Failover with no connection left: join again on a path that is
        not a dead one (break before make)."""
        self._rejoining = True
        try:
            dead = {self.paths.get(c) for c in self.session.connection_ids()}
            candidates = [p for p in self.rejoin_paths if p not in dead] + list(self.rejoin_paths)
            for aid, (host, port) in self.session.peer_addresses().items():
                candidates.append((None, host))
            for local, remote in candidates:
                if self._error is not None or self.session.usable_connections():
                    return
                try:
                    await self.join(remote, local, timeout=5.0)
                    self.rejoins += 1
                    return
                except (OSError, asyncio.TimeoutError, ConnectionError, ProtocolError) as exc:
                    logger.info("rejoin via %s -> %s failed: %s", local, remote, exc)
            self._fail(ConnectionError("every connection failed and no rejoin succeeded"))
        finally:
            self._rejoining = False


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%")[0])
        return True
    except ValueError:
        return False


async def connect(
    host: Union[str, Sequence[Union[str, Addr]]],
    port: int,
    *,
    config: TCPLSConfig,
    server_name: Optional[str] = None,
    local_addr: Optional[str] = None,
    user_timeout: Optional[int] = None,
    timeout: Optional[float] = 30.0,
    limit: int = DEFAULT_LIMIT,
    on_stream: Optional[Callable[..., Any]] = None,
    rejoin: bool = False,
    rejoin_paths: Sequence[tuple[Optional[str], str]] = (),
    attempt_timeout: Optional[float] = None,
    stagger: float = happy_eyeballs.DEFAULT_STAGGER,
    session: Optional[Session] = None,
    early_data: Optional[bytes] = None,
    early_fin: bool = False,
    tfo: bool = False,
) -> TCPLSClient:
    """Connect to ``host:port``, run the handshake and return the session.

    ``host`` may be one host (a name resolving to several addresses is
    tried v6/v4 interleaved, RFC 8305 §4) or a list of hosts or
    ``(host, port)`` pairs, tried in the given order. Happy eyeballs
    (RFC 8305 §5): attempts start ``stagger`` s apart (sooner when the
    running ones failed), each bounded by ``attempt_timeout`` (default
    ``timeout``); the first *TCP* connection to complete becomes
    connection 0 and carries the TLS handshake, the other attempts are
    closed. Each failed attempt puts a ``ConnectionAttemptFailed`` on
    :attr:`SessionDriver.events`, the winner a ``ConnectionEstablished``;
    if all fail, ``AllAttemptsFailed`` lists every address's error.

    ``server_name`` defaults to ``config.tls.server_name``, else the first
    host name in ``host`` that is not an IP literal, else the first host; ``user_timeout`` (ms) sets ``TCP_USER_TIMEOUT`` on every
    connection; ``on_stream(reader, writer)`` (a coroutine function) runs
    for each stream the server opens (else use
    :meth:`SessionDriver.accept_stream`); ``rejoin=True`` joins a new
    connection (on ``rejoin_paths`` (local, remote) or the server's
    advertised addresses) when all have failed.

    0-RTT: ``session`` resumes a ticket of an earlier TCPLS session
    (``client.session.resumption_session``); with ``early_data`` the client
    opens a stream (``client.early_stream``: reader, writer) and sends the
    bytes on it, as TLS early data up to the ticket's limit (FIN after them
    with ``early_fin``); ``client.session.early_data_sent`` /
    ``early_data_accepted`` tell what happened (rejected bytes were resent).
    ``tfo=True`` uses TCP Fast Open on connection 0 and on joins; with
    several addresses to race, connection 0 is raced without it (the race
    connects before there is data to put in a SYN) and joins still use it.
    """
    loop = asyncio.get_running_loop()
    hosts = [host] if isinstance(host, str) else [h if isinstance(h, str) else h[0] for h in host]
    first = next((h for h in hosts if not _is_ip(h)), hosts[0] if hosts else "")
    name = server_name or getattr(config.tls, "server_name", None) or first
    resume = session
    if resume is not None:  # wall clock -> the engine's loop.time()
        resume = dataclasses.replace(resume, received_at=resume.received_at - time.time() + loop.time())
    session = TCPLSSession(config, is_client=True, server_name=name, session=resume)
    client = TCPLSClient(session, port=port, limit=limit, user_timeout=user_timeout, on_stream=on_stream,
                         rejoin=rejoin, rejoin_paths=rejoin_paths, tfo=tfo)
    if early_data is not None:
        sid = session.open_stream()
        client.early_stream = client._new_stream(sid)
        session.send_stream_data(sid, early_data, early_fin)
    session.start_handshake(loop.time(), early_data=early_data is not None)
    client._transmit_early(0)
    deadline = None if timeout is None else loop.time() + timeout

    def left() -> Optional[float]:
        return None if deadline is None else max(0.0, deadline - loop.time())

    def attempt_failed(h: str, p: int, reason: str) -> None:
        client._put_event(ev.ConnectionAttemptFailed(h, p, reason))

    errors: list[tuple[str, int, str]] = []
    try:
        targets: list[Addr] = []
        for h in [host] if isinstance(host, str) else host:
            h, p = (h, port) if isinstance(h, str) else (h[0], int(h[1]))
            targets.extend(a for a in await asyncio.wait_for(happy_eyeballs.resolve(h, p), left()) if a not in targets)
        if tfo and len(targets) == 1:
            # One address: no race, so connection 0 can carry its ClientHello
            # (and 0-RTT data) in the SYN.
            winner, wport = targets[0]
            try:
                await client._connect(0, winner, wport, local_addr, left())
            except (OSError, asyncio.TimeoutError) as exc:
                reason = "timed out" if isinstance(exc, asyncio.TimeoutError) else f"{type(exc).__name__}: {exc}"
                attempt_failed(winner, wport, reason)
                raise happy_eyeballs.AllAttemptsFailed([(winner, wport, reason)]) from exc
            await asyncio.wait_for(asyncio.shield(client._handshake), left())
            return client
        try:
            sock, (winner, _wport) = await asyncio.wait_for(
                happy_eyeballs.race(targets, port, attempt_timeout=attempt_timeout if attempt_timeout is not None else timeout,
                                    stagger=stagger, local_addr=local_addr,
                                    on_failure=lambda h, p, r: (errors.append((h, p, r)), attempt_failed(h, p, r))), left())
        except asyncio.TimeoutError as exc:
            raise happy_eyeballs.AllAttemptsFailed(errors) from exc  # the overall timeout ended the race
        await client._connect(0, winner, port, local_addr, left(), sock=sock)
        await asyncio.wait_for(asyncio.shield(client._handshake), left())
    except BaseException:
        client.abort()
        raise
    return client


# ==================================================================== server
class ServerSession(SessionDriver):
    """Server side of one TCPLS session (created by :class:`TCPLSServer`)."""

    def __init__(self, server: "TCPLSServer", session: TCPLSSession) -> None:
        super().__init__(session, limit=server.limit, on_stream=server.on_stream)
        self.server = server

    def _on_handshake(self) -> None:
        if self.session.mode == "tcpls":
            for i, (host, port) in enumerate(self.server.addresses):
                self.session.advertise_address(i, host, port)
        if self.server.on_session is not None:
            self._spawn(self._run_session())

    async def _run_session(self) -> None:
        assert self.server.on_session is not None
        await self.server.on_session(self)

    def _on_peer_closed(self) -> None:
        self._spawn(self._finish())

    async def _finish(self) -> None:
        """The client closed the session: let the handlers end, then close ours."""
        me = asyncio.current_task()
        others = [t for t in self._tasks if t is not me]
        if others:
            await asyncio.wait(others, timeout=30.0)
        await self.close()


OnStream = Callable[[asyncio.StreamReader, TCPLSStreamWriter], Awaitable[None]]


class TCPLSServer:
    """A TCPLS listener on one or more addresses (see :func:`serve`)."""

    def __init__(self, config: TCPLSConfig, *, on_stream: Optional[Callable[..., Any]], on_session: Optional[Callable[[ServerSession], Awaitable[None]]],
                 limit: int, user_timeout: Optional[int]) -> None:
        self.config = config
        self.on_stream = on_stream
        self.on_session = on_session
        self.limit = limit
        self.user_timeout = user_timeout
        self.linger = 2 * config.dead_timeout + 5.0
        self.servers: list[asyncio.AbstractServer] = []
        self.addresses: list[Addr] = []
        self.sessions: set[ServerSession] = set()
        self._drivers: dict[int, ServerSession] = {}  # id(TCPLSSession) -> driver

    def _route(self, proto: _ConnProtocol) -> None:
        data = bytes(proto._pending)
        try:
            routed = route_connection(self.config, data)
        except ProtocolError as exc:
            self._refuse(proto, alert_record(exc.alert))
            return
        if routed is None:
            if len(data) <= 1 << 17:
                return
            # no complete ClientHello in 128 KiB: a new session's handshake
            # refuses it with the right alert (decode_error from the header)
            routed = (None, False)
        proto._pending = bytearray()
        loop = asyncio.get_running_loop()
        session, is_join = routed
        if is_join:
            assert session is not None
            driver = self._drivers.get(id(session))
            if driver is None or driver.error is not None:
                self._refuse(proto, alert_record())
                return
            try:
                cid = session.accept_join(data, loop.time())
            except ProtocolError as exc:
                self._refuse(proto, alert_record(exc.alert))
                driver._after()
                return
            proto.driver, proto.conn_id = driver, cid
            driver._attached(proto)
            return
        fresh = TCPLSSession(self.config, is_client=False)
        driver = ServerSession(self, fresh)
        proto.driver, proto.conn_id = driver, 0
        self._drivers[id(fresh)] = driver
        self.sessions.add(driver)
        driver._conns[0] = proto
        driver.local_addrs[0] = proto.transport.get_extra_info("sockname")  # type: ignore[union-attr]
        driver.peer_addrs[0] = proto.transport.get_extra_info("peername")  # type: ignore[union-attr]
        driver._put_event(ev.ConnectionEstablished(0, driver.local_addrs[0], driver.peer_addrs[0]))
        driver._data(proto, data)
        if driver.error is not None:
            self._forget(driver)
        else:
            asyncio.ensure_future(self._reap(driver))

    def _refuse(self, proto: _ConnProtocol, alert: bytes) -> None:
        """A connection refused before it has a session: the alert, FIN, and
        input dropped until the client closes (at most ``FAILURE_LINGER``
        seconds), so that a client still sending reads the alert."""
        t = proto.transport
        assert t is not None
        proto.refused = True
        proto._pending = bytearray()
        t.write(alert)
        if t.can_write_eof():
            t.write_eof()
            asyncio.get_running_loop().call_later(FAILURE_LINGER, t.close)
        else:  # pragma: no cover - TCP transports can
            t.close()

    async def _reap(self, driver: ServerSession) -> None:
        """Forget a session once every TCP connection of it is gone and no
        new one joined within ``linger`` seconds (a client whose only path
        died may rejoin: break before make)."""
        while True:
            await asyncio.wait([p.lost for p in driver._conns.values()])
            if driver.error is None and not driver.session.local_closed and not driver.session.peer_closed:
                await asyncio.sleep(self.linger)
            if all(p.lost.done() for p in driver._conns.values()):
                break
        self._forget(driver)

    def _forget(self, driver: ServerSession) -> None:
        self.sessions.discard(driver)
        self._drivers.pop(id(driver.session), None)

    def _factory(self) -> _ConnProtocol:
        return _ConnProtocol(None, None, server=self)

    def close(self) -> None:
        for s in self.servers:
            s.close()
        for d in list(self.sessions):
            d.abort()

    async def wait_closed(self) -> None:
        for s in self.servers:
            await s.wait_closed()

    async def __aenter__(self) -> "TCPLSServer":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()
        await self.wait_closed()


async def serve(
    hosts: Union[str, Sequence[str]],
    port: int,
    *,
    config: TCPLSConfig,
    on_stream: Optional[OnStream] = None,
    on_session: Optional[Callable[[ServerSession], Awaitable[None]]] = None,
    limit: int = DEFAULT_LIMIT,
    user_timeout: Optional[int] = None,
    tfo: int = 0,
    **kwds: Any,
) -> TCPLSServer:
    """Listen on every address of ``hosts`` at ``port`` (0: a free port,
    the same on all addresses), announce the addresses to each client
    (New Address frames) and route each new TCP connection: a join goes to
    its session, anything else starts a session.

    ``on_stream(reader, writer)`` runs for each stream a client opens;
    ``on_session(session)`` once per session after its handshake (e.g. to
    open a server stream). A plain TLS 1.3 client gets stream 0.
    ``tfo`` > 0 accepts TCP Fast Open with that pending-queue length
    (``TCP_FASTOPEN``; the host's ``net.ipv4.tcp_fastopen`` must allow servers).
    """
    if isinstance(hosts, str):
        hosts = [hosts]
    loop = asyncio.get_running_loop()
    srv = TCPLSServer(config, on_stream=on_stream, on_session=on_session, limit=limit, user_timeout=user_timeout)
    for host in hosts:
        s = await loop.create_server(srv._factory, host, port, **kwds)
        srv.servers.append(s)
        if tfo:
            for sock in s.sockets:
                _tfo.enable_server(sock, tfo)
        bound = s.sockets[0].getsockname()
        port = bound[1]
        srv.addresses.append((bound[0], bound[1]))
    return srv
