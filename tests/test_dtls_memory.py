"""Memory structure of established DTLS associations (issue 5: <= 1.5 KB each
at 100K connections; benchmarks/bench_dtls_memory.py measures the RSS).

Structural properties, no timing:

* epochs keep raw keys: no AEAD or cipher-context object is reachable from
  an epoch, and the shared AEAD cache stays within its capacity while
  records still round-trip after their AEAD objects were evicted;
* an endpoint replaces established, quiet server associations by the
  compact state, which holds nothing of the handshake (no DTLSConnection,
  handshake state machine, transport, certificates, AEAD objects) and whose
  own object graph (what is not shared with other associations) stays under
  1.5 KB;
* the compact state still does everything an association needs: data both
  ways, KeyUpdate both ways, close_notify — against a real client engine.
"""

from __future__ import annotations

import gc
import sys
import types

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from tcpls.dtls.connection import DTLSConnection
from tcpls.dtls.endpoint import ConnectionClosed, ConnectionEvent, DTLSEndpoint, EndpointLimits, dtls_connection_factory
from tcpls.dtls.established import EstablishedConnection, compact_connection
from tcpls.dtls.handshake import HandshakeTransport
from tcpls.dtls.record import CT_APPLICATION_DATA, DEFAULT_AEAD_CACHE, AEADCache, ReadEpoch, WriteEpoch, parse_datagram
from tcpls.tls import events as ev
from tcpls.tls.config import TLSConfig
from tcpls.tls.enums import CipherSuite, PskKeyExchangeMode
from tcpls.tls.session import ExternalPSK
from tcpls.tls.suites import suite_info

HEAVY = (AESGCM, ChaCha20Poly1305, DTLSConnection, HandshakeTransport)


def reachable(root, stop: set[int]) -> list[object]:
    """Objects reachable from ``root`` through instances and containers
    (not through classes, modules or functions, nor the ids in ``stop``)."""
    seen: dict[int, object] = {}
    todo = [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or id(obj) in stop:
            continue
        if isinstance(obj, (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)):
            continue
        seen[id(obj)] = obj
        todo.extend(gc.get_referents(obj))
        for cls in type(obj).__mro__:  # __slots__ values are not always gc referents
            for name in getattr(cls, "__slots__", ()):
                if isinstance(name, str) and hasattr(obj, name) and name != "__weakref__":
                    todo.append(getattr(obj, name))
    return list(seen.values())


def heavy_objects(objs) -> list[str]:
    names = []
    for o in objs:
        if isinstance(o, HEAVY) or type(o).__name__ in ("_AESMask", "CipherContext", "Certificate", "ServerHandshake"):
            names.append(type(o).__name__)
    return names


# --------------------------------------------------------------------------
# Record layer: raw keys, shared bounded cache
# --------------------------------------------------------------------------
SUITE = suite_info(CipherSuite.TLS_AES_128_GCM_SHA256)


def test_epochs_hold_no_aead_objects_after_use():
    cache = AEADCache(8)
    w = WriteEpoch(3, SUITE, b"s" * 32, cache)
    r = ReadEpoch(3, SUITE, b"s" * 32, 128, cache)
    _, record = w.seal(CT_APPLICATION_DATA, b"hello")
    (rec,), _ = parse_datagram(record, 0)
    assert r.open(rec).data == b"hello"
    assert len(cache) == 2  # one AEAD (shared by both directions' equal key) and one mask
    for epoch in (w, r):
        assert heavy_objects(reachable(epoch, {id(cache)})) == []


def test_cache_is_bounded_and_evicted_keys_still_work():
    cache = AEADCache(4)
    pairs = [
        (WriteEpoch(3, SUITE, bytes([i]) * 32, cache), ReadEpoch(3, SUITE, bytes([i]) * 32, 128, cache)) for i in range(10)
    ]
    for _ in range(3):
        for i, (w, r) in enumerate(pairs):
            _, record = w.seal(CT_APPLICATION_DATA, b"msg %d" % i)
            (rec,), _ = parse_datagram(record, 0)
            assert r.open(rec).data == b"msg %d" % i
            assert len(cache) <= 4
    assert cache.misses > 20  # keys kept being evicted and rebuilt
    with pytest.raises(ValueError):
        AEADCache(0)


# --------------------------------------------------------------------------
# Endpoint compaction with real engines
# --------------------------------------------------------------------------
def psk_configs():
    psk = ExternalPSK(b"mesh", bytes(range(32)), "sha256")
    modes = [PskKeyExchangeMode.psk_ke]
    client = TLSConfig(psk=psk, psk_key_exchange_modes=modes, verify_peer=False)
    server = TLSConfig(psk_lookup=lambda i: psk if i == psk.identity else None, psk_key_exchange_modes=modes)
    return client, server


class Mesh:
    """One server endpoint (compaction on), many client engines, a fake clock."""

    def __init__(self, *, use_cid: bool = False, compact_after: float = 5.0, limits_kw=None, **server_kw) -> None:
        self.client_config, server_config = psk_configs()
        self.endpoint = DTLSEndpoint(
            dtls_connection_factory(server_config, require_cookie=False, use_cid=use_cid, **server_kw),
            limits=EndpointLimits(compact_after=compact_after, **(limits_kw or {})),
            cid_length=8 if use_cid else 0,
            compactor=compact_connection,
        )
        self.use_cid = use_cid
        self.clients: dict[tuple, DTLSConnection] = {}
        self.now = 100.0
        self.server_events: list = []

    def connect(self, addr) -> DTLSConnection:
        c = DTLSConnection(self.client_config, is_client=True, connection_id=b"" if self.use_cid else None)
        self.clients[addr] = c
        c.start_handshake(self.now)
        self.pump()
        assert c.handshake_complete
        return c

    def pump(self) -> None:
        ep = self.endpoint
        for _ in range(50):
            moved = False
            for addr, c in self.clients.items():
                for d in c.datagrams_to_send(self.now):
                    ep.receive_datagram(d, addr, self.now)
                    moved = True
            for d, addr in ep.datagrams_to_send(self.now):
                if addr in self.clients:
                    self.clients[addr].receive_datagram(d, self.now)
                    moved = True
            while (e := ep.next_event()) is not None:
                self.server_events.append(e)
            if not moved:
                return

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while True:
            timers = [t for t in [self.endpoint.get_timer(), *(c.get_timer() for c in self.clients.values())] if t is not None]
            nxt = min([t for t in timers if t <= end], default=None)
            if nxt is None:
                break
            self.now = max(self.now, nxt)
            self.endpoint.handle_timer(self.now)
            for c in self.clients.values():
                c.handle_timer(self.now)
            self.pump()
        self.now = end
        self.endpoint.handle_timer(self.now)
        self.pump()

    def server_data(self) -> list[bytes]:
        out = [e.event.data for e in self.server_events if isinstance(e, ConnectionEvent) and isinstance(e.event, ev.DataReceived)]
        self.server_events.clear()
        return out


def client_events(c: DTLSConnection) -> list:
    out = []
    while (e := c.next_event()) is not None:
        out.append(e)
    return out


@pytest.mark.parametrize("use_cid", [False, True])
def test_established_server_associations_are_compacted_and_small(use_cid):
    mesh = Mesh(use_cid=use_cid)
    for i in range(20):
        mesh.connect(("10.0.0.%d" % i, 4000 + i))
    assocs = mesh.endpoint.associations()
    assert len(assocs) == 20 and all(a.established for a in assocs)
    assert not any(isinstance(a.conn, EstablishedConnection) for a in assocs)  # not before compact_after
    mesh.advance(6.0)
    assert all(isinstance(a.conn, EstablishedConnection) for a in assocs)
    gc.collect()
    # What each association owns alone (shared suite tables, limits and
    # the endpoint's AEAD cache are excluded by intersecting two graphs).
    graphs = [reachable(a, {id(mesh.endpoint), id(DEFAULT_AEAD_CACHE)}) for a in assocs[:3]]
    shared = {id(o) for o in graphs[0]} & {id(o) for o in graphs[1]}
    for graph in graphs:
        own = [o for o in graph if id(o) not in shared]
        assert heavy_objects(graph) == []
        size = sum(sys.getsizeof(o) for o in own)
        assert size <= 1536, sorted(((sys.getsizeof(o), type(o).__name__) for o in own), reverse=True)


def test_compact_state_keeps_serving_data_key_updates_and_close():
    mesh = Mesh()
    addr = ("10.1.1.1", 5000)
    c = mesh.connect(addr)
    mesh.advance(6.0)
    (assoc,) = mesh.endpoint.associations()
    assert isinstance(assoc.conn, EstablishedConnection)
    # data both ways
    c.send_data(b"to server")
    mesh.pump()
    assert mesh.server_data() == [b"to server"]
    mesh.endpoint.send_data(assoc, b"to client", mesh.now)
    mesh.pump()
    assert [e.data for e in client_events(c) if isinstance(e, ev.DataReceived)] == [b"to client"]
    # client-initiated KeyUpdate (update_requested): the compact state ACKs,
    # moves to the next read epoch and answers with its own KeyUpdate.
    c.key_update(True)
    mesh.pump()
    assert c.write_epoch == 4 and assoc.conn.read_epochs[-1] == 4 and assoc.conn.write_epoch == 4
    assert max(c.read_epochs) == 4
    # server-initiated KeyUpdate, switched only once the client ACKed it (§8)
    mesh.endpoint.key_update(assoc, mesh.now)
    assert assoc.conn.write_epoch == 4 and assoc.conn.get_timer() is not None
    mesh.pump()
    assert assoc.conn.write_epoch == 5 and assoc.conn.get_timer() is None
    c.send_data(b"after updates")
    mesh.endpoint.send_data(assoc, b"back after updates", mesh.now)
    mesh.pump()
    assert mesh.server_data() == [b"after updates"]
    assert [e.data for e in client_events(c) if isinstance(e, ev.DataReceived)] == [b"back after updates"]
    # close_notify from the client ends the association on both sides
    c.close()
    mesh.pump()
    assert mesh.endpoint.connection_count == 0
    assert any(isinstance(e, ev.CloseNotifyReceived) for e in client_events(c))


def test_compact_key_update_is_retransmitted_until_acked():
    mesh = Mesh()
    addr = ("10.1.1.2", 5000)
    c = mesh.connect(addr)
    mesh.advance(6.0)
    (assoc,) = mesh.endpoint.associations()
    mesh.endpoint.key_update(assoc, mesh.now)
    first = mesh.endpoint.datagrams_to_send(mesh.now)  # lost
    assert len(first) == 1
    deadline = mesh.endpoint.get_timer()
    assert deadline == pytest.approx(mesh.now + 1.0)
    mesh.advance(1.0)  # retransmitted, delivered, ACKed
    assert assoc.conn.write_epoch == 4 and assoc.conn.get_timer() is None
    assert max(c.read_epochs) == 4


def _assert_open_and_delivering(mesh, assoc, c, tag: bytes) -> None:
    mesh.endpoint.send_data(assoc, b"down " + tag, mesh.now)
    c.send_data(b"up " + tag)
    mesh.pump()
    closed = [e for e in mesh.server_events if isinstance(e, ConnectionClosed)]
    assert not closed, closed[0].error
    assert mesh.server_data() == [b"up " + tag]
    assert [e.data for e in client_events(c) if isinstance(e, ev.DataReceived)] == [b"down " + tag]


def test_compact_one_directional_key_updates_accept_acks_from_a_lower_epoch():
    """§8 / §7: only the server updates its keys; the client acknowledges
    each KeyUpdate from its own (unchanged) epoch 3, so from the second one
    on the ACK names a record of a higher epoch than its own. That is
    legitimate after the handshake and must not be illegal_parameter."""
    mesh = Mesh()
    addr = ("10.1.1.4", 5000)
    c = mesh.connect(addr)
    mesh.advance(6.0)
    (assoc,) = mesh.endpoint.associations()
    assert isinstance(assoc.conn, EstablishedConnection)
    for i in range(4):
        mesh.endpoint.key_update(assoc, mesh.now, request_peer_update=False)
        mesh.pump()
        assert assoc.conn.write_epoch == 4 + i and assoc.conn.get_timer() is None
        assert c.write_epoch == 3 and max(c.read_epochs) == 4 + i
        _assert_open_and_delivering(mesh, assoc, c, b"%d" % i)


@pytest.mark.parametrize("batch", [False, True])
def test_compact_automatic_key_updates(batch):
    """key_update_after survives compaction: the compact state updates its
    keys automatically (one direction only), the client ACKs from epoch 3."""
    mesh = Mesh(key_update_after=4)
    addr = ("10.1.1.5", 5000)
    c = mesh.connect(addr)
    mesh.advance(6.0)
    (assoc,) = mesh.endpoint.associations()
    assert isinstance(assoc.conn, EstablishedConnection)
    sent = []
    for round_ in range(5):
        chunks = [b"r%d-%d" % (round_, i) for i in range(5)]
        sent += chunks
        if batch:
            mesh.endpoint.send_data_batch(assoc, chunks, mesh.now)
        else:
            for chunk in chunks:
                mesh.endpoint.send_data(assoc, chunk, mesh.now)
        mesh.pump()
    assert not [e for e in mesh.server_events if isinstance(e, ConnectionClosed)]
    assert assoc.conn.write_epoch >= 7 and c.write_epoch == 3
    got = [e.data for e in client_events(c) if isinstance(e, ev.DataReceived)]
    assert got == sent


@pytest.mark.parametrize("compact", [False, True])
def test_peer_close_linger_lets_the_server_answer_after_the_close_notify(compact):
    """EndpointLimits.peer_close_linger: the client's data and close_notify
    arrive together; the server still answers (half-close), then closes."""
    mesh = Mesh(limits_kw={"peer_close_linger": 3.0})
    addr = ("10.1.1.6", 5000)
    c = mesh.connect(addr)
    if compact:
        mesh.advance(6.0)
    (assoc,) = mesh.endpoint.associations()
    assert isinstance(assoc.conn, EstablishedConnection) == compact
    c.send_data(b"request")
    c.close()
    mesh.pump()
    assert mesh.server_data() == [b"request"]
    assert mesh.endpoint.connection_count == 1  # still open for our answer
    mesh.endpoint.send_data(assoc, b"answer", mesh.now)
    mesh.endpoint.close(assoc, mesh.now)
    mesh.pump()
    events = client_events(c)
    assert [e.data for e in events if isinstance(e, ev.DataReceived)] == [b"answer"]
    assert any(isinstance(e, ev.CloseNotifyReceived) for e in events)
    assert mesh.endpoint.connection_count == 0
    # Without an answer the linger time ends it.
    c2 = mesh.connect(("10.1.1.7", 5000))
    c2.close()
    mesh.pump()
    assert mesh.endpoint.connection_count == 1
    mesh.advance(3.5)
    assert mesh.endpoint.connection_count == 0


def test_compact_state_drops_garbage_and_fails_on_unexpected_handshake_messages():
    mesh = Mesh()
    addr = ("10.1.1.3", 5000)
    mesh.connect(addr)
    mesh.advance(6.0)
    (assoc,) = mesh.endpoint.associations()
    for junk in (b"", b"\x2f" * 40, b"\x17\xfe\xfd" + b"\x00" * 30, bytes(range(256))):
        mesh.endpoint.receive_datagram(junk, addr, mesh.now)
    assert assoc.established  # invalid records are dropped (§4.5.2)
    # A genuine record carrying a handshake message other than KeyUpdate:
    # sealed with the client's current keys, message_seq the next one.
    conn = assoc.conn
    client = mesh.clients[addr]
    from tcpls.dtls.handshake import HandshakeFragment

    frag = HandshakeFragment(4, 1, conn._recv_msg_seq, 0, b"\x00").encode()  # NewSessionTicket from a client
    _, record = client._records.seal(22, frag)
    mesh.endpoint.receive_datagram(record, addr, mesh.now)
    closed = [e for e in mesh.endpoint._events if isinstance(e, ConnectionClosed)]
    assert closed and closed[0].error.alert_name == "unexpected_message"
    assert mesh.endpoint.connection_count == 0


def test_cids_issued_after_the_handshake_route_to_the_association():
    mesh = Mesh(use_cid=True)
    addr = ("10.1.1.9", 5000)
    c = mesh.connect(addr)
    (assoc,) = mesh.endpoint.associations()
    (new_cid,) = assoc.conn.issue_connection_ids(1)
    mesh.endpoint._collect(assoc, mesh.now)  # the engine's event reaches the endpoint
    mesh.pump()
    assert mesh.endpoint._by_cid[new_cid] is assoc
    # The client switches to the new CID and moves to another address.
    c.use_next_connection_id()
    assert c.send_cid == new_cid
    client_events(c)
    mesh.clients[("10.9.9.9", 6000)] = mesh.clients.pop(addr)
    c.send_data(b"from a new address")
    mesh.pump()
    assert mesh.server_data() == [b"from a new address"]
    assert assoc.addr == ("10.9.9.9", 6000)  # routed by the new CID, then the address followed


@pytest.mark.parametrize("compacted", [False, True])
def test_forged_cid_from_another_address_does_not_move_the_association(compacted):
    mesh = Mesh(use_cid=True)
    addr = ("10.1.1.10", 5000)
    c = mesh.connect(addr)
    if compacted:
        mesh.advance(6.0)
    (assoc,) = mesh.endpoint.associations()
    assert isinstance(assoc.conn, EstablishedConnection) == compacted
    # A copy of the CID with garbage behind it, from an attacker's address.
    forged = bytes([0x3F]) + assoc.cid + b"\x00\x05\x00\x20" + bytes(32)
    mesh.endpoint.receive_datagram(forged, ("6.6.6.6", 666), mesh.now)
    assert assoc.addr == addr and assoc.established
    # A replayed genuine record from another address does not move it either.
    c.send_data(b"genuine")
    (datagram,) = c.datagrams_to_send(mesh.now)
    mesh.endpoint.receive_datagram(datagram, addr, mesh.now)
    mesh.endpoint.receive_datagram(datagram, ("6.6.6.6", 666), mesh.now)
    assert assoc.addr == addr
