"""Peer certificate checks (RFC 9846 §4.4.2.4) on top of ``cryptography``'s
X.509 path validation (RFC 5280 with the Web PKI profile).

The client checks the server's chain against its trust anchors and the
server name it expects (DNS name or IP address in subjectAltName); the
server checks a client's chain against its anchors. Failures carry the TLS
alert that tells the peer why (unknown_ca, certificate_expired,
bad_certificate, ...).
"""

from __future__ import annotations

import datetime
import ipaddress
import warnings
from typing import Optional, Sequence

from cryptography import x509
from cryptography.x509 import verification as xv

from ..errors import LocalProtocolError
from .enums import AlertDescription


class CertificateVerificationError(LocalProtocolError):
    """The peer's certificate chain is not acceptable."""


def parse_certificates(ders: Sequence[bytes]) -> list[x509.Certificate]:
    """DER certificates from a Certificate message; bad DER is bad_certificate."""
    out = []
    for der in ders:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out.append(x509.load_der_x509_certificate(der))
        except ValueError as exc:
            raise CertificateVerificationError(AlertDescription.bad_certificate, f"cannot parse certificate: {exc}") from None
    return out


def _alert_for(message: str) -> int:
    """The RFC 9846 §6.2 alert for a chain ``cryptography`` refused."""
    # Its messages may end in "(encountered processing <Certificate(subject=
    # ...)>)": only the reason before that counts.
    m = message.lower().split("(encountered processing", 1)[0]
    # certificate_expired: "a certificate has expired or is not currently
    # valid" (the leaf's or an intermediate's validity period).
    if "not valid at validation time" in m or "expired" in m or "not yet valid" in m or "validity" in m:
        return AlertDescription.certificate_expired
    if "subject" in m or "name" in m and "mismatch" in m or "san" in m:
        return AlertDescription.bad_certificate
    if "candidates exhausted" in m or "issuer" in m or "no valid chain" in m:
        return AlertDescription.unknown_ca
    return AlertDescription.bad_certificate


# Building a Store costs ~3 us per certificate (about 0.5 ms for a system
# trust store), so stores are kept per set of anchor objects.
_STORES: dict[tuple[int, ...], tuple[Sequence[x509.Certificate], xv.Store]] = {}


def _store(anchors: Sequence[x509.Certificate]) -> xv.Store:
    if not anchors:
        raise CertificateVerificationError(AlertDescription.unknown_ca, "certificate verify failed: no trust anchors configured")
    key = tuple(map(id, anchors))
    hit = _STORES.get(key)
    if hit is not None:
        return hit[1]
    store = xv.Store(list(anchors))
    if len(_STORES) >= 16:
        _STORES.clear()
    # Keep the certificates alive with the entry so that their ids stay theirs.
    _STORES[key] = (tuple(anchors), store)
    return store


def verify_server_chain(
    chain: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    server_name: Optional[str],
    now: Optional[datetime.datetime] = None,
) -> None:
    """Validate a server chain for ``server_name`` (DNS name or IP literal)."""
    if not server_name:
        raise CertificateVerificationError(
            AlertDescription.bad_certificate, "certificate verify failed: no server name to check the certificate against"
        )
    subject: xv.Subject
    # Only a name with a colon (IPv6) or of digits and dots (IPv4) can be an
    # IP literal: host names skip ipaddress' parse and its exception.
    if ":" not in server_name and not server_name.replace(".", "").isdigit():
        subject = xv.DNSName(server_name)
    else:
        try:
            subject = xv.IPAddress(ipaddress.ip_address(server_name))
        except ValueError:
            subject = xv.DNSName(server_name)
    builder = xv.PolicyBuilder().store(_store(anchors))
    if now is not None:
        builder = builder.time(now)
    try:
        builder.build_server_verifier(subject).verify(chain[0], list(chain[1:]))
    except xv.VerificationError as exc:
        raise CertificateVerificationError(_alert_for(str(exc)), f"certificate verify failed: {exc}") from None
    except ValueError as exc:
        raise CertificateVerificationError(AlertDescription.bad_certificate, f"certificate verify failed: {exc}") from None


def verify_chain_only(chain: Sequence[x509.Certificate], anchors: Sequence[x509.Certificate]) -> None:
    """Validate a server chain without a name check (check_hostname=False)."""
    leaf = chain[0]
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CertificateVerificationError(AlertDescription.bad_certificate, "certificate has no subjectAltName") from None
    names = san.get_values_for_type(x509.DNSName) + [str(a) for a in san.get_values_for_type(x509.IPAddress)]
    if not names:
        raise CertificateVerificationError(AlertDescription.bad_certificate, "certificate names no DNS name or IP address")
    verify_server_chain(chain, anchors, names[0].replace("*.", "x."))


_CLIENT_EE_POLICY = xv.ExtensionPolicy.webpki_defaults_ee().may_be_present(
    x509.SubjectAlternativeName, xv.Criticality.AGNOSTIC, None
)


def verify_client_chain(
    chain: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    now: Optional[datetime.datetime] = None,
) -> None:
    """Validate a client certificate chain.

    Client certificates often name a person or device in the subject only,
    so, unlike the Web PKI server profile, subjectAltName may be absent.
    """
    builder = xv.PolicyBuilder().store(_store(anchors)).extension_policies(
        ca_policy=xv.ExtensionPolicy.webpki_defaults_ca(), ee_policy=_CLIENT_EE_POLICY
    )
    if now is not None:
        builder = builder.time(now)
    try:
        builder.build_client_verifier().verify(chain[0], list(chain[1:]))
    except xv.VerificationError as exc:
        raise CertificateVerificationError(_alert_for(str(exc)), f"client certificate verify failed: {exc}") from None
    except ValueError as exc:
        raise CertificateVerificationError(AlertDescription.bad_certificate, f"client certificate verify failed: {exc}") from None
