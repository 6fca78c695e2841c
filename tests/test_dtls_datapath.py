"""The DTLS 1.3 data path of established connections (record protection fast
paths in ``WriteEpoch.protect`` / ``ReadEpoch.open`` and
``DTLSConnection.send_data``): what users rely on, checked against real
engines and against the record layer's general path. No timing here;
``benchmarks/bench_dtls.py`` measures speed.
"""

from __future__ import annotations

import random

import pytest

from tcpls.dtls.connection import DTLSConnection
from tcpls.dtls.record import (
    CT_ALERT,
    CT_APPLICATION_DATA,
    CT_HANDSHAKE,
    AEADCache,
    DropReason,
    ReadEpoch,
    ReceivedRecord,
    RecordNumber,
    WriteEpoch,
    parse_datagram,
)
from tcpls.errors import UsageError
from tcpls.tls import events as ev
from tcpls.tls.config import TLSConfig
from tcpls.tls.enums import CipherSuite, PskKeyExchangeMode
from tcpls.tls.session import ExternalPSK
from tcpls.tls.suites import suite_info

SUITES = [
    CipherSuite.TLS_AES_128_GCM_SHA256,
    CipherSuite.TLS_AES_256_GCM_SHA384,
    CipherSuite.TLS_CHACHA20_POLY1305_SHA256,
]


def pair(suite=CipherSuite.TLS_AES_128_GCM_SHA256, **kw):
    psk = ExternalPSK(b"datapath", bytes(range(32)), "sha256" if suite != CipherSuite.TLS_AES_256_GCM_SHA384 else "sha384")
    modes = [PskKeyExchangeMode.psk_dhe_ke]
    ccfg = TLSConfig(psk=psk, psk_key_exchange_modes=modes, verify_peer=False, cipher_suites=[suite])
    scfg = TLSConfig(psk_lookup=lambda i: psk if i == psk.identity else None, psk_key_exchange_modes=modes, cipher_suites=[suite])
    client = DTLSConnection(ccfg, is_client=True, server_name="localhost", **kw)
    server = DTLSConnection(scfg, is_client=False, client_address=("192.0.2.7", 9), **kw)
    client.start_handshake(0.0)
    pump(client, server)
    assert client.handshake_complete and server.handshake_complete
    drain(client), drain(server)
    return client, server


def pump(a, b, rounds: int = 12) -> None:
    for _ in range(rounds):
        moved = False
        for d in a.datagrams_to_send():
            b.receive_datagram(d, 0.0)
            moved = True
        for d in b.datagrams_to_send():
            a.receive_datagram(d, 0.0)
            moved = True
        if not moved:
            return


def drain(conn) -> list:
    events = []
    while (e := conn.next_event()) is not None:
        events.append(e)
    return events


def data_of(events) -> list[bytes]:
    return [e.data for e in events if isinstance(e, ev.DataReceived)]


@pytest.mark.parametrize("suite", SUITES)
def test_payloads_of_every_size_arrive_intact_both_ways(suite) -> None:
    client, server = pair(suite)
    size = client.max_data_size
    assert size == 1200 - (5 + 1 + 16)  # header with 16-bit seq and length, inner type, tag
    rng = random.Random(suite)
    for sender, receiver in ((client, server), (server, client)):
        sent = [rng.randbytes(n) for n in (0, 1, 2, 15, 16, 17, 100, size - 1, size)]
        for kind, payload in zip((bytes, bytearray, memoryview) * 3, sent):
            sender.send_data(kind(payload))
        datagrams = sender.datagrams_to_send()
        assert len(datagrams) == len(sent)
        assert max(len(d) for d in datagrams) == 1200
        for d in datagrams:
            receiver.receive_datagram(d, 0.0)
        assert data_of(drain(receiver)) == sent


def test_oversized_payload_is_refused_and_nothing_is_sent() -> None:
    client, server = pair()
    with pytest.raises(UsageError):
        client.send_data(bytes(client.max_data_size + 1))
    assert client.datagrams_to_send() == []
    client.send_data(b"still fine")
    for d in client.datagrams_to_send():
        server.receive_datagram(d, 0.0)
    assert data_of(drain(server)) == [b"still fine"]


def test_duplicates_are_dropped_and_reordering_within_the_window_is_delivered() -> None:
    client, server = pair()
    for i in range(50):
        client.send_data(b"msg %d" % i)
    datagrams = client.datagrams_to_send()
    shuffled = datagrams[:]
    random.Random(5).shuffle(shuffled)
    for d in shuffled + datagrams[:10]:  # every record once, then ten replays
        server.receive_datagram(d, 0.0)
    got = data_of(drain(server))
    assert sorted(got) == sorted(b"msg %d" % i for i in range(50))
    assert server.drops.get(DropReason.REPLAY, 0) == 10


def test_automatic_key_update_keeps_data_flowing() -> None:
    client, server = pair(key_update_after=20)
    received = []
    for i in range(30):
        client.send_data(b"r%d" % i)
        pump(client, server)
        received += data_of(drain(server))
    assert received == [b"r%d" % i for i in range(30)]
    assert client.write_epoch == 4  # 3 -> 4 after 20 records, switched once ACKed (§8)
    assert server.read_epochs[-1] == 4


def test_tampered_records_are_dropped_not_delivered() -> None:
    client, server = pair()
    client.send_data(b"genuine")
    (d,) = client.datagrams_to_send()
    for pos in (0, 2, 5, len(d) // 2, len(d) - 1):
        bad = bytearray(d)
        bad[pos] ^= 0x40
        server.receive_datagram(bytes(bad), 0.0)
    assert data_of(drain(server)) == []
    server.receive_datagram(d, 0.0)
    assert data_of(drain(server)) == [b"genuine"]


# --------------------------------------------------------------------------
# Record layer: the fast paths against the general one
# --------------------------------------------------------------------------
@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize("seq_len", [1, 2])
@pytest.mark.parametrize("include_length", [True, False])
@pytest.mark.parametrize("cid", [b"", b"\x01\x02\x03\x04"])
def test_protect_equals_seal_and_opens(suite, seq_len, include_length, cid) -> None:
    info = suite_info(suite)
    secret = bytes(range(info.hash_len))
    a = WriteEpoch(7, info, secret, AEADCache(4))
    b = WriteEpoch(7, info, secret, AEADCache(4))
    r = ReadEpoch(7, info, secret, 64, AEADCache(2))  # evictions on the way
    for i in range(300):  # across the 8-bit wrap
        content = bytes([i & 0xFF]) * (i % 40)
        ct = (CT_APPLICATION_DATA, CT_HANDSHAKE, CT_ALERT)[i % 3]
        number, sealed = a.seal(ct, content, seq_len=seq_len, include_length=include_length, cid=cid, padding=i % 3)
        protected = b.protect(ct, content, seq_len=seq_len, include_length=include_length, cid=cid, padding=i % 3)
        assert number == RecordNumber(7, i) and protected == sealed
        (rec,), drops = parse_datagram(sealed, len(cid))
        assert drops == []
        result = r.open(rec)
        assert isinstance(result, ReceivedRecord)
        assert (result.number, result.content_type, result.data) == (RecordNumber(7, i), ct, content)
    assert b.next_seq == a.next_seq == 300 and b.records_protected == 300


def test_trailing_zeros_of_content_survive_padding_removal_and_bad_arguments_raise() -> None:
    # Invalid inner plaintexts (all zeros, unknown type) are covered with an
    # independent sealer in test_dtls_record.py.
    info = suite_info(CipherSuite.TLS_AES_128_GCM_SHA256)
    w = WriteEpoch(3, info, bytes(32))
    r = ReadEpoch(3, info, bytes(32))
    for content, padding in ((b"", 0), (b"\x00" * 20, 0), (b"x\x00", 7), (b"\x00", 0)):
        (rec,), _ = parse_datagram(w.protect(CT_APPLICATION_DATA, content, padding=padding), 0)
        result = r.open(rec)
        assert isinstance(result, ReceivedRecord) and result.data == content
    with pytest.raises(ValueError):
        w.protect(99, b"x")
    with pytest.raises(ValueError):
        w.protect(CT_APPLICATION_DATA, b"x", seq_len=3)
    with pytest.raises(ValueError):
        w.protect(CT_APPLICATION_DATA, b"x", padding=-1)
    with pytest.raises(ValueError):
        w.protect(CT_APPLICATION_DATA, bytes(2**14 + 1))


# --------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------
@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize("seq_len", [1, 2])
@pytest.mark.parametrize("cid", [b"", b"\x09" * 6])
def test_protect_batch_produces_the_records_protect_would(suite, seq_len, cid) -> None:
    info = suite_info(suite)
    secret = bytes(range(1, info.hash_len + 1))
    one = WriteEpoch(4, info, secret)
    many = WriteEpoch(4, info, secret)
    contents = [bytes([i]) * n for i, n in enumerate((0, 1, 5, 14, 15, 16, 17, 300, 1178, 2**14))] * 30
    expected = [one.protect(CT_APPLICATION_DATA, c, seq_len=seq_len, cid=cid) for c in contents]
    got = many.protect_batch(CT_APPLICATION_DATA, contents[:7], seq_len=seq_len, cid=cid)
    got += many.protect_batch(CT_APPLICATION_DATA, contents[7:], seq_len=seq_len, cid=cid)
    assert got == expected
    assert (many.next_seq, many.records_protected) == (one.next_seq, one.records_protected) == (300, 300)
    with pytest.raises(ValueError):
        many.protect_batch(CT_APPLICATION_DATA, [b"ok", bytes(2**14 + 1)])
    assert many.next_seq == 300  # nothing protected


def test_send_data_batch_matches_send_data_including_key_updates() -> None:
    c1, s1 = pair(key_update_after=10)
    c2, s2 = pair(key_update_after=10)
    chunks = [b"chunk %d" % i for i in range(25)]
    for c in chunks:
        c1.send_data(c)
    c2.send_data_batch([bytearray(c) for c in chunks])
    d1, d2 = c1.datagrams_to_send(), c2.datagrams_to_send()
    assert [len(d) for d in d1] == [len(d) for d in d2]  # 25 records and one KeyUpdate after the 10th
    assert len(d1) == 26
    for d in d2:
        s2.receive_datagram(d, 0.0)
    assert data_of(drain(s2)) == chunks
    with pytest.raises(UsageError):
        c2.send_data_batch([b"fine", bytes(c2.max_data_size + 1)])
    assert c2.datagrams_to_send() == []


def test_send_data_batch_before_the_handshake_waits_like_send_data() -> None:
    psk = ExternalPSK(b"datapath", bytes(range(32)), "sha256")
    ccfg = TLSConfig(psk=psk, psk_key_exchange_modes=[PskKeyExchangeMode.psk_dhe_ke], verify_peer=False)
    client = DTLSConnection(ccfg, is_client=True, server_name="localhost")
    client.send_data_batch([b"early", b"bird"])
    client.start_handshake(0.0)
    scfg = TLSConfig(psk_lookup=lambda i: psk, psk_key_exchange_modes=[PskKeyExchangeMode.psk_dhe_ke])
    server = DTLSConnection(scfg, is_client=False, client_address=("192.0.2.7", 9))
    got = []
    for _ in range(12):
        for d in client.datagrams_to_send():
            server.receive_datagram(d, 0.0)
        for d in server.datagrams_to_send():
            client.receive_datagram(d, 0.0)
        got += data_of(drain(server))
    assert got == [b"early", b"bird"]


def test_compact_state_send_data_batch() -> None:
    from tcpls.dtls.established import compact_connection

    client, server = pair()
    compact = compact_connection(server)
    assert compact is not None
    with pytest.raises(UsageError):
        compact.send_data_batch([b"a", bytes(compact.max_data_size + 1)])
    assert compact.datagrams_to_send() == []
    compact.send_data_batch([b"one", memoryview(b"two"), bytearray(b"three")])
    for d in compact.datagrams_to_send():
        client.receive_datagram(d, 0.0)
    assert data_of(drain(client)) == [b"one", b"two", b"three"]


@pytest.mark.parametrize("size", [600, 1200, 1400])
def test_size_limit_follows_max_datagram_size(size) -> None:
    client, server = pair(max_datagram_size=size)
    for conn in (client, server):
        limit = conn.max_data_size
        assert limit == size - 22
        with pytest.raises(UsageError):
            conn.send_data(bytes(limit + 1))
        with pytest.raises(UsageError):
            conn.send_data_batch([bytes(limit + 1)])
        conn.send_data(bytes(limit))
        conn.send_data_batch([bytes(limit)])
        assert [len(d) for d in conn.datagrams_to_send()] == [size, size]
