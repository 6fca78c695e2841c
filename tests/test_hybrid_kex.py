"""X25519MLKEM768 (0x11EC): the hybrid post-quantum group, opt-in.

The wire format is checked against an independent construction with
``cryptography``'s ML-KEM-768 and X25519: client share = encapsulation key ||
X25519 public key, server share = ciphertext || X25519 public key, shared
secret = ML-KEM secret || X25519 secret.
"""

from __future__ import annotations

import pytest

mlkem = pytest.importorskip(
    "cryptography.hazmat.primitives.asymmetric.mlkem", reason="this cryptography release has no ML-KEM"
)
from cryptography.hazmat.primitives.asymmetric import x25519  # noqa: E402

from tcpls import sync  # noqa: E402
from tcpls.dtls.connection import DTLSConnection  # noqa: E402
from tcpls.errors import IllegalParameter  # noqa: E402
from tcpls.tls.config import DEFAULT_GROUPS, parse_groups  # noqa: E402
from tcpls.tls.enums import NamedGroup  # noqa: E402
from tcpls.tls.kex import SUPPORTED_GROUPS, KeyShare  # noqa: E402

from conftest import needs_openssl  # noqa: E402
from test_interop import T, client_config, rev_lines, rev_roundtrip, start_rev_server  # noqa: E402
from tlspair import configs, make_pair  # noqa: E402

H = NamedGroup.X25519MLKEM768


def test_supported_but_not_offered_by_default():
    assert H in SUPPORTED_GROUPS
    assert H not in DEFAULT_GROUPS
    assert parse_groups("X25519MLKEM768,x25519") == [H, NamedGroup.x25519]


def test_client_share_layout_against_an_independent_server():
    ours = KeyShare(H)
    assert len(ours.public) == 1184 + 32
    ek = mlkem.MLKEM768PublicKey.from_public_bytes(ours.public[:1184])
    kem_secret, ciphertext = ek.encapsulate()
    server_x = x25519.X25519PrivateKey.generate()
    x_secret = server_x.exchange(x25519.X25519PublicKey.from_public_bytes(ours.public[1184:]))
    server_share = ciphertext + server_x.public_key().public_bytes_raw()
    assert ours.exchange(server_share) == kem_secret + x_secret


def test_server_response_layout_against_an_independent_client():
    kem = mlkem.MLKEM768PrivateKey.generate()
    cx = x25519.X25519PrivateKey.generate()
    client_share = kem.public_key().public_bytes_raw() + cx.public_key().public_bytes_raw()
    ours, secret = KeyShare.respond(H, client_share)
    assert ours.group == H and len(ours.public) == 1088 + 32
    kem_secret = kem.decapsulate(ours.public[:1088])
    x_secret = cx.exchange(x25519.X25519PublicKey.from_public_bytes(ours.public[1088:]))
    assert secret == kem_secret + x_secret
    assert len(secret) == 64


@pytest.mark.parametrize("length", [0, 32, 1184, 1215, 1217])
def test_bad_client_share_length_is_illegal_parameter(length):
    with pytest.raises(IllegalParameter):
        KeyShare.respond(H, bytes(length))


def test_bad_encapsulation_key_is_illegal_parameter():
    # Coefficients of 0xFFF exceed q = 3329: FIPS 203's modulus check fails.
    x = x25519.X25519PrivateKey.generate().public_key().public_bytes_raw()
    with pytest.raises(IllegalParameter, match="ML-KEM"):
        KeyShare.respond(H, b"\xff" * 1184 + x)


def test_zero_x25519_part_is_illegal_parameter():
    ek = mlkem.MLKEM768PrivateKey.generate().public_key().public_bytes_raw()
    # A small-order X25519 point: OpenSSL refuses it, or the output is zero.
    with pytest.raises(IllegalParameter, match="x25519"):
        KeyShare.respond(H, ek + bytes(32))
    client = KeyShare(H)
    ct = mlkem.MLKEM768PublicKey.from_public_bytes(client.public[:1184]).encapsulate()[1]
    with pytest.raises(IllegalParameter):
        client.exchange(ct + bytes(32))
    with pytest.raises(IllegalParameter):
        client.exchange(ct)  # no X25519 part


def test_tls_handshake_negotiates_the_hybrid():
    c, s = configs(c_groups=[H, NamedGroup.x25519], s_groups=[H, NamedGroup.x25519])
    p = make_pair(c, s)
    assert p.client.group == H and p.server.group == H and not p.client.hello_retry
    p.client.send_data(b"post-quantum hello")
    p.pump()
    assert p.received("server") == b"post-quantum hello"


def test_server_without_the_hybrid_retries_with_x25519():
    """A client that shares only X25519MLKEM768 gets a HelloRetryRequest from a
    server that does not enable it (the default) and completes with x25519."""
    c, s = configs(c_groups=[H, NamedGroup.x25519])
    p = make_pair(c, s)
    assert p.client.hello_retry and p.client.group == NamedGroup.x25519


def test_dtls_handshake_negotiates_the_hybrid():
    c, s = configs(c_groups=[H], s_groups=[H, NamedGroup.x25519])
    client = DTLSConnection(c, is_client=True, server_name="localhost")
    server = DTLSConnection(s, is_client=False, client_address=("192.0.2.7", 4433))
    now = 0.0
    client.start_handshake(now)
    for _ in range(40):
        for d in client.datagrams_to_send(now):
            server.receive_datagram(d, now)
        for d in server.datagrams_to_send(now):
            client.receive_datagram(d, now)
        if client.handshake_complete and server.handshake_complete:
            break
        now += 0.01
    assert client.handshake_complete and server.handshake_complete
    assert client.group == H


@needs_openssl
def test_openssl_3_0_server_retries_our_hybrid_client_with_x25519(openssl_server, pki):
    """OpenSSL 3.0 knows no ML-KEM: it ignores 0x11EC and asks for X25519."""
    srv = start_rev_server(openssl_server, pki, "ec256", "-groups", "X25519")
    cfg = client_config(pki, groups=["X25519MLKEM768", "x25519"])
    with sync.connect(srv.address, cfg, server_name="localhost", timeout=T) as sock:
        assert sock.hello_retry is True
        assert sock.group == NamedGroup.x25519
        rev_roundtrip(sock, rev_lines(200, seed=5))
    assert srv.wait(T) == 0
