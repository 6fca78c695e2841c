"""Finite-field (EC-less) Diffie-Hellman groups of RFC 7919 in TLS 1.3."""

from __future__ import annotations

import random
import shutil
import subprocess

import pytest

from tcpls import sync
from tcpls.errors import LocalProtocolError
from tcpls.tls import ffdhe
from tcpls.tls.enums import AlertDescription as A
from tcpls.tls.enums import NamedGroup
from tcpls.tls.kex import KeyShare

from conftest import run_s_client
from tlspair import EchoServer, configs, make_pair

GROUPS = {
    NamedGroup.ffdhe2048: ffdhe.FFDHE2048_P,
    NamedGroup.ffdhe3072: ffdhe.FFDHE3072_P,
    NamedGroup.ffdhe4096: ffdhe.FFDHE4096_P,
    NamedGroup.ffdhe6144: ffdhe.FFDHE6144_P,
    NamedGroup.ffdhe8192: ffdhe.FFDHE8192_P,
}


def _probably_prime(n: int, rounds: int = 2) -> bool:
    rnd = random.Random(n)
    d, r = n - 1, 0
    while d % 2 == 0:
        d //= 2
        r += 1
    for _ in range(rounds):
        x = pow(rnd.randrange(2, n - 2), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


# Primality in pure Python is slow for the largest groups; those are covered
# by the comparison with OpenSSL's built-in RFC 7919 parameters below.
@pytest.mark.parametrize("group", [g for g in GROUPS if GROUPS[g].bit_length() <= 4096], ids=lambda g: g.name)
def test_constants_are_safe_primes(group):
    p = GROUPS[group]
    assert p.bit_length() == int(group.name[5:])
    assert _probably_prime(p) and _probably_prime((p - 1) // 2)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
@pytest.mark.parametrize("group", list(GROUPS), ids=lambda g: g.name)
def test_constants_match_openssl(group, tmp_path):
    out = tmp_path / "p.pem"
    subprocess.run(["openssl", "genpkey", "-genparam", "-algorithm", "DH", "-pkeyopt", f"group:{group.name}",
                    "-out", str(out)], check=True, capture_output=True)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cryptography deprecates FFDH; only the numbers matter here
        from cryptography.hazmat.primitives.serialization import load_pem_parameters

        numbers = load_pem_parameters(out.read_bytes()).parameter_numbers()
    assert (numbers.p, numbers.g) == (GROUPS[group], ffdhe.GENERATOR)


@pytest.mark.parametrize("group", list(GROUPS), ids=lambda g: g.name)
def test_handshake(group):
    c, s = configs(c_groups=[group], s_groups=[group])
    p = make_pair(c, s)
    assert p.client.group == p.server.group == group
    p.client.send_data(b"finite field")
    p.pump()
    assert p.received("server") == b"finite field"


def test_hello_retry_to_ffdhe():
    c, s = configs(c_groups=[NamedGroup.x25519, NamedGroup.ffdhe2048], s_groups=[NamedGroup.ffdhe2048])
    p = make_pair(c, s)
    assert p.client.hello_retry and p.client.group == NamedGroup.ffdhe2048


def test_ecdhe_preferred_by_default():
    c, s = configs()
    p = make_pair(c, s)
    assert p.client.group == NamedGroup.x25519


@pytest.mark.parametrize(
    "share",
    [b"\x01" * 255, b"\x00" * 255 + b"\x01", b"\x00" * 256, (ffdhe.FFDHE2048_P - 1).to_bytes(256, "big")],
    ids=["short", "one", "zero", "p-1"],
)
def test_bad_peer_share_is_illegal_parameter(share):
    with pytest.raises(LocalProtocolError) as ei:
        KeyShare(NamedGroup.ffdhe2048).exchange(share)
    assert ei.value.alert == A.illegal_parameter


def test_no_deprecation_warning_reaches_users(recwarn):
    a, b = KeyShare(NamedGroup.ffdhe2048), KeyShare(NamedGroup.ffdhe2048)
    a.exchange(b.public)
    assert not [w for w in recwarn if "Diffie-Hellman" in str(w.message)]


def test_shared_secret_keeps_leading_zeros():
    """RFC 9846 §7.4.1: the secret is padded to the size of p."""
    a, b = KeyShare(NamedGroup.ffdhe2048), KeyShare(NamedGroup.ffdhe2048)
    assert len(a.exchange(b.public)) == 256 and a.exchange(b.public) == b.exchange(a.public)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_openssl_client_with_ffdhe2048(pki):
    from tcpls.tls.config import TLSConfig

    server = TLSConfig()
    leaf = pki.leaf("ec256")
    server.load_cert_chain(leaf.cert_file, leaf.key_file)
    data = b"ffdhe interop\n"
    with EchoServer(server) as srv:
        res = run_s_client(
            srv.port,
            ["-tls1_3", "-ign_eof", "-nocommands", "-groups", "ffdhe2048", "-CAfile", pki.ca_file,
             "-servername", "localhost", "-verify_return_error"],
            data,
            expect_text=data,
            close_stdin=False,
        )
    assert data in res.stdout, res.text[-2000:]
    assert srv.groups and srv.groups[0] == NamedGroup.ffdhe2048


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_our_client_against_openssl_server_ffdhe3072(pki, openssl_server):
    from tcpls.tls.config import TLSConfig

    leaf = pki.leaf("ec256")
    srv = openssl_server("-cert", leaf.cert_file, "-key", leaf.key_file, "-tls1_3", "-groups", "ffdhe3072", "-www")
    cfg = TLSConfig(groups=[NamedGroup.x25519, NamedGroup.ffdhe3072])
    cfg.load_verify_locations(pki.ca_file)
    with sync.connect(srv.address, cfg, server_name="localhost", timeout=20) as sock:
        assert sock.group == NamedGroup.ffdhe3072 and sock.hello_retry
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.0 200")
