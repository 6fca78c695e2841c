#!/usr/bin/env python3
"""Bulk transfer over loopback: tcpls (``tcpls.sync``) vs Python ``ssl``.

For each implementation a server process and a client process are started
(``multiprocessing`` spawn). After the handshake the client sends ``--size``
bytes (default 256 MiB) with TLS_AES_128_GCM_SHA256; the server reads them
all and answers one acknowledgement byte. The time measured is the client's
wall time from its first ``sendall`` to the arrival of that acknowledgement,
i.e. until the receiver has decrypted every byte.

Python's ``ssl`` module cannot choose TLS 1.3 cipher suites, so its processes
get an ``OPENSSL_CONF`` that restricts OpenSSL to TLS_AES_128_GCM_SHA256; the
negotiated suite of every run is printed.

Usage::

    python benchmarks/bench_bulk.py [--size 256M] [--runs 1] [--only tcpls|ssl]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import ssl
import sys
import tempfile
import time

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
sys.path.insert(0, SRC)

SUITE = "TLS_AES_128_GCM_SHA256"
CHUNK = 1 << 20
RECV_BUF = 256 * 1024
TIMEOUT = 600.0

OPENSSL_CNF = f"""openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_module
[ssl_module]
system_default = tls_defaults
[tls_defaults]
MinProtocol = TLSv1.3
Ciphersuites = {SUITE}
"""


def parse_size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().rstrip("ib")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


def make_pki(tmp: str) -> dict:
    from cryptography.hazmat.primitives import serialization

    from tcpls import _testcerts

    ca_cert, ca_key = _testcerts.make_ca("bench CA")
    cert, key = _testcerts.make_leaf(ca_cert, ca_key, names=["localhost", "127.0.0.1"], key_type="ec256")
    paths = {k: os.path.join(tmp, f"{k}.pem") for k in ("ca", "cert", "key")}
    with open(paths["ca"], "wb") as f:
        f.write(ca_cert.public_bytes(serialization.Encoding.PEM))
    with open(paths["cert"], "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(paths["key"], "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return paths


# ----------------------------------------------------------------- endpoints
def _tcpls_config(paths: dict, server: bool):
    from tcpls.tls.config import TLSConfig, parse_cipher_suites

    cfg = TLSConfig(cipher_suites=parse_cipher_suites(SUITE))
    if server:
        cfg.load_cert_chain(paths["cert"], paths["key"])
    else:
        cfg.load_verify_locations(paths["ca"])
    return cfg


def _receive(sock, size: int) -> None:
    buf = bytearray(RECV_BUF)
    got = 0
    while got < size:
        n = sock.recv_into(buf)
        if n == 0:
            raise EOFError(f"client closed after {got} of {size} bytes")
        got += n


def server_main(impl: str, paths: dict, size: int, q) -> None:
    sys.path.insert(0, SRC)
    try:
        if impl == "tcpls":
            from tcpls import sync

            listener = sync.create_server(("127.0.0.1", 0), _tcpls_config(paths, server=True))
            listener.settimeout(TIMEOUT)
            q.put(("port", listener.getsockname()[1]))
            sock, _ = listener.accept()
            sock.settimeout(TIMEOUT)
            sock.do_handshake()
            suite = sock.cipher_suite.name if hasattr(sock.cipher_suite, "name") else str(sock.cipher_suite)
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
            ctx.load_cert_chain(paths["cert"], paths["key"])
            listener = socket.create_server(("127.0.0.1", 0))
            listener.settimeout(TIMEOUT)
            q.put(("port", listener.getsockname()[1]))
            raw, _ = listener.accept()
            raw.settimeout(TIMEOUT)
            sock = ctx.wrap_socket(raw, server_side=True)
            suite = sock.cipher()[0]
        _receive(sock, size)
        sock.sendall(b"K")
        # wait for the client's close, then close
        try:
            sock.recv(1)
        except Exception:  # noqa: BLE001 -- the benchmark is over
            pass
        sock.close()
        listener.close()
        q.put(("server-done", suite))
    except BaseException as exc:  # noqa: BLE001
        q.put(("error", f"server: {exc!r}"))


def client_main(impl: str, paths: dict, size: int, port: int, q) -> None:
    sys.path.insert(0, SRC)
    try:
        if impl == "tcpls":
            from tcpls import sync

            sock = sync.connect(("127.0.0.1", port), _tcpls_config(paths, server=False), server_name="localhost", timeout=TIMEOUT)
            suite = sock.cipher_suite.name if hasattr(sock.cipher_suite, "name") else str(sock.cipher_suite)
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
            ctx.load_verify_locations(paths["ca"])
            raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock = ctx.wrap_socket(raw, server_hostname="localhost")
            suite = sock.cipher()[0]
        chunk = os.urandom(CHUNK)
        full, rest = divmod(size, CHUNK)
        t0 = time.perf_counter()
        for _ in range(full):
            sock.sendall(chunk)
        if rest:
            sock.sendall(chunk[:rest])
        ack = sock.recv(1)
        t1 = time.perf_counter()
        if ack != b"K":
            raise RuntimeError(f"bad acknowledgement {ack!r}")
        sock.close()
        q.put(("client-done", (t1 - t0, suite)))
    except BaseException as exc:  # noqa: BLE001
        q.put(("error", f"client: {exc!r}"))


# ----------------------------------------------------------------- driver
def run_once(impl: str, paths: dict, size: int, cnf_path: str) -> tuple[float, str]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    old = os.environ.get("OPENSSL_CONF")
    if impl == "ssl":
        os.environ["OPENSSL_CONF"] = cnf_path  # read by OpenSSL when the children start
    try:
        server = ctx.Process(target=server_main, args=(impl, paths, size, q), daemon=True)
        server.start()
        kind, value = q.get(timeout=60)
        if kind != "port":
            raise RuntimeError(value)
        client = ctx.Process(target=client_main, args=(impl, paths, size, value, q), daemon=True)
        client.start()
    finally:
        if old is None:
            os.environ.pop("OPENSSL_CONF", None)
        else:
            os.environ["OPENSSL_CONF"] = old
    elapsed = suite = server_suite = None
    try:
        while elapsed is None or server_suite is None:
            kind, value = q.get(timeout=TIMEOUT)
            if kind == "error":
                raise RuntimeError(value)
            if kind == "client-done":
                elapsed, suite = value
            elif kind == "server-done":
                server_suite = value
    finally:
        for p in (client, server):
            p.join(10)
            if p.is_alive():
                p.terminate()
    if suite != SUITE or server_suite != SUITE:
        raise RuntimeError(f"{impl} negotiated {suite}/{server_suite}, expected {SUITE}")
    return elapsed, suite


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="256M", help="bytes to send, with optional K/M/G suffix (default 256M)")
    ap.add_argument("--runs", type=int, default=1, help="runs per implementation; the best is reported (default 1)")
    ap.add_argument("--only", choices=("tcpls", "ssl"), help="run only one implementation")
    args = ap.parse_args(argv)
    size = parse_size(args.size)
    impls = [args.only] if args.only else ["tcpls", "ssl"]

    with tempfile.TemporaryDirectory() as tmp:
        paths = make_pki(tmp)
        cnf = os.path.join(tmp, "openssl.cnf")
        with open(cnf, "w") as f:
            f.write(OPENSSL_CNF)
        print(f"bulk transfer over loopback: {size / (1 << 20):.0f} MiB, {SUITE}, best of {args.runs}")
        rates = {}
        for impl in impls:
            best = min(run_once(impl, paths, size, cnf)[0] for _ in range(args.runs))
            rates[impl] = size / best / 1e6
            print(f"  {impl:6s} {best:8.3f} s  {rates[impl]:9.1f} MB/s")
        if len(rates) == 2:
            print(f"  ratio tcpls/ssl (throughput): {rates['tcpls'] / rates['ssl']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
