"""Signature schemes for CertificateVerify (RFC 9846 §4.2.3, §4.4.3).

Maps a ``SignatureScheme`` to ``cryptography`` sign/verify calls, picks the
scheme for our key from the peer's list, and builds the signed content
(64 spaces, context string, 0, transcript hash).
"""

from __future__ import annotations

from typing import Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509.oid import PublicKeyAlgorithmOID

from ..errors import DecryptError, HandshakeFailure, IllegalParameter
from .enums import SignatureScheme as S

SERVER_CONTEXT = b"TLS 1.3, server CertificateVerify"
CLIENT_CONTEXT = b"TLS 1.3, client CertificateVerify"

_HASHES = {"sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}
_ECDSA = {
    S.ecdsa_secp256r1_sha256: (ec.SECP256R1, hashes.SHA256),
    S.ecdsa_secp384r1_sha384: (ec.SECP384R1, hashes.SHA384),
    S.ecdsa_secp521r1_sha512: (ec.SECP521R1, hashes.SHA512),
}
_PSS_RSAE = {S.rsa_pss_rsae_sha256: hashes.SHA256, S.rsa_pss_rsae_sha384: hashes.SHA384, S.rsa_pss_rsae_sha512: hashes.SHA512}
_PSS_PSS = {S.rsa_pss_pss_sha256: hashes.SHA256, S.rsa_pss_pss_sha384: hashes.SHA384, S.rsa_pss_pss_sha512: hashes.SHA512}


def signed_content(context: bytes, transcript_hash: bytes) -> bytes:
    """RFC 9846 §4.4.3: the bytes covered by a CertificateVerify signature."""
    return b"\x20" * 64 + context + b"\x00" + transcript_hash


def is_rsa_pss_certificate(certificate: object) -> bool:
    """True for an RSASSA-PSS (id-RSASSA-PSS) key, which may only sign with
    the rsa_pss_pss_* schemes; rsaEncryption keys use rsa_pss_rsae_* (RFC 9846 §4.2.3)."""
    oid = getattr(certificate, "public_key_algorithm_oid", None)
    return oid is not None and oid == PublicKeyAlgorithmOID.RSASSA_PSS


def schemes_for_key(key: object, pss: bool = False) -> list[S]:
    """Signature schemes usable with this private or public key in TLS 1.3.

    ``pss`` says the certificate's key is an RSASSA-PSS key (cryptography
    loads those as ordinary RSA keys; the certificate tells them apart).
    """
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return [s for s, (curve, _) in _ECDSA.items() if isinstance(key.curve, curve)]
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return list(_PSS_PSS) if pss else list(_PSS_RSAE)
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return [S.ed25519]
    if isinstance(key, (ed448.Ed448PrivateKey, ed448.Ed448PublicKey)):
        return [S.ed448]
    return []


def choose_scheme(
    key: object, peer_schemes: Sequence[int], our_schemes: Sequence[int], certificate: object = None
) -> S:
    """First scheme for our key (in our preference order) that the peer accepts."""
    usable = schemes_for_key(key, is_rsa_pss_certificate(certificate))
    peer = set(peer_schemes)
    for s in our_schemes:
        if s in usable and s in peer:
            return S(s)
    raise HandshakeFailure("no signature scheme in common with the peer for our certificate key")


def sign(key: object, scheme: int, data: bytes) -> bytes:
    if scheme in _ECDSA:
        return key.sign(data, ec.ECDSA(_ECDSA[S(scheme)][1]()))  # type: ignore[attr-defined]
    if scheme in _PSS_RSAE or scheme in _PSS_PSS:
        h = (_PSS_RSAE.get(S(scheme)) or _PSS_PSS[S(scheme)])()
        return key.sign(data, padding.PSS(padding.MGF1(h), h.digest_size), h)  # type: ignore[attr-defined]
    if scheme in (S.ed25519, S.ed448):
        return key.sign(data)  # type: ignore[attr-defined]
    raise HandshakeFailure(f"cannot sign with scheme {scheme}")


def verify(public_key: object, scheme: int, signature: bytes, data: bytes, *, pss: bool = False) -> None:
    """Check a CertificateVerify signature.

    A scheme that does not fit the certificate's key (including rsae for an
    RSASSA-PSS key and pss for an rsaEncryption key) is illegal_parameter; a
    signature that does not verify is decrypt_error (RFC 9846 §4.4.3).
    """
    if scheme not in schemes_for_key(public_key, pss):
        raise IllegalParameter(f"signature scheme {scheme:#06x} does not match the certificate key")
    try:
        if scheme in _ECDSA:
            public_key.verify(signature, data, ec.ECDSA(_ECDSA[S(scheme)][1]()))  # type: ignore[attr-defined]
        elif scheme in _PSS_RSAE or scheme in _PSS_PSS:
            h = (_PSS_RSAE.get(S(scheme)) or _PSS_PSS[S(scheme)])()
            public_key.verify(signature, data, padding.PSS(padding.MGF1(h), h.digest_size), h)  # type: ignore[attr-defined]
        else:  # ed25519 / ed448
            public_key.verify(signature, data)  # type: ignore[attr-defined]
    except InvalidSignature:
        raise DecryptError("CertificateVerify signature does not verify") from None


def verify_certificate_verify(certificate: object, scheme: int, signature: bytes, data: bytes) -> None:
    """:func:`verify` with the key and its kind taken from ``certificate``."""
    verify(certificate.public_key(), scheme, signature, data, pss=is_rsa_pss_certificate(certificate))  # type: ignore[attr-defined]
