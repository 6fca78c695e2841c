"""Client and server engines wired in memory: every suite × group × key
type, HRR, ALPN, client certificates, verification failures, KeyUpdate,
close_notify and half-close, key log."""

from __future__ import annotations

import os

import pytest

from tcpls.errors import ConnectionClosedError, LocalProtocolError, RemoteAlert, UnexpectedEOF, UsageError
from tcpls.tls import events as ev
from tcpls.tls.config import TLSConfig
from tcpls.tls.enums import AlertDescription as A
from tcpls.tls.enums import CipherSuite, NamedGroup

from tlspair import client_cert, configs, make_pair

SUITES = [CipherSuite.TLS_AES_128_GCM_SHA256, CipherSuite.TLS_AES_256_GCM_SHA384, CipherSuite.TLS_CHACHA20_POLY1305_SHA256]
GROUPS = [NamedGroup.x25519, NamedGroup.secp256r1, NamedGroup.secp384r1, NamedGroup.x448]
KEY_TYPES = ["ec256", "ec384", "rsa2048", "ed25519"]


def _exchange(p, size: int = 70_000) -> None:
    a, b = os.urandom(size), os.urandom(size // 3 + 1)
    p.client.send_data(a)
    p.server.send_data(b)
    p.pump()
    assert p.received("server") == a
    assert p.received("client") == b


@pytest.mark.parametrize("key_type", KEY_TYPES)
@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.name)
@pytest.mark.parametrize("suite", SUITES, ids=lambda s: s.name)
def test_matrix(suite, group, key_type):
    c, s = configs(key_type, c_cipher_suites=[suite], c_groups=[group])
    p = make_pair(c, s)
    hc = [e for e in p.client_events if isinstance(e, ev.HandshakeComplete)]
    assert len(hc) == 1 and hc[0].cipher_suite == suite and hc[0].group == group
    assert not hc[0].hello_retry
    assert p.client.cipher_suite == p.server.cipher_suite == suite
    assert p.server.server_name == "localhost"
    assert hc[0].peer_certificate_subject == "CN=localhost"
    _exchange(p)


@pytest.mark.parametrize("cookie", [True, False])
def test_hello_retry_request(cookie):
    c, s = configs(
        c_groups=[NamedGroup.secp256r1, NamedGroup.x25519],
        c_key_share_groups=[NamedGroup.secp256r1],
        s_groups=[NamedGroup.x25519],
        s_hello_retry_cookie=cookie,
    )
    p = make_pair(c, s)
    assert p.client.hello_retry and p.server.hello_retry
    assert p.client.group == p.server.group == NamedGroup.x25519
    _exchange(p, 1000)


def test_hrr_reverse_direction():
    c, s = configs(c_groups=[NamedGroup.x25519, NamedGroup.secp256r1], s_groups=[NamedGroup.secp256r1])
    p = make_pair(c, s)
    assert p.client.hello_retry and p.client.group == NamedGroup.secp256r1


def test_server_prefers_a_group_with_a_share_to_avoid_hrr():
    c, s = configs(c_groups=[NamedGroup.secp256r1, NamedGroup.x25519], s_groups=[NamedGroup.x25519, NamedGroup.secp256r1])
    p = make_pair(c, s)
    assert not p.client.hello_retry and p.client.group == NamedGroup.secp256r1


def test_no_common_group_is_handshake_failure():
    c, s = configs(c_groups=[NamedGroup.secp384r1], s_groups=[NamedGroup.x25519])
    p = make_pair(c, s, handshake=False)
    with pytest.raises(LocalProtocolError) as ei:
        p.server.receive_data(p.client.data_to_send())
    assert ei.value.alert == A.handshake_failure
    with pytest.raises(RemoteAlert) as ri:
        p.client.receive_data(p.server.data_to_send())
    assert ri.value.alert == A.handshake_failure
    assert p.client.terminated and p.server.terminated


def test_no_common_suite():
    c, s = configs(c_cipher_suites=[CipherSuite.TLS_AES_256_GCM_SHA384], s_cipher_suites=[CipherSuite.TLS_AES_128_GCM_SHA256])
    p = make_pair(c, s, handshake=False)
    with pytest.raises(LocalProtocolError) as ei:
        p.server.receive_data(p.client.data_to_send())
    assert ei.value.alert == A.handshake_failure


def test_alpn_server_preference():
    c, s = configs(c_alpn_protocols=["http/1.1", "h2"], s_alpn_protocols=["h2", "http/1.1"])
    p = make_pair(c, s)
    assert p.client.alpn_protocol == p.server.alpn_protocol == "h2"


def test_alpn_no_overlap():
    c, s = configs(c_alpn_protocols=["foo"], s_alpn_protocols=["h2"])
    p = make_pair(c, s, handshake=False)
    with pytest.raises(LocalProtocolError) as ei:
        p.server.receive_data(p.client.data_to_send())
    assert ei.value.alert == A.no_application_protocol
    with pytest.raises(RemoteAlert) as ri:
        p.client.receive_data(p.server.data_to_send())
    assert ri.value.alert_name == "no_application_protocol"


def test_alpn_none_when_server_has_none():
    c, s = configs(c_alpn_protocols=["h2"])
    p = make_pair(c, s)
    assert p.client.alpn_protocol is None


def _fail_verification(c, s, server_name="localhost", expect=A.unknown_ca):
    p = make_pair(c, s, server_name=server_name, handshake=False)
    p.server.receive_data(p.client.data_to_send())
    with pytest.raises(LocalProtocolError) as ei:
        p.client.receive_data(p.server.data_to_send())
    assert ei.value.alert == expect
    alert = p.client.data_to_send()
    assert alert, "the client queued its alert"
    with pytest.raises(RemoteAlert) as ri:
        p.server.receive_data(alert)
    assert ri.value.alert == expect
    return ei.value


def test_untrusted_server_certificate():
    from tcpls import _testcerts

    other_ca, _ = _testcerts.make_ca("someone else")
    c, s = configs(c_trust_anchors=[other_ca])
    err = _fail_verification(c, s)
    assert "certificate verify failed" in str(err)


def test_wrong_hostname():
    c, s = configs()
    _fail_verification(c, s, server_name="www.example.org", expect=A.bad_certificate)


def test_ip_address_name():
    c, s = configs()
    p = make_pair(c, s, server_name="127.0.0.1")
    assert p.server.server_name is None  # no SNI for IP literals (RFC 6066 §3)


def test_insecure_mode_is_explicit():
    from tcpls import _testcerts

    other_ca, _ = _testcerts.make_ca("someone else")
    c, s = configs(c_trust_anchors=[other_ca], c_verify_peer=False)
    make_pair(c, s, server_name="whatever")
    assert TLSConfig().verify_peer is True


def test_no_server_name_fails_verification_by_default():
    c, s = configs()
    p = make_pair(c, s, server_name=None, handshake=False)
    p.server.receive_data(p.client.data_to_send())
    with pytest.raises(LocalProtocolError):
        p.client.receive_data(p.server.data_to_send())


@pytest.mark.parametrize("key_type", ["ec256", "rsa2048", "ed25519"])
def test_client_certificate_required(key_type):
    cert, key = client_cert(key_type)
    c, s = configs(s_require_client_certificate=True)
    c.certificate_chain, c.private_key = [cert], key
    p = make_pair(c, s)
    assert p.server.peer_certificates[0] == cert
    _exchange(p, 100)


def test_client_certificate_missing():
    c, s = configs(s_require_client_certificate=True)
    p = make_pair(c, s, handshake=False)
    p.server.receive_data(p.client.data_to_send())
    p.client.receive_data(p.server.data_to_send())
    with pytest.raises(LocalProtocolError) as ei:
        p.server.receive_data(p.client.data_to_send())
    assert ei.value.alert == A.certificate_required
    with pytest.raises(RemoteAlert):
        p.client.receive_data(p.server.data_to_send())


def test_client_certificate_optional_and_absent():
    c, s = configs(s_request_client_certificate=True)
    p = make_pair(c, s)
    assert p.server.peer_certificates == []


def test_client_certificate_untrusted():
    from tcpls import _testcerts

    ca2, ca2_key = _testcerts.make_ca("other")
    cert, key = _testcerts.make_leaf(ca2, ca2_key, ["c"], client=True)
    c, s = configs(s_require_client_certificate=True)
    c.certificate_chain, c.private_key = [cert], key
    p = make_pair(c, s, handshake=False)
    p.server.receive_data(p.client.data_to_send())
    p.client.receive_data(p.server.data_to_send())
    with pytest.raises(LocalProtocolError) as ei:
        p.server.receive_data(p.client.data_to_send())
    assert ei.value.alert == A.unknown_ca


def test_half_close():
    p = make_pair(*configs())
    p.client.send_data(b"request")
    p.client.close()
    with pytest.raises(ConnectionClosedError):
        p.client.send_data(b"more")
    p.pump()
    assert p.received("server") == b"request"
    assert any(isinstance(e, ev.CloseNotifyReceived) for e in p.server_events)
    assert p.server.peer_closed and not p.server.local_closed
    p.server.send_data(b"response after the client's close_notify")
    p.server.close()
    p.pump()
    assert p.received("client") == b"response after the client's close_notify"
    assert p.client.peer_closed
    p.client.receive_eof()  # clean EOF after close_notify: no error


def test_truncation_is_an_error():
    p = make_pair(*configs())
    with pytest.raises(UnexpectedEOF):
        p.client.receive_eof()


def test_data_before_handshake_is_queued():
    c, s = configs()
    p = make_pair(c, s, handshake=False)
    p.client.send_data(b"early bird")
    p.pump()
    assert p.received("server") == b"early bird"


@pytest.mark.parametrize("requested", [True, False])
def test_key_update(requested):
    p = make_pair(*configs())
    with pytest.raises(UsageError):
        make_pair(*configs(), handshake=False).client.key_update()
    p.client.key_update(request_peer_update=requested)
    p.client.send_data(b"after update")
    p.pump()
    assert p.received("server") == b"after update"
    updates = [e.direction for e in p.server_events if isinstance(e, ev.KeyUpdated)]
    assert updates == (["receive", "send"] if requested else ["receive"])
    p.server.send_data(b"reply")
    p.pump()
    assert p.received("client") == b"reply"
    for _ in range(3):
        p.server.key_update(True)
        p.pump()
    p.client.send_data(b"x")
    p.server.send_data(b"y")
    p.pump()
    assert p.received("server").endswith(b"x") and p.received("client").endswith(b"y")


def test_key_update_requests_received_while_silent_get_one_answer():
    """RFC 9846 §4.6.3: KeyUpdates with update_requested that arrive while
    the receiver has sent nothing get a single update in reply."""
    p = make_pair(*configs())

    def deliver(src, dst, events):
        dst.receive_data(src.data_to_send())
        p._drain(dst, events)

    def updates(events, direction):
        return sum(1 for e in events if isinstance(e, ev.KeyUpdated) and e.direction == direction)

    for _ in range(3):
        p.client.key_update(True)
    p.client.send_data(b"ping")
    deliver(p.client, p.server, p.server_events)
    assert updates(p.server_events, "receive") == 3
    assert updates(p.server_events, "send") == 1
    p.server.send_data(b"pong")
    deliver(p.server, p.client, p.client_events)
    # Once the answer has gone out, a new request gets a new answer.
    p.client.key_update(True)
    deliver(p.client, p.server, p.server_events)
    p.server.send_data(b"again")
    deliver(p.server, p.client, p.client_events)
    assert updates(p.server_events, "send") == updates(p.client_events, "receive") == 2
    assert p.received("client") == b"pongagain"
    assert p.received("server") == b"ping"


def test_tampered_record_is_bad_record_mac():
    p = make_pair(*configs())
    p.client.send_data(b"secret")
    data = bytearray(p.client.data_to_send())
    data[-1] ^= 1
    with pytest.raises(LocalProtocolError) as ei:
        p.server.receive_data(bytes(data))
    assert ei.value.alert == A.bad_record_mac
    with pytest.raises(RemoteAlert):
        p.client.receive_data(p.server.data_to_send())


def test_byte_at_a_time():
    c, s = configs()
    p = make_pair(c, s, handshake=False)
    for _ in range(4):
        for b in p.client.data_to_send():
            p.server.receive_data(bytes([b]))
        for b in p.server.data_to_send():
            p.client.receive_data(bytes([b]))
    assert p.client.handshake_complete and p.server.handshake_complete


def test_large_transfer():
    p = make_pair(*configs())
    data = os.urandom(5 * 1024 * 1024 + 17)
    p.client.send_data(data)
    p.pump()
    assert p.received("server") == data


def test_keylog_lines_match_on_both_sides(tmp_path):
    client_lines, server_lines = [], []
    path = tmp_path / "keys.log"
    c, s = configs(c_keylog_callback=client_lines.append, s_keylog_file=str(path))
    make_pair(c, s)
    labels = [l.split()[0] for l in client_lines]
    assert labels == [
        "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
        "SERVER_HANDSHAKE_TRAFFIC_SECRET",
        "CLIENT_TRAFFIC_SECRET_0",
        "SERVER_TRAFFIC_SECRET_0",
        "EXPORTER_SECRET",
    ]
    server_lines = path.read_text().splitlines()
    assert sorted(server_lines) == sorted(client_lines)
    assert all(len(l.split()[1]) == 64 for l in client_lines)


def test_keylog_environment_variable(tmp_path, monkeypatch):
    path = tmp_path / "env.log"
    monkeypatch.setenv("SSLKEYLOGFILE", str(path))
    make_pair(*configs())
    assert len(path.read_text().splitlines()) == 10  # both sides append


def test_server_config_needs_a_certificate():
    with pytest.raises(ValueError):
        from tcpls.tls.connection import TLSConnection

        TLSConnection(TLSConfig(), server_side=True)


def test_data_event_comes_before_close_notify():
    p = make_pair(*configs())
    p.client.send_data(b"last words")
    p.client.close()
    p.server.receive_data(p.client.data_to_send())
    kinds = [type(e).__name__ for e in iter(p.server.next_event, None)]
    assert kinds == ["DataReceived", "CloseNotifyReceived"]


def test_data_event_comes_before_fatal_alert():
    p = make_pair(*configs())
    p.client.send_data(b"data")
    first = p.client.data_to_send()
    p.client._fail(LocalProtocolError(A.internal_error, "test"))
    with pytest.raises(RemoteAlert):
        p.server.receive_data(first + p.client.data_to_send())
    kinds = [type(e).__name__ for e in iter(p.server.next_event, None)]
    assert kinds == ["DataReceived", "AlertReceived"]


@pytest.mark.parametrize("step", [1, 7, 4096, 70_000])
def test_receive_data_borrowed_survives_buffer_reuse(step):
    """A transport reading into one reused buffer: the engine must copy what it keeps."""
    c, s = configs()
    p = make_pair(c, s, handshake=False)
    scratch = bytearray(step)

    def feed(conn, data):
        for i in range(0, len(data), step):
            part = data[i : i + step]
            scratch[: len(part)] = part
            conn.receive_data_borrowed(memoryview(scratch)[: len(part)])
            scratch[:] = b"\xee" * len(scratch)  # the transport reuses its buffer

    for _ in range(3):
        feed(p.server, p.client.data_to_send())
        feed(p.client, p.server.data_to_send())
    assert p.client.handshake_complete and p.server.handshake_complete
    payload = os.urandom(100_000)
    p.client.send_data(payload)
    feed(p.server, p.client.data_to_send())
    got = b"".join(e.data for e in iter(p.server.next_event, None) if isinstance(e, ev.DataReceived))
    assert got == payload


def _client_hello_with(groups_ext: bytes, share_ext: bytes) -> bytes:
    """Our client's ClientHello with its supported_groups/key_share replaced."""
    from tcpls.tls import messages as M
    from tcpls.tls.enums import ExtensionType as E
    from tcpls.tls.record import encode_plaintext_records

    c, s = configs()
    from tcpls.tls.connection import TLSConnection

    client = TLSConnection(c, server_side=False, server_name="localhost")
    client.start_handshake()
    ch = M.decode_handshake(1, client.data_to_send()[9:])
    ch.extensions = [
        (t, groups_ext if t == E.supported_groups else share_ext if t == E.key_share else d) for t, d in ch.extensions
    ]
    out: list = []
    encode_plaintext_records(22, M.encode_handshake(ch), out)
    return b"".join(out)


@pytest.mark.parametrize("strict", [True, False])
def test_obsolete_group_in_supported_groups(strict):
    from tcpls.tls import extensions as X
    from tcpls.tls.kex import KeyShare
    from tcpls.tls.connection import TLSConnection

    c, s = configs(s_reject_obsolete_groups=strict)
    share = KeyShare(NamedGroup.x25519)
    hello = _client_hello_with(
        X.encode_supported_groups([0x0015, NamedGroup.x25519]), X.encode_key_share_ch([(NamedGroup.x25519, share.public)])
    )
    server = TLSConnection(s, server_side=True)
    if strict:
        with pytest.raises(LocalProtocolError) as ei:
            server.receive_data(hello)
        assert ei.value.alert == A.illegal_parameter
    else:
        server.receive_data(hello)
        assert server.data_to_send()[:1] == b"\x16"  # a ServerHello


def test_key_share_for_obsolete_group_is_refused():
    from tcpls.tls import extensions as X
    from tcpls.tls.connection import TLSConnection

    c, s = configs(s_reject_obsolete_groups=False)
    hello = _client_hello_with(X.encode_supported_groups([0x0017, 0x001B]), X.encode_key_share_ch([(0x001B, b"\x04" * 65)]))
    with pytest.raises(LocalProtocolError) as ei:
        TLSConnection(s, server_side=True).receive_data(hello)
    assert ei.value.alert == A.illegal_parameter


def test_no_usable_signature_scheme_fails_before_server_hello():
    from tcpls.tls import extensions as X
    from tcpls.tls import messages as M
    from tcpls.tls.enums import ExtensionType as E
    from tcpls.tls.connection import TLSConnection
    from tcpls.tls.record import encode_plaintext_records

    c, s = configs("rsa2048")
    client = TLSConnection(c, server_side=False, server_name="localhost")
    client.start_handshake()
    ch = M.decode_handshake(1, client.data_to_send()[9:])
    # Only PKCS#1 v1.5, which TLS 1.3 forbids in CertificateVerify.
    ch.extensions = [(t, X.encode_signature_algorithms([0x0401]) if t == E.signature_algorithms else d) for t, d in ch.extensions]
    out: list = []
    encode_plaintext_records(22, M.encode_handshake(ch), out)
    server = TLSConnection(s, server_side=True)
    with pytest.raises(LocalProtocolError) as ei:
        server.receive_data(b"".join(out))
    assert ei.value.alert == A.handshake_failure
    assert server.data_to_send()[:1] == b"\x15"  # the alert, no ServerHello before it


def test_client_certificate_without_subject_alt_name():
    """Client certificates often carry only a subject name (no SAN)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    from tlspair import _CACHE

    ca, ca_key = _CACHE["ca"]
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alice")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    c, s = configs(s_require_client_certificate=True)
    c.certificate_chain, c.private_key = [cert], key
    p = make_pair(c, s)
    assert p.server.peer_certificates[0].subject.rfc4514_string() == "CN=alice"


def test_ccm_suite_by_name():
    from tcpls.tls.config import parse_cipher_suites

    (suite,) = parse_cipher_suites("TLS_AES_128_CCM_SHA256")
    c, s = configs(c_cipher_suites=[suite], s_cipher_suites=[suite])
    p = make_pair(c, s)
    assert p.client.cipher_suite == suite
    _exchange(p, 5000)


def test_exporter_secret_is_the_key_logged_one_and_agrees_without_a_key_log():
    # The exporter secret is derived on first use; with a key log it is
    # logged at the end of the handshake. Both must be RFC 9846 §7.5's.
    from tcpls.tls.key_schedule import export_keying_material

    lines: list[str] = []
    logged = make_pair(*configs(c_keylog_callback=lines.append))
    secret = bytes.fromhex(next(l.split()[2] for l in lines if l.startswith("EXPORTER_SECRET ")))
    expected = export_keying_material("sha256", secret, b"EXPORTER-test", b"ctx", 32)
    assert logged.client.export_keying_material("EXPORTER-test", b"ctx", 32) == expected
    assert logged.server.export_keying_material("EXPORTER-test", b"ctx", 32) == expected

    quiet = make_pair(*configs())
    a = quiet.client.export_keying_material("EXPORTER-test", b"ctx", 32)
    assert a == quiet.server.export_keying_material("EXPORTER-test", b"ctx", 32)
    assert a != expected  # a different connection, a different secret
