"""TCPLS engine hardening: bounded state, stream ID rules, early joins.

In-memory sessions over fake TCP connections and a fake clock (tcplspair).
"""

from __future__ import annotations

import os

import pytest

from tcpls.errors import ConnectionClosedError, LocalProtocolError, RemoteAlert, UsageError
from tcpls.tcpls import events as ev
from tcpls.tcpls import frames as F
from tcpls.tcpls.path import ConnState
from tcpls.tcpls.stream import MAX_REORDER_SEGMENTS, ReorderBufferOverflow, Stream

from tcplspair import TCPLSPair, of_type, received, tcpls_configs


def _pair(client_kw=None, server_kw=None, **kw) -> TCPLSPair:
    c, s = tcpls_configs(client_kw, server_kw, **kw)
    p = TCPLSPair(c, s)
    p.pump()
    return p


def _forge(p: TCPLSPair, frames: list, conn_id: int = 0) -> None:
    """The client sends a protected record with arbitrary frames."""
    p.client._send_record(p.client._conns[conn_id], frames, [], p.now)


def _assert_alerted(p: TCPLSPair, alert: str) -> None:
    """Pumping fails on the server with ``alert``, which reaches the client protected."""
    with pytest.raises(LocalProtocolError) as info:
        p.pump()
    assert info.value.alert_name == alert
    assert p.server.terminated
    with pytest.raises(RemoteAlert) as remote:
        p.client.receive_data(0, p.server.data_to_send(0), p.now)
    assert remote.value.alert_name == alert


# ------------------------------------------------------------ stream lifetime
def test_thousands_of_short_streams_keep_the_tables_bounded():
    p = _pair()
    sizes = []
    for i in range(3000):
        sid = p.client.open_stream()
        p.client.send_stream_data(sid, b"req %d" % i, fin=True)
        p.pump()
        assert ev.StreamOpened(sid) in p.server_events[-4:]
        p.server.send_stream_data(sid, b"resp %d" % i, fin=True)
        p.pump()
        if i % 500 == 0:
            sizes.append((len(p.client._streams), len(p.server._streams)))
    # every byte arrived exactly once and both ends finished every stream
    assert received(p.server_events, 2 * 2999) == b"req 2999"
    assert received(p.client_events, 2 * 2999) == b"resp 2999"
    assert len(of_type(p.server_events, ev.StreamEnded)) == len(of_type(p.client_events, ev.StreamEnded)) == 3000
    # the sessions forgot them: nothing grows with the number of streams
    assert sizes == [(0, 0)] * 6
    assert p.client.stream_ids() == p.server.stream_ids() == []
    assert len(p.client._closed) <= p.client.config.max_streams
    assert len(p.server._closed) <= p.server.config.max_streams
    assert p.server._peer_recv_open == 0
    for s in (p.client, p.server):
        assert not s._control and all(not c.sent for c in s._conns.values())
    # a forgotten stream is reported as finished, never as unknown
    assert p.client.stream_send_buffer(0) == 0
    with pytest.raises(ConnectionClosedError):
        p.client.send_stream_data(0, b"late")
    p.client.reset_stream(0)  # no-op
    # and a stream never opened is still a usage error
    with pytest.raises(UsageError):
        p.client.stream_send_buffer(2 * 3000 + 2)


def test_stream_freed_only_when_both_directions_are_over():
    p = _pair()
    sid = p.client.open_stream()
    p.client.send_stream_data(sid, b"x" * 1000, fin=True)
    p.pump()
    # our FIN is acknowledged, but the server has not finished its direction
    assert sid in p.client.stream_ids() and sid in p.server.stream_ids()
    p.server.send_stream_data(sid, b"y", fin=False)
    p.pump()
    assert sid in p.client.stream_ids()
    p.server.reset_stream(sid, 3)
    p.pump()
    assert ev.StreamReset(sid, 3) in p.client_events
    assert sid not in p.client.stream_ids() and sid not in p.server.stream_ids()


def test_reset_both_ways_frees_the_stream():
    p = _pair()
    sid = p.client.open_stream()
    p.client.send_stream_data(sid, b"abc")
    p.pump()
    p.client.reset_stream(sid, 1)
    p.server.reset_stream(sid, 2)
    p.pump()
    assert p.client.stream_ids() == p.server.stream_ids() == []


def test_opener_limit_is_backpressure_not_an_alert():
    p = _pair(client_kw={"max_streams": 8}, server_kw={"max_streams": 8})
    sids = [p.client.open_stream() for _ in range(8)]
    assert not p.client.can_open_stream()
    with pytest.raises(UsageError, match="still open"):
        p.client.open_stream()
    for sid in sids:
        p.client.send_stream_data(sid, b"d")
    p.pump()
    assert not p.client.can_open_stream()
    p.client.send_stream_data(sids[0], b"", fin=True)
    p.pump()  # FIN acknowledged: our side of one stream is over
    assert p.client.can_open_stream()
    p.client.send_stream_data(p.client.open_stream(), b"ninth", fin=True)
    p.pump()
    assert not p.server.terminated
    assert received(p.server_events, 16) == b"ninth"


# ---------------------------------------------------------------- stream IDs
def test_peer_exceeding_the_stream_limit_is_an_alert():
    p = _pair(server_kw={"max_streams": 4})
    _forge(p, [F.StreamFrame(8, 0, b"x")])  # opens 0, 2, 4, 6, 8: five streams
    _assert_alerted(p, "illegal_parameter")


def test_stream_ids_out_of_order_within_the_limit_open_the_lower_ones():
    p = _pair()
    _forge(p, [F.StreamFrame(4, 0, b"c", True)])
    _forge(p, [F.StreamFrame(0, 0, b"a", True)])
    p.pump()
    assert [e.stream_id for e in of_type(p.server_events, ev.StreamOpened)] == [0, 2, 4]
    assert received(p.server_events, 4) == b"c" and received(p.server_events, 0) == b"a"


def test_stream_of_our_parity_never_opened_is_an_alert():
    p = _pair()
    p.server.open_stream()  # 1
    _forge(p, [F.StreamFrame(3, 0, b"x")])  # the server never opened 3
    _assert_alerted(p, "illegal_parameter")


def test_reset_of_a_stream_never_opened_by_the_receiver_is_an_alert():
    p = _pair()
    _forge(p, [F.StreamResetFrame(5, 0, 0)])
    _assert_alerted(p, "illegal_parameter")


def _finished_stream(p: TCPLSPair) -> int:
    sid = p.client.open_stream()
    p.client.send_stream_data(sid, b"0123456789", fin=True)
    p.server.send_stream_data(sid, b"", fin=True) if sid in p.server.stream_ids() else None
    p.pump()
    p.server.send_stream_data(sid, b"", fin=True)
    p.pump()
    assert sid not in p.server.stream_ids()
    return sid


def test_late_duplicate_of_a_finished_stream_is_dropped():
    p = _pair()
    sid = _finished_stream(p)
    before = len(p.server_events)
    _forge(p, [F.StreamFrame(sid, 2, b"23456789", True)])  # a retransmission after failover
    p.pump()
    assert not p.server.terminated and len(p.server_events) == before


def test_reused_stream_id_is_an_alert():
    p = _pair()
    sid = _finished_stream(p)
    _forge(p, [F.StreamFrame(sid, 10, b"new data")])  # beyond the final size
    _assert_alerted(p, "illegal_parameter")


def test_stream_reset_changing_the_final_size_is_an_alert():
    p = _pair()
    sid = p.client.open_stream()
    p.client.send_stream_data(sid, b"0123456789")
    p.pump()
    _forge(p, [F.StreamResetFrame(sid, 4, 0)])  # below what was delivered
    _assert_alerted(p, "illegal_parameter")


def test_stream_reset_below_buffered_data_is_an_alert():
    p = _pair()
    _forge(p, [F.StreamFrame(0, 100, b"later bytes")])  # waits in the reorder buffer
    p.pump()
    _forge(p, [F.StreamResetFrame(0, 50, 0)])
    _assert_alerted(p, "illegal_parameter")


# ------------------------------------------------------------ reorder buffer
def test_reorder_buffer_keeps_disjoint_bytes_only():
    s = Stream(0, 1 << 14, 1 << 18, 1 << 16)
    assert s.receive(100, b"b" * 100, False) == []
    assert s.receive(50, b"a" * 50 + b"b" * 150, False) == []  # overlaps: only 50 + 50 new bytes
    assert s.reorder_buffered == 200
    assert s.receive(250, b"c" * 10, False) == []  # adjacent: merges
    assert len(s._pending_offsets) == 1
    out = s.receive(0, b"z" * 60, False)
    assert b"".join(d for _, d in out) == b"z" * 60 + b"a" * 40 + b"b" * 150 + b"c" * 10
    assert [o for o, _ in out] == [0, 60]
    assert s.reorder_buffered == 0 and s.recv_offset == 260


def test_reorder_buffer_bounded_in_bytes_and_pieces():
    s = Stream(0, 1 << 14, 1 << 18, 1 << 16)
    with pytest.raises(ReorderBufferOverflow):
        s.receive(1, bytes(1 << 14), False)
    s = Stream(0, 1 << 20, 1 << 18, 1 << 16)
    with pytest.raises(ReorderBufferOverflow) as info:
        for i in range(MAX_REORDER_SEGMENTS + 1):
            s.receive(2 + 2 * i, b"x", False)  # one-byte pieces with one-byte gaps
    assert info.value.alert_name == "unexpected_message"
    assert len(s._pending_offsets) <= MAX_REORDER_SEGMENTS + 1


def test_overlapping_retransmissions_do_not_overflow_a_conforming_window():
    window = 1 << 14
    s = Stream(0, window, 1 << 18, 1 << 16)
    for start in range(1, window - 1000, 700):  # every byte up to the window, many times over
        s.receive(start, bytes(1000), False)
    assert s.reorder_buffered <= window
    out = s.receive(0, b"\x01", False)
    assert sum(len(d) for _, d in out) == s.recv_offset


# -------------------------------------------------------------------- joins
def _handshake_until_client_done(p: TCPLSPair) -> None:
    """Client completes its handshake; its Finished stays held on connection 0."""
    p._to_server(0, p.client.data_to_send(0))  # the ClientHello goes through
    p.hold.add(0)
    p.pump()
    assert p.client.mode == "tcpls" and p.server.mode is None
    assert p.client.available_tokens() == [1]  # tcpls_token from EncryptedExtensions


def test_join_before_the_session_is_established_waits_for_the_keys():
    c, s = tcpls_configs()
    p = TCPLSPair(c, s)
    _handshake_until_client_done(p)
    cid = p.client.add_connection(p.now)
    p.pump()  # the join reaches the server before the client's Finished
    assert p.server.connection_state(cid) is ConnState.JOINING
    assert not of_type(p.server_events, ev.ConnectionJoined)
    p.release(0)
    p.pump()
    assert p.server.mode == "tcpls"
    assert p.server.connection_state(cid) is ConnState.ACTIVE
    assert p.client.connection_state(cid) is ConnState.ACTIVE
    sid = p.client.open_stream()
    p.client.migrate_stream(sid, cid)
    p.client.send_stream_data(sid, b"over the early join", fin=True)
    p.pump()
    assert received(p.server_events, sid) == b"over the early join"


def test_early_join_flooding_before_the_keys_is_refused_alone():
    c, s = tcpls_configs()
    p = TCPLSPair(c, s)
    _handshake_until_client_done(p)
    cid = p.client.add_connection(p.now)
    p.pump()
    junk = (b"\x17\x03\x03\x40\x00" + bytes(1 << 14)) * 3
    p.server.receive_data(cid, junk, p.now)  # no exception: only this connection is refused
    assert p.server.connection_state(cid) is ConnState.FAILED
    assert p.server.data_to_send(cid)[:1] == b"\x15"  # cleartext alert on that connection
    assert p.server._conns[cid].reader.buffered() == 0
    p.release(0)
    p.pump()
    assert p.server.mode == "tcpls" and not p.server.terminated


def test_join_with_garbage_instead_of_a_client_hello():
    p = _pair()
    from tcpls.errors import ProtocolError

    with pytest.raises(ProtocolError):
        p.server.accept_join(b"\x16\x03\x01\x00\x05" + b"\x02\x00\x00\x01\x00", p.now)
    assert not p.server.terminated and p.server.connection_ids() == [0]


# ---------------------------------------------------------------- KeyUpdate
def _updates(events, conn_id=None):
    return [(e.conn_id, e.direction) for e in of_type(events, ev.KeyUpdated) if conn_id is None or e.conn_id == conn_id]


def test_key_update_both_directions_data_continues():
    from tcpls.tls.key_schedule import next_traffic_secret, traffic_key_iv

    p = _pair()
    sid = p.client.open_stream()
    first, second = os.urandom(50_000), os.urandom(50_000)
    p.client.send_stream_data(sid, first)
    p.pump()
    p.server.send_stream_data(sid, first[:1000])
    p.pump()
    enc = p.client._conns[0].encryptor
    old_tx = enc.secret
    p.client.key_update(0, request_peer_update=True)
    # our sending key moved to the next generation with the draft's nonce mask, sequence 0
    assert enc.secret == next_traffic_secret(enc.suite.hash_name, old_tx) and enc.seq == 0
    assert enc._iv == int.from_bytes(traffic_key_iv(enc.suite, enc.secret)[1], "big")  # Connection ID 0
    p.client.send_stream_data(sid, second, fin=True)
    p.server.send_stream_data(sid, b"after", fin=True)
    p.pump()
    assert _updates(p.client_events) == [(0, "send"), (0, "receive")]
    assert _updates(p.server_events) == [(0, "receive"), (0, "send")]
    assert received(p.server_events, sid) == first + second
    assert received(p.client_events, sid) == first[:1000] + b"after"
    assert p.client._conns[0].tx_gen == p.server._conns[0].rx_gen == 1
    assert p.server._conns[0].tx_gen == p.client._conns[0].rx_gen == 1
    # ACKs still name the right records: everything acknowledged, stream forgotten
    assert p.client.stream_ids() == p.server.stream_ids() == []
    assert all(not c.sent for c in p.client._conns.values())


def test_key_update_is_per_connection_with_its_own_nonces():
    p = _pair()
    c1 = p.join()
    p.client.key_update(c1, request_peer_update=False)
    enc0, enc1 = p.client._conns[0].encryptor, p.client._conns[c1].encryptor
    assert p.client._conns[0].tx_gen == 0 and p.client._conns[c1].tx_gen == 1
    assert enc0.secret != enc1.secret
    assert (enc1._iv >> 64) != 0  # Connection ID mask kept after the update
    sid = p.client.open_stream()
    blob = os.urandom(300_000)
    p.client.send_stream_data(sid, blob, fin=True)
    p.pump()
    assert received(p.server_events, sid) == blob
    assert _updates(p.server_events) == [(c1, "receive")]
    assert p.server._conns[0].rx_gen == 0 and p.server._conns[c1].rx_gen == 1
    # a connection joined later starts from the session's first keys
    c2 = p.join()
    assert p.client._conns[c2].tx_gen == 0 and p.server.connection_state(c2) is ConnState.ACTIVE


def test_automatic_key_update_before_the_record_limit():
    limit = 40
    p = _pair(client_kw={"key_update_records": limit}, server_kw={"key_update_records": limit})
    c1 = p.join()
    sid = p.client.open_stream()
    back = p.server.open_stream()
    blob = os.urandom(2_000_000)  # about 125 full records per direction
    p.client.send_stream_data(sid, blob, fin=True)
    p.server.send_stream_data(back, blob[:1_000_000], fin=True)
    p.pump()
    assert received(p.server_events, sid) == blob
    assert received(p.client_events, back) == blob[:1_000_000]
    sends = [cid for cid, d in _updates(p.client_events) if d == "send"]
    assert set(sends) == {0, c1} and len(sends) >= 2
    assert sorted(cid for cid, d in _updates(p.server_events) if d == "receive") == sorted(sends)
    # no key (generation) protected more than the limit, plus one KeyUpdate per other connection
    for s in (p.client, p.server):
        assert max(s._key_use.values()) <= limit + 1
        assert len(s._key_use) >= 2


def test_default_key_limit_is_below_the_aes_gcm_bound():
    p = _pair()
    suite = p.client._conns[0].encryptor.suite
    assert p.client._key_limit(suite) <= 2**24.5
    assert p.client._key_limit(suite) == 1 << 23


def test_failover_right_after_a_key_update_loses_nothing():
    p = _pair()
    c1 = p.join()
    sid = p.client.open_stream()
    p.client.migrate_stream(sid, c1)
    p.client.key_update(c1)
    blob = os.urandom(120_000)
    p.dropped.add(c1)  # the key update and the data on c1 never arrive
    p.client.send_stream_data(sid, blob, fin=True)
    p.pump()
    p.client.fail_connection(c1, p.now)
    p.pump()
    assert received(p.server_events, sid) == blob
    assert ev.StreamEnded(sid) in p.server_events


def test_key_update_with_bad_request_value_is_illegal_parameter():
    from tcpls.tls.enums import ContentType

    p = _pair()
    p.client._seal(p.client._conns[0], ContentType.HANDSHAKE, b"\x18\x00\x00\x01\x02")
    _assert_alerted(p, "illegal_parameter")


def test_key_update_not_alone_in_its_record_is_an_alert():
    from tcpls.tls.enums import ContentType

    p = _pair()
    p.client._seal(p.client._conns[0], ContentType.HANDSHAKE, b"\x18\x00\x00\x01\x00" + b"\x18\x00\x00\x01\x00")
    _assert_alerted(p, "unexpected_message")


def test_truncated_key_update_is_decode_error():
    from tcpls.tls.enums import ContentType

    p = _pair()
    p.client._seal(p.client._conns[0], ContentType.HANDSHAKE, b"\x18\x00\x00\x02\x00")
    _assert_alerted(p, "decode_error")


def test_key_update_api_checks():
    p = _pair()
    with pytest.raises(UsageError):
        p.client.key_update(7)
    p.client.close()
    with pytest.raises(ConnectionClosedError):
        p.client.key_update(0)


def test_simultaneous_key_updates_from_both_sides():
    p = _pair()
    sid = p.client.open_stream()
    p.client.send_stream_data(sid, b"a" * 40_000)
    p.pump()
    p.client.key_update(0)
    p.server.key_update(0)
    p.client.send_stream_data(sid, b"b" * 40_000, fin=True)
    p.server.send_stream_data(sid, b"c" * 40_000, fin=True)
    p.pump()
    assert received(p.server_events, sid) == b"a" * 40_000 + b"b" * 40_000
    assert received(p.client_events, sid) == b"c" * 40_000
    c0, s0 = p.client._conns[0], p.server._conns[0]
    assert c0.tx_gen == s0.rx_gen == 2 and s0.tx_gen == c0.rx_gen == 2


# ------------------------------------------------------ listener token registry
def test_token_registry_forgets_failed_closed_and_dropped_sessions():
    import gc

    c, s = tcpls_configs()
    registry = s.token_registry
    # a session that fails: its tokens leave the registry
    p = TCPLSPair(c, s)
    p.pump()
    assert len(registry) == 4
    _forge(p, [F.NewTokenFrame(9, bytes(32))])  # clients must not send New Token
    with pytest.raises(LocalProtocolError):
        p.pump()
    assert len(registry) == 0
    # a session closed both ways: the same
    p = TCPLSPair(c, s)
    p.pump()
    assert len(registry) == 4
    p.client.close()
    p.pump()
    p.server.close()
    p.pump()
    assert len(registry) == 0
    # sessions the listener dropped (e.g. a client that vanished mid-session)
    for _ in range(20):
        p = TCPLSPair(c, s)
        p.pump()
    del p
    gc.collect()
    assert len(registry) == 0


def test_join_after_the_session_failed_is_refused():
    p = _pair()
    token = p.client._tokens[1]
    _forge(p, [F.NewTokenFrame(9, bytes(32))])
    with pytest.raises(LocalProtocolError):
        p.pump()
    from dataclasses import replace

    from tcpls.tcpls.migration import TCPLSHook
    from tcpls.tcpls.session import route_connection
    from tcpls.tls.connection import TLSConnection

    t = TLSConnection(replace(p.client.config.tls, extension_hooks=[TCPLSHook(True, join_token=token)]), server_side=False)
    t.start_handshake(0)
    assert route_connection(p.server_cfg, t.data_to_send()) == (None, False)  # a new handshake refuses it
