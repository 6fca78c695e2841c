"""sendfile throughput: kTLS vs. tcpls' userspace record layer vs. plain TCP.

Needs a kernel with kTLS, so it is run on demand in the VM:

    tools/ktls-vm/run_vm.sh --python "$(readlink -f .venv/bin/python)" benchmarks/bench_ktls.py [MiB] [suite]

Under qemu TCG the absolute numbers mean nothing; the ratios, measured in
the same run, are the result. Each transfer: a file on tmpfs sent with
``sendfile`` over loopback, received into a reused buffer and discarded.
On a kernel without kTLS the kTLS row is skipped.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from tcpls import _testcerts, ktls, sync  # noqa: E402
from tcpls.tls.config import TLSConfig  # noqa: E402
from tcpls.tls.enums import CipherSuite  # noqa: E402

MIB = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 32
SUITE = next((a for a in sys.argv[1:] if a.startswith("TLS_")), "TLS_AES_128_GCM_SHA256")
WORK = tempfile.mkdtemp(prefix="bench-ktls-")
PATH = os.path.join(WORK, "payload.bin")
with open(PATH, "wb") as f:
    f.write(os.urandom(MIB << 20))
SIZE = MIB << 20


def drain(recv_into, total: int) -> None:
    buf = bytearray(1 << 18)
    got = 0
    while got < total:
        n = recv_into(buf)
        if not n:
            raise EOFError(f"EOF after {got} bytes")
        got += n


def plain_tcp() -> float:
    ls = socket.create_server(("127.0.0.1", 0))
    c = socket.create_connection(ls.getsockname())
    a, _ = ls.accept()
    t = threading.Thread(target=drain, args=(c.recv_into, SIZE))
    t0 = time.perf_counter()
    t.start()
    with open(PATH, "rb") as f:
        a.sendfile(f)
    t.join()
    dt = time.perf_counter() - t0
    for s in (a, c, ls):
        s.close()
    return dt


def tls(mode: str) -> tuple[float, str]:
    ca, ca_key = _testcerts.make_ca("bench CA")
    cert, key = _testcerts.make_leaf(ca, ca_key, ["localhost"])
    scfg = TLSConfig(certificate_chain=[cert], private_key=key, cipher_suites=[CipherSuite[SUITE]])
    ccfg = TLSConfig(trust_anchors=[ca], cipher_suites=[CipherSuite[SUITE]])
    listener = sync.create_server(("127.0.0.1", 0), scfg, ktls=mode)
    result: dict = {}

    def client() -> None:
        with sync.connect(listener.getsockname(), ccfg, server_name="localhost", ktls=mode) as c:
            result["client"] = c.ktls
            result["ready"].set()
            drain(c.recv_into, SIZE)

    result["ready"] = threading.Event()
    t = threading.Thread(target=client)
    t.start()
    conn, _ = listener.accept()
    conn.do_handshake()
    result["ready"].wait()
    t0 = time.perf_counter()
    with open(PATH, "rb") as f:
        conn.sendfile(f)
    t.join()
    dt = time.perf_counter() - t0
    where = f"server {conn.ktls or 'userspace'}, client {result['client'] or 'userspace'}"
    conn.close()
    listener.close()
    return dt, where


def main() -> None:
    print(f"kernel {os.uname().release}; {MIB} MiB by sendfile over loopback; {SUITE}")
    have = ktls.probe(CipherSuite[SUITE]).available
    rows = []
    best = lambda f: min(f() for _ in range(2))  # noqa: E731
    tcp = best(plain_tcp)
    rows.append(("plain TCP", tcp, "no TLS"))
    us, us_where = min(tls("off") for _ in range(2))
    rows.append(("tcpls userspace records", us, us_where))
    if have:
        kt, kt_where = min(tls("required") for _ in range(2))
        rows.append(("tcpls kTLS", kt, kt_where))
    for name, dt, where in rows:
        print(f"  {name:26s} {SIZE / dt / 1e6:9.1f} MB/s  ({dt:.3f} s; {where})")
    if have:
        print(f"RATIO kTLS/userspace = {us / kt:.2f}x faster")
        print(f"RATIO kTLS/plain TCP = {kt / tcp:.2f}x the time of plain TCP ({tcp / kt * 100:.0f}% of its throughput)")
    print(f"RATIO userspace/plain TCP = {us / tcp:.2f}x the time of plain TCP")
    print("KTLS_RESULT: PASS")


if __name__ == "__main__":
    main()
