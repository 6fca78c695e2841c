"""Blocking DTLS 1.3 over one UDP socket, driving a :class:`~tcpls.dtls.endpoint.DTLSEndpoint`.

* :func:`connect` → :class:`DTLSSocket`: a client association with
  ``send``/``recv``/``key_update``/``close``; ``recv`` runs the endpoint
  (timers included) while it waits. Calls are serialised by a lock, so one
  thread may send while another blocks in ``recv``.
* :class:`DTLSServer`: ``serve_forever(handler)`` runs the endpoint loop in
  the calling thread; ``handler(server, association, data)`` is called for
  each received record (``data == b""`` when the association closed);
  ``server.send(association, data)`` answers. ``shutdown()`` (any thread)
  stops the loop.

Time is ``time.time()`` (cookies and tickets are wall-clock based); every
wait is bounded by the endpoint's next deadline.
"""

from __future__ import annotations

import os
import select
import selectors
import socket
import threading
import time
from collections import deque
from typing import Any, Callable, Optional

from .._udp import UDPSender, read_burst, set_receive_buffer
from ..dtls.cookie import CookieSecret
from ..dtls.endpoint import (
    Association,
    ConnectionClosed,
    ConnectionEvent,
    DTLSEndpoint,
    EndpointLimits,
    HandshakeCancelled,
    build_endpoint,
)
from ..errors import ConnectionClosedError, TLSError
from ..tls import events as _ev
from ..tls.config import TLSConfig

__all__ = ["DTLSServer", "DTLSSocket", "connect"]

_MAX_DATAGRAM = 65535
#: Default receive buffer asked for (best effort, see ``set_receive_buffer``).
DEFAULT_RECEIVE_BUFFER = 4 << 20
#: Datagrams read per wakeup at most (fairness with timers and sending).
DEFAULT_MAX_BURST = 256


class _Driver:
    """One socket + one endpoint: receive, timers, transmit.

    Sending: all the datagrams the endpoint hands out at once go through a
    :class:`~tcpls._udp.UDPSender` (UDP GSO when available, else one
    ``sendto`` each); a full socket buffer is waited out (bounded), not
    dropped. Receiving: one wakeup reads up to ``max_burst`` datagrams with
    ``recvfrom_into`` into one reusable buffer, until EAGAIN.
    """

    def __init__(
        self,
        sock: socket.socket,
        endpoint: DTLSEndpoint,
        *,
        gso: Optional[bool] = None,
        receive_buffer: Optional[int] = DEFAULT_RECEIVE_BUFFER,
        max_burst: int = DEFAULT_MAX_BURST,
    ) -> None:
        self.sock = sock
        self.endpoint = endpoint
        if receive_buffer:
            set_receive_buffer(sock, receive_buffer)
        self.sender = UDPSender(sock, gso=gso)
        self.max_burst = max(1, max_burst)
        self._buffer = bytearray(_MAX_DATAGRAM)
        self._view = memoryview(self._buffer)
        #: Datagrams received, and wakeups that read at least one.
        self.received = 0
        self.read_wakeups = 0
        self.lock = threading.RLock()
        self._selector = selectors.DefaultSelector()
        self._selector.register(sock, selectors.EVENT_READ)
        # A self-pipe: executor jobs and shutdown() wake the select.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        sock.setblocking(False)

    def wakeup(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass

    def transmit(self) -> None:
        pending = self.endpoint.datagrams_to_send(time.time())
        for _ in range(100):
            if not pending:
                return
            try:
                self.sender.send(pending)
                return
            except BlockingIOError:
                pending = self.sender.unsent
                # The socket buffer is full: wait until it drains a little.
                select.select([], [self.sock], [], 1.0)
        # Still full after that long: the rest is lost, as UDP may lose it.

    def receive_burst(self, now: float) -> int:
        """Read what the socket holds (at most ``max_burst`` datagrams) into
        the endpoint. Returns how many were read."""
        endpoint = self.endpoint
        count = read_burst(
            self.sock, self._buffer, self._view, self.max_burst, lambda d, a: endpoint.receive_datagram(d, a, now)
        )
        self.received += count
        self.read_wakeups += count > 0
        return count

    def step(self, deadline: Optional[float]) -> None:
        """Wait for input (or the endpoint's timer, or ``deadline``) once and process it."""
        with self.lock:
            self.transmit()
            timer = self.endpoint.get_timer()
        now = time.time()
        waits = [t for t in (timer, deadline) if t is not None]
        timeout = max(0.0, min(waits) - now) if waits else None
        ready = self._selector.select(timeout)
        with self.lock:
            now = time.time()
            for key, _ in ready:
                if key.fileobj == self._wake_r:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                    continue
                self.receive_burst(now)  # bounded, so that timers still run
            self.endpoint.poll(now)
            if timer is not None and time.time() >= timer:
                self.endpoint.handle_timer(time.time())
            self.transmit()

    def close(self) -> None:
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        self.sock.close()


class DTLSSocket:
    """A blocking client association (see the module doc)."""

    def __init__(self, driver: _Driver, assoc: Association) -> None:
        self._driver = driver
        self.association = assoc
        self._queue: deque[bytes] = deque()
        self.events: list[Any] = []
        self.handshake: Optional[_ev.HandshakeComplete] = None
        self.error: Optional[BaseException] = None
        self.closed = False
        self.timeout: Optional[float] = None

    @property
    def connection(self) -> Any:
        return self.association.conn

    @property
    def max_data_size(self) -> int:
        return int(self.association.conn.max_data_size)

    def settimeout(self, timeout: Optional[float]) -> None:
        self.timeout = timeout

    def _collect(self) -> None:
        ep = self._driver.endpoint
        while (event := ep.next_event()) is not None:
            if getattr(event, "association", None) is not self.association:
                continue
            if isinstance(event, ConnectionEvent):
                inner = event.event
                if isinstance(inner, _ev.DataReceived):
                    self._queue.append(inner.data)
                elif isinstance(inner, _ev.HandshakeComplete):
                    self.handshake = inner
                else:
                    self.events.append(inner)
                    del self.events[:-64]
            elif isinstance(event, (ConnectionClosed, HandshakeCancelled)):
                self.closed = True
                if isinstance(event, ConnectionClosed):
                    self.error = event.error
                else:
                    self.error = TimeoutError(f"handshake {event.reason}")

    def _run_until(self, done: Callable[[], bool], timeout: Optional[float]) -> None:
        deadline = None if timeout is None else time.time() + timeout
        while True:
            with self._driver.lock:
                self._collect()
                if done():
                    return
            if deadline is not None and time.time() >= deadline:
                raise TimeoutError("timed out")
            self._driver.step(deadline)

    def wait_established(self, timeout: Optional[float]) -> None:
        self._run_until(lambda: self.handshake is not None or self.closed, timeout)
        if self.handshake is None:
            raise self.error or ConnectionClosedError("closed during the handshake")

    def send(self, data: bytes) -> None:
        """Send one record (at most :attr:`max_data_size` bytes)."""
        with self._driver.lock:
            self._collect()
            if self.closed:
                raise ConnectionClosedError("the association is closed")
            self._driver.endpoint.send_data(self.association, bytes(data), time.time())
            self._driver.transmit()

    def send_many(self, payloads: "list[bytes] | tuple[bytes, ...]") -> None:
        """Send each payload as one record in its own datagram, in order,
        protected as one batch and written with as few system calls as the
        kernel allows (UDP GSO). Raises UsageError (nothing sent) if one
        does not fit :attr:`max_data_size`."""
        with self._driver.lock:
            self._collect()
            if self.closed:
                raise ConnectionClosedError("the association is closed")
            self._driver.endpoint.send_data_batch(self.association, payloads, time.time())
            self._driver.transmit()

    def recv(self) -> bytes:
        """The next record's payload; ``b""`` once the peer closed.

        Raises:
            TimeoutError: nothing within :meth:`settimeout`'s timeout.
            TLSError: the association failed.
        """
        self._run_until(lambda: bool(self._queue) or self.closed, self.timeout)
        if self._queue:
            return self._queue.popleft()
        if self.error is not None:
            raise self.error
        return b""

    def key_update(self) -> None:
        with self._driver.lock:
            self._driver.endpoint.key_update(self.association, time.time())
            self._driver.transmit()

    def close(self, wait_for_peer: Optional[float] = 1.0) -> None:
        """close_notify; wait up to ``wait_for_peer`` for the peer's, then close the socket."""
        try:
            with self._driver.lock:
                if not self.closed:
                    self._driver.endpoint.close(self.association, time.time(), wait_for_peer=wait_for_peer)
                    self._driver.transmit()
            if wait_for_peer:
                try:
                    self._run_until(lambda: self.closed, wait_for_peer + 0.5)
                except TimeoutError:
                    pass
        finally:
            self._driver.close()

    def __enter__(self) -> "DTLSSocket":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def connect(
    address: tuple[str, int],
    config: TLSConfig,
    *,
    server_name: Optional[str] = None,
    timeout: Optional[float] = 30.0,
    cid: bool = False,
    session: Any = None,
    gso: Optional[bool] = None,
    receive_buffer: Optional[int] = DEFAULT_RECEIVE_BUFFER,
) -> DTLSSocket:
    """Handshake with a DTLS 1.3 server; returns the established socket.

    ``gso``: None uses UDP GSO when the kernel has it, False never;
    ``receive_buffer``: SO_RCVBUF to ask for (best effort; None: leave it).
    """
    host, port = address
    family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    holder: list[_Driver] = []
    endpoint = build_endpoint(config, cookie_secret=CookieSecret(), server=False, cid=cid, wakeup=lambda: holder[0].wakeup())
    driver = _Driver(sock, endpoint, gso=gso, receive_buffer=receive_buffer)
    holder.append(driver)
    options: dict[str, Any] = {"server_name": server_name}
    if session is not None:
        options["session"] = session
    with driver.lock:
        assoc = endpoint.connect(addr[:2], time.time(), **options)
    result = DTLSSocket(driver, assoc)
    try:
        result.wait_established(timeout)
    except BaseException:
        driver.close()
        raise
    return result


class DTLSServer:
    """A blocking DTLS server loop (see the module doc)."""

    def __init__(
        self,
        config: TLSConfig,
        address: tuple[str, int] = ("127.0.0.1", 0),
        *,
        cid: bool = False,
        limits: Optional[EndpointLimits] = None,
        executor: Any = None,
        stateless_cookies: bool = True,
        compact: bool = True,
        gso: Optional[bool] = None,
        receive_buffer: Optional[int] = DEFAULT_RECEIVE_BUFFER,
    ) -> None:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.bind(address)
        holder: list[_Driver] = []
        endpoint = build_endpoint(
            config, cookie_secret=CookieSecret(), server=True, cid=cid, limits=limits, executor=executor,
            wakeup=lambda: holder[0].wakeup() if holder else None,
            stateless_cookies=stateless_cookies, compact=compact,
        )
        self._driver = _Driver(sock, endpoint, gso=gso, receive_buffer=receive_buffer)
        holder.append(self._driver)
        self.endpoint = endpoint
        self.address = sock.getsockname()
        self._stop = threading.Event()

    def send(self, assoc: Association, data: bytes) -> None:
        with self._driver.lock:
            self.endpoint.send_data(assoc, data, time.time())

    def send_many(self, assoc: Association, payloads: "list[bytes] | tuple[bytes, ...]") -> None:
        """One record per payload, batched (see :meth:`DTLSSocket.send_many`)."""
        with self._driver.lock:
            self.endpoint.send_data_batch(assoc, payloads, time.time())
            self._driver.transmit()

    def serve_forever(self, handler: Callable[["DTLSServer", Association, bytes], None]) -> None:
        ep = self.endpoint
        while not self._stop.is_set():
            self._driver.step(time.time() + 0.5)
            with self._driver.lock:
                while (event := ep.next_event()) is not None:
                    try:
                        if isinstance(event, ConnectionEvent) and isinstance(event.event, _ev.DataReceived):
                            handler(self, event.association, event.event.data)
                        elif isinstance(event, ConnectionClosed):
                            handler(self, event.association, b"")
                    except TLSError:
                        pass  # that association failed; the others go on
                self._driver.transmit()

    def shutdown(self) -> None:
        self._stop.set()
        self._driver.wakeup()

    def close(self) -> None:
        with self._driver.lock:
            now = time.time()
            for assoc in self.endpoint.associations():
                self.endpoint.close(assoc, now)
            self._driver.transmit()
        self._driver.close()
