"""The TLS 1.3 key schedule (RFC 9846 §7.1–§7.5), as typed stages.

Theory of operation
-------------------
The schedule is a chain of HKDF-Extract steps, each adding one input secret::

    0   + PSK (or 0)          -> EarlySecret
    "derived" + (EC)DHE (or 0) -> HandshakeSecret
    "derived" + 0              -> MasterSecret

Each stage is its own class and only exposes the secrets that RFC 9846 §7.1
derives from it, so deriving e.g. an application traffic secret from the
handshake secret is a type error, not a silent interop bug (the Go
``crypto/tls`` ``EarlySecret → HandshakeSecret → MasterSecret`` shape).

Transcript hashes are passed in already computed (see
:mod:`tcpls.tls.transcript`); this module never sees handshake messages.
HKDF itself comes from ``cryptography``; ``hash_name`` is a hashlib name
(``"sha256"``/``"sha384"``) as in :class:`~tcpls.tls.suites.CipherSuiteInfo`.

Label prefix. HKDF-Expand-Label prepends ``"tls13 "`` to every label. DTLS 1.3
uses ``"dtls13"`` instead (RFC 9147 §5.9, no trailing space), which gives it
keys separate from TLS 1.3. Every function and stage here takes an optional
``prefix`` (default :data:`TLS13_LABEL_PREFIX`); pass
:data:`DTLS13_LABEL_PREFIX` for DTLS. A stage passes its prefix on to the
stages built from it.
"""

from __future__ import annotations

from typing import Callable

import hashlib
import hmac as _stdlib_hmac
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as _hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

if TYPE_CHECKING:
    from .suites import CipherSuiteInfo

__all__ = [
    "TLS13_LABEL_PREFIX",
    "DTLS13_LABEL_PREFIX",
    "hkdf_extract",
    "hkdf_expand_label",
    "derive_secret",
    "empty_hash",
    "EarlySecret",
    "HandshakeSecret",
    "MasterSecret",
    "finished_verify_data",
    "verify_finished",
    "next_traffic_secret",
    "traffic_key_iv",
    "resumption_psk",
    "export_keying_material",
]

#: HKDF-Expand-Label prefix of TLS 1.3 (RFC 9846 §7.1).
TLS13_LABEL_PREFIX = b"tls13 "
#: HKDF-Expand-Label prefix of DTLS 1.3 (RFC 9147 §5.9): no trailing space.
DTLS13_LABEL_PREFIX = b"dtls13"

# Labels of RFC 9846 §7.1 (without the "tls13 " prefix).
LABEL_DERIVED = b"derived"
LABEL_EXT_BINDER = b"ext binder"
LABEL_RES_BINDER = b"res binder"
LABEL_CLIENT_EARLY_TRAFFIC = b"c e traffic"
LABEL_EARLY_EXPORTER = b"e exp master"
LABEL_CLIENT_HANDSHAKE_TRAFFIC = b"c hs traffic"
LABEL_SERVER_HANDSHAKE_TRAFFIC = b"s hs traffic"
LABEL_CLIENT_APPLICATION_TRAFFIC = b"c ap traffic"
LABEL_SERVER_APPLICATION_TRAFFIC = b"s ap traffic"
LABEL_EXPORTER = b"exp master"
LABEL_RESUMPTION = b"res master"
LABEL_FINISHED = b"finished"  # §4.4.4
LABEL_TRAFFIC_UPDATE = b"traffic upd"  # §7.2
LABEL_KEY = b"key"  # §7.3
LABEL_IV = b"iv"  # §7.3
LABEL_RESUMPTION_PSK = b"resumption"  # §4.6.1
LABEL_EXPORTER_FINAL = b"exporter"  # §7.5

_HASH_CLASSES: dict[str, type[hashes.HashAlgorithm]] = {"sha256": hashes.SHA256, "sha384": hashes.SHA384}
# One (immutable) hash object per name, so hot paths do not build new ones.
_HASH_OBJECTS: dict[str, hashes.HashAlgorithm] = {n: c() for n, c in _HASH_CLASSES.items()}
_EMPTY_HASHES: dict[str, bytes] = {n: hashlib.new(n).digest() for n in _HASH_CLASSES}
_HASH_LENS: dict[str, int] = {n: hashlib.new(n).digest_size for n in _HASH_CLASSES}


def _algorithm(hash_name: str) -> hashes.HashAlgorithm:
    try:
        return _HASH_OBJECTS[hash_name]
    except KeyError:
        raise ValueError(f"unsupported TLS 1.3 hash {hash_name!r}") from None


def hash_len(hash_name: str) -> int:
    """Output length in bytes of ``hash_name``."""
    _algorithm(hash_name)
    return _HASH_LENS[hash_name]


def empty_hash(hash_name: str) -> bytes:
    """``Hash("")``: the transcript hash of no messages."""
    _algorithm(hash_name)
    return _EMPTY_HASHES[hash_name]


def hkdf_extract(hash_name: str, salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract(salt, IKM) (RFC 5869 §2.2)."""
    return HKDF.extract(_algorithm(hash_name), salt, ikm)


# The HkdfLabel up to the context is the same for every (label, length, label
# prefix), and so is the whole HkdfLabel when the context is empty ("key",
# "iv", "finished", "derived" with Hash(""), ...): built once and cached,
# together with the hash object, so a call costs one dict lookup plus the
# HKDF-Expand itself. Bounded: labels come from this module and exporter
# users, lengths from the suites and exporter callers.
_LABEL_PREFIXES: dict[tuple[str, bytes, int, bytes], tuple[hashes.HashAlgorithm, bytes]] = {}
_FULL_LABELS: dict[tuple[str, bytes, int, bytes], tuple[hashes.HashAlgorithm, bytes]] = {}
_LABEL_CACHE_MAX = 256


def _label_prefix(hash_name: str, label: bytes, length: int, label_prefix: bytes) -> tuple[hashes.HashAlgorithm, bytes]:
    # struct { uint16 length; opaque label<7..255>; opaque context<0..255>; }
    key = (hash_name, label, length, label_prefix)
    entry = _LABEL_PREFIXES.get(key)
    if entry is None:
        algorithm = _algorithm(hash_name)
        full = label_prefix + label
        if len(full) > 255 or not 0 <= length <= 0xFFFF:
            raise ValueError("HkdfLabel field out of range")
        entry = (algorithm, length.to_bytes(2, "big") + bytes((len(full),)) + full)
        if len(_LABEL_PREFIXES) < _LABEL_CACHE_MAX:
            _LABEL_PREFIXES[key] = entry
    return entry


def hkdf_expand_label(
    hash_name: str,
    secret: bytes,
    label: bytes,
    context: bytes,
    length: int,
    prefix: bytes = TLS13_LABEL_PREFIX,
) -> bytes:
    """HKDF-Expand-Label(Secret, Label, Context, Length) (RFC 9846 §7.1).

    ``label`` is given without the ``"tls13 "`` prefix, e.g. ``b"key"``;
    ``prefix`` is that prefix (:data:`DTLS13_LABEL_PREFIX` for DTLS 1.3).
    """
    key = (hash_name, label, length, prefix)
    if not context:
        entry = _FULL_LABELS.get(key)
        if entry is None:
            algorithm, head = _label_prefix(hash_name, label, length, prefix)
            entry = (algorithm, head + b"\x00")
            if len(_FULL_LABELS) < _LABEL_CACHE_MAX:
                _FULL_LABELS[key] = entry
        return HKDFExpand(entry[0], length, entry[1]).derive(secret)
    entry = _LABEL_PREFIXES.get(key) or _label_prefix(hash_name, label, length, prefix)
    if len(context) > 255:
        raise ValueError("HkdfLabel context longer than 255 bytes")
    return HKDFExpand(entry[0], length, b"".join((entry[1], bytes((len(context),)), context))).derive(secret)


# Derive-Secret's HkdfLabel up to the context, with the context length byte
# (a transcript hash is always Hash.length bytes), per (hash, label, prefix).
_DERIVE_HEADS: dict[tuple[str, bytes, bytes], tuple[hashes.HashAlgorithm, int, bytes]] = {}


_FIXED_INFOS: dict[tuple[str, bytes, "int | None", bytes], tuple[hashes.HashAlgorithm, int, bytes]] = {}


def _fixed_info(
    hash_name: str, label: bytes, length: "int | None", prefix: bytes
) -> tuple[hashes.HashAlgorithm, int, bytes]:
    """``(hash, length, whole HkdfLabel)`` of an HKDF-Expand-Label with an empty
    context (``length`` None: Hash.length), for callers that run HKDFExpand
    themselves: "key", "iv" (§7.3) and "finished" (§4.4.4) on every handshake."""
    key = (hash_name, label, length, prefix)
    entry = _FIXED_INFOS.get(key)
    if entry is None:
        n = _HASH_LENS[hash_name] if length is None else length
        algorithm, head = _label_prefix(hash_name, label, n, prefix)
        entry = (algorithm, n, head + b"\x00")
        if len(_FIXED_INFOS) < _LABEL_CACHE_MAX:
            _FIXED_INFOS[key] = entry
    return entry


def derive_secret(
    hash_name: str, secret: bytes, label: bytes, transcript_hash: bytes, prefix: bytes = TLS13_LABEL_PREFIX
) -> bytes:
    """Derive-Secret(Secret, Label, Messages) with ``Transcript-Hash(Messages)`` given."""
    entry = _DERIVE_HEADS.get((hash_name, label, prefix))
    if entry is not None and len(transcript_hash) == entry[1]:
        return HKDFExpand(entry[0], entry[1], entry[2] + transcript_hash).derive(secret)
    n = _HASH_LENS[hash_name]
    if entry is None and len(_DERIVE_HEADS) < _LABEL_CACHE_MAX:
        algorithm, head = _label_prefix(hash_name, label, n, prefix)
        _DERIVE_HEADS[(hash_name, label, prefix)] = (algorithm, n, head + bytes((n,)))
    return hkdf_expand_label(hash_name, secret, label, transcript_hash, n, prefix)


_CONSTANTS: dict[tuple[str, ...], bytes] = {}


def _constant(key: tuple[str, ...], compute: "Callable[[], bytes]") -> bytes:
    """Values of the schedule that depend only on the hash (computed once)."""
    value = _CONSTANTS.get(key)
    if value is None:
        value = _CONSTANTS[key] = compute()
    return value


class EarlySecret:
    """``Early Secret = HKDF-Extract(0, PSK)`` and the secrets derived from it.

    Args:
        hash_name: suite hash.
        psk: the PSK; ``None`` means no PSK (Hash.length zero bytes).
        prefix: HKDF-Expand-Label prefix for this and the later stages
            (:data:`DTLS13_LABEL_PREFIX` for DTLS 1.3).
    """

    __slots__ = ("hash_name", "secret", "prefix")

    def __init__(self, hash_name: str, psk: bytes | None = None, *, prefix: bytes = TLS13_LABEL_PREFIX) -> None:
        n = hash_len(hash_name)
        self.hash_name = hash_name
        self.prefix = prefix
        if psk is None:
            # Without a PSK the early secret is a constant of the hash (§7.1).
            self.secret: bytes = _constant(("early", hash_name), lambda: hkdf_extract(hash_name, b"\x00" * n, b"\x00" * n))
        else:
            self.secret = hkdf_extract(hash_name, b"\x00" * n, psk)

    def binder_key(self, external: bool) -> bytes:
        """``binder_key``: "ext binder" for external PSKs, "res binder" for resumption PSKs."""
        label = LABEL_EXT_BINDER if external else LABEL_RES_BINDER
        return derive_secret(self.hash_name, self.secret, label, _EMPTY_HASHES[self.hash_name], self.prefix)

    def client_early_traffic_secret(self, transcript_hash: bytes) -> bytes:
        """``client_early_traffic_secret``; transcript = ClientHello."""
        return derive_secret(self.hash_name, self.secret, LABEL_CLIENT_EARLY_TRAFFIC, transcript_hash, self.prefix)

    def early_exporter_master_secret(self, transcript_hash: bytes) -> bytes:
        """``early_exporter_secret``; transcript = ClientHello."""
        return derive_secret(self.hash_name, self.secret, LABEL_EARLY_EXPORTER, transcript_hash, self.prefix)

    def handshake_secret(self, shared_secret: bytes | None) -> HandshakeSecret:
        """Next stage: mix in the (EC)DHE/KEM shared secret (``None`` for psk_ke)."""
        return HandshakeSecret(self.hash_name, self.secret, shared_secret, prefix=self.prefix)


class HandshakeSecret:
    """``Handshake Secret = HKDF-Extract(Derive-Secret(early, "derived", ""), shared)``.

    Built by :meth:`EarlySecret.handshake_secret`.
    """

    __slots__ = ("hash_name", "secret", "prefix")

    def __init__(
        self,
        hash_name: str,
        early_secret: bytes,
        shared_secret: bytes | None,
        *,
        prefix: bytes = TLS13_LABEL_PREFIX,
    ) -> None:
        n = _HASH_LENS[hash_name]
        if early_secret == _constant(("early", hash_name), lambda: EarlySecret(hash_name).secret):
            # The early secret without a PSK does not depend on the label
            # prefix, but this salt does: it is cached per prefix.
            salt = _constant(
                ("derived-early", hash_name, prefix.decode("latin-1")),
                lambda: derive_secret(hash_name, early_secret, LABEL_DERIVED, _EMPTY_HASHES[hash_name], prefix),
            )
        else:
            salt = derive_secret(hash_name, early_secret, LABEL_DERIVED, _EMPTY_HASHES[hash_name], prefix)
        self.hash_name = hash_name
        self.prefix = prefix
        self.secret: bytes = hkdf_extract(hash_name, salt, shared_secret if shared_secret is not None else b"\x00" * n)

    def client_handshake_traffic_secret(self, th: bytes) -> bytes:
        """``client_handshake_traffic_secret``; transcript = ClientHello...ServerHello."""
        return derive_secret(self.hash_name, self.secret, LABEL_CLIENT_HANDSHAKE_TRAFFIC, th, self.prefix)

    def server_handshake_traffic_secret(self, th: bytes) -> bytes:
        """``server_handshake_traffic_secret``; transcript = ClientHello...ServerHello."""
        return derive_secret(self.hash_name, self.secret, LABEL_SERVER_HANDSHAKE_TRAFFIC, th, self.prefix)

    def master_secret(self) -> MasterSecret:
        """Next stage: the main ("master") secret."""
        return MasterSecret(self.hash_name, self.secret, prefix=self.prefix)


class MasterSecret:
    """``Main Secret = HKDF-Extract(Derive-Secret(handshake, "derived", ""), 0)``.

    Built by :meth:`HandshakeSecret.master_secret`.
    """

    __slots__ = ("hash_name", "secret", "prefix")

    def __init__(self, hash_name: str, handshake_secret: bytes, *, prefix: bytes = TLS13_LABEL_PREFIX) -> None:
        n = _HASH_LENS[hash_name]
        salt = derive_secret(hash_name, handshake_secret, LABEL_DERIVED, _EMPTY_HASHES[hash_name], prefix)
        self.hash_name = hash_name
        self.prefix = prefix
        self.secret: bytes = hkdf_extract(hash_name, salt, b"\x00" * n)

    def client_application_traffic_secret(self, th: bytes) -> bytes:
        """``client_application_traffic_secret_0``; transcript = ClientHello...server Finished."""
        return derive_secret(self.hash_name, self.secret, LABEL_CLIENT_APPLICATION_TRAFFIC, th, self.prefix)

    def server_application_traffic_secret(self, th: bytes) -> bytes:
        """``server_application_traffic_secret_0``; transcript = ClientHello...server Finished."""
        return derive_secret(self.hash_name, self.secret, LABEL_SERVER_APPLICATION_TRAFFIC, th, self.prefix)

    def exporter_master_secret(self, th: bytes) -> bytes:
        """``exporter_secret``; transcript = ClientHello...server Finished."""
        return derive_secret(self.hash_name, self.secret, LABEL_EXPORTER, th, self.prefix)

    def resumption_master_secret(self, th: bytes) -> bytes:
        """``resumption_secret``; transcript = ClientHello...client Finished."""
        return derive_secret(self.hash_name, self.secret, LABEL_RESUMPTION, th, self.prefix)


def finished_verify_data(
    hash_name: str, base_key: bytes, transcript_hash: bytes, prefix: bytes = TLS13_LABEL_PREFIX
) -> bytes:
    """Finished ``verify_data`` (RFC 9846 §4.4.4); also the PSK binder (§4.2.11.2).

    ``finished_key = HKDF-Expand-Label(BaseKey, "finished", "", Hash.length)``;
    ``verify_data = HMAC(finished_key, transcript_hash)``.
    """
    algorithm, n, info = _fixed_info(hash_name, LABEL_FINISHED, None, prefix)
    finished_key = HKDFExpand(algorithm, n, info).derive(base_key)
    mac = _hmac.HMAC(finished_key, algorithm)
    mac.update(transcript_hash)
    return mac.finalize()


def verify_finished(
    hash_name: str, base_key: bytes, transcript_hash: bytes, received: bytes, prefix: bytes = TLS13_LABEL_PREFIX
) -> bool:
    """Constant-time check of a received Finished ``verify_data`` (or binder)."""
    expected = finished_verify_data(hash_name, base_key, transcript_hash, prefix)
    return _stdlib_hmac.compare_digest(expected, bytes(received))


def next_traffic_secret(hash_name: str, secret: bytes, prefix: bytes = TLS13_LABEL_PREFIX) -> bytes:
    """``application_traffic_secret_N+1`` (RFC 9846 §7.2, "traffic upd")."""
    return hkdf_expand_label(hash_name, secret, LABEL_TRAFFIC_UPDATE, b"", _HASH_LENS[hash_name], prefix)


def traffic_key_iv(suite: CipherSuiteInfo, secret: bytes, prefix: bytes = TLS13_LABEL_PREFIX) -> tuple[bytes, bytes]:
    """``(write_key, write_iv)`` for ``secret`` (RFC 9846 §7.3)."""
    algorithm, key_len, key_info = _fixed_info(suite.hash_name, LABEL_KEY, suite.key_len, prefix)
    _, iv_len, iv_info = _fixed_info(suite.hash_name, LABEL_IV, suite.iv_len, prefix)
    key = HKDFExpand(algorithm, key_len, key_info).derive(secret)
    return key, HKDFExpand(algorithm, iv_len, iv_info).derive(secret)


def resumption_psk(
    hash_name: str, resumption_master_secret: bytes, ticket_nonce: bytes, prefix: bytes = TLS13_LABEL_PREFIX
) -> bytes:
    """PSK of a ticket: ``HKDF-Expand-Label(res_secret, "resumption", nonce, Hash.length)`` (§4.6.1)."""
    return hkdf_expand_label(
        hash_name, resumption_master_secret, LABEL_RESUMPTION_PSK, ticket_nonce, _HASH_LENS[hash_name], prefix
    )


def export_keying_material(
    hash_name: str,
    exporter_secret: bytes,
    label: bytes,
    context: bytes,
    length: int,
    prefix: bytes = TLS13_LABEL_PREFIX,
) -> bytes:
    """TLS-Exporter(label, context_value, key_length) (RFC 9846 §7.5).

    ``exporter_secret`` is the exporter (or early exporter) secret; ``label``
    is the full exporter label (no "tls13 " handling beyond HKDF-Expand-Label's).
    No context and an empty context give the same result.
    """
    derived = derive_secret(hash_name, exporter_secret, label, _EMPTY_HASHES[hash_name], prefix)
    context_hash = hashlib.new(hash_name, context).digest()
    return hkdf_expand_label(hash_name, derived, LABEL_EXPORTER_FINAL, context_hash, length, prefix)
