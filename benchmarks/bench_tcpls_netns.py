"""TCPLS over two shaped paths: goodput of one path vs. both, and failover time.

Needs root (network namespaces; see tests/netbed.py). Usage:

    sudo python3 benchmarks/bench_tcpls_netns.py [RATE] [MB]     # default 30mbit 8

Each row runs the real CLI (``tcpls server --tcpls --serve-file`` in one
namespace, ``tcpls client --tcpls`` in the other) and reads its summary
line. Rows: plain TLS 1.3 over path 1 (the reference); TCPLS over path 1;
TCPLS over both paths (round_robin and fill_fastest_first); TCPLS over
both with path 2 cut (link down) after a third of the file, where
"stall" is the longest gap between two reads in the goodput log (the
time the failover took as seen by the receiver).
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from netbed import Testbed, unavailable  # noqa: E402
from tcpls import _testcerts  # noqa: E402

RATE = sys.argv[1] if len(sys.argv) > 1 else "30mbit"
MB = int(sys.argv[2]) if len(sys.argv) > 2 else 8
PORT = 4433
CLI = [sys.executable, "-m", "tcpls"]
ENV = dict(os.environ, PYTHONPATH=os.path.join(HERE, "..", "src"))


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


def run(bed: Testbed, pem: tuple[str, str, str], blob: str, work: str, client_args: list[str], tcpls: bool = True,
        cut_after: int = 0) -> tuple[float, str, float]:
    ca, cert, key = pem
    srv_args = [*CLI, "server", "--host", bed.server_addr(1), "--port", str(PORT), "--cert", cert, "--key", key,
                "--serve-file", blob]
    if tcpls:
        srv_args += ["--tcpls", "--host", bed.server_addr(2), "--dead-timeout", "1"]
    srv = subprocess.Popen(bed.cmd("server", srv_args), env=ENV, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        assert srv.stderr is not None
        srv.stderr.readline()
        log = os.path.join(work, "goodput.csv")
        cmd = [*CLI, "client", bed.server_addr(1), str(PORT), "--cafile", ca, "--sni", "localhost"]
        if tcpls:
            cmd += ["--tcpls", "--goodput-log", log, *client_args]
        out = open(os.path.join(work, "out"), "wb")
        t0 = time.monotonic()
        cli = subprocess.Popen(bed.cmd("client", cmd), env=ENV, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE)
        if cut_after:
            while os.path.getsize(out.name) < cut_after and cli.poll() is None:
                time.sleep(0.01)
            bed.link_down(2)
        _, err = cli.communicate(timeout=120)
        secs = time.monotonic() - t0
        out.close()
        size = os.path.getsize(out.name)
        assert size == os.path.getsize(blob), (size, err[-500:])
        m = re.search(rb"summary: (.*)", err)
        stall = 0.0
        if tcpls and os.path.exists(log):
            with open(log) as f:
                times = [float(r["time"]) for r in csv.DictReader(f)]
            stall = max((b - a for a, b in zip(times, times[1:])), default=0.0)
        return size * 8 / secs / 1e6, (m.group(1).decode() if m else ""), stall
    finally:
        srv.terminate()
        srv.wait()


def main() -> int:
    why = unavailable()
    if why:
        print(f"skipped: {why}")
        return 0
    work = tempfile.mkdtemp(prefix="bench-tcpls-")
    pem = _pem(work)
    blob = os.path.join(work, "blob")
    with open(blob, "wb") as f:
        f.write(os.urandom(MB * 1_000_000))
    paths = [a for i in (1, 2) for a in ("--path", f"10.0.{i}.1=10.0.{i}.2")]
    rows = [
        ("TLS 1.3, path 1", [], False, 0),
        ("TCPLS, path 1", [], True, 0),
        ("TCPLS, 2 paths round_robin", paths, True, 0),
        ("TCPLS, 2 paths fill_fastest_first", [*paths, "--scheduler", "fill_fastest_first"], True, 0),
        ("TCPLS, 2 paths, path 2 cut at 1/3", [*paths, "--failover"], True, MB * 1_000_000 // 3),
    ]
    print(f"# {MB} MB per transfer, {RATE} per path and direction (tbf), no added delay")
    print(f"{'case':40} {'Mbit/s':>8} {'stall s':>8}  summary")
    for name, args, tcpls, cut in rows:
        with Testbed(RATE, paths=2) as bed:
            mbps, summary, stall = run(bed, pem, blob, work, args, tcpls, cut)
        print(f"{name:40} {mbps:8.1f} {stall:8.2f}  {summary}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
