"""(EC)DHE and hybrid KEM key exchange for key_share (RFC 9846 §4.2.8, §7.4).

One ``KeyShare`` object per offered group: it holds our private key and
produces our public share and the shared secret with the peer's share.
Peer shares are validated (length and point format); a bad share is an
illegal_parameter alert (RFC 9846 §4.2.8.2).

X25519MLKEM768 (0x11EC, draft-ietf-tls-ecdhe-mlkem) is a KEM, so the two
roles differ: the client's share is ``ML-KEM-768 encapsulation key (1184) ||
X25519 public key (32)``; the server answers with :meth:`KeyShare.respond`,
whose share is ``ML-KEM-768 ciphertext (1088) || X25519 public key (32)``.
The shared secret is ``ML-KEM shared secret (32) || X25519 shared secret
(32)``: the ML-KEM part comes first for this group. ML-KEM and X25519 both
come from ``cryptography``.
"""

from __future__ import annotations

import warnings

from cryptography.hazmat.primitives.asymmetric import ec, x448, x25519

try:
    from cryptography.hazmat.primitives.asymmetric import mlkem
except ImportError:  # pragma: no cover - cryptography before ML-KEM support
    mlkem = None  # type: ignore[assignment]
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ..errors import IllegalParameter
from .enums import NamedGroup
from .ffdhe import FFDHE2048_P, FFDHE3072_P, FFDHE4096_P, FFDHE6144_P, FFDHE8192_P, GENERATOR

_CURVES: dict[int, type[ec.EllipticCurve]] = {
    NamedGroup.secp256r1: ec.SECP256R1,
    NamedGroup.secp384r1: ec.SECP384R1,
    NamedGroup.secp521r1: ec.SECP521R1,
}
_POINT_LEN = {NamedGroup.secp256r1: 65, NamedGroup.secp384r1: 97, NamedGroup.secp521r1: 133}

# RFC 7919 groups: parameters built once, on first use.
_FFDHE_PRIMES = {
    NamedGroup.ffdhe2048: FFDHE2048_P,
    NamedGroup.ffdhe3072: FFDHE3072_P,
    NamedGroup.ffdhe4096: FFDHE4096_P,
    NamedGroup.ffdhe6144: FFDHE6144_P,
    NamedGroup.ffdhe8192: FFDHE8192_P,
}
_FFDHE_PARAMETERS: dict[int, object] = {}

# cryptography deprecates finite-field DH (a warning since 47/48, removal
# announced). FFDHE is a fallback group here, so: no warning for users when it
# is negotiated, and no FFDHE at all once the API is gone.
try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from cryptography.hazmat.primitives.asymmetric import dh
except ImportError:  # pragma: no cover - a future cryptography without FFDH
    dh = None  # type: ignore[assignment]
    _FFDHE_PRIMES.clear()


def _ffdhe_parameters(group: int) -> object:
    params = _FFDHE_PARAMETERS.get(group)
    if params is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            params = _FFDHE_PARAMETERS[group] = dh.DHParameterNumbers(_FFDHE_PRIMES[group], GENERATOR).parameters()
    return params


_HYBRID = NamedGroup.X25519MLKEM768
_MLKEM768_EK_LEN = 1184
_MLKEM768_CT_LEN = 1088

SUPPORTED_GROUPS = frozenset(
    (NamedGroup.x25519, NamedGroup.x448, *_CURVES, *_FFDHE_PRIMES, *((_HYBRID,) if mlkem is not None else ()))
)


def _x25519_secret(private: object, peer: bytes) -> bytes:
    secret = private.exchange(x25519.X25519PublicKey.from_public_bytes(peer))  # type: ignore[attr-defined]
    # RFC 9846 §7.4.2: reject the all-zero output (small-order point).
    if secret == bytes(32):
        raise IllegalParameter("x25519 shared secret is zero")
    return secret


class KeyShare:
    """Our ephemeral key for one group."""

    __slots__ = ("group", "_private", "public")

    def __init__(self, group: int) -> None:
        self.group = group
        if group == NamedGroup.x25519:
            self._private: object = x25519.X25519PrivateKey.generate()
            self.public = self._private.public_key().public_bytes_raw()  # type: ignore[attr-defined]
        elif group == NamedGroup.x448:
            self._private = x448.X448PrivateKey.generate()
            self.public = self._private.public_key().public_bytes_raw()  # type: ignore[attr-defined]
        elif group in _FFDHE_PRIMES:
            # RFC 9846 §4.2.8.1: Y as a big-endian integer left-padded to the size of p.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._private = _ffdhe_parameters(group).generate_private_key()  # type: ignore[attr-defined]
            size = (_FFDHE_PRIMES[group].bit_length() + 7) // 8
            y = self._private.public_key().public_numbers().y  # type: ignore[attr-defined]
            self.public = y.to_bytes(size, "big")
        elif group == _HYBRID and mlkem is not None:
            kem = mlkem.MLKEM768PrivateKey.generate()
            ecdh = x25519.X25519PrivateKey.generate()
            self._private = (kem, ecdh)
            self.public = kem.public_key().public_bytes_raw() + ecdh.public_key().public_bytes_raw()
        elif group in _CURVES:
            self._private = ec.generate_private_key(_CURVES[group]())
            # RFC 9846 §4.2.8.2: uncompressed UncompressedPointRepresentation.
            self.public = self._private.public_key().public_bytes(  # type: ignore[attr-defined]
                Encoding.X962, PublicFormat.UncompressedPoint
            )
        else:
            raise ValueError(f"unsupported group {group}")

    @classmethod
    def respond(cls, group: int, peer_share: bytes) -> "tuple[KeyShare, bytes]":
        """Server side: our share for ``group`` answering the client's
        ``peer_share``, and the shared secret.

        For Diffie-Hellman groups this is a fresh key and :meth:`exchange`;
        for X25519MLKEM768 it encapsulates to the client's ML-KEM key.
        """
        if group != _HYBRID:
            ours = cls(group)
            return ours, ours.exchange(peer_share)
        if mlkem is None:  # pragma: no cover
            raise ValueError("X25519MLKEM768 needs a cryptography release with ML-KEM")
        if len(peer_share) != _MLKEM768_EK_LEN + 32:
            raise IllegalParameter(f"X25519MLKEM768 client share must be {_MLKEM768_EK_LEN + 32} bytes")
        try:
            # FIPS 203 §7.2 input checks (encapsulation key modulus check) happen here.
            ek = mlkem.MLKEM768PublicKey.from_public_bytes(peer_share[:_MLKEM768_EK_LEN])
            kem_secret, ciphertext = ek.encapsulate()
        except (ValueError, TypeError) as exc:
            raise IllegalParameter(f"invalid ML-KEM-768 encapsulation key: {exc}") from None
        ecdh = x25519.X25519PrivateKey.generate()
        try:
            ecdh_secret = _x25519_secret(ecdh, peer_share[_MLKEM768_EK_LEN:])
        except (ValueError, TypeError) as exc:
            raise IllegalParameter(f"invalid x25519 part of the X25519MLKEM768 share: {exc}") from None
        ours = cls.__new__(cls)
        ours.group = group
        ours._private = None
        ours.public = ciphertext + ecdh.public_key().public_bytes_raw()
        return ours, kem_secret + ecdh_secret

    def exchange(self, peer_share: bytes) -> bytes:
        """Shared secret with the peer's key_exchange bytes (RFC 9846 §7.4)."""
        group = self.group
        try:
            if group == NamedGroup.x25519:
                if len(peer_share) != 32:
                    raise IllegalParameter("x25519 key share must be 32 bytes")
                return _x25519_secret(self._private, peer_share)
            if group == _HYBRID:
                # Client side: the server's ciphertext || X25519 public key.
                if len(peer_share) != _MLKEM768_CT_LEN + 32:
                    raise IllegalParameter(f"X25519MLKEM768 server share must be {_MLKEM768_CT_LEN + 32} bytes")
                kem, ecdh = self._private  # type: ignore[misc]
                # ML-KEM decapsulation never fails on a well-sized ciphertext
                # (implicit rejection: a bad one yields an unrelated secret and
                # the handshake then fails at Finished).
                kem_secret = kem.decapsulate(peer_share[:_MLKEM768_CT_LEN])
                return kem_secret + _x25519_secret(ecdh, peer_share[_MLKEM768_CT_LEN:])
            if group == NamedGroup.x448:
                if len(peer_share) != 56:
                    raise IllegalParameter("x448 key share must be 56 bytes")
                secret = self._private.exchange(x448.X448PublicKey.from_public_bytes(peer_share))  # type: ignore[attr-defined]
                if secret == bytes(56):
                    raise IllegalParameter("x448 shared secret is zero")
                return secret
            if group in _FFDHE_PRIMES:
                return self._exchange_ffdhe(peer_share)
            if len(peer_share) != _POINT_LEN[group] or peer_share[0] != 4:
                raise IllegalParameter("ECDHE share must be an uncompressed point of the right size")
            peer = ec.EllipticCurvePublicKey.from_encoded_point(_CURVES[group](), peer_share)
            return self._private.exchange(ec.ECDH(), peer)  # type: ignore[attr-defined]
        except IllegalParameter:
            raise
        except (ValueError, TypeError) as exc:
            raise IllegalParameter(f"invalid key share for group {group}: {exc}") from None

    def _exchange_ffdhe(self, peer_share: bytes) -> bytes:
        """RFC 9846 §4.2.8.1 and §7.4.1: the peer's Y must be exactly the size
        of p and satisfy 1 < Y < p-1; the shared secret keeps its leading zeros."""
        p = _FFDHE_PRIMES[self.group]
        size = (p.bit_length() + 7) // 8
        if len(peer_share) != size:
            raise IllegalParameter(f"FFDHE key share must be {size} bytes")
        y = int.from_bytes(peer_share, "big")
        if not 1 < y < p - 1:
            raise IllegalParameter("FFDHE public value out of range")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            peer = dh.DHPublicNumbers(y, dh.DHParameterNumbers(p, GENERATOR)).public_key()
            return self._private.exchange(peer).rjust(size, b"\x00")  # type: ignore[attr-defined]
