"""TLS 1.3 interop with Java's JSSE (OpenJDK 17), both roles.

``tests/peers/java/Peer.java`` is compiled once per session into a temporary
directory; each JVM run batches several connections (JVM start-up costs
0.4-1 s) and prints one ``RESULT`` line per connection. Our side runs the
sans-IO engine over a non-blocking socket here in the test process
(:class:`Ours`), so every test sees our engine's events (KeyUpdated,
session_resumed, alerts) as well as what JSSE reports.

JSSE has no 0-RTT, no external PSK, no exporter API and no post-handshake
client authentication (it never offers post_handshake_auth, and its server
never sends a post-handshake CertificateRequest); JSSE keeps a resumed
session's creation time, which is how its side shows a resumption.
"""

from __future__ import annotations

import os
import re
import select
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from conftest import _Drain, _stop, require_peer, wait_until
from tcpls import sync as tcpls_sync
from tcpls.errors import LocalProtocolError, ProtocolError, RemoteAlert, UsageError
from tcpls.tls import events as ev
from tcpls.tls.config import TLSConfig, load_certificate_files, parse_cipher_suites, parse_groups
from tcpls.tls.connection import TLSConnection
from tcpls.tls.enums import AlertDescription, NamedGroup, SignatureScheme
from tcpls.tls.session import MemoryStore

T = 15.0
PEER_SRC = Path(__file__).resolve().parent / "peers" / "java" / "Peer.java"
SUITES = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256")
GROUPS = ("x25519", "x448", "secp256r1", "secp384r1", "secp521r1", "ffdhe2048", "ffdhe3072", "ffdhe4096")
KEY_TYPES = ("ec256", "ec384", "rsa2048", "ed25519")


def pattern(n: int) -> bytes:
    """What Peer.java sends: byte i = (i*7+3) & 0xff."""
    return bytes((i * 7 + 3) & 0xFF for i in range(256)) * (n // 256) + bytes((i * 7 + 3) & 0xFF for i in range(n % 256))


# ------------------------------------------------------------------ JSSE side
@pytest.fixture(scope="session")
def java(tmp_path_factory):
    javac, java_bin = require_peer("javac", "java")
    out = tmp_path_factory.mktemp("javapeer")
    subprocess.run([javac, "-d", str(out), str(PEER_SRC)], check=True, capture_output=True, timeout=120)
    return java_bin, str(out)


# Faster JVM start-up (C1 only, serial GC): every run is short.
JVM_FLAGS = ["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Xshare:auto"]


def _props(props: dict[str, str]) -> list[str]:
    base = {"jdk.tls.client.protocols": "TLSv1.3", "jdk.tls.server.protocols": "TLSv1.3"}
    base.update(props)
    return [*JVM_FLAGS, *(f"-D{k}={v}" for k, v in base.items())]


def _parse(text: str) -> list[dict[str, str]]:
    results = []
    for line in text.splitlines():
        if not line.startswith("RESULT "):
            continue
        if " ok=0 err=" in line:
            head, err = line.split(" err=", 1)
            d = dict(kv.split("=", 1) for kv in head.split()[1:])
            d["err"] = err
        else:
            d = dict(kv.split("=", 1) for kv in line.split()[1:])
        results.append(d)
    return results


def java_client(java, port: int, conns: list[dict], props: Optional[dict] = None, timeout: float = 40.0) -> list[dict]:
    """Run Peer client; ``conns[0]`` holds the shared options. One result per connection."""
    java_bin, cp = java
    args: list[str] = []
    for i, c in enumerate(conns):
        if i:
            args.append(";")
        if i == 0:
            c = {"host": "127.0.0.1", "port": port, **c}
        args += [f"{k}={v}" for k, v in c.items()]
    p = subprocess.run(
        [java_bin, *_props(props or {}), "-cp", cp, "Peer", "client", *args],
        capture_output=True, text=True, timeout=timeout,
    )
    results = _parse(p.stdout)
    assert len(results) == len(conns), f"java client: rc={p.returncode} out={p.stdout!r} err={p.stderr!r}"
    return results


class JavaServer:
    def __init__(self, java, opts: dict, props: Optional[dict] = None) -> None:
        java_bin, cp = java
        self.count = int(opts.get("count", 1))
        self.proc = subprocess.Popen(
            [java_bin, *_props(props or {}), "-cp", cp, "Peer", "server", *(f"{k}={v}" for k, v in opts.items())],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self._out, self._err = _Drain(self.proc.stdout), _Drain(self.proc.stderr)
        found: list[int] = []

        def ready() -> bool:
            m = re.search(rb"^PORT (\d+)", self._out.data(), re.M)
            if m is None and self.proc.poll() is not None:
                raise RuntimeError(f"java server exited: {self._err.data()!r}")
            if m:
                found.append(int(m.group(1)))
            return m is not None

        wait_until(ready, T, "java server PORT")
        self.port = found[0]

    def results(self, n: Optional[int] = None) -> list[dict]:
        """Wait for ``n`` (default: all) connection results."""
        n = self.count if n is None else n
        wait_until(lambda: len(_parse(self._out.data().decode())) >= n or self.proc.poll() is not None, T,
                   "java server results")
        res = _parse(self._out.data().decode())
        assert len(res) >= n, f"java server: out={self._out.data()!r} err={self._err.data()!r}"
        return res

    def stop(self) -> None:
        _stop(self.proc)


@pytest.fixture
def java_server(java):
    started: list[JavaServer] = []

    def start(opts: dict, props: Optional[dict] = None) -> JavaServer:
        srv = JavaServer(java, opts, props)
        started.append(srv)
        return srv

    yield start
    for s in started:
        s.stop()


# ------------------------------------------------------------------- our side
class Ours:
    """Our TLSConnection over a non-blocking socket, with every event kept."""

    def __init__(self, sock: socket.socket, conn: TLSConnection) -> None:
        sock.setblocking(False)
        self.sock, self.conn = sock, conn
        self.events: list[ev.Event] = []
        self.data = bytearray()
        self.error: Optional[BaseException] = None
        self.peer_closed = False
        self._out = bytearray()

    def count(self, cls: type, **attrs) -> int:
        return sum(1 for e in self.events if isinstance(e, cls) and all(getattr(e, k) == v for k, v in attrs.items()))

    def _collect(self) -> None:
        while (e := self.conn.next_event()) is not None:
            if isinstance(e, ev.DataReceived):
                self.data += e.data
            else:
                self.events.append(e)
                if isinstance(e, ev.CloseNotifyReceived):
                    self.peer_closed = True

    def run(self, until: Callable[[], bool], timeout: float = T) -> None:
        """Move bytes both ways until ``until()``; a protocol error is kept in ``error`` and raised."""
        deadline = time.monotonic() + timeout
        while True:
            self._out += self.conn.data_to_send()
            if until() and not self._out:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("interop peer did not answer in time")
            r, w, _ = select.select([self.sock], [self.sock] if self._out else [], [], min(left, 0.5))
            if w:
                try:
                    n = self.sock.send(self._out[: 1 << 20])
                except (BrokenPipeError, ConnectionResetError):
                    self._out.clear()
                    n = 0
                del self._out[:n]
            if r:
                try:
                    chunk = self.sock.recv(1 << 18)
                except ConnectionResetError:
                    chunk = b""
                try:
                    if chunk:
                        self.conn.receive_data(chunk, time.time())
                    else:
                        self.conn.receive_eof()
                        self.peer_closed = True
                except ProtocolError as exc:
                    self.error = exc
                    self._collect()
                    self._drain_out()
                    raise
                self._collect()
                if not chunk:
                    return

    def _drain_out(self) -> None:
        self._out += self.conn.data_to_send()
        self.sock.setblocking(True)
        self.sock.settimeout(2)
        try:
            self.sock.sendall(self._out)
        except OSError:
            pass
        self._out.clear()

    def handshake(self) -> None:
        self.conn.start_handshake(time.time())
        self.run(lambda: self.conn.handshake_complete)

    def close(self) -> None:
        try:
            if not self.conn.terminated:
                self.conn.close()
                self._drain_out()
            elif self.error is not None:
                self._linger()
        finally:
            self.sock.close()

    def _linger(self, seconds: float = 2.0) -> None:
        """After our fatal alert, like the adapters: FIN, then read and drop
        the peer's input for a while, so that closing with unread data does
        not reset the connection (and destroy the alert) under the peer."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
            self.sock.settimeout(seconds)
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and self.sock.recv(65536):
                pass
        except OSError:
            pass


def our_config(pki, **kw) -> TLSConfig:
    cfg = TLSConfig(**kw)
    cfg.load_verify_locations(pki.ca_file)
    return cfg


def our_client(pki, port: int, *, data: bytes = b"", cert: "bool | tuple[str, str]" = False, server_name: str = "localhost",
               session=None, key_update: Optional[bool] = None, wait_ticket: bool = False, **kw) -> Ours:
    """Connect, handshake, send ``data`` (a KeyUpdate in the middle if asked) and
    read it back echoed, then close. Errors propagate (kept in ``.error``)."""
    cfg = our_config(pki, **kw)
    if cert:
        cfg.load_cert_chain(*(cert if isinstance(cert, tuple) else (pki.client.cert_file, pki.client.key_file)))
    sock = socket.create_connection(("127.0.0.1", port), timeout=T)
    ours = Ours(sock, TLSConnection(cfg, server_side=False, server_name=server_name, session=session))
    try:
        ours.handshake()
        half = len(data) // 2
        ours.conn.send_data(data[:half])
        if key_update is not None:
            ours.conn.key_update(key_update)
        ours.conn.send_data(data[half:])
        ours.run(lambda: len(ours.data) >= len(data))
        if wait_ticket:
            ours.run(lambda: ours.conn.session is not None)
    finally:
        ours.close()
    return ours


class OurServer:
    """Accepts connections in a thread; each one echoes until close_notify."""

    def __init__(self, pki, *, key_type: str = "ec256", cert: Optional[tuple[str, str]] = None,
                 on_handshake: Optional[Callable[[Ours], None]] = None, **kw) -> None:
        self.cfg = our_config(pki, **kw)
        leaf = pki.leaf(key_type)
        self.cfg.load_cert_chain(*(cert or (leaf.cert_file, leaf.key_file)))
        self.on_handshake = on_handshake
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.lsock.settimeout(0.2)
        self.port = self.lsock.getsockname()[1]
        self.conns: list[Ours] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            ours = Ours(sock, TLSConnection(self.cfg, server_side=True))
            ours.done = False  # type: ignore[attr-defined]
            self.conns.append(ours)
            try:
                ours.run(lambda: ours.conn.handshake_complete)
                if self.on_handshake is not None:
                    self.on_handshake(ours)
                echoed = 0  # data may have come with the client's Finished
                while True:
                    ours.run(lambda: len(ours.data) > echoed or ours.peer_closed, timeout=T)
                    ours.conn.send_data(bytes(ours.data[echoed:]))
                    echoed = len(ours.data)
                    if ours.peer_closed:
                        break
            except Exception as exc:  # noqa: BLE001 - recorded, asserted by the test
                ours.error = ours.error or exc
            finally:
                try:
                    ours.close()
                except OSError:
                    pass
                ours.done = True  # type: ignore[attr-defined]

    def wait(self, n: int) -> list[Ours]:
        wait_until(lambda: len(self.conns) >= n and all(c.done for c in self.conns[:n]), T, f"{n} connections")
        return self.conns[:n]

    def stop(self) -> None:
        self._stop.set()
        self.lsock.close()
        self._thread.join(5)


@pytest.fixture
def our_server(pki):
    started: list[OurServer] = []

    def start(**kw) -> OurServer:
        srv = OurServer(pki, **kw)
        started.append(srv)
        return srv

    yield start
    for s in started:
        s.stop()


def ok(r: dict) -> dict:
    assert r.get("ok") == "1", r
    return r


def _name(alert: int) -> str:
    return AlertDescription(alert).name


# ======================================================= 1. full handshakes
def test_jsse_client_each_certificate_type_and_suite(java, our_server, pki):
    """JSSE client → our server: every suite JSSE offers, with ECDSA P-256/P-384,
    RSA (rsa_pss_rsae) and Ed25519 certificates; chain and host name checked by
    JSSE (HTTPS endpoint identification), SNI and ALPN seen by both sides."""
    servers = {kt: our_server(key_type=kt, alpn_protocols=["h2", "http/1.1"]) for kt in KEY_TYPES}
    conns = []
    for kt in KEY_TYPES:
        for suite in SUITES:
            conns.append({"port": servers[kt].port, "suites": suite, "alpn": "http/1.1", "fresh": 1, "send": 20000})
    conns[0]["ca"] = pki.ca_file
    results = java_client(java, 0, conns)
    for i, (kt, suite) in enumerate((kt, s) for kt in KEY_TYPES for s in SUITES):
        r = ok(results[i])
        assert (r["proto"], r["suite"], r["alpn"], r["echoed"]) == ("TLSv1.3", suite, "http/1.1", "ok"), (kt, r)
        assert r["peer"] == "CN=localhost", r
    for kt in KEY_TYPES:
        seen = servers[kt].wait(3)
        for suite, ours in zip(SUITES, seen):
            assert ours.error is None, (kt, ours.error)
            assert ours.conn.cipher_suite.name == suite
            assert ours.conn.alpn_protocol == "http/1.1" and ours.conn.server_name == "localhost"
            assert bytes(ours.data) == pattern(20000)


# The signature scheme our client accepts selects JSSE's certificate.
SCHEME_OF = {"ec256": "ecdsa_secp256r1_sha256", "ec384": "ecdsa_secp384r1_sha384",
             "rsa2048": "rsa_pss_rsae_sha256", "ed25519": "ed25519"}


def test_our_client_each_certificate_suite_and_group(java, java_server, pki):
    """Our client → JSSE server: each certificate type (JSSE picks it by our
    signature_algorithms), each suite, each group both support (x25519, x448,
    P-256, P-384, P-521, ffdhe2048/3072/4096) forced by our offer; SNI and ALPN reported by JSSE, the chain
    and name verified by us.

    JSSE 17 cannot choose between two EC certificates by curve (offered only
    ecdsa_secp384r1_sha384 with a P-256 and a P-384 entry, it fails with
    internal_error), so the P-384 certificate has its own JVM."""
    mixed = ("ec256", "rsa2048", "ed25519")
    files = lambda kts: {"cert": ",".join(pki.leaf(k).cert_file for k in kts),  # noqa: E731
                         "key": ",".join(pki.leaf(k).key_file for k in kts)}
    srv = java_server({**files(mixed), "alpn": "h2", "count": len(mixed) + len(SUITES) + len(GROUPS)})
    srv384 = java_server({**files(["ec384"]), "alpn": "h2", "count": 1})
    seen = []
    for kt in KEY_TYPES:
        port = srv384.port if kt == "ec384" else srv.port
        ours = our_client(pki, port, data=pattern(3000), signature_schemes=[SignatureScheme[SCHEME_OF[kt]]])
        assert ours.conn.peer_certificates[0] == pki.leaf(kt).cert, kt
        assert bytes(ours.data) == pattern(3000)
    for suite in SUITES:
        seen.append(our_client(pki, srv.port, data=pattern(30000), cipher_suites=parse_cipher_suites(suite),
                               alpn_protocols=["h2", "http/1.1"]))
    for group in GROUPS:
        seen.append(our_client(pki, srv.port, data=b"group " + group.encode(), groups=parse_groups(group)))
    results = srv.results()
    for r in results[: len(mixed)] + srv384.results():
        assert ok(r)["bytes"] == "3000" and r["sni"] == "localhost", r
    results = results[len(mixed):]
    for i, suite in enumerate(SUITES):
        r, ours = ok(results[i]), seen[i]
        assert (r["suite"], r["alpn"], r["sni"], r["bytes"]) == (suite, "h2", "localhost", "30000"), r
        assert ours.conn.cipher_suite.name == suite and ours.conn.alpn_protocol == "h2"
        assert bytes(ours.data) == pattern(30000)
        assert ours.conn.peer_certificates[0].subject.rfc4514_string() == "CN=localhost"
    for i, group in enumerate(GROUPS, len(SUITES)):
        ok(results[i])
        ours = seen[i]
        assert ours.conn.group.name == group and not ours.conn.hello_retry
        assert bytes(ours.data) == b"group " + group.encode()


def test_jsse_client_each_group(java, our_server, pki):
    """JSSE client (default groups) → our server limited to one group (each
    of x25519, x448, P-256, P-384, P-521, ffdhe2048/3072/4096): the group is
    negotiated, with a HelloRetryRequest from us when JSSE sent no key share
    for it."""
    servers = {g: our_server(groups=parse_groups(g)) for g in GROUPS}
    conns = [{"port": servers[g].port, "fresh": 1, "send": 5000} for g in GROUPS]
    conns[0]["ca"] = pki.ca_file
    results = java_client(java, 0, conns)
    for g, r in zip(GROUPS, results):
        assert ok(r)["echoed"] == "ok", (g, r)
        (ours,) = servers[g].wait(1)
        assert ours.error is None and ours.conn.group.name == g
        # JSSE's first ClientHello carries x25519 and secp256r1 key shares.
        assert ours.conn.hello_retry == (g not in ("x25519", "secp256r1")), g
        assert bytes(ours.data) == pattern(5000)


# ================================================== 2. HelloRetryRequest
def test_hello_retry_both_ways(java, java_server, our_server, pki):
    """We ask JSSE for another key share (with and without an HRR cookie), and
    JSSE, configured for secp384r1/ffdhe2048 only, asks ours."""
    plain = our_server(groups=parse_groups("secp384r1"))
    cookie = our_server(groups=parse_groups("ffdhe2048"), hello_retry_cookie=True)
    results = java_client(java, 0, [{"port": plain.port, "ca": pki.ca_file, "send": 1000},
                                    {"port": cookie.port, "fresh": 1, "send": 1000}])
    for srv, group, r in ((plain, "secp384r1", results[0]), (cookie, "ffdhe2048", results[1])):
        assert ok(r)["echoed"] == "ok"
        (ours,) = srv.wait(1)
        assert ours.error is None and ours.conn.hello_retry and ours.conn.group.name == group

    leaf = pki.leaf("ec256")
    srv = java_server({"cert": leaf.cert_file, "key": leaf.key_file, "count": 2},
                      {"jdk.tls.namedGroups": "secp384r1,ffdhe2048"})
    first = our_client(pki, srv.port, data=b"hrr")  # offers an x25519 key share only
    second = our_client(pki, srv.port, data=b"hrr ffdhe", groups=parse_groups("x25519,ffdhe2048"))
    for r in srv.results():
        ok(r)
    assert first.conn.hello_retry and first.conn.group == NamedGroup.secp384r1 and bytes(first.data) == b"hrr"
    assert second.conn.hello_retry and second.conn.group == NamedGroup.ffdhe2048 and bytes(second.data) == b"hrr ffdhe"


# ========================================================= 3. resumption
def test_jsse_client_resumes_with_our_tickets(java, our_server, pki):
    """JSSE's session cache resumes with our stateless and our stateful
    (single-use, server-side store) tickets: our server reports the PSK
    accepted, JSSE the original session's creation time."""
    stateless = our_server()
    stateful = our_server(ticket_store=MemoryStore())
    results = java_client(java, 0, [
        {"port": stateless.port, "ca": pki.ca_file, "send": 100},
        {"port": stateless.port, "send": 100},
        {"port": stateful.port, "send": 100},
        {"port": stateful.port, "send": 100},
    ])
    for r in results:
        assert ok(r)["echoed"] == "ok", r
    for srv, (a, b) in ((stateless, results[:2]), (stateful, results[2:])):
        first, second = srv.wait(2)
        assert not first.conn.session_resumed and second.conn.session_resumed
        assert second.error is None and bytes(second.data) == pattern(100)
        assert a["created"] == b["created"], (a, b)  # JSSE: same session, resumed
    assert results[0]["created"] != results[2]["created"]


@pytest.mark.parametrize("tickets", ["stateless", "stateful"])
def test_our_client_resumes_with_jsse_tickets(java, java_server, pki, tickets):
    """Our client resumes with JSSE's tickets: stateless (the JDK 17 default) and
    stateful (jdk.tls.server.enableSessionTicketExtension=false)."""
    leaf = pki.leaf("ec256")
    props = {"jdk.tls.server.enableSessionTicketExtension": "true" if tickets == "stateless" else "false"}
    srv = java_server({"cert": leaf.cert_file, "key": leaf.key_file, "count": 2}, props)
    first = our_client(pki, srv.port, data=b"first", wait_ticket=True)
    assert first.count(ev.SessionTicketReceived) >= 1
    second = our_client(pki, srv.port, data=b"second", session=first.conn.session)
    a, b = (ok(r) for r in srv.results())
    assert not first.conn.session_resumed and second.conn.session_resumed
    assert bytes(second.data) == b"second"
    assert a["created"] == b["created"], (a, b)  # JSSE resumed the first session


# ================================================= 4. client certificates
def test_jsse_server_client_auth(java, java_server, pki):
    """JSSE server with setNeedClientAuth / setWantClientAuth: our client's
    certificate is verified and reported by JSSE; without one, "need" fails
    (JSSE sends bad_certificate where RFC 9846 §4.4.2.4 says certificate_required) and "want" goes on anonymously."""
    leaf = pki.leaf("ec256")
    base = {"cert": leaf.cert_file, "key": leaf.key_file, "ca": pki.ca_file, "count": 2}
    need = java_server({**base, "clientauth": "need"})
    with_cert = our_client(pki, need.port, data=b"need", cert=True)
    with pytest.raises(RemoteAlert) as exc:
        our_client(pki, need.port, data=b"no cert")
    # RFC 9846 §4.4.2.4 names certificate_required; JSSE 17 sends bad_certificate.
    assert exc.value.alert == AlertDescription.bad_certificate
    r_cert, r_none = need.results()
    assert ok(r_cert)["peer"] == "CN=client.test" and bytes(with_cert.data) == b"need"
    assert r_none["ok"] == "0" and "certificate" in r_none["err"].lower(), r_none

    want = java_server({**base, "clientauth": "want"})
    anon = our_client(pki, want.port, data=b"anon")
    named = our_client(pki, want.port, data=b"named", cert=True)
    r_anon, r_named = want.results()
    assert ok(r_anon)["peer"] == "-" and bytes(anon.data) == b"anon"
    assert ok(r_named)["peer"] == "CN=client.test" and bytes(named.data) == b"named"


def test_our_server_client_auth(java, our_server, pki):
    """Our server requiring / requesting a client certificate: JSSE's key
    manager picks its certificate from our certificate_authorities and
    signature_algorithms; without one, a required certificate fails with
    certificate_required, reported by JSSE."""
    required = our_server(require_client_certificate=True, request_client_certificate=True)
    optional = our_server(request_client_certificate=True)
    client = {"cert": pki.client.cert_file, "key": pki.client.key_file}
    results = java_client(java, 0, [
        {"port": required.port, "ca": pki.ca_file, "auth": 1, "send": 100, **client},
        {"port": required.port, "fresh": 1, "auth": 0, "send": 100},
        {"port": optional.port, "fresh": 1, "auth": 0, "send": 100},
        {"port": optional.port, "fresh": 1, "auth": 1, "send": 100},
    ])
    good, refused = required.wait(2)
    assert ok(results[0])["echoed"] == "ok"
    assert good.error is None and good.conn.peer_certificates[0].subject.rfc4514_string() == "CN=client.test"
    assert isinstance(refused.error, LocalProtocolError) and refused.error.alert == AlertDescription.certificate_required
    assert results[1]["ok"] == "0" and "certificate_required" in results[1]["err"], results[1]
    anon, named = optional.wait(2)
    assert ok(results[2])["echoed"] == "ok" and anon.error is None and anon.conn.peer_certificates == []
    assert ok(results[3])["echoed"] == "ok" and named.conn.peer_certificates[0].subject.rfc4514_string() == "CN=client.test"


# ============================================================ 5. KeyUpdate
BIG = 4 << 20


def test_jsse_initiates_key_updates(java, java_server, our_server, pki):
    """JSSE's SSLSocket.startHandshake() on a TLS 1.3 connection sends a
    KeyUpdate (update_requested): we switch keys and answer, and 4 MiB
    flow both ways across them, in both roles. Requests that arrive while
    we have sent nothing get one answer between them (RFC 9846 §4.6.3)."""
    srv = our_server()
    (r,) = java_client(java, 0, [{"port": srv.port, "ca": pki.ca_file, "send": BIG, "keyupdate": 3}])
    assert ok(r)["echoed"] == "ok"
    (ours,) = srv.wait(1)
    assert ours.error is None and bytes(ours.data) == pattern(BIG)
    assert ours.count(ev.KeyUpdated, direction="receive") == 3
    assert 1 <= ours.count(ev.KeyUpdated, direction="send") <= 3  # our answers

    leaf = pki.leaf("ec256")
    jsrv = java_server({"cert": leaf.cert_file, "key": leaf.key_file, "keyupdate": 2})
    data = os.urandom(BIG)
    client = our_client(pki, jsrv.port, data=data)
    assert ok(jsrv.results()[0])["bytes"] == str(BIG)
    assert bytes(client.data) == data
    assert client.count(ev.KeyUpdated, direction="receive") == 2
    assert 1 <= client.count(ev.KeyUpdated, direction="send") <= 2


@pytest.mark.parametrize("requested", [True, False], ids=["update_requested", "update_not_requested"])
def test_we_initiate_key_update(java, java_server, our_server, pki, requested):
    """Our KeyUpdate in the middle of 4 MiB: JSSE decrypts what follows (the
    echo is byte-exact) and answers with its own KeyUpdate only when asked."""
    leaf = pki.leaf("ec256")
    jsrv = java_server({"cert": leaf.cert_file, "key": leaf.key_file})
    data = os.urandom(BIG)
    client = our_client(pki, jsrv.port, data=data, key_update=requested)
    assert ok(jsrv.results()[0])["bytes"] == str(BIG)
    assert bytes(client.data) == data
    assert client.count(ev.KeyUpdated, direction="send") == 1
    assert client.count(ev.KeyUpdated, direction="receive") == (1 if requested else 0)

    # Our server updates right after the handshake; the JSSE client's data
    # still arrive and are echoed.
    srv = our_server(on_handshake=lambda ours: ours.conn.key_update(requested))
    (r,) = java_client(java, 0, [{"port": srv.port, "ca": pki.ca_file, "send": 100000}])
    assert ok(r)["echoed"] == "ok"
    (ours,) = srv.wait(1)
    assert ours.error is None and bytes(ours.data) == pattern(100000)
    assert ours.count(ev.KeyUpdated, direction="receive") == (1 if requested else 0)


# ================================================ 7. post-handshake auth
def test_jsse_client_does_not_offer_post_handshake_auth(java, our_server, pki):
    """JSSE implements no post-handshake authentication: even with a client
    certificate configured it does not offer post_handshake_auth, so our
    server refuses to send a post-handshake CertificateRequest (§4.6.2) and
    the connection goes on."""
    outcome: list[BaseException] = []

    def try_pha(ours: Ours) -> None:
        with pytest.raises(UsageError, match="post_handshake_auth") as exc:
            ours.conn.request_client_certificate()
        outcome.append(exc.value)

    srv = our_server(on_handshake=try_pha)
    (r,) = java_client(java, 0, [{"port": srv.port, "ca": pki.ca_file, "auth": 1, "send": 100,
                                  "cert": pki.client.cert_file, "key": pki.client.key_file}])
    assert ok(r)["echoed"] == "ok"
    (ours,) = srv.wait(1)
    assert ours.error is None and len(outcome) == 1


# ============================================================ 8. errors
def test_jsse_client_rejects_our_certificate(java, our_server, pki):
    """An untrusted CA and a wrong host name: JSSE aborts and we report the
    alert it sent; likewise an ALPN offer we do not support."""
    untrusted = our_server(cert=(pki.untrusted.cert_file, pki.untrusted.key_file))
    named = our_server()
    alpn = our_server(alpn_protocols=["h2"])
    results = java_client(java, 0, [
        {"port": untrusted.port, "ca": pki.ca_file, "send": 10},
        {"port": named.port, "fresh": 1, "sni": "wrong.example", "send": 10},
        {"port": alpn.port, "fresh": 1, "alpn": "http/1.1", "send": 10},
    ])
    assert results[0]["ok"] == "0" and "PKIX" in results[0]["err"], results[0]
    assert results[1]["ok"] == "0" and "wrong.example" in results[1]["err"], results[1]
    assert results[2]["ok"] == "0" and "no_application_protocol" in results[2]["err"], results[2]
    for srv, alert in ((untrusted, "certificate_unknown"), (named, "certificate_unknown")):
        (ours,) = srv.wait(1)
        assert isinstance(ours.error, RemoteAlert) and _name(ours.error.alert) == alert, ours.error
    (ours,) = alpn.wait(1)
    assert isinstance(ours.error, LocalProtocolError)
    assert ours.error.alert == AlertDescription.no_application_protocol


def refused(pki, port: int, exc_type: type, **kw) -> ProtocolError:
    """Connect with the blocking adapter (``tcpls.sync``, which lingers after
    sending an alert so the peer reads it) and return the handshake error."""
    with pytest.raises(exc_type) as info:
        with tcpls_sync.connect(("127.0.0.1", port), our_config(pki, **kw), server_name=kw.get("server_name", "localhost"),
                                timeout=T) as sock:
            sock.sendall(b"x")
            sock.recv(1)
    return info.value


def test_our_client_rejects_jsse_certificate(java, java_server, pki):
    """An untrusted CA and a wrong host name: we abort with the alert JSSE
    then reports; an ALPN mismatch refused by JSSE reaches us as its alert."""
    srv = java_server({"cert": pki.untrusted.cert_file, "key": pki.untrusted.key_file, "count": 1})
    untrusted = refused(pki, srv.port, LocalProtocolError)
    (r,) = srv.results()
    assert untrusted.alert == AlertDescription.unknown_ca
    assert r["ok"] == "0" and "Received fatal alert: unknown_ca" in r["err"], r

    leaf = pki.leaf("ec256")
    srv = java_server({"cert": leaf.cert_file, "key": leaf.key_file, "alpn": "h2", "count": 2})
    wrong_name = refused(pki, srv.port, LocalProtocolError, server_name="wrong.example")
    no_alpn = refused(pki, srv.port, RemoteAlert, alpn_protocols=["http/1.1"])
    r_name, r_alpn = srv.results()
    assert wrong_name.alert == AlertDescription.bad_certificate
    assert r_name["ok"] == "0" and "Received fatal alert: bad_certificate" in r_name["err"], r_name
    assert no_alpn.alert == AlertDescription.no_application_protocol
    assert r_alpn["ok"] == "0" and "No matching application layer protocol" in r_alpn["err"], r_alpn


# ============================================== 6. automatic key updates
def test_jsse_key_limits_trigger_key_updates(java, java_server, our_server, pki, tmp_path):
    """With a small jdk.tls.keyLimits (a security property), JSSE updates its
    sending key by itself after each MiB, in both roles; we follow every
    update and 4 MiB stay byte-exact. (Past its read limit a JSSE client asks
    for a KeyUpdate with every record it reads until our answer arrives:
    100-200 requests per 4 MiB here, each answered.)"""
    limits = tmp_path / "java.security"
    limits.write_text("jdk.tls.keyLimits=AES/GCM/NoPadding KeyUpdate 2^20\n")
    props = {"java.security.properties": str(limits)}

    srv = our_server()
    (r,) = java_client(java, 0, [{"port": srv.port, "ca": pki.ca_file, "send": BIG}], props)
    assert ok(r)["echoed"] == "ok"
    (ours,) = srv.wait(1)
    assert ours.error is None and bytes(ours.data) == pattern(BIG)
    assert ours.count(ev.KeyUpdated, direction="receive") >= 3

    leaf = pki.leaf("ec256")
    jsrv = java_server({"cert": leaf.cert_file, "key": leaf.key_file}, props)
    data = os.urandom(BIG)
    client = our_client(pki, jsrv.port, data=data)
    assert ok(jsrv.results()[0])["bytes"] == str(BIG)
    assert bytes(client.data) == data
    assert client.count(ev.KeyUpdated, direction="receive") >= 3


# ============================================ chains, RSA-PSS, client keys
@pytest.fixture(scope="module")
def more_pki(pki, tmp_path_factory):
    """Chains through an intermediate CA, RSA and Ed25519 client certificates,
    and an RSASSA-PSS (id-RSASSA-PSS key) CA and server certificate."""
    from conftest import _write_certs, _write_key
    from tcpls import _testcerts

    require_peer("openssl")  # makes the RSASSA-PSS keys
    d = tmp_path_factory.mktemp("morepki")
    inter, key = _testcerts.make_intermediate(pki.ca_cert, pki.ca_key)
    files = {}

    def leaf(name, issuer, issuer_key, chain_tail, key_type, client, names):
        cert, k = _testcerts.make_leaf(issuer, issuer_key, names=names, key_type=key_type, client=client)
        files[name] = (_write_certs(d / f"{name}.pem", [cert, *chain_tail]), _write_key(d / f"{name}.key", k))
        return cert

    leaf("server-chain", inter, key, [inter], "rsa2048", False, ["localhost", "127.0.0.1"])
    leaf("client-rsa-chain", inter, key, [inter], "rsa2048", True, ["client-rsa.test"])
    leaf("client-ed25519", pki.ca_cert, pki.ca_key, [], "ed25519", True, ["client-ed25519.test"])

    def sh(*args):
        subprocess.run(args, check=True, capture_output=True, cwd=d, timeout=60)

    sh("openssl", "req", "-x509", "-newkey", "rsa-pss", "-pkeyopt", "rsa_keygen_bits:2048", "-nodes",
       "-keyout", "pss-ca.key", "-out", "pss-ca.pem", "-days", "2", "-subj", "/CN=pss test CA",
       "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    sh("openssl", "req", "-newkey", "rsa-pss", "-pkeyopt", "rsa_keygen_bits:2048", "-nodes",
       "-keyout", "pss.key", "-out", "pss.csr", "-subj", "/CN=localhost")
    (d / "ext.cnf").write_text("basicConstraints=critical,CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n"
                               "extendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n")
    sh("openssl", "x509", "-req", "-in", "pss.csr", "-CA", "pss-ca.pem", "-CAkey", "pss-ca.key", "-CAcreateserial",
       "-out", "pss.pem", "-days", "2", "-extfile", "ext.cnf", "-sigopt", "rsa_padding_mode:pss")
    # A ~20 KB certificate (1000 names): its Certificate message spans records.
    leaf("server-big", pki.ca_cert, pki.ca_key, [], "ec256", False,
         ["localhost", "127.0.0.1", *(f"host{i}.example" for i in range(1000))])
    leaf("client-big", pki.ca_cert, pki.ca_key, [], "ec256", True, ["client-big.test", *(f"c{i}.example" for i in range(1000))])
    # A client certificate from another CA, to choose by certificate_authorities.
    other_ca, other_key = _testcerts.make_ca("other CA")
    leaf("client-other", other_ca, other_key, [], "ec256", True, ["client-other.test"])
    files["pss"] = (str(d / "pss.pem"), str(d / "pss.key"))
    files["pss-ca"] = str(d / "pss-ca.pem")
    return files


def test_certificate_chains_and_client_key_types(java, java_server, our_server, pki, more_pki):
    """Server and client chains through an intermediate CA (only the root is
    trusted), and RSA / Ed25519 client certificates, verified both ways."""
    ours_srv = our_server(cert=more_pki["server-chain"], require_client_certificate=True,
                          request_client_certificate=True)
    rsa_chain, ed = more_pki["client-rsa-chain"], more_pki["client-ed25519"]
    results = java_client(java, 0, [
        {"port": ours_srv.port, "ca": pki.ca_file, "auth": 1, "cert": rsa_chain[0], "key": rsa_chain[1], "send": 100},
        {"port": ours_srv.port, "fresh": 1, "auth": 1, "cert": ed[0], "key": ed[1], "send": 100},
    ])
    for r in results:
        assert ok(r)["echoed"] == "ok" and r["peerchain"] == "2", r
    a, b = ours_srv.wait(2)
    assert [c.subject.rfc4514_string() for c in a.conn.peer_certificates] == [
        "CN=client-rsa.test", "CN=tcpls test intermediate"]
    assert b.conn.peer_certificates[0].subject.rfc4514_string() == "CN=client-ed25519.test"

    server_chain = more_pki["server-chain"]
    srv = java_server({"cert": server_chain[0], "key": server_chain[1], "ca": pki.ca_file, "clientauth": "need",
                       "count": 2})
    first = our_client(pki, srv.port, data=b"rsa chain", cert=rsa_chain)
    second = our_client(pki, srv.port, data=b"ed25519", cert=ed)
    r1, r2 = srv.results()
    assert ok(r1)["peer"] == "CN=client-rsa.test" and r1["peerchain"] == "2"
    assert ok(r2)["peer"] == "CN=client-ed25519.test"
    assert [c.subject.rfc4514_string() for c in first.conn.peer_certificates] == [
        "CN=localhost", "CN=tcpls test intermediate"]
    assert bytes(first.data) == b"rsa chain" and bytes(second.data) == b"ed25519"


def test_rsassa_pss_certificates(java, java_server, our_server, pki, more_pki):
    """A certificate whose key is RSASSA-PSS signs with rsa_pss_pss_sha256:
    JSSE verifies ours, and we verify JSSE's CertificateVerify. (Our client
    cannot validate a chain with RSASSA-PSS keys, which ``cryptography``'s path
    validation refuses, so that side runs without chain validation.)"""
    srv = our_server(cert=more_pki["pss"])
    (r,) = java_client(java, 0, [{"port": srv.port, "ca": more_pki["pss-ca"], "send": 100}])
    assert ok(r)["echoed"] == "ok" and r["peer"] == "CN=localhost"
    (ours,) = srv.wait(1)
    assert ours.error is None

    jsrv = java_server({"cert": more_pki["pss"][0], "key": more_pki["pss"][1]})
    client = our_client(pki, jsrv.port, data=b"pss", verify_peer=False,
                        signature_schemes=[SignatureScheme.rsa_pss_pss_sha256])
    ok(jsrv.results()[0])
    assert bytes(client.data) == b"pss"
    assert client.conn.peer_certificates[0].subject.rfc4514_string() == "CN=localhost"


def test_resumption_after_hello_retry_and_with_client_auth(java, java_server, our_server, pki):
    """Resumption combined with a HelloRetryRequest (the PSK binder covers
    the retry) and with client certificates (no CertificateRequest when
    resuming; the resumed session keeps the client's identity), both ways."""
    hrr = our_server(groups=parse_groups("secp384r1"))
    auth = our_server(require_client_certificate=True, request_client_certificate=True)
    client = {"cert": pki.client.cert_file, "key": pki.client.key_file}
    results = java_client(java, 0, [
        {"port": hrr.port, "ca": pki.ca_file, "send": 100, **client},
        {"port": hrr.port, "send": 100},
        {"port": auth.port, "auth": 1, "send": 100},
        {"port": auth.port, "auth": 1, "send": 100},
    ])
    for r in results:
        assert ok(r)["echoed"] == "ok", r
    assert results[0]["created"] == results[1]["created"] and results[2]["created"] == results[3]["created"]
    first, second = hrr.wait(2)
    assert first.conn.hello_retry and second.conn.hello_retry and second.conn.session_resumed
    first, second = auth.wait(2)
    assert not first.conn.session_resumed and second.conn.session_resumed and second.error is None
    assert second.conn.peer_certificates[0].subject.rfc4514_string() == "CN=client.test"

    leaf = pki.leaf("ec256")
    jhrr = java_server({"cert": leaf.cert_file, "key": leaf.key_file, "count": 2}, {"jdk.tls.namedGroups": "secp384r1"})
    a = our_client(pki, jhrr.port, data=b"a", wait_ticket=True)
    b = our_client(pki, jhrr.port, data=b"b", session=a.conn.session)
    ra, rb = (ok(r) for r in jhrr.results())
    assert a.conn.hello_retry and b.conn.hello_retry and b.conn.session_resumed and ra["created"] == rb["created"]

    jauth = java_server({"cert": leaf.cert_file, "key": leaf.key_file, "ca": pki.ca_file, "clientauth": "need",
                         "count": 2})
    a = our_client(pki, jauth.port, data=b"a", cert=True, wait_ticket=True)
    b = our_client(pki, jauth.port, data=b"b", cert=True, session=a.conn.session)
    ra, rb = (ok(r) for r in jauth.results())
    assert b.conn.session_resumed and ra["created"] == rb["created"]
    assert ra["peer"] == rb["peer"] == "CN=client.test"
    assert b.conn.peer_certificates == a.conn.peer_certificates == [leaf.cert]  # the server's, kept


# ========================================= the blocking and asyncio adapters
def test_sync_adapter_both_roles(java, java_server, pki):
    """``tcpls.sync`` as client and server with JSSE: 4 MiB echoed across
    KeyUpdates from both sides (crossing ones against the JSSE server)."""
    leaf = pki.leaf("ec256")
    jsrv = java_server({"cert": leaf.cert_file, "key": leaf.key_file, "keyupdate": 2})
    data = os.urandom(BIG)
    with tcpls_sync.connect(("127.0.0.1", jsrv.port), our_config(pki), server_name="localhost", timeout=T) as sock:
        def write() -> None:
            sock.sendall(data[: BIG // 2])
            sock.key_update(True)
            sock.sendall(data[BIG // 2:])

        writer = threading.Thread(target=write)
        writer.start()
        got = bytearray()
        while len(got) < BIG and (chunk := sock.recv(1 << 18)):
            got += chunk
        writer.join(T)
    assert bytes(got) == data and ok(jsrv.results()[0])["bytes"] == str(BIG)

    cfg = our_config(pki)
    cfg.load_cert_chain(leaf.cert_file, leaf.key_file)
    done: list = []
    with tcpls_sync.create_server(("127.0.0.1", 0), cfg) as listener:
        listener.settimeout(T)

        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(T)
                # Not update_requested: JSSE 17's answer would race with the
                # KeyUpdates its client sends from another thread, and it then
                # sometimes sends one KeyUpdate record twice (same key and
                # sequence number), which we rightly refuse (bad_record_mac).
                conn.key_update(False)
                n = 0
                while chunk := conn.recv(1 << 18):
                    conn.sendall(chunk)
                    n += len(chunk)
                done.append(n)

        server = threading.Thread(target=serve)
        server.start()
        (r,) = java_client(java, listener.getsockname()[1],
                           [{"ca": pki.ca_file, "send": BIG, "keyupdate": 2}])
        server.join(T)
    assert ok(r)["echoed"] == "ok" and done == [BIG]


def test_asyncio_adapter_both_roles(java, java_server, pki):
    """``tcpls.aio`` streams as client and server with JSSE, 1 MiB each way."""
    import asyncio

    from tcpls import aio

    leaf = pki.leaf("ec256")
    jsrv = java_server({"cert": leaf.cert_file, "key": leaf.key_file, "alpn": "h2", "keyupdate": 1})
    data = os.urandom(1 << 20)

    async def client() -> bytes:
        cfg = our_config(pki, alpn_protocols=["h2"])
        reader, writer = await aio.open_connection("127.0.0.1", jsrv.port, config=cfg, server_hostname="localhost")
        assert writer.get_extra_info("alpn_protocol") == "h2"
        writer.write(data)
        await writer.drain()
        got = await reader.readexactly(len(data))
        writer.close()
        return got

    assert asyncio.run(asyncio.wait_for(client(), T)) == data
    assert ok(jsrv.results()[0])["bytes"] == str(1 << 20)

    cfg = our_config(pki)
    cfg.load_cert_chain(leaf.cert_file, leaf.key_file)
    echoed: list[int] = []

    async def handle(reader, writer) -> None:
        n = 0
        while chunk := await reader.read(1 << 16):
            writer.write(chunk)
            await writer.drain()
            n += len(chunk)
        echoed.append(n)
        writer.close()

    async def serve() -> list[dict]:
        server = await aio.start_server(handle, "127.0.0.1", 0, config=cfg)
        port = server.sockets[0].getsockname()[1]
        async with server:
            results = await asyncio.to_thread(java_client, java, port,
                                              [{"ca": pki.ca_file, "send": 1 << 20, "keyupdate": 1}])
            deadline = time.monotonic() + T
            while not echoed and time.monotonic() < deadline:  # the handler sees the close_notify
                await asyncio.sleep(0.01)
            return results

    (r,) = asyncio.run(asyncio.wait_for(serve(), 60))
    assert ok(r)["echoed"] == "ok" and echoed == [1 << 20]


# ==================================================== names and tickets
def test_ip_address_without_sni_and_0rtt_tickets(java, java_server, our_server, pki):
    """Connecting to 127.0.0.1 sends no SNI (RFC 6066 §3 forbids IP
    literals) and the certificate is checked against its IP address, both
    ways. A server offering 0-RTT puts early_data in its tickets: JSSE, which
    has no 0-RTT, still resumes with them."""
    srv = our_server(max_early_data=16384)
    results = java_client(java, 0, [{"port": srv.port, "ca": pki.ca_file, "sni": "-", "send": 100},
                                    {"port": srv.port, "sni": "-", "send": 100}])
    a, b = srv.wait(2)
    for r in results:
        assert ok(r)["echoed"] == "ok" and "sni" not in r, r
    assert a.conn.server_name is None and not a.conn.session_resumed
    assert b.conn.session_resumed and results[0]["created"] == results[1]["created"]

    leaf = pki.leaf("ec256")
    jsrv = java_server({"cert": leaf.cert_file, "key": leaf.key_file})
    ours = our_client(pki, jsrv.port, data=b"by address", server_name="127.0.0.1")
    (r,) = jsrv.results()
    assert ok(r)["bytes"] == "10" and "sni" not in r, r
    assert bytes(ours.data) == b"by address"


# ================================================================ the CLI
def test_cli_client_and_server(java, java_server, tcpls_cli_server, pki, tmp_path):
    """``tcpls client`` (``--sess-out``/``--sess-in``, ``--key-update``)
    against a JSSE server, and a JSSE client against ``tcpls server --echo
    --key-update``: data echoed exactly, sessions resumed as both sides see."""
    from conftest import run_tcpls_cli

    leaf = pki.leaf("ec256")
    jsrv = java_server({"cert": leaf.cert_file, "key": leaf.key_file, "count": 2})
    sess = tmp_path / "session"
    data = os.urandom(300000)
    base = ["client", "127.0.0.1", str(jsrv.port), "--cafile", pki.ca_file, "--sni", "localhost", "-v"]
    first = run_tcpls_cli([*base, "--sess-out", str(sess)], data)
    second = run_tcpls_cli([*base, "--sess-in", str(sess), "--key-update"], data)
    for p in (first, second):
        assert p.returncode == 0 and p.stdout == data, p.stderr
    assert b"resumed: True" in second.stderr
    a, b = (ok(r) for r in jsrv.results())
    assert a["created"] == b["created"] and b["bytes"] == str(len(data))

    srv = tcpls_cli_server("--cert", leaf.cert_file, "--key", leaf.key_file, "--echo", "--key-update")
    results = java_client(java, srv.port, [{"ca": pki.ca_file, "send": 300000}, {"send": 1000}])
    for r in results:
        assert ok(r)["echoed"] == "ok", r
    assert results[0]["created"] == results[1]["created"]


def test_no_common_parameters(java, java_server, our_server, pki):
    """No common suite, group or signature scheme: handshake_failure
    (RFC 9846 §4.1.1), sent by whichever side is the server and reported by
    the other (but see JSSE's alert for no common group below)."""
    suite = our_server(cipher_suites=parse_cipher_suites("TLS_CHACHA20_POLY1305_SHA256"))
    group = our_server(groups=parse_groups("secp521r1"))
    results = java_client(java, 0, [
        {"port": suite.port, "ca": pki.ca_file, "suites": "TLS_AES_128_GCM_SHA256", "send": 10},
        {"port": group.port, "fresh": 1, "suites": "TLS_AES_128_GCM_SHA256,TLS_CHACHA20_POLY1305_SHA256", "send": 10},
    ], {"jdk.tls.namedGroups": "x25519,secp256r1"})
    for srv, r in ((suite, results[0]), (group, results[1])):
        assert r["ok"] == "0" and "Received fatal alert: handshake_failure" in r["err"], r
        (ours,) = srv.wait(1)
        assert isinstance(ours.error, LocalProtocolError) and ours.error.alert == AlertDescription.handshake_failure

    leaf = pki.leaf("ec256")
    jsrv = java_server({"cert": leaf.cert_file, "key": leaf.key_file, "suites": "TLS_AES_256_GCM_SHA384", "count": 3},
                       {"jdk.tls.namedGroups": "secp384r1"})
    errors = [
        refused(pki, jsrv.port, RemoteAlert, cipher_suites=parse_cipher_suites("TLS_AES_128_GCM_SHA256")),
        refused(pki, jsrv.port, RemoteAlert, groups=parse_groups("x25519,secp256r1")),
        refused(pki, jsrv.port, RemoteAlert, signature_schemes=[SignatureScheme.ed25519]),
    ]
    # RFC 9846 §4.1.1 wants handshake_failure or insufficient_security; for
    # "No common named group" JSSE 17 sends unexpected_message.
    expected = [AlertDescription.handshake_failure, AlertDescription.unexpected_message,
                AlertDescription.handshake_failure]
    for e, r, alert in zip(errors, jsrv.results(), expected):
        assert r["ok"] == "0", r
        assert e.alert == alert, (e, r)


def test_large_certificates_span_records(java, java_server, our_server, pki, more_pki):
    """~20 KB server and client certificates: Certificate messages larger
    than a record (RFC 9846 §5.1 fragmentation) reassembled both ways."""
    big_client = more_pki["client-big"]
    srv = our_server(cert=more_pki["server-big"], require_client_certificate=True, request_client_certificate=True)
    (r,) = java_client(java, 0, [{"port": srv.port, "ca": pki.ca_file, "auth": 1, "send": 100,
                                  "cert": big_client[0], "key": big_client[1]}])
    assert ok(r)["echoed"] == "ok" and r["peer"] == "CN=localhost"
    (ours,) = srv.wait(1)
    assert ours.conn.peer_certificates[0].subject.rfc4514_string() == "CN=client-big.test"

    big_server = more_pki["server-big"]
    jsrv = java_server({"cert": big_server[0], "key": big_server[1], "ca": pki.ca_file, "clientauth": "need"})
    client = our_client(pki, jsrv.port, data=b"big", cert=big_client)
    assert ok(jsrv.results()[0])["peer"] == "CN=client-big.test"
    assert client.conn.peer_certificates[0].subject.rfc4514_string() == "CN=localhost"
    assert len(client.conn.peer_certificates[0].public_bytes(Encoding.DER)) > 16384


def test_client_certificate_chosen_by_certificate_authorities(java, java_server, our_server, pki, more_pki):
    """With certificates from two CAs, each client sends the one issued under
    a CA named in the server's CertificateRequest (certificate_authorities,
    RFC 9846 §4.2.4), both ways."""
    other, mine = more_pki["client-other"], (pki.client.cert_file, pki.client.key_file)
    srv = our_server(require_client_certificate=True, request_client_certificate=True)
    (r,) = java_client(java, 0, [{"port": srv.port, "ca": pki.ca_file, "auth": 1, "send": 100,
                                  "cert": f"{other[0]},{mine[0]}", "key": f"{other[1]},{mine[1]}"}])
    assert ok(r)["echoed"] == "ok"
    (ours,) = srv.wait(1)
    assert ours.conn.peer_certificates[0].subject.rfc4514_string() == "CN=client.test"

    leaf = pki.leaf("ec256")
    jsrv = java_server({"cert": leaf.cert_file, "key": leaf.key_file, "ca": pki.ca_file, "clientauth": "need"})
    client = our_client(pki, jsrv.port, data=b"ca", cert=other, extra_certificates=[load_certificate_files(*mine)])
    assert ok(jsrv.results()[0])["peer"] == "CN=client.test"
    assert bytes(client.data) == b"ca"


# ======================================================== OCSP stapling
def _ocsp_response(pki, cert, revoked: bool = False) -> bytes:
    import datetime

    from cryptography.hazmat.primitives import hashes
    from cryptography.x509 import ReasonFlags, ocsp

    now = datetime.datetime.now(datetime.timezone.utc)
    status = ocsp.OCSPCertStatus.REVOKED if revoked else ocsp.OCSPCertStatus.GOOD
    return (
        ocsp.OCSPResponseBuilder()
        .add_response(cert=cert, issuer=pki.ca_cert, algorithm=hashes.SHA1(), cert_status=status,
                      this_update=now - datetime.timedelta(minutes=5), next_update=now + datetime.timedelta(days=1),
                      revocation_time=now - datetime.timedelta(minutes=10) if revoked else None,
                      revocation_reason=ReasonFlags.key_compromise if revoked else None)
        .responder_id(ocsp.OCSPResponderEncoding.HASH, pki.ca_cert)
        .sign(pki.ca_key, hashes.SHA256())
        .public_bytes(Encoding.DER)
    )


def test_jsse_client_checks_revocation_with_our_stapled_ocsp_response(java, our_server, pki):
    """A JSSE client checking revocation asks for OCSP stapling (status_request)
    and accepts our certificate on the strength of the response we staple; the
    same client refuses a stapled "revoked" response and fails against a
    server that staples nothing (there is no responder to ask)."""
    leaf = pki.leaf("ec256").cert
    good = our_server(ocsp_response=_ocsp_response(pki, leaf))
    revoked = our_server(ocsp_response=_ocsp_response(pki, leaf, revoked=True))
    plain = our_server()
    results = java_client(java, 0, [{"port": good.port, "ca": pki.ca_file, "revocation": 1, "send": 100},
                                    {"port": revoked.port, "fresh": 1, "send": 100},
                                    {"port": plain.port, "fresh": 1, "send": 100}])
    assert ok(results[0])["echoed"] == "ok"
    assert results[1]["ok"] == "0" and "revoked" in results[1]["err"].lower(), results[1]
    assert results[2]["ok"] == "0" and "revocation" in results[2]["err"].lower(), results[2]
    (refused_conn,) = revoked.wait(1)  # JSSE's alert for the revoked status, reported by us
    assert isinstance(refused_conn.error, RemoteAlert)
    assert refused_conn.error.alert == AlertDescription.bad_certificate_status_response


def test_extensions_jsse_does_not_implement(java, java_server, pki):
    """Our client offering record_size_limit (RFC 8449), certificate
    compression (RFC 8879) and status_request to a JSSE server, which
    implements none of them: it ignores them, so we keep full-size records
    (JSSE's 16 KB records are accepted) and an uncompressed, unstapled
    certificate."""
    from tcpls.tls.enums import CertificateCompressionAlgorithm as CCA

    leaf = pki.leaf("ec256")
    jsrv = java_server({"cert": leaf.cert_file, "key": leaf.key_file})
    data = os.urandom(200000)
    ours = our_client(pki, jsrv.port, data=data, record_size_limit=1024, certificate_compression=[CCA.zlib],
                      request_ocsp=True)
    assert ok(jsrv.results()[0])["bytes"] == str(len(data))
    assert bytes(ours.data) == data and ours.conn.ocsp_response is None


def test_client_certificate_from_untrusted_ca(java, java_server, our_server, pki, more_pki):
    """A client certificate issued by a CA the server does not trust: the
    server's alert is reported by the client, both ways. (Our server names no
    CA here, so JSSE's key manager sends the certificate anyway.)"""
    other = more_pki["client-other"]
    srv = our_server(require_client_certificate=True, request_client_certificate=True, certificate_authorities=[])
    (r,) = java_client(java, 0, [{"port": srv.port, "ca": pki.ca_file, "auth": 1, "send": 10,
                                  "cert": other[0], "key": other[1]}])
    (ours,) = srv.wait(1)
    assert isinstance(ours.error, LocalProtocolError) and ours.error.alert == AlertDescription.unknown_ca, ours.error
    assert r["ok"] == "0" and "Received fatal alert: unknown_ca" in r["err"], r

    leaf = pki.leaf("ec256")
    jsrv = java_server({"cert": leaf.cert_file, "key": leaf.key_file, "ca": pki.ca_file, "clientauth": "need"})
    with pytest.raises(RemoteAlert) as exc:
        our_client(pki, jsrv.port, data=b"x", cert=other)
    (r,) = jsrv.results()
    assert r["ok"] == "0" and "PKIX" in r["err"], r
    assert exc.value.alert == AlertDescription.certificate_unknown, exc.value
