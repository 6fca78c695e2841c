"""Happy eyeballs over the two-path netns testbed: path 1 black-holed (nftables drop), path 2 works."""

from __future__ import annotations

import hashlib
import subprocess

import pytest

from conftest import ROOT, cli_env, tcpls_cli
from netbed import unavailable
from test_tcpls_netns import PORT, _finish, bed, blob, server  # noqa: F401 - fixtures

_why = unavailable()
pytestmark = pytest.mark.skipif(_why is not None, reason=f"netns tests: {_why or ''}")


def test_happy_eyeballs_around_a_black_hole(bed, server, blob, pki, tmp_path):  # noqa: F811
    method = bed.blackhole(1)
    out = open(tmp_path / "client.out", "w+b")
    err = open(tmp_path / "client.err", "w+b")
    hosts = f"{bed.server_addr(1)},{bed.server_addr(2)}"
    # per-attempt timeout 60 s, client timeout 20 s: only the race can connect in time
    args = [*tcpls_cli(), "client", "--tcpls", hosts, str(PORT), "--cafile", pki.ca_file, "--sni", "localhost",
            "--connect-timeout", "60", "--timeout", "20", "--stagger", "0.25", "--peer-user-timeout", "1000"]
    proc = subprocess.Popen(bed.cmd("client", args), cwd=str(ROOT), env=cli_env(), stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    data, s = _finish(proc, out, err)
    assert hashlib.sha256(data).hexdigest() == blob[1], method
    err.seek(0)
    stderr = err.read().decode()
    assert f"tcpls: attempt {bed.server_addr(1)}:{PORT} failed: abandoned: another attempt connected first" in stderr, stderr
    assert f"tcpls: connected to {bed.server_addr(2)}:{PORT}" in stderr, stderr
    assert "tcpls: peer user-timeout 1000: applied" in stderr, stderr
    assert set(s["paths"]) == {0}
