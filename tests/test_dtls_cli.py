"""`tcpls dtls-server` and `tcpls dtls-client` against each other (subprocesses, UDP loopback)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 30
PSK = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tcpls", *args]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + e.get("PYTHONPATH", "")
    return e


@pytest.fixture
def dtls_server():
    procs = []

    def start(*args: str) -> int:
        proc = subprocess.Popen(cli("dtls-server", "--port", "0", *args), stderr=subprocess.PIPE, env=env())
        procs.append(proc)
        line = proc.stderr.readline().decode()
        assert line.startswith("listening on "), line
        return int(line.split(":")[-1].split()[0])

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(TIMEOUT)


@pytest.mark.parametrize("extra", [[], ["--cid"], ["--cid", "--key-update"]], ids=["plain", "cid", "cid-key-update"])
def test_psk_echo_byte_for_byte(dtls_server, extra):
    server_extra = ["--cid"] if "--cid" in extra else []
    port = dtls_server("--psk", PSK, "--psk-identity", "mesh", *server_extra)
    data = os.urandom(20000)
    out = subprocess.run(
        cli("dtls-client", "127.0.0.1", str(port), "--insecure", "--psk", PSK, "--psk-identity", "mesh", *extra),
        input=data,
        capture_output=True,
        timeout=TIMEOUT,
        env=env(),
    )
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout == data


def test_certificate_echo_and_verbose(dtls_server, pki):
    leaf = pki.leaf("ec256")
    port = dtls_server("--cert", leaf.cert_file, "--key", leaf.key_file)
    out = subprocess.run(
        cli("dtls-client", "127.0.0.1", str(port), "--cafile", pki.ca_file, "--sni", "localhost", "-v"),
        input=b"line one\nline two\n",
        capture_output=True,
        timeout=TIMEOUT,
        env=env(),
    )
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout == b"line one\nline two\n"
    err = out.stderr.decode()
    assert "hello_retry: yes" in err  # the server's stateless cookie exchange
    assert "peer_subject: CN=localhost" in err


def test_untrusted_server_is_a_clear_error(dtls_server, pki):
    leaf = pki.leaf("ec256")
    port = dtls_server("--cert", leaf.cert_file, "--key", leaf.key_file)
    out = subprocess.run(
        cli("dtls-client", "127.0.0.1", str(port), "--cafile", pki.bogus_ca_file, "--sni", "localhost"),
        input=b"x",
        capture_output=True,
        timeout=TIMEOUT,
        env=env(),
    )
    assert out.returncode == 1
    err = out.stderr.decode()
    assert err.startswith("tcpls: error:") and "certificate" in err and "Traceback" not in err


def test_wrong_psk_fails_cleanly(dtls_server):
    port = dtls_server("--psk", PSK, "--psk-identity", "mesh")
    out = subprocess.run(
        cli("dtls-client", "127.0.0.1", str(port), "--insecure", "--psk", "ff" * 32, "--psk-identity", "mesh", "--timeout", "3"),
        input=b"x",
        capture_output=True,
        timeout=TIMEOUT,
        env=env(),
    )
    assert out.returncode == 1
    assert out.stderr.decode().startswith("tcpls: error:") and b"Traceback" not in out.stderr


class UdpRelay:
    """Relays datagrams between one client and ``server_port`` on loopback,
    recording each direction's datagram sizes."""

    def __init__(self, server_port: int) -> None:
        import socket
        import threading

        self.server = ("127.0.0.1", server_port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.to_server: list[int] = []
        self.to_client: list[int] = []
        self._client = None
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data, addr = self.sock.recvfrom(65535)
            except OSError:
                continue
            if addr == self.server:
                self.to_client.append(len(data))
                if self._client is not None:
                    self.sock.sendto(data, self._client)
            else:
                self._client = addr
                self.to_server.append(len(data))
                self.sock.sendto(data, self.server)

    def close(self) -> None:
        self._stop = True
        self._thread.join(TIMEOUT)
        self.sock.close()


def test_max_datagram_size_each_side(dtls_server):
    """--max-datagram-size: the client sends datagrams of up to 9000 bytes, the
    server keeps to its default 1200 and echoes the large records back split
    over as many records as it takes, byte for byte."""
    port = dtls_server("--psk", PSK, "--psk-identity", "mesh")
    relay = UdpRelay(port)
    try:
        data = os.urandom(40000)
        out = subprocess.run(
            cli("dtls-client", "127.0.0.1", str(relay.port), "--insecure", "--psk", PSK, "--psk-identity", "mesh",
                "--max-datagram-size", "9000"),
            input=data,
            capture_output=True,
            timeout=TIMEOUT,
            env=env(),
        )
    finally:
        relay.close()
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout == data
    assert 1200 < max(relay.to_server) <= 9000
    assert max(relay.to_client) <= 1200


def test_max_datagram_size_is_checked():
    out = subprocess.run(cli("dtls-client", "127.0.0.1", "1", "--max-datagram-size", "100"), capture_output=True,
                         timeout=TIMEOUT, env=env())
    assert out.returncode == 2 and b"between 256 and 65507" in out.stderr


def test_usage_errors(dtls_server):
    out = subprocess.run(cli("dtls-server", "--port", "0"), capture_output=True, timeout=TIMEOUT, env=env())
    assert out.returncode == 2 and b"--cert is required" in out.stderr
