"""DTLS 1.3 record layer (RFC 9147 §4): framing, reconstruction, record
number encryption, protection, replay window, AEAD limits, epoch rules."""

from __future__ import annotations

import random

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpls.dtls.record import (
    CT_ACK,
    CT_ALERT,
    CT_APPLICATION_DATA,
    CT_HANDSHAKE,
    AEADLimits,
    CiphertextRecord,
    DropReason,
    PlaintextRecord,
    ReadEpoch,
    RecordLayer,
    RecordNumber,
    ReplayWindow,
    WriteEpoch,
    content_type_allowed,
    derive_epoch_keys,
    encode_plaintext,
    encode_unified_header,
    handshake_type_allowed,
    parse_datagram,
    reconstruct_epoch,
    reconstruct_seq,
    record_number_mask,
)
from tcpls.errors import LocalProtocolError
from tcpls.tls.enums import CipherSuite, HandshakeType
from tcpls.tls.key_schedule import (
    DTLS13_LABEL_PREFIX,
    TLS13_LABEL_PREFIX,
    EarlySecret,
    derive_secret,
    empty_hash,
    hkdf_expand_label,
    hkdf_extract,
    traffic_key_iv,
)
from tcpls.tls.suites import suite_info

SUITES = [
    CipherSuite.TLS_AES_128_GCM_SHA256,
    CipherSuite.TLS_AES_256_GCM_SHA384,
    CipherSuite.TLS_CHACHA20_POLY1305_SHA256,
    CipherSuite.TLS_AES_128_CCM_SHA256,
]
SUITE_IDS = [s.name for s in SUITES]


def _secret(suite: int, tag: bytes = b"a") -> bytes:
    info = suite_info(suite)
    return (tag * info.hash_len)[: info.hash_len]


def _pair(suite: int = CipherSuite.TLS_AES_128_GCM_SHA256, epoch: int = 2, window: int = 128):
    s = suite_info(suite)
    return WriteEpoch(epoch, s, _secret(suite)), ReadEpoch(epoch, s, _secret(suite), window)


# ---------------------------------------------------------------- key derivation
def _manual_label(label: bytes, length: int, prefix: bytes, context: bytes = b"") -> bytes:
    full = prefix + label
    return length.to_bytes(2, "big") + bytes((len(full),)) + full + bytes((len(context),)) + context


@pytest.mark.parametrize("suite", SUITES, ids=SUITE_IDS)
def test_epoch_keys_use_dtls13_prefix_and_sn_label(suite: int) -> None:
    info = suite_info(suite)
    secret = _secret(suite)
    h = hashes.SHA256() if info.hash_name == "sha256" else hashes.SHA384()
    keys = derive_epoch_keys(info, secret)
    # §5.9: "dtls13" with no trailing space; §4.2.3: "sn", key_length bytes.
    assert keys.key == HKDFExpand(h, info.key_len, _manual_label(b"key", info.key_len, b"dtls13")).derive(secret)
    assert keys.iv == HKDFExpand(h, 12, _manual_label(b"iv", 12, b"dtls13")).derive(secret)
    assert keys.sn_key == HKDFExpand(h, info.key_len, _manual_label(b"sn", info.key_len, b"dtls13")).derive(secret)
    assert (keys.key, keys.iv) != traffic_key_iv(info, secret)


def test_key_schedule_prefix_is_additive_and_cached_per_prefix() -> None:
    h = "sha256"
    # Interleave TLS and DTLS so that a cache keyed without the prefix would leak.
    for _ in range(2):
        tls = EarlySecret(h).handshake_secret(b"\x01" * 32)
        dtls = EarlySecret(h, prefix=DTLS13_LABEL_PREFIX).handshake_secret(b"\x01" * 32)
        early = hkdf_extract(h, b"\x00" * 32, b"\x00" * 32)
        for prefix, stage in ((TLS13_LABEL_PREFIX, tls), (DTLS13_LABEL_PREFIX, dtls)):
            salt = derive_secret(h, early, b"derived", empty_hash(h), prefix)
            assert stage.secret == hkdf_extract(h, salt, b"\x01" * 32)
            assert stage.prefix == prefix
            ms = stage.master_secret()
            assert ms.prefix == prefix
            salt2 = derive_secret(h, stage.secret, b"derived", empty_hash(h), prefix)
            assert ms.secret == hkdf_extract(h, salt2, b"\x00" * 32)
            th = b"\x02" * 32
            assert ms.client_application_traffic_secret(th) == hkdf_expand_label(
                h, ms.secret, b"c ap traffic", th, 32, prefix
            )
        assert tls.secret != dtls.secret
    assert hkdf_expand_label(h, b"k" * 32, b"key", b"", 16) == hkdf_expand_label(
        h, b"k" * 32, b"key", b"", 16, TLS13_LABEL_PREFIX
    )


# ---------------------------------------------------------------- framing
@given(
    ct=st.sampled_from([CT_ALERT, CT_HANDSHAKE, CT_ACK]),
    seq=st.integers(0, 2**48 - 1),
    fragment=st.binary(min_size=1, max_size=300),
)
def test_plaintext_round_trip(ct: int, seq: int, fragment: bytes) -> None:
    data = encode_plaintext(ct, seq, fragment)
    assert data[:1] == bytes((ct,)) and data[1:3] == b"\xfe\xfd" and data[3:5] == b"\x00\x00"
    records, drops = parse_datagram(data)
    assert drops == []
    assert records == [PlaintextRecord(ct, 0xFEFD, 0, seq, fragment)]


def test_plaintext_encode_rejects_bad_input() -> None:
    for args in ((CT_APPLICATION_DATA, 0, b"x"), (CT_HANDSHAKE, 0, b""), (CT_HANDSHAKE, 2**48, b"x")):
        with pytest.raises(ValueError):
            encode_plaintext(*args)


def test_unified_header_bits_match_the_spec_figures() -> None:
    # §4 figure: minimal header 0|0|1|0|0|0|E|E then an 8-bit sequence number.
    assert encode_unified_header(3, 0x1FF, seq_len=1) == bytes((0b00100011, 0xFF))
    # §4 figure: full header 0|0|1|1|1|1|E|E, CID, 16-bit sequence, 16-bit length.
    assert encode_unified_header(6, 0x1234, seq_len=2, length=0x56, cid=b"\xaa\xbb") == bytes(
        (0b00111110, 0xAA, 0xBB, 0x12, 0x34, 0x00, 0x56)
    )


@given(
    epoch_bits=st.integers(0, 3),
    seq_len=st.sampled_from([1, 2]),
    with_length=st.booleans(),
    cid=st.binary(max_size=8),
    seq=st.integers(0, 2**16 - 1),
    body=st.binary(min_size=16, max_size=200),
)
def test_ciphertext_header_round_trip(epoch_bits, seq_len, with_length, cid, seq, body) -> None:
    header = encode_unified_header(epoch_bits, seq, seq_len=seq_len, length=len(body) if with_length else None, cid=cid)
    records, drops = parse_datagram(header + body, cid_length=len(cid))
    assert drops == []
    (rec,) = records
    assert isinstance(rec, CiphertextRecord)
    assert (rec.header, rec.epoch_bits, rec.seq_len, rec.cid, rec.encrypted_record) == (
        header,
        epoch_bits,
        seq_len,
        cid,
        body,
    )
    assert int.from_bytes(header[1 + len(cid) : 1 + len(cid) + seq_len], "big") == seq % (1 << (8 * seq_len))


def test_several_records_per_datagram() -> None:
    w, r = _pair()
    p1 = encode_plaintext(CT_HANDSHAKE, 7, b"hello")
    _, c1 = w.seal(CT_HANDSHAKE, b"one")
    _, c2 = w.seal(CT_APPLICATION_DATA, b"two", include_length=False)  # last: no length
    records, drops = parse_datagram(p1 + c1 + c2)
    assert drops == [] and len(records) == 3
    assert isinstance(records[0], PlaintextRecord) and records[0].fragment == b"hello"
    opened = [r.open(rec) for rec in records[1:]]
    assert [(o.content_type, o.data) for o in opened] == [(CT_HANDSHAKE, b"one"), (CT_APPLICATION_DATA, b"two")]
    assert [o.number for o in opened] == [RecordNumber(2, 0), RecordNumber(2, 1)]


@pytest.mark.parametrize(
    "data, cid_length, reason",
    [
        (b"\x17\xfe\xfd" + bytes(10), 0, DropReason.NOT_DTLS13),  # DTLS 1.2 application_data
        (b"\x14\xfe\xfd" + bytes(11), 0, DropReason.NOT_DTLS13),  # change_cipher_spec
        (b"\x19" + bytes(20), 0, DropReason.NOT_DTLS13),  # tls12_cid
        (b"\x40" + bytes(20), 0, DropReason.NOT_DTLS13),  # 010xxxxx
        (b"\x16\xfe\xfd\x00", 0, DropReason.TRUNCATED),
        (b"\x16\xfe\xfd\x00\x00" + bytes(6) + b"\x00\x05abc", 0, DropReason.LENGTH_EXCEEDS_DATAGRAM),
        (b"\x16\xfe\xfd\x00\x01" + bytes(6) + b"\x00\x01x", 0, DropReason.PLAINTEXT_EPOCH),
        (b"\x16\xfe\xfd\x00\x00" + bytes(6) + b"\x00\x00", 0, DropReason.EMPTY_RECORD),
        (b"\x15\xfe\xfd\x00\x00" + bytes(6) + b"\x40\x01" + bytes(0x4001), 0, DropReason.RECORD_TOO_LONG),
        (b"\x2e\x00", 0, DropReason.TRUNCATED),
        (b"\x2e\x00\x00\x00\x20" + bytes(16), 0, DropReason.LENGTH_EXCEEDS_DATAGRAM),
        (b"\x2e\x00\x00\x00\x0f" + bytes(15), 0, DropReason.CIPHERTEXT_TOO_SHORT),
        (b"\x22\x00" + bytes(15), 0, DropReason.CIPHERTEXT_TOO_SHORT),
        (b"\x3e\x01\x00\x00" + bytes(16), 0, DropReason.UNEXPECTED_CID),
        (b"\x2e\x00\x00" + bytes(16), 1, DropReason.MISSING_CID),
        (b"\x3e\x01\x00\x00\x00\x10" + bytes(16) + b"\x3e\x02\x00\x00\x00\x10" + bytes(16), 1, DropReason.WRONG_CID),
    ],
)
def test_invalid_records_are_dropped_with_a_reason(data: bytes, cid_length: int, reason: DropReason) -> None:
    records, drops = parse_datagram(data, cid_length)
    assert drops[-1] is reason
    if reason is DropReason.WRONG_CID:
        assert len(records) == 1  # the first record stays, the rest is discarded (§4)
    else:
        assert records == []


def test_a_bad_record_does_not_hide_the_next_one_when_framing_is_intact() -> None:
    bad = b"\x16\xfe\xfd\x00\x01" + bytes(6) + b"\x00\x01x"  # epoch 1 plaintext
    good = encode_plaintext(CT_HANDSHAKE, 1, b"y")
    records, drops = parse_datagram(bad + good)
    assert drops == [DropReason.PLAINTEXT_EPOCH]
    assert [r.fragment for r in records] == [b"y"]  # type: ignore[union-attr]


def _layer_pair(suite: int = CipherSuite.TLS_AES_128_GCM_SHA256, **kw):
    a, b = RecordLayer(**kw), RecordLayer(**kw)
    info = suite_info(suite)
    for epoch in (1, 2, 3):
        a.install_write_epoch(epoch, info, _secret(suite, bytes((epoch,))))
        b.install_read_epoch(epoch, info, _secret(suite, bytes((epoch,))))
    return a, b


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=120), cid_length=st.integers(0, 3))
def test_random_datagrams_never_raise(data: bytes, cid_length: int) -> None:
    parse_datagram(data, cid_length)
    _, b = _layer_pair(receive_cid=b"\x01" * cid_length)
    records, drops = b.receive_datagram(data)
    assert records == [] or all(not r.protected for r in records)


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32), flips=st.integers(1, 4))
def test_mutated_protected_datagrams_are_dropped_not_raised(seed: int, flips: int) -> None:
    rng = random.Random(seed)
    a, b = _layer_pair()
    datagram = bytearray(b"".join(a.seal(CT_HANDSHAKE, rng.randbytes(rng.randint(1, 60)), 2)[1] for _ in range(3)))
    for _ in range(flips):
        datagram[rng.randrange(len(datagram))] ^= 1 << rng.randrange(8)
    try:
        records, drops = b.receive_datagram(bytes(datagram))
    except LocalProtocolError:  # pragma: no cover - the record layer never raises
        pytest.fail("record layer raised")
    assert len(records) + len(drops) >= 1


# ---------------------------------------------------------------- reconstruction
@given(nbits=st.sampled_from([8, 16]), data=st.data())
def test_sequence_reconstruction_recovers_numbers_near_the_expected_one(nbits: int, data) -> None:
    half = 1 << (nbits - 1)
    base = data.draw(st.sampled_from([0, 1, half, 2**nbits - 1, 2**nbits, 2**48 - 3, 2**48, 2**63]))
    expected = data.draw(st.integers(max(0, base - 3 * half), base + 3 * half))
    seq = data.draw(st.integers(max(0, expected - half + 1), expected + half))
    assert reconstruct_seq(expected, seq % (1 << nbits), nbits) == seq


@pytest.mark.parametrize(
    "expected, bits, nbits, seq",
    [
        (0x100, 0x00, 8, 0x100),  # after 0xFF: wrap of the 8-bit field
        (0x100, 0x02, 8, 0x102),
        (0x100, 0xFE, 8, 0xFE),  # a late record from before the wrap
        (0x0, 0xFF, 8, 0xFF),  # nothing below zero
        (0x1_0000, 0x0000, 16, 0x1_0000),
        (0x1_0000, 0xFFFF, 16, 0xFFFF),
        (0x2_FFF0, 0x0005, 16, 0x3_0005),
        (2**48 - 1, 0x00, 8, 2**48),
    ],
)
def test_sequence_reconstruction_examples(expected: int, bits: int, nbits: int, seq: int) -> None:
    assert reconstruct_seq(expected, bits, nbits) == seq


def test_epoch_reconstruction() -> None:
    # During the handshake epochs 1, 2, 3 are unambiguous (§4.2.2).
    assert [reconstruct_epoch(b, {0: 0, 1: 0, 2: 0, 3: 0}) for b in range(4)] == [None, 1, 2, 3]
    # Afterwards: the newest epoch with matching bits.
    assert reconstruct_epoch(0, [3, 4]) == 4
    assert reconstruct_epoch(3, [3, 4]) == 3
    assert reconstruct_epoch(1, [5, 6, 9]) == 9
    assert reconstruct_epoch(2, [3, 4, 5]) is None


def test_reconstruction_across_8_and_16_bit_wraps_end_to_end() -> None:
    for seq_len in (1, 2):
        w, r = _pair()
        w.next_seq = (1 << (8 * seq_len)) - 3
        r.window.mark(w.next_seq - 1)  # the highest deprotected so far
        for _ in range(6):
            rn, record = w.seal(CT_HANDSHAKE, b"x", seq_len=seq_len)
            (rec,), _ = parse_datagram(record)
            got = r.open(rec)  # type: ignore[arg-type]
            assert not isinstance(got, DropReason), got
            assert got.number == rn


# ---------------------------------------------------------------- record number encryption
@pytest.mark.parametrize("suite", SUITES, ids=SUITE_IDS)
def test_record_number_encryption_round_trip_and_mask(suite: int) -> None:
    info = suite_info(suite)
    keys = derive_epoch_keys(info, _secret(suite))
    w, r = _pair(suite)
    changed = 0
    for i in range(64):
        rn, record = w.seal(CT_HANDSHAKE, bytes([i]) * (i + 1))
        (rec,), _ = parse_datagram(record)
        ciphertext = rec.encrypted_record  # type: ignore[union-attr]
        mask = record_number_mask(info, keys.sn_key, ciphertext)
        plain_bits = int.from_bytes(bytes(a ^ b for a, b in zip(record[1:3], mask[:2])), "big")
        assert plain_bits == rn.seq
        changed += record[1:3] != rn.seq.to_bytes(2, "big")
        assert r.open(rec).number == rn  # type: ignore[arg-type, union-attr]
    assert changed > 60  # the sequence number is really hidden


@pytest.mark.parametrize("suite", [s for s in SUITES if s != CipherSuite.TLS_CHACHA20_POLY1305_SHA256])
def test_aes_mask_is_one_aes_block_of_the_sample(suite: int) -> None:
    key = bytes(range(suite_info(suite).key_len))
    sample = bytes(range(100, 132))
    # AES-ECB(k, x) is the first CTR keystream block with counter block x.
    expected = Cipher(algorithms.AES(key), modes.CTR(sample[:16])).encryptor().update(bytes(16))
    assert record_number_mask(suite_info(suite), key, sample) == expected


def test_chacha_mask_reads_the_counter_from_the_first_four_bytes() -> None:
    info = suite_info(CipherSuite.TLS_CHACHA20_POLY1305_SHA256)
    key = bytes(range(32))
    nonce = bytes(range(40, 52))
    stream = Cipher(algorithms.ChaCha20(key, bytes(4) + nonce), mode=None).encryptor().update(bytes(64 * 4))
    for counter in (0, 1, 3):
        # Ciphertext[0..3] is the 32-bit block counter (RFC 8439 words are
        # little-endian), Ciphertext[4..15] the nonce (§4.2.3).
        sample = counter.to_bytes(4, "little") + nonce + b"tail"
        assert record_number_mask(info, key, sample) == stream[64 * counter : 64 * counter + 16]


def test_aad_is_the_header_before_record_number_encryption_and_nonce_excludes_epoch() -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    suite = CipherSuite.TLS_AES_128_GCM_SHA256
    info = suite_info(suite)
    keys = derive_epoch_keys(info, _secret(suite))
    w = WriteEpoch(2, info, _secret(suite))
    w.next_seq = 0x1234
    _, record = w.seal(CT_APPLICATION_DATA, b"payload", seq_len=2)
    header, ciphertext = record[:5], record[5:]
    mask = record_number_mask(info, keys.sn_key, ciphertext)
    clear_header = bytes((header[0], header[1] ^ mask[0], header[2] ^ mask[1])) + header[3:]
    assert clear_header[1:3] == b"\x12\x34"
    nonce = (int.from_bytes(keys.iv, "big") ^ 0x1234).to_bytes(12, "big")
    assert AESGCM(keys.key).decrypt(nonce, ciphertext, clear_header) == b"payload\x17"
    # The epoch is not in the nonce (§4): the same keys in epoch 3 give the
    # same encrypted bytes, only the tag (AAD has other epoch bits) differs.
    w3 = WriteEpoch(3, info, _secret(suite))
    w3.next_seq = 0x1234
    _, record6 = w3.seal(CT_APPLICATION_DATA, b"payload", seq_len=2)
    assert record6[5:-16] == ciphertext[:-16] and record6[-16:] != ciphertext[-16:]


# ---------------------------------------------------------------- protection, replay, limits
def test_replay_window_against_a_model() -> None:
    rng = random.Random(5)
    for size in (1, 8, 64, 200):
        window = ReplayWindow(size)
        seen: set[int] = set()
        highest = -1
        for _ in range(3000):
            seq = max(0, highest + rng.randint(-size - 5, 8))
            model = seq in seen or (highest >= 0 and seq <= highest - size)
            assert window.is_replay(seq) == model, (size, seq, highest)
            if not model:
                window.mark(seq)
                seen.add(seq)
                highest = max(highest, seq)
            assert window.next_expected == highest + 1


def test_replayed_and_forged_records_are_dropped() -> None:
    w, r = _pair(window=32)
    records = [w.seal(CT_HANDSHAKE, b"m%d" % i)[1] for i in range(40)]
    parsed = [parse_datagram(x)[0][0] for x in records]
    assert r.open(parsed[0]).data == b"m0"  # type: ignore[union-attr, arg-type]
    assert r.open(parsed[0]) is DropReason.REPLAY  # type: ignore[arg-type]
    assert r.open(parsed[39]).data == b"m39"  # type: ignore[union-attr, arg-type]
    assert r.open(parsed[5]) is DropReason.REPLAY  # type: ignore[arg-type] # left of the window
    assert r.open(parsed[20]).data == b"m20"  # type: ignore[union-attr, arg-type] # late but inside
    forged = bytearray(records[30])
    forged[-1] ^= 1
    (rec,), _ = parse_datagram(bytes(forged))
    assert r.open(rec) is DropReason.AUTHENTICATION_FAILED  # type: ignore[arg-type]
    assert r.failed_decryptions == 1
    # The window was not touched by the forgery: the genuine record still opens.
    assert r.open(parsed[30]).data == b"m30"  # type: ignore[union-attr, arg-type]


def test_aead_limits() -> None:
    gcm = suite_info(CipherSuite.TLS_AES_128_GCM_SHA256)
    ccm = suite_info(CipherSuite.TLS_AES_128_CCM_SHA256)
    chacha = suite_info(CipherSuite.TLS_CHACHA20_POLY1305_SHA256)
    w, r = _pair()
    assert w.limits == AEADLimits(int(2**24.5), 2**36)
    assert ReadEpoch(2, ccm, _secret(ccm.suite)).limits == AEADLimits(2**23, int(2**23.5))
    assert ReadEpoch(2, chacha, _secret(chacha.suite)).limits.integrity == 2**36
    w.limits = r.limits = AEADLimits(3, 2)
    for _ in range(3):
        assert not w.key_usage_exhausted
        w.seal(CT_HANDSHAKE, b"x")
    assert w.key_usage_exhausted
    bogus = CiphertextRecord(b"\x2a\x00", 2, 1, b"", bytes(32))
    for i in range(3):
        assert not r.forgery_limit_reached
        assert r.open(bogus) is DropReason.AUTHENTICATION_FAILED
    assert r.forgery_limit_reached
    assert gcm.suite  # keep the name used


def _raw_seal(suite: int, secret: bytes, epoch: int, seq: int, inner: bytes) -> bytes:
    """An independent sealer (for plaintexts WriteEpoch refuses to build)."""
    info = suite_info(suite)
    keys = derive_epoch_keys(info, secret)
    header = encode_unified_header(epoch, seq, seq_len=2, length=len(inner) + 16)
    nonce = (int.from_bytes(keys.iv, "big") ^ seq).to_bytes(12, "big")
    ct = info.aead(keys.key).encrypt(nonce, inner, header)
    mask = record_number_mask(info, keys.sn_key, ct)
    return bytes((header[0], header[1] ^ mask[0], header[2] ^ mask[1])) + header[3:] + ct


@pytest.mark.parametrize("suite", SUITES, ids=SUITE_IDS)
def test_independent_sealer_interoperates(suite: int) -> None:
    _, r = _pair(suite)
    (rec,), _ = parse_datagram(_raw_seal(suite, _secret(suite), 2, 9, b"abc\x16\x00\x00"))
    got = r.open(rec)  # type: ignore[arg-type]
    assert (got.number, got.content_type, got.data) == (RecordNumber(2, 9), CT_HANDSHAKE, b"abc")  # type: ignore[union-attr]


@pytest.mark.parametrize("inner", [bytes(10), b"abc\x14", b"abc\x18\x00"])
def test_invalid_inner_content_type_is_dropped(inner: bytes) -> None:
    suite = CipherSuite.TLS_AES_128_GCM_SHA256
    _, r = _pair(suite)
    (rec,), _ = parse_datagram(_raw_seal(suite, _secret(suite), 2, 0, inner))
    assert r.open(rec) is DropReason.BAD_INNER_CONTENT_TYPE  # type: ignore[arg-type]
    assert r.window.highest == -1  # invalid records do not move the window (§4.5.2)


# ---------------------------------------------------------------- epochs and the record layer
def test_epoch_content_type_rules() -> None:
    table = {
        0: {CT_HANDSHAKE, CT_ALERT, CT_ACK},
        1: {CT_APPLICATION_DATA, CT_ALERT},
        2: {CT_HANDSHAKE, CT_ALERT, CT_ACK},
        3: {CT_HANDSHAKE, CT_ALERT, CT_ACK, CT_APPLICATION_DATA},
        7: {CT_HANDSHAKE, CT_ALERT, CT_ACK, CT_APPLICATION_DATA},
    }
    for epoch, allowed in table.items():
        for ct in (20, CT_ALERT, CT_HANDSHAKE, CT_APPLICATION_DATA, 24, CT_ACK):
            assert content_type_allowed(epoch, ct) == (ct in allowed), (epoch, ct)
    assert handshake_type_allowed(0, HandshakeType.client_hello)
    assert handshake_type_allowed(0, HandshakeType.server_hello)
    assert not handshake_type_allowed(0, HandshakeType.finished)
    assert not handshake_type_allowed(1, HandshakeType.end_of_early_data)  # omitted in DTLS (§5.6)
    assert handshake_type_allowed(2, HandshakeType.finished)
    assert not handshake_type_allowed(2, HandshakeType.new_session_ticket)
    assert handshake_type_allowed(3, HandshakeType.new_session_ticket)
    assert handshake_type_allowed(4, HandshakeType.key_update)
    assert not handshake_type_allowed(3, HandshakeType.client_hello)


def test_record_layer_round_trip_with_cid_and_epochs() -> None:
    a, b = _layer_pair(send_cid=b"\x07\x08", receive_cid=b"\x07\x08")
    datagram = b"".join(
        [
            a.seal(CT_HANDSHAKE, b"plain", 0)[1],
            a.seal(CT_APPLICATION_DATA, b"early", 1)[1],
            a.seal(CT_HANDSHAKE, b"hs", 2)[1],
            a.seal(CT_APPLICATION_DATA, b"app", 3)[1],
            a.seal(CT_APPLICATION_DATA, b"not in epoch 2", 2)[1],
        ]
    )
    records, drops = b.receive_datagram(datagram)
    assert [(r.number, r.data) for r in records] == [
        (RecordNumber(0, 0), b"plain"),
        (RecordNumber(1, 0), b"early"),
        (RecordNumber(2, 0), b"hs"),
        (RecordNumber(3, 0), b"app"),
    ]
    assert drops == [DropReason.CONTENT_TYPE_NOT_ALLOWED]
    # A record with another CID of the same length belongs to another association.
    other = RecordLayer(send_cid=b"\x09\x09")
    other.install_write_epoch(3, suite_info(CipherSuite.TLS_AES_128_GCM_SHA256), b"x" * 32)
    assert b.receive_datagram(other.seal(CT_APPLICATION_DATA, b"x")[1]) == ([], [DropReason.WRONG_CID])


def test_record_layer_unknown_epoch_and_key_update() -> None:
    suite = suite_info(CipherSuite.TLS_AES_128_GCM_SHA256)
    a, b = RecordLayer(), RecordLayer(max_read_epochs=2)
    a.install_write_epoch(3, suite, b"3" * 32)
    assert b.receive_datagram(a.seal(CT_APPLICATION_DATA, b"x")[1]) == ([], [DropReason.UNKNOWN_EPOCH])
    b.install_read_epoch(3, suite, b"3" * 32)
    old = a.seal(CT_APPLICATION_DATA, b"old")[1]
    a.install_write_epoch(4, suite, b"4" * 32)
    b.install_read_epoch(4, suite, b"4" * 32)
    new = a.seal(CT_APPLICATION_DATA, b"new")[1]
    # Reordered across the key update: both epochs are still readable.
    assert [r.data for r in b.receive_datagram(new + old)[0]] == [b"new", b"old"]
    b.install_read_epoch(5, suite, b"5" * 32)  # max_read_epochs=2: epoch 3 goes
    assert b.receive_datagram(a.seal(CT_APPLICATION_DATA, b"again", 3)[1]) == ([], [DropReason.UNKNOWN_EPOCH])
