"""Interop with Go's crypto/tls (the ``go`` toolchain, standard library only).

One small Go program in ``tests/peers/go/peer/`` is built once per test
session into a temporary directory (``GO111MODULE=off``, ``CGO_ENABLED=0``,
caches under that directory, so no network and no C compiler are needed) and
run in one of two modes:

* ``-mode server``: an echo server; flags choose the certificate (and OCSP
  staple), ``CurvePreferences``, ALPN, client authentication, how many
  connections to serve (its tickets let later ones resume) and exporter
  values to print;
* ``-mode client``: sends a fixed pattern while reading the echo back, then
  half-closes with close_notify and checks the echo byte for byte; flags as
  above, plus ``-conns`` connections sharing one ``ClientSessionCache``.

Both use crypto/tls's default version range (TLS 1.2 and 1.3) unless told
``-max-version 1.2``, and print one JSON line per connection with what
crypto/tls saw (``ConnectionState``: version, suite, ALPN, SNI,
``DidResume``, peer certificates, verified chains, OCSP response,
``ExportKeyingMaterial`` values, the error text).

Our side is the blocking adapter (``tcpls.sync``) with every engine event
recorded, so the tests see KeyUpdated, SessionTicketReceived, alerts...;
a few tests use the asyncio adapter and the CLI.

crypto/tls does not do 0-RTT (it never sends early_data nor accepts it),
external PSKs or post-handshake authentication, and cannot start a
KeyUpdate itself (it answers one), so those are tested against other peers
only. go 1.19.8's client cannot resume through a HelloRetryRequest (its
binder leaves out the HelloRetryRequest): see
``test_server_hello_retry_with_go_ticket``.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import threading
from typing import Callable, Optional

import pytest

from conftest import DEFAULT_TIMEOUT, ROOT, _Drain, _stop, require_peer, run_tcpls_cli, wait_until
from tcpls import sync
from tcpls.errors import LocalProtocolError, ProtocolError, RemoteAlert
from tcpls.tls import events as ev
from tcpls.tls.config import TLSConfig, load_certificate_files
from tcpls.tls.enums import AlertDescription, CipherSuite, NamedGroup

T = DEFAULT_TIMEOUT
PEERS = ROOT / "tests" / "peers" / "go"

SUITES = {
    CipherSuite.TLS_AES_128_GCM_SHA256: "TLS_AES_128_GCM_SHA256",
    CipherSuite.TLS_AES_256_GCM_SHA384: "TLS_AES_256_GCM_SHA384",
    CipherSuite.TLS_CHACHA20_POLY1305_SHA256: "TLS_CHACHA20_POLY1305_SHA256",
}
GROUPS = {
    "x25519": NamedGroup.x25519,
    "P-256": NamedGroup.secp256r1,
    "P-384": NamedGroup.secp384r1,
    "P-521": NamedGroup.secp521r1,
}


def pattern(n: int) -> bytes:
    """The bytes the Go client sends: byte i is i % 251."""
    block = bytes(range(251))
    return (block * (n // 251 + 1))[:n]


# ------------------------------------------------------------ Go programs
@pytest.fixture(scope="session")
def go_peer(tmp_path_factory) -> str:
    """Build the Go peer (client and server modes) once per session; its path."""
    (go,) = require_peer("go")
    d = tmp_path_factory.mktemp("go")
    env = dict(os.environ)
    env.update(
        GO111MODULE="off", GOFLAGS="", CGO_ENABLED="0", GOCACHE=str(d / "cache"), GOPATH=str(d / "gopath"),
        GOTMPDIR="", HOME=str(d), GOTOOLCHAIN="local",
    )
    exe = d / "peer"
    r = subprocess.run([go, "build", "-o", str(exe), "."], cwd=str(PEERS / "peer"), env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"go build failed:\n{r.stderr}"
    return str(exe)


class GoServer:
    """The Go echo server: ``-conns`` connections, one JSON line each."""

    def __init__(self, exe: str, args: list[str]) -> None:
        self.proc = subprocess.Popen([exe, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._out, self._err = _Drain(self.proc.stdout), _Drain(self.proc.stderr)
        found: list[int] = []

        def ready() -> bool:
            m = re.match(rb"listening (\d+)\n", self._out.data())
            if m is None and self.proc.poll() is not None:
                raise RuntimeError(f"Go server exited early: {self._err.data()!r}")
            if m:
                found.append(int(m.group(1)))
            return m is not None

        wait_until(ready, T, "Go server 'listening'")
        self.address = ("127.0.0.1", found[0])

    def results(self, count: int = 1) -> list[dict]:
        """The JSON lines of the first ``count`` connections (waits for them)."""

        def lines() -> list[bytes]:
            return self._out.data().split(b"\n")[1:-1]

        wait_until(lambda: len(lines()) >= count or self.proc.poll() is not None, T, "Go server results")
        if len(lines()) < count:  # it exited: read what it wrote last
            self._out.join(5)
            self._err.join(5)
        got = [json.loads(x) for x in lines()]
        assert len(got) >= count, f"Go server: {got}, stderr {self._err.data()!r}"
        return got[:count]

    def stop(self) -> None:
        _stop(self.proc)


@pytest.fixture
def go_server(go_peer, pki):
    started: list[GoServer] = []

    def start(*args: str, leaf: str = "ec256", cert=None) -> GoServer:
        c = cert or pki.leaf(leaf)
        srv = GoServer(go_peer, ["-mode", "server", "-cert", c.cert_file, "-key", c.key_file, *args])
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture
def go_client(go_peer, pki):
    """``go_client(port, *args, size=N)`` -> (exit code, JSON results, stderr)."""

    def run(port: int, *args: str, size: int = 0, ca: Optional[str] = pki.ca_file) -> tuple[int, list[dict], str]:
        cmd = [go_peer, "-mode", "client", "-addr", f"127.0.0.1:{port}", "-size", str(size), "-timeout", f"{int(T)}s", *args]
        if ca:
            cmd += ["-ca", ca]
        r = subprocess.run(cmd, capture_output=True, timeout=T + 10)
        results = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
        return r.returncode, results, r.stderr.decode("utf-8", "replace")

    return run


@pytest.fixture(scope="module")
def client_leaves(pki, tmp_path_factory) -> dict:
    """Client certificates (clientAuth, CN client.test) of every key type, from the test CA."""
    from conftest import Leaf, _write_certs, _write_key
    from tcpls import _testcerts

    d = tmp_path_factory.mktemp("go-client-certs")
    out = {}
    for kt in ("ec256", "ec384", "rsa2048", "ed25519"):
        cert, key = _testcerts.make_leaf(pki.ca_cert, pki.ca_key, names=["client.test"], key_type=kt, client=True)
        out[kt] = Leaf(cert, key, _write_certs(d / f"client-{kt}.pem", cert), _write_key(d / f"client-{kt}.key", key))
    return out


@pytest.fixture(scope="module")
def expired(pki, tmp_path_factory) -> dict:
    """Expired leaves from the test CA: ``server`` (localhost), ``client`` (client.test)."""
    import datetime

    from conftest import Leaf, _write_certs, _write_key
    from tcpls import _testcerts

    d = tmp_path_factory.mktemp("go-expired")
    now = datetime.datetime.now(datetime.timezone.utc)
    out = {}
    for role, name in (("server", "localhost"), ("client", "client.test")):
        cert, key = _testcerts.make_leaf(pki.ca_cert, pki.ca_key, names=[name], client=role == "client",
                                         not_before=now - datetime.timedelta(days=30),
                                         not_after=now - datetime.timedelta(days=1))
        out[role] = Leaf(cert, key, _write_certs(d / f"{role}.pem", cert), _write_key(d / f"{role}.key", key))
    return out


@pytest.fixture(scope="module")
def chained(pki, tmp_path_factory) -> dict:
    """Leaves issued by an intermediate CA under the test root; each PEM
    file holds the leaf then the intermediate (the root stays a trust anchor)."""
    from conftest import Leaf, _write_certs, _write_key
    from tcpls import _testcerts

    d = tmp_path_factory.mktemp("go-chain")
    icert, ikey = _testcerts.make_intermediate(pki.ca_cert, pki.ca_key)
    out = {}
    for name, names, client in (("server", ["localhost", "127.0.0.1"], False), ("client", ["client.test"], True)):
        cert, key = _testcerts.make_leaf(icert, ikey, names=names, key_type="ec256", client=client)
        out[name] = Leaf(cert, key, _write_certs(d / f"{name}.pem", [cert, icert]), _write_key(d / f"{name}.key", key))
    out["intermediate"] = icert
    return out


def ocsp_response(pki) -> bytes:
    """A DER OCSP response (good) for the ec256 leaf, signed by the CA."""
    import datetime

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509 import ocsp

    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        ocsp.OCSPResponseBuilder()
        .add_response(
            cert=pki.leaf("ec256").cert, issuer=pki.ca_cert, algorithm=hashes.SHA256(), cert_status=ocsp.OCSPCertStatus.GOOD,
            this_update=now, next_update=now + datetime.timedelta(days=1), revocation_time=None, revocation_reason=None,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, pki.ca_cert)
    )
    return builder.sign(pki.ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


# ------------------------------------------------------------ our side
def record_events(tls: sync.TLSSocket) -> list:
    """Keep every engine event of ``tls`` (the adapter only hands on data)."""
    conn = tls.connection
    events: list = []
    pull = conn.next_event

    def next_event():
        e = pull()
        if e is not None:
            events.append(e)
        return e

    conn.next_event = next_event  # type: ignore[method-assign]
    return events


def key_updates(events: list, direction: str) -> int:
    return sum(1 for e in events if isinstance(e, ev.KeyUpdated) and e.direction == direction)


def client_config(pki, **kw) -> TLSConfig:
    return TLSConfig(trust_anchors=[pki.ca_cert], server_name="localhost", **kw)


def server_config(pki, leaf: str = "ec256", **kw) -> TLSConfig:
    cfg = TLSConfig(**kw)
    chain, key = load_certificate_files(pki.leaf(leaf).cert_file, pki.leaf(leaf).key_file)
    cfg.certificate_chain, cfg.private_key = chain, key
    return cfg


def with_client_cert(pki, cfg: TLSConfig, cert_file: Optional[str] = None, key_file: Optional[str] = None) -> TLSConfig:
    chain, key = load_certificate_files(cert_file or pki.client.cert_file, key_file or pki.client.key_file)
    cfg.certificate_chain, cfg.private_key = chain, key
    return cfg


def echo_through(tls: sync.TLSSocket, data: bytes, *, key_update_every: int = 0, request: bool = True) -> bytes:
    """Send ``data`` to an echo peer while reading the echo back; a KeyUpdate
    after every ``key_update_every`` bytes sent (0: none). Then close_notify
    and read to the peer's close_notify."""
    got = bytearray()
    sent = 0
    window = 512 * 1024
    chunk = 64 * 1024
    next_update = key_update_every or len(data) + 1
    while sent < len(data):
        n = min(chunk, len(data) - sent)
        tls.sendall(data[sent : sent + n])
        sent += n
        if sent >= next_update and sent < len(data):
            tls.key_update(request)
            next_update += key_update_every
        while len(got) < sent - window:
            d = tls.recv(65536)
            assert d, f"peer closed after {len(got)} of {len(data)} echoed bytes"
            got += d
    tls.shutdown_write()
    while d := tls.recv(65536):
        got += d
    return bytes(got)


class OurServer:
    """Our echo server (``tcpls.sync``) in a thread: ``connections`` clients
    one after another; ``on_data(tls, received_so_far)`` may act mid-stream."""

    def __init__(self, config: TLSConfig, connections: int = 1, *, exports=(), on_data: Optional[Callable] = None) -> None:
        self.listener = sync.create_server(("127.0.0.1", 0), config)
        self.listener.settimeout(T)
        self.port = self.listener.getsockname()[1]
        self.exports = exports
        self.on_data = on_data
        self.sessions: list[dict] = []
        self.thread = threading.Thread(target=self._run, args=(connections,), daemon=True)
        self.thread.start()

    def _run(self, n: int) -> None:
        for _ in range(n):
            info: dict = {"received": 0}
            self.sessions.append(info)
            try:
                tls, _ = self.listener.accept()
            except OSError as exc:
                info["error"] = exc
                return
            tls.settimeout(T)
            info["events"] = record_events(tls)
            try:
                tls.do_handshake()
                conn = tls.connection
                info.update(
                    suite=conn.cipher_suite, group=conn.group, hello_retry=conn.hello_retry, alpn=conn.alpn_protocol,
                    sni=conn.server_name, resumed=conn.session_resumed, peer_certificates=conn.peer_certificates,
                    exported=[conn.export_keying_material(label, ctx, n) for label, ctx, n in self.exports],
                )
                while d := tls.recv(65536):
                    info["received"] += len(d)
                    tls.sendall(d)
                    if self.on_data:
                        self.on_data(tls, info["received"])
                info["clean_close"] = True
            except (ProtocolError, OSError) as exc:
                info["error"] = exc
            finally:
                tls.close()

    def join(self) -> list[dict]:
        self.thread.join(T)
        assert not self.thread.is_alive(), "our server thread did not finish"
        return self.sessions

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def our_server():
    started: list[OurServer] = []

    def start(config: TLSConfig, connections: int = 1, **kw) -> OurServer:
        srv = OurServer(config, connections, **kw)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.close()


def connect(address, config: TLSConfig, **kw) -> tuple[sync.TLSSocket, list]:
    """Our client: TCP connect, record events, handshake."""
    sock = socket.create_connection(address, timeout=T)
    tls = sync.TLSSocket.wrap(sock, config, server_side=False, server_name=kw.pop("server_name", None), **kw)
    events = record_events(tls)
    try:
        tls.do_handshake()
    except BaseException:
        tls.close()
        raise
    return tls, events


def first_session(address, config: TLSConfig):
    """Our client's session from a full handshake that echoed b"first"."""
    tls, _ = connect(address, config)
    with tls:
        assert echo_through(tls, b"first") == b"first"
        return tls.connection.session


# ================================================= our client, Go server
@pytest.mark.parametrize("suite", list(SUITES), ids=lambda s: s.name)
def test_client_each_suite(go_server, pki, suite):
    srv = go_server()
    tls, _ = connect(srv.address, client_config(pki, cipher_suites=[suite]))
    with tls:
        data = pattern(100_000)
        assert echo_through(tls, data) == data
        assert tls.cipher_suite == suite and tls.version == "TLSv1.3"
    (res,) = srv.results()
    assert res["suite"] == SUITES[suite] and res["version"] == "0x0304"
    assert res["received"] == len(data) and "error" not in res


@pytest.mark.parametrize("group", list(GROUPS))
def test_client_each_group(go_server, pki, group):
    """Go server with only this curve; our client's one key share is for it: no HRR."""
    srv = go_server("-curves", group)
    cfg = client_config(pki, groups=[GROUPS[group], NamedGroup.x25519], key_share_groups=[GROUPS[group]])
    tls, _ = connect(srv.address, cfg)
    with tls:
        assert echo_through(tls, b"group") == b"group"
        assert tls.group == GROUPS[group] and not tls.hello_retry
    assert "error" not in srv.results()[0]


@pytest.mark.parametrize("key_type", ["ec256", "ec384", "rsa2048", "ed25519"])
def test_client_verifies_each_certificate_type(go_server, pki, key_type):
    srv = go_server(leaf=key_type)
    tls, _ = connect(srv.address, client_config(pki))
    with tls:
        assert echo_through(tls, b"cert") == b"cert"
        assert tls.peer_certificates[0] == pki.leaf(key_type).cert
    assert "error" not in srv.results()[0]


def test_client_verifies_chain_with_intermediate(go_server, pki, chained):
    srv = go_server(cert=chained["server"])
    tls, _ = connect(srv.address, client_config(pki))
    with tls:
        assert echo_through(tls, b"chain") == b"chain"
        assert tls.peer_certificates == [chained["server"].cert, chained["intermediate"]]
    assert "error" not in srv.results()[0]


def test_client_chain_with_intermediate_to_go(go_server, pki, chained):
    srv = go_server("-client-auth", "require", "-client-ca", pki.ca_file)
    cfg = with_client_cert(pki, client_config(pki), chained["client"].cert_file, chained["client"].key_file)
    tls, _ = connect(srv.address, cfg)
    with tls:
        assert echo_through(tls, b"chain") == b"chain"
    (res,) = srv.results()
    assert res["peer_certs"] == ["client.test", "tcpls test intermediate"] and res["verified_chains"] == 1, res


def test_client_fully_qualified_name(go_server, pki):
    """server_name "localhost.": sent without the dot (RFC 6066 §3; Go refuses
    a ClientHello whose SNI ends in one) and verified against the certificate."""
    srv = go_server()
    tls, _ = connect(srv.address, client_config(pki), server_name="localhost.")
    with tls:
        assert echo_through(tls, b"fqdn") == b"fqdn"
    (res,) = srv.results()
    assert res["sni"] == "localhost" and "error" not in res


def test_client_ip_address_no_sni(go_server, pki):
    """server_name 127.0.0.1: checked against the IP SAN, never sent as SNI (RFC 6066 §3)."""
    srv = go_server()
    tls, _ = connect(srv.address, client_config(pki), server_name="127.0.0.1")
    with tls:
        assert echo_through(tls, b"ip") == b"ip"
    (res,) = srv.results()
    assert res["sni"] == "" and "error" not in res


def test_client_ocsp_staple_from_go(go_server, pki, tmp_path):
    der = ocsp_response(pki)
    (tmp_path / "ocsp.der").write_bytes(der)
    srv = go_server("-ocsp", str(tmp_path / "ocsp.der"))
    tls, _ = connect(srv.address, client_config(pki, request_ocsp=True))
    with tls:
        assert echo_through(tls, b"ocsp") == b"ocsp"
        assert tls.connection.ocsp_response == der
    assert "error" not in srv.results()[0]


def test_client_sni_and_alpn(go_server, pki):
    srv = go_server("-alpn", "h2,http/1.1")
    tls, _ = connect(srv.address, client_config(pki, alpn_protocols=["http/1.1", "h2"]))
    with tls:
        assert echo_through(tls, b"x") == b"x"
        assert tls.alpn_protocol == "h2"  # the server's preference
    (res,) = srv.results()
    assert res["sni"] == "localhost" and res["alpn"] == "h2"


def test_client_hello_retry_request(go_server, pki):
    """Our first key share is x25519; the Go server only takes P-384."""
    srv = go_server("-curves", "P-384")
    tls, _ = connect(srv.address, client_config(pki))
    with tls:
        data = pattern(50_000)
        assert echo_through(tls, data) == data
        assert tls.hello_retry and tls.group == NamedGroup.secp384r1
    assert srv.results()[0]["received"] == len(data)


def test_client_resumes_go_ticket(go_server, pki):
    srv = go_server("-conns", "2")
    cfg = client_config(pki)
    tls, events = connect(srv.address, cfg)
    with tls:
        assert echo_through(tls, b"first") == b"first"
        assert not tls.connection.session_resumed
        session = tls.connection.session
    assert session is not None and any(isinstance(e, ev.SessionTicketReceived) for e in events)
    tls, _ = connect(srv.address, cfg, session=session)
    with tls:
        assert echo_through(tls, b"second") == b"second"
        assert tls.connection.session_resumed
        assert tls.peer_certificates == [pki.leaf("ec256").cert]  # the session's, as Go reports its own
    first, second = srv.results(2)
    assert not first["did_resume"] and second["did_resume"]
    assert second["received"] == len(b"second")


def test_client_no_early_data_with_go_tickets(go_server, pki):
    """crypto/tls never allows 0-RTT in its tickets (and aborts a handshake
    that offers it): asking to send early data on a Go session is a
    UsageError before any ClientHello goes out, and the session still
    resumes without it."""
    from tcpls.errors import UsageError

    srv = go_server("-conns", "3")
    cfg = client_config(pki)
    session = first_session(srv.address, cfg)
    assert session.max_early_data == 0
    with pytest.raises(UsageError, match="early data"):
        sync.connect(srv.address, cfg, session=session, early_data=b"0-rtt", timeout=T)
    tls, _ = connect(srv.address, cfg, session=session)
    with tls:
        assert echo_through(tls, b"third") == b"third"
        assert tls.connection.session_resumed and tls.connection.early_data_accepted is None
    first, second, third = srv.results(3)
    assert second["error"] == "EOF" and third["did_resume"]


def test_client_resumes_after_hello_retry(go_server, pki):
    """Resumption through a HelloRetryRequest: the second ClientHello's
    binder covers message_hash(ClientHello1) and the HelloRetryRequest
    (RFC 9846 §4.2.11.2); the Go server checks it."""
    srv = go_server("-conns", "2", "-curves", "P-384")
    cfg = client_config(pki)
    session = first_session(srv.address, cfg)
    tls, _ = connect(srv.address, cfg, session=session)
    with tls:
        assert echo_through(tls, b"second") == b"second"
        assert tls.hello_retry and tls.connection.session_resumed and tls.group == NamedGroup.secp384r1
    assert [r["did_resume"] for r in srv.results(2)] == [False, True]


def test_client_resumes_with_client_certificate(go_server, pki):
    """Go's ticket after client authentication: the resumed connection
    still counts as authenticated by Go (peer certificates kept)."""
    srv = go_server("-conns", "2", "-client-auth", "require", "-client-ca", pki.ca_file)
    cfg = with_client_cert(pki, client_config(pki))
    session = first_session(srv.address, cfg)
    tls, _ = connect(srv.address, cfg, session=session)
    with tls:
        assert echo_through(tls, b"second") == b"second"
        assert tls.connection.session_resumed
    first, second = srv.results(2)
    assert second["did_resume"] and second["peer_certs"] == ["client.test"]


def test_client_alpn_mismatch(go_server, pki):
    srv = go_server("-alpn", "h2")
    with pytest.raises(RemoteAlert) as info:
        connect(srv.address, client_config(pki, alpn_protocols=["imap"]))
    assert info.value.alert == AlertDescription.no_application_protocol
    assert "unsupported application protocols" in srv.results()[0]["error"]


@pytest.mark.parametrize("key_type", ["ec384", "rsa2048", "ed25519"])
def test_client_certificate_types_to_go(go_server, pki, client_leaves, key_type):
    """Our CertificateVerify with each key type (RSA: rsa_pss_rsae), checked by Go."""
    leaf = client_leaves[key_type]
    srv = go_server("-client-auth", "require", "-client-ca", pki.ca_file)
    tls, _ = connect(srv.address, with_client_cert(pki, client_config(pki), leaf.cert_file, leaf.key_file))
    with tls:
        assert echo_through(tls, b"auth") == b"auth"
    (res,) = srv.results()
    assert res["peer_certs"] == ["client.test"] and res["verified_chains"] == 1, res


@pytest.mark.parametrize("mode", ["require", "verify-if-given"])
def test_client_certificate_to_go(go_server, pki, mode):
    srv = go_server("-client-auth", mode, "-client-ca", pki.ca_file)
    tls, _ = connect(srv.address, with_client_cert(pki, client_config(pki)))
    with tls:
        assert echo_through(tls, b"auth") == b"auth"
    (res,) = srv.results()
    assert res["peer_certs"] == ["client.test"] and res["verified_chains"] == 1, res


def test_client_picks_chain_for_go_ca_names(go_server, pki, tmp_path):
    """Go's CertificateRequest names the CAs of ClientCAs (§4.2.4): of our two
    client chains, the one issued under that CA goes out."""
    from tcpls import _testcerts

    other_ca, other_key = _testcerts.make_ca("another CA")
    wrong_cert, wrong_key = _testcerts.make_leaf(other_ca, other_key, names=["wrong.client"], client=True)
    cfg = client_config(pki)
    cfg.certificate_chain, cfg.private_key = [wrong_cert], wrong_key
    good_chain, good_key = load_certificate_files(pki.client.cert_file, pki.client.key_file)
    cfg.extra_certificates = [(good_chain, good_key)]
    srv = go_server("-client-auth", "require", "-client-ca", pki.ca_file)
    tls, _ = connect(srv.address, cfg)
    with tls:
        assert echo_through(tls, b"picked") == b"picked"
    (res,) = srv.results()
    assert res["peer_certs"] == ["client.test"] and res["verified_chains"] == 1, res


def test_client_without_certificate_verify_if_given(go_server, pki):
    srv = go_server("-client-auth", "verify-if-given", "-client-ca", pki.ca_file)
    tls, _ = connect(srv.address, client_config(pki))
    with tls:
        assert echo_through(tls, b"anon") == b"anon"
    (res,) = srv.results()
    assert res["peer_certs"] == [] and "error" not in res


def _handshake_and_read(address, cfg) -> ProtocolError:
    """Our client against a server that rejects us: the error raised by the
    handshake or (TLS 1.3 client authentication fails after the client's
    Finished) by the first read."""
    with pytest.raises(ProtocolError) as info:
        tls, _ = connect(address, cfg)
        with tls:
            tls.sendall(b"hello")
            tls.recv(100)
    return info.value


def test_client_without_certificate_required(go_server, pki):
    """crypto/tls (1.19) aborts with bad_certificate where RFC 9846 §4.4.2.4
    names certificate_required; our client reports the alert it got."""
    srv = go_server("-client-auth", "require", "-client-ca", pki.ca_file)
    err = _handshake_and_read(srv.address, client_config(pki))
    assert isinstance(err, RemoteAlert) and err.alert == AlertDescription.bad_certificate, err
    assert "didn't provide a certificate" in srv.results()[0]["error"]


def test_client_certificate_untrusted_by_go(go_server, pki, tmp_path):
    from conftest import _write_certs, _write_key
    from tcpls import _testcerts

    bca_cert, bca_key = _testcerts.make_ca("another CA")
    cert, key = _testcerts.make_leaf(bca_cert, bca_key, names=["client.test"], client=True)
    cfg = with_client_cert(pki, client_config(pki), _write_certs(tmp_path / "c.pem", cert), _write_key(tmp_path / "c.key", key))
    srv = go_server("-client-auth", "require", "-client-ca", pki.ca_file)
    err = _handshake_and_read(srv.address, cfg)
    assert isinstance(err, RemoteAlert) and err.alert == AlertDescription.bad_certificate, err
    assert "unknown authority" in srv.results()[0]["error"]


@pytest.mark.parametrize("request_update", [True, False], ids=["requested", "not_requested"])
def test_client_key_update_during_transfer(go_server, pki, request_update):
    """4 MB echoed through a Go server while we send a KeyUpdate after every
    MB; Go keeps reading, and answers with its own KeyUpdate when asked."""
    srv = go_server()
    tls, events = connect(srv.address, client_config(pki))
    data = pattern(4 * 1024 * 1024)
    with tls:
        assert echo_through(tls, data, key_update_every=1024 * 1024, request=request_update) == data
    assert key_updates(events, "send") == 3
    assert key_updates(events, "receive") == (3 if request_update else 0)
    (res,) = srv.results()
    assert res["received"] == len(data) and "error" not in res


def test_client_exporters_match(go_server, pki):
    srv = go_server("-export", "EXPORTER-go-test:-:32;EXPORTER-go-test:00ff10:64;other label::16")
    tls, _ = connect(srv.address, client_config(pki))
    with tls:
        conn = tls.connection
        ours = [
            conn.export_keying_material("EXPORTER-go-test", b"", 32).hex(),
            conn.export_keying_material("EXPORTER-go-test", b"\x00\xff\x10", 64).hex(),
            conn.export_keying_material("other label", b"", 16).hex(),
        ]
        assert echo_through(tls, b"x") == b"x"
    assert srv.results()[0]["exporters"] == ours


def test_client_rejects_wrong_name(go_server, pki):
    srv = go_server()
    with pytest.raises(LocalProtocolError) as info:
        connect(srv.address, client_config(pki), server_name="wrong.example")
    assert info.value.alert == AlertDescription.bad_certificate
    assert srv.results()[0]["error"] == "remote error: tls: bad certificate"


def test_client_rejects_untrusted_ca(go_server, pki):
    srv = go_server(cert=pki.untrusted)
    with pytest.raises(LocalProtocolError) as info:
        connect(srv.address, client_config(pki))
    assert info.value.alert == AlertDescription.unknown_ca
    assert srv.results()[0]["error"] == "remote error: tls: unknown certificate authority"


def test_client_no_common_suite(go_server, pki):
    """We offer only AES-128-CCM, which crypto/tls does not implement."""
    srv = go_server()
    with pytest.raises(RemoteAlert) as info:
        connect(srv.address, client_config(pki, cipher_suites=[CipherSuite.TLS_AES_128_CCM_SHA256]))
    assert info.value.alert == AlertDescription.handshake_failure
    assert "no cipher suite supported by both" in srv.results()[0]["error"]


def test_client_refused_by_tls12_only_server(go_server, pki):
    srv = go_server("-max-version", "1.2")
    with pytest.raises(RemoteAlert) as info:
        connect(srv.address, client_config(pki))
    assert info.value.alert == AlertDescription.protocol_version
    assert "unsupported versions" in srv.results()[0]["error"]


def test_cli_client_key_update_and_resumption(go_server, pki, tmp_path):
    """``tcpls client --key-update --sess-out`` then ``--sess-in`` against
    the Go server: 1 MB echoed after our KeyUpdate, then a resumption that
    both sides report."""
    srv = go_server("-conns", "2")
    sess = tmp_path / "session"
    base = ["client", "127.0.0.1", str(srv.address[1]), "--sni", "localhost", "--cafile", pki.ca_file, "-v"]
    data = pattern(1024 * 1024)
    r = run_tcpls_cli([*base, "--key-update", "--sess-out", str(sess)], data)
    assert r.returncode == 0 and r.stdout == data, r.stderr[-2000:]
    assert b"resumed: True" not in r.stderr and sess.stat().st_size > 0
    r = run_tcpls_cli([*base, "--sess-in", str(sess)], b"resumed hello")
    assert r.returncode == 0 and r.stdout == b"resumed hello", r.stderr[-2000:]
    assert b"resumed: True" in r.stderr
    first, second = srv.results(2)
    assert first["received"] == len(data) and [first["did_resume"], second["did_resume"]] == [False, True]


def test_aio_client_key_update(go_server, pki):
    """The asyncio adapter: 2 MB through the Go echo server with a KeyUpdate
    (update_requested) in the middle, then write_eof and the rest of the echo."""
    from tcpls import aio

    srv = go_server()
    data = pattern(2 * 1024 * 1024)

    async def main() -> bytes:
        reader, writer = await aio.open_connection(*srv.address, config=client_config(pki))
        got = bytearray()

        async def read_all() -> None:
            while chunk := await reader.read(65536):
                got.extend(chunk)

        task = asyncio.ensure_future(read_all())
        half = len(data) // 2
        writer.write(data[:half])
        await writer.drain()
        writer.key_update(True)
        writer.write(data[half:])
        await writer.drain()
        writer.write_eof()
        await asyncio.wait_for(task, T)
        writer.close()
        await writer.wait_closed()
        return bytes(got)

    assert asyncio.run(asyncio.wait_for(main(), T)) == data
    (res,) = srv.results()
    assert res["received"] == len(data) and "error" not in res


def test_client_rejects_expired_certificate(go_server, pki, expired):
    srv = go_server(cert=expired["server"])
    with pytest.raises(LocalProtocolError) as info:
        connect(srv.address, client_config(pki))
    assert info.value.alert == AlertDescription.certificate_expired
    assert srv.results()[0]["error"] == "remote error: tls: expired certificate"


def test_client_expired_certificate_to_go(go_server, pki, expired):
    srv = go_server("-client-auth", "require", "-client-ca", pki.ca_file)
    cfg = with_client_cert(pki, client_config(pki), expired["client"].cert_file, expired["client"].key_file)
    err = _handshake_and_read(srv.address, cfg)
    assert isinstance(err, RemoteAlert) and err.alert == AlertDescription.bad_certificate, err
    assert "certificate has expired" in srv.results()[0]["error"]


# ================================================= Go client, our server
@pytest.mark.parametrize("suite", list(SUITES), ids=lambda s: s.name)
def test_server_each_suite(our_server, go_client, pki, suite):
    srv = our_server(server_config(pki, cipher_suites=[suite]))
    rc, (res,), err = go_client(srv.port, size=100_000)
    assert rc == 0 and res["echo_ok"], (res, err)
    assert res["suite"] == SUITES[suite] and res["version"] == "0x0304"
    (info,) = srv.join()
    assert info["suite"] == suite and info["received"] == 100_000 and info.get("clean_close")


@pytest.mark.parametrize("group", list(GROUPS))
def test_server_each_group(our_server, go_client, pki, group):
    srv = our_server(server_config(pki))
    rc, (res,), err = go_client(srv.port, "-curves", group, size=1000)
    assert rc == 0 and res["echo_ok"], (res, err)
    (info,) = srv.join()
    assert info["group"] == GROUPS[group] and not info["hello_retry"]


@pytest.mark.parametrize("key_type", ["ec256", "ec384", "rsa2048", "ed25519"])
def test_server_each_certificate_type(our_server, go_client, pki, key_type):
    srv = our_server(server_config(pki, leaf=key_type))
    rc, (res,), err = go_client(srv.port, size=1000)
    assert rc == 0 and res["echo_ok"], (res, err)
    assert res["peer_certs"] == ["localhost"] and res["verified_chains"] == 1
    srv.join()


def test_server_chain_with_intermediate(our_server, go_client, pki, chained):
    cfg = TLSConfig()
    cfg.certificate_chain, cfg.private_key = load_certificate_files(chained["server"].cert_file, chained["server"].key_file)
    srv = our_server(cfg)
    rc, (res,), err = go_client(srv.port, size=1000)
    assert rc == 0 and res["echo_ok"], (res, err)
    assert res["peer_certs"] == ["localhost", "tcpls test intermediate"] and res["verified_chains"] == 1
    srv.join()


def test_server_go_client_chain_with_intermediate(our_server, go_client, pki, chained):
    srv = our_server(server_config(pki, request_client_certificate=True, require_client_certificate=True,
                                   trust_anchors=[pki.ca_cert]))
    rc, (res,), err = go_client(srv.port, "-cert", chained["client"].cert_file, "-key", chained["client"].key_file, size=1000)
    assert rc == 0 and res["echo_ok"], (res, err)
    (info,) = srv.join()
    assert info["peer_certificates"] == [chained["client"].cert, chained["intermediate"]]


def test_server_go_client_ip_address(our_server, go_client, pki):
    """Go verifies our certificate's IP SAN and sends no SNI for an address."""
    srv = our_server(server_config(pki))
    rc, (res,), err = go_client(srv.port, "-sni", "127.0.0.1", size=10)
    assert rc == 0 and res["echo_ok"] and res["verified_chains"] == 1, (res, err)
    (info,) = srv.join()
    assert info["sni"] is None


def test_server_ocsp_staple_to_go(our_server, go_client, pki):
    """crypto/tls always asks for a stapled OCSP response (status_request)."""
    der = ocsp_response(pki)
    srv = our_server(server_config(pki, ocsp_response=der))
    rc, (res,), err = go_client(srv.port, size=10)
    assert rc == 0 and res["echo_ok"] and res["ocsp"] == der.hex(), (res, err)
    srv.join()


def test_server_no_common_suite(our_server, go_client, pki):
    srv = our_server(server_config(pki, cipher_suites=[CipherSuite.TLS_AES_128_CCM_SHA256]))
    rc, (res,), err = go_client(srv.port, size=10)
    assert rc != 0 and res["error"] == "remote error: tls: handshake failure", (res, err)
    (info,) = srv.join()
    assert isinstance(info["error"], LocalProtocolError) and info["error"].alert == AlertDescription.handshake_failure


def test_server_refuses_tls12_only_go_client(our_server, go_client, pki):
    srv = our_server(server_config(pki))
    rc, (res,), err = go_client(srv.port, "-max-version", "1.2", size=10)
    assert rc != 0 and res["error"] == "remote error: tls: protocol version not supported", (res, err)
    (info,) = srv.join()
    assert isinstance(info["error"], LocalProtocolError) and info["error"].alert == AlertDescription.protocol_version


def test_cli_server_key_update_and_tickets(tcpls_cli_server, go_client, pki):
    """``tcpls server --echo --key-update`` with a Go client: two
    connections of 1 MB each, the second resumed from the first's ticket."""
    leaf = pki.leaf("ec256")
    srv = tcpls_cli_server("--echo", "--cert", leaf.cert_file, "--key", leaf.key_file, "--key-update", "-v")
    rc, results, err = go_client(srv.port, "-conns", "2", size=1024 * 1024)
    assert rc == 0 and [r["echo_ok"] for r in results] == [True, True], (results, err, srv.stderr[-2000:])
    assert [r["did_resume"] for r in results] == [False, True]


def test_server_hello_retry_cookie(our_server, go_client, pki):
    """Our HelloRetryRequest with a cookie (§4.2.2): Go echoes it in ClientHello2."""
    srv = our_server(server_config(pki, groups=[NamedGroup.secp384r1], hello_retry_cookie=True))
    rc, (res,), err = go_client(srv.port, size=1000)
    assert rc == 0 and res["echo_ok"], (res, err)
    (info,) = srv.join()
    assert info["hello_retry"] and info["group"] == NamedGroup.secp384r1


def test_aio_server_key_update_and_tickets(go_client, pki):
    """The asyncio adapter as an echo server for two Go connections of 1 MB:
    a KeyUpdate (update_requested) after the first chunk, the second
    connection resumed."""
    from tcpls import aio

    resumed: list[bool] = []

    async def main() -> tuple:
        async def echo(reader, writer) -> None:
            first = True
            while chunk := await reader.read(65536):
                writer.write(chunk)
                if first:
                    writer.key_update(True)
                    first = False
                await writer.drain()
            resumed.append(writer.protocol.connection.session_resumed)
            writer.close()

        server = await aio.start_server(echo, "127.0.0.1", 0, config=server_config(pki))
        port = server.sockets[0].getsockname()[1]
        try:
            return await asyncio.get_running_loop().run_in_executor(
                None, lambda: go_client(port, "-conns", "2", size=1024 * 1024)
            )
        finally:
            server.close()
            await server.wait_closed()

    rc, results, err = asyncio.run(main())
    assert rc == 0 and [r["echo_ok"] for r in results] == [True, True], (results, err)
    assert [r["did_resume"] for r in results] == [False, True] and resumed == [False, True]


def test_server_sni_and_alpn(our_server, go_client, pki):
    srv = our_server(server_config(pki, alpn_protocols=["http/1.1", "h2"]))
    rc, (res,), err = go_client(srv.port, "-alpn", "h2,http/1.1", size=10)
    assert rc == 0 and res["echo_ok"] and res["alpn"] == "http/1.1", (res, err)
    (info,) = srv.join()
    assert info["sni"] == "localhost" and info["alpn"] == "http/1.1"


def test_server_hello_retry_request(our_server, go_client, pki):
    """Go sends one key share (x25519, its first curve); we take P-256 only."""
    srv = our_server(server_config(pki, groups=[NamedGroup.secp256r1, NamedGroup.secp384r1]))
    rc, (res,), err = go_client(srv.port, "-curves", "x25519,P-256", size=50_000)
    assert rc == 0 and res["echo_ok"], (res, err)
    (info,) = srv.join()
    assert info["hello_retry"] and info["group"] == NamedGroup.secp256r1


def test_server_ticket_resumed_by_go(our_server, go_client, pki):
    srv = our_server(server_config(pki), connections=2)
    rc, results, err = go_client(srv.port, "-conns", "2", size=1000)
    assert rc == 0 and [r["echo_ok"] for r in results] == [True, True], (results, err)
    assert [r["did_resume"] for r in results] == [False, True]
    first, second = srv.join()
    assert not first["resumed"] and second["resumed"]
    assert second["received"] == 1000


def test_server_hello_retry_with_go_ticket(our_server, go_client, pki):
    """A Go client resuming through our HelloRetryRequest.

    go 1.19.8's crypto/tls computes the second ClientHello's PSK binder
    over message_hash(ClientHello1) + ClientHello2, leaving out the
    HelloRetryRequest that RFC 9846 §4.2.11.2 puts in that transcript (and
    adds the HelloRetryRequest twice to its handshake transcript). We must
    reject such a binder with decrypt_error, and Go reports it. A Go
    without the bug resumes, seen by both sides."""
    srv = our_server(server_config(pki, groups=[NamedGroup.secp256r1]), connections=2)
    rc, results, err = go_client(srv.port, "-conns", "2", "-curves", "x25519,P-256", size=1000)
    first, second = srv.join()
    assert results[0]["echo_ok"] and first["hello_retry"] and not first["resumed"]
    if results[1].get("did_resume"):
        assert second["resumed"] and second["hello_retry"] and results[1]["echo_ok"]
    else:
        assert isinstance(second["error"], LocalProtocolError) and second["error"].alert == AlertDescription.decrypt_error
        assert "binder" in second["error"].message
        assert results[1]["error"] == "remote error: tls: error decrypting message", (results, err)


def test_server_alpn_mismatch(our_server, go_client, pki):
    srv = our_server(server_config(pki, alpn_protocols=["h2"]))
    rc, (res,), err = go_client(srv.port, "-alpn", "imap", size=10)
    assert rc != 0 and res["error"] == "remote error: tls: no application protocol", (res, err)
    (info,) = srv.join()
    assert isinstance(info["error"], LocalProtocolError) and info["error"].alert == AlertDescription.no_application_protocol


@pytest.mark.parametrize("key_type", ["ec384", "rsa2048", "ed25519"])
def test_server_go_client_certificate_types(our_server, go_client, pki, client_leaves, key_type):
    """Go's CertificateVerify with each key type, checked by our server."""
    leaf = client_leaves[key_type]
    srv = our_server(server_config(pki, request_client_certificate=True, require_client_certificate=True,
                                   trust_anchors=[pki.ca_cert]))
    rc, (res,), err = go_client(srv.port, "-cert", leaf.cert_file, "-key", leaf.key_file, size=1000)
    assert rc == 0 and res["echo_ok"], (res, err)
    (info,) = srv.join()
    assert info["peer_certificates"] == [leaf.cert]


def test_server_ticket_keeps_go_client_identity(our_server, go_client, pki):
    """A Go client that authenticated with a certificate resumes: both
    sides still report the client certificate on the resumed connection."""
    srv = our_server(server_config(pki, request_client_certificate=True, require_client_certificate=True,
                                   trust_anchors=[pki.ca_cert]), connections=2)
    rc, results, err = go_client(srv.port, "-conns", "2", "-cert", pki.client.cert_file, "-key", pki.client.key_file, size=100)
    assert rc == 0 and [r["did_resume"] for r in results] == [False, True], (results, err)
    first, second = srv.join()
    assert second["resumed"] and first["peer_certificates"] == second["peer_certificates"] == [pki.client.cert]


def test_server_requires_go_client_certificate(our_server, go_client, pki):
    srv = our_server(server_config(pki, request_client_certificate=True, require_client_certificate=True,
                                   trust_anchors=[pki.ca_cert]))
    rc, (res,), err = go_client(srv.port, "-cert", pki.client.cert_file, "-key", pki.client.key_file, size=1000)
    assert rc == 0 and res["echo_ok"], (res, err)
    (info,) = srv.join()
    assert info["peer_certificates"] == [pki.client.cert]


def test_server_optional_client_certificate_not_given(our_server, go_client, pki):
    srv = our_server(server_config(pki, request_client_certificate=True, trust_anchors=[pki.ca_cert]))
    rc, (res,), err = go_client(srv.port, size=1000)
    assert rc == 0 and res["echo_ok"], (res, err)
    (info,) = srv.join()
    assert info["peer_certificates"] == []


def test_server_requires_certificate_go_has_none(our_server, go_client, pki):
    srv = our_server(server_config(pki, request_client_certificate=True, require_client_certificate=True,
                                   trust_anchors=[pki.ca_cert]))
    rc, (res,), err = go_client(srv.port, size=1000)
    assert rc != 0 and res["error"].endswith("remote error: tls: certificate required"), (res, err)
    (info,) = srv.join()
    assert isinstance(info["error"], LocalProtocolError)
    assert info["error"].alert == AlertDescription.certificate_required


@pytest.mark.parametrize(
    "authorities, alert",
    [(None, AlertDescription.certificate_required), ([], AlertDescription.unknown_ca)],
    ids=["ca_names_sent", "no_ca_names"],
)
def test_server_rejects_untrusted_go_client_certificate(our_server, go_client, pki, tmp_path, authorities, alert):
    """A Go client whose only certificate comes from another CA. When our
    CertificateRequest names our CA (the default), Go declines to send it
    (empty Certificate: certificate_required); when it names none, Go sends
    it and we reject it with unknown_ca."""
    from conftest import _write_certs, _write_key
    from tcpls import _testcerts

    bca_cert, bca_key = _testcerts.make_ca("another CA")
    cert, key = _testcerts.make_leaf(bca_cert, bca_key, names=["client.test"], client=True)
    srv = our_server(server_config(pki, request_client_certificate=True, require_client_certificate=True,
                                   trust_anchors=[pki.ca_cert], certificate_authorities=authorities))
    rc, (res,), err = go_client(srv.port, "-cert", _write_certs(tmp_path / "c.pem", cert),
                                "-key", _write_key(tmp_path / "c.key", key), size=1000)
    text = "certificate required" if alert == AlertDescription.certificate_required else "unknown certificate authority"
    assert rc != 0 and res["error"].endswith(f"remote error: tls: {text}"), (res, err)
    (info,) = srv.join()
    assert isinstance(info["error"], LocalProtocolError) and info["error"].alert == alert


@pytest.mark.parametrize("request_update", [True, False], ids=["requested", "not_requested"])
def test_server_key_update_during_transfer(our_server, go_client, pki, request_update):
    """Our server sends a KeyUpdate after every MB it echoes to a Go client
    sending 4 MB; the echo stays byte-exact and Go updates its keys when asked."""
    mb = 1024 * 1024
    marks = {mb, 2 * mb, 3 * mb}

    def on_data(tls, received: int) -> None:
        while marks and received >= min(marks):
            marks.discard(min(marks))
            tls.key_update(request_update)

    srv = our_server(server_config(pki), on_data=on_data)
    rc, (res,), err = go_client(srv.port, size=4 * mb)
    assert rc == 0 and res["echo_ok"] and res["received"] == 4 * mb, (res, err)
    (info,) = srv.join()
    assert key_updates(info["events"], "send") == 3
    assert key_updates(info["events"], "receive") == (3 if request_update else 0)


def test_server_exporters_match(our_server, go_client, pki):
    exports = [("EXPORTER-go-test", b"", 32), ("EXPORTER-go-test", b"\x00\xff\x10", 64), ("other label", b"", 16)]
    srv = our_server(server_config(pki), exports=exports)
    rc, (res,), err = go_client(srv.port, "-export", "EXPORTER-go-test:-:32;EXPORTER-go-test:00ff10:64;other label::16", size=1)
    assert rc == 0, (res, err)
    (info,) = srv.join()
    assert res["exporters"] == [v.hex() for v in info["exported"]]


def test_server_go_rejects_wrong_name(our_server, go_client, pki):
    srv = our_server(server_config(pki))
    rc, (res,), err = go_client(srv.port, "-sni", "wrong.example", size=10)
    assert rc != 0 and res["handshake_error"] and "not wrong.example" in res["error"], (res, err)
    (info,) = srv.join()
    assert isinstance(info["error"], RemoteAlert) and info["error"].alert == AlertDescription.bad_certificate


def test_server_go_rejects_expired_certificate(our_server, go_client, pki, expired):
    cfg = TLSConfig()
    cfg.certificate_chain, cfg.private_key = load_certificate_files(expired["server"].cert_file, expired["server"].key_file)
    srv = our_server(cfg)
    rc, (res,), err = go_client(srv.port, size=10)
    assert rc != 0 and "certificate has expired" in res["error"], (res, err)
    (info,) = srv.join()
    assert isinstance(info["error"], RemoteAlert) and info["error"].alert == AlertDescription.bad_certificate


def test_server_rejects_expired_go_client_certificate(our_server, go_client, pki, expired):
    srv = our_server(server_config(pki, request_client_certificate=True, require_client_certificate=True,
                                   trust_anchors=[pki.ca_cert]))
    rc, (res,), err = go_client(srv.port, "-cert", expired["client"].cert_file, "-key", expired["client"].key_file, size=10)
    assert rc != 0 and res["error"].endswith("remote error: tls: expired certificate"), (res, err)
    (info,) = srv.join()
    assert isinstance(info["error"], LocalProtocolError) and info["error"].alert == AlertDescription.certificate_expired


def test_server_go_rejects_untrusted_ca(our_server, go_client, pki):
    srv = our_server(server_config(pki))
    rc, (res,), err = go_client(srv.port, size=10, ca=pki.bogus_ca_file)
    assert rc != 0 and "certificate signed by unknown authority" in res["error"], (res, err)
    (info,) = srv.join()
    assert isinstance(info["error"], RemoteAlert) and info["error"].alert == AlertDescription.bad_certificate
