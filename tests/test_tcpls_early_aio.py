"""TCPLS 0-RTT over real loopback sockets (asyncio adapter): a resumed
client sends its first stream bytes as early data; the server sees them
as early, byte-exact. TCP Fast Open inside a network namespace (root)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from tcpls.aio import tcpls_session as tio
from tcpls.aio import tfo
from tcpls.tcpls.config import TCPLSConfig
from tcpls.tls.session import Session

from conftest import ROOT, cli_env
from netbed import unavailable
from tlspair import configs


def _configs(max_early=16384):
    c, s = configs(s_max_early_data=max_early)
    s.num_tickets = 1
    return TCPLSConfig(c), TCPLSConfig(s)


def run(coro, timeout=30.0):
    async def main():
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(main())


async def _roundtrip(ccfg, scfg, payload, tfo_on=False):
    seen = {}

    async def on_stream(reader, writer):
        data = await reader.read()
        seen["data"] = data
        seen["early"] = writer.session.early_bytes(writer.stream_id)
        writer.write(data[::-1])
        writer.write_eof()
        await writer.drain()

    srv = await tio.serve("127.0.0.1", 0, config=scfg, on_stream=on_stream, tfo=16 if tfo_on else 0)
    port = srv.addresses[0][1]
    async with srv:
        first = await tio.connect("127.0.0.1", port, config=ccfg, server_name="localhost", tfo=tfo_on)
        r, w = first.open_stream()
        w.write(b"hello")
        w.write_eof()
        assert await r.read() == b"olleh"
        await first.wait_acked()
        ticket = first.resumption_session()
        first_tfo = first.tfo_used(0)
        await first.close()
        assert ticket is not None and ticket.max_early_data == scfg.tls.max_early_data
        ticket = Session.from_bytes(ticket.to_bytes())  # as --sess-out / --sess-in do
        second = await tio.connect("127.0.0.1", port, config=ccfg, server_name="localhost", session=ticket,
                                   early_data=payload, early_fin=True, tfo=tfo_on)
        r2, _w2 = second.early_stream
        back = await r2.read()
        out = dict(seen, back=back, sent=second.session.early_data_sent, accepted=second.session.early_data_accepted,
                   first_tfo=first_tfo, second_tfo=second.tfo_used(0))
        if tfo_on:  # a join: its ClientHello and key-possession proof ride in the SYN too
            cid = await second.join("127.0.0.1")
            out["join_tfo"] = second.tfo_used(cid)
        await second.close()
    return out


def test_0rtt_accepted_byte_exact_on_loopback():
    ccfg, scfg = _configs()
    payload = os.urandom(10_000)
    got = run(_roundtrip(ccfg, scfg, payload))
    assert got["accepted"] is True and got["sent"] == len(payload)
    assert got["data"] == payload and got["early"] == len(payload)
    assert got["back"] == payload[::-1]


def test_0rtt_rejected_by_server_policy_is_resent_on_loopback():
    ccfg, scfg = _configs()
    scfg.tls.early_data_callback = lambda offer: False
    payload = os.urandom(5000)
    got = run(_roundtrip(ccfg, scfg, payload))
    assert got["accepted"] is False and got["sent"] == len(payload)
    assert got["data"] == payload and got["early"] == 0 and got["back"] == payload[::-1]


_why = unavailable()

_TFO_SCRIPT = r"""
import asyncio, json, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import test_tcpls_early_aio as t
ccfg, scfg = t._configs()
print(json.dumps({k: v for k, v in t.run(t._roundtrip(ccfg, scfg, b"q" * 1000, tfo_on=True)).items()
                  if k in ("accepted", "early", "first_tfo", "second_tfo", "join_tfo")}))
"""


@pytest.mark.skipif(_why is not None, reason=f"TFO test needs a network namespace: {_why or ''}")
def test_tfo_carries_the_client_hello_and_early_data_in_the_syn(tmp_path):
    import json
    import uuid

    ns = f"tcplstfo{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        # the namespace's own sysctl: client and server Fast Open
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv4.tcp_fastopen=3"], check=True)
        script = tmp_path / "tfo_run.py"
        script.write_text(_TFO_SCRIPT)
        r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, str(script), str(ROOT / "tests"), str(ROOT / "src")],
                           capture_output=True, text=True, timeout=60, env=cli_env())
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout.strip().splitlines()[-1])
        nstat = subprocess.run(["ip", "netns", "exec", ns, "nstat", "-az", "TcpExtTCPFastOpenActive",
                                "TcpExtTCPFastOpenPassive"], capture_output=True, text=True)
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    # the first connection only obtained the cookie; the second sent its
    # ClientHello and 0-RTT stream data in the SYN, and the server took them
    assert got["first_tfo"] is False and got["second_tfo"] is True and got["join_tfo"] is True
    assert got["accepted"] is True and got["early"] == 1000
    if nstat.returncode == 0:
        counters = dict(line.split()[:2] for line in nstat.stdout.splitlines() if line.startswith("TcpExt"))
        assert int(counters.get("TcpExtTCPFastOpenActive", "0")) >= 1
        assert int(counters.get("TcpExtTCPFastOpenPassive", "0")) >= 1


@pytest.mark.skipif(_why is not None, reason=f"TFO test needs a network namespace: {_why or ''}")
def test_cli_tfo_and_0rtt_in_a_namespace(pki, tmp_path):
    import re
    import uuid

    from conftest import tcpls_cli, wait_until

    ns = f"tcplstfo{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    err = open(tmp_path / "server.err", "w+b")
    server = None
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv4.tcp_fastopen=3"], check=True)
        server = subprocess.Popen(["ip", "netns", "exec", ns, *tcpls_cli(), "server", "--tcpls", "--host", "127.0.0.1",
                                   "--port", "4433", "--cert", pki.leaf().cert_file, "--key", pki.leaf().key_file,
                                   "--echo", "--max-early-data", "8192", "--tfo"],
                                  cwd=str(ROOT), env=cli_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)

        def stderr() -> bytes:
            err.seek(0)
            return err.read()

        wait_until(lambda: b"listening on" in stderr() or server.poll() is not None, 15, "server")
        sess = tmp_path / "sess.bin"
        base = ["ip", "netns", "exec", ns, *tcpls_cli(), "client", "--tcpls", "127.0.0.1", "4433",
                "--cafile", pki.ca_file, "--sni", "localhost", "--tfo"]
        runs = []
        for extra, data in (([ "--sess-out", str(sess)], b"cookie please"), (["--sess-in", str(sess), "--early-data", "-"], b"in the SYN")):
            r = subprocess.run([*base, *extra], input=data, capture_output=True, timeout=60, cwd=str(ROOT), env=cli_env())
            assert r.returncode == 0 and r.stdout == data, r.stderr
            m = re.search(rb"tcpls: summary: (.*)", r.stderr)
            runs.append(dict(kv.split("=", 1) for kv in m.group(1).decode().split()))
        try:
            wait_until(lambda: b"stream 0: 10 early bytes" in stderr(), 10, "server early-data line")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; client runs: {runs}; server stderr: {stderr()[-800:]!r}") from None
    finally:
        if server is not None and server.poll() is None:
            server.terminate()
            server.wait(10)
        err.close()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    assert runs[0]["tfo"] == "no" and runs[0]["early_accepted"] == "-", runs
    assert runs[1]["tfo"] == "yes" and runs[1]["early_sent"] == "10" and runs[1]["early_accepted"] == "yes", runs
