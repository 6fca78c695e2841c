"""TCPLS sessions in memory: N connections, a fake clock, no sockets."""

from __future__ import annotations

import os

import pytest

from tcpls.errors import LocalProtocolError, UsageError
from tcpls.tcpls import events as ev
from tcpls.tcpls import frames as F
from tcpls.tcpls.codepoints import TCPLSExtension
from tcpls.tcpls.path import ConnState
from tcpls.tls.connection import TLSConnection

from tcplspair import TCPLSPair, of_type, received, tcpls_configs


def _pair(client_kw=None, server_kw=None, **kw) -> TCPLSPair:
    c, s = tcpls_configs(client_kw, server_kw, **kw)
    p = TCPLSPair(c, s)
    p.pump()
    return p


def test_negotiation_and_first_token():
    p = _pair()
    assert p.client.mode == p.server.mode == "tcpls"
    assert of_type(p.client_events, ev.HandshakeCompleted)[0].tcpls
    assert of_type(p.server_events, ev.HandshakeCompleted)[0].tcpls
    # tcpls_token in EE gives token 1; New Token frames fill up to max_joins
    assert sorted(e.seq for e in of_type(p.client_events, ev.TokenReceived)) == [1, 2, 3, 4]
    assert p.client.available_tokens() == [1, 2, 3, 4]


def test_extensions_on_the_wire():
    c, s = tcpls_configs()
    p = TCPLSPair(c, s)
    hello = p.client._conns[0].out[0]
    assert TCPLSExtension.tcpls.to_bytes(2, "big") + b"\x00\x00" in hello
    assert TCPLSExtension.tcpls_join.to_bytes(2, "big") not in hello


def test_streams_both_directions_ordered():
    p = _pair()
    a = p.client.open_stream()
    b = p.server.open_stream()
    assert (a, b) == (0, 1)
    assert p.client.open_stream() == 2
    blob1, blob2 = os.urandom(100_000), os.urandom(70_000)
    p.client.send_stream_data(a, blob1, fin=True)
    p.server.send_stream_data(b, blob2, fin=True)
    p.pump()
    assert received(p.server_events, a) == blob1
    assert received(p.client_events, b) == blob2
    assert ev.StreamEnded(a) in p.server_events and ev.StreamEnded(b) in p.client_events
    assert ev.StreamOpened(a) in p.server_events and ev.StreamOpened(b) in p.client_events
    # everything acknowledged: send buffers empty
    assert p.client.stream_send_buffer(a) == 0 and p.server.stream_send_buffer(b) == 0


def test_join_and_multipath_round_robin():
    p = _pair()
    c1, c2 = p.join(), p.join()
    assert (c1, c2) == (1, 2)
    assert [e.conn_id for e in of_type(p.server_events, ev.ConnectionJoined)] == [1, 2]
    assert [e.conn_id for e in of_type(p.client_events, ev.ConnectionJoined)] == [1, 2]
    sid = p.client.open_stream()
    blob = os.urandom(200_000)
    p.client.send_stream_data(sid, blob, fin=True)
    used = {cid for cid in (0, 1, 2) if p.client._conns[cid].sent}
    assert used == {0, 1, 2}  # round robin spread the records
    p.pump()
    assert received(p.server_events, sid) == blob


def test_join_token_reuse_refused():
    p = _pair()
    token = p.client._tokens[1]
    cid = p.join()
    assert cid == 1
    # replay the same token on a fresh TCP connection: illegal_parameter
    hook_cfg = p.client.config.tls
    from dataclasses import replace

    from tcpls.tcpls.migration import TCPLSHook

    t = TLSConnection(replace(hook_cfg, extension_hooks=[TCPLSHook(True, join_token=token)]), server_side=False, server_name="localhost")
    t.start_handshake(0)
    with pytest.raises(LocalProtocolError) as info:
        p._to_server(9, t.data_to_send())
    assert info.value.alert_name == "illegal_parameter"
    assert p.refused[9][:1] == b"\x15" and p.refused[9][-1] == 47  # cleartext illegal_parameter alert
    # an unknown token too
    t = TLSConnection(replace(hook_cfg, extension_hooks=[TCPLSHook(True, join_token=bytes(32))]), server_side=False)
    t.start_handshake(0)
    with pytest.raises(LocalProtocolError):
        p._to_server(10, t.data_to_send())


def test_stolen_token_cannot_hijack():
    """An on-path attacker copies the join ClientHello but cannot prove key possession."""
    p = _pair()
    cid = p.client.add_connection(p.now)
    wire = p.client.data_to_send(cid)
    hello_len = 5 + int.from_bytes(wire[3:5], "big")
    stolen_hello = wire[:hello_len]
    # the attacker's connection arrives first, with a forged "proof"
    forged = b"\x17\x03\x03\x00\x20" + os.urandom(32)
    p._to_server(cid, stolen_hello + forged)
    assert p.server.connection_state(cid) is ConnState.FAILED
    assert not of_type(p.server_events + [p.server.next_event()], ev.ConnectionJoined)
    assert p.server.data_to_send(cid)[:1] == b"\x15"  # bad_record_mac in clear to the attacker
    # the session is unharmed and the server replaced the burnt token
    sid = p.client.open_stream()
    p.client.send_stream_data(sid, b"still fine", fin=True)
    p.dropped.add(cid)
    p.pump()
    assert received(p.server_events, sid) == b"still fine"
    assert 5 in p.client.available_tokens()


def test_joined_connection_unusable_before_proof():
    p = _pair()
    cid = p.client.add_connection(p.now)
    assert p.client.connection_state(cid) is ConnState.JOINING
    assert cid not in p.client.usable_connections()
    p.hold.add(cid)
    p.pump()
    assert p.server is not None and cid not in p.server.connection_ids()
    p.release(cid)
    assert p.server.connection_state(cid) is ConnState.ACTIVE
    p.pump()
    assert p.client.connection_state(cid) is ConnState.ACTIVE


def test_reordering_across_connections():
    p = _pair()
    p.join()
    sid = p.client.open_stream()
    blob = os.urandom(120_000)
    p.hold.add(0)  # connection 0 is slow: its records arrive last
    p.client.send_stream_data(sid, blob, fin=True)
    p.pump()
    partial = received(p.server_events, sid)
    assert len(partial) == 0  # offset 0 went on connection 0
    p.release(0)
    p.pump()
    assert received(p.server_events, sid) == blob


def test_reorder_buffer_overflow_is_an_error():
    p = _pair(server_kw={"stream_window": 1 << 14}, client_kw={"stream_window": 1 << 20})
    p.join()
    sid = p.client.open_stream()
    p.hold.add(0)
    p.client.send_stream_data(sid, os.urandom(200_000), fin=True)
    with pytest.raises(LocalProtocolError, match="reorder"):
        p.pump()
    assert p.server.terminated
    # the alert went out on the connections
    assert p.server.data_to_send(1)


def test_flow_control_window_bounds_in_flight_data():
    p = _pair(client_kw={"stream_window": 1 << 15}, server_kw={"stream_window": 1 << 15})
    sid = p.client.open_stream()
    p.client.send_stream_data(sid, os.urandom(100_000), fin=True)
    assert p.client._conns[0].in_flight <= 1 << 15
    p.pump()
    assert len(received(p.server_events, sid)) == 100_000


def test_send_buffer_low_event():
    p = _pair(client_kw={"send_high_water": 50_000, "send_low_water": 10_000})
    sid = p.client.open_stream()
    p.client.send_stream_data(sid, os.urandom(60_000))
    assert p.client.stream_send_buffer(sid) == 60_000
    p.pump()
    assert ev.SendBufferLow(sid, 0) in p.client_events


@pytest.mark.parametrize("scheduler", ["round_robin", "lowest_rtt", "fill_fastest_first"])
def test_schedulers_deliver(scheduler):
    p = _pair(client_kw={"scheduler": scheduler, "inflight_limit": 40_000})
    p.join()
    p.join()
    sid = p.client.open_stream()
    blob = os.urandom(150_000)
    p.client.send_stream_data(sid, blob, fin=True)
    used = {cid for cid in (0, 1, 2) if p.client._conns[cid].sent}
    if scheduler == "lowest_rtt":
        assert len(used) == 1
    else:
        assert len(used) > 1
    p.pump()
    assert received(p.server_events, sid) == blob


def test_lowest_rtt_prefers_the_fast_connection():
    p = _pair(client_kw={"scheduler": "lowest_rtt"})
    cid = p.join()
    p.client._conns[0].srtt = 0.200
    p.client._conns[cid].srtt = 0.010
    sid = p.client.open_stream()
    p.client.send_stream_data(sid, b"x" * 50_000)
    assert p.client._conns[cid].sent and not any(r.ranges for r in p.client._conns[0].sent)


def test_unknown_scheduler_refused():
    with pytest.raises(ValueError, match="unknown scheduler"):
        _pair(client_kw={"scheduler": "nope"})


def test_failover_by_timeout_byte_exact():
    p = _pair(client_kw={"dead_timeout": 1.0}, server_kw={"dead_timeout": 1.0})
    cid = p.join()
    sid = p.client.open_stream()
    srv = p.server.open_stream()
    up, down = os.urandom(300_000), os.urandom(250_000)
    p.dropped.add(cid)  # connection 1 silently black-holes from now on
    p.client.send_stream_data(sid, up, fin=True)
    p.server.send_stream_data(srv, down, fin=True)
    p.pump()
    assert len(received(p.server_events, sid)) < len(up)
    p.advance(1.5)  # ACKs missing on connection 1: declared dead
    assert any(e.conn_id == cid for e in of_type(p.client_events, ev.ConnectionFailed))
    p.pump()
    assert received(p.server_events, sid) == up
    assert received(p.client_events, srv) == down
    assert ev.StreamEnded(sid) in p.server_events and ev.StreamEnded(srv) in p.client_events


def test_failover_by_api_no_duplicates():
    p = _pair()
    cid = p.join()
    sid = p.client.open_stream()
    blob = os.urandom(180_000)
    p.client.send_stream_data(sid, blob, fin=True)
    # half of connection 1's records arrive, then the connection breaks
    wire = p.client.data_to_send(cid)
    p.server.receive_data(cid, wire[: len(wire) // 2], p.now)
    p.client.fail_connection(cid, p.now, "socket error")
    p.dropped.add(cid)
    p.pump()
    assert received(p.server_events, sid) == blob  # received() asserts no overlap/duplicate
    assert p.server.connection_state(cid) is ConnState.CLOSED  # learnt from Connection Reset


def test_break_before_make_failover():
    """The only connection dies; data waits, then goes out on a new join."""
    p = _pair(client_kw={"dead_timeout": 1.0})
    sid = p.client.open_stream()
    blob = os.urandom(40_000)
    p.dropped.add(0)
    p.client.send_stream_data(sid, blob, fin=True)
    p.pump()
    p.advance(2.0)
    assert p.client.connection_state(0) is ConnState.FAILED
    cid = p.join()
    p.pump()
    assert cid == 1
    assert received(p.server_events, sid) == blob


def test_migration_byte_exact():
    p = _pair()
    sid = p.client.open_stream()
    first, second = os.urandom(50_000), os.urandom(80_000)
    p.client.send_stream_data(sid, first)
    p.pump()
    new = p.join()
    p.client.migrate_stream(sid, new)
    p.client.close_connection(0, p.now)
    p.client.send_stream_data(sid, second, fin=True)
    assert not p.client._conns[0].sent
    p.pump()
    assert received(p.server_events, sid) == first + second
    assert p.server.connection_state(0) is ConnState.CLOSED
    assert p.client.stream_connection(sid) == new
    # the server answers on the remaining connection
    reply = p.server.open_stream()
    p.server.send_stream_data(reply, b"pong", fin=True)
    p.pump()
    assert received(p.client_events, reply) == b"pong"


def test_idle_ping_and_ack():
    p = _pair(client_kw={"ping_interval": 5.0})
    assert p.client.get_timer() == pytest.approx(5.0)
    p.advance(5.0)
    p.pump()
    assert p.client._conns[0].srtt is not None  # the Ping's ACK gave an RTT sample
    assert not p.client._conns[0].sent


def test_stream_reset():
    p = _pair()
    sid = p.client.open_stream()
    p.client.send_stream_data(sid, b"abc")
    p.client.reset_stream(sid, 7)
    p.pump()
    assert ev.StreamReset(sid, 7) in p.server_events
    with pytest.raises(UsageError):
        p.client.send_stream_data(sid, b"more")


def test_client_must_not_send_new_token():
    p = _pair()
    conn = p.client._conns[0]
    p.client._send_record(conn, [F.NewTokenFrame(9, bytes(32))], [], p.now)
    with pytest.raises(LocalProtocolError) as info:
        p.pump()
    assert info.value.alert_name == "unexpected_message"
    # the server queued a protected fatal alert; the client sees it
    from tcpls.errors import RemoteAlert

    with pytest.raises(RemoteAlert):
        p.client.receive_data(0, p.server.data_to_send(0), p.now)


def test_malformed_record_is_decode_error_alert():
    p = _pair()
    conn = p.client._conns[0]
    assert conn.encryptor is not None
    conn.encryptor.seal(23, b"\x00\x07\x42", conn.out)  # unknown frame type 0x42
    with pytest.raises(LocalProtocolError) as info:
        p.pump()
    assert info.value.alert_name == "decode_error"
    assert p.server.terminated


def test_stream_of_wrong_parity_refused():
    p = _pair()
    conn = p.client._conns[0]
    p.client._send_record(conn, [F.StreamFrame(1, 0, b"x")], [], p.now)  # odd = server-initiated
    with pytest.raises(LocalProtocolError) as info:
        p.pump()
    assert info.value.alert_name == "illegal_parameter"


def test_addresses_advertised():
    p = _pair()
    conn = p.server._conns[0]
    p.server._send_record(conn, [F.NewAddressFrame(1, 4, bytes([10, 0, 0, 1]), 443), F.RemoveAddressFrame(1)], [], p.now)
    p.pump()
    # parsed last-first: Remove (unknown yet, ignored) then New
    assert ev.AddressAdvertised(1, 4, bytes([10, 0, 0, 1]), 443) in p.client_events


def test_fallback_to_plain_tls_when_server_does_not_offer():
    p = _pair(server_kw={"enable": False})
    assert p.client.mode == p.server.mode == "tls"
    assert not of_type(p.client_events, ev.HandshakeCompleted)[0].tcpls
    sid = p.client.open_stream()
    assert sid == 0
    p.client.send_stream_data(sid, b"plain tls", fin=True)
    p.pump()
    assert received(p.server_events, 0) == b"plain tls"
    assert ev.StreamEnded(0) in p.server_events
    with pytest.raises(UsageError):
        p.client.add_connection(p.now)


def test_fallback_when_client_does_not_offer():
    p = _pair(client_kw={"enable": False})
    assert p.client.mode == p.server.mode == "tls"
    sid = p.server.open_stream()
    p.server.send_stream_data(sid, b"hi")
    p.pump()
    assert received(p.client_events, 0) == b"hi"


def test_plain_tls_client_talks_to_tcpls_server():
    c, s = tcpls_configs()
    p = TCPLSPair(c, s)
    plain = TLSConnection(c.tls, server_side=False, server_name="localhost")
    plain.start_handshake(0)
    from tcpls.tcpls.session import TCPLSSession

    server = TCPLSSession(s, is_client=False)
    data = plain.data_to_send()
    for _ in range(5):
        server.receive_data(0, data, 0)
        plain.receive_data(server.data_to_send(0), 0)
        data = plain.data_to_send()
    assert plain.handshake_complete and server.mode == "tls"
    plain.send_data(b"hello")
    server.receive_data(0, plain.data_to_send(), 0)
    events = []
    while (e := server.next_event()) is not None:
        events.append(e)
    assert received(events, 0) == b"hello"


def test_session_close_notify():
    p = _pair()
    p.client.close()
    p.pump()
    assert ev.SessionClosed() in p.server_events


def test_pull_scheduling_only_on_writable_connections():
    """An adapter reports full TCP connections (set_writable) and bounds
    what one flush queues per connection (send_burst): stream data goes
    only where it can leave soon, and flush() hands out the next burst."""
    p = _pair()
    cid = p.join()
    p.client.send_burst = 40_000
    p.client.set_writable(0, False, p.now)
    sid = p.client.open_stream()
    blob = os.urandom(300_000)
    p.client.send_stream_data(sid, blob, fin=True)
    assert not any(r.ranges for r in p.client._conns[0].sent)  # connection 0 is full
    first = p.client.data_to_send(cid)
    assert 0 < len(first) < 40_000 + (1 << 14) + 512  # one burst, at most one record over
    p.client.flush(p.now)
    second = p.client.data_to_send(cid)
    assert 0 < len(second) < 40_000 + (1 << 14) + 512
    assert p.client.connections_with_data() == []
    # connection 1 fills up, connection 0 drains: the data moves there
    p.client.set_writable(cid, False, p.now)
    p.client.set_writable(0, True, p.now)
    assert p.client.connections_with_data() == [0]
    assert not p.client.data_to_send(cid)
    for data in (first, second):
        p.server.receive_data(cid, data, p.now)
    p.client.set_writable(cid, True, p.now)
    p.pump()
    assert received(p.server_events, sid) == blob


def test_failover_timeout_when_another_connection_delivers():
    kw = {"dead_timeout": 3.0, "failover_timeout": 0.25}
    p = _pair(client_kw=kw, server_kw=kw)
    cid = p.join()
    sid = p.client.open_stream()
    chunks = [os.urandom(40_000) for _ in range(8)]
    p.client.send_stream_data(sid, chunks[0])  # RTT samples on both connections
    p.pump()
    assert p.client.connection_rtt(0) is not None and p.client.connection_rtt(cid) is not None
    p.dropped.add(0)  # connection 0 black-holes from now on; connection 1 keeps delivering
    for step, chunk in enumerate(chunks[1:], 1):
        p.client.flush(p.now)  # (the engine's clock)
        p.client.send_stream_data(sid, chunk, fin=step == len(chunks) - 1)
        p.pump()
        failed = [e.conn_id for e in of_type(p.client_events, ev.ConnectionFailed)]
        if p.now < 0.25:
            assert not failed, p.now  # silent for less than failover_timeout
        elif p.now >= 0.3:
            assert failed == [0], p.now
        p.advance(0.05)
    p.pump()
    assert received(p.server_events, sid) == b"".join(chunks)


def test_failover_timeout_needs_progress_elsewhere():
    """Every connection silent (peer stalled, not one path lost): only
    dead_timeout applies."""
    kw = {"dead_timeout": 2.0, "failover_timeout": 0.25}
    p = _pair(client_kw=kw, server_kw=kw)
    cid = p.join()
    sid = p.client.open_stream()
    p.dropped.update({0, cid})
    p.client.send_stream_data(sid, os.urandom(100_000))
    p.pump()
    p.advance(0.1)
    p.client.flush(p.now)
    p.client.send_stream_data(sid, os.urandom(100_000))
    p.advance(1.0)
    assert not of_type(p.client_events, ev.ConnectionFailed)
    p.advance(1.0)
    assert {e.conn_id for e in of_type(p.client_events, ev.ConnectionFailed)} == {0, cid}


def test_failover_timeout_must_be_positive():
    with pytest.raises(ValueError, match="failover_timeout"):
        _pair(client_kw={"failover_timeout": 0})
