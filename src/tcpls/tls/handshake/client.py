"""TLS 1.3 client handshake (RFC 9846 §2, §4).

A state machine in the RFC's order (appendix A.1):

    START --ClientHello--> WAIT_SH --ServerHello--> WAIT_EE
      (HelloRetryRequest: send ClientHello2, stay in WAIT_SH, once)
    WAIT_EE --EncryptedExtensions--> WAIT_CERT_CR
    WAIT_CERT_CR --CertificateRequest--> WAIT_CERT
    WAIT_CERT_CR / WAIT_CERT --Certificate--> WAIT_CV --CertificateVerify--> WAIT_FINISHED
    WAIT_FINISHED --Finished--> send [EndOfEarlyData,] [Certificate, CertificateVerify,] Finished --> CONNECTED
    (a PSK was accepted: WAIT_EE --EncryptedExtensions--> WAIT_FINISHED)
    CONNECTED --CertificateRequest--> send Certificate, [CertificateVerify,] Finished (post-handshake, §4.6.2)

Certificates may arrive as CompressedCertificate (RFC 8879) when we offered
compress_certificate; the transcript holds the message as received.

Each state has a table of the handshake messages it accepts; anything else
is an unexpected_message alert.

PSKs (RFC 9846 §2.2, §4.2.11): the ClientHello offers the resumption
session first (the only one usable for 0-RTT) and then the external PSK.
Binders are HMACs over Truncate(ClientHello): the hello is encoded with
zero binders of the right lengths, the binders are computed over all but
its last ``binders_block_length`` bytes and spliced in. With 0-RTT the write
key is the client_early_traffic_secret from the ClientHello until
EncryptedExtensions says whether the server accepted it (§4.2.10, appendix A.1).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from dataclasses import dataclass
from enum import Enum, auto
from typing import Any, Callable, Optional

from cryptography import x509

from ...errors import (
    DecodeError,
    HandshakeFailure,
    IllegalParameter,
    LocalProtocolError,
    MissingExtension,
    ProtocolVersionError,
    UnexpectedMessage,
    UnsupportedExtension,
)
from .. import certcompress
from .. import extensions as X
from .. import messages as M
from ..config import DEFAULT_CERT_SIGNATURE_SCHEMES, TLSConfig
from ..enums import (
    DOWNGRADE_TLS11,
    DOWNGRADE_TLS12,
    AlertDescription,
    ExtensionType as E,
    HandshakeType as H,
    KeyUpdateRequest,
    NamedGroup,
    PskKeyExchangeMode,
)
from ..kex import KeyShare
from ..key_schedule import (
    TLS13_LABEL_PREFIX,
    EarlySecret,
    HandshakeSecret,
    MasterSecret,
    finished_verify_data,
    resumption_psk,
)
from ..session import MAX_TICKET_LIFETIME, Session
from ..signatures import CLIENT_CONTEXT, SERVER_CONTEXT, choose_scheme, sign, signed_content
from ..suites import CipherSuiteInfo, suite_info
from ..transcript import Transcript
from ..verify import parse_certificates, verify_chain_only, verify_server_chain
from .common import (
    ALLOWED_IN_CERTIFICATE_REQUEST,
    ALLOWED_IN_ENCRYPTED_EXTENSIONS,
    ALLOWED_IN_HRR,
    ALLOWED_IN_SERVER_HELLO,
    DTLS13,
    TLS13,
    LazyExporterSecret,
    RecordSink,
    check_certificate_verify,
    check_finished,
    check_server_extensions,
    decode_certificate,
    encode_certificate,
    offered_compression,
    unexpected,
)


class ClientState(Enum):
    START = auto()
    WAIT_SH = auto()
    WAIT_EE = auto()
    WAIT_CERT_CR = auto()
    WAIT_CERT = auto()
    WAIT_CV = auto()
    WAIT_FINISHED = auto()
    CONNECTED = auto()

    # Members are singletons compared by identity: hash them the same way
    # (Enum's own __hash__ is Python code, run on every message dispatch).
    __hash__ = object.__hash__


@dataclass
class PskOffer:
    """One PSK in our ClientHello."""

    identity: bytes
    psk: bytes
    hash_name: str
    external: bool
    obfuscated_age: int
    session: Optional[Session] = None
    early_secret: Optional[EarlySecret] = None  # computed once, for the binder
    prefix: bytes = TLS13_LABEL_PREFIX  # "dtls13" for DTLS (RFC 9147 §5.9)

    def early(self) -> EarlySecret:
        if self.early_secret is None:
            self.early_secret = EarlySecret(self.hash_name, self.psk, prefix=self.prefix)
        return self.early_secret


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


class ClientHandshake(LazyExporterSecret):
    """The client side of one TLS 1.3 handshake and its post-handshake messages."""

    def __init__(
        self,
        config: TLSConfig,
        sink: RecordSink,
        server_name: Optional[str],
        session: Optional[Session] = None,
        *,
        dtls: bool = False,
    ) -> None:
        self.config = config
        self.variant = DTLS13 if dtls else TLS13
        self.session = session if session is not None else config.session
        self.now = 0.0
        self.psk_offers: list[PskOffer] = []
        self.selected_psk: Optional[PskOffer] = None
        self.session_resumed = False
        # 0-RTT: None (not offered), "offered", "accepted" or "rejected".
        self.early_data_state: Optional[str] = None
        self.early_suite: Optional[CipherSuiteInfo] = None
        self.client_early_secret = b""
        self.early_exporter_secret = b""
        self.sink = sink
        self.server_name = server_name if server_name is not None else config.server_name
        self.state = ClientState.START
        self.transcript = Transcript()
        self.random = os.urandom(32)
        # RFC 9147 §5.3: no compatibility mode, an empty legacy_session_id in DTLS.
        self.session_id = os.urandom(32) if config.middlebox_compat and not dtls else b""
        self.key_shares: dict[int, KeyShare] = {}
        self.offered: set[int] = set()
        self.hello_retry = False
        self.ccs_sent = False
        self.suite: Optional[CipherSuiteInfo] = None
        self.group: Optional[int] = None
        self.alpn_protocol: Optional[str] = None
        self.peer_certificates: list[x509.Certificate] = []
        self._peer_certificates_der: tuple[bytes, ...] = ()  # as received, kept in our sessions
        self.certificate_request: Optional[M.CertificateRequest] = None
        self.ocsp_response: Optional[bytes] = None  # stapled to the server's leaf (RFC 6066 §8)
        self.peer_record_size_limit: Optional[int] = None  # RFC 8449, from EncryptedExtensions
        self.handshake_secret: Optional[HandshakeSecret] = None
        self.master_secret: Optional[MasterSecret] = None
        self.client_hs_secret = b""
        self.server_hs_secret = b""
        self.client_app_secret = b""
        self.server_app_secret = b""
        self.exporter_secret = b""
        self.resumption_secret = b""
        self.complete = False
        # Set by the connection: called for post-handshake KeyUpdate and tickets.
        self.on_key_update: Callable[[bool], None] = lambda requested: None
        self.on_ticket: Callable[[M.NewSessionTicket, Optional[Session]], None] = lambda t, s: None
        # Called when the server's answer to our 0-RTT offer is known.
        self.on_early_data: Callable[[bool], None] = lambda accepted: None
        # Post-handshake authentication (§4.6.2): answered with (context, certificate sent).
        self.on_post_handshake_auth: Callable[[bytes, bool], None] = lambda context, sent: None
        # Set by the connection: the current traffic secret of "write" or "read".
        self.traffic_secret: Callable[[str], bytes] = lambda direction: b""
        # Set by a DTLS connection: hello extensions it handles (connection_id).
        self.hello_extensions: Optional[Any] = None

    # ------------------------------------------------------------------ input
    def handle_message(self, msg_type: int, data: bytes, now: float = 0.0) -> None:
        """Process one complete handshake message (header included)."""
        self.now = now
        name = _HANDLERS[self.state].get(msg_type)
        if name is None:
            raise unexpected(self.state, msg_type)
        getattr(self, name)(data)

    def _decode(self, msg_type: int, data: bytes) -> object:
        hash_len = self.suite.hash_len if self.suite else None
        return M.decode_handshake(msg_type, memoryview(data)[4:], hash_len=hash_len, dtls=self.variant.dtls)

    # ------------------------------------------------------------ ClientHello
    def can_send_early_data(self, check_age: bool = True) -> int:
        """Bytes of 0-RTT data our session allows (0: none), RFC 9846 §4.2.10.

        ``check_age=False`` before the handshake starts (``now`` unknown yet).
        """
        s = self.session
        if s is None or not s.max_early_data or s.cipher_suite not in self.config.cipher_suites:
            return 0
        if not self._session_usable(s, check_age):
            return 0
        return s.max_early_data

    def _session_usable(self, s: Session, check_age: bool = True) -> bool:
        """§4.6.1, §4.2.11.1: unexpired, same SNI, a suite with its hash offered."""
        if check_age and not s.is_valid(self.now):
            return False
        if s.server_name is not None and self.server_name is not None and s.server_name != self.server_name:
            return False
        return any(suite_info(c).hash_name == s.hash_name for c in self.config.cipher_suites)

    def _build_psk_offers(self) -> None:
        cfg = self.config
        offers: list[PskOffer] = []
        s = self.session
        if s is not None and self._session_usable(s):
            offers.append(PskOffer(s.ticket, s.psk, s.hash_name, False, s.obfuscated_age(self.now), s))
            offers[-1].prefix = self.variant.label_prefix
        if cfg.psk is not None:
            # §4.2.11: external PSKs use an obfuscated_ticket_age of 0.
            if any(suite_info(c).hash_name == cfg.psk.hash_name for c in cfg.cipher_suites):
                offers.append(PskOffer(cfg.psk.identity, cfg.psk.key, cfg.psk.hash_name, True, 0))
                offers[-1].prefix = self.variant.label_prefix
        self.psk_offers = offers

    def start(self, now: float = 0.0, early_data: bool = False) -> None:
        """Send the first ClientHello (RFC 9846 §4.1.2), offering 0-RTT if
        ``early_data`` (the caller checked :meth:`can_send_early_data`)."""
        assert self.state is ClientState.START
        self.now = now
        self._build_psk_offers()
        if early_data and self.psk_offers and self.psk_offers[0].session is self.session and self.can_send_early_data():
            self.early_data_state = "offered"
        groups = self.config.key_share_groups or self.config.groups[:1]
        for g in groups:
            if g not in self.config.groups:
                raise ValueError(f"key_share group {g!r} is not in the configured groups")
            self.key_shares[g] = KeyShare(g)
        self._send_client_hello(cookie=None)
        self.state = ClientState.WAIT_SH

    def _send_client_hello(self, cookie: Optional[bytes]) -> None:
        cfg = self.config
        exts: list[tuple[int, bytes]] = []
        if self.server_name and not _is_ip(self.server_name):
            exts.append((E.server_name, X.encode_server_name(self.server_name)))
        exts += self._static_extensions()
        exts.append((E.key_share, X.encode_key_share_ch([(g, ks.public) for g, ks in self.key_shares.items()])))
        if cfg.alpn_protocols:
            exts.append(
                (E.application_layer_protocol_negotiation, X.encode_alpn([p.encode() for p in cfg.alpn_protocols]))
            )
        if cookie is not None:
            exts.append((E.cookie, X.encode_cookie(cookie)))
        for hook in cfg.extension_hooks:
            exts += hook.client_hello_extensions()
        if self.hello_extensions is not None:
            exts += self.hello_extensions.client_hello_extensions()
        exts += self._optional_extensions()
        # §4.2.9: always sent, so the server may issue tickets we can use.
        exts.append((E.psk_key_exchange_modes, X.encode_psk_key_exchange_modes([int(m) for m in cfg.psk_key_exchange_modes])))
        offers = self.psk_offers
        if self.hello_retry and self.suite is not None:
            # §4.1.4: only PSKs usable with the suite of the HelloRetryRequest.
            offers = self.psk_offers = [o for o in offers if o.hash_name == self.suite.hash_name]
        early = self.early_data_state == "offered" and not self.hello_retry
        if offers:
            if early:
                exts.append((E.early_data, X.encode_empty()))
            ids = [X.PskIdentity(o.identity, o.obfuscated_age) for o in offers]
            dummy = [bytes(hashlib.new(o.hash_name).digest_size) for o in offers]
            # §4.2.11: pre_shared_key MUST be the last extension.
            exts.append((E.pre_shared_key, X.encode_pre_shared_key_ch(X.OfferedPsks(ids, dummy))))
        self.offered = {t for t, _ in exts}
        hello = M.ClientHello(
            random=self.random,
            legacy_session_id=self.session_id,
            cipher_suites=[int(s) for s in cfg.cipher_suites],
            extensions=exts,
            legacy_version=self.variant.legacy_version,
            legacy_cookie=b"" if self.variant.dtls else None,  # RFC 9147 §5.3
        )
        data = M.encode_handshake(hello)
        if offers:
            data = self._bind(data, offers)
        self.transcript.update(data)
        self.sink.send_handshake(data)
        if early:
            self._start_early_data(data)

    def _bind(self, hello: bytes, offers: list[PskOffer]) -> bytes:
        """Compute the PSK binders over Truncate(ClientHello) (RFC 9846 §4.2.11.2)."""
        truncated = hello[: -X.binders_block_length([hashlib.new(o.hash_name).digest_size for o in offers])]
        binders = []
        for o in offers:
            if self.transcript.hash_name is None:
                th = hashlib.new(o.hash_name, truncated).digest()  # ClientHello1
            else:
                th = self.transcript.digest_with(truncated)  # CH1 (as message_hash), HRR, Truncate(CH2)
            key = o.early().binder_key(o.external)
            binders.append(finished_verify_data(o.hash_name, key, th, o.prefix))
        return truncated + X.encode_psk_binders(binders)

    def _start_early_data(self, client_hello: bytes) -> None:
        """Switch our write key to client_early_traffic_secret (§7.1, appendix A.1)."""
        offer = self.psk_offers[0]
        assert offer.session is not None
        suite = self.early_suite = suite_info(offer.session.cipher_suite)
        th = hashlib.new(offer.hash_name, client_hello).digest()
        es = offer.early()
        self.client_early_secret = es.client_early_traffic_secret(th)
        self.early_exporter_secret = es.early_exporter_master_secret(th)
        self.sink.log_secret("CLIENT_EARLY_TRAFFIC_SECRET", self.random, self.client_early_secret)
        self.sink.log_secret("EARLY_EXPORTER_SECRET", self.random, self.early_exporter_secret)
        # Appendix D.4: with 0-RTT the compatibility CCS goes right after ClientHello1.
        self._send_ccs_once()
        self.sink.set_write_secret(suite, self.client_early_secret)

    def _reject_early_data(self) -> None:
        if self.early_data_state == "offered":
            self.early_data_state = "rejected"
            self.on_early_data(False)

    def _static_extensions(self) -> list[tuple[int, bytes]]:
        """Extensions that depend only on the configuration (encoded once)."""
        cfg = self.config
        version = self.variant.version
        key = ("client-static", tuple(cfg.groups), tuple(cfg.signature_schemes), version)

        def build() -> list[tuple[int, bytes]]:
            return [
                (E.supported_versions, X.encode_supported_versions_ch([version])),
                (E.supported_groups, X.encode_supported_groups([int(g) for g in cfg.groups])),
                (E.signature_algorithms, X.encode_signature_algorithms([int(s) for s in cfg.signature_schemes])),
                (
                    E.signature_algorithms_cert,
                    X.encode_signature_algorithms([int(s) for s in DEFAULT_CERT_SIGNATURE_SCHEMES]),
                ),
            ]

        return cfg.cached(key, build)  # type: ignore[return-value]

    def offers_post_handshake_auth(self) -> bool:
        """§4.2.6: offered when configured, by default when we have a certificate."""
        cfg = self.config
        if cfg.post_handshake_auth is not None:
            return cfg.post_handshake_auth
        return cfg.has_certificate() or bool(cfg.extra_certificates)

    def _optional_extensions(self) -> list[tuple[int, bytes]]:
        cfg = self.config
        exts: list[tuple[int, bytes]] = []
        if cfg.request_ocsp:
            # RFC 6066 §8 / RFC 9846 §4.4.2.1: OCSP, no responder ids or extensions.
            exts.append((E.status_request, X.encode_status_request_ch(X.OCSPStatusRequest([]))))
        if cfg.record_size_limit is not None:
            exts.append((E.record_size_limit, X.encode_record_size_limit(cfg.record_size_limit)))
        algs = [a for a in cfg.certificate_compression if a in certcompress.available()]
        if algs:
            exts.append((E.compress_certificate, X.encode_compress_certificate(algs)))
        if self.offers_post_handshake_auth():
            exts.append((E.post_handshake_auth, X.encode_empty()))
        return exts

    # ------------------------------------------------------------ ServerHello
    def _handle_server_hello(self, data: bytes) -> None:
        sh = self._decode(H.server_hello, data)
        assert isinstance(sh, M.ServerHello)
        exts = dict(sh.extensions)
        # RFC 9846 §4.1.3: without supported_versions the server picked TLS 1.2
        # or older, which we do not speak.
        if E.supported_versions not in exts:
            raise ProtocolVersionError("server did not negotiate TLS 1.3")
        version = X.decode_supported_versions_sh(exts[E.supported_versions])
        if version != self.variant.version:
            raise IllegalParameter(f"server selected version {version:#06x} which was not offered")
        if sh.legacy_version != self.variant.legacy_version:
            raise ProtocolVersionError(f"ServerHello legacy_version must be {self.variant.legacy_version:#06x}")
        if sh.random[-8:] in (DOWNGRADE_TLS12, DOWNGRADE_TLS11) and not sh.is_hello_retry_request:
            raise IllegalParameter("downgrade sentinel in ServerHello.random")
        # RFC 9147 §5.3: a DTLS 1.3 server never echoes it, even when we sent one.
        if sh.legacy_session_id_echo != (b"" if self.variant.dtls else self.session_id):
            raise IllegalParameter("legacy_session_id_echo does not match")
        if sh.cipher_suite not in self.config.cipher_suites:
            raise IllegalParameter(f"server selected cipher suite {sh.cipher_suite:#06x} which was not offered")
        if sh.legacy_compression_method != 0:
            raise IllegalParameter("legacy_compression_method must be 0")
        if sh.is_hello_retry_request:
            self._handle_hello_retry_request(sh, data, exts)
            return
        extra = self.hello_extensions.types if self.hello_extensions is not None else frozenset()
        check_server_extensions("ServerHello", sh.extensions, ALLOWED_IN_SERVER_HELLO | extra, self.offered)
        if self.hello_extensions is not None:
            self.hello_extensions.on_server_hello(exts)
        if self.suite is not None and sh.cipher_suite != self.suite.suite:
            raise IllegalParameter("ServerHello cipher suite differs from the HelloRetryRequest's")
        if self.suite is None:
            self.suite = suite_info(sh.cipher_suite)
            self.transcript.set_hash(self.suite.hash_name)
        modes = self.config.psk_key_exchange_modes
        psk: Optional[bytes] = None
        early: Optional[EarlySecret] = None
        if E.pre_shared_key in exts:
            # §4.2.11: a valid index, and a suite with the PSK's hash.
            index = X.decode_pre_shared_key_sh(exts[E.pre_shared_key])
            if index >= len(self.psk_offers):
                raise IllegalParameter("server selected a PSK identity we did not offer")
            offer = self.psk_offers[index]
            if offer.hash_name != self.suite.hash_name:
                raise IllegalParameter("server selected a cipher suite whose hash does not match the PSK's")
            self.selected_psk = offer
            self.session_resumed = True
            if offer.session is not None:
                # §2.2: the session carries the server's original authentication.
                self._peer_certificates_der = offer.session.peer_certificates
                self.peer_certificates = parse_certificates(self._peer_certificates_der)
            psk = offer.psk
            early = offer.early()
        shared: Optional[bytes] = None
        if E.key_share in exts:
            if psk is not None and PskKeyExchangeMode.psk_dhe_ke not in modes:
                raise IllegalParameter("server sent a key_share although we offered only psk_ke")
            group, share = X.decode_key_share_sh(exts[E.key_share])
            if group not in self.key_shares:
                raise IllegalParameter("server key_share is for a group we sent no share for")
            shared = self.key_shares[group].exchange(share)
            self.group = NamedGroup(group)
        elif psk is None:
            raise MissingExtension("ServerHello has no key_share")
        elif PskKeyExchangeMode.psk_ke not in modes:
            raise MissingExtension("ServerHello has no key_share but we require psk_dhe_ke")
        self.key_shares.clear()
        self.transcript.update(data)
        self._derive_handshake_secrets(shared, early)
        self.state = ClientState.WAIT_EE

    def _handle_hello_retry_request(self, hrr: M.ServerHello, data: bytes, exts: dict[int, bytes]) -> None:
        """RFC 9846 §4.1.4."""
        if self.hello_retry:
            raise UnexpectedMessage("second HelloRetryRequest")
        check_server_extensions("HelloRetryRequest", hrr.extensions, ALLOWED_IN_HRR, self.offered | {E.cookie})
        self.hello_retry = True
        # §4.2.10: 0-RTT is over; the second ClientHello goes out in the clear.
        if self.early_data_state == "offered":
            self.sink.set_write_plaintext()
            self._reject_early_data()
        self.suite = suite_info(hrr.cipher_suite)
        self.transcript.set_hash(self.suite.hash_name)
        cookie = X.decode_cookie(exts[E.cookie]) if E.cookie in exts else None
        if E.key_share in exts:
            group = X.decode_key_share_hrr(exts[E.key_share])
            if group not in self.config.groups:
                raise IllegalParameter("HelloRetryRequest selected a group we do not support")
            if group in self.key_shares:
                raise IllegalParameter("HelloRetryRequest selected a group we already sent a share for")
            self.key_shares = {group: KeyShare(group)}
        elif cookie is None:
            raise IllegalParameter("HelloRetryRequest would not change the ClientHello")
        self.transcript.rewrite_for_hello_retry()
        self.transcript.update(data)
        # RFC 9846 appendix D.4: the compatibility CCS goes before the second flight.
        self._send_ccs_once()
        self._send_client_hello(cookie)

    def _send_ccs_once(self) -> None:
        if self.config.middlebox_compat and not self.ccs_sent and not self.variant.dtls:
            self.ccs_sent = True
            self.sink.send_change_cipher_spec()

    def _derive_handshake_secrets(self, shared: Optional[bytes], early: Optional[EarlySecret]) -> None:
        """RFC 9846 §7.1: Early Secret (PSK or 0) -> Handshake Secret ((EC)DHE or 0)."""
        suite = self.suite
        assert suite is not None
        th = self.transcript.digest()
        if early is None:
            early = EarlySecret(suite.hash_name, None, prefix=self.variant.label_prefix)
        self.handshake_secret = early.handshake_secret(shared)
        self.client_hs_secret = self.handshake_secret.client_handshake_traffic_secret(th)
        self.server_hs_secret = self.handshake_secret.server_handshake_traffic_secret(th)
        self.sink.log_secret("CLIENT_HANDSHAKE_TRAFFIC_SECRET", self.random, self.client_hs_secret)
        self.sink.log_secret("SERVER_HANDSHAKE_TRAFFIC_SECRET", self.random, self.server_hs_secret)
        self.sink.set_read_secret(suite, self.server_hs_secret)
        # Alerts from here on are protected with our handshake key (with 0-RTT
        # offered, the early key stays until EncryptedExtensions answers).
        if self.early_data_state != "offered":
            self.sink.set_write_secret(suite, self.client_hs_secret)

    # ---------------------------------------------------- EncryptedExtensions
    def _handle_encrypted_extensions(self, data: bytes) -> None:
        ee = self._decode(H.encrypted_extensions, data)
        assert isinstance(ee, M.EncryptedExtensions)
        hooks = self.config.extension_hooks
        hooked = frozenset().union(*(h.encrypted_extension_types for h in hooks))
        allowed = ALLOWED_IN_ENCRYPTED_EXTENSIONS | hooked
        check_server_extensions("EncryptedExtensions", ee.extensions, allowed, self.offered | hooked)
        for hook in hooks:
            hook.on_encrypted_extensions(list(ee.extensions))
        exts = dict(ee.extensions)
        if E.server_name in exts and exts[E.server_name]:
            raise DecodeError("server_name acknowledgement must be empty")
        alpn = exts.get(E.application_layer_protocol_negotiation)
        if alpn is not None:
            protocols = X.decode_alpn(alpn)
            if len(protocols) != 1:
                raise IllegalParameter("server must select exactly one ALPN protocol")
            name = protocols[0].decode("latin-1")
            if name not in self.config.alpn_protocols:
                raise IllegalParameter(f"server selected ALPN protocol {name!r} that was not offered")
            self.alpn_protocol = name
        if E.supported_groups in exts:
            X.decode_supported_groups(exts[E.supported_groups])
        if E.record_size_limit in exts:
            # RFC 8449 §4: the limit counts the inner content type; values
            # above the TLS 1.3 maximum (2^14 + 1) mean "no lower limit".
            self.peer_record_size_limit = X.decode_record_size_limit(exts[E.record_size_limit])
            own = self.config.record_size_limit
            self.sink.set_record_size_limit(min(self.peer_record_size_limit, 16385) - 1, own - 1 if own else None)
        if E.early_data in exts:
            X.decode_empty(exts[E.early_data])
            # §4.2.11: early data is only possible with the first PSK.
            if self.selected_psk is None or self.psk_offers.index(self.selected_psk) != 0:
                raise IllegalParameter("server accepted early data without selecting the first PSK")
            if self.early_data_state != "offered":
                raise UnsupportedExtension("server accepted early data we did not send")
            self.early_data_state = "accepted"
            self.on_early_data(True)
        elif self.early_data_state == "offered":
            assert self.suite is not None
            self.sink.set_write_secret(self.suite, self.client_hs_secret)
            self._reject_early_data()
        self.transcript.update(data)
        # §2.2: with a PSK the server authenticates with it, not a certificate.
        self.state = ClientState.WAIT_FINISHED if self.selected_psk is not None else ClientState.WAIT_CERT_CR

    # ---------------------------------------------------- CertificateRequest
    def _handle_certificate_request(self, data: bytes) -> None:
        cr = self._decode(H.certificate_request, data)
        assert isinstance(cr, M.CertificateRequest)
        if cr.certificate_request_context:
            raise IllegalParameter("certificate_request_context must be empty during the handshake")
        self._check_certificate_request(cr)
        self.certificate_request = cr
        self.transcript.update(data)
        self.state = ClientState.WAIT_CERT

    def _check_certificate_request(self, cr: M.CertificateRequest) -> None:
        exts = dict(cr.extensions)
        for t, _ in cr.extensions:
            if t in ALLOWED_IN_CERTIFICATE_REQUEST or t not in {int(e) for e in E}:
                continue
            raise IllegalParameter(f"extension {t} is not allowed in CertificateRequest")
        if E.signature_algorithms not in exts:
            raise MissingExtension("CertificateRequest has no signature_algorithms")
        X.decode_signature_algorithms(exts[E.signature_algorithms])

    # ------------------------------------------------------------ Certificate
    def _handle_certificate(self, data: bytes) -> None:
        msg = decode_certificate(data, self._offered_compression(), self.config.max_handshake_message_size)
        if msg.certificate_request_context:
            raise IllegalParameter("server Certificate must have an empty certificate_request_context")
        if not msg.certificate_list:
            raise DecodeError("server sent an empty Certificate message")
        for entry in msg.certificate_list:
            for t, _ in entry.extensions:
                if t not in (E.status_request, E.signed_certificate_timestamp):
                    raise IllegalParameter(f"extension {t} is not allowed in a CertificateEntry")
                if t not in self.offered:
                    raise UnsupportedExtension(f"CertificateEntry carries extension {t} that was not requested")
        leaf_exts = dict(msg.certificate_list[0].extensions)
        if E.status_request in leaf_exts:
            self.ocsp_response = X.decode_status_request_cert_entry(leaf_exts[E.status_request])
        self._peer_certificates_der = tuple(bytes(e.cert_data) for e in msg.certificate_list)
        self.peer_certificates = parse_certificates(self._peer_certificates_der)
        if self.config.verify_peer:
            anchors = self.config.get_trust_anchors()
            name = self.server_name if self.config.check_hostname else None
            if name is None and self.config.check_hostname:
                raise LocalProtocolError(
                    AlertDescription.internal_error,
                    "certificate verify failed: no server name given (pass server_name, or disable check_hostname)",
                )
            if name is not None:
                verify_server_chain(self.peer_certificates, anchors, name)
            else:
                verify_chain_only(self.peer_certificates, anchors)
        self.transcript.update(data)
        self.state = ClientState.WAIT_CV

    def _handle_certificate_verify(self, data: bytes) -> None:
        check_certificate_verify(
            data, self.config, self.peer_certificates[0], self.transcript.digest(), SERVER_CONTEXT, "server"
        )
        self.transcript.update(data)
        self.state = ClientState.WAIT_FINISHED

    # --------------------------------------------------------------- Finished
    def _handle_finished(self, data: bytes) -> None:
        suite = self.suite
        assert suite is not None and self.handshake_secret is not None
        prefix = self.variant.label_prefix
        check_finished(data, suite, self.server_hs_secret, self.transcript.digest(), "server", prefix)
        self.transcript.update(data)
        # RFC 9846 §7.1: application secrets over ClientHello..server Finished.
        th = self.transcript.digest()
        self.master_secret = self.handshake_secret.master_secret()
        self.client_app_secret = self.master_secret.client_application_traffic_secret(th)
        self.server_app_secret = self.master_secret.server_application_traffic_secret(th)
        self._set_exporter_context(self.master_secret, th)  # derived on first use
        self.sink.log_secret("CLIENT_TRAFFIC_SECRET_0", self.random, self.client_app_secret)
        self.sink.log_secret("SERVER_TRAFFIC_SECRET_0", self.random, self.server_app_secret)
        self.sink.log_secret("EXPORTER_SECRET", self.random, lambda: self.exporter_secret)
        self.sink.set_read_secret(suite, self.server_app_secret)
        if self.early_data_state == "accepted":
            # §4.5: EndOfEarlyData under the early key, then the handshake key.
            # DTLS omits it from the wire and the transcript (RFC 9147 §5.6).
            if not self.variant.dtls:
                eoed = M.encode_handshake(M.EndOfEarlyData())
                self.transcript.update(eoed)
                self.sink.send_handshake(eoed)
            self.sink.set_write_secret(suite, self.client_hs_secret)
        # Our second flight, under the client handshake traffic key.
        self._send_ccs_once()
        if self.certificate_request is not None:
            self._send_client_certificate(self.certificate_request, self.transcript)
        verify_data = finished_verify_data(suite.hash_name, self.client_hs_secret, self.transcript.digest(), prefix)
        fin_bytes = M.encode_handshake(M.Finished(verify_data))
        self.transcript.update(fin_bytes)
        self.sink.send_handshake(fin_bytes)
        self.sink.set_write_secret(suite, self.client_app_secret)
        self.resumption_secret = self.master_secret.resumption_master_secret(self.transcript.digest())
        self.state = ClientState.CONNECTED
        self.complete = True

    def _offered_compression(self) -> list[int]:
        return [a for a in self.config.certificate_compression if a in certcompress.available()]

    def _choose_client_certificate(self, cr: M.CertificateRequest) -> Optional[tuple[list, object, int]]:
        """Our (chain, key, scheme) for ``cr``, or None (§4.4.2.2).

        Among the configured chains that can sign with one of the server's
        signature_algorithms, the first issued under one of its
        certificate_authorities (§4.2.4), else the first.
        """
        cfg = self.config
        cfg.ensure_certificate()
        exts = dict(cr.extensions)
        peer_schemes = X.decode_signature_algorithms(exts[E.signature_algorithms])
        candidates = []
        if cfg.certificate_chain and cfg.private_key is not None:
            candidates.append((cfg.certificate_chain, cfg.private_key))
        candidates += cfg.extra_certificates
        usable = []
        for chain, key in candidates:
            try:
                usable.append((list(chain), key, choose_scheme(key, peer_schemes, cfg.signature_schemes, chain[0])))
            except HandshakeFailure:
                continue
        if not usable:
            return None
        if E.certificate_authorities in exts:
            names = set(X.decode_certificate_authorities(exts[E.certificate_authorities]))
            for chain, key, scheme in usable:
                if any(c.issuer.public_bytes() in names or c.subject.public_bytes() in names for c in chain):
                    return chain, key, scheme
        return usable[0]

    def _send_client_certificate(self, cr: M.CertificateRequest, transcript: Transcript) -> bool:
        """RFC 9846 §4.4.2: our chain, or an empty Certificate if we have none
        usable; CertificateVerify only with a non-empty chain. Returns whether
        a certificate was sent."""
        picked = self._choose_client_certificate(cr)
        algs = offered_compression(dict(cr.extensions))
        compression = certcompress.choose(self.config.certificate_compression, algs) if picked else None
        chain = picked[0] if picked is not None else []
        cert_bytes = encode_certificate(cr.certificate_request_context, chain, compression=compression)
        transcript.update(cert_bytes)
        self.sink.send_handshake(cert_bytes)
        if picked is not None:
            _, key, scheme = picked
            signature = sign(key, scheme, signed_content(CLIENT_CONTEXT, transcript.digest()))  # type: ignore[arg-type]
            cv_bytes = M.encode_handshake(M.CertificateVerify(scheme, signature))
            transcript.update(cv_bytes)
            self.sink.send_handshake(cv_bytes)
        return picked is not None

    # ---------------------------------------------------------- post-handshake
    def _handle_new_session_ticket(self, data: bytes) -> None:
        nst = self._decode(H.new_session_ticket, data)
        assert isinstance(nst, M.NewSessionTicket)
        for t, _ in nst.extensions:
            if t != E.early_data and t in {int(e) for e in E}:
                raise IllegalParameter(f"extension {t} is not allowed in NewSessionTicket")
        session = None
        if nst.ticket_lifetime > 0:
            suite = self.suite
            assert suite is not None
            exts = dict(nst.extensions)
            max_early = X.decode_early_data_nst(exts[E.early_data]) if E.early_data in exts else 0
            session = Session(
                cipher_suite=suite.suite,
                psk=resumption_psk(suite.hash_name, self.resumption_secret, nst.ticket_nonce, self.variant.label_prefix),
                ticket=nst.ticket,
                ticket_age_add=nst.ticket_age_add,
                lifetime=min(nst.ticket_lifetime, MAX_TICKET_LIFETIME),
                received_at=self.now,
                max_early_data=max_early,
                alpn_protocol=self.alpn_protocol,
                server_name=self.server_name,
                peer_certificates=self._peer_certificates_der,
            )
        self.on_ticket(nst, session)

    def _handle_key_update(self, data: bytes) -> None:
        ku = self._decode(H.key_update, data)
        assert isinstance(ku, M.KeyUpdate)
        self.on_key_update(ku.request_update == KeyUpdateRequest.update_requested)

    def _handle_post_handshake_certificate_request(self, data: bytes) -> None:
        """RFC 9846 §4.6.2: answer at once with Certificate, [CertificateVerify,]
        Finished, consecutively, under the current application traffic key.

        Handshake Context: ClientHello ... client Finished + CertificateRequest;
        Base Key: client_application_traffic_secret_N (§4.4, table).
        """
        if E.post_handshake_auth not in self.offered:
            raise UnexpectedMessage("post-handshake CertificateRequest without post_handshake_auth")
        cr = self._decode(H.certificate_request, data)
        assert isinstance(cr, M.CertificateRequest)
        self._check_certificate_request(cr)
        suite = self.suite
        assert suite is not None
        transcript = self.transcript.copy()  # ends with our Finished
        transcript.update(data)
        sent = self._send_client_certificate(cr, transcript)
        verify_data = finished_verify_data(
            suite.hash_name, self.traffic_secret("write"), transcript.digest(), self.variant.label_prefix
        )
        self.sink.send_handshake(M.encode_handshake(M.Finished(verify_data)))
        self.on_post_handshake_auth(bytes(cr.certificate_request_context), sent)


# State -> handshake type -> the handler method's name, shared by every
# handshake (getattr dispatch: building bound-method tables per connection
# was a measurable part of a handshake's cost).
_HANDLERS: dict[ClientState, dict[int, str]] = {
    ClientState.WAIT_SH: {int(H.server_hello): "_handle_server_hello"},
    ClientState.WAIT_EE: {int(H.encrypted_extensions): "_handle_encrypted_extensions"},
    ClientState.WAIT_CERT_CR: {
        int(H.certificate): "_handle_certificate",
        int(H.compressed_certificate): "_handle_certificate",
        int(H.certificate_request): "_handle_certificate_request",
    },
    ClientState.WAIT_CERT: {
        int(H.certificate): "_handle_certificate",
        int(H.compressed_certificate): "_handle_certificate",
    },
    ClientState.WAIT_CV: {int(H.certificate_verify): "_handle_certificate_verify"},
    ClientState.WAIT_FINISHED: {int(H.finished): "_handle_finished"},
    ClientState.CONNECTED: {
        int(H.new_session_ticket): "_handle_new_session_ticket",
        int(H.key_update): "_handle_key_update",
        int(H.certificate_request): "_handle_post_handshake_certificate_request",
    },
}
for _state in ClientState:  # states that take no message
    _HANDLERS.setdefault(_state, {})
