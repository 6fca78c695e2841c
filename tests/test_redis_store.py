"""The Redis KeyValueStore (our own RESP client) against a real redis-server,
and two ``tcpls server`` processes sharing ticket keys and 0-RTT anti-replay
records through it (RFC 9846 §8).

redis-server comes from the Debian package (``./run`` installs it); without
it these tests are skipped.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time

import pytest

from conftest import DEFAULT_TIMEOUT, _stop, free_port, run_tcpls_cli, wait_until
from tcpls.stores.redis import RedisError, RedisStore, load_shared_ticket_keys
from tcpls.tls import events as ev
from tcpls.tls.config import TLSConfig
from tcpls.tls.connection import TLSConnection
from tcpls.tls.session import AntiReplay, Session, TicketKeys

T = DEFAULT_TIMEOUT
REDIS = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(REDIS is None, reason="redis-server not installed (./run installs it)")


@pytest.fixture
def redis_url(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [REDIS, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited: {proc.stdout.read()!r}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    wait_until(up, T, "redis-server")
    yield f"redis://127.0.0.1:{port}/0"
    _stop(proc)


def test_store_semantics(redis_url):
    store = RedisStore(redis_url, prefix=b"t1:")
    now = time.time()
    assert store.get(b"k", now) is None
    store.put(b"k", b"\x00v\r\n1", now, 60)
    assert store.get(b"k", now) == b"\x00v\r\n1"
    assert store.add(b"k", b"other", now, 60) is False
    assert store.add(b"new", b"x", now, 60) is True
    assert store.pop(b"k", now) == b"\x00v\r\n1"
    assert store.pop(b"k", now) is None
    store.put(b"short", b"x", now, 0.15)
    time.sleep(0.3)
    assert store.get(b"short", now) is None
    assert RedisStore(redis_url, prefix=b"t2:").get(b"new", now) is None  # prefixes are separate
    assert isinstance(store.command(b"NOSUCHCOMMAND"), RedisError)  # error replies are returned
    store.close()
    assert store.get(b"new", now) == b"x"  # reconnects


def test_pop_is_single_use_across_clients(redis_url):
    now = time.time()
    RedisStore(redis_url).put(b"ticket", b"state", now, 60)
    got, stores = [], [RedisStore(redis_url) for _ in range(8)]
    barrier = threading.Barrier(len(stores))

    def take(s: RedisStore) -> None:
        barrier.wait()
        got.append(s.pop(b"ticket", now))

    threads = [threading.Thread(target=take, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(T)
    assert sorted(got, key=lambda v: v or b"") == [None] * 7 + [b"state"]


def test_anti_replay_shared_by_two_engines(redis_url):
    now = time.time()
    a, b = AntiReplay(store=RedisStore(redis_url)), AntiReplay(store=RedisStore(redis_url))
    assert a.record_once(b"binder", now) is True
    assert b.record_once(b"binder", now) is False


def test_shared_ticket_keys(redis_url):
    now = time.time()
    k1, k2 = TicketKeys(), TicketKeys()
    n1 = load_shared_ticket_keys(RedisStore(redis_url), k1, now)
    n2 = load_shared_ticket_keys(RedisStore(redis_url), k2, now)
    assert n1 == n2
    assert k2.open(k1.seal(b"state", now)) == b"state"


def test_unreachable_redis_raises_oserror():
    with pytest.raises(OSError):
        RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5).get(b"k", 0)


# ------------------------------------------------------- two server processes
def test_two_cli_servers_share_tickets_and_anti_replay(redis_url, tcpls_cli_server, pki, tmp_path):
    leaf = pki.leaf("ec256")
    args = ["--cert", leaf.cert_file, "--key", leaf.key_file, "--redis", redis_url, "--max-early-data", "4096", "-v"]
    a = tcpls_cli_server(*args)
    b = tcpls_cli_server(*args)
    sess, early = tmp_path / "sess.bin", tmp_path / "early.txt"
    early.write_bytes(b"zero-rtt\n")
    base = ["--cafile", pki.ca_file, "--sni", "localhost", "-v"]

    # A ticket from server A ...
    r1 = run_tcpls_cli(["client", "127.0.0.1", str(a.port), *base, "--sess-out", str(sess)], b"one\n")
    assert r1.returncode == 0 and r1.stdout == b"one\n", r1.stderr
    # ... resumes on server B, with 0-RTT.
    r2 = run_tcpls_cli(["client", "127.0.0.1", str(b.port), *base, "--sess-in", str(sess), "--early-data", str(early)], b"two\n")
    assert r2.returncode == 0, r2.stderr
    assert b"resumed: True" in r2.stderr and b"early data: accepted" in r2.stderr
    assert r2.stdout == b"zero-rtt\ntwo\n"
    wait_until(lambda: b.stderr.count("0-RTT accepted") == 1, T, "B accepted 0-RTT")

    # A 0-RTT ClientHello accepted by A, then replayed byte for byte to B.
    session = Session.from_bytes(sess.read_bytes())
    cfg = TLSConfig()
    cfg.load_verify_locations(pki.ca_file)
    conn = TLSConnection(cfg, server_side=False, server_name="localhost", session=session)
    conn.send_early_data(b"replay me\n")
    conn.start_handshake(time.time())
    first_flight = conn.data_to_send()
    with socket.create_connection(a.address, timeout=T) as s:
        s.sendall(first_flight)
        events: list = []
        while not conn.handshake_complete:
            conn.receive_data(s.recv(65536), time.time())
            s.sendall(conn.data_to_send())
            while (e := conn.next_event()) is not None:
                events.append(e)
        assert any(isinstance(e, ev.EarlyDataAccepted) for e in events)
        conn.close()
        s.sendall(conn.data_to_send())
    wait_until(lambda: a.stderr.count("0-RTT accepted") == 1, T, "A accepted 0-RTT")

    with socket.create_connection(b.address, timeout=T) as s:
        s.sendall(first_flight)
        reply = s.recv(65536)
        assert reply[:1] == b"\x16"  # B answered (ServerHello): it decided on the ClientHello
        time.sleep(0.3)
    assert b.stderr.count("0-RTT accepted") == 1, b.stderr  # the replay was not accepted
