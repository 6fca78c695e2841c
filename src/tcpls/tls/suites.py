"""TLS 1.3 cipher suites (RFC 9846 §5.2, appendix B.4).

This is the only module that imports AEAD classes. Everything else asks
:func:`suite_info` for a :class:`CipherSuiteInfo`, which names the hash used
by the key schedule and the transcript (a :mod:`hashlib` name) and the AEAD
class plus its key and IV lengths (RFC 9846 §7.3).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM, ChaCha20Poly1305

from .enums import CipherSuite

__all__ = ["CipherSuiteInfo", "SUITES", "suite_info"]

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"sha256": hashes.SHA256, "sha384": hashes.SHA384}

# RFC 9846 §5.5: AES-GCM may protect up to 2^24.5 full-size records under one
# key; for ChaCha20/Poly1305 the sequence number wraps first. AES-CCM: the
# same bound as AES-GCM is used (RFC 9147 / AEAD-LIMITS give 2^24.5 too).
_GCM_RECORD_LIMIT = int(2**24.5)
_NO_RECORD_LIMIT = 2**64


@dataclass(frozen=True)
class CipherSuiteInfo:
    """Static parameters of one TLS 1.3 cipher suite.

    Attributes:
        suite: the codepoint.
        hash_name: hashlib name of the suite hash (``"sha256"``/``"sha384"``).
        hash_len: output length of that hash in bytes.
        key_len: AEAD key length in bytes.
        iv_len: per-record nonce length in bytes (12 for every TLS 1.3 suite).
        aead: the ``cryptography`` AEAD class; :meth:`new_aead` builds one.
        tag_len: AEAD expansion in bytes (16, or 8 for AES-128-CCM-8).
        record_limit: number of records one key may protect before a key
            update is required (RFC 9846 §5.5).
    """

    suite: CipherSuite
    hash_name: str
    hash_len: int
    key_len: int
    iv_len: int
    aead: type
    tag_len: int = 16
    record_limit: int = _NO_RECORD_LIMIT

    def new_aead(self, key: bytes) -> object:
        """The AEAD object keyed with ``key`` (AES-CCM with this suite's tag length)."""
        if self.aead is AESCCM:
            return AESCCM(key, tag_length=self.tag_len)
        return self.aead(key)

    def hash_algorithm(self) -> hashes.HashAlgorithm:
        """A ``cryptography`` hash object for this suite's hash."""
        return _HASHES[self.hash_name]()


SUITES: dict[int, CipherSuiteInfo] = {
    CipherSuite.TLS_AES_128_GCM_SHA256: CipherSuiteInfo(
        CipherSuite.TLS_AES_128_GCM_SHA256, "sha256", 32, 16, 12, AESGCM, 16, _GCM_RECORD_LIMIT
    ),
    CipherSuite.TLS_AES_256_GCM_SHA384: CipherSuiteInfo(
        CipherSuite.TLS_AES_256_GCM_SHA384, "sha384", 48, 32, 12, AESGCM, 16, _GCM_RECORD_LIMIT
    ),
    CipherSuite.TLS_CHACHA20_POLY1305_SHA256: CipherSuiteInfo(
        CipherSuite.TLS_CHACHA20_POLY1305_SHA256, "sha256", 32, 32, 12, ChaCha20Poly1305, 16, _NO_RECORD_LIMIT
    ),
    CipherSuite.TLS_AES_128_CCM_SHA256: CipherSuiteInfo(
        CipherSuite.TLS_AES_128_CCM_SHA256, "sha256", 32, 16, 12, AESCCM, 16, _GCM_RECORD_LIMIT
    ),
    # AEAD_AES_128_CCM_8 (RFC 6655): the same cipher with an 8-byte tag. Its
    # confidentiality limit is AES-CCM's (RFC 9147 appendix B.3); never
    # offered by default (RFC 9846 §9.1 makes CCM optional).
    CipherSuite.TLS_AES_128_CCM_8_SHA256: CipherSuiteInfo(
        CipherSuite.TLS_AES_128_CCM_8_SHA256, "sha256", 32, 16, 12, AESCCM, 8, _GCM_RECORD_LIMIT
    ),
}


def suite_info(suite: int) -> CipherSuiteInfo:
    """Parameters of ``suite``; raises :class:`KeyError` for unknown suites."""
    return SUITES[suite]
