"""A Redis-backed :class:`~tcpls.tls.session.KeyValueStore` (RESP over a socket).

Several server processes share stateful tickets and 0-RTT anti-replay
records (RFC 9846 §8) through one Redis: pass a :class:`RedisStore` as
``TLSConfig.ticket_store`` and ``AntiReplay(store=...)``. Ticket-sealing keys
can be shared too (:func:`load_shared_ticket_keys`).

This is an adapter, like the socket wrappers: the engine never imports it.
It speaks just enough RESP2 (the Redis serialization protocol) for five
commands, with no dependency beyond the standard library:

* ``put``: ``SET key value PX ttl``
* ``get``: ``GET key``
* ``add``: ``SET key value PX ttl NX`` (atomic insert-if-absent)
* ``pop``: ``GETDEL key`` (atomic get-and-delete, Redis >= 6.2)

Expiry is Redis's own (``now`` is ignored). One connection per store, used
under a lock, reconnected once after a connection error. Errors other than
a lost connection raise :class:`RedisError`.
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Optional, Union
from urllib.parse import unquote, urlparse

__all__ = ["RedisStore", "RedisError", "load_shared_ticket_keys"]

Reply = Union[bytes, int, None, list, "RedisError"]


class RedisError(Exception):
    """An error reply from Redis, or a malformed reply."""


class RedisStore:
    """Shared ``KeyValueStore`` in Redis.

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]``.
        prefix: prepended to every key (one Redis can serve several sites).
        timeout: socket timeout in seconds.
    """

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, prefix: bytes = b"tcpls:", timeout: float = 2.0) -> None:
        u = urlparse(url)
        if u.scheme != "redis":
            raise ValueError(f"unsupported store URL {url!r} (redis://host:port/db)")
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 6379
        self.db = int(u.path.lstrip("/") or 0)
        self.username = unquote(u.username) if u.username else None
        self.password = unquote(u.password) if u.password else None
        self.prefix = prefix
        self.timeout = timeout
        self._sock: Optional[socket.socket] = None
        self._buf = bytearray()
        self._lock = threading.Lock()

    # ------------------------------------------------------------ KeyValueStore
    def put(self, key: bytes, value: bytes, now: float, ttl: float) -> None:
        self._check(self.command(b"SET", self.prefix + key, value, b"PX", _ms(ttl)))

    def get(self, key: bytes, now: float) -> Optional[bytes]:
        return self._bulk(self.command(b"GET", self.prefix + key))

    def add(self, key: bytes, value: bytes, now: float, ttl: float) -> bool:
        """Insert only if absent: True if inserted (``SET ... NX`` is atomic)."""
        reply = self.command(b"SET", self.prefix + key, value, b"PX", _ms(ttl), b"NX")
        if isinstance(reply, RedisError):
            raise reply
        return reply is not None

    def pop(self, key: bytes, now: float) -> Optional[bytes]:
        """Remove and return: at most one caller, in any process, gets the value."""
        return self._bulk(self.command(b"GETDEL", self.prefix + key))

    # -------------------------------------------------------------- plumbing
    def command(self, *args: bytes | str | int) -> Reply:
        """Send one command and return its reply (an error reply is returned,
        not raised). Reconnects once if the connection was lost."""
        payload = _encode(args)
        with self._lock:
            for attempt in (0, 1):
                try:
                    sock = self._connected()
                    sock.sendall(payload)
                    return self._read_reply()
                except (OSError, EOFError):
                    self._close()
                    if attempt:
                        raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            self._close()

    def _connected(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        self._sock = sock
        self._buf.clear()
        try:
            if self.password is not None:
                auth = (b"AUTH", self.username, self.password) if self.username else (b"AUTH", self.password)
                sock.sendall(_encode(auth))
                self._check(self._read_reply())
            if self.db:
                sock.sendall(_encode((b"SELECT", self.db)))
                self._check(self._read_reply())
        except BaseException:
            self._close()
            raise
        return sock

    def _close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
                self._buf.clear()

    def _fill(self) -> None:
        assert self._sock is not None
        chunk = self._sock.recv(65536)
        if not chunk:
            raise EOFError("redis closed the connection")
        self._buf += chunk

    def _line(self) -> bytes:
        while (end := self._buf.find(b"\r\n")) < 0:
            self._fill()
        line = bytes(self._buf[:end])
        del self._buf[: end + 2]
        return line

    def _exact(self, n: int) -> bytes:
        while len(self._buf) < n + 2:
            self._fill()
        data = bytes(self._buf[:n])
        if self._buf[n : n + 2] != b"\r\n":
            raise RedisError("malformed bulk string")
        del self._buf[: n + 2]
        return data

    def _read_reply(self) -> Reply:
        """One RESP2 reply: +simple, -error, :integer, $bulk, *array."""
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            return RedisError(rest.decode("utf-8", "replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n)
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._read_reply() for _ in range(n)]
        raise RedisError(f"unexpected reply {line[:40]!r}")

    @staticmethod
    def _check(reply: Reply) -> None:
        if isinstance(reply, RedisError):
            raise reply

    @staticmethod
    def _bulk(reply: Reply) -> Optional[bytes]:
        if isinstance(reply, RedisError):
            raise reply
        if reply is not None and not isinstance(reply, bytes):
            raise RedisError(f"expected a bulk string, got {reply!r}")
        return reply

    def __repr__(self) -> str:
        return f"RedisStore(redis://{self.host}:{self.port}/{self.db}, prefix={self.prefix!r})"


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _encode(args: tuple) -> bytes:
    """A command as a RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, int):
            a = str(a).encode()
        elif isinstance(a, str):
            a = a.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(parts)


def load_shared_ticket_keys(store: RedisStore, keys: "object", now: float, *, lifetime: int = 7 * 24 * 3600) -> bytes:
    """Install in ``keys`` (a :class:`~tcpls.tls.session.TicketKeys`) the
    ticket-sealing key shared through ``store``: the first process creates it
    (``add`` is atomic), the others read it. Returns the key name."""
    name_key = b"ticket-key"
    candidate = os.urandom(16 + 32)
    store.add(name_key, candidate, now, lifetime)
    blob = store.get(name_key, now)
    if blob is None or len(blob) != 48:
        raise RedisError("shared ticket key missing or malformed")
    keys.add_key(blob[:16], blob[16:], now)  # type: ignore[attr-defined]
    return blob[:16]
