"""Plain TCP or kernel MPTCP bulk transfer: the baselines of bench_tcpls_netns.py.

    python3 benchmarks/bulk_tcp.py serve HOST PORT FILE [--mptcp]
    python3 benchmarks/bulk_tcp.py fetch HOST PORT [--mptcp] [--local ADDR] [--out FILE]

``serve`` sends FILE to every connection, then closes it (one connection
at a time); it prints ``listening`` once bound. ``fetch`` connects (from
``--local``), reads until EOF and prints one line on stderr::

    bulk: bytes=N seconds=S goodput_mbps=G

timed from the start of the connect to the last byte, like the TCPLS
client's summary. ``--mptcp`` uses ``IPPROTO_MPTCP`` (262): the kernel
adds subflows as the namespaces' ``ip mptcp`` endpoints and limits allow.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time

IPPROTO_MPTCP = getattr(socket, "IPPROTO_MPTCP", 262)
CHUNK = 1 << 16


def _sock(mptcp: bool) -> socket.socket:
    return socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP if mptcp else 0)


def serve(host: str, port: int, path: str, mptcp: bool) -> None:
    with open(path, "rb") as f:
        data = f.read()
    ls = _sock(mptcp)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((host, port))
    ls.listen(4)
    print("listening", file=sys.stderr, flush=True)
    while True:
        conn, _peer = ls.accept()
        with conn:
            conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)
            conn.recv(1)  # wait for the client's close: every byte arrived


def fetch(host: str, port: int, mptcp: bool, local: str | None, out: str | None) -> None:
    s = _sock(mptcp)
    if local:
        s.bind((local, 0))
    t0 = time.monotonic()
    s.connect((host, port))
    n = 0
    buf = bytearray(CHUNK)
    sink = open(out, "wb") if out else None
    while True:
        k = s.recv_into(buf)
        if not k:
            break
        n += k
        if sink is not None:
            sink.write(buf[:k])
    secs = time.monotonic() - t0
    s.close()
    if sink is not None:
        sink.close()
    print(f"bulk: bytes={n} seconds={secs:.3f} goodput_mbps={n * 8 / secs / 1e6:.2f}", file=sys.stderr, flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sv = sub.add_parser("serve")
    sv.add_argument("host")
    sv.add_argument("port", type=int)
    sv.add_argument("file")
    sv.add_argument("--mptcp", action="store_true")
    fe = sub.add_parser("fetch")
    fe.add_argument("host")
    fe.add_argument("port", type=int)
    fe.add_argument("--mptcp", action="store_true")
    fe.add_argument("--local")
    fe.add_argument("--out")
    a = p.parse_args()
    if a.cmd == "serve":
        serve(a.host, a.port, a.file, a.mptcp)
    else:
        fetch(a.host, a.port, a.mptcp, a.local, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
