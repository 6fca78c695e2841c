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


def test_cli_0rtt_round_trip_sess_out_sess_in_early_data(pki, tcpls_cli_server, tmp_path):
    server = tcpls_cli_server(*_server_args(pki, "--echo", "--max-early-data", "4096"))
    base = ["client", "--tcpls", "127.0.0.1", str(server.port), "--cafile", pki.ca_file, "--sni", "localhost"]
    sess = tmp_path / "sess.bin"
    first = run_tcpls_cli([*base, "--sess-out", str(sess)], b"first")
    assert first.returncode == 0, first.stderr
    assert first.stdout == b"first" and sess.stat().st_size > 0
    assert _summary(first.stderr)["early_accepted"] == "-"
    # stdin's first bytes as 0-RTT (all of it fits: the FIN goes early too)
    data = os.urandom(3000)
    res = run_tcpls_cli([*base, "--sess-in", str(sess), "--early-data", "-", "-v"], data)
    assert res.returncode == 0, res.stderr
    assert res.stdout == data
    s = _summary(res.stderr)
    assert s["early_sent"] == "3000" and s["early_accepted"] == "yes", s
    assert b"resumed: True" in res.stderr
    # more than the ticket allows: the first 4096 - 15 bytes early, the rest after the handshake
    big = os.urandom(20_000)
    res = run_tcpls_cli([*base, "--sess-in", str(sess), "--early-data", "-"], big)
    assert res.returncode == 0 and res.stdout == big, res.stderr
    s = _summary(res.stderr)
    assert s["early_sent"] == str(4096 - 15) and s["early_accepted"] == "yes", s
    # --early-data FILE (the TLS client's meaning): FILE first, then stdin
    f = tmp_path / "early.bin"
    f.write_bytes(b"GET /early\n")
    res = run_tcpls_cli([*base, "--sess-in", str(sess), "--early-data", str(f)], b"then stdin")
    assert res.returncode == 0, res.stderr
    assert res.stdout == b"GET /early\nthen stdin"
    assert _summary(res.stderr)["early_sent"] == "11"

    def seen() -> bool:
        err = server.stderr
        return "stream 0: 3000 early bytes" in err and f"stream 0: {4096 - 15} early bytes" in err and "stream 0: 11 early bytes" in err

    from conftest import wait_until

    wait_until(seen, 10, "the server's early-data lines")


def test_cli_0rtt_refused_by_server_without_max_early_data(pki, tcpls_cli_server, tmp_path):
    server = tcpls_cli_server(*_server_args(pki, "--echo"))
    base = ["client", "--tcpls", "127.0.0.1", str(server.port), "--cafile", pki.ca_file, "--sni", "localhost"]
    sess = tmp_path / "sess.bin"
    assert run_tcpls_cli([*base, "--sess-out", str(sess)], b"x").returncode == 0
    res = run_tcpls_cli([*base, "--sess-in", str(sess), "--early-data", "-"], b"no early data here")
    # the ticket allows no 0-RTT: nothing is sent early, everything arrives
    assert res.returncode == 0 and res.stdout == b"no early data here", res.stderr
    s = _summary(res.stderr)
    assert s["early_sent"] == "0" and s["early_accepted"] == "-"
