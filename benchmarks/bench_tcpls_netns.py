"""TCPLS over two shaped, delayed paths vs. TCP, TLS and kernel MPTCP; failover time.

Needs only root: it creates and removes its own network namespaces
(``tests/netbed.py``; delay from the userspace delay line
``tests/delayline.py``, since this kernel has no netem). Usage::

    sudo python3 benchmarks/bench_tcpls_netns.py [--rate 30mbit] [--delays 20,40]
        [--mb 32] [--runs 3] [--only NAME,...] [--cut-path 1]

Every row gets a fresh testbed (two paths, ``--rate`` per path and
direction, one-way ``--delays`` in ms, so the RTTs are twice that) and
downloads the same ``--mb`` random bytes from the server namespace to the
client namespace. Rows:

* ``tcp1``, ``tcp2``: plain TCP on path 1 / path 2 (``bulk_tcp.py``): the
  link capacities; their sum is the aggregation baseline;
* ``tls1``: our plain TLS 1.3 on path 1 (``tcpls server --serve-file`` and
  ``tcpls client``, no ``--tcpls``);
* ``tcpls1``: TCPLS on path 1; ``tcpls2``: TCPLS on both paths (``--path``
  twice, ``--scheduler`` from ``--scheduler``);
* ``tcpls2ut``: the same with the failover settings of the ``failover``
  row but no cut (their cost, and "failovers" must stay 0);
* ``mptcp``: kernel MPTCP (``IPPROTO_MPTCP``; the server announces its
  second address with ``ip mptcp endpoint ... signal``, limits 2 subflows);
* ``failover``: TCPLS on both paths with ``--failover --user-timeout 250``
  (both ends); path ``--cut-path`` is black-holed (nftables drop, both
  directions, nothing tells the endpoints) after a third of the file;
* ``mptcp_failover``: the same cut under kernel MPTCP (default kernel
  timers; no user timeout applies to the MPTCP socket).

Goodput is measured by this script on the client's stdout (every row's
client writes the received bytes there): bytes after the first read,
divided by the time from the first to the last read, so connection set-up
(TCP, TLS handshake, joins) is not counted for anyone. "stall" is the
longest gap between two reads of application data (for ``failover``: the
longest gap after the cut, i.e. how long the application saw nothing).
Each row runs ``--runs`` times; the table shows the median, the ratios
use the medians, and every run's value is listed too.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from netbed import Testbed, unavailable  # noqa: E402
from tcpls import _testcerts  # noqa: E402

PORT = 4433
PY = sys.executable
CLI = [PY, "-m", "tcpls"]
BULK = [PY, os.path.join(HERE, "bulk_tcp.py")]
ENV = dict(os.environ, PYTHONPATH=os.path.join(HERE, "..", "src"))
ROWS = ["tcp1", "tcp2", "tls1", "tcpls1", "tcpls2", "tcpls2ut", "mptcp", "failover", "mptcp_failover"]


def _pem(work: str) -> tuple[str, str, str]:
    from cryptography.hazmat.primitives import serialization

    ca, ca_key = _testcerts.make_ca()
    leaf, key = _testcerts.make_leaf(ca, ca_key, names=["localhost"])
    paths = [os.path.join(work, n) for n in ("ca.pem", "leaf.pem", "key.pem")]
    with open(paths[0], "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths[1], "wb") as f:
        f.write(leaf.public_bytes(serialization.Encoding.PEM))
    with open(paths[2], "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return tuple(paths)  # type: ignore[return-value]


class Result:
    def __init__(self, mbps: float, stall: float, split: list[int], note: str = "") -> None:
        self.mbps, self.stall, self.split, self.note = mbps, stall, split, note


def _reader(pipe, log: list[tuple[float, int]]) -> None:
    fd = pipe.fileno()
    while True:
        data = os.read(fd, 1 << 20)
        if not data:
            return
        log.append((time.monotonic(), len(data)))


def _measure(bed: Testbed, server: list[str], client: list[str], size: int, cut: Optional[tuple[int, int]] = None) -> Result:
    srv = subprocess.Popen(bed.cmd("server", server), env=ENV, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
    try:
        assert srv.stderr is not None
        line = srv.stderr.readline()
        if not line:
            raise RuntimeError("server did not start")
        before = [bed.rx_bytes("client", i) for i in (1, 2)]
        errf = tempfile.TemporaryFile()
        cli = subprocess.Popen(bed.cmd("client", client), env=ENV, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=errf)
        log: list[tuple[float, int]] = []
        t = threading.Thread(target=_reader, args=(cli.stdout, log), daemon=True)
        t.start()
        cut_at = None
        if cut is not None:
            path, after = cut
            while sum(n for _, n in log) < after and cli.poll() is None:
                time.sleep(0.002)
            bed.blackhole(path)
            cut_at = time.monotonic()  # the rules are in force (one nft transaction)
        try:
            cli.wait(timeout=180)
        except subprocess.TimeoutExpired:
            cli.kill()
            cli.wait()
            raise RuntimeError("client timed out")
        t.join(5)
        errf.seek(0)
        err = errf.read()
        errf.close()
        got = sum(n for _, n in log)
        if got != size or cli.returncode != 0:
            raise RuntimeError(f"client got {got} of {size} bytes, exit {cli.returncode}: {err[-400:]!r}")
        split = [bed.rx_bytes("client", i) - b for i, b in zip((1, 2), before)]
        (t0, n0), t1 = log[0], log[-1][0]
        mbps = (got - n0) * 8 / max(t1 - t0, 1e-6) / 1e6
        times = [ts for ts, _ in log]
        gaps = [(b - a, b) for a, b in zip(times, times[1:]) if cut_at is None or b > cut_at]
        stall, resumed = max(gaps, default=(0.0, 0.0))
        note = ""
        if cut_at is not None:
            note = f"cut->resume {resumed - cut_at:.2f}s"
        m = re.search(rb"failovers=(\d+)", err)
        if m:
            note += f"{', ' if note else ''}failovers={m.group(1).decode()}"
        return Result(mbps, stall, split, note)
    finally:
        srv.terminate()
        try:
            srv.wait(5)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait()


def run_row(name: str, a: argparse.Namespace, pem: tuple[str, str, str], blob: str, size: int) -> Result:
    ca, cert, key = pem
    delays = [float(d) for d in a.delays.split(",")]
    with Testbed(a.rate, paths=2, delays=delays if any(delays) else None, tbf_latency=a.tbf_latency) as bed:
        s1, s2, c1, c2 = bed.server_addr(1), bed.server_addr(2), bed.client_addr(1), bed.client_addr(2)
        tls_srv = [*CLI, "server", "--host", s1, "--port", str(PORT), "--cert", cert, "--key", key, "--serve-file", blob]
        tls_cli = [*CLI, "client", s1, str(PORT), "--cafile", ca, "--sni", "localhost"]
        tcpls_srv = [*tls_srv, "--tcpls", "--host", s2, "--scheduler", a.scheduler]
        tcpls_cli = [*tls_cli, "--tcpls", "--scheduler", a.scheduler]
        paths = ["--path", f"{c1}={s1}", "--path", f"{c2}={s2}"]
        if name in ("tcp1", "tcp2"):
            i = 1 if name == "tcp1" else 2
            return _measure(bed, [*BULK, "serve", "0.0.0.0", str(PORT), blob],
                            [*BULK, "fetch", bed.server_addr(i), str(PORT), "--local", bed.client_addr(i), "--out", "/dev/stdout"], size)
        if name in ("mptcp", "mptcp_failover"):
            bed.enable_mptcp()
            return _measure(bed, [*BULK, "serve", "0.0.0.0", str(PORT), blob, "--mptcp"],
                            [*BULK, "fetch", s1, str(PORT), "--local", c1, "--mptcp", "--out", "/dev/stdout"], size,
                            cut=(a.cut_path, size // 3) if name == "mptcp_failover" else None)
        if name == "tls1":
            return _measure(bed, tls_srv, tls_cli, size)
        if name == "tcpls1":
            return _measure(bed, tcpls_srv, tcpls_cli, size)
        if name == "tcpls2":
            return _measure(bed, tcpls_srv, [*tcpls_cli, *paths], size)
        ut = ["--user-timeout", str(a.user_timeout)]
        if name == "tcpls2ut":
            return _measure(bed, [*tcpls_srv, *ut], [*tcpls_cli, *paths, "--failover", *ut], size)
        if name == "failover":
            return _measure(bed, [*tcpls_srv, *ut], [*tcpls_cli, *paths, "--failover", *ut], size,
                            cut=(a.cut_path, size // 3))
    raise ValueError(name)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", default="30mbit", help="tbf rate per path and direction")
    p.add_argument("--delays", default="20,40", help="one-way delay of path 1,2 in ms (0,0: veth, no delay line)")
    p.add_argument("--tbf-latency", default="50ms", help="tbf queue bound (as time at --rate)")
    p.add_argument("--mb", type=float, default=32, help="MB (10^6 bytes) per transfer")
    p.add_argument("--runs", type=int, default=3, help="runs per row (median shown)")
    p.add_argument("--only", help=f"comma-separated rows of {','.join(ROWS)}")
    p.add_argument("--scheduler", default="round_robin")
    p.add_argument("--user-timeout", type=int, default=250, help="ms, failover row")
    p.add_argument("--cut-path", type=int, default=1, choices=(1, 2), help="failover row: path to black-hole")
    a = p.parse_args()
    why = unavailable()
    if why:
        print(f"skipped: {why}")
        return 0
    rows = a.only.split(",") if a.only else ROWS
    work = tempfile.mkdtemp(prefix="bench-tcpls-")
    pem = _pem(work)
    size = int(a.mb * 1_000_000)
    blob = os.path.join(work, "blob")
    with open(blob, "wb") as f:
        f.write(os.urandom(size))
    print(f"# {size / 1e6:g} MB per transfer, {a.rate} per path and direction (tbf, queue {a.tbf_latency}), "
          f"one-way delay {a.delays} ms, scheduler {a.scheduler}, median of {a.runs} runs")
    print(f"{'row':14} {'Mbit/s':>8} {'stall s':>8} {'path1/path2 MB':>15}  runs (Mbit/s | stall s)  notes")
    med: dict[str, float] = {}
    for name in rows:
        results: list[Result] = []
        for _ in range(a.runs):
            try:
                results.append(run_row(name, a, pem, blob, size))
            except RuntimeError as exc:
                print(f"{name:14} run failed: {exc}", flush=True)
        if not results:
            continue
        key = (lambda r: r.stall) if name.endswith("failover") else (lambda r: r.mbps)
        mid = sorted(results, key=key)[(len(results) - 1) // 2]
        med[name] = statistics.median(r.mbps for r in results)
        if name in ("failover", "mptcp_failover"):
            med[name + "_stall"] = statistics.median(r.stall for r in results)
        runs = " ".join(f"{r.mbps:.1f}|{r.stall:.2f}" for r in results)
        notes = "; ".join(r.note for r in results if r.note)
        print(f"{name:14} {med[name]:8.1f} {mid.stall:8.2f} {mid.split[0] / 1e6:7.1f}/{mid.split[1] / 1e6:<7.1f}  {runs}  {notes}",
              flush=True)
    print()
    if "tcp1" in med and "tcp2" in med:
        links = med["tcp1"] + med["tcp2"]
        print(f"sum of links (TCP path 1 + path 2): {links:.1f} Mbit/s")
        if "tcpls2" in med:
            print(f"TCPLS 2 paths / sum of links:      {med['tcpls2'] / links:.3f}  (target >= 0.95)")
        if "mptcp" in med:
            print(f"MPTCP / sum of links:              {med['mptcp'] / links:.3f}")
    if "tcpls2" in med and "mptcp" in med:
        print(f"TCPLS 2 paths / MPTCP:             {med['tcpls2'] / med['mptcp']:.3f}  (target >= 1)")
    if "tcpls1" in med and "tls1" in med:
        print(f"TCPLS 1 path / TLS 1 path:         {med['tcpls1'] / med['tls1']:.3f}  (target >= 0.95)")
    if "tls1" in med and "tcp1" in med:
        print(f"TLS 1 path / TCP 1 path:           {med['tls1'] / med['tcp1']:.3f}")
    if "failover_stall" in med:
        print(f"failover stall (median):           {med['failover_stall']:.2f} s  (target <= 0.5)")
    if "mptcp_failover_stall" in med:
        print(f"MPTCP failover stall (median):     {med['mptcp_failover_stall']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
