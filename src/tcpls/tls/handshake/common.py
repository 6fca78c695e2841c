"""What the client and server handshakes share.

The handshake state machines never touch records: they talk to the record
layer through :class:`RecordSink` (send a handshake message, change a key,
send the compatibility ChangeCipherSpec, log a secret). The connection
implements it; DTLS can implement it differently and reuse the handlers.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Protocol

from typing import Optional, Sequence

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ...errors import BadCertificate, DecryptError, IllegalParameter, UnexpectedMessage, UnsupportedExtension, UsageError
from .. import certcompress
from .. import events as ev
from .. import extensions as X
from .. import messages as M
from ..enums import ExtensionType as E
from ..enums import DTLS_1_2, DTLS_1_3, TLS_1_2, TLS_1_3, HandshakeType, enum_name
from ..key_schedule import DTLS13_LABEL_PREFIX, TLS13_LABEL_PREFIX, export_keying_material, finished_verify_data
from ..signatures import signed_content, verify_certificate_verify
from ..suites import CipherSuiteInfo

if TYPE_CHECKING:
    from ..session import Session

if TYPE_CHECKING:
    from ..config import TLSConfig

@dataclass(frozen=True, slots=True)
class Variant:
    """What the handshake state machines do differently for DTLS 1.3 (RFC 9147 §5).

    Everything else (messages, transcript, key schedule stages) is shared.
    """

    dtls: bool
    #: The supported_versions value (RFC 9147 §5.3: 0xfefc for DTLS 1.3).
    version: int
    #: ClientHello/ServerHello legacy_version (DTLS: 0xfefd, RFC 9147 §5.3, §5.4).
    legacy_version: int
    #: HKDF-Expand-Label prefix (RFC 9147 §5.9: "dtls13").
    label_prefix: bytes


TLS13 = Variant(False, TLS_1_3, TLS_1_2, TLS13_LABEL_PREFIX)
# DTLS 1.3 also drops the compatibility-mode ChangeCipherSpec and
# legacy_session_id (§5, §5.3) and EndOfEarlyData (§5.6); the ClientHello
# carries an empty legacy_cookie (§5.3).
DTLS13 = Variant(True, DTLS_1_3, DTLS_1_2, DTLS13_LABEL_PREFIX)


# RFC 9846 §4.2: the messages in which each extension may appear.
ALLOWED_IN_SERVER_HELLO = frozenset({E.key_share, E.pre_shared_key, E.supported_versions})
ALLOWED_IN_HRR = frozenset({E.key_share, E.cookie, E.supported_versions})
ALLOWED_IN_ENCRYPTED_EXTENSIONS = frozenset(
    {
        E.server_name,
        E.max_fragment_length,
        E.supported_groups,
        E.use_srtp,
        E.heartbeat,
        E.application_layer_protocol_negotiation,
        E.client_certificate_type,
        E.server_certificate_type,
        E.early_data,
        E.record_size_limit,
    }
)
ALLOWED_IN_CERTIFICATE_ENTRY = frozenset({E.status_request, E.signed_certificate_timestamp})
ALLOWED_IN_CERTIFICATE_REQUEST = frozenset(
    {
        E.status_request,
        E.signature_algorithms,
        E.signed_certificate_timestamp,
        E.certificate_authorities,
        E.oid_filters,
        E.signature_algorithms_cert,
        E.compress_certificate,
    }
)
ALLOWED_IN_NEW_SESSION_TICKET = frozenset({E.early_data})
KNOWN_EXTENSIONS = frozenset(int(e) for e in E)


def check_server_extensions(
    where: str, extensions: Iterable[tuple[int, bytes]], allowed: frozenset[int], offered: set[int]
) -> None:
    """RFC 9846 §4.2: a server extension the client did not offer is
    unsupported_extension; a known extension in the wrong message is
    illegal_parameter."""
    for ext_type, _ in extensions:
        if ext_type not in offered:
            raise UnsupportedExtension(f"{where} carries extension {enum_name(E, ext_type)} that was not offered")
        if ext_type not in allowed:
            raise IllegalParameter(f"extension {enum_name(E, ext_type)} is not allowed in {where}")


def encode_certificate(
    context: bytes,
    chain: Sequence[x509.Certificate],
    *,
    ocsp_response: Optional[bytes] = None,
    compression: Optional[int] = None,
) -> bytes:
    """Our Certificate message (RFC 9846 §4.4.2), as a CompressedCertificate
    (RFC 8879 §4) when ``compression`` is set and it makes the message smaller.

    ``ocsp_response`` is stapled to the leaf's CertificateEntry (status_request,
    RFC 9846 §4.4.2.1).
    """
    entries = [M.CertificateEntry(c.public_bytes(Encoding.DER)) for c in chain]
    if ocsp_response and entries:
        entries[0].extensions = [(E.status_request, X.encode_status_request_cert_entry(ocsp_response))]
    msg = M.encode_handshake(M.Certificate(context, entries))
    if compression is not None:
        body = msg[4:]
        packed = certcompress.compress(compression, body)
        if len(packed) < len(body):
            return M.encode_handshake(M.CompressedCertificate(compression, len(body), packed))
    return msg


def decode_certificate(data: bytes, accepted_compression: Sequence[int], max_size: int) -> M.Certificate:
    """A received Certificate or CompressedCertificate (header included).

    RFC 8879 §4: the algorithm must be one we offered (else illegal_parameter:
    a well-formed message with a value we never allowed); a stream that does not
    decompress to exactly ``uncompressed_length`` bytes is bad_certificate,
    and that length is bounded by ``max_size`` before decompressing.
    """
    body = memoryview(data)[4:]
    if data[0] != HandshakeType.compressed_certificate:
        msg = M.decode_handshake(HandshakeType.certificate, body)
        assert isinstance(msg, M.Certificate)
        return msg
    if not accepted_compression:
        raise UnexpectedMessage("CompressedCertificate although we offered no certificate compression")
    cc = M.decode_handshake(HandshakeType.compressed_certificate, body)
    assert isinstance(cc, M.CompressedCertificate)
    if cc.algorithm not in accepted_compression:
        raise IllegalParameter(f"certificate compressed with algorithm {cc.algorithm} that we did not offer")
    if cc.uncompressed_length > max_size:
        raise BadCertificate(f"compressed certificate announces {cc.uncompressed_length} bytes (limit {max_size})")
    try:
        raw = certcompress.decompress(cc.algorithm, cc.compressed_certificate_message, cc.uncompressed_length)
    except certcompress.DecompressionFailed as exc:
        raise BadCertificate(str(exc)) from None
    msg = M.decode_handshake(HandshakeType.certificate, raw)
    assert isinstance(msg, M.Certificate)
    return msg


def offered_compression(extensions: dict[int, bytes]) -> list[int]:
    """The peer's compress_certificate list (RFC 8879 §3), or []."""
    data = extensions.get(E.compress_certificate)
    return X.decode_compress_certificate(data) if data is not None else []


def constant_time_equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


class RecordSink(Protocol):
    """The record layer as seen by a handshake state machine."""

    def send_handshake(self, data: bytes) -> None: ...
    def send_change_cipher_spec(self) -> None: ...
    def set_write_secret(self, suite: CipherSuiteInfo, secret: bytes) -> None: ...
    def set_read_secret(self, suite: CipherSuiteInfo, secret: bytes) -> None: ...
    def log_secret(self, label: str, client_random: bytes, secret: "bytes | Callable[[], bytes]") -> None:
        """Key log line; ``secret`` may be a callable, called only when a key log is on."""
        ...

    def set_record_size_limit(self, send: int, receive: Optional[int]) -> None: ...


class LazyExporterSecret:
    """``exporter_secret`` (RFC 9846 §7.1) derived on first use.

    Both handshakes know it once the server Finished is in the transcript,
    but only ``export_keying_material`` (and a key log) read it: most
    connections never do, so the handshake records the main secret and that
    transcript hash (:meth:`_set_exporter_context`) and the HKDF-Expand-Label
    runs when the attribute is first read. Assigning sets it directly.
    """

    _exporter_value: bytes = b""
    _exporter_context: "Optional[tuple[object, bytes]]" = None

    @property
    def exporter_secret(self) -> bytes:
        if not self._exporter_value and self._exporter_context is not None:
            master, th = self._exporter_context
            self._exporter_value = master.exporter_master_secret(th)  # type: ignore[attr-defined]
            self._exporter_context = None
        return self._exporter_value

    @exporter_secret.setter
    def exporter_secret(self, value: bytes) -> None:
        self._exporter_value = value
        self._exporter_context = None

    def _set_exporter_context(self, master_secret: object, transcript_hash: bytes) -> None:
        """The exporter secret is ``master_secret.exporter_master_secret(transcript_hash)``."""
        self._exporter_value = b""
        self._exporter_context = (master_secret, transcript_hash)


Handler = Callable[[object, bytes], None]


def unexpected(state: object, msg_type: int) -> UnexpectedMessage:
    return UnexpectedMessage(f"{enum_name(HandshakeType, msg_type)} is not expected in state {getattr(state, 'name', state)}")


def check_certificate_verify(
    data: bytes, config: "TLSConfig", certificate: object, transcript_hash: bytes, context: bytes, peer: str
) -> None:
    """RFC 9846 §4.4.3: the peer's CertificateVerify over the transcript so far.

    The scheme must be one we offered (illegal_parameter) and fit the
    certificate's key; a signature that does not verify is decrypt_error.
    """
    cv = M.decode_handshake(HandshakeType.certificate_verify, memoryview(data)[4:])
    assert isinstance(cv, M.CertificateVerify)
    if cv.algorithm not in config.signature_schemes:
        raise IllegalParameter(f"{peer} used signature scheme {cv.algorithm:#06x} that was not offered")
    verify_certificate_verify(certificate, cv.algorithm, cv.signature, signed_content(context, transcript_hash))


def check_finished(
    data: bytes,
    suite: CipherSuiteInfo,
    base_key: bytes,
    transcript_hash: bytes,
    peer: str,
    prefix: bytes = TLS13_LABEL_PREFIX,
) -> None:
    """RFC 9846 §4.4.4: the peer's Finished; a wrong verify_data is decrypt_error."""
    fin = M.decode_handshake(HandshakeType.finished, memoryview(data)[4:], hash_len=suite.hash_len)
    assert isinstance(fin, M.Finished)
    expected = finished_verify_data(suite.hash_name, base_key, transcript_hash, prefix)
    if not constant_time_equal(expected, fin.verify_data):
        raise DecryptError(f"{peer} Finished does not verify")


class HandshakeQueries:
    """What a connection tells about its handshake, and the callbacks of its
    state machine that do not depend on the record layer, shared by the TLS
    and DTLS engines: both keep their handshake state machine in ``_hs``,
    the sessions received in ``sessions`` and queue events with ``_emit``;
    ``_label_prefix`` is the HKDF-Expand-Label prefix of the protocol
    (RFC 9147 §5.9 for DTLS)."""

    _hs: object
    sessions: list
    _label_prefix: bytes = TLS13_LABEL_PREFIX

    _emit: "Callable[[ev.Event], None]"  # the connection's event queue
    _keylog_path: "Optional[str]"  # SSLKEYLOGFILE, if set
    config: "TLSConfig"

    def log_secret(self, label: str, client_random: bytes, secret: "bytes | Callable[[], bytes]") -> None:
        """SSLKEYLOGFILE line: ``LABEL <client_random hex> <secret hex>``
        (``secret`` may be a callable, evaluated only when a line is written)."""
        if self._keylog_path is None and self.config.keylog_callback is None:
            return
        if callable(secret):
            secret = secret()
        line = f"{label} {client_random.hex()} {secret.hex()}"
        if self.config.keylog_callback is not None:
            self.config.keylog_callback(line)
        if self._keylog_path is not None:
            with open(self._keylog_path, "a", encoding="ascii") as f:
                f.write(line + "\n")

    def _wire_post_handshake_callbacks(self, server: bool) -> None:
        """Hook the state machine's ticket and post-handshake authentication
        callbacks (RFC 9846 §4.6.1, §4.6.2) to this connection."""
        hs = self._hs
        if server:
            hs.on_post_handshake_auth = self._on_client_certificate_checked  # type: ignore[attr-defined]
        else:
            hs.on_ticket = self._on_ticket  # type: ignore[attr-defined]
            hs.on_post_handshake_auth = self._on_certificate_request_answered  # type: ignore[attr-defined]

    def _on_ticket(self, ticket: M.NewSessionTicket, session: "Optional[Session]") -> None:
        if session is not None:
            self.sessions.append(session)
            del self.sessions[:-8]
        self._emit(ev.SessionTicketReceived(ticket, session))

    def _on_client_certificate_checked(self, context: bytes, result: object) -> None:
        """Server: the client's answer to our post-handshake CertificateRequest."""
        certs = result if isinstance(result, list) else []
        subject = certs[0].subject.rfc4514_string() if certs else None
        self._emit(ev.PostHandshakeAuthCompleted(context, subject))

    def _on_certificate_request_answered(self, context: bytes, result: object) -> None:
        """Client: we answered a post-handshake CertificateRequest (with a certificate or not)."""
        self._emit(ev.PostHandshakeAuthAnswered(context, bool(result)))

    @property
    def cipher_suite(self) -> Optional[int]:
        return self._hs.suite.suite if self._hs.suite is not None else None  # type: ignore[attr-defined]

    @property
    def group(self) -> Optional[int]:
        return self._hs.group  # type: ignore[attr-defined]

    @property
    def alpn_protocol(self) -> Optional[str]:
        return self._hs.alpn_protocol  # type: ignore[attr-defined]

    @property
    def server_name(self) -> Optional[str]:
        return self._hs.server_name  # type: ignore[attr-defined]

    @property
    def hello_retry(self) -> bool:
        return self._hs.hello_retry  # type: ignore[attr-defined]

    @property
    def peer_certificates(self) -> list[x509.Certificate]:
        return list(self._hs.peer_certificates)  # type: ignore[attr-defined]

    @property
    def session_resumed(self) -> bool:
        """A PSK (resumption ticket or external PSK) was accepted."""
        return self._hs.session_resumed  # type: ignore[attr-defined]

    @property
    def early_data_accepted(self) -> Optional[bool]:
        """None if no 0-RTT was attempted, else whether the server accepted it."""
        state = self._hs.early_data_state  # type: ignore[attr-defined]
        return None if state in (None, "offered") else state == "accepted"

    @property
    def ocsp_response(self) -> Optional[bytes]:
        """Client: the DER OCSP response stapled by the server (``TLSConfig.request_ocsp``)."""
        return getattr(self._hs, "ocsp_response", None)

    @property
    def session(self) -> "Optional[Session]":
        """Client: the newest resumable session received (None before a ticket)."""
        return self.sessions[-1] if self.sessions else None

    def export_keying_material(self, label: "str | bytes", context: bytes = b"", length: int = 32) -> bytes:
        """TLS-Exporter(label, context, length) over the exporter_secret (RFC 9846 §7.5).

        Available once our Finished is computed (server: after its first
        flight; client: when the handshake completes).
        """
        hs = self._hs
        if not hs.exporter_secret or hs.suite is None:  # type: ignore[attr-defined]
            raise UsageError("exporter_secret is not available yet")
        lab = label.encode() if isinstance(label, str) else bytes(label)
        return export_keying_material(
            hs.suite.hash_name, hs.exporter_secret, lab, bytes(context), length, self._label_prefix  # type: ignore[attr-defined]
        )
