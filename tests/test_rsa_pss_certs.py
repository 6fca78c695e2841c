"""Certificates whose key is RSASSA-PSS (id-RSASSA-PSS) sign with the
rsa_pss_pss_* schemes only; rsaEncryption keys with rsa_pss_rsae_* only
(RFC 9846 §4.2.3)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from cryptography import x509

from tcpls.errors import LocalProtocolError, RemoteAlert
from tcpls.tls.config import TLSConfig
from tcpls.tls.enums import AlertDescription as A
from tcpls.tls.enums import SignatureScheme as S

from conftest import run_s_client
from tlspair import EchoServer, make_pair

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI to make RSA-PSS keys")


@pytest.fixture(scope="module")
def pss_pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pss")

    def sh(*args):
        subprocess.run(args, check=True, capture_output=True, cwd=d)

    sh("openssl", "req", "-x509", "-newkey", "rsa-pss", "-pkeyopt", "rsa_keygen_bits:2048", "-nodes",
       "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=pss test CA",
       "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    sh("openssl", "req", "-newkey", "rsa-pss", "-pkeyopt", "rsa_keygen_bits:2048", "-nodes",
       "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=localhost")
    (d / "ext.cnf").write_text(
        "basicConstraints=critical,CA:FALSE\nsubjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n"
        "keyUsage=critical,digitalSignature\n"
    )
    sh("openssl", "x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
       "-out", "leaf.pem", "-days", "2", "-extfile", "ext.cnf", "-sigopt", "rsa_padding_mode:pss")
    return d


def _configs(pss_pki):
    server = TLSConfig()
    server.load_cert_chain(str(pss_pki / "leaf.pem"), str(pss_pki / "leaf.key"))
    # cryptography's Web PKI path validation forbids RSASSA-PSS subject keys,
    # so our client cannot validate this chain; these tests are about the
    # signature schemes, checked by the engine whatever the chain policy.
    client = TLSConfig(verify_peer=False)
    return client, server


def test_client_reports_pss_chain_as_unverifiable(pss_pki):
    _, server = _configs(pss_pki)
    client = TLSConfig()
    client.load_verify_locations(str(pss_pki / "ca.pem"))
    p = make_pair(client, server, handshake=False)
    p.server.receive_data(p.client.data_to_send())
    with pytest.raises(LocalProtocolError) as ei:
        p.client.receive_data(p.server.data_to_send())
    assert "public key algorithm" in str(ei.value)


def test_certificate_key_is_rsassa_pss(pss_pki):
    from tcpls.tls.signatures import is_rsa_pss_certificate

    cert = x509.load_pem_x509_certificate((pss_pki / "leaf.pem").read_bytes())
    assert is_rsa_pss_certificate(cert)


@pytest.mark.parametrize("scheme", [S.rsa_pss_pss_sha256, S.rsa_pss_pss_sha384, S.rsa_pss_pss_sha512])
def test_pss_certificate_handshake_uses_rsa_pss_pss(pss_pki, scheme):
    client, server = _configs(pss_pki)
    client.signature_schemes = [scheme]  # the only scheme the server may use
    p = make_pair(client, server)
    p.client.send_data(b"ping")
    p.pump()
    assert p.received("server") == b"ping"


def test_rsae_only_offer_against_pss_certificate_is_handshake_failure(pss_pki):
    client, server = _configs(pss_pki)
    client.signature_schemes = [S.rsa_pss_rsae_sha256, S.rsa_pss_rsae_sha384]
    p = make_pair(client, server, handshake=False)
    with pytest.raises(LocalProtocolError) as ei:
        p.server.receive_data(p.client.data_to_send())
    assert ei.value.alert == A.handshake_failure
    with pytest.raises(RemoteAlert):
        p.client.receive_data(p.server.data_to_send())


def test_rsae_signature_from_pss_key_is_illegal_parameter(pss_pki):
    from tcpls.tls.signatures import verify_certificate_verify

    cert = x509.load_pem_x509_certificate((pss_pki / "leaf.pem").read_bytes())
    with pytest.raises(LocalProtocolError) as ei:
        verify_certificate_verify(cert, S.rsa_pss_rsae_sha256, b"\x00" * 256, b"data")
    assert ei.value.alert == A.illegal_parameter


def test_openssl_client_against_pss_certificate(pss_pki):
    _, server = _configs(pss_pki)
    data = b"pss interop\n"
    with EchoServer(server) as srv:
        res = run_s_client(
            srv.port,
            ["-tls1_3", "-ign_eof", "-nocommands", "-CAfile", str(pss_pki / "ca.pem"), "-servername", "localhost",
             "-verify_return_error", "-sigalgs", "rsa_pss_pss_sha256"],
            data,
            expect_text=data,
            close_stdin=False,
        )
    assert data in res.stdout, res.text[-2000:]
