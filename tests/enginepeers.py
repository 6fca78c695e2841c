"""Our engines driven directly over TCP sockets, for interop tests.

:class:`EngineClient` and :class:`EngineServer` run the sans-IO
:class:`~tcpls.tls.connection.TLSConnection` over a socket with
``now = time.time()`` and keep every event, so tests see what the
blocking adapter would hide (``EarlyDataReceived``,
``SessionTicketReceived``, each ``KeyUpdated``...). The server echoes.
"""
from __future__ import annotations

import socket
import threading
import time
from typing import Callable, Optional

from conftest import DEFAULT_TIMEOUT
from tcpls.errors import TLSError
from tcpls.tls import events as ev
from tcpls.tls.config import TLSConfig
from tcpls.tls.connection import TLSConnection
from tcpls.tls.session import Session

T = DEFAULT_TIMEOUT


class EngineClient:
    """Our client engine over one TCP connection, every event recorded."""

    def __init__(self, address, config: TLSConfig, *, server_name: Optional[str] = "localhost",
                 session: Optional[Session] = None, early: bytes = b"", now_offset: float = 0.0) -> None:
        self.now_offset = now_offset  # added to the wall clock we pass in (a skewed client clock)
        self.sock = socket.create_connection(address, timeout=T)
        self.conn = TLSConnection(config, server_side=False, server_name=server_name, session=session)
        self.events: list = []
        if early:
            self.conn.send_early_data(early)
        self.conn.start_handshake(time.time() + now_offset)
        self.flush()

    @classmethod
    def connected(cls, address, config: TLSConfig, **kw) -> "EngineClient":
        """A client that has completed its handshake."""
        cl = cls(address, config, **kw)
        cl.handshake()
        return cl

    def flush(self) -> None:
        out = self.conn.data_to_send()
        if out:
            self.sock.sendall(out)

    def _read(self) -> bool:
        d = self.sock.recv(65536)
        if not d:
            self.conn.receive_eof()
            return False
        try:
            self.conn.receive_data(d, time.time() + self.now_offset)
        finally:
            self.flush()
        while (e := self.conn.next_event()) is not None:
            self.events.append(e)
        return True

    def handshake(self) -> None:
        while not self.conn.handshake_complete:
            if not self._read():
                raise EOFError("closed during handshake")

    def received(self) -> bytes:
        return b"".join(e.data for e in self.events if isinstance(e, ev.DataReceived))

    def read_until(self, pred: Callable[[], bool], what: str = "data") -> None:
        deadline = time.monotonic() + T
        while not pred():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {what}; got {self.received()[-200:]!r}")
            if not self._read():
                if pred():
                    return
                raise EOFError(f"peer closed before {what}; got {self.received()[-200:]!r}")

    def send(self, data: bytes) -> None:
        self.conn.send_data(data)
        self.flush()

    def echo(self, data: bytes, answer: Optional[bytes] = None) -> None:
        """Send ``data`` and wait until the echo server returned all of it
        (or ``answer``, what gnutls-serv sends back for a command)."""
        want = data if answer is None else answer
        before = len(self.received())
        self.send(data)
        self.read_until(lambda: len(self.received()) >= before + len(want), f"echo of {len(data)} bytes")
        assert self.received()[before:] == want

    def of(self, cls) -> list:
        return [e for e in self.events if isinstance(e, cls)]

    def close(self) -> None:
        try:
            self.conn.close()
            self.flush()
            self.sock.settimeout(2)
            while self._read():
                pass
        except (OSError, TLSError):
            pass
        self.sock.close()


class EngineServer:
    """Our server engine on 127.0.0.1, accepting ``connections`` clients in
    turn; echoes application data (0-RTT data too) and records per connection
    its events, what it received and its final state.

    Each connection's dict holds ``events``, ``early`` and ``data`` (what
    arrived), ``conn``, after the handshake ``resumed``, ``cipher_suite`` and,
    with ``export=(label, length)``, ``exported`` (empty context); at the end
    ``early_accepted`` and, if it failed, ``error``.

    ``after_handshake(conn, info)`` runs once per connection when the
    handshake completes (e.g. to start a KeyUpdate or post-handshake auth).
    """

    def __init__(self, config: TLSConfig, connections: int = 1,
                 after_handshake: Optional[Callable[[TLSConnection, dict], None]] = None,
                 export: Optional[tuple[str, int]] = None) -> None:
        self.config = config
        self.after_handshake = after_handshake
        self.export = export
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(T)
        self.port = self.listener.getsockname()[1]
        self.sessions: list[dict] = []
        self.thread = threading.Thread(target=self._run, args=(connections,), daemon=True)
        self.thread.start()

    def _run(self, n: int) -> None:
        for _ in range(n):
            info: dict = {"events": [], "early": b"", "data": b""}
            try:
                sock, _ = self.listener.accept()
            except OSError as exc:
                info["error"] = exc
                self.sessions.append(info)
                return
            self.sessions.append(info)
            sock.settimeout(T)
            conn = TLSConnection(self.config, server_side=True)
            info["conn"] = conn
            try:
                while True:
                    d = sock.recv(65536)
                    if not d:
                        break
                    conn.receive_data(d, time.time())
                    while (e := conn.next_event()) is not None:
                        info["events"].append(e)
                        if isinstance(e, ev.EarlyDataReceived):
                            info["early"] += e.data
                            conn.send_data(e.data)
                        elif isinstance(e, ev.DataReceived):
                            info["data"] += e.data
                            conn.send_data(e.data)
                        elif isinstance(e, ev.HandshakeComplete):
                            info["resumed"] = conn.session_resumed
                            info["cipher_suite"] = conn.cipher_suite
                            if self.export:
                                info["exported"] = conn.export_keying_material(self.export[0], b"", self.export[1])
                            if self.after_handshake:
                                self.after_handshake(conn, info)
                        elif isinstance(e, ev.CloseNotifyReceived):
                            conn.close()
                    out = conn.data_to_send()
                    if out:
                        sock.sendall(out)
                    if conn.peer_closed:
                        break
            except Exception as exc:  # noqa: BLE001 -- reported to the test
                info["error"] = exc
                try:
                    sock.sendall(conn.data_to_send())
                    # Let the alert reach a peer that is still sending: FIN,
                    # then read (bounded) so that close() does not reset the
                    # connection over unread data, as the adapters do.
                    sock.shutdown(socket.SHUT_WR)
                    sock.settimeout(2.0)
                    deadline = time.monotonic() + 2.0
                    while time.monotonic() < deadline and sock.recv(65536):
                        pass
                except OSError:
                    pass
            finally:
                info["early_accepted"] = conn.early_data_accepted
                sock.close()

    def join(self) -> list[dict]:
        self.thread.join(T)
        assert not self.thread.is_alive(), "server thread did not finish"
        self.listener.close()
        return self.sessions
