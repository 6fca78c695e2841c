"""In-memory tests: client certificates chosen by certificate_authorities,
post-handshake client authentication (RFC 9846 §4.6.2), record_size_limit
(RFC 8449), OCSP stapling (RFC 6066 §8), certificate compression (RFC 8879)
and per-SNI/ALPN server context selection."""

from __future__ import annotations

import zlib

import pytest
from cryptography.hazmat.primitives import serialization

from tcpls import _testcerts
from tcpls.errors import LocalProtocolError, RemoteAlert, UsageError
from tcpls.tls import events as ev
from tcpls.tls import messages as M
from tcpls.tls.config import LazyCertificate, TLSConfig
from tcpls.tls.enums import AlertDescription, CertificateCompressionAlgorithm as CCA, ContentType, ExtensionType as E, HandshakeType as H
from tlspair import client_cert, configs, make_pair, pki


def of(events, cls):
    return [e for e in events if isinstance(e, cls)]


# ------------------------------------------------- certificate_authorities
def _hs_messages(data: bytes) -> list[tuple[int, bytes]]:
    """Plaintext handshake messages in a record stream (first flight only)."""
    out, pos = [], 0
    while pos + 5 <= len(data):
        ctype, n = data[pos], int.from_bytes(data[pos + 3 : pos + 5], "big")
        body = data[pos + 5 : pos + 5 + n]
        pos += 5 + n
        if ctype == ContentType.HANDSHAKE:
            r = M.HandshakeReader()
            r.feed(body)
            while (m := r.next_message()) is not None:
                out.append(m)
    return out


def test_certificate_request_lists_trust_anchor_subjects():
    cert, key = client_cert()
    c, s = configs(s_require_client_certificate=True, c_certificate_chain=[cert], c_private_key=key)
    seen = []
    s.keylog_callback = None
    p = make_pair(c, s, handshake=False)
    orig = p.client._hs._handle_certificate_request

    def spy(data):
        seen.append(M.decode_handshake(H.certificate_request, memoryview(data)[4:]))
        orig(data)

    p.client._hs._handle_certificate_request = spy  # handlers are dispatched by name
    p.pump()
    assert p.server.handshake_complete and p.server.peer_certificates[0] == cert
    (cr,) = seen
    exts = dict(cr.extensions)
    from tcpls.tls import extensions as X

    names = X.decode_certificate_authorities(exts[E.certificate_authorities])
    assert names == [pki()[0].subject.public_bytes()]


def test_client_picks_certificate_issued_by_requested_ca():
    ca, _, _ = pki()
    other_ca, other_key = _testcerts.make_ca("other CA")
    other_leaf, other_leaf_key = _testcerts.make_leaf(other_ca, other_key, ["client.other"], client=True)
    good, good_key = client_cert()
    # The first configured chain is from a CA the server does not list.
    c, s = configs(s_require_client_certificate=True)
    c.certificate_chain, c.private_key = [other_leaf], other_leaf_key
    c.extra_certificates = [([good], good_key)]
    p = make_pair(c, s)
    assert p.server.peer_certificates[0] == good


def test_no_certificate_authorities_when_disabled():
    cert, key = client_cert()
    c, s = configs(s_require_client_certificate=True, c_certificate_chain=[cert], c_private_key=key)
    s.certificate_authorities = []
    assert s.client_certificate_authorities() == []
    p = make_pair(c, s)
    assert p.server.peer_certificates[0] == cert


# ------------------------------------------------- post-handshake auth
def test_post_handshake_auth_with_certificate():
    cert, key = client_cert()
    c, s = configs(c_certificate_chain=[cert], c_private_key=key)
    p = make_pair(c, s)
    assert not p.server.peer_certificates
    ctx = p.server.request_client_certificate()
    assert len(ctx) == 32
    p.pump()
    (done,) = of(p.server_events, ev.PostHandshakeAuthCompleted)
    assert done.context == ctx and done.peer_certificate_subject == cert.subject.rfc4514_string()
    assert p.server.peer_certificates[0] == cert
    (ans,) = of(p.client_events, ev.PostHandshakeAuthAnswered)
    assert ans.context == ctx and ans.certificate_sent
    # Still usable, twice more, with a KeyUpdate in between (Base Key is _N).
    p.client.key_update()
    p.pump()
    ctx2 = p.server.request_client_certificate()
    ctx3 = p.server.request_client_certificate()
    p.pump()
    assert [e.context for e in of(p.server_events, ev.PostHandshakeAuthCompleted)][1:] == [ctx2, ctx3]
    p.client.send_data(b"after")
    p.pump()
    assert p.received("server") == b"after"


def test_post_handshake_auth_declined_and_required():
    c, s = configs(c_post_handshake_auth=True)
    p = make_pair(c, s)
    p.server.request_client_certificate()
    p.pump()
    (done,) = of(p.server_events, ev.PostHandshakeAuthCompleted)
    assert done.peer_certificate_subject is None
    assert not of(p.client_events, ev.PostHandshakeAuthAnswered)[0].certificate_sent
    p.server.request_client_certificate(required=True)
    with pytest.raises(LocalProtocolError) as exc:
        p.pump()
    assert exc.value.alert == AlertDescription.certificate_required


def test_post_handshake_auth_untrusted_certificate():
    bogus_ca, bogus_key = _testcerts.make_ca("bogus")
    leaf, leaf_key = _testcerts.make_leaf(bogus_ca, bogus_key, ["client.bogus"], client=True)
    c, s = configs(c_certificate_chain=[leaf], c_private_key=leaf_key)
    p = make_pair(c, s)
    p.server.request_client_certificate()
    with pytest.raises(LocalProtocolError) as exc:
        p.pump()
    assert exc.value.alert == AlertDescription.unknown_ca


def test_post_handshake_auth_not_offered():
    c, s = configs()  # no client certificate: not offered by default
    p = make_pair(c, s)
    with pytest.raises(UsageError):
        p.server.request_client_certificate()
    with pytest.raises(UsageError):
        p.client.request_client_certificate()


def test_post_handshake_certificate_request_without_offer_is_unexpected():
    c, s = configs(c_post_handshake_auth=False)
    p = make_pair(c, s)
    p.server._hs.client_post_handshake_auth = True  # a server that ignores the rule
    p.server.request_client_certificate()
    with pytest.raises(LocalProtocolError) as exc:
        p.pump()  # raised by the client
    assert exc.value.alert == AlertDescription.unexpected_message
    with pytest.raises(RemoteAlert):
        p.server.receive_data(p.client.data_to_send())


def test_post_handshake_finished_must_verify():
    cert, key = client_cert()
    c, s = configs(c_certificate_chain=[cert], c_private_key=key)
    p = make_pair(c, s)
    p.server.request_client_certificate()
    p.client.receive_data(p.server.data_to_send())
    # Corrupt the client's answer by using a wrong base key on the server side.
    p.server._hs.traffic_secret = lambda d: b"\x00" * 32
    with pytest.raises(LocalProtocolError) as exc:
        p.server.receive_data(p.client.data_to_send())
    assert exc.value.alert == AlertDescription.decrypt_error


def test_unsolicited_client_certificate_after_handshake_is_unexpected():
    cert, key = client_cert()
    c, s = configs(c_certificate_chain=[cert], c_private_key=key)
    p = make_pair(c, s)
    p.client._hs.sink.send_handshake(M.encode_handshake(M.Certificate(b"\x01", [])))
    p.client._flush_handshake()
    with pytest.raises(LocalProtocolError) as exc:
        p.pump()
    assert exc.value.alert == AlertDescription.unexpected_message


# ------------------------------------------------- record_size_limit
def _record_sizes(data: bytes) -> list[int]:
    sizes, pos = [], 0
    while pos + 5 <= len(data):
        n = int.from_bytes(data[pos + 3 : pos + 5], "big")
        if data[pos] == ContentType.APPLICATION_DATA:
            sizes.append(n)
        pos += 5 + n
    return sizes


@pytest.mark.parametrize("client_limit,server_limit", [(256, None), (None, 512), (1000, 64), (20000 // 2, 16385)])
def test_record_size_limit(client_limit, server_limit):
    c, s = configs(c_record_size_limit=client_limit, s_record_size_limit=server_limit)
    p = make_pair(c, s)
    tag = 16
    p.server.send_data(b"s" * 5000)
    out = p.server.data_to_send()
    if client_limit is not None:
        assert max(_record_sizes(out)) <= client_limit + tag
    p.client.receive_data(out)
    p.client.send_data(b"c" * 5000)
    out = p.client.data_to_send()
    if client_limit is not None:
        # Negotiated: the client respects the server's limit (default 2^14+1).
        assert max(_record_sizes(out)) <= (server_limit or 16385) + tag
    else:
        assert len(_record_sizes(out)) == 1  # not negotiated: full records
    p.server.receive_data(out)
    p.pump()
    assert p.received("server") == b"c" * 5000 and p.received("client") == b"s" * 5000


def test_record_size_limit_applies_to_handshake_records():
    c, s = configs(c_record_size_limit=64)
    p = make_pair(c, s, handshake=False)
    flight = p.client.data_to_send()
    p.server.receive_data(flight)
    out = p.server.data_to_send()
    sizes = _record_sizes(out)
    # EncryptedExtensions onwards: every protected record carries <= 63 bytes of content.
    assert sizes and max(sizes) <= 64 + 16
    p.client.receive_data(out)
    p.pump()
    assert p.client.handshake_complete and p.server.handshake_complete


def test_record_size_limit_enforced_on_receive():
    c, s = configs(c_record_size_limit=100)
    p = make_pair(c, s)
    p.server._encryptor.max_plaintext = 1000  # a server ignoring our limit
    p.server.send_data(b"x" * 500)
    with pytest.raises(LocalProtocolError) as exc:
        p.client.receive_data(p.server.data_to_send())
    assert exc.value.alert == AlertDescription.record_overflow


def test_record_size_limit_too_small_is_illegal_parameter():
    c, s = configs()
    from tcpls.tls import extensions as X

    with pytest.raises(LocalProtocolError) as exc:
        X.decode_record_size_limit(b"\x00\x3f")
    assert exc.value.alert == AlertDescription.illegal_parameter
    with pytest.raises(ValueError):
        TLSConfig(record_size_limit=10).validate(server_side=False)


# ------------------------------------------------- OCSP stapling
def test_ocsp_response_stapled_when_requested():
    c, s = configs(c_request_ocsp=True, s_ocsp_response=b"\x30\x03\x0a\x01\x00")
    p = make_pair(c, s)
    assert p.client.ocsp_response == b"\x30\x03\x0a\x01\x00"


def test_ocsp_response_not_sent_unless_requested():
    c, s = configs(s_ocsp_response=b"\x30\x03\x0a\x01\x00")
    p = make_pair(c, s)
    assert p.client.ocsp_response is None
    c, s = configs(c_request_ocsp=True)
    p = make_pair(c, s)
    assert p.client.ocsp_response is None


# ------------------------------------------------- certificate compression
def _server_certificate_message(c, s):
    p = make_pair(c, s, handshake=False)
    got = []
    hs = p.client._hs
    orig = hs._handle_certificate

    def spy(data):
        got.append(bytes(data))
        orig(data)

    hs._handle_certificate = spy  # handlers are dispatched by name
    p.pump()
    assert p.client.handshake_complete
    return got[0]


def test_server_certificate_compressed_with_zlib():
    c, s = configs("rsa2048", c_certificate_compression=[CCA.zlib], s_certificate_compression=[CCA.zlib])
    msg = _server_certificate_message(c, s)
    assert msg[0] == H.compressed_certificate
    cc = M.decode_handshake(H.compressed_certificate, msg[4:])
    assert cc.algorithm == CCA.zlib and len(zlib.decompress(cc.compressed_certificate_message)) == cc.uncompressed_length


def test_no_compression_unless_both_sides_want_it():
    c, s = configs(c_certificate_compression=[CCA.zlib])
    assert _server_certificate_message(c, s)[0] == H.certificate
    c, s = configs(s_certificate_compression=[CCA.zlib])
    assert _server_certificate_message(c, s)[0] == H.certificate


def test_client_certificate_compressed_in_handshake_and_post_handshake():
    cert, key = client_cert("rsa2048")
    c, s = configs(
        c_certificate_chain=[cert], c_private_key=key, c_certificate_compression=[CCA.zlib],
        s_certificate_compression=[CCA.zlib], s_require_client_certificate=True,
    )
    p = make_pair(c, s)
    assert p.server.peer_certificates[0] == cert
    p.server.request_client_certificate()
    p.pump()
    assert of(p.server_events, ev.PostHandshakeAuthCompleted)[0].peer_certificate_subject


def _tamper_compressed(c, s, mutate):
    """Run the handshake, rewriting the server's CompressedCertificate body."""
    from tcpls.tls.handshake import common

    real = common.encode_certificate

    def fake(context, chain, **kw):
        out = real(context, chain, **kw)
        if out[0] == H.compressed_certificate:
            cc = M.decode_handshake(H.compressed_certificate, out[4:])
            out = M.encode_handshake(mutate(cc))
        return out

    import tcpls.tls.handshake.server as srv

    srv.encode_certificate = fake
    try:
        p = make_pair(c, s, handshake=False)
        with pytest.raises(LocalProtocolError) as exc:
            p.pump()
    finally:
        srv.encode_certificate = real
    return exc.value.alert


def test_compressed_certificate_length_mismatch_is_bad_certificate():
    c, s = configs(c_certificate_compression=[CCA.zlib], s_certificate_compression=[CCA.zlib])
    s.signature_schemes = list(s.signature_schemes)  # fresh cache key space
    s._cache.clear()
    alert = _tamper_compressed(c, s, lambda cc: M.CompressedCertificate(cc.algorithm, cc.uncompressed_length - 1, cc.compressed_certificate_message))
    assert alert == AlertDescription.bad_certificate


def test_compression_bomb_is_bad_certificate():
    c, s = configs(c_certificate_compression=[CCA.zlib], s_certificate_compression=[CCA.zlib])
    bomb = zlib.compress(b"\x00" * (50 << 20))
    alert = _tamper_compressed(c, s, lambda cc: M.CompressedCertificate(cc.algorithm, cc.uncompressed_length, bomb))
    assert alert == AlertDescription.bad_certificate
    huge = _tamper_compressed(c, s, lambda cc: M.CompressedCertificate(cc.algorithm, 1 << 23, cc.compressed_certificate_message))
    assert huge == AlertDescription.bad_certificate


def test_compressed_with_unoffered_algorithm_is_illegal_parameter():
    c, s = configs(c_certificate_compression=[CCA.zlib], s_certificate_compression=[CCA.zlib])
    alert = _tamper_compressed(c, s, lambda cc: M.CompressedCertificate(CCA.zstd, cc.uncompressed_length, cc.compressed_certificate_message))
    assert alert == AlertDescription.illegal_parameter


def test_unrequested_compressed_certificate_is_unexpected():
    c, s = configs(s_certificate_compression=[CCA.zlib])
    s.ocsp_response = None
    from tcpls.tls.handshake import common

    p = make_pair(c, s, handshake=False)
    p.server._hs.client_compression = [CCA.zlib]
    orig = p.server._hs._note_optional_extensions

    def note(exts):
        orig(exts)
        p.server._hs.client_compression = [CCA.zlib]

    p.server._hs._note_optional_extensions = note
    with pytest.raises(LocalProtocolError) as exc:
        p.pump()
    assert exc.value.alert == AlertDescription.unexpected_message
    assert common  # imported for symmetry with the tamper helper


# ------------------------------------------------- context selection
def _pem_files(tmp_path, name, ca, ca_key):
    cert, key = _testcerts.make_leaf(ca, ca_key, [name])
    cf, kf = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cf.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kf.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert, str(cf), str(kf)


def test_select_context_per_server_name_with_lazy_certificates(tmp_path):
    ca, ca_key = _testcerts.make_ca("sni CA")
    names = ["a.example", "b.example", "c.example"]
    certs, contexts = {}, {}
    for n in names:
        cert, cf, kf = _pem_files(tmp_path, n, ca, ca_key)
        certs[n] = cert
        cfg = TLSConfig(alpn_protocols=["h2", "http/1.1"] if n == "b.example" else ["http/1.1"])
        cfg.load_cert_chain_lazily(cf, kf)
        contexts[n] = cfg
    calls = []

    def select(server_name, alpn):
        calls.append((server_name, alpn))
        return contexts.get(server_name)

    default = TLSConfig(select_context=select)
    default.load_cert_chain_lazily(*_pem_files(tmp_path, "default.example", ca, ca_key)[1:])
    assert not any(c.lazy_certificate.loaded for c in contexts.values())
    for n in ["b.example", "a.example", "b.example", "unknown.example"]:
        client = TLSConfig(trust_anchors=[ca], alpn_protocols=["h2", "http/1.1"], check_hostname=n != "unknown.example")
        p = make_pair(client, default, server_name=n)
        expected = certs.get(n)
        if expected is not None:
            assert p.client.peer_certificates[0] == expected
        else:
            assert p.client.peer_certificates[0].subject != certs["a.example"].subject
        want = {"b.example": "h2", "a.example": "http/1.1"}.get(n)  # default context: no ALPN
        assert p.client.alpn_protocol == want
    assert contexts["a.example"].lazy_certificate.loaded and contexts["b.example"].lazy_certificate.loaded
    assert not contexts["c.example"].lazy_certificate.loaded
    assert calls[0] == ("b.example", ["h2", "http/1.1"])


def test_select_context_per_alpn():
    c1, s1 = configs()
    _, s2 = configs("ed25519")
    s1.alpn_protocols, s2.alpn_protocols = ["acme-tls/1"], ["http/1.1"]
    s2.select_context = lambda name, alpn: s1 if "acme-tls/1" in alpn else None
    c1.alpn_protocols = ["acme-tls/1"]
    p = make_pair(c1, s2)
    assert p.client.alpn_protocol == "acme-tls/1" and p.client.peer_certificates[0] == s1.certificate_chain[0]


def test_select_context_failure_is_internal_error():
    c, s = configs()

    def boom(name, alpn):
        raise RuntimeError("no such tenant")

    s.select_context = boom
    p = make_pair(c, s, handshake=False)
    with pytest.raises(LocalProtocolError) as exc:
        p.pump()
    assert exc.value.alert == AlertDescription.internal_error


def test_lazy_certificate_missing_file_is_internal_error(tmp_path):
    c, _ = configs()
    s = TLSConfig()
    s.load_cert_chain_lazily(str(tmp_path / "missing.pem"))
    p = make_pair(c, s, handshake=False)
    with pytest.raises(LocalProtocolError) as exc:
        p.pump()
    assert exc.value.alert == AlertDescription.internal_error
    assert isinstance(s.lazy_certificate, LazyCertificate) and not s.lazy_certificate.loaded
