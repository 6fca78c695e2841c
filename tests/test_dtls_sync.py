"""The blocking DTLS adapter (tcpls.sync.dtls) over UDP loopback."""

from __future__ import annotations

import os
import threading

import pytest

from tcpls.errors import ConnectionClosedError
from tcpls.sync import dtls as sdtls

from tlspair import configs


@pytest.fixture
def echo_server():
    servers = []

    def start(config, **kw):
        server = sdtls.DTLSServer(config, ("127.0.0.1", 0), **kw)

        def echo(srv, assoc, data):
            if data:
                srv.send(assoc, data)

        thread = threading.Thread(target=server.serve_forever, args=(echo,), daemon=True)
        thread.start()
        servers.append((server, thread))
        return server

    yield start
    for server, thread in servers:
        server.shutdown()
        thread.join(10)
        server.close()


@pytest.mark.parametrize("cid", [False, True])
def test_blocking_client_and_server_echo(echo_server, cid):
    c, s = configs()
    server = echo_server(s, cid=cid)
    sock = sdtls.connect(server.address, c, server_name="localhost", timeout=10, cid=cid)
    sock.settimeout(10)
    assert sock.handshake.version == 0xFEFC
    payloads = [os.urandom(n) for n in (1, 500, sock.max_data_size)] * 5
    for p in payloads:
        sock.send(p)
        assert sock.recv() == p
    sock.key_update()
    sock.send(b"after key update")
    assert sock.recv() == b"after key update"
    assert sock.connection.write_epoch == 4
    sock.close()
    with pytest.raises(ConnectionClosedError):
        sock.send(b"x")


def test_blocking_client_timeout_when_nobody_answers():
    import socket

    c, _ = configs()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as quiet:
        quiet.bind(("127.0.0.1", 0))
        with pytest.raises(TimeoutError):
            sdtls.connect(quiet.getsockname(), c, server_name="localhost", timeout=1.0)
