"""Happy-eyeballs connect and peer TCP settings over real loopback sockets."""

from __future__ import annotations

import asyncio
import socket

import pytest

from tcpls.aio import happy_eyeballs as he
from tcpls.aio import tcp_settings
from tcpls.aio import tcpls_session as tio
from tcpls.sync import tcpls_session as tsync
from tcpls.tcpls import events as ev
from tcpls.tcpls.codepoints import TCPSetting, TCPSettingStatus

from test_tcpls_aio import _configs, _echo, _server, run

TCP_CONGESTION = getattr(socket, "TCP_CONGESTION", 13)


def _blackhole(host: str = "127.0.0.2") -> tuple[socket.socket, list[socket.socket], int]:
    """A listener whose accept queue is full: the kernel drops further SYNs,
    so a connect to it hangs like one to a black-holed address."""
    lsock = socket.socket()
    lsock.bind((host, 0))
    lsock.listen(0)
    port = lsock.getsockname()[1]
    fillers = []
    for _ in range(8):
        c = socket.socket()
        c.settimeout(0.3)
        fillers.append(c)
        try:
            c.connect((host, port))
        except (TimeoutError, socket.timeout):
            return lsock, fillers, port  # the queue is full now
    lsock.close()
    for c in fillers:
        c.close()
    pytest.skip("could not fill a listener's accept queue to black-hole SYNs")


def _closed_port(host: str = "127.0.0.1") -> int:
    s = socket.socket()
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens: connecting is refused at once
    return port


def _drain(q: asyncio.Queue) -> list:
    out = []
    while not q.empty():
        out.append(q.get_nowait())
    return out


def _cc(sock) -> str:
    return sock.getsockopt(socket.IPPROTO_TCP, TCP_CONGESTION, 16).rstrip(b"\0").decode()


# ------------------------------------------------------------ happy eyeballs
def test_interleave_families():
    addrs = [("2001:db8::1", 1), ("2001:db8::2", 1), ("192.0.2.1", 1), ("192.0.2.2", 1), ("192.0.2.3", 1)]
    assert he.interleave(addrs) == [("2001:db8::1", 1), ("192.0.2.1", 1), ("2001:db8::2", 1), ("192.0.2.2", 1), ("192.0.2.3", 1)]
    v4first = [("192.0.2.1", 1), ("2001:db8::1", 1)]
    assert he.interleave(v4first) == v4first


def test_blackholed_address_loses_the_race():
    """First address black-holed: the second attempt starts after the
    stagger and wins; the first is abandoned and reported. The per-attempt
    timeout (60 s) exceeds the overall one (20 s), so without the race the
    connect would fail."""
    ccfg, scfg = _configs()
    lsock, fillers, bh_port = _blackhole()

    async def main():
        srv = await _server(scfg, hosts=["127.0.0.1"], on_stream=_echo)
        async with srv:
            port = srv.addresses[0][1]
            client = await tio.connect([("127.0.0.2", bh_port), "127.0.0.1"], port, config=ccfg, server_name="localhost",
                                       attempt_timeout=60.0, stagger=0.1, timeout=20.0)
            assert client.peer_addrs[0][:2] == ("127.0.0.1", port)
            events = _drain(client.events)
            failed = [e for e in events if isinstance(e, ev.ConnectionAttemptFailed)]
            assert failed == [ev.ConnectionAttemptFailed("127.0.0.2", bh_port, "abandoned: another attempt connected first")]
            est = [e for e in events if isinstance(e, ev.ConnectionEstablished)]
            assert est[0].conn_id == 0 and est[0].remote[:2] == ("127.0.0.1", port)
            r, w = client.open_stream()
            w.write(b"ping")
            w.write_eof()
            assert await r.read() == b"ping"
            await client.close()

    try:
        run(main())
    finally:
        lsock.close()
        for c in fillers:
            c.close()


def test_attempt_timeout_then_next_address():
    """A long stagger: the black-holed attempt times out on its own timeout
    and the next address is tried at once."""
    ccfg, scfg = _configs()
    lsock, fillers, bh_port = _blackhole()

    async def main():
        srv = await _server(scfg, hosts=["127.0.0.1"], on_stream=_echo)
        async with srv:
            port = srv.addresses[0][1]
            client = await tio.connect([("127.0.0.2", bh_port), "127.0.0.1"], port, config=ccfg, server_name="localhost",
                                       attempt_timeout=0.5, stagger=60.0, timeout=20.0)
            failed = [e for e in _drain(client.events) if isinstance(e, ev.ConnectionAttemptFailed)]
            assert failed == [ev.ConnectionAttemptFailed("127.0.0.2", bh_port, "timed out")]
            assert client.get_extra_info("tcpls")
            await client.close()

    try:
        run(main())
    finally:
        lsock.close()
        for c in fillers:
            c.close()


def test_all_attempts_fail_lists_every_address():
    ccfg, _ = _configs()
    p1, p2 = _closed_port("127.0.0.1"), _closed_port("127.0.0.2")

    async def main():
        with pytest.raises(he.AllAttemptsFailed) as info:
            await tio.connect([("127.0.0.1", p1), ("127.0.0.2", p2)], 1, config=ccfg, server_name="localhost", timeout=10.0)
        errors = info.value.errors
        assert [(h, p) for h, p, _r in errors] == [("127.0.0.1", p1), ("127.0.0.2", p2)]
        assert all("ConnectionRefusedError" in r for _h, _p, r in errors)
        assert f"127.0.0.1:{p1}" in str(info.value) and f"127.0.0.2:{p2}" in str(info.value)
        assert isinstance(info.value, OSError)

    run(main())


def test_overall_timeout_lists_the_abandoned_attempts():
    ccfg, _ = _configs()
    lsock, fillers, bh_port = _blackhole()

    async def main():
        with pytest.raises(he.AllAttemptsFailed) as info:
            await tio.connect([("127.0.0.2", bh_port)], 1, config=ccfg, server_name="localhost",
                              attempt_timeout=60.0, timeout=0.5)
        assert info.value.errors == [("127.0.0.2", bh_port, "abandoned: connect cancelled or timed out")]

    try:
        run(main())
    finally:
        lsock.close()
        for c in fillers:
            c.close()


def test_hostname_resolves_and_blocking_connect_takes_a_list():
    ccfg, scfg = _configs()

    async def main():
        srv = await _server(scfg, hosts=["127.0.0.1"], on_stream=_echo)
        async with srv:
            port = srv.addresses[0][1]
            client = await tio.connect("localhost", port, config=ccfg, timeout=10.0)
            assert client.peer_addrs[0][1] == port
            await client.close()
            # a name inside a list is resolved too; a refused address before it is reported
            bad = _closed_port("127.0.0.2")
            client = await tio.connect([("127.0.0.2", bad), "localhost"], port, config=ccfg, timeout=10.0, stagger=5.0)
            assert client.peer_addrs[0][1] == port
            failed = [e for e in _drain(client.events) if isinstance(e, ev.ConnectionAttemptFailed)]
            assert failed[0].host == "127.0.0.2" and "ConnectionRefusedError" in failed[0].reason
            await client.close()
            bad = _closed_port("127.0.0.2")
            blocking = await asyncio.to_thread(tsync.connect, [("127.0.0.2", bad), "127.0.0.1"], port, config=ccfg,
                                               server_name="localhost", timeout=10.0)
            s = await asyncio.to_thread(blocking.open_stream)
            await asyncio.to_thread(s.sendall, b"hello")
            await asyncio.to_thread(s.shutdown_write)
            assert await asyncio.to_thread(s.recv_all, 10) == b"hello"
            answer = await asyncio.to_thread(blocking.set_peer_user_timeout, 1500)
            assert answer.applied
            await asyncio.to_thread(blocking.close)

    run(main())


# ------------------------------------------------------------ TCP settings
def _other_allowed_cc(sock) -> str:
    current = _cc(sock)
    choices = [n for n in tcp_settings.allowed_congestion_control() if n != current]
    if not choices:
        pytest.skip(f"the kernel allows no congestion control other than {current!r}")
    return "reno" if "reno" in choices else choices[0]


def test_server_applies_client_requested_settings():
    ccfg, scfg = _configs()

    async def main():
        srv = await _server(scfg, on_stream=_echo)
        async with srv:
            client = await tio.connect("127.0.0.1", srv.addresses[0][1], config=ccfg, server_name="localhost")
            (ss,) = srv.sessions
            sock0 = ss._conns[0].transport.get_extra_info("socket")
            cc = _other_allowed_cc(sock0)

            ans = await client.set_peer_user_timeout(2345)
            assert ans.applied, ans.reason
            assert sock0.getsockopt(socket.IPPROTO_TCP, tio.TCP_USER_TIMEOUT) == 2345
            ans = await client.set_peer_congestion_control(cc)
            assert ans.applied, ans.reason
            assert _cc(sock0) == cc

            # a connection joined later gets the "all connections" settings too
            cid = await client.join("127.0.0.2")
            sock1 = ss._conns[cid].transport.get_extra_info("socket")
            assert sock1.getsockopt(socket.IPPROTO_TCP, tio.TCP_USER_TIMEOUT) == 2345 and _cc(sock1) == cc

            # refused: unknown algorithm, user timeout out of bounds; nothing changes
            ans = await client.set_peer_congestion_control("nosuchcc")
            assert ans.status == TCPSettingStatus.REFUSED and "not allowed" in ans.reason
            ans = await client.set_peer_user_timeout(5)
            assert ans.status == TCPSettingStatus.REFUSED and "outside" in ans.reason
            assert sock0.getsockopt(socket.IPPROTO_TCP, tio.TCP_USER_TIMEOUT) == 2345 and _cc(sock0) == cc

            # one connection only
            ans = await client.set_peer_user_timeout(7000, conn_id=cid)
            assert ans.applied
            assert sock1.getsockopt(socket.IPPROTO_TCP, tio.TCP_USER_TIMEOUT) == 7000
            assert sock0.getsockopt(socket.IPPROTO_TCP, tio.TCP_USER_TIMEOUT) == 2345

            kinds = [type(e) for e in _drain(ss.events)]
            assert kinds.count(ev.TCPSettingRequested) == 5
            assert kinds[0] is ev.ConnectionEstablished and kinds.count(ev.ConnectionEstablished) == 2
            # the session still works
            r, w = client.open_stream()
            w.write(b"still fine")
            w.write_eof()
            assert await r.read() == b"still fine"
            await client.close()

    run(main())


def test_policy_hook_refuses_and_client_applies_server_request():
    seen = []

    def policy(setting, value, conn_id):
        seen.append((setting, value, conn_id))
        return "this server keeps its defaults"

    ccfg, scfg = _configs(server_kw={"tcp_setting_policy": policy})
    got = asyncio.Queue()

    async def on_session(session):
        await got.put(await session.set_peer_user_timeout(4321))

    async def main():
        srv = await _server(scfg, hosts=["127.0.0.1"], on_stream=_echo, on_session=on_session)
        async with srv:
            client = await tio.connect("127.0.0.1", srv.addresses[0][1], config=ccfg, server_name="localhost")
            (ss,) = srv.sessions
            sock0 = ss._conns[0].transport.get_extra_info("socket")
            before = sock0.getsockopt(socket.IPPROTO_TCP, tio.TCP_USER_TIMEOUT)
            ans = await client.set_peer_user_timeout(3000)
            assert ans.status == TCPSettingStatus.REFUSED and ans.reason == "this server keeps its defaults"
            assert seen == [(TCPSetting.USER_TIMEOUT, 3000, None)]
            assert sock0.getsockopt(socket.IPPROTO_TCP, tio.TCP_USER_TIMEOUT) == before
            # the other direction: the server asked the client (default policy)
            server_ans = await asyncio.wait_for(got.get(), 10)
            assert server_ans.applied
            csock = client._conns[0].transport.get_extra_info("socket")
            assert csock.getsockopt(socket.IPPROTO_TCP, tio.TCP_USER_TIMEOUT) == 4321
            await client.close()

    run(main())


def test_client_announces_its_addresses_v4_v6():
    ccfg, scfg = _configs()

    async def main():
        srv = await _server(scfg, hosts=["127.0.0.1"], on_stream=_echo)
        async with srv:
            client = await tio.connect("127.0.0.1", srv.addresses[0][1], config=ccfg, server_name="localhost")
            client.advertise_address(1, "::1", 5555)
            client.advertise_address(2, "127.0.0.3", 6666)
            (ss,) = srv.sessions
            await asyncio.wait_for(ss._wait(lambda: len(ss.session.peer_addresses()) == 2), 10)
            assert ss.session.peer_addresses() == {1: ("::1", 5555), 2: ("127.0.0.3", 6666)}
            got = [e for e in _drain(ss.events) if isinstance(e, ev.AddressAdvertised)]
            assert [(e.address_id, e.version, e.port) for e in got] == [(1, 6, 5555), (2, 4, 6666)]
            # and the server's own listening address reached the client
            assert client.session.peer_addresses() == {0: ("127.0.0.1", srv.addresses[0][1])}
            await client.close()

    run(main())
