"""The host name a client sends as SNI and verifies (RFC 6066 §3): without
the trailing dot of a fully qualified name (crypto/tls, for one, refuses a
ClientHello whose SNI ends in a dot), an internationalized name as its
A-label, anything else refused before a byte is sent."""

from __future__ import annotations

import pytest

from tcpls import _testcerts
from tcpls.tls.config import TLSConfig
from tcpls.tls.connection import TLSConnection

from tlspair import _CACHE, configs, make_pair, pki


def test_trailing_dot_is_not_sent_and_the_name_still_verifies():
    c, s = configs()
    p = make_pair(c, s, server_name="localhost.")
    assert p.server.server_name == "localhost"
    assert p.client.server_name == "localhost"


def test_internationalized_name_goes_out_as_its_a_label():
    pki()
    ca, ca_key = _CACHE["ca"]
    cert, key = _testcerts.make_leaf(ca, ca_key, names=["xn--bcher-kva.example"])
    c = TLSConfig(trust_anchors=[ca])
    s = TLSConfig(certificate_chain=[cert], private_key=key)
    p = make_pair(c, s, server_name="bücher.example.")
    assert p.server.server_name == "xn--bcher-kva.example"


@pytest.mark.parametrize("name", [".", "b\u00fc" + "x" * 70 + ".example"])
def test_name_without_an_ascii_form_is_refused(name):
    c, _ = configs()
    with pytest.raises(ValueError, match="not a valid host name"):
        TLSConnection(c, server_side=False, server_name=name)
