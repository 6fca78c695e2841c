"""Client certificates, post-handshake authentication, KeyUpdate and OCSP
stapling against the OpenSSL CLI, through our ``tcpls`` CLI.

``s_server``/``s_client`` read one-letter commands on stdin once connected:
``k``/``K`` send a KeyUpdate (without/with update_requested) and ``s_server``'s
``c`` sends a post-handshake CertificateRequest. ``-msg`` prints every
handshake message, which is how the tests see what went over the wire.
"""

from __future__ import annotations

import datetime
import re
import subprocess
import time

import pytest

from conftest import DEFAULT_TIMEOUT, OPENSSL, _Drain, _stop, close_stdin_and_wait, needs_openssl, run_s_client, run_tcpls_cli, wait_until

T = DEFAULT_TIMEOUT
pytestmark = needs_openssl


class InteractiveServer:
    """``openssl s_server`` whose stdin stays open for commands."""

    def __init__(self, args) -> None:
        self.proc = subprocess.Popen(
            [OPENSSL, "s_server", "-accept", "127.0.0.1:0", "-tls1_3", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._out = _Drain(self.proc.stdout)
        found: list[int] = []

        def ready() -> bool:
            m = re.search(rb"^ACCEPT\s+\S*:(\d+)\s*$", self._out.data(), re.M)
            if m is None and self.proc.poll() is not None:
                raise RuntimeError(f"s_server exited early: {self._out.data()!r}")
            if m:
                found.append(int(m.group(1)))
            return m is not None

        wait_until(ready, T, "s_server ACCEPT")
        self.port = found[0]

    @property
    def out(self) -> str:
        return self._out.data().decode("latin-1")

    def command(self, line: str) -> None:
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def wait_for(self, text: str, count: int = 1) -> None:
        wait_until(lambda: self.out.count(text) >= count, T, f"{text!r} in s_server output")

    def stop(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        _stop(self.proc)


@pytest.fixture
def s_server(pki):
    started: list[InteractiveServer] = []
    leaf = pki.leaf("ec256")

    def start(*extra: str) -> InteractiveServer:
        srv = InteractiveServer(["-cert", leaf.cert_file, "-key", leaf.key_file, *extra])
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


class CLIClient:
    """``tcpls client`` with stdin kept open (so the connection stays up)."""

    def __init__(self, port: int, *args: str) -> None:
        from conftest import ROOT, cli_env, tcpls_cli

        self.proc = subprocess.Popen(
            [*tcpls_cli(), "client", "127.0.0.1", str(port), "--sni", "localhost", *args],
            cwd=str(ROOT), env=cli_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self._out, self._err = _Drain(self.proc.stdout), _Drain(self.proc.stderr)

    def send(self, data: bytes) -> None:
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # the client already exited (e.g. refused by the server); finish() reports it

    def finish(self) -> tuple[int, bytes, str]:
        rc = close_stdin_and_wait(self.proc, (self._out, self._err), T, drain_timeout=5)
        return rc, self._out.data(), self._err.data().decode("utf-8", "replace")


def _client_args(pki, *extra: str) -> list[str]:
    return ["-tls1_3", "-CAfile", pki.ca_file, "-servername", "localhost", *extra]


def _server(tcpls_cli_server, pki, *extra: str):
    leaf = pki.leaf("ec256")
    return tcpls_cli_server("--cert", leaf.cert_file, "--key", leaf.key_file, "-v", *extra)


# =========================================================== s_client -> tcpls server
def test_s_client_certificate_to_our_server(tcpls_cli_server, pki):
    srv = _server(tcpls_cli_server, pki, "--require-client-cert", "--cafile", pki.ca_file)
    r = run_s_client(
        srv.port, _client_args(pki, "-cert", pki.client.cert_file, "-key", pki.client.key_file), b"with cert\n",
        expect_text=b"with cert\n", close_stdin=False,
    )
    # §4.2.4: our CertificateRequest names the configured CA.
    assert "Acceptable client certificate CA names" in r.text and "CN = tcpls test CA" in r.text, r.text[-2000:]
    wait_until(lambda: "peer_subject=CN=client.test" in srv.stderr, T, "server log")


def test_s_client_without_certificate_gets_certificate_required(tcpls_cli_server, pki):
    srv = _server(tcpls_cli_server, pki, "--require-client-cert", "--cafile", pki.ca_file)
    r = run_s_client(srv.port, _client_args(pki), b"", close_stdin=False, expect_text=b"certificate required", timeout=10)
    assert "alert certificate required" in r.text, r.text[-2000:]
    wait_until(lambda: "certificate_required" in srv.stderr, T, "server log")


def test_s_client_optional_certificate(tcpls_cli_server, pki):
    srv = _server(tcpls_cli_server, pki, "--request-client-cert", "--cafile", pki.ca_file)
    r = run_s_client(srv.port, _client_args(pki), b"no cert\n", expect_text=b"no cert\n", close_stdin=False)
    assert b"no cert\n" in r.stdout
    wait_until(lambda: "peer_subject=none" in srv.stderr, T, "server log")


def test_s_client_post_handshake_auth_with_our_server(tcpls_cli_server, pki):
    srv = _server(tcpls_cli_server, pki, "--cafile", pki.ca_file, "--request-post-handshake-auth")
    r = run_s_client(
        srv.port,
        _client_args(pki, "-enable_pha", "-cert", pki.client.cert_file, "-key", pki.client.key_file, "-msg"),
        b"pha\n", expect_text=b"pha\n", close_stdin=False,
    )
    assert "<<< TLS 1.3, Handshake [length" in r.text and "CertificateRequest" in r.text, r.text[-3000:]
    wait_until(lambda: "client certificate (post-handshake): CN=client.test" in srv.stderr, T, "server log")


def test_our_server_key_update_and_s_client_key_update(tcpls_cli_server, pki):
    srv = _server(tcpls_cli_server, pki, "--key-update")
    proc = subprocess.Popen(
        [OPENSSL, "s_client", "-connect", f"127.0.0.1:{srv.port}", *_client_args(pki, "-msg")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    out = _Drain(proc.stdout)
    try:
        # s_client takes a command only when it is alone in one read of stdin.
        for line, wait in ((b"marker-one\n", b"\nmarker-one"), (b"K\n", b"KEYUPDATE"), (b"marker-two\n", b"\nmarker-two")):
            proc.stdin.write(line)
            proc.stdin.flush()
            wait_until(lambda: out.data().count(wait) >= 1, T, repr(wait))
    finally:
        proc.stdin.close()
        _stop(proc)
    text = out.data().decode("latin-1")
    # Ours (after the handshake), s_client's (K, update_requested) and our answer.
    assert text.count("<<< TLS 1.3, Handshake [length 0005], KeyUpdate") >= 2, text[-3000:]
    assert ">>> TLS 1.3, Handshake [length 0005], KeyUpdate" in text
    assert "KEYUPDATE" in text


# =========================================================== tcpls client -> s_server
def test_our_client_certificate_to_s_server(s_server, pki):
    srv = s_server("-Verify", "1", "-CAfile", pki.ca_file, "-naccept", "1")
    res = run_tcpls_cli(
        ["client", "127.0.0.1", str(srv.port), "--cafile", pki.ca_file, "--sni", "localhost",
         "--cert", pki.client.cert_file, "--key", pki.client.key_file],
        b"",
    )
    assert res.returncode == 0, res.stderr
    srv.wait_for("Client certificate")
    assert "subject=CN = client.test" in srv.out


def test_our_client_without_certificate_is_refused_by_s_server(s_server, pki):
    srv = s_server("-Verify", "1", "-CAfile", pki.ca_file, "-naccept", "1")
    cl = CLIClient(srv.port, "--cafile", pki.ca_file)
    time.sleep(0.5)
    cl.send(b"x\n")
    rc, _, err = cl.finish()
    assert rc != 0 and "certificate required" in err.replace("_", " "), err


def test_s_server_post_handshake_auth_and_key_updates_with_our_client(s_server, pki):
    srv = s_server("-verify", "1", "-CAfile", pki.ca_file, "-naccept", "1", "-msg")
    cl = CLIClient(srv.port, "--cafile", pki.ca_file, "--cert", pki.client.cert_file, "--key", pki.client.key_file)
    cl.send(b"marker-one\n")
    srv.wait_for("\nmarker-one")
    srv.command("c")  # post-handshake CertificateRequest
    srv.wait_for("CertificateRequest", 2)
    srv.wait_for("<<< TLS 1.3, Handshake [length 0024], Finished", 2)
    srv.command("k")
    srv.wait_for(">>> TLS 1.3, Handshake [length 0005], KeyUpdate")
    srv.command("K")
    srv.wait_for(">>> TLS 1.3, Handshake [length 0005], KeyUpdate", 2)
    cl.send(b"marker-two\n")
    srv.wait_for("\nmarker-two")
    srv.command("bye from server")
    wait_until(lambda: b"bye from server" in cl._out.data(), T, "client output")
    cl.finish()
    out_s = srv.out
    assert out_s.count("subject=CN = client.test") >= 1 and out_s.count("verify return:1") >= 4, out_s[-3000:]
    # k and K sent; our answer to K (update_not_requested) received.
    assert out_s.count(">>> TLS 1.3, Handshake [length 0005], KeyUpdate") >= 2, out_s[-3000:]
    assert "<<< TLS 1.3, Handshake [length 0005], KeyUpdate" in out_s, out_s[-3000:]


def test_our_client_key_update_to_s_server(s_server, pki):
    srv = s_server("-naccept", "1", "-msg")
    cl = CLIClient(srv.port, "--cafile", pki.ca_file, "--key-update")
    cl.send(b"marker-after-update\n")
    srv.wait_for("\nmarker-after-update")
    srv.command("bye")
    wait_until(lambda: b"bye" in cl._out.data(), T, "client output")
    cl.finish()
    out_s = srv.out
    # Ours (update_requested) and s_server's answer.
    assert "<<< TLS 1.3, Handshake [length 0005], KeyUpdate" in out_s, out_s[-3000:]
    assert ">>> TLS 1.3, Handshake [length 0005], KeyUpdate" in out_s, out_s[-3000:]


# =========================================================== OCSP stapling
def _ocsp_response(pki) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509 import ocsp

    leaf = pki.leaf("ec256").cert
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        ocsp.OCSPResponseBuilder()
        .add_response(
            cert=leaf, issuer=pki.ca_cert, algorithm=hashes.SHA256(), cert_status=ocsp.OCSPCertStatus.GOOD,
            this_update=now, next_update=now + datetime.timedelta(days=1), revocation_time=None, revocation_reason=None,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, pki.ca_cert)
    )
    resp = builder.sign(pki.ca_key, hashes.SHA256())
    assert isinstance(resp.public_bytes(serialization.Encoding.DER), bytes) and x509
    return resp.public_bytes(serialization.Encoding.DER)


def test_s_client_status_sees_our_stapled_response(tcpls_cli_server, pki, tmp_path):
    der = tmp_path / "ocsp.der"
    der.write_bytes(_ocsp_response(pki))
    srv = _server(tcpls_cli_server, pki, "--ocsp-response", str(der))
    r = run_s_client(srv.port, _client_args(pki, "-status"), b"ocsp\n", expect_text=b"ocsp\n", close_stdin=False)
    assert "OCSP Response Status: successful" in r.text and "Cert Status: good" in r.text, r.text[-3000:]
    r2 = run_s_client(srv.port, _client_args(pki), b"plain\n", expect_text=b"plain\n", close_stdin=False)
    assert "OCSP response" not in r2.text


def test_our_client_receives_s_server_status_file(s_server, pki, tmp_path):
    der = tmp_path / "ocsp.der"
    data = _ocsp_response(pki)
    der.write_bytes(data)
    srv = s_server("-status_file", str(der), "-naccept", "1")
    res = run_tcpls_cli(
        ["client", "127.0.0.1", str(srv.port), "--cafile", pki.ca_file, "--sni", "localhost", "--status", "-v"], b""
    )
    assert res.returncode == 0, res.stderr
    assert f"ocsp_response: {len(data)} bytes".encode() in res.stderr, res.stderr
