"""What the client and server handshakes share.

The handshake state machines never touch records: they talk to the record
layer through :class:`RecordSink` (send a handshake message, change a key,
send the compatibility ChangeCipherSpec, log a secret). The connection
implements it; DTLS can implement it differently and reuse the handlers.
"""

from __future__ import annotations

import hmac
from typing import Callable, Iterable, Protocol

from ...errors import IllegalParameter, UnexpectedMessage, UnsupportedExtension
from ..enums import ExtensionType as E
from ..enums import HandshakeType, enum_name
from ..suites import CipherSuiteInfo

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


def constant_time_equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


class RecordSink(Protocol):
    """The record layer as seen by a handshake state machine."""

    def send_handshake(self, data: bytes) -> None: ...
    def send_change_cipher_spec(self) -> None: ...
    def set_write_secret(self, suite: CipherSuiteInfo, secret: bytes) -> None: ...
    def set_read_secret(self, suite: CipherSuiteInfo, secret: bytes) -> None: ...
    def log_secret(self, label: str, client_random: bytes, secret: bytes) -> None: ...


Handler = Callable[[object, bytes], None]


def unexpected(state: object, msg_type: int) -> UnexpectedMessage:
    return UnexpectedMessage(f"{enum_name(HandshakeType, msg_type)} is not expected in state {getattr(state, 'name', state)}")
