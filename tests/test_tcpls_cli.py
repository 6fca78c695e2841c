"""``tcpls server --tcpls`` / ``tcpls client --tcpls`` over loopback (127.0.0.1 + 127.0.0.2)."""

from __future__ import annotations

import hashlib
import os
import re

from conftest import run_tcpls_cli


def _server_args(pki, *extra):
    return ["--tcpls", "--host", "127.0.0.2", "--cert", pki.leaf().cert_file, "--key", pki.leaf().key_file, *extra]


def _summary(stderr: bytes) -> dict:
    m = re.search(rb"tcpls: summary: (.*)", stderr)
    assert m, stderr
    fields = dict(kv.split("=", 1) for kv in m.group(1).decode().split())
    fields["paths"] = {
        int(p.split(":")[0]): int(p.split(":")[1]) for p in fields["paths"].split(",") if p != "-"
    }
    return fields


def test_cli_echo_two_paths(pki, tcpls_cli_server, tmp_path):
    server = tcpls_cli_server(*_server_args(pki, "--echo"))
    assert "listening on 127.0.0.2:" in server.stderr
    data = os.urandom(1_500_000)
    log = tmp_path / "goodput.csv"
    res = run_tcpls_cli(
        ["client", "--tcpls", "127.0.0.1", str(server.port), "--cafile", pki.ca_file, "--sni", "localhost",
         "--path", "127.0.0.1=127.0.0.2", "--goodput-log", str(log), "--progress", "-v"],
        data,
    )
    assert res.returncode == 0, res.stderr
    assert hashlib.sha256(res.stdout).hexdigest() == hashlib.sha256(data).hexdigest()
    s = _summary(res.stderr)
    assert int(s["bytes"]) == len(data)
    assert set(s["paths"]) == {0, 1} and all(n > 100_000 for n in s["paths"].values()), s
    lines = log.read_text().splitlines()
    assert lines[0] == "time,conn_id,bytes" and len(lines) > 2
    assert b"joined connection 1" in res.stderr


def test_cli_serve_file_with_migration(pki, tcpls_cli_server, tmp_path):
    blob = os.urandom(3_000_000)
    f = tmp_path / "blob.bin"
    f.write_bytes(blob)
    server = tcpls_cli_server(*_server_args(pki, "--serve-file", str(f)))
    res = run_tcpls_cli(
        ["client", "--tcpls", "127.0.0.1", str(server.port), "--cafile", pki.ca_file, "--sni", "localhost",
         "--migrate-to", "127.0.0.2", "--migrate-after", "500000"],
    )
    assert res.returncode == 0, res.stderr
    assert hashlib.sha256(res.stdout).hexdigest() == hashlib.sha256(blob).hexdigest()
    s = _summary(res.stderr)
    assert s["migrations"] == "1"
    assert set(s["paths"]) == {0, 1}


def test_cli_tcpls_client_falls_back_to_plain_tls_server(pki, tcpls_cli_server):
    server = tcpls_cli_server("--cert", pki.leaf().cert_file, "--key", pki.leaf().key_file, "--echo")
    data = os.urandom(300_000)
    res = run_tcpls_cli(
        ["client", "--tcpls", "127.0.0.1", str(server.port), "--cafile", pki.ca_file, "--sni", "localhost", "-v"], data
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == data
    assert b"tcpls: no (plain TLS 1.3)" in res.stderr


def test_cli_plain_tls_client_against_tcpls_server(pki, tcpls_cli_server):
    server = tcpls_cli_server(*_server_args(pki, "--echo"))
    data = os.urandom(200_000)
    res = run_tcpls_cli(["client", "127.0.0.1", str(server.port), "--cafile", pki.ca_file], data)
    assert res.returncode == 0, res.stderr
    assert res.stdout == data
