"""TCPLS engine costs in memory (no sockets): each case against a baseline
measured in the same run.

* key updates: bulk transfer over two connections with automatic KeyUpdate
  every ``--ku-records`` records, against the default limit (2^23 records,
  i.e. no update during the run);
* stream churn: N request/response exchanges each on its own short stream
  (opened, FIN both ways, forgotten), against the same exchanges on one
  long-lived stream; also prints the session tables afterwards;
* reordering: bulk over two connections where one connection's bytes are
  held back and released in bursts (the receiver's reorder buffer works),
  against the same transfer delivered as it is produced.

Usage: python benchmarks/bench_tcpls_engine.py [--size 32M] [--streams 3000] [--ku-records 64] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from tcpls import _testcerts  # noqa: E402
from tcpls.tcpls import events as ev  # noqa: E402
from tcpls.tcpls.config import TCPLSConfig  # noqa: E402
from tcpls.tcpls.session import TCPLSSession, route_connection  # noqa: E402
from tcpls.tls.config import TLSConfig  # noqa: E402

_CA = _testcerts.make_ca("bench CA")
_LEAF = _testcerts.make_leaf(_CA[0], _CA[1], ["localhost"], key_type="ec256")


class Pair:
    def __init__(self, **kw) -> None:
        server_tls = TLSConfig(certificate_chain=[_LEAF[0]], private_key=_LEAF[1], num_tickets=0)
        self.scfg = TCPLSConfig(server_tls, **kw)
        self.client = TCPLSSession(TCPLSConfig(TLSConfig(trust_anchors=[_CA[0]]), **kw), True, "localhost")
        self.server: TCPLSSession | None = None
        self.hold: set[int] = set()
        self.held: dict[int, list[bytes]] = {}
        self.received = 0
        self.ended: set[int] = set()
        self.client.start_handshake(0.0)
        self.pump()

    def _to_server(self, cid: int, data: bytes) -> None:
        if self.server is None:
            self.server = TCPLSSession(self.scfg, is_client=False)
        if cid not in self.server.connection_ids():
            session, is_join = route_connection(self.scfg, data)  # type: ignore[misc]
            assert is_join
            session.accept_join(data, 0.0)
            return
        self.server.receive_data(cid, data, 0.0)

    def release(self) -> None:
        for cid, chunks in self.held.items():
            for d in chunks:
                self._to_server(cid, d)
        self.held.clear()

    def pump(self) -> None:
        while True:
            moved = False
            for cid in self.client.connections_with_data():
                data = self.client.data_to_send(cid)
                if cid in self.hold or self.held.get(cid):
                    self.held.setdefault(cid, []).append(data)  # TCP keeps order: behind what waits
                    continue
                self._to_server(cid, data)
                moved = True
            if self.server is not None:
                for cid in self.server.connections_with_data():
                    self.client.receive_data(cid, self.server.data_to_send(cid), 0.0)
                    moved = True
                while (e := self.server.next_event()) is not None:
                    if isinstance(e, ev.StreamDataReceived):
                        self.received += len(e.data)
                    elif isinstance(e, ev.StreamEnded):
                        self.ended.add(e.stream_id)
            while (e := self.client.next_event()) is not None:
                if isinstance(e, ev.StreamEnded):
                    self.ended.add(e.stream_id)
            if not moved:
                return

    def join(self) -> int:
        cid = self.client.add_connection(0.0)
        self.pump()
        return cid


def bulk(size: int, hold_bursts: int = 0, **kw) -> tuple[float, int]:
    """Seconds to move ``size`` bytes client -> server over two connections."""
    p = Pair(**kw)
    p.join()
    sid = p.client.open_stream()
    chunk = os.urandom(1 << 18)
    t0 = time.perf_counter()
    sent = 0
    n = 0
    while sent < size:
        if hold_bursts:
            p.hold = {0} if n % 2 == 0 else set()
        p.client.send_stream_data(sid, chunk, fin=sent + len(chunk) >= size)
        sent += len(chunk)
        p.pump()
        if not p.hold:
            p.release()
            p.pump()
        n += 1
    p.hold = set()
    p.release()
    p.pump()
    dt = time.perf_counter() - t0
    assert p.received == sent, (p.received, sent)
    updates = sum(c.tx_gen for c in p.client._conns.values())
    return dt, updates


def churn(n: int, per_stream: bool) -> tuple[float, int, int]:
    """Seconds for ``n`` 100-byte request/response exchanges."""
    p = Pair()
    req, resp = b"q" * 100, b"r" * 100
    t0 = time.perf_counter()
    if per_stream:
        for _ in range(n):
            sid = p.client.open_stream()
            p.client.send_stream_data(sid, req, fin=True)
            p.pump()
            assert p.server is not None
            p.server.send_stream_data(sid, resp, fin=True)
            p.pump()
    else:
        sid = p.client.open_stream()
        p.client.send_stream_data(sid, req)
        p.pump()
        assert p.server is not None
        p.server.send_stream_data(sid, resp)
        p.pump()
        for _ in range(n - 1):
            p.client.send_stream_data(sid, req)
            p.pump()
            p.server.send_stream_data(sid, resp)
            p.pump()
    dt = time.perf_counter() - t0
    assert p.received == 100 * n
    assert p.server is not None
    return dt, len(p.client.stream_ids()), len(p.server.stream_ids())


def key_update_cost(n: int = 2000) -> tuple[float, float]:
    """Seconds per key switch (derive the next secret, install key and IV)
    and per sealed 16 KiB record, on one connection's encryptor."""
    from tcpls.tcpls.path import ConnectionEncryptor
    from tcpls.tls.key_schedule import next_traffic_secret
    from tcpls.tls.suites import SUITES

    suite = next(iter(SUITES.values()))
    enc = ConnectionEncryptor(suite, bytes(suite.hash_len), 1)
    t0 = time.perf_counter()
    for _ in range(n):
        enc.update(next_traffic_secret(suite.hash_name, enc.secret))
    per_update = (time.perf_counter() - t0) / n
    data, out = bytes(1 << 14), []
    t0 = time.perf_counter()
    for _ in range(n):
        enc.seal(23, data, out)
        out.clear()
    return per_update, (time.perf_counter() - t0) / n


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else int(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="32M")
    ap.add_argument("--streams", type=int, default=3000)
    ap.add_argument("--ku-records", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3, help="best of N for every case")
    args = ap.parse_args()
    size = _size(args.size)
    mb = size / 1e6

    def pair_best(a, b):
        """Best of N of two cases, run alternately (the machine's load drifts)."""
        ra, rb = [], []
        for _ in range(args.runs):
            ra.append(a())
            rb.append(b())
        return min(ra, key=lambda r: r[0]), min(rb, key=lambda r: r[0])

    bulk(size // 8)  # warm-up
    (base, _), (ku, updates) = pair_best(lambda: bulk(size), lambda: bulk(size, key_update_records=args.ku_records))
    print(f"bulk {mb:.0f} MB, 2 connections: {mb / base:.1f} MB/s default; {mb / ku:.1f} MB/s with a KeyUpdate "
          f"every {args.ku_records} records ({updates} updates); ratio {ku / base:.3f}x time")

    upd, rec = min(key_update_cost() for _ in range(args.runs))
    print(f"one key switch: {upd * 1e6:.1f} us; sealing one 16 KiB record: {rec * 1e6:.1f} us; ratio {upd / rec:.2f}")

    (one, _, _), (many, c_left, s_left) = pair_best(
        lambda: churn(args.streams, per_stream=False), lambda: churn(args.streams, per_stream=True)
    )
    print(f"{args.streams} request/response exchanges: {args.streams / one:.0f}/s on one stream; "
          f"{args.streams / many:.0f}/s one stream each; ratio {many / one:.3f}x time; "
          f"streams left in the tables afterwards: client {c_left}, server {s_left}")

    (base, _), (reord, _) = pair_best(lambda: bulk(size), lambda: bulk(size, hold_bursts=1))
    print(f"bulk {mb:.0f} MB with connection 0 held back every other burst: {mb / reord:.1f} MB/s; "
          f"ratio {reord / base:.3f}x time against in-order delivery")


if __name__ == "__main__":
    main()
