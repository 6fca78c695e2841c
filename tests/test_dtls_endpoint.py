"""DTLSEndpoint (sans-IO): demultiplexing, limits, timeouts, stateless
replies, fairness and the handshake executor.

These tests drive the endpoint with a scripted engine (``ScriptedConn``)
so that each policy can be checked exactly; the end-to-end tests with real
DTLS 1.3 connections are in test_dtls_endpoint_real.py and
test_dtls_interop.py.
"""

from __future__ import annotations

import threading
from collections import deque

import pytest

from tcpls.dtls.endpoint import (
    ConnectionClosed,
    ConnectionEstablished,
    ConnectionEvent,
    DTLSEndpoint,
    EndpointLimits,
    HandshakeCancelled,
    HandshakeRefused,
    StatelessVerdict,
)
from tcpls.errors import DecodeError, UsageError
from tcpls.tls import events as ev

CH = b"\x16hello"  # plaintext handshake record (content type 22) from a new peer
FIN = b"\x16finished"


class ScriptedConn:
    """A two-message handshake: CH → reply "SH"; FIN → HandshakeComplete.
    Afterwards each datagram is application data, echoed back."""

    def __init__(self, addr, cid, is_client, **kwargs):
        self.addr, self.cid, self.is_client = addr, cid, is_client
        self.events: deque = deque()
        self.out: list[bytes] = []
        self.complete = False
        self.timer = None
        self.closed = False
        self.received: list[bytes] = []
        self.threads: set[str] = set()
        #: Records that "passed authentication": all but the forged ones.
        self.authenticated_records = 0

    def start_handshake(self, now):
        self.out.append(b"CH")
        self.timer = now + 1.0

    def receive_datagram(self, data, now):
        self.threads.add(threading.current_thread().name)
        self.received.append(data)
        if data == b"bad":
            raise DecodeError("scripted failure")
        if data.endswith(b"forged"):
            return
        self.authenticated_records += 1
        if not self.complete:
            if data == CH:
                self.out.append(b"SH")
                self.timer = now + 1.0
            elif data == FIN:
                self.complete = True
                self.timer = None
                self.events.append(ev.HandshakeComplete(0xFEFC, 0x1301, None, None, None))
            return
        if data == b"close":
            self.events.append(ev.CloseNotifyReceived())
            return
        self.events.append(ev.DataReceived(data))
        self.out.append(b"echo:" + data)

    def datagrams_to_send(self, now):
        out, self.out = self.out, []
        return out

    def get_timer(self):
        return self.timer

    def handle_timer(self, now):
        if self.timer is not None and now >= self.timer:
            self.out.append(b"retransmit")
            self.timer = now + 2.0

    def next_event(self):
        return self.events.popleft() if self.events else None

    def send_data(self, data):
        self.out.append(data)

    def key_update(self):
        self.out.append(b"KU")

    def close(self):
        if not self.closed:
            self.closed = True
            self.out.append(b"close_notify")


def drain_events(ep):
    out = []
    while (e := ep.next_event()) is not None:
        out.append(e)
    return out


def establish(ep, addr, now=0.0, hello=CH):
    ep.receive_datagram(hello, addr, now)
    ep.receive_datagram(FIN, addr, now)
    events = drain_events(ep)
    est = [e for e in events if isinstance(e, ConnectionEstablished)]
    assert len(est) == 1
    return est[0].association


def test_handshake_then_data_routed_by_address():
    ep = DTLSEndpoint(ScriptedConn)
    a = establish(ep, ("10.0.0.1", 1))
    b = establish(ep, ("10.0.0.2", 2))
    assert ep.connection_count == 2 and ep.handshake_count == 0
    ep.datagrams_to_send(0.0)
    ep.receive_datagram(b"\x17to-a", ("10.0.0.1", 1), 1.0)
    ep.receive_datagram(b"\x17to-b", ("10.0.0.2", 2), 1.0)
    got = [(e.association, e.event.data) for e in drain_events(ep) if isinstance(e, ConnectionEvent)]
    assert got == [(a, b"\x17to-a"), (b, b"\x17to-b")]
    assert sorted(ep.datagrams_to_send(1.0)) == [(b"echo:\x17to-a", ("10.0.0.1", 1)), (b"echo:\x17to-b", ("10.0.0.2", 2))]


def test_unknown_peer_non_handshake_is_dropped_without_state():
    ep = DTLSEndpoint(ScriptedConn)
    ep.receive_datagram(b"\x17data", ("10.0.0.9", 9), 0.0)
    ep.receive_datagram(b"", ("10.0.0.9", 9), 0.0)
    ep.receive_datagram(b"\x2f\x00", ("10.0.0.9", 9), 0.0)
    assert ep.handshake_count == 0 and ep.stats["unknown_dropped"] == 3


def test_client_endpoint_ignores_unknown_peers():
    ep = DTLSEndpoint(ScriptedConn, server=False)
    ep.receive_datagram(CH, ("10.0.0.1", 1), 0.0)
    assert ep.handshake_count == 0


def test_cid_routing_follows_address_change():
    cids = iter([b"\x01\x01", b"\x02\x02"])
    ep = DTLSEndpoint(ScriptedConn, cid_length=2, random=lambda n: next(cids))
    a = establish(ep, ("10.0.0.1", 1))
    b = establish(ep, ("10.0.0.2", 2))
    assert (a.cid, b.cid) == (b"\x01\x01", b"\x02\x02")
    # Unified header with the C bit (0b0011_1100 = 0x3c) and b's CID, from a new address.
    rec = bytes([0x3C]) + b.cid + b"\x00\x01payload"
    ep.receive_datagram(rec, ("10.9.9.9", 99), 1.0)
    got = [e for e in drain_events(ep) if isinstance(e, ConnectionEvent)]
    assert [e.association for e in got] == [b]
    assert b.addr == ("10.9.9.9", 99)
    # Replies go to the new address; the old one no longer routes to b.
    assert (b"echo:" + rec, ("10.9.9.9", 99)) in ep.datagrams_to_send(1.0)
    ep.receive_datagram(b"\x17x", ("10.0.0.2", 2), 1.0)
    assert b.conn.received[-1] == rec
    # A record with b's CID that fails authentication does not move b.
    ep.receive_datagram(bytes([0x3C]) + b.cid + b"forged", ("6.6.6.6", 6), 2.0)
    assert b.addr == ("10.9.9.9", 99)


def test_cid_collisions_are_avoided():
    seq = iter([b"\xaa", b"\xaa", b"\xbb"])
    ep = DTLSEndpoint(ScriptedConn, cid_length=1, random=lambda n: next(seq))
    a = establish(ep, ("h", 1))
    b = establish(ep, ("h", 2))
    assert a.cid == b"\xaa" and b.cid == b"\xbb"


def test_handshake_limit_refuses_new_handshakes_but_established_traffic_goes_on():
    ep = DTLSEndpoint(ScriptedConn, limits=EndpointLimits(max_handshakes=3, stale_handshake_after=5.0))
    est = establish(ep, ("est", 0))
    for i in range(3):
        ep.receive_datagram(CH, ("flood", i), 1.0)
    assert ep.handshake_count == 3
    ep.receive_datagram(CH, ("flood", 99), 1.5)
    events = drain_events(ep)
    assert [type(e) for e in events] == [HandshakeRefused]
    assert ep.handshake_count == 3 and ep.stats["refused"] == 1
    ep.receive_datagram(b"\x17still here", ("est", 0), 1.6)
    assert [e.event.data for e in drain_events(ep)] == [b"\x17still here"]
    assert est.established


def test_handshake_byte_budget_is_a_separate_limit():
    limits = EndpointLimits(max_handshakes=100, handshake_cost=1000, max_handshake_bytes=2500)
    ep = DTLSEndpoint(ScriptedConn, limits=limits)
    for i in range(5):
        ep.receive_datagram(CH, ("p", i), 0.0)
    assert ep.handshake_count == 2 and ep.handshake_bytes <= 2500


def test_stale_handshake_is_evicted_for_a_new_one():
    ep = DTLSEndpoint(ScriptedConn, limits=EndpointLimits(max_handshakes=2, stale_handshake_after=1.0))
    ep.receive_datagram(CH, ("old", 1), 0.0)
    ep.receive_datagram(CH, ("old", 2), 0.5)
    ep.receive_datagram(CH, ("new", 3), 1.2)  # ("old", 1) idle for 1.2 s: evicted
    events = drain_events(ep)
    assert [(type(e), e.association.addr, e.reason) for e in events] == [(HandshakeCancelled, ("old", 1), "evicted")]
    assert sorted(a.addr for a in ep.associations()) == [("new", 3), ("old", 2)]
    # The evicted peer's later datagrams start from scratch (no stale routing).
    ep.receive_datagram(FIN, ("old", 1), 1.3)
    assert all(not a.established for a in ep.associations())


def test_connection_limit_is_enforced_at_establishment():
    ep = DTLSEndpoint(ScriptedConn, limits=EndpointLimits(max_connections=1))
    establish(ep, ("a", 1))
    ep.receive_datagram(CH, ("b", 2), 0.0)
    ep.receive_datagram(FIN, ("b", 2), 0.0)
    events = drain_events(ep)
    closed = [e for e in events if isinstance(e, ConnectionClosed)]
    assert len(closed) == 1 and isinstance(closed[0].error, UsageError)
    assert ep.connection_count == 1 and ep.handshake_count == 0
    assert closed[0].association.conn.closed


def test_handshake_timeout_cancels_and_frees():
    ep = DTLSEndpoint(ScriptedConn, limits=EndpointLimits(handshake_timeout=3.0))
    ep.receive_datagram(CH, ("slow", 1), 0.0)
    assoc = ep.associations()[0]
    assert ep.get_timer() == 1.0  # the engine's retransmission timer first
    ep.handle_timer(1.0)
    assert (b"retransmit", ("slow", 1)) in ep.datagrams_to_send(1.0)
    assert ep.get_timer() == 3.0  # the handshake deadline (the engine would retransmit at 3.0 too)
    ep.handle_timer(3.0)
    events = drain_events(ep)
    assert [(type(e), e.reason) for e in events] == [(HandshakeCancelled, "timeout")]
    assert ep.handshake_count == 0 and assoc.conn.closed and ep.get_timer() is None


def test_idle_timeout_closes_established():
    ep = DTLSEndpoint(ScriptedConn, limits=EndpointLimits(idle_timeout=10.0))
    a = establish(ep, ("a", 1), now=0.0)
    ep.receive_datagram(b"\x17x", ("a", 1), 5.0)
    drain_events(ep)
    assert ep.get_timer() == 15.0
    ep.handle_timer(15.0)
    assert [type(e) for e in drain_events(ep)] == [ConnectionClosed]
    assert a.conn.closed and ep.connection_count == 0


def test_protocol_error_closes_only_that_association():
    ep = DTLSEndpoint(ScriptedConn)
    a = establish(ep, ("a", 1))
    b = establish(ep, ("b", 2))
    ep.receive_datagram(b"bad", ("a", 1), 1.0)
    closed = [e for e in drain_events(ep) if isinstance(e, ConnectionClosed)]
    assert len(closed) == 1 and closed[0].association is a and isinstance(closed[0].error, DecodeError)
    ep.receive_datagram(b"\x17ok", ("b", 2), 1.0)
    assert [e.event.data for e in drain_events(ep)] == [b"\x17ok"]
    assert b.established and not a.established


def test_close_notify_from_peer_removes_association_and_answers():
    ep = DTLSEndpoint(ScriptedConn)
    a = establish(ep, ("a", 1))
    ep.datagrams_to_send(0.0)
    ep.receive_datagram(b"close", ("a", 1), 1.0)
    kinds = [type(e) for e in drain_events(ep)]
    assert kinds == [ConnectionEvent, ConnectionClosed]
    assert ep.datagrams_to_send(1.0) == [(b"close_notify", ("a", 1))]
    assert ep.connection_count == 0


class Cookies:
    """Stateless responder: accept only ClientHellos that carry b"cookie"."""

    def check(self, data, addr, now):
        if data.endswith(b"cookie"):
            return StatelessVerdict.ACCEPT, None
        if data.startswith(b"\x16"):
            return StatelessVerdict.REPLY, b"HRR+cookie"
        return StatelessVerdict.DROP, None


def test_stateless_cookie_replies_create_no_state_and_are_bounded():
    ep = DTLSEndpoint(ScriptedConn, stateless=Cookies(), limits=EndpointLimits(max_stateless_replies=5))
    for i in range(8):
        ep.receive_datagram(CH, ("spoofed", i), 0.0)
    assert ep.handshake_count == 0 and ep.associations() == []
    out = ep.datagrams_to_send(0.0)
    assert out == [(b"HRR+cookie", ("spoofed", i)) for i in range(5)]
    assert ep.stats["stateless_dropped"] == 3
    ep.receive_datagram(CH + b"cookie", ("real", 1), 0.1)
    assert ep.handshake_count == 1


def test_writer_round_robin_and_stateless_ratio():
    limits = EndpointLimits(burst=2, stateless_ratio=4)
    ep = DTLSEndpoint(ScriptedConn, stateless=Cookies(), limits=limits)
    noisy = establish(ep, ("noisy", 1), hello=CH + b"cookie")
    quiet = establish(ep, ("quiet", 2), hello=CH + b"cookie")
    ep.datagrams_to_send(0.0)
    for i in range(10):
        ep.send_data(noisy, b"n%d" % i, 1.0)
    ep.send_data(quiet, b"q0", 1.0)
    ep.send_data(quiet, b"q1", 1.0)
    for i in range(3):
        ep.receive_datagram(CH, ("new", i), 1.0)
    out = [d for d, _ in ep.datagrams_to_send(1.0)]
    # Two from each connection per turn; one stateless reply per four
    # connection datagrams; the rest of the noisy queue afterwards.
    assert out == [
        b"n0", b"n1", b"q0", b"q1", b"HRR+cookie",
        b"n2", b"n3", b"n4", b"n5", b"HRR+cookie",
        b"n6", b"n7", b"n8", b"n9", b"HRR+cookie",
    ]  # fmt: skip


def test_writer_limit_resumes_where_it_stopped():
    ep = DTLSEndpoint(ScriptedConn, limits=EndpointLimits(burst=1))
    a = establish(ep, ("a", 1))
    b = establish(ep, ("b", 2))
    ep.datagrams_to_send(0.0)
    for i in range(3):
        ep.send_data(a, b"a%d" % i, 1.0)
        ep.send_data(b, b"b%d" % i, 1.0)
    first = [d for d, _ in ep.datagrams_to_send(1.0, limit=3)]
    rest = [d for d, _ in ep.datagrams_to_send(1.0)]
    assert first == [b"a0", b"b0", b"a1"] and rest == [b"b1", b"a2", b"b2"]


class ManualExecutor:
    """Holds jobs until the test runs them (a worker pool that is busy)."""

    def __init__(self):
        self.jobs = []

    def submit(self, fn, *args):
        fut = ManualFuture(fn, args)
        self.jobs.append(fut)
        return fut

    def run_all(self):
        jobs, self.jobs = self.jobs, []
        for j in jobs:
            j.run()


class ManualFuture:
    def __init__(self, fn, args):
        self.fn, self.args, self._done, self._cbs = fn, args, False, []

    def run(self):
        self._result = self.fn(*self.args)
        self._done = True
        for cb in self._cbs:
            cb(self)

    def done(self):
        return self._done

    def result(self):
        return self._result

    def add_done_callback(self, cb):
        self._cbs.append(cb)


def test_established_connections_are_served_while_handshakes_wait_for_workers():
    ex = ManualExecutor()
    wakeups = []
    ep = DTLSEndpoint(ScriptedConn, executor=ex, wakeup=lambda: wakeups.append(1))
    ep.receive_datagram(CH, ("est", 1), 0.0)
    ex.run_all()
    ep.receive_datagram(FIN, ("est", 1), 0.0)
    ex.run_all()
    drain_events(ep)
    est = [a for a in ep.associations() if a.established]
    assert len(est) == 1
    ep.datagrams_to_send(0.0)
    wakeups.clear()
    # A flood of handshakes: all parked in the executor, none processed yet.
    for i in range(50):
        ep.receive_datagram(CH, ("flood", i), 1.0)
    assert ep.jobs_pending == 50 and len(ex.jobs) == 50
    # The established connection is processed inline meanwhile.
    for i in range(5):
        ep.receive_datagram(b"\x17m%d" % i, ("est", 1), 1.0 + i / 10)
    assert [e.event.data for e in drain_events(ep)] == [b"\x17m%d" % i for i in range(5)]
    assert [d for d, _ in ep.datagrams_to_send(1.5)] == [b"echo:\x17m%d" % i for i in range(5)]
    # Datagrams for a handshake whose job is pending queue behind it (bounded).
    for _ in range(20):
        ep.receive_datagram(FIN, ("flood", 0), 1.6)
    assert ep.stats["pending_dropped"] == 20 - ep.limits.max_pending_datagrams
    ex.run_all()
    assert len(wakeups) == 50
    ep.poll(2.0)
    ex.run_all()  # the queued FIN for ("flood", 0)
    ep.poll(2.0)
    out = ep.datagrams_to_send(2.0)
    assert sum(1 for d, _ in out if d == b"SH") == 50
    assert sum(1 for a in ep.associations() if a.established) == 2


def test_thread_pool_executor_processes_handshakes_off_the_caller_thread():
    from concurrent.futures import ThreadPoolExecutor

    done = threading.Event()
    gate = threading.Event()

    class SlowConn(ScriptedConn):
        def receive_datagram(self, data, now):
            assert gate.wait(5)  # still running when the endpoint returns
            super().receive_datagram(data, now)

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="hs-worker") as pool:
        ep = DTLSEndpoint(SlowConn, executor=pool, wakeup=done.set)
        ep.receive_datagram(CH, ("a", 1), 0.0)
        assert ep.jobs_pending == 1 and ep.datagrams_to_send(0.0) == []
        gate.set()
        assert done.wait(5)
    ep.poll(0.1)
    assoc = ep.associations()[0]
    assert all(name.startswith("hs-worker") for name in assoc.conn.threads)
    assert ep.datagrams_to_send(0.1) == [(b"SH", ("a", 1))]


def test_connect_starts_client_handshake_and_rejects_duplicates():
    ep = DTLSEndpoint(ScriptedConn, server=False)
    a = ep.connect(("srv", 1), 0.0, server_name="x")
    assert a.is_client and ep.datagrams_to_send(0.0) == [(b"CH", ("srv", 1))]
    with pytest.raises(UsageError):
        ep.connect(("srv", 1), 0.0)
    ep.close(a, 0.1)
    with pytest.raises(UsageError):
        ep.send_data(a, b"x", 0.2)


def test_limits_validation():
    with pytest.raises(ValueError):
        EndpointLimits(max_handshakes=0)
    with pytest.raises(ValueError):
        DTLSEndpoint(ScriptedConn, cid_length=21)


def test_engine_busy_in_a_worker_is_not_touched_by_timeouts_or_close():
    ex = ManualExecutor()
    ep = DTLSEndpoint(ScriptedConn, executor=ex, limits=EndpointLimits(handshake_timeout=2.0))
    ep.receive_datagram(CH, ("a", 1), 0.0)
    (assoc,) = ep.associations()
    ep.handle_timer(2.0)  # the deadline passes while the job is still queued
    assert [type(e) for e in drain_events(ep)] == [HandshakeCancelled]
    assert not assoc.conn.closed  # not called from this thread while a worker may run it
    ex.run_all()
    ep.poll(2.1)
    assert ep.datagrams_to_send(2.1) == [] and ep.associations() == []
    ep.receive_datagram(CH, ("b", 2), 3.0)
    (b,) = ep.associations()
    with pytest.raises(UsageError):
        ep.key_update(b, 3.0)
    ep.close(b, 3.0)
    assert not b.conn.closed and ep.associations() == []
    ex.run_all()
    ep.poll(3.1)
    assert ep.associations() == []


# --------------------------------------------------------------------------
# With real engines and the stateless cookie responder
# --------------------------------------------------------------------------
def _pump_real(ep, client, addr, now):
    for _ in range(30):
        moved = False
        for d in client.datagrams_to_send(now):
            ep.receive_datagram(d, addr, now)
            moved = True
        for d, _ in ep.datagrams_to_send(now):
            client.receive_datagram(d, now)
            moved = True
        if not moved:
            return


@pytest.mark.parametrize("datagram_size", [1200, 100])
def test_cookie_exchange_with_real_engines_and_fragmented_client_hello(datagram_size):
    from tcpls.dtls.connection import DTLSConnection
    from tcpls.dtls.cookie import CookieSecret
    from tcpls.dtls.endpoint import CookieResponder, dtls_connection_factory

    from tlspair import configs

    c, s = configs()
    secret = CookieSecret()
    ep = DTLSEndpoint(dtls_connection_factory(s, cookie_secret=secret), stateless=CookieResponder(s, secret))
    client = DTLSConnection(c, is_client=True, server_name="localhost", max_datagram_size=datagram_size)
    client.start_handshake(0.0)
    first = client.datagrams_to_send(0.0)
    assert (len(first) > 1) == (datagram_size < 1200)  # the ClientHello is fragmented over datagrams
    for d in first:
        ep.receive_datagram(d, ("10.0.0.1", 1), 0.0)
    assert ep.associations() == []  # stateless so far
    (hrr,) = [d for d, _ in ep.datagrams_to_send(0.0)]
    client.receive_datagram(hrr, 0.0)
    _pump_real(ep, client, ("10.0.0.1", 1), 0.0)
    assert client.handshake_complete
    assert ep.connection_count == 1 and ep.stats["stateless_replies"] == 1
