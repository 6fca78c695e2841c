"""TCPLS request latency: full handshake vs. resumption vs. 0-RTT vs. 0-RTT with TCP Fast Open.

Needs root: it creates its own two network namespaces (``tests/netbed.py``)
joined by one path with a one-way delay from the userspace delay line
(``tests/delayline.py``), and sets ``net.ipv4.tcp_fastopen=3`` in both
(each namespace has its own). Usage::

    sudo python3 benchmarks/bench_tcpls_0rtt.py [--delay 20] [--runs 15] [--size 1000]

The server is ``tcpls server --tcpls --echo --max-early-data 16384 --tfo``
in the server namespace. A client script in the client namespace measures,
per mode and run, the time from the start of ``connect()`` until the whole
echo of a ``--size``-byte request on a new stream is read:

* ``full``: no ticket; the request is written after the handshake;
* ``resumed``: a ticket, no early data (PSK handshake, still 1-RTT);
* ``0rtt``: a ticket, the request as 0-RTT stream data;
* ``0rtt_tfo``: the same with TCP Fast Open (the ClientHello and the
  request in the SYN; the cookie comes from the earlier connections).

Modes are interleaved run by run, so they share the machine's load. The
table shows the median per mode and its ratio to ``full`` (measured in the
same run), and how many round trips (2 x delay) that is.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from netbed import Testbed, delay_unavailable  # noqa: E402

from bench_tcpls_netns import _pem  # noqa: E402

PORT = 4433
PY = sys.executable
ENV = dict(os.environ, PYTHONPATH=os.path.join(HERE, "..", "src"))
MODES = ["full", "resumed", "0rtt", "0rtt_tfo"]

CLIENT = r"""
import asyncio, json, os, sys, time
from tcpls.aio import tcpls_session as tio
from tcpls.tcpls.config import TCPLSConfig
from tcpls.tls.config import TLSConfig
from tcpls.tls.session import Session  # noqa: F401

host, ca, runs, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
MODES = json.loads(sys.argv[5])

async def one(mode, ticket, cfg):
    req = os.urandom(size)
    t0 = time.perf_counter()
    if mode == "full" or mode == "resumed":
        c = await tio.connect(host, 4433, config=cfg, server_name="localhost", session=ticket if mode == "resumed" else None)
        r, w = c.open_stream()
        w.write(req)
    else:
        c = await tio.connect(host, 4433, config=cfg, server_name="localhost", session=ticket, early_data=req,
                              tfo=(mode == "0rtt_tfo"))
        r, w = c.early_stream
    got = await r.readexactly(size)
    dt = time.perf_counter() - t0
    assert got == req
    early = c.session.early_data_accepted
    tfo = c.tfo_used(0)
    new = c.resumption_session()
    w.write_eof()
    await c.close()
    return dt, early, tfo, new

async def main():
    tls = TLSConfig()
    tls.load_verify_locations(ca)
    cfg = TCPLSConfig(tls)
    # warm up: a ticket, and a TFO cookie for the server
    _, _, _, ticket = await one("full", None, cfg)
    c = await tio.connect(host, 4433, config=cfg, server_name="localhost", tfo=True)
    await c.close()
    out = {m: [] for m in MODES}
    checks = {m: [] for m in MODES}
    for _ in range(runs):
        for m in MODES:
            dt, early, tfo, new = await one(m, ticket, cfg)
            ticket = new or ticket
            out[m].append(dt)
            checks[m].append((early, tfo))
    print(json.dumps({"times": out, "checks": checks}))

asyncio.run(main())
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--delay", type=float, default=20.0, help="one-way delay in ms (RTT = 2 x delay)")
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--size", type=int, default=1000, help="request bytes (echoed back)")
    ap.add_argument("--rate", default="100mbit")
    a = ap.parse_args()
    why = delay_unavailable()
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as work:
        ca, cert, key = _pem(work)
        script = os.path.join(work, "client.py")
        with open(script, "w") as f:
            f.write(CLIENT)
        with Testbed(a.rate, paths=1, delays=[a.delay]) as bed:
            for side in ("client", "server"):
                subprocess.run(bed.cmd(side, ["sysctl", "-q", "-w", "net.ipv4.tcp_fastopen=3"]), check=True)
            srv = subprocess.Popen(
                bed.cmd("server", [PY, "-m", "tcpls", "server", "--tcpls", "--host", bed.server_addr(1), "--port", str(PORT),
                                   "--cert", cert, "--key", key, "--echo", "--max-early-data", "16384", "--tfo"]),
                env=ENV, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                assert srv.stderr is not None
                if not srv.stderr.readline():
                    raise RuntimeError("server did not start")
                r = subprocess.run(bed.cmd("client", [PY, script, bed.server_addr(1), ca, str(a.runs), str(a.size), json.dumps(MODES)]),
                                   env=ENV, capture_output=True, text=True, timeout=600)
                if r.returncode != 0:
                    raise RuntimeError(r.stderr[-2000:])
                res = json.loads(r.stdout.strip().splitlines()[-1])
            finally:
                srv.terminate()
                srv.wait(10)
    times, checks = res["times"], res["checks"]
    rtt = 2 * a.delay / 1000
    base = statistics.median(times["full"])
    print(f"TCPLS request latency, one path, RTT {rtt * 1000:.0f} ms (delay line), {a.size}-byte request echoed, "
          f"{a.runs} runs per mode, interleaved")
    print(f"{'mode':10} {'median ms':>10} {'min ms':>8} {'max ms':>8} {'RTTs':>6} {'vs full':>8}  early accepted / TFO used")
    for m in MODES:
        t = times[m]
        med = statistics.median(t)
        acc = sum(1 for e, _ in checks[m] if e)
        tfo = sum(1 for _, x in checks[m] if x)
        print(f"{m:10} {med * 1000:10.1f} {min(t) * 1000:8.1f} {max(t) * 1000:8.1f} {med / rtt:6.2f} {med / base:8.3f}"
              f"  {acc}/{len(t)} / {tfo}/{len(t)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
