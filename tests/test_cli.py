"""The ``tcpls`` command line: server + client subprocesses, demo, exit codes."""

from __future__ import annotations

import os
import signal
import subprocess

from conftest import ROOT, cli_env, run_tcpls_cli, tcpls_cli, wait_until

TIMEOUT = 20.0


def server_args(pki, *extra):
    return ["--cert", pki.leaf().cert_file, "--key", pki.leaf().key_file, *extra]


def test_echo_round_trip(pki, tcpls_cli_server):
    server = tcpls_cli_server(*server_args(pki, "--echo", "--alpn", "echo,h2"))
    data = os.urandom(2 * 1024 * 1024 + 3)
    res = run_tcpls_cli(
        ["client", "127.0.0.1", str(server.port), "--cafile", pki.ca_file, "--alpn", "echo", "-v"], data
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == data
    err = res.stderr.decode()
    assert "version: TLSv1.3" in err
    assert "alpn: echo" in err
    assert "cipher_suite: TLS_" in err
    assert "peer_subject: CN=localhost" in err


def test_default_mode_is_echo_and_options(pki, tcpls_cli_server):
    server = tcpls_cli_server(*server_args(pki, "--ciphers", "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256"))
    res = run_tcpls_cli(
        [
            "client", "localhost", str(server.port), "--cafile", pki.ca_file,
            "--ciphers", "TLS_AES_256_GCM_SHA384", "--groups", "secp256r1", "-v",
        ],
        b"hello\n",
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == b"hello\n"
    err = res.stderr.decode()
    assert "cipher_suite: TLS_AES_256_GCM_SHA384" in err
    assert "group: secp256r1" in err
    assert "server_name: localhost" in err


def test_www_mode(pki, tcpls_cli_server):
    server = tcpls_cli_server(*server_args(pki, "--www"))
    res = run_tcpls_cli(
        ["client", "127.0.0.1", str(server.port), "--cafile", pki.ca_file],
        b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n",
    )
    assert res.returncode == 0, res.stderr
    head, _, body = res.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200")
    assert b"text/html" in head
    assert b"TLSv1.3" in body and b"TLS_AES" in body


def test_server_closes_first_while_stdin_stays_open(pki, tcpls_cli_server):
    """The peer's close_notify ends the client cleanly even with stdin still open.

    Regression: a stdin thread blocked in the buffered reader made the
    interpreter abort at exit ("Fatal Python error: _enter_buffered_busy").
    """
    server = tcpls_cli_server(*server_args(pki, "--www"))
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, b"GET / HTTP/1.0\r\n\r\n")  # and keep the pipe open
        res = subprocess.run(
            [*tcpls_cli(), "client", "127.0.0.1", str(server.port), "--cafile", pki.ca_file],
            stdin=read_fd, capture_output=True, timeout=TIMEOUT, cwd=str(ROOT), env=cli_env(),
        )
    finally:
        os.close(read_fd)
        os.close(write_fd)
    assert res.returncode == 0, res.stderr
    assert b"Fatal Python error" not in res.stderr
    assert res.stdout.startswith(b"HTTP/1.0 200")


def test_untrusted_server_fails_with_alert_name(pki, tcpls_cli_server):
    server = tcpls_cli_server(*server_args(pki))
    # No --cafile: the system trust store does not know our test CA.
    res = run_tcpls_cli(["client", "127.0.0.1", str(server.port)], b"x")
    assert res.returncode != 0
    lines = res.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("tcpls: error: certificate verify failed")
    assert "unknown_ca" in lines[0] or "bad_certificate" in lines[0]
    assert res.stdout == b""
    # A wrong name fails too, and the server keeps serving afterwards.
    res = run_tcpls_cli(["client", "127.0.0.1", str(server.port), "--cafile", pki.ca_file, "--sni", "bad.example"], b"x")
    assert res.returncode != 0 and "bad_certificate" in res.stderr.decode()
    res = run_tcpls_cli(["client", "127.0.0.1", str(server.port), "--cafile", pki.ca_file], b"still up")
    assert res.returncode == 0 and res.stdout == b"still up"
    wait_until(lambda: "bad_certificate" in server.stderr, TIMEOUT, "the server's log lines")
    assert "handshake" in server.stderr and "unknown_ca" in server.stderr


def test_insecure_skips_verification(pki, tcpls_cli_server):
    server = tcpls_cli_server(*server_args(pki))
    res = run_tcpls_cli(["client", "127.0.0.1", str(server.port), "--insecure"], b"ok")
    assert res.returncode == 0, res.stderr
    assert res.stdout == b"ok"


def test_connection_refused_is_one_line_error(pki):
    from conftest import free_port

    res = run_tcpls_cli(["client", "127.0.0.1", str(free_port()), "--cafile", pki.ca_file], b"")
    assert res.returncode != 0
    lines = res.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tcpls: error:")


def test_bad_option_value(pki):
    res = run_tcpls_cli(["client", "127.0.0.1", "1", "--ciphers", "TLS_NOPE"], b"")
    assert res.returncode != 0
    assert "tcpls: error:" in res.stderr.decode() and "TLS_NOPE" in res.stderr.decode()


def test_server_exits_cleanly_on_sigint(pki):
    proc = subprocess.Popen(
        [*tcpls_cli(), "server", *server_args(pki), "--port", "0"],
        cwd=str(ROOT), env=cli_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        line = proc.stderr.readline().decode()
        assert line.startswith("listening on 127.0.0.1:")
        assert int(line.rsplit(":", 1)[1]) > 0
        proc.send_signal(signal.SIGINT)
        assert proc.wait(TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def test_demo_exits_zero():
    res = subprocess.run(
        [*tcpls_cli(), "demo"], capture_output=True, timeout=TIMEOUT, cwd=str(ROOT), env=cli_env()
    )
    assert res.returncode == 0, res.stderr
    out = res.stdout.decode()
    assert "version: TLSv1.3" in out and "demo: ok" in out
    assert "hello_retry:" in out and "peer_subject: CN=localhost" in out


def test_main_in_process(capsys):
    from tcpls.cli import main

    try:
        main(["--help"])
    except SystemExit as exc:
        assert exc.code == 0
    assert "server" in capsys.readouterr().out
