"""DTLS 1.3 benchmarks; every figure is printed next to a baseline measured in the same run.

1. Throughput of 1200-byte datagrams over UDP loopback: DTLS (seal, sendto,
   recvfrom, endpoint demultiplexing and open) against raw ``sendto`` /
   ``recvfrom`` of the same datagrams, as a ratio.
2. Handshakes per second, in-process on one thread (client and server
   engines and the server endpoint, no sockets): certificates (ECDSA P-256,
   x25519) with the stateless cookie exchange, and external PSK (psk_ke).
   Against wolfSSL's ``tls_bench -u`` (DTLS 1.3, same machine, same run)
   when ``tools/wolfssl/build.sh`` has built it.
3. Round-trip latency of an established association on an asyncio server
   (handshakes in a worker thread pool) while another process floods the
   server with real handshakes, against the same measurement without flood.

Usage: python benchmarks/bench_dtls.py [--seconds 3] [--skip-flood]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from tcpls.aio import dtls as adtls  # noqa: E402
from tcpls.dtls.connection import DTLSConnection  # noqa: E402
from tcpls.dtls.cookie import CookieSecret  # noqa: E402
from tcpls.dtls.endpoint import CookieResponder, DTLSEndpoint, EndpointLimits, dtls_connection_factory  # noqa: E402
from tcpls.dtls.established import EstablishedConnection, compact_connection  # noqa: E402
from tcpls.tls.config import TLSConfig  # noqa: E402
from tcpls.tls.enums import CipherSuite, PskKeyExchangeMode  # noqa: E402
from tcpls.tls.session import ExternalPSK  # noqa: E402
from tlspair import configs as cert_configs  # noqa: E402

DATAGRAM = 1200


def psk_configs() -> tuple[TLSConfig, TLSConfig]:
    psk = ExternalPSK(b"bench", bytes(range(32)), "sha256")
    modes = [PskKeyExchangeMode.psk_ke]
    c = TLSConfig(psk=psk, psk_key_exchange_modes=modes, verify_peer=False)
    s = TLSConfig(psk_lookup=lambda i: psk if i == psk.identity else None, psk_key_exchange_modes=modes)
    s.num_tickets = 0
    return c, s


def in_memory_handshake(endpoint: DTLSEndpoint, client: DTLSConnection, addr, now: float) -> None:
    client.start_handshake(now)
    for _ in range(20):
        moved = False
        for d in client.datagrams_to_send(now):
            endpoint.receive_datagram(d, addr, now)
            moved = True
        for d, _ in endpoint.datagrams_to_send(now):
            client.receive_datagram(d, now)
            moved = True
        if not moved:
            break
    if not client.handshake_complete:
        raise RuntimeError("handshake did not complete")
    while endpoint.next_event() is not None:
        pass


# --------------------------------------------------------------------------
# 1. throughput
# --------------------------------------------------------------------------
def udp_pair() -> tuple[socket.socket, socket.socket]:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    rx.bind(("127.0.0.1", 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.bind(("127.0.0.1", 0))
    tx.connect(rx.getsockname())
    return tx, rx


def bench_throughput(seconds: float, compact: bool) -> None:
    batch = 32
    tx, rx = udp_pair()
    payload = os.urandom(DATAGRAM)

    def raw() -> float:
        n = 0
        end = time.perf_counter() + seconds
        t0 = time.perf_counter()
        while time.perf_counter() < end:
            for _ in range(batch):
                tx.send(payload)
            for _ in range(batch):
                rx.recv(2048)
            n += batch
        return n / (time.perf_counter() - t0)

    c, s = cert_configs()
    limits = EndpointLimits(compact_after=0.0) if compact else None
    secret = CookieSecret()
    endpoint = DTLSEndpoint(
        dtls_connection_factory(s, cookie_secret=secret),
        stateless=CookieResponder(s, secret),  # address validated: no amplification limit
        limits=limits,
        compactor=compact_connection if compact else None,
    )
    client = DTLSConnection(c, is_client=True, server_name="localhost")
    addr = tx.getsockname()
    in_memory_handshake(endpoint, client, addr, 0.0)
    client.datagrams_to_send(0.0)
    endpoint.handle_timer(0.0)
    (assoc,) = endpoint.associations()
    assert isinstance(assoc.conn, EstablishedConnection) == compact
    app = os.urandom(client.max_data_size)  # a full 1200-byte datagram on the wire
    received = 0

    def dtls() -> float:
        nonlocal received
        n = 0
        end = time.perf_counter() + seconds
        t0 = time.perf_counter()
        while time.perf_counter() < end:
            for _ in range(batch):
                client.send_data(app)
                for d in client.datagrams_to_send(0.0):
                    tx.send(d)
            for _ in range(batch):
                data, src = rx.recvfrom(2048)
                endpoint.receive_datagram(data, src, 0.0)
            while (event := endpoint.next_event()) is not None:
                received += len(getattr(getattr(event, "event", None), "data", b""))
            n += batch
        return n / (time.perf_counter() - t0)

    client.send_data(app)
    (first,) = client.datagrams_to_send(0.0)
    wire = len(first)  # the DTLS datagram size on the wire
    raw_rate = raw()
    dtls_rate = dtls()
    assert received > 0 and assoc.established
    state = "compact established state" if compact else "full DTLSConnection"
    print(f"[throughput] {wire}-byte datagrams, loopback, one thread, server side: {state}")
    print(f"  raw UDP sendto/recvfrom : {raw_rate:10.0f} datagrams/s  {raw_rate * DATAGRAM * 8 / 1e6:8.1f} Mbit/s")
    print(f"  DTLS 1.3 (AES-128-GCM)  : {dtls_rate:10.0f} datagrams/s  {dtls_rate * len(app) * 8 / 1e6:8.1f} Mbit/s payload")
    print(f"  ratio DTLS / raw        : {dtls_rate / raw_rate:.3f}")
    tx.close()
    rx.close()


# --------------------------------------------------------------------------
# 2. handshakes per second
# --------------------------------------------------------------------------
def bench_handshakes(seconds: float) -> dict[str, float]:
    results = {}
    for name, (c, s), stateless in (
        ("certificate (ECDSA P-256, x25519), stateless cookie", cert_configs(), True),
        ("external PSK, psk_ke, no cookie", psk_configs(), False),
    ):
        secret = CookieSecret()
        endpoint = DTLSEndpoint(
            dtls_connection_factory(s, cookie_secret=secret, require_cookie=stateless),
            stateless=CookieResponder(s, secret) if stateless else None,
        )
        n = 0
        t0 = time.perf_counter()
        end = t0 + seconds
        while time.perf_counter() < end:
            client = DTLSConnection(c, is_client=True, server_name="localhost")
            in_memory_handshake(endpoint, client, ("10.0.0.1", n), 1000.0)
            n += 1
        rate = n / (time.perf_counter() - t0)
        results[name] = rate
        print(f"[handshakes] tcpls {name}: {rate:.0f}/s (client and server on one thread)")
    wolf = wolf_handshake_rate()
    if wolf is not None:
        ours = results["certificate (ECDSA P-256, x25519), stateless cookie"]
        print(f"[handshakes] wolfSSL tls_bench -u (DTLS 1.3, AES128-GCM, C, client and server threads): {wolf:.0f}/s")
        print(f"  ratio tcpls certificate handshakes / wolfSSL: {ours / wolf:.3f}")
    return results


def wolf_handshake_rate() -> float | None:
    try:
        out = subprocess.run(["bash", str(ROOT / "tools/wolfssl/build.sh"), "--print"], capture_output=True, text=True)
    except OSError:
        return None
    if out.returncode != 0:
        print("[handshakes] wolfSSL not built (tools/wolfssl/build.sh): no baseline")
        return None
    wolf = Path(out.stdout.strip().splitlines()[-1])
    cmd = ["./examples/benchmark/tls_bench", "-u", "-l", "TLS13-AES128-GCM-SHA256", "-t", "2", "-p", "1200", "-S", "12000"]
    print(f"[handshakes] running (cwd {wolf}): {' '.join(cmd)}")
    run = subprocess.run(cmd, cwd=wolf, capture_output=True, text=True, timeout=120)
    text = run.stdout + run.stderr  # tls_bench prints its table on stderr
    # Columns: Side Cipher Group TotalBytes NumConns RxMs TxMs RxMB/s TxMB/s ConnectTotalMs ConnectAvgMs
    rows = [line.split() for line in text.splitlines() if line.startswith("Client ")]
    if not rows:
        print("[handshakes] could not parse tls_bench output")
        return None
    conns, avg_ms = int(rows[0][4]), float(rows[0][-1])
    print(f"[handshakes] wolfSSL tls_bench: {conns} connections in 2 s (with 12 kB of data each), "
          f"client connect average {avg_ms:.3f} ms")
    return 1000.0 / avg_ms  # handshakes per second of one client/server pair


# --------------------------------------------------------------------------
# 3. latency during a handshake flood
# --------------------------------------------------------------------------
FLOODER = r"""
import asyncio, sys
sys.path[:0] = sys.argv[3:5]
from tcpls.aio import dtls as adtls
from tlspair import configs
async def main(port, seconds):
    c, _ = configs()
    c.verify_peer = False  # another process: another test CA
    c.check_hostname = False
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    done = 0
    async def worker():
        nonlocal done
        while loop.time() < end:
            try:
                ch = await adtls.connect(c, "127.0.0.1", port, server_name="localhost", timeout=5)
                ch._protocol.close()
                done += 1
            except Exception:
                pass
    await asyncio.gather(*(worker() for _ in range(16)))
    print(done)
asyncio.run(main(int(sys.argv[1]), float(sys.argv[2])))
"""


async def latency(seconds: float, flood: bool) -> tuple[list[float], int]:
    c, s = cert_configs()

    async def echo(ch: adtls.DTLSChannel) -> None:
        while data := await ch.recv():
            ch.send(data)

    with ThreadPoolExecutor(2, thread_name_prefix="hs") as pool:
        server = await adtls.serve(s, "127.0.0.1", 0, echo, executor=pool)
        port = server.local_address[1]
        ch = await adtls.connect(c, "127.0.0.1", port, server_name="localhost")
        proc = None
        if flood:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", FLOODER, str(port), str(seconds + 1), str(ROOT / "src"), str(ROOT / "tests"),
                stdout=asyncio.subprocess.PIPE,
            )
            await asyncio.sleep(1.0)  # let the flood start
        samples = []
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        payload = b"p" * 100
        while loop.time() < end:
            t0 = time.perf_counter()
            ch.send(payload)
            try:
                await asyncio.wait_for(ch.recv(), 2.0)
                samples.append(time.perf_counter() - t0)
            except asyncio.TimeoutError:
                samples.append(2.0)  # a lost ping counts as 2 s
            await asyncio.sleep(0.005)
        flooded = 0
        if proc is not None:
            out, _ = await proc.communicate()
            flooded = int(out.strip() or 0)
        stats = dict(server.endpoint.stats)
        ch._protocol.close()
        server.close()
        await server.wait_closed()
    return samples, flooded if flood else stats.get("stateless_replies", 0)


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000


def bench_latency(seconds: float) -> None:
    base, _ = asyncio.run(latency(seconds, False))
    during, handshakes = asyncio.run(latency(seconds, True))
    print(f"[latency] established association round trip, 100-byte records, asyncio server, 2 handshake workers")
    print(f"  no flood     : p50 {pct(base, .5):6.2f} ms  p99 {pct(base, .99):6.2f} ms  ({len(base)} pings)")
    print(f"  during flood : p50 {pct(during, .5):6.2f} ms  p99 {pct(during, .99):6.2f} ms  ({len(during)} pings, "
          f"{handshakes} full handshakes by 16 concurrent clients in another process)")
    print(f"  ratio p50 flood / no flood: {pct(during, .5) / pct(base, .5):.2f}, "
          f"p99: {pct(during, .99) / pct(base, .99):.2f}; lost pings: {sum(1 for x in during if x >= 2.0)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--skip-flood", action="store_true")
    args = parser.parse_args()
    bench_throughput(args.seconds, compact=False)
    bench_throughput(args.seconds, compact=True)
    bench_handshakes(args.seconds)
    if not args.skip_flood:
        bench_latency(args.seconds)


if __name__ == "__main__":
    main()
