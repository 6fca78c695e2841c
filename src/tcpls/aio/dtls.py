"""asyncio adapter: one UDP socket, one :class:`~tcpls.dtls.endpoint.DTLSEndpoint`.

Theory of operation
-------------------
:class:`DTLSEndpointProtocol` is the only object that talks to the sans-IO
endpoint. Every input runs the same three steps, then re-arms the single
timer:

* **network** (``datagram_received``): ``endpoint.receive_datagram`` →
  dispatch endpoint events → transmit;
* **timer** (one ``loop.call_at``): ``endpoint.handle_timer`` → dispatch → transmit;
* **worker** (an executor job finished, signalled thread-safely through
  ``loop.call_soon_threadsafe``): ``endpoint.poll`` → dispatch → transmit;
* **application** (:class:`DTLSChannel` verbs): the endpoint verb → dispatch
  → transmit.

"Transmit" sends every ``(datagram, addr)`` the endpoint hands out, in its
(fair) order: when the adapter owns the socket (:func:`create_endpoint`)
and the transport has nothing buffered, straight on the socket through a
:class:`~tcpls._udp.UDPSender` (UDP GSO, many datagrams per ``sendmsg``,
when the kernel has it); what the socket cannot take now, and everything
while the transport has a backlog, goes through ``transport.sendto``, which
buffers and keeps the order. Time is ``time.time()``: cookies and tickets
are wall-clock based.

Receiving: asyncio reads one datagram per readiness event; the protocol
then reads what else the socket holds (up to ``max_burst`` datagrams, with
``recvfrom_into`` into one reusable buffer) before it transmits and re-arms
the timer once. The socket asks for a large receive buffer
(``receive_buffer``, 4 MB by default, best effort) so that bursts are not
dropped by the kernel while the loop is busy.

DTLS keeps datagram boundaries: :meth:`DTLSChannel.send` sends one record
(at most :attr:`DTLSChannel.max_data_size` bytes) and :meth:`DTLSChannel.recv`
returns one record's payload. Each channel buffers at most
``max_queued`` unread records; more are dropped (and counted), as the
network would drop them, so a peer that floods a slow reader costs bounded
memory.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import time
from collections import deque
from typing import Any, Awaitable, Callable, Optional, Union

from .._udp import UDPSender, read_burst, set_receive_buffer
from ..dtls.endpoint import (
    Association,
    ConnectionClosed,
    ConnectionEstablished,
    ConnectionEvent,
    DTLSEndpoint,
    EndpointLimits,
    HandshakeCancelled,
    HandshakeRefused,
    build_endpoint,
)
from ..errors import ConnectionClosedError, TLSError
from ..tls import events as _ev
from ..tls.config import TLSConfig

__all__ = ["DTLSChannel", "DTLSEndpointProtocol", "connect", "create_endpoint", "serve", "logger"]

logger = logging.getLogger("tcpls.aio.dtls")

ChannelHandler = Callable[["DTLSChannel"], Union[Awaitable[None], None]]


class DTLSChannel:
    """One DTLS association as the application sees it."""

    def __init__(self, protocol: "DTLSEndpointProtocol", assoc: Association, max_queued: int) -> None:
        self._protocol = protocol
        self.association = assoc
        self._queue: deque[bytes] = deque()
        self._max_queued = max_queued
        self._waiter: Optional[asyncio.Future[None]] = None
        self._established: asyncio.Future[Any] = protocol.loop.create_future()
        self._closed = False
        self._eof = False
        self.error: Optional[BaseException] = None
        #: The HandshakeComplete event once the handshake finished.
        self.handshake: Optional[_ev.HandshakeComplete] = None
        #: Engine events other than data (KeyUpdated, SessionTicketReceived, ...).
        self.events: list[Any] = []
        self.dropped = 0
        #: Server: bytes of 0-RTT data received (delivered by recv() first).
        self.early_data_received = 0

    # ------------------------------------------------------------ queries
    @property
    def peer_address(self) -> Any:
        return self.association.addr

    @property
    def connection(self) -> Any:
        """The engine (DTLSConnection, or its compact established state)."""
        return self.association.conn

    @property
    def max_data_size(self) -> int:
        return int(getattr(self.association.conn, "max_data_size", 1100))

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------ verbs
    async def wait_established(self) -> _ev.HandshakeComplete:
        return await self._established

    async def wait_confirmed(self, timeout: float) -> bool:
        """Wait until nothing of ours is unacknowledged (for a client: the
        server has processed our Finished, §7), at most ``timeout``.

        A client's first records right after its Finished may reach a server
        that has not processed the Finished yet, and DTLS servers may drop
        them (application data is not retransmitted). Callers that need
        their first records delivered wait for this first. Returns whether
        the state was reached.
        """
        protocol = self._protocol
        deadline = protocol.loop.time() + timeout
        while not self._closed and self.association.conn.get_timer() is not None:
            remaining = deadline - protocol.loop.time()
            if remaining <= 0:
                return False
            waiter = protocol.loop.create_future()
            protocol._progress_waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except asyncio.TimeoutError:
                return False
        return not self._closed

    async def recv(self) -> bytes:
        """The next record's payload; ``b""`` once the peer closed.

        Raises:
            TLSError: the association failed (the error the engine raised).
        """
        while not self._queue:
            if self._eof:
                if self.error is not None:
                    raise self.error
                return b""
            self._waiter = self._protocol.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._queue.popleft()

    def send(self, data: bytes) -> None:
        """Send ``data`` as one record (raises UsageError if it does not fit)."""
        if self._closed:
            raise ConnectionClosedError("the association is closed")
        self._protocol._call(lambda now: self._protocol.endpoint.send_data(self.association, bytes(data), now))

    def send_many(self, payloads: "list[bytes] | tuple[bytes, ...]") -> None:
        """Send each payload as one record in its own datagram, in order:
        protected as one batch (``send_data_batch``) and written with as few
        system calls as the kernel allows (UDP GSO). Raises UsageError
        (nothing sent) if one does not fit :attr:`max_data_size`."""
        if self._closed:
            raise ConnectionClosedError("the association is closed")
        self._protocol._call(lambda now: self._protocol.endpoint.send_data_batch(self.association, payloads, now))

    def key_update(self) -> None:
        self._protocol._call(lambda now: self._protocol.endpoint.key_update(self.association, now))

    def close(self, *, wait_for_peer: Optional[float] = None) -> None:
        """Send close_notify; with ``wait_for_peer``, keep receiving until the
        peer's close_notify (or that many seconds)."""
        if self._closed:
            return
        self._protocol._call(
            lambda now: self._protocol.endpoint.close(self.association, now, wait_for_peer=wait_for_peer)
        )

    # ------------------------------------------------------------ from the protocol
    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _data(self, data: bytes) -> None:
        if len(self._queue) >= self._max_queued:
            self.dropped += 1
            return
        self._queue.append(data)
        self._wake()

    def _finish(self, error: Optional[BaseException]) -> None:
        self._closed = True
        self._eof = True
        self.error = error
        if not self._established.done():
            self._established.set_exception(error or ConnectionClosedError("closed before the handshake completed"))
            self._established.exception()  # retrieved: no "never retrieved" warning
        self._wake()


class DTLSEndpointProtocol(asyncio.DatagramProtocol):
    """Drives a :class:`DTLSEndpoint` from one asyncio datagram transport.

    Args:
        endpoint_factory: ``factory(wakeup)`` → the endpoint (``wakeup`` must
            be passed to it: executor jobs signal completion through it).
        on_connection: server: called with each new established
            :class:`DTLSChannel` (a coroutine function runs as a task).
        max_queued: unread records buffered per channel.
        sock: the socket the transport runs on, when the caller created it
            (:func:`create_endpoint` does): enables batched sending and
            reading several datagrams per wakeup.
        gso: None: UDP GSO when the kernel has it; False: never.
        max_burst: datagrams read per wakeup at most.
    """

    def __init__(
        self,
        endpoint_factory: Callable[[Callable[[], None]], DTLSEndpoint],
        on_connection: Optional[ChannelHandler] = None,
        *,
        max_queued: int = 1024,
        sock: Optional[socket.socket] = None,
        gso: Optional[bool] = None,
        max_burst: int = 256,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.endpoint = endpoint_factory(self._wakeup)
        self._on_connection = on_connection
        self._max_queued = max_queued
        self._channels: dict[int, DTLSChannel] = {}
        self.transport: Optional[asyncio.DatagramTransport] = None
        self._timer: Optional[asyncio.TimerHandle] = None
        self._timer_at: Optional[float] = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed: asyncio.Future[None] = self.loop.create_future()
        self._progress_waiters: list[asyncio.Future[None]] = []
        self.sent = 0
        #: Datagrams received, and the wakeups that read them.
        self.received = 0
        self.read_wakeups = 0
        self._sock = sock
        self._max_burst = max(1, max_burst)
        self._buffer = bytearray(65535) if sock is not None else None
        self.sender: Optional[UDPSender] = None
        if sock is not None:
            self.sender = UDPSender(sock, gso=gso, fallback_send=self._sendto_transport)

    # ------------------------------------------------------------ asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        now = time.time()
        endpoint = self.endpoint
        endpoint.receive_datagram(data, addr, now)
        count = 1
        sock, buf = self._sock, self._buffer
        if sock is not None and buf is not None:
            # What else the socket holds, bounded for fairness.
            count += read_burst(
                sock, buf, memoryview(buf), self._max_burst - 1, lambda d, a: endpoint.receive_datagram(d, a, now)
            )
        self.received += count
        self.read_wakeups += 1
        self._after(now)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable...) are advisory for UDP: the
        # retransmission timers and handshake timeouts deal with dead peers.
        logger.debug("socket error: %s", exc)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for channel in list(self._channels.values()):
            channel._finish(ConnectionClosedError("the endpoint was closed"))
        self._channels.clear()
        if not self._closed.done():
            self._closed.set_result(None)

    # ------------------------------------------------------------ driving
    def _wakeup(self) -> None:
        # Called from executor threads.
        try:
            self.loop.call_soon_threadsafe(self._poll)
        except RuntimeError:  # loop closed
            pass

    def _poll(self) -> None:
        now = time.time()
        self.endpoint.poll(now)
        self._after(now)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        now = time.time()
        self.endpoint.handle_timer(now)
        self._after(now)

    def _call(self, action: Callable[[float], None]) -> None:
        now = time.time()
        action(now)
        self._after(now)

    def _after(self, now: float) -> None:
        self._dispatch()
        self._transmit(now)
        self._dispatch()  # events from closing (none expected, cheap)
        self._rearm()
        if self._progress_waiters:
            waiters, self._progress_waiters = self._progress_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def _transmit(self, now: float) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            self.endpoint.datagrams_to_send(now)
            return
        out = self.endpoint.datagrams_to_send(now)
        if not out:
            return
        self.sent += len(out)
        if self.sender is not None and not transport.get_write_buffer_size():
            self.sender.send(out)  # the rest goes to the transport on EAGAIN
            return
        for data, addr in out:  # keep the order behind the transport's backlog
            transport.sendto(data, addr)

    def _sendto_transport(self, data: bytes, addr: Any) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)

    def _rearm(self) -> None:
        when = self.endpoint.get_timer()
        if when == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = when
        if when is not None:
            self._timer = self.loop.call_later(max(0.0, when - time.time()), self._on_timer)

    def _channel(self, assoc: Association) -> DTLSChannel:
        channel = self._channels.get(assoc.id)
        if channel is None:
            channel = DTLSChannel(self, assoc, self._max_queued)
            self._channels[assoc.id] = channel
        return channel

    def _dispatch(self) -> None:
        endpoint = self.endpoint
        while (event := endpoint.next_event()) is not None:
            if isinstance(event, ConnectionEvent):
                inner = event.event
                channel = self._channels.get(event.association.id)
                if channel is None:
                    if not isinstance(inner, _ev.EarlyDataReceived):
                        continue
                    # 0-RTT data arrives before the handshake completes: the
                    # channel exists from then on, its handler starts at
                    # ConnectionEstablished and reads this data first.
                    channel = self._channel(event.association)
                if isinstance(inner, (_ev.DataReceived, _ev.EarlyDataReceived)):
                    channel._data(inner.data)
                    if isinstance(inner, _ev.EarlyDataReceived):
                        channel.early_data_received += len(inner.data)
                elif isinstance(inner, _ev.CloseNotifyReceived):
                    # The peer is done sending; we may still answer until
                    # close() (EndpointLimits.peer_close_linger).
                    channel._eof = True
                    channel.events.append(inner)
                    channel._wake()
                elif isinstance(inner, _ev.HandshakeComplete):
                    channel.handshake = inner
                    if not channel._established.done():
                        channel._established.set_result(inner)
                else:
                    channel.events.append(inner)
                    del channel.events[:-64]
            elif isinstance(event, ConnectionEstablished):
                assoc = event.association
                channel = self._channel(assoc)
                if not assoc.is_client and self._on_connection is not None:
                    self._start_handler(channel)
            elif isinstance(event, (ConnectionClosed, HandshakeCancelled)):
                channel = self._channels.pop(event.association.id, None)
                if channel is not None:
                    error = event.error if isinstance(event, ConnectionClosed) else TimeoutError(f"handshake {event.reason}")
                    channel._finish(error)
            elif isinstance(event, HandshakeRefused):
                logger.info("refused a handshake from %s: %s", event.addr, event.reason)

    def _start_handler(self, channel: DTLSChannel) -> None:
        assert self._on_connection is not None
        result = self._on_connection(channel)
        if inspect.isawaitable(result):
            task = self.loop.create_task(result)  # type: ignore[arg-type]
            self._tasks.add(task)
            task.add_done_callback(self._handler_done)

    def _handler_done(self, task: "asyncio.Task[None]") -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("connection handler failed: %r", task.exception())

    # ------------------------------------------------------------ API
    def connect(self, addr: Any, **kwargs: Any) -> DTLSChannel:
        """Start a client handshake (``kwargs`` go to the connection factory)."""
        now = time.time()
        assoc = self.endpoint.connect(addr, now, **kwargs)
        channel = self._channel(assoc)
        self._after(now)
        return channel

    @property
    def local_address(self) -> Any:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")

    def close(self) -> None:
        """Close every association (close_notify) and the socket."""
        now = time.time()
        for assoc in self.endpoint.associations():
            self.endpoint.close(assoc, now)
        self._after(now)
        for task in list(self._tasks):
            task.cancel()
        if self.transport is not None:
            self.transport.close()

    async def wait_closed(self) -> None:
        await self._closed

    async def __aenter__(self) -> "DTLSEndpointProtocol":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()
        await self.wait_closed()


async def create_endpoint(
    config: TLSConfig,
    *,
    local_addr: Any = ("127.0.0.1", 0),
    server: bool = True,
    on_connection: Optional[ChannelHandler] = None,
    cid: bool = False,
    cookie_secret: Any = None,
    stateless_cookies: bool = True,
    limits: Optional[EndpointLimits] = None,
    executor: Any = None,
    compact: bool = False,
    connection_options: Optional[dict[str, Any]] = None,
    max_queued: int = 1024,
    gso: Optional[bool] = None,
    receive_buffer: Optional[int] = 4 << 20,
    max_burst: int = 256,
) -> DTLSEndpointProtocol:
    """Bind a UDP socket and run a DTLS endpoint on it.

    Args:
        config: TLS configuration of every association.
        server: accept handshakes from new peers.
        on_connection: server: handler for each established :class:`DTLSChannel`.
        cid: negotiate connection IDs (RFC 9146 / RFC 9147 §9), 8 bytes.
        cookie_secret: server: :class:`~tcpls.dtls.cookie.CookieSecret`
            (random if None).
        stateless_cookies: server: answer cookieless ClientHellos with a
            stateless HelloRetryRequest (§5.1).
        limits: :class:`EndpointLimits`.
        executor: where handshake work runs (e.g. a ThreadPoolExecutor).
        compact: replace idle established connections by their compact
            state (:mod:`tcpls.dtls.established`).
        connection_options: extra DTLSConnection keyword arguments.
        gso: None: send with UDP GSO when the kernel has it; False: never.
        receive_buffer: SO_RCVBUF to ask for, best effort (None: leave it).
        max_burst: datagrams read per wakeup at most.
    """
    from ..dtls.cookie import CookieSecret

    secret = cookie_secret if cookie_secret is not None else CookieSecret()
    if limits is None:
        # Half-close: a handler answers what came with the peer's close_notify.
        limits = EndpointLimits(peer_close_linger=5.0)
    def make(wakeup: Callable[[], None]) -> DTLSEndpoint:
        return build_endpoint(
            config,
            server=server,
            cookie_secret=secret,
            cid=cid,
            stateless_cookies=stateless_cookies,
            limits=limits,
            executor=executor,
            compact=compact,
            connection_options=connection_options,
            wakeup=wakeup,
        )

    loop = asyncio.get_running_loop()
    host, port = local_addr[0], local_addr[1]
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
    family, _, proto, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_DGRAM, proto)
    try:
        sock.setblocking(False)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        if receive_buffer:
            set_receive_buffer(sock, receive_buffer)
        _, protocol = await loop.create_datagram_endpoint(
            lambda: DTLSEndpointProtocol(
                make, on_connection, max_queued=max_queued, sock=sock, gso=gso, max_burst=max_burst
            ),
            sock=sock,
        )
    except BaseException:
        sock.close()
        raise
    return protocol


async def serve(
    config: TLSConfig, host: str, port: int, on_connection: ChannelHandler, **kwargs: Any
) -> DTLSEndpointProtocol:
    """A DTLS server on ``host:port`` (``kwargs``: see :func:`create_endpoint`)."""
    return await create_endpoint(config, local_addr=(host, port), server=True, on_connection=on_connection, **kwargs)


async def connect(
    config: TLSConfig,
    host: str,
    port: int,
    *,
    server_name: Optional[str] = None,
    session: Any = None,
    timeout: float = 30.0,
    cid: bool = False,
    **kwargs: Any,
) -> DTLSChannel:
    """Handshake with a DTLS server; returns the established channel.

    The channel's endpoint (``channel._protocol``) owns the socket; closing
    the channel with :func:`close_client` closes both.
    """
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=2)  # SOCK_DGRAM
    family, _, _, _, addr = infos[0]
    local = ("::", 0) if family == 10 else ("0.0.0.0", 0)
    protocol = await create_endpoint(config, local_addr=local, server=False, cid=cid, **kwargs)
    options: dict[str, Any] = {"server_name": server_name}
    if session is not None:
        options["session"] = session
    try:
        channel = protocol.connect(addr[:2], **options)
        await asyncio.wait_for(channel.wait_established(), timeout)
    except BaseException:
        protocol.close()
        raise
    return channel


async def close_client(channel: DTLSChannel, *, wait_for_peer: Optional[float] = 1.0) -> None:
    """Close a channel from :func:`connect` and its socket."""
    channel.close(wait_for_peer=wait_for_peer)
    if wait_for_peer:
        try:
            await asyncio.wait_for(_until_closed(channel), wait_for_peer + 0.5)
        except asyncio.TimeoutError:
            pass
    channel._protocol.close()
    await channel._protocol.wait_closed()


async def _until_closed(channel: DTLSChannel) -> None:
    try:
        while await channel.recv():
            pass
    except TLSError:
        pass


__all__ += ["close_client"]

