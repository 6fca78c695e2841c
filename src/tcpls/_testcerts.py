"""Throwaway certificates for tests and the ``tcpls demo`` command.

Everything is generated in memory with ``cryptography``: a self-signed CA
(:func:`make_ca`), intermediate CAs (:func:`make_intermediate`) and leaf
certificates they sign (:func:`make_leaf`).
:func:`write_pem` stores a certificate, a chain and/or a key as PEM so that
:meth:`tcpls.tls.config.TLSConfig.load_cert_chain` can read them back.

Never use these for anything but tests: keys are not protected and the
validity window is short.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from typing import Optional, Sequence, Union

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["make_ca", "make_intermediate", "make_leaf", "write_pem", "make_key"]

_VALIDITY = datetime.timedelta(days=30)


def make_key(key_type: str = "ec256"):
    """A fresh private key: ``ec256``, ``ec384``, ``rsa2048`` or ``ed25519``."""
    if key_type == "ec256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ec384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type == "rsa2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unknown key type {key_type!r} (ec256, ec384, rsa2048, ed25519)")


def _hash_for(key) -> Optional[hashes.HashAlgorithm]:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def _window(
    not_before: Optional[datetime.datetime] = None, not_after: Optional[datetime.datetime] = None
) -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.timezone.utc)
    return not_before or now - datetime.timedelta(hours=1), not_after or now + _VALIDITY


_CA_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def make_ca(name: str = "tcpls demo CA", key_type: str = "ec256") -> tuple[x509.Certificate, object]:
    """A self-signed CA certificate and its private key."""
    key = make_key(key_type)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    not_before, not_after = _window()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_CA_USAGE, critical=True)
        .add_extension(ski, critical=False)
        .sign(key, _hash_for(key))
    )
    return cert, key


def make_intermediate(
    ca_cert: x509.Certificate,
    ca_key,
    name: str = "tcpls test intermediate",
    key_type: str = "ec256",
    not_before: Optional[datetime.datetime] = None,
    not_after: Optional[datetime.datetime] = None,
) -> tuple[x509.Certificate, object]:
    """An intermediate CA certificate (path length 0) signed by the CA, and its key.

    ``not_before``/``not_after`` default to the usual short window around now.
    """
    key = make_key(key_type)
    not_before, not_after = _window(not_before, not_after)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca_key, _hash_for(ca_key))
    )
    return cert, key


def make_leaf(
    ca_cert: x509.Certificate,
    ca_key,
    names: Sequence[str] = ("localhost", "127.0.0.1"),
    key_type: str = "ec256",
    client: bool = False,
    not_before: Optional[datetime.datetime] = None,
    not_after: Optional[datetime.datetime] = None,
    extra_extensions: Sequence[x509.ExtensionType] = (),
) -> tuple[x509.Certificate, object]:
    """A leaf certificate for ``names`` (DNS names or IP literals) signed by the CA.

    The first name is also the subject common name. ``client=True`` makes a
    client-authentication certificate instead of a server one.
    ``not_before``/``not_after`` override the usual short window around now
    (tests use them for expired or not yet valid certificates);
    ``extra_extensions`` are added as non-critical extensions.
    """
    key = make_key(key_type)
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    cn = names[0] if names else "tcpls test"
    not_before, not_after = _window(not_before, not_after)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=isinstance(key, rsa.RSAPrivateKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )
    if sans:
        cert = cert.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    for ext in extra_extensions:
        cert = cert.add_extension(ext, critical=False)
    return cert.sign(ca_key, _hash_for(ca_key)), key


def write_pem(
    path: Union[str, "os.PathLike[str]"],
    cert_or_chain: Union[x509.Certificate, Sequence[x509.Certificate], None],
    key=None,
) -> str:
    """Write certificate(s) then, if given, the unencrypted key to ``path`` as PEM.

    Returns ``str(path)``.
    """
    if cert_or_chain is None:
        certs: Sequence[x509.Certificate] = []
    elif isinstance(cert_or_chain, x509.Certificate):
        certs = [cert_or_chain]
    else:
        certs = list(cert_or_chain)
    out = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
    if key is not None:
        out += key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    with open(path, "wb") as f:
        f.write(out)
    return os.fspath(path)
