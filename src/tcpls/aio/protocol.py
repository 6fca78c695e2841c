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
   transport. After it, writes are dropped and ``drain()`` raises. The close
   lingers (see :meth:`_close_after_failure`) so that the alert is not lost.
5. The adapter's own state is only: the handshake future, the closed future
   (set by ``connection_lost``), the first error, and the write-pause mirror.
   Everything else (handshake done? half-closed?) is asked of the engine.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket as _socket
import time
from collections import deque
from typing import Any, Awaitable, Callable, Optional

from .. import ktls as _ktls
from ..errors import ProtocolError, TLSError
from ..tls import events as _ev
from ..tls.connection import TLSConnection

__all__ = ["TLSStreamProtocol", "TLSStreamWriter", "ClientConnectedCallback", "logger"]

logger = logging.getLogger("tcpls.aio")

# Seconds a failed connection keeps draining the peer's input after the
# alert and FIN before it is closed (see TLSStreamProtocol._close_after_failure).
_FAILURE_LINGER = 2.0

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
        self._ktls: Optional[_ktls.KernelRecordLayer] = None  # see enable_ktls()
        self._ktls_sock: Optional[_socket.socket] = None  # a dup of the TCP socket, for recvmsg/sendmsg
        self._ktls_pending: list = []  # engine actions waiting for the transport buffer to empty
        self._ktls_close = False
        self.ktls_reason: Optional[str] = None

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
        if self._ktls is not None:
            self._ktls_transmit()

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
            self._close_after_failure(self._transport)

    def _close_after_failure(self, transport: asyncio.Transport) -> None:
        """Close after a fatal error without destroying the alert.

        Closing a socket whose peer is still sending (a large record or
        flight cut short by the alert) makes the kernel answer with a TCP
        reset, and the peer may lose the alert it has not read yet. So send
        FIN after the alert, keep reading and dropping input (``data_received``
        ignores it once failed) until the peer closes, and close anyway after
        ``_FAILURE_LINGER`` seconds.
        """
        if self._ktls is not None or transport.is_closing() or not transport.can_write_eof():
            transport.close()
            return
        try:
            transport.write_eof()
            transport.resume_reading()  # the reader may have paused it; input is dropped now
        except (OSError, RuntimeError):
            transport.close()
            return
        self._loop.call_later(_FAILURE_LINGER, transport.close)

    def _wake_drain_waiters(self) -> None:
        while self._drain_waiters:
            waiter = self._drain_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    # ------------------------------------------------------------ application verbs (called by the writer)
    def send(self, data: bytes) -> None:
        if self._error is not None or self._transport is None or self._transport.is_closing():
            return  # dropped, like asyncio transports after close; drain() reports the error
        if self._ktls is not None and self._ktls.tx:
            self._transport.write(data)  # the kernel encrypts
            return
        self._conn.send_data(data)
        self._transmit()

    def close_write(self) -> None:
        if self._transport is None or self._error is not None or self._conn.local_closed:
            return
        self._conn.close()
        self._transmit()

    def key_update(self, request_peer_update: bool = True) -> None:
        """Send a KeyUpdate (raises :class:`~tcpls.ktls.KTLSRekeyError` if the kernel cannot rekey)."""
        if self._ktls is not None:
            self._ktls.check_key_update(request_peer_update)
        self._conn.key_update(request_peer_update)
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
        if self._ktls_pending:
            self._ktls_close = True  # closed once the close_notify is out
            return
        self._close_ktls_sock()
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

    # ------------------------------------------------------------ kernel TLS (see tcpls.ktls, docs/ktls.md)
    async def enable_ktls(self, mode: Any = "auto", *, tx: bool = True, rx: bool = True, key_update: str = "abort") -> bool:
        """Hand the record layer to the kernel; same arguments as
        :meth:`tcpls.sync.TLSSocket.enable_ktls`. With RX offloaded the
        protocol reads with ``recvmsg`` on a duplicate of the socket's fd
        (``loop.add_reader``) instead of the transport."""
        await self._handshake
        if self._ktls is not None:
            return True
        transport = self._transport
        if self._error is not None or transport is None or transport.is_closing():
            raise self._error or ConnectionResetError("connection lost")
        if _ktls._check_mode(mode) == "off":
            return False
        loop = self._loop
        raw = transport.get_extra_info("socket")
        sock = _socket.socket(fileno=os.dup(raw.fileno()))
        sock.setblocking(False)
        transport.pause_reading()
        layer = None
        try:
            conn = self._conn
            while rx and (need := conn.bytes_to_record_boundary()) > 0 and self._error is None:
                data = await loop.sock_recv(sock, need)
                if not data:
                    self.eof_received()
                    break
                self.data_received(data)
            while transport.get_write_buffer_size() and not transport.is_closing():
                await asyncio.sleep(0.002)  # what the engine wrote must reach the socket first
            if self._error is not None:
                raise self._error
            layer, reason = _ktls.offload(sock, conn, mode, tx=tx, rx=rx, key_update=key_update)
        except BaseException as exc:
            layer = getattr(exc, "layer", None)  # KTLSUnavailable with TX left in the kernel
            if isinstance(exc, _ktls.KTLSUnavailable):
                self.ktls_reason = exc.reason
            if layer is not None:
                self._ktls, self._ktls_sock = layer, sock
            else:
                sock.close()
            if self._transport is not None and not self._transport.is_closing():
                transport.resume_reading()
            raise
        self.ktls_reason = reason or None
        if layer is None:
            sock.close()
            transport.resume_reading()
            return False
        self._ktls, self._ktls_sock = layer, sock
        if layer.rx:
            loop.add_reader(sock.fileno(), self._ktls_readable)
        else:
            transport.resume_reading()
        return True

    def _ktls_readable(self) -> None:
        """RX in the kernel: one ``recvmsg``, delivered like ``data_received``."""
        layer, sock = self._ktls, self._ktls_sock
        assert layer is not None and sock is not None
        try:
            ctype, data = layer.read(256 * 1024)
        except (BlockingIOError, InterruptedError):
            return
        except ProtocolError as exc:
            self._stop_ktls_reader()
            self._ktls_pending.append(_ktls.SendRecord(21, bytes((2, exc.alert))))
            self._fail(exc)
            return
        except (OSError, TLSError) as exc:
            self._stop_ktls_reader()
            self._fail(exc)
            return
        if ctype == 23 and data:
            self._reader.feed_data(data)
            return
        if ctype == 23:  # TCP EOF
            self._stop_ktls_reader()
            keep_open = self.eof_received()
            if not keep_open and self._transport is not None:
                self.close()
            return
        try:
            self._conn.receive_plaintext_record(ctype, data, time.time())
        except ProtocolError as exc:
            self._stop_ktls_reader()
            self._fail(exc)
            return
        self._process_events()
        self._transmit()
        if self._conn.peer_closed:
            self._stop_ktls_reader()

    def _stop_ktls_reader(self) -> None:
        if self._ktls_sock is not None and self._ktls is not None and self._ktls.rx:
            try:
                self._loop.remove_reader(self._ktls_sock.fileno())
            except (ValueError, OSError):
                pass

    def _close_ktls_sock(self) -> None:
        if self._ktls_sock is not None:
            self._stop_ktls_reader()
            self._ktls_sock.close()
            self._ktls_sock = None

    def _ktls_transmit(self) -> None:
        """Send queued control records / install keys once the transport's buffer is empty."""
        layer = self._ktls
        assert layer is not None
        self._ktls_pending.extend(layer.actions.drain())
        transport = self._transport
        if not self._ktls_pending or transport is None or self._ktls_sock is None:
            return
        if transport.get_write_buffer_size():
            self._loop.call_later(0.002, self._ktls_transmit)
            return
        items, self._ktls_pending = self._ktls_pending, []
        try:
            layer.perform(items, write=transport.write)
        except (_ktls.KTLSRekeyError, OSError) as exc:
            self._fail(exc)
            return
        if self._ktls_close:
            self._ktls_close = False
            self._close_ktls_sock()
            transport.close()

    async def sendfile(self, file: Any, offset: int = 0, count: Optional[int] = None) -> int:
        """Send a file: ``loop.sendfile`` (zero-copy) with TX in the kernel, else read and write."""
        await self._handshake
        if self._error is not None:
            raise self._error
        transport = self._transport
        if self._ktls is not None and self._ktls.tx and transport is not None:
            return await self._loop.sendfile(transport, file, offset, count)
        file.seek(offset)
        total = 0
        while count is None or total < count:
            chunk = file.read(128 * 1024 if count is None else min(128 * 1024, count - total))
            if not chunk:
                break
            self.send(chunk)
            total += len(chunk)
            await self.drain()
        return total

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
        if name == "ktls":
            return self._ktls.description if self._ktls is not None else None
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

    async def enable_ktls(self, mode: Any = "auto", *, tx: bool = True, rx: bool = True, key_update: str = "abort") -> bool:
        """Hand the record layer to the Linux kernel (see ``docs/ktls.md``)."""
        return await self._protocol.enable_ktls(mode, tx=tx, rx=rx, key_update=key_update)

    @property
    def ktls(self) -> Optional[str]:
        """``"TX+RX"``/``"TX"``/``"RX"`` when the kernel protects records, else None."""
        return self._protocol.get_extra_info("ktls")

    @property
    def ktls_reason(self) -> Optional[str]:
        """Why kTLS is not (fully) used, after :meth:`enable_ktls` in mode ``"auto"``."""
        return self._protocol.ktls_reason

    def key_update(self, request_peer_update: bool = True) -> None:
        """Send a KeyUpdate (RFC 9846 §4.6.3)."""
        self._protocol.key_update(request_peer_update)

    async def sendfile(self, file: Any, offset: int = 0, count: Optional[int] = None) -> int:
        """Send ``file`` (``loop.sendfile``, zero-copy, when TX is in the kernel)."""
        return await self._protocol.sendfile(file, offset, count)

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
