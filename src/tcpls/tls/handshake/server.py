"""TLS 1.3 server handshake (RFC 9846 §2, §4, appendix A.2).

    START --ClientHello--> [HelloRetryRequest --> WAIT_CH2 --ClientHello-->]
      send ServerHello, EncryptedExtensions, [CertificateRequest,]
      Certificate, CertificateVerify, Finished
    --> WAIT_FINISHED, or WAIT_CERT --Certificate--> [WAIT_CV --CertificateVerify-->] WAIT_FINISHED
    WAIT_FINISHED --Finished--> CONNECTED
"""

from __future__ import annotations

import hmac
import os
from enum import Enum, auto
from typing import Callable, Optional

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ...errors import (
    DecryptError,
    HandshakeFailure,
    IllegalParameter,
    LocalProtocolError,
    MissingExtension,
    ProtocolVersionError,
)
from .. import extensions as X
from .. import messages as M
from ..config import TLSConfig
from ..enums import (
    HELLO_RETRY_REQUEST_RANDOM,
    TLS_1_2,
    TLS_1_3,
    AlertDescription,
    ExtensionType as E,
    HandshakeType as H,
    KeyUpdateRequest,
)
from ..kex import SUPPORTED_GROUPS, KeyShare
from ..key_schedule import EarlySecret, HandshakeSecret, MasterSecret, finished_verify_data
from ..signatures import CLIENT_CONTEXT, SERVER_CONTEXT, choose_scheme, sign, signed_content, verify
from ..suites import SUITES, CipherSuiteInfo, suite_info
from ..transcript import Transcript
from ..verify import parse_certificates, verify_client_chain
from .common import RecordSink, constant_time_equal, unexpected


class ServerState(Enum):
    START = auto()
    WAIT_CH2 = auto()
    WAIT_CERT = auto()
    WAIT_CV = auto()
    WAIT_FINISHED = auto()
    CONNECTED = auto()


class ServerHandshake:
    """The server side of one TLS 1.3 handshake and its post-handshake messages."""

    def __init__(self, config: TLSConfig, sink: RecordSink, cookie_key: Optional[bytes] = None) -> None:
        self.config = config
        self.sink = sink
        self.state = ServerState.START
        self.transcript = Transcript()
        self.cookie_key = cookie_key or os.urandom(32)
        self.client_random = b""
        self.session_id = b""
        self.suite: Optional[CipherSuiteInfo] = None
        self.group: Optional[int] = None
        self.alpn_protocol: Optional[str] = None
        self.server_name: Optional[str] = None
        self.hello_retry = False
        self.hrr_cookie: Optional[bytes] = None
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
        self._handlers: dict[ServerState, dict[int, Callable[[bytes], None]]] = {
            ServerState.START: {H.client_hello: self._handle_client_hello},
            ServerState.WAIT_CH2: {H.client_hello: self._handle_client_hello},
            ServerState.WAIT_CERT: {H.certificate: self._handle_certificate},
            ServerState.WAIT_CV: {H.certificate_verify: self._handle_certificate_verify},
            ServerState.WAIT_FINISHED: {H.finished: self._handle_finished},
            ServerState.CONNECTED: {H.key_update: self._handle_key_update},
        }
        self.on_key_update: Callable[[bool], None] = lambda requested: None

    def handle_message(self, msg_type: int, data: bytes) -> None:
        handler = self._handlers.get(self.state, {}).get(msg_type)
        if handler is None:
            raise unexpected(self.state, msg_type)
        handler(data)

    def _decode(self, msg_type: int, data: bytes) -> object:
        return M.decode_handshake(msg_type, memoryview(data)[4:], hash_len=self.suite.hash_len if self.suite else None)

    # ------------------------------------------------------------ ClientHello
    def _handle_client_hello(self, data: bytes) -> None:
        ch = self._decode(H.client_hello, data)
        assert isinstance(ch, M.ClientHello)
        second = self.state is ServerState.WAIT_CH2
        exts = dict(ch.extensions)
        # RFC 9846 §4.2.1: TLS 1.3 only.
        if E.supported_versions not in exts:
            raise ProtocolVersionError("client does not offer TLS 1.3 (no supported_versions)")
        versions = X.decode_supported_versions_ch(exts[E.supported_versions])
        if TLS_1_3 not in versions:
            raise ProtocolVersionError("client does not offer TLS 1.3")
        if ch.legacy_version < TLS_1_2 and ch.legacy_version != 0x0301:
            # Accept any legacy_version >= TLS 1.0 as OpenSSL does; below is nonsense.
            raise ProtocolVersionError("ClientHello legacy_version too low")
        if ch.legacy_compression_methods != b"\x00":
            raise IllegalParameter("legacy_compression_methods must be exactly [null]")
        if second and (ch.random != self.client_random or ch.legacy_session_id != self.session_id):
            raise IllegalParameter("second ClientHello changed random or legacy_session_id")
        self.client_random = ch.random
        self.session_id = ch.legacy_session_id

        # Cipher suite: our preference among the client's offers.
        offered = set(ch.cipher_suites)
        suite = next((s for s in self.config.cipher_suites if s in offered and s in SUITES), None)
        if suite is None:
            raise HandshakeFailure("no cipher suite in common")
        if second:
            assert self.suite is not None
            if self.suite.suite not in offered:
                raise IllegalParameter("second ClientHello dropped the cipher suite chosen in HelloRetryRequest")
            suite = self.suite.suite

        # Extensions we need for a certificate-based (EC)DHE handshake.
        if E.signature_algorithms not in exts:
            raise MissingExtension("ClientHello has no signature_algorithms")
        self.client_signature_schemes = X.decode_signature_algorithms(exts[E.signature_algorithms])
        if E.supported_groups not in exts:
            raise MissingExtension("ClientHello has no supported_groups")
        if E.key_share not in exts:
            raise MissingExtension("ClientHello has no key_share")
        client_groups = X.decode_supported_groups(exts[E.supported_groups])
        shares = X.decode_key_share_ch(exts[E.key_share])
        self._check_key_shares(shares, client_groups)
        if E.server_name in exts:
            self.server_name = X.decode_server_name(exts[E.server_name])
        alpn_offer = exts.get(E.application_layer_protocol_negotiation)
        self.alpn_protocol = None
        if alpn_offer is not None:
            self.alpn_protocol = self._choose_alpn(X.decode_alpn(alpn_offer))
        if E.early_data in exts and second:
            raise IllegalParameter("early_data in the second ClientHello")

        if second:
            cookie = exts.get(E.cookie)
            if self.hrr_cookie is not None:
                if cookie is None or not constant_time_equal(X.decode_cookie(cookie), self.hrr_cookie):
                    raise IllegalParameter("second ClientHello does not echo the HelloRetryRequest cookie")
            elif cookie is not None:
                raise IllegalParameter("cookie in the second ClientHello although none was sent")
            if len(shares) != 1 or shares[0][0] != self.group:
                raise IllegalParameter("second ClientHello must carry one key share for the group we asked for")
        elif E.cookie in exts:
            # We never sent a cookie on this connection.
            raise IllegalParameter("unexpected cookie in the first ClientHello")

        # Group: the first of ours for which the client sent a share; else HRR.
        share_by_group = dict(shares)
        usable = [g for g in self.config.groups if g in SUPPORTED_GROUPS]
        group = next((g for g in usable if g in share_by_group), None)
        if group is None:
            if second:
                raise IllegalParameter("second ClientHello has no usable key share")
            group = next((g for g in usable if g in client_groups), None)
            if group is None:
                raise HandshakeFailure("no key exchange group in common")
            self.suite = suite_info(suite)
            self.transcript.set_hash(self.suite.hash_name)
            self.transcript.update(data)
            self._send_hello_retry_request(group)
            return
        self.suite = suite_info(suite)
        if not second:
            self.transcript.set_hash(self.suite.hash_name)
        self.transcript.update(data)
        self.group = group
        ours = KeyShare(group)
        shared = ours.exchange(share_by_group[group])
        self._send_server_flight(ours, shared)

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
        exts: list[tuple[int, bytes]] = [
            (E.supported_versions, X.encode_supported_versions_sh(TLS_1_3)),
            (E.key_share, X.encode_key_share_hrr(group)),
        ]
        if self.config.hello_retry_cookie:
            ch1_hash = self.transcript.digest()
            self.hrr_cookie = ch1_hash + hmac.digest(self.cookie_key, ch1_hash + group.to_bytes(2, "big"), "sha256")
            exts.append((E.cookie, X.encode_cookie(self.hrr_cookie)))
        hrr = M.ServerHello(
            random=HELLO_RETRY_REQUEST_RANDOM,
            legacy_session_id_echo=self.session_id,
            cipher_suite=self.suite.suite,
            extensions=exts,
        )
        data = M.encode_handshake(hrr)
        self.transcript.update(data)
        self.sink.send_handshake(data)
        self._send_ccs_once()
        self.state = ServerState.WAIT_CH2

    def _send_ccs_once(self) -> None:
        # RFC 9846 appendix D.4: after our first handshake message, only when
        # the client used a non-empty legacy_session_id (compatibility mode).
        if self.config.middlebox_compat and self.session_id and not self.ccs_sent:
            self.ccs_sent = True
            self.sink.send_change_cipher_spec()

    # -------------------------------------------------- ServerHello .. Finished
    def _send_server_flight(self, ours: KeyShare, shared: bytes) -> None:
        suite = self.suite
        assert suite is not None
        cfg = self.config
        sh = M.ServerHello(
            random=os.urandom(32),
            legacy_session_id_echo=self.session_id,
            cipher_suite=suite.suite,
            extensions=[
                (E.supported_versions, X.encode_supported_versions_sh(TLS_1_3)),
                (E.key_share, X.encode_key_share_sh((ours.group, ours.public))),
            ],
        )
        sh_bytes = M.encode_handshake(sh)
        self.transcript.update(sh_bytes)
        self.sink.send_handshake(sh_bytes)
        self._send_ccs_once()

        # RFC 9846 §7.1: handshake secrets over ClientHello..ServerHello.
        th = self.transcript.digest()
        self.handshake_secret = EarlySecret(suite.hash_name, None).handshake_secret(shared)
        self.client_hs_secret = self.handshake_secret.client_handshake_traffic_secret(th)
        self.server_hs_secret = self.handshake_secret.server_handshake_traffic_secret(th)
        self.sink.log_secret("CLIENT_HANDSHAKE_TRAFFIC_SECRET", self.client_random, self.client_hs_secret)
        self.sink.log_secret("SERVER_HANDSHAKE_TRAFFIC_SECRET", self.client_random, self.server_hs_secret)
        self.sink.set_write_secret(suite, self.server_hs_secret)
        self.sink.set_read_secret(suite, self.client_hs_secret)

        ee_exts: list[tuple[int, bytes]] = []
        if self.server_name is not None:
            ee_exts.append((E.server_name, b""))
        if self.alpn_protocol is not None:
            ee_exts.append((E.application_layer_protocol_negotiation, X.encode_alpn([self.alpn_protocol.encode("latin-1")])))
        self._send(M.EncryptedExtensions(ee_exts))

        if cfg.request_client_certificate or cfg.require_client_certificate:
            self._send(
                M.CertificateRequest(
                    b"",
                    [(E.signature_algorithms, X.encode_signature_algorithms([int(s) for s in cfg.signature_schemes]))],
                )
            )
            next_state = ServerState.WAIT_CERT
        else:
            next_state = ServerState.WAIT_FINISHED

        assert cfg.private_key is not None
        scheme = choose_scheme(cfg.private_key, self.client_signature_schemes, cfg.signature_schemes)
        self._send_raw(self._certificate_message())
        signature = sign(cfg.private_key, scheme, signed_content(SERVER_CONTEXT, self.transcript.digest()))
        self._send(M.CertificateVerify(scheme, signature))
        verify_data = finished_verify_data(suite.hash_name, self.server_hs_secret, self.transcript.digest())
        self._send(M.Finished(verify_data))

        # Application secrets over ClientHello..server Finished.
        th = self.transcript.digest()
        self.master_secret = self.handshake_secret.master_secret()
        self.client_app_secret = self.master_secret.client_application_traffic_secret(th)
        self.server_app_secret = self.master_secret.server_application_traffic_secret(th)
        self.exporter_secret = self.master_secret.exporter_master_secret(th)
        self.sink.log_secret("CLIENT_TRAFFIC_SECRET_0", self.client_random, self.client_app_secret)
        self.sink.log_secret("SERVER_TRAFFIC_SECRET_0", self.client_random, self.server_app_secret)
        self.sink.log_secret("EXPORTER_SECRET", self.client_random, self.exporter_secret)
        self.sink.set_write_secret(suite, self.server_app_secret)
        self.state = next_state

    def _send(self, msg: object) -> None:
        self._send_raw(M.encode_handshake(msg))

    def _send_raw(self, data: bytes) -> None:
        self.transcript.update(data)
        self.sink.send_handshake(data)

    def _certificate_message(self) -> bytes:
        """Our Certificate message (RFC 9846 §4.4.2), encoded once per chain."""
        chain = tuple(self.config.certificate_chain)
        return self.config.cached(  # type: ignore[return-value]
            ("certificate", chain),
            lambda: M.encode_handshake(M.Certificate(b"", [M.CertificateEntry(c.public_bytes(Encoding.DER)) for c in chain])),
        )

    # ------------------------------------------------- client authentication
    def _handle_certificate(self, data: bytes) -> None:
        msg = self._decode(H.certificate, data)
        assert isinstance(msg, M.Certificate)
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
        cv = self._decode(H.certificate_verify, data)
        assert isinstance(cv, M.CertificateVerify)
        if cv.algorithm not in self.config.signature_schemes:
            raise IllegalParameter(f"client used signature scheme {cv.algorithm:#06x} that was not offered")
        content = signed_content(CLIENT_CONTEXT, self.transcript.digest())
        verify(self.peer_certificates[0].public_key(), cv.algorithm, cv.signature, content)
        self.transcript.update(data)
        self.state = ServerState.WAIT_FINISHED

    def _handle_finished(self, data: bytes) -> None:
        suite = self.suite
        assert suite is not None and self.master_secret is not None
        fin = self._decode(H.finished, data)
        assert isinstance(fin, M.Finished)
        expected = finished_verify_data(suite.hash_name, self.client_hs_secret, self.transcript.digest())
        if not constant_time_equal(expected, fin.verify_data):
            raise DecryptError("client Finished does not verify")
        self.transcript.update(data)
        self.sink.set_read_secret(suite, self.client_app_secret)
        self.resumption_secret = self.master_secret.resumption_master_secret(self.transcript.digest())
        self.state = ServerState.CONNECTED
        self.complete = True

    def _handle_key_update(self, data: bytes) -> None:
        ku = self._decode(H.key_update, data)
        assert isinstance(ku, M.KeyUpdate)
        self.on_key_update(ku.request_update == KeyUpdateRequest.update_requested)

