"""Blocking TCPLS API: the asyncio adapter run on a private event loop thread.

A TCPLS session has several TCP connections, a timer and background work
(ACKs, failover, rejoins) that must go on while the application blocks in
``recv``; so rather than re-implementing the driving loop with selectors,
this module runs :mod:`tcpls.aio.tcpls_session` on one daemon thread per
client and hands every call to it (``run_coroutine_threadsafe``). All
engine access therefore stays on that thread: the invariants of the
asyncio adapter hold unchanged. Blocking calls take ``timeout`` (seconds,
None = forever) and raise :class:`TimeoutError`.

    client = connect("10.0.1.2", 4433, config=TCPLSConfig(tls), server_name="example.com")
    cid = client.join("10.0.2.2", local_addr="10.0.2.1")
    s = client.open_stream()            # waits while max_streams streams of ours are open
    s.sendall(b"hello"); s.shutdown_write()
    client.migrate(s, cid)              # or client.migrate_to("10.0.2.2")
    while data := s.recv(65536): ...
    event = client.next_event(timeout=1)
    client.close()

The operations are those of the asyncio session (``open_stream``,
``accept_stream``, ``join``, ``migrate``, ``migrate_to``,
``close_connection``, ``next_event``, ``close``); a stream's ``sendall``
blocks on the same backpressure as ``await writer.drain()``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Awaitable, Optional, Sequence, TypeVar, Union

from ..aio import tcpls_session as tio
from ..tcpls.config import TCPLSConfig

__all__ = ["BlockingTCPLSClient", "BlockingStream", "connect"]

T = TypeVar("T")


class _LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="tcpls-session", daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[T], timeout: Optional[float] = None) -> T:
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise TimeoutError("timed out") from None

    def call(self, fn: Any, *args: Any) -> Any:
        async def wrapper() -> Any:
            return fn(*args)

        return self.run(wrapper())

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
        if not self.loop.is_running():
            self.loop.close()


class BlockingStream:
    """One TCPLS stream: ``sendall`` (blocks on backpressure), ``recv``, ``shutdown_write``."""

    def __init__(self, lt: _LoopThread, reader: Any, writer: tio.TCPLSStreamWriter) -> None:
        self._lt = lt
        self._reader = reader
        self._writer = writer
        self.stream_id = writer.stream_id

    def sendall(self, data: bytes, timeout: Optional[float] = None) -> None:
        async def send() -> None:
            self._writer.write(data)
            await self._writer.drain()

        self._lt.run(send(), timeout)

    def recv(self, n: int = 65536, timeout: Optional[float] = None) -> bytes:
        """Up to ``n`` bytes; ``b""`` at the end of the stream."""
        return self._lt.run(self._reader.read(n), timeout)

    def recv_all(self, timeout: Optional[float] = None) -> bytes:
        return self._lt.run(self._reader.read(), timeout)

    def shutdown_write(self) -> None:
        self._lt.call(self._writer.write_eof)

    def wait_acked(self, timeout: Optional[float] = None) -> None:
        """Block until the peer acknowledged every byte written (and the FIN)."""
        self._lt.run(self._writer.session.wait_acked([self.stream_id], timeout=timeout))

    def reset(self, error_code: int = 0) -> None:
        self._lt.call(self._writer.reset, error_code)


class BlockingTCPLSClient:
    """A connected TCPLS client session (see :func:`connect`)."""

    def __init__(self, lt: _LoopThread, client: tio.TCPLSClient) -> None:
        self._lt = lt
        self.session = client  # the asyncio driver; touch it only through this class

    def open_stream(self, timeout: Optional[float] = None, *, wait: bool = True) -> BlockingStream:
        """A new stream. At the stream limit (``max_streams`` of ours not
        finished) it blocks until a slot frees up (:class:`TimeoutError`
        after ``timeout`` seconds); ``wait=False`` raises
        :class:`~tcpls.errors.UsageError` instead."""
        if wait:
            reader, writer = self._lt.run(self.session.wait_open_stream(timeout))
        else:
            reader, writer = self._lt.call(self.session.open_stream)
        return BlockingStream(self._lt, reader, writer)

    def accept_stream(self, timeout: Optional[float] = None) -> BlockingStream:
        reader, writer = self._lt.run(self.session.accept_stream(), timeout)
        return BlockingStream(self._lt, reader, writer)

    def join(self, remote_addr: Union[str, tuple[str, int]], local_addr: Optional[str] = None, timeout: float = 10.0) -> int:
        return self._lt.run(self.session.join(remote_addr, local_addr, timeout=timeout))

    def migrate(self, stream: BlockingStream, conn_id: Optional[int]) -> None:
        self._lt.call(self.session.migrate, stream.stream_id, conn_id)

    def migrate_to(self, remote_addr: Union[str, tuple[str, int]], local_addr: Optional[str] = None) -> int:
        return self._lt.run(self.session.migrate_to(remote_addr, local_addr))

    def connection_ids(self) -> list[int]:
        return self._lt.call(self.session.connection_ids)

    def close_connection(self, conn_id: int) -> None:
        """Stop using ``conn_id``; its unacknowledged data moves to the others."""
        self._lt.call(self.session.close_connection, conn_id)

    def next_event(self, timeout: Optional[float] = None) -> Any:
        """The next session event (see ``SessionDriver.next_event``);
        :class:`TimeoutError` after ``timeout`` seconds."""
        return self._lt.run(self.session.next_event(timeout))

    @property
    def error(self) -> Optional[BaseException]:
        """The session-fatal error, if any."""
        return self.session.error

    def request_peer_tcp_setting(self, setting: int, value: object, conn_id: Optional[int] = None, timeout: float = 10.0) -> Any:
        """Ask the server to apply a TCP setting; returns its ``TCPSettingAnswered``."""
        return self._lt.run(self.session.request_peer_tcp_setting(setting, value, conn_id, timeout=timeout))

    def set_peer_user_timeout(self, ms: int, conn_id: Optional[int] = None, timeout: float = 10.0) -> Any:
        return self._lt.run(self.session.set_peer_user_timeout(ms, conn_id, timeout=timeout))

    def set_peer_congestion_control(self, name: str, conn_id: Optional[int] = None, timeout: float = 10.0) -> Any:
        return self._lt.run(self.session.set_peer_congestion_control(name, conn_id, timeout=timeout))

    def close(self, timeout: float = 10.0) -> None:
        try:
            self._lt.run(self.session.close(timeout), timeout + 5)
        finally:
            self._lt.stop()

    def __enter__(self) -> "BlockingTCPLSClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def connect(host: Union[str, Sequence[Union[str, tuple[str, int]]]], port: int, *, config: TCPLSConfig,
            timeout: Optional[float] = 30.0, **kw: Any) -> BlockingTCPLSClient:
    """Blocking :func:`tcpls.aio.tcpls_session.connect` (same arguments:
    ``host`` may be a list of addresses raced with happy eyeballs)."""
    lt = _LoopThread()
    try:
        client = lt.run(tio.connect(host, port, config=config, timeout=timeout, **kw))
    except BaseException:
        lt.stop()
        raise
    return BlockingTCPLSClient(lt, client)
