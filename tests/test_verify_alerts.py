"""The alert a refused certificate chain gets (RFC 9846 §6.2): an expired
or not yet valid certificate (leaf or intermediate) is certificate_expired,
an unknown issuer unknown_ca, a name mismatch bad_certificate."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tcpls import _testcerts
from tcpls.errors import LocalProtocolError, ProtocolError, RemoteAlert
from tcpls.tls.config import TLSConfig
from tcpls.tls.enums import AlertDescription as A
from tcpls.tls.verify import verify_client_chain, verify_server_chain

from tlspair import make_pair

NOW = datetime.datetime.now(datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


def _cert(issuer, issuer_key, not_before, not_after, *, ca=False, client=False, name="localhost"):
    key = ec.generate_private_key(ec.SECP256R1())
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    )
    if ca:
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True).add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False).add_extension(
            x509.ExtendedKeyUsage([usage]), critical=False
        )
    return b.sign(issuer_key, hashes.SHA256()), key


@pytest.fixture(scope="module")
def root():
    return _testcerts.make_ca("alerts root")


def _server_alert(chain, anchors, name="localhost") -> int:
    with pytest.raises(ProtocolError) as info:
        verify_server_chain(chain, anchors, name)
    return info.value.alert


def test_expired_leaf(root):
    leaf, _ = _cert(*root, NOW - 30 * DAY, NOW - DAY)
    assert _server_alert([leaf], [root[0]]) == A.certificate_expired


def test_not_yet_valid_leaf(root):
    leaf, _ = _cert(*root, NOW + DAY, NOW + 30 * DAY)
    assert _server_alert([leaf], [root[0]]) == A.certificate_expired


def test_expired_intermediate(root):
    inter, inter_key = _cert(*root, NOW - 30 * DAY, NOW - DAY, ca=True, name="intermediate")
    leaf, _ = _cert(inter, inter_key, NOW - DAY, NOW + 30 * DAY)
    assert _server_alert([leaf, inter], [root[0]]) == A.certificate_expired


def test_unknown_issuer_and_wrong_name_keep_their_alerts(root):
    other = _testcerts.make_ca("other root")
    leaf, _ = _cert(*other, NOW - DAY, NOW + 30 * DAY)
    assert _server_alert([leaf], [root[0]]) == A.unknown_ca
    good, _ = _cert(*root, NOW - DAY, NOW + 30 * DAY)
    assert _server_alert([good], [root[0]], "other.example") == A.bad_certificate
    verify_server_chain([good], [root[0]], "localhost")


def test_expired_client_certificate(root):
    leaf, _ = _cert(*root, NOW - 30 * DAY, NOW - DAY, client=True, name="client.example")
    with pytest.raises(ProtocolError) as info:
        verify_client_chain([leaf], [root[0]])
    assert info.value.alert == A.certificate_expired


def test_handshake_with_expired_server_certificate(root):
    """On the wire: the client refuses with certificate_expired and the
    server reads that alert."""
    leaf, key = _cert(*root, NOW - 30 * DAY, NOW - DAY)
    c = TLSConfig(trust_anchors=[root[0]])
    s = TLSConfig(certificate_chain=[leaf], private_key=key)
    p = make_pair(c, s, handshake=False)
    p.server.receive_data(p.client.data_to_send())
    with pytest.raises(LocalProtocolError) as mine:
        p.client.receive_data(p.server.data_to_send())
    assert mine.value.alert == A.certificate_expired
    with pytest.raises(RemoteAlert) as theirs:
        p.server.receive_data(p.client.data_to_send())
    assert theirs.value.alert == A.certificate_expired
