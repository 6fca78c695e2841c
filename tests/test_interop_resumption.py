"""Resumption, external PSKs, 0-RTT and exporters against the OpenSSL CLI.

Our side is the sans-IO engine driven directly over a socket (so every
event, including ``EarlyDataReceived`` and ``SessionTicketReceived``, is
visible to the test), with ``now = time.time()``.
"""

from __future__ import annotations

import re

import pytest

import subprocess

from conftest import DEFAULT_TIMEOUT, OPENSSL, _Drain, _stop, needs_openssl, run_s_client, wait_until
from enginepeers import EngineClient, EngineServer
from tcpls.tls import events as ev
from tcpls.tls.config import TLSConfig
from tcpls.tls.enums import CipherSuite
from tcpls.tls.session import ExternalPSK, Session

T = DEFAULT_TIMEOUT
PSK_HEX = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
PSK_ID = "tcpls-client"


def client_cfg(pki, **kw) -> TLSConfig:
    cfg = TLSConfig(**kw)
    cfg.load_verify_locations(pki.ca_file)
    return cfg


def server_cfg(pki, **kw) -> TLSConfig:
    cfg = TLSConfig(**kw)
    leaf = pki.leaf("ec256")
    cfg.load_cert_chain(leaf.cert_file, leaf.key_file)
    return cfg


def rev_server(openssl_server, pki, *extra):
    leaf = pki.leaf("ec256")
    return openssl_server("-tls1_3", "-rev", "-cert", leaf.cert_file, "-key", leaf.key_file, *extra)


def rev_exchange(cl: EngineClient, line: bytes) -> None:
    cl.send(line + b"\n")
    cl.read_until(lambda: line[::-1] + b"\n" in cl.received(), "reversed line")


# =========================================================== our client ↔ s_server
@needs_openssl
@pytest.mark.parametrize("suite", ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384"])
def test_our_client_resumes_with_s_server(openssl_server, pki, suite):
    srv = rev_server(openssl_server, pki, "-naccept", "2", "-ciphersuites", suite)
    cfg = client_cfg(pki)
    c1 = EngineClient.connected(srv.address, cfg)
    rev_exchange(c1, b"first connection")
    tickets = c1.of(ev.SessionTicketReceived)
    assert len(tickets) == 2  # OpenSSL's default
    assert not c1.conn.session_resumed and c1.conn.peer_certificates
    sess = Session.from_bytes(c1.conn.session.to_bytes())
    c1.close()

    c2 = EngineClient.connected(srv.address, cfg, session=sess)
    # Authenticated by the PSK (RFC 9846 §2.2): the certificates are the session's.
    assert c2.conn.session_resumed and c2.conn.peer_certificates == c1.conn.peer_certificates
    assert c2.conn.cipher_suite == CipherSuite[suite]
    assert c2.of(ev.HandshakeComplete)[0].session_resumed
    rev_exchange(c2, b"resumed connection")
    c2.close()
    assert srv.wait(T) == 0


@needs_openssl
def test_our_client_psk_ke_with_s_server(openssl_server, pki):
    from tcpls.tls.enums import PskKeyExchangeMode as PM

    srv = rev_server(openssl_server, pki, "-naccept", "2", "-allow_no_dhe_kex")
    cfg = client_cfg(pki, psk_key_exchange_modes=[PM.psk_ke])
    c1 = EngineClient.connected(srv.address, cfg)
    rev_exchange(c1, b"one")
    sess = c1.conn.session
    c1.close()
    c2 = EngineClient.connected(srv.address, cfg, session=sess)
    assert c2.conn.session_resumed and c2.conn.group is None
    rev_exchange(c2, b"two")
    c2.close()


class PlainServer:
    """``s_server`` without ``-rev`` (``-early_data`` excludes it), printing
    what it receives. Its stdin stays open: at EOF s_server would hang up."""

    def __init__(self, args) -> None:
        self.proc = subprocess.Popen(
            [OPENSSL, "s_server", "-accept", "127.0.0.1:0", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._out, self._err = _Drain(self.proc.stdout), _Drain(self.proc.stderr)
        found = []

        def ready() -> bool:
            m = re.search(rb"^ACCEPT\s+\S*:(\d+)\s*$", self._out.data(), re.M)
            if m is None and self.proc.poll() is not None:
                raise RuntimeError(f"s_server exited early: {self._err.data()!r}")
            if m:
                found.append(int(m.group(1)))
            return m is not None

        wait_until(ready, T, "s_server ACCEPT")
        self.address = ("127.0.0.1", found[0])

    @property
    def stdout(self) -> str:
        return self._out.data().decode("latin-1")

    def wait(self, timeout: float = T) -> int:
        rc = self.proc.wait(timeout)
        self._out.join(timeout)
        return rc


@pytest.fixture
def plain_server(pki):
    started: list[PlainServer] = []
    leaf = pki.leaf("ec256")

    def start(*extra: str) -> PlainServer:
        srv = PlainServer(["-tls1_3", "-cert", leaf.cert_file, "-key", leaf.key_file, *extra])
        started.append(srv)
        return srv

    yield start
    for srv in started:
        try:
            srv.proc.stdin.close()
        except OSError:
            pass
        _stop(srv.proc)


def get_ticket(cl: EngineClient) -> Session:
    cl.handshake()
    cl.read_until(lambda: cl.conn.session is not None, "session ticket")
    return cl.conn.session


@needs_openssl
def test_our_client_early_data_to_s_server(plain_server, pki):
    srv = plain_server("-naccept", "2", "-early_data")
    cfg = client_cfg(pki)
    c1 = EngineClient(srv.address, cfg)
    sess = get_ticket(c1)
    assert sess.max_early_data > 0
    c1.close()
    c2 = EngineClient.connected(srv.address, cfg, session=sess, early=b"zero round trip\n")
    assert c2.of(ev.EarlyDataAccepted) and c2.conn.early_data_accepted
    c2.send(b"after 0-RTT\n")
    c2.close()
    assert srv.wait(T) == 0
    out = srv.stdout
    assert "Early data received:" in out and "zero round trip" in out, out[-2000:]
    assert out.index("zero round trip") < out.index("after 0-RTT")


@needs_openssl
def test_our_client_early_data_rejected_by_s_server(plain_server, openssl_server, pki):
    """Tickets from an -early_data server, presented to one without it."""
    srv1 = plain_server("-naccept", "1", "-early_data")
    cfg = client_cfg(pki)
    c1 = EngineClient(srv1.address, cfg)
    sess = get_ticket(c1)
    c1.close()
    srv1.wait(T)
    srv2 = rev_server(openssl_server, pki, "-naccept", "1")
    c2 = EngineClient.connected(srv2.address, cfg, session=sess, early=b"dropped\n")
    rej = c2.of(ev.EarlyDataRejected)
    assert rej and rej[0].data == b"dropped\n" and not c2.conn.session_resumed
    rev_exchange(c2, b"fallback works")
    c2.close()


@needs_openssl
def test_our_client_external_psk_with_s_server(openssl_server, pki):
    srv = openssl_server("-tls1_3", "-rev", "-naccept", "1", "-nocert", "-psk", PSK_HEX, "-psk_identity", PSK_ID)
    cfg = TLSConfig(psk=ExternalPSK(PSK_ID.encode(), bytes.fromhex(PSK_HEX)))
    c = EngineClient.connected(srv.address, cfg)
    assert c.conn.session_resumed and c.conn.cipher_suite == CipherSuite.TLS_AES_128_GCM_SHA256
    rev_exchange(c, b"external psk")
    c.close()
    assert srv.wait(T) == 0


# =========================================================== s_client ↔ our server
def _s_client_args(pki, *extra: str) -> list[str]:
    return ["-tls1_3", "-CAfile", pki.ca_file, "-servername", "localhost", "-verify_return_error", *extra]


@needs_openssl
def test_s_client_resumes_with_our_server(pki, tmp_path):
    srv = EngineServer(server_cfg(pki), connections=2)
    sess_file = str(tmp_path / "sess.pem")
    r1 = run_s_client(srv.port, _s_client_args(pki, "-sess_out", sess_file), b"one\n", expect_text=b"\none\n", close_stdin=False)
    assert b"\none\n" in r1.stdout
    r2 = run_s_client(srv.port, _s_client_args(pki, "-sess_in", sess_file), b"two\n", expect_text=b"two\n", close_stdin=False)
    assert "Reused, TLSv1.3" in r2.text, r2.text[-2000:]
    s1, s2 = srv.join()
    assert s1.get("resumed") is False and s2.get("resumed") is True, (s1, s2)


@needs_openssl
def test_s_client_early_data_to_our_server(pki, tmp_path):
    srv = EngineServer(server_cfg(pki, max_early_data=16384), connections=2)
    sess_file = str(tmp_path / "sess.pem")
    early_file = tmp_path / "early.txt"
    early_file.write_bytes(b"GET /early HTTP/1.0\r\n\r\n")
    run_s_client(srv.port, _s_client_args(pki, "-sess_out", sess_file), b"one\n", expect_text=b"one\n", close_stdin=False)
    r2 = run_s_client(
        srv.port,
        _s_client_args(pki, "-sess_in", sess_file, "-early_data", str(early_file)),
        b"late\n",
        expect_text=b"late\n",
        close_stdin=False,
    )
    s1, s2 = srv.join()
    assert s2.get("resumed") is True and s2["early_accepted"] is True, s2
    assert s2["early"] == b"GET /early HTTP/1.0\r\n\r\n"
    assert b"late\n" in s2["data"]
    assert "Early data was accepted" in r2.text, r2.text[-2000:]


@needs_openssl
def test_s_client_early_data_rejected_by_our_server(pki, tmp_path):
    cfg = server_cfg(pki, max_early_data=16384)
    cfg.early_data_callback = lambda offer: False
    srv = EngineServer(cfg, connections=2)
    sess_file = str(tmp_path / "sess.pem")
    early_file = tmp_path / "early.txt"
    early_file.write_bytes(b"x" * 3000)
    run_s_client(srv.port, _s_client_args(pki, "-sess_out", sess_file), b"one\n", expect_text=b"one\n", close_stdin=False)
    r2 = run_s_client(
        srv.port,
        _s_client_args(pki, "-sess_in", sess_file, "-early_data", str(early_file)),
        b"after\n",
        expect_text=b"after\n",
        close_stdin=False,
    )
    _, s2 = srv.join()
    assert s2.get("resumed") is True and s2["early_accepted"] is False and s2["early"] == b""
    assert "Early data was rejected" in r2.text, r2.text[-2000:]


@needs_openssl
def test_s_client_external_psk_to_our_server(pki):
    key = bytes.fromhex(PSK_HEX)
    cfg = TLSConfig(psk_lookup=lambda ident: key if ident == PSK_ID.encode() else None)
    srv = EngineServer(cfg)
    r = run_s_client(srv.port, ["-tls1_3", "-psk", PSK_HEX, "-psk_identity", PSK_ID], b"psk data\n", expect_text=b"psk data\n", close_stdin=False)
    (s,) = srv.join()
    assert s.get("resumed") is True and s["data"].startswith(b"psk data"), s
    assert "TLS_AES_128_GCM_SHA256" in r.text


@needs_openssl
def test_s_client_wrong_external_psk_gets_decrypt_error(pki):
    cfg = TLSConfig(psk_lookup=lambda ident: b"\x00" * 32)
    srv = EngineServer(cfg)
    r = run_s_client(srv.port, ["-tls1_3", "-psk", PSK_HEX, "-psk_identity", PSK_ID], b"x\n", close_stdin=False)
    (s,) = srv.join()
    assert "decrypt" in repr(s.get("error")).lower() or "decrypt" in r.text.lower(), (s, r.text[-1500:])


# =========================================================== exporters
@needs_openssl
@pytest.mark.parametrize("suite", ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384"])
def test_exporter_matches_s_client(pki, suite):
    srv = EngineServer(server_cfg(pki), export=("EXPORTER-tcpls-test", 40))
    r = run_s_client(
        srv.port,
        _s_client_args(pki, "-ciphersuites", suite, "-keymatexport", "EXPORTER-tcpls-test", "-keymatexportlen", "40"),
        b"x\n",
        expect_text=b"x\n",
        close_stdin=False,
    )
    (s,) = srv.join()
    m = re.search(r"Keying material:\s*([0-9A-Fa-f]+)", r.text)
    assert m, r.text[-2000:]
    assert bytes.fromhex(m.group(1)) == s["exported"]


# =========================================================== CLI flags
@needs_openssl
def test_cli_client_psk_with_s_server(openssl_server):
    from conftest import run_tcpls_cli

    srv = openssl_server("-tls1_3", "-rev", "-naccept", "1", "-nocert", "-psk", PSK_HEX, "-psk_identity", PSK_ID)
    res = run_tcpls_cli(["client", "127.0.0.1", str(srv.port), "--psk", PSK_HEX, "--psk-identity", PSK_ID, "-v"], b"abc\n")
    assert res.returncode == 0, res.stderr
    assert res.stdout == b"cba\n" and b"resumed: True" in res.stderr


def test_cli_sessions_and_early_data(tcpls_cli_server, pki, tmp_path):
    from conftest import run_tcpls_cli

    leaf = pki.leaf("ec256")
    srv = tcpls_cli_server("--cert", leaf.cert_file, "--key", leaf.key_file, "--max-early-data", "4096", "--num-tickets", "1")
    sess, early = tmp_path / "sess.bin", tmp_path / "early.txt"
    early.write_bytes(b"zero-rtt\n")
    base = ["client", "127.0.0.1", str(srv.port), "--cafile", pki.ca_file, "--sni", "localhost", "-v"]
    r1 = run_tcpls_cli([*base, "--sess-out", str(sess)], b"one\n")
    assert r1.returncode == 0 and r1.stdout == b"one\n", r1.stderr
    assert Session.from_bytes(sess.read_bytes()).max_early_data == 4096
    r2 = run_tcpls_cli([*base, "--sess-in", str(sess), "--early-data", str(early)], b"two\n")
    assert r2.returncode == 0, r2.stderr
    assert r2.stdout == b"zero-rtt\ntwo\n"
    assert b"resumed: True" in r2.stderr and b"early data: accepted" in r2.stderr


def test_cli_server_psk_only(tcpls_cli_server):
    from conftest import run_tcpls_cli

    srv = tcpls_cli_server("--psk", PSK_HEX, "--psk-identity", PSK_ID)
    r = run_tcpls_cli(["client", "127.0.0.1", str(srv.port), "--psk", PSK_HEX, "--psk-identity", PSK_ID, "-v"], b"psk\n")
    assert r.returncode == 0 and r.stdout == b"psk\n", r.stderr
