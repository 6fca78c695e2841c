"""The asyncio TCPLS adapter over real loopback sockets (127.0.0.1 and 127.0.0.2)."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from tcpls import aio
from tcpls.aio import tcpls_session as tio
from tcpls.tcpls.config import TCPLSConfig
from tcpls.tcpls.path import ConnState

from tlspair import configs

HOSTS = ["127.0.0.1", "127.0.0.2"]


def _configs(client_kw=None, server_kw=None):
    c, s = configs()
    return TCPLSConfig(c, **(client_kw or {})), TCPLSConfig(s, **(server_kw or {}))


async def _echo(reader, writer):
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.write_eof()


async def _server(cfg, hosts=HOSTS, **kw):
    last = None
    for _ in range(5):  # port 0 on the first address; the same port must be free on the second
        try:
            return await tio.serve(hosts[0], 0, config=cfg, **kw) if len(hosts) == 1 else await _serve_same_port(cfg, hosts, **kw)
        except OSError as exc:
            last = exc
    raise last  # type: ignore[misc]


async def _serve_same_port(cfg, hosts, **kw):
    return await tio.serve(hosts, 0, config=cfg, **kw)


def run(coro, timeout=30.0):
    async def main():
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(main())


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def test_streams_both_ways_and_server_stream():
    ccfg, scfg = _configs()
    up = os.urandom(1_000_000)
    down = os.urandom(700_000)

    async def on_session(sess):
        r, w = sess.open_stream()
        w.write(down)
        w.write_eof()
        await w.drain()

    async def main():
        srv = await _server(scfg, ["127.0.0.1"], on_stream=_echo, on_session=on_session)
        port = srv.addresses[0][1]
        async with srv:
            client = await tio.connect("127.0.0.1", port, config=ccfg, server_name="localhost")
            assert client.get_extra_info("tcpls") is True
            reader, writer = client.open_stream()
            assert writer.stream_id == 0
            sreader, swriter = await client.accept_stream()
            assert swriter.stream_id == 1

            async def send():
                for i in range(0, len(up), 50_000):
                    writer.write(up[i : i + 50_000])
                    await writer.drain()
                writer.write_eof()

            got, from_server, _ = await asyncio.gather(reader.read(), sreader.read(), send())
            assert sha(got) == sha(up)
            assert sha(from_server) == sha(down)
            await client.close()
            assert client.events.qsize() > 0

    run(main())


def test_drain_backpressure_holds_the_writer():
    ccfg, scfg = _configs(client_kw={"send_high_water": 100_000, "send_low_water": 50_000})
    stalled = asyncio.Event  # created inside the loop below
    total = 6_000_000
    blob = os.urandom(total)

    async def main():
        go = asyncio.Event()
        received = bytearray()

        async def slow(reader, writer):
            await go.wait()
            while data := await reader.read(65536):
                received.extend(data)
            writer.write_eof()

        srv = await tio.serve("127.0.0.1", 0, config=scfg, on_stream=slow, limit=64 * 1024)
        async with srv:
            client = await tio.connect("127.0.0.1", srv.addresses[0][1], config=ccfg, server_name="localhost")
            _reader, writer = client.open_stream()
            written = 0

            async def send():
                nonlocal written
                for i in range(0, total, 32_768):
                    writer.write(blob[i : i + 32_768])
                    await writer.drain()
                    written = i + 32_768
                writer.write_eof()

            task = asyncio.ensure_future(send())
            await asyncio.sleep(0.7)
            held = written
            # the server engine has at most its reader's pause threshold plus
            # socket buffers; the writer may be ahead by send_high_water only
            assert held < total // 2, held
            assert client.session.stream_send_buffer(writer.stream_id) <= 100_000 + 32_768
            await asyncio.sleep(0.3)
            assert written == held  # still stuck: real backpressure, not just slowness
            go.set()
            await task
            await client.wait_acked(timeout=10)
            await client.close()
        assert bytes(received) == blob

    del stalled
    run(main())


def test_join_second_address_and_aggregate():
    ccfg, scfg = _configs(client_kw={"scheduler": "round_robin"})
    blob = os.urandom(3_000_000)

    async def main():
        srv = await _server(scfg, on_stream=_echo)
        async with srv:
            client = await tio.connect("127.0.0.1", srv.addresses[0][1], config=ccfg, server_name="localhost")
            cid = await client.join("127.0.0.2")
            assert cid == 1
            assert client.session.connection_state(1) is ConnState.ACTIVE
            assert client.peer_addrs[1][0] == "127.0.0.2"
            reader, writer = client.open_stream()

            async def send():
                writer.write(blob)
                writer.write_eof()
                await writer.drain()

            got, _ = await asyncio.gather(reader.read(), send())
            assert sha(got) == sha(blob)
            sent = client.bytes_sent()
            assert sent[0] > 500_000 and sent[1] > 500_000, sent  # both paths carried data
            # the server announced both of its addresses
            assert sorted(h for h, _p in client.session.peer_addresses().values()) == HOSTS
            await client.close()

    run(main())


def test_migration_byte_exact():
    ccfg, scfg = _configs()
    first, second = os.urandom(600_000), os.urandom(900_000)

    async def main():
        srv = await _server(scfg, on_stream=_echo)
        async with srv:
            client = await tio.connect("127.0.0.1", srv.addresses[0][1], config=ccfg, server_name="localhost")
            reader, writer = client.open_stream()
            writer.write(first)
            await writer.drain()
            echoed = await reader.readexactly(300_000)
            new = await client.migrate_to("127.0.0.2")
            assert client.session.connection_state(0) is ConnState.CLOSED
            writer.write(second)
            writer.write_eof()
            rest = await reader.read()
            assert sha(echoed + rest) == sha(first + second)
            assert client.session.usable_connections() == [new]
            assert client.migrations == 1
            await client.close()

    run(main())


@pytest.mark.parametrize("direction", ["download", "upload"])
def test_failover_when_a_connection_is_aborted(direction):
    ccfg, scfg = _configs(client_kw={"dead_timeout": 1.0}, server_kw={"dead_timeout": 1.0})
    blob = os.urandom(8_000_000)

    async def on_session(sess):
        if direction == "download":
            _r, w = sess.open_stream()
            for i in range(0, len(blob), 65536):
                w.write(blob[i : i + 65536])
                await w.drain()
            w.write_eof()

    async def sink(reader, writer):
        data = await reader.read()
        writer.write(hashlib.sha256(data).digest())
        writer.write_eof()

    async def main():
        srv = await _server(scfg, on_stream=sink, on_session=on_session)
        async with srv:
            client = await tio.connect("127.0.0.1", srv.addresses[0][1], config=ccfg, server_name="localhost")
            await client.join("127.0.0.2")
            if direction == "download":
                reader, _w = await client.accept_stream()
                got = bytearray()
                while data := await reader.read(65536):
                    got += data
                    if len(got) > 2_000_000 and client.session.connection_state(1) is ConnState.ACTIVE:
                        client.abort_connection(1)
                assert sha(bytes(got)) == sha(blob)
            else:
                reader, writer = client.open_stream()
                for i in range(0, len(blob), 65536):
                    writer.write(blob[i : i + 65536])
                    await writer.drain()
                    if i == 2_031_616:
                        client.abort_connection(1)
                writer.write_eof()
                assert await reader.read() == hashlib.sha256(blob).digest()
            assert client.session.connection_state(1) is ConnState.FAILED
            assert client.failovers == 1
            await client.close()

    run(main())


def test_rejoin_after_the_only_connection_dies():
    ccfg, scfg = _configs(client_kw={"dead_timeout": 1.0}, server_kw={"dead_timeout": 1.0})
    blob = os.urandom(3_000_000)

    async def main():
        srv = await _server(scfg, on_stream=_echo)
        async with srv:
            client = await tio.connect("127.0.0.1", srv.addresses[0][1], config=ccfg, server_name="localhost",
                                       rejoin=True, rejoin_paths=[(None, "127.0.0.2")])
            reader, writer = client.open_stream()
            writer.write(blob[:1_000_000])
            await reader.readexactly(500_000)
            client.abort_connection(0)
            writer.write(blob[1_000_000:])
            writer.write_eof()
            rest = await reader.read()
            assert sha(rest) == sha(blob[500_000:])
            assert client.rejoins == 1
            assert client.session.usable_connections() == [1]
            await client.close()

    run(main())


def test_plain_tls_client_gets_stream_0():
    ccfg, scfg = _configs()

    async def main():
        srv = await tio.serve("127.0.0.1", 0, config=scfg, on_stream=_echo)
        async with srv:
            reader, writer = await aio.open_connection("127.0.0.1", srv.addresses[0][1], config=ccfg.tls, server_hostname="localhost")
            writer.write(b"plain TLS 1.3")
            writer.write_eof()
            assert await reader.read() == b"plain TLS 1.3"
            writer.close()

    run(main())


def test_blocking_api_against_asyncio_server():
    import threading

    from tcpls.sync import tcpls_session as tsync

    ccfg, scfg = _configs()
    blob = os.urandom(2_000_000)
    ready = threading.Event()
    stop = threading.Event()
    box = {}

    def server_thread():
        async def main():
            srv = await _server(scfg, on_stream=_echo)
            box["port"] = srv.addresses[0][1]
            ready.set()
            async with srv:
                while not stop.is_set():
                    await asyncio.sleep(0.05)

        asyncio.run(main())

    t = threading.Thread(target=server_thread, daemon=True)
    t.start()
    assert ready.wait(10)
    try:
        with tsync.connect("127.0.0.1", box["port"], config=ccfg, server_name="localhost") as client:
            assert client.join("127.0.0.2") == 1
            s = client.open_stream()
            got = bytearray()

            def reader():
                while data := s.recv(65536, timeout=20):
                    got.extend(data)

            rt = threading.Thread(target=reader)
            rt.start()
            for i in range(0, len(blob), 100_000):
                s.sendall(blob[i : i + 100_000], timeout=20)
            s.shutdown_write()
            rt.join(20)
            assert sha(bytes(got)) == sha(blob)
            assert client.connection_ids() == [0, 1]
    finally:
        stop.set()
        t.join(10)


def test_user_timeout_and_event_queue():
    import socket

    ccfg, scfg = _configs()

    async def main():
        srv = await _server(scfg, on_stream=_echo, user_timeout=4321)
        async with srv:
            client = await tio.connect("127.0.0.1", srv.addresses[0][1], config=ccfg, server_name="localhost", user_timeout=1234)
            await client.join("127.0.0.2")
            for cid in (0, 1):
                sock = client._conns[cid].transport.get_extra_info("socket")
                assert sock.getsockopt(socket.IPPROTO_TCP, tio.TCP_USER_TIMEOUT) == 1234
            (server_session,) = srv.sessions
            sock = server_session._conns[1].transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, tio.TCP_USER_TIMEOUT) == 4321
            kinds = []
            while not client.events.empty():
                kinds.append(type(client.events.get_nowait()).__name__)
            assert kinds[:2] == ["ConnectionEstablished", "HandshakeCompleted"]  # TCP up, then TLS
            assert "ConnectionJoined" in kinds and "AddressAdvertised" in kinds
            await client.close()

    run(main())


def test_paused_transport_is_skipped_by_the_scheduler():
    """Pull scheduling: every socket gets TCP_NOTSENT_LOWAT, a paused
    transport makes its connection unwritable in the engine (no new stream
    records go there), resuming hands it data again; the stream arrives
    intact."""
    import socket

    ccfg, scfg = _configs()
    blob = os.urandom(2_000_000)

    async def main():
        got = asyncio.get_running_loop().create_future()

        async def sink(reader, writer):
            got.set_result(await reader.read())
            writer.write_eof()

        server = await _server(scfg, on_stream=sink)
        async with server:
            port = server.addresses[0][1]
            client = await tio.connect("127.0.0.1", port, config=ccfg, server_name="localhost")
            cid = await client.join("127.0.0.2")
            for p in client._conns.values():
                sock = p.transport.get_extra_info("socket")
                assert sock.getsockopt(socket.IPPROTO_TCP, tio.TCP_NOTSENT_LOWAT) == tio.NOTSENT_LOWAT
            engine = client.session._conns
            client._conns[0].pause_writing()
            assert engine[0].writable is False
            queued_before = {c: engine[c].in_flight for c in (0, cid)}
            reader, writer = client.open_stream()
            writer.write(blob[:300_000])
            assert engine[0].in_flight == queued_before[0]  # nothing new on the paused connection
            assert engine[cid].in_flight > queued_before[cid]
            client._conns[0].resume_writing()
            assert engine[0].writable is True
            writer.write(blob[300_000:])
            writer.write_eof()
            data = await got
            await client.close()
            return data

    assert sha(run(main())) == sha(blob)
