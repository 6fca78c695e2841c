"""Batched UDP sending (GSO and its fallback) and the receive path of the
DTLS adapters, over loopback.

The peer of the adapters is a plain UDP socket driving our sans-IO
DTLSEndpoint by hand (one recvfrom / sendto per datagram), so that what the
adapters put on the wire is checked datagram by datagram: byte-exact data,
one DTLS record per datagram, in order. No timing assertions.
"""

from __future__ import annotations

import asyncio
import errno
import os
import select
import socket
import threading
import time
from typing import Any, Optional

import pytest

from tcpls import _udp
from tcpls.aio import dtls as adtls
from tcpls.dtls.endpoint import ConnectionEvent, ConnectionEstablished, DTLSEndpoint, dtls_connection_factory
from tcpls.dtls.record import parse_datagram
from tcpls.sync import dtls as sdtls
from tcpls.tls import events as ev
from tcpls.tls.config import TLSConfig
from tcpls.tls.enums import PskKeyExchangeMode
from tcpls.tls.session import ExternalPSK

TIMEOUT = 20.0
PAYLOAD = 1178  # 1200-byte datagrams with AES-GCM, no CID


def psk_configs() -> tuple[TLSConfig, TLSConfig]:
    psk = ExternalPSK(b"udp", bytes(range(32)), "sha256")
    modes = [PskKeyExchangeMode.psk_ke]
    client = TLSConfig(psk=psk, psk_key_exchange_modes=modes, verify_peer=False)
    server = TLSConfig(psk_lookup=lambda i: psk if i == psk.identity else None, psk_key_exchange_modes=modes)
    return client, server


def big_receive_buffer(sock: socket.socket, needed: int) -> None:
    got = _udp.set_receive_buffer(sock, 8 << 20)
    if got < needed:
        pytest.skip(f"cannot raise SO_RCVBUF to {needed} bytes (got {got}; net.core.rmem_max too low, not root)")


class PlainPeer:
    """A plain UDP socket + our DTLS server endpoint, stepped by hand."""

    def __init__(self) -> None:
        _, server_config = psk_configs()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.address = self.sock.getsockname()
        self.endpoint = DTLSEndpoint(dtls_connection_factory(server_config, require_cookie=False), server=True)
        self.assoc: Any = None
        self.data: list[bytes] = []
        self.record_datagrams = False
        self.datagrams: list[bytes] = []

    def step(self, timeout: float) -> None:
        ready, _, _ = select.select([self.sock], [], [], timeout)
        now = time.time()
        if ready:
            while True:
                try:
                    d, addr = self.sock.recvfrom(65535)
                except BlockingIOError:
                    break
                if self.record_datagrams:
                    self.datagrams.append(d)
                self.endpoint.receive_datagram(d, addr, now)
        self.endpoint.handle_timer(now)
        self.flush(now)
        while (e := self.endpoint.next_event()) is not None:
            if isinstance(e, ConnectionEstablished):
                self.assoc = e.association
            elif isinstance(e, ConnectionEvent) and isinstance(e.event, ev.DataReceived):
                self.data.append(e.event.data)

    def flush(self, now: float) -> None:
        for d, addr in self.endpoint.datagrams_to_send(now):
            self.sock.sendto(d, addr)

    def run_in_thread(self, until) -> threading.Thread:
        def loop() -> None:
            deadline = time.time() + TIMEOUT
            while not until() and time.time() < deadline:
                self.step(0.02)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self.sock.close()


def check_wire(peer: PlainPeer, payloads: list[bytes]) -> None:
    """Each data datagram is one DTLS record, carrying one payload, in order."""
    assert peer.data == payloads  # byte-exact, in order, none lost
    assert len(peer.datagrams) == len(payloads)
    for d, p in zip(peer.datagrams, payloads):
        records, drops = parse_datagram(d, 0)
        assert len(records) == 1 and not drops
        assert len(d) - len(p) == len(peer.datagrams[0]) - len(payloads[0])  # constant overhead


def make_payloads(n: int) -> list[bytes]:
    # Full-size datagrams with a few shorter ones (a GSO run ends at a shorter one).
    sizes = [PAYLOAD] * n
    for i in range(7, n, 23):
        sizes[i] = 1 + i % 700
    return [os.urandom(s) for s in sizes]


# --------------------------------------------------------------------------
# UDPSender
# --------------------------------------------------------------------------
def test_runs_group_same_destination_same_size_bounded():
    a, b = ("127.0.0.1", 1), ("127.0.0.1", 2)
    d = [(b"x" * 100, a)] * 3 + [(b"x" * 50, a), (b"x" * 100, a), (b"x" * 100, b), (b"x" * 200, b), (b"x" * 10, b)]
    assert list(_udp._runs(d)) == [(0, 4), (4, 5), (5, 6), (6, 8)]
    many = [(b"y" * 10, a)] * 150
    assert list(_udp._runs(many)) == [(0, 64), (64, 128), (128, 150)]
    big = [(b"z" * 1500, a)] * 100
    runs = list(_udp._runs(big))
    assert all((j - i) * 1500 <= _udp.MAX_GSO_BYTES for i, j in runs) and runs[-1][1] == 100


def _receive_all(sock: socket.socket, count: int) -> list[bytes]:
    out = []
    deadline = time.time() + TIMEOUT
    while len(out) < count and time.time() < deadline:
        if select.select([sock], [], [], 0.2)[0]:
            out.append(sock.recv(65535))
    return out


@pytest.mark.parametrize("gso", [True, False])
def test_sender_keeps_every_datagram_boundary(gso):
    if gso and not _udp.gso_supported(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)):
        pytest.skip("the kernel has no UDP_SEGMENT (Linux < 4.18)")
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    big_receive_buffer(rx, 1 << 20)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        datagrams = [os.urandom(n) for n in [1200] * 100 + [700] + [1200] * 30 + [5, 5, 5]]
        sender = _udp.UDPSender(tx, gso=gso)
        sender.send([(d, rx.getsockname()) for d in datagrams])
        assert _receive_all(rx, len(datagrams)) == datagrams
        assert sender.datagrams == len(datagrams)
        if gso:
            assert sender.gso_sends >= 3 and sender.calls < len(datagrams) // 10
        else:
            assert sender.gso_sends == 0 and sender.calls == len(datagrams)
    finally:
        rx.close()
        tx.close()


class RefusingGSO:
    """A socket whose kernel refuses UDP_SEGMENT sends (EIO, as a device
    without checksum offload does); sendto works."""

    def __init__(self, sock: socket.socket, error: int) -> None:
        self._sock = sock
        self.error = error
        self.refused = 0
        self.type, self.family = sock.type, sock.family

    def sendmsg(self, *args: Any) -> int:
        self.refused += 1
        raise OSError(self.error, os.strerror(self.error))

    def sendto(self, data: bytes, addr: Any) -> int:
        return self._sock.sendto(data, addr)


@pytest.mark.parametrize("error", [errno.EIO, errno.EINVAL])
def test_sender_falls_back_when_gso_is_refused(error):
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    big_receive_buffer(rx, 1 << 20)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        fake = RefusingGSO(tx, error)
        sender = _udp.UDPSender(fake, gso=True)  # type: ignore[arg-type]
        datagrams = [os.urandom(1200) for _ in range(50)]
        sender.send([(d, rx.getsockname()) for d in datagrams])
        sender.send([(d, rx.getsockname()) for d in datagrams])
        assert _receive_all(rx, 100) == datagrams * 2
        assert fake.refused == 1 and sender.gso is False  # probed once, then plain sendto
    finally:
        rx.close()
        tx.close()


# --------------------------------------------------------------------------
# The adapters: send_many through GSO and through the fallback
# --------------------------------------------------------------------------
@pytest.fixture
def peer():
    p = PlainPeer()
    yield p
    p.close()


def _gso_param(gso: bool) -> Optional[bool]:
    if gso and not _udp.gso_supported(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)):
        pytest.skip("the kernel has no UDP_SEGMENT (Linux < 4.18)")
    return None if gso else False


@pytest.mark.parametrize("gso", [True, False], ids=["gso", "sendto"])
def test_blocking_send_many_is_byte_exact_one_record_per_datagram(peer, gso):
    option = _gso_param(gso)
    big_receive_buffer(peer.sock, 2 << 20)
    client_config, _ = psk_configs()
    # The blocking client runs only inside its calls: the peer waits for the
    # handshake, not for the ACK of its tickets.
    thread = peer.run_in_thread(lambda: peer.assoc is not None)
    sock = sdtls.connect(peer.address, client_config, timeout=TIMEOUT, gso=option)
    thread.join(TIMEOUT)
    try:
        payloads = make_payloads(300)
        peer.record_datagrams = True
        thread = peer.run_in_thread(lambda: len(peer.data) >= len(payloads))
        sock.send_many(payloads)
        thread.join(TIMEOUT)
        check_wire(peer, payloads)
        sender = sock._driver.sender
        if gso:
            assert sender.gso_sends > 0 and sender.calls < len(payloads) // 4
        else:
            assert sender.gso_sends == 0
    finally:
        sock.close(wait_for_peer=None)


@pytest.mark.parametrize("gso", [True, False], ids=["gso", "sendto"])
def test_asyncio_send_many_is_byte_exact_one_record_per_datagram(peer, gso):
    option = _gso_param(gso)
    big_receive_buffer(peer.sock, 2 << 20)
    client_config, _ = psk_configs()
    payloads = make_payloads(300)

    async def main() -> None:
        thread = peer.run_in_thread(lambda: peer.assoc is not None and peer.assoc.conn.get_timer() is None)
        channel = await adtls.connect(client_config, *peer.address, timeout=TIMEOUT, gso=option)
        await asyncio.to_thread(thread.join, TIMEOUT)
        try:
            peer.record_datagrams = True
            thread = peer.run_in_thread(lambda: len(peer.data) >= len(payloads))
            channel.send_many(payloads)
            await asyncio.to_thread(thread.join, TIMEOUT)
            sender = channel._protocol.sender
            assert sender is not None
            if gso:
                assert sender.gso_sends > 0 and sender.calls < len(payloads) // 4
            else:
                assert sender.gso_sends == 0
        finally:
            channel._protocol.close()

    asyncio.run(asyncio.wait_for(main(), TIMEOUT * 2))
    check_wire(peer, payloads)


# --------------------------------------------------------------------------
# Receive path: a burst larger than the kernel's default buffer
# --------------------------------------------------------------------------
BURST = 2000


def _default_receive_buffer() -> int:
    try:
        with open("/proc/sys/net/core/rmem_default") as f:
            return int(f.read())
    except OSError:
        return 212992


def _require_big_buffers() -> None:
    """Skip when the system cannot grant the adapters' buffer (not root and
    net.core.rmem_max below it): then the adapter cannot be expected to."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        got = _udp.set_receive_buffer(probe, 4 << 20)
    finally:
        probe.close()
    if got < BURST * 2400:
        pytest.skip(f"SO_RCVBUF cannot be raised beyond {got} here (net.core.rmem_max, not root)")


def _send_burst(peer: PlainPeer, payloads: list[bytes]) -> None:
    """The peer sends every payload now, one sendto each, while the
    adapter under test does not run."""
    now = time.time()
    peer.endpoint.send_data_batch(peer.assoc, payloads, now)
    for d, addr in peer.endpoint.datagrams_to_send(now):
        while True:
            try:
                peer.sock.sendto(d, addr)
                break
            except BlockingIOError:
                select.select([], [peer.sock], [], 1.0)


def test_blocking_adapter_receives_a_burst_beyond_the_default_buffer(peer):
    _require_big_buffers()
    assert BURST * 1200 > _default_receive_buffer()  # the old buffer would drop most of it
    client_config, _ = psk_configs()
    # The blocking client runs only inside its calls: the peer waits for the
    # handshake, not for the ACK of its tickets.
    thread = peer.run_in_thread(lambda: peer.assoc is not None)
    sock = sdtls.connect(peer.address, client_config, timeout=TIMEOUT)
    thread.join(TIMEOUT)
    try:
        # The adapter asked for its 4 MB (the kernel reports twice that).
        assert sock._driver.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= BURST * 2400
        payloads = [os.urandom(PAYLOAD) for _ in range(BURST)]
        _send_burst(peer, payloads)
        sock.settimeout(TIMEOUT)
        got = [sock.recv() for _ in range(BURST)]
        assert got == payloads
        driver = sock._driver
        assert driver.received >= BURST and driver.read_wakeups < driver.received // 8  # drained in bursts
    finally:
        sock.close(wait_for_peer=None)


def test_asyncio_adapter_receives_a_burst_beyond_the_default_buffer(peer):
    _require_big_buffers()
    client_config, _ = psk_configs()
    payloads = [os.urandom(PAYLOAD) for _ in range(BURST)]

    async def main() -> list[bytes]:
        thread = peer.run_in_thread(lambda: peer.assoc is not None and peer.assoc.conn.get_timer() is None)
        channel = await adtls.connect(client_config, *peer.address, timeout=TIMEOUT, max_queued=2 * BURST)
        await asyncio.to_thread(thread.join, TIMEOUT)
        try:
            raw = channel._protocol._sock
            assert raw.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= BURST * 2400
            _send_burst(peer, payloads)  # the event loop does not run meanwhile
            got = [await channel.recv() for _ in range(BURST)]
            # Several datagrams were read per wakeup (the burst was waiting).
            protocol = channel._protocol
            assert protocol.received >= BURST and protocol.read_wakeups < protocol.received // 8
            return got
        finally:
            channel._protocol.close()

    got = asyncio.run(asyncio.wait_for(main(), TIMEOUT * 2))
    assert got == payloads
