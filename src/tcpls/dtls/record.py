"""The DTLS 1.3 record layer (RFC 9147 §4), sans-IO.

Theory of operation
-------------------
A datagram carries one or more records (§4.3). :func:`parse_datagram` splits
it and recognises each record by its first byte (§4.1):

* 21 (alert), 22 (handshake), 26 (ack): a :class:`PlaintextRecord`
  (``DTLSPlaintext``: type, legacy version, 16-bit epoch that must be 0,
  48-bit sequence number, length);
* ``001CSLEE``: a :class:`CiphertextRecord` (the unified header: C = a
  connection ID of the configured length follows, S = 16-bit instead of
  8-bit sequence number, L = a length follows, else the record runs to the
  end of the datagram, EE = low two bits of the epoch);
* anything else: not DTLS 1.3.

Invalid records are *dropped*, never answered with an alert (§4.5.2): every
function on the receive path returns a :class:`DropReason` instead of
raising. When the framing itself is broken (a truncated header, a length
running past the datagram) the rest of the datagram is dropped too, since
record boundaries can no longer be trusted.

A protected record is opened by the :class:`ReadEpoch` of its epoch:

1. the full epoch is the newest installed read epoch whose low bits match
   (§4.2.2; during the handshake the bits are unambiguous);
2. the record number mask is computed from the first 16 bytes of the
   ciphertext with the epoch's ``sn_key`` (AES-ECB, or the ChaCha20 block
   function with counter = ciphertext[0..3], nonce = ciphertext[4..15];
   §4.2.3) and XORed into the 8 or 16 sequence number bits;
3. the full 64-bit sequence number is the one closest to one plus the
   highest deprotected sequence number of that epoch (§4.2.2);
4. AEAD: nonce = ``iv XOR seq`` (64-bit seq, the epoch is *not* mixed in,
   §4.1), additional data = the unified header with the *unencrypted*
   sequence number bits (§4.1: "prior to record number encryption");
5. the replay window is consulted and updated only after a successful
   deprotection (§4.5.1); authentication failures are counted for the
   forgery limit (§4.5.3);
6. the DTLSInnerPlaintext padding is stripped and the inner content type
   checked.

:class:`WriteEpoch` does the reverse. Keys come from the traffic secret with
the ``"dtls13"`` HKDF label prefix (§5.9): ``key``, ``iv`` and ``sn``
(:func:`derive_epoch_keys`).

:class:`RecordLayer` ties the pieces together for one association: installed
read and write epochs, the connection IDs, the epoch 0 sequence numbers, and
the per-epoch content type rules (:func:`content_type_allowed`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from collections import OrderedDict
from typing import Any, Callable, Optional, Union

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, ChaCha20Poly1305

from ..errors import InternalError
from ..tls.enums import ContentType, HandshakeType
from ..tls.key_schedule import DTLS13_LABEL_PREFIX, hkdf_expand_label, traffic_key_iv
from ..tls.suites import CipherSuiteInfo

__all__ = [
    "AEADCache",
    "DEFAULT_AEAD_CACHE",
    "CT_ALERT",
    "CT_HANDSHAKE",
    "CT_APPLICATION_DATA",
    "CT_ACK",
    "DTLS_LEGACY_VERSION",
    "MAX_PLAINTEXT",
    "MAX_CIPHERTEXT",
    "SEQ_LIMIT",
    "PLAINTEXT_SEQ_LIMIT",
    "DropReason",
    "RecordNumber",
    "PlaintextRecord",
    "CiphertextRecord",
    "ReceivedRecord",
    "parse_datagram",
    "encode_plaintext",
    "encode_unified_header",
    "reconstruct_seq",
    "reconstruct_epoch",
    "record_number_mask",
    "EpochKeys",
    "derive_epoch_keys",
    "AEADLimits",
    "aead_limits",
    "ReplayWindow",
    "WriteEpoch",
    "ReadEpoch",
    "content_type_allowed",
    "handshake_type_allowed",
    "RecordLayer",
]

CT_ALERT = int(ContentType.ALERT)
CT_HANDSHAKE = int(ContentType.HANDSHAKE)
CT_APPLICATION_DATA = int(ContentType.APPLICATION_DATA)
#: The ACK content type (RFC 9147 §7); not a TLS content type.
CT_ACK = 26

#: legacy_record_version of every DTLS 1.3 record: {254, 253}, DTLS 1.2 (§4).
#: Receivers ignore the field.
DTLS_LEGACY_VERSION = 0xFEFD

MAX_PLAINTEXT = 2**14
MAX_CIPHERTEXT = 2**14 + 256
#: Sequence numbers are 64-bit (RecordNumber, AEAD nonce; §4.1).
SEQ_LIMIT = 2**64
#: DTLSPlaintext carries 48 bits; plaintext records never go beyond (§4).
PLAINTEXT_SEQ_LIMIT = 2**48
#: Record number encryption samples this many ciphertext bytes (§4.2.3).
SAMPLE_LEN = 16

_PLAINTEXT_HEADER_LEN = 13  # type(1) version(2) epoch(2) seq(6) length(2)
_PLAINTEXT_TYPES = frozenset((CT_ALERT, CT_HANDSHAKE, CT_ACK))
_INNER_TYPES = frozenset((CT_ALERT, CT_HANDSHAKE, CT_APPLICATION_DATA, CT_ACK))

# Single-byte ``bytes`` objects, indexed by value (no allocation per record).
_BYTE = tuple(bytes((i,)) for i in range(256))
_ZEROS = bytes(SAMPLE_LEN)
#: Per-record nonce length of every TLS 1.3 AEAD (RFC 9846 §5.3).
_IV_LEN = 12

_FIXED_MASK = 0xE0
_FIXED_BITS = 0x20
_C_BIT = 0x10
_S_BIT = 0x08
_L_BIT = 0x04
_EPOCH_BITS = 0x03


class DropReason(enum.Enum):
    """Why a record (or the rest of a datagram) was silently discarded (§4.5.2)."""

    NOT_DTLS13 = "first byte is neither a plaintext type nor 001xxxxx"
    TRUNCATED = "record header runs past the end of the datagram"
    LENGTH_EXCEEDS_DATAGRAM = "record length runs past the end of the datagram"
    RECORD_TOO_LONG = "record longer than the protocol allows"
    EMPTY_RECORD = "zero-length plaintext record"
    PLAINTEXT_EPOCH = "DTLSPlaintext with an epoch other than 0"
    UNEXPECTED_CID = "connection ID present but none is in use"
    MISSING_CID = "connection ID in use but absent"
    WRONG_CID = "connection ID does not belong to this association"
    CIPHERTEXT_TOO_SHORT = "ciphertext shorter than the 16-byte record number sample"
    UNKNOWN_EPOCH = "no keys for this epoch"
    SEQUENCE_EXHAUSTED = "reconstructed sequence number outside the 64-bit space"
    AUTHENTICATION_FAILED = "AEAD deprotection failed"
    BAD_INNER_CONTENT_TYPE = "invalid inner content type or padding"
    REPLAY = "duplicate or too old for the replay window"
    CONTENT_TYPE_NOT_ALLOWED = "content type not allowed in this epoch"


@dataclass(frozen=True, slots=True, order=True)
class RecordNumber:
    """``struct { uint64 epoch; uint64 sequence_number; } RecordNumber`` (§4)."""

    epoch: int
    seq: int


@dataclass(frozen=True, slots=True)
class PlaintextRecord:
    """A DTLSPlaintext record as received (epoch 0)."""

    content_type: int
    legacy_version: int
    epoch: int
    seq: int
    fragment: bytes


@dataclass(frozen=True, slots=True)
class CiphertextRecord:
    """A DTLSCiphertext record as received, before deprotection.

    Attributes:
        header: the unified header as on the wire (sequence bits encrypted).
        epoch_bits: the two low bits of the epoch.
        seq_len: 1 or 2, the size of the sequence number field.
        cid: the connection ID (``b""`` if the C bit is clear).
        encrypted_record: the AEAD ciphertext.
    """

    header: bytes
    epoch_bits: int
    seq_len: int
    cid: bytes
    encrypted_record: bytes


@dataclass(frozen=True, slots=True)
class ReceivedRecord:
    """A record accepted by :class:`RecordLayer` (deprotected if it was protected)."""

    number: RecordNumber
    content_type: int
    data: bytes
    protected: bool


# The data path builds these per record. A frozen dataclass's generated
# __init__ goes through object.__setattr__ for every field (frozen check);
# these build the same immutable objects by setting the slots directly,
# several times faster. Positional, no validation: for this module's hot paths.
_new = object.__new__
_RN_SET = (RecordNumber.epoch.__set__, RecordNumber.seq.__set__)  # type: ignore[attr-defined]
_CT_SET = tuple(getattr(CiphertextRecord, n).__set__ for n in ("header", "epoch_bits", "seq_len", "cid", "encrypted_record"))
_RR_SET = tuple(getattr(ReceivedRecord, n).__set__ for n in ("number", "content_type", "data", "protected"))


def _record_number(epoch: int, seq: int) -> RecordNumber:
    rn = _new(RecordNumber)
    _RN_SET[0](rn, epoch)
    _RN_SET[1](rn, seq)
    return rn


def _ciphertext_record(header: bytes, epoch_bits: int, seq_len: int, cid: bytes, encrypted: bytes) -> CiphertextRecord:
    rec = _new(CiphertextRecord)
    s = _CT_SET
    s[0](rec, header)
    s[1](rec, epoch_bits)
    s[2](rec, seq_len)
    s[3](rec, cid)
    s[4](rec, encrypted)
    return rec


def _received_record(number: RecordNumber, content_type: int, data: bytes, protected: bool) -> ReceivedRecord:
    rec = _new(ReceivedRecord)
    s = _RR_SET
    s[0](rec, number)
    s[1](rec, content_type)
    s[2](rec, data)
    s[3](rec, protected)
    return rec


# --------------------------------------------------------------------------
# Framing
# --------------------------------------------------------------------------
def parse_datagram(
    data: bytes | bytearray | memoryview, cid_length: int = 0
) -> tuple[list[PlaintextRecord | CiphertextRecord], list[DropReason]]:
    """Split a datagram into records (§4, §4.1, §4.3).

    Args:
        data: one datagram.
        cid_length: length of the connection ID this endpoint receives (the
            one it asked the peer to use); 0 means none, and a record with
            the C bit set is then dropped (§9). With a non-zero length every
            protected record must carry one, and all records of a datagram
            must carry the same (§4: "the rest of the datagram MUST be
            discarded" otherwise).

    Returns:
        ``(records, drops)``: the well-formed records in order, and a reason
        for each discarded record or datagram remainder. Never raises on
        malformed input.
    """
    data = bytes(data)
    n = len(data)
    pos = 0
    records: list[PlaintextRecord | CiphertextRecord] = []
    drops: list[DropReason] = []
    first_cid: bytes | None = None
    while pos < n:
        first = data[pos]
        if first in _PLAINTEXT_TYPES:
            if n - pos < _PLAINTEXT_HEADER_LEN:
                drops.append(DropReason.TRUNCATED)
                break
            version = (data[pos + 1] << 8) | data[pos + 2]
            epoch = (data[pos + 3] << 8) | data[pos + 4]
            seq = int.from_bytes(data[pos + 5 : pos + 11], "big")
            length = (data[pos + 11] << 8) | data[pos + 12]
            start = pos + _PLAINTEXT_HEADER_LEN
            end = start + length
            if end > n:
                drops.append(DropReason.LENGTH_EXCEEDS_DATAGRAM)
                break
            pos = end
            if length > MAX_PLAINTEXT:
                drops.append(DropReason.RECORD_TOO_LONG)
            elif length == 0:
                drops.append(DropReason.EMPTY_RECORD)
            elif epoch != 0:
                drops.append(DropReason.PLAINTEXT_EPOCH)
            else:
                records.append(PlaintextRecord(first, version, epoch, seq, data[start:end]))
            continue
        if first & _FIXED_MASK != _FIXED_BITS:
            drops.append(DropReason.NOT_DTLS13)
            break
        has_cid = bool(first & _C_BIT)
        seq_len = 2 if first & _S_BIT else 1
        has_length = bool(first & _L_BIT)
        if has_cid and cid_length == 0:
            drops.append(DropReason.UNEXPECTED_CID)
            break
        if not has_cid and cid_length:
            drops.append(DropReason.MISSING_CID)
            break
        cid_len = cid_length if has_cid else 0
        header_len = 1 + cid_len + seq_len + (2 if has_length else 0)
        if n - pos < header_len:
            drops.append(DropReason.TRUNCATED)
            break
        cid = data[pos + 1 : pos + 1 + cid_len]
        if first_cid is None:
            first_cid = cid
        elif cid != first_cid:
            drops.append(DropReason.WRONG_CID)
            break
        start = pos + header_len
        if has_length:
            length = (data[start - 2] << 8) | data[start - 1]
            end = start + length
            if end > n:
                drops.append(DropReason.LENGTH_EXCEEDS_DATAGRAM)
                break
        else:
            end = n
            length = n - start
        header = data[pos:start]
        pos = end
        if length > MAX_CIPHERTEXT:
            drops.append(DropReason.RECORD_TOO_LONG)
        elif length < SAMPLE_LEN:
            # §4.2.3: "Receivers MUST reject shorter records as if they had
            # failed deprotection".
            drops.append(DropReason.CIPHERTEXT_TOO_SHORT)
        else:
            records.append(_ciphertext_record(header, first & _EPOCH_BITS, seq_len, cid, data[start:end]))
    return records, drops


def plaintext_prefix_length(data: bytes | bytearray | memoryview) -> int:
    """Length of the DTLSPlaintext records that start ``data`` (0 when the
    first record is not one; the whole datagram when nothing else follows).

    A server flight puts its ServerHello (plaintext) and its first protected
    records in one datagram; the ServerHello may negotiate the connection ID
    that those records carry (§9), so a receiver frames the protected rest
    only after processing the plaintext records (see
    ``HandshakeTransport.receive_datagram``)."""
    n = len(data)
    pos = 0
    while pos < n and data[pos] in _PLAINTEXT_TYPES:
        if n - pos < _PLAINTEXT_HEADER_LEN:
            return n
        end = pos + _PLAINTEXT_HEADER_LEN + ((data[pos + 11] << 8) | data[pos + 12])
        if end > n:
            return n  # framing error: parse_datagram reports it
        pos = end
    return pos


def encode_plaintext(
    content_type: int, seq: int, fragment: bytes, *, legacy_version: int = DTLS_LEGACY_VERSION
) -> bytes:
    """One DTLSPlaintext record (epoch 0; §4).

    Raises:
        ValueError: content type not sendable in plaintext, empty or
            oversized fragment, sequence number beyond 48 bits.
    """
    if content_type not in _PLAINTEXT_TYPES:
        raise ValueError(f"content type {content_type} cannot be sent in a DTLSPlaintext record")
    if not 0 < len(fragment) <= MAX_PLAINTEXT:
        raise ValueError("DTLSPlaintext fragment must be 1..2^14 bytes")
    if not 0 <= seq < PLAINTEXT_SEQ_LIMIT:
        raise ValueError("DTLSPlaintext sequence number out of range")
    return b"".join(
        (
            bytes((content_type,)),
            legacy_version.to_bytes(2, "big"),
            b"\x00\x00",
            seq.to_bytes(6, "big"),
            len(fragment).to_bytes(2, "big"),
            fragment,
        )
    )


def encode_unified_header(
    epoch: int, seq: int, *, seq_len: int = 2, length: int | None = None, cid: bytes = b""
) -> bytes:
    """The unified header (§4) with the *unencrypted* sequence number bits.

    This is the AEAD additional data. ``length`` ``None`` clears the L bit
    (the record then runs to the end of the datagram).
    """
    if seq_len not in (1, 2):
        raise ValueError("seq_len must be 1 or 2")
    first = _FIXED_BITS | (epoch & _EPOCH_BITS)
    if cid:
        first |= _C_BIT
    if seq_len == 2:
        first |= _S_BIT
    parts = [bytes((first,)), cid, (seq & ((1 << (8 * seq_len)) - 1)).to_bytes(seq_len, "big")]
    if length is not None:
        parts[0] = bytes((first | _L_BIT,))
        parts.append(length.to_bytes(2, "big"))
    return b"".join(parts)


# --------------------------------------------------------------------------
# Epoch and sequence number reconstruction (§4.2.2)
# --------------------------------------------------------------------------
def reconstruct_seq(expected: int, low_bits: int, nbits: int, limit: int = SEQ_LIMIT) -> int:
    """The sequence number ending in ``low_bits`` closest to ``expected``.

    ``expected`` is one plus the highest sequence number successfully
    deprotected in the epoch (0 before any). The result stays in
    ``[0, limit)`` when such a candidate exists; it can equal or exceed
    ``limit`` only when the space is exhausted (callers then drop).
    """
    window = 1 << nbits
    half = window >> 1
    mask = window - 1
    candidate = (expected & ~mask) | (low_bits & mask)
    if candidate + half <= expected and candidate + window < limit:
        candidate += window
    elif candidate > expected + half and candidate >= window:
        candidate -= window
    return candidate


def reconstruct_epoch(epoch_bits: int, epochs: "list[int] | tuple[int, ...] | set[int] | dict[int, object]") -> int | None:
    """The newest of ``epochs`` (ignoring 0) whose low two bits are ``epoch_bits``.

    During the handshake epochs 1, 2 and 3 have distinct bits; afterwards
    this is "the most recent past epoch which has matching bits" (§4.2.2),
    or the next epoch once its keys are installed (KeyUpdate). Protected
    records never use epoch 0.
    """
    best: int | None = None
    for epoch in epochs:
        if epoch and (epoch & _EPOCH_BITS) == epoch_bits and (best is None or epoch > best):
            best = epoch
    return best


# --------------------------------------------------------------------------
# Keys, record number encryption and AEAD limits
# --------------------------------------------------------------------------
LABEL_SN = b"sn"


@dataclass(frozen=True, slots=True)
class EpochKeys:
    """Keys of one direction of one epoch."""

    key: bytes
    iv: bytes
    sn_key: bytes


def derive_epoch_keys(suite: CipherSuiteInfo, secret: bytes) -> EpochKeys:
    """``key``, ``iv`` and ``sn_key`` from a traffic secret with the ``"dtls13"`` prefix.

    ``[sender]_sn_key = HKDF-Expand-Label(Secret, "sn", "", key_length)`` (§4.2.3).
    """
    key, iv = traffic_key_iv(suite, secret, DTLS13_LABEL_PREFIX)
    sn_key = hkdf_expand_label(suite.hash_name, secret, LABEL_SN, b"", suite.key_len, DTLS13_LABEL_PREFIX)
    return EpochKeys(key, iv, sn_key)


def _is_chacha(suite: CipherSuiteInfo) -> bool:
    return suite.aead is ChaCha20Poly1305


def record_number_mask(suite: CipherSuiteInfo, sn_key: bytes, ciphertext: bytes) -> bytes:
    """The 16-byte record number mask for ``ciphertext`` (§4.2.3).

    AES-based suites: ``AES-ECB(sn_key, Ciphertext[0..15])``; ChaCha20:
    ``ChaCha20(sn_key, Ciphertext[0..3], Ciphertext[4..15])``.
    """
    if len(ciphertext) < SAMPLE_LEN:
        raise ValueError("record number encryption needs at least 16 bytes of ciphertext")
    return _make_mask(suite, sn_key)(bytes(ciphertext[:SAMPLE_LEN]))


@dataclass(frozen=True, slots=True)
class AEADLimits:
    """Per-key limits (§4.5.3).

    Attributes:
        confidentiality: records that may be protected with one key.
        integrity: records that may fail authentication with one key.
    """

    confidentiality: int
    integrity: int


def aead_limits(suite: CipherSuiteInfo) -> AEADLimits:
    """Limits of the suite's AEAD in DTLS (§4.5.3, appendix on CCM).

    AES-GCM: 2^24.5 records protected (RFC 9846 §5.5), 2^36 forgeries.
    ChaCha20-Poly1305: bounded by the sequence space, 2^36 forgeries.
    AES-CCM (16-byte tag): 2^23 protected, 2^23.5 forgeries.
    AES-CCM-8: 2^23 protected, 2^7 forgeries (the appendix on CCM_8: the
    suite must not be used in DTLS without a forgery limit; this is it).
    """
    if suite.aead is AESCCM:
        return _CCM8_LIMITS if suite.tag_len == 8 else _CCM_LIMITS
    if _is_chacha(suite):
        return _CHACHA_LIMITS
    return _GCM_LIMITS


# One shared instance each: epochs refer to these instead of owning copies.
_CCM_LIMITS = AEADLimits(2**23, int(2**23.5))
_CCM8_LIMITS = AEADLimits(2**23, 2**7)
_CHACHA_LIMITS = AEADLimits(SEQ_LIMIT, 2**36)
_GCM_LIMITS = AEADLimits(int(2**24.5), 2**36)


# --------------------------------------------------------------------------
# Anti-replay (§4.5.1)
# --------------------------------------------------------------------------
class ReplayWindow:
    """Sliding window of received sequence numbers (RFC 4303 §3.4.3 style).

    Bit ``i`` of the mask is set when ``highest - i`` was received. Call
    :meth:`is_replay` before accepting and :meth:`mark` only after the record
    was deprotected (§4.5.1).
    """

    __slots__ = ("size", "highest", "_bits")

    def __init__(self, size: int = 128) -> None:
        if size < 1:
            raise ValueError("window size must be positive")
        self.size = size
        #: Highest sequence number received so far, -1 before any.
        self.highest = -1
        self._bits = 0

    @property
    def next_expected(self) -> int:
        """One plus the highest received sequence number (for §4.2.2)."""
        return self.highest + 1

    def is_replay(self, seq: int) -> bool:
        """True if ``seq`` was seen already or lies left of the window."""
        if seq > self.highest:
            return False
        offset = self.highest - seq
        if offset >= self.size:
            return True
        return bool((self._bits >> offset) & 1)

    def mark(self, seq: int) -> None:
        """Record ``seq`` as received."""
        if seq > self.highest:
            shift = seq - self.highest
            self._bits = ((self._bits << shift) | 1) & ((1 << self.size) - 1) if shift < self.size else 1
            self.highest = seq
        else:
            offset = self.highest - seq
            if offset < self.size:
                self._bits |= 1 << offset


# --------------------------------------------------------------------------
# Per-epoch protection
# --------------------------------------------------------------------------
class AEADCache:
    """A bounded LRU cache of AEAD and record-number-mask objects, keyed by key bytes.

    An AEAD object from ``cryptography`` holds an OpenSSL context (about
    2.5 KB with its Python wrapper). An endpoint with 100K mostly idle
    associations cannot afford one per epoch and direction, so epochs keep
    their raw keys and build these objects on demand through a cache shared
    by the endpoint: active associations hit the cache, idle ones cost only
    their key bytes. Objects are stateless between calls (nonces and
    samples are per call), so sharing them between epochs with equal keys
    is safe.

    Args:
        capacity: objects kept at most (each AEAD or AES-ECB mask counts one).
    """

    __slots__ = ("capacity", "_items", "hits", "misses")

    def __init__(self, capacity: int = 1024) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._items: "OrderedDict[tuple[object, bytes], object]" = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, factory: "Callable[[bytes], Any]", key: bytes) -> Any:
        """The object ``factory(key)``, built once and reused while it stays in the cache."""
        items = self._items
        ident = (factory, key)
        obj = items.get(ident)
        if obj is not None:
            items.move_to_end(ident)
            self.hits += 1
            return obj
        self.misses += 1
        obj = factory(key)
        items[ident] = obj
        if len(items) > self.capacity:
            items.popitem(last=False)
        return obj

    def get_pair(
        self, factory1: "Callable[[bytes], Any]", key1: bytes, factory2: "Callable[[bytes], Any]", key2: bytes
    ) -> tuple[Any, Any]:
        """``(get(factory1, key1), get(factory2, key2))`` in one call (once per record)."""
        items = self._items
        id1 = (factory1, key1)
        id2 = (factory2, key2)
        obj1 = items.get(id1)
        obj2 = items.get(id2)
        if obj1 is None or obj2 is None:
            return self.get(factory1, key1), self.get(factory2, key2)
        items.move_to_end(id1)
        items.move_to_end(id2)
        self.hits += 2
        return obj1, obj2

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()


#: The cache used by epochs created without an explicit one.
DEFAULT_AEAD_CACHE = AEADCache(4096)


def _aes_mask(sn_key: bytes) -> Callable[[bytes], bytes]:
    # AES-ECB is stateless between blocks: one encryptor context serves
    # every record of the epoch, fed one 16-byte block per record.
    return Cipher(algorithms.AES(sn_key), modes.ECB()).encryptor().update


def _chacha_mask(sn_key: bytes) -> Callable[[bytes], bytes]:
    def mask(sample: bytes) -> bytes:
        # cryptography's 16-byte ChaCha20 "nonce" is the 32-bit block counter
        # (little-endian, RFC 8439 §2.3) followed by the 96-bit nonce: exactly
        # ciphertext[0..3] || ciphertext[4..15]. It changes with every record,
        # so does the cipher object. Encrypting zeros yields the block
        # function output.
        return Cipher(algorithms.ChaCha20(sn_key, sample), mode=None).encryptor().update(_ZEROS)

    return mask


def _make_mask(suite: CipherSuiteInfo, sn_key: bytes) -> Callable[[bytes], bytes]:
    """The §4.2.3 mask function of ``sn_key``: 16-byte sample → 16-byte mask."""
    return _chacha_mask(sn_key) if _is_chacha(suite) else _aes_mask(sn_key)


_FACTORIES: dict[int, tuple[Callable[[bytes], Any], Callable[[bytes], Any]]] = {}


def _factories(suite: CipherSuiteInfo) -> tuple[Callable[[bytes], Any], Callable[[bytes], Any]]:
    """(AEAD factory, mask factory) taking an epoch's ``key || sn_key || iv``.

    One pair per suite, so that the cache keys ``(factory, keys)`` of equal
    keys match across epochs.
    """
    pair = _FACTORIES.get(suite.suite)
    if pair is None:
        n = suite.key_len
        mask_of_key = _chacha_mask if _is_chacha(suite) else _aes_mask

        new_aead = suite.new_aead  # AES-CCM-8: the 8-byte tag length

        def make_aead(keys: bytes) -> Any:
            return new_aead(keys[:n])

        def make_mask(keys: bytes) -> Any:
            return mask_of_key(keys[n : 2 * n])

        pair = _FACTORIES[suite.suite] = (make_aead, make_mask)
    return pair


class _Epoch:
    # Raw keys only, in one bytes object ``key || sn_key || iv`` (§4,
    # §4.2.3); the AEAD and mask objects come from the shared
    # :class:`AEADCache` at each use (one cache call a record).
    __slots__ = ("epoch", "suite", "limits", "_keys", "_cache")

    def __init__(self, epoch: int, suite: CipherSuiteInfo, secret: bytes, cache: Optional[AEADCache] = None) -> None:
        if not 0 < epoch < SEQ_LIMIT:
            raise ValueError("protected epochs are 1..2^64-1")
        keys = derive_epoch_keys(suite, secret)
        self.epoch = epoch
        self.suite = suite
        self.limits = aead_limits(suite)
        if suite.iv_len != _IV_LEN:
            raise ValueError("TLS 1.3 AEADs take 12-byte nonces")
        self._keys = keys.key + keys.sn_key + keys.iv
        self._cache = cache if cache is not None else DEFAULT_AEAD_CACHE

    @property
    def _tag_len(self) -> int:
        return self.suite.tag_len

    @property
    def _iv(self) -> int:
        return int.from_bytes(self._keys[-_IV_LEN:], "big")

    def _crypto(self) -> "tuple[Any, Callable[[bytes], bytes]]":
        """The AEAD object and the mask function, from the cache."""
        make_aead, make_mask = _factories(self.suite)
        keys = self._keys
        return self._cache.get_pair(make_aead, keys, make_mask, keys)


class WriteEpoch(_Epoch):
    """Protects outgoing records of one epoch.

    Args:
        epoch: the full epoch (1 = early data, 2 = handshake, 3+ = application).
        suite: the cipher suite.
        secret: the sending traffic secret of this epoch.
    """

    __slots__ = ("next_seq", "records_protected")

    def __init__(self, epoch: int, suite: CipherSuiteInfo, secret: bytes, cache: Optional[AEADCache] = None) -> None:
        super().__init__(epoch, suite, secret, cache)
        self.next_seq = 0
        self.records_protected = 0

    @property
    def key_usage_exhausted(self) -> bool:
        """True once the confidentiality limit is reached (a KeyUpdate is due)."""
        return self.records_protected >= self.limits.confidentiality

    def overhead(self, *, seq_len: int = 2, include_length: bool = True, cid_len: int = 0) -> int:
        """Bytes a record adds to its content: header, inner type, tag."""
        return 1 + cid_len + seq_len + (2 if include_length else 0) + 1 + self._tag_len

    def seal(
        self,
        content_type: int,
        content: bytes | bytearray | memoryview,
        *,
        seq_len: int = 2,
        include_length: bool = True,
        cid: bytes = b"",
        padding: int = 0,
    ) -> tuple[RecordNumber, bytes]:
        """Build one DTLSCiphertext record; returns its number and its bytes.

        Short plaintexts are padded so that the ciphertext has the 16 bytes
        record number encryption samples (§4.2.3).

        Raises:
            ValueError: bad content type, oversized content, negative padding.
            InternalError: the sequence number space is exhausted.
        """
        seq = self.next_seq
        record = self.protect(content_type, content, seq_len=seq_len, include_length=include_length, cid=cid, padding=padding)
        return _record_number(self.epoch, seq), record

    def protect(
        self,
        content_type: int,
        content: bytes | bytearray | memoryview,
        *,
        seq_len: int = 2,
        include_length: bool = True,
        cid: bytes = b"",
        padding: int = 0,
    ) -> bytes:
        """:meth:`seal` without building the record number (the data path).

        The record number of the returned record is ``next_seq - 1``.
        """
        if content_type not in _INNER_TYPES:
            raise ValueError(f"content type {content_type} cannot be sent in DTLS 1.3")
        if seq_len != 2 and seq_len != 1:
            raise ValueError("seq_len must be 1 or 2")
        seq = self.next_seq
        if seq >= SEQ_LIMIT:
            raise InternalError("record sequence numbers of this epoch are exhausted")
        tag_len = self._tag_len
        # DTLSInnerPlaintext (§4): content, type, zeros; long enough for the
        # 16-byte record number sample (§4.2.3).
        size = len(content)
        if padding or size + 1 + tag_len < SAMPLE_LEN:
            if padding < 0:
                raise ValueError("negative padding")
            padding = max(padding, SAMPLE_LEN - tag_len - size - 1)
            inner = b"".join((content, _BYTE[content_type], bytes(padding)))
        else:
            inner = bytes(content) + _BYTE[content_type]
        inner_len = len(inner)
        if inner_len > MAX_PLAINTEXT + 1:
            raise ValueError("record content (with padding) exceeds 2^14 bytes")
        # Unified header (§4): 001CSLEE, CID, sequence number bits, length.
        first = _FIXED_BITS | (self.epoch & _EPOCH_BITS)
        if cid:
            first |= _C_BIT
        if seq_len == 2:
            first |= _S_BIT
            bits = seq & 0xFFFF
        else:
            bits = seq & 0xFF
        if include_length:
            first |= _L_BIT
            shift = 16
            bits = (bits << 16) | (inner_len + tag_len)
            tail_len = seq_len + 2
        else:
            shift = 0
            tail_len = seq_len
        prefix = _BYTE[first] + cid if cid else _BYTE[first]
        aead, mask_of = self._crypto()
        # AEAD (§4.1): nonce = iv XOR 64-bit seq; additional data = the header
        # with the sequence number bits before record number encryption.
        ciphertext = aead.encrypt(
            (self._iv ^ seq).to_bytes(_IV_LEN, "big"), inner, prefix + bits.to_bytes(tail_len, "big")
        )
        # Record number encryption (§4.2.3): XOR the mask into the bits.
        mask = mask_of(ciphertext[:SAMPLE_LEN])
        m = (mask[0] << 8 | mask[1]) if seq_len == 2 else mask[0]
        self.next_seq = seq + 1
        self.records_protected += 1
        return b"".join((prefix, (bits ^ (m << shift)).to_bytes(tail_len, "big"), ciphertext))


    def protect_batch(
        self, content_type: int, contents: "list[bytes]", *, seq_len: int = 2, cid: bytes = b""
    ) -> list[bytes]:
        """:meth:`protect` for each of ``contents`` (length field on, no extra
        padding): the same records, with the per-record constants and the
        cache lookup done once for the batch.

        Raises:
            ValueError: bad content type or ``seq_len``, a content over 2^14
                bytes (nothing is protected then).
            InternalError: the sequence number space would be exhausted.
        """
        if content_type not in _INNER_TYPES:
            raise ValueError(f"content type {content_type} cannot be sent in DTLS 1.3")
        if seq_len != 2 and seq_len != 1:
            raise ValueError("seq_len must be 1 or 2")
        count = len(contents)
        seq = self.next_seq
        if seq + count > SEQ_LIMIT:
            raise InternalError("record sequence numbers of this epoch are exhausted")
        if any(len(c) > MAX_PLAINTEXT for c in contents):
            raise ValueError("record content exceeds 2^14 bytes")
        tag_len = self._tag_len
        short = SAMPLE_LEN - tag_len - 1  # contents below this are padded (§4.2.3)
        first = _FIXED_BITS | _L_BIT | (self.epoch & _EPOCH_BITS)
        if cid:
            first |= _C_BIT
        if seq_len == 2:
            first |= _S_BIT
            sn_mask = 0xFFFF
        else:
            sn_mask = 0xFF
        prefix = _BYTE[first] + cid if cid else _BYTE[first]
        tail_len = seq_len + 2
        type_byte = _BYTE[content_type]
        aead, mask_of = self._crypto()
        encrypt = aead.encrypt
        iv = self._iv
        join = b"".join
        out = []
        append = out.append
        for content in contents:
            size = len(content)
            if size < short:
                inner = bytes(content) + type_byte + bytes(short - size)
            else:
                inner = bytes(content) + type_byte
            bits = ((seq & sn_mask) << 16) | (len(inner) + tag_len)
            ciphertext = encrypt((iv ^ seq).to_bytes(_IV_LEN, "big"), inner, prefix + bits.to_bytes(tail_len, "big"))
            mask = mask_of(ciphertext[:SAMPLE_LEN])
            m = (mask[0] << 8 | mask[1]) if seq_len == 2 else mask[0]
            append(join((prefix, (bits ^ (m << 16)).to_bytes(tail_len, "big"), ciphertext)))
            seq += 1
        self.next_seq = seq
        self.records_protected += count
        return out


class ReadEpoch(_Epoch):
    """Deprotects incoming records of one epoch, with its replay window.

    Args:
        epoch: the full epoch.
        suite: the cipher suite.
        secret: the peer's traffic secret of this epoch.
        replay_window: window size in records (0 disables replay detection;
            the window still tracks the highest sequence number).
    """

    __slots__ = ("window", "replay_protection", "records_deprotected", "failed_decryptions")

    def __init__(
        self,
        epoch: int,
        suite: CipherSuiteInfo,
        secret: bytes,
        replay_window: int = 128,
        cache: Optional[AEADCache] = None,
    ) -> None:
        super().__init__(epoch, suite, secret, cache)
        self.replay_protection = replay_window > 0
        self.window = ReplayWindow(max(replay_window, 1))
        self.records_deprotected = 0
        #: Records that failed authentication under this key (§4.5.3).
        self.failed_decryptions = 0

    @property
    def forgery_limit_reached(self) -> bool:
        """True once more records failed authentication than the AEAD allows (§4.5.3).

        The connection SHOULD then close (or drop this epoch if a key update
        is under way).
        """
        return self.failed_decryptions > self.limits.integrity

    def open(self, record: CiphertextRecord) -> ReceivedRecord | DropReason:
        """Deprotect ``record`` (whose epoch bits must match this epoch).

        Returns:
            the :class:`ReceivedRecord`, or why it was dropped.
        """
        ciphertext = record.encrypted_record
        if len(ciphertext) < SAMPLE_LEN:
            return DropReason.CIPHERTEXT_TOO_SHORT
        header = record.header
        aead, mask_of = self._crypto()
        # §4.2.3: remove the record number encryption; the AEAD additional
        # data is the header with the plain sequence number bits (§4.1).
        mask = mask_of(ciphertext[:SAMPLE_LEN])
        if record.seq_len == 2:
            sn_at = len(header) - (4 if header[0] & _L_BIT else 2)
            low_bits = ((header[sn_at] << 8) | header[sn_at + 1]) ^ ((mask[0] << 8) | mask[1])
            aad = b"".join((header[:sn_at], low_bits.to_bytes(2, "big"), header[sn_at + 2 :]))
            nbits = 16
        else:
            sn_at = len(header) - (3 if header[0] & _L_BIT else 1)
            low_bits = header[sn_at] ^ mask[0]
            aad = b"".join((header[:sn_at], _BYTE[low_bits], header[sn_at + 1 :]))
            nbits = 8
        window = self.window
        seq = reconstruct_seq(window.highest + 1, low_bits, nbits)
        if seq >= SEQ_LIMIT:
            return DropReason.SEQUENCE_EXHAUSTED
        try:
            inner = aead.decrypt((self._iv ^ seq).to_bytes(_IV_LEN, "big"), ciphertext, aad)
        except InvalidTag:
            self.failed_decryptions += 1
            return DropReason.AUTHENTICATION_FAILED
        # §4.5.1: the replay check happens after deprotection, and the window
        # is only updated once the record is known to be genuine.
        if seq <= window.highest and self.replay_protection and window.is_replay(seq):
            return DropReason.REPLAY
        # DTLSInnerPlaintext: strip the zero padding; the last non-zero byte
        # is the content type (§4).
        content_type = inner[-1] if inner else 0
        if content_type:
            data = inner[:-1]
        else:
            stripped = inner.rstrip(b"\x00")
            if not stripped:
                return DropReason.BAD_INNER_CONTENT_TYPE
            content_type = stripped[-1]
            data = stripped[:-1]
        if content_type not in _INNER_TYPES:
            return DropReason.BAD_INNER_CONTENT_TYPE
        if len(data) > MAX_PLAINTEXT:
            return DropReason.RECORD_TOO_LONG
        window.mark(seq)
        self.records_deprotected += 1
        return _received_record(_record_number(self.epoch, seq), content_type, data, True)


# --------------------------------------------------------------------------
# Epoch rules (§4.1 demultiplexing, §5.6 EndOfEarlyData, §6.1 epochs, §7 ACK)
# --------------------------------------------------------------------------
EPOCH_PLAINTEXT = 0
EPOCH_EARLY_DATA = 1
EPOCH_HANDSHAKE = 2
EPOCH_APPLICATION = 3

_EPOCH_CONTENT_TYPES: dict[int, frozenset[int]] = {
    # ClientHello/ServerHello/HelloRetryRequest, alerts, and ACKs once DTLS
    # 1.3 is known to be negotiated (§7).
    EPOCH_PLAINTEXT: frozenset((CT_HANDSHAKE, CT_ALERT, CT_ACK)),
    # Early data only: EndOfEarlyData is not sent in DTLS (§5.6) and ACKs
    # MUST NOT use epoch 1 (§7).
    EPOCH_EARLY_DATA: frozenset((CT_APPLICATION_DATA, CT_ALERT)),
    # Handshake keys never protect application data (TLS 1.3).
    EPOCH_HANDSHAKE: frozenset((CT_HANDSHAKE, CT_ALERT, CT_ACK)),
}
_APPLICATION_CONTENT_TYPES = frozenset((CT_HANDSHAKE, CT_ALERT, CT_ACK, CT_APPLICATION_DATA))

_HS = HandshakeType
_REQUEST_CONNECTION_ID = 9  # RFC 9147 §5.2 (HandshakeType)
_NEW_CONNECTION_ID = 10
_AUTH_MESSAGES = (_HS.certificate, _HS.compressed_certificate, _HS.certificate_verify, _HS.finished)
_EPOCH_HANDSHAKE_TYPES: dict[int, frozenset[int]] = {
    EPOCH_PLAINTEXT: frozenset((_HS.client_hello, _HS.server_hello)),
    EPOCH_EARLY_DATA: frozenset(),
    EPOCH_HANDSHAKE: frozenset((_HS.encrypted_extensions, _HS.certificate_request, *_AUTH_MESSAGES)),
}
_APPLICATION_HANDSHAKE_TYPES = frozenset(
    (
        _HS.new_session_ticket,
        _HS.key_update,
        _HS.certificate_request,  # post-handshake authentication
        *_AUTH_MESSAGES,
        _REQUEST_CONNECTION_ID,
        _NEW_CONNECTION_ID,
    )
)


def content_type_allowed(epoch: int, content_type: int) -> bool:
    """Whether a record of ``content_type`` may use ``epoch`` (§4.1, §6.1, §7).

    Epoch 0: handshake, alert, ack; epoch 1 (early data): application data
    and alerts; epoch 2 (handshake): handshake, alert, ack; epoch 3 and up:
    all four.
    """
    allowed = _EPOCH_CONTENT_TYPES.get(epoch, _APPLICATION_CONTENT_TYPES)
    return content_type in allowed


def handshake_type_allowed(epoch: int, msg_type: int) -> bool:
    """Whether a handshake message of ``msg_type`` may be carried in ``epoch`` (§6.1).

    Epoch 0: ClientHello and ServerHello (HelloRetryRequest is a ServerHello);
    epoch 1: none; epoch 2: EncryptedExtensions, CertificateRequest,
    Certificate, CompressedCertificate, CertificateVerify, Finished; epoch
    3 and up: the post-handshake messages (NewSessionTicket, KeyUpdate,
    post-handshake authentication, RequestConnectionId, NewConnectionId).
    """
    allowed = _EPOCH_HANDSHAKE_TYPES.get(epoch, _APPLICATION_HANDSHAKE_TYPES)
    return msg_type in allowed


# --------------------------------------------------------------------------
# The record layer of one association
# --------------------------------------------------------------------------
RecordOrDrop = Union[ReceivedRecord, DropReason]


class RecordLayer:
    """Records of one DTLS 1.3 association: epochs, CIDs, sequence numbers.

    Args:
        receive_cid: the connection ID the peer puts on records it sends us
            (``b""``: none).
        send_cid: the connection ID we put on protected records (``b""``: none).
        seq_len: 1 or 2, the sequence number size of records we send.
        replay_window: replay window size per read epoch (0: no replay
            detection).
        max_read_epochs: read epochs kept at once; installing one more drops
            the oldest protected epoch (§4.2.1: old epochs may be kept for a
            while to allow for reordering).
        aead_cache: where epochs get their AEAD objects (default: the
            process-wide :data:`DEFAULT_AEAD_CACHE`); an endpoint passes one
            cache to all its associations.

    Epoch 0 is always readable and writable in plaintext. Epoch 0 records
    have no replay window: they are unauthenticated, and the handshake layer
    deduplicates them by message_seq.
    """

    def __init__(
        self,
        *,
        receive_cid: bytes = b"",
        send_cid: bytes = b"",
        seq_len: int = 2,
        replay_window: int = 128,
        max_read_epochs: int = 4,
        aead_cache: Optional[AEADCache] = None,
    ) -> None:
        if seq_len not in (1, 2):
            raise ValueError("seq_len must be 1 or 2")
        self.receive_cid = receive_cid
        self.send_cid = send_cid
        self.seq_len = seq_len
        self.replay_window = replay_window
        self.max_read_epochs = max_read_epochs
        self.aead_cache = aead_cache
        #: All CIDs accepted on received records (RFC 9147 §9: those we
        #: issued and have not retired; all of ``len(receive_cid)`` bytes).
        #: None: ``receive_cid`` only.
        self.receive_cid_set: set[bytes] | None = None
        #: The CID of the last record that passed authentication.
        self.last_received_cid: bytes | None = None
        self.read_epochs: dict[int, ReadEpoch] = {}
        self.write_epochs: dict[int, WriteEpoch] = {}
        #: The epoch new records are sent in.
        self.write_epoch = 0
        self._plaintext_seq = 0

    # ------------------------------------------------------------ epochs
    def install_read_epoch(self, epoch: int, suite: CipherSuiteInfo, secret: bytes) -> None:
        """Accept records of ``epoch`` protected with the peer's ``secret``."""
        self.read_epochs[epoch] = ReadEpoch(epoch, suite, secret, self.replay_window, self.aead_cache)
        while len(self.read_epochs) > self.max_read_epochs:
            del self.read_epochs[min(self.read_epochs)]

    def discard_read_epoch(self, epoch: int) -> None:
        """Stop accepting ``epoch`` (e.g. early data once epoch 3 works, §5.6)."""
        self.read_epochs.pop(epoch, None)

    def install_write_epoch(self, epoch: int, suite: CipherSuiteInfo, secret: bytes, *, activate: bool = True) -> None:
        """Add keys for sending in ``epoch``; with ``activate`` new records use it.

        Older write epochs are kept: retransmissions MUST use the epoch of
        the original transmission (§4.2.1). Call :meth:`discard_write_epoch`
        once nothing is left to retransmit in them.
        """
        if epoch in self.write_epochs:
            raise ValueError(f"write epoch {epoch} is already installed")
        self.write_epochs[epoch] = WriteEpoch(epoch, suite, secret, self.aead_cache)
        if activate:
            self.write_epoch = epoch

    def discard_write_epoch(self, epoch: int) -> None:
        if epoch == self.write_epoch:
            raise ValueError("cannot discard the current write epoch")
        self.write_epochs.pop(epoch, None)

    # ------------------------------------------------------------ sending
    def overhead(self, epoch: int | None = None) -> int:
        """Bytes one record in ``epoch`` adds to its content (for PMTU maths)."""
        epoch = self.write_epoch if epoch is None else epoch
        if epoch == 0:
            return _PLAINTEXT_HEADER_LEN
        return self._write(epoch).overhead(seq_len=self.seq_len, cid_len=len(self.send_cid))

    def _write(self, epoch: int) -> WriteEpoch:
        try:
            return self.write_epochs[epoch]
        except KeyError:
            raise ValueError(f"no keys to send in epoch {epoch}") from None

    def seal(self, content_type: int, data: bytes, epoch: int | None = None) -> tuple[RecordNumber, bytes]:
        """One record carrying ``data`` in ``epoch`` (default: the current one)."""
        epoch = self.write_epoch if epoch is None else epoch
        if epoch == 0:
            seq = self._plaintext_seq
            record = encode_plaintext(content_type, seq, data)
            self._plaintext_seq = seq + 1
            return RecordNumber(0, seq), record
        return self._write(epoch).seal(content_type, data, seq_len=self.seq_len, cid=self.send_cid)

    def protect(self, content_type: int, data: bytes, epoch: int | None = None) -> bytes:
        """:meth:`seal` returning only the record's bytes (the data path)."""
        epoch = self.write_epoch if epoch is None else epoch
        if epoch == 0:
            return self.seal(content_type, data, 0)[1]
        return self._write(epoch).protect(content_type, data, seq_len=self.seq_len, cid=self.send_cid)

    # ------------------------------------------------------------ receiving
    def receive_datagram(self, data: bytes | bytearray | memoryview) -> tuple[list[ReceivedRecord], list[DropReason]]:
        """Parse and deprotect one datagram.

        Returns:
            ``(records, drops)``: accepted records in datagram order, and the
            reasons for everything discarded. Never raises on bad input.
        """
        parsed, drops = parse_datagram(data, len(self.receive_cid))
        out: list[ReceivedRecord] = []
        for rec in parsed:
            result = self.open_record(rec)
            if isinstance(result, DropReason):
                drops.append(result)
            else:
                out.append(result)
        return out, drops

    def open_record(self, rec: PlaintextRecord | CiphertextRecord) -> RecordOrDrop:
        """Accept one record from :func:`parse_datagram` (deprotecting it if needed).

        Use this instead of :meth:`receive_datagram` to act between the
        records of a datagram (e.g. install handshake keys after the
        ServerHello before opening the EncryptedExtensions record behind it).
        """
        if isinstance(rec, PlaintextRecord):
            if not content_type_allowed(0, rec.content_type):
                return DropReason.CONTENT_TYPE_NOT_ALLOWED
            return ReceivedRecord(RecordNumber(0, rec.seq), rec.content_type, rec.fragment, False)
        accepted = self.receive_cid_set
        if (rec.cid not in accepted) if accepted is not None else (rec.cid != self.receive_cid):
            return DropReason.WRONG_CID
        epoch = reconstruct_epoch(rec.epoch_bits, self.read_epochs)
        if epoch is None:
            return DropReason.UNKNOWN_EPOCH
        result = self.read_epochs[epoch].open(rec)
        if isinstance(result, ReceivedRecord):
            if not content_type_allowed(epoch, result.content_type):
                return DropReason.CONTENT_TYPE_NOT_ALLOWED
            self.last_received_cid = rec.cid
        return result
