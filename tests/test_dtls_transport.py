"""DTLS 1.3 handshake transport (RFC 9147 §5.2, §5.5, §5.8, §7): header and
ACK codecs, reassembly, flights, ACKs, retransmission timers, and two
endpoints over a simulated lossy network driven by a fake clock."""

from __future__ import annotations

import heapq
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpls.dtls.handshake import (
    FlightState,
    FragmentStatus,
    HandshakeFragment,
    HandshakeTransport,
    Reassembler,
    decode_ack,
    encode_ack,
    fragment_message,
    parse_fragments,
    split_tls_message,
    tls_message,
)
from tcpls.dtls.record import CT_ACK, CT_HANDSHAKE, RecordLayer, RecordNumber
from tcpls.errors import DecodeError, IllegalParameter, LocalProtocolError, UnexpectedMessage
from tcpls.tls.enums import CipherSuite, HandshakeType as HT
from tcpls.tls.suites import suite_info

SUITE = suite_info(CipherSuite.TLS_AES_128_GCM_SHA256)


# ---------------------------------------------------------------- codecs
@given(
    msg_type=st.integers(0, 255),
    body=st.binary(max_size=3000),
    seq=st.integers(0, 2**16 - 1),
    max_fragment=st.integers(1, 700),
)
def test_fragments_round_trip_and_cover_the_message(msg_type, body, seq, max_fragment) -> None:
    frags = fragment_message(msg_type, body, seq, max_fragment)
    wire = b"".join(f.encode() for f in frags)
    parsed = parse_fragments(wire)
    assert parsed == frags
    assert b"".join(f.body for f in parsed) == body
    assert all(f.length == len(body) and f.message_seq == seq and f.fragment_length <= max_fragment for f in parsed)
    assert [f.fragment_offset for f in parsed] == list(range(0, max(len(body), 1), max_fragment))[: len(parsed)]


def test_handshake_header_layout() -> None:
    frag = HandshakeFragment(HT.certificate, 0x010203, 0x0405, 0x000010, b"\xaa\xbb")
    assert frag.encode() == bytes.fromhex("0b010203" "0405" "000010" "000002") + b"\xaa\xbb"


def test_transcript_uses_the_tls_header_without_dtls_fields() -> None:
    # §5.2: the transcript covers TLS-style messages, without message_seq,
    # fragment_offset and fragment_length.
    body = b"\x01" * 70000
    frags = fragment_message(HT.certificate, body, 0, 1000)
    r = Reassembler()
    for f in reversed(frags):
        r.add(f, 2)
    msg = r.next_message()
    assert msg is not None and msg.message_seq == 0
    assert msg.tls_bytes() == b"\x0b" + (70000).to_bytes(3, "big") + body == tls_message(HT.certificate, body)
    assert split_tls_message(msg.tls_bytes()) == (HT.certificate, body)
    with pytest.raises(DecodeError):
        split_tls_message(msg.tls_bytes() + b"x")


@settings(max_examples=300)
@given(st.binary(max_size=64))
def test_malformed_handshake_payloads_raise_only_protocol_errors(data: bytes) -> None:
    try:
        frags = parse_fragments(data)
    except LocalProtocolError:
        return
    assert b"".join(f.encode() for f in frags) == data


def test_fragment_parse_errors() -> None:
    with pytest.raises(UnexpectedMessage):
        parse_fragments(b"")
    with pytest.raises(DecodeError):  # offset + length beyond the message
        parse_fragments(bytes.fromhex("0b000004" "0000" "000003" "000002") + b"ab")
    with pytest.raises(DecodeError):  # truncated body
        parse_fragments(bytes.fromhex("0b000004" "0000" "000000" "000004") + b"ab")


@given(st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)), max_size=50))
def test_ack_round_trip(pairs) -> None:
    numbers = [RecordNumber(e, s) for e, s in pairs]
    data = encode_ack(numbers)
    assert decode_ack(data) == sorted(set(numbers))


def test_ack_errors() -> None:
    assert encode_ack([]) == b"\x00\x00"
    assert encode_ack([RecordNumber(2, 1), RecordNumber(0, 5)]) == bytes.fromhex(
        "0020" "0000000000000000" "0000000000000005" "0000000000000002" "0000000000000001"
    )
    with pytest.raises(DecodeError):
        decode_ack(b"\x00\x08" + bytes(8))
    with pytest.raises(DecodeError):
        decode_ack(encode_ack([RecordNumber(0, 0)]) + b"x")
    # §7.2: an ACK naming an epoch above its own is illegal_parameter.
    with pytest.raises(IllegalParameter):
        decode_ack(encode_ack([RecordNumber(3, 0)]), received_epoch=2)
    assert decode_ack(encode_ack([RecordNumber(2, 0)]), received_epoch=2) == [RecordNumber(2, 0)]


# ---------------------------------------------------------------- reassembly
@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32), n_messages=st.integers(1, 6))
def test_reassembly_with_random_order_duplicates_and_overlaps(seed: int, n_messages: int) -> None:
    rng = random.Random(seed)
    messages = [(rng.choice([1, 2, 8, 11, 15, 20]), rng.randbytes(rng.randint(0, 2500))) for _ in range(n_messages)]
    pieces = []
    for seq, (t, body) in enumerate(messages):
        for _ in range(rng.randint(1, 3)):  # several transmissions, different fragment sizes
            pieces += fragment_message(t, body, seq, rng.randint(1, 900))
        if body:  # arbitrary overlapping ranges
            for _ in range(rng.randint(0, 3)):
                a = rng.randrange(len(body))
                b = rng.randint(a, len(body))
                pieces.append(HandshakeFragment(t, len(body), seq, a, body[a:b]))
    rng.shuffle(pieces)
    r = Reassembler(max_future_messages=8)
    out = []
    for p in pieces:
        status = r.add(p, 2)
        assert status is not FragmentStatus.DROPPED
        while (m := r.next_message()) is not None:
            out.append(m)
    assert [(m.msg_type, m.body) for m in out] == messages
    assert [m.message_seq for m in out] == list(range(n_messages))
    assert not r.has_partial()
    # Everything again: all old now.
    assert {r.add(p, 2) for p in pieces} == {FragmentStatus.OLD}


def test_reassembly_conflicts_and_limits() -> None:
    r = Reassembler(max_message_size=1000, max_future_messages=2, max_buffered_bytes=1500)
    assert r.add(HandshakeFragment(11, 10, 0, 0, b"abcd"), 2) is FragmentStatus.ACCEPTED
    assert r.add(HandshakeFragment(11, 10, 0, 2, b"cd"), 2) is FragmentStatus.ACCEPTED  # duplicate bytes
    assert r.add(HandshakeFragment(11, 10, 0, 6, b"gh"), 2) is FragmentStatus.OUT_OF_ORDER  # gap before
    with pytest.raises(IllegalParameter):  # §5.5: bytes changed on retransmission
        r.add(HandshakeFragment(11, 10, 0, 3, b"XY"), 2)
    with pytest.raises(IllegalParameter):
        r.add(HandshakeFragment(15, 10, 0, 0, b"a"), 2)
    with pytest.raises(IllegalParameter):
        r.add(HandshakeFragment(11, 11, 0, 0, b"a"), 2)
    with pytest.raises(IllegalParameter):
        r.add(HandshakeFragment(11, 10, 0, 0, b"a"), 3)
    with pytest.raises(DecodeError):
        r.add(HandshakeFragment(11, 1001, 0, 0, b"a"), 2)
    # Future messages: bounded in number and bytes; dropped fragments are not buffered.
    assert r.add(HandshakeFragment(11, 900, 1, 0, b"a"), 2) is FragmentStatus.OUT_OF_ORDER
    assert r.add(HandshakeFragment(11, 900, 2, 0, b"a"), 2) is FragmentStatus.DROPPED  # over the byte budget
    assert r.add(HandshakeFragment(11, 10, 3, 0, b"a"), 2) is FragmentStatus.DROPPED  # too far ahead
    assert r.buffered_bytes == 910
    assert r.add(HandshakeFragment(11, 10, 0, 4, b"ef"), 2) is FragmentStatus.ACCEPTED
    assert r.add(HandshakeFragment(11, 10, 0, 8, b"ij"), 2) is FragmentStatus.ACCEPTED
    m = r.next_message()
    assert m is not None and m.body == b"abcdefghij" and r.next_message() is None
    assert r.add(HandshakeFragment(11, 10, 0, 0, b"zz"), 2) is FragmentStatus.OLD  # not even compared


# ---------------------------------------------------------------- transport helpers
def _secret(epoch: int) -> bytes:
    return bytes((epoch,)) * 32


def _install(layer: RecordLayer, epoch: int, *, read: bool = True, write: bool = True) -> None:
    if read:
        layer.install_read_epoch(epoch, SUITE, _secret(epoch))
    if write:
        layer.install_write_epoch(epoch, SUITE, _secret(epoch))


def _sniff(datagrams: list[bytes], epochs=(2, 3)) -> list[tuple[int, list[HandshakeFragment] | bytes]]:
    """Decode records of both sides' traffic (same secrets in both directions here)."""
    layer = RecordLayer(replay_window=0)
    for e in epochs:
        layer.install_read_epoch(e, SUITE, _secret(e))
    out: list[tuple[int, list[HandshakeFragment] | bytes]] = []
    for d in datagrams:
        for rec in layer.receive_datagram(d)[0]:
            out.append((rec.content_type, parse_fragments(rec.data) if rec.content_type == CT_HANDSHAKE else rec.data))
    return out


def test_flight_respects_datagram_size_and_burst_limit() -> None:
    layer = RecordLayer()
    _install(layer, 2)
    t = HandshakeTransport(layer, max_datagram_size=500, max_records_per_transmission=None)
    body = bytes(range(256)) * 20
    t.send_message(HT.encrypted_extensions, b"ee")
    t.send_message(HT.certificate, body)
    t.end_flight(0.0)
    datagrams = t.datagrams_to_send()
    assert all(len(d) <= 500 for d in datagrams)
    frags = [f for ct, fs in _sniff(datagrams) for f in fs]  # type: ignore[union-attr]
    assert b"".join(f.body for f in frags if f.message_seq == 1) == body
    # Fragments of one epoch share a record when they fit (§5.5): EE and the
    # first certificate bytes are one record; every datagram is one record.
    first = _sniff(datagrams[:1])
    assert len(first) == 1
    assert [(f.message_seq, f.fragment_offset) for f in first[0][1]] == [(0, 0), (1, 0)]  # type: ignore[union-attr]
    assert all(len(_sniff([d])) == 1 for d in datagrams)
    limited = HandshakeTransport(layer, max_datagram_size=500, max_records_per_transmission=10)
    limited.send_message(HT.certificate, body)
    limited.end_flight(0.0)
    assert len(_sniff(limited.datagrams_to_send())) == 10


def test_retransmission_backoff_doubles_up_to_the_maximum() -> None:
    layer = RecordLayer()
    t = HandshakeTransport(layer, initial_timeout=1.0, max_timeout=60.0)
    t.send_message(HT.client_hello, b"hello")
    t.end_flight(0.0, responds=False)
    assert t.state is FlightState.WAITING
    sent_at = [0.0] if t.datagrams_to_send() else []
    now = 0.0
    while len(sent_at) < 10:
        now = t.get_timer()  # type: ignore[assignment]
        t.handle_timer(now)
        if t.datagrams_to_send():
            sent_at.append(now)
    gaps = [b - a for a, b in zip(sent_at, sent_at[1:])]
    assert gaps == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]


def test_max_retransmissions_gives_up() -> None:
    t = HandshakeTransport(RecordLayer(), max_retransmissions=2)
    t.send_message(HT.client_hello, b"hello")
    t.end_flight(0.0)
    n = len(t.datagrams_to_send())
    while (when := t.get_timer()) is not None:
        t.handle_timer(when)
        n += len(t.datagrams_to_send())
    assert n == 3 and t.gave_up and t.state is FlightState.FINISHED


def test_stateless_hello_retry_request_is_never_retransmitted() -> None:
    t = HandshakeTransport(RecordLayer())
    t.send_message(HT.server_hello, b"hrr")
    t.end_flight(0.0, retransmit=False)
    assert len(t.datagrams_to_send()) == 1
    assert t.get_timer() is None and t.state is FlightState.FINISHED


def _pair(**kw):
    a_layer, b_layer = RecordLayer(), RecordLayer()
    for layer in (a_layer, b_layer):
        _install(layer, 2)
    a, b = HandshakeTransport(a_layer, **kw), HandshakeTransport(b_layer, **kw)
    a.acks_enabled = b.acks_enabled = True
    return a, b


def test_partial_retransmission_after_an_ack() -> None:
    a, b = _pair(max_datagram_size=400, max_records_per_transmission=None)
    body = bytes(range(256)) * 8  # about 6 datagrams
    a.send_message(HT.certificate, body)
    a.end_flight(0.0)
    datagrams = a.datagrams_to_send()
    assert len(datagrams) >= 5
    lost = 2
    for d in datagrams[:lost]:
        b.receive_datagram(d, 0.1)
    assert b.datagrams_to_send() == []  # in order: only the delayed ACK timer runs
    b.receive_datagram(datagrams[lost + 1], 0.1)
    # The fragment after the gap was out of order: an ACK goes out at once (§7.1).
    acks = b.datagrams_to_send()
    assert len(acks) == 1
    ((ct, data),) = _sniff(acks)
    assert ct == CT_ACK and len(decode_ack(data)) == lost + 1  # type: ignore[arg-type]
    for d in datagrams[lost + 2 :]:
        b.receive_datagram(d, 0.1)
    assert b.datagrams_to_send() == []  # later gaps wait for the delayed ACK
    a.receive_datagram(acks[0], 0.2)
    # Only the lost record is resent: the ones after the newest acknowledged
    # record are presumably still in flight.
    resent = a.datagrams_to_send()
    frags = [f for _, fs in _sniff(resent) for f in fs]  # type: ignore[union-attr]
    lost_frags = [f for _, fs in _sniff([datagrams[lost]]) for f in fs]  # type: ignore[union-attr]
    assert [(f.fragment_offset, f.end) for f in frags] == [(f.fragment_offset, f.end) for f in lost_frags]
    b.receive_datagram(resent[0], 0.3)
    msg = b.next_message()
    assert msg is not None and msg.body == body
    # The delayed ACK (a quarter of the timer after the records following
    # the gap) covers everything; then a's flight is done.
    assert b.get_timer() == pytest.approx(0.1 + 0.25)
    b.handle_timer(0.35)
    for d in b.datagrams_to_send():
        a.receive_datagram(d, 0.6)
    assert a.state is FlightState.FINISHED and a.get_timer() is None
    assert a.timeout == 1.0  # retransmitted data: the RTT sample is not used (§5.8.2)


def test_partial_ack_of_a_flight_sharing_records_resends_only_what_was_lost() -> None:
    # Three messages of one epoch: they share records (§5.5), one record per
    # datagram here; the middle datagram is lost.
    a, b = _pair(max_datagram_size=400, max_records_per_transmission=None)
    messages = [(HT.encrypted_extensions, b"ee" * 10), (HT.certificate, bytes(range(256)) * 3), (HT.finished, b"f" * 32)]
    for t, body in messages:
        a.send_message(t, body)
    a.end_flight(0.0)
    datagrams = a.datagrams_to_send()
    assert len(datagrams) == 3 and all(len(_sniff([d])) == 1 for d in datagrams)
    first = [f.message_seq for _, fs in _sniff(datagrams[:1]) for f in fs]  # type: ignore[union-attr]
    last = [f.message_seq for _, fs in _sniff(datagrams[2:]) for f in fs]  # type: ignore[union-attr]
    assert first == [0, 1] and last == [1, 2]
    b.receive_datagram(datagrams[0], 0.1)
    b.receive_datagram(datagrams[2], 0.1)  # out of order: ACK at once (§7.1)
    assert b.next_message() is not None and b.next_message() is None  # EE only
    acks = b.datagrams_to_send()
    a.receive_datagram(acks[0], 0.2)
    resent = a.datagrams_to_send()
    got = [(f.message_seq, f.fragment_offset, f.end) for _, fs in _sniff(resent) for f in fs]  # type: ignore[union-attr]
    lost = [(f.message_seq, f.fragment_offset, f.end) for _, fs in _sniff(datagrams[1:2]) for f in fs]  # type: ignore[union-attr]
    assert got == lost
    for d in resent:
        b.receive_datagram(d, 0.3)
    out = []
    while (m := b.next_message()) is not None:
        out.append((m.msg_type, m.body))
    assert out == messages[1:]


def test_messages_sharing_a_record_are_acknowledged_once() -> None:
    # Two post-handshake messages in one record (e.g. two NewSessionTickets):
    # the state machine asks for an ACK after each; one ACK covers the record.
    a, b = _pair()
    for t in (a, b):
        _install(t.records, 3)
    a.send_message(HT.new_session_ticket, b"t1" * 20, epoch=3)
    a.send_message(HT.new_session_ticket, b"t2" * 20, epoch=3)
    a.end_flight(0.0, expect_response=False, responds=False)
    (datagram,) = a.datagrams_to_send()
    b.receive_datagram(datagram, 0.1)
    while b.next_message() is not None:
        b.send_ack(0.1)
    acks = b.datagrams_to_send()
    assert len(acks) == 1
    ((ct, data),) = _sniff(acks)
    assert ct == CT_ACK and len(decode_ack(data)) == 1  # type: ignore[arg-type]
    # That ACK is lost: a's retransmission is acknowledged again.
    now = a.get_timer()
    assert now is not None
    a.handle_timer(now)
    (again,) = a.datagrams_to_send()
    b.receive_datagram(again, now)
    assert b.next_message() is None
    timer = b.get_timer()  # at most one immediate ACK per ACK delay (§7.1)
    if timer is not None:
        b.handle_timer(timer)
    (ack,) = b.datagrams_to_send()
    a.receive_datagram(ack, now + 0.5)
    assert a.state is FlightState.FINISHED


def test_whole_message_after_buffered_fragments_is_checked_against_them() -> None:
    a, b = _pair()
    body = bytes(range(40))

    def record(frag: HandshakeFragment) -> bytes:
        return a.records.seal(CT_HANDSHAKE, frag.encode(), 2)[1]

    b.receive_datagram(record(HandshakeFragment(HT.certificate, 40, 0, 0, body[:10])), 0.0)
    assert b.next_message() is None
    # The whole message again, with bytes that differ from the buffered ones (§5.5).
    with pytest.raises(IllegalParameter):
        b.receive_datagram(record(HandshakeFragment(HT.certificate, 40, 0, 0, b"x" + body[1:])), 0.0)
    a, b = _pair()
    b.receive_datagram(record(HandshakeFragment(HT.certificate, 40, 0, 0, body[:10])), 0.0)
    b.receive_datagram(record(HandshakeFragment(HT.certificate, 40, 0, 0, body)), 0.0)
    msg = b.next_message()
    assert msg is not None and (msg.msg_type, msg.body, msg.message_seq) == (HT.certificate, body, 0)
    assert msg.tls_bytes() == tls_message(HT.certificate, body)
    # A duplicate whole copy is not delivered twice; the next message is.
    b.receive_datagram(record(HandshakeFragment(HT.certificate, 40, 0, 0, body)), 0.0)
    b.receive_datagram(record(HandshakeFragment(HT.finished, 3, 1, 0, b"fin")), 0.0)
    msg = b.next_message()
    assert msg is not None and (msg.msg_type, msg.body, msg.tls_bytes()) == (HT.finished, b"fin", tls_message(HT.finished, b"fin"))
    assert b.next_message() is None


def test_acks_wait_until_dtls13_is_negotiated() -> None:
    a, b = _pair()
    b.acks_enabled = False
    a.send_message(HT.client_hello, b"x" * 10, epoch=0)
    a.end_flight(0.0)
    b.receive_datagram(a.datagrams_to_send()[0], 0.1)
    assert b.next_message() is not None and b.get_timer() is not None
    b.handle_timer(10.0)
    assert b.datagrams_to_send() == []


def test_implicit_ack_and_rtt_measurement() -> None:
    a, b = _pair()
    a.send_message(HT.client_hello, b"ch", epoch=0)
    a.end_flight(0.0, responds=False)
    b.receive_datagram(a.datagrams_to_send()[0], 0.1)
    assert b.next_message().body == b"ch"  # type: ignore[union-attr]
    b.send_message(HT.server_hello, b"sh", epoch=0)
    b.end_flight(0.1)
    assert b.get_timer() == pytest.approx(1.1)  # the pending ACK was cancelled by the response
    a.receive_datagram(b.datagrams_to_send()[0], 0.2)
    # The response acknowledged the ClientHello flight: timer = 1.5 RTT.
    assert a.state is FlightState.FINISHED and a.timeout == pytest.approx(0.3)


def test_duplicate_of_the_peer_flight_triggers_our_retransmission() -> None:
    a, b = _pair()
    a.send_message(HT.client_hello, b"ch", epoch=0)
    a.end_flight(0.0, responds=False)
    ch = a.datagrams_to_send()[0]
    b.receive_datagram(ch, 0.1)
    b.next_message()
    b.send_message(HT.server_hello, b"sh", epoch=0)
    b.end_flight(0.1)
    first = b.datagrams_to_send()
    b.receive_datagram(ch, 0.5)  # the client retransmitted: our flight was lost (§5.8.1)
    again = b.datagrams_to_send()
    assert len(again) == len(first) and b.get_timer() == pytest.approx(1.5)


# ---------------------------------------------------------------- lossy network simulation
class _Net:
    def __init__(self, rng: random.Random, loss: float, dup: float, delay: float, jitter: float) -> None:
        self.rng, self.loss, self.dup, self.delay, self.jitter = rng, loss, dup, delay, jitter
        self.queue: list[tuple[float, int, str, bytes]] = []
        self.n = 0
        self.sent = 0

    def send(self, now: float, dest: str, datagram: bytes) -> None:
        self.sent += 1
        copies = 2 if self.rng.random() < self.dup else 1
        for _ in range(copies):
            if self.rng.random() < self.loss:
                continue
            self.n += 1
            when = now + self.delay + self.rng.random() * self.jitter  # jitter reorders
            heapq.heappush(self.queue, (when, self.n, dest, datagram))


class _Endpoint:
    """A toy handshake (the TLS 1.3 flight shapes of §5.8) on top of the transport."""

    def __init__(self, name: str, rng: random.Random, is_client: bool, **kw) -> None:
        self.name = name
        self.is_client = is_client
        self.layer = RecordLayer()
        self.t = HandshakeTransport(self.layer, **kw)
        self.received: list[tuple[int, int, bytes]] = []
        self.sent: list[tuple[int, int, bytes]] = []
        self.rng = rng
        self.cert_size = 5000 if not is_client else 3000

    def send(self, msg_type: int, body: bytes, epoch: int | None = None) -> None:
        seq = self.t.send_message(msg_type, body, epoch=epoch)
        self.sent.append((seq, msg_type, body))

    def start(self, now: float) -> None:
        self.send(HT.client_hello, self.rng.randbytes(300))
        self.t.end_flight(now, responds=False)

    def process(self, now: float) -> None:
        while (m := self.t.next_message()) is not None:
            self.received.append((m.message_seq, m.msg_type, m.body))
            if self.is_client:
                self._client(m.msg_type, now)
            else:
                self._server(m.msg_type, now)

    def _server(self, msg_type: int, now: float) -> None:
        if msg_type == HT.client_hello:
            self.t.acks_enabled = True
            _install(self.layer, 2)
            self.send(HT.server_hello, self.rng.randbytes(90), 0)
            for t, n in ((HT.encrypted_extensions, 40), (HT.certificate, self.cert_size), (HT.certificate_verify, 80)):
                self.send(t, self.rng.randbytes(n), 2)
            self.send(HT.finished, self.rng.randbytes(32), 2)
            self.t.end_flight(now)
            _install(self.layer, 3)
        elif msg_type == HT.finished:
            self.t.send_ack(now)  # the client's last flight needs an explicit ACK (§7.1)
            self.send(HT.new_session_ticket, self.rng.randbytes(200), 3)
            self.t.end_flight(now, expect_response=False, responds=False)

    def _client(self, msg_type: int, now: float) -> None:
        if msg_type == HT.server_hello:
            self.t.acks_enabled = True
            _install(self.layer, 2)
        elif msg_type == HT.finished:
            for t, n in ((HT.certificate, self.cert_size), (HT.certificate_verify, 80), (HT.finished, 32)):
                self.send(t, self.rng.randbytes(n), 2)
            self.t.end_flight(now, expect_response=False)
            _install(self.layer, 3)
        elif msg_type == HT.new_session_ticket:
            self.t.send_ack(now)


def _simulate(seed: int, loss: float = 0.2, dup: float = 0.1, jitter: float = 0.08, **kw):
    rng = random.Random(seed)
    net = _Net(rng, loss, dup, 0.02, jitter)
    client = _Endpoint("client", random.Random(seed + 1), True, **kw)
    server = _Endpoint("server", random.Random(seed + 2), False, **kw)
    peers = {"client": client, "server": server}
    other = {"client": "server", "server": "client"}
    retransmit_times: dict[str, list[float]] = {"client": [], "server": []}
    now = 0.0
    client.start(now)
    for _ in range(200000):
        for name, ep in peers.items():
            for d in ep.t.datagrams_to_send():
                net.send(now, other[name], d)
        done = (
            len(client.received) == 6
            and len(server.received) == 4
            and client.t.state is FlightState.FINISHED
            and server.t.state is FlightState.FINISHED
        )
        if done:
            break
        candidates = [q[0] for q in net.queue[:1]] + [t for ep in peers.values() if (t := ep.t.get_timer()) is not None]
        assert candidates, "deadlock: nothing in flight and no timer"
        now = max(now, min(candidates))
        assert now < 3600, "did not complete within an hour of simulated time"
        while net.queue and net.queue[0][0] <= now:
            _, _, dest, d = heapq.heappop(net.queue)
            peers[dest].t.receive_datagram(d, now)
            peers[dest].process(now)
        for name, ep in peers.items():
            timer = ep.t.get_timer()
            if timer is not None and timer <= now:
                before = ep.t.timeout
                ep.t.handle_timer(now)
                if ep.t.timeout != before:
                    retransmit_times[name].append(now)
                ep.process(now)
    else:  # pragma: no cover
        pytest.fail("simulation did not finish")
    return client, server, now, net


@pytest.mark.parametrize("seed", range(40))
def test_handshake_flights_complete_over_a_lossy_network(seed: int) -> None:
    client, server, now, net = _simulate(seed)
    # Every message arrived exactly once, in order, intact.
    assert client.received == server.sent
    assert server.received == client.sent
    assert not client.t.gave_up and not server.t.gave_up
    assert client.t.timeout <= 60.0 and server.t.timeout <= 60.0
    assert not client.t.reassembler.has_partial() and not server.t.reassembler.has_partial()


def test_lossless_network_needs_no_retransmission() -> None:
    client, server, now, net = _simulate(7, loss=0.0, dup=0.0, jitter=0.0, max_records_per_transmission=None)
    assert client.received == server.sent and server.received == client.sent
    # ClientHello, server flight, client flight, server ACK (+ NST), client ACK.
    assert now < 0.2
    # The EncryptedExtensions record shares the ServerHello's datagram: the
    # transport pauses after the ServerHello so that the client installs the
    # handshake keys before that record is opened. Nothing is dropped.
    assert not client.t.drops and not server.t.drops
    assert client.t.timeout < 1.0 and server.t.timeout < 1.0  # RTT-based after clean flights


def test_lost_final_ack_is_answered_by_retransmission_and_reack() -> None:
    """The server's ACK of the client's last flight is lost: the client
    retransmits, the server (FINISHED for that flight) acknowledges again."""
    a, b = _pair()
    for layer in (a.records, b.records):
        _install(layer, 3)
    a.send_message(HT.finished, b"f" * 32, epoch=2)
    a.end_flight(0.0, expect_response=False)
    b.receive_datagram(a.datagrams_to_send()[0], 0.05)
    b.next_message()
    b.send_ack(0.05)
    lost_ack = b.datagrams_to_send()
    assert len(lost_ack) == 1
    a.handle_timer(a.get_timer())  # type: ignore[arg-type]
    b.receive_datagram(a.datagrams_to_send()[0], 1.05)
    reack = b.datagrams_to_send()
    assert len(reack) == 1 and _sniff(reack)[0][0] == CT_ACK
    a.receive_datagram(reack[0], 1.1)
    assert a.state is FlightState.FINISHED and a.get_timer() is None
