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


def test_usage_errors(dtls_server):
    out = subprocess.run(cli("dtls-server", "--port", "0"), capture_output=True, timeout=TIMEOUT, env=env())
    assert out.returncode == 2 and b"--cert is required" in out.stderr
