"""Handshake message and extension codec tests (tcpls.tls.messages / extensions).

* byte-exact decode → encode round trips of the RFC 8448 trace messages, with
  their fields checked against the trace;
* malformed input: short, trailing, out-of-range vectors → decode_error;
  duplicates / misplaced pre_shared_key / bad KeyUpdate → illegal_parameter;
* hypothesis: random valid messages round trip, random bytes only ever raise
  LocalProtocolError, HandshakeReader is insensitive to record boundaries.
"""

from __future__ import annotations

import hashlib
import importlib.util
import pathlib
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tcpls.errors import DecodeError, IllegalParameter, LocalProtocolError, UnexpectedMessage
from tcpls.tls import extensions as ext
from tcpls.tls.enums import (
    HELLO_RETRY_REQUEST_RANDOM,
    CipherSuite,
    ExtensionType,
    HandshakeType,
    NamedGroup,
    SignatureScheme,
)
from tcpls.tls.messages import (
    Certificate,
    CertificateEntry,
    CertificateRequest,
    CertificateVerify,
    ClientHello,
    CompressedCertificate,
    EncryptedExtensions,
    EndOfEarlyData,
    Finished,
    HandshakeReader,
    KeyUpdate,
    NewSessionTicket,
    ServerHello,
    decode_handshake,
    encode_handshake,
    encode_handshake_body,
    get_extension,
)

_spec = importlib.util.spec_from_file_location(
    "rfc8448_messages", pathlib.Path(__file__).parent / "vectors" / "rfc8448_messages.py"
)
assert _spec is not None and _spec.loader is not None
V = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(V)

VECTORS: dict[str, bytes] = {k: bytes.fromhex(getattr(V, k)) for k in dir(V) if k.isupper()}

ET = ExtensionType


def decode(raw: bytes, hash_len: int | None = 32) -> Any:
    """Decode a full message (header included), checking the header length."""
    assert int.from_bytes(raw[1:4], "big") == len(raw) - 4
    return decode_handshake(raw[0], memoryview(raw)[4:], hash_len=hash_len)


def ext_of(msg: Any, t: int) -> bytes:
    data = get_extension(msg.extensions, t)
    assert data is not None, f"extension {t} missing"
    return data


# ===========================================================================
# RFC 8448 vectors
# ===========================================================================
@pytest.mark.parametrize("name", sorted(VECTORS))
def test_rfc8448_round_trip(name: str) -> None:
    raw = VECTORS[name]
    msg = decode(raw)
    assert encode_handshake(msg) == raw
    msg_type, body = encode_handshake_body(msg)
    assert msg_type == raw[0] and body == raw[4:]
    # Every extension we understand decodes and re-encodes byte for byte.
    for t, data in getattr(msg, "extensions", []):
        _check_known_extension(type(msg).__name__, msg, t, data)


def _check_known_extension(where: str, msg: Any, t: int, data: bytes) -> None:
    hrr = isinstance(msg, ServerHello) and msg.is_hello_retry_request
    pairs: dict[int, tuple[Any, Any]]
    if where == "ClientHello":
        pairs = {
            ET.supported_versions: (ext.decode_supported_versions_ch, ext.encode_supported_versions_ch),
            ET.key_share: (ext.decode_key_share_ch, ext.encode_key_share_ch),
            ET.pre_shared_key: (ext.decode_pre_shared_key_ch, ext.encode_pre_shared_key_ch),
            ET.server_name: (ext.decode_server_name, ext.encode_server_name),
            ET.early_data: (ext.decode_empty, ext.encode_empty),
        }
    elif where == "ServerHello":
        pairs = {
            ET.supported_versions: (ext.decode_supported_versions_sh, ext.encode_supported_versions_sh),
            ET.key_share: (ext.decode_key_share_hrr, ext.encode_key_share_hrr)
            if hrr
            else (ext.decode_key_share_sh, ext.encode_key_share_sh),
            ET.pre_shared_key: (ext.decode_pre_shared_key_sh, ext.encode_pre_shared_key_sh),
            ET.cookie: (ext.decode_cookie, ext.encode_cookie),
        }
    elif where == "NewSessionTicket":
        pairs = {ET.early_data: (ext.decode_early_data_nst, ext.encode_early_data_nst)}
    else:
        pairs = {ET.server_name: (ext.decode_empty, ext.encode_empty), ET.early_data: (ext.decode_empty, ext.encode_empty)}
    pairs.update(
        {
            ET.supported_groups: (ext.decode_supported_groups, ext.encode_supported_groups),
            ET.signature_algorithms: (ext.decode_signature_algorithms, ext.encode_signature_algorithms),
            ET.psk_key_exchange_modes: (ext.decode_psk_key_exchange_modes, ext.encode_psk_key_exchange_modes),
            ET.record_size_limit: (ext.decode_record_size_limit, ext.encode_record_size_limit),
        }
    )
    if t in pairs:
        dec, enc = pairs[t]
        assert enc(dec(data)) == data


def test_rfc8448_s3_client_hello_fields() -> None:
    ch = decode(VECTORS["S3_CLIENT_HELLO"])
    assert isinstance(ch, ClientHello)
    assert ch.legacy_version == 0x0303
    assert ch.random == bytes.fromhex("6660261ff947cea49cce6cfad687f457cf1b14531ba14131a0e8f309a1d0b9c4")
    assert ch.legacy_session_id == b""
    assert ch.cipher_suites == [
        CipherSuite.TLS_AES_128_GCM_SHA256,
        CipherSuite.TLS_CHACHA20_POLY1305_SHA256,
        CipherSuite.TLS_AES_256_GCM_SHA384,
    ]
    assert ch.legacy_compression_methods == b"\x00"
    assert [t for t, _ in ch.extensions] == [0, 0xFF01, 10, 35, 51, 43, 13, 45, 28]
    assert ext.decode_server_name(ext_of(ch, ET.server_name)) == "server"
    assert ext.decode_supported_versions_ch(ext_of(ch, ET.supported_versions)) == [0x0304]
    assert ext.decode_key_share_ch(ext_of(ch, ET.key_share)) == [
        (NamedGroup.x25519, bytes.fromhex("4cfdfcd178b784bf328cae793b136f2aedce005ff183d7bb1495207236647037"))
    ]
    assert ext.decode_supported_groups(ext_of(ch, ET.supported_groups)) == [
        0x1D, 0x17, 0x18, 0x19, 0x100, 0x101, 0x102, 0x103, 0x104
    ]
    sigs = ext.decode_signature_algorithms(ext_of(ch, ET.signature_algorithms))
    assert sigs[:3] == [SignatureScheme.ecdsa_secp256r1_sha256, SignatureScheme.ecdsa_secp384r1_sha384, 0x0603]
    assert len(sigs) == 15
    assert ext.decode_psk_key_exchange_modes(ext_of(ch, ET.psk_key_exchange_modes)) == [1]
    assert ext.decode_record_size_limit(ext_of(ch, ET.record_size_limit)) == 0x4001
    assert ext_of(ch, ET.session_ticket) == b""
    assert ext_of(ch, ET.renegotiation_info) == b"\x00"


def test_rfc8448_s3_server_flight_fields() -> None:
    sh = decode(VECTORS["S3_SERVER_HELLO"])
    assert isinstance(sh, ServerHello) and not sh.is_hello_retry_request
    assert sh.cipher_suite == CipherSuite.TLS_AES_128_GCM_SHA256
    assert sh.legacy_compression_method == 0 and sh.legacy_session_id_echo == b""
    assert ext.decode_supported_versions_sh(ext_of(sh, ET.supported_versions)) == 0x0304
    group, key = ext.decode_key_share_sh(ext_of(sh, ET.key_share))
    assert group == NamedGroup.x25519
    assert key == bytes.fromhex("c7bb6bdfc26350b929a08a41a76ddac210b096868d960c4845987dc3a7fa650a")

    ee = decode(VECTORS["S3_ENCRYPTED_EXTENSIONS"])
    assert isinstance(ee, EncryptedExtensions)
    assert [t for t, _ in ee.extensions] == [10, 28, 0]
    ext.decode_empty(ext_of(ee, ET.server_name))

    cert = decode(VECTORS["S3_CERTIFICATE"])
    assert isinstance(cert, Certificate)
    assert cert.certificate_request_context == b""
    assert len(cert.certificate_list) == 1
    entry = cert.certificate_list[0]
    assert len(entry.cert_data) == 0x1B0 and entry.cert_data[:4] == b"\x30\x82\x01\xac"
    assert entry.extensions == []

    cv = decode(VECTORS["S3_CERTIFICATE_VERIFY"])
    assert isinstance(cv, CertificateVerify)
    assert cv.algorithm == SignatureScheme.rsa_pss_rsae_sha256 and len(cv.signature) == 128

    fin = decode(VECTORS["S3_SERVER_FINISHED"])
    assert isinstance(fin, Finished)
    assert fin.verify_data == bytes.fromhex("4c92b1b256d861a1830167827d3e288d1a76f03484e9ec886d4ff66149cbec2f")

    nst = decode(VECTORS["S3_NEW_SESSION_TICKET"])
    assert isinstance(nst, NewSessionTicket)
    assert nst.ticket_lifetime == 30
    assert nst.ticket_age_add == 0x933D0932
    assert nst.ticket_nonce == b"\x00\x00"
    assert len(nst.ticket) == 0xB2
    assert ext.decode_early_data_nst(ext_of(nst, ET.early_data)) == 0x400


def test_rfc8448_s5_hello_retry_request_fields() -> None:
    hrr = decode(VECTORS["S5_HELLO_RETRY_REQUEST"])
    assert isinstance(hrr, ServerHello) and hrr.is_hello_retry_request
    assert hrr.random == HELLO_RETRY_REQUEST_RANDOM
    assert hrr.cipher_suite == CipherSuite.TLS_AES_128_GCM_SHA256
    assert [t for t, _ in hrr.extensions] == [51, 44, 43]
    assert ext.decode_key_share_hrr(ext_of(hrr, ET.key_share)) == NamedGroup.secp256r1
    assert len(ext.decode_cookie(ext_of(hrr, ET.cookie))) == 0x72
    assert ext.decode_supported_versions_sh(ext_of(hrr, ET.supported_versions)) == 0x0304
    # ClientHello2 echoes the cookie and offers one share of the HRR's group.
    ch2 = decode(VECTORS["S5_CLIENT_HELLO_2"])
    assert ext_of(ch2, ET.cookie) == ext_of(hrr, ET.cookie)
    [(group, key)] = ext.decode_key_share_ch(ext_of(ch2, ET.key_share))
    assert group == NamedGroup.secp256r1 and len(key) == 65 and key[0] == 4
    ch1 = decode(VECTORS["S5_CLIENT_HELLO_1"])
    assert ext.decode_key_share_ch(ext_of(ch1, ET.key_share))[0][0] == NamedGroup.x25519


def test_rfc8448_s6_certificate_request() -> None:
    cr = decode(VECTORS["S6_CERTIFICATE_REQUEST"])
    assert isinstance(cr, CertificateRequest)
    assert cr.certificate_request_context == b""
    assert [t for t, _ in cr.extensions] == [ET.signature_algorithms]
    assert SignatureScheme.rsa_pss_rsae_sha256 in ext.decode_signature_algorithms(cr.extensions[0][1])


def test_rfc8448_s4_psk_binder_truncation() -> None:
    """RFC 9846 §4.2.11.2: Truncate() strips exactly the binders block (RFC 8448 §4: 477-byte prefix)."""
    raw = VECTORS["S4_CLIENT_HELLO"]
    ch = decode(raw)
    assert ch.extensions[-1][0] == ET.pre_shared_key
    offered = ext.decode_pre_shared_key_ch(ch.extensions[-1][1])
    assert len(offered.identities) == 1 and len(offered.binders) == 1
    n = ext.binders_block_length([len(b) for b in offered.binders])
    assert n == 35
    prefix = raw[:-n]
    assert len(prefix) == 477
    assert hashlib.sha256(prefix).hexdigest().startswith("6fd17487908d45ca0bb7d5e5a9")
    assert raw[-n:] == ext.encode_psk_binders(offered.binders)
    assert offered.binders[0].hex().startswith("718cd8f22e8ed71d1a23f7c88f63")
    ext.decode_empty(ext_of(ch, ET.early_data))

    sh = decode(VECTORS["S4_SERVER_HELLO"])
    assert ext.decode_pre_shared_key_sh(ext_of(sh, ET.pre_shared_key)) == 0

    # The engine's approach: encode with dummy binders of the right lengths,
    # truncate, then splice the real binders in.
    dummy = ext.OfferedPsks(offered.identities, [bytes(32)])
    ch_dummy = ClientHello(
        ch.random,
        ch.legacy_session_id,
        ch.cipher_suites,
        ch.extensions[:-1] + [(ET.pre_shared_key, ext.encode_pre_shared_key_ch(dummy))],
    )
    enc = encode_handshake(ch_dummy)
    assert enc[:-n] == prefix
    assert enc[:-n] + ext.encode_psk_binders(offered.binders) == raw


def test_rfc8448_psk_identity_is_s3_ticket() -> None:
    ch = decode(VECTORS["S4_CLIENT_HELLO"])
    offered = ext.decode_pre_shared_key_ch(ch.extensions[-1][1])
    nst = decode(VECTORS["S3_NEW_SESSION_TICKET"])
    assert offered.identities[0].identity == nst.ticket
    # obfuscated_ticket_age = age in ms + ticket_age_add (RFC 9846 §4.2.11.1)
    assert offered.identities[0].obfuscated_ticket_age == 0x933D0937
    assert (offered.identities[0].obfuscated_ticket_age - nst.ticket_age_add) % (1 << 32) == 5


def test_rfc8448_reader_reassembles_server_flight() -> None:
    flight = b"".join(
        VECTORS[k]
        for k in ("S3_ENCRYPTED_EXTENSIONS", "S3_CERTIFICATE", "S3_CERTIFICATE_VERIFY", "S3_SERVER_FINISHED")
    )
    reader = HandshakeReader()
    got = []
    for i in range(0, len(flight), 7):
        reader.feed(flight[i : i + 7])
        while (m := reader.next_message()) is not None:
            got.append(m)
    assert [t for t, _ in got] == [8, 11, 15, 20]
    assert b"".join(m for _, m in got) == flight
    assert not reader.has_partial()


# ===========================================================================
# Hand-made malformed messages
# ===========================================================================
def _ch_body(**kw: Any) -> bytes:
    ch = ClientHello(
        random=bytes(32),
        legacy_session_id=b"",
        cipher_suites=[0x1301],
        extensions=[(ET.supported_versions, b"\x02\x03\x04")],
    )
    for k, v in kw.items():
        setattr(ch, k, v)
    return encode_handshake_body(ch)[1]


def test_client_hello_without_extensions_is_legacy_form() -> None:
    body = _ch_body(extensions=[])
    ch = decode_handshake(1, body)
    assert isinstance(ch, ClientHello) and ch.extensions == []
    assert encode_handshake_body(ch)[1] == body


@pytest.mark.parametrize(
    "body_patch",
    [
        lambda b: b[:-1],  # short
        lambda b: b + b"\x00",  # trailing
        lambda b: b[:34] + b"\x21" + bytes(33) + b[35:],  # session id of 33 bytes
        lambda b: b[:35] + b"\x00\x03\x13\x01\x13" + b[39:],  # odd cipher_suites length
        lambda b: b[:35] + b"\x00\x00" + b[39:],  # empty cipher_suites
        lambda b: b[:39] + b"\x00" + b[40:],  # empty compression methods
        lambda b: b[:41] + b"\x00\x00",  # empty extensions block
        lambda b: b[:41] + b"\x00\x03\x00\x2b\x00",  # truncated extension header
    ],
)
def test_client_hello_decode_errors(body_patch: Any) -> None:
    body = _ch_body()
    assert body[34] == 0 and body[35:39] == b"\x00\x02\x13\x01" and body[39:41] == b"\x01\x00"
    with pytest.raises(DecodeError):
        decode_handshake(1, body_patch(body))


def test_tls12_style_client_hello_reaches_the_engine() -> None:
    """A short extension block (only renegotiation_info) is TLS 1.2 syntax: it
    parses, so that the engine can answer protocol_version (RFC 9846 §4.1.2)."""
    body = _ch_body(extensions=[(0xFF01, b"\x00")])
    ch = decode_handshake(1, body)
    assert ch.extensions == [(0xFF01, b"\x00")]
    assert encode_handshake_body(ch)[1] == body


def test_duplicate_extension_is_illegal_parameter() -> None:
    body = _ch_body(extensions=[(43, b"\x02\x03\x04"), (10, b"\x00\x02\x00\x1d"), (43, b"\x02\x03\x04")])
    with pytest.raises(IllegalParameter):
        decode_handshake(1, body)
    ee = encode_handshake_body(EncryptedExtensions([(0, b""), (0, b"")]))[1]
    with pytest.raises(IllegalParameter):
        decode_handshake(8, ee)
    cert = encode_handshake_body(Certificate(b"", [CertificateEntry(b"x", [(5, b""), (5, b"")])]))[1]
    with pytest.raises(IllegalParameter):
        decode_handshake(11, cert)


def test_malformed_extension_blocks_are_decode_errors() -> None:
    """RFC 9846 §4.2 block syntax: a block longer than the message, an entry
    header cut short, an entry body running past the block."""
    good = encode_handshake_body(EncryptedExtensions([(0, b""), (16, b"\x00\x03abc")]))[1]
    assert decode_handshake(8, good).extensions == [(0, b""), (16, b"\x00\x03abc")]
    n = len(good) - 2
    bad = (
        (n + 1).to_bytes(2, "big") + good[2:],  # block longer than the message
        b"\x00\x03" + good[2:5],  # 3 bytes left: no room for an entry header
        b"\x00\x05\x00\x00\x00\x02\x00",  # entry body past the block
        (n - 1).to_bytes(2, "big") + good[2:-1],  # last entry cut by the block length
        b"\x00",  # no block length
    )
    for body in bad:
        with pytest.raises(DecodeError):
            decode_handshake(8, body)


def test_pre_shared_key_must_be_last_in_client_hello() -> None:
    psk = ext.encode_pre_shared_key_ch(ext.OfferedPsks([ext.PskIdentity(b"id", 0)], [bytes(32)]))
    good = _ch_body(extensions=[(43, b"\x02\x03\x04"), (41, psk)])
    assert decode_handshake(1, good).extensions[-1][0] == 41
    bad = _ch_body(extensions=[(41, psk), (43, b"\x02\x03\x04")])
    with pytest.raises(IllegalParameter):
        decode_handshake(1, bad)
    # anywhere in a ServerHello
    sh = ServerHello(bytes(32), b"", 0x1301, [(41, b"\x00\x00"), (43, b"\x03\x04")])
    assert decode_handshake(2, encode_handshake_body(sh)[1]) == sh


def test_server_hello_errors() -> None:
    sh = ServerHello(bytes(32), b"", 0x1301, [(43, b"\x03\x04")])
    body = encode_handshake_body(sh)[1]
    assert decode_handshake(2, body) == sh
    for bad in (body[:-1], body + b"\x00", body[:39], body[:34] + b"\x21" + bytes(33) + body[35:]):
        with pytest.raises(DecodeError):
            decode_handshake(2, bad)
    legacy = ServerHello(bytes(32), b"", 0x1301, [])
    lb = encode_handshake_body(legacy)[1]
    assert len(lb) == 38 and decode_handshake(2, lb) == legacy
    with pytest.raises(DecodeError):  # an empty block is shorter than <6..>
        decode_handshake(2, lb + b"\x00\x00")


def test_finished_length() -> None:
    assert decode_handshake(20, bytes(48), hash_len=48) == Finished(bytes(48))
    for n in (0, 31, 33, 48):
        with pytest.raises(DecodeError):
            decode_handshake(20, bytes(n), hash_len=32)
    assert decode_handshake(20, bytes(5)) == Finished(bytes(5))  # hash not yet known
    with pytest.raises(DecodeError):
        decode_handshake(20, b"")


def test_key_update() -> None:
    assert decode_handshake(24, b"\x00") == KeyUpdate(0)
    assert decode_handshake(24, b"\x01") == KeyUpdate(1)
    for v in (2, 255):
        with pytest.raises(IllegalParameter):
            decode_handshake(24, bytes([v]))
    for bad in (b"", b"\x00\x00", b"\x05\x00"):
        with pytest.raises(DecodeError):
            decode_handshake(24, bad)
    assert encode_handshake(KeyUpdate(1)) == b"\x18\x00\x00\x01\x01"


def test_end_of_early_data() -> None:
    assert decode_handshake(5, b"") == EndOfEarlyData()
    assert encode_handshake(EndOfEarlyData()) == b"\x05\x00\x00\x00"
    with pytest.raises(DecodeError):
        decode_handshake(5, b"\x00")


def test_new_session_ticket_bounds() -> None:
    good = NewSessionTicket(7200, 1, b"", b"t", [])
    assert decode(encode_handshake(good)) == good
    with pytest.raises(DecodeError):  # ticket<1..2^16-1>
        decode_handshake(4, encode_handshake_body(NewSessionTicket(1, 1, b"n", b"", []))[1])


def test_certificate_bounds() -> None:
    with pytest.raises(DecodeError):  # cert_data<1..2^24-1>
        decode_handshake(11, encode_handshake_body(Certificate(b"", [CertificateEntry(b"")]))[1])
    empty = Certificate(b"ctx", [])
    assert decode(encode_handshake(empty)) == empty
    with pytest.raises(DecodeError):  # compressed message <1..2^24-1>
        decode_handshake(25, b"\x00\x01\x00\x00\x10\x00\x00\x00")
    cc = CompressedCertificate(1, 1000, b"zz")
    assert decode(encode_handshake(cc)) == cc
    cr = CertificateRequest(b"", [])
    assert decode(encode_handshake(cr)) == cr


@pytest.mark.parametrize("msg_type", [0, 3, 6, 7, 9, 12, 14, 16, 21, 22, 23, 254, 255])
def test_unknown_type_is_unexpected_message(msg_type: int) -> None:
    with pytest.raises(UnexpectedMessage):
        decode_handshake(msg_type, b"")


def test_encode_rejects_non_message() -> None:
    with pytest.raises(TypeError):
        encode_handshake("hello")  # type: ignore[arg-type]


# ===========================================================================
# HandshakeReader
# ===========================================================================
def test_reader_basic() -> None:
    r = HandshakeReader()
    assert r.next_message() is None and not r.has_partial()
    r.feed(b"\x14\x00")
    assert r.has_partial() and r.next_message() is None
    r.feed(b"\x00\x02ab\x18\x00\x00\x01\x00\x05")
    assert r.next_message() == (20, b"\x14\x00\x00\x02ab")
    assert r.next_message() == (24, b"\x18\x00\x00\x01\x00")
    assert r.next_message() is None and r.has_partial()
    r.feed(b"\x00\x00\x00")
    assert r.next_message() == (5, b"\x05\x00\x00\x00")
    assert not r.has_partial()


def test_reader_rejects_oversize_before_buffering() -> None:
    r = HandshakeReader(max_message_size=1000)
    r.feed(b"\x0b\x00\x03")
    with pytest.raises(DecodeError):
        r.feed(b"\xe9")  # 1001 > 1000, only the header has arrived
    r2 = HandshakeReader(max_message_size=1000)
    r2.feed(b"\x0b\x00\x03\xe8" + bytes(1000))
    assert r2.next_message() is not None
    r3 = HandshakeReader()
    with pytest.raises(DecodeError):
        r3.feed(b"\x01\xff\xff\xff")
    # an oversize header that follows a complete message is caught when it
    # reaches the head of the buffer, without losing the message before it
    r4 = HandshakeReader(max_message_size=10)
    r4.feed(b"\x14\x00\x00\x01a\x0b\x00\x00\x0b")
    assert r4.next_message() == (20, b"\x14\x00\x00\x01a")
    with pytest.raises(DecodeError):
        r4.next_message()


@given(
    msgs=st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=300)), min_size=1, max_size=6),
    cuts=st.lists(st.integers(0, 2000), max_size=10),
)
def test_reader_split_anywhere(msgs: list[tuple[int, bytes]], cuts: list[int]) -> None:
    wire = [bytes([t]) + len(b).to_bytes(3, "big") + b for t, b in msgs]
    stream = b"".join(wire)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    r = HandshakeReader()
    got: list[tuple[int, bytes]] = []
    for a, b in zip(points, points[1:]):
        r.feed(memoryview(stream)[a:b])
        while (m := r.next_message()) is not None:
            got.append(m)
    assert got == [(w[0], w) for w in wire]
    assert not r.has_partial()


# ===========================================================================
# Hypothesis: random valid messages
# ===========================================================================
u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u24 = st.integers(0, 0xFFFFFF)
u32 = st.integers(0, 0xFFFFFFFF)


def extensions_st(min_block: int = 0, psk_last: bool = False, max_size: int = 6) -> st.SearchStrategy[list[tuple[int, bytes]]]:
    base = st.lists(
        st.tuples(st.one_of(st.sampled_from([0, 10, 13, 41, 42, 43, 51]), u16), st.binary(max_size=40)),
        max_size=max_size,
        unique_by=lambda e: e[0],
    )

    def fix(exts: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
        if psk_last:
            exts = [e for e in exts if e[0] != 41] + [e for e in exts if e[0] == 41]
        return exts

    return base.map(fix).filter(lambda e: not e or sum(4 + len(d) for _, d in e) >= min_block)


client_hello_st = st.builds(
    ClientHello,
    random=st.binary(min_size=32, max_size=32),
    legacy_session_id=st.binary(max_size=32),
    cipher_suites=st.lists(u16, min_size=1, max_size=30),
    extensions=extensions_st(1, psk_last=True),
    legacy_compression_methods=st.binary(min_size=1, max_size=4),
    legacy_version=u16,
)
server_hello_st = st.builds(
    ServerHello,
    random=st.one_of(st.just(HELLO_RETRY_REQUEST_RANDOM), st.binary(min_size=32, max_size=32)),
    legacy_session_id_echo=st.binary(max_size=32),
    cipher_suite=u16,
    extensions=extensions_st(1),
    legacy_compression_method=u8,
    legacy_version=u16,
)
entry_st = st.builds(CertificateEntry, cert_data=st.binary(min_size=1, max_size=60), extensions=extensions_st(max_size=3))
message_st: st.SearchStrategy[Any] = st.one_of(
    client_hello_st,
    server_hello_st,
    st.builds(EncryptedExtensions, extensions=extensions_st()),
    st.builds(CertificateRequest, certificate_request_context=st.binary(max_size=255), extensions=extensions_st()),
    st.builds(Certificate, certificate_request_context=st.binary(max_size=255), certificate_list=st.lists(entry_st, max_size=4)),
    st.builds(CompressedCertificate, algorithm=u16, uncompressed_length=u24, compressed_certificate_message=st.binary(min_size=1, max_size=60)),
    st.builds(CertificateVerify, algorithm=u16, signature=st.binary(max_size=300)),
    st.builds(Finished, verify_data=st.sampled_from([32, 48]).flatmap(lambda n: st.binary(min_size=n, max_size=n))),
    st.builds(NewSessionTicket, ticket_lifetime=u32, ticket_age_add=u32, ticket_nonce=st.binary(max_size=255), ticket=st.binary(min_size=1, max_size=100), extensions=extensions_st()),
    st.just(EndOfEarlyData()),
    st.builds(KeyUpdate, request_update=st.integers(0, 1)),
)


def _hash_len(msg: Any) -> int | None:
    return len(msg.verify_data) if isinstance(msg, Finished) else None


@given(message_st)
def test_random_messages_round_trip(msg: Any) -> None:
    raw = encode_handshake(msg)
    back = decode(raw, hash_len=_hash_len(msg))
    assert back == msg
    assert type(back) is type(msg)
    assert encode_handshake(back) == raw


@given(message_st, st.data())
def test_truncation_is_decode_error(msg: Any, data: st.DataObject) -> None:
    raw = encode_handshake(msg)
    body = raw[4:]
    assume(len(body) > 0)
    cut = data.draw(st.integers(0, len(body) - 1))
    try:
        got = decode_handshake(raw[0], body[:cut], hash_len=_hash_len(msg))
    except DecodeError:
        return
    # The one legal truncation: a hello cut right before its extensions block
    # is the extension-less legacy form.
    assert isinstance(got, (ClientHello, ServerHello)) and got.extensions == []
    assert encode_handshake_body(got)[1] == body[:cut]


@given(message_st, st.binary(min_size=1, max_size=20))
def test_trailing_bytes_are_decode_error(msg: Any, extra: bytes) -> None:
    if isinstance(msg, (ClientHello, ServerHello)):
        assume(msg.extensions)  # otherwise the extra bytes are an extensions block
    raw = encode_handshake(msg)
    with pytest.raises(DecodeError):
        decode_handshake(raw[0], raw[4:] + extra, hash_len=_hash_len(msg))


ALL_TYPES = [int(t) for t in HandshakeType] + [0, 3, 99, 255]


@settings(max_examples=300)
@given(st.sampled_from(ALL_TYPES), st.binary(max_size=200), st.sampled_from([None, 32]))
def test_random_bytes_only_raise_protocol_errors(msg_type: int, body: bytes, hash_len: int | None) -> None:
    try:
        msg = decode_handshake(msg_type, body, hash_len=hash_len)
    except LocalProtocolError:
        return
    # Whatever parses re-encodes to the same bytes.
    assert encode_handshake_body(msg) == (msg_type, body)


@settings(max_examples=300)
@given(st.sampled_from(sorted(VECTORS)), st.data())
def test_mutated_vectors_only_raise_protocol_errors(name: str, data: st.DataObject) -> None:
    raw = bytearray(VECTORS[name])
    assume(len(raw) > 4)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(4, len(raw) - 1))
        raw[i] = data.draw(u8)
    try:
        msg = decode_handshake(raw[0], memoryview(raw)[4:], hash_len=32)
    except LocalProtocolError:
        return
    assert encode_handshake(msg) == bytes(raw)


# ===========================================================================
# Extensions
# ===========================================================================
psk_st = st.builds(
    ext.OfferedPsks,
    identities=st.lists(st.builds(ext.PskIdentity, st.binary(min_size=1, max_size=40), u32), min_size=2, max_size=2),
    binders=st.lists(st.binary(min_size=32, max_size=64), min_size=2, max_size=2),
)
hostname_st = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.-", min_size=1, max_size=60).filter(
    lambda s: not s.endswith(".")
)
EXT_CASES: list[tuple[str, st.SearchStrategy[Any]]] = [
    ("server_name", hostname_st),
    ("supported_versions_ch", st.lists(u16, min_size=1, max_size=127)),
    ("supported_versions_sh", u16),
    ("supported_groups", st.lists(u16, min_size=1, max_size=40)),
    ("signature_algorithms", st.lists(u16, min_size=1, max_size=40)),
    ("signature_algorithms_cert", st.lists(u16, min_size=1, max_size=40)),
    ("key_share_ch", st.lists(st.tuples(u16, st.binary(min_size=1, max_size=100)), max_size=4, unique_by=lambda e: e[0])),
    ("key_share_sh", st.tuples(u16, st.binary(min_size=1, max_size=100))),
    ("key_share_hrr", u16),
    ("alpn", st.lists(st.binary(min_size=1, max_size=20), min_size=1, max_size=5)),
    ("psk_key_exchange_modes", st.lists(u8, min_size=1, max_size=10)),
    ("cookie", st.binary(min_size=1, max_size=300)),
    ("early_data_nst", u32),
    ("pre_shared_key_ch", psk_st),
    ("pre_shared_key_sh", u16),
    ("record_size_limit", st.integers(64, 0xFFFF)),
    ("certificate_authorities", st.lists(st.binary(min_size=1, max_size=50), min_size=1, max_size=5)),
    ("oid_filters", st.lists(st.tuples(st.binary(min_size=1, max_size=20), st.binary(max_size=20)), max_size=4)),
    ("status_request_ch", st.builds(ext.OCSPStatusRequest, st.lists(st.binary(min_size=1, max_size=20), max_size=3), st.binary(max_size=20))),
    ("status_request_cert_entry", st.binary(min_size=1, max_size=200)),
    ("compress_certificate", st.lists(u16, min_size=1, max_size=127)),
]


@pytest.mark.parametrize("name,strategy", EXT_CASES, ids=[c[0] for c in EXT_CASES])
def test_extension_round_trip(name: str, strategy: st.SearchStrategy[Any]) -> None:
    dec = getattr(ext, f"decode_{name}")
    enc = getattr(ext, f"encode_{name}")

    @given(strategy, st.binary(min_size=1, max_size=4), st.data())
    def check(value: Any, extra: bytes, data: st.DataObject) -> None:
        raw = enc(value)
        assert dec(raw) == value
        assert dec(memoryview(raw)) == value
        assert enc(dec(raw)) == raw
        with pytest.raises(DecodeError):
            dec(raw + extra)
        cut = data.draw(st.integers(0, len(raw) - 1))
        with pytest.raises(DecodeError):
            dec(raw[:cut])

    check()


@pytest.mark.parametrize("name", [c[0] for c in EXT_CASES] + ["empty"])
def test_extension_random_bytes(name: str) -> None:
    dec = getattr(ext, f"decode_{name}")

    @given(st.binary(max_size=80))
    def check(raw: bytes) -> None:
        try:
            dec(raw)
        except LocalProtocolError:
            pass

    check()


def test_extension_specific_errors() -> None:
    ext.decode_empty(b"")
    with pytest.raises(DecodeError):
        ext.decode_empty(b"\x00")
    assert ext.encode_empty() == b"" and ext.decode_post_handshake_auth(b"") is None
    # server_name
    assert ext.encode_server_name("example.com") == b"\x00\x0e\x00\x00\x0bexample.com"
    with pytest.raises(DecodeError):
        ext.decode_server_name(b"\x00\x00")  # empty list
    with pytest.raises(DecodeError):
        ext.decode_server_name(b"\x00\x03\x00\x00\x00")  # empty host_name
    with pytest.raises(DecodeError):
        ext.decode_server_name(b"\x00\x04\x01\x00\x01a")  # unknown name_type
    with pytest.raises(IllegalParameter):
        ext.decode_server_name(b"\x00\x08\x00\x00\x01a\x00\x00\x01b")  # two host_names
    with pytest.raises(IllegalParameter):
        ext.decode_server_name(b"\x00\x05\x00\x00\x02a.")  # trailing dot
    with pytest.raises(IllegalParameter):
        ext.decode_server_name(b"\x00\x05\x00\x00\x02\xc3\xa9")  # non-ASCII
    # uint16 vectors: odd length, below the floor
    with pytest.raises(DecodeError):
        ext.decode_supported_groups(b"\x00\x03\x00\x1d\x00")
    with pytest.raises(DecodeError):
        ext.decode_supported_groups(b"\x00\x00")
    with pytest.raises(DecodeError):
        ext.decode_signature_algorithms(b"\x00\x00")
    with pytest.raises(DecodeError):
        ext.decode_supported_versions_ch(b"\x00")
    with pytest.raises(DecodeError):
        ext.decode_supported_versions_ch(b"\x01\x03")
    with pytest.raises(DecodeError):
        ext.decode_compress_certificate(b"\x00")
    # key_share
    assert ext.decode_key_share_ch(b"\x00\x00") == []
    with pytest.raises(DecodeError):  # empty key_exchange
        ext.decode_key_share_ch(b"\x00\x04\x00\x1d\x00\x00")
    with pytest.raises(IllegalParameter):  # same group twice
        ext.decode_key_share_ch(b"\x00\x0a\x00\x1d\x00\x01a\x00\x1d\x00\x01b")
    # alpn
    with pytest.raises(DecodeError):
        ext.decode_alpn(b"\x00\x00")
    with pytest.raises(DecodeError):
        ext.decode_alpn(b"\x00\x01\x00")
    assert ext.decode_alpn(b"\x00\x03\x02h2") == [b"h2"]
    # psk modes / cookie
    with pytest.raises(DecodeError):
        ext.decode_psk_key_exchange_modes(b"\x00")
    with pytest.raises(DecodeError):
        ext.decode_cookie(b"\x00\x00")
    # pre_shared_key
    with pytest.raises(DecodeError):  # binder < 32 bytes
        ext.decode_pre_shared_key_ch(ext.encode_pre_shared_key_ch(ext.OfferedPsks([ext.PskIdentity(b"a", 0)], [bytes(31)])))
    with pytest.raises(DecodeError):  # empty identity
        ext.decode_pre_shared_key_ch(ext.encode_pre_shared_key_ch(ext.OfferedPsks([ext.PskIdentity(b"", 0)], [bytes(32)])))
    with pytest.raises(DecodeError):  # no identities
        ext.decode_pre_shared_key_ch(ext.encode_pre_shared_key_ch(ext.OfferedPsks([], [bytes(32)])))
    with pytest.raises(IllegalParameter):  # count mismatch
        ext.decode_pre_shared_key_ch(
            ext.encode_pre_shared_key_ch(ext.OfferedPsks([ext.PskIdentity(b"a", 0)], [bytes(32), bytes(32)]))
        )
    assert ext.binders_block_length([32, 48]) == 2 + 33 + 49
    assert len(ext.encode_psk_binders([bytes(32), bytes(48)])) == ext.binders_block_length([32, 48])
    # record_size_limit (RFC 8449 §4)
    assert ext.decode_record_size_limit(b"\x00\x40") == 64
    with pytest.raises(IllegalParameter):
        ext.decode_record_size_limit(b"\x00\x3f")
    # certificate_authorities: <3..2^16-1>, DN <1..>
    with pytest.raises(DecodeError):
        ext.decode_certificate_authorities(b"\x00\x00")
    with pytest.raises(DecodeError):
        ext.decode_certificate_authorities(b"\x00\x02\x00\x00")
    # status_request
    assert ext.decode_status_request_ch(b"\x01\x00\x00\x00\x00") == ext.OCSPStatusRequest([], b"")
    assert ext.decode_status_request_ch(b"\x02whatever") is None
    with pytest.raises(DecodeError):
        ext.decode_status_request_ch(b"")
    with pytest.raises(IllegalParameter):
        ext.decode_status_request_cert_entry(b"\x02\x00\x00\x01a")
    with pytest.raises(DecodeError):
        ext.decode_status_request_cert_entry(b"\x01\x00\x00\x00")
