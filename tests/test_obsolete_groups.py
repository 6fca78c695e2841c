"""Obsolete (TLS 1.2-only) groups in a TLS 1.3 ClientHello (RFC 8446 §4.2.7).

They "MUST NOT be offered ... by TLS 1.3 implementations". A client that
offers TLS 1.3 alone and lists one is refused with illegal_parameter (by
default); a client that also offers TLS 1.2 may list them for TLS 1.2, so
the server ignores them and negotiates TLS 1.3 with a group it knows. A key
share (a TLS 1.3-only structure) for an obsolete group is always refused.
"""

from __future__ import annotations

import pytest

from tcpls.errors import LocalProtocolError
from tcpls.tls import extensions as X
from tcpls.tls import messages as M
from tcpls.tls.connection import TLSConnection
from tcpls.tls.enums import TLS_1_2, TLS_1_3, AlertDescription, ExtensionType as E, NamedGroup
from tcpls.tls.kex import KeyShare
from tcpls.tls.record import encode_plaintext_records
from conftest import needs_openssl, run_s_client, wait_until
from tlspair import configs

SECP256K1 = 0x0016  # obsolete_RESERVED, still common in TLS 1.2 clients' lists
SECT571R1 = 0x000E


def _hello(versions: list[int], groups: list[int], shares: list[tuple[int, bytes]]) -> bytes:
    c, _ = configs()
    client = TLSConnection(c, server_side=False, server_name="localhost")
    client.start_handshake()
    ch = M.decode_handshake(1, client.data_to_send()[9:])
    replace = {
        E.supported_versions: X.encode_supported_versions_ch(versions),
        E.supported_groups: X.encode_supported_groups(groups),
        E.key_share: X.encode_key_share_ch(shares),
    }
    ch.extensions = [(t, replace.get(t, d)) for t, d in ch.extensions]
    out: list = []
    encode_plaintext_records(22, M.encode_handshake(ch), out)
    return b"".join(out)


def _server() -> TLSConnection:
    _, s = configs()
    assert s.reject_obsolete_groups
    return TLSConnection(s, server_side=True)


@pytest.mark.parametrize("obsolete", [SECP256K1, SECT571R1, 0xFF01, 0xFF02])
def test_dual_version_client_may_list_obsolete_groups(obsolete):
    share = KeyShare(NamedGroup.x25519)
    server = _server()
    server.receive_data(_hello([TLS_1_3, TLS_1_2], [obsolete, NamedGroup.x25519], [(NamedGroup.x25519, share.public)]))
    out = server.data_to_send()
    assert out[:1] == b"\x16" and out[5] == 2  # a ServerHello
    assert server.group == NamedGroup.x25519


@pytest.mark.parametrize("obsolete", [SECP256K1, 0xFF02])
def test_tls13_only_client_listing_obsolete_groups_is_refused(obsolete):
    share = KeyShare(NamedGroup.x25519)
    with pytest.raises(LocalProtocolError) as err:
        _server().receive_data(_hello([TLS_1_3], [obsolete, NamedGroup.x25519], [(NamedGroup.x25519, share.public)]))
    assert err.value.alert == AlertDescription.illegal_parameter


def test_key_share_for_obsolete_group_is_refused_even_from_dual_version_client():
    with pytest.raises(LocalProtocolError) as err:
        _server().receive_data(_hello([TLS_1_3, TLS_1_2], [SECP256K1, NamedGroup.secp256r1], [(SECP256K1, b"\x04" * 65)]))
    assert err.value.alert == AlertDescription.illegal_parameter


@needs_openssl
def test_s_client_offering_tls12_and_secp256k1_connects(tcpls_cli_server, pki):
    """s_client (TLS 1.2 and 1.3 enabled) with secp256k1 first in its groups."""
    leaf = pki.leaf("ec256")
    srv = tcpls_cli_server("--cert", leaf.cert_file, "--key", leaf.key_file, "--echo", "-v")
    data = b"k1 listed\n"
    res = run_s_client(
        srv.port,
        ["-quiet", "-groups", "secp256k1:X25519", "-CAfile", pki.ca_file, "-servername", "localhost", "-verify_return_error"],
        data,
        expect_len=len(data),
        close_stdin=False,
    )
    assert res.stdout == data, res.stderr[-2000:]
    wait_until(lambda: "connected:" in srv.stderr, what="the server's 'connected' log line")
    assert "version=TLSv1.3" in srv.stderr and "group=x25519" in srv.stderr, srv.stderr

