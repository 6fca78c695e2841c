"""One configuration object for both roles.

``TLSConfig`` holds what a TLS endpoint needs to know before the first byte:
its certificate chain and key, what it trusts, what it offers (suites,
groups, signature schemes, ALPN), and where it logs keys. Loading helpers
read PEM files; everything else is plain attributes validated by
:meth:`TLSConfig.validate`.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
import threading
from typing import Callable, Optional, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from .enums import CipherSuite, NamedGroup, PskKeyExchangeMode, SignatureScheme
from .kex import SUPPORTED_GROUPS
from .session import AntiReplay, ExternalPSK, KeyValueStore, Session, TicketKeys

DEFAULT_CIPHER_SUITES: tuple[CipherSuite, ...] = (
    CipherSuite.TLS_AES_128_GCM_SHA256,
    CipherSuite.TLS_AES_256_GCM_SHA384,
    CipherSuite.TLS_CHACHA20_POLY1305_SHA256,
)
DEFAULT_GROUPS: tuple[NamedGroup, ...] = (
    NamedGroup.x25519,
    NamedGroup.secp256r1,
    NamedGroup.secp384r1,
    NamedGroup.x448,
    NamedGroup.secp521r1,
    # RFC 7919 finite-field groups, last: only when a peer has nothing better.
    NamedGroup.ffdhe2048,
    NamedGroup.ffdhe3072,
    NamedGroup.ffdhe4096,
    NamedGroup.ffdhe6144,
    NamedGroup.ffdhe8192,
)
# What we accept in CertificateVerify (RFC 9846 §4.2.3), in preference order.
DEFAULT_SIGNATURE_SCHEMES: tuple[SignatureScheme, ...] = (
    SignatureScheme.ecdsa_secp256r1_sha256,
    SignatureScheme.ecdsa_secp384r1_sha384,
    SignatureScheme.ed25519,
    SignatureScheme.rsa_pss_rsae_sha256,
    SignatureScheme.rsa_pss_rsae_sha384,
    SignatureScheme.rsa_pss_rsae_sha512,
    SignatureScheme.ecdsa_secp521r1_sha512,
    SignatureScheme.ed448,
    SignatureScheme.rsa_pss_pss_sha256,
    SignatureScheme.rsa_pss_pss_sha384,
    SignatureScheme.rsa_pss_pss_sha512,
)
# Schemes accepted for signatures inside certificates (signature_algorithms_cert):
# the above plus PKCS#1 v1.5, which TLS 1.3 allows in certificates only.
DEFAULT_CERT_SIGNATURE_SCHEMES: tuple[SignatureScheme, ...] = DEFAULT_SIGNATURE_SCHEMES + (
    SignatureScheme.rsa_pkcs1_sha256,
    SignatureScheme.rsa_pkcs1_sha384,
    SignatureScheme.rsa_pkcs1_sha512,
)

# Names accepted in configuration: the defaults plus AES-128-CCM and
# AES-128-CCM-8 (RFC 9846 §9.1, appendix B.4), implemented but not offered
# unless asked for.
_SUITES_BY_NAME = {
    s.name: s
    for s in (*DEFAULT_CIPHER_SUITES, CipherSuite.TLS_AES_128_CCM_SHA256, CipherSuite.TLS_AES_128_CCM_8_SHA256)
}
_GROUPS_BY_NAME = {g.name: g for g in NamedGroup}
# Groups that may be configured but are not offered unless asked for:
# X25519MLKEM768 (post-quantum hybrid) makes every ClientHello 1.2 KB larger
# and is unknown to many peers, so it is opt-in (``groups=[X25519MLKEM768,
# x25519, ...]``; a server lists it first to prefer it when offered).
OPTIONAL_GROUPS: tuple[NamedGroup, ...] = (NamedGroup.X25519MLKEM768,)
_GROUP_ALIASES = {"P-256": "secp256r1", "P-384": "secp384r1", "prime256v1": "secp256r1", "X25519": "x25519", "X448": "x448"}

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey

SYSTEM_CA_FILES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
    "/etc/ssl/cert.pem",  # Alpine, macOS, BSD
)


def parse_cipher_suites(text: str | Sequence[str]) -> list[CipherSuite]:
    """IANA suite names, comma or colon separated, to ``CipherSuite`` values."""
    names = _split(text)
    out = []
    for n in names:
        if n not in _SUITES_BY_NAME:
            raise ValueError(f"unknown or unsupported cipher suite {n!r} (known: {', '.join(_SUITES_BY_NAME)})")
        out.append(_SUITES_BY_NAME[n])
    return out


def parse_groups(text: str | Sequence[str]) -> list[NamedGroup]:
    """IANA group names (``x25519``, ``secp256r1``, ...) to ``NamedGroup`` values."""
    out = []
    for n in _split(text):
        n = _GROUP_ALIASES.get(n, n)
        known = (*DEFAULT_GROUPS, *(g for g in OPTIONAL_GROUPS if g in SUPPORTED_GROUPS))
        if n not in _GROUPS_BY_NAME or _GROUPS_BY_NAME[n] not in known:
            raise ValueError(f"unknown or unsupported group {n!r} (known: {', '.join(g.name for g in known)})")
        out.append(_GROUPS_BY_NAME[n])
    return out


def parse_psk_modes(text: str | Sequence[str]) -> list[PskKeyExchangeMode]:
    """``psk_dhe_ke``/``psk_ke`` (RFC 9846 §4.2.9), in preference order."""
    out = []
    for n in _split(text):
        if n not in PskKeyExchangeMode.__members__:
            raise ValueError(f"unknown PSK key exchange mode {n!r} (known: psk_dhe_ke, psk_ke)")
        if PskKeyExchangeMode[n] not in out:
            out.append(PskKeyExchangeMode[n])
    if not out:
        raise ValueError("no PSK key exchange mode given")
    return out


def _split(text: str | Sequence[str]) -> list[str]:
    if isinstance(text, str):
        text = text.replace(":", ",").split(",")
    return [t.strip() for t in text if t.strip()]


def load_pem_certificates(data: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(data)


def load_certificate_files(
    certfile: str, keyfile: Optional[str] = None, password: Optional[bytes] = None
) -> tuple[list[x509.Certificate], "PrivateKey"]:
    """Read a PEM chain (leaf first) and the leaf's private key; check they match."""
    with open(certfile, "rb") as f:
        pem = f.read()
    chain = x509.load_pem_x509_certificates(pem)
    if keyfile is None:
        key_pem = pem
    else:
        with open(keyfile, "rb") as f:
            key_pem = f.read()
    key = serialization.load_pem_private_key(key_pem, password=password)
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        raise ValueError(f"unsupported private key type {type(key).__name__}")
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if chain[0].public_key().public_bytes(serialization.Encoding.DER, spki) != key.public_key().public_bytes(
        serialization.Encoding.DER, spki
    ):
        raise ValueError("the private key does not match the certificate")
    return chain, key


class LazyCertificate:
    """A certificate chain and key read from PEM files on first use.

    A server with many names (see ``TLSConfig.select_context``) can describe
    every certificate up front and pay for parsing only those that clients
    actually ask for. Loading happens once, under a lock; errors propagate to
    the handshake that needed the certificate (internal_error).
    """

    def __init__(self, certfile: str, keyfile: Optional[str] = None, password: Optional[bytes] = None) -> None:
        self.certfile = certfile
        self.keyfile = keyfile
        self.password = password
        self._loaded: Optional[tuple[list[x509.Certificate], PrivateKey]] = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    def load(self) -> tuple[list[x509.Certificate], "PrivateKey"]:
        with self._lock:
            if self._loaded is None:
                self._loaded = load_certificate_files(self.certfile, self.keyfile, self.password)
            return self._loaded

    def __repr__(self) -> str:
        return f"LazyCertificate({self.certfile!r}, loaded={self.loaded})"


class ExtensionHook:
    """Plug-in for handshake extensions the engine does not know itself.

    Subclass it, override what you need and put instances in
    :attr:`TLSConfig.extension_hooks`. A hook that keeps per-connection
    state serves one handshake only (give each connection its own config
    copy). A :class:`~tcpls.errors.LocalProtocolError` raised from a
    callback aborts the handshake with its alert.

    Attributes:
        encrypted_extension_types: extension types the server may return in
            EncryptedExtensions. They pass the engine's "only what was
            offered" check (RFC 9846 §4.2), so the hook must refuse those
            that do not answer its own offer.
    """

    encrypted_extension_types: frozenset[int] = frozenset()

    def client_hello_extensions(self) -> list[tuple[int, bytes]]:
        """Client: ``(type, body)`` pairs to add to the ClientHello.

        Called again for the second ClientHello after a HelloRetryRequest,
        which must carry the same extensions (RFC 9846 §4.1.2).
        """
        return []

    def on_encrypted_extensions(self, extensions: list[tuple[int, bytes]]) -> None:
        """Client: every extension of the server's EncryptedExtensions."""

    def on_client_hello(self, extensions: list[tuple[int, bytes]]) -> None:
        """Server: every extension of the ClientHello being answered."""

    def encrypted_extensions(self) -> list[tuple[int, bytes]]:
        """Server: ``(type, body)`` pairs to add to EncryptedExtensions."""
        return []


@dataclass
class TLSConfig:
    """Settings shared by client and server.

    Attributes:
        certificate_chain: our leaf certificate first, then intermediates.
        private_key: key of the leaf certificate.
        verify_peer: check the peer's certificate (client: always by default;
            server: only when ``request_client_certificate``). Setting it to
            False is the explicit *insecure* mode; it is never the default.
        check_hostname: client checks that the server certificate matches
            ``server_name``.
        trust_anchors: trusted root certificates; None means the system store.
        server_name: client: SNI to send and name to verify.
        alpn_protocols: protocols we offer (client) or accept, in preference
            order (server).
        cipher_suites / groups / signature_schemes: what we offer/accept, in
            preference order.
        key_share_groups: groups the client sends key shares for in its first
            ClientHello (default: the first of ``groups``).
        middlebox_compat: send the compatibility ChangeCipherSpec and a
            non-empty legacy_session_id (RFC 9846 appendix D.4).
        hello_retry_cookie: server adds a cookie to HelloRetryRequest.
        keylog_file: path to append SSLKEYLOGFILE lines to; defaults to the
            ``SSLKEYLOGFILE`` environment variable.
        keylog_callback: called with each key-log line (without newline).

    Resumption, PSKs and 0-RTT (RFC 9846 §2.2, §2.3, §4.2.9-§4.2.11, §4.6.1, §8):

        session: client: a :class:`Session` (from ``SessionTicketReceived``)
            to resume.
        psk: client: an :class:`ExternalPSK` to offer.
        psk_lookup: server: ``identity -> key bytes | ExternalPSK | None`` for
            external PSKs (bytes mean a SHA-256 PSK).
        psk_key_exchange_modes: modes offered (client) or accepted, in
            preference order (server); psk_ke has no forward secrecy.
        num_tickets: server: NewSessionTickets sent after each handshake.
        ticket_lifetime: server: seconds (at most 604800).
        ticket_keys: server: the keys sealing stateless tickets.
        ticket_store: server: if set, tickets are stateful and single-use,
            their state kept in this store.
        max_early_data: server: 0-RTT bytes allowed per ticket (0: off).
        early_data_callback: server: called with an ``EarlyDataOffer``;
            return False to reject 0-RTT that passed every other check.
        anti_replay: server: 0-RTT freshness window and ClientHello recording.
        resend_early_data_on_reject: client: queue rejected 0-RTT data to be
            sent again after the handshake (only if the ALPN did not change).

    Certificates and extensions (RFC 9846 §4.2.4, §4.2.6, §4.6.2; RFC 8449,
    RFC 6066, RFC 8879):

        lazy_certificate: a :class:`LazyCertificate` loaded into
            ``certificate_chain``/``private_key`` the first time a handshake
            needs them (if those are empty).
        extra_certificates: client: alternative ``(chain, key)`` pairs; the
            client answers a CertificateRequest with the first chain issued
            under one of the server's ``certificate_authorities`` (else the
            first usable one).
        certificate_authorities: server: CA names (``x509.Name``) sent in
            CertificateRequest; None: the subjects of explicitly configured
            ``trust_anchors`` (never the system store); [] sends none.
        post_handshake_auth: client: offer post-handshake authentication;
            None (default): only when a certificate is configured.
        record_size_limit: largest TLSInnerPlaintext we accept (64..16385,
            RFC 8449). Client: offered if set. Server: always answers a
            client's offer (with 16385 when unset).
        request_ocsp: client: ask for a stapled OCSP response (status_request).
        ocsp_response: server: DER OCSPResponse stapled to the leaf when asked.
        certificate_compression: algorithms (``CertificateCompressionAlgorithm``)
            we accept compressed certificates with, in preference order; the
            server also compresses its Certificate with the first of ours the
            client offered, and the client its own likewise.
        select_context: server: ``(server_name, alpn_offers) -> TLSConfig |
            None`` called on the first ClientHello; the returned configuration
            (certificate, ALPN, suites, tickets, client authentication...)
            serves this handshake; None keeps this one.
    """

    certificate_chain: list[x509.Certificate] = field(default_factory=list)
    private_key: Optional[PrivateKey] = None
    verify_peer: bool = True
    check_hostname: bool = True
    trust_anchors: Optional[list[x509.Certificate]] = None
    server_name: Optional[str] = None
    alpn_protocols: list[str] = field(default_factory=list)
    cipher_suites: list[CipherSuite] = field(default_factory=lambda: list(DEFAULT_CIPHER_SUITES))
    groups: list[NamedGroup] = field(default_factory=lambda: list(DEFAULT_GROUPS))
    key_share_groups: Optional[list[NamedGroup]] = None
    signature_schemes: list[SignatureScheme] = field(default_factory=lambda: list(DEFAULT_SIGNATURE_SCHEMES))
    request_client_certificate: bool = False
    require_client_certificate: bool = False
    middlebox_compat: bool = True
    hello_retry_cookie: bool = False
    reject_obsolete_groups: bool = True  # server: refuse TLS 1.2-only curves listed by TLS 1.3-only clients
    keylog_file: Optional[str] = None
    keylog_callback: Optional[Callable[[str], None]] = None
    max_handshake_message_size: int = 1 << 17
    session: Optional[Session] = None
    psk: Optional[ExternalPSK] = None
    psk_lookup: Optional[Callable[[bytes], "bytes | ExternalPSK | None"]] = None
    psk_key_exchange_modes: list[PskKeyExchangeMode] = field(default_factory=lambda: [PskKeyExchangeMode.psk_dhe_ke])
    num_tickets: int = 2
    ticket_lifetime: int = 7200
    ticket_keys: TicketKeys = field(default_factory=TicketKeys, repr=False)
    ticket_store: Optional[KeyValueStore] = field(default=None, repr=False)
    max_early_data: int = 0
    early_data_callback: Optional[Callable[[object], bool]] = None
    anti_replay: AntiReplay = field(default_factory=AntiReplay, repr=False)
    resend_early_data_on_reject: bool = False
    # Plug-ins adding and inspecting extensions the engine does not implement
    # (ExtensionHook; e.g. TCPLS's tcpls, tcpls_join, tcpls_token).
    extension_hooks: list[ExtensionHook] = field(default_factory=list)
    lazy_certificate: Optional[LazyCertificate] = None
    extra_certificates: list[tuple[list[x509.Certificate], PrivateKey]] = field(default_factory=list, repr=False)
    certificate_authorities: Optional[list[x509.Name]] = None
    post_handshake_auth: Optional[bool] = None
    record_size_limit: Optional[int] = None
    request_ocsp: bool = False
    ocsp_response: Optional[bytes] = field(default=None, repr=False)
    certificate_compression: list[int] = field(default_factory=list)
    select_context: Optional[Callable[[Optional[str], list[str]], "Optional[TLSConfig]"]] = field(default=None, repr=False)
    # Encodings derived from the settings above (static ClientHello
    # extensions, our Certificate message), keyed by the inputs they came from.
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def cached(self, key: tuple, build: Callable[[], object]) -> object:
        """Memoise ``build()`` under ``key`` (which must capture every input)."""
        try:
            return self._cache[key]
        except KeyError:
            if len(self._cache) > 64:
                self._cache.clear()
            value = self._cache[key] = build()
            return value

    # ----------------------------------------------------------- loading
    def load_cert_chain(self, certfile: str, keyfile: Optional[str] = None, password: Optional[bytes] = None) -> None:
        """Load a PEM certificate chain (leaf first) and its private key."""
        self.certificate_chain, self.private_key = load_certificate_files(certfile, keyfile, password)

    def load_cert_chain_lazily(self, certfile: str, keyfile: Optional[str] = None, password: Optional[bytes] = None) -> None:
        """Like :meth:`load_cert_chain`, but read the files on first use."""
        self.lazy_certificate = LazyCertificate(certfile, keyfile, password)

    def has_certificate(self) -> bool:
        return bool(self.certificate_chain and self.private_key is not None) or self.lazy_certificate is not None

    def ensure_certificate(self) -> None:
        """Load ``lazy_certificate`` if no chain is set yet (first use)."""
        if (not self.certificate_chain or self.private_key is None) and self.lazy_certificate is not None:
            self.certificate_chain, self.private_key = self.lazy_certificate.load()

    def client_certificate_authorities(self) -> list[x509.Name]:
        """Server: CA names for CertificateRequest (RFC 9846 §4.2.4)."""
        if self.certificate_authorities is not None:
            return list(self.certificate_authorities)
        return [c.subject for c in self.trust_anchors or []]

    def load_verify_locations(self, cafile: Optional[str] = None, cadata: Optional[bytes] = None) -> None:
        """Trust the PEM certificates in ``cafile`` and/or ``cadata``."""
        anchors = list(self.trust_anchors or [])
        if cafile:
            with open(cafile, "rb") as f:
                anchors += x509.load_pem_x509_certificates(f.read())
        if cadata:
            anchors += x509.load_pem_x509_certificates(cadata)
        self.trust_anchors = anchors

    def get_trust_anchors(self) -> list[x509.Certificate]:
        """The configured anchors, or the system store loaded on first use."""
        if self.trust_anchors is None:
            path = os.environ.get("SSL_CERT_FILE")
            candidates = [path] if path else list(SYSTEM_CA_FILES)
            for p in candidates:
                if p and os.path.exists(p):
                    with open(p, "rb") as f, warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # a few system roots have odd serials
                        self.trust_anchors = x509.load_pem_x509_certificates(f.read())
                    break
            else:
                self.trust_anchors = []
        return self.trust_anchors

    def get_keylog_file(self) -> Optional[str]:
        return self.keylog_file or os.environ.get("SSLKEYLOGFILE") or None

    def validate(self, *, server_side: bool) -> None:
        """Raise ``ValueError`` for settings that cannot work."""
        if not self.cipher_suites:
            raise ValueError("no cipher suites configured")
        if not self.groups:
            raise ValueError("no key-exchange groups configured")
        if server_side and not self.has_certificate() and self.psk_lookup is None and self.select_context is None:
            raise ValueError("a server needs a certificate chain and a private key (load_cert_chain)")
        if not 0 <= self.ticket_lifetime <= 604800:
            raise ValueError("ticket_lifetime must be 0..604800 seconds (RFC 9846 §4.6.1)")
        if self.num_tickets < 0 or self.max_early_data < 0:
            raise ValueError("num_tickets and max_early_data must not be negative")
        if not self.psk_key_exchange_modes:
            raise ValueError("no PSK key exchange modes configured")
        if self.record_size_limit is not None and not 64 <= self.record_size_limit <= 16385:
            raise ValueError("record_size_limit must be 64..16385 (RFC 8449 §4)")
        for p in self.alpn_protocols:
            if not 0 < len(p.encode()) < 256:
                raise ValueError(f"ALPN protocol name {p!r} must be 1..255 bytes")
