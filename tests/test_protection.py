"""Record protection (RFC 9846 §5.2–5.5) and record framing (§5.1)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpls.errors import (
    BadRecordMac,
    InternalError,
    ProtocolVersionError,
    RecordOverflow,
    UnexpectedMessage,
)
from tcpls.tls.enums import AlertDescription, CipherSuite, ContentType
from tcpls.tls.key_schedule import next_traffic_secret, traffic_key_iv
from tcpls.tls.protection import SEQ_LIMIT, RecordDecryptor, RecordEncryptor
from tcpls.tls.record import MAX_CIPHERTEXT, MAX_PLAINTEXT, RecordReader, encode_plaintext_records
from tcpls.tls.suites import SUITES, suite_info


class Out(list):
    """The list of buffers ``seal`` appends to, viewable as the bytes on the wire."""

    def __bytes__(self) -> bytes:
        return b"".join(self)


try:
    from vectors.rfc8448 import CLIENT_AUTH, HELLO_RETRY, RESUMED_0RTT, SIMPLE_1RTT
except ImportError:  # tests/ is a package
    from tests.vectors.rfc8448 import CLIENT_AUTH, HELLO_RETRY, RESUMED_0RTT, SIMPLE_1RTT

AES128 = suite_info(CipherSuite.TLS_AES_128_GCM_SHA256)
HS, AD, AL = ContentType.HANDSHAKE, ContentType.APPLICATION_DATA, ContentType.ALERT
ALL_SUITES = pytest.mark.parametrize("suite", list(SUITES.values()), ids=lambda s: s.suite.name)


def v(section: dict[str, str], name: str) -> bytes:
    return bytes.fromhex(section[name])


def pair(suite=AES128, secret: bytes | None = None) -> tuple[RecordEncryptor, RecordDecryptor]:
    secret = secret if secret is not None else os.urandom(suite.hash_len)
    return RecordEncryptor(suite, secret), RecordDecryptor(suite, secret)


def split_records(wire: bytes | bytearray) -> list[tuple[int, bytes, bytes]]:
    reader = RecordReader()
    reader.feed(bytes(wire))
    out = []
    while (rec := reader.next_record()) is not None:
        out.append((rec[0], bytes(rec[1]), bytes(rec[2])))
    assert reader.buffered() == 0
    return out


# ------------------------------------------------------------- RFC 8448 records
# (trace, record, sending traffic secret, sequence number, inner content type)
RECORDS = [
    (SIMPLE_1RTT, "server_hs_record2", "server_handshake_traffic_secret", 0, HS),
    (SIMPLE_1RTT, "client_hs_record2", "client_handshake_traffic_secret", 0, HS),
    (SIMPLE_1RTT, "server_hs_record3", "server_application_traffic_secret", 0, HS),  # NewSessionTicket
    (SIMPLE_1RTT, "client_app_record1", "client_application_traffic_secret", 0, AD),
    (SIMPLE_1RTT, "server_app_record1", "server_application_traffic_secret", 1, AD),
    (SIMPLE_1RTT, "client_alert_record1", "client_application_traffic_secret", 1, AL),
    (SIMPLE_1RTT, "server_alert_record1", "server_application_traffic_secret", 2, AL),
    (RESUMED_0RTT, "client_app_record1", "client_early_traffic_secret", 0, AD),  # 0-RTT data
    (RESUMED_0RTT, "server_hs_record2", "server_handshake_traffic_secret", 0, HS),
    (RESUMED_0RTT, "client_hs_record2", "client_early_traffic_secret", 1, HS),  # EndOfEarlyData
    (RESUMED_0RTT, "client_hs_record3", "client_handshake_traffic_secret", 0, HS),
    (RESUMED_0RTT, "client_app_record2", "client_application_traffic_secret", 0, AD),
    (RESUMED_0RTT, "server_app_record1", "server_application_traffic_secret", 0, AD),
    (RESUMED_0RTT, "client_alert_record1", "client_application_traffic_secret", 1, AL),
    (RESUMED_0RTT, "server_alert_record1", "server_application_traffic_secret", 1, AL),
    (HELLO_RETRY, "server_hs_record3", "server_handshake_traffic_secret", 0, HS),
    (HELLO_RETRY, "client_hs_record3", "client_handshake_traffic_secret", 0, HS),
    (HELLO_RETRY, "client_alert_record1", "client_application_traffic_secret", 0, AL),
    (HELLO_RETRY, "server_alert_record1", "server_application_traffic_secret", 0, AL),
    (CLIENT_AUTH, "server_hs_record2", "server_handshake_traffic_secret", 0, HS),
    (CLIENT_AUTH, "client_hs_record2", "client_handshake_traffic_secret", 0, HS),
    (CLIENT_AUTH, "client_alert_record1", "client_application_traffic_secret", 0, AL),
    (CLIENT_AUTH, "server_alert_record1", "server_application_traffic_secret", 0, AL),
]


@pytest.mark.parametrize("section,record,secret,seq,ctype", RECORDS, ids=[f"{r[1]}@{r[3]}" for r in RECORDS])
def test_rfc8448_records(section, record, secret, seq, ctype) -> None:
    payload = v(section, f"{record}_payload")
    wire = v(section, f"{record}_wire")
    # open
    [(outer, header, body)] = split_records(wire)
    assert outer == ContentType.APPLICATION_DATA and header[:3] == b"\x17\x03\x03"
    dec = RecordDecryptor(AES128, v(section, secret))
    dec.seq = seq
    inner, content = dec.open(header, memoryview(body))
    assert (inner, bytes(content)) == (ctype, payload)
    assert dec.seq == seq + 1
    # seal byte-for-byte
    enc = RecordEncryptor(AES128, v(section, secret))
    enc.seq = seq
    out = Out()
    enc.seal(ctype, payload, out)
    assert bytes(out) == wire
    assert enc.seq == seq + 1


def test_rfc8448_plaintext_records() -> None:
    s = SIMPLE_1RTT
    out = Out()
    encode_plaintext_records(HS, v(s, "client_hello"), out, legacy_version=0x0301)
    assert bytes(out) == v(s, "client_hs_record1_wire")
    out = Out()
    encode_plaintext_records(HS, v(s, "server_hello"), out)
    assert bytes(out) == v(s, "server_hs_record1_wire")
    [(t, h, body)] = split_records(v(s, "client_hs_record1_wire"))
    assert (t, body) == (HS, v(s, "client_hello"))


def test_rfc8448_server_flight_stream() -> None:
    """The server's whole first flight fed as one TCP segment, split into records."""
    s = SIMPLE_1RTT
    stream = v(s, "server_hs_record1_wire") + v(s, "server_hs_record2_wire")
    recs = split_records(stream)
    assert [r[0] for r in recs] == [HS, AD]
    dec = RecordDecryptor(AES128, v(s, "server_handshake_traffic_secret"))
    ctype, content = dec.open(recs[1][1], recs[1][2])
    assert ctype == HS
    assert bytes(content) == b"".join(
        v(s, n) for n in ("encrypted_extensions", "server_certificate", "server_certificate_verify", "server_finished")
    )


# ------------------------------------------------------------- round trips


@ALL_SUITES
@pytest.mark.parametrize("size", [0, 1, 100, MAX_PLAINTEXT - 1, MAX_PLAINTEXT, MAX_PLAINTEXT + 1, 3 * MAX_PLAINTEXT + 7])
def test_round_trip(suite, size: int) -> None:
    enc, dec = pair(suite)
    data = os.urandom(size)
    out = Out()
    enc.seal(AD, data, out)
    recs = split_records(out)
    assert len(recs) == max(1, -(-size // MAX_PLAINTEXT))
    got = bytearray()
    for outer, header, body in recs:
        assert outer == AD and header[1:3] == b"\x03\x03"
        assert int.from_bytes(header[3:5], "big") == len(body) <= MAX_CIPHERTEXT
        ctype, content = dec.open(header, body)
        assert ctype == AD
        got += content
    assert got == data
    assert enc.seq == dec.seq == len(recs)
    assert enc.records_protected == dec.records_protected == len(recs)


@pytest.mark.parametrize("data_type", [bytes, bytearray, memoryview])
def test_seal_accepts_buffers(data_type) -> None:
    enc, dec = pair()
    for n in (10, 40000):
        raw = os.urandom(n)
        out = Out()
        enc.seal(HS, data_type(raw), out)
        assert b"".join(bytes(dec.open(h, b)[1]) for _, h, b in split_records(out)) == raw


@ALL_SUITES
def test_padding_is_stripped(suite) -> None:
    enc, dec = pair(suite)
    out = Out()
    enc.seal(HS, b"hello", out, padding=100)
    [(_, header, body)] = split_records(out)
    assert len(body) == 5 + 1 + 100 + suite.tag_len
    ctype, content = dec.open(header, body)
    assert (ctype, bytes(content)) == (HS, b"hello")
    # Padding is clipped to the record size limit.
    out = Out()
    enc.seal(AD, bytes(MAX_PLAINTEXT - 10), out, padding=1000)
    [(_, header, body)] = split_records(out)
    assert len(body) == MAX_PLAINTEXT + 1 + suite.tag_len
    ctype, content = dec.open(header, body)
    assert (ctype, bytes(content)) == (AD, bytes(MAX_PLAINTEXT - 10))
    # Padding applies to every record of a long write; an empty padded record.
    out = Out()
    enc.seal(AD, b"", out, padding=5)
    [(_, header, body)] = split_records(out)
    ctype, content = dec.open(header, body)
    assert (ctype, bytes(content)) == (AD, b"")


def test_content_ending_in_zero_bytes() -> None:
    enc, dec = pair()
    out = Out()
    enc.seal(AD, b"abc\x00\x00", out, padding=3)
    [(_, h, b)] = split_records(out)
    ctype, content = dec.open(h, b)
    assert (ctype, bytes(content)) == (AD, b"abc\x00\x00")


def test_empty_handshake_record_refused() -> None:
    enc, _ = pair()
    with pytest.raises(ValueError):
        enc.seal(HS, b"", Out())
    with pytest.raises(ValueError):
        enc.seal(AD, b"x", Out(), padding=-1)


def test_max_plaintext_record_size_limit() -> None:
    enc, dec = pair()
    enc.max_plaintext = 1000 - 1  # record_size_limit 1000 counts the content type
    out = Out()
    enc.seal(AD, os.urandom(2500), out)
    recs = split_records(out)
    assert [len(b) for _, _, b in recs] == [1000 + 16, 1000 + 16, 2500 - 2 * 999 + 1 + 16]
    dec.max_plaintext = 999
    for _, h, b in recs:
        dec.open(h, b)
    # A full-size record exceeds the advertised limit: record_overflow.
    big_enc, big_dec = pair()
    big_dec.max_plaintext = 999
    out = Out()
    big_enc.seal(AD, bytes(1000), out)
    [(_, h, b)] = split_records(out)
    with pytest.raises(RecordOverflow):
        big_dec.open(h, b)
    with pytest.raises(ValueError):
        enc.max_plaintext = MAX_PLAINTEXT + 1
    with pytest.raises(ValueError):
        enc.max_plaintext = 0


# ------------------------------------------------------------- failures


def test_tampering_is_bad_record_mac() -> None:
    enc, _ = pair(secret=b"k" * 32)
    out = Out()
    enc.seal(AD, b"attack at dawn", out)
    [(_, header, body)] = split_records(out)
    for i in range(len(body)):
        dec = RecordDecryptor(AES128, b"k" * 32)
        bad = bytearray(body)
        bad[i] ^= 0x01
        with pytest.raises(BadRecordMac) as e:
            dec.open(header, bytes(bad))
        assert e.value.alert == AlertDescription.bad_record_mac
        assert dec.seq == 0
    # Header is authenticated (AAD).
    dec = RecordDecryptor(AES128, b"k" * 32)
    with pytest.raises(BadRecordMac):
        dec.open(b"\x17\x03\x01" + header[3:], body)
    # Wrong sequence number (replayed / reordered record).
    dec = RecordDecryptor(AES128, b"k" * 32)
    dec.seq = 1
    with pytest.raises(BadRecordMac):
        dec.open(header, body)
    # Too short to hold a tag.
    with pytest.raises(BadRecordMac):
        RecordDecryptor(AES128, b"k" * 32).open(b"\x17\x03\x03\x00\x05", b"12345")


def _raw_record(suite, secret: bytes, seq: int, inner: bytes) -> tuple[bytes, bytes]:
    key, iv = traffic_key_iv(suite, secret)
    header = b"\x17\x03\x03" + (len(inner) + suite.tag_len).to_bytes(2, "big")
    nonce = (int.from_bytes(iv, "big") ^ seq).to_bytes(12, "big")
    return header, suite.new_aead(key).encrypt(nonce, inner, header)


@ALL_SUITES
def test_zero_content_type_is_unexpected_message(suite) -> None:
    secret = os.urandom(suite.hash_len)
    for inner in (b"", b"\x00", bytes(50)):
        header, body = _raw_record(suite, secret, 0, inner)
        with pytest.raises(UnexpectedMessage):
            RecordDecryptor(suite, secret).open(header, body)


def test_overflow() -> None:
    secret = os.urandom(32)
    # Ciphertext longer than 2^14 + 256 (rejected before decryption).
    with pytest.raises(RecordOverflow) as e:
        RecordDecryptor(AES128, secret).open(b"\x17\x03\x03\x41\x01", bytes(MAX_CIPHERTEXT + 1))
    assert e.value.alert == AlertDescription.record_overflow
    # Valid AEAD but TLSInnerPlaintext of 2^14 + 2 bytes (> 2^14 + 1).
    header, body = _raw_record(AES128, secret, 0, bytes(MAX_PLAINTEXT + 1) + b"\x17")
    assert len(body) <= MAX_CIPHERTEXT
    with pytest.raises(RecordOverflow):
        RecordDecryptor(AES128, secret).open(header, body)
    # Exactly 2^14 + 1 is fine, even if most of it is padding.
    header, body = _raw_record(AES128, secret, 0, b"x\x17" + bytes(MAX_PLAINTEXT - 1))
    assert RecordDecryptor(AES128, secret).open(header, body)[0] == AD


# ------------------------------------------------------------- sequence numbers, key update


def test_nonce_uses_sequence_number() -> None:
    secret = os.urandom(32)
    enc, dec = pair(secret=secret)
    out = Out()
    for i in range(5):
        enc.seal(AD, b"same", out)
    recs = split_records(out)
    assert len({b for _, _, b in recs}) == 5  # different nonces
    for i, (_, h, b) in enumerate(recs):
        assert dec.seq == i
        dec.open(h, b)
    header, body = _raw_record(AES128, secret, 7, b"x\x17")
    d = RecordDecryptor(AES128, secret)
    d.seq = 7
    assert bytes(d.open(header, body)[1]) == b"x"


def test_sequence_number_exhaustion() -> None:
    enc, dec = pair()
    enc.seq = dec.seq = SEQ_LIMIT - 1
    out = Out()
    enc.seal(AD, b"last", out)
    assert enc.seq == SEQ_LIMIT
    with pytest.raises(InternalError):
        enc.seal(AD, b"one too many", Out())
    [(_, h, b)] = split_records(out)
    assert bytes(dec.open(h, b)[1]) == b"last"
    with pytest.raises(InternalError):
        dec.open(h, b)
    # A multi-record write that would cross the limit is refused as a whole.
    enc2, _ = pair()
    enc2.seq = SEQ_LIMIT - 1
    out = Out()
    with pytest.raises(InternalError):
        enc2.seal(AD, bytes(MAX_PLAINTEXT + 1), out)
    assert not out and enc2.seq == SEQ_LIMIT - 1


@ALL_SUITES
def test_key_update(suite) -> None:
    secret = os.urandom(suite.hash_len)
    enc, dec = pair(suite, secret)
    out = Out()
    enc.seal(AD, b"before", out)
    dec.open(*split_records(out)[0][1:])
    new = next_traffic_secret(suite.hash_name, secret)
    assert new != secret and len(new) == suite.hash_len
    enc.update(new)
    assert (enc.seq, enc.secret, enc.records_protected) == (0, new, 0)
    out = Out()
    enc.seal(AD, b"after", out)
    [(_, h, b)] = split_records(out)
    stale = RecordDecryptor(suite, secret)
    with pytest.raises(BadRecordMac):
        stale.open(h, b)
    dec.update(new)
    assert dec.seq == 0
    assert bytes(dec.open(h, b)[1]) == b"after"


def test_key_update_rfc8448_chain() -> None:
    secret = v(SIMPLE_1RTT, "client_application_traffic_secret")
    enc = RecordEncryptor(AES128, secret)
    enc.update(next_traffic_secret("sha256", secret))
    assert enc.secret == next_traffic_secret("sha256", secret)


def test_key_usage_limit() -> None:
    enc, dec = pair()
    assert AES128.record_limit == int(2**24.5)
    enc.records_protected = AES128.record_limit - 1
    assert not enc.key_usage_exhausted
    enc.seal(AD, b"x", Out())
    assert enc.key_usage_exhausted
    chacha, _ = pair(suite_info(CipherSuite.TLS_CHACHA20_POLY1305_SHA256))
    chacha.records_protected = 2**40
    assert not chacha.key_usage_exhausted


# ------------------------------------------------------------- RecordReader


def _plain(ctype: int, body: bytes, version: bytes = b"\x03\x03") -> bytes:
    return bytes([ctype]) + version + len(body).to_bytes(2, "big") + body


@st.composite
def streams(draw):
    bodies = draw(st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=6))
    types = draw(st.lists(st.sampled_from([HS, AD, AL]), min_size=len(bodies), max_size=len(bodies)))
    wire = b"".join(_plain(t, b) for t, b in zip(types, bodies))
    cuts = sorted(draw(st.lists(st.integers(0, len(wire)), max_size=12)))
    return list(zip(types, bodies)), wire, cuts


@given(streams(), st.sampled_from([bytes, bytearray, memoryview]))
@settings(max_examples=200, deadline=None)
def test_reader_arbitrary_splits(case, chunk_type) -> None:
    records, wire, cuts = case
    reader = RecordReader()
    got = []
    held = []
    prev = 0
    for cut in [*cuts, len(wire)]:
        reader.feed(chunk_type(bytearray(wire[prev:cut])))
        prev = cut
        while (rec := reader.next_record()) is not None:
            held.append(rec)  # views stay valid across later feeds
            got.append((rec[0], bytes(rec[2])))
            assert bytes(rec[1]) == _plain(rec[0], bytes(rec[2]))[:5]
        assert reader.buffered() == prev - sum(5 + len(b) for _, b in got)
    assert got == records
    assert [(r[0], bytes(r[2])) for r in held] == records
    assert reader.buffered() == 0


def test_reader_trickle_and_bulk() -> None:
    bodies = [os.urandom(MAX_CIPHERTEXT) for _ in range(16)]
    wire = b"".join(_plain(AD, b) for b in bodies)
    reader = RecordReader()
    reader.feed(bytes(wire))
    views = []
    while (rec := reader.next_record()) is not None:
        views.append(rec[2])
    assert [bytes(b) for b in views] == bodies
    # zero copy: each body is a view into the fed object
    assert all(b.obj is wire for b in views)
    # byte by byte
    reader = RecordReader()
    one = _plain(HS, b"abcdef")
    for i, byte in enumerate(one):
        assert reader.next_record() is None
        reader.feed(bytes([byte]))
    rec = reader.next_record()
    assert rec is not None and bytes(rec[2]) == b"abcdef"
    assert reader.next_record() is None


def test_reader_overflow_before_body() -> None:
    reader = RecordReader()
    reader.feed(b"\x17\x03\x03" + (MAX_CIPHERTEXT + 1).to_bytes(2, "big"))
    with pytest.raises(RecordOverflow):
        reader.next_record()
    reader = RecordReader()
    reader.feed(b"\x16\x03\x03" + (MAX_PLAINTEXT + 1).to_bytes(2, "big"))
    with pytest.raises(RecordOverflow):
        reader.next_record()
    reader = RecordReader()
    reader.feed(_plain(AD, bytes(MAX_CIPHERTEXT)) + _plain(HS, bytes(MAX_PLAINTEXT)))
    assert reader.next_record() is not None and reader.next_record() is not None


@pytest.mark.parametrize("version", [b"\x03\x00", b"\x03\x01", b"\x03\x03", b"\x03\x04"])
def test_reader_ignores_plaintext_legacy_minor_version(version) -> None:
    """RFC 9846 §5.1: legacy_record_version is ignored on plaintext records."""
    reader = RecordReader()
    reader.feed(b"\x16" + version + b"\x00\x01x")
    assert bytes(reader.next_record()[2]) == b"x"


@pytest.mark.parametrize(
    "record,error",
    [
        (b"\x18\x03\x03\x00\x01x", UnexpectedMessage),  # heartbeat: unknown here
        (b"\x00\x03\x03\x00\x01x", UnexpectedMessage),  # invalid(0)
        (b"\x16\x03\x03\x00\x00", UnexpectedMessage),  # empty handshake
        (b"\x15\x03\x03\x00\x00", UnexpectedMessage),  # empty alert
        (b"\x14\x03\x03\x00\x01\x02", UnexpectedMessage),  # CCS != 0x01
        (b"\x14\x03\x03\x00\x02\x01\x01", UnexpectedMessage),
        (b"\x16\x02\x00\x00\x01x", ProtocolVersionError),  # SSLv2-ish / bad major
        (b"GET / HTTP/1.1\r\n", UnexpectedMessage),
    ],
)
def test_reader_rejects(record: bytes, error) -> None:
    reader = RecordReader()
    reader.feed(record)
    with pytest.raises(error):
        reader.next_record()


def test_reader_accepts_legacy_versions_and_ccs() -> None:
    reader = RecordReader()
    reader.feed(_plain(HS, b"x", b"\x03\x01") + _plain(HS, b"y", b"\x03\x02") + _plain(20, b"\x01"))
    assert [bytes(r[2]) for r in iter(reader.next_record, None)] == [b"x", b"y", b"\x01"]
    # empty application_data is passed on (the AEAD will reject it)
    reader.feed(b"\x17\x03\x03\x00\x00")
    assert reader.next_record()[0] == AD


def test_encode_plaintext_records_fragmentation() -> None:
    out = Out()
    encode_plaintext_records(HS, b"", out)
    assert bytes(out) == b""
    data = os.urandom(2 * MAX_PLAINTEXT + 5)
    encode_plaintext_records(HS, memoryview(data), out)
    recs = split_records(out)
    assert [len(b) for _, _, b in recs] == [MAX_PLAINTEXT, MAX_PLAINTEXT, 5]
    assert b"".join(b for _, _, b in recs) == data
    assert all(h[:3] == b"\x16\x03\x03" for _, h, _ in recs)
