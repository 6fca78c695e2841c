"""kTLS pieces that run anywhere: crypto_info layouts, the engine's offload
hooks (with a simulated kernel), and the fallback on a kernel without kTLS.
The real offload is tested in a VM (test_ktls_vm.py)."""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import threading

import pytest

from tcpls import aio, ktls, sync
from tcpls.errors import TLSError, UsageError
from tcpls.tls import events as ev
from tcpls.tls.config import TLSConfig
from tcpls.tls.enums import CipherSuite, ContentType
from tcpls.tls.key_schedule import traffic_key_iv
from tcpls.tls.offload import InstallKey, SendRecord
from tcpls.tls.protection import RecordDecryptor, RecordEncryptor
from tcpls.tls.suites import suite_info
from tlspair import configs, make_pair

HAS_KTLS = ktls.probe(CipherSuite.TLS_AES_128_GCM_SHA256).available


# ------------------------------------------------------------ crypto_info
@pytest.mark.parametrize(
    "suite, cipher_type, size",
    [
        (CipherSuite.TLS_AES_128_GCM_SHA256, 51, 4 + 8 + 16 + 4 + 8),
        (CipherSuite.TLS_AES_256_GCM_SHA384, 52, 4 + 8 + 32 + 4 + 8),
        (CipherSuite.TLS_CHACHA20_POLY1305_SHA256, 54, 4 + 12 + 32 + 8),
    ],
)
def test_crypto_info_layout(suite, cipher_type, size) -> None:
    c = ktls.KERNEL_CIPHERS[suite]
    key = bytes(range(1, c.key_len + 1))
    iv = bytes(range(100, 112))
    info = ktls.crypto_info(suite, key, iv, 0x0102030405060708)
    assert len(info) == size == c.info_len
    version, ctype = struct.unpack_from("=HH", info)
    assert (version, ctype) == (0x0304, cipher_type)
    # iv (explicit part) | key | salt | rec_seq (big endian)
    explicit, rest = info[4 : 4 + c.iv_len], info[4 + c.iv_len :]
    assert explicit == iv[c.salt_len :]
    assert rest[: c.key_len] == key
    assert rest[c.key_len : c.key_len + c.salt_len] == iv[: c.salt_len]
    assert rest[-8:] == bytes.fromhex("0102030405060708")
    assert ktls.parse_crypto_info(info) == (0x0304, suite, key, iv, 0x0102030405060708)


def test_crypto_info_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        ktls.crypto_info(CipherSuite.TLS_AES_128_GCM_SHA256, bytes(32), bytes(12), 0)
    with pytest.raises(ValueError):
        ktls.crypto_info(CipherSuite.TLS_AES_128_GCM_SHA256, bytes(16), bytes(12), 2**64)
    with pytest.raises(KeyError):
        ktls.crypto_info(CipherSuite.TLS_AES_128_CCM_SHA256, bytes(16), bytes(12), 0)
    assert not ktls.probe(CipherSuite.TLS_AES_128_CCM_SHA256).available


def test_crypto_info_nonce_matches_engine() -> None:
    """The kernel's nonce (salt || iv) XOR seq is the engine's write_iv XOR seq."""
    suite = CipherSuite.TLS_AES_256_GCM_SHA384
    info = suite_info(suite)
    secret = os.urandom(info.hash_len)
    key, iv = traffic_key_iv(info, secret)
    _, _, k, static_iv, seq = ktls.parse_crypto_info(ktls.crypto_info(suite, key, iv, 7))
    enc = RecordEncryptor(info, secret)
    enc.seq = 7
    out: list = []
    enc.seal(ContentType.APPLICATION_DATA, b"hi", out)
    nonce = (int.from_bytes(static_iv, "big") ^ seq).to_bytes(12, "big")
    assert info.aead(k).decrypt(nonce, out[1], out[0]) == b"hi\x17"


# ------------------------------------------------------------ engine hooks, simulated kernel
class FakeKernel:
    """Stands in for kTLS on one side: seals/opens with its own record protection."""

    def __init__(self, conn) -> None:
        state = conn.export_traffic_state()
        info = suite_info(state.cipher_suite)
        self.info = info
        self.tx = RecordEncryptor(info, state.tx_secret)
        self.tx.seq = state.tx_seq
        self.rx = RecordDecryptor(info, state.rx_secret)
        self.rx.seq = state.rx_seq
        self.actions = conn.offload(tx=True, rx=True)

    def perform(self) -> bytes:
        wire: list = []
        for a in self.actions.drain():
            if isinstance(a, SendRecord):
                self.tx.seal(a.content_type, a.data, wire)
            else:
                assert isinstance(a, InstallKey)
                (self.tx if a.direction == "tx" else self.rx).update(a.secret)
        return b"".join(wire)

    def open(self, wire: bytes) -> list[tuple[int, bytes]]:
        out = []
        while wire:
            n = 5 + int.from_bytes(wire[3:5], "big")
            ctype, data = self.rx.open(wire[:5], wire[5:n])
            out.append((ctype, bytes(data)))
            wire = wire[n:]
        return out


def test_engine_offload_key_update_both_ways() -> None:
    p = make_pair(*configs())
    p.pump()
    kern = FakeKernel(p.client)
    # application data: the "kernel" seals, the userspace server opens
    wire: list = []
    kern.tx.seal(ContentType.APPLICATION_DATA, b"from kernel", wire)
    p.server.receive_data(b"".join(wire))
    evs = []
    while (e := p.server.next_event()) is not None:
        evs.append(e)
    assert any(isinstance(e, ev.DataReceived) and e.data == b"from kernel" for e in evs)
    # local KeyUpdate: a handshake record to send, then a new TX key
    p.client.key_update(request_peer_update=True)
    items = kern.actions.drain()
    assert [type(a) for a in items] == [SendRecord, InstallKey] and items[0].content_type == ContentType.HANDSHAKE
    for a in items:
        kern.actions.append(a)
    p.server.receive_data(kern.perform())
    answer = p.server.data_to_send()  # the server's own KeyUpdate, under its old key
    for ctype, data in kern.open(answer):
        p.client.receive_plaintext_record(ctype, data)
    items = kern.actions.drain()
    assert [(type(a), getattr(a, "direction", None)) for a in items] == [(InstallKey, "rx")]
    for a in items:
        kern.actions.append(a)
    kern.perform()
    # both sides on new keys: data flows both ways
    p.server.send_data(b"after update")
    for ctype, data in kern.open(p.server.data_to_send()):
        assert (ctype, data) == (ContentType.APPLICATION_DATA, b"after update")
    wire = []
    kern.tx.seal(ContentType.APPLICATION_DATA, b"kernel after update", wire)
    p.server.receive_data(b"".join(wire))
    # close_notify goes out as an alert record action
    p.client.close()
    (a,) = kern.actions.drain()
    assert isinstance(a, SendRecord) and (a.content_type, a.data) == (ContentType.ALERT, b"\x01\x00")


def test_export_requires_record_boundary_and_flushed_output() -> None:
    p = make_pair(*configs())
    p.pump()
    p.server.send_data(b"x" * 1000)
    wire = p.server.data_to_send()
    p.client.receive_data(wire[:100])
    assert p.client.bytes_to_record_boundary() == len(wire) - 100
    with pytest.raises(UsageError):
        p.client.export_traffic_state()
    p.client.receive_data(wire[100:])
    assert p.client.bytes_to_record_boundary() == 0
    p.client.send_data(b"queued")
    with pytest.raises(UsageError):
        p.client.export_traffic_state()
    p.client.data_to_send()
    p.client.receive_data(wire[:3])
    assert p.client.bytes_to_record_boundary() == 2  # header first


# ------------------------------------------------------------ fallback on a kernel without kTLS
@pytest.fixture
def tls_pair(pki):
    server_cfg = TLSConfig()
    server_cfg.load_cert_chain(pki.leaf().cert_file, pki.leaf().key_file)
    client_cfg = TLSConfig()
    client_cfg.load_verify_locations(cafile=pki.ca_file)
    return client_cfg, server_cfg


def _echo_server(server_cfg, **kw):
    listener = sync.create_server(("127.0.0.1", 0), server_cfg, **kw)
    listener.settimeout(10)
    result: dict = {}

    def serve():
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except (OSError, TLSError) as exc:
                result["error"] = exc
            result["ktls"] = conn.ktls
            result["reason"] = conn.ktls_reason

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return listener, t, result


@pytest.mark.skipif(HAS_KTLS, reason="this kernel has kTLS (the fallback is tested where it has not)")
def test_auto_falls_back_with_reason(tls_pair, caplog, tmp_path) -> None:
    client_cfg, server_cfg = tls_pair
    listener, t, result = _echo_server(server_cfg, ktls="auto")
    caplog.set_level(logging.INFO, logger="tcpls.ktls")
    with sync.connect(listener.getsockname(), client_cfg, server_name="localhost", timeout=10, ktls="auto") as c:
        assert c.ktls is None and "TCP_ULP" in c.ktls_reason
        c.sendall(b"hello")
        assert c.recv(5) == b"hello"
        f = tmp_path / "f.bin"
        f.write_bytes(os.urandom(300_000))
        with open(f, "rb") as fh:
            assert c.sendfile(fh, offset=1000, count=200_000) == 200_000
            assert fh.tell() == 201_000
        got = b""
        while len(got) < 200_000:
            got += c.recv(65536)
        assert got == f.read_bytes()[1000:201_000]
        c.shutdown_write()
        assert c.recv(10) == b""
    t.join(10)
    listener.close()
    assert result["ktls"] is None and "CONFIG_TLS" in result["reason"]
    assert "kTLS not used" in caplog.text and "CONFIG_TLS" in caplog.text


@pytest.mark.skipif(HAS_KTLS, reason="this kernel has kTLS")
def test_required_fails_cleanly(tls_pair) -> None:
    client_cfg, server_cfg = tls_pair
    listener, t, result = _echo_server(server_cfg)
    c = sync.connect(listener.getsockname(), client_cfg, server_name="localhost", timeout=10)
    with c:
        with pytest.raises(ktls.KTLSUnavailable, match="TCP_ULP"):
            c.enable_ktls("required")
        # nothing was changed on the socket: the connection still works in userspace
        assert c.ktls is None
        c.sendall(b"still fine")
        assert c.recv(100) == b"still fine"
    t.join(10)
    listener.close()
    listener, t, _ = _echo_server(server_cfg)
    with pytest.raises(ktls.KTLSUnavailable):
        sync.connect(listener.getsockname(), client_cfg, server_name="localhost", timeout=10, ktls="required")
    t.join(10)
    listener.close()


def test_bad_mode_and_policy(tls_pair) -> None:
    client_cfg, server_cfg = tls_pair
    listener, t, _ = _echo_server(server_cfg)
    with sync.connect(listener.getsockname(), client_cfg, server_name="localhost", timeout=10) as c:
        with pytest.raises(ValueError):
            c.enable_ktls("sometimes")
        with pytest.raises(ValueError):
            c.enable_ktls("auto", key_update="maybe")
        assert c.enable_ktls("off") is False
    t.join(10)
    listener.close()


@pytest.mark.skipif(HAS_KTLS, reason="this kernel has kTLS")
def test_aio_auto_fallback_and_sendfile(tls_pair, tmp_path) -> None:
    client_cfg, server_cfg = tls_pair
    payload = os.urandom(500_000)
    f = tmp_path / "p.bin"
    f.write_bytes(payload)

    async def main():
        async def handler(reader, writer):
            assert await writer.enable_ktls("auto") is False
            assert "TCP_ULP" in writer.ktls_reason
            with open(f, "rb") as fh:
                assert await writer.sendfile(fh) == len(payload)
            writer.close()

        server = await aio.start_server(handler, "127.0.0.1", 0, config=server_cfg)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await aio.open_connection("127.0.0.1", port, config=client_cfg, server_hostname="localhost", ktls="auto")
        assert writer.ktls is None and writer.ktls_reason
        data = await reader.read()
        writer.close()
        server.close()
        await server.wait_closed()
        return data

    assert asyncio.run(main()) == payload
