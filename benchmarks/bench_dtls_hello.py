#!/usr/bin/env python3
"""Cost of answering a first DTLS 1.3 ClientHello statelessly, whole vs fragmented.

A client with large key shares (x25519, P-521, ffdhe4096: about 1.1 KB of
shares, the size class of a hybrid post-quantum share) sends a ClientHello
that does not fit a 400-byte datagram. The server side answers each
ClientHello with a cookie HelloRetryRequest and keeps no connection:

* baseline: the ClientHello in one datagram (``max_datagram_size=1400``)
  straight into ``stateless_hello_retry``;
* fragmented: the same ClientHello in several datagrams, each passed through
  one ``ClientHelloReassembler`` (as an endpoint would), the completed one
  into ``stateless_hello_retry``;
* flood: first fragments from distinct addresses that never complete (a
  spoofing attacker), per datagram, with the reassembler full and evicting.

All in one process, CPU time (``time.process_time()``); printed as
microseconds per ClientHello (or per datagram) and as ratios to the
baseline measured in the same run. Usage::

    python benchmarks/bench_dtls_hello.py [-n 2000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from tcpls import _testcerts  # noqa: E402
from tcpls.dtls.connection import ClientHelloReassembler, DTLSConnection, stateless_hello_retry  # noqa: E402
from tcpls.dtls.cookie import CookieSecret  # noqa: E402
from tcpls.tls.config import TLSConfig  # noqa: E402
from tcpls.tls.enums import NamedGroup  # noqa: E402

SHARES = [NamedGroup.x25519, NamedGroup.secp521r1, NamedGroup.ffdhe4096]


def client_hello(max_datagram_size: int) -> list[bytes]:
    cfg = TLSConfig(groups=list(SHARES), key_share_groups=list(SHARES), verify_peer=False)
    client = DTLSConnection(cfg, is_client=True, server_name="localhost", max_datagram_size=max_datagram_size)
    client.start_handshake(0.0)
    return client.datagrams_to_send(0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="ClientHellos per measurement")
    args = parser.parse_args()
    n = args.n

    ca, ca_key = _testcerts.make_ca("bench CA")
    cert, key = _testcerts.make_leaf(ca, ca_key, names=["localhost"], key_type="ec256")
    server_cfg = TLSConfig(certificate_chain=[cert], private_key=key, groups=list(SHARES))
    secret = CookieSecret(b"b" * 32)
    (whole,) = client_hello(1400)
    pieces = client_hello(400)
    assert len(pieces) >= 3, "the ClientHello should not fit one 400-byte datagram"
    addr = ("192.0.2.1", 4433)

    # Baseline: one datagram.
    t0 = time.process_time()
    for _ in range(n):
        assert stateless_hello_retry(server_cfg, whole, addr, secret, 0.0) is not None
    base = (time.process_time() - t0) / n

    # Fragmented over several datagrams, through the reassembler.
    reasm = ClientHelloReassembler()
    t0 = time.process_time()
    for _ in range(n):
        done = None
        for d in pieces:
            done = reasm.add(addr, d, 0.0)
        assert done is not None and stateless_hello_retry(server_cfg, done, addr, secret, 0.0) is not None
    frag = (time.process_time() - t0) / n

    # Flood: incomplete first fragments from n distinct addresses.
    flood = ClientHelloReassembler()
    t0 = time.process_time()
    for i in range(n):
        assert flood.add(("198.51.100.1", i), pieces[0], 0.0) is None
    per_datagram = (time.process_time() - t0) / n
    assert len(flood) <= flood.max_entries and flood.buffered_bytes <= flood.max_bytes

    print(f"ClientHello: {len(whole) - 25} bytes; fragmented into {len(pieces)} datagrams of <= 400 bytes")
    print(f"baseline   (one datagram)        {base * 1e6:9.1f} us per ClientHello")
    print(f"fragmented (reassembler + HRR)   {frag * 1e6:9.1f} us per ClientHello   ratio {frag / base:5.2f}x")
    print(
        f"flood      (incomplete fragment) {per_datagram * 1e6:9.1f} us per datagram      ratio {per_datagram / base:5.2f}x"
        f"   (kept: {len(flood)} entries, {flood.buffered_bytes} bytes, evicted {flood.evicted})"
    )


if __name__ == "__main__":
    main()
