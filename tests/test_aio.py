"""The asyncio streams API (tcpls.aio) over loopback, our engine on both sides."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os

import pytest

from tcpls import aio
from tcpls.errors import LocalProtocolError, RemoteAlert
from tcpls.tls.config import TLSConfig
from tcpls.tls.enums import AlertDescription, CipherSuite

TIMEOUT = 10.0


def async_test(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        async def run():
            return await asyncio.wait_for(fn(*args, **kwargs), TIMEOUT)

        return asyncio.run(run())

    return wrapper


@pytest.fixture
def server_config(pki) -> TLSConfig:
    config = TLSConfig(alpn_protocols=["echo"])
    config.load_cert_chain(pki.leaf().cert_file, pki.leaf().key_file)
    return config


@pytest.fixture
def client_config(pki) -> TLSConfig:
    config = TLSConfig(alpn_protocols=["echo"])
    config.load_verify_locations(cafile=pki.ca_file)
    return config


async def echo_handler(reader, writer):
    try:
        while data := await reader.read(1 << 18):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()
        await writer.wait_closed()


async def serve(handler, config, **kw):
    server = await aio.start_server(handler, "127.0.0.1", 0, config=config, **kw)
    return server, server.sockets[0].getsockname()[1]


async def connect(port, config, **kw):
    kw.setdefault("server_hostname", "localhost")
    return await aio.open_connection("127.0.0.1", port, config=config, **kw)


@async_test
async def test_echo_multi_mib_byte_for_byte(server_config, client_config):
    server, port = await serve(echo_handler, server_config)
    async with server:
        reader, writer = await connect(port, client_config)
        data = os.urandom(5 * 1024 * 1024 + 777)

        async def send():
            for i in range(0, len(data), 1 << 20):
                writer.write(data[i : i + (1 << 20)])
                await writer.drain()
            writer.write_eof()

        sender = asyncio.create_task(send())
        got = await reader.read()  # until the server's close_notify
        await sender
        assert len(got) == len(data) and hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
        assert reader.at_eof()
        writer.close()
        await writer.wait_closed()
        assert writer.is_closing()


@async_test
async def test_extra_info(server_config, client_config, pki):
    seen = {}

    async def handler(reader, writer):
        seen["sni"] = writer.get_extra_info("server_name")
        seen["alpn"] = writer.get_extra_info("alpn_protocol")
        await echo_handler(reader, writer)

    server, port = await serve(handler, server_config)
    async with server:
        reader, writer = await connect(port, client_config)
        assert writer.get_extra_info("tls_version") == "TLSv1.3"
        assert writer.get_extra_info("cipher_suite") in set(CipherSuite)
        assert writer.get_extra_info("alpn_protocol") == "echo"
        assert writer.get_extra_info("server_name") == "localhost"
        assert writer.get_extra_info("peercert")[0] == pki.leaf().cert
        assert writer.get_extra_info("peer_certificates")[0] == pki.leaf().cert
        assert writer.get_extra_info("peername") == ("127.0.0.1", port)
        assert writer.get_extra_info("sockname")[0] == "127.0.0.1"
        assert writer.get_extra_info("socket") is not None
        assert writer.get_extra_info("tls_connection").handshake_complete
        assert writer.get_extra_info("no such thing", 42) == 42
        writer.writelines([b"a", b"b", b"c"])
        assert await reader.readexactly(3) == b"abc"
        writer.close()
        await writer.wait_closed()
    assert seen == {"sni": "localhost", "alpn": "echo"}


@async_test
async def test_half_close(server_config, client_config):
    async def handler(reader, writer):
        request = await reader.read()  # until the client's close_notify
        writer.write(b"got " + request)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server, port = await serve(handler, server_config)
    async with server:
        reader, writer = await connect(port, client_config)
        assert writer.can_write_eof()
        writer.write(b"question")
        writer.write_eof()
        assert await reader.read() == b"got question"
        writer.close()
        await writer.wait_closed()


@async_test
async def test_drain_backpressure(server_config, client_config):
    """A writer to a peer that doesn't read blocks in drain(), and resumes when it reads."""
    start_reading = asyncio.Event()
    received = bytearray()
    done = asyncio.Event()

    async def handler(reader, writer):
        await start_reading.wait()
        while data := await reader.read(1 << 18):
            received.extend(data)
        done.set()
        writer.close()

    server, port = await serve(handler, server_config, limit=1 << 14)
    async with server:
        reader, writer = await connect(port, client_config)
        writer.transport.set_write_buffer_limits(high=1 << 16)
        chunk = os.urandom(1 << 16)
        sent = 0
        blocked = False
        while sent < (256 << 20):
            writer.write(chunk)
            sent += len(chunk)
            try:
                await asyncio.wait_for(writer.drain(), 0.3)
            except asyncio.TimeoutError:
                blocked = True
                break
        assert blocked, "drain() never blocked although the peer does not read"
        assert writer.transport.get_write_buffer_size() > (1 << 16)
        # Still blocked a moment later: nothing moves while the peer doesn't read.
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(writer.drain(), 0.2)
        start_reading.set()
        await writer.drain()  # proceeds once the peer reads
        writer.write_eof()
        await done.wait()
        assert len(received) == sent


@async_test
async def test_reader_backpressure_pauses_transport(server_config, client_config):
    sent = asyncio.Event()

    async def handler(reader, writer):
        writer.write(b"z" * (4 << 20))
        await writer.drain()
        sent.set()
        await reader.read()
        writer.close()

    server, port = await serve(handler, server_config)
    async with server:
        reader, writer = await connect(port, client_config, limit=1 << 15)
        for _ in range(100):
            await asyncio.sleep(0.02)
            if not writer.transport.is_reading():
                break
        assert not writer.transport.is_reading(), "reader buffer full but TCP reading not paused"
        assert not sent.is_set()
        total = 0
        while total < (4 << 20):
            total += len(await reader.read(1 << 18))
        await asyncio.wait_for(sent.wait(), TIMEOUT)
        writer.write_eof()
        assert await reader.read() == b""
        writer.close()


@async_test
async def test_handshake_failure_client_error_and_server_survives(server_config, client_config, pki, caplog):
    bad_client = TLSConfig()
    bad_client.load_verify_locations(cafile=pki.bogus_ca_file)
    server, port = await serve(echo_handler, server_config)
    with caplog.at_level(logging.WARNING, logger="tcpls.aio"):
        async with server:
            with pytest.raises(LocalProtocolError) as info:
                await connect(port, bad_client)
            assert info.value.alert in (AlertDescription.unknown_ca, AlertDescription.bad_certificate)
            # The server logged it and keeps serving.
            reader, writer = await connect(port, client_config)
            writer.write(b"still alive")
            assert await reader.readexactly(11) == b"still alive"
            writer.close()
            await writer.wait_closed()
    logged = [r.getMessage() for r in caplog.records if r.name == "tcpls.aio"]
    assert any("handshake" in m and info.value.alert_name in m for m in logged), logged


@async_test
async def test_server_rejects_client_remote_alert(server_config, client_config):
    client_config.alpn_protocols = ["not-offered-by-server"]
    server_config.alpn_protocols = ["echo"]
    server, port = await serve(echo_handler, server_config)
    async with server:
        try:
            reader, writer = await connect(port, client_config)
        except RemoteAlert as exc:  # server refused (no_application_protocol)
            assert exc.alert == AlertDescription.no_application_protocol
        else:  # server ignored ALPN mismatch: a connection without ALPN
            assert writer.get_extra_info("alpn_protocol") is None
            writer.close()


@async_test
async def test_truncation_sets_reader_exception(server_config, client_config):
    async def handler(reader, writer):
        writer.write(b"bye")
        await writer.drain()
        writer.transport.abort()  # TCP close without close_notify

    server, port = await serve(handler, server_config)
    async with server:
        reader, writer = await connect(port, client_config)
        assert await reader.readexactly(3) == b"bye"
        with pytest.raises((LocalProtocolError, ConnectionError)):
            await reader.read(10)
        writer.close()


@async_test
async def test_callback_exception_does_not_stop_server(server_config, client_config):
    calls = 0

    async def handler(reader, writer):
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("handler bug")
        await echo_handler(reader, writer)

    server, port = await serve(handler, server_config)
    async with server:
        reader, writer = await connect(port, client_config)
        assert await reader.read() == b""  # closed cleanly after the bug
        writer.close()
        reader, writer = await connect(port, client_config)
        writer.write(b"ok")
        assert await reader.readexactly(2) == b"ok"
        writer.close()
        await writer.wait_closed()


@async_test
async def test_sync_callback_and_write_after_close(server_config, client_config):
    def handler(reader, writer):  # plain function callback
        writer.write(b"hello from a plain callback")
        writer.close()

    server, port = await serve(handler, server_config)
    async with server:
        reader, writer = await connect(port, client_config)
        assert await reader.read() == b"hello from a plain callback"
        writer.close()
        await writer.wait_closed()
        writer.write(b"dropped")  # after close: dropped, like asyncio
        with pytest.raises(ConnectionError):
            await writer.drain()
