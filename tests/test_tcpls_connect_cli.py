"""CLI: several server addresses (happy eyeballs) and peer TCP settings."""

from __future__ import annotations

import os
import re

from conftest import run_tcpls_cli, wait_until


def test_cli_happy_eyeballs_and_peer_settings(pki, tcpls_cli_server):
    server = tcpls_cli_server("--tcpls", "--cert", pki.leaf().cert_file, "--key", pki.leaf().key_file, "--echo",
                              "--peer-user-timeout", "3000", "--peer-cc", "nosuchcc")
    data = os.urandom(200_000)
    # nothing listens on 127.0.0.3: that attempt is refused, 127.0.0.1 wins
    res = run_tcpls_cli(
        ["client", "--tcpls", "127.0.0.3,127.0.0.1", str(server.port), "--cafile", pki.ca_file, "--sni", "localhost",
         "--connect-timeout", "5", "--stagger", "0.1", "--peer-user-timeout", "2500", "--peer-cc", "reno"],
        data,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == data
    err = res.stderr.decode()
    assert re.search(rf"tcpls: attempt 127\.0\.0\.3:{server.port} failed: ConnectionRefusedError", err), err
    assert f"tcpls: connected to 127.0.0.1:{server.port}" in err
    assert "tcpls: peer user-timeout 2500: applied (user timeout 2500 set on 1 connection(s))" in err
    allowed = open("/proc/sys/net/ipv4/tcp_allowed_congestion_control").read().split()
    assert f"tcpls: peer cc reno: {'applied' if 'reno' in allowed else 'refused'}" in err
    # the server asked the client too: accepted user timeout, refused unknown algorithm
    wait_until(lambda: "tcpls: peer cc nosuchcc" in server.stderr, 10, "server's answer line")
    assert "tcpls: peer user-timeout 3000: applied" in server.stderr
    assert "tcpls: peer cc nosuchcc: refused (congestion control 'nosuchcc' not allowed" in server.stderr
