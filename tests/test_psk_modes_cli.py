"""PSK key exchange modes from the command line (RFC 9846 §4.2.9): ``--psk-modes``.

psk_ke (a PSK without (EC)DHE) has no forward secrecy, so tcpls accepts and
offers only psk_dhe_ke unless told otherwise. These tests run the ``tcpls``
CLI against ``openssl s_server``/``s_client`` with an external PSK; openssl
needs ``-allow_no_dhe_kex`` for psk_ke. Whether (EC)DHE ran is read from the
negotiated group: "none" means psk_ke.
"""

from __future__ import annotations

import re

import pytest

from conftest import needs_openssl, run_s_client, run_tcpls_cli, wait_until
from tcpls.tls.config import parse_psk_modes
from tcpls.tls.enums import PskKeyExchangeMode as PM

PSK_HEX = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
PSK_ID = "cli-psk"
PSK_ARGS = ["--psk", PSK_HEX, "--psk-identity", PSK_ID]
S_PSK_ARGS = ["-psk", PSK_HEX, "-psk_identity", PSK_ID]


def test_parse_psk_modes():
    assert parse_psk_modes("psk_ke") == [PM.psk_ke]
    assert parse_psk_modes("psk_dhe_ke,psk_ke") == [PM.psk_dhe_ke, PM.psk_ke]
    assert parse_psk_modes(["psk_ke", "psk_dhe_ke", "psk_ke"]) == [PM.psk_ke, PM.psk_dhe_ke]
    for bad in ("psk", "", "psk_ke,dhe"):
        with pytest.raises(ValueError):
            parse_psk_modes(bad)


def test_cli_rejects_unknown_mode():
    r = run_tcpls_cli(["client", "127.0.0.1", "1", *PSK_ARGS, "--psk-modes", "no_such_mode"])
    assert r.returncode == 2 and b"unknown PSK key exchange mode" in r.stderr, r.stderr


def _connected_line(srv) -> str:
    wait_until(lambda: "connected:" in srv.stderr, what="the server's 'connected' log line")
    return next(line for line in srv.stderr.splitlines() if "connected:" in line)


def test_cli_pair_psk_ke(tcpls_cli_server):
    srv = tcpls_cli_server(*PSK_ARGS, "--echo", "-v", "--psk-modes", "psk_dhe_ke,psk_ke")
    r = run_tcpls_cli(["client", "127.0.0.1", str(srv.port), *PSK_ARGS, "--psk-modes", "psk_ke", "-v"], b"no dhe\n")
    assert r.returncode == 0 and r.stdout == b"no dhe\n", r.stderr
    assert b"resumed: True" in r.stderr and b"group: none" in r.stderr, r.stderr
    assert "group=none" in _connected_line(srv)


def test_cli_default_server_refuses_psk_ke_only_client(tcpls_cli_server):
    """No certificate and no acceptable PSK mode: handshake_failure, not psk_ke."""
    srv = tcpls_cli_server(*PSK_ARGS, "--echo")
    r = run_tcpls_cli(["client", "127.0.0.1", str(srv.port), *PSK_ARGS, "--psk-modes", "psk_ke"], b"x\n")
    assert r.returncode != 0 and b"handshake_failure" in r.stderr, r.stderr


@needs_openssl
def test_cli_server_psk_ke_with_s_client(tcpls_cli_server):
    # Only psk_ke accepted: s_client -allow_no_dhe_kex offers both modes.
    srv = tcpls_cli_server(*PSK_ARGS, "--echo", "-v", "--psk-modes", "psk_ke")
    res = run_s_client(srv.port, ["-tls1_3", "-allow_no_dhe_kex", *S_PSK_ARGS], b"psk_ke data\n", expect_text=b"psk_ke data\n", close_stdin=False)
    assert b"psk_ke data\n" in res.stdout, res.stderr[-2000:]
    assert "Server Temp Key" not in res.text
    assert "group=none" in _connected_line(srv)


@needs_openssl
def test_cli_server_prefers_psk_dhe_ke_with_s_client(tcpls_cli_server):
    # Both accepted, (EC)DHE preferred: a client offering both gets psk_dhe_ke.
    srv = tcpls_cli_server(*PSK_ARGS, "--echo", "-v", "--psk-modes", "psk_dhe_ke,psk_ke")
    res = run_s_client(srv.port, ["-tls1_3", "-allow_no_dhe_kex", *S_PSK_ARGS], b"dhe data\n", expect_text=b"dhe data\n", close_stdin=False)
    assert b"dhe data\n" in res.stdout, res.stderr[-2000:]
    assert re.search(r"Server Temp Key: X25519", res.text), res.text[-2000:]
    assert "group=x25519" in _connected_line(srv)


@needs_openssl
def test_cli_client_psk_ke_with_s_server(openssl_server):
    srv = openssl_server("-tls1_3", "-rev", "-naccept", "1", "-nocert", "-allow_no_dhe_kex", *S_PSK_ARGS)
    r = run_tcpls_cli(["client", "127.0.0.1", str(srv.port), *PSK_ARGS, "--psk-modes", "psk_ke", "-v"], b"abc\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"cba\n"
    assert b"resumed: True" in r.stderr and b"group: none" in r.stderr, r.stderr


@needs_openssl
def test_cli_client_psk_ke_refused_by_s_server_without_allow_no_dhe_kex(openssl_server):
    srv = openssl_server("-tls1_3", "-rev", "-naccept", "1", "-nocert", *S_PSK_ARGS)
    r = run_tcpls_cli(["client", "127.0.0.1", str(srv.port), *PSK_ARGS, "--psk-modes", "psk_ke"], b"abc\n")
    assert r.returncode != 0 and r.stdout == b""
    assert b"alert" in r.stderr, r.stderr
