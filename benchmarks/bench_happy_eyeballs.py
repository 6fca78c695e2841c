"""Happy-eyeballs connect on loopback: time to an established TCPLS session
(TCP + TLS handshake) against a baseline measured in the same run.

* baseline: ``connect("127.0.0.1")`` to the working server only;
* refused first: ``connect([closed port, working])`` — the refused attempt
  fails at once and the next one starts without waiting for the stagger;
* black hole first: ``connect([black-holed listener, working])`` — the
  first attempt hangs (its SYNs are dropped: full accept queue), the second
  starts after ``--stagger`` and wins;
* black hole first, no race (``stagger`` = attempt timeout = ``--attempt``):
  what a sequential connect with that per-attempt timeout costs.

Usage: python benchmarks/bench_happy_eyeballs.py [--runs 7] [--stagger 0.25] [--attempt 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from tcpls import _testcerts  # noqa: E402
from tcpls.aio import tcpls_session as tio  # noqa: E402
from tcpls.tcpls.config import TCPLSConfig  # noqa: E402
from tcpls.tls.config import TLSConfig  # noqa: E402

_CA = _testcerts.make_ca("bench CA")
_LEAF = _testcerts.make_leaf(_CA[0], _CA[1], ["localhost"], key_type="ec256")


def blackhole(host: str = "127.0.0.2") -> tuple[socket.socket, list[socket.socket], int]:
    lsock = socket.socket()
    lsock.bind((host, 0))
    lsock.listen(0)
    port = lsock.getsockname()[1]
    fillers = []
    for _ in range(8):
        c = socket.socket()
        c.settimeout(0.3)
        fillers.append(c)
        try:
            c.connect((host, port))
        except (TimeoutError, socket.timeout):
            return lsock, fillers, port
    raise SystemExit("could not black-hole a listener")


def closed_port(host: str = "127.0.0.2") -> int:
    s = socket.socket()
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def main(args: argparse.Namespace) -> None:
    scfg = TCPLSConfig(TLSConfig(certificate_chain=[_LEAF[0]], private_key=_LEAF[1], num_tickets=0))
    ccfg = TCPLSConfig(TLSConfig(trust_anchors=[_CA[0]]))
    srv = await tio.serve("127.0.0.1", 0, config=scfg)
    port = srv.addresses[0][1]
    bh, fillers, bh_port = blackhole()
    cases = {
        "baseline (working address only)": dict(host="127.0.0.1"),
        "refused address first": dict(host=[("127.0.0.2", closed_port()), "127.0.0.1"]),
        f"black hole first, stagger {args.stagger}s": dict(host=[("127.0.0.2", bh_port), "127.0.0.1"], stagger=args.stagger,
                                                           attempt_timeout=30.0),
        f"black hole first, sequential ({args.attempt}s attempt timeout)": dict(
            host=[("127.0.0.2", bh_port), "127.0.0.1"], stagger=args.attempt, attempt_timeout=args.attempt),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.runs):
        for name, kw in cases.items():  # interleaved, so load changes hit every case alike
            kw = dict(kw)
            host = kw.pop("host")
            t0 = time.perf_counter()
            client = await tio.connect(host, port, config=ccfg, server_name="localhost", timeout=60.0, **kw)
            times[name].append(time.perf_counter() - t0)
            client.abort()
    base = statistics.median(times["baseline (working address only)"])
    print(f"{'case':<55} {'median ms':>10} {'ratio':>8}  runs (ms)")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<55} {med * 1000:10.1f} {med / base:8.2f}  {' '.join(f'{t * 1000:.1f}' for t in ts)}")
    srv.close()
    bh.close()
    for c in fillers:
        c.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--stagger", type=float, default=0.25)
    ap.add_argument("--attempt", type=float, default=1.0)
    asyncio.run(main(ap.parse_args()))
