"""TLS_AES_128_CCM_8_SHA256 (RFC 9846 appendix B.4, RFC 6655): AES-128-CCM
with an 8-byte tag, selectable by name but never offered by default.

Record protection is checked against ``cryptography``'s AESCCM built
independently here, the handshake in memory, and interoperability against
``openssl s_server``/``s_client`` restricted to this one suite (and, the same
way, to TLS_AES_128_CCM_SHA256, the other optional suite).
"""

from __future__ import annotations

import os
import re

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

from conftest import DEFAULT_TIMEOUT, needs_openssl, run_s_client, run_tcpls_cli
from tcpls import sync
from tcpls.dtls.record import aead_limits
from tcpls.errors import BadRecordMac, LocalProtocolError, RecordOverflow
from tcpls.tls.config import DEFAULT_CIPHER_SUITES, TLSConfig, parse_cipher_suites
from tcpls.tls.enums import AlertDescription, CipherSuite, ContentType
from tcpls.tls.key_schedule import traffic_key_iv
from tcpls.tls.protection import MAX_PLAINTEXT, RecordDecryptor, RecordEncryptor
from tcpls.tls.suites import suite_info
from tlspair import configs, make_pair

CCM8 = CipherSuite.TLS_AES_128_CCM_8_SHA256
NAME = "TLS_AES_128_CCM_8_SHA256"
CCM_NAMES = pytest.mark.parametrize("name", [NAME, "TLS_AES_128_CCM_SHA256"])
T = DEFAULT_TIMEOUT


# ------------------------------------------------------------------ records
def test_record_is_aes_ccm_with_an_8_byte_tag():
    info = suite_info(CCM8)
    secret = os.urandom(32)
    out: list = []
    RecordEncryptor(info, secret).seal(ContentType.APPLICATION_DATA, b"hello", out)
    header, body = out
    # 5 bytes of content + inner type + 8-byte tag (§5.2).
    assert header == b"\x17\x03\x03" + (5 + 1 + 8).to_bytes(2, "big") and len(body) == 14
    key, iv = traffic_key_iv(info, secret)
    assert len(key) == 16 and len(iv) == 12
    # seq 0: the nonce is the write IV itself (§5.3).
    assert AESCCM(key, tag_length=8).decrypt(iv, body, header) == b"hello\x17"


def test_full_records_round_trip_and_tampering_fails():
    info = suite_info(CCM8)
    secret = os.urandom(32)
    enc, dec = RecordEncryptor(info, secret), RecordDecryptor(info, secret)
    data = os.urandom(2 * MAX_PLAINTEXT + 100)
    out: list = []
    enc.seal(ContentType.APPLICATION_DATA, data, out)
    got = b""
    for header, body in zip(out[::2], out[1::2]):
        assert int.from_bytes(header[3:], "big") == len(body) <= MAX_PLAINTEXT + 1 + 8
        ctype, content = dec.open(header, body)
        assert ctype == ContentType.APPLICATION_DATA
        got += bytes(content)
    assert got == data
    out = []
    enc.seal(ContentType.APPLICATION_DATA, b"x" * 40, out)
    body = bytearray(out[1])
    body[-1] ^= 1  # the tag
    with pytest.raises(BadRecordMac):
        dec.open(out[0], bytes(body))


def test_record_overflow_counts_the_short_tag():
    info = suite_info(CCM8)
    dec = RecordDecryptor(info, os.urandom(32))
    n = MAX_PLAINTEXT + 1 + 8 + 1
    with pytest.raises(RecordOverflow):
        dec.open(b"\x17\x03\x03" + n.to_bytes(2, "big"), bytes(n))


def test_dtls_forgery_limit_is_small():
    """RFC 9147 appendix on CCM_8: not without a limit on forgeries."""
    limits = aead_limits(suite_info(CCM8))
    assert limits.integrity == 2**7 and limits.confidentiality == 2**23
    assert aead_limits(suite_info(CipherSuite.TLS_AES_128_CCM_SHA256)).integrity > 2**23


# ---------------------------------------------------------------- handshake
def test_selectable_by_name_not_offered_by_default():
    assert parse_cipher_suites(NAME) == [CCM8]
    assert parse_cipher_suites(f"TLS_AES_128_GCM_SHA256:{NAME}") == [CipherSuite.TLS_AES_128_GCM_SHA256, CCM8]
    assert CCM8 not in DEFAULT_CIPHER_SUITES and CCM8 not in TLSConfig().cipher_suites


def test_handshake_and_data_in_memory():
    c, s = configs(c_cipher_suites=[CCM8], s_cipher_suites=[*DEFAULT_CIPHER_SUITES, CCM8])
    p = make_pair(c, s)
    assert p.client.cipher_suite == p.server.cipher_suite == CCM8
    a, b = os.urandom(40_000), os.urandom(3_000)
    p.client.send_data(a)
    p.server.send_data(b)
    p.pump()
    assert p.received("server") == a and p.received("client") == b


def test_default_server_refuses_a_ccm8_only_client():
    c, s = configs(c_cipher_suites=[CCM8])
    p = make_pair(c, s, handshake=False)
    with pytest.raises(LocalProtocolError) as err:
        p.pump()
    assert err.value.alert == AlertDescription.handshake_failure


# ------------------------------------------------------------------ interop
@needs_openssl
@CCM_NAMES
def test_our_client_with_s_server_ccm(openssl_server, pki, name):
    leaf = pki.leaf("ec256")
    srv = openssl_server("-tls1_3", "-naccept", "1", "-rev", "-cert", leaf.cert_file, "-key", leaf.key_file, "-ciphersuites", name)
    cfg = TLSConfig(cipher_suites=[CipherSuite[name]])
    cfg.load_verify_locations(pki.ca_file)
    lines = [bytes([0x41 + i % 26]) * (1 + (i * 37) % 900) for i in range(60)]
    payload = b"".join(line + b"\n" for line in lines)
    expected = b"".join(line[::-1] + b"\n" for line in lines)
    with sync.connect(srv.address, cfg, server_name="localhost", timeout=T) as sock:
        assert sock.cipher_suite == CipherSuite[name]
        sock.sendall(payload)
        got = b""
        while len(got) < len(expected):
            d = sock.recv(65536)
            assert d, "s_server closed early"
            got += d
        assert got == expected
        sock.shutdown_write()
        assert sock.recv(65536) == b""
    assert srv.wait(T) == 0, srv.stderr
    assert f"Ciphersuite: {name}" in srv.stderr


@needs_openssl
@CCM_NAMES
def test_cli_server_with_s_client_ccm(tcpls_cli_server, pki, name):
    leaf = pki.leaf("ec256")
    srv = tcpls_cli_server("--cert", leaf.cert_file, "--key", leaf.key_file, "--echo", "-v", "--ciphersuites", f"TLS_AES_128_GCM_SHA256:{name}")
    data = os.urandom(50_000)
    res = run_s_client(
        srv.port,
        ["-tls1_3", "-quiet", "-CAfile", pki.ca_file, "-servername", "localhost", "-verify_return_error", "-ciphersuites", name],
        data,
        expect_len=len(data),
        close_stdin=False,
        timeout=60,
    )
    assert res.stdout == data, res.stderr[-2000:]
    assert f"cipher_suite={name}" in srv.stderr


@needs_openssl
@CCM_NAMES
def test_cli_client_with_s_server_ccm(openssl_server, pki, name):
    leaf = pki.leaf("ec256")
    srv = openssl_server("-tls1_3", "-naccept", "1", "-rev", "-cert", leaf.cert_file, "-key", leaf.key_file, "-ciphersuites", name)
    line = bytes(range(0x30, 0x7B)) * 3
    res = run_tcpls_cli(
        ["client", "127.0.0.1", str(srv.port), "--cafile", pki.ca_file, "--sni", "localhost", "-v", "--ciphersuites", name],
        line + b"\n",
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == line[::-1] + b"\n"
    assert re.search(rb"cipher_suite: " + name.encode(), res.stderr), res.stderr


@needs_openssl
def test_s_client_ccm8_against_default_cli_server_is_refused(tcpls_cli_server, pki):
    leaf = pki.leaf("ec256")
    srv = tcpls_cli_server("--cert", leaf.cert_file, "--key", leaf.key_file, "--echo")
    res = run_s_client(srv.port, ["-tls1_3", "-ciphersuites", NAME], b"x\n", timeout=30)
    assert res.returncode != 0
    assert b"handshake failure" in res.stderr, res.stderr[-2000:]
