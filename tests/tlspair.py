"""In-memory client/server pairs of TLSConnection engines (no sockets)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from tcpls import _testcerts
from tcpls.tls import events as ev
from tcpls.tls.config import TLSConfig
from tcpls.tls.connection import TLSConnection

_CACHE: dict = {}


def pki(key_type: str = "ec256"):
    """(ca_cert, leaf_cert, leaf_key) for localhost/127.0.0.1, cached per key type."""
    if "ca" not in _CACHE:
        _CACHE["ca"] = _testcerts.make_ca("tcpls test CA")
    if key_type not in _CACHE:
        ca, ca_key = _CACHE["ca"]
        _CACHE[key_type] = _testcerts.make_leaf(ca, ca_key, ["localhost", "127.0.0.1"], key_type=key_type)
    ca = _CACHE["ca"][0]
    cert, key = _CACHE[key_type]
    return ca, cert, key


def client_cert(key_type: str = "ec256"):
    k = "client-" + key_type
    if k not in _CACHE:
        ca, ca_key = _CACHE.get("ca") or pki() and _CACHE["ca"]
        _CACHE[k] = _testcerts.make_leaf(ca, ca_key, ["client.example"], key_type=key_type, client=True)
    return _CACHE[k]


def configs(key_type: str = "ec256", **kw) -> tuple[TLSConfig, TLSConfig]:
    ca, cert, key = pki(key_type)
    client_kw = {k[2:]: v for k, v in kw.items() if k.startswith("c_")}
    server_kw = {k[2:]: v for k, v in kw.items() if k.startswith("s_")}
    client_kw.setdefault("trust_anchors", [ca])
    c = TLSConfig(**client_kw)
    s = TLSConfig(certificate_chain=[cert], private_key=key, **server_kw)
    if "trust_anchors" not in server_kw:
        s.trust_anchors = [ca]
    return c, s


@dataclass
class Pair:
    client: TLSConnection
    server: TLSConnection
    client_events: list = field(default_factory=list)
    server_events: list = field(default_factory=list)

    def pump(self, rounds: int = 20) -> None:
        """Move bytes both ways until nothing is left to send."""
        for _ in range(rounds):
            moved = False
            d = self.client.data_to_send()
            if d:
                moved = True
                self.server.receive_data(d)
            self._drain(self.server, self.server_events)
            d = self.server.data_to_send()
            if d:
                moved = True
                self.client.receive_data(d)
            self._drain(self.client, self.client_events)
            if not moved:
                return
        raise AssertionError("too many round trips")

    @staticmethod
    def _drain(conn: TLSConnection, into: list) -> None:
        while (e := conn.next_event()) is not None:
            into.append(e)

    def received(self, side: str) -> bytes:
        evs = self.client_events if side == "client" else self.server_events
        return b"".join(e.data for e in evs if isinstance(e, ev.DataReceived))


def make_pair(client_cfg: TLSConfig, server_cfg: TLSConfig, server_name: Optional[str] = "localhost", handshake: bool = True) -> Pair:
    p = Pair(TLSConnection(client_cfg, server_side=False, server_name=server_name), TLSConnection(server_cfg, server_side=True))
    p.client.start_handshake()
    if handshake:
        p.pump()
        assert p.client.handshake_complete and p.server.handshake_complete
    return p


class EchoServer:
    """One blocking tcpls server connection on loopback that echoes until the peer leaves.

    ``groups`` records the negotiated group; use as a context manager.
    """

    def __init__(self, config: TLSConfig) -> None:
        import threading

        from tcpls import sync

        self.listener = sync.create_server(("127.0.0.1", 0), config)
        self.port = self.listener.getsockname()[1]
        self.groups: list = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        from tcpls.errors import TLSError

        conn, _ = self.listener.accept()
        with conn:
            conn.settimeout(20)
            try:
                while chunk := conn.recv(65536):
                    self.groups.append(conn.group)
                    conn.sendall(chunk)
            except TLSError:
                pass  # e.g. openssl s_client leaving without close_notify

    def __enter__(self) -> "EchoServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join(20)
        self.listener.close()
