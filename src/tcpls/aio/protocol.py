"""The asyncio protocol that drives one TLS engine over one TCP transport.

Theory of operation
-------------------
:class:`TLSStreamProtocol` is the only object that talks to the sans-IO
:class:`~tcpls.tls.connection.TLSConnection`. It has exactly two inputs, and
each runs the same three steps (the aioquic adapter loop, with the
ordering discipline of trio's ``_retry``):

* **network** (``data_received`` / ``eof_received``):
  feed the engine with ``now=time.time()`` (wall clock: tickets outlive processes) → hand its events to the
  application (reader, handshake waiter, connection callback) → transmit;
* **application** (``send`` / ``close_write`` / ``close`` from the writer):
  call the engine verb → transmit.

"Transmit" is always ``transport.write(conn.data_to_send())``: engine output
is written in the order the engine produced it, by whoever caused it.

Invariants:

1. No engine call is left without its transmit before control returns to
   the event loop, so alerts, KeyUpdate answers and tickets are never stuck.
2. Application bytes reach the :class:`asyncio.StreamReader` only from
   ``DataReceived`` events; its EOF only from close_notify (or a clean
   ``connection_lost``); errors only via ``set_exception``.
3. Backpressure is delegated, not re-implemented:

   * *reading*: the reader is attached to the TCP transport
     (``reader.set_transport``), so the reader itself pauses and resumes
     TCP reads when its buffer passes its limit — no flag here;
   * *writing*: the transport calls ``pause_writing``/``resume_writing``
     around its high-water mark; ``_write_paused`` mirrors that and
     ``drain()`` waits on ``_drain_waiters`` while it is set.

4. Failure is one path, :meth:`_fail`: remember the first error, write the
   queued alert, fail the handshake waiter and the reader, close the
   transport. After it, writes are dropped and ``drain()`` raises.
5. The adapter's own state is only: the handshake future, the closed future
   (set by ``connection_lost``), the first error, and the write-pause mirror.
   Everything else (handshake done? half-closed?) is asked of the engine.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any, Awaitable, Callable, Optional

from ..errors import ProtocolError, TLSError
from ..tls import events as _ev
from ..tls.connection import TLSConnection

__all__ = ["TLSStreamProtocol", "TLSStreamWriter", "ClientConnectedCallback", "logger"]

logger = logging.getLogger("tcpls.aio")

ClientConnectedCallback = Callable[[asyncio.StreamReader, "TLSStreamWriter"], Optional[Awaitable[None]]]

_VERSION_NAMES = {0x0304: "TLSv1.3", 0x0303: "TLSv1.2"}


class TLSStreamProtocol(asyncio.Protocol):
    """Drives one :class:`TLSConnection` over one TCP transport (see module doc)."""

    def __init__(
        self,
        conn: TLSConnection,
        reader: asyncio.StreamReader,
        *,
        server_side: bool,
        client_connected_cb: Optional[ClientConnectedCallback] = None,
        handshake_timeout: Optional[float] = 60.0,
        loop: Optional[asyncio.AbstractEventLoop] = None,
    ) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._conn = conn
        self._reader = reader
        self._server_side = server_side
        self._client_connected_cb = client_connected_cb
        self._handshake_timeout = handshake_timeout
        self._transport: Optional[asyncio.Transport] = None
        self._writer = TLSStreamWriter(self, reader)
        self._handshake: asyncio.Future[None] = self._loop.create_future()
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._error: Optional[BaseException] = None
        self._write_paused = False
        self._drain_waiters: deque[asyncio.Future[None]] = deque()
        self._timer: Optional[asyncio.TimerHandle] = None
        self._task: Optional[asyncio.Task[Any]] = None
        self._peername: Any = None

    # ------------------------------------------------------------ transport callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._peername = transport.get_extra_info("peername")
        self._reader.set_transport(transport)
        if self._handshake_timeout is not None:
            self._timer = self._loop.call_later(self._handshake_timeout, self._on_handshake_timeout)
        if not self._server_side:
            self._conn.start_handshake(time.time())
            self._transmit()

    def data_received(self, data: bytes) -> None:
        if self._error is not None:
            return
        try:
            self._conn.receive_data(data, time.time())
        except ProtocolError as exc:
            self._fail(exc)
            return
        self._process_events()
        self._transmit()

    def eof_received(self) -> bool:
        if self._error is not None:
            return False
        try:
            self._conn.receive_eof()
        except ProtocolError as exc:
            self._fail(exc)
            return False
        if not self._conn.handshake_complete:
            self._fail(ConnectionResetError("connection closed by peer during the TLS handshake"))
            return False
        self._process_events()
        if not self._reader.at_eof():
            self._reader.feed_eof()
        # Keep our sending half open until the application closes it.
        return not self._conn.local_closed

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._cancel_timer()
        if not self._handshake.done():
            error = self._error or exc or ConnectionResetError("connection lost during the TLS handshake")
            self._handshake.set_exception(error)
            self._handshake.exception()  # mark retrieved: nobody may be waiting (server side)
        if exc is not None and self._error is None:
            self._error = exc
            self._reader.set_exception(exc)
        elif self._error is None:
            self._reader.feed_eof()
        if not self._closed.done():
            self._closed.set_result(None)
        self._write_paused = False
        self._wake_drain_waiters()
        self._transport = None

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain_waiters()

    # ------------------------------------------------------------ engine plumbing
    def _transmit(self) -> None:
        data = self._conn.data_to_send()
        if data and self._transport is not None:
            self._transport.write(data)

    def _process_events(self) -> None:
        conn = self._conn
        reader = self._reader
        eof = False
        while (event := conn.next_event()) is not None:
            kind = type(event)
            if kind is _ev.DataReceived or kind is _ev.EarlyDataReceived:
                # 0-RTT data (server) comes first, in stream order; an
                # application that must tell it apart uses the engine's events.
                reader.feed_data(event.data)
            elif kind is _ev.CloseNotifyReceived:
                eof = True  # fed after this batch's data, whatever the event order
            elif kind is _ev.HandshakeComplete:
                self._on_handshake_complete()
        if eof:
            reader.feed_eof()

    def _on_handshake_complete(self) -> None:
        self._cancel_timer()
        if not self._handshake.done():
            self._handshake.set_result(None)
        cb = self._client_connected_cb
        if cb is None:
            return
        self._client_connected_cb = None
        try:
            result = cb(self._reader, self._writer)
        except Exception:
            logger.exception("client_connected_cb failed for %s", self._peername)
            self.close()
            return
        if asyncio.iscoroutine(result):
            self._task = self._loop.create_task(result)
            self._task.add_done_callback(self._on_callback_done)

    def _on_callback_done(self, task: "asyncio.Task[Any]") -> None:
        self._task = None
        if task.cancelled():
            self.close()
            return
        exc = task.exception()
        if exc is not None:
            logger.error("client_connected_cb failed for %s", self._peername, exc_info=exc)
            self.close()

    def _on_handshake_timeout(self) -> None:
        self._timer = None
        if not self._conn.handshake_complete:
            self._fail(TimeoutError("TLS handshake timed out"))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fail(self, exc: BaseException) -> None:
        """The single failure path (invariant 4)."""
        if self._error is None:
            self._error = exc
        self._cancel_timer()
        try:
            self._transmit()  # the fatal alert queued by the engine, if any
        except Exception:  # pragma: no cover - transport already broken
            pass
        handshaking = not self._handshake.done()
        if handshaking:
            self._handshake.set_exception(exc)
            self._handshake.exception()  # retrieved by open_connection, or nobody (server)
            if self._server_side:
                logger.warning("TLS handshake with %s failed: %s", _fmt_addr(self._peername), _describe(exc))
        self._reader.set_exception(exc)  # type: ignore[arg-type]
        self._wake_drain_waiters()
        if self._transport is not None:
            self._transport.close()

    def _wake_drain_waiters(self) -> None:
        while self._drain_waiters:
            waiter = self._drain_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    # ------------------------------------------------------------ application verbs (called by the writer)
    def send(self, data: bytes) -> None:
        if self._error is not None or self._transport is None or self._transport.is_closing():
            return  # dropped, like asyncio transports after close; drain() reports the error
        self._conn.send_data(data)
        self._transmit()

    def close_write(self) -> None:
        if self._transport is None or self._error is not None or self._conn.local_closed:
            return
        self._conn.close()
        self._transmit()

    def close(self) -> None:
        """close_notify (when possible), then close the transport. Never raises."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        conn = self._conn
        if self._error is None and conn.handshake_complete and not conn.local_closed and not conn.terminated:
            try:
                conn.close()
                self._transmit()
            except (TLSError, OSError):
                pass
        transport.close()

    async def drain(self) -> None:
        if self._error is not None:
            raise self._error
        transport = self._transport
        if transport is not None and transport.is_closing():
            # Let connection_lost run first (same as asyncio.StreamWriter.drain).
            await asyncio.sleep(0)
        while self._write_paused and self._transport is not None:
            waiter = self._loop.create_future()
            self._drain_waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._drain_waiters:
                    self._drain_waiters.remove(waiter)
        if self._error is not None:
            raise self._error
        if self._closed.done():
            raise ConnectionResetError("connection lost")

    async def wait_handshake(self) -> None:
        await self._handshake

    # ------------------------------------------------------------ introspection
    @property
    def transport(self) -> Optional[asyncio.Transport]:
        return self._transport

    @property
    def connection(self) -> TLSConnection:
        return self._conn

    @property
    def writer(self) -> "TLSStreamWriter":
        return self._writer

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        conn = self._conn
        if name == "cipher_suite":
            return conn.cipher_suite
        if name == "alpn_protocol":
            return conn.alpn_protocol
        if name == "tls_version":
            return _VERSION_NAMES.get(conn.version, conn.version) if conn.handshake_complete else None
        if name in ("peercert", "peer_certificates"):
            return list(conn.peer_certificates or [])
        if name == "server_name":
            return conn.server_name
        if name == "group":
            return conn.group
        if name == "hello_retry":
            return conn.hello_retry
        if name == "tls_connection":
            return conn
        if name == "peername" and self._transport is None:
            return self._peername if self._peername is not None else default
        if self._transport is not None:
            return self._transport.get_extra_info(name, default)
        return default


class TLSStreamWriter:
    """The writing half of a TLS stream, shaped like :class:`asyncio.StreamWriter`.

    ``drain()`` has real backpressure: it waits while the TCP transport's
    write buffer is above its high-water mark.
    """

    def __init__(self, protocol: TLSStreamProtocol, reader: asyncio.StreamReader) -> None:
        self._protocol = protocol
        self._reader = reader

    @property
    def transport(self) -> Optional[asyncio.Transport]:
        """The underlying *TCP* transport (writing to it bypasses TLS)."""
        return self._protocol.transport

    @property
    def protocol(self) -> TLSStreamProtocol:
        return self._protocol

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue application data (encrypted immediately; call :meth:`drain`)."""
        if not data:
            return
        self._protocol.send(data if type(data) is bytes else bytes(data))

    def writelines(self, data: Any) -> None:
        self.write(b"".join(data))

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        """Send close_notify (half-close); the reader keeps receiving."""
        self._protocol.close_write()

    def close(self) -> None:
        """Send close_notify and close the TCP connection (after flushing)."""
        self._protocol.close()

    def is_closing(self) -> bool:
        transport = self._protocol.transport
        return transport is None or transport.is_closing()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._protocol._closed)

    async def drain(self) -> None:
        """Wait until the write buffer is below its high-water mark.

        Raises the connection's error (e.g. a :class:`~tcpls.errors.RemoteAlert`).
        """
        await self._protocol.drain()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """TLS details (``cipher_suite``, ``alpn_protocol``, ``tls_version``,
        ``peercert``/``peer_certificates``, ``server_name``, ``group``,
        ``hello_retry``, ``tls_connection``) or transport details (``socket``,
        ``peername``, ``sockname``, ...)."""
        return self._protocol.get_extra_info(name, default)

    def __repr__(self) -> str:
        return f"<TLSStreamWriter peer={self._protocol._peername!r} closing={self.is_closing()}>"


def _fmt_addr(addr: Any) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"{addr[0]}:{addr[1]}"
    return str(addr)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
