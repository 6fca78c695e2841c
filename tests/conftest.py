"""Shared fixtures for the tcpls tests.

* ``pki``: a session-wide test PKI (one CA, server leaves for every key type,
  a client certificate, and an unrelated "bogus" CA with its own leaf), written
  as PEM files in a temporary directory.
* ``free_port()``: a TCP port that was free a moment ago.
* ``openssl_server`` / ``run_s_client``: drive the real ``openssl`` CLI with
  readiness waits, timeouts and cleanup.
* ``PySSLServer`` / ``py_ssl_exchange``: Python ``ssl`` peers (TLS 1.3 only).
* ``tcpls_cli_server``: our own ``tcpls server`` CLI as a subprocess.
* ``RecordingProxy``: a TCP relay that records both directions on the wire.

Every wait has a timeout so that a hang fails the test instead of CI.
"""

from __future__ import annotations

import faulthandler
import os
import re
import selectors
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
if str(SRC) not in sys.path:  # tests also work without `pip install -e .`
    sys.path.insert(0, str(SRC))

OPENSSL = shutil.which("openssl")
KEY_TYPES = ("ec256", "ec384", "rsa2048", "ed25519")
DEFAULT_TIMEOUT = 20.0

needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed")


def require_peer(*commands: str) -> list[str]:
    """Paths of the interop peer's programs (gnutls-cli, go, javac, ...).

    A missing one skips the calling test, or fails it when
    ``TCPLS_INTEROP_REQUIRED=1`` (CI, where ``./run`` installs them)."""
    found = [shutil.which(c) for c in commands]
    missing = [c for c, p in zip(commands, found) if p is None]
    if missing:
        why = f"interop peer not installed: {', '.join(missing)} (./run tests installs it)"
        if os.environ.get("TCPLS_INTEROP_REQUIRED") == "1":
            pytest.fail(why)
        pytest.skip(why)
    return [p for p in found if p is not None]
# A test still running after this many seconds is hung: dump every thread's
# stack and exit, so CI fails fast instead of waiting for its global limit.
HANG_WATCHDOG = float(os.environ.get("TCPLS_TEST_WATCHDOG", "300"))


def _watchdog_fire(config, nodeid: str) -> None:
    capman = config.pluginmanager.getplugin("capturemanager")
    if capman is not None:
        capman.suspend_global_capture(in_=True)
    sys.stderr.write(f"\n*** {nodeid} still running after {HANG_WATCHDOG:.0f}s: hung; stacks follow, exiting\n")
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    sys.stderr.flush()
    os._exit(1)


@pytest.fixture(autouse=True)
def _hang_watchdog(request):
    if HANG_WATCHDOG <= 0 or request.config.pluginmanager.hasplugin("timeout"):
        yield
        return
    timer = threading.Timer(HANG_WATCHDOG, _watchdog_fire, (request.config, request.node.nodeid))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


# --------------------------------------------------------------------- PKI
def _write_certs(path: Path, certs) -> str:
    from cryptography.hazmat.primitives import serialization

    if not isinstance(certs, (list, tuple)):
        certs = [certs]
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    return str(path)


def _write_key(path: Path, key) -> str:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    os.chmod(path, 0o600)
    return str(path)


@dataclass
class Leaf:
    cert: object
    key: object
    cert_file: str
    key_file: str


@dataclass
class PKI:
    dir: Path
    ca_cert: object
    ca_key: object
    ca_file: str
    leaves: dict[str, Leaf]
    client: Leaf
    bogus_ca_file: str
    untrusted: Leaf  # a localhost leaf issued by the bogus CA

    def leaf(self, key_type: str = "ec256") -> Leaf:
        return self.leaves[key_type]


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> PKI:
    from tcpls import _testcerts

    d = tmp_path_factory.mktemp("pki")
    names = ["localhost", "127.0.0.1"]
    ca_cert, ca_key = _testcerts.make_ca("tcpls test CA")
    ca_file = _write_certs(d / "ca.pem", ca_cert)
    leaves = {}
    for kt in KEY_TYPES:
        cert, key = _testcerts.make_leaf(ca_cert, ca_key, names=names, key_type=kt)
        leaves[kt] = Leaf(cert, key, _write_certs(d / f"server-{kt}.pem", cert), _write_key(d / f"server-{kt}.key", key))
    ccert, ckey = _testcerts.make_leaf(ca_cert, ca_key, names=["client.test"], key_type="ec256", client=True)
    client = Leaf(ccert, ckey, _write_certs(d / "client.pem", ccert), _write_key(d / "client.key", ckey))
    bca_cert, bca_key = _testcerts.make_ca("bogus CA")
    bogus_ca_file = _write_certs(d / "bogus-ca.pem", bca_cert)
    ucert, ukey = _testcerts.make_leaf(bca_cert, bca_key, names=names, key_type="ec256")
    untrusted = Leaf(ucert, ukey, _write_certs(d / "untrusted.pem", ucert), _write_key(d / "untrusted.key", ukey))
    return PKI(d, ca_cert, ca_key, ca_file, leaves, client, bogus_ca_file, untrusted)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred: Callable[[], bool], timeout: float = DEFAULT_TIMEOUT, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def close_stdin_and_wait(proc: subprocess.Popen, drains: Sequence["_Drain"] = (), timeout: float = DEFAULT_TIMEOUT,
                         drain_timeout: float = 2.0) -> int:
    """Close a CLI peer's stdin (it then closes its connection) and wait for
    it to exit, stopping it after ``timeout``; then let ``drains`` collect
    the last output. Returns the exit code (negative: it had to be stopped)."""
    try:
        proc.stdin.close()
    except OSError:
        pass
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        _stop(proc)
    for d in drains:
        d.join(drain_timeout)
    return proc.returncode


class _Drain(threading.Thread):
    """Collects everything a pipe produces, so the child never blocks on it."""

    def __init__(self, pipe) -> None:
        super().__init__(daemon=True)
        self.pipe = pipe
        self.buf = bytearray()
        self.lock = threading.Lock()
        self.start()

    def run(self) -> None:
        while True:
            chunk = self.pipe.read1(65536) if hasattr(self.pipe, "read1") else self.pipe.read(65536)
            if not chunk:
                break
            with self.lock:
                self.buf += chunk

    def data(self) -> bytes:
        with self.lock:
            return bytes(self.buf)


# ------------------------------------------------------------ openssl CLI
class OpenSSLServer:
    """``openssl s_server`` on 127.0.0.1 with an OS-chosen port."""

    def __init__(self, args: Sequence[str], cwd: Optional[str] = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.args = [OPENSSL, "s_server", "-accept", "127.0.0.1:0", *args]
        self.proc = subprocess.Popen(
            self.args, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self._out = _Drain(self.proc.stdout)
        self._err = _Drain(self.proc.stderr)
        m = None

        def ready() -> bool:
            nonlocal m
            m = re.search(rb"^ACCEPT\s+\S*:(\d+)\s*$", self._out.data(), re.M)
            if m is None and self.proc.poll() is not None:
                raise RuntimeError(f"s_server exited early ({self.proc.returncode}): {self.stderr}")
            return m is not None

        wait_until(ready, timeout, "openssl s_server ACCEPT")
        self.port = int(m.group(1))
        self.address = ("127.0.0.1", self.port)

    @property
    def stdout(self) -> str:
        return self._out.data().decode("latin-1")

    @property
    def stderr(self) -> str:
        return self._err.data().decode("latin-1")

    def wait(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Wait for s_server to exit (``-naccept``) and for its output to be read."""
        rc = self.proc.wait(timeout)
        self._out.join(timeout)
        self._err.join(timeout)
        return rc

    def stop(self) -> None:
        _stop(self.proc)


@pytest.fixture
def openssl_server():
    """Factory: ``openssl_server(*args, cwd=None)`` starts an s_server; all are stopped at teardown."""
    if OPENSSL is None:
        pytest.skip("openssl CLI not installed")
    started: list[OpenSSLServer] = []

    def start(*args: str, cwd: Optional[str] = None) -> OpenSSLServer:
        srv = OpenSSLServer(args, cwd=cwd)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


@dataclass
class ClientResult:
    returncode: Optional[int]
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return (self.stdout + self.stderr).decode("latin-1")


def run_s_client(
    port: int,
    args: Sequence[str],
    data: bytes = b"",
    *,
    expect_len: Optional[int] = None,
    expect_text: Optional[bytes] = None,
    close_stdin: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
) -> ClientResult:
    """Run ``openssl s_client`` against 127.0.0.1:port, feeding ``data`` on stdin.

    Returns once s_client exits, or -- for ``-quiet`` sessions that keep the
    connection open -- once ``expect_len`` bytes (or ``expect_text``) showed
    up on stdout; then s_client is terminated.
    """
    if OPENSSL is None:
        pytest.skip("openssl CLI not installed")
    proc = subprocess.Popen(
        [OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = _Drain(proc.stdout), _Drain(proc.stderr)

    def feed() -> None:
        try:
            view = memoryview(data)
            for i in range(0, len(view), 65536):
                proc.stdin.write(view[i : i + 65536])
                proc.stdin.flush()
            if close_stdin:
                proc.stdin.close()
        except (BrokenPipeError, ValueError, OSError):
            pass

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()

    def done() -> bool:
        if proc.poll() is not None:
            return True
        if expect_len is not None and len(out.data()) >= expect_len:
            return True
        if expect_text is not None and expect_text in out.data():
            return True
        return False

    try:
        wait_until(done, timeout, "openssl s_client")
    except TimeoutError:
        _stop(proc)
        out.join(2), err.join(2)
        raise TimeoutError(
            f"s_client timed out; got {len(out.data())} bytes of stdout; stderr: {err.data()[-2000:]!r}"
        ) from None
    rc = proc.poll()
    if rc is None:
        _stop(proc)
    else:
        proc.wait()
    out.join(5)
    err.join(5)
    try:
        proc.stdin.close()
    except OSError:
        pass
    return ClientResult(rc, out.data(), err.data())


# ------------------------------------------------------------ Python ssl
def py_server_context(cert_file: str, key_file: str, *, alpn: Sequence[str] = (), curve: Optional[str] = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert_file, key_file)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if curve:
        ctx.set_ecdh_curve(curve)
    return ctx


def py_client_context(cafile: Optional[str], *, alpn: Sequence[str] = ()) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if cafile:
        ctx.load_verify_locations(cafile)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


@dataclass
class PySSLSession:
    cipher: Optional[tuple] = None
    version: Optional[str] = None
    alpn: Optional[str] = None
    sni: Optional[str] = None
    received: int = 0
    clean_close: bool = False
    error: Optional[BaseException] = None


class PySSLServer:
    """A Python ``ssl`` echo server (TLS 1.3 only) in a thread.

    Echoes everything it receives; on the peer's close_notify it answers with
    its own (``unwrap``) and closes. One session record per connection.
    """

    def __init__(self, ctx: ssl.SSLContext, connections: int = 1, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.ctx = ctx
        self.sessions: list[PySSLSession] = []
        self._sni: list[Optional[str]] = []
        ctx.sni_callback = self._on_sni
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(timeout)
        self.port = self.sock.getsockname()[1]
        self.address = ("127.0.0.1", self.port)
        self.timeout = timeout
        self.connections = connections
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _on_sni(self, sslobj, name, ctx) -> None:
        self._sni.append(name)

    def _run(self) -> None:
        for _ in range(self.connections):
            sess = PySSLSession()
            self.sessions.append(sess)
            try:
                raw, _ = self.sock.accept()
            except OSError as exc:
                sess.error = exc
                return
            raw.settimeout(self.timeout)
            try:
                with self.ctx.wrap_socket(raw, server_side=True) as s:
                    sess.cipher, sess.version = s.cipher(), s.version()
                    sess.alpn = s.selected_alpn_protocol()
                    sess.sni = self._sni[-1] if self._sni else None
                    while True:
                        d = s.recv(65536)
                        if not d:
                            break
                        sess.received += len(d)
                        s.sendall(d)
                    s.unwrap()
                    sess.clean_close = True
            except BaseException as exc:  # noqa: BLE001 -- reported to the test
                sess.error = exc
                try:
                    raw.close()
                except OSError:
                    pass

    def join(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "Python ssl server thread did not finish"

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def py_ssl_server():
    """Factory: ``py_ssl_server(ctx, connections=1)``; closed at teardown."""
    servers: list[PySSLServer] = []

    def start(ctx: ssl.SSLContext, connections: int = 1) -> PySSLServer:
        srv = PySSLServer(ctx, connections)
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.close()


def exchange(send: Callable[[bytes], None], recv: Callable[[int], bytes], data: bytes, *, window: int = 256 * 1024, chunk: int = 64 * 1024) -> bytes:
    """Send ``data`` to an echo peer while reading the echo back.

    Reading keeps up with writing (at most ``window`` bytes outstanding), so
    neither side's socket buffers can fill and deadlock. Returns the echo.
    """
    got = bytearray()
    sent = 0
    view = memoryview(data)
    while sent < len(data):
        n = min(chunk, len(data) - sent)
        send(bytes(view[sent : sent + n]))
        sent += n
        while len(got) < sent - window:
            d = recv(65536)
            if not d:
                raise EOFError(f"peer closed after {len(got)} of {len(data)} echoed bytes")
            got += d
    while len(got) < len(data):
        d = recv(65536)
        if not d:
            raise EOFError(f"peer closed after {len(got)} of {len(data)} echoed bytes")
        got += d
    return bytes(got)


def py_ssl_exchange(
    port: int,
    data: bytes,
    cafile: Optional[str],
    *,
    server_hostname: Optional[str] = "localhost",
    alpn: Sequence[str] = (),
    close: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
):
    """Python ``ssl`` client: connect, echo-exchange ``data``; returns (echo, info dict)."""
    ctx = py_client_context(cafile, alpn=alpn)
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    with ctx.wrap_socket(raw, server_hostname=server_hostname) as s:
        info = {"cipher": s.cipher(), "version": s.version(), "alpn": s.selected_alpn_protocol()}
        echo = exchange(s.sendall, s.recv, data) if data else b""
        if close:
            try:
                s.unwrap()
                info["clean_close"] = True
            except (ssl.SSLError, OSError) as exc:
                info["clean_close"] = False
                info["close_error"] = exc
    return echo, info


# ------------------------------------------------------------ our CLI
def tcpls_cli() -> list[str]:
    """The command that runs the tcpls CLI with this interpreter."""
    if (SRC / "tcpls" / "__main__.py").exists():
        return [sys.executable, "-m", "tcpls"]
    return [sys.executable, "-m", "tcpls.cli"]


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("SSLKEYLOGFILE", None)
    return env


class TcplsCLIServer:
    """``tcpls server ... --port 0`` as a subprocess; waits for 'listening on HOST:PORT'."""

    def __init__(self, args: Sequence[str], timeout: float = DEFAULT_TIMEOUT) -> None:
        self.args = [*tcpls_cli(), "server", "--host", "127.0.0.1", "--port", "0", *args]
        self.proc = subprocess.Popen(
            self.args, cwd=str(ROOT), env=cli_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self._out = _Drain(self.proc.stdout)
        self._err = _Drain(self.proc.stderr)
        m = None

        def ready() -> bool:
            nonlocal m
            m = re.search(rb"listening on (\S+):(\d+)", self._err.data())
            if m is None and self.proc.poll() is not None:
                raise RuntimeError(f"tcpls server exited early ({self.proc.returncode}): {self.stderr}")
            return m is not None

        wait_until(ready, timeout, "tcpls server 'listening on'")
        self.port = int(m.group(2))
        self.address = ("127.0.0.1", self.port)

    @property
    def stdout(self) -> str:
        return self._out.data().decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return self._err.data().decode("utf-8", "replace")

    def stop(self) -> None:
        _stop(self.proc)


@pytest.fixture
def tcpls_cli_server():
    """Factory: ``tcpls_cli_server(*args)`` starts ``tcpls server`` (stopped at teardown)."""
    started: list[TcplsCLIServer] = []

    def start(*args: str) -> TcplsCLIServer:
        srv = TcplsCLIServer(args)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


def run_tcpls_cli(args: Sequence[str], data: bytes = b"", timeout: float = DEFAULT_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*tcpls_cli(), *args], input=data, capture_output=True, timeout=timeout, cwd=str(ROOT), env=cli_env()
    )


# ------------------------------------------------------------ wire capture
class RecordingProxy:
    """Relays one TCP connection to ``upstream`` and records both directions."""

    def __init__(self, upstream: tuple[str, int], timeout: float = DEFAULT_TIMEOUT) -> None:
        self.upstream = upstream
        self.timeout = timeout
        self.client_to_server = bytearray()
        self.server_to_client = bytearray()
        self.error: Optional[BaseException] = None
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(timeout)
        self.port = self.sock.getsockname()[1]
        self.address = ("127.0.0.1", self.port)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            down, _ = self.sock.accept()
            up = socket.create_connection(self.upstream, timeout=self.timeout)
            with down, up:
                pairs = {down: (up, self.client_to_server), up: (down, self.server_to_client)}
                sel = selectors.DefaultSelector()
                for s in pairs:
                    s.setblocking(False)
                    sel.register(s, selectors.EVENT_READ)
                open_dirs = 2
                deadline = time.monotonic() + self.timeout
                while open_dirs and time.monotonic() < deadline:
                    for key, _ in sel.select(0.1):
                        src = key.fileobj
                        dst, record = pairs[src]
                        try:
                            data = src.recv(65536)
                        except (BlockingIOError, InterruptedError):
                            continue
                        except OSError:
                            data = b""
                        if data:
                            record += data
                            dst.setblocking(True)
                            dst.sendall(data)
                            dst.setblocking(False)
                        else:
                            sel.unregister(src)
                            open_dirs -= 1
                            try:
                                dst.shutdown(socket.SHUT_WR)
                            except OSError:
                                pass
                sel.close()
        except BaseException as exc:  # noqa: BLE001
            self.error = exc

    def join(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.thread.join(timeout)

    def close(self) -> None:
        self.sock.close()
