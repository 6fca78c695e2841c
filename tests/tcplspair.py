"""In-memory TCPLS client/server over N fake TCP connections and a fake clock."""

from __future__ import annotations

from collections import defaultdict
from typing import Optional

from tcpls.tcpls import events as ev
from tcpls.tcpls.config import TCPLSConfig
from tcpls.tcpls.session import TCPLSSession, route_connection

from tlspair import configs


def tcpls_configs(client_kw: Optional[dict] = None, server_kw: Optional[dict] = None, **tls_kw):
    c, s = configs(**tls_kw)
    s.num_tickets = s.num_tickets if "s_num_tickets" in tls_kw else 1
    return TCPLSConfig(c, **(client_kw or {})), TCPLSConfig(s, **(server_kw or {}))


class TCPLSPair:
    """Links are Connection IDs; ``dropped`` links lose everything written to them."""

    def __init__(self, client_cfg: TCPLSConfig, server_cfg: TCPLSConfig, now: float = 0.0) -> None:
        self.now = now
        self.server_cfg = server_cfg
        self.client = TCPLSSession(client_cfg, is_client=True, server_name="localhost")
        self.server: Optional[TCPLSSession] = None
        self.client_events: list = []
        self.server_events: list = []
        self.dropped: set[int] = set()
        self.held: dict[int, list[bytes]] = defaultdict(list)  # c->s bytes held back (reordering)
        self.hold: set[int] = set()
        self.refused: dict[int, bytes] = {}  # conn_id -> bytes a refused join got back
        self._pending_server_conn: dict[int, bytes] = {}
        self.client.start_handshake(now)

    def _to_server(self, cid: int, data: bytes) -> None:
        if self.server is None or (cid != 0 and cid not in self.server.connection_ids()):
            buf = self._pending_server_conn.get(cid, b"") + data
            routed = route_connection(self.server_cfg, buf)
            if routed is None:
                self._pending_server_conn[cid] = buf
                return
            self._pending_server_conn.pop(cid, None)
            session, is_join = routed
            if is_join:
                assert session is self.server or self.server is None
                got = session.accept_join(buf, self.now)
                assert got == cid
                return
            fresh = TCPLSSession(self.server_cfg, is_client=False)
            if self.server is None:
                self.server = fresh
                fresh.receive_data(0, buf, self.now)
            else:
                try:
                    fresh.receive_data(0, buf, self.now)
                finally:
                    self.refused[cid] = fresh.data_to_send(0)
            return
        self.server.receive_data(cid, data, self.now)

    def pump(self, rounds: int = 200) -> None:
        for _ in range(rounds):
            moved = False
            for cid in self.client.connections_with_data():
                data = self.client.data_to_send(cid)
                if cid in self.dropped:
                    continue
                if cid in self.hold:
                    self.held[cid].append(data)
                    continue
                moved = True
                self._to_server(cid, data)
            if self.server is not None:
                for cid in self.server.connections_with_data():
                    data = self.server.data_to_send(cid)
                    if cid in self.dropped:
                        continue
                    moved = True
                    self.client.receive_data(cid, data, self.now)
            if cid_refused := [c for c in self.refused if self.refused[c]]:
                for c in cid_refused:
                    self.client.receive_data(c, self.refused.pop(c), self.now)
                    moved = True
            self._collect()
            if not moved:
                return
        raise AssertionError("too many rounds")

    def release(self, cid: int) -> None:
        self.hold.discard(cid)
        for data in self.held.pop(cid, []):
            self._to_server(cid, data)

    def _collect(self) -> None:
        while (e := self.client.next_event()) is not None:
            self.client_events.append(e)
        if self.server is not None:
            while (e := self.server.next_event()) is not None:
                self.server_events.append(e)

    def advance(self, dt: float) -> None:
        self.now += dt
        for s in (self.client, self.server):
            if s is not None:
                t = s.get_timer()
                if t is not None and t <= self.now:
                    s.handle_timer(self.now)
        self._collect()

    def join(self) -> int:
        cid = self.client.add_connection(self.now)
        self.pump()
        return cid


def received(events: list, stream_id: int) -> bytes:
    """Reassemble a stream from StreamDataReceived events, checking offsets are contiguous."""
    out = bytearray()
    for e in events:
        if isinstance(e, ev.StreamDataReceived) and e.stream_id == stream_id:
            assert e.offset == len(out), (e.offset, len(out))
            out += e.data
    return bytes(out)


def of_type(events: list, cls) -> list:
    return [e for e in events if isinstance(e, cls)]
