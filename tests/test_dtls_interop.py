"""DTLS 1.3 interop with wolfSSL's example client and server, both directions.

wolfSSL (5.9.2, DTLS 1.3) is built by ``tools/wolfssl/build.sh`` (``./run``
does it before the tests, cached outside the checkout). Without a build the
tests skip and say why, except in CI (``TCPLS_WOLFSSL_REQUIRED=1``), where
they fail.

Our side runs in-process on the asyncio adapter (so that the tests can look
at the endpoint and engine state), plus one subprocess test per CLI command.
Data is checked byte for byte in both directions: wolfSSL's client sends
``hello wolfssl!`` and prints the answer; its server prints what it received
and answers ``I hear you fa shizzle!``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tcpls.aio import dtls as adtls
from tcpls.tls import events as ev
from tcpls.tls.config import TLSConfig
from tcpls.tls.enums import CipherSuite
from tcpls.tls.session import ExternalPSK

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "tools" / "wolfssl" / "build.sh"

# wolfSSL's test PSK for (D)TLS 1.3 (examples use identity "Client_identity"
# and bytes 0x01, 0x23, ... 0xef repeated: wolfssl/test.h).
WOLF_PSK = bytes.fromhex("0123456789abcdef" * 4)
WOLF_PSK_IDENTITY = b"Client_identity"
HELLO = b"hello wolfssl!"
REPLY = b"I hear you fa shizzle!"
TIMEOUT = 20.0


@pytest.fixture(scope="module")
def wolf() -> Path:
    try:
        out = subprocess.run(["bash", str(BUILD), "--print"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        out = None
        reason = f"cannot run {BUILD}: {exc}"
    if out is not None and out.returncode == 0 and out.stdout.strip():
        path = Path(out.stdout.strip().splitlines()[-1])
        if (path / "examples/client/client").exists():
            return path
    reason = "wolfSSL with DTLS 1.3 is not built (run: ./run wolfssl, or tools/wolfssl/build.sh)"
    if os.environ.get("TCPLS_WOLFSSL_REQUIRED") == "1":
        pytest.fail(reason + " -- required in CI (TCPLS_WOLFSSL_REQUIRED=1)")
    pytest.skip(reason)


def server_config(pki, *, psk: bool = False) -> TLSConfig:
    config = TLSConfig()
    leaf = pki.leaf("ec256")
    config.certificate_chain = [leaf.cert]
    config.private_key = leaf.key
    # wolfSSL's client lists secp224r1 and other TLS 1.2 curves in
    # supported_groups; they are never selected, so accept the offer.
    config.reject_obsolete_groups = False
    if psk:
        # With -l, wolfSSL's client appends the suite's hash name to the
        # identity (wolfssl/test.h, my_psk_client_tls13_cb).
        ext = ExternalPSK(WOLF_PSK_IDENTITY + b"SHA256", WOLF_PSK, "sha256")
        config.psk_lookup = lambda ident: ext if ident == ext.identity else None
    return config


def client_config(pki, *, psk: bool = False) -> TLSConfig:
    config = TLSConfig(trust_anchors=[pki.ca_cert])
    if psk:
        config.psk = ExternalPSK(WOLF_PSK_IDENTITY, WOLF_PSK, "sha256")
        config.cipher_suites = [CipherSuite.TLS_AES_128_GCM_SHA256]
    return config


async def run_proc(argv: list[str], cwd: Path, timeout: float = TIMEOUT) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=str(cwd), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        return -9, out.decode(errors="replace")
    return proc.returncode or 0, out.decode(errors="replace")


# --------------------------------------------------------------------------
# The build itself: wolfSSL's example client and server talk DTLS 1.3
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "server_args, client_args, expect",
    [
        ([], [], "I hear you fa shizzle!"),
        (["-s"], ["-s"], "I hear you fa shizzle!"),  # PSK
        (["--cid", "srv1"], ["--cid", "cli1"], "Sending CID is"),
        ([], ["-I"], "I hear you fa shizzle!"),  # KeyUpdate
        (["-J"], [], "I hear you fa shizzle!"),  # HelloRetryRequest with cookie
        (["-r"], ["-r"], "reused session id"),  # resumption
    ],
    ids=["certificate", "psk", "cid", "key-update", "hrr-cookie", "resume"],
)
def test_wolfssl_build_talks_dtls13_to_itself(wolf, server_args, client_args, expect):
    async def main():
        port = _free_udp_port()
        server = asyncio.create_task(
            run_proc([str(wolf / "examples/server/server"), "-u", "-v", "4", "-p", str(port), *server_args], wolf)
        )
        await wait_udp_bound(port)
        rc, out = await run_proc(
            [str(wolf / "examples/client/client"), "-u", "-v", "4", "-p", str(port), *client_args], wolf
        )
        src, sout = await server
        return rc, out, src, sout

    rc, out, src, sout = asyncio.run(main())
    assert rc == 0 and src == 0, out + sout
    assert "SSL version is DTLSv1.3" in out
    assert expect in out


# --------------------------------------------------------------------------
# wolfSSL client → tcpls server
# --------------------------------------------------------------------------
async def serve_one(pki, wolf: Path, client_args: list[str], *, psk: bool = False, cid: bool = False):
    """Run our server for one wolfSSL client; returns (server, channel, client output, received)."""
    received: list[bytes] = []
    channels: list[adtls.DTLSChannel] = []

    async def echo(ch: adtls.DTLSChannel) -> None:
        channels.append(ch)
        while data := await ch.recv():
            received.append(data)
            ch.send(data)

    server = await adtls.serve(server_config(pki, psk=psk), "127.0.0.1", 0, echo, cid=cid)
    port = server.local_address[1]
    argv = [str(wolf / "examples/client/client"), "-u", "-v", "4", "-h", "127.0.0.1", "-p", str(port), *client_args]
    try:
        rc, out = await run_proc(argv, wolf)
    finally:
        server.close()
        await server.wait_closed()
    assert rc == 0, out
    assert len(channels) == 1, out
    return server, channels[0], out, received


def check_echo(out: str, received: list[bytes]) -> None:
    assert b"".join(received).rstrip(b"\n") == HELLO
    # wolfSSL's client prints the server's answer on a line of its own.
    assert HELLO.decode() in out.splitlines()


def test_wolfssl_client_certificate_and_stateless_cookie(pki, wolf):
    server, ch, out, received = asyncio.run(serve_one(pki, wolf, ["-A", pki.ca_file, "-x"]))
    check_echo(out, received)
    assert ch.handshake is not None and ch.handshake.version == 0xFEFC
    # Our server answered the cookieless ClientHello statelessly (§5.1):
    # one HelloRetryRequest with a cookie, one association.
    assert server.endpoint.stats["stateless_replies"] == 1
    assert ch.handshake.hello_retry


def test_wolfssl_client_psk(pki, wolf):
    _, ch, out, received = asyncio.run(serve_one(pki, wolf, ["-s", "-l", "TLS13-AES128-GCM-SHA256"], psk=True))
    check_echo(out, received)
    assert ch.handshake.session_resumed  # the external PSK was used
    assert ch.handshake.peer_certificate_subject is None


def test_wolfssl_client_connection_id(pki, wolf):
    _, ch, out, received = asyncio.run(serve_one(pki, wolf, ["-A", pki.ca_file, "-x", "--cid", "wolfcid1"], cid=True))
    check_echo(out, received)
    conn = ch.connection
    assert conn.send_cid == b"wolfcid1"  # what wolfSSL asked us to put on records
    assert conn.receive_cid == ch.association.cid and len(conn.receive_cid) == 8
    assert "Sending CID is" in out  # wolfSSL used ours


def test_wolfssl_client_key_update(pki, wolf):
    _, ch, out, received = asyncio.run(serve_one(pki, wolf, ["-A", pki.ca_file, "-x", "-I"]))
    # -I: KeyUpdate, the message, then the message again (wolfSSL client.c).
    assert received == [HELLO, HELLO]
    assert HELLO.decode() in out.splitlines()
    assert ev.KeyUpdated("receive") in ch.events
    assert max(ch.connection.read_epochs) == 4


# --------------------------------------------------------------------------
# tcpls client → wolfSSL server
# --------------------------------------------------------------------------
class SniffingProtocol:
    """Records the datagrams our client endpoint receives."""

    def __init__(self, protocol: adtls.DTLSEndpointProtocol) -> None:
        self.datagrams: list[bytes] = []
        original = protocol.datagram_received

        def wrapped(data: bytes, addr) -> None:
            self.datagrams.append(bytes(data))
            original(data, addr)

        protocol.datagram_received = wrapped  # type: ignore[method-assign]


def hrr_extensions(datagram: bytes) -> dict[int, bytes] | None:
    """Extensions of a HelloRetryRequest in the first record of ``datagram``."""
    # DTLSPlaintext (13) + DTLS handshake header (12) + ServerHello body.
    if len(datagram) < 25 or datagram[0] != 22 or datagram[13] != 2:
        return None
    body = datagram[25:]
    random = body[2:34]
    if random != bytes.fromhex("CF21AD74E59A6111BE1D8C021E65B891C2A211167ABB8C5E079E09E2C8A8339C"):
        return None
    pos = 34
    pos += 1 + body[pos]  # legacy_session_id_echo
    pos += 3  # cipher_suite, legacy_compression_method
    end = pos + 2 + int.from_bytes(body[pos : pos + 2], "big")
    pos += 2
    exts = {}
    while pos < end:
        etype = int.from_bytes(body[pos : pos + 2], "big")
        elen = int.from_bytes(body[pos + 2 : pos + 4], "big")
        exts[etype] = body[pos + 4 : pos + 4 + elen]
        pos += 4 + elen
    return exts


async def talk_to_wolf_server(pki, wolf: Path, server_args: list[str], *, psk=False, cid=False, key_update=False):
    port = _free_udp_port()
    argv = [str(wolf / "examples/server/server"), "-u", "-v", "4", "-p", str(port), *server_args]
    server_task = asyncio.create_task(run_proc(argv, wolf))
    await wait_udp_bound(port)
    config = client_config(pki, psk=psk)
    protocol = await adtls.create_endpoint(config, local_addr=("127.0.0.1", 0), server=False, cid=cid)
    sniff = SniffingProtocol(protocol)
    channel = None
    for _ in range(20):  # the server may not be listening yet: retry the handshake
        ch = protocol.connect(("127.0.0.1", port), server_name="localhost")
        try:
            await asyncio.wait_for(ch.wait_established(), 1.0 if _ < 19 else TIMEOUT)
            channel = ch
            break
        except (asyncio.TimeoutError, TimeoutError):
            ch.close()
    assert channel is not None, "no handshake with the wolfSSL server"
    # wolfSSL drops records that arrive before it processed our Finished.
    assert await channel.wait_confirmed(5.0)
    if key_update:
        # Our KeyUpdate, then data in the new epoch once wolfSSL ACKed it (§8).
        channel.key_update()
        for _ in range(500):
            if channel.connection.write_epoch == 4:
                break
            await asyncio.sleep(0.01)
    channel.send(b"hello from tcpls")
    reply = await asyncio.wait_for(channel.recv(), TIMEOUT)
    rc, out = await server_task
    protocol.close()
    await protocol.wait_closed()
    return channel, reply, rc, out, sniff.datagrams


def _udp_port_bound(port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


async def wait_udp_bound(port: int, timeout: float = 10.0) -> None:
    """Wait until a process has bound ``port`` (a UDP server has no accept to wait for)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not _udp_port_bound(port):
        assert loop.time() < deadline, f"nothing bound UDP port {port}"
        await asyncio.sleep(0.02)


def _free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_reply(reply: bytes, rc: int, out: str) -> None:
    assert rc == 0, out
    assert reply.rstrip(b"\n") == REPLY
    assert "Client message: hello from tcpls" in out


def cert_args(pki) -> list[str]:
    leaf = pki.leaf("ec256")
    return ["-c", leaf.cert_file, "-k", leaf.key_file, "-d"]


def test_tcpls_client_certificate(pki, wolf):
    ch, reply, rc, out, _ = asyncio.run(talk_to_wolf_server(pki, wolf, cert_args(pki)))
    check_reply(reply, rc, out)
    assert ch.handshake.peer_certificate_subject == "CN=localhost"


def test_tcpls_client_psk(pki, wolf):
    ch, reply, rc, out, _ = asyncio.run(
        talk_to_wolf_server(pki, wolf, ["-s", "-l", "TLS13-AES128-GCM-SHA256"], psk=True)
    )
    check_reply(reply, rc, out)
    assert ch.handshake.session_resumed and ch.handshake.peer_certificate_subject is None


def test_tcpls_client_hello_retry_cookie(pki, wolf):
    ch, reply, rc, out, datagrams = asyncio.run(talk_to_wolf_server(pki, wolf, [*cert_args(pki), "-J"]))
    check_reply(reply, rc, out)
    hrrs = [e for e in map(hrr_extensions, datagrams) if e is not None]
    assert hrrs, "wolfSSL sent no HelloRetryRequest"
    assert 44 in hrrs[0] and len(hrrs[0][44]) > 2  # the cookie extension, echoed by us
    assert ch.handshake.hello_retry


def test_tcpls_client_connection_id(pki, wolf):
    ch, reply, rc, out, _ = asyncio.run(talk_to_wolf_server(pki, wolf, [*cert_args(pki), "--cid", "abcd"], cid=True))
    check_reply(reply, rc, out)
    assert ch.connection.send_cid == b"abcd"
    assert ch.connection.receive_cid == ch.association.cid
    assert "Sending CID is" in out


def test_tcpls_client_key_update(pki, wolf):
    ch, reply, rc, out, _ = asyncio.run(talk_to_wolf_server(pki, wolf, cert_args(pki), key_update=True))
    check_reply(reply, rc, out)
    assert ev.KeyUpdated("send") in ch.events  # wolfSSL acknowledged our KeyUpdate (§8)
    assert ch.connection.write_epoch == 4


# --------------------------------------------------------------------------
# The CLI commands against wolfSSL
# --------------------------------------------------------------------------
def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tcpls", *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_cli_dtls_client_against_wolfssl_server(pki, wolf):
    port = _free_udp_port()
    server = subprocess.Popen(
        [str(wolf / "examples/server/server"), "-u", "-v", "4", "-p", str(port), *cert_args(pki), "--cid", "abcd"],
        cwd=wolf,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        asyncio.run(wait_udp_bound(port))
        client = subprocess.run(
            _cli("dtls-client", "127.0.0.1", str(port), "--cafile", pki.ca_file, "--sni", "localhost", "--cid", "--key-update"),
            input=b"stdin line for wolfssl\n",
            capture_output=True,
            timeout=TIMEOUT,
            env=_env(),
        )
        out, _ = server.communicate(timeout=TIMEOUT)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert client.returncode == 0, client.stderr.decode()
    assert client.stdout.rstrip(b"\n") == REPLY
    assert b"Client message: stdin line for wolfssl" in out


def _wolf_client_against_cli_server(pki, wolf, server_args: list[str], client_args: list[str]):
    """Run ``tcpls dtls-server`` (ec256 leaf, free port) and wolfSSL's example
    client against it; returns the client's CompletedProcess and the
    server's stderr after it stopped."""
    leaf = pki.leaf("ec256")
    server = subprocess.Popen(
        _cli("dtls-server", "--cert", leaf.cert_file, "--key", leaf.key_file, "--port", "0", *server_args),
        stderr=subprocess.PIPE,
        env=_env(),
    )
    try:
        line = server.stderr.readline().decode()
        assert line.startswith("listening on "), line
        port = line.split(":")[-1].split()[0]
        client = subprocess.run(
            [str(wolf / "examples/client/client"), "-u", "-v", "4", "-p", port, "-A", pki.ca_file, "-x", *client_args],
            cwd=wolf,
            capture_output=True,
            timeout=TIMEOUT,
        )
    finally:
        server.terminate()
        _, err = server.communicate(timeout=TIMEOUT)
    return client, err


def test_cli_dtls_server_against_wolfssl_client(pki, wolf):
    client, _ = _wolf_client_against_cli_server(pki, wolf, ["--cid"], ["--cid", "c1d"])
    assert client.returncode == 0, client.stdout.decode() + client.stderr.decode()
    assert HELLO.decode() in client.stdout.decode().splitlines()


def test_wolfssl_client_resumption_and_early_data(pki, wolf):
    """wolfSSL's client resumes (-r) with 0-RTT (-0) against our server:
    its resumption ClientHello carries a legacy_session_id, which a DTLS
    1.3 server must not echo (RFC 9147 §5.3); tickets allow early data
    (max_early_data) and no cookie exchange runs (a HelloRetryRequest
    rejects 0-RTT, §5.1). The 0-RTT record reaches the handler first."""
    received: list[bytes] = []
    channels: list[adtls.DTLSChannel] = []

    async def echo(ch: adtls.DTLSChannel) -> None:
        channels.append(ch)
        while data := await ch.recv():
            received.append(data)
            ch.send(data)

    async def main() -> tuple[int, str]:
        config = server_config(pki)
        config.max_early_data = 4096
        server = await adtls.serve(config, "127.0.0.1", 0, echo, stateless_cookies=False)
        port = server.local_address[1]
        argv = [str(wolf / "examples/client/client"), "-u", "-v", "4", "-h", "127.0.0.1", "-p", str(port),
                "-A", pki.ca_file, "-x", "-r", "-0"]
        try:
            return await run_proc(argv, wolf)
        finally:
            server.close()
            await server.wait_closed()

    rc, out = asyncio.run(main())
    assert rc == 0, out
    assert "reused session id" in out.splitlines()
    assert len(channels) == 2, out
    first, resumed = channels
    assert not first.handshake.session_resumed and first.early_data_received == 0
    assert resumed.handshake.session_resumed and resumed.connection.early_data_accepted
    early = b"A drop of info"  # wolfSSL client.c kEarlyMsg
    assert resumed.early_data_received == len(early)
    assert [d.rstrip(b"\n") for d in received] == [HELLO, early, b"resuming wolfssl!"]


def test_cli_dtls_server_early_data_from_wolfssl_client(pki, wolf):
    """`tcpls dtls-server --no-cookie --max-early-data N`: wolfSSL's client
    resumes with 0-RTT; the server logs the accepted 0-RTT and echoes."""
    client, err = _wolf_client_against_cli_server(pki, wolf, ["--no-cookie", "--max-early-data", "4096", "-v"], ["-r", "-0"])
    out = client.stdout.decode()
    assert client.returncode == 0, out + client.stderr.decode()
    assert "reused session id" in out.splitlines()
    assert "0-RTT accepted" in err.decode(), err.decode()
