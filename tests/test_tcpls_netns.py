"""TCPLS CLI over real multi-path networks: two network namespaces joined by
two tbf-shaped veth paths (tests/netbed.py). Aggregation, migration, and
failover when a path is cut mid-transfer (link down, black hole), each
checked byte-exact with a hash. Needs root; CI runs these as root."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time

import pytest

from conftest import ROOT, cli_env, tcpls_cli, wait_until
from netbed import Testbed, delay_unavailable, unavailable

_why = unavailable()
pytestmark = pytest.mark.skipif(_why is not None, reason=f"netns tests: {_why or ''}")

RATE = "40mbit"
SIZE = 6_000_000
PORT = 4433


@pytest.fixture
def bed():
    b = Testbed(RATE, paths=2)
    b.up()
    try:
        yield b
    finally:
        b.down()


@pytest.fixture
def blob(tmp_path):
    data = os.urandom(SIZE)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


class _Server:
    def __init__(self, bed: Testbed, pki, file, *extra: str) -> None:
        args = [*tcpls_cli(), "server", "--tcpls", "--host", bed.server_addr(1), "--host", bed.server_addr(2),
                "--port", str(PORT), "--cert", pki.leaf().cert_file, "--key", pki.leaf().key_file,
                "--serve-file", str(file), "--dead-timeout", "1", *extra]
        self.err = open(file.parent / "server.err", "w+b")
        self.proc = subprocess.Popen(bed.cmd("server", args), cwd=str(ROOT), env=cli_env(),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.err)
        wait_until(lambda: self.stderr().count(b"listening on") >= 2 or self.proc.poll() is not None, 15, "server")
        assert self.proc.poll() is None, self.stderr()

    def stderr(self) -> bytes:
        self.err.seek(0)
        return self.err.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.err.close()


@pytest.fixture
def server(bed, pki, blob):
    s = _Server(bed, pki, blob[0])
    try:
        yield s
    finally:
        s.stop()


def _client(bed: Testbed, pki, tmp_path, *extra: str) -> tuple[subprocess.Popen, object, object]:
    out = open(tmp_path / "client.out", "w+b")
    err = open(tmp_path / "client.err", "w+b")
    args = [*tcpls_cli(), "client", "--tcpls", bed.server_addr(1), str(PORT), "--cafile", pki.ca_file,
            "--sni", "localhost", *extra]
    proc = subprocess.Popen(bed.cmd("client", args), cwd=str(ROOT), env=cli_env(),
                            stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    return proc, out, err


def _finish(proc, out, err, timeout=40.0) -> tuple[bytes, dict]:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        err.seek(0)
        raise AssertionError(f"client hung: {err.read()[-2000:]!r}") from None
    out.seek(0)
    err.seek(0)
    data, stderr = out.read(), err.read()
    assert proc.returncode == 0, stderr[-3000:]
    m = re.search(rb"tcpls: summary: (.*)", stderr)
    assert m, stderr[-3000:]
    fields = dict(kv.split("=", 1) for kv in m.group(1).decode().split())
    fields["paths"] = {int(p.split(":")[0]): int(p.split(":")[1]) for p in fields["paths"].split(",") if p != "-"}
    return data, fields


def _paths(bed: Testbed) -> list[str]:
    return [a for i in (1, 2) for a in ("--path", f"{bed.client_addr(i)}={bed.server_addr(i)}")]


def test_aggregation_uses_both_paths(bed, server, blob, pki, tmp_path):
    proc, out, err = _client(bed, pki, tmp_path, *_paths(bed))
    data, s = _finish(proc, out, err)
    assert hashlib.sha256(data).hexdigest() == blob[1]
    # round robin: each path carried a real share of the bytes
    assert set(s["paths"]) == {0, 1}
    assert min(s["paths"].values()) > SIZE * 0.3, s


def test_migration_to_the_second_path(bed, server, blob, pki, tmp_path):
    proc, out, err = _client(bed, pki, tmp_path, "--migrate-to", f"{bed.client_addr(2)}={bed.server_addr(2)}",
                             "--migrate-after", "1500000")
    data, s = _finish(proc, out, err)
    assert hashlib.sha256(data).hexdigest() == blob[1]
    assert s["migrations"] == "1"
    assert s["paths"][0] >= 1_500_000 and s["paths"][1] > SIZE // 3, s


def _cut_mid_transfer(bed, pki, tmp_path, cut, *extra):
    proc, out, err = _client(bed, pki, tmp_path, *_paths(bed), "--failover", *extra)
    t0 = time.monotonic()
    wait_until(lambda: os.path.getsize(out.name) > SIZE // 4 or proc.poll() is not None, 30, "first quarter")
    assert proc.poll() is None, "transfer finished before the cut"
    cut()
    data, s = _finish(proc, out, err)
    return data, s, time.monotonic() - t0


def test_failover_link_down(bed, server, blob, pki, tmp_path):
    data, s, secs = _cut_mid_transfer(bed, pki, tmp_path, lambda: bed.link_down(2), "--user-timeout", "2000")
    assert hashlib.sha256(data).hexdigest() == blob[1]
    assert int(s["failovers"]) >= 1, s
    assert secs < 30


def test_failover_black_hole(bed, server, blob, pki, tmp_path):
    data, s, secs = _cut_mid_transfer(bed, pki, tmp_path, lambda: bed.blackhole(2))
    assert hashlib.sha256(data).hexdigest() == blob[1]
    assert int(s["failovers"]) >= 1, s
    assert secs < 30


@pytest.fixture
def delayed_bed():
    why = delay_unavailable()
    if why:
        pytest.skip(why)
    b = Testbed(RATE, paths=2, delays=[20, 40])
    b.up()
    try:
        yield b
    finally:
        b.down()


def test_delay_line_delays_each_path(delayed_bed):
    # A connect to a closed port takes one round trip (SYN, RST): never less
    # than twice the one-way delay the delay line adds on that path.
    code = ("import socket, time\ns = socket.socket()\nt = time.monotonic()\ntry:\n    s.connect((%r, 9))\n"
            "except OSError:\n    pass\nprint(time.monotonic() - t)")
    for i, rtt in ((1, 0.040), (2, 0.080)):
        r = subprocess.run(delayed_bed.cmd("client", [sys.executable, "-c", code % delayed_bed.server_addr(i)]),
                           capture_output=True, text=True, timeout=20)
        assert r.returncode == 0, r.stderr
        assert float(r.stdout) >= rtt


def test_delayed_paths_black_hole_on_connection_0(delayed_bed, pki, blob, tmp_path):
    """Two paths with different delays, the handshake connection's path
    black-holed mid-transfer: both paths carried data, the engine (and
    TCP_USER_TIMEOUT) declared connection 0 dead, the file arrives intact."""
    bed = delayed_bed
    srv = _Server(bed, pki, blob[0], "--user-timeout", "250")
    try:
        data, s, _secs = _cut_mid_transfer(bed, pki, tmp_path, lambda: bed.blackhole(1), "--user-timeout", "250")
    finally:
        srv.stop()
    assert hashlib.sha256(data).hexdigest() == blob[1]
    assert int(s["failovers"]) >= 1, s
    assert s["paths"][0] > 0 and s["paths"][1] > SIZE // 2, s
