"""TLS 1.3 server handshake (RFC 9846 §2, §4, appendix A.2).

    START --ClientHello--> [HelloRetryRequest --> WAIT_CH2 --ClientHello-->]
      send ServerHello, EncryptedExtensions, [CertificateRequest,]
      Certificate, CertificateVerify, Finished
    --> WAIT_FINISHED, or WAIT_CERT --Certificate--> [WAIT_CV --CertificateVerify-->] WAIT_FINISHED
    WAIT_FINISHED --Finished--> CONNECTED, send NewSessionTicket x num_tickets
    (0-RTT accepted: --> WAIT_EOED --EndOfEarlyData--> WAIT_FINISHED)
    CONNECTED: request_client_certificate() sends CertificateRequest(context);
      --Certificate--> [PHA_WAIT_CV --CertificateVerify-->] PHA_WAIT_FINISHED --Finished--> CONNECTED (§4.6.2)

``config.select_context`` may swap the configuration on the first
ClientHello (per SNI and ALPN) before anything else is decided.

PSKs (RFC 9846 §2.2, §4.2.11): the server picks one offered PSK (a ticket
it can open, or an external PSK from ``psk_lookup``) whose hash matches a
suite both sides accept, validates only that binder (decrypt_error if it is
wrong), and otherwise falls back to a certificate handshake. Unknown or
expired tickets are ignored. 0-RTT is accepted only for the first PSK of a
ticket allowing it, with the same suite and ALPN, a fresh ClientHello not
seen before (§8) and the application's consent; rejected early records are
skipped by the record layer (§4.2.10).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from enum import Enum, auto
from typing import Any, Callable, Optional

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ...errors import (
    DecryptError,
    HandshakeFailure,
    IllegalParameter,
    InternalError,
    LocalProtocolError,
    MissingExtension,
    ProtocolVersionError,
    UnexpectedMessage,
    UsageError,
)
from .. import certcompress
from .. import extensions as X
from .. import messages as M
from ..config import TLSConfig
from ..enums import (
    DTLS_1_2,
    HELLO_RETRY_REQUEST_RANDOM,
    TLS_1_2,
    AlertDescription,
    ExtensionType as E,
    HandshakeType as H,
    KeyUpdateRequest,
    PskKeyExchangeMode,
)
from ..kex import SUPPORTED_GROUPS, KeyShare
from ..key_schedule import EarlySecret, HandshakeSecret, MasterSecret, finished_verify_data, resumption_psk
from ..session import EarlyDataOffer, ExternalPSK, TicketState
from ..signatures import CLIENT_CONTEXT, SERVER_CONTEXT, choose_scheme, sign, signed_content, verify_certificate_verify
from ..suites import SUITES, CipherSuiteInfo, suite_info
from ..transcript import Transcript
from ..verify import parse_certificates, verify_client_chain
from .common import (
    DTLS13,
    TLS13,
    LazyExporterSecret,
    RecordSink,
    Variant,
    check_certificate_verify,
    check_finished,
    constant_time_equal,
    decode_certificate,
    encode_certificate,
    offered_compression,
    unexpected,
)
from .retry import check_second_client_hello


def _is_older_version(version: int, dtls: bool) -> bool:
    """A protocol version before (D)TLS 1.3: TLS 1.0-1.2 (SSL 3.0 too), or DTLS 1.0/1.2."""
    if dtls:
        return version in (0xFEFF, DTLS_1_2)
    return 0x0300 <= version < TLS_1_2 + 1


def _is_obsolete_group(group: int) -> bool:
    """RFC 8446 §4.2.7 obsolete_RESERVED: 0x0001-0x0016, 0x001A-0x001C, 0xFF01-0xFF02."""
    return 0x0001 <= group <= 0x0016 or 0x001A <= group <= 0x001C or 0xFF01 <= group <= 0xFF02


class ServerState(Enum):
    START = auto()
    WAIT_CH2 = auto()
    WAIT_EOED = auto()
    WAIT_CERT = auto()
    WAIT_CV = auto()
    WAIT_FINISHED = auto()
    CONNECTED = auto()
    PHA_WAIT_CV = auto()  # post-handshake authentication (§4.6.2)
    PHA_WAIT_FINISHED = auto()

    # Members are singletons compared by identity: hash them the same way
    # (Enum's own __hash__ is Python code, run on every message dispatch).
    __hash__ = object.__hash__


@dataclass
class _PostHandshakeAuth:
    """One outstanding post-handshake CertificateRequest (§4.6.2)."""

    context: bytes
    transcript: Transcript  # ClientHello .. client Finished, CertificateRequest, ...
    required: bool
    certificates: Optional[list[x509.Certificate]] = None


@dataclass
class _ResolvedPsk:
    """An offered identity we can use: a ticket we issued or an external PSK."""

    psk: bytes
    hash_name: str
    external: bool
    state: Optional[TicketState] = None


@dataclass
class _ChosenPsk:
    index: int
    resolved: _ResolvedPsk
    suite: int
    binder: bytes
    client_age: float  # seconds, from obfuscated_ticket_age
    early_secret: Optional[EarlySecret] = None  # set when the binder is verified


# Slack on the client's view of a ticket's age (RFC 9846 §4.2.11.1, §8.3).
_AGE_TOLERANCE = 10.0
# Early data is skipped up to this much even when our own limit is lower
# (tickets of another configuration, external PSKs): §4.2.10.
_MIN_EARLY_SKIP = 1 << 14


def encode_hello_retry_request(
    variant: Variant, suite: int, group: Optional[int], cookie: Optional[bytes], session_id: bytes
) -> bytes:
    """A HelloRetryRequest (RFC 9846 §4.1.4): key_share only with ``group``,
    cookie (§4.2.2) only with ``cookie``."""
    exts: list[tuple[int, bytes]] = [(E.supported_versions, X.encode_supported_versions_sh(variant.version))]
    if group is not None:
        exts.append((E.key_share, X.encode_key_share_hrr(group)))
    if cookie is not None:
        exts.append((E.cookie, X.encode_cookie(cookie)))
    hrr = M.ServerHello(
        random=HELLO_RETRY_REQUEST_RANDOM,
        legacy_session_id_echo=session_id,
        cipher_suite=suite,
        extensions=exts,
        legacy_version=variant.legacy_version,
    )
    return M.encode_handshake(hrr)


class ServerHandshake(LazyExporterSecret):
    """The server side of one TLS 1.3 handshake and its post-handshake messages."""

    def __init__(
        self, config: TLSConfig, sink: RecordSink, cookie_key: Optional[bytes] = None, *, dtls: bool = False
    ) -> None:
        self.config = config
        self.variant = DTLS13 if dtls else TLS13
        self.sink = sink
        self.state = ServerState.START
        self.transcript = Transcript()
        self.cookie_key = cookie_key  # made on first use (HelloRetryRequest cookie)
        self.client_random = b""
        self.session_id = b""
        self.suite: Optional[CipherSuiteInfo] = None
        self.group: Optional[int] = None
        self.alpn_protocol: Optional[str] = None
        self.server_name: Optional[str] = None
        self.hello_retry = False
        self.hrr_cookie: Optional[bytes] = None
        self._first_hello: Optional[M.ClientHello] = None  # kept only when we sent HelloRetryRequest
        # DTLS: the HelloRetryRequest was sent statelessly (restore_hello_retry).
        self.stateless_retry = False
        self.ccs_sent = False
        self.peer_certificates: list[x509.Certificate] = []
        self.client_signature_schemes: list[int] = []
        self.handshake_secret: Optional[HandshakeSecret] = None
        self.master_secret: Optional[MasterSecret] = None
        self.client_hs_secret = b""
        self.server_hs_secret = b""
        self.client_app_secret = b""
        self.server_app_secret = b""
        self.exporter_secret = b""
        self.resumption_secret = b""
        self.complete = False
        self.now = 0.0
        self.client_psk_modes: list[int] = []
        self.chosen_psk: Optional[_ChosenPsk] = None
        self.session_resumed = False
        self.psk_identity: Optional[bytes] = None
        self.early_data_state: Optional[str] = None  # None, "accepted" or "rejected"
        self.client_early_secret = b""
        self.early_exporter_secret = b""
        self._psk_cache: dict[bytes, Optional[_ResolvedPsk]] = {}
        self._tickets_sent = 0
        self._client_hello_hash = b""
        # Client's offers (RFC 9846 §4.2.6, RFC 6066 §8, RFC 8879 §3, RFC 8449).
        self.client_post_handshake_auth = False
        self.client_wants_ocsp = False
        self.client_compression: list[int] = []
        self.client_record_size_limit: Optional[int] = None
        self._pha_pending: dict[bytes, _PostHandshakeAuth] = {}
        self._pha: Optional[_PostHandshakeAuth] = None
        self.on_key_update: Callable[[bool], None] = lambda requested: None
        # Post-handshake authentication finished: (context, certificates or []).
        self.on_post_handshake_auth: Callable[[bytes, list[x509.Certificate]], None] = lambda context, certs: None
        # Set by the connection: the current traffic secret of "write" or "read".
        self.traffic_secret: Callable[[str], bytes] = lambda direction: b""
        # Set by a DTLS connection: hello extensions it handles (connection_id);
        # on_client_hello(exts) returns the ServerHello extensions answering them.
        self.hello_extensions: Optional[Any] = None
        self._hello_answer: list[tuple[int, bytes]] = []

    def restore_hello_retry(self, suite: int, group: Optional[int], ch1_hash: bytes, cookie: bytes) -> None:
        """Continue after a HelloRetryRequest sent statelessly (DTLS, RFC 9147 §5.1).

        The transcript is rebuilt from the ClientHello1 hash carried in the
        validated cookie: ``message_hash`` (RFC 9846 §4.4.1) followed by the
        HelloRetryRequest, encoded again exactly as it was sent.
        """
        assert self.state is ServerState.START
        self.suite = suite_info(suite)
        self.transcript.set_hash(self.suite.hash_name)
        self.transcript.update(bytes((H.message_hash, 0, 0, len(ch1_hash))) + ch1_hash)
        self.transcript.update(encode_hello_retry_request(self.variant, suite, group, cookie, b""))
        self.hello_retry = True
        self.stateless_retry = True
        self.group = group
        self.hrr_cookie = cookie
        self.state = ServerState.WAIT_CH2

    def handle_message(self, msg_type: int, data: bytes, now: float = 0.0) -> None:
        self.now = now
        name = _HANDLERS[self.state].get(msg_type)
        if name is None:
            raise unexpected(self.state, msg_type)
        getattr(self, name)(data)

    def _decode(self, msg_type: int, data: bytes) -> object:
        hash_len = self.suite.hash_len if self.suite else None
        return M.decode_handshake(msg_type, memoryview(data)[4:], hash_len=hash_len, dtls=self.variant.dtls)

    # ------------------------------------------------------------ ClientHello
    def _handle_client_hello(self, data: bytes) -> None:
        ch = self._decode(H.client_hello, data)
        assert isinstance(ch, M.ClientHello)
        second = self.state is ServerState.WAIT_CH2
        exts = dict(ch.extensions)
        if (not second or self.stateless_retry) and self.config.select_context is not None:
            # After a stateless HelloRetryRequest (DTLS) this is the first
            # ClientHello this machine sees: choose the context now.
            self._select_context(exts)
        cfg = self.config
        # RFC 9846 §4.2.1: TLS 1.3 only.
        if E.supported_versions not in exts:
            raise ProtocolVersionError("client does not offer TLS 1.3 (no supported_versions)")
        versions = X.decode_supported_versions_ch(exts[E.supported_versions])
        if self.variant.version not in versions:
            raise ProtocolVersionError(f"client does not offer {'DTLS' if self.variant.dtls else 'TLS'} 1.3")
        if ch.legacy_cookie:
            raise IllegalParameter("legacy_cookie must be empty in DTLS 1.3")  # RFC 9147 §5.3
        if not self.variant.dtls and ch.legacy_version < TLS_1_2 and ch.legacy_version != 0x0301:
            # Accept any legacy_version >= TLS 1.0 as OpenSSL does; below is nonsense.
            raise ProtocolVersionError("ClientHello legacy_version too low")
        if ch.legacy_compression_methods != b"\x00":
            raise IllegalParameter("legacy_compression_methods must be exactly [null]")
        if second and not self.stateless_retry:
            # §4.1.2: the same ClientHello but for the changes HelloRetryRequest allows.
            # (After a stateless DTLS HelloRetryRequest the first one is gone:
            # the cookie's transcript hash binds it instead.)
            assert self._first_hello is not None
            check_second_client_hello(self._first_hello, ch)
        self.client_random = ch.random
        # RFC 9147 §5.3: a DTLS 1.3 server never echoes legacy_session_id
        # (a client resuming a cached pre-1.3 session may send one).
        self.session_id = b"" if self.variant.dtls else ch.legacy_session_id

        # Cipher suite: our preference among the client's offers.
        offered = set(ch.cipher_suites)
        candidates = [s for s in cfg.cipher_suites if s in offered and s in SUITES]
        if not candidates:
            raise HandshakeFailure("no cipher suite in common")
        suite = candidates[0]
        if second:
            assert self.suite is not None
            if self.suite.suite not in offered:
                raise IllegalParameter("second ClientHello dropped the cipher suite chosen in HelloRetryRequest")
            if self.suite.suite not in candidates:  # stateless HRR under another context
                raise HandshakeFailure("cipher suite of the HelloRetryRequest not allowed by the selected context")
            suite = self.suite.suite
            candidates = [suite]

        # §4.2.11: pre_shared_key last, and only with psk_key_exchange_modes.
        offered_psks: Optional[X.OfferedPsks] = None
        if E.pre_shared_key in exts:
            if ch.extensions[-1][0] != E.pre_shared_key:
                raise IllegalParameter("pre_shared_key is not the last ClientHello extension")
            if E.psk_key_exchange_modes not in exts:
                raise MissingExtension("pre_shared_key without psk_key_exchange_modes")
            offered_psks = X.decode_pre_shared_key_ch(exts[E.pre_shared_key])
        if E.psk_key_exchange_modes in exts:
            self.client_psk_modes = X.decode_psk_key_exchange_modes(exts[E.psk_key_exchange_modes])

        client_groups: list[int] = []
        shares: list[tuple[int, bytes]] = []
        if E.key_share in exts:
            if E.supported_groups not in exts:
                raise MissingExtension("key_share without supported_groups")
            client_groups = X.decode_supported_groups(exts[E.supported_groups])
            shares = X.decode_key_share_ch(exts[E.key_share])
            self._check_key_shares(shares, client_groups)
        elif E.supported_groups in exts:
            client_groups = X.decode_supported_groups(exts[E.supported_groups])
        self._check_obsolete_groups(client_groups, shares, versions)
        if E.signature_algorithms in exts:
            self.client_signature_schemes = X.decode_signature_algorithms(exts[E.signature_algorithms])
        if E.server_name in exts:
            self.server_name = X.decode_server_name(exts[E.server_name])
        alpn_offer = exts.get(E.application_layer_protocol_negotiation)
        self.alpn_protocol = None
        if alpn_offer is not None:
            self.alpn_protocol = self._choose_alpn(X.decode_alpn(alpn_offer))
        if E.early_data in exts and second:
            raise IllegalParameter("early_data in the second ClientHello")
        self._note_optional_extensions(exts)

        if second:
            cookie = exts.get(E.cookie)
            if self.hrr_cookie is not None:
                if cookie is None or not constant_time_equal(X.decode_cookie(cookie), self.hrr_cookie):
                    raise IllegalParameter("second ClientHello does not echo the HelloRetryRequest cookie")
            elif cookie is not None:
                raise IllegalParameter("cookie in the second ClientHello although none was sent")
            if (self.group is not None or not self.stateless_retry) and (len(shares) != 1 or shares[0][0] != self.group):
                raise IllegalParameter("second ClientHello must carry one key share for the group we asked for")
        elif E.cookie in exts:
            # We never sent a cookie on this connection.
            raise IllegalParameter("unexpected cookie in the first ClientHello")

        # Group: the first of ours for which the client sent a share.
        share_by_group = dict(shares)
        usable = [g for g in cfg.groups if g in SUPPORTED_GROUPS]
        group = next((g for g in usable if g in share_by_group), None)
        retry_group = None if second else next((g for g in usable if g in client_groups), None)

        # PSK and its key exchange mode (§4.2.9): our preference among the client's.
        chosen = self._choose_psk(offered_psks, candidates) if offered_psks is not None else None
        mode: Optional[int] = None
        if chosen is not None:
            for m in cfg.psk_key_exchange_modes:
                if m not in self.client_psk_modes:
                    continue
                if m == PskKeyExchangeMode.psk_ke or group is not None or retry_group is not None:
                    mode = m
                    break
            if mode is None:
                chosen = None
        if chosen is None:
            # A certificate-based handshake.
            try:
                cfg.ensure_certificate()
            except (OSError, ValueError) as exc:
                raise InternalError(f"cannot load the certificate: {exc}") from None
            if not cfg.certificate_chain or cfg.private_key is None:
                raise HandshakeFailure("no acceptable PSK offered and we have no certificate")
            if E.signature_algorithms not in exts:
                raise MissingExtension("ClientHello has no signature_algorithms")
            if E.supported_groups not in exts:
                raise MissingExtension("ClientHello has no supported_groups")
            if E.key_share not in exts:
                raise MissingExtension("ClientHello has no key_share")
        else:
            suite = chosen.suite
        if mode == PskKeyExchangeMode.psk_ke:
            group = None
        elif group is None:
            if second:
                raise IllegalParameter("second ClientHello has no usable key share")
            if retry_group is None:
                raise HandshakeFailure("no key exchange group in common")
            # §4.1.4: HelloRetryRequest; 0-RTT records that follow are skipped.
            self._first_hello = ch
            self.suite = suite_info(suite)
            self.transcript.set_hash(self.suite.hash_name)
            self.transcript.update(data)
            if E.early_data in exts:
                self.early_data_state = "rejected"
                self.sink.skip_early_data(self._early_skip_limit(chosen), trial_decrypt=False)
            self._send_hello_retry_request(retry_group)
            return
        for hook in cfg.extension_hooks:
            hook.on_client_hello(list(ch.extensions))
        self.suite = suite_info(suite)
        if not second:
            self.transcript.set_hash(self.suite.hash_name)
        if chosen is not None:
            assert offered_psks is not None
            self._verify_binder(data, offered_psks, chosen)
            self.chosen_psk = chosen
            self.session_resumed = True
            self.psk_identity = offered_psks.identities[chosen.index].identity
            if chosen.resolved.state is not None:
                # §2.2: the ticket carries the original client authentication.
                self.peer_certificates = parse_certificates(list(chosen.resolved.state.peer_certificates))
        self.transcript.update(data)
        if E.early_data in exts:  # the 0-RTT secrets' transcript (§7.1)
            self._client_hello_hash = self.transcript.digest()
        accept_early = E.early_data in exts and self._accept_early_data(chosen)
        if E.early_data in exts:
            self.early_data_state = "accepted" if accept_early else "rejected"
        self.group = group
        if self.hello_extensions is not None:
            self._hello_answer = self.hello_extensions.on_client_hello(exts)
        if group is None:
            self._send_server_flight(None, None)
        else:
            ours, shared = KeyShare.respond(group, share_by_group[group])
            self._send_server_flight(ours, shared)

    def _select_context(self, exts: dict[int, bytes]) -> None:
        """Let ``select_context(server_name, alpn_offers)`` pick the configuration."""
        name = X.decode_server_name(exts[E.server_name]) if E.server_name in exts else None
        alpn_data = exts.get(E.application_layer_protocol_negotiation)
        offers = [p.decode("latin-1") for p in X.decode_alpn(alpn_data)] if alpn_data is not None else []
        assert self.config.select_context is not None
        try:
            chosen = self.config.select_context(name, offers)
            if chosen is not None and chosen is not self.config:
                chosen.validate(server_side=True)
        except LocalProtocolError:
            raise
        except Exception as exc:  # noqa: BLE001 - the application's error ends this handshake only
            raise InternalError(f"select_context failed: {exc}") from None
        if chosen is not None:
            self.config = chosen

    def _note_optional_extensions(self, exts: dict[int, bytes]) -> None:
        self.client_post_handshake_auth = E.post_handshake_auth in exts
        if self.client_post_handshake_auth:
            X.decode_empty(exts[E.post_handshake_auth])
        self.client_wants_ocsp = E.status_request in exts and X.decode_status_request_ch(exts[E.status_request]) is not None
        self.client_compression = offered_compression(exts)
        if E.record_size_limit in exts:
            self.client_record_size_limit = X.decode_record_size_limit(exts[E.record_size_limit])

    # ------------------------------------------------------------------- PSKs
    def _resolve_psk(self, identity: bytes, obfuscated_age: int) -> Optional[_ResolvedPsk]:
        """A ticket we issued (unexpired) or an external PSK; None if unknown."""
        if identity in self._psk_cache:  # the second ClientHello after HelloRetryRequest
            return self._psk_cache[identity]
        cfg = self.config
        now = self.now
        resolved: Optional[_ResolvedPsk] = None
        raw = cfg.ticket_store.pop(identity, now) if cfg.ticket_store is not None else cfg.ticket_keys.open(identity)
        state = TicketState.decode(raw) if raw is not None else None
        if state is not None and state.protocol_version != self.variant.version:
            # A ticket from a TLS connection never resumes a DTLS one, nor the
            # reverse: not selected (§4.2.11), a full handshake follows.
            pass
        elif state is not None and cfg.require_client_certificate and not state.peer_certificates:
            # A ticket from a connection without a client certificate (another
            # server of the fleet, or an older ticket) must not skip the client
            # authentication this server requires: full handshake instead.
            pass
        elif state is not None and state.cipher_suite in SUITES:
            age = now - state.created_at
            client_age = ((obfuscated_age - state.ticket_age_add) & 0xFFFFFFFF) / 1000
            # §4.6.1: not past its lifetime, by our clock or the client's.
            if 0 <= age <= state.lifetime + _AGE_TOLERANCE and client_age <= state.lifetime:
                resolved = _ResolvedPsk(state.psk, suite_info(state.cipher_suite).hash_name, False, state)
        elif state is None and cfg.psk_lookup is not None:
            found = cfg.psk_lookup(identity)
            if isinstance(found, (bytes, bytearray)) and found:
                found = ExternalPSK(identity, bytes(found))
            if isinstance(found, ExternalPSK):
                resolved = _ResolvedPsk(found.key, found.hash_name, True)
        self._psk_cache[identity] = resolved
        return resolved

    def _choose_psk(self, offered: X.OfferedPsks, candidates: list[int]) -> Optional[_ChosenPsk]:
        """The first offered PSK usable with one of ``candidates`` (§4.2.11 note)."""
        for index, ident in enumerate(offered.identities):
            r = self._resolve_psk(ident.identity, ident.obfuscated_ticket_age)
            if r is None:
                continue
            usable = [c for c in candidates if suite_info(c).hash_name == r.hash_name]
            if not usable:
                continue
            # A ticket's own suite when possible (needed for 0-RTT).
            suite = r.state.cipher_suite if r.state is not None and r.state.cipher_suite in usable else usable[0]
            client_age = 0.0
            if r.state is not None:
                client_age = ((ident.obfuscated_ticket_age - r.state.ticket_age_add) & 0xFFFFFFFF) / 1000
            return _ChosenPsk(index, r, suite, offered.binders[index], client_age)
        return None

    def _verify_binder(self, data: bytes, offered: X.OfferedPsks, chosen: _ChosenPsk) -> None:
        """§4.2.11.2: HMAC over Truncate(ClientHello); a bad binder is fatal."""
        r = chosen.resolved
        truncated = data[: -X.binders_block_length([len(b) for b in offered.binders])]
        if self.hello_retry:
            th = self.transcript.digest_with(truncated)
        else:
            th = hashlib.new(r.hash_name, truncated).digest()
        prefix = self.variant.label_prefix
        chosen.early_secret = EarlySecret(r.hash_name, r.psk, prefix=prefix)
        key = chosen.early_secret.binder_key(r.external)
        if not constant_time_equal(finished_verify_data(r.hash_name, key, th, prefix), chosen.binder):
            raise DecryptError("PSK binder does not verify")

    def _early_skip_limit(self, chosen: Optional[_ChosenPsk]) -> int:
        ticket_max = chosen.resolved.state.max_early_data if chosen is not None and chosen.resolved.state else 0
        return max(self.config.max_early_data, ticket_max, _MIN_EARLY_SKIP)

    def _accept_early_data(self, chosen: Optional[_ChosenPsk]) -> bool:
        """§4.2.10 and §8: every condition for accepting the client's 0-RTT data."""
        cfg = self.config
        now = self.now
        if chosen is None or chosen.index != 0 or self.hello_retry or cfg.max_early_data <= 0:
            return False
        st = chosen.resolved.state
        if st is None or st.max_early_data <= 0:
            return False
        if st.cipher_suite != chosen.suite or st.alpn_protocol != self.alpn_protocol:
            return False
        # §8.3: the ClientHello must arrive when the ticket's age says it was sent.
        if not cfg.anti_replay.is_fresh(st.created_at + chosen.client_age, now):
            return False
        # §8.2: record the validated binder; a repeat is a replay.
        if not cfg.anti_replay.record_once(chosen.binder, now):
            return False
        if cfg.early_data_callback is not None:
            assert self.psk_identity is not None
            offer = EarlyDataOffer(self.server_name, self.alpn_protocol, self.psk_identity, chosen.client_age)
            if not cfg.early_data_callback(offer):
                return False
        return True

    def _check_obsolete_groups(self, client_groups: list[int], shares: list[tuple[int, bytes]], versions: list[int]) -> None:
        """RFC 8446 §4.2.7: codepoints of the obsolete_RESERVED ranges (the
        TLS 1.2 curves) "MUST NOT be offered" in TLS 1.3. A key share for one
        is always refused (key shares exist only in TLS 1.3). In
        supported_groups only when ``config.reject_obsolete_groups`` (the
        default) and the client offers TLS 1.3 alone: a client that also
        offers TLS 1.2 may list them for TLS 1.2, and they are ignored."""
        for g, _ in shares:
            if _is_obsolete_group(g):
                raise IllegalParameter(f"key share for obsolete group {g:#06x}")
        if self.config.reject_obsolete_groups:
            for g in client_groups:
                if _is_obsolete_group(g):
                    if any(_is_older_version(v, self.variant.dtls) for v in versions):
                        return  # listed for (D)TLS 1.2
                    raise IllegalParameter(f"obsolete group {g:#06x} offered in supported_groups")

    def _check_key_shares(self, shares: list[tuple[int, bytes]], client_groups: list[int]) -> None:
        """RFC 9846 §4.2.8: one share per group, each in supported_groups."""
        seen: set[int] = set()
        for g, _ in shares:
            if g in seen:
                raise IllegalParameter("duplicate key share group")
            if g not in client_groups:
                raise IllegalParameter("key share for a group not in supported_groups")
            seen.add(g)

    def _choose_alpn(self, offered: list[bytes]) -> Optional[str]:
        """RFC 7301 §3.2: our preference; no overlap is no_application_protocol."""
        if not self.config.alpn_protocols:
            return None
        names = [p.decode("latin-1") for p in offered]
        for p in self.config.alpn_protocols:
            if p in names:
                return p
        raise LocalProtocolError(AlertDescription.no_application_protocol, f"no ALPN protocol in common (client offered {names})")

    def _send_hello_retry_request(self, group: int) -> None:
        """RFC 9846 §4.1.4."""
        assert self.suite is not None
        self.hello_retry = True
        self.group = group
        self.transcript.rewrite_for_hello_retry()
        if self.config.hello_retry_cookie:
            ch1_hash = self.transcript.digest()
            if not self.cookie_key:
                self.cookie_key = os.urandom(32)
            self.hrr_cookie = ch1_hash + hmac.digest(self.cookie_key, ch1_hash + group.to_bytes(2, "big"), "sha256")
        data = encode_hello_retry_request(self.variant, self.suite.suite, group, self.hrr_cookie, self.session_id)
        self.transcript.update(data)
        self.sink.send_handshake(data)
        self._send_ccs_once()
        self.state = ServerState.WAIT_CH2

    def _send_ccs_once(self) -> None:
        # RFC 9846 appendix D.4: after our first handshake message, only when
        # the client used a non-empty legacy_session_id (compatibility mode).
        if self.config.middlebox_compat and self.session_id and not self.ccs_sent and not self.variant.dtls:
            self.ccs_sent = True
            self.sink.send_change_cipher_spec()

    # -------------------------------------------------- ServerHello .. Finished
    def _send_server_flight(self, ours: Optional[KeyShare], shared: Optional[bytes]) -> None:
        suite = self.suite
        assert suite is not None
        cfg = self.config
        chosen = self.chosen_psk
        scheme = None
        if chosen is None:
            # Pick the CertificateVerify scheme before anything is sent, so
            # that a client we cannot sign for gets handshake_failure instead
            # of a ServerHello (RFC 9846 §4.2.3).
            assert cfg.private_key is not None
            scheme = choose_scheme(
                cfg.private_key, self.client_signature_schemes, cfg.signature_schemes, cfg.certificate_chain[0]
            )
        sh_exts = [(E.supported_versions, X.encode_supported_versions_sh(self.variant.version))]
        if ours is not None:
            sh_exts.append((E.key_share, X.encode_key_share_sh((ours.group, ours.public))))
        if chosen is not None:
            sh_exts.append((E.pre_shared_key, X.encode_pre_shared_key_sh(chosen.index)))
        sh_exts += self._hello_answer
        sh = M.ServerHello(
            random=os.urandom(32),
            legacy_session_id_echo=self.session_id,
            cipher_suite=suite.suite,
            extensions=sh_exts,
            legacy_version=self.variant.legacy_version,
        )
        sh_bytes = M.encode_handshake(sh)
        self.transcript.update(sh_bytes)
        self.sink.send_handshake(sh_bytes)
        self._send_ccs_once()

        # RFC 9846 §7.1: handshake secrets over ClientHello..ServerHello.
        th = self.transcript.digest()
        prefix = self.variant.label_prefix
        early = chosen.early_secret if chosen is not None and chosen.early_secret else EarlySecret(suite.hash_name, None, prefix=prefix)
        self.handshake_secret = early.handshake_secret(shared)
        self.client_hs_secret = self.handshake_secret.client_handshake_traffic_secret(th)
        self.server_hs_secret = self.handshake_secret.server_handshake_traffic_secret(th)
        self.sink.log_secret("CLIENT_HANDSHAKE_TRAFFIC_SECRET", self.client_random, self.client_hs_secret)
        self.sink.log_secret("SERVER_HANDSHAKE_TRAFFIC_SECRET", self.client_random, self.server_hs_secret)
        self.sink.set_write_secret(suite, self.server_hs_secret)
        if self.early_data_state == "accepted":
            # §4.2.10: read 0-RTT data under client_early_traffic_secret(ClientHello).
            ch_hash = self._client_hello_hash
            self.client_early_secret = early.client_early_traffic_secret(ch_hash)
            self.early_exporter_secret = early.early_exporter_master_secret(ch_hash)
            self.sink.log_secret("CLIENT_EARLY_TRAFFIC_SECRET", self.client_random, self.client_early_secret)
            self.sink.log_secret("EARLY_EXPORTER_SECRET", self.client_random, self.early_exporter_secret)
            self.sink.accept_early_data(suite, self.client_early_secret, cfg.max_early_data)
            if self.variant.dtls:
                # RFC 9147 §5.6: no EndOfEarlyData; epochs tell early data and
                # handshake records apart, so both keys are readable at once.
                self.sink.set_read_secret(suite, self.client_hs_secret)
        else:
            self.sink.set_read_secret(suite, self.client_hs_secret)
            if self.early_data_state == "rejected" and not self.hello_retry:
                # §4.2.10: skip records that fail under the handshake key.
                self.sink.skip_early_data(self._early_skip_limit(chosen), trial_decrypt=True)

        ee_exts: list[tuple[int, bytes]] = []
        if self.server_name is not None:
            ee_exts.append((E.server_name, b""))
        if self.client_record_size_limit is not None:
            # RFC 8449 §4: answer with our limit; from here on our protected
            # records respect the client's (minus the inner content type byte).
            own = cfg.record_size_limit or 16385
            ee_exts.append((E.record_size_limit, X.encode_record_size_limit(own)))
            self.sink.set_record_size_limit(min(self.client_record_size_limit, 16385) - 1, own - 1)
        if self.alpn_protocol is not None:
            ee_exts.append((E.application_layer_protocol_negotiation, X.encode_alpn([self.alpn_protocol.encode("latin-1")])))
        if self.early_data_state == "accepted":
            ee_exts.append((E.early_data, X.encode_empty()))
        for hook in cfg.extension_hooks:
            ee_exts += hook.encrypted_extensions()
        self._send(M.EncryptedExtensions(ee_exts))

        if chosen is not None:
            # §4.3.2: no CertificateRequest with a PSK; §2.2: no Certificate either.
            eoed = self.early_data_state == "accepted" and not self.variant.dtls
            next_state = ServerState.WAIT_EOED if eoed else ServerState.WAIT_FINISHED
        elif cfg.request_client_certificate or cfg.require_client_certificate:
            self._send(M.CertificateRequest(b"", self._certificate_request_extensions()))
            next_state = ServerState.WAIT_CERT
        else:
            next_state = ServerState.WAIT_FINISHED

        if scheme is not None:
            assert cfg.private_key is not None
            self._send_raw(self._certificate_message())
            signature = sign(cfg.private_key, scheme, signed_content(SERVER_CONTEXT, self.transcript.digest()))
            self._send(M.CertificateVerify(scheme, signature))
        verify_data = finished_verify_data(suite.hash_name, self.server_hs_secret, self.transcript.digest(), prefix)
        self._send(M.Finished(verify_data))

        # Application secrets over ClientHello..server Finished.
        th = self.transcript.digest()
        self.master_secret = self.handshake_secret.master_secret()
        self.client_app_secret = self.master_secret.client_application_traffic_secret(th)
        self.server_app_secret = self.master_secret.server_application_traffic_secret(th)
        self._set_exporter_context(self.master_secret, th)  # derived on first use
        self.sink.log_secret("CLIENT_TRAFFIC_SECRET_0", self.client_random, self.client_app_secret)
        self.sink.log_secret("SERVER_TRAFFIC_SECRET_0", self.client_random, self.server_app_secret)
        self.sink.log_secret("EXPORTER_SECRET", self.client_random, lambda: self.exporter_secret)
        self.sink.set_write_secret(suite, self.server_app_secret)
        self.state = next_state

    def _send(self, msg: object) -> None:
        self._send_raw(M.encode_handshake(msg))

    def _send_raw(self, data: bytes) -> None:
        self.transcript.update(data)
        self.sink.send_handshake(data)

    def _certificate_message(self) -> bytes:
        """Our Certificate message (RFC 9846 §4.4.2), encoded once per chain,
        stapled OCSP response (§4.4.2.1) and compression (RFC 8879)."""
        cfg = self.config
        chain = tuple(cfg.certificate_chain)
        ocsp = cfg.ocsp_response if self.client_wants_ocsp else None
        compression = certcompress.choose(cfg.certificate_compression, self.client_compression)
        return cfg.cached(  # type: ignore[return-value]
            ("certificate", chain, ocsp, compression),
            lambda: encode_certificate(b"", chain, ocsp_response=ocsp, compression=compression),
        )

    def _certificate_request_extensions(self) -> list[tuple[int, bytes]]:
        """signature_algorithms, certificate_authorities (§4.2.4) and
        compress_certificate (RFC 8879 §3) for a CertificateRequest."""
        cfg = self.config
        exts = [(E.signature_algorithms, X.encode_signature_algorithms([int(s) for s in cfg.signature_schemes]))]
        names = cfg.client_certificate_authorities()
        if names:
            exts.append((E.certificate_authorities, X.encode_certificate_authorities([n.public_bytes() for n in names])))
        algs = [a for a in cfg.certificate_compression if a in certcompress.available()]
        if algs:
            exts.append((E.compress_certificate, X.encode_compress_certificate(algs)))
        return exts

    def _accepted_compression(self) -> list[int]:
        return [a for a in self.config.certificate_compression if a in certcompress.available()]

    # ------------------------------------------------- client authentication
    def _handle_certificate(self, data: bytes) -> None:
        msg = decode_certificate(data, self._accepted_compression(), self.config.max_handshake_message_size)
        if msg.certificate_request_context:
            raise IllegalParameter("certificate_request_context does not match the CertificateRequest")
        self.transcript.update(data)
        if not msg.certificate_list:
            if self.config.require_client_certificate:
                raise LocalProtocolError(AlertDescription.certificate_required, "client sent no certificate")
            self.state = ServerState.WAIT_FINISHED
            return
        self.peer_certificates = parse_certificates([e.cert_data for e in msg.certificate_list])
        if self.config.verify_peer:
            verify_client_chain(self.peer_certificates, self.config.get_trust_anchors())
        self.state = ServerState.WAIT_CV

    def _handle_certificate_verify(self, data: bytes) -> None:
        check_certificate_verify(
            data, self.config, self.peer_certificates[0], self.transcript.digest(), CLIENT_CONTEXT, "client"
        )
        self.transcript.update(data)
        self.state = ServerState.WAIT_FINISHED

    def _handle_finished(self, data: bytes) -> None:
        suite = self.suite
        assert suite is not None and self.master_secret is not None
        check_finished(data, suite, self.client_hs_secret, self.transcript.digest(), "client", self.variant.label_prefix)
        self.transcript.update(data)
        self.sink.set_read_secret(suite, self.client_app_secret)
        self.resumption_secret = self.master_secret.resumption_master_secret(self.transcript.digest())
        self.state = ServerState.CONNECTED
        self.complete = True
        # §4.6.1: tickets only for a client that can use them (§4.2.9).
        if any(m in self.client_psk_modes for m in self.config.psk_key_exchange_modes):
            for _ in range(self.config.num_tickets):
                self.send_new_session_ticket()

    def _handle_end_of_early_data(self, data: bytes) -> None:
        """§4.5: the end of 0-RTT; the client's next records use its handshake key."""
        self._decode(H.end_of_early_data, data)
        assert self.suite is not None
        self.transcript.update(data)
        self.sink.set_read_secret(self.suite, self.client_hs_secret)
        self.state = ServerState.WAIT_FINISHED

    def send_new_session_ticket(self) -> None:
        """Issue one NewSessionTicket (§4.6.1): stateless (sealed state) or
        stateful (random label, state in ``ticket_store``)."""
        cfg = self.config
        suite = self.suite
        assert suite is not None and self.complete
        nonce = self._tickets_sent.to_bytes(8, "big")  # unique on this connection
        self._tickets_sent += 1
        age_add = int.from_bytes(os.urandom(4), "big")
        state = TicketState(
            cipher_suite=suite.suite,
            psk=resumption_psk(suite.hash_name, self.resumption_secret, nonce, self.variant.label_prefix),
            ticket_age_add=age_add,
            created_at=self.now,
            lifetime=cfg.ticket_lifetime,
            max_early_data=cfg.max_early_data,
            alpn_protocol=self.alpn_protocol,
            server_name=self.server_name,
            protocol_version=self.variant.version,
            peer_certificates=tuple(c.public_bytes(Encoding.DER) for c in self.peer_certificates),
        )
        if cfg.ticket_store is not None:
            ticket = os.urandom(32)
            cfg.ticket_store.put(ticket, state.encode(), self.now, cfg.ticket_lifetime + _AGE_TOLERANCE)
        else:
            ticket = cfg.ticket_keys.seal(state.encode(), self.now)
            if len(ticket) > 0xFFFF:
                # ticket<1..2^16-1> (§4.6.1) cannot hold this client's chain;
                # a ticket without it would resume the client as anonymous.
                return
        exts: list[tuple[int, bytes]] = []
        if cfg.max_early_data > 0:
            exts.append((E.early_data, X.encode_early_data_nst(cfg.max_early_data)))
        self.sink.send_handshake(M.encode_handshake(M.NewSessionTicket(cfg.ticket_lifetime, age_add, nonce, ticket, exts)))

    def _handle_key_update(self, data: bytes) -> None:
        ku = self._decode(H.key_update, data)
        assert isinstance(ku, M.KeyUpdate)
        self.on_key_update(ku.request_update == KeyUpdateRequest.update_requested)

    # ------------------------------------- post-handshake authentication (§4.6.2)
    def request_client_certificate(self, required: bool = False) -> bytes:
        """Send a CertificateRequest with a fresh random context; returns it.

        Raises:
            UsageError: before the handshake completed, when the client did
                not offer post_handshake_auth, or with an external PSK (§4.3.2).
        """
        if not self.complete:
            raise UsageError("post-handshake authentication needs a completed handshake")
        if not self.client_post_handshake_auth:
            raise UsageError("the client did not offer post_handshake_auth")
        if self.chosen_psk is not None and self.chosen_psk.resolved.external:
            raise UsageError("no client certificate requests with an external PSK (RFC 9846 §4.3.2)")
        # §4.3.2: unique within the connection and unpredictable.
        context = os.urandom(32)
        data = M.encode_handshake(M.CertificateRequest(context, self._certificate_request_extensions()))
        transcript = self.transcript.copy()  # ClientHello .. client Finished
        transcript.update(data)
        self._pha_pending[context] = _PostHandshakeAuth(context, transcript, required)
        self.sink.send_handshake(data)
        return context

    def _handle_pha_certificate(self, data: bytes) -> None:
        msg = decode_certificate(data, self._accepted_compression(), self.config.max_handshake_message_size)
        pha = self._pha_pending.pop(bytes(msg.certificate_request_context), None)
        if pha is None:
            raise UnexpectedMessage("Certificate that answers no outstanding CertificateRequest")
        pha.transcript.update(data)
        self._pha = pha
        if not msg.certificate_list:
            if pha.required:
                raise LocalProtocolError(AlertDescription.certificate_required, "client sent no certificate")
            pha.certificates = []
            self.state = ServerState.PHA_WAIT_FINISHED
            return
        certs = parse_certificates([e.cert_data for e in msg.certificate_list])
        if self.config.verify_peer:
            verify_client_chain(certs, self.config.get_trust_anchors())
        pha.certificates = certs
        self.state = ServerState.PHA_WAIT_CV

    def _handle_pha_certificate_verify(self, data: bytes) -> None:
        pha = self._pha
        assert pha is not None and pha.certificates
        cv = self._decode(H.certificate_verify, data)
        assert isinstance(cv, M.CertificateVerify)
        if cv.algorithm not in self.config.signature_schemes:
            raise IllegalParameter(f"client used signature scheme {cv.algorithm:#06x} that was not offered")
        verify_certificate_verify(
            pha.certificates[0], cv.algorithm, cv.signature, signed_content(CLIENT_CONTEXT, pha.transcript.digest())
        )
        pha.transcript.update(data)
        self.state = ServerState.PHA_WAIT_FINISHED

    def _handle_pha_finished(self, data: bytes) -> None:
        """Base Key: client_application_traffic_secret_N (§4.4, table)."""
        pha = self._pha
        assert pha is not None and pha.certificates is not None and self.suite is not None
        fin = self._decode(H.finished, data)
        assert isinstance(fin, M.Finished)
        expected = finished_verify_data(
            self.suite.hash_name, self.traffic_secret("read"), pha.transcript.digest(), self.variant.label_prefix
        )
        if not constant_time_equal(expected, fin.verify_data):
            raise DecryptError("client Finished (post-handshake authentication) does not verify")
        self._pha = None
        self.state = ServerState.CONNECTED
        if pha.certificates:
            self.peer_certificates = pha.certificates
        self.on_post_handshake_auth(pha.context, pha.certificates)


# State -> handshake type -> the handler method's name, shared by every
# handshake (getattr dispatch: building bound-method tables per connection
# was a measurable part of a handshake's cost).
_HANDLERS: dict[ServerState, dict[int, str]] = {
    ServerState.START: {int(H.client_hello): "_handle_client_hello"},
    ServerState.WAIT_CH2: {int(H.client_hello): "_handle_client_hello"},
    ServerState.WAIT_EOED: {int(H.end_of_early_data): "_handle_end_of_early_data"},
    ServerState.WAIT_CERT: {
        int(H.certificate): "_handle_certificate",
        int(H.compressed_certificate): "_handle_certificate",
    },
    ServerState.WAIT_CV: {int(H.certificate_verify): "_handle_certificate_verify"},
    ServerState.WAIT_FINISHED: {int(H.finished): "_handle_finished"},
    ServerState.CONNECTED: {
        int(H.key_update): "_handle_key_update",
        int(H.certificate): "_handle_pha_certificate",
        int(H.compressed_certificate): "_handle_pha_certificate",
    },
    ServerState.PHA_WAIT_CV: {int(H.certificate_verify): "_handle_pha_certificate_verify"},
    ServerState.PHA_WAIT_FINISHED: {int(H.finished): "_handle_pha_finished"},
}
for _state in ServerState:  # states that take no message
    _HANDLERS.setdefault(_state, {})
