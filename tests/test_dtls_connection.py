"""DTLSConnection: client and server engines over a simulated network with a fake clock."""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import Optional

import pytest

from tcpls.dtls.connection import DTLSConnection, cookie_is_valid, stateless_hello_retry
from tcpls.dtls.cookie import CookieSecret
from tcpls.dtls.record import CT_APPLICATION_DATA, DropReason, encode_plaintext, parse_datagram
from tcpls.errors import IllegalParameter, LocalProtocolError, RemoteAlert, UsageError
from tcpls.tls import events as ev
from tcpls.tls.enums import DTLS_1_3, AlertDescription, NamedGroup
from tcpls.tls.session import ExternalPSK

from tlspair import client_cert, configs

ADDR = ("192.0.2.1", 4433)


# --------------------------------------------------------------------------
# A simulated network and a fake clock
# --------------------------------------------------------------------------
@dataclass
class Net:
    """Datagrams between a client and a server: loss, duplication, delay with jitter (reordering)."""

    client: DTLSConnection
    server: DTLSConnection
    seed: int = 0
    loss: float = 0.0
    duplicate: float = 0.0
    delay: float = 0.02
    jitter: float = 0.0
    now: float = 0.0
    rng: random.Random = field(init=False)
    queue: list = field(default_factory=list)
    count: int = 0
    sent: dict = field(default_factory=lambda: {"client": [], "server": []})
    events: dict = field(default_factory=lambda: {"client": [], "server": []})
    drop_filter: Optional[object] = None  # callable(side, datagram) -> bool (True: drop)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def _collect(self) -> None:
        for side, conn, peer in (("client", self.client, "server"), ("server", self.server, "client")):
            for d in conn.datagrams_to_send(self.now):
                self.sent[side].append((self.now, d))
                if self.drop_filter is not None and self.drop_filter(side, d):
                    continue
                if self.rng.random() < self.loss:
                    continue
                copies = 2 if self.rng.random() < self.duplicate else 1
                for _ in range(copies):
                    at = self.now + self.delay + self.rng.random() * self.jitter
                    self.count += 1
                    heapq.heappush(self.queue, (at, self.count, peer, d))

    def _drain_events(self) -> None:
        for side, conn in (("client", self.client), ("server", self.server)):
            while (e := conn.next_event()) is not None:
                self.events[side].append(e)

    def run(self, until: float = 600.0, stop=None) -> None:
        """Deliver datagrams and fire timers in time order until nothing is
        left to do, ``stop()`` is true, or ``until``."""
        for _ in range(100000):
            self._collect()
            self._drain_events()
            if stop is not None and stop():
                return
            times = [t for t in (self.client.get_timer(), self.server.get_timer()) if t is not None]
            if self.queue:
                times.append(self.queue[0][0])
            if not times:
                return
            t = min(times)
            if t > until:
                return
            self.now = max(self.now, t)
            if self.queue and self.queue[0][0] <= self.now:
                _, _, dst, d = heapq.heappop(self.queue)
                (self.client if dst == "client" else self.server).receive_datagram(d, self.now)
                continue
            for conn in (self.client, self.server):
                timer = conn.get_timer()
                if timer is not None and timer <= self.now:
                    conn.handle_timer(self.now)
        raise AssertionError("simulation did not settle")

    def of(self, side: str, kind: type) -> list:
        return [e for e in self.events[side] if isinstance(e, kind)]


def make_pair(key_type: str = "ec256", *, client_kw=None, server_kw=None, **cfg_kw) -> tuple[DTLSConnection, DTLSConnection]:
    c_cfg, s_cfg = configs(key_type, **cfg_kw)
    client = DTLSConnection(c_cfg, is_client=True, server_name="localhost", **(client_kw or {}))
    server = DTLSConnection(s_cfg, is_client=False, client_address=ADDR, **(server_kw or {}))
    return client, server


def handshake(client: DTLSConnection, server: DTLSConnection, **net_kw) -> Net:
    net = Net(client, server, **net_kw)
    client.start_handshake(net.now)
    net.run(stop=lambda: client.handshake_complete and server.handshake_complete and not net.queue)
    assert client.handshake_complete and server.handshake_complete
    return net


# --------------------------------------------------------------------------
# Handshakes
# --------------------------------------------------------------------------
@pytest.mark.parametrize("key_type", ["ec256", "rsa2048"])
def test_handshake_and_data(key_type: str) -> None:
    client, server = make_pair(key_type)
    net = handshake(client, server)
    net.run()
    (hc,) = net.of("client", ev.HandshakeComplete)
    assert hc.version == DTLS_1_3 and hc.peer_certificate_subject == "CN=localhost"
    assert net.of("server", ev.HandshakeComplete)[0].version == DTLS_1_3
    assert client.cipher_suite == server.cipher_suite is not None
    assert client.peer_certificates[0].subject.rfc4514_string() == "CN=localhost"
    # Cookie exchange by default (§5.1): one stateless HelloRetryRequest.
    assert client.hello_retry and server.hello_retries_sent == 1
    assert client.write_epoch == server.write_epoch == 3
    # Both flights acknowledged: no timer left (client Finished ACKed by the
    # server, NewSessionTickets ACKed by the client).
    assert client.get_timer() is None and server.get_timer() is None
    assert len(net.of("client", ev.SessionTicketReceived)) == 2
    client.send_data(b"ping")
    server.send_data(b"pong")
    net.run()
    assert [e.data for e in net.of("server", ev.DataReceived)] == [b"ping"]
    assert [e.data for e in net.of("client", ev.DataReceived)] == [b"pong"]
    assert client.export_keying_material("EXPORTER-test") == server.export_keying_material("EXPORTER-test")


def test_wire_format_is_dtls() -> None:
    """ClientHello: legacy_version 0xfefd, empty legacy_session_id and
    legacy_cookie, supported_versions 0xfefc; no ChangeCipherSpec anywhere."""
    client, server = make_pair()
    net = handshake(client, server)
    first = net.sent["client"][0][1]
    assert first[0] == 22 and first[1:3] == b"\xfe\xfd"  # DTLSPlaintext handshake
    body = first[13 + 12 :]
    assert body[0:2] == b"\xfe\xfd"  # ClientHello.legacy_version
    assert body[34] == 0 and body[35] == 0  # legacy_session_id, legacy_cookie: empty
    assert b"\x00\x2b\x00\x03\x02\xfe\xfc" in body  # supported_versions = [DTLS 1.3]
    for side in ("client", "server"):
        for _, d in net.sent[side]:
            records, drops = parse_datagram(d, 0)
            assert not drops
            assert all(getattr(r, "content_type", 23) != 20 for r in records)


@pytest.mark.parametrize(
    "seed, key_type, cookie", [(s, "ec256", True) for s in range(30)] + [(s, "rsa2048", False) for s in range(10)]
)
def test_lossy_network(seed: int, key_type: str, cookie: bool) -> None:
    """20 % loss, 10 % duplication, reordering: handshakes complete and
    application data arrives at most once, intact (DTLS does not retransmit
    it; what the network loses is lost). RSA (larger flights) without the
    cookie exchange also exercises the amplification limit."""
    client, server = make_pair(key_type, server_kw={"require_cookie": cookie})
    net = handshake(client, server, seed=seed, loss=0.2, duplicate=0.1, jitter=0.05)
    net.run()
    sent_c = [f"c{seed}-{i}".encode() * (1 + i % 7) for i in range(40)]
    sent_s = [f"s{seed}-{i}".encode() * (1 + i % 5) for i in range(40)]
    for a, b in zip(sent_c, sent_s):
        client.send_data(a)
        server.send_data(b)
        net.run(until=net.now + 0.005)
    net.run()
    got_s = [e.data for e in net.of("server", ev.DataReceived)]
    got_c = [e.data for e in net.of("client", ev.DataReceived)]
    for got, sent in ((got_s, sent_c), (got_c, sent_s)):
        assert len(got) == len(set(got)), "a record was delivered twice"
        assert set(got) <= set(sent)
        assert len(got) >= len(sent) // 2  # 20 % loss: most arrive
    # Nothing is left outstanding (all flights acknowledged eventually).
    assert client.get_timer() is None and server.get_timer() is None


def test_no_loss_with_reordering_and_duplication_delivers_everything_once() -> None:
    client, server = make_pair()
    net = handshake(client, server, seed=7, duplicate=0.5, jitter=0.2)
    msgs = [bytes([i]) * (i + 1) for i in range(100)]
    for m in msgs:
        client.send_data(m)
    net.run()
    got = [e.data for e in net.of("server", ev.DataReceived)]
    assert sorted(got) == sorted(msgs)


def test_retransmission_backs_off() -> None:
    """A ClientHello into a black hole: resent after 1, 2, 4, 8 ... s (§5.8.2)."""
    client, server = make_pair()
    net = Net(client, server, drop_filter=lambda side, d: True)
    client.start_handshake(0.0)
    net.run(until=100.0)
    times = [t for t, _ in net.sent["client"]]
    gaps = [round(b - a, 6) for a, b in zip(times, times[1:])]
    assert gaps[:6] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    assert not server.handshake_complete


def test_gives_up_after_max_retransmissions() -> None:
    client, server = make_pair(client_kw={"max_retransmissions": 3})
    net = Net(client, server, drop_filter=lambda side, d: True)
    client.start_handshake(0.0)
    net.run()
    assert client.gave_up and len(net.sent["client"]) == 4 and client.get_timer() is None


def test_lost_ack_of_client_finished_is_resent() -> None:
    """§7.1: the server keeps epoch 2 read keys and acknowledges a
    retransmitted client Finished whose ACK was lost."""
    client, server = make_pair(server_kw={})
    state = {"dropped": 0}

    def drop_first_server_ack(side: str, d: bytes) -> bool:
        # After the server completed, its first datagram is the ACK of the
        # client's Finished (epoch 3).
        if side == "server" and server.handshake_complete and state["dropped"] == 0:
            state["dropped"] = 1
            return True
        return False

    net = Net(client, server, drop_filter=drop_first_server_ack)
    client.start_handshake(0.0)
    net.run()
    assert state["dropped"] == 1
    assert client.handshake_complete and server.handshake_complete
    assert 2 in server.read_epochs
    assert client.get_timer() is None  # the retransmitted Finished was acknowledged
    assert len(net.of("server", ev.HandshakeComplete)) == 1


# --------------------------------------------------------------------------
# Cookies and HelloRetryRequest (§5.1)
# --------------------------------------------------------------------------
def test_stateless_hello_retry_keeps_no_state() -> None:
    c_cfg, s_cfg = configs()
    secret = CookieSecret(b"k" * 32)
    client = DTLSConnection(c_cfg, is_client=True, server_name="localhost")
    client.start_handshake(0.0)
    (ch1,) = client.datagrams_to_send(0.0)
    assert not cookie_is_valid(ch1, ADDR, secret, 0.0)
    hrr = stateless_hello_retry(s_cfg, ch1, ADDR, secret, 0.0)
    assert hrr is not None
    # The same answer every time: nothing was remembered in between.
    assert stateless_hello_retry(s_cfg, ch1, ADDR, secret, 0.0) == hrr
    client.receive_datagram(hrr, 0.1)
    (ch2,) = client.datagrams_to_send(0.1)
    assert stateless_hello_retry(s_cfg, ch2, ADDR, secret, 0.1) is None
    assert cookie_is_valid(ch2, ADDR, secret, 0.1)
    # The cookie is bound to the client's address and expires with the key rotation.
    assert not cookie_is_valid(ch2, ("192.0.2.2", 4433), secret, 0.1)
    assert not cookie_is_valid(ch2, ADDR, CookieSecret(b"x" * 32), 0.1)
    assert cookie_is_valid(ch2, ADDR, secret, secret.rotation * 1.5)
    assert not cookie_is_valid(ch2, ADDR, secret, secret.rotation * 2.5)
    # Only now is a connection created, from the cookie.
    server = DTLSConnection(s_cfg, is_client=False, client_address=ADDR, cookie_secret=secret)
    server.receive_datagram(ch2, 0.2)
    net = Net(client, server, now=0.2)
    net.run()
    assert client.handshake_complete and server.handshake_complete
    assert server.hello_retry and server.hello_retries_sent == 0


def test_server_connection_before_cookie_keeps_no_state() -> None:
    c_cfg, s_cfg = configs()
    client = DTLSConnection(c_cfg, is_client=True, server_name="localhost")
    server = DTLSConnection(s_cfg, is_client=False, client_address=ADDR)
    client.start_handshake(0.0)
    (ch1,) = client.datagrams_to_send(0.0)
    for _ in range(3):
        server.receive_datagram(ch1, 0.0)
    hrrs = server.datagrams_to_send(0.0)
    assert len(hrrs) == 3 and len(set(hrrs)) == 1
    assert server.get_timer() is None  # the HelloRetryRequest is never retransmitted
    assert server._hs.state.name == "START" and server._transport.reassembler.next_seq == 0
    assert server.read_epochs == [] and server.write_epoch == 0


def test_cookie_from_another_address_is_refused() -> None:
    c_cfg, s_cfg = configs()
    secret = CookieSecret()
    client = DTLSConnection(c_cfg, is_client=True, server_name="localhost")
    client.start_handshake(0.0)
    (ch1,) = client.datagrams_to_send(0.0)
    client.receive_datagram(stateless_hello_retry(s_cfg, ch1, ADDR, secret, 0.0), 0.0)
    (ch2,) = client.datagrams_to_send(0.0)
    other = DTLSConnection(s_cfg, is_client=False, client_address=("198.51.100.7", 9), cookie_secret=secret)
    with pytest.raises(IllegalParameter):
        other.receive_datagram(ch2, 0.0)
    (alert,) = other.datagrams_to_send(0.0)
    assert alert[0] == 21 and alert[-1] == AlertDescription.illegal_parameter
    assert other.terminated


def _refragment(datagram: bytes, size: int, order=None) -> list[bytes]:
    """The handshake message of a one-record plaintext datagram, cut into
    fragments of ``size`` bytes, one record each (``order``: permutation)."""
    from tcpls.dtls.handshake import fragment_message, parse_fragments

    (rec,), _ = parse_datagram(datagram, 0)
    (frag,) = parse_fragments(rec.fragment)
    frags = fragment_message(frag.msg_type, frag.body, frag.message_seq, size)
    records = [encode_plaintext(22, rec.seq + i, f.encode()) for i, f in enumerate(frags)]
    return [records[i] for i in (order or range(len(records)))]


def test_client_hello_fragments_in_one_datagram_answered_statelessly() -> None:
    """§5.5: a ClientHello in several records of one datagram (any order,
    overlapping or duplicated fragments) gets the same HelloRetryRequest as
    the whole one; nothing is kept."""
    c_cfg, s_cfg = configs()
    secret = CookieSecret(b"k" * 32)
    client = DTLSConnection(c_cfg, is_client=True, server_name="localhost")
    client.start_handshake(0.0)
    (ch1,) = client.datagrams_to_send(0.0)
    expected = stateless_hello_retry(s_cfg, ch1, ADDR, secret, 0.0)
    assert expected is not None
    pieces = _refragment(ch1, 50)
    assert len(pieces) > 4
    reordered = b"".join(reversed(pieces)) + pieces[2]
    hrr = stateless_hello_retry(s_cfg, reordered, ADDR, secret, 0.0)
    assert hrr is not None and hrr[13:] == expected[13:]  # same HRR (record seq aside)
    # Overlapping fragments of other sizes (§5.5), interleaved.
    mixed = _refragment(ch1, 70)[::2] + _refragment(ch1, 45)[1::2] + _refragment(ch1, 90)
    hrr2 = stateless_hello_retry(s_cfg, b"".join(mixed), ADDR, secret, 0.0)
    assert hrr2 is not None and hrr2[13:] == expected[13:]
    # Missing a fragment: no answer.
    assert stateless_hello_retry(s_cfg, b"".join(pieces[:-1]), ADDR, secret, 0.0) is None
    # Scattered into more than 32 disjoint pieces before completing: given up.
    tiny = _refragment(ch1, 3)
    assert len(tiny) > 66
    assert stateless_hello_retry(s_cfg, b"".join(tiny[::2] + tiny[1::2]), ADDR, secret, 0.0) is None
    # A fragment contradicting another: no answer (epoch 0 is unauthenticated).
    bad = bytearray(pieces[1])
    bad[-1] ^= 1
    assert stateless_hello_retry(s_cfg, b"".join(pieces) + bytes(bad), ADDR, secret, 0.0) is None
    client.receive_datagram(hrr, 0.1)
    net = Net(client, DTLSConnection(s_cfg, is_client=False, client_address=ADDR, cookie_secret=secret), now=0.1)
    net.run()
    assert client.handshake_complete and net.server.handshake_complete


@pytest.mark.parametrize("seed", range(6))
def test_client_hello_over_several_datagrams_with_cookie(seed: int) -> None:
    """A ClientHello bigger than a datagram (large key shares, a 256-byte
    datagram limit) is fragmented over several datagrams; the server connection waiting for
    its cookie reassembles it (bounded buffer) and answers with the
    stateless HelloRetryRequest; the cookied ClientHello2, also fragmented,
    completes the handshake. With loss, reordering and duplication."""
    big_shares = [NamedGroup.x25519, NamedGroup.secp521r1, NamedGroup.ffdhe2048]  # like a hybrid PQ share
    client, server = make_pair(client_kw={"max_datagram_size": 256}, c_key_share_groups=big_shares)
    net = handshake(client, server, seed=seed, loss=0.15 if seed else 0.0, duplicate=0.1, jitter=0.03)
    first = [d for t, d in net.sent["client"] if t == 0.0]
    assert len(first) >= 3  # the ClientHello did not fit one datagram
    assert client.hello_retry and server.hello_retries_sent >= 1
    client.send_data(b"after a fragmented hello")
    net.loss = 0.0
    net.run()
    assert net.of("server", ev.DataReceived)[-1].data == b"after a fragmented hello"


def test_endpoint_reassembler_with_stateless_functions() -> None:
    """The endpoint's view: one ClientHelloReassembler for all addresses in
    front of stateless_hello_retry / cookie_is_valid; the connection is
    created only for the complete cookied ClientHello2."""
    from tcpls.dtls.connection import ClientHelloReassembler

    c_cfg, s_cfg = configs()
    secret = CookieSecret(b"e" * 32)
    reasm = ClientHelloReassembler()
    client = DTLSConnection(c_cfg, is_client=True, server_name="localhost", max_datagram_size=200)
    client.start_handshake(0.0)
    ch1 = client.datagrams_to_send(0.0)
    assert len(ch1) >= 2
    outs = [reasm.add(ADDR, d, 0.0) for d in reversed(ch1)]
    assert outs[:-1] == [None] * (len(ch1) - 1) and outs[-1] is not None
    assert len(reasm) == 0 and reasm.buffered_bytes == 0  # forgotten once complete
    hrr = stateless_hello_retry(s_cfg, outs[-1], ADDR, secret, 0.0)
    assert hrr is not None
    client.receive_datagram(hrr, 0.1)
    ch2 = client.datagrams_to_send(0.1)
    assert len(ch2) >= 2
    whole = None
    for d in ch2:
        assert not cookie_is_valid(d, ADDR, secret, 0.1)  # a fragment alone is not enough
        whole = reasm.add(ADDR, d, 0.1) or whole
    assert whole is not None and cookie_is_valid(whole, ADDR, secret, 0.1)
    server = DTLSConnection(s_cfg, is_client=False, client_address=ADDR, cookie_secret=secret)
    server.receive_datagram(whole, 0.1)
    net = Net(client, server, now=0.1)
    net.run()
    assert client.handshake_complete and server.handshake_complete


@pytest.mark.parametrize("seed", range(20))
def test_client_hello_reassembler_random_fragmentation(seed: int) -> None:
    """Any fragmentation (sizes, overlaps, duplicates), any packing into
    datagrams, any order: the reassembled ClientHello is the original."""
    from tcpls.dtls.connection import ClientHelloReassembler
    from tcpls.dtls.handshake import parse_fragments

    rng = random.Random(seed)
    c_cfg, _ = configs(c_key_share_groups=[NamedGroup.x25519, NamedGroup.secp384r1])
    client = DTLSConnection(c_cfg, is_client=True, server_name="localhost")
    client.start_handshake(0.0)
    (ch1,) = client.datagrams_to_send(0.0)
    (rec,), _ = parse_datagram(ch1, 0)
    (orig,) = parse_fragments(rec.fragment)
    records = []
    for size in (rng.randrange(20, 200) for _ in range(rng.randrange(1, 4))):
        records += _refragment(ch1, size)
    records = [r for r in records if rng.random() < 0.7] + _refragment(ch1, rng.randrange(30, 300))
    records += rng.sample(records, rng.randrange(0, 3))  # duplicates
    rng.shuffle(records)
    reasm = ClientHelloReassembler()
    done = []
    i = 0
    while i < len(records):
        n = rng.randrange(1, 4)
        out = reasm.add(ADDR, b"".join(records[i : i + n]), 0.0)
        if out is not None:
            done.append(out)
        i += n
    assert done, "never completed"
    for d in done:
        recs, _ = parse_datagram(d, 0)
        frags = [f for r in recs for f in parse_fragments(r.fragment)]
        got = bytearray(orig.length)
        for f in frags:
            got[f.fragment_offset : f.end] = f.body
        assert bytes(got) == orig.body
    assert len(reasm) <= 1


def test_client_hello_reassembler_bounds() -> None:
    from tcpls.dtls.connection import ClientHelloReassembler

    c_cfg, _ = configs()
    client = DTLSConnection(c_cfg, is_client=True, server_name="localhost")
    client.start_handshake(0.0)
    (ch1,) = client.datagrams_to_send(0.0)
    pieces = _refragment(ch1, 100)
    n = len(ch1) - 13 - 12  # the ClientHello body length
    # A whole ClientHello passes through untouched, nothing buffered.
    reasm = ClientHelloReassembler(max_entries=2, max_bytes=3 * n, timeout=5.0)
    assert reasm.add("a", ch1, 0.0) == ch1 and len(reasm) == 0
    # Not a ClientHello fragment: ignored.
    assert reasm.add("a", b"\x17garbage", 0.0) is None and len(reasm) == 0
    # Entry limit: a third address evicts the oldest.
    for addr in ("a", "b", "c"):
        assert reasm.add(addr, pieces[0], 0.0) is None
    assert len(reasm) == 2 and reasm.evicted == 1 and reasm.buffered_bytes == 2 * n
    assert all(reasm.add("a", p, 0.0) is None for p in pieces[1:])  # "a" starts over...
    assert reasm.add("a", pieces[0], 0.0) is not None  # ...and completes
    # Timeout: an incomplete entry is forgotten.
    reasm = ClientHelloReassembler(timeout=5.0)
    reasm.add("a", pieces[0], 0.0)
    assert reasm.get_timer() == 5.0
    reasm.expire(5.0)
    assert len(reasm) == 0 and reasm.get_timer() is None
    for p in pieces[1:]:
        assert reasm.add("a", p, 6.0) is None  # pieces[0] was forgotten
    # Byte limit and message size limit.
    reasm = ClientHelloReassembler(max_bytes=n + 10)
    reasm.add("a", pieces[0], 0.0)
    reasm.add("b", pieces[0], 0.0)
    assert len(reasm) == 1 and reasm.buffered_bytes == n
    small = ClientHelloReassembler(max_message_size=n - 1)
    assert small.add("a", pieces[0], 0.0) is None and len(small) == 0
    # A fragment contradicting buffered bytes resets the entry; another
    # message (new message_seq / length) replaces it.
    reasm = ClientHelloReassembler()
    reasm.add("a", pieces[0], 0.0)
    bad = bytearray(pieces[0])
    bad[-1] ^= 1
    assert reasm.add("a", bytes(bad), 0.0) is None and len(reasm) == 0
    # Random garbage never raises.
    rng = random.Random(3)
    for _ in range(300):
        reasm.add(rng.randrange(5), bytes([22]) + rng.randbytes(rng.randrange(40)), 0.0)
        reasm.add(rng.randrange(5), pieces[0][:13] + rng.randbytes(rng.randrange(40)), 0.0)
    assert reasm.buffered_bytes <= reasm.max_bytes


@pytest.mark.parametrize("stateless", [True, False])
def test_hello_retry_for_an_unsupported_key_share(stateless: bool) -> None:
    """The client's only key share is for a group the server does not
    accept: the HRR (stateless with a cookie, or the state machine's own)
    asks for a supported one."""
    client, server = make_pair(
        c_groups=[NamedGroup.secp256r1, NamedGroup.x25519],
        c_key_share_groups=[NamedGroup.secp256r1],
        s_groups=[NamedGroup.x25519],
        server_kw={"require_cookie": stateless},
    )
    net = handshake(client, server, seed=5, loss=0.2, jitter=0.05)
    assert client.group == server.group == NamedGroup.x25519
    assert client.hello_retry and server.hello_retry
    net.run()


@pytest.mark.parametrize("endpoint", [False, True])
def test_stateless_hello_retry_honours_select_context(endpoint: bool) -> None:
    """The stateless HelloRetryRequest picks the suite and group of the
    configuration ``select_context`` chooses (here by ALPN), not of the
    default one; the ClientHello2 is then served by that configuration."""
    from dataclasses import replace

    from tcpls.tls.enums import CipherSuite

    c_cfg, s_cfg = configs(
        c_alpn_protocols=["special"],
        c_groups=[NamedGroup.x25519, NamedGroup.secp384r1],
        c_key_share_groups=[NamedGroup.x25519],
    )
    special = replace(
        s_cfg,
        cipher_suites=[CipherSuite.TLS_AES_256_GCM_SHA384],
        groups=[NamedGroup.secp384r1],
        alpn_protocols=["special"],
    )
    asked = []

    def select(name, offers):
        asked.append((name, offers))
        return special if "special" in offers else None

    s_cfg.select_context = select
    secret = CookieSecret(b"s" * 32)
    client = DTLSConnection(c_cfg, is_client=True, server_name="localhost")
    client.start_handshake(0.0)
    (ch1,) = client.datagrams_to_send(0.0)
    if endpoint:
        hrr = stateless_hello_retry(s_cfg, ch1, ADDR, secret, 0.0)
        assert hrr is not None
    else:
        probe = DTLSConnection(s_cfg, is_client=False, client_address=ADDR, cookie_secret=secret)
        probe.receive_datagram(ch1, 0.0)
        (hrr,) = probe.datagrams_to_send(0.0)
    body = hrr[13 + 12 :]
    assert body[35:37] == CipherSuite.TLS_AES_256_GCM_SHA384.to_bytes(2, "big")
    assert b"\x00\x33\x00\x02" + NamedGroup.secp384r1.to_bytes(2, "big") in body  # key_share asks for P-384
    assert asked == [("localhost", ["special"])]
    client.receive_datagram(hrr, 0.0)
    server = DTLSConnection(s_cfg, is_client=False, client_address=ADDR, cookie_secret=secret)
    net = Net(client, server)
    net.run()
    assert client.handshake_complete and server.handshake_complete
    assert client.cipher_suite == server.cipher_suite == CipherSuite.TLS_AES_256_GCM_SHA384
    assert client.group == server.group == NamedGroup.secp384r1
    assert client.alpn_protocol == server.alpn_protocol == "special"


def test_cookie_suite_not_allowed_by_the_selected_context() -> None:
    """A cookie minted under one context does not let the ClientHello2 use
    a suite the context selected for it forbids: handshake_failure."""
    from dataclasses import replace

    from tcpls.tls.enums import CipherSuite

    c_cfg, s_cfg = configs(c_alpn_protocols=["special"])
    secret = CookieSecret(b"t" * 32)
    client = DTLSConnection(c_cfg, is_client=True, server_name="localhost")
    client.start_handshake(0.0)
    (ch1,) = client.datagrams_to_send(0.0)
    client.receive_datagram(stateless_hello_retry(s_cfg, ch1, ADDR, secret, 0.0), 0.0)  # no select_context: 0x1301
    (ch2,) = client.datagrams_to_send(0.0)
    s_cfg.select_context = lambda name, offers: replace(s_cfg, select_context=None, cipher_suites=[CipherSuite.TLS_AES_256_GCM_SHA384])
    server = DTLSConnection(s_cfg, is_client=False, client_address=ADDR, cookie_secret=secret)
    with pytest.raises(LocalProtocolError) as info:
        server.receive_datagram(ch2, 0.0)
    assert info.value.alert == AlertDescription.handshake_failure


def test_without_cookie_exchange_amplification_is_limited() -> None:
    """§5.1: without a cookie exchange, at most 3x the received bytes go to
    an unvalidated address; the rest follows once the client proves it got
    the ServerHello (its first protected record)."""
    client, server = make_pair("rsa2048", server_kw={"require_cookie": False})
    client.start_handshake(0.0)
    (ch,) = client.datagrams_to_send(0.0)
    server.receive_datagram(ch, 0.0)
    first = server.datagrams_to_send(0.0)
    assert 0 < sum(map(len, first)) <= 3 * len(ch)
    assert server.datagrams_to_send(0.0) == []  # held back, not dropped
    net = Net(client, server)
    for d in first:
        client.receive_datagram(d, 0.01)
    net.now = 0.01
    net.run()
    assert client.handshake_complete and server.handshake_complete
    assert not client.hello_retry and server.hello_retries_sent == 0


# --------------------------------------------------------------------------
# Epoch 3 records before the keys to read them (§4.2.1)
# --------------------------------------------------------------------------
def _client_last_flight_reversed(n_records: int) -> tuple[DTLSConnection, DTLSConnection, Net, list[bytes]]:
    """Handshake until the client completes; its Finished flight and the
    ``n_records`` data records queued before the handshake are captured."""
    client, server = make_pair()
    sent = [b"queued %d" % i for i in range(n_records)]
    for m in sent:
        client.send_data(m)
    captured: list[bytes] = []

    def capture(side: str, d: bytes) -> bool:
        if side == "client" and client.handshake_complete:
            captured.append(d)
            return True
        return False

    net = Net(client, server, drop_filter=capture)
    client.start_handshake(0.0)
    net.run(stop=lambda: bool(captured))
    assert not server.handshake_complete and len(captured) == 1 + n_records  # Finished, then one datagram per record
    net.drop_filter = None
    return client, server, net, sent


def test_epoch3_records_before_the_client_finished_are_kept() -> None:
    client, server, net, sent = _client_last_flight_reversed(3)
    finished, data = net.sent["client"][-4][1], [d for _, d in net.sent["client"][-3:]]
    for d in data:  # the data records overtake the Finished
        server.receive_datagram(d, net.now)
    assert server.next_event() is None and server._transport.future_records == 3
    server.receive_datagram(finished, net.now)
    net.run()
    assert server.handshake_complete
    assert [e.data for e in net.of("server", ev.DataReceived)] == sent
    assert server._transport.future_records == 0


def test_epoch3_buffer_is_bounded() -> None:
    """At most 4 records (and 8 KB) are kept; the rest is dropped as before."""
    client, server, net, sent = _client_last_flight_reversed(7)
    finished, data = net.sent["client"][-8][1], [d for _, d in net.sent["client"][-7:]]
    for d in data:
        server.receive_datagram(d, net.now)
    assert server._transport.future_records == 4
    assert server.drops[DropReason.UNKNOWN_EPOCH] == 3
    server.receive_datagram(finished, net.now)
    net.run()
    assert [e.data for e in net.of("server", ev.DataReceived)] == sent[:4]


def test_half_rtt_data_before_the_server_flight_is_kept() -> None:
    """The client keeps the server's epoch 3 data that overtook the server's
    flight (epochs 2 and 3 unknown until then)."""
    client, server = make_pair()
    client.start_handshake(0.0)
    (ch1,) = client.datagrams_to_send(0.0)
    server.receive_datagram(ch1, 0.0)
    (hrr,) = server.datagrams_to_send(0.0)
    client.receive_datagram(hrr, 0.0)
    (ch2,) = client.datagrams_to_send(0.0)
    server.receive_datagram(ch2, 0.0)
    flight = server.datagrams_to_send(0.0)
    server.send_data(b"half rtt")  # epoch 3, right after the server's Finished
    (data,) = server.datagrams_to_send(0.0)
    client.receive_datagram(data, 0.01)
    assert client._transport.future_records == 1
    for d in flight:
        client.receive_datagram(d, 0.02)
    events = list(iter(client.next_event, None))
    assert client.handshake_complete and ev.DataReceived(b"half rtt") in events
    net = Net(client, server, now=0.02)
    net.run()
    assert server.handshake_complete


# --------------------------------------------------------------------------
# PSK, resumption
# --------------------------------------------------------------------------
def test_external_psk() -> None:
    key = bytes(range(32))
    client, server = make_pair(
        c_psk=ExternalPSK(b"client-1", key), s_psk_lookup=lambda identity: key if identity == b"client-1" else None
    )
    net = handshake(client, server)
    assert client.session_resumed and server.session_resumed
    assert client.peer_certificates == []
    client.send_data(b"over psk")
    net.run()
    assert net.of("server", ev.DataReceived)[0].data == b"over psk"


def test_external_psk_mismatch_fails_with_decrypt_error() -> None:
    client, server = make_pair(
        c_psk=ExternalPSK(b"client-1", b"a" * 32), s_psk_lookup=lambda identity: b"b" * 32
    )
    client.start_handshake(0.0)
    net = Net(client, server)
    with pytest.raises(LocalProtocolError) as info:
        net.run()
    assert info.value.alert == AlertDescription.decrypt_error


def test_resumption() -> None:
    c_cfg, s_cfg = configs()
    client = DTLSConnection(c_cfg, is_client=True, server_name="localhost")
    server = DTLSConnection(s_cfg, is_client=False, client_address=ADDR)
    net = handshake(client, server)
    net.run()
    session = client.session
    assert session is not None
    client2 = DTLSConnection(c_cfg, is_client=True, server_name="localhost", session=session)
    server2 = DTLSConnection(s_cfg, is_client=False, client_address=ADDR)
    net2 = handshake(client2, server2, now=net.now + 10)
    assert client2.session_resumed and server2.session_resumed
    assert net2.of("client", ev.HandshakeComplete)[0].session_resumed
    # Authenticated by the PSK (RFC 9846 §2.2): the certificates are the session's.
    assert client2.peer_certificates == client.peer_certificates != []
    client2.send_data(b"resumed")
    net2.run()
    assert net2.of("server", ev.DataReceived)[0].data == b"resumed"


def _tls_handshake(c_cfg, s_cfg, session, now: float):
    """A TLS (not DTLS) handshake at time ``now``; returns (client, server)."""
    from tcpls.tls.connection import TLSConnection

    client = TLSConnection(c_cfg, server_side=False, server_name="localhost", session=session)
    server = TLSConnection(s_cfg, server_side=True)
    client.start_handshake(now)
    for _ in range(10):
        for a, b in ((client, server), (server, client)):
            d = a.data_to_send()
            if d:
                b.receive_data(d, now)
    assert client.handshake_complete and server.handshake_complete
    while client.next_event() is not None:
        pass
    return client, server


@pytest.mark.parametrize("stateful", [False, True])
def test_tickets_are_bound_to_their_protocol(stateful: bool) -> None:
    """A ticket is bound to the protocol that issued it, even under a ticket
    key (or ticket store) shared by a TLS and a DTLS server: offered to the
    other protocol it is not selected (RFC 9846 §4.2.11) and a full
    handshake follows. (Stateful tickets are single-use: the control
    resumptions use the first of the two tickets, the cross checks the
    second.)"""
    from tcpls.tls.session import MemoryStore

    c_cfg, s_cfg = configs(**({"s_ticket_store": MemoryStore()} if stateful else {}))
    tls_client, _ = _tls_handshake(c_cfg, s_cfg, None, 0.0)
    assert len(tls_client.sessions) == 2
    control, tls_session = tls_client.sessions
    # Control: a TLS ticket resumes TLS.
    assert _tls_handshake(c_cfg, s_cfg, control, 5.0)[0].session_resumed
    # The TLS ticket offered to a DTLS server: full handshake.
    client = DTLSConnection(c_cfg, is_client=True, server_name="localhost", session=tls_session)
    server = DTLSConnection(s_cfg, is_client=False, client_address=ADDR)
    net = handshake(client, server, now=10.0)
    net.run()
    assert not client.session_resumed and not server.session_resumed
    assert client.peer_certificates  # authenticated by the certificate
    assert len(client.sessions) == 2
    control, dtls_session = client.sessions
    # Control: a DTLS ticket resumes DTLS.
    client2 = DTLSConnection(c_cfg, is_client=True, server_name="localhost", session=control)
    server2 = DTLSConnection(s_cfg, is_client=False, client_address=ADDR)
    handshake(client2, server2, now=20.0)
    assert client2.session_resumed and server2.session_resumed
    # The DTLS ticket offered to a TLS server: full handshake.
    back, back_server = _tls_handshake(c_cfg, s_cfg, dtls_session, 30.0)
    assert not back.session_resumed and not back_server.session_resumed
    assert back.peer_certificates


def _resumable(**cfg_kw):
    c_cfg, s_cfg = configs(s_max_early_data=1000, **cfg_kw)
    client = DTLSConnection(c_cfg, is_client=True, server_name="localhost")
    server = DTLSConnection(s_cfg, is_client=False, client_address=ADDR)
    net = handshake(client, server)
    net.run()
    assert client.session is not None and client.session.max_early_data == 1000
    return c_cfg, s_cfg, client.session, net.now + 5


def test_early_data_accepted_without_cookie_exchange() -> None:
    """0-RTT in epoch 1 (§6.1); no EndOfEarlyData (§5.6). A server may skip
    the cookie exchange for resumption (§5.1)."""
    c_cfg, s_cfg, session, now = _resumable()
    client = DTLSConnection(c_cfg, is_client=True, server_name="localhost", session=session)
    server = DTLSConnection(s_cfg, is_client=False, client_address=ADDR, require_cookie=False)
    client.send_early_data(b"zero rtt")
    net = handshake(client, server, now=now)
    net.run()
    assert client.early_data_accepted and server.early_data_accepted
    assert [e.data for e in net.of("server", ev.EarlyDataReceived)] == [b"zero rtt"]
    assert net.of("client", ev.EarlyDataAccepted)
    assert 1 not in server.read_epochs  # dropped once the client finished
    client.send_data(b"one rtt")
    net.run()
    assert net.of("server", ev.DataReceived)[-1].data == b"one rtt"


def test_early_data_rejected_by_the_cookie_exchange() -> None:
    c_cfg, s_cfg, session, now = _resumable()
    client = DTLSConnection(c_cfg, is_client=True, server_name="localhost", session=session)
    server = DTLSConnection(s_cfg, is_client=False, client_address=ADDR)
    client.send_early_data(b"zero rtt")
    net = handshake(client, server, now=now)
    net.run()
    assert client.early_data_accepted is False and client.session_resumed
    assert [e.data for e in net.of("client", ev.EarlyDataRejected)] == [b"zero rtt"]
    assert not net.of("server", ev.EarlyDataReceived)


# --------------------------------------------------------------------------
# Connection IDs (RFC 9146 as used by RFC 9147 §9)
# --------------------------------------------------------------------------
def test_connection_ids() -> None:
    client, server = make_pair(client_kw={"connection_id": b"\x01\x02\x03"}, server_kw={"connection_id": b"\xaa\xbb"})
    net = handshake(client, server)
    assert client.receive_cid == server.send_cid == b"\x01\x02\x03"
    assert client.send_cid == server.receive_cid == b"\xaa\xbb"
    client.send_data(b"with cid")
    (d,) = client.datagrams_to_send(net.now)
    assert d[0] & 0x10 and d[1:3] == b"\xaa\xbb"  # C bit, the server's CID
    server.receive_datagram(d, net.now)
    assert server.next_event() == ev.DataReceived(b"with cid")
    # A record carrying another CID is dropped.
    client._records.send_cid = b"\xaa\xbc"
    client.send_data(b"wrong cid")
    (d,) = client.datagrams_to_send(net.now)
    server.receive_datagram(d, net.now)
    assert server.next_event() is None and server.drops.get(DropReason.WRONG_CID) == 1




@pytest.mark.parametrize("cookie", [True, False])
def test_connection_id_handshake_needs_no_retransmission(cookie: bool) -> None:
    """With CIDs, the server's encrypted records share the ServerHello's
    datagram; the client reads them once the CID is installed (§9), so a
    clean network completes the handshake without any timer firing."""
    client, server = make_pair(
        client_kw={"connection_id": b"\x01\x02\x03"},
        server_kw={"connection_id": b"\xaa\xbb", "require_cookie": cookie},
    )
    fired = {"client": 0, "server": 0}
    for side, conn in (("client", client), ("server", server)):
        original = conn.handle_timer

        def counting(now: float, _side=side, _orig=original) -> None:
            fired[_side] += 1
            _orig(now)

        conn.handle_timer = counting  # type: ignore[method-assign]
    net = handshake(client, server)
    net.run()
    assert client.receive_cid == b"\x01\x02\x03" and client.send_cid == b"\xaa\xbb"
    server_sent = [d for _, d in net.sent["server"]]
    assert len(server_sent) == len(set(server_sent))
    client_sent = [d for _, d in net.sent["client"]]
    assert len(client_sent) == len(set(client_sent))
    assert client.drops.get(DropReason.UNEXPECTED_CID) is None
    # Fake clock: the handshake ends well before the 1 s initial
    # retransmission timeout, and the client's only timer (a delayed ACK of
    # the NewSessionTickets) fired once at most.
    assert net.now < 0.5 and fired["client"] <= 1 and fired["server"] == 0


def test_connection_id_only_when_both_offer() -> None:
    client, server = make_pair(client_kw={"connection_id": b"\x01"})
    handshake(client, server)
    assert client.send_cid is None and server.receive_cid is None


def test_empty_connection_id_accepts_the_peers() -> None:
    client, server = make_pair(client_kw={"connection_id": b""}, server_kw={"connection_id": b"\x09" * 8})
    net = handshake(client, server)
    assert client.send_cid == b"\x09" * 8 and server.send_cid == b""
    server.send_data(b"x")
    client.send_data(b"y")
    net.run()
    assert net.of("client", ev.DataReceived)[0].data == b"x"
    assert net.of("server", ev.DataReceived)[0].data == b"y"


def _client_hello_extensions(datagram: bytes) -> dict:
    from tcpls.tls import messages as M

    body = datagram[13 + 12 :]
    return dict(M.decode_handshake(1, body, dtls=True).extensions)


def test_client_offers_an_empty_connection_id_by_default() -> None:
    """§5.1: clients SHOULD offer connection_id even without wanting a CID,
    so that a server wanting one can ask for it."""
    client, server = make_pair(server_kw={"connection_id": b"\x42\x42"})
    client.start_handshake(0.0)
    (ch1,) = client.datagrams_to_send(0.0)
    assert _client_hello_extensions(ch1)[54] == b"\x00"
    net = Net(client, server)
    net.run()
    assert client.send_cid == b"\x42\x42" and server.send_cid == b""
    client.send_data(b"x")
    (d,) = client.datagrams_to_send(net.now)
    assert d[0] & 0x10 and d[1:3] == b"\x42\x42"
    # A server without connection_id= does not answer: no CIDs.
    client, server = make_pair()
    handshake(client, server)
    assert client.send_cid is None and server.receive_cid is None
    # None: not offered at all.
    client = DTLSConnection(configs()[0], is_client=True, server_name="localhost", connection_id=None)
    client.start_handshake(0.0)
    (ch1,) = client.datagrams_to_send(0.0)
    assert 54 not in _client_hello_extensions(ch1)


def test_connection_id_in_hello_retry_request_is_illegal() -> None:
    """RFC 9146 / TLS ExtensionType registry: connection_id is a CH, SH
    extension; in a HelloRetryRequest it is illegal_parameter (RFC 9846 §4.2)."""
    from tcpls.dtls.handshake import HandshakeFragment
    from tcpls.tls import messages as M
    from tcpls.tls.handshake.server import HELLO_RETRY_REQUEST_RANDOM

    client = DTLSConnection(configs()[0], is_client=True, server_name="localhost", connection_id=b"\x01")
    client.start_handshake(0.0)
    client.datagrams_to_send(0.0)
    hrr = M.ServerHello(
        random=HELLO_RETRY_REQUEST_RANDOM,
        legacy_session_id_echo=b"",
        cipher_suite=0x1301,
        extensions=[(43, b"\xfe\xfc"), (44, b"\x00\x02ab"), (54, b"\x01\x09")],
        legacy_version=0xFEFD,
    )
    body = M.encode_handshake(hrr)[4:]
    datagram = encode_plaintext(22, 0, HandshakeFragment(2, len(body), 0, 0, body).encode())
    with pytest.raises(LocalProtocolError) as info:
        client.receive_datagram(datagram, 0.0)
    assert info.value.alert == AlertDescription.illegal_parameter


def test_connection_id_in_encrypted_extensions_is_illegal() -> None:
    from tcpls.tls.config import ExtensionHook

    class CidInEE(ExtensionHook):
        def encrypted_extensions(self):
            return [(54, b"\x01\x09")]

    client, server = make_pair(client_kw={"connection_id": b"\x01"}, s_extension_hooks=[CidInEE()])
    client.start_handshake(0.0)
    with pytest.raises(LocalProtocolError) as info:
        Net(client, server).run()
    assert info.value.alert == AlertDescription.illegal_parameter and client.terminated


# --------------------------------------------------------------------------
# Connection ID updates (§9)
# --------------------------------------------------------------------------
def _cid_pair(**net_kw) -> tuple[DTLSConnection, DTLSConnection, Net]:
    client, server = make_pair(client_kw={"connection_id": b"\x01\x02\x03"}, server_kw={"connection_id": b"\xaa\xbb"})
    net = handshake(client, server, **net_kw)
    net.run()
    return client, server, net


def _cid_on_wire(d: bytes, length: int) -> bytes:
    assert d[0] & 0x30 == 0x30  # unified header with the C bit
    return d[1 : 1 + length]


def test_new_connection_ids_spare_then_used_and_retired() -> None:
    from tcpls.dtls import events as dev

    client, server, net = _cid_pair()
    issued = server.issue_connection_ids(2)
    assert len(issued) == 2 and all(len(c) == 2 for c in issued)
    assert server.receive_cids == [b"\xaa\xbb", *issued]
    with pytest.raises(UsageError):
        server.issue_connection_ids(1)  # one NewConnectionId outstanding at most
    net.run()
    assert net.of("server", dev.ConnectionIdsIssued) == [dev.ConnectionIdsIssued(tuple(issued))]
    assert net.of("client", dev.ConnectionIdsReceived) == [dev.ConnectionIdsReceived(tuple(issued), False)]
    assert client.spare_send_cids == issued and client.send_cid == b"\xaa\xbb"  # spare: not used yet
    assert server.get_timer() is None  # the NewConnectionId was acknowledged
    # In the order given (§9).
    assert client.use_next_connection_id() == issued[0]
    client.send_data(b"on cid 1")
    (d,) = client.datagrams_to_send(net.now)
    assert _cid_on_wire(d, 2) == issued[0]
    server.receive_datagram(d, net.now)
    assert server.next_event() == ev.DataReceived(b"on cid 1")
    assert server.receive_cids == [b"\xaa\xbb", *issued]  # the previous CID stays for reordering
    # A record with the old CID still arrives (reordered).
    client._records.send_cid = b"\xaa\xbb"
    _, rec = client._records.seal(CT_APPLICATION_DATA, b"late on cid 0")
    client._records.send_cid = issued[0]
    server.receive_datagram(rec, net.now)
    assert server.next_event() == ev.DataReceived(b"late on cid 0")
    # Using the third CID retires the first (issued before the previous one).
    assert client.use_next_connection_id() == issued[1]
    client.send_data(b"on cid 2")
    net.run()
    assert net.of("server", dev.ConnectionIdsRetired) == [dev.ConnectionIdsRetired((b"\xaa\xbb",))]
    assert server.receive_cids == issued
    server.receive_datagram(rec, net.now)  # the retired CID: dropped
    assert server.drops.get(DropReason.WRONG_CID) == 1
    with pytest.raises(UsageError):
        client.use_next_connection_id()  # no spare left
    assert [e.data for e in net.of("server", ev.DataReceived)][-1] == b"on cid 2"


def test_new_connection_id_immediate() -> None:
    client, server, net = _cid_pair()
    (new,) = server.issue_connection_ids(1, cids=[b"\x77\x77"], immediate=True)
    net.run()
    assert client.send_cid == new and client.spare_send_cids == []
    client.send_data(b"x")
    (d,) = client.datagrams_to_send(net.now)
    assert _cid_on_wire(d, 2) == new
    # Given CIDs must have the negotiated length and be new.
    with pytest.raises(UsageError):
        server.issue_connection_ids(cids=[b"\x01"])
    with pytest.raises(UsageError):
        server.issue_connection_ids(cids=[new])


@pytest.mark.parametrize("seed", range(4))
def test_request_connection_ids_over_loss(seed: int) -> None:
    from tcpls.dtls import events as dev

    client, server, net = _cid_pair(seed=seed, loss=0.25, jitter=0.05)
    client.request_connection_ids(3)
    with pytest.raises(UsageError):
        client.request_connection_ids(1)  # the first is unfulfilled
    net.run()
    (got,) = net.of("client", dev.ConnectionIdsReceived)
    assert len(got.cids) == 3 and not got.immediate
    assert client.spare_send_cids == list(got.cids) == server.receive_cids[1:]
    assert client.get_timer() is None and server.get_timer() is None
    # Asking beyond the limit (8 active) gets fewer (§9 MAY).
    client.request_connection_ids(20)
    net.run()
    second = net.of("client", dev.ConnectionIdsReceived)[1]
    assert len(second.cids) == 4 and len(server.receive_cids) == 8
    client.request_connection_ids(1)
    net.run()
    assert net.of("client", dev.ConnectionIdsReceived)[2].cids == ()
    # The spare CIDs work, over loss too.
    net.loss = 0.0
    for _ in range(3):
        client.use_next_connection_id()
        client.send_data(b"via " + client.send_cid)
        net.run()
    assert [e.data for e in net.of("server", ev.DataReceived)][-3:] == [b"via " + c for c in got.cids]


def _inject(sender: DTLSConnection, msg_type: int, body: bytes) -> list[bytes]:
    """A post-handshake handshake message the API would refuse to send."""
    sender._transport.send_message(msg_type, body)
    sender._transport.end_flight(sender._now, expect_response=False, responds=False)
    return sender.datagrams_to_send(sender._now)


@pytest.mark.parametrize(
    "cids, msg_type, body, alert",
    [
        (None, 10, b"\x00\x03\x02ab\x01", AlertDescription.unexpected_message),  # no CIDs negotiated
        (None, 9, b"\x01", AlertDescription.unexpected_message),
        # The client receives an empty CID: it must not send NewConnectionId.
        ((b"", b"\x01"), 10, b"\x00\x03\x02ab\x01", AlertDescription.unexpected_message),
        # The client sends an empty CID: it must not send RequestConnectionId.
        ((b"\x01", b""), 9, b"\x01", AlertDescription.unexpected_message),
        ((b"\x01", b"\x02"), 10, b"\x00\x03\x02ab\x07", AlertDescription.illegal_parameter),  # unknown usage
        ((b"\x01", b"\x02"), 10, b"\x00\x00\x00", AlertDescription.illegal_parameter),  # immediate, no CID
        ((b"\x01", b"\x02"), 10, b"\x00\x01\x00\x01", AlertDescription.illegal_parameter),  # empty CID
        ((b"\x01", b"\x02"), 10, b"\x00\x05\x02ab\x01", AlertDescription.decode_error),  # truncated
        ((b"\x01", b"\x02"), 9, b"\x01\x01", AlertDescription.decode_error),
    ],
)
def test_connection_id_message_violations(cids, msg_type: int, body: bytes, alert: int) -> None:
    """§9: CID messages without negotiated (non-empty) CIDs are
    unexpected_message; malformed ones decode_error / illegal_parameter.
    (``cids``: the client's and the server's ``connection_id``.)"""
    kw = ({"client_kw": {"connection_id": cids[0]}, "server_kw": {"connection_id": cids[1]}}) if cids else {}
    client, server = make_pair(**kw)
    net = handshake(client, server)
    net.run()
    datagrams = _inject(client, msg_type, body)
    with pytest.raises(LocalProtocolError) as info:
        for d in datagrams:
            server.receive_datagram(d, net.now)
    assert info.value.alert == alert and server.terminated


def test_second_request_before_the_answer_is_too_many_cids_requested() -> None:
    client, server, net = _cid_pair()
    server.issue_connection_ids(1)  # outstanding: a request must wait for its ACK
    server.datagrams_to_send(net.now)  # lost
    for d in _inject(client, 9, b"\x02"):
        server.receive_datagram(d, net.now)
    assert not server.terminated
    with pytest.raises(LocalProtocolError) as info:
        for d in _inject(client, 9, b"\x02"):
            server.receive_datagram(d, net.now)
    assert info.value.alert == AlertDescription.too_many_cids_requested == 52


def test_deferred_request_answered_after_the_ack() -> None:
    from tcpls.dtls import events as dev

    client, server, net = _cid_pair()
    first = server.issue_connection_ids(1)
    client.request_connection_ids(2)  # crosses the server's NewConnectionId
    net.run()
    received = net.of("client", dev.ConnectionIdsReceived)
    assert [len(e.cids) for e in received] == [1, 2] and received[0].cids == tuple(first)
    assert len(server.receive_cids) == 4


def test_connection_id_codecs() -> None:
    from tcpls.dtls.cid import ConnectionIdUsage, NewConnectionId, RequestConnectionId

    msg = NewConnectionId((b"\x01", b"\x02\x03"), ConnectionIdUsage.cid_spare)
    assert msg.encode() == b"\x00\x05\x01\x01\x02\x02\x03\x01"
    assert NewConnectionId.decode(msg.encode()) == msg
    assert RequestConnectionId.decode(b"\x05") == RequestConnectionId(5)
    with pytest.raises(LocalProtocolError):
        NewConnectionId.decode(msg.encode() + b"\x00")


# --------------------------------------------------------------------------
# KeyUpdate (§8)
# --------------------------------------------------------------------------
def test_key_update_waits_for_ack_both_directions() -> None:
    client, server = make_pair()
    net = handshake(client, server)
    net.run()
    hold = {"on": True}
    held: list[bytes] = []

    def hold_server_output(side: str, d: bytes) -> bool:
        if side == "server" and hold["on"]:
            held.append(d)
            return True
        return False

    net.drop_filter = hold_server_output
    client.key_update(request_peer_update=True)
    with pytest.raises(UsageError):
        client.key_update()  # the first one is not acknowledged yet
    net.run(until=net.now + 0.5)
    # The server got it: new read epoch, ACK sent (held back), own update sent.
    assert 4 in server.read_epochs
    assert client.write_epoch == 3  # no ACK yet: still epoch 3
    client.send_data(b"still epoch 3")
    net.run(until=net.now + 0.5)
    assert net.of("server", ev.DataReceived)[-1].data == b"still epoch 3"
    hold["on"] = False
    net.run()
    assert client.write_epoch == 4 and server.write_epoch == 4
    assert 4 in client.read_epochs
    client.send_data(b"epoch 4 up")
    server.send_data(b"epoch 4 down")
    net.run()
    assert net.of("server", ev.DataReceived)[-1].data == b"epoch 4 up"
    assert net.of("client", ev.DataReceived)[-1].data == b"epoch 4 down"
    assert sorted(e.direction for e in net.of("client", ev.KeyUpdated)) == ["receive", "send"]
    assert sorted(e.direction for e in net.of("server", ev.KeyUpdated)) == ["receive", "send"]
    assert client.get_timer() is None and server.get_timer() is None


def test_key_update_over_lossy_network() -> None:
    for seed in range(5):
        client, server = make_pair()
        net = handshake(client, server, seed=seed, loss=0.2, jitter=0.05)
        net.run()
        for _ in range(3):
            server.key_update(request_peer_update=False)
            net.run()
        assert server.write_epoch == 6 and max(client.read_epochs) == 6 and client.write_epoch == 3
        server.send_data(b"after three updates")
        net.loss = 0.0
        net.run()
        assert net.of("client", ev.DataReceived)[-1].data == b"after three updates"


def test_automatic_key_update() -> None:
    client, server = make_pair(client_kw={"key_update_after": 5})
    net = handshake(client, server)
    for i in range(12):
        client.send_data(b"%d" % i)
        net.run()
    assert client.write_epoch >= 5
    assert [e.data for e in net.of("server", ev.DataReceived)] == [b"%d" % i for i in range(12)]


# --------------------------------------------------------------------------
# Alerts, close, usage
# --------------------------------------------------------------------------
def test_close_notify_and_data_after_it_ignored() -> None:
    client, server = make_pair()
    net = handshake(client, server)
    net.run()
    client.send_data(b"before")
    client.close()
    net.run()
    assert net.of("server", ev.CloseNotifyReceived)
    assert [e.data for e in net.of("server", ev.DataReceived)] == [b"before"]
    with pytest.raises(Exception):
        client.send_data(b"after close")
    # A record sent after the close_notify (here forged by reusing the
    # client's keys) is ignored (§5.10).
    _, rec = client._records.seal(CT_APPLICATION_DATA, b"late")
    server.receive_datagram(rec, net.now)
    assert server.next_event() is None


def test_certificate_failure_alerts_the_server() -> None:
    c_cfg, s_cfg = configs()
    c_cfg.trust_anchors = []  # the client trusts nothing
    client = DTLSConnection(c_cfg, is_client=True, server_name="localhost")
    server = DTLSConnection(s_cfg, is_client=False, client_address=ADDR)
    net = Net(client, server)
    client.start_handshake(0.0)
    with pytest.raises(LocalProtocolError):
        net.run()
    assert client.terminated
    with pytest.raises(RemoteAlert):
        net.run()
    net._drain_events()
    assert server.terminated and net.of("server", ev.AlertReceived)


def test_send_data_too_large() -> None:
    client, server = make_pair()
    handshake(client, server)
    client.send_data(b"x" * client.max_data_size)
    with pytest.raises(UsageError):
        client.send_data(b"x" * (client.max_data_size + 1))


def test_data_queued_before_the_handshake() -> None:
    client, server = make_pair()
    client.send_data(b"early bird")
    net = handshake(client, server)
    net.run()
    assert net.of("server", ev.DataReceived)[0].data == b"early bird"


# --------------------------------------------------------------------------
# Robustness: invalid input is dropped, never raised
# --------------------------------------------------------------------------
def test_garbage_datagrams_never_raise() -> None:
    rng = random.Random(1)
    client, server = make_pair()
    client.start_handshake(0.0)
    net = Net(client, server)

    def fuzz(conn: DTLSConnection) -> None:
        for _ in range(200):
            n = rng.randrange(0, 80)
            first = rng.choice([0x20 | rng.randrange(32), rng.randrange(256), 25, 23])
            conn.receive_datagram(bytes([first]) + rng.randbytes(n), net.now)
        # Well-framed plaintext records (epoch 0 is unauthenticated: anyone
        # can forge them) with malformed handshake fragments or ACKs.
        for _ in range(100):
            ctype = rng.choice([22, 26, 21])
            n = rng.randrange(3, 60)  # (a 2-byte plaintext alert is a genuine alert before the keys exist)
            conn.receive_datagram(encode_plaintext(ctype, rng.randrange(1 << 20), rng.randbytes(n)), net.now)

    fuzz(server)  # before the cookie
    fuzz(client)
    net.run()
    assert client.handshake_complete and server.handshake_complete
    fuzz(client)
    fuzz(server)
    # Once records are protected, a plaintext alert is a forgery: ignored.
    client.receive_datagram(encode_plaintext(21, 99, bytes((2, AlertDescription.handshake_failure))), net.now)
    assert not client.terminated
    # Bit flips in genuine protected records: dropped by authentication.
    for _ in range(50):
        client.send_data(b"payload")
    for d in client.datagrams_to_send(net.now):
        flipped = bytearray(d)
        i = rng.randrange(5, len(flipped))
        flipped[i] ^= 1 << rng.randrange(8)
        server.receive_datagram(bytes(flipped), net.now)
    assert not any(isinstance(e, ev.DataReceived) for e in iter(server.next_event, None))
    assert server.drops.get(DropReason.AUTHENTICATION_FAILED, 0) >= 45
    assert not client.terminated and not server.terminated


def test_epoch_rule_violations_are_dropped() -> None:
    client, server = make_pair()
    net = handshake(client, server)
    net.run()
    # Application data in the handshake epoch (2): not allowed (§6.1).
    _, rec = client._records.seal(CT_APPLICATION_DATA, b"in epoch 2", 2)
    server.receive_datagram(rec, net.now)
    assert server.next_event() is None
    assert server.drops.get(DropReason.CONTENT_TYPE_NOT_ALLOWED) == 1
    # Unprotected application data (epoch 0): not a valid plaintext type.
    server.receive_datagram(b"\x17\xfe\xfd\x00\x00" + bytes(6) + b"\x00\x04data", net.now)
    assert server.next_event() is None
    assert not server.terminated


def test_post_handshake_client_authentication() -> None:
    cert, key = client_cert()
    client, server = make_pair(c_certificate_chain=[cert], c_private_key=key)
    net = handshake(client, server, seed=3, loss=0.2, jitter=0.05)
    net.run()
    context = server.request_client_certificate(required=True)
    net.run()
    (done,) = net.of("server", ev.PostHandshakeAuthCompleted)
    assert done.context == context and done.peer_certificate_subject == "CN=client.example"
    assert net.of("client", ev.PostHandshakeAuthAnswered)[0].certificate_sent
    assert client.get_timer() is None and server.get_timer() is None


def test_client_hello_codec_has_legacy_cookie() -> None:
    """RFC 9147 §5.3: legacy_cookie follows legacy_session_id in DTLS only."""
    from tcpls.tls import messages as M

    hello = M.ClientHello(bytes(32), b"", [0x1301], [(43, b"\x02\xfe\xfc")], legacy_version=0xFEFD, legacy_cookie=b"")
    data = M.encode_handshake(hello)
    tls_form = M.encode_handshake(M.ClientHello(bytes(32), b"", [0x1301], [(43, b"\x02\xfe\xfc")]))
    assert len(data) == len(tls_form) + 1 and data[4 + 2 + 32 + 1] == 0
    back = M.decode_handshake(1, data[4:], dtls=True)
    assert back == hello
    with pytest.raises(LocalProtocolError):
        M.decode_handshake(1, data[4:])  # TLS syntax does not fit


def test_integrity_limit_closes_the_association() -> None:
    """§4.5.3: more forgeries under one key than the AEAD allows: close."""
    from tcpls.dtls.record import AEADLimits

    client, server = make_pair()
    net = handshake(client, server)
    net.run()
    epoch3 = server._records.read_epochs[3]
    epoch3.limits = AEADLimits(epoch3.limits.confidentiality, 3)
    client.send_data(b"genuine")
    (genuine,) = client.datagrams_to_send(net.now)
    forged = genuine[:-1] + bytes([genuine[-1] ^ 1])
    for _ in range(3):
        server.receive_datagram(forged, net.now)
    assert not server.terminated
    with pytest.raises(LocalProtocolError) as info:
        server.receive_datagram(forged, net.now)
    assert info.value.alert == AlertDescription.bad_record_mac and server.terminated


def test_automatic_one_directional_key_updates_with_send_data_batch() -> None:
    """Only the server updates (key_update_after, §4.5.3): the client ACKs
    every KeyUpdate from epoch 3, above which the KeyUpdates' epochs climb
    (§7: the epoch rule of ACKs is for the handshake only)."""
    client, server = make_pair(server_kw={"key_update_after": 3})
    net = handshake(client, server)
    net.run()
    sent = []
    for r in range(6):
        chunks = [b"%d-%d" % (r, i) for i in range(4)]
        sent += chunks
        server.send_data_batch(chunks)
        net.run()
    assert not server.terminated and not client.terminated
    assert server.write_epoch >= 8 and client.write_epoch == 3
    assert [e.data for e in net.of("client", ev.DataReceived)] == sent


@pytest.mark.parametrize("cookie", [True, False])
def test_legacy_session_id_is_accepted_and_never_echoed(cookie: bool) -> None:
    """RFC 9147 §5.3: a client with a cached pre-DTLS 1.3 session may send a
    legacy_session_id; the server answers (stateless HRR included) with an
    empty legacy_session_id_echo, and the client requires it empty (an
    echo would fail the handshake with illegal_parameter)."""
    client, server = make_pair(server_kw={"require_cookie": cookie})
    client._hs.session_id = b"\x07" * 32
    handshake(client, server)
    assert client.hello_retry == cookie
