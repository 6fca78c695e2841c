"""Interoperability with real TLS 1.3 peers over loopback.

Peers: the OpenSSL CLI (``openssl s_server`` / ``s_client``) and Python's
``ssl`` module (also OpenSSL, but a different driver). Our side: the blocking
API (``tcpls.sync``) in-process and the ``tcpls`` CLI as a subprocess.

Every exchange checks the application bytes exactly, in both directions.
"""

from __future__ import annotations

import os
import re
import threading
import zlib
from typing import Optional

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from conftest import (
    DEFAULT_TIMEOUT,
    KEY_TYPES,
    RecordingProxy,
    TcplsCLIServer,
    exchange,
    needs_openssl,
    py_server_context,
    py_ssl_exchange,
    run_s_client,
    run_tcpls_cli,
)
from tcpls import sync
from tcpls.errors import LocalProtocolError, RemoteAlert
from tcpls.tls.config import TLSConfig, parse_cipher_suites, parse_groups
from tcpls.tls.enums import CipherSuite, NamedGroup

SUITES = ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"]
GROUPS = ["x25519", "secp256r1", "secp384r1"]
OPENSSL_GROUP = {"x25519": "X25519", "secp256r1": "P-256", "secp384r1": "P-384"}
T = DEFAULT_TIMEOUT


# ------------------------------------------------------------------ helpers
def client_config(
    pki,
    *,
    suites: Optional[list[str]] = None,
    groups: Optional[list[str]] = None,
    key_share_groups: Optional[list[str]] = None,
    alpn: tuple[str, ...] = (),
    cafile: Optional[str] = None,
    keylog_file: Optional[str] = None,
) -> TLSConfig:
    cfg = TLSConfig()
    cfg.load_verify_locations(cafile or pki.ca_file)
    if suites:
        cfg.cipher_suites = parse_cipher_suites(suites)
    if groups:
        cfg.groups = parse_groups(groups)
    if key_share_groups:
        cfg.key_share_groups = parse_groups(key_share_groups)
    cfg.alpn_protocols = list(alpn)
    cfg.keylog_file = keylog_file
    return cfg


def server_config(pki, key_type: str = "ec256", *, groups: Optional[list[str]] = None, alpn: tuple[str, ...] = ()) -> TLSConfig:
    cfg = TLSConfig()
    leaf = pki.leaf(key_type)
    cfg.load_cert_chain(leaf.cert_file, leaf.key_file)
    if groups:
        cfg.groups = parse_groups(groups)
    cfg.alpn_protocols = list(alpn)
    return cfg


def rev_lines(n_bytes: int, seed: int = 0, max_line: int = 1000) -> list[bytes]:
    """Random printable lines (no CR/LF) totalling about ``n_bytes``, for ``s_server -rev``."""
    import random

    rnd = random.Random(seed)
    alphabet = bytes(range(0x21, 0x7F))
    lines, total = [], 0
    while total < n_bytes:
        k = rnd.randint(1, max_line)
        line = bytes(rnd.choice(alphabet) for _ in range(k))
        if line.startswith(b"CLOSE"):
            continue
        lines.append(line)
        total += k + 1
    return lines


def recv_exactly(sock, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        d = sock.recv(min(n - len(buf), 262144))
        if not d:
            raise EOFError(f"peer closed after {len(buf)} of {n} bytes")
        buf += d
    return bytes(buf)


def recv_all(sock) -> bytes:
    """Read until the peer's close_notify (recv returns b"")."""
    buf = bytearray()
    while True:
        d = sock.recv(262144)
        if not d:
            return bytes(buf)
        buf += d


def rev_roundtrip(sock, lines: list[bytes]) -> None:
    """Talk to ``s_server -rev``: every line comes back reversed; then half-close."""
    payload = b"".join(line + b"\n" for line in lines)
    expected = b"".join(line[::-1] + b"\n" for line in lines)
    got = exchange(sock.sendall, sock.recv, payload)
    assert got == expected
    sock.shutdown_write()  # our close_notify: s_server answers with its own
    assert sock.recv(65536) == b""


def start_rev_server(openssl_server, pki, key_type="ec256", *extra):
    leaf = pki.leaf(key_type)
    return openssl_server("-tls1_3", "-naccept", "1", "-rev", "-cert", leaf.cert_file, "-key", leaf.key_file, *extra)


class ThreadServer:
    """Our blocking server (``tcpls.sync.create_server``) in a thread: accepts
    ``connections`` clients, echoes each until close_notify, records what it saw."""

    def __init__(self, config: TLSConfig, connections: int = 1) -> None:
        self.listener = sync.create_server(("127.0.0.1", 0), config)
        self.listener.settimeout(T)
        self.port = self.listener.getsockname()[1]
        self.address = ("127.0.0.1", self.port)
        self.sessions: list[dict] = []
        self.thread = threading.Thread(target=self._run, args=(connections,), daemon=True)
        self.thread.start()

    def _run(self, connections: int) -> None:
        for _ in range(connections):
            info: dict = {}
            self.sessions.append(info)
            try:
                sock, _ = self.listener.accept()
            except OSError as exc:
                info["error"] = exc
                return
            try:
                sock.settimeout(T)
                sock.do_handshake()
                info.update(
                    version=sock.version,
                    cipher_suite=sock.cipher_suite,
                    group=sock.group,
                    alpn=sock.alpn_protocol,
                    server_name=sock.server_name,
                    hello_retry=sock.hello_retry,
                )
                n = 0
                while True:
                    d = sock.recv(262144)
                    if not d:
                        break
                    n += len(d)
                    sock.sendall(d)
                info["received"] = n
                info["clean_close"] = True
            except Exception as exc:  # noqa: BLE001 -- reported to the test
                info["error"] = exc
            finally:
                sock.close()

    def join(self) -> list[dict]:
        self.thread.join(T)
        assert not self.thread.is_alive(), "tcpls server thread did not finish"
        self.listener.close()
        return self.sessions


@pytest.fixture
def thread_server():
    servers: list[ThreadServer] = []

    def start(config: TLSConfig, connections: int = 1) -> ThreadServer:
        srv = ThreadServer(config, connections)
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.listener.close()


# =========================================================== our client ↔ openssl s_server
@needs_openssl
@pytest.mark.parametrize("key_type", KEY_TYPES)
@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("suite", SUITES)
def test_client_vs_openssl_matrix(openssl_server, pki, suite, group, key_type):
    srv = start_rev_server(openssl_server, pki, key_type, "-ciphersuites", suite, "-groups", OPENSSL_GROUP[group])
    cfg = client_config(pki, suites=[suite], groups=[group])
    with sync.connect(srv.address, cfg, server_name="localhost", timeout=T) as sock:
        assert sock.version == "TLSv1.3"
        assert sock.cipher_suite == CipherSuite[suite]
        assert sock.group == NamedGroup[group]
        assert not sock.hello_retry
        rev_roundtrip(sock, rev_lines(20_000, seed=zlib.crc32(f"{suite}{group}{key_type}".encode())))
    assert srv.wait(T) == 0, srv.stderr
    assert f"Ciphersuite: {suite}" in srv.stderr


@needs_openssl
def test_client_vs_openssl_bulk_both_directions(openssl_server, pki, tmp_path):
    # client -> server: 1 MiB of lines through -rev
    srv = start_rev_server(openssl_server, pki)
    with sync.connect(srv.address, client_config(pki), server_name="localhost", timeout=T) as sock:
        rev_roundtrip(sock, rev_lines(1 << 20, seed=7))
    assert srv.wait(T) == 0
    # server -> client: a 1 MiB random binary file through -WWW
    blob = os.urandom((1 << 20) + 123)
    (tmp_path / "blob.bin").write_bytes(blob)
    leaf = pki.leaf("ec256")
    srv = openssl_server(
        "-tls1_3", "-naccept", "1", "-WWW", "-http_server_binmode", "-cert", leaf.cert_file, "-key", leaf.key_file, cwd=str(tmp_path)
    )
    with sync.connect(srv.address, client_config(pki), server_name="localhost", timeout=T) as sock:
        sock.sendall(b"GET /blob.bin HTTP/1.0\r\n\r\n")
        response = recv_all(sock)  # s_server ends the response with close_notify
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200"), head
    assert body == blob


@needs_openssl
def test_client_ip_address_server_name(openssl_server, pki):
    """Connecting by IP: no SNI is sent, the IP SAN is checked."""
    srv = start_rev_server(openssl_server, pki)
    with sync.connect(srv.address, client_config(pki), timeout=T) as sock:
        rev_roundtrip(sock, [b"by ip address"])


# =========================================================== our client ↔ Python ssl server
@pytest.mark.parametrize("key_type", KEY_TYPES)
@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("suite", SUITES)
def test_client_vs_python_ssl_matrix(py_ssl_server, pki, suite, group, key_type):
    leaf = pki.leaf(key_type)
    srv = py_ssl_server(py_server_context(leaf.cert_file, leaf.key_file))
    data = os.urandom(100_000)
    cfg = client_config(pki, suites=[suite], groups=[group])
    with sync.connect(srv.address, cfg, server_name="localhost", timeout=T) as sock:
        assert sock.cipher_suite == CipherSuite[suite]
        assert sock.group == NamedGroup[group]
        assert exchange(sock.sendall, sock.recv, data) == data
        sock.shutdown_write()
        assert sock.recv(100) == b""
    srv.join()
    sess = srv.sessions[0]
    assert sess.error is None, sess.error
    assert sess.cipher[0] == suite and sess.version == "TLSv1.3"
    assert sess.sni == "localhost"
    assert sess.received == len(data) and sess.clean_close


def test_client_vs_python_ssl_bulk(py_ssl_server, pki):
    leaf = pki.leaf("ec256")
    srv = py_ssl_server(py_server_context(leaf.cert_file, leaf.key_file))
    data = os.urandom(3 * (1 << 20) + 17)
    with sync.connect(srv.address, client_config(pki), server_name="localhost", timeout=T) as sock:
        assert exchange(sock.sendall, sock.recv, data) == data
        sock.shutdown_write()
        assert sock.recv(100) == b""
    srv.join()
    assert srv.sessions[0].error is None and srv.sessions[0].received == len(data)


# =========================================================== our server (CLI) ↔ openssl s_client / Python ssl
@pytest.fixture(scope="module")
def cli_echo_servers(pki):
    """One ``tcpls server --echo`` subprocess per certificate key type, shared by the module."""
    servers: dict[str, TcplsCLIServer] = {}

    def get(key_type: str = "ec256") -> TcplsCLIServer:
        if key_type not in servers:
            leaf = pki.leaf(key_type)
            servers[key_type] = TcplsCLIServer(["--cert", leaf.cert_file, "--key", leaf.key_file, "--echo"])
        return servers[key_type]

    yield get
    for srv in servers.values():
        srv.stop()


def s_client_echo(port: int, pki, data: bytes, *args: str):
    res = run_s_client(
        port,
        ["-tls1_3", "-quiet", "-CAfile", pki.ca_file, "-servername", "localhost", "-verify_return_error", *args],
        data,
        expect_len=len(data),
        close_stdin=False,
        timeout=60,
    )
    assert res.stdout == data, f"echo mismatch ({len(res.stdout)} of {len(data)} bytes); s_client stderr: {res.stderr[-2000:]!r}"
    return res


@needs_openssl
@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("suite", SUITES)
def test_cli_server_vs_s_client_suites_groups(cli_echo_servers, pki, suite, group):
    srv = cli_echo_servers("ec256")
    s_client_echo(srv.port, pki, os.urandom(50_000), "-ciphersuites", suite, "-groups", OPENSSL_GROUP[group])


@needs_openssl
@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_cli_server_vs_s_client_key_types(cli_echo_servers, pki, key_type):
    srv = cli_echo_servers(key_type)
    s_client_echo(srv.port, pki, os.urandom(20_000))


@needs_openssl
def test_cli_server_vs_s_client_bulk(cli_echo_servers, pki):
    srv = cli_echo_servers("ec256")
    s_client_echo(srv.port, pki, os.urandom((1 << 20) + 1000))


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_cli_server_vs_python_ssl(cli_echo_servers, pki, key_type):
    srv = cli_echo_servers(key_type)
    data = os.urandom((1 << 20) + 5 if key_type == "ec256" else 30_000)
    echo, info = py_ssl_exchange(srv.port, data, pki.ca_file)
    assert info["version"] == "TLSv1.3"
    assert echo == data
    assert info["clean_close"], info.get("close_error")


# =========================================================== our in-process server ↔ openssl s_client
@needs_openssl
@pytest.mark.parametrize("suite", SUITES)
def test_server_vs_s_client_suites(thread_server, pki, suite):
    """Our in-process server negotiates the one suite s_client offers and echoes exactly."""
    srv = thread_server(server_config(pki))
    data = os.urandom(30_000)
    res = run_s_client(
        srv.port,
        ["-tls1_3", "-quiet", "-ciphersuites", suite, "-CAfile", pki.ca_file, "-servername", "localhost", "-verify_return_error"],
        data,
        expect_len=len(data),
        close_stdin=False,
    )
    assert res.stdout == data
    # s_client is terminated once the echo arrived (it cannot half-close and
    # keep reading), so the server's session ends with a truncation error.
    (sess,) = srv.join()
    assert sess["version"] == "TLSv1.3"
    assert sess["cipher_suite"] == CipherSuite[suite]
    assert sess["server_name"] == "localhost"
    assert sess["hello_retry"] is False


# =========================================================== HelloRetryRequest
@needs_openssl
def test_hrr_our_client(openssl_server, pki):
    """We send only a P-256 share; the server accepts only X25519 -> HRR."""
    srv = start_rev_server(openssl_server, pki, "ec256", "-groups", "X25519", "-alpn", "hrr-test")
    cfg = client_config(pki, groups=["secp256r1", "x25519"], key_share_groups=["secp256r1"], alpn=("hrr-test",))
    with sync.connect(srv.address, cfg, server_name="localhost", timeout=T) as sock:
        assert sock.hello_retry is True
        assert sock.group == NamedGroup.x25519
        assert sock.alpn_protocol == "hrr-test"
        rev_roundtrip(sock, rev_lines(5000, seed=3))
    assert srv.wait(T) == 0
    # s_server prints the client's ALPN list once per ClientHello: two hellos = HRR.
    assert (srv.stdout + srv.stderr).count("ALPN protocols advertised by the client") == 2


def _s_client_p256_first(port: int, pki, data: bytes):
    """s_client with -msg that sends a key share for P-256 only (X25519 listed second)."""
    return run_s_client(
        port,
        ["-tls1_3", "-msg", "-ign_eof", "-nocommands", "-groups", "P-256:X25519", "-CAfile", pki.ca_file,
         "-servername", "localhost", "-verify_return_error"],
        data,
        expect_text=data,
        close_stdin=False,
    )


@needs_openssl
def test_hrr_our_server(thread_server, pki):
    """s_client shares only its first group (P-256); we accept only x25519 -> HRR."""
    srv = thread_server(server_config(pki, groups=["x25519"]))
    data = b"after hello retry\n"
    res = _s_client_p256_first(srv.port, pki, data)
    assert data in res.stdout, res.text[-3000:]
    out = res.stdout.decode("latin-1")
    assert len(re.findall(r">>> .*ClientHello", out)) == 2, "s_client should send a second ClientHello"
    assert "cf 21 ad 74 e5 9a 61 11" in out.lower(), "HelloRetryRequest random not seen on the wire"
    (sess,) = srv.join()
    assert sess["hello_retry"] is True
    assert sess["group"] == NamedGroup.x25519


@needs_openssl
def test_hrr_cookie_our_server(thread_server, pki):
    """With hello_retry_cookie the HRR carries a cookie that s_client echoes (RFC 9846 §4.2.2)."""
    cfg = server_config(pki, groups=["x25519"])
    cfg.hello_retry_cookie = True
    srv = thread_server(cfg)
    data = b"after a cookie\n"
    res = _s_client_p256_first(srv.port, pki, data)
    assert data in res.stdout, res.text[-3000:]
    out = res.stdout.decode("latin-1").lower()
    hellos = re.split(r">>> .*clienthello", out)
    assert len(hellos) == 3, "s_client should send a second ClientHello"
    # extension type 44 (cookie) = "00 2c" appears in the second ClientHello.
    assert "00 2c" in hellos[2].split("<<<")[0]
    (sess,) = srv.join()
    assert sess["hello_retry"] is True


def test_hrr_python_ssl_client(thread_server, pki):
    """Python ssl offers an x25519 share; we accept only secp384r1 -> HRR."""
    srv = thread_server(server_config(pki, groups=["secp384r1"]))
    data = os.urandom(10_000)
    echo, info = py_ssl_exchange(srv.port, data, pki.ca_file)
    assert echo == data and info["clean_close"]
    (sess,) = srv.join()
    assert sess["hello_retry"] is True and sess["group"] == NamedGroup.secp384r1
    assert sess["received"] == len(data)


# =========================================================== ALPN and SNI
@needs_openssl
def test_alpn_our_client_openssl_server(openssl_server, pki):
    srv = start_rev_server(openssl_server, pki, "ec256", "-alpn", "http/1.1")
    cfg = client_config(pki, alpn=("h2", "http/1.1"))
    with sync.connect(srv.address, cfg, server_name="localhost", timeout=T) as sock:
        assert sock.alpn_protocol == "http/1.1"
        rev_roundtrip(sock, [b"alpn"])
    assert srv.wait(T) == 0
    assert "ALPN protocols selected: http/1.1" in srv.stdout + srv.stderr


@needs_openssl
def test_alpn_none_when_server_has_no_alpn(openssl_server, pki):
    srv = start_rev_server(openssl_server, pki)
    with sync.connect(srv.address, client_config(pki, alpn=("h2",)), server_name="localhost", timeout=T) as sock:
        assert sock.alpn_protocol is None
        rev_roundtrip(sock, [b"no alpn"])


def test_alpn_our_client_python_server(py_ssl_server, pki):
    leaf = pki.leaf("ec256")
    srv = py_ssl_server(py_server_context(leaf.cert_file, leaf.key_file, alpn=["h2"]))
    with sync.connect(srv.address, client_config(pki, alpn=("http/1.1", "h2")), server_name="localhost", timeout=T) as sock:
        assert sock.alpn_protocol == "h2"
        assert exchange(sock.sendall, sock.recv, b"x" * 1000) == b"x" * 1000
        sock.shutdown_write()
        assert sock.recv(10) == b""
    srv.join()
    assert srv.sessions[0].alpn == "h2"


@needs_openssl
def test_alpn_and_sni_our_server_s_client(thread_server, pki):
    srv = thread_server(server_config(pki, alpn=("http/1.1", "h2")))
    res = run_s_client(
        srv.port,
        ["-tls1_3", "-alpn", "h2,http/1.1", "-CAfile", pki.ca_file, "-servername", "localhost", "-verify_return_error"],
        b"",  # stdin EOF right away: s_client sends close_notify after the handshake
    )
    assert "ALPN protocol: http/1.1" in res.text, res.text[-3000:]  # server preference wins
    assert "Verify return code: 0 (ok)" in res.text
    (sess,) = srv.join()
    assert sess.get("error") is None, sess.get("error")
    assert sess["alpn"] == "http/1.1"
    assert sess["server_name"] == "localhost"
    assert sess["version"] == "TLSv1.3"


def test_alpn_and_sni_our_server_python_client(thread_server, pki):
    srv = thread_server(server_config(pki, alpn=("h2",)))
    echo, info = py_ssl_exchange(srv.port, b"hello", pki.ca_file, alpn=("h2", "http/1.1"))
    assert echo == b"hello" and info["alpn"] == "h2"
    (sess,) = srv.join()
    assert sess["alpn"] == "h2" and sess["server_name"] == "localhost"


@needs_openssl
def test_no_sni_from_s_client(thread_server, pki):
    srv = thread_server(server_config(pki))
    res = run_s_client(srv.port, ["-tls1_3", "-noservername", "-CAfile", pki.ca_file, "-verify_return_error"], b"")
    assert "Verify return code: 0 (ok)" in res.text, res.text[-3000:]
    (sess,) = srv.join()
    assert sess["server_name"] is None


@needs_openssl
def test_alpn_mismatch_our_server_sends_no_application_protocol(thread_server, pki):
    """RFC 7301 §3.2: no protocol in common -> fatal no_application_protocol."""
    srv = thread_server(server_config(pki, alpn=("http/1.1",)))
    res = run_s_client(srv.port, ["-tls1_3", "-alpn", "h2", "-CAfile", pki.ca_file, "-servername", "localhost"], b"")
    assert res.returncode != 0
    assert "no application protocol" in res.text, res.text[-3000:]
    (sess,) = srv.join()
    assert isinstance(sess.get("error"), LocalProtocolError), sess
    assert sess["error"].alert_name == "no_application_protocol"


# =========================================================== alerts
@needs_openssl
def test_our_client_rejects_untrusted_server(openssl_server, pki):
    leaf = pki.untrusted
    srv = openssl_server("-tls1_3", "-naccept", "1", "-rev", "-cert", leaf.cert_file, "-key", leaf.key_file)
    with pytest.raises(LocalProtocolError) as ei:
        sync.connect(srv.address, client_config(pki), server_name="localhost", timeout=T)
    # RFC 8446 §6.2: unknown_ca -- the chain does not lead to a trust anchor.
    assert ei.value.alert_name == "unknown_ca"
    srv.wait(T)
    assert "alert unknown ca" in (srv.stdout + srv.stderr).lower(), srv.stderr[-2000:]


@needs_openssl
def test_our_client_rejects_wrong_name(openssl_server, pki):
    srv = start_rev_server(openssl_server, pki)
    with pytest.raises(LocalProtocolError) as ei:
        sync.connect(srv.address, client_config(pki), server_name="not-the-server.example", timeout=T)
    assert ei.value.alert_name in ("bad_certificate", "certificate_unknown")
    srv.wait(T)
    assert "alert" in srv.stderr.lower()


@needs_openssl
def test_cli_client_reports_alert(openssl_server, pki):
    leaf = pki.untrusted
    srv = openssl_server("-tls1_3", "-naccept", "1", "-rev", "-cert", leaf.cert_file, "-key", leaf.key_file)
    proc = run_tcpls_cli(["client", "127.0.0.1", str(srv.port), "--cafile", pki.ca_file, "--sni", "localhost"], b"hi\n")
    assert proc.returncode != 0
    err = proc.stderr.decode().strip()
    assert len(err.splitlines()) == 1, err
    assert "unknown_ca" in err


@needs_openssl
def test_cli_client_roundtrip_openssl(openssl_server, pki):
    srv = start_rev_server(openssl_server, pki)
    lines = rev_lines(50_000, seed=11)
    proc = run_tcpls_cli(
        ["client", "127.0.0.1", str(srv.port), "--cafile", pki.ca_file, "--sni", "localhost"],
        b"".join(line + b"\n" for line in lines),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"".join(line[::-1] + b"\n" for line in lines)


@needs_openssl
def test_s_client_bogus_ca_alerts_our_server(thread_server, pki):
    srv = thread_server(server_config(pki))
    res = run_s_client(
        srv.port, ["-tls1_3", "-CAfile", pki.bogus_ca_file, "-servername", "localhost", "-verify_return_error"], b""
    )
    assert res.returncode != 0
    (sess,) = srv.join()
    err = sess.get("error")
    assert isinstance(err, RemoteAlert), sess
    assert err.alert_name == "unknown_ca"


@needs_openssl
def test_cli_server_survives_failed_handshake(cli_echo_servers, pki):
    srv = cli_echo_servers("ec256")
    res = run_s_client(srv.port, ["-tls1_3", "-CAfile", pki.bogus_ca_file, "-servername", "localhost", "-verify_return_error"], b"")
    assert res.returncode != 0
    s_client_echo(srv.port, pki, b"still serving\n")


# =========================================================== key log
def _hkdf_expand_label(h: hashes.HashAlgorithm, secret: bytes, label: bytes, length: int) -> bytes:
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + b"\x00"
    return HKDFExpand(h, length, info).derive(secret)


_SUITE_CRYPTO = {
    0x1301: (hashes.SHA256(), AESGCM, 16),
    0x1302: (hashes.SHA384(), AESGCM, 32),
    0x1303: (hashes.SHA256(), ChaCha20Poly1305, 32),
}


class _RecordDecryptor:
    def __init__(self, suite: int, secret: bytes) -> None:
        h, aead, key_len = _SUITE_CRYPTO[suite]
        self.aead = aead(_hkdf_expand_label(h, secret, b"key", key_len))
        self.iv = _hkdf_expand_label(h, secret, b"iv", 12)
        self.seq = 0

    def open(self, header: bytes, body: bytes) -> tuple[int, bytes]:
        nonce = bytes(a ^ b for a, b in zip(self.iv, self.seq.to_bytes(12, "big")))
        self.seq += 1
        inner = self.aead.decrypt(nonce, body, header).rstrip(b"\x00")
        return inner[-1], inner[:-1]


def _records(stream: bytes):
    pos = 0
    while pos + 5 <= len(stream):
        length = int.from_bytes(stream[pos + 3 : pos + 5], "big")
        yield stream[pos], stream[pos : pos + 5], stream[pos + 5 : pos + 5 + length]
        pos += 5 + length
    assert pos == len(stream), "trailing partial record in capture"


def _decrypt_direction(stream: bytes, suite: int, hs_secret: bytes, app_secret: bytes):
    """Decrypt one direction of a captured TLS 1.3 connection.

    Returns (plaintext handshake messages before the first encrypted record,
    encrypted handshake bytes, application data, alerts)."""
    clear_hs, enc_hs, app, alerts = bytearray(), bytearray(), bytearray(), []
    dec = _RecordDecryptor(suite, hs_secret)
    in_app = False
    for ctype, header, body in _records(stream):
        if ctype == 20:  # middlebox-compatibility ChangeCipherSpec
            continue
        if ctype == 22:
            clear_hs += body
            continue
        assert ctype == 23, f"unexpected outer content type {ctype}"
        inner_type, content = dec.open(header, body)
        if inner_type == 22 and not in_app:
            enc_hs += content
            # switch keys after our Finished (handshake type 20) is complete
            pos = 0
            while pos + 4 <= len(enc_hs):
                mlen = int.from_bytes(enc_hs[pos + 1 : pos + 4], "big")
                if enc_hs[pos] == 20 and pos + 4 + mlen == len(enc_hs):
                    dec, in_app = _RecordDecryptor(suite, app_secret), True
                pos += 4 + mlen
        elif inner_type == 23:
            assert in_app
            app += content
        elif inner_type == 21:
            alerts.append(bytes(content))
    return bytes(clear_hs), bytes(enc_hs), bytes(app), alerts


def _parse_keylog(text: str) -> dict[tuple[str, str], str]:
    out = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        label, client_random, secret = line.split(" ")
        assert re.fullmatch(r"[0-9a-f]{64}", client_random), line
        assert re.fullmatch(r"[0-9a-f]{64}|[0-9a-f]{96}", secret), line
        out[(label, client_random)] = secret
    return out


@needs_openssl
@pytest.mark.parametrize("suite", SUITES)
def test_keylog_decrypts_captured_traffic(openssl_server, pki, tmp_path, suite):
    ours, theirs = tmp_path / "ours.keylog", tmp_path / "openssl.keylog"
    srv = start_rev_server(openssl_server, pki, "ec256", "-ciphersuites", suite, "-keylogfile", str(theirs))
    proxy = RecordingProxy(srv.address)
    lines = rev_lines(40_000, seed=5)
    payload = b"".join(line + b"\n" for line in lines)
    cfg = client_config(pki, suites=[suite], keylog_file=str(ours))
    with sync.connect(proxy.address, cfg, server_name="localhost", timeout=T) as sock:
        received = exchange(sock.sendall, sock.recv, payload)
        sock.shutdown_write()
        assert sock.recv(10) == b""
    assert received == b"".join(line[::-1] + b"\n" for line in lines)
    srv.wait(T)
    proxy.join()
    assert proxy.error is None, proxy.error
    c2s, s2c = bytes(proxy.client_to_server), bytes(proxy.server_to_client)

    keys = _parse_keylog(ours.read_text())
    # the client_random is the one in our ClientHello on the wire
    assert c2s[0] == 22 and c2s[5] == 1
    client_random = c2s[11:43].hex()
    labels = {label for (label, cr) in keys if cr == client_random}
    assert {"CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_HANDSHAKE_TRAFFIC_SECRET", "CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0"} <= labels

    # OpenSSL derived the same secrets
    theirs_keys = _parse_keylog(theirs.read_text())
    for label in ("CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_HANDSHAKE_TRAFFIC_SECRET", "CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0"):
        assert keys[(label, client_random)] == theirs_keys[(label, client_random)], label

    def secret(label: str) -> bytes:
        return bytes.fromhex(keys[(label, client_random)])

    # decrypt both directions with our logged secrets
    sh = next(body for ctype, _, body in _records(s2c) if ctype == 22)
    sid_len = sh[4 + 2 + 32]
    negotiated = int.from_bytes(sh[4 + 2 + 32 + 1 + sid_len : 4 + 2 + 32 + 1 + sid_len + 2], "big")
    assert negotiated == CipherSuite[suite]
    _, s_hs, s_app, s_alerts = _decrypt_direction(s2c, negotiated, secret("SERVER_HANDSHAKE_TRAFFIC_SECRET"), secret("SERVER_TRAFFIC_SECRET_0"))
    _, c_hs, c_app, c_alerts = _decrypt_direction(c2s, negotiated, secret("CLIENT_HANDSHAKE_TRAFFIC_SECRET"), secret("CLIENT_TRAFFIC_SECRET_0"))
    assert s_hs[0] == 8  # EncryptedExtensions first
    assert c_hs[0] == 20  # our Finished
    assert s_app == received
    assert c_app == payload
    assert b"\x01\x00" in c_alerts and b"\x01\x00" in s_alerts  # close_notify both ways


def test_keylog_env_var_python_server(py_ssl_server, pki, tmp_path, monkeypatch):
    """SSLKEYLOGFILE is honoured when keylog_file is not set."""
    path = tmp_path / "env.keylog"
    monkeypatch.setenv("SSLKEYLOGFILE", str(path))
    leaf = pki.leaf("ec256")
    srv = py_ssl_server(py_server_context(leaf.cert_file, leaf.key_file))
    with sync.connect(srv.address, client_config(pki), server_name="localhost", timeout=T) as sock:
        assert exchange(sock.sendall, sock.recv, b"k" * 100) == b"k" * 100
        sock.shutdown_write()
        assert sock.recv(1) == b""
    srv.join()
    labels = {label for (label, _) in _parse_keylog(path.read_text())}
    assert "CLIENT_TRAFFIC_SECRET_0" in labels and "SERVER_TRAFFIC_SECRET_0" in labels


# =========================================================== client certificates
@needs_openssl
def test_client_certificate_to_openssl(openssl_server, pki):
    srv = start_rev_server(openssl_server, pki, "ec256", "-Verify", "1", "-CAfile", pki.ca_file, "-verify_return_error")
    cfg = client_config(pki)
    cfg.load_cert_chain(pki.client.cert_file, pki.client.key_file)
    with sync.connect(srv.address, cfg, server_name="localhost", timeout=T) as sock:
        rev_roundtrip(sock, [b"mutual auth"])
    assert srv.wait(T) == 0
    assert "client.test" in srv.stdout + srv.stderr  # s_server prints the client's subject


@needs_openssl
def test_client_certificate_from_s_client(thread_server, pki):
    cfg = server_config(pki)
    cfg.request_client_certificate = cfg.require_client_certificate = True
    cfg.load_verify_locations(pki.ca_file)
    srv = thread_server(cfg)
    data = b"client cert\n"
    res = run_s_client(
        srv.port,
        ["-tls1_3", "-quiet", "-cert", pki.client.cert_file, "-key", pki.client.key_file, "-CAfile", pki.ca_file,
         "-servername", "localhost", "-verify_return_error"],
        data,
        expect_len=len(data),
        close_stdin=False,
    )
    assert res.stdout == data
    srv.join()


@needs_openssl
def test_required_client_certificate_missing(thread_server, pki):
    cfg = server_config(pki)
    cfg.request_client_certificate = cfg.require_client_certificate = True
    cfg.load_verify_locations(pki.ca_file)
    srv = thread_server(cfg)
    # -ign_eof: keep reading after stdin ends, so s_client sees our alert
    res = run_s_client(
        srv.port, ["-tls1_3", "-ign_eof", "-nocommands", "-CAfile", pki.ca_file, "-servername", "localhost"], b"x\n", close_stdin=False
    )
    (sess,) = srv.join()
    assert isinstance(sess.get("error"), LocalProtocolError), sess
    assert sess["error"].alert_name == "certificate_required"  # RFC 8446 §4.4.2.4
    assert "certificate required" in res.text.lower(), res.text[-2000:]
