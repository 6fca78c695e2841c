#!/usr/bin/env python3
"""Full TLS 1.3 handshake cost: tcpls sans-IO engines vs Python ``ssl``.

Both sides of each handshake run in this process, wired together in memory
(no sockets), so the figure is the CPU cost of one client *plus* one server
handshake: x25519 key exchange, an ECDSA P-256 server certificate, and the
client verifying the chain against the test CA and the name ``localhost``.

* tcpls: two ``TLSConnection`` engines passing ``data_to_send()`` to
  ``receive_data()`` until both report the handshake complete.
* ssl: two ``SSLObject``s over ``MemoryBIO`` pairs (OpenSSL does the work in C).

``--resumed`` measures resumed handshakes instead: the client offers a
session ticket from an earlier full handshake (stateless ticket, PSK with
x25519, no certificate, no signature); ``ssl`` resumes its ``SSLSession``.

CPU time is ``time.process_time()``. Usage::

    python benchmarks/bench_handshake.py [-n 200] [--resumed [--psk-modes psk_ke]] [--breakdown] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import ssl
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from cryptography.hazmat.primitives import serialization  # noqa: E402

from tcpls import _testcerts  # noqa: E402
from tcpls.tls.config import TLSConfig, parse_psk_modes  # noqa: E402
from tcpls.tls.connection import TLSConnection  # noqa: E402
from tcpls.tls.enums import NamedGroup  # noqa: E402

SERVER_NAME = "localhost"


def make_pki(tmp: str) -> dict:
    ca_cert, ca_key = _testcerts.make_ca("bench CA")
    cert, key = _testcerts.make_leaf(ca_cert, ca_key, names=[SERVER_NAME, "127.0.0.1"], key_type="ec256")
    paths = {"ca": os.path.join(tmp, "ca.pem"), "cert": os.path.join(tmp, "cert.pem"), "key": os.path.join(tmp, "key.pem")}
    with open(paths["ca"], "wb") as f:
        f.write(ca_cert.public_bytes(serialization.Encoding.PEM))
    with open(paths["cert"], "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(paths["key"], "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return paths


# ----------------------------------------------------------------- tcpls
def tcpls_configs(paths: dict, psk_modes: str = "psk_dhe_ke") -> tuple[TLSConfig, TLSConfig]:
    modes = parse_psk_modes(psk_modes)
    server = TLSConfig(groups=[NamedGroup.x25519], psk_key_exchange_modes=list(modes))
    server.load_cert_chain(paths["cert"], paths["key"])
    client = TLSConfig(groups=[NamedGroup.x25519], psk_key_exchange_modes=list(modes))
    client.load_verify_locations(paths["ca"])
    for cfg in (client, server):
        cfg.keylog_file = None
    os.environ.pop("SSLKEYLOGFILE", None)
    return client, server


def tcpls_handshake(client_cfg: TLSConfig, server_cfg: TLSConfig, session=None) -> TLSConnection:
    now = time.time()
    client = TLSConnection(client_cfg, server_side=False, server_name=SERVER_NAME, session=session)
    server = TLSConnection(server_cfg, server_side=True)
    client.start_handshake(now)
    server.start_handshake(now)
    for _ in range(20):
        data = client.data_to_send()
        if data:
            server.receive_data(data, now)
        data = server.data_to_send()
        if data:
            client.receive_data(data, now)
        if client.handshake_complete and server.handshake_complete:
            break
    else:
        raise RuntimeError("tcpls handshake did not complete")
    # drain events like a real driver would
    while client.next_event() is not None:
        pass
    while server.next_event() is not None:
        pass
    if session is not None and not client.session_resumed:
        raise RuntimeError("tcpls did not resume")
    return client


def tcpls_session(client_cfg: TLSConfig, server_cfg: TLSConfig):
    """A session from one full handshake (tickets arrive with the server's last flight)."""
    client = TLSConnection(client_cfg, server_side=False, server_name=SERVER_NAME)
    server = TLSConnection(server_cfg, server_side=True)
    now = time.time()
    client.start_handshake(now)
    for _ in range(20):
        if d := client.data_to_send():
            server.receive_data(d, now)
        if d := server.data_to_send():
            client.receive_data(d, now)
        if client.session is not None:
            return client.session
    raise RuntimeError("no session ticket")


# ----------------------------------------------------------------- ssl
def ssl_contexts(paths: dict) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.minimum_version = ssl.TLSVersion.TLSv1_3
    server.load_cert_chain(paths["cert"], paths["key"])
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.minimum_version = ssl.TLSVersion.TLSv1_3
    client.load_verify_locations(paths["ca"])
    return client, server


def _step(obj: ssl.SSLObject) -> bool:
    try:
        obj.do_handshake()
        return True
    except ssl.SSLWantReadError:
        return False


def _pump(client, server, c_in, c_out, s_in, s_out) -> bool:
    """Drive two ssl objects over memory BIOs; True once both handshakes are done."""
    c_done = s_done = False
    for _ in range(20):
        if not c_done:
            c_done = _step(client)
        if c_out.pending:
            s_in.write(c_out.read())
        if not s_done:
            s_done = _step(server)
        if s_out.pending:
            c_in.write(s_out.read())
        if c_done and s_done:
            return True
    return False


def ssl_handshake(client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext, session=None):
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_side=False, server_hostname=SERVER_NAME, session=session)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    if not _pump(client, server, c_in, c_out, s_in, s_out):
        raise RuntimeError("ssl handshake did not complete")
    if client.version() != "TLSv1.3":
        raise RuntimeError(f"ssl negotiated {client.version()}")
    if session is not None and not client.session_reused:
        raise RuntimeError("ssl did not resume")
    return client


def ssl_session(client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext):
    """A session from one full handshake; the client reads the tickets on a later read."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_side=False, server_hostname=SERVER_NAME)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    _pump(client, server, c_in, c_out, s_in, s_out)
    try:
        client.read(1)  # processes the NewSessionTickets
    except ssl.SSLWantReadError:
        pass
    return client.session


# ----------------------------------------------------------------- breakdown
def primitive_floor(client_cfg: TLSConfig, server_cfg: TLSConfig, session, n: int) -> list[tuple[str, int, float]]:
    """``(primitive, calls per handshake pair, CPU seconds per call)``.

    The calls are counted during one handshake by wrapping the names the key
    schedule and the key exchange use; each primitive is then timed alone on
    the same machine, in this run. What the handshake costs beyond the sum
    is Python: codecs, state machines, record layer, objects.
    """
    from cryptography.hazmat.primitives import hashes, hmac
    from cryptography.hazmat.primitives.asymmetric import x25519
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

    from tcpls.tls import kex, key_schedule

    counts = {"hkdf_expand": 0, "hkdf_extract": 0, "hmac": 0, "x25519_keygen": 0, "x25519_exchange": 0}
    real_expand, real_hkdf, real_hmac, real_x25519 = key_schedule.HKDFExpand, key_schedule.HKDF, key_schedule._hmac, kex.x25519

    class CountingExpand:
        def __init__(self, *args):
            counts["hkdf_expand"] += 1
            self._e = real_expand(*args)

        def derive(self, key):
            return self._e.derive(key)

    class CountingHKDF:
        @staticmethod
        def extract(*args):
            counts["hkdf_extract"] += 1
            return real_hkdf.extract(*args)

    class CountingHMACModule:
        @staticmethod
        def HMAC(*args):  # noqa: N802
            counts["hmac"] += 1
            return real_hmac.HMAC(*args)

    class CountingPrivateKey:
        @staticmethod
        def generate():
            counts["x25519_keygen"] += 1
            key = real_x25519.X25519PrivateKey.generate()

            class Wrapped:
                def public_key(self):
                    return key.public_key()

                def exchange(self, peer):
                    counts["x25519_exchange"] += 1
                    return key.exchange(peer)

            return Wrapped()

    class CountingX25519Module:
        X25519PrivateKey = CountingPrivateKey
        X25519PublicKey = real_x25519.X25519PublicKey

    key_schedule.HKDFExpand, key_schedule.HKDF, key_schedule._hmac = CountingExpand, CountingHKDF, CountingHMACModule
    kex.x25519 = CountingX25519Module
    try:
        tcpls_handshake(client_cfg, server_cfg, session)
    finally:
        key_schedule.HKDFExpand, key_schedule.HKDF, key_schedule._hmac, kex.x25519 = real_expand, real_hkdf, real_hmac, real_x25519

    h = hashes.SHA256()
    secret, info = os.urandom(32), os.urandom(49)
    priv, peer = x25519.X25519PrivateKey.generate(), x25519.X25519PrivateKey.generate().public_key()

    def mac():
        m = hmac.HMAC(secret, h)
        m.update(info)
        return m.finalize()

    timed = {
        "hkdf_expand": lambda: HKDFExpand(h, 32, info).derive(secret),
        "hkdf_extract": lambda: HKDF.extract(h, secret, secret),
        "hmac": mac,
        "x25519_keygen": lambda: x25519.X25519PrivateKey.generate().public_key(),
        "x25519_exchange": lambda: priv.exchange(peer),
    }
    return [(name, counts[name], measure(fn, n * 10)) for name, fn in timed.items()]


# ----------------------------------------------------------------- timing
def measure(fn, n: int, warmup: int = 5) -> float:
    """CPU seconds per call, over ``n`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    t0 = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t0) / n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--iterations", type=int, default=200, help="handshakes per implementation (default 200)")
    ap.add_argument("--profile", action="store_true", help="print a cProfile top-25 (cumulative) of the tcpls handshakes")
    ap.add_argument(
        "--breakdown", action="store_true", help="also count and time the primitives one handshake pair runs"
    )
    ap.add_argument("--resumed", action="store_true", help="resumed (PSK-DHE, session ticket) handshakes instead of full ones")
    ap.add_argument(
        "--psk-modes",
        default="psk_dhe_ke",
        choices=("psk_dhe_ke", "psk_ke"),
        help="PSK key exchange mode of both tcpls sides in --resumed (default psk_dhe_ke; ssl stays psk_dhe_ke)",
    )
    args = ap.parse_args(argv)
    if args.psk_modes != "psk_dhe_ke" and not args.resumed:
        ap.error("--psk-modes only applies to --resumed")

    with tempfile.TemporaryDirectory() as tmp:
        paths = make_pki(tmp)
        c_cfg, s_cfg = tcpls_configs(paths, args.psk_modes)
        c_ctx, s_ctx = ssl_contexts(paths)

        t_session = ssl_sess = None
        if args.resumed:
            t_session = tcpls_session(c_cfg, s_cfg)
            ssl_sess = ssl_session(c_ctx, s_ctx)
        t_tcpls = measure(lambda: tcpls_handshake(c_cfg, s_cfg, t_session), args.iterations)
        t_ssl = measure(lambda: ssl_handshake(c_ctx, s_ctx, ssl_sess), args.iterations)

        if args.resumed:
            mode = "PSK + x25519" if args.psk_modes == "psk_dhe_ke" else "tcpls PSK only (psk_ke), ssl PSK + x25519"
            print(f"resumed handshake (session ticket, {mode}), client+server; {args.iterations} iterations")
        else:
            print(f"full handshake, client+server, x25519 + ECDSA P-256, verification on; {args.iterations} iterations")
        print(f"  tcpls  {t_tcpls * 1e6:10.0f} us/handshake  ({1 / t_tcpls:8.1f} handshakes/s)")
        print(f"  ssl    {t_ssl * 1e6:10.0f} us/handshake  ({1 / t_ssl:8.1f} handshakes/s)")
        print(f"  ratio tcpls/ssl (CPU time): {t_tcpls / t_ssl:.2f}x")

        if args.breakdown:
            rows = primitive_floor(c_cfg, s_cfg, t_session, args.iterations)
            floor = sum(calls * each for _, calls, each in rows)
            print("  primitives per handshake pair (cryptography, timed alone in this run):")
            for name, calls, each in rows:
                print(f"    {name:16s} {calls:3d} x {each * 1e6:6.2f} us = {calls * each * 1e6:7.1f} us")
            print(f"    {'sum':16s} {floor * 1e6:25.1f} us ({floor / t_tcpls:.0%} of the tcpls figure)")
            rest = "AEAD setup, records, transcript hashing, Python codecs and state machines"
            if not args.resumed:
                rest = "ECDSA sign + verify, chain verification, " + rest
            print(f"  the rest ({rest}): {(t_tcpls - floor) * 1e6:.0f} us")

        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(args.iterations):
                tcpls_handshake(c_cfg, s_cfg, t_session)
            prof.disable()
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(25)
            print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
