"""Blocking, socket-like TLS 1.3 over one TCP socket.

Theory of operation
-------------------
A :class:`TLSSocket` owns a connected TCP socket and a sans-IO
:class:`~tcpls.tls.connection.TLSConnection` (the *engine*). Like trio's
``SSLStream._retry``, every public operation is the same short loop:

1. act on the engine (``send_data``, ``close`` or nothing);
2. write what the engine queued (``data_to_send()``) in one ``sendall``;
3. if the operation cannot finish yet (handshake pending, no application
   data buffered), do exactly **one** blocking ``recv`` of up to 256 KiB, feed
   it to the engine, collect its events, and go back to 2.

Invariants (each method keeps them; read these before changing anything):

* The engine is only touched with ``_engine_lock`` held, and that lock is
  never held across a blocking socket call.
* Engine output leaves the engine in order: it is moved from
  ``data_to_send()`` into the ``_out`` deque under ``_engine_lock``, and the
  deque is written to the socket only by the holder of ``_send_lock``. After
  releasing ``_send_lock`` a flusher re-checks ``_out``, so output queued by
  a thread that found the lock busy is never stranded.
* Decrypted application bytes live in ``_rbuf[_rpos:]``; the socket is read
  only when that is empty. A timed-out ``recv`` consumed nothing, so the
  connection stays usable and the call can be retried.
* One reader (``_recv_lock``) and one writer (``_send_lock``) may run at the
  same time in two threads (e.g. stdin pump + stdout pump). The handshake runs
  once, under ``_handshake_lock``.
* After a :class:`~tcpls.errors.ProtocolError` the socket is *broken*: the
  error (whose alert has been written out, followed by a TCP FIN) is kept in
  ``_error`` and re-raised by every later read or write; ``close()`` then
  drains the peer's input for at most ``FAILURE_LINGER`` seconds before
  closing, so that the kernel does not reset the connection (and destroy
  the alert) under a peer that is still sending.

Lock order: ``_handshake_lock`` → ``_recv_lock`` → ``_send_lock`` →
``_engine_lock``.
"""

from __future__ import annotations

import io
import socket as _socket
import threading
import time
from collections import deque
from typing import Any, Optional

from .. import ktls as _ktls
from ..errors import ProtocolError, TLSError
from ..tls import events as _ev
from ..tls.config import TLSConfig
from ..tls.connection import TLSConnection

__all__ = ["TLSSocket", "TLSListener", "SocketIO", "connect", "create_server", "version_name"]

RECV_SIZE = 256 * 1024  # one socket read; large reads matter for throughput
# Plaintext handed to the engine per write. Small enough that the plaintext,
# the records and the kernel copy stay in a core's L2 cache (measured: 512 KiB
# batches were ~2x slower than 64-128 KiB on a 512 KiB-L2 machine).
SEND_CHUNK = 128 * 1024
_IOV_BATCH = 512  # buffers per sendmsg (below IOV_MAX = 1024)
_DataReceived = _ev.DataReceived
#: Seconds ``close()`` of a failed socket keeps reading and dropping the
#: peer's input after the alert and FIN (see :meth:`TLSSocket._linger`).
FAILURE_LINGER = 2.0


def version_name(version: Optional[int]) -> Optional[str]:
    """``0x0304`` → ``"TLSv1.3"`` (None stays None)."""
    if version is None:
        return None
    return {0x0304: "TLSv1.3", 0x0303: "TLSv1.2", 0xFEFC: "DTLSv1.3"}.get(version, f"0x{version:04x}")


def _default_server_name(host: str, config: TLSConfig) -> Optional[str]:
    return config.server_name or host or None


class TLSSocket:
    """A TLS 1.3 connection with the blocking API of :class:`socket.socket`.

    Create one with :func:`connect`, :meth:`TLSListener.accept` or
    :meth:`wrap`. The handshake runs in :meth:`do_handshake`, or on first use
    of ``send``/``recv``.
    """

    def __init__(self, sock: _socket.socket, conn: TLSConnection, *, server_side: bool) -> None:
        self._sock = sock
        self._conn = conn
        self._server_side = server_side
        self._engine_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._recv_lock = threading.Lock()
        self._handshake_lock = threading.Lock()
        self._out: deque[bytes] = deque()
        self._rbuf = b""
        self._rxbuf = bytearray(RECV_SIZE)
        self._rxview = memoryview(self._rxbuf)
        self._rpos = 0
        self._started = False
        self._error: Optional[BaseException] = None
        self._closed = False
        self._ktls: Optional[_ktls.KernelRecordLayer] = None  # set by enable_ktls()
        self._ktls_after_handshake: Optional[tuple[str, str]] = None
        self.ktls_reason: Optional[str] = None

    # ------------------------------------------------------------ creation
    @classmethod
    def wrap(
        cls,
        sock: _socket.socket,
        config: TLSConfig,
        server_side: bool = False,
        server_name: Optional[str] = None,
        session: Any = None,
    ) -> "TLSSocket":
        """Wrap a connected TCP socket; the handshake has not run yet.

        ``session`` (client): a :class:`~tcpls.tls.session.Session` to resume.
        """
        config.validate(server_side=server_side)
        if server_side:
            conn = TLSConnection(config, server_side=True)
        else:
            conn = TLSConnection(config, server_side=False, server_name=server_name or config.server_name, session=session)
        return cls(sock, conn, server_side=server_side)

    # ------------------------------------------------------------ engine plumbing
    def _queue_output(self) -> None:
        """Move engine output to ``_out``. Caller holds ``_engine_lock``."""
        bufs = self._conn.buffers_to_send()
        if bufs:
            self._out.extend(bufs)

    def _flush(self, block: bool = True) -> None:
        """Write ``_out`` to the socket (see the ordering invariant)."""
        out = self._out
        while out:
            if not self._send_lock.acquire(block):
                return  # the holder re-checks ``_out`` after releasing
            try:
                while out:
                    bufs = list(out)
                    out.clear()
                    self._send_buffers(bufs)
            finally:
                self._send_lock.release()

    def _send_buffers(self, bufs: list) -> None:
        """Write all of ``bufs`` with scatter-gather ``sendmsg`` (no joining copy)."""
        sendmsg = self._sock.sendmsg
        while bufs:
            batch = bufs[:_IOV_BATCH]
            sent = sendmsg(batch)
            total = 0
            i = 0
            for i, b in enumerate(batch):
                total += len(b)
                if total > sent:
                    # Partially written buffer: keep its tail.
                    bufs[i] = memoryview(b)[len(b) - (total - sent) :]
                    del bufs[:i]
                    break
            else:
                del bufs[: len(batch)]

    def _read_once(self, limit: int = 0) -> None:
        """One socket read fed to the engine. Caller holds ``_recv_lock``."""
        if self._ktls is not None and self._ktls.rx:
            return self._read_once_kernel()
        n = self._sock.recv_into(self._rxbuf, limit)  # one reusable buffer: no allocation per read
        data = self._rxview[:n]
        conn = self._conn
        error: Optional[ProtocolError] = None
        chunks = None
        with self._engine_lock:
            try:
                if data:
                    conn.receive_data_borrowed(data, time.time())
                else:
                    conn.receive_eof()
            except ProtocolError as exc:
                error = exc
            # Deliver what was decrypted before an error, too.
            while (event := conn.next_event()) is not None:
                if type(event) is _DataReceived or type(event) is _ev.EarlyDataReceived:
                    if chunks is None:
                        chunks = [event.data]
                    else:
                        chunks.append(event.data)
            self._queue_output()
        if chunks is not None:
            rest = self._rbuf[self._rpos :]
            self._rbuf = b"".join([rest, *chunks]) if (rest or len(chunks) > 1) else chunks[0]
            self._rpos = 0
        if error is not None:
            self._error = error
            try:
                self._flush()  # the fatal alert the engine queued
            except OSError:
                pass
            self._send_fin()
            raise error
        if not data and not conn.peer_closed and not conn.terminated and not conn.handshake_complete:
            self._error = ConnectionResetError("connection closed by peer during the TLS handshake")
            raise self._error
        if self._out:
            self._flush(block=False)

    def _check(self) -> None:
        if self._error is not None:
            raise self._error
        if self._closed:
            raise OSError(9, "Bad file descriptor (TLSSocket is closed)")

    # ------------------------------------------------------------ handshake
    def do_handshake(self) -> None:
        """Run the handshake to completion (no-op once it is done).

        Raises:
            LocalProtocolError: we rejected the peer (alert already sent).
            RemoteAlert: the peer rejected us.
            ConnectionResetError: the peer closed the TCP connection.
            TimeoutError: the socket timeout expired (the handshake can be resumed).
        """
        if self._conn.handshake_complete:
            return
        with self._handshake_lock:
            self._check()
            conn = self._conn
            if not self._started:
                self._started = True
                with self._engine_lock:
                    conn.start_handshake(time.time())
                    self._queue_output()
            self._flush()
            while not conn.handshake_complete:
                with self._recv_lock:
                    self._check()
                    self._read_once()
            self._flush()
        if self._ktls_after_handshake is not None:
            mode, key_update = self._ktls_after_handshake
            self._ktls_after_handshake = None
            self.enable_ktls(mode, key_update=key_update)

    # ------------------------------------------------------------ sending
    def send(self, data: Any) -> int:
        """Send all of ``data`` (TLS records are all-or-nothing); returns ``len(data)``."""
        self.sendall(data)
        return len(data)

    def sendall(self, data: Any) -> None:
        """Encrypt and write all of ``data``."""
        if not self._conn.handshake_complete:
            self.do_handshake()
        if self._error is not None:
            raise self._error
        if self._ktls is not None and self._ktls.tx:
            with self._send_lock:
                self._sock.sendall(data)  # the kernel encrypts
            return
        if type(data) is not bytes:
            data = bytes(data)  # our own copy: the caller may reuse its buffer
        n = len(data)
        conn = self._conn
        lock = self._engine_lock
        if n <= SEND_CHUNK:
            with lock:
                conn.send_data(data)
                self._queue_output()
            self._flush()
            return
        view = memoryview(data)
        for i in range(0, n, SEND_CHUNK):
            with lock:
                conn.send_data(view[i : i + SEND_CHUNK])
                self._queue_output()
            self._flush()

    write = sendall

    # ------------------------------------------------------------ receiving
    def recv(self, bufsize: int = RECV_SIZE, flags: int = 0) -> bytes:
        """Up to ``bufsize`` bytes of application data; ``b""`` after the peer's close_notify.

        Raises the engine's error if the TCP connection ends without
        close_notify (truncation), and ``TimeoutError`` on timeout (retry is safe).
        """
        if flags:
            raise ValueError("flags are not supported on a TLSSocket")
        if not self._conn.handshake_complete:
            self.do_handshake()
        with self._recv_lock:
            while True:
                buf, pos = self._rbuf, self._rpos
                if pos < len(buf):
                    end = pos + bufsize
                    if pos == 0 and end >= len(buf):
                        self._rbuf = b""
                        return buf
                    if end >= len(buf):
                        self._rbuf, self._rpos = b"", 0
                        return buf[pos:]
                    self._rpos = end
                    return buf[pos:end]
                if bufsize <= 0:
                    return b""
                self._check()
                if self._conn.peer_closed:
                    return b""
                self._read_once()

    read = recv

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        """Like :meth:`recv` but into ``buffer``; returns the number of bytes."""
        view = memoryview(buffer).cast("B")
        if nbytes <= 0 or nbytes > len(view):
            nbytes = len(view)
        if flags:
            raise ValueError("flags are not supported on a TLSSocket")
        if not self._conn.handshake_complete:
            self.do_handshake()
        with self._recv_lock:
            while True:
                buf, pos = self._rbuf, self._rpos
                avail = len(buf) - pos
                if avail > 0:
                    k = min(avail, nbytes)
                    view[:k] = memoryview(buf)[pos : pos + k]
                    if k == avail:
                        self._rbuf, self._rpos = b"", 0
                    else:
                        self._rpos = pos + k
                    return k
                if nbytes == 0:
                    return 0
                self._check()
                if self._conn.peer_closed:
                    return 0
                self._read_once()

    def pending(self) -> int:
        """Decrypted bytes buffered and readable without blocking."""
        return len(self._rbuf) - self._rpos

    # ------------------------------------------------------------ kernel TLS, KeyUpdate, sendfile
    def enable_ktls(self, mode: Any = "auto", *, tx: bool = True, rx: bool = True, key_update: str = "abort") -> bool:
        """Hand the record layer to the Linux kernel (kTLS); see ``docs/ktls.md``.

        Args:
            mode: ``"auto"`` (offload where possible, else stay in userspace
                and set :attr:`ktls_reason`), ``"required"`` (raise if not
                possible) or ``"off"``.
            tx / rx: which directions to offload.
            key_update: ``"abort"`` (offload even if the kernel cannot
                rekey; a KeyUpdate then ends the connection) or
                ``"decline"`` (stay in userspace on such kernels).

        Returns:
            True if at least one direction is now protected by the kernel.

        Raises:
            KTLSUnavailable: mode ``"required"`` and kTLS cannot be used.
        """
        if not self._conn.handshake_complete:
            self.do_handshake()
        with self._handshake_lock, self._recv_lock:
            self._check()
            if self._ktls is not None:
                return True
            self._flush()
            conn = self._conn
            if rx and _ktls._check_mode(mode) != "off":
                # The kernel must start at a record header: finish a partly read record.
                while (need := conn.bytes_to_record_boundary()) > 0:
                    self._read_once(need)
            with self._send_lock:
                with self._engine_lock:
                    self._queue_output()
                if self._out:
                    bufs = list(self._out)
                    self._out.clear()
                    self._send_buffers(bufs)
                with self._engine_lock:
                    try:
                        layer, reason = _ktls.offload(self._sock, conn, mode, tx=tx, rx=rx, key_update=key_update)
                    except _ktls.KTLSUnavailable as exc:
                        self._ktls = exc.layer
                        self.ktls_reason = exc.reason
                        raise
            self._ktls = layer
            self.ktls_reason = reason or None
            return layer is not None

    @property
    def ktls(self) -> Optional[str]:
        """``"TX+RX"``, ``"TX"`` or ``"RX"`` when the kernel protects records, else None."""
        return self._ktls.description if self._ktls is not None else None

    def key_update(self, request_peer_update: bool = True) -> None:
        """Send a KeyUpdate (RFC 9846 §4.6.3).

        Raises:
            KTLSRekeyError: the kernel owns a key it cannot replace (nothing was sent).
        """
        if not self._conn.handshake_complete:
            self.do_handshake()
        self._check()
        if self._ktls is not None:
            self._ktls.check_key_update(request_peer_update)
        with self._engine_lock:
            self._conn.key_update(request_peer_update)
            self._queue_output()
        self._flush()
        if self._ktls is not None:
            self._ktls_flush()

    def sendfile(self, file: Any, offset: int = 0, count: Optional[int] = None) -> int:
        """Send ``count`` bytes (default: to EOF) of ``file`` from ``offset``.

        With TX in the kernel this is :func:`os.sendfile` (no copy through
        Python); otherwise the file is read and encrypted in userspace. Like
        :meth:`socket.socket.sendfile`, returns the bytes sent and leaves the
        file position after them.
        """
        if not self._conn.handshake_complete:
            self.do_handshake()
        self._check()
        if self._ktls is not None and self._ktls.tx:
            with self._send_lock:
                return self._sock.sendfile(file, offset, count)
        file.seek(offset)
        total = 0
        while count is None or total < count:
            chunk = file.read(SEND_CHUNK if count is None else min(SEND_CHUNK, count - total))
            if not chunk:
                break
            self.sendall(chunk)
            total += len(chunk)
        return total

    def _ktls_flush(self) -> None:
        """Carry out what the engine queued for the kernel (control records, new keys)."""
        layer = self._ktls
        assert layer is not None
        with self._send_lock:
            with self._engine_lock:
                items = layer.actions.drain()
            if items:
                try:
                    layer.perform(items)
                except _ktls.KTLSRekeyError as exc:
                    self._error = exc
                    raise

    def _read_once_kernel(self) -> None:
        """One ``recvmsg`` from the kernel (TLS_RX). Caller holds ``_recv_lock``."""
        layer = self._ktls
        assert layer is not None
        try:
            ctype, data = layer.read(RECV_SIZE)
        except ProtocolError as exc:
            self._error = exc
            with self._engine_lock:
                layer.actions.append(_ktls.SendRecord(21, bytes((2, exc.alert))))
            try:
                self._ktls_flush()
            except (OSError, TLSError):
                pass
            self._send_fin()
            raise
        if ctype == 23 and data:
            rest = self._rbuf[self._rpos :]
            self._rbuf = rest + data if rest else data
            self._rpos = 0
            return
        conn = self._conn
        error: Optional[BaseException] = None
        chunks = []
        with self._engine_lock:
            try:
                if ctype == 23:
                    conn.receive_eof()
                else:
                    conn.receive_plaintext_record(ctype, data, time.time())
            except ProtocolError as exc:
                error = exc
            while (event := conn.next_event()) is not None:
                if type(event) is _DataReceived:
                    chunks.append(event.data)
            self._queue_output()
        if chunks:
            self._rbuf = b"".join([self._rbuf[self._rpos :], *chunks])
            self._rpos = 0
        try:
            self._flush()
            self._ktls_flush()
        except OSError:
            if error is None:
                raise
        if error is not None:
            self._error = error
            self._send_fin()
            raise error

    # ------------------------------------------------------------ closing
    def _send_fin(self) -> None:
        """After a fatal alert: TCP FIN, so the peer reads the alert and then EOF."""
        try:
            self._sock.shutdown(_socket.SHUT_WR)
        except OSError:
            pass

    def _linger(self) -> None:
        """Close after a fatal error without destroying the alert.

        Closing a socket whose peer is still sending (a record or flight cut
        short by our alert) makes the kernel answer with a TCP reset, and
        the peer may lose the alert it has not read yet. So read and drop
        input until the peer closes, for at most ``FAILURE_LINGER`` seconds
        (the alert and FIN went out when the error was raised).
        """
        deadline = time.monotonic() + FAILURE_LINGER
        sock = self._sock
        try:
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                if not sock.recv(RECV_SIZE):
                    return
        except OSError:  # timeout, reset, or kTLS refusing a control record
            return

    def shutdown_write(self) -> None:
        """Send close_notify (half-close); the peer's data can still be read."""
        if not self._conn.handshake_complete:
            self.do_handshake()
        if self._error is not None:
            raise self._error
        with self._engine_lock:
            if self._conn.local_closed:
                return
            self._conn.close()
            self._queue_output()
        self._flush()
        if self._ktls is not None:
            self._ktls_flush()

    def shutdown(self, how: int) -> None:
        """``SHUT_WR``: close_notify (half-close); ``SHUT_RD``/``SHUT_RDWR`` also shut the TCP read side."""
        if how in (_socket.SHUT_WR, _socket.SHUT_RDWR):
            self.shutdown_write()
        if how in (_socket.SHUT_RD, _socket.SHUT_RDWR):
            self._sock.shutdown(_socket.SHUT_RD)

    def close(self) -> None:
        """Send close_notify if possible, then close the TCP socket. Never raises on a dead peer."""
        if self._closed:
            return
        self._closed = True
        try:
            conn = self._conn
            if self._error is None and (self._started or conn.handshake_complete):
                with self._engine_lock:
                    if conn.handshake_complete and not conn.local_closed and not conn.terminated:
                        conn.close()
                    self._queue_output()
                self._flush()
                if self._ktls is not None:
                    self._ktls_flush()
        except (OSError, TLSError):
            pass
        finally:
            if isinstance(self._error, ProtocolError):
                self._linger()
            self._sock.close()

    def detach(self) -> _socket.socket:
        """Give up the TCP socket without sending anything (the TLS state is lost)."""
        self._closed = True
        return self._sock

    def __enter__(self) -> "TLSSocket":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            if not self._closed:
                self._sock.close()
        except Exception:
            pass

    # ------------------------------------------------------------ socket-like
    def settimeout(self, timeout: Optional[float]) -> None:
        self._sock.settimeout(timeout)

    def gettimeout(self) -> Optional[float]:
        return self._sock.gettimeout()

    def setblocking(self, flag: bool) -> None:
        if not flag:
            raise ValueError("non-blocking mode is not supported; use settimeout() or tcpls.aio")
        self._sock.setblocking(True)

    def fileno(self) -> int:
        return self._sock.fileno()

    def getpeername(self) -> Any:
        return self._sock.getpeername()

    def getsockname(self) -> Any:
        return self._sock.getsockname()

    def setsockopt(self, *args: Any) -> None:
        self._sock.setsockopt(*args)

    def getsockopt(self, *args: Any) -> Any:
        return self._sock.getsockopt(*args)

    @property
    def socket(self) -> _socket.socket:
        """The underlying TCP socket (writing to it directly corrupts the TLS stream)."""
        return self._sock

    @property
    def closed(self) -> bool:
        return self._closed

    def makefile(
        self,
        mode: str = "r",
        buffering: Optional[int] = None,
        *,
        encoding: Optional[str] = None,
        errors: Optional[str] = None,
        newline: Optional[str] = None,
    ) -> Any:
        """A file object over this connection, like :meth:`socket.socket.makefile`.

        Closing the file does not close the socket.
        """
        if not set(mode) <= {"r", "w", "b"}:
            raise ValueError(f"invalid mode {mode!r} (only r, w, b allowed)")
        reading = "r" in mode
        writing = "w" in mode
        binary = "b" in mode
        if not reading and not writing:
            raise ValueError("mode must contain 'r' and/or 'w'")
        raw = SocketIO(self, ("r" if reading else "") + ("w" if writing else ""))
        if buffering is None:
            buffering = -1
        if buffering < 0:
            buffering = io.DEFAULT_BUFFER_SIZE
        if buffering == 0:
            if not binary:
                raise ValueError("unbuffered streams must be binary")
            return raw
        if reading and writing:
            buffer: Any = io.BufferedRWPair(raw, raw, buffering)
        elif reading:
            buffer = io.BufferedReader(raw, buffering)
        else:
            buffer = io.BufferedWriter(raw, buffering)
        if binary:
            return buffer
        text = io.TextIOWrapper(buffer, encoding, errors, newline)
        text.mode = mode  # type: ignore[misc]
        return text

    # ------------------------------------------------------------ negotiated parameters
    @property
    def connection(self) -> TLSConnection:
        """The sans-IO engine (read-only use)."""
        return self._conn

    @property
    def server_side(self) -> bool:
        return self._server_side

    @property
    def handshake_complete(self) -> bool:
        return self._conn.handshake_complete

    @property
    def version(self) -> Optional[str]:
        """``"TLSv1.3"`` once the handshake is complete."""
        return version_name(self._conn.version) if self._conn.handshake_complete else None

    @property
    def cipher_suite(self) -> Any:
        return self._conn.cipher_suite

    @property
    def group(self) -> Any:
        return self._conn.group

    @property
    def alpn_protocol(self) -> Optional[str]:
        return self._conn.alpn_protocol

    @property
    def server_name(self) -> Optional[str]:
        return self._conn.server_name

    @property
    def peer_certificates(self) -> list:
        return list(self._conn.peer_certificates or [])

    @property
    def hello_retry(self) -> bool:
        return bool(self._conn.hello_retry)

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("open" if self._conn.handshake_complete else "handshaking")
        try:
            fd = self._sock.fileno()
        except OSError:
            fd = -1
        return f"<TLSSocket fd={fd} {'server' if self._server_side else 'client'} {state}>"


class SocketIO(io.RawIOBase):
    """Raw binary I/O over a :class:`TLSSocket` (the :class:`socket.SocketIO` of tcpls)."""

    def __init__(self, sock: TLSSocket, mode: str) -> None:
        super().__init__()
        self._tls = sock
        self._mode = mode
        self._reading = "r" in mode
        self._writing = "w" in mode

    def readinto(self, b: Any) -> int:
        self._checkClosed()
        if not self._reading:
            raise io.UnsupportedOperation("not readable")
        return self._tls.recv_into(b)

    def write(self, b: Any) -> int:
        self._checkClosed()
        if not self._writing:
            raise io.UnsupportedOperation("not writable")
        n = len(memoryview(b).cast("B"))
        self._tls.sendall(b)
        return n

    def readable(self) -> bool:
        return self._reading and not self.closed

    def writable(self) -> bool:
        return self._writing and not self.closed

    def seekable(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._tls.fileno()

    @property
    def name(self) -> int:
        return self._tls.fileno() if not self.closed else -1

    @property
    def mode(self) -> str:
        return self._mode + "b"


class TLSListener:
    """A listening TCP socket whose accepted connections speak TLS (server side)."""

    def __init__(self, sock: _socket.socket, config: TLSConfig, *, ktls: Any = None, ktls_key_update: str = "abort") -> None:
        self._sock = sock
        self._config = config
        self._ktls = (ktls, ktls_key_update) if ktls and ktls != "off" else None

    def accept(self) -> tuple[TLSSocket, Any]:
        """Accept one TCP connection. The handshake runs lazily on first use
        of the returned socket (or with :meth:`TLSSocket.do_handshake`), so a
        slow client never blocks the accept loop."""
        sock, addr = self._sock.accept()
        try:
            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        except OSError:
            pass
        tls = TLSSocket.wrap(sock, self._config, server_side=True)
        tls._ktls_after_handshake = self._ktls  # kTLS right after the lazy handshake
        return tls, addr

    def close(self) -> None:
        self._sock.close()

    def getsockname(self) -> Any:
        return self._sock.getsockname()

    def fileno(self) -> int:
        return self._sock.fileno()

    def settimeout(self, timeout: Optional[float]) -> None:
        self._sock.settimeout(timeout)

    def gettimeout(self) -> Optional[float]:
        return self._sock.gettimeout()

    @property
    def socket(self) -> _socket.socket:
        return self._sock

    @property
    def config(self) -> TLSConfig:
        return self._config

    def __enter__(self) -> "TLSListener":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def connect(
    address: tuple[str, int],
    config: TLSConfig,
    *,
    server_name: Optional[str] = None,
    timeout: Optional[float] = None,
    source_address: Optional[tuple[str, int]] = None,
    ktls: Any = None,
    ktls_key_update: str = "abort",
    session: Any = None,
    early_data: Optional[bytes] = None,
) -> TLSSocket:
    """Open a TCP connection to ``address`` and run the TLS handshake.

    ``server_name`` (default: ``config.server_name``, else the host) is sent
    as SNI and checked against the server certificate. ``timeout`` applies to
    the connect, the handshake and later socket operations. ``ktls``
    (``"auto"``/``"required"``) hands the record layer to the kernel after
    the handshake (:meth:`TLSSocket.enable_ktls`). ``session`` resumes a
    :class:`~tcpls.tls.session.Session` (``sock.connection.session`` holds
    the newest one received); ``early_data`` is sent as 0-RTT data with it
    (see ``TLSConnection.send_early_data``; ``sock.connection.early_data_accepted``
    tells the outcome).
    """
    host = address[0]
    name = server_name or _default_server_name(host, config)
    sock = _socket.create_connection(address, timeout=timeout, source_address=source_address)
    tls: Optional[TLSSocket] = None
    try:
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        tls = TLSSocket.wrap(sock, config, server_side=False, server_name=name, session=session)
        if early_data:
            tls.connection.send_early_data(early_data)
        tls.do_handshake()
        if ktls:
            tls.enable_ktls(ktls, key_update=ktls_key_update)
    except BaseException:
        if tls is not None and isinstance(tls._error, ProtocolError):
            tls.close()  # lingers so that our alert reaches the server
        else:
            sock.close()
        raise
    return tls


def create_server(
    address: tuple[str, int],
    config: TLSConfig,
    *,
    backlog: int = 128,
    reuse_port: bool = False,
    ktls: Any = None,
    ktls_key_update: str = "abort",
) -> TLSListener:
    """Listen on ``address`` (``port`` 0 picks a free one) for TLS clients.

    ``ktls`` (``"auto"``/``"required"``): accepted connections hand their
    record layer to the kernel right after the handshake.
    """
    config.validate(server_side=True)
    family = _socket.AF_INET6 if ":" in (address[0] or "") else _socket.AF_INET
    sock = _socket.create_server(address, family=family, backlog=backlog, reuse_port=reuse_port)
    return TLSListener(sock, config, ktls=ktls, ktls_key_update=ktls_key_update)

