"""Random input against the TCPLS frame parser and a session's receive path.

The property: whatever the bytes, the engine either accepts them or raises
an exception from :mod:`tcpls.errors` with the fatal alert queued for the
peer; it never raises anything else, and its buffers stay within the
configured bounds.
"""

from __future__ import annotations

import os
from typing import Optional

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tcpls.errors import DecodeError, LocalProtocolError, RemoteAlert, TLSError
from tcpls.tcpls import events as ev
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
    st.builds(F.TCPSettingFrame, st.integers(0, 65535), st.just(1), st.one_of(st.integers(0, 3), u32), st.binary(min_size=4, max_size=4)),
    st.builds(F.TCPSettingFrame, st.integers(0, 65535), st.just(2), st.one_of(st.integers(0, 3), u32), st.sampled_from([b"reno", b"x" * 16])),
    st.builds(F.TCPSettingFrame, st.integers(0, 65535), st.integers(3, 255), u32, st.binary(max_size=20)),
    st.builds(F.TCPSettingResultFrame, st.integers(0, 65535), u8, st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)),
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


def _check_bounds(session) -> None:
    peer_parity = 1 if session.is_client else 0
    peer_open = [s for s in session._streams.values() if s.stream_id % 2 == peer_parity and not s.recv_finished]
    assert len(peer_open) <= MAX_STREAMS
    assert len(session._streams) <= MAX_STREAMS  # the application opened none here
    assert all(s.reorder_buffered <= WINDOW for s in session._streams.values())
    assert len(session._closed) <= MAX_STREAMS
    assert len(session._control) < 100 and len(session._conns) <= 256
    assert len(session._tokens) <= 255 and len(session._addresses) <= 256


def _deliver(p: TCPLSPair, wire: bytes, cuts: list[int], to_client: bool = False) -> None:
    """Feed ``wire`` to one side in pieces; check the error contract."""
    rx, tx = (p.client, p.server) if to_client else (p.server, p.client)
    bounds = sorted({0, len(wire), *(c % (len(wire) + 1) for c in cuts)})
    try:
        for a, b in zip(bounds, bounds[1:]):
            rx.receive_data(0, wire[a:b], p.now)
            _check_bounds(rx)
    except LocalProtocolError as exc:
        # the alert is queued, protected, for the peer
        assert rx.terminated
        alert_wire = rx.data_to_send(0)
        assert alert_wire
        try:
            tx.receive_data(0, alert_wire, p.now)
        except RemoteAlert as remote:
            assert remote.alert == exc.alert
        else:
            raise AssertionError("the peer did not see the alert")
    except RemoteAlert:
        assert rx.terminated  # the fuzz input was itself a fatal alert
    except TLSError as exc:  # pragma: no cover - any other library error is a contract breach
        raise AssertionError(f"unexpected {type(exc).__name__}: {exc}") from exc
    _check_bounds(rx)


def _seal_all(session, records) -> bytes:
    conn = session._conns[0]
    for ctype, content in records:
        if not content and ctype != ContentType.APPLICATION_DATA:
            # an empty record of another type (senders refuse to build one):
            # inner plaintext = ctype || 0x00, which reads as ctype, no content
            ctype, content = 0, bytes((ctype,))
        session._seal(conn, ctype, content, auto_update=False)
    return session.data_to_send(0)


@FUZZ
@given(st.lists(record_st, min_size=1, max_size=8), st.lists(st.integers(0, 1 << 16), max_size=4))
def test_session_receive_path_protected_records(records, cuts):
    p = _pair()
    _deliver(p, _seal_all(p.client, records), cuts)


@FUZZ
@given(st.lists(record_st, min_size=1, max_size=8), st.lists(st.integers(0, 1 << 16), max_size=4))
def test_client_receive_path_protected_records(records, cuts):
    p = _pair()
    _deliver(p, _seal_all(p.server, records), cuts, to_client=True)


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


# ------------------------------------------------- random schedules, failover
_send = st.tuples(st.just("send"), st.booleans(), st.integers(0, 7), st.integers(0, 30_000), st.booleans())
_kill = st.tuples(st.just("kill"), st.integers(0, 7))  # a TCP connection dies; what it holds is lost
op_st = st.one_of(
    st.tuples(st.just("open"), st.booleans()),  # client (True) or server opens a stream
    _send,
    _send,
    _send,
    st.tuples(st.just("step"), st.integers(0, 7)),  # move what one connection holds, once
    st.tuples(st.just("pump")),
    st.tuples(st.just("join")),
    _kill,
    _kill,
    st.tuples(st.just("close"), st.integers(0, 7)),  # the client migrates away from a connection
    st.tuples(st.just("migrate"), st.integers(0, 7), st.integers(0, 7)),
    st.tuples(st.just("ku"), st.booleans(), st.integers(0, 7), st.booleans()),
    st.tuples(st.just("reset"), st.booleans(), st.integers(0, 7), st.integers(0, 9)),
    # time passes: with the network delivering (pings, RTTs), or stalled (connections time out)
    st.tuples(st.just("advance"), st.sampled_from([0.5, 1.0, 4.0]), st.booleans()),
)


def _pattern(sid: int, side: str, start: int, n: int) -> bytes:
    seed = (sid * 2 + (side == "c")) % 251
    return bytes((seed + i) % 256 for i in range(start, start + n))


class _Schedule:
    def __init__(self) -> None:
        c, s = tcpls_configs()
        self.p = TCPLSPair(c, s)
        self.p.pump()
        self.p.client.open_stream()  # one stream each way to start with
        self.p.server.open_stream()
        self.written: dict[tuple[int, str], int] = {}  # (sid, "c"/"s") -> bytes written
        self.fin: set[tuple[int, str]] = set()
        self.got: dict[tuple[int, str], bytearray] = {}  # bytes received, by writer
        self.ended: set[tuple[int, str]] = set()
        self.killed: set[int] = set()
        self.failed: set[int] = set()
        self.reset: set[tuple[int, str]] = set()  # directions the writer reset
        self.got_reset: dict[tuple[int, str], int] = {}  # StreamReset seen, by writer: error code
        self.advanced = False

    def collect(self) -> None:
        p = self.p
        p._collect()
        for events, writer in ((p.server_events, "c"), (p.client_events, "s")):
            for e in events:
                if isinstance(e, ev.StreamDataReceived):
                    buf = self.got.setdefault((e.stream_id, writer), bytearray())
                    assert e.offset == len(buf), "delivered out of order, duplicated or with a gap"
                    buf += e.data
                elif isinstance(e, ev.StreamEnded):
                    assert (e.stream_id, writer) not in self.ended
                    self.ended.add((e.stream_id, writer))
                elif isinstance(e, ev.ConnectionFailed):
                    self.failed.add(e.conn_id)
                elif isinstance(e, ev.StreamReset):
                    assert (e.stream_id, writer) not in self.got_reset
                    self.got_reset[(e.stream_id, writer)] = e.error_code
            events.clear()

    def conns(self) -> list[int]:
        return self.p.client.usable_connections()

    def pick(self, i: int) -> Optional[int]:
        cs = self.conns()
        return cs[i % len(cs)] if cs else None

    def step(self, cid: int) -> None:
        p = self.p
        data = p.client.data_to_send(cid)
        if data and cid not in p.dropped:
            p._to_server(cid, data)
        data = p.server.data_to_send(cid)
        if data and cid not in p.dropped:
            p.client.receive_data(cid, data, p.now)
        self.collect()

    def join(self) -> None:
        """Join a connection, moving only that connection's bytes (whatever
        waits on the others stays in flight)."""
        cid = self.p.client.add_connection(self.p.now)
        for _ in range(3):
            self.step(cid)

    def ensure_path(self) -> bool:
        if len(self.conns()) > 1:
            return True
        if not self.p.client.available_tokens():
            return False
        self.join()
        return len(self.conns()) > 1

    def run(self, op) -> None:
        p, kind = self.p, op[0]
        if kind == "open":
            side = p.client if op[1] else p.server
            if side.can_open_stream():
                side.open_stream()
        elif kind == "send":
            side, name = (p.client, "c") if op[1] else (p.server, "s")
            ids = side.stream_ids()
            if not ids:
                return
            sid = ids[op[2] % len(ids)]
            if (sid, name) in self.fin:
                return
            start = self.written.get((sid, name), 0)
            side.send_stream_data(sid, _pattern(sid, name, start, op[3]), fin=op[4])
            self.written[(sid, name)] = start + op[3]
            if op[4]:
                self.fin.add((sid, name))
        elif kind == "step":
            cid = self.pick(op[1])
            if cid is not None:
                self.step(cid)
        elif kind == "pump":
            p.pump()
            self.collect()
        elif kind == "join":
            if p.client.available_tokens():
                self.join()
        elif kind in ("kill", "close"):
            if not self.ensure_path():
                return
            cid = self.pick(op[1])
            assert cid is not None
            if kind == "kill":
                p.client.data_to_send(cid), p.server.data_to_send(cid)  # lost in flight
                p.dropped.add(cid)
                p.client.fail_connection(cid, p.now, "killed")
                p.server.fail_connection(cid, p.now, "killed")
            else:
                p.client.close_connection(cid, p.now)
                data = p.client.data_to_send(cid)
                if data:
                    p._to_server(cid, data)
                p.dropped.add(cid)
                p.server.receive_eof(cid, p.now)
            self.killed.add(cid)
            self.collect()
        elif kind == "migrate":
            ids = p.client.stream_ids()
            cid = self.pick(op[2])
            if ids and cid is not None:
                p.client.migrate_stream(ids[op[1] % len(ids)], cid)
        elif kind == "ku":
            side = p.client if op[1] else p.server
            cid = self.pick(op[2])
            if cid is not None and cid in side.usable_connections():
                side.key_update(cid, op[3])
        elif kind == "reset":
            side, name = (p.client, "c") if op[1] else (p.server, "s")
            ids = side.stream_ids()
            if ids:
                sid = ids[op[2] % len(ids)]
                if (sid, name) not in self.fin:
                    side.reset_stream(sid, op[3])
                    self.fin.add((sid, name))
                    self.reset.add((sid, name))
                    self.written.setdefault((sid, name), 0)
                    self.codes = getattr(self, "codes", {})
                    self.codes[(sid, name)] = op[3]
        elif kind == "advance":
            self.advanced = True
            if not op[2]:
                p.pump()  # the network works; only the clock matters
                self.collect()
            p.advance(op[1])
            self.collect()
            if not self.conns() and p.client.available_tokens():
                self.join()

    def stranded(self) -> bool:
        """The client has no connection left and no token to join another:
        the session cannot go on (every path stalled past the timeout
        before replacement tokens got through)."""
        return not self.conns() and not self.p.client.available_tokens()

    def settle(self) -> None:
        """Deliver everything; when a side lost its last connection (a
        timeout), let the timers find out and rejoin, as an adapter would."""
        p = self.p
        for _ in range(10):
            if self.stranded():
                return
            p.pump()
            self.collect()
            busy = any(c.sent for s in (p.client, p.server) for c in s._conns.values() if c.usable)
            if not busy and p.server.usable_connections():
                return
            if not self.conns() and p.client.available_tokens():
                self.join()
                continue
            self.advanced = True
            p.advance(p.client.config.dead_timeout + 0.5)
            self.collect()

    def finish(self) -> None:
        p = self.p
        for _ in range(2):  # FIN ours on every stream, then on those the peer opened meanwhile
            self.settle()
            if self.stranded():
                return
            for side, name in ((p.client, "c"), (p.server, "s")):
                for sid in side.stream_ids():
                    if (sid, name) not in self.fin:
                        side.send_stream_data(sid, b"", fin=True)
                        self.fin.add((sid, name))
                        self.written.setdefault((sid, name), 0)
        self.settle()


@settings(FUZZ, max_examples=2 * FUZZ.max_examples)
@given(st.lists(op_st, max_size=30))
def test_random_schedules_lose_and_duplicate_nothing(ops):
    sch = _Schedule()
    for op in ops:
        sch.run(op)
    sch.finish()
    p = sch.p
    assert not p.client.terminated and not p.server.terminated
    for key, n in sch.written.items():
        sid, name = key
        got = bytes(sch.got.get(key, b""))
        if sch.stranded():  # only a stalled network strands a session: what came is right
            assert sch.advanced and got == _pattern(sid, name, 0, len(got)) and len(got) <= n
            continue
        if key in sch.reset:  # what arrived before the reset is a prefix, then the reset
            assert got == _pattern(sid, name, 0, len(got)) and len(got) <= n
            assert sch.got_reset.get(key) == sch.codes[key] and key not in sch.ended
            continue
        assert got == _pattern(sid, name, 0, n), f"stream {sid} from {name}"
        assert key in sch.ended and key not in sch.got_reset
    if sch.stranded():
        return
    # every stream finished both ways is forgotten, every record acknowledged
    assert p.client.stream_ids() == [] and p.server.stream_ids() == []
    for s in (p.client, p.server):
        for cid in s.usable_connections():
            assert not s._conns[cid].sent, f"records left unacknowledged on connection {cid}"
    # no connection was declared dead that the schedule did not kill or close
    # (with time advanced, a connection whose bytes waited undelivered may time out)
    assert sch.advanced or sch.failed <= sch.killed
