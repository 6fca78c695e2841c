"""kTLS end-to-end scenarios, run inside a VM whose kernel has kTLS
(tests/test_ktls_vm.py boots it with tools/ktls-vm/run_vm.sh).

Every scenario prints ``KTLS_CASE <name> PASS|FAIL [detail]``; the last line
is ``KTLS_RESULT: PASS`` only if all passed. On a kernel without kTLS the
same scenarios run with the record layer in userspace (``--userspace``),
which is how this file is debugged on the host.

Usage: python ktls_guest.py [--userspace] [--quick]
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "src"))

from tcpls import _testcerts, aio, ktls, sync  # noqa: E402
from tcpls.tls.config import TLSConfig  # noqa: E402
from tcpls.tls.enums import CipherSuite  # noqa: E402

USERSPACE = "--userspace" in sys.argv
MODE = "auto" if USERSPACE else "required"
EXPECT = None if USERSPACE else "TX+RX"
OPENSSL = "/usr/bin/openssl"
TIMEOUT = float(os.environ.get("KTLS_GUEST_TIMEOUT", "60"))
# Starting the CLI means two fresh interpreters importing the whole package
# over 9p under software emulation: on a loaded host that alone took over a
# minute once. The transfer itself takes seconds.
CLI_TIMEOUT = max(TIMEOUT, float(os.environ.get("KTLS_GUEST_CLI_TIMEOUT", "300")))
SUITES = {
    "TLS_AES_128_GCM_SHA256": CipherSuite.TLS_AES_128_GCM_SHA256,
    "TLS_AES_256_GCM_SHA384": CipherSuite.TLS_AES_256_GCM_SHA384,
    "TLS_CHACHA20_POLY1305_SHA256": CipherSuite.TLS_CHACHA20_POLY1305_SHA256,
}
BIG = (3 << 20) + 12345  # the sendfile payload: a bit over 3 MiB, not record-aligned

WORK = tempfile.mkdtemp(prefix="ktls-guest-")
RESULTS: list[tuple[str, bool, str]] = []


def log(msg: str) -> None:
    print(msg, flush=True)


def case(name: str):
    def deco(fn):
        def run(*args):
            label = name.format(*args)
            t0 = time.monotonic()
            try:
                detail = fn(*args) or ""
                ok = True
            except Exception as exc:  # noqa: BLE001 - reported, not raised
                traceback.print_exc()
                detail = f"{type(exc).__name__}: {exc}"
                ok = False
            RESULTS.append((label, ok, detail))
            log(f"KTLS_CASE {label} {'PASS' if ok else 'FAIL'} ({time.monotonic() - t0:.2f}s) {detail}")

        return run

    return deco


# ------------------------------------------------------------ fixtures
def setup_pki():
    ca, ca_key = _testcerts.make_ca("ktls test CA")
    cert, key = _testcerts.make_leaf(ca, ca_key, ["localhost", "127.0.0.1"], key_type="ec256")
    ca_file = _testcerts.write_pem(os.path.join(WORK, "ca.pem"), ca)
    cert_file = _testcerts.write_pem(os.path.join(WORK, "cert.pem"), cert)
    key_file = _testcerts.write_pem(os.path.join(WORK, "key.pem"), None, key)
    return ca_file, cert_file, key_file


CA_FILE, CERT_FILE, KEY_FILE = setup_pki()
BIG_FILE = os.path.join(WORK, "big.bin")
with open(BIG_FILE, "wb") as f:
    f.write(os.urandom(BIG))
BIG_SHA = hashlib.sha256(open(BIG_FILE, "rb").read()).hexdigest()


def server_config(suite: str) -> TLSConfig:
    c = TLSConfig(cipher_suites=[SUITES[suite]])
    c.load_cert_chain(CERT_FILE, KEY_FILE)
    return c


def client_config(suite: str) -> TLSConfig:
    c = TLSConfig(cipher_suites=[SUITES[suite]])
    c.load_verify_locations(cafile=CA_FILE)
    return c


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def recv_exactly(sock, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        d = sock.recv(min(1 << 18, n - got))
        if not d:
            raise EOFError(f"EOF after {got} of {n} bytes")
        parts.append(d)
        got += len(d)
    return b"".join(parts)


def recv_all(sock) -> bytes:
    parts = []
    while d := sock.recv(1 << 18):
        parts.append(d)
    return b"".join(parts)


def check_offload(sock, who: str) -> None:
    if sock.ktls != EXPECT:
        raise AssertionError(f"{who}: kTLS {sock.ktls!r}, expected {EXPECT!r} (reason: {sock.ktls_reason})")


class Thread(threading.Thread):
    def __init__(self, fn) -> None:
        super().__init__(daemon=True)
        self.fn, self.error, self.result = fn, None, None
        self.start()

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # noqa: BLE001
            traceback.print_exc()
            self.error = exc

    def get(self):
        self.join(TIMEOUT)
        if self.is_alive():
            raise TimeoutError("thread did not finish")
        if self.error is not None:
            raise self.error
        return self.result


class Proc:
    """An openssl process with stdin as a pipe and stdout/stderr in files."""

    def __init__(self, args: list[str], name: str) -> None:
        self.out_path = os.path.join(WORK, name + ".out")
        self.err_path = os.path.join(WORK, name + ".err")
        self.p = subprocess.Popen(
            [OPENSSL, *args], stdin=subprocess.PIPE, stdout=open(self.out_path, "wb"), stderr=open(self.err_path, "wb")
        )

    def write(self, data: bytes) -> None:
        self.p.stdin.write(data)
        self.p.stdin.flush()

    def out(self) -> bytes:
        return open(self.out_path, "rb").read()

    def err(self) -> str:
        return open(self.err_path, "rb").read().decode("latin-1")

    def wait_out(self, pred, what: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not pred(self.out()):
            if self.p.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"openssl: no {what}; rc={self.p.poll()} stderr: {self.err()[-800:]}")
            time.sleep(0.05)

    def finish(self) -> int:
        try:
            self.p.stdin.close()
        except OSError:
            pass
        try:
            return self.p.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            raise


def s_server(suite: str, name: str, *extra: str) -> tuple[Proc, int]:
    """s_server on a free port (``-quiet`` prints no ACCEPT line: poll the port)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = Proc(
        ["s_server", "-accept", f"127.0.0.1:{port}", "-naccept", "1", "-cert", CERT_FILE, "-key", KEY_FILE,
         "-ciphersuites", suite, "-tls1_3", "-ign_eof", *extra],
        name,
    )
    deadline = time.monotonic() + TIMEOUT
    while True:
        # a probe connection would be s_server's one accept: look for the listening socket instead
        if _listening(port):
            return proc, port
        if proc.p.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"s_server did not listen: {proc.err()[-500:]}")
        time.sleep(0.05)


def _listening(port: int) -> bool:
    want = f":{port:04X} "
    with open("/proc/net/tcp") as f:
        return any(want in line and line.split()[3] == "0A" for line in f)


# ------------------------------------------------------------ scenarios
@case("tcpls-tcpls/{0}")
def tcpls_pair(suite: str) -> str:
    """Both ends ours, TX+RX offloaded: echo both ways, then a sendfile checked by hash."""
    listener = sync.create_server(("127.0.0.1", 0), server_config(suite), ktls=MODE)
    listener.settimeout(TIMEOUT)
    up = os.urandom(300_000)

    def serve():
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(TIMEOUT)
            got = recv_exactly(conn, len(up))  # handshake + offload happen here
            check_offload(conn, "server")
            conn.sendall(sha(got).encode())
            with open(BIG_FILE, "rb") as f:
                n = conn.sendfile(f)
            assert n == BIG, n
            conn.shutdown_write()
            assert conn.recv(10) == b""
        return True

    t = Thread(serve)
    with sync.connect(listener.getsockname(), client_config(suite), server_name="localhost", timeout=TIMEOUT, ktls=MODE) as c:
        check_offload(c, "client")
        c.sendall(up)
        assert recv_exactly(c, 64).decode() == sha(up), "echoed hash differs"
        data = recv_all(c)
        assert len(data) == BIG and sha(data) == BIG_SHA, f"sendfile: {len(data)} bytes, hash mismatch"
        c.shutdown_write()
    t.get()
    listener.close()
    return f"{BIG} bytes by sendfile"


@case("tcpls-client-vs-openssl-s_server/{0}")
def client_vs_s_server(suite: str) -> str:
    """Our client (TX+RX in the kernel) sendfiles to s_server; s_server answers a line."""
    proc, port = s_server(suite, "s_server-" + suite, "-quiet")
    with sync.connect(("127.0.0.1", port), client_config(suite), server_name="localhost", timeout=TIMEOUT, ktls=MODE) as c:
        check_offload(c, "client")
        with open(BIG_FILE, "rb") as f:
            assert c.sendfile(f) == BIG
        proc.wait_out(lambda o: len(o) >= BIG, "file bytes")
        assert sha(proc.out()[:BIG]) == BIG_SHA, "s_server received different bytes"
        proc.write(b"hello from s_server\n")
        assert recv_exactly(c, 20) == b"hello from s_server\n"
        c.sendall(b"bye\n")
        proc.wait_out(lambda o: b"bye\n" in o[BIG:], "bye")
    proc.finish()
    return "sendfile to s_server + s_server data to us"


@case("openssl-s_client-vs-tcpls-server/{0}")
def s_client_vs_server(suite: str) -> str:
    """s_client talks to our server (TX+RX in the kernel), which sendfiles the big file."""
    listener = sync.create_server(("127.0.0.1", 0), server_config(suite), ktls=MODE)
    listener.settimeout(TIMEOUT)

    def serve():
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(TIMEOUT)
            line = recv_exactly(conn, 6)
            check_offload(conn, "server")
            assert line == b"hello\n", line
            with open(BIG_FILE, "rb") as f:
                conn.sendfile(f)
        return True

    t = Thread(serve)
    port = listener.getsockname()[1]
    proc = Proc(["s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", CA_FILE, "-ciphersuites", suite,
                 "-tls1_3", "-quiet", "-ign_eof", "-servername", "localhost"], "s_client-" + suite)
    proc.write(b"hello\n")
    t.get()
    rc = proc.finish()
    out = proc.out()
    assert len(out) == BIG and sha(out) == BIG_SHA, f"s_client got {len(out)} bytes (rc {rc}): {proc.err()[-500:]}"
    listener.close()
    return "s_client -> server data, server sendfile -> s_client"


@case("keyupdate/{0}")
def key_update(suite: str) -> str:
    """KeyUpdate in the middle of a connection with s_server, both directions.

    A kernel that can rekey keeps TX+RX offloaded through it. One that
    cannot (EBUSY, Linux 6.1) shows both documented paths:
    key_update="decline" keeps the record layer in userspace from the start,
    and key_update="abort" refuses a local KeyUpdate before sending anything
    and ends the connection cleanly on the peer's KeyUpdate.
    """
    support = ktls.probe(SUITES[suite])
    if USERSPACE or support.rekey:
        return _key_update_works(suite, MODE, "abort", EXPECT)
    detail = _key_update_works(suite, "auto", "decline", None)
    return detail + "; " + _key_update_refused(suite)


def _exchange(c, proc, tag: bytes) -> None:
    c.sendall(b"ping " + tag + b"\n")
    proc.wait_out(lambda o: b"ping " + tag + b"\n" in o, "ping " + tag.decode())
    proc.write(b"pong " + tag + b"\n")
    want = b"pong " + tag + b"\n"
    assert recv_exactly(c, len(want)) == want


def _key_update_works(suite: str, mode: str, policy: str, expect) -> str:
    proc, port = s_server(suite, "s_server-ku-" + suite)
    with sync.connect(("127.0.0.1", port), client_config(suite), server_name="localhost", timeout=TIMEOUT,
                      ktls=mode, ktls_key_update=policy) as c:
        if c.ktls != expect:
            raise AssertionError(f"kTLS {c.ktls!r}, expected {expect!r} ({c.ktls_reason})")
        if expect is None and not USERSPACE:
            assert "rekey" in (c.ktls_reason or ""), c.ktls_reason
        _exchange(c, proc, b"1")
        c.key_update(request_peer_update=True)  # ours, and s_server answers with its own
        _exchange(c, proc, b"2")
        proc.write(b"K\n")  # s_server: KeyUpdate, update_requested
        time.sleep(0.3)
        _exchange(c, proc, b"3")
        rekeys = c._ktls.rekeys if c._ktls is not None else 0
    proc.finish()
    out = proc.out().decode("latin-1") + proc.err()
    assert "SSL_do_handshake -> 1" in out, "s_server did not do its KeyUpdate"
    where = f"kernel ({rekeys} rekeys)" if expect else f"userspace ({c.ktls_reason})"
    return f"policy {policy}: KeyUpdate both ways works in {where}"


def _key_update_refused(suite: str) -> str:
    proc, port = s_server(suite, "s_server-ku-abort-" + suite)
    c = sync.connect(("127.0.0.1", port), client_config(suite), server_name="localhost", timeout=TIMEOUT,
                     ktls="required", ktls_key_update="abort")
    try:
        assert c.ktls == "TX+RX", c.ktls
        _exchange(c, proc, b"a")
        try:
            c.key_update()
            raise AssertionError("local key_update() was accepted by a kernel that cannot rekey")
        except ktls.KTLSRekeyError:
            pass
        _exchange(c, proc, b"b")  # nothing was sent: the connection still works
        proc.write(b"k\n")  # the peer's KeyUpdate
        try:
            c.recv(100)
            raise AssertionError("peer KeyUpdate went unnoticed")
        except ktls.KTLSRekeyError:
            pass
    finally:
        c.close()
    seen = lambda: "internal error" in (proc.out().decode("latin-1") + proc.err()).lower()  # noqa: E731
    deadline = time.monotonic() + TIMEOUT
    while not seen() and proc.p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # s_server reports the alert when it reads it
    proc.finish()
    assert seen(), "s_server did not report our internal_error alert: " + proc.err()[-500:]
    return "policy abort: local key_update() refused before sending, peer KeyUpdate -> KTLSRekeyError + alert"


@case("asyncio/{0}")
def asyncio_pair(suite: str) -> str:
    """asyncio client and server: offload TX+RX, echo, loop.sendfile of the big file."""

    async def main() -> str:
        done = asyncio.get_running_loop().create_future()

        async def handler(reader, writer):
            try:
                await writer.enable_ktls(MODE)
                if writer.ktls != EXPECT:
                    raise AssertionError(f"server kTLS {writer.ktls!r} ({writer.ktls_reason})")
                line = await reader.readexactly(6)
                assert line == b"hello\n"
                with open(BIG_FILE, "rb") as f:
                    await writer.sendfile(f)
                writer.write(b"\nend\n")
                await writer.drain()
                writer.close()
                await writer.wait_closed()
                done.set_result(True)
            except BaseException as exc:  # noqa: BLE001
                done.set_exception(exc)

        server = await aio.start_server(handler, "127.0.0.1", 0, config=server_config(suite))
        port = server.sockets[0].getsockname()[1]
        reader, writer = await aio.open_connection("127.0.0.1", port, config=client_config(suite),
                                                   server_hostname="localhost", ktls=MODE)
        if writer.ktls != EXPECT:
            raise AssertionError(f"client kTLS {writer.ktls!r} ({writer.ktls_reason})")
        writer.write(b"hello\n")
        await writer.drain()
        data = await asyncio.wait_for(reader.readexactly(BIG + 5), TIMEOUT)
        assert sha(data[:BIG]) == BIG_SHA and data[BIG:] == b"\nend\n", "asyncio sendfile hash mismatch"
        assert await reader.read() == b""
        await asyncio.wait_for(done, TIMEOUT)
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return "loop.sendfile over kTLS" if EXPECT else "sendfile fallback"

    return asyncio.run(main())


@case("cli-serve-file/{0}")
def cli_serve_file(suite: str) -> str:
    """``tcpls server --serve-file --ktls required`` to ``tcpls client --ktls required``."""
    env = dict(os.environ, PYTHONPATH=os.path.join(HERE, "..", "..", "src"))
    srv = subprocess.Popen(
        [sys.executable, "-m", "tcpls", "server", "--cert", CERT_FILE, "--key", KEY_FILE, "--port", "0",
         "--ciphers", suite, "--serve-file", BIG_FILE, "--ktls", MODE, "-v"],
        stderr=subprocess.PIPE, env=env,
    )
    try:
        line = srv.stderr.readline().decode()
        assert "listening on" in line, line
        port = line.strip().rsplit(":", 1)[1]
        with open(os.path.join(WORK, "cli.out"), "wb") as out:
            cli = subprocess.run(
                [sys.executable, "-m", "tcpls", "client", "127.0.0.1", port, "--cafile", CA_FILE, "--ciphers", suite,
                 "--ktls", MODE, "-v"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE, env=env, timeout=CLI_TIMEOUT,
            )
        err = cli.stderr.decode()
        assert cli.returncode == 0, err
        data = open(os.path.join(WORK, "cli.out"), "rb").read()
        assert len(data) == BIG and sha(data) == BIG_SHA, f"{len(data)} bytes; {err[-500:]}"
        if EXPECT:
            assert "ktls: TX+RX" in err, err
    finally:
        srv.terminate()
        srv.wait(TIMEOUT)
    srv_log = srv.stderr.read().decode()
    if EXPECT:
        assert "kTLS TX" in srv_log and "(kTLS TX" in srv_log, srv_log
    return "file by sendfile, server " + srv_log.split("(")[-1].split(")")[0]


def main() -> int:
    import platform

    support = {name: ktls.probe(s) for name, s in SUITES.items()}
    log(f"kernel {platform.release()} python {sys.version.split()[0]}; userspace={USERSPACE}")
    for name, s in support.items():
        log(f"  probe {name}: {s}")
    if not USERSPACE and not all(s.available for s in support.values()):
        log("KTLS_RESULT: FAIL kTLS not available in this kernel")
        return 1
    suites = list(SUITES)
    for suite in suites:
        tcpls_pair(suite)
        client_vs_s_server(suite)
        s_client_vs_server(suite)
        key_update(suite)
        asyncio_pair(suite)
    cli_serve_file("TLS_AES_128_GCM_SHA256")
    failed = [r for r in RESULTS if not r[1]]
    log(f"KTLS_SUMMARY {len(RESULTS) - len(failed)}/{len(RESULTS)} passed")
    log("KTLS_RESULT: " + ("PASS" if not failed else "FAIL " + ", ".join(r[0] for r in failed)))
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
