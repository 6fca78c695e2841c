"""The alert a refused certificate chain gets (RFC 9846 §6.2): an expired
or not yet valid certificate (leaf or intermediate) is certificate_expired,
an unknown issuer unknown_ca, a name mismatch bad_certificate."""

from __future__ import annotations

import datetime

import pytest

from tcpls import _testcerts
from tcpls.errors import LocalProtocolError, ProtocolError, RemoteAlert
from tcpls.tls.config import TLSConfig
from tcpls.tls.enums import AlertDescription as A
from tcpls.tls.verify import verify_client_chain, verify_server_chain

from tlspair import make_pair

NOW = datetime.datetime.now(datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


def _cert(issuer, issuer_key, not_before, not_after, *, ca=False, client=False, name="localhost"):
    """A certificate valid from ``not_before`` to ``not_after``: an
    intermediate CA (``ca``) or a server / client leaf for ``name``."""
    if ca:
        return _testcerts.make_intermediate(issuer, issuer_key, name=name, not_before=not_before, not_after=not_after)
    return _testcerts.make_leaf(issuer, issuer_key, names=[name], client=client, not_before=not_before, not_after=not_after)


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
