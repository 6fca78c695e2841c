"""Key schedule, transcript hash and suites against RFC 8448 (stage by stage)."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from tcpls.errors import InternalError
from tcpls.tls.enums import CipherSuite
from tcpls.tls.key_schedule import (
    EarlySecret,
    HandshakeSecret,
    MasterSecret,
    derive_secret,
    empty_hash,
    export_keying_material,
    finished_verify_data,
    hkdf_expand_label,
    hkdf_extract,
    next_traffic_secret,
    resumption_psk,
    traffic_key_iv,
    verify_finished,
)
from tcpls.tls.suites import SUITES, suite_info
from tcpls.tls.transcript import Transcript, message_hash

try:
    from vectors.rfc8448 import CLIENT_AUTH, HELLO_RETRY, RESUMED_0RTT, SIMPLE_1RTT
except ImportError:  # tests/ is a package
    from tests.vectors.rfc8448 import CLIENT_AUTH, HELLO_RETRY, RESUMED_0RTT, SIMPLE_1RTT

H = "sha256"
SUITE = suite_info(CipherSuite.TLS_AES_128_GCM_SHA256)


def v(section: dict[str, str], name: str) -> bytes:
    return bytes.fromhex(section[name])


def messages(section: dict[str, str], *names: str) -> bytes:
    return b"".join(v(section, n) for n in names)


# Handshake message order per trace, for the transcript checks:
# (messages up to ServerHello, ... up to server Finished, ... up to client Finished)
FLIGHTS = {
    "simple": (
        SIMPLE_1RTT,
        ("client_hello", "server_hello"),
        ("encrypted_extensions", "server_certificate", "server_certificate_verify", "server_finished"),
        ("client_finished",),
    ),
    "resumed": (
        RESUMED_0RTT,
        ("client_hs_record1_payload", "server_hello"),  # the full ClientHello incl. binders
        ("encrypted_extensions", "server_finished"),
        ("end_of_early_data", "client_finished"),
    ),
    "hrr": (
        HELLO_RETRY,
        ("client_hello_1", "hello_retry_request", "client_hello_2", "server_hello"),
        ("encrypted_extensions", "server_certificate", "server_certificate_verify", "server_finished"),
        ("client_finished",),
    ),
    "client_auth": (
        CLIENT_AUTH,
        ("client_hello", "server_hello"),
        (
            "encrypted_extensions",
            "certificate_request",
            "server_certificate",
            "server_certificate_verify",
            "server_finished",
        ),
        ("client_certificate", "client_certificate_verify", "client_finished"),
    ),
}
ALL = pytest.mark.parametrize("trace", list(FLIGHTS))


def _transcript(section: dict[str, str], names: tuple[str, ...]) -> Transcript:
    t = Transcript()
    if names[1] == "hello_retry_request":
        t.update(v(section, names[0]))
        t.set_hash(H)
        t.rewrite_for_hello_retry()
        names = names[1:]
    for n in names:
        t.update(v(section, n))
    t.set_hash(H)
    return t


# ---------------------------------------------------------------- primitives


def test_empty_hash_and_derived() -> None:
    assert empty_hash(H) == v(SIMPLE_1RTT, "empty_hash")
    assert empty_hash("sha384") == hashlib.sha384().digest()
    early = v(SIMPLE_1RTT, "early_secret")
    assert derive_secret(H, early, b"derived", empty_hash(H)) == v(SIMPLE_1RTT, "derived_for_handshake")


def test_hkdf_extract_zero_salt() -> None:
    assert hkdf_extract(H, b"\x00" * 32, b"\x00" * 32) == v(SIMPLE_1RTT, "early_secret")


def test_hkdf_expand_label_matches_trace_info() -> None:
    # RFC 8448 prints HkdfLabel ("info") for the server handshake key: 00 10 09 "tls13 key" 00.
    secret = v(SIMPLE_1RTT, "server_handshake_traffic_secret")
    info = bytes.fromhex("00100974" "6c73313320" "6b657900")
    expected = HKDFExpand(hashes.SHA256(), 16, info).derive(secret)
    assert hkdf_expand_label(H, secret, b"key", b"", 16) == expected == v(SIMPLE_1RTT, "server_handshake_write_key")


@pytest.mark.parametrize("length", [1, 12, 16, 32, 33, 48, 64, 100])
def test_hkdf_expand_label_lengths(length: int) -> None:
    secret = bytes(range(32))
    label = b"tls13 " + b"test"
    info = length.to_bytes(2, "big") + bytes([len(label)]) + label + bytes([3]) + b"ctx"
    assert hkdf_expand_label(H, secret, b"test", b"ctx", length) == HKDFExpand(
        hashes.SHA256(), length, info
    ).derive(secret)


@pytest.mark.parametrize("hash_name", ["sha256", "sha384"])
@pytest.mark.parametrize("prefix", [b"tls13 ", b"dtls13"])
def test_hkdf_expand_label_empty_context_matches_the_rfc_structure(hash_name: str, prefix: bytes) -> None:
    # The HkdfLabel of an empty context is cached per (hash, label, length,
    # prefix): every combination must still give RFC 9846 §7.1's bytes.
    algorithm = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384()}[hash_name]
    secret = bytes(range(48))
    for label, length in ((b"key", 16), (b"key", 32), (b"iv", 12), (b"finished", 48), (b"key", 16)):
        full = prefix + label
        info = length.to_bytes(2, "big") + bytes([len(full)]) + full + b"\x00"
        expected = HKDFExpand(algorithm, length, info).derive(secret)
        assert hkdf_expand_label(hash_name, secret, label, b"", length, prefix) == expected
        assert hkdf_expand_label(hash_name, secret, label, memoryview(b""), length, prefix) == expected


def test_hkdf_expand_label_rejects_long_context_and_unknown_hash() -> None:
    with pytest.raises(ValueError):
        hkdf_expand_label(H, bytes(32), b"test", bytes(256), 32)
    with pytest.raises(ValueError):
        hkdf_expand_label("md5", bytes(32), b"key", b"", 16)


def test_unknown_hash() -> None:
    with pytest.raises(ValueError):
        EarlySecret("md5")


# ---------------------------------------------------------------- suites


def test_suites() -> None:
    assert set(SUITES) >= {0x1301, 0x1302, 0x1303}
    s = suite_info(0x1302)
    assert (s.hash_name, s.hash_len, s.key_len, s.iv_len) == ("sha384", 48, 32, 12)
    assert isinstance(s.hash_algorithm(), hashes.SHA384)
    c = suite_info(CipherSuite.TLS_CHACHA20_POLY1305_SHA256)
    assert (c.hash_name, c.key_len) == ("sha256", 32)
    assert c.record_limit >= 2**64 and s.record_limit == int(2**24.5)
    ccm8 = suite_info(0x1305)
    assert (ccm8.hash_name, ccm8.key_len, ccm8.tag_len) == ("sha256", 16, 8)
    with pytest.raises(KeyError):
        suite_info(0x1306)
    with pytest.raises(KeyError):
        suite_info(0xC02F)


# ---------------------------------------------------------------- ECDHE inputs


@pytest.mark.parametrize("trace", ["simple", "resumed", "client_auth"])
def test_x25519_shared_secret(trace: str) -> None:
    section = FLIGHTS[trace][0]
    priv = x25519.X25519PrivateKey.from_private_bytes(v(section, "client_private_key"))
    assert priv.public_key().public_bytes_raw() == v(section, "client_public_key")
    peer = x25519.X25519PublicKey.from_public_bytes(v(section, "server_public_key"))
    assert priv.exchange(peer) == v(section, "shared_secret")


def test_p256_shared_secret_hrr() -> None:
    d = int.from_bytes(v(HELLO_RETRY, "client_private_key"), "big")
    priv = ec.derive_private_key(d, ec.SECP256R1())
    peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), v(HELLO_RETRY, "server_public_key"))
    assert priv.exchange(ec.ECDH(), peer) == v(HELLO_RETRY, "shared_secret")


# ---------------------------------------------------------------- transcript


@ALL
def test_transcript_hashes(trace: str) -> None:
    section, to_sh, to_sf, to_cf = FLIGHTS[trace]
    t = _transcript(section, to_sh)
    assert t.digest() == v(section, "th_server_hello")
    assert t.digest() == v(section, "th_server_hello")  # digest() does not consume
    for n in to_sf:
        t.update(v(section, n))
    assert t.digest() == v(section, "th_server_finished")
    for n in to_cf:
        t.update(v(section, n))
    assert t.digest() == v(section, "th_client_finished")


def test_transcript_hash_known_upfront_and_hrr() -> None:
    t = Transcript(H)
    t.update(v(HELLO_RETRY, "client_hello_1"))
    t.rewrite_for_hello_retry()
    t.update(messages(HELLO_RETRY, "hello_retry_request", "client_hello_2", "server_hello"))
    assert t.digest() == v(HELLO_RETRY, "th_server_hello")
    ch1 = v(HELLO_RETRY, "client_hello_1")
    synthetic = message_hash(H, ch1)
    assert synthetic[:4] == bytes([254, 0, 0, 32]) and synthetic[4:] == hashlib.sha256(ch1).digest()


def test_transcript_errors_and_copy() -> None:
    t = Transcript()
    t.update(b"\x01\x00\x00\x00")
    with pytest.raises(InternalError):
        t.digest()
    with pytest.raises(InternalError):
        t.rewrite_for_hello_retry()
    t.set_hash(H)
    t.set_hash(H)  # idempotent
    with pytest.raises(InternalError):
        t.set_hash("sha384")
    c = t.copy()
    c.update(b"x")
    assert t.digest() == hashlib.sha256(b"\x01\x00\x00\x00").digest()
    assert c.digest() == hashlib.sha256(b"\x01\x00\x00\x00x").digest()


def test_psk_binder_resumed() -> None:
    s = RESUMED_0RTT
    prefix = v(s, "client_hello_prefix")
    t = Transcript(H)
    assert t.digest_with(prefix) == v(s, "th_binder")
    assert t.digest() == empty_hash(H)  # digest_with did not record
    early = EarlySecret(H, v(s, "psk"))
    assert early.secret == v(s, "early_secret")
    binder_key = early.binder_key(external=False)
    assert binder_key == v(s, "binder_key")
    assert early.binder_key(external=True) != binder_key
    assert finished_verify_data(H, binder_key, v(s, "th_binder")) == v(s, "binder")
    # The full ClientHello = prefix || binders (u16 length, u8 length, binder).
    full = v(s, "client_hs_record1_payload")
    assert full.startswith(prefix) and full.endswith(v(s, "binder"))


# ---------------------------------------------------------------- key schedule


@ALL
def test_key_schedule(trace: str) -> None:
    section = FLIGHTS[trace][0]
    psk = bytes.fromhex(section["psk"]) if "psk" in section else None
    early = EarlySecret(H, psk)
    assert early.secret == v(section, "early_secret")

    hs = early.handshake_secret(v(section, "shared_secret"))
    assert isinstance(hs, HandshakeSecret)
    assert hs.secret == v(section, "handshake_secret")
    th = v(section, "th_server_hello")
    assert hs.client_handshake_traffic_secret(th) == v(section, "client_handshake_traffic_secret")
    assert hs.server_handshake_traffic_secret(th) == v(section, "server_handshake_traffic_secret")

    ms = hs.master_secret()
    assert isinstance(ms, MasterSecret)
    assert ms.secret == v(section, "master_secret")
    th = v(section, "th_server_finished")
    assert ms.client_application_traffic_secret(th) == v(section, "client_application_traffic_secret")
    assert ms.server_application_traffic_secret(th) == v(section, "server_application_traffic_secret")
    assert ms.exporter_master_secret(th) == v(section, "exporter_master_secret")
    assert ms.resumption_master_secret(v(section, "th_client_finished")) == v(section, "resumption_master_secret")


def test_stages_are_typed() -> None:
    early = EarlySecret(H)
    assert not hasattr(early, "client_application_traffic_secret")
    hs = early.handshake_secret(None)
    assert not hasattr(hs, "client_early_traffic_secret")
    assert not hasattr(hs.master_secret(), "client_handshake_traffic_secret")


def test_psk_ke_zero_shared_secret() -> None:
    early = EarlySecret(H)
    assert early.handshake_secret(None).secret == early.handshake_secret(b"\x00" * 32).secret


def test_early_secrets_resumed() -> None:
    s = RESUMED_0RTT
    early = EarlySecret(H, v(s, "psk"))
    th = v(s, "th_client_hello")
    assert th == hashlib.sha256(v(s, "client_hs_record1_payload")).digest()
    assert early.client_early_traffic_secret(th) == v(s, "client_early_traffic_secret")
    assert early.early_exporter_master_secret(th) == v(s, "early_exporter_master_secret")
    assert traffic_key_iv(SUITE, v(s, "client_early_traffic_secret")) == (
        v(s, "client_early_write_key"),
        v(s, "client_early_write_iv"),
    )


@ALL
def test_traffic_keys(trace: str) -> None:
    section = FLIGHTS[trace][0]
    for who in ("client", "server"):
        for stage in ("handshake", "application"):
            key, iv = traffic_key_iv(SUITE, v(section, f"{who}_{stage}_traffic_secret"))
            assert key == v(section, f"{who}_{stage}_write_key")
            assert iv == v(section, f"{who}_{stage}_write_iv")


@ALL
def test_finished(trace: str) -> None:
    section, to_sh, to_sf, to_cf = FLIGHTS[trace]
    t = _transcript(section, to_sh)
    for n in to_sf[:-1]:
        t.update(v(section, n))
    server_base = v(section, "server_handshake_traffic_secret")
    assert v(section, "server_finished_base_key") == server_base
    verify = finished_verify_data(H, server_base, t.digest())
    assert verify == v(section, "server_verify_data")
    assert v(section, "server_finished") == bytes([20, 0, 0, 32]) + verify
    assert verify_finished(H, server_base, t.digest(), verify)
    assert not verify_finished(H, server_base, t.digest(), bytes(32))
    t.update(v(section, to_sf[-1]))
    for n in to_cf[:-1]:
        t.update(v(section, n))
    client_base = v(section, "client_handshake_traffic_secret")
    assert finished_verify_data(H, client_base, t.digest()) == v(section, "client_verify_data")


def test_resumption_psk() -> None:
    s = SIMPLE_1RTT
    psk = resumption_psk(H, v(s, "resumption_master_secret"), v(s, "ticket_nonce"))
    assert psk == v(s, "resumption_psk")
    assert psk == v(RESUMED_0RTT, "psk")  # §4 resumes the §3 ticket


def test_next_traffic_secret() -> None:
    secret = v(SIMPLE_1RTT, "client_application_traffic_secret")
    expected = HKDFExpand(hashes.SHA256(), 32, b"\x00\x20\x11tls13 traffic upd\x00").derive(secret)
    assert next_traffic_secret(H, secret) == expected
    assert next_traffic_secret("sha384", bytes(48)) != next_traffic_secret("sha384", bytes(47) + b"\x01")
    assert len(next_traffic_secret("sha384", bytes(48))) == 48


def test_exporter() -> None:
    secret = v(SIMPLE_1RTT, "exporter_master_secret")
    label = b"EXPORTER-test"
    # Independent computation of §7.5 with the raw primitives.
    inner_label = b"tls13 " + label
    derived = HKDFExpand(
        hashes.SHA256(), 32, b"\x00\x20" + bytes([len(inner_label)]) + inner_label + b"\x20" + empty_hash(H)
    ).derive(secret)
    ctx_hash = hashlib.sha256(b"context").digest()
    expected = HKDFExpand(hashes.SHA256(), 42, b"\x00\x2a\x0etls13 exporter\x20" + ctx_hash).derive(derived)
    assert export_keying_material(H, secret, label, b"context", 42) == expected
    assert export_keying_material(H, secret, label, b"", 16) != export_keying_material(H, secret, b"x", b"", 16)


def test_sha384_schedule_runs() -> None:
    early = EarlySecret("sha384")
    assert len(early.secret) == 48
    ms = early.handshake_secret(bytes(32)).master_secret()
    assert len(ms.client_application_traffic_secret(hashlib.sha384().digest())) == 48
    key, iv = traffic_key_iv(suite_info(0x1302), ms.secret)
    assert (len(key), len(iv)) == (32, 12)
