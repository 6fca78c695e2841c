"""The blocking socket-like API (tcpls.sync) over loopback, our engine on both sides."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time

import pytest

from tcpls import sync
from tcpls.errors import LocalProtocolError, RemoteAlert
from tcpls.tls.config import TLSConfig
from tcpls.tls.enums import AlertDescription, CipherSuite, NamedGroup

TIMEOUT = 10.0


@pytest.fixture
def server_config(pki) -> TLSConfig:
    config = TLSConfig(alpn_protocols=["h2", "echo"])
    config.load_cert_chain(pki.leaf().cert_file, pki.leaf().key_file)
    return config


@pytest.fixture
def client_config(pki) -> TLSConfig:
    config = TLSConfig(alpn_protocols=["echo"])
    config.load_verify_locations(cafile=pki.ca_file)
    return config


class Server:
    """A tcpls.sync listener running ``handler(tls_socket)`` per connection in threads."""

    def __init__(self, config: TLSConfig, handler, connections: int = 1) -> None:
        self.listener = sync.create_server(("127.0.0.1", 0), config)
        self.listener.settimeout(TIMEOUT)
        self.address = self.listener.getsockname()
        self.handler = handler
        self.errors: list[BaseException] = []
        self.results: list[object] = []
        self.threads: list[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept, args=(connections,), daemon=True)
        self.acceptor.start()

    def _accept(self, n: int) -> None:
        for _ in range(n):
            try:
                tls, _ = self.listener.accept()
            except OSError as exc:
                self.errors.append(exc)
                return
            tls.settimeout(TIMEOUT)
            t = threading.Thread(target=self._run, args=(tls,), daemon=True)
            t.start()
            self.threads.append(t)

    def _run(self, tls: sync.TLSSocket) -> None:
        try:
            with tls:
                self.results.append(self.handler(tls))
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            self.errors.append(exc)

    def join(self) -> None:
        self.acceptor.join(TIMEOUT)
        for t in self.threads:
            t.join(TIMEOUT)
            assert not t.is_alive(), "server thread hung"
        self.listener.close()


def echo(tls: sync.TLSSocket) -> int:
    n = 0
    while data := tls.recv(1 << 18):
        tls.sendall(data)
        n += len(data)
    return n


def connect(server: Server, config: TLSConfig, **kw) -> sync.TLSSocket:
    kw.setdefault("server_name", "localhost")
    return sync.connect(server.address, config, timeout=TIMEOUT, **kw)


def test_echo_multi_mib_byte_for_byte(server_config, client_config):
    server = Server(server_config, echo)
    data = os.urandom(6 * 1024 * 1024 + 12345)
    with connect(server, client_config) as c:

        def writer() -> None:
            view = memoryview(data)
            for i in range(0, len(data), 1 << 20):
                c.sendall(view[i : i + (1 << 20)])
            c.shutdown(socket.SHUT_WR)

        t = threading.Thread(target=writer)
        t.start()
        got = bytearray()
        while chunk := c.recv(1 << 18):
            got += chunk
        t.join(TIMEOUT)
    server.join()
    assert not server.errors
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest() and len(got) == len(data)
    assert server.results == [len(data)]


def test_negotiated_properties(server_config, client_config, pki):
    seen = {}

    def handler(tls):
        tls.do_handshake()
        seen.update(version=tls.version, alpn=tls.alpn_protocol, sni=tls.server_name, peer=tls.peer_certificates)
        return echo(tls)

    server = Server(server_config, handler)
    with connect(server, client_config) as c:
        assert c.version == "TLSv1.3"
        assert c.cipher_suite in set(CipherSuite)
        assert c.group in set(NamedGroup)
        assert c.alpn_protocol == "echo"
        assert c.server_name == "localhost"
        assert c.hello_retry in (False, True)
        assert c.peer_certificates[0] == pki.leaf().cert
        assert c.getpeername() == server.address
        assert c.getsockname()[0] == "127.0.0.1"
        assert isinstance(c.fileno(), int) and c.fileno() >= 0
        c.sendall(b"ping")
        assert c.recv(100) == b"ping"
    server.join()
    assert not server.errors
    assert seen == {"version": "TLSv1.3", "alpn": "echo", "sni": "localhost", "peer": []}


def test_cipher_suite_and_group_selection(server_config, client_config):
    client_config.cipher_suites = [CipherSuite.TLS_CHACHA20_POLY1305_SHA256]
    client_config.groups = [NamedGroup.secp384r1]
    server = Server(server_config, echo)
    with connect(server, client_config) as c:
        assert c.cipher_suite == CipherSuite.TLS_CHACHA20_POLY1305_SHA256
        assert c.group == NamedGroup.secp384r1
        c.sendall(b"x" * 100_000)
        got = b""
        while len(got) < 100_000:
            got += c.recv(65536)
        assert got == b"x" * 100_000
    server.join()
    assert not server.errors


def test_makefile_binary_and_text(server_config, client_config):
    def handler(tls):
        f = tls.makefile("rwb")
        line = f.readline()
        f.write(b"you said: " + line)
        f.write(b"second line\n")
        f.flush()
        tls.shutdown_write()
        return tls.recv(10)

    server = Server(server_config, handler)
    with connect(server, client_config) as c:
        w = c.makefile("wb")
        w.write(b"hello\n")
        w.flush()
        r = c.makefile("r", encoding="utf-8")
        assert r.readline() == "you said: hello\n"
        assert r.read() == "second line\n"
        w.close()
        r.close()
        raw = c.makefile("rb", buffering=0)
        assert raw.read(10) == b""  # the peer's close_notify
    server.join()
    assert not server.errors


def test_recv_into_and_small_reads(server_config, client_config):
    payload = bytes(range(256)) * 1000

    def handler(tls):
        tls.sendall(payload)
        return tls.recv(1)

    server = Server(server_config, handler)
    with connect(server, client_config) as c:
        buf = bytearray(7)
        got = bytearray()
        while len(got) < len(payload):
            n = c.recv_into(buf)
            got += buf[:n]
        assert got == payload
        c.shutdown_write()
        assert c.recv(10) == b""
    server.join()
    assert not server.errors


def test_timeout_then_retry_recv(server_config, client_config):
    go = threading.Event()

    def handler(tls):
        tls.do_handshake()
        go.wait(TIMEOUT)
        tls.sendall(b"late")
        return echo(tls)

    server = Server(server_config, handler)
    with connect(server, client_config) as c:
        c.settimeout(0.2)
        assert c.gettimeout() == 0.2
        t0 = time.monotonic()
        with pytest.raises(socket.timeout):
            c.recv(10)
        assert time.monotonic() - t0 < 2
        with pytest.raises(TimeoutError):  # same class as socket.timeout
            c.recv(10)
        go.set()
        c.settimeout(TIMEOUT)
        assert c.recv(10) == b"late"  # the connection survived the timeouts
        c.sendall(b"still works")
        assert c.recv(100) == b"still works"
    server.join()
    assert not server.errors


def test_half_close_keeps_reading(server_config, client_config):
    def handler(tls):
        got = bytearray()
        while d := tls.recv(65536):
            got += d
        # The client has half-closed; we can still answer, then close.
        tls.sendall(b"reply after your close_notify: " + bytes(got))
        tls.sendall(b"!" * 300_000)
        return bytes(got)

    server = Server(server_config, handler)
    with connect(server, client_config) as c:
        c.sendall(b"request")
        c.shutdown_write()
        c.shutdown_write()  # idempotent
        got = bytearray()
        while d := c.recv(65536):
            got += d
        assert got == b"reply after your close_notify: request" + b"!" * 300_000
        assert c.recv(10) == b""  # stays at EOF
        assert c.connection.peer_closed and c.connection.local_closed
    server.join()
    assert not server.errors
    assert server.results == [b"request"]


def test_truncation_raises_engine_error(server_config, client_config):
    def handler(tls):
        tls.sendall(b"partial")
        tls.detach().close()  # TCP FIN without close_notify

    server = Server(server_config, handler)
    with connect(server, client_config) as c:
        assert c.recv(100) == b"partial"
        with pytest.raises(LocalProtocolError) as info:
            c.recv(100)
        with pytest.raises(LocalProtocolError):  # the socket stays broken
            c.recv(100)
        assert "close_notify" in str(info.value)
    server.join()


@pytest.mark.parametrize("wrong", ["untrusted_ca", "wrong_name"])
def test_verification_failure_is_typed(server_config, client_config, pki, wrong):
    if wrong == "untrusted_ca":
        server_config.load_cert_chain(pki.untrusted.cert_file, pki.untrusted.key_file)
        name = "localhost"
    else:
        name = "not-the-server.example"

    def handler(tls):
        tls.do_handshake()

    server = Server(server_config, handler)
    with pytest.raises(LocalProtocolError) as info:
        connect(server, client_config, server_name=name)
    server.join()
    assert info.value.alert in (AlertDescription.unknown_ca, AlertDescription.bad_certificate)
    assert "certificate verify failed" in str(info.value)
    # The server saw our alert as a RemoteAlert with the same code.
    assert len(server.errors) == 1 and isinstance(server.errors[0], RemoteAlert)
    assert server.errors[0].alert == info.value.alert


def test_lazy_server_handshake_does_not_block_accept(server_config, client_config):
    """A client that connects and never speaks must not hold up the next one."""
    listener = sync.create_server(("127.0.0.1", 0), server_config)
    with listener:
        silent = socket.create_connection(listener.getsockname())
        results = {}

        def client():
            with sync.connect(listener.getsockname(), client_config, server_name="localhost", timeout=TIMEOUT) as c:
                c.sendall(b"hi")
                results["echo"] = c.recv(10)

        t = threading.Thread(target=client)
        t.start()
        listener.settimeout(TIMEOUT)
        s1, _ = listener.accept()  # the silent one: returns at once, no handshake yet
        s2, _ = listener.accept()
        assert not s1.handshake_complete
        s2.settimeout(TIMEOUT)
        with s2:
            s2.sendall(s2.recv(10))  # handshake happens lazily on first use
            assert s2.recv(10) == b""
        t.join(TIMEOUT)
        s1.close()  # never handshaken: closes quietly
        silent.close()
    assert results == {"echo": b"hi"}


def test_close_never_raises_on_dead_peer(server_config, client_config):
    def handler(tls):
        tls.do_handshake()
        tls.detach().close()

    server = Server(server_config, handler)
    c = connect(server, client_config)
    server.join()
    time.sleep(0.05)
    c.sendall(b"x")  # may or may not fail depending on timing; close must not
    c.close()
    c.close()
    assert c.closed


def test_wrap_existing_sockets(server_config, client_config):
    a, b = socket.socketpair()
    server = sync.TLSSocket.wrap(a, server_config, server_side=True)
    client = sync.TLSSocket.wrap(b, client_config, server_side=False, server_name="localhost")
    t = threading.Thread(target=server.do_handshake)
    t.start()
    client.do_handshake()
    t.join(TIMEOUT)
    assert server.handshake_complete and client.handshake_complete
    client.sendall(b"over a socketpair")
    assert server.recv(100) == b"over a socketpair"
    client.close()
    assert server.recv(100) == b""
    server.close()
