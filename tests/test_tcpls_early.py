"""TCPLS 0-RTT: tickets in TCPLS sessions, first stream bytes in TLS early
data (accepted, rejected by policy / after HRR / by anti-replay), in memory
with a fake clock."""

from __future__ import annotations

import dataclasses

import pytest

from tcpls.errors import LocalProtocolError, RemoteAlert
from tcpls.tcpls import events as ev
from tcpls.tcpls import frames as F
from tcpls.tcpls.session import TCPLSSession
from tcpls.tls.enums import AlertDescription as A, NamedGroup
from tcpls.tls.session import AntiReplay

from tcplspair import TCPLSPair, of_type, received, tcpls_configs

T0 = 1_700_000_000.0


def early_configs(max_early: int = 4096, **kw):
    c, s = tcpls_configs(s_max_early_data=max_early, **kw)
    s.tls.anti_replay = AntiReplay(window=10)
    return c, s


def first_ticket(c, s, now=T0):
    p = TCPLSPair(c, s, now=now)
    p.pump()
    tickets = of_type(p.client_events, ev.SessionTicketReceived)
    assert tickets, "a TCPLS session must deliver the server's tickets"
    assert p.client.resumption_session is tickets[-1].session
    return tickets[-1].session


def resumed(c, s, ticket, writes, now, early=True):
    """A pair whose client resumes ``ticket`` and writes ``writes``
    ({stream index: (data, fin)}) before the ClientHello."""
    p = TCPLSPair(c, s, now=now)
    p.client = TCPLSSession(c, is_client=True, server_name="localhost", session=ticket)
    p.client_events, p.server_events, p.server = [], [], None
    sids = []
    for data, fin in writes:
        sid = p.client.open_stream()
        sids.append(sid)
        p.client.send_stream_data(sid, data, fin)
    p.client.start_handshake(now, early_data=early)
    return p, sids


def early_bytes(events, sid):
    return b"".join(e.data for e in events if isinstance(e, ev.StreamDataReceived) and e.stream_id == sid and e.early)


def test_tickets_in_tcpls_mode_and_resumption_negotiates_tcpls_again():
    c, s = early_configs()
    ticket = first_ticket(c, s)
    assert ticket.max_early_data == 4096
    p, (sid,) = resumed(c, s, ticket, [(b"late", True)], T0 + 1, early=False)
    p.pump()
    hs = of_type(p.client_events, ev.HandshakeCompleted)[0]
    assert hs.tcpls and hs.early_data is None
    assert p.client.tls.session_resumed and p.server.tls.session_resumed
    assert received(p.server_events, sid) == b"late" and early_bytes(p.server_events, sid) == b""
    # the resumed session issues tickets too
    assert of_type(p.client_events, ev.SessionTicketReceived)


def test_early_data_accepted_byte_exact_and_marked_early():
    c, s = early_configs()
    ticket = first_ticket(c, s)
    data = bytes(range(256)) * 8
    p, (sid,) = resumed(c, s, ticket, [(data, True)], T0 + 2)
    assert p.client.early_data_sent == len(data)
    p.pump()
    shs = of_type(p.server_events, ev.HandshakeCompleted)[0]
    chs = of_type(p.client_events, ev.HandshakeCompleted)[0]
    assert shs.early_data is True and chs.early_data is True
    assert p.client.early_data_accepted is True and p.server.early_data_received == len(data)
    assert received(p.server_events, sid) == data
    assert early_bytes(p.server_events, sid) == data
    # early data is delivered before the server's handshake completes
    kinds = [type(e) for e in p.server_events]
    assert kinds.index(ev.StreamDataReceived) < kinds.index(ev.HandshakeCompleted)
    # implicitly acknowledged: nothing left to send, and the stream answers
    assert p.client.stream_send_buffer(sid) == 0
    p.server.send_stream_data(sid, b"answer", True)
    p.pump()
    assert received(p.client_events, sid) == b"answer"
    assert p.client.stream_ids() == [] and p.server.stream_ids() == []


def test_early_data_across_two_streams_then_1rtt_data():
    c, s = early_configs()
    ticket = first_ticket(c, s)
    p, (a, b) = resumed(c, s, ticket, [(b"A" * 1000, False), (b"B" * 500, True)], T0 + 2)
    p.client.send_stream_data(a, b"-after", True)  # written during 0-RTT: goes 1-RTT
    p.pump()
    assert early_bytes(p.server_events, a) == b"A" * 1000
    assert early_bytes(p.server_events, b) == b"B" * 500
    assert received(p.server_events, a) == b"A" * 1000 + b"-after"
    assert received(p.server_events, b) == b"B" * 500
    assert len(of_type(p.server_events, ev.StreamEnded)) == 2


def test_early_data_larger_than_allowed_rest_goes_after_handshake():
    c, s = early_configs(max_early=1000)
    ticket = first_ticket(c, s)
    data = b"x" * 5000
    p, (sid,) = resumed(c, s, ticket, [(data, True)], T0 + 2)
    assert p.client.early_data_limit() == 1000
    assert p.client.early_data_sent == 1000 - F.STREAM_FRAME_OVERHEAD
    p.pump()
    assert received(p.server_events, sid) == data
    assert early_bytes(p.server_events, sid) == data[: 1000 - F.STREAM_FRAME_OVERHEAD]
    assert p.server.early_data_received == 1000 - F.STREAM_FRAME_OVERHEAD


def test_server_refuses_more_early_data_than_the_ticket_allows():
    c, s = early_configs(max_early=1000)
    ticket = dataclasses.replace(first_ticket(c, s), max_early_data=8000)  # a client ignoring the limit
    p, _ = resumed(c, s, ticket, [(b"y" * 5000, True)], T0 + 2)
    with pytest.raises(LocalProtocolError) as ei:
        p.pump()
    assert ei.value.alert == A.unexpected_message
    assert p.server.terminated


def _assert_rejected_and_resent(p, writes, sids):
    p.pump()
    chs = of_type(p.client_events, ev.HandshakeCompleted)[0]
    assert chs.tcpls and chs.early_data is False and p.client.early_data_accepted is False
    assert of_type(p.server_events, ev.HandshakeCompleted)[0].early_data is False
    for (data, _fin), sid in zip(writes, sids):
        assert received(p.server_events, sid) == data  # exactly once, in order
        assert early_bytes(p.server_events, sid) == b""
    assert p.server.early_data_received == 0


def test_early_data_rejected_by_policy_is_resent_under_1rtt():
    c, s = early_configs()
    ticket = first_ticket(c, s)
    offers = []
    s.tls.early_data_callback = lambda offer: offers.append(offer) or False
    writes = [(b"pay 100" * 50, True), (b"second", False)]
    p, sids = resumed(c, s, ticket, writes, T0 + 2)
    assert p.client.early_data_sent == 356
    _assert_rejected_and_resent(p, writes, sids)
    assert offers and p.server.tls.session_resumed


def test_early_data_rejected_when_server_turned_it_off():
    c, s = early_configs()
    ticket = first_ticket(c, s)
    s.tls.max_early_data = 0
    writes = [(b"z" * 3000, True)]
    p, sids = resumed(c, s, ticket, writes, T0 + 2)
    _assert_rejected_and_resent(p, writes, sids)


def test_early_data_rejected_after_hello_retry():
    c, s = early_configs(
        c_groups=[NamedGroup.secp256r1, NamedGroup.x25519], c_key_share_groups=[NamedGroup.secp256r1]
    )
    ticket = first_ticket(c, s)
    s.tls.groups = [NamedGroup.x25519]
    writes = [(b"early? no: after the retry", True)]
    p, sids = resumed(c, s, ticket, writes, T0 + 2)
    _assert_rejected_and_resent(p, writes, sids)
    assert p.client.tls.hello_retry and p.client.tls.session_resumed


def test_replayed_client_hello_gets_no_early_data():
    c, s = early_configs()
    ticket = first_ticket(c, s)
    p, (sid,) = resumed(c, s, ticket, [(b"transfer 100", True)], T0 + 2)
    flight = p.client.data_to_send(0)
    first = TCPLSSession(s, is_client=False)
    first.receive_data(0, flight, T0 + 2)
    got1 = list(iter(first.next_event, None))
    replay = TCPLSSession(s, is_client=False)
    replay.receive_data(0, flight, T0 + 3)  # an attacker replays the first flight
    got2 = list(iter(replay.next_event, None))
    assert early_bytes(got1, sid) == b"transfer 100"
    assert not of_type(got2, ev.StreamDataReceived) and replay.early_data_received == 0
    assert replay.tls.early_data_accepted is False


def test_control_frames_in_early_data_are_refused():
    c, s = early_configs()
    ticket = first_ticket(c, s)
    client = TCPLSSession(c, is_client=True, server_name="localhost", session=ticket)
    client.tls.send_early_data(F.encode_frames([F.AckFrame(0, 3)]))
    client.start_handshake(T0 + 2)
    server = TCPLSSession(s, is_client=False)
    with pytest.raises(LocalProtocolError) as ei:
        server.receive_data(0, client.data_to_send(0), T0 + 2)
    assert ei.value.alert == A.unexpected_message
    # the alert reaches the client
    out = server.data_to_send(0)
    assert out
    with pytest.raises(RemoteAlert) as remote:
        client.receive_data(0, out, T0 + 2)
    assert remote.value.alert == A.unexpected_message


def test_no_early_data_without_ticket_or_flag():
    c, s = early_configs()
    p, (sid,) = resumed(c, s, None, [(b"hello", True)], T0)
    assert p.client.early_data_limit() == 0 and p.client.early_data_sent == 0
    p.pump()
    assert of_type(p.client_events, ev.HandshakeCompleted)[0].early_data is None
    assert received(p.server_events, sid) == b"hello" and early_bytes(p.server_events, sid) == b""


def test_plain_tls_fallback_exposes_no_tcpls_ticket():
    c, s = early_configs(server_kw={"enable": False})
    p = TCPLSPair(c, s, now=T0)
    p.pump()
    assert not of_type(p.client_events, ev.HandshakeCompleted)[0].tcpls
    assert p.client.resumption_session is None


def test_malformed_ticket_in_tcpls_session_is_a_clean_decode_error():
    c, s = early_configs()
    p = TCPLSPair(c, s, now=T0)
    p.pump()
    conn = p.server._conns[0]
    # a NewSessionTicket whose body is cut short, protected like any record
    p.server._seal(conn, 22, bytes([4, 0, 0, 3, 1, 2, 3]))
    with pytest.raises(LocalProtocolError) as ei:
        p.pump()
    assert ei.value.alert == A.decode_error
    # the alert the client queued is readable by the server (sealed by the session)
    with pytest.raises(RemoteAlert) as remote:
        p.server.receive_data(0, p.client.data_to_send(0), p.now)
    assert remote.value.alert == A.decode_error


def test_server_answers_early_data_in_its_first_flight_0_5_rtt():
    c, s = early_configs()
    ticket = first_ticket(c, s)
    client = TCPLSSession(c, is_client=True, server_name="localhost", session=ticket)
    sid = client.open_stream()
    client.send_stream_data(sid, b"request", True)
    client.start_handshake(T0 + 2, early_data=True)
    server = TCPLSSession(s, is_client=False)
    server.receive_data(0, client.data_to_send(0), T0 + 2)
    got = list(iter(server.next_event, None))
    assert early_bytes(got, sid) == b"request"
    assert not of_type(got, ev.HandshakeCompleted)  # the client's Finished has not arrived
    server.send_stream_data(sid, b"response", True)  # 0.5-RTT, under the server's application key
    flight = server.data_to_send(0)
    client.receive_data(0, flight, T0 + 2)
    cev = list(iter(client.next_event, None))
    assert of_type(cev, ev.HandshakeCompleted)[0].early_data is True
    assert received(cev, sid) == b"response" and of_type(cev, ev.StreamEnded)
    # the rest of the session is ordinary: Finished, tickets, ACKs, both sides forget the stream
    for _ in range(5):
        server.receive_data(0, client.data_to_send(0), T0 + 2)
        out = server.data_to_send(0)
        if not out:
            break
        client.receive_data(0, out, T0 + 2)
    sev = list(iter(server.next_event, None))
    assert of_type(sev, ev.HandshakeCompleted) and of_type(list(iter(client.next_event, None)), ev.SessionTicketReceived)
    assert client.stream_ids() == [] and server.stream_ids() == []
    assert client.stream_send_buffer(sid) == 0 and server.stream_send_buffer(sid) == 0


def test_no_0_5_rtt_when_the_server_asks_for_client_certificates():
    c, s = early_configs()
    s.tls.request_client_certificate = True
    p = TCPLSPair(c, s, now=T0)
    p.client.send_stream_data(p.client.open_stream(), b"x", True)
    cid_flight = p.client.data_to_send(0)
    server = TCPLSSession(s, is_client=False)
    server.receive_data(0, cid_flight, T0)
    server.open_stream()
    server.send_stream_data(1, b"too early", True)
    flight = server.data_to_send(0)
    # only the handshake flight: the stream data waits for the client's Finished
    from tcpls.tls.record import RecordReader

    r = RecordReader()
    r.feed(flight)
    n = 0
    while r.next_record() is not None:
        n += 1
    p2 = TCPLSPair(c, s, now=T0)
    server2 = TCPLSSession(s, is_client=False)
    server2.receive_data(0, p2.client.data_to_send(0), T0)
    m = 0
    r2 = RecordReader()
    r2.feed(server2.data_to_send(0))
    while r2.next_record() is not None:
        m += 1
    assert n == m
