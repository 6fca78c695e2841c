"""The asyncio TCPLS adapter's stream table and stream limit, over real
loopback sockets: finished streams are freed, ``wait_open_stream`` waits
for a free slot."""

from __future__ import annotations

import asyncio
import os

import pytest

from tcpls.aio import tcpls_session as tio
from tcpls.errors import UsageError

from tcplspair import TCPLSPair, tcpls_configs
from test_tcpls_aio import _configs, _echo, _server, run


def test_engine_stream_forgotten_only_when_both_directions_are_over():
    """The engine tells an adapter when it may free a stream: not while
    either direction is open, only after our FIN was acknowledged and the
    peer's FIN delivered (in memory, fake clock)."""
    c, s = tcpls_configs()
    p = TCPLSPair(c, s)
    p.pump()
    sid = p.client.open_stream()
    assert not p.client.stream_forgotten(sid) and not p.client.stream_forgotten(sid + 2)  # open / never opened
    p.client.send_stream_data(sid, b"ping", fin=True)
    p.pump()
    assert not p.client.stream_forgotten(sid)  # the peer's direction is still open
    assert not p.server.stream_forgotten(sid)  # the server has not finished its direction
    p.server.send_stream_data(sid, b"pong", fin=True)
    p.pump()
    assert p.client.stream_forgotten(sid)
    assert p.server.stream_forgotten(sid)
    assert p.client.stream_ids() == [] and p.server.stream_ids() == []


def test_thousands_of_short_streams_keep_the_adapter_bounded():
    """2000 request/response streams, 16 at a time, with max_streams 8: the
    senders wait for a slot (never UsageError), every echo is exact, and
    neither adapter's stream table grows beyond the streams in use."""
    max_streams = 8
    ccfg, scfg = _configs({"max_streams": max_streams}, {"max_streams": max_streams})
    n_streams, workers = 2000, 16

    async def main():
        srv = await _server(scfg, ["127.0.0.1"], on_stream=_echo)
        async with srv:
            client = await tio.connect("127.0.0.1", srv.addresses[0][1], config=ccfg, server_name="localhost")
            (server_session,) = srv.sessions
            todo = list(range(n_streams))
            peak = {"client": 0, "server": 0, "waited": 0}

            async def worker():
                while todo:
                    i = todo.pop()
                    if not client.session.can_open_stream():
                        peak["waited"] += 1
                    reader, writer = await client.wait_open_stream(timeout=10)
                    payload = i.to_bytes(4, "big") + os.urandom(i % 300)
                    writer.write(payload)
                    writer.write_eof()
                    assert await reader.read() == payload
                    peak["client"] = max(peak["client"], client.stream_count())
                    peak["server"] = max(peak["server"], server_session.stream_count())

            await asyncio.gather(*(worker() for _ in range(workers)))
            # the last ACKs of FINs travel with the next records; a close flushes them
            await client.wait_acked(timeout=10)
            for _ in range(100):
                if client.stream_count() == 0 and server_session.stream_count() == 0:
                    break
                await asyncio.sleep(0.02)
            final = client.stream_count(), server_session.stream_count()
            engine = len(client.session.stream_ids()), len(server_session.session.stream_ids())
            await client.close()
            return peak, final, engine

    peak, final, engine = run(main(), timeout=120)
    assert peak["waited"] > 0  # the limit was reached and waited on
    # a stream stays in the table until both ends are over: at most the
    # streams of ours still open plus those whose last ACK is in flight
    assert peak["client"] <= workers + max_streams, peak
    assert peak["server"] <= workers + max_streams, peak
    assert final == (0, 0), (final, engine)


def test_wait_open_stream_waits_for_a_slot_and_times_out():
    ccfg, scfg = _configs({"max_streams": 2}, {"max_streams": 2})

    async def main():
        got = []

        async def sink(reader, writer):
            got.append(await reader.read())
            writer.write_eof()

        srv = await _server(scfg, ["127.0.0.1"], on_stream=sink)
        async with srv:
            client = await tio.connect("127.0.0.1", srv.addresses[0][1], config=ccfg, server_name="localhost")
            r0, w0 = client.open_stream()
            r1, w1 = await client.wait_open_stream(timeout=1)
            w0.write(b"zero")
            w1.write(b"one")
            with pytest.raises(UsageError):
                client.open_stream()  # the non-waiting variant keeps its contract
            with pytest.raises(asyncio.TimeoutError):
                await client.wait_open_stream(timeout=0.3)
            waiter = asyncio.ensure_future(client.wait_open_stream(timeout=10))
            await asyncio.sleep(0.2)
            assert not waiter.done()  # still no slot: both streams are open
            w0.write_eof()  # the slot frees once the server acknowledged the FIN
            r2, w2 = await waiter
            assert w2.stream_id == 4
            w1.write_eof()
            w2.write(b"two")
            w2.write_eof()
            assert await r0.read() == b"" and await r2.read() == b""
            await client.close()
        assert sorted(got) == [b"one", b"two", b"zero"]

    run(main())


def _run_server_thread(scfg, hosts=("127.0.0.1",), **kw):
    """An asyncio TCPLS server on its own thread (for the blocking client)."""
    import threading

    ready = threading.Event()
    stop = threading.Event()
    box = {}

    def server_thread():
        async def main():
            srv = await _server(scfg, list(hosts), **kw)
            box["port"] = srv.addresses[0][1]
            box["server"] = srv
            ready.set()
            async with srv:
                while not stop.is_set():
                    await asyncio.sleep(0.02)

        asyncio.run(main())

    t = threading.Thread(target=server_thread, daemon=True)
    t.start()
    assert ready.wait(10)
    return box, stop, t


def test_blocking_client_alert_reaches_a_server_still_sending():
    """The blocking client fails (a corrupted record from the server) while
    the server is still sending a large stream: the client's alert and FIN
    reach the server, which fails with that alert (not a TCP reset), and
    the client's close() returns within the linger bound."""
    import time

    from tcpls.errors import LocalProtocolError, RemoteAlert
    from tcpls.sync import tcpls_session as tsync
    from tcpls.tls.enums import AlertDescription

    ccfg, scfg = _configs()
    result = {}

    async def on_session(sess):
        _r, w = sess.open_stream()
        chunk = os.urandom(65536)
        sent = 0
        try:
            while True:
                w.write(chunk)
                await w.drain()
                sent += len(chunk)
                if sent == 1 << 21:
                    # a record no key protects, at a record boundary on connection 0
                    sess._conns[0].transport.write(b"\x17\x03\x03\x00\x40" + os.urandom(64))
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            result["sent"] = sent
            result["error"] = sess.error or exc

    box, stop, t = _run_server_thread(scfg, on_session=on_session)
    try:
        client = tsync.connect("127.0.0.1", box["port"], config=ccfg, server_name="localhost")
        s = client.accept_stream(timeout=10)
        with pytest.raises(LocalProtocolError) as info:
            while s.recv(65536, timeout=10):
                pass
        assert info.value.alert == AlertDescription.bad_record_mac
        t0 = time.monotonic()
        client.close()
        closing = time.monotonic() - t0
        for _ in range(100):
            if "error" in result:
                break
            time.sleep(0.05)
    finally:
        stop.set()
        t.join(10)
    assert result["sent"] > 1 << 21  # the server went on writing after the bad record
    assert isinstance(result["error"], RemoteAlert), result
    assert result["error"].alert == AlertDescription.bad_record_mac
    assert closing < tio.FAILURE_LINGER + 1.0


def test_session_events_join_stream_migration_failover():
    """The application sees the session's life on ``events`` /
    ``next_event()``: a new connection, a stream the peer opened, a
    migration, a connection failure and the failover it caused."""
    from tcpls.tcpls import events as ev

    ccfg, scfg = _configs({"dead_timeout": 1.0}, {"dead_timeout": 1.0})
    blob = os.urandom(300_000)

    async def on_session(sess):
        _r, w = sess.open_stream()
        w.write(b"hello from the server")
        w.write_eof()

    async def main():
        srv = await _server(scfg, on_stream=_echo, on_session=on_session)
        async with srv:
            client = await tio.connect("127.0.0.1", srv.addresses[0][1], config=ccfg, server_name="localhost")
            first = await client.next_event(timeout=5)
            assert isinstance(first, ev.ConnectionEstablished) and first.conn_id == 0
            assert isinstance(await client.next_event(timeout=5), ev.HandshakeCompleted)
            cid = await client.join("127.0.0.2")
            sreader, _sw = await client.accept_stream()
            assert await sreader.read() == b"hello from the server"
            reader, writer = client.open_stream()
            client.migrate(writer, 0)
            writer.write(blob[:100_000])
            await writer.drain()
            client.abort_connection(cid)
            writer.write(blob[100_000:])
            writer.write_eof()
            assert await reader.read() == blob
            seen = []
            while True:
                try:
                    seen.append(await client.next_event(timeout=0.5))
                except asyncio.TimeoutError:
                    break
            await client.close()
            return cid, seen

    cid, seen = run(main())
    kinds = [type(e).__name__ for e in seen]
    assert ev.ConnectionJoined(cid) in seen, kinds
    assert any(isinstance(e, ev.ConnectionEstablished) and e.conn_id == cid for e in seen), kinds
    assert ev.StreamOpened(1) in seen, kinds
    assert tio.StreamMigrated(0, 0) in seen, kinds
    failed = [e for e in seen if isinstance(e, ev.ConnectionFailed)]
    assert [e.conn_id for e in failed] == [cid], kinds
    (fo,) = [e for e in seen if isinstance(e, tio.Failover)]
    assert fo.conn_id == cid and fo.remaining == (0,)
    assert kinds.index("Failover") == kinds.index("ConnectionFailed") + 1
    assert not any(isinstance(e, ev.StreamDataReceived) for e in seen)


def test_blocking_api_stream_limit_migrate_events():
    """The blocking client offers the asyncio operations: open_stream waits
    at the stream limit (or times out), join, migrate, close_connection,
    next_event, close."""
    import threading

    from tcpls.sync import tcpls_session as tsync
    from tcpls.tcpls import events as ev

    ccfg, scfg = _configs({"max_streams": 2}, {"max_streams": 2})
    blob = os.urandom(500_000)
    box, stop, t = _run_server_thread(scfg, ("127.0.0.1", "127.0.0.2"), on_stream=_echo)
    try:
        with tsync.connect("127.0.0.1", box["port"], config=ccfg, server_name="localhost") as client:
            cid = client.join("127.0.0.2")
            s0 = client.open_stream()
            s1 = client.open_stream(timeout=1)
            with pytest.raises(UsageError):
                client.open_stream(wait=False)
            with pytest.raises(TimeoutError):
                client.open_stream(timeout=0.3)
            box2 = {}
            opener = threading.Thread(target=lambda: box2.setdefault("s", client.open_stream(timeout=10)))
            opener.start()
            opener.join(0.3)
            assert opener.is_alive()  # blocked: both slots taken
            s0.sendall(b"zero")
            s0.shutdown_write()
            assert s0.recv_all(timeout=10) == b"zero"
            opener.join(10)
            s2 = box2["s"]
            assert s2.stream_id == 4
            client.migrate(s2, cid)
            got = bytearray()
            reader = threading.Thread(target=lambda: got.extend(s2.recv_all(timeout=20)))
            reader.start()
            s2.sendall(blob[:200_000], timeout=10)
            client.close_connection(0)  # the rest of the session on the joined connection
            s2.sendall(blob[200_000:], timeout=10)
            s2.shutdown_write()
            reader.join(20)
            assert bytes(got) == blob
            s1.shutdown_write()
            assert s1.recv_all(timeout=10) == b""
            assert client.connection_ids() == [cid]
            seen = []
            while True:
                try:
                    seen.append(client.next_event(timeout=0.3))
                except TimeoutError:
                    break
            assert ev.ConnectionJoined(cid) in seen
            assert tio.StreamMigrated(4, cid) in seen
            assert client.error is None
    finally:
        stop.set()
        t.join(10)


def test_server_alert_survives_a_client_still_sending_a_huge_hello():
    """A ClientHello too large for the router reaches a new session's
    handshake, which refuses it (decode_error from its header); the client,
    which writes 1 MiB before it reads, gets the alert and a clean EOF
    rather than a TCP reset."""
    import socket

    huge_hello_start = b"\x16\x03\x01\x40\x00" + b"\x01" + (131104).to_bytes(3, "big")
    decode_error_alert = b"\x15\x03\x03\x00\x02\x02\x32"
    _ccfg, scfg = _configs()
    box, stop, t = _run_server_thread(scfg, on_stream=_echo)
    try:
        with socket.create_connection(("127.0.0.1", box["port"]), timeout=10) as sock:
            sock.sendall(huge_hello_start + bytes(0x4000 - 4))
            for _ in range(64):
                sock.sendall(b"\x16\x03\x03\x40\x00" + bytes(0x4000))
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
    finally:
        stop.set()
        t.join(10)
    assert received == decode_error_alert
