"""The asyncio DTLS endpoint over real UDP loopback sockets."""

from __future__ import annotations

import asyncio
import os
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest

from tcpls.aio import dtls as adtls
from tcpls.dtls.endpoint import EndpointLimits
from tcpls.errors import UsageError
from tcpls.tls import events as ev

from tlspair import configs

TIMEOUT = 20.0


async def echo(ch: adtls.DTLSChannel) -> None:
    while data := await ch.recv():
        ch.send(data)
    ch.close()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT))


@pytest.mark.parametrize("cid", [False, True])
def test_echo_many_records_byte_for_byte(cid):
    async def main():
        c, s = configs()
        server = await adtls.serve(s, "127.0.0.1", 0, echo, cid=cid)
        port = server.local_address[1]
        ch = await adtls.connect(c, "127.0.0.1", port, server_name="localhost", cid=cid)
        assert ch.handshake.version == 0xFEFC and ch.handshake.hello_retry  # stateless cookie exchange
        payloads = [os.urandom(n) for n in (1, 100, 1000, ch.max_data_size)] * 10
        got = []
        for p in payloads:  # one at a time: UDP on loopback does not drop a paced flow
            ch.send(p)
            got.append(await ch.recv())
        assert got == payloads
        with pytest.raises(UsageError):
            ch.send(b"x" * (ch.max_data_size + 1))
        if cid:
            assert ch.connection.receive_cid == ch.association.cid and len(ch.association.cid) == 8
        await adtls.close_client(ch)
        assert server.endpoint.connection_count == 0  # close_notify ended it on the server
        server.close()
        await server.wait_closed()

    run(main())


def test_concurrent_clients_with_handshakes_in_worker_threads():
    async def main():
        c, s = configs()
        with ThreadPoolExecutor(2, thread_name_prefix="dtls-hs") as pool:
            server = await adtls.serve(s, "127.0.0.1", 0, echo, executor=pool)
            port = server.local_address[1]

            async def one(i: int) -> bytes:
                ch = await adtls.connect(c, "127.0.0.1", port, server_name="localhost")
                msg = b"client %d " % i + os.urandom(32)
                ch.send(msg)
                reply = await ch.recv()
                await adtls.close_client(ch)
                return msg == reply

            results = await asyncio.gather(*(one(i) for i in range(8)))
            assert all(results)
            assert server.endpoint.stats["stateless_replies"] == 8
            server.close()
            await server.wait_closed()

    run(main())


def cookieless_client_hello(c) -> bytes:
    """A real first ClientHello (no cookie), as a flood would send."""
    from tcpls.dtls.connection import DTLSConnection

    conn = DTLSConnection(c, is_client=True, server_name="localhost")
    conn.start_handshake(0.0)
    (datagram,) = conn.datagrams_to_send(0.0)
    return datagram


def test_handshake_flood_does_not_stop_established_traffic():
    async def main():
        c, s = configs()
        limits = EndpointLimits(max_handshakes=4, max_stateless_replies=16)
        server = await adtls.serve(s, "127.0.0.1", 0, echo, limits=limits)
        port = server.local_address[1]
        ch = await adtls.connect(c, "127.0.0.1", port, server_name="localhost")
        hello = cookieless_client_hello(c)
        flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        flood.bind(("127.0.0.1", 0))
        flood.setblocking(False)
        # Bursts of cookieless ClientHellos queued ahead of each established
        # record (bursts small enough for the socket's receive buffer: a
        # flood beyond what the kernel buffers is dropped before any code
        # of ours runs).
        sent = 0
        for i in range(20):
            for _ in range(40):
                flood.sendto(hello, ("127.0.0.1", port))
                sent += 1
            msg = b"during flood %d" % i
            ch.send(msg)
            assert await asyncio.wait_for(ch.recv(), 5.0) == msg
            assert server.endpoint.handshake_count == 0
        flood.close()
        stats = server.endpoint.stats
        # The flood was answered statelessly (or dropped when the reply
        # queue was full) and created no handshake state at all.
        assert stats["stateless_replies"] + stats["stateless_dropped"] >= sent * 0.9
        assert server.endpoint.handshake_count == 0
        assert server.endpoint.connection_count == 1
        await adtls.close_client(ch)
        server.close()
        await server.wait_closed()

    run(main())


def test_key_update_and_tickets_over_udp():
    async def main():
        c, s = configs()
        server = await adtls.serve(s, "127.0.0.1", 0, echo)
        port = server.local_address[1]
        ch = await adtls.connect(c, "127.0.0.1", port, server_name="localhost")
        ch.key_update()
        ch.send(b"after key update")
        assert await ch.recv() == b"after key update"
        for _ in range(100):
            if ch.connection.write_epoch == 4:
                break
            await asyncio.sleep(0.01)
        assert ch.connection.write_epoch == 4
        assert any(isinstance(e, ev.SessionTicketReceived) for e in ch.events)
        session = ch.connection.sessions[-1]
        await adtls.close_client(ch)
        # Resumption with a ticket from the first connection.
        ch2 = await adtls.connect(c, "127.0.0.1", port, server_name="localhost", session=session)
        assert ch2.handshake.session_resumed
        ch2.send(b"resumed")
        assert await ch2.recv() == b"resumed"
        await adtls.close_client(ch2)
        server.close()
        await server.wait_closed()

    run(main())


def test_connect_to_nothing_times_out_cleanly():
    async def main():
        c, _ = configs()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))  # bound, never answers
        port = sock.getsockname()[1]
        with pytest.raises((asyncio.TimeoutError, TimeoutError)):
            await adtls.connect(c, "127.0.0.1", port, server_name="localhost", timeout=1.5)
        sock.close()

    run(main())
