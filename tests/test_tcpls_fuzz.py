"""Random input against the TCPLS frame parser and a session's receive path.

The property: whatever the bytes, the engine either accepts them or raises
an exception from :mod:`tcpls.errors` with the fatal alert queued for the
peer; it never raises anything else, and its buffers stay within the
configured bounds.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tcpls.errors import DecodeError, LocalProtocolError, RemoteAlert, TLSError
from tcpls.tcpls import frames as F
from tcpls.tcpls.codepoints import TOKEN_LENGTH
from tcpls.tcpls.session import route_connection
from tcpls.tls.enums import ContentType

from tcplspair import TCPLSPair, tcpls_configs

MAX_STREAMS = 6
WINDOW = 1 << 14
# TCPLS_FUZZ_EXAMPLES=5000 for a longer run
FUZZ = settings(max_examples=int(os.environ.get("TCPLS_FUZZ_EXAMPLES", "150")), deadline=None, suppress_health_check=[HealthCheck.too_slow])

u8 = st.integers(0, 255)
u32 = st.integers(0, (1 << 32) - 1)
u64 = st.integers(0, (1 << 64) - 1)
small_sid = st.integers(0, 2 * MAX_STREAMS + 4)
small_offset = st.one_of(st.integers(0, 3 * WINDOW), u64.map(lambda v: v >> 1))


def _stream_frame(sid, offset, data, fin):
    return F.StreamFrame(sid, min(offset, (1 << 64) - 1 - len(data) - 1), data, fin)


frame_st = st.one_of(
    st.builds(F.Padding, st.integers(1, 20)),
    st.builds(F.Ping),
    st.builds(_stream_frame, small_sid, small_offset, st.binary(max_size=300), st.booleans()),
    st.builds(F.AckFrame, st.one_of(st.integers(0, 3), u32), st.one_of(st.integers(0, 50), u64)),
    st.builds(F.NewTokenFrame, u8, st.binary(min_size=TOKEN_LENGTH, max_size=TOKEN_LENGTH)),
    st.builds(F.ConnectionResetFrame, st.one_of(st.integers(0, 3), u32)),
    st.builds(F.NewAddressFrame, u8, st.just(4), st.binary(min_size=4, max_size=4), st.integers(0, 65535)),
    st.builds(F.RemoveAddressFrame, u8),
    st.builds(F.StreamChangeFrame, small_sid, u64),
    st.builds(F.StreamResetFrame, small_sid, small_offset, u32),
)

# a record's content: well-formed frames, random bytes, or frames with random bytes spliced in
content_st = st.one_of(
    st.lists(frame_st, max_size=6).map(F.encode_frames),
    st.binary(max_size=400),
    st.tuples(st.lists(frame_st, max_size=4).map(F.encode_frames), st.binary(max_size=40), st.integers(0, 400)).map(
        lambda t: t[0][: t[2]] + t[1] + t[0][t[2] :]
    ),
)
# handshake records that look like KeyUpdate (type 24): good, bad value, bad length, trailing bytes
key_update_st = st.tuples(st.integers(0, 3), st.integers(0, 6), st.binary(max_size=3)).map(
    lambda t: b"\x18" + t[1].to_bytes(3, "big") + bytes((t[0],)) + t[2]
)
record_st = st.one_of(
    st.tuples(
        st.sampled_from([ContentType.APPLICATION_DATA] * 6 + [ContentType.ALERT, ContentType.HANDSHAKE, 20, 99]),
        content_st,
    ),
    st.tuples(st.just(ContentType.HANDSHAKE), key_update_st),
)


@FUZZ
@given(st.binary(max_size=600))
def test_frame_parser_only_raises_decode_error(data):
    try:
        frames = F.parse_frames(data)
    except DecodeError as exc:
        assert exc.alert_name == "decode_error"
        return
    # whatever parses re-encodes to the same bytes (Padding runs merge)
    assert F.encode_frames(list(reversed(frames))) == data


@FUZZ
@given(st.lists(frame_st, max_size=8))
def test_frame_round_trip(frames):
    parsed = F.parse_frames(F.encode_frames(frames))
    assert F.encode_frames(list(reversed(parsed))) == F.encode_frames(frames)


def _pair() -> TCPLSPair:
    kw = {"max_streams": MAX_STREAMS, "stream_window": WINDOW}
    c, s = tcpls_configs(dict(kw), dict(kw))
    p = TCPLSPair(c, s)
    p.pump()
    assert p.server.mode == "tcpls"
    return p


def _check_bounds(p: TCPLSPair) -> None:
    server = p.server
    peer_open = [s for s in server._streams.values() if s.stream_id % 2 == 0 and not s.recv_finished]
    assert len(peer_open) <= MAX_STREAMS
    assert len(server._streams) <= MAX_STREAMS + 1  # + what the server app opened: nothing here
    assert all(s.reorder_buffered <= WINDOW for s in server._streams.values())
    assert len(server._closed) <= MAX_STREAMS
    assert len(server._control) < 100 and len(server._conns) <= 256


def _deliver(p: TCPLSPair, wire: bytes, cuts: list[int]) -> None:
    """Feed ``wire`` to the server in pieces; check the error contract."""
    bounds = sorted({0, len(wire), *(c % (len(wire) + 1) for c in cuts)})
    try:
        for a, b in zip(bounds, bounds[1:]):
            p.server.receive_data(0, wire[a:b], p.now)
            _check_bounds(p)
    except LocalProtocolError as exc:
        # the alert is queued, protected, for the client
        assert p.server.terminated
        alert_wire = p.server.data_to_send(0)
        assert alert_wire
        try:
            p.client.receive_data(0, alert_wire, p.now)
        except RemoteAlert as remote:
            assert remote.alert == exc.alert
        else:
            raise AssertionError("the client did not see the alert")
    except RemoteAlert:
        assert p.server.terminated  # the fuzz input was itself a fatal alert
    except TLSError as exc:  # pragma: no cover - any other library error is a contract breach
        raise AssertionError(f"unexpected {type(exc).__name__}: {exc}") from exc
    _check_bounds(p)


@FUZZ
@given(st.lists(record_st, min_size=1, max_size=8), st.lists(st.integers(0, 1 << 16), max_size=4))
def test_session_receive_path_protected_records(records, cuts):
    p = _pair()
    conn = p.client._conns[0]
    for ctype, content in records:
        if not content and ctype != ContentType.APPLICATION_DATA:
            # an empty record of another type (senders refuse to build one):
            # inner plaintext = ctype || 0x00, which reads as ctype, no content
            ctype, content = 0, bytes((ctype,))
        p.client._seal(conn, ctype, content, auto_update=False)
    _deliver(p, p.client.data_to_send(0), cuts)


@FUZZ
@given(st.binary(max_size=2000), st.lists(st.integers(0, 1 << 16), max_size=4))
def test_session_receive_path_raw_bytes(data, cuts):
    p = _pair()
    before = p.server._conns[0].reader.buffered()
    _deliver(p, data, cuts)
    if not p.server.terminated:
        # only an incomplete record may wait, never more than one record's worth
        assert p.server._conns[0].reader.buffered() - before <= 5 + (1 << 14) + 256


@FUZZ
@given(st.binary(max_size=800))
def test_routing_a_new_connection_only_raises_library_errors(data):
    c, s = tcpls_configs()
    try:
        route_connection(s, b"\x16\x03\x01" + len(data).to_bytes(2, "big") + data)
        route_connection(s, data)
    except TLSError:
        pass
