"""Interop with GnuTLS 3.7.9 (``gnutls-cli`` / ``gnutls-serv`` from gnutls-bin).

Both roles: our client engine against ``gnutls-serv --echo``, and
``gnutls-cli`` against our server engine, each driven over a real TCP
socket in this process so that every event of ours is visible to the test,
and GnuTLS's own report (its output, or its ``-d`` handshake trace) is
checked for the other side's view. A few tests run our CLI and adapters.

Covered: groups, suites, certificate key types and chains, ALPN, SNI,
HelloRetryRequest, resumption, 0-RTT accepted and rejected, external PSKs
(psk_dhe_ke, psk_ke), client certificates, post-handshake authentication,
KeyUpdate, exporters, record_size_limit, certificate compression and OCSP
stapling. GnuTLS's deviations met on the way are in docs/interop-gnutls.md.
"""

from __future__ import annotations

import datetime
import os
import re
import subprocess
import time
from typing import Optional, Sequence

from cryptography.hazmat.primitives import serialization
import pytest

from conftest import _Drain, _stop, close_stdin_and_wait, free_port, require_peer, wait_until
from enginepeers import EngineClient, EngineServer
from tcpls.errors import RemoteAlert, TLSError
from tcpls.tls import events as ev
from tcpls.tls.config import TLSConfig
from tcpls.tls.enums import CertificateCompressionAlgorithm, CipherSuite, NamedGroup, PskKeyExchangeMode
from tcpls.tls.session import ExternalPSK, Session

T = 10.0
PSK_HEX = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
PSK_ID = "gnutls-psk-user"
TLS13 = "NORMAL:-VERS-ALL:+VERS-TLS1.3"

GROUPS = {  # ours -> GnuTLS priority keyword
    NamedGroup.x25519: "GROUP-X25519",
    NamedGroup.secp256r1: "GROUP-SECP256R1",
    NamedGroup.secp384r1: "GROUP-SECP384R1",
    NamedGroup.ffdhe2048: "GROUP-FFDHE2048",
}
KX_NAMES = {  # ours -> the key exchange in GnuTLS's "- Description:" line
    NamedGroup.x25519: "ECDHE-X25519",
    NamedGroup.secp256r1: "ECDHE-SECP256R1",
    NamedGroup.secp384r1: "ECDHE-SECP384R1",
    NamedGroup.ffdhe2048: "DHE-FFDHE2048",
}
SUITES = {  # ours -> GnuTLS cipher keyword
    CipherSuite.TLS_AES_128_GCM_SHA256: "AES-128-GCM",
    CipherSuite.TLS_AES_256_GCM_SHA384: "AES-256-GCM",
    CipherSuite.TLS_CHACHA20_POLY1305_SHA256: "CHACHA20-POLY1305",
}


def only_group(g: NamedGroup) -> str:
    return f"{TLS13}:-GROUP-ALL:+{GROUPS[g]}"


def only_suite(s: CipherSuite) -> str:
    return f"{TLS13}:-CIPHER-ALL:+{SUITES[s]}"


# ====================================================================== GnuTLS processes
class GnutlsServer:
    """``gnutls-serv --echo`` on 127.0.0.1:<free port>, stdout/stderr collected."""

    def __init__(self, args: Sequence[str]) -> None:
        (serv,) = require_peer("gnutls-serv")
        for attempt in range(3):  # the free port may be taken again before gnutls-serv binds it
            self.port = free_port()
            self.proc = subprocess.Popen(
                [serv, "--echo", "-p", str(self.port), *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            self._out = _Drain(self.proc.stdout)
            self._err = _Drain(self.proc.stderr)
            wait_until(self._ready, T, "gnutls-serv listening")
            if "bind() failed" not in self.output:
                break
            _stop(self.proc)  # it goes on with IPv6 only when IPv4's bind fails
            if attempt == 2:
                raise RuntimeError(f"gnutls-serv could not bind a port: {self.output}")
        self.address = ("127.0.0.1", self.port)

    def _ready(self) -> bool:
        out = self.output
        if re.search(r"listening on IPv4 \S+ port \d+\.\.\.(done|bind\(\) failed)", out):
            return True
        if self.proc.poll() is not None:
            raise RuntimeError(f"gnutls-serv exited early ({self.proc.returncode}): {out}")
        return False

    @property
    def output(self) -> str:
        return (self._out.data() + self._err.data()).decode("latin-1")

    def wait_output(self, pattern: str, what: str) -> re.Match:
        m = None

        def seen() -> bool:
            nonlocal m
            m = re.search(pattern, self.output)
            return m is not None

        wait_until(seen, T, what)
        assert m is not None
        return m

    def stop(self) -> None:
        _stop(self.proc)


@pytest.fixture
def gnutls_server():
    started: list[GnutlsServer] = []

    def start(*args: str) -> GnutlsServer:
        srv = GnutlsServer(args)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


class GnutlsClient:
    """``gnutls-cli`` against 127.0.0.1:port; stdin stays open until closed."""

    def __init__(self, port: int, args: Sequence[str]) -> None:
        (cli,) = require_peer("gnutls-cli")
        self.proc = subprocess.Popen(
            [cli, "-p", str(port), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._out = _Drain(self.proc.stdout)
        self._err = _Drain(self.proc.stderr)

    @property
    def stdout(self) -> bytes:
        return self._out.data()

    @property
    def output(self) -> str:
        return (self._out.data() + self._err.data()).decode("latin-1")

    def send(self, data: bytes) -> None:
        """Write to gnutls-cli's stdin; if it already exited (a failed
        handshake), the bytes are dropped and the waits report its exit."""
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass

    def wait_stdout(self, data: bytes, what: str = "echo", timeout: float = T) -> None:
        def seen() -> bool:
            if data in self._out.data():
                return True
            if self.proc.poll() is not None:
                time.sleep(0.1)  # let the drain threads catch the last bytes
                if data in self._out.data():
                    return True
                raise RuntimeError(f"gnutls-cli exited ({self.proc.returncode}) before {what}: {self.output[-3000:]}")
            return False

        try:
            wait_until(seen, timeout, what)
        except TimeoutError:
            raise TimeoutError(f"no {what} from gnutls-cli; output: {self.output[-3000:]}") from None

    def finish(self) -> int:
        """Close stdin (gnutls-cli then sends close_notify) and wait for exit."""
        return close_stdin_and_wait(self.proc, (self._out, self._err), T)

    def stop(self) -> None:
        _stop(self.proc)
        try:
            self.proc.stdin.close()
        except OSError:
            pass


@pytest.fixture
def gnutls_client():
    started: list[GnutlsClient] = []

    def start(port: int, *args: str) -> GnutlsClient:
        c = GnutlsClient(port, args)
        started.append(c)
        return c

    yield start
    for c in started:
        c.stop()


def run_gnutls_cli(port: int, args: Sequence[str], data: bytes = b"", expect: Optional[bytes] = None,
                   *, echo: bool = True) -> GnutlsClient:
    """One gnutls-cli session: send ``data``, wait for ``expect`` (default:
    ``data``) echoed unless ``echo`` is false, close. Its exit code is then
    ``c.proc.returncode``."""
    c = GnutlsClient(port, args)
    try:
        if data:
            c.send(data)
            if echo:
                c.wait_stdout(expect if expect is not None else data)
        c.finish()
    finally:
        c.stop()
    return c


# ====================================================================== our engines
@pytest.fixture
def engine_server():
    started: list[EngineServer] = []

    def start(config: TLSConfig, connections: int = 1, after_handshake=None) -> EngineServer:
        srv = EngineServer(config, connections, after_handshake)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.listener.close()


def client_cfg(pki, **kw) -> TLSConfig:
    cfg = TLSConfig(**kw)
    cfg.load_verify_locations(pki.ca_file)
    return cfg


def server_cfg(pki, key_type: str = "ec256", **kw) -> TLSConfig:
    cfg = TLSConfig(**kw)
    leaf = pki.leaf(key_type)
    cfg.load_cert_chain(leaf.cert_file, leaf.key_file)
    return cfg


def serv_args(pki, key_type: str = "ec256", priority: str = TLS13) -> list[str]:
    """gnutls-serv with one of our leaves, not asking for client certificates."""
    leaf = pki.leaf(key_type)
    return ["--x509certfile", leaf.cert_file, "--x509keyfile", leaf.key_file, "--disable-client-cert",
            "--priority", priority]


def cli_args(pki, priority: str = TLS13, *extra: str) -> list[str]:
    return ["--x509cafile", pki.ca_file, "--priority", priority, *extra, "localhost"]


def early_cli_args(pki, tmp_path, early: bytes, *extra: str) -> list[str]:
    """gnutls-cli arguments to connect twice, the second time resuming with
    ``early`` (written to a file in ``tmp_path``) as 0-RTT data."""
    path = tmp_path / "early.txt"
    path.write_bytes(early)
    return cli_args(pki, TLS13, *extra, "--resume", "--waitresumption", "--earlydata", str(path))


def text_lines(n: int) -> bytes:
    """About ``n`` bytes of distinct newline-terminated lines: gnutls-serv's
    echo mode answers line by line (and treats CR LF as LF)."""
    return b"".join(os.urandom(32).hex().encode() + b"\n" for _ in range(n // 65 + 1))


def alert_of(info: dict) -> Optional[str]:
    """The alert name of the error our server recorded for a connection (None: no alert error)."""
    return getattr(info.get("error"), "alert_name", None)


def ok(info: dict) -> dict:
    assert "error" not in info, f"our server failed: {info.get('error')!r}"
    return info


def key_update_directions(info: dict) -> list[str]:
    """The directions of the KeyUpdated events our server saw, in order."""
    return [e.direction for e in info["events"] if isinstance(e, ev.KeyUpdated)]


def completed(info: dict) -> ev.HandshakeComplete:
    ok(info)
    (hc,) = [e for e in info["events"] if isinstance(e, ev.HandshakeComplete)]
    return hc


# ====================================================================== 1. full handshakes
# ---------------------------------------------------------------- our client -> gnutls-serv
@pytest.mark.parametrize("group", list(GROUPS), ids=lambda g: g.name)
def test_client_groups(gnutls_server, pki, group):
    srv = gnutls_server(*serv_args(pki, priority=only_group(group)))
    cl = EngineClient.connected(srv.address, client_cfg(pki))
    assert cl.conn.group == group
    # our first ClientHello has an x25519 share only: the others need a HelloRetryRequest
    assert cl.conn.hello_retry == (group != NamedGroup.x25519)
    cl.echo(b"group test " + group.name.encode() + b"\n")
    cl.close()
    kx = KX_NAMES[group]
    srv.wait_output(rf"- Description: \(TLS1\.3-X\.509\)-\({kx}\)", "gnutls-serv's description")


@pytest.mark.parametrize("suite", list(SUITES), ids=lambda s: s.name)
def test_client_suites(gnutls_server, pki, suite):
    srv = gnutls_server(*serv_args(pki, priority=only_suite(suite)))
    cl = EngineClient.connected(srv.address, client_cfg(pki))
    assert cl.conn.cipher_suite == suite
    cl.echo(text_lines(40000))  # several full records each way
    cl.close()
    srv.wait_output(rf"- Description: .*\({SUITES[suite]}\)", "gnutls-serv's description")


@pytest.mark.parametrize("key_type,sig", [("ec256", "ECDSA-SECP256R1-SHA256"), ("ec384", "ECDSA-SECP384R1-SHA384"),
                                          ("rsa2048", "RSA-PSS-RSAE-SHA256"), ("ed25519", "EdDSA-Ed25519")])
def test_client_certificate_types(gnutls_server, pki, key_type, sig):
    srv = gnutls_server(*serv_args(pki, key_type))
    cl = EngineClient.connected(srv.address, client_cfg(pki))
    assert cl.conn.peer_certificates[0] == pki.leaf(key_type).cert
    cl.echo(b"cert " + key_type.encode() + b"\n")
    cl.close()
    srv.wait_output(rf"- Description: .*\({re.escape(sig)}\)", "gnutls-serv's signature scheme")


def test_client_alpn_and_sni(gnutls_server, pki):
    srv = gnutls_server(*serv_args(pki), "--alpn", "h2", "--alpn", "http/1.1", "--alpn-fatal",
                        "--sni-hostname", "localhost", "--sni-hostname-fatal")
    cl = EngineClient.connected(srv.address, client_cfg(pki, alpn_protocols=["http/1.1", "h2"]))
    assert cl.conn.alpn_protocol in ("h2", "http/1.1")
    cl.echo(b"alpn\n")
    cl.close()
    srv.wait_output(r"Given server name\[1\]: localhost", "gnutls-serv's SNI report")
    srv.wait_output(rf"- Application protocol: {re.escape(cl.conn.alpn_protocol)}", "gnutls-serv's ALPN report")


def test_client_alpn_mismatch_is_no_application_protocol(gnutls_server, pki):
    srv = gnutls_server(*serv_args(pki), "--alpn", "h2", "--alpn-fatal")
    cl = EngineClient(srv.address, client_cfg(pki, alpn_protocols=["http/1.1"]))
    with pytest.raises(TLSError) as info:
        cl.handshake()
    assert info.value.alert_name == "no_application_protocol"
    cl.sock.close()


# ---------------------------------------------------------------- gnutls-cli -> our server
@pytest.mark.parametrize("group", list(GROUPS), ids=lambda g: g.name)
def test_server_groups(engine_server, pki, group):
    srv = engine_server(server_cfg(pki))
    c = run_gnutls_cli(srv.port, cli_args(pki, only_group(group)), b"group " + group.name.encode() + b"\n")
    (info,) = srv.join()
    hc = completed(info)
    assert hc.group == group and not hc.hello_retry
    assert info["data"] == b"group " + group.name.encode() + b"\n"
    kx = KX_NAMES[group]
    assert f"-({kx})-" in c.output


@pytest.mark.parametrize("suite", list(SUITES), ids=lambda s: s.name)
def test_server_suites(engine_server, pki, suite):
    srv = engine_server(server_cfg(pki))
    data = text_lines(50000)
    c = run_gnutls_cli(srv.port, cli_args(pki, only_suite(suite)), data)
    (info,) = srv.join()
    assert completed(info).cipher_suite == suite
    assert info["data"] == data
    assert c.stdout.count(data) == 1
    assert f"({SUITES[suite]})" in c.output


@pytest.mark.parametrize("key_type,sig", [("ec256", "ECDSA-SECP256R1-SHA256"), ("ec384", "ECDSA-SECP384R1-SHA384"),
                                          ("rsa2048", "RSA-PSS-RSAE-SHA256"), ("ed25519", "EdDSA-Ed25519")])
def test_server_certificate_types(engine_server, pki, key_type, sig):
    srv = engine_server(server_cfg(pki, key_type))
    c = run_gnutls_cli(srv.port, cli_args(pki), b"cert\n")
    completed(srv.join()[0])
    assert "The certificate is trusted" in c.output
    assert f"({sig})" in c.output


def test_server_alpn_and_sni(engine_server, pki):
    srv = engine_server(server_cfg(pki, alpn_protocols=["h2", "http/1.1"]))
    c = run_gnutls_cli(srv.port, cli_args(pki, TLS13, "--alpn", "http/1.1", "--alpn", "h2"), b"alpn\n")
    hc = completed(srv.join()[0])
    assert hc.alpn_protocol == "h2" and hc.server_name == "localhost"
    assert "- Application protocol: h2" in c.output


# ====================================================================== 2. HelloRetryRequest
def test_client_hrr_to_gnutls_group(gnutls_server, pki):
    """gnutls-serv takes only secp384r1; our first ClientHello shares x25519."""
    srv = gnutls_server(*serv_args(pki, priority=only_group(NamedGroup.secp384r1)), "--alpn", "hrr")
    cl = EngineClient.connected(srv.address, client_cfg(pki, key_share_groups=[NamedGroup.x25519], alpn_protocols=["hrr"]))
    assert cl.conn.hello_retry and cl.conn.group == NamedGroup.secp384r1 and cl.conn.alpn_protocol == "hrr"
    cl.echo(b"after hrr\n")
    cl.close()


def test_server_hrr_to_our_group(engine_server, pki):
    """gnutls-cli shares secp256r1 + x25519; our server only takes secp384r1."""
    srv = engine_server(server_cfg(pki, groups=[NamedGroup.secp384r1, NamedGroup.ffdhe2048]))
    c = run_gnutls_cli(srv.port, ["-d", "4", *cli_args(pki)], b"after hrr\n")
    (info,) = srv.join()
    hc = completed(info)
    assert hc.hello_retry and hc.group == NamedGroup.secp384r1
    assert info["data"] == b"after hrr\n"
    assert "HELLO RETRY REQUEST (1025) was received" in c.output
    assert "HRR key share with SECP384R1" in c.output


def test_server_hrr_with_cookie(engine_server, pki):
    srv = engine_server(server_cfg(pki, groups=[NamedGroup.secp384r1], hello_retry_cookie=True))
    c = run_gnutls_cli(srv.port, ["-d", "4", *cli_args(pki)], b"cookie\n")
    (info,) = srv.join()
    assert completed(info).hello_retry and info["data"] == b"cookie\n"
    assert re.search(r"Sending extension Cookie/44", c.output)


# ====================================================================== 3. resumption and 0-RTT
def resume_server(gnutls_server, pki, *extra: str, priority: str = TLS13) -> GnutlsServer:
    return gnutls_server(*serv_args(pki, priority=priority), *extra)


def first_session(srv: GnutlsServer, pki, **kw) -> Session:
    cl = EngineClient.connected(srv.address, client_cfg(pki, **kw))
    cl.echo(b"first\n")  # the tickets arrive with or before the echo
    cl.read_until(lambda: bool(cl.of(ev.SessionTicketReceived)), "a NewSessionTicket")
    assert not cl.conn.session_resumed
    sess = Session.from_bytes(cl.conn.session.to_bytes())
    cl.close()
    return sess


@pytest.mark.parametrize("suite", [CipherSuite.TLS_AES_128_GCM_SHA256, CipherSuite.TLS_AES_256_GCM_SHA384],
                         ids=lambda s: s.name)
def test_client_resumes_with_gnutls_serv(gnutls_server, pki, suite):
    srv = resume_server(gnutls_server, pki, priority=only_suite(suite))
    sess = first_session(srv, pki)
    cl = EngineClient.connected(srv.address, client_cfg(pki), session=sess)
    assert cl.conn.session_resumed and cl.conn.cipher_suite == suite
    # the resumed connection reports the chain of the original one (§2.2)
    ders = [c.public_bytes(serialization.Encoding.DER) for c in cl.conn.peer_certificates]
    assert ders and ders == list(sess.peer_certificates)
    cl.echo(b"second\n")
    cl.close()
    srv.wait_output(r"\*\*\* This is a resumed session", "gnutls-serv's resumption report")
    assert srv.output.count("This is a resumed session") == 1


def test_client_resumption_with_hrr(gnutls_server, pki):
    """Resumption where the server also asks for another group: the PSK binder
    of the second ClientHello covers the HelloRetryRequest transcript."""
    srv = resume_server(gnutls_server, pki, priority=only_group(NamedGroup.secp384r1))
    sess = first_session(srv, pki)
    cl = EngineClient.connected(srv.address, client_cfg(pki, key_share_groups=[NamedGroup.x25519]), session=sess)
    assert cl.conn.session_resumed and cl.conn.hello_retry
    cl.echo(b"resumed after hrr\n")
    cl.close()
    srv.wait_output(r"\*\*\* This is a resumed session", "gnutls-serv's resumption report")


# what gnutls-serv's echo mode sends back for a "**COMMAND**" line
GNUTLS_SERV_COMMAND_OK = b"Successfully executed command\n"
EARLY_SEEN = r"decrypted early data with length: (\d+)"


def test_client_early_data_accepted_by_gnutls_serv(gnutls_server, pki):
    """gnutls-serv decrypts and accepts our 0-RTT data (its ``-d 5`` trace says
    so), but its echo loop drops what gnutls_record_recv_early_data returned
    (a gnutls-serv limitation, see docs/interop-gnutls.md): delivery exactly once
    is asserted from the trace, and 1-RTT data still flows after it."""
    srv = resume_server(gnutls_server, pki, "-d", "5", "--earlydata", "--maxearlydata", "16384")
    sess = first_session(srv, pki)
    assert sess.max_early_data == 16384
    early = b"zero rtt line\n"
    cl = EngineClient.connected(srv.address, client_cfg(pki), session=sess, early=early)
    assert cl.conn.session_resumed and cl.conn.early_data_accepted
    assert cl.of(ev.EarlyDataAccepted) and not cl.of(ev.EarlyDataRejected)
    cl.echo(b"after early\n")
    cl.close()
    srv.wait_output(r"\*\*\* This is a resumed session", "gnutls-serv's resumption report")
    srv.wait_output(r"END OF EARLY DATA \(5\) was received", "gnutls-serv's EndOfEarlyData trace")
    assert [int(n) for n in re.findall(EARLY_SEEN, srv.output)] == [len(early)]


def test_client_early_data_rejected_by_gnutls_serv(gnutls_server, pki):
    """Our clock jumps 5 s forward between the ticket and its use, so the
    ticket age we report exceeds gnutls-serv's own view of it: its
    anti-replay check (RFC 9846 §8.3) refuses the 0-RTT data but the session
    still resumes; the refused data comes back to us undelivered, and 1-RTT
    data flows."""
    srv = resume_server(gnutls_server, pki, "-d", "5", "--earlydata", "--maxearlydata", "16384")
    sess = first_session(srv, pki)
    early = b"stale early\n"
    cl = EngineClient.connected(srv.address, client_cfg(pki), session=sess, early=early, now_offset=5.0)
    assert cl.conn.session_resumed and cl.conn.early_data_accepted is False
    (rej,) = cl.of(ev.EarlyDataRejected)
    assert rej.data == early
    cl.echo(b"one rtt\n")
    assert cl.received() == b"one rtt\n"
    cl.close()
    srv.wait_output(r"\*\*\* This is a resumed session", "gnutls-serv's resumption report")
    assert not re.findall(EARLY_SEEN, srv.output)


def test_server_resumption_and_early_data_accepted(engine_server, pki, tmp_path):
    srv = engine_server(server_cfg(pki, max_early_data=16384), connections=2)
    c = run_gnutls_cli(srv.port, early_cli_args(pki, tmp_path, b"zero rtt from gnutls\n"), b"one rtt\n")
    full, resumed = srv.join()
    assert not completed(full).session_resumed
    hc = completed(resumed)
    assert hc.session_resumed and resumed["conn"].early_data_accepted
    assert resumed["early"] == b"zero rtt from gnutls\n"  # delivered once, as 0-RTT
    assert resumed["data"] == b"one rtt\n"
    assert "*** This is a resumed session" in c.output
    assert c.stdout.count(b"zero rtt from gnutls\n") == 1 and b"one rtt\n" in c.stdout


def test_large_early_data_both_ways(gnutls_server, engine_server, pki, tmp_path):
    """40 KB of 0-RTT data: several early data records, all delivered once."""
    data = text_lines(40000)
    srv = resume_server(gnutls_server, pki, "-d", "5", "--earlydata", "--maxearlydata", "65536")
    sess = first_session(srv, pki)
    assert sess.max_early_data == 65536
    cl = EngineClient.connected(srv.address, client_cfg(pki), session=sess, early=data)
    assert cl.conn.early_data_accepted
    cl.echo(b"after\n")
    cl.close()
    srv.wait_output(r"END OF EARLY DATA \(5\) was received", "gnutls-serv's EndOfEarlyData trace")
    sizes = [int(n) for n in re.findall(EARLY_SEEN, srv.output)]
    assert len(sizes) >= 3 and sum(sizes) == len(data)

    ours = engine_server(server_cfg(pki, max_early_data=65536), connections=2)
    run_gnutls_cli(ours.port, early_cli_args(pki, tmp_path, data), b"one rtt\n")
    full, resumed = ours.join()
    assert resumed["conn"].early_data_accepted and resumed["early"] == data and resumed["data"] == b"one rtt\n"


def test_server_resumption_early_data_rejected(engine_server, pki, tmp_path):
    """Our server resumes but refuses the 0-RTT data (early_data_callback)."""
    offers = []

    def refuse(offer) -> bool:
        offers.append(offer)
        return False

    srv = engine_server(server_cfg(pki, max_early_data=16384, early_data_callback=refuse), connections=2)
    c = run_gnutls_cli(srv.port, early_cli_args(pki, tmp_path, b"refused early\n"), b"one rtt\n")
    full, resumed = srv.join()
    assert not completed(full).session_resumed
    assert completed(resumed).session_resumed and len(offers) == 1
    assert resumed["conn"].early_data_accepted is False
    assert resumed["early"] == b"" and resumed["data"] == b"one rtt\n"
    assert b"refused early" not in c.stdout
    assert "*** This is a resumed session" in c.output


def test_server_resumption_sha384(engine_server, pki):
    srv = engine_server(server_cfg(pki), connections=2)
    priority = only_suite(CipherSuite.TLS_AES_256_GCM_SHA384)
    c = run_gnutls_cli(srv.port, cli_args(pki, priority, "--resume", "--waitresumption"), b"resumed 384\n")
    full, resumed = srv.join()
    assert not completed(full).session_resumed
    hc = completed(resumed)
    assert hc.session_resumed and hc.cipher_suite == CipherSuite.TLS_AES_256_GCM_SHA384
    assert resumed["data"] == b"resumed 384\n" and "*** This is a resumed session" in c.output


def test_server_resumption_with_hrr(engine_server, pki):
    srv = engine_server(server_cfg(pki, groups=[NamedGroup.secp384r1]), connections=2)
    c = run_gnutls_cli(srv.port, cli_args(pki, TLS13, "--resume", "--waitresumption"), b"resumed hrr\n")
    full, resumed = srv.join()
    assert completed(full).hello_retry
    hc = completed(resumed)
    assert hc.session_resumed and hc.hello_retry and resumed["data"] == b"resumed hrr\n"
    assert "*** This is a resumed session" in c.output


# ====================================================================== 4. external PSKs
PSK_PRIORITY = f"{TLS13}:+ECDHE-PSK:+DHE-PSK:+PSK"
PSK_KE_ONLY = f"{TLS13}:-KX-ALL:+PSK"
PSK_DHE_ONLY = f"{TLS13}:-KX-ALL:+ECDHE-PSK:+DHE-PSK"


def psk_serv(gnutls_server, tmp_path, priority: str, *extra: str) -> GnutlsServer:
    pw = tmp_path / "psk.passwd"
    pw.write_text(f"{PSK_ID}:{PSK_HEX}\n")
    return gnutls_server("--pskpasswd", str(pw), "--priority", priority, *extra)


@pytest.mark.parametrize("mode,priority", [(PskKeyExchangeMode.psk_dhe_ke, PSK_DHE_ONLY),
                                           (PskKeyExchangeMode.psk_ke, PSK_KE_ONLY)], ids=["psk_dhe_ke", "psk_ke"])
def test_client_external_psk(gnutls_server, pki, tmp_path, mode, priority):
    srv = psk_serv(gnutls_server, tmp_path, priority)
    cfg = TLSConfig(psk=ExternalPSK(PSK_ID.encode(), bytes.fromhex(PSK_HEX)), psk_key_exchange_modes=[mode])
    cl = EngineClient.connected(srv.address, cfg)
    assert cl.conn.session_resumed and not cl.conn.peer_certificates
    assert (cl.conn.group is None) == (mode == PskKeyExchangeMode.psk_ke)
    cl.echo(b"psk " + mode.name.encode() + b"\n")
    cl.close()
    srv.wait_output(rf"PSK authentication\. Connected as '{PSK_ID}'[\s\S]*- Version: TLS1\.3", "gnutls-serv's PSK report")
    # gnutls-serv reports an (EC)DHE group only for psk_dhe_ke
    assert ("Using curve: X25519" in srv.output) == (mode == PskKeyExchangeMode.psk_dhe_ke)


def test_client_external_psk_hash_mismatch(gnutls_server, tmp_path):
    """GnuTLS 3.7.9 provisions external PSKs with SHA-256 only (its binder
    hash is fixed): offered a SHA-256 PSK with only SHA-384 suites it
    refuses the PSK (RFC 9846 §4.2.11) and, having no certificate, fails
    with handshake_failure; our client reports that alert."""
    srv = psk_serv(gnutls_server, tmp_path, f"{PSK_PRIORITY}:-CIPHER-ALL:+AES-256-GCM")
    cl = EngineClient(srv.address, TLSConfig(psk=ExternalPSK(PSK_ID.encode(), bytes.fromhex(PSK_HEX))))
    with pytest.raises(RemoteAlert) as info:
        cl.handshake()
    assert info.value.alert_name == "handshake_failure"
    cl.sock.close()


def test_client_external_psk_wrong_key_fails(gnutls_server, pki, tmp_path):
    srv = psk_serv(gnutls_server, tmp_path, PSK_PRIORITY)
    cfg = TLSConfig(psk=ExternalPSK(PSK_ID.encode(), bytes(32)))
    cl = EngineClient(srv.address, cfg)
    with pytest.raises(RemoteAlert):
        cl.handshake()
    cl.sock.close()


def psk_server_cfg(mode: PskKeyExchangeMode, hash_name: str = "sha256", **kw) -> TLSConfig:
    def lookup(identity: bytes):
        return ExternalPSK(identity, bytes.fromhex(PSK_HEX), hash_name) if identity == PSK_ID.encode() else None

    return TLSConfig(psk_lookup=lookup, psk_key_exchange_modes=[mode], **kw)


def psk_cli(priority: str) -> list[str]:
    return ["-d", "4", "--pskusername", PSK_ID, "--pskkey", PSK_HEX, "--priority", priority, "localhost"]


@pytest.mark.parametrize("mode,priority", [(PskKeyExchangeMode.psk_dhe_ke, PSK_DHE_ONLY),
                                           (PskKeyExchangeMode.psk_ke, PSK_KE_ONLY)], ids=["psk_dhe_ke", "psk_ke"])
def test_server_external_psk(engine_server, mode, priority):
    srv = engine_server(psk_server_cfg(mode))
    c = run_gnutls_cli(srv.port, psk_cli(priority), b"psk line\n")
    (info,) = srv.join()
    hc = completed(info)
    assert hc.session_resumed and info["data"] == b"psk line\n"
    assert (hc.group is None) == (mode == PskKeyExchangeMode.psk_ke)
    assert f"PSK authentication. Connected as '{PSK_ID}'" in c.output
    assert ("Parsing extension 'Key Share/51'" in c.output) == (mode == PskKeyExchangeMode.psk_dhe_ke)


def test_server_external_psk_sha384_vs_sha256_binder(engine_server):
    """Our server holds a SHA-384 PSK; gnutls-cli (3.7.9) can only compute
    SHA-256 binders for it: the binder does not validate, so we abort with
    decrypt_error (RFC 9846 §4.2.11, §6.2) and gnutls-cli reports it."""
    srv = engine_server(psk_server_cfg(PskKeyExchangeMode.psk_dhe_ke, "sha384"))
    c = run_gnutls_cli(srv.port, psk_cli(f"{PSK_PRIORITY}:-CIPHER-ALL:+AES-256-GCM"))
    (info,) = srv.join()
    assert alert_of(info) == "decrypt_error"
    assert "Received alert [51]: Decrypt error" in c.output


# ====================================================================== 5. client certificates, post-handshake auth
def with_client_cert(cfg: TLSConfig, pki) -> TLSConfig:
    cfg.load_cert_chain(pki.client.cert_file, pki.client.key_file)
    return cfg


def test_client_certificate_to_gnutls_serv(gnutls_server, pki):
    leaf = pki.leaf("ec256")
    srv = gnutls_server("--x509certfile", leaf.cert_file, "--x509keyfile", leaf.key_file, "--priority", TLS13,
                        "--require-client-cert", "--verify-client-cert", "--x509cafile", pki.ca_file, "-d", "4")
    cl = EngineClient.connected(srv.address, with_client_cert(client_cfg(pki), pki))
    cl.echo(b"authenticated\n")
    cl.close()
    # our Certificate and CertificateVerify, checked by gnutls-serv
    srv.wait_output(r"CERTIFICATE REQUEST was queued[\s\S]*CERTIFICATE \(11\) was received[\s\S]*"
                    r"verifying TLS 1\.3 handshake data using ECDSA-SECP256R1-SHA256[\s\S]*FINISHED \(20\) was received",
                    "gnutls-serv's trace of our certificate")


def test_client_without_certificate_refused_by_gnutls_serv(gnutls_server, pki):
    leaf = pki.leaf("ec256")
    srv = gnutls_server("--x509certfile", leaf.cert_file, "--x509keyfile", leaf.key_file, "--priority", TLS13,
                        "--require-client-cert", "--x509cafile", pki.ca_file)
    cl = EngineClient(srv.address, client_cfg(pki))
    with pytest.raises(RemoteAlert) as info:
        cl.handshake()
        cl.echo(b"must not pass\n")
    assert info.value.alert_name == "certificate_required"
    cl.sock.close()


def test_client_post_handshake_auth_from_gnutls_serv(gnutls_server, pki):
    """gnutls-serv's ``**REAUTH**`` echo command asks us for a certificate
    after the handshake (RFC 9846 §4.6.2); we offered post_handshake_auth."""
    leaf = pki.leaf("ec256")
    srv = gnutls_server("--x509certfile", leaf.cert_file, "--x509keyfile", leaf.key_file, "--priority", TLS13,
                        "--verify-client-cert", "--x509cafile", pki.ca_file, "-d", "4")
    cfg = with_client_cert(client_cfg(pki, post_handshake_auth=True), pki)
    cl = EngineClient.connected(srv.address, cfg)
    cl.echo(b"**REAUTH**\n", GNUTLS_SERV_COMMAND_OK)
    cl.read_until(lambda: bool(cl.of(ev.PostHandshakeAuthAnswered)), "the post-handshake CertificateRequest")
    (answered,) = cl.of(ev.PostHandshakeAuthAnswered)
    assert answered.certificate_sent and answered.context
    cl.echo(b"after reauth\n")
    cl.close()
    srv.wait_output(r"Sending re-auth request[\s\S]*CERTIFICATE \(11\) was received[\s\S]*"
                    r"CERTIFICATE VERIFY \(15\) was received[\s\S]*FINISHED \(20\) was received",
                    "gnutls-serv's trace of the post-handshake authentication")
    assert "reauth:" not in srv.output  # gnutls-serv prints "reauth: <error>" when gnutls_reauth fails


def test_server_requires_client_certificate_from_gnutls_cli(engine_server, pki):
    cfg = server_cfg(pki, require_client_certificate=True)
    cfg.load_verify_locations(pki.ca_file)
    srv = engine_server(cfg)
    c = run_gnutls_cli(srv.port, cli_args(pki, TLS13, "--x509certfile", pki.client.cert_file,
                                          "--x509keyfile", pki.client.key_file), b"with cert\n")
    (info,) = srv.join()
    hc = completed(info)
    assert hc.peer_certificate_subject == "CN=client.test"
    assert info["conn"].peer_certificates[0] == pki.client.cert
    assert info["data"] == b"with cert\n"
    assert "Successfully sent 1 certificate(s) to server" in c.output


def test_server_refuses_gnutls_cli_without_certificate(engine_server, pki):
    cfg = server_cfg(pki, require_client_certificate=True)
    cfg.load_verify_locations(pki.ca_file)
    srv = engine_server(cfg)
    c = run_gnutls_cli(srv.port, cli_args(pki), b"no cert\n", echo=False)
    rc = c.proc.returncode
    (info,) = srv.join()
    assert alert_of(info) == "certificate_required"
    assert info["data"] == b"" and rc != 0
    assert "Received alert [116]" in c.output


def test_server_post_handshake_auth_with_gnutls_cli(engine_server, pki):
    cfg = server_cfg(pki)
    cfg.load_verify_locations(pki.ca_file)
    contexts = []
    srv = engine_server(cfg, after_handshake=lambda conn, info: contexts.append(conn.request_client_certificate(True)))
    c = run_gnutls_cli(srv.port, cli_args(pki, TLS13, "--post-handshake-auth", "--x509certfile", pki.client.cert_file,
                                          "--x509keyfile", pki.client.key_file), b"after pha\n")
    (info,) = srv.join()
    hc = completed(info)
    assert hc.peer_certificate_subject is None  # nothing asked in the handshake
    (done,) = [e for e in info["events"] if isinstance(e, ev.PostHandshakeAuthCompleted)]
    assert done.context == contexts[0] and done.peer_certificate_subject == "CN=client.test"
    assert info["data"] == b"after pha\n"
    assert "*** Re-auth was performed." in c.output


def test_server_post_handshake_auth_needs_the_offer(engine_server, pki):
    """gnutls-cli without --post-handshake-auth does not offer it: asking is a usage error on our side."""
    cfg = server_cfg(pki)
    errors = []

    def ask(conn, info):
        try:
            conn.request_client_certificate()
        except Exception as exc:  # noqa: BLE001 -- recorded for the test
            errors.append(exc)

    srv = engine_server(cfg, after_handshake=ask)
    run_gnutls_cli(srv.port, cli_args(pki), b"no pha\n")
    (info,) = srv.join()
    ok(info)
    assert len(errors) == 1 and type(errors[0]).__name__ == "UsageError"


# ====================================================================== 6. KeyUpdate
def test_client_key_update_with_gnutls_serv(gnutls_server, pki):
    srv = gnutls_server(*serv_args(pki), "-d", "4")
    cl = EngineClient.connected(srv.address, client_cfg(pki))
    cl.echo(b"before\n")
    cl.conn.key_update(request_peer_update=True)
    cl.echo(b"after our update\n")  # sent under our new key, echoed under gnutls-serv's new key
    assert [e.direction for e in cl.of(ev.KeyUpdated)] == ["send", "receive"]
    cl.echo(text_lines(20000))
    cl.close()
    srv.wait_output(r"received TLS 1\.3 key update \(1\)[\s\S]*sending key update \(0\)", "gnutls-serv's KeyUpdate trace")


def test_gnutls_serv_key_update_to_our_client(gnutls_server, pki):
    """gnutls-serv's ``**REHANDSHAKE**`` command is, in TLS 1.3, a KeyUpdate
    with update_requested: we switch our receive key and answer with ours."""
    srv = gnutls_server(*serv_args(pki), "-d", "4")
    cl = EngineClient.connected(srv.address, client_cfg(pki))
    cl.echo(b"**REHANDSHAKE**\n", GNUTLS_SERV_COMMAND_OK)
    cl.read_until(lambda: len(cl.of(ev.KeyUpdated)) >= 2, "gnutls-serv's KeyUpdate")
    assert [e.direction for e in cl.of(ev.KeyUpdated)] == ["receive", "send"]
    cl.echo(b"after their update\n")
    cl.close()
    srv.wait_output(r"sending key update \(1\)[\s\S]*received TLS 1\.3 key update \(0\)", "gnutls-serv's KeyUpdate trace")


@pytest.mark.parametrize("command,requested", [("^rekey^", True), ("^rekey1^", False)])
def test_gnutls_cli_key_update_to_our_server(engine_server, pki, command, requested):
    srv = engine_server(server_cfg(pki))
    c = GnutlsClient(srv.port, cli_args(pki, TLS13, "--inline-commands"))
    try:
        c.send(b"before\n")
        c.wait_stdout(b"before\n")
        c.send(command.encode() + b"\n")
        c.send(b"after rekey\n")
        c.wait_stdout(b"after rekey\n")
        c.finish()
    finally:
        c.stop()
    (info,) = srv.join()
    dirs = key_update_directions(ok(info))
    assert dirs == (["receive", "send"] if requested else ["receive"])
    assert info["data"] == b"before\nafter rekey\n"
    assert "Rekey was completed" in c.output


def test_server_key_update_to_gnutls_cli(engine_server, pki):
    """We send KeyUpdate(update_requested) right after the handshake; GnuTLS
    answers with its own KeyUpdate before its next application data (RFC 9846
    §4.6.3), so the second line must arrive under its new key."""
    srv = engine_server(server_cfg(pki), after_handshake=lambda conn, info: conn.key_update(request_peer_update=True))
    c = GnutlsClient(srv.port, ["-d", "4", *cli_args(pki)])
    try:
        c.send(b"first line\n")
        c.wait_stdout(b"first line\n")  # echoed after our KeyUpdate
        c.send(b"second line\n")
        c.wait_stdout(b"second line\n")
        c.finish()
    finally:
        c.stop()
    (info,) = srv.join()
    dirs = key_update_directions(ok(info))
    assert dirs == ["send", "receive"]
    assert info["data"] == b"first line\nsecond line\n"
    assert re.search(r"received TLS 1\.3 key update \(1\)[\s\S]*sending key update \(0\)", c.output)


def test_key_updates_interleaved_with_bulk_data_our_client(gnutls_server, pki):
    """KeyUpdates sent while 800 KB are in flight both ways: gnutls-serv's
    answer lands between echoed records, under the old key before it and the
    new one after; the echo must stay byte-exact. Two update_requested in a
    row may get one answer (RFC 9846 §4.6.3)."""
    srv = gnutls_server(*serv_args(pki), "-d", "4")
    cl = EngineClient.connected(srv.address, client_cfg(pki))
    a, b = text_lines(400000), text_lines(400000)
    cl.conn.send_data(a)
    cl.conn.key_update(request_peer_update=True)
    cl.conn.key_update(request_peer_update=True)
    cl.conn.send_data(b)
    cl.conn.key_update(request_peer_update=False)
    cl.flush()
    cl.read_until(lambda: len(cl.received()) >= len(a) + len(b), "the echo of 800 KB")
    assert cl.received() == a + b
    dirs = [e.direction for e in cl.of(ev.KeyUpdated)]
    assert dirs.count("send") == 3 and dirs.count("receive") >= 1
    cl.close()
    wait_until(lambda: srv.output.count("received TLS 1.3 key update") == 3, T, "gnutls-serv's three KeyUpdates")


def test_key_updates_while_our_server_streams(engine_server, pki):
    """gnutls-cli updates its keys (^rekey^ asks us to update too) while our
    server is streaming 1 MB to it."""
    greeting = text_lines(1_000_000)
    srv = engine_server(server_cfg(pki), after_handshake=lambda conn, info: conn.send_data(greeting))
    c = GnutlsClient(srv.port, ["-d", "4", *cli_args(pki, TLS13, "--inline-commands")])
    try:
        c.send(b"^rekey^\n")
        c.send(b"^rekey1^\n")
        c.wait_stdout(greeting, "our 1 MB", timeout=3 * T)
        c.send(b"after\n")
        c.wait_stdout(b"after\n")
        c.finish()
    finally:
        c.stop()
    (info,) = srv.join()
    ok(info)
    assert key_update_directions(info) == ["receive", "send", "receive"]
    assert info["data"] == b"after\n" and c.stdout.count(greeting) == 1
    assert c.output.count("Rekey was completed") == 2


# ====================================================================== 7. exporters
def test_client_exporter_matches_gnutls_serv(gnutls_server, pki):
    srv = gnutls_server(*serv_args(pki), "--keymatexport", "EXPORTER-tcpls-test", "--keymatexportsize", "48")
    cl = EngineClient.connected(srv.address, client_cfg(pki))
    cl.echo(b"export\n")
    ours = cl.conn.export_keying_material("EXPORTER-tcpls-test", b"", 48)
    binding = cl.conn.export_keying_material("EXPORTER-Channel-Binding", b"", 32)
    cl.close()
    m = srv.wait_output(r"- Key material: ([0-9a-f]+)", "gnutls-serv's exported key material")
    assert bytes.fromhex(m.group(1)) == ours
    m = srv.wait_output(r"'tls-exporter': ([0-9a-f]+)", "gnutls-serv's tls-exporter channel binding")
    assert bytes.fromhex(m.group(1)) == binding  # RFC 9266


def test_server_exporter_matches_gnutls_cli(engine_server, pki):
    exported = []
    srv = engine_server(server_cfg(pki), after_handshake=lambda conn, info: exported.append(
        conn.export_keying_material("EXPORTER-tcpls-test", b"", 20)))
    c = run_gnutls_cli(srv.port, cli_args(pki, TLS13, "--keymatexport", "EXPORTER-tcpls-test",
                                          "--keymatexportsize", "20"), b"export\n")
    ok(srv.join()[0])
    m = re.search(r"- Key material: ([0-9a-f]+)", c.output)
    assert m and bytes.fromhex(m.group(1)) == exported[0]


def test_server_exporter_after_resumption_matches_gnutls_cli(engine_server, pki):
    exported = []
    srv = engine_server(server_cfg(pki), connections=2, after_handshake=lambda conn, info: exported.append(
        conn.export_keying_material("EXPORTER-tcpls-test", b"", 32)))
    c = run_gnutls_cli(srv.port, cli_args(pki, TLS13, "--resume", "--waitresumption", "--keymatexport",
                                          "EXPORTER-tcpls-test", "--keymatexportsize", "32"), b"export\n")
    full, resumed = srv.join()
    assert completed(resumed).session_resumed
    theirs = [bytes.fromhex(h) for h in re.findall(r"- Key material: ([0-9a-f]+)", c.output)]
    assert theirs == exported and theirs[0] != theirs[1]


# ====================================================================== 8. record_size_limit, certificate compression, OCSP
def record_lengths(wire: bytes) -> list[tuple[int, int]]:
    """(content type, length) of every TLS record in one direction's bytes."""
    out, i = [], 0
    while i + 5 <= len(wire):
        n = int.from_bytes(wire[i + 3 : i + 5], "big")
        out.append((wire[i], n))
        i += 5 + n
    return out


def test_client_record_size_limit_with_gnutls_serv(gnutls_server, pki):
    """gnutls-serv --recordsize 512 and our record_size_limit=1024 (RFC 8449):
    each side's protected records stay within what the other advertised
    (TLSInnerPlaintext <= limit, plus the 16-byte AEAD tag), and bulk data
    still echoes byte-exact."""
    from conftest import RecordingProxy

    srv = gnutls_server(*serv_args(pki), "--recordsize", "512")
    proxy = RecordingProxy(srv.address)
    try:
        cl = EngineClient.connected(proxy.address, client_cfg(pki, record_size_limit=1024))
        data = text_lines(30000)
        cl.echo(data)
        cl.close()
        proxy.join()
    finally:
        proxy.close()
    assert proxy.error is None
    up = [n for t, n in record_lengths(bytes(proxy.client_to_server)) if t == 23]
    down = [n for t, n in record_lengths(bytes(proxy.server_to_client)) if t == 23]
    assert sum(up) > len(data) and sum(down) > len(data)
    # gnutls-serv --recordsize 512 advertises 513 (RFC 8449 §4: the content
    # type byte counts) and also sends no more than 512 bytes of data a record
    assert 400 <= max(up) <= 513 + 16
    assert max(down) <= 1024 + 16


def test_server_record_size_limit_with_gnutls_cli(engine_server, pki):
    """gnutls-cli --recordsize 1000 (it advertises 1001) and our
    record_size_limit=2048: our server greets with 6 KB at once, which must
    go out in records of at most 1001 + 16 bytes; gnutls-cli reports our
    limit as negotiated.

    gnutls-cli sends each read from stdin (up to 4 KB) with one
    gnutls_record_send and drops what a short write left over, so lines are
    fed to it one at a time, each below both limits."""
    from conftest import RecordingProxy

    greeting = text_lines(6000)
    lines = text_lines(700).splitlines(keepends=True)
    srv = engine_server(server_cfg(pki, record_size_limit=2048),
                        after_handshake=lambda conn, info: conn.send_data(greeting))
    proxy = RecordingProxy(("127.0.0.1", srv.port))
    try:
        c = GnutlsClient(proxy.port, ["-d", "4", *cli_args(pki, TLS13, "--recordsize", "1000")])
        try:
            c.wait_stdout(greeting, "our greeting")
            for line in lines:
                c.send(line)
                c.wait_stdout(line)
            c.finish()
        finally:
            c.stop()
        proxy.join()
    finally:
        proxy.close()
    (info,) = srv.join()
    assert ok(info)["data"] == b"".join(lines)
    assert c.stdout.count(greeting) == 1
    assert "record_size_limit 2048 negotiated" in c.output
    down = [n for t, n in record_lengths(bytes(proxy.server_to_client)) if t == 23]
    assert sum(down) > len(greeting) and max(down) <= 1001 + 16


def gnutls_has_zlib(text: str) -> bool:
    return "Unknown compression method" not in text


def test_server_certificate_compression_with_gnutls_cli(engine_server, pki):
    """Debian's GnuTLS 3.7.9 is built without zlib/brotli/zstd, so gnutls-cli
    --compress-cert zlib offers nothing: our server (zlib on) must send a
    plain Certificate. With a GnuTLS that has zlib it must be compressed."""
    srv = engine_server(server_cfg(pki, certificate_compression=[CertificateCompressionAlgorithm.zlib]))
    c = run_gnutls_cli(srv.port, ["-d", "4", "--compress-cert", "zlib", *cli_args(pki)], b"compressed?\n")
    ok(srv.join()[0])
    assert "The certificate is trusted" in c.output
    if gnutls_has_zlib(c.output):
        assert "COMPRESSED CERTIFICATE (25) was received" in c.output
    else:
        assert "Sending extension Compress Certificate" not in c.output
        assert "CERTIFICATE (11) was received" in c.output


def test_client_certificate_compression_with_gnutls_serv(gnutls_server, pki):
    srv = gnutls_server(*serv_args(pki), "--compress-cert", "zlib", "-d", "4")
    cl = EngineClient.connected(srv.address, client_cfg(pki, certificate_compression=[CertificateCompressionAlgorithm.zlib]))
    assert cl.conn.peer_certificates[0] == pki.leaf("ec256").cert
    cl.echo(b"compression offered\n")
    cl.close()
    if gnutls_has_zlib(srv.output):
        srv.wait_output(r"COMPRESSED CERTIFICATE was queued", "gnutls-serv's compressed Certificate")
    else:
        srv.wait_output(r"Parsing extension 'Compress Certificate/27'", "gnutls-serv parsing our offer")
        assert "COMPRESSED CERTIFICATE" not in srv.output


def ocsp_response(pki, key_type: str = "ec256") -> bytes:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509 import ocsp

    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        ocsp.OCSPResponseBuilder()
        .add_response(
            cert=pki.leaf(key_type).cert, issuer=pki.ca_cert, algorithm=hashes.SHA1(),
            cert_status=ocsp.OCSPCertStatus.GOOD, this_update=now - datetime.timedelta(minutes=5),
            next_update=now + datetime.timedelta(days=1), revocation_time=None, revocation_reason=None,
        )
        .responder_id(ocsp.OCSPResponderEncoding.NAME, pki.ca_cert)
    )
    return builder.sign(pki.ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def test_client_ocsp_stapled_by_gnutls_serv(gnutls_server, pki, tmp_path):
    der = ocsp_response(pki)
    f = tmp_path / "ocsp.der"
    f.write_bytes(der)
    srv = gnutls_server(*serv_args(pki), "--ocsp-response", str(f))
    cl = EngineClient.connected(srv.address, client_cfg(pki, request_ocsp=True))
    assert cl.conn.ocsp_response == der
    cl.echo(b"stapled\n")
    cl.close()
    plain = EngineClient.connected(srv.address, client_cfg(pki))
    assert plain.conn.ocsp_response is None  # not asked, not stapled
    plain.close()


def test_server_ocsp_staple_to_gnutls_cli(engine_server, pki, tmp_path):
    der = ocsp_response(pki)
    srv = engine_server(server_cfg(pki, ocsp_response=der))
    saved = tmp_path / "saved.der"
    c = run_gnutls_cli(srv.port, cli_args(pki, TLS13, "--save-ocsp", str(saved)), b"ocsp\n")
    ok(srv.join()[0])
    assert saved.read_bytes() == der
    # gnutls-cli verifies the staple against the CA (an invalid one fails the handshake)
    assert "The certificate is trusted" in c.output and "OCSP status request" in c.output


# ====================================================================== 0-RTT meets HelloRetryRequest
# A HelloRetryRequest rejects 0-RTT (RFC 9846 §4.2.10): the client's second
# ClientHello is a plaintext record and the server skips the early data
# records already in flight. GnuTLS 3.7.9 gets this wrong in both roles
# (docs/interop-gnutls.md): gnutls-cli encrypts its second ClientHello under the
# client_early_traffic_secret, and gnutls-serv, still decrypting early data
# after its HelloRetryRequest, tries to decrypt the plaintext second
# ClientHello too and fails with bad_record_mac (OpenSSL's s_client meets the
# same). The tests check our side behaves per the RFC either way.
def test_server_hrr_with_gnutls_early_data(engine_server, pki, tmp_path):
    srv = engine_server(server_cfg(pki, max_early_data=16384, groups=[NamedGroup.secp384r1]), connections=2)
    c = GnutlsClient(srv.port, ["-d", "5", *early_cli_args(pki, tmp_path, b"early before hrr\n")])
    try:
        c.send(b"one rtt after hrr\n")
        try:
            c.wait_stdout(b"one rtt after hrr\n", timeout=3)
            fixed = True
        except (TimeoutError, RuntimeError):
            fixed = False
    finally:
        c.stop()
    full, resumed = srv.join()
    assert completed(full).hello_retry
    assert resumed["early"] == b""  # never accepted nor delivered
    if fixed:  # a GnuTLS that sends its second ClientHello in plaintext
        hc = completed(resumed)
        assert hc.session_resumed and hc.hello_retry and resumed["data"] == b"one rtt after hrr\n"
    else:
        # its second ClientHello went out protected (epoch 1 is the early data
        # epoch): we skip it like the early data records (§4.2.10) and wait
        assert re.search(r"Sent Packet\[\d+\] Handshake\(22\) in epoch 1", c.output)
        assert not [e for e in resumed["events"] if isinstance(e, (ev.HandshakeComplete, ev.EarlyDataReceived))]
        assert "error" not in resumed


def test_client_early_data_meets_hrr_from_gnutls_serv(gnutls_server, pki):
    srv = resume_server(gnutls_server, pki, "-d", "5", "--earlydata", "--maxearlydata", "16384",
                        priority=only_group(NamedGroup.secp384r1))
    sess = first_session(srv, pki)
    blob = sess.to_bytes()
    early = b"early before hrr\n"
    cfg = client_cfg(pki, key_share_groups=[NamedGroup.x25519])
    cl = EngineClient(srv.address, cfg, session=Session.from_bytes(blob), early=early)
    try:
        cl.handshake()
    except RemoteAlert as exc:  # GnuTLS 3.7.9
        assert exc.alert_name == "bad_record_mac"
        assert cl.conn.hello_retry  # we got the HelloRetryRequest and answered in plaintext
        srv.wait_output(r"failed to decrypt early data", "gnutls-serv's decryption failure")
        cl.sock.close()
        # what an application does next: resume again without 0-RTT
        cl = EngineClient.connected(srv.address, cfg, session=Session.from_bytes(blob))
        assert cl.conn.session_resumed and cl.conn.hello_retry
        cl.echo(b"retried without early data\n")
        cl.close()
        return
    assert cl.conn.session_resumed and cl.conn.hello_retry and cl.conn.early_data_accepted is False
    (rej,) = cl.of(ev.EarlyDataRejected)
    assert rej.data == early
    cl.echo(b"one rtt\n")
    cl.close()


# ====================================================================== our CLI
def test_cli_client_key_update_resumption_early_data_with_gnutls_serv(gnutls_server, pki, tmp_path):
    from conftest import run_tcpls_cli

    srv = resume_server(gnutls_server, pki, "-d", "5", "--earlydata", "--maxearlydata", "16384")
    sess, early = tmp_path / "session.bin", tmp_path / "early.txt"
    early.write_bytes(b"early line\n")
    base = ["client", "127.0.0.1", str(srv.port), "--cafile", pki.ca_file, "--sni", "localhost", "-v"]
    r1 = run_tcpls_cli([*base, "--key-update", "--sess-out", str(sess)], b"line one\n")
    assert r1.returncode == 0, r1.stderr
    assert r1.stdout == b"line one\n"
    srv.wait_output(r"received TLS 1\.3 key update \(1\)[\s\S]*sending key update \(0\)", "gnutls-serv's KeyUpdate")
    r2 = run_tcpls_cli([*base, "--sess-in", str(sess), "--early-data", str(early)], b"line two\n")
    assert r2.returncode == 0, r2.stderr
    assert r2.stdout == b"line two\n"  # gnutls-serv does not echo 0-RTT data (see above)
    assert b"resumed: True" in r2.stderr and b"early data: accepted" in r2.stderr
    srv.wait_output(r"decrypted early data with length: 11,", "gnutls-serv's early data trace")


def test_cli_client_external_psk_with_gnutls_serv(gnutls_server, tmp_path):
    from conftest import run_tcpls_cli

    srv = psk_serv(gnutls_server, tmp_path, PSK_PRIORITY)
    r = run_tcpls_cli(["client", "127.0.0.1", str(srv.port), "--psk", PSK_HEX, "--psk-identity", PSK_ID,
                       "--sni", "localhost"], b"psk via cli\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"psk via cli\n"
    srv.wait_output(rf"PSK authentication\. Connected as '{PSK_ID}'", "gnutls-serv's PSK report")


def test_cli_server_key_update_with_gnutls_cli(tcpls_cli_server, pki):
    leaf = pki.leaf("ec256")
    srv = tcpls_cli_server("--cert", leaf.cert_file, "--key", leaf.key_file, "--key-update")
    c = GnutlsClient(srv.port, ["-d", "4", *cli_args(pki)])
    try:
        c.send(b"first line\n")
        c.wait_stdout(b"first line\n")
        c.send(b"second line\n")
        c.wait_stdout(b"second line\n")
        c.finish()
    finally:
        c.stop()
    # our KeyUpdate(update_requested), then gnutls-cli's answer before its second line
    assert re.search(r"received TLS 1\.3 key update \(1\)[\s\S]*sending key update \(0\)", c.output)
    assert c.stdout.count(b"first line\n") == 1 and c.stdout.count(b"second line\n") == 1


# ====================================================================== more groups, suites, schemes, modes
@pytest.mark.parametrize("group,name", [(NamedGroup.x448, "X448"), (NamedGroup.secp521r1, "SECP521R1"),
                                        (NamedGroup.ffdhe3072, "FFDHE3072"), (NamedGroup.ffdhe4096, "FFDHE4096")],
                         ids=lambda v: getattr(v, "name", str(v)))
def test_more_groups_both_ways(gnutls_server, engine_server, pki, group, name):
    priority = f"{TLS13}:-GROUP-ALL:+GROUP-{name}"
    srv = gnutls_server(*serv_args(pki, priority=priority))
    cl = EngineClient.connected(srv.address, client_cfg(pki))
    assert cl.conn.group == group
    cl.echo(b"group\n")
    cl.close()
    ours = engine_server(server_cfg(pki))
    run_gnutls_cli(ours.port, cli_args(pki, priority), b"group\n")
    assert completed(ours.join()[0]).group == group


@pytest.mark.parametrize("suite,name", [(CipherSuite.TLS_AES_128_CCM_SHA256, "AES-128-CCM"),
                                        (CipherSuite.TLS_AES_128_CCM_8_SHA256, "AES-128-CCM-8")], ids=lambda v: getattr(v, "name", str(v)))
def test_ccm_suites_both_ways(gnutls_server, engine_server, pki, suite, name):
    priority = f"{TLS13}:-CIPHER-ALL:+{name}"
    srv = gnutls_server(*serv_args(pki, priority=priority))
    cl = EngineClient.connected(srv.address, client_cfg(pki, cipher_suites=[suite]))
    assert cl.conn.cipher_suite == suite
    cl.echo(text_lines(20000))
    cl.close()
    ours = engine_server(server_cfg(pki, cipher_suites=[suite]))
    data = text_lines(20000)
    run_gnutls_cli(ours.port, cli_args(pki, priority), data)
    info = ours.join()[0]
    assert completed(info).cipher_suite == suite and info["data"] == data


@pytest.mark.parametrize("scheme", ["RSA-PSS-RSAE-SHA384", "RSA-PSS-RSAE-SHA512"])
def test_rsa_pss_hashes_both_ways(gnutls_server, engine_server, pki, scheme):
    """The peer allows only one RSA-PSS hash: each side's CertificateVerify uses it."""
    priority = f"{TLS13}:-SIGN-ALL:+SIGN-{scheme}:+SIGN-ECDSA-SECP256R1-SHA256"
    srv = gnutls_server(*serv_args(pki, "rsa2048", priority=priority))
    cl = EngineClient.connected(srv.address, client_cfg(pki))
    cl.echo(b"pss\n")
    cl.close()
    srv.wait_output(rf"- Description: .*\({scheme}\)", "gnutls-serv's signature scheme")
    ours = engine_server(server_cfg(pki, "rsa2048"))
    c = run_gnutls_cli(ours.port, cli_args(pki, priority), b"pss\n")
    ok(ours.join()[0])
    assert f"({scheme})" in c.output


def test_without_middlebox_compatibility_both_ways(gnutls_server, engine_server, pki):
    priority = f"{TLS13}:%DISABLE_TLS13_COMPAT_MODE"
    srv = gnutls_server(*serv_args(pki, priority=priority))
    cl = EngineClient.connected(srv.address, client_cfg(pki, middlebox_compat=False))
    cl.echo(b"no ccs\n")
    cl.close()
    ours = engine_server(server_cfg(pki))
    run_gnutls_cli(ours.port, ["-d", "5", *cli_args(pki, priority)], b"no ccs\n")
    assert ok(ours.join()[0])["data"] == b"no ccs\n"


def test_single_key_share_from_gnutls_cli(engine_server, pki):
    ours = engine_server(server_cfg(pki, groups=[NamedGroup.secp256r1, NamedGroup.x25519]))
    run_gnutls_cli(ours.port, cli_args(pki, TLS13, "--single-key-share"), b"one share\n")
    hc = completed(ours.join()[0])
    # GnuTLS's single share is for its first group (secp256r1), which we also prefer
    assert hc.group == NamedGroup.secp256r1 and not hc.hello_retry


@pytest.mark.parametrize("key_type", ["rsa2048", "ed25519", "ec384"])
def test_client_certificate_key_types_both_ways(gnutls_server, engine_server, pki, tmp_path, key_type):
    from conftest import _write_certs, _write_key
    from tcpls import _testcerts

    cert, key = _testcerts.make_leaf(pki.ca_cert, pki.ca_key, names=["client.test"], key_type=key_type, client=True)
    cf, kf = _write_certs(tmp_path / "client.pem", cert), _write_key(tmp_path / "client.key", key)
    leaf = pki.leaf("ec256")
    srv = gnutls_server("--x509certfile", leaf.cert_file, "--x509keyfile", leaf.key_file, "--priority", TLS13,
                        "--require-client-cert", "--verify-client-cert", "--x509cafile", pki.ca_file)
    cfg = client_cfg(pki)
    cfg.load_cert_chain(cf, kf)
    cl = EngineClient.connected(srv.address, cfg)
    cl.echo(b"client " + key_type.encode() + b"\n")  # gnutls-serv verified our chain and CertificateVerify
    cl.close()
    scfg = server_cfg(pki, require_client_certificate=True)
    scfg.load_verify_locations(pki.ca_file)
    ours = engine_server(scfg)
    run_gnutls_cli(ours.port, cli_args(pki, TLS13, "--x509certfile", cf, "--x509keyfile", kf), b"client\n")
    (info,) = ours.join()
    assert completed(info).peer_certificate_subject == "CN=client.test"
    assert info["conn"].peer_certificates[0] == cert


def test_server_post_handshake_auth_required_but_refused(engine_server, pki):
    """gnutls-cli offers post-handshake auth but has no certificate: its empty
    answer to our required request ends in certificate_required."""
    cfg = server_cfg(pki)
    cfg.load_verify_locations(pki.ca_file)
    srv = engine_server(cfg, after_handshake=lambda conn, info: conn.request_client_certificate(required=True))
    c = GnutlsClient(srv.port, cli_args(pki, TLS13, "--post-handshake-auth"))
    try:
        c.send(b"line\n")  # gnutls-cli meets our CertificateRequest when it reads the echo
        wait_until(lambda: "Received alert [116]" in c.output, T, "gnutls-cli's certificate_required report")
        c.finish()
    finally:
        c.stop()
    (info,) = srv.join()
    assert alert_of(info) == "certificate_required"
    assert "Received alert [116]: Certificate is required" in c.output


def test_client_post_handshake_auth_without_certificate(gnutls_server, pki):
    """Asked after the handshake while we have no certificate: we answer with
    an empty Certificate; gnutls-serv (certificate optional) goes on."""
    leaf = pki.leaf("ec256")
    srv = gnutls_server("--x509certfile", leaf.cert_file, "--x509keyfile", leaf.key_file, "--priority", TLS13,
                        "--x509cafile", pki.ca_file)
    cl = EngineClient.connected(srv.address, client_cfg(pki, post_handshake_auth=True))
    cl.echo(b"**REAUTH**\n", GNUTLS_SERV_COMMAND_OK)
    cl.read_until(lambda: bool(cl.of(ev.PostHandshakeAuthAnswered)), "the post-handshake CertificateRequest")
    assert not cl.of(ev.PostHandshakeAuthAnswered)[0].certificate_sent
    cl.echo(b"still here\n")
    cl.close()
    assert "reauth:" not in srv.output


def test_server_refuses_more_early_data_than_the_ticket_allows(engine_server, pki, tmp_path):
    """Our tickets allow 8 bytes of 0-RTT; gnutls-cli 3.7.9 sends its whole
    --earlydata file anyway (21 bytes). RFC 9846 §4.2.10: we abort with
    unexpected_message and deliver none of it."""
    srv = engine_server(server_cfg(pki, max_early_data=8), connections=2)
    c = run_gnutls_cli(srv.port, early_cli_args(pki, tmp_path, b"0123456789abcdefghij\n"), b"one rtt\n", echo=False)
    full, resumed = srv.join()
    ok(full)
    assert alert_of(resumed) == "unexpected_message"
    assert resumed["early"] == b"" and resumed["data"] == b""
    assert "Received alert [10]: Unexpected message" in c.output


def test_small_record_size_limits_fragment_handshake_messages(gnutls_server, engine_server, pki, tmp_path):
    """Small record_size_limits on our side: GnuTLS must cut its protected
    handshake messages (2048-bit RSA certificates and signatures) into
    records that fit, which we reassemble, in both roles. 512 is the
    smallest limit GnuTLS 3.7.9 takes (see the next test)."""
    from conftest import RecordingProxy, _write_certs, _write_key
    from tcpls import _testcerts

    srv = gnutls_server(*serv_args(pki, "rsa2048"))
    proxy = RecordingProxy(srv.address)
    try:
        cl = EngineClient.connected(proxy.address, client_cfg(pki, record_size_limit=512))
        assert cl.conn.peer_certificates[0] == pki.leaf("rsa2048").cert
        cl.echo(text_lines(3000))
        cl.close()
        proxy.join()
    finally:
        proxy.close()
    down = [n for t, n in record_lengths(bytes(proxy.server_to_client)) if t == 23]
    assert len(down) > 8 and max(down) <= 512 + 16

    cert, key = _testcerts.make_leaf(pki.ca_cert, pki.ca_key, names=["client.test"], key_type="rsa2048", client=True)
    cf, kf = _write_certs(tmp_path / "client.pem", cert), _write_key(tmp_path / "client.key", key)
    cfg = server_cfg(pki, "rsa2048", record_size_limit=512, require_client_certificate=True)
    cfg.load_verify_locations(pki.ca_file)
    ours = engine_server(cfg)
    proxy = RecordingProxy(("127.0.0.1", ours.port))
    try:
        run_gnutls_cli(proxy.port, cli_args(pki, TLS13, "--x509certfile", cf, "--x509keyfile", kf), b"tiny records\n")
        proxy.join()
    finally:
        proxy.close()
    (info,) = ours.join()
    assert completed(info).peer_certificate_subject == "CN=client.test" and info["data"] == b"tiny records\n"
    up = [n for t, n in record_lengths(bytes(proxy.client_to_server)) if t == 23]
    assert len(up) >= 4 and max(up) <= 512 + 16


def test_record_size_limit_below_512_with_gnutls(gnutls_server, engine_server, pki):
    """RFC 8449 §4 allows limits from 64 up. GnuTLS 3.7.9 takes none below
    512: as a server it ignores a smaller client limit (and leaves the
    extension out of EncryptedExtensions, so no limit applies and we accept
    its full-size records); as a client it aborts on a smaller server limit
    with illegal_parameter, which our server reports as the peer's alert."""
    srv = gnutls_server(*serv_args(pki, "rsa2048"), "-d", "4")
    cl = EngineClient.connected(srv.address, client_cfg(pki, record_size_limit=256))
    cl.echo(text_lines(3000))
    cl.close()
    srv.wait_output(r"client requested too small record_size_limit 256; ignoring", "gnutls-serv ignoring our limit")

    ours = engine_server(server_cfg(pki, record_size_limit=256))
    c = run_gnutls_cli(ours.port, ["-d", "4", *cli_args(pki)], b"refused\n", echo=False)
    (info,) = ours.join()
    if "error" in info:
        assert getattr(info["error"], "alert_name", None) == "illegal_parameter"
        assert "server requested too small record_size_limit 256" in c.output
    else:  # a GnuTLS that takes small limits
        assert info["data"] == b"refused\n"


def test_repeated_key_updates_from_gnutls_cli(engine_server, pki):
    srv = engine_server(server_cfg(pki))
    c = GnutlsClient(srv.port, cli_args(pki, TLS13, "--inline-commands"))
    try:
        for i in range(3):
            c.send(b"^rekey^\n")
            c.send(b"after rekey %d\n" % i)
            c.wait_stdout(b"after rekey %d\n" % i)
        c.finish()
    finally:
        c.stop()
    (info,) = srv.join()
    dirs = key_update_directions(ok(info))
    assert dirs == ["receive", "send"] * 3
    assert info["data"] == b"after rekey 0\nafter rekey 1\nafter rekey 2\n"


def test_server_early_data_with_alpn_from_gnutls_cli(engine_server, pki, tmp_path):
    """0-RTT is accepted only with the ticket's ALPN (RFC 9846 §4.2.10)."""
    srv = engine_server(server_cfg(pki, max_early_data=16384, alpn_protocols=["h2", "http/1.1"]), connections=2)
    run_gnutls_cli(srv.port, early_cli_args(pki, tmp_path, b"early with alpn\n", "--alpn", "h2"), b"one rtt\n")
    full, resumed = srv.join()
    assert completed(full).alpn_protocol == "h2"
    hc = completed(resumed)
    assert hc.session_resumed and hc.alpn_protocol == "h2"
    assert resumed["early"] == b"early with alpn\n" and resumed["data"] == b"one rtt\n"


# ====================================================================== chains, default priorities, TLS 1.2-only peers
def test_certificate_chains_with_intermediate_both_ways(gnutls_server, engine_server, pki, tmp_path):
    """Leaf + intermediate sent by each side, verified up to the root only."""
    from conftest import _write_certs, _write_key
    from tcpls import _testcerts

    icert, ikey = _testcerts.make_intermediate(pki.ca_cert, pki.ca_key, key_type="ec384")
    leaf, lkey = _testcerts.make_leaf(icert, ikey, names=["localhost", "127.0.0.1"], key_type="ec256")
    chain_file, key_file = _write_certs(tmp_path / "chain.pem", [leaf, icert]), _write_key(tmp_path / "leaf.key", lkey)
    ccert, ckey = _testcerts.make_leaf(icert, ikey, names=["client.test"], key_type="ec256", client=True)
    cchain, ckeyf = _write_certs(tmp_path / "cchain.pem", [ccert, icert]), _write_key(tmp_path / "c.key", ckey)

    srv = gnutls_server("--x509certfile", chain_file, "--x509keyfile", key_file, "--priority", TLS13,
                        "--require-client-cert", "--verify-client-cert", "--x509cafile", pki.ca_file)
    cfg = client_cfg(pki)
    cfg.load_cert_chain(cchain, ckeyf)
    cl = EngineClient.connected(srv.address, cfg)
    assert cl.conn.peer_certificates == [leaf, icert]
    cl.echo(b"chain\n")
    cl.close()

    scfg = TLSConfig(require_client_certificate=True)
    scfg.load_cert_chain(chain_file, key_file)
    scfg.load_verify_locations(pki.ca_file)
    ours = engine_server(scfg)
    c = run_gnutls_cli(ours.port, cli_args(pki, TLS13, "--x509certfile", cchain, "--x509keyfile", ckeyf), b"chain\n")
    (info,) = ours.join()
    assert completed(info).peer_certificate_subject == "CN=client.test"
    assert info["conn"].peer_certificates == [ccert, icert]
    assert "Got a certificate list of 2 certificates" in c.output and "The certificate is trusted" in c.output


def test_default_gnutls_priorities_negotiate_tls13(gnutls_server, engine_server, pki):
    """GnuTLS's default priority (TLS 1.2 and 1.3, all its groups and suites)."""
    leaf = pki.leaf("ec256")
    srv = gnutls_server("--x509certfile", leaf.cert_file, "--x509keyfile", leaf.key_file, "--disable-client-cert")
    cl = EngineClient.connected(srv.address, client_cfg(pki))
    cl.echo(b"defaults\n")
    cl.close()
    srv.wait_output(r"- Version: TLS1\.3", "gnutls-serv's version report")
    ours = engine_server(server_cfg(pki))
    c = run_gnutls_cli(ours.port, ["--x509cafile", pki.ca_file, "localhost"], b"defaults\n")
    assert completed(ours.join()[0]).version == 0x0304
    assert "(TLS1.3-X.509)" in c.output


def test_tls12_only_gnutls_peers_are_refused(gnutls_server, engine_server, pki):
    """We speak TLS 1.3 only. A TLS 1.2-only gnutls-cli gets protocol_version
    from us (RFC 9846 §4.2.1). A TLS 1.2-only gnutls-serv answers our
    TLS 1.3-only ClientHello with handshake_failure (it finds no TLS 1.2
    suite) where §4.2.1 asks for protocol_version; either way our client
    fails with the peer's alert."""
    ours = engine_server(server_cfg(pki))
    c = run_gnutls_cli(ours.port, cli_args(pki, "NORMAL:-VERS-ALL:+VERS-TLS1.2"))
    (info,) = ours.join()
    assert alert_of(info) == "protocol_version"
    assert "Received alert [70]" in c.output

    srv = gnutls_server(*serv_args(pki, priority="NORMAL:-VERS-ALL:+VERS-TLS1.2"))
    cl = EngineClient(srv.address, client_cfg(pki))
    with pytest.raises(RemoteAlert) as exc:
        cl.handshake()
    assert exc.value.alert_name in ("protocol_version", "handshake_failure")
    cl.sock.close()


# ====================================================================== adapters
def test_sync_client_with_gnutls_serv(gnutls_server, pki):
    from tcpls import sync

    srv = gnutls_server(*serv_args(pki))
    with sync.connect(srv.address, client_cfg(pki), server_name="localhost", timeout=T) as sock:
        assert sock.version == "TLSv1.3"
        data = text_lines(100000)
        sock.sendall(data)
        got = bytearray()
        while len(got) < len(data):
            chunk = sock.recv(65536)
            assert chunk, f"EOF after {len(got)} bytes"
            got += chunk
        assert bytes(got) == data
        sock.shutdown_write()  # our close_notify; gnutls-serv answers with its own
        assert sock.recv(100) == b""


def test_aio_server_with_gnutls_cli(pki):
    import asyncio

    from tcpls import aio

    seen: list[bytes] = []
    data = text_lines(20000)

    async def handler(reader, writer):
        while line := await reader.readline():
            seen.append(line)
            writer.write(line)
            await writer.drain()
        writer.close()  # after gnutls-cli's close_notify

    async def main() -> GnutlsClient:
        server = await aio.start_server(handler, "127.0.0.1", 0, config=server_cfg(pki))
        port = server.sockets[0].getsockname()[1]
        try:
            return await asyncio.wait_for(
                asyncio.get_running_loop().run_in_executor(None, run_gnutls_cli, port, cli_args(pki), data),
                2 * T)
        finally:
            server.close()
            await server.wait_closed()

    c = asyncio.run(main())
    assert b"".join(seen) == data and c.stdout.count(data) == 1


def make_rsassa_pss_pki(tmp_path) -> tuple[str, str, str]:
    """(CA file, leaf chain file, leaf key file) with RSASSA-PSS
    (id-RSASSA-PSS) keys, made by GnuTLS's certtool: `cryptography` cannot
    create such keys."""
    (certtool,) = require_peer("certtool")

    def run(*args: str) -> None:
        subprocess.run([certtool, *args], check=True, capture_output=True, cwd=tmp_path, timeout=T)

    (tmp_path / "ca.tmpl").write_text('cn = "tcpls pss CA"\nca\ncert_signing_key\nexpiration_days = 2\n')
    (tmp_path / "leaf.tmpl").write_text(
        'cn = "localhost"\ndns_name = "localhost"\ntls_www_server\nsigning_key\nexpiration_days = 2\n')
    run("--generate-privkey", "--key-type", "rsa-pss", "--bits", "2048", "--outfile", "ca.key")
    run("--generate-self-signed", "--load-privkey", "ca.key", "--template", "ca.tmpl", "--outfile", "ca.pem")
    run("--generate-privkey", "--key-type", "rsa-pss", "--bits", "2048", "--outfile", "leaf.key")
    run("--generate-certificate", "--load-privkey", "leaf.key", "--load-ca-certificate", "ca.pem",
        "--load-ca-privkey", "ca.key", "--template", "leaf.tmpl", "--outfile", "leaf.pem")
    return str(tmp_path / "ca.pem"), str(tmp_path / "leaf.pem"), str(tmp_path / "leaf.key")


def test_rsassa_pss_certificates_both_ways(gnutls_server, engine_server, tmp_path):
    """RSASSA-PSS keys sign with rsa_pss_pss_* (RFC 9846 §4.2.3), which GnuTLS
    calls RSA-PSS-SHA256. gnutls-cli validates our chain and signature. Our
    client checks gnutls-serv's CertificateVerify, but the chain only with
    verification off: `cryptography`'s path validation refuses RSASSA-PSS
    subject keys (unknown_ca otherwise; README)."""
    ca, chain, key = make_rsassa_pss_pki(tmp_path)
    cfg = TLSConfig()
    cfg.load_cert_chain(chain, key)
    ours = engine_server(cfg)
    c = run_gnutls_cli(ours.port, ["--x509cafile", ca, "--priority", TLS13, "localhost"], b"pss\n")
    ok(ours.join()[0])
    assert "The certificate is trusted" in c.output and "-(RSA-PSS-SHA256)-" in c.output

    srv = gnutls_server("--x509certfile", chain, "--x509keyfile", key, "--disable-client-cert", "--priority", TLS13)
    cl = EngineClient.connected(srv.address, TLSConfig(verify_peer=False))
    cl.echo(b"pss\n")
    cl.close()
    srv.wait_output(r"- Description: .*\(RSA-PSS-SHA256\)", "gnutls-serv's signature scheme")
    strict = TLSConfig()
    strict.load_verify_locations(ca)
    cl = EngineClient(srv.address, strict)
    with pytest.raises(TLSError) as exc:
        cl.handshake()
    assert exc.value.alert_name == "unknown_ca"
    cl.sock.close()


def test_client_picks_certificate_by_gnutls_serv_ca_names(gnutls_server, pki):
    """gnutls-serv's CertificateRequest names our test CA (certificate_authorities,
    RFC 9846 §4.2.4): of our two client certificates we must send the one it
    names, not our first; gnutls-serv verifies it."""
    from tcpls import _testcerts

    other_ca, other_key = _testcerts.make_ca("some other CA")
    wrong, wrong_key = _testcerts.make_leaf(other_ca, other_key, names=["client.test"], client=True)
    cfg = client_cfg(pki, certificate_chain=[wrong], private_key=wrong_key,
                     extra_certificates=[([pki.client.cert], pki.client.key)])
    leaf = pki.leaf("ec256")
    srv = gnutls_server("--x509certfile", leaf.cert_file, "--x509keyfile", leaf.key_file, "--priority", TLS13,
                        "--require-client-cert", "--verify-client-cert", "--x509cafile", pki.ca_file, "-d", "4")
    cl = EngineClient.connected(srv.address, cfg)
    cl.echo(b"the right certificate\n")
    cl.close()
    srv.wait_output(r"CERTIFICATE REQUEST was queued", "gnutls-serv's CertificateRequest")
