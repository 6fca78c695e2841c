"""TLS 1.3 handshake message codec (RFC 9846 §4 and appendix B.3).

Theory of operation
-------------------
Every handshake message is a plain dataclass. :func:`decode_handshake` turns
the *body* of one message (the bytes after the 4-byte ``Handshake`` header)
into that dataclass; :func:`encode_handshake` turns a dataclass back into the
complete message, header included. The codec holds no state and does no
cryptography; it only enforces the formal syntax of the presentation language
(RFC 9846 §3):

* a short read, a vector length outside its ``<floor..ceiling>``, a vector of
  ``uint16`` with an odd byte length, or bytes left over after the structure
  raise :class:`~tcpls.errors.DecodeError` ("full recognition before
  processing");
* two extensions of the same type in one extension block (RFC 9846 §4.2) and
  a ``pre_shared_key`` extension that is not the last one of a ClientHello
  (RFC 9846 §4.2.11) raise :class:`~tcpls.errors.IllegalParameter`: the
  message is syntactically valid but "inconsistent" (alert definitions in
  RFC 9846 §6.2);
* a KeyUpdate whose ``request_update`` is neither 0 nor 1 raises
  :class:`~tcpls.errors.IllegalParameter` (RFC 9846 §4.6.3);
* an unknown handshake type raises :class:`~tcpls.errors.UnexpectedMessage`.

Semantic checks that need context (legacy_version == 0x0303, compression
methods == [0], which extensions may appear in which message, ...) are left to
the handshake engine. Extensions are kept as ``(type, raw_bytes)`` pairs in wire
order, unknown ones included, so a parsed message re-encodes byte for byte;
:mod:`tcpls.tls.extensions` decodes the bodies.

Messages arrive inside handshake records and may span record boundaries or
share a record: :class:`HandshakeReader` reassembles them (RFC 9846 §5.1).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

from .._buffer import Buffer
from ..errors import DecodeError, IllegalParameter, UnexpectedMessage
from .enums import HELLO_RETRY_REQUEST_RANDOM, ExtensionType, HandshakeType

__all__ = [
    "Extensions",
    "ClientHello",
    "ServerHello",
    "EncryptedExtensions",
    "CertificateRequest",
    "CertificateEntry",
    "Certificate",
    "CompressedCertificate",
    "CertificateVerify",
    "Finished",
    "NewSessionTicket",
    "EndOfEarlyData",
    "KeyUpdate",
    "HandshakeMessage",
    "get_extension",
    "encode_handshake",
    "encode_handshake_body",
    "decode_handshake",
    "HandshakeReader",
    "DEFAULT_MAX_HANDSHAKE_MESSAGE_SIZE",
]

Extensions = list[tuple[int, bytes]]
"""``(extension_type, extension_data)`` pairs in wire order (RFC 9846 §4.2)."""

_PRE_SHARED_KEY = int(ExtensionType.pre_shared_key)


# --------------------------------------------------------------------------
# Message dataclasses (RFC 9846 appendix B.3)
# --------------------------------------------------------------------------
@dataclass(slots=True)
class ClientHello:
    """RFC 9846 §4.1.2.

    A ClientHello without an extensions block (a pre-TLS-1.2-extensions
    hello, §4.1.2 "All versions of TLS allow an extensions field to optionally
    follow") decodes with ``extensions == []``, and an empty list encodes as
    an absent block (an empty block is not valid TLS 1.3 syntax anyway).
    """

    random: bytes  # 32
    legacy_session_id: bytes  # <0..32>
    cipher_suites: list[int]  # <2..2^16-2>
    extensions: Extensions  # <7..2^16-1> in TLS 1.3 (see _pull_client_hello)
    legacy_compression_methods: bytes = b"\x00"  # <1..2^8-1>
    legacy_version: int = 0x0303
    #: DTLS only (RFC 9147 §5.3): ``opaque legacy_cookie<0..2^8-1>`` after
    #: legacy_session_id. ``None`` for TLS (the field is absent).
    legacy_cookie: Optional[bytes] = None


@dataclass(slots=True)
class ServerHello:
    """RFC 9846 §4.1.3; also the HelloRetryRequest (§4.1.4).

    As for :class:`ClientHello`, an absent extensions block (TLS 1.2 and
    older servers) decodes as ``[]`` and ``[]`` encodes as an absent block.
    """

    random: bytes  # 32
    legacy_session_id_echo: bytes  # <0..32>
    cipher_suite: int
    extensions: Extensions  # <6..2^16-1> in TLS 1.3 (see _pull_server_hello)
    legacy_compression_method: int = 0
    legacy_version: int = 0x0303

    @property
    def is_hello_retry_request(self) -> bool:
        """True if ``random`` is the special HelloRetryRequest value (§4.1.3)."""
        return self.random == HELLO_RETRY_REQUEST_RANDOM


@dataclass(slots=True)
class EncryptedExtensions:
    """RFC 9846 §4.3.1."""

    extensions: Extensions  # <0..2^16-1>


@dataclass(slots=True)
class CertificateRequest:
    """RFC 9846 §4.3.2. (The required signature_algorithms extension is checked by the engine.)"""

    certificate_request_context: bytes  # <0..2^8-1>
    extensions: Extensions  # <0..2^16-1>


@dataclass(slots=True)
class CertificateEntry:
    """RFC 9846 §4.4.2: one X.509 certificate (or RawPublicKey SPKI) and its extensions."""

    cert_data: bytes  # <1..2^24-1>
    extensions: Extensions = field(default_factory=list)  # <0..2^16-1>


@dataclass(slots=True)
class Certificate:
    """RFC 9846 §4.4.2."""

    certificate_request_context: bytes  # <0..2^8-1>
    certificate_list: list[CertificateEntry]  # <0..2^24-1>


@dataclass(slots=True)
class CompressedCertificate:
    """RFC 8879 §4."""

    algorithm: int  # uint16 CertificateCompressionAlgorithm
    uncompressed_length: int  # uint24
    compressed_certificate_message: bytes  # <1..2^24-1>


@dataclass(slots=True)
class CertificateVerify:
    """RFC 9846 §4.4.3."""

    algorithm: int  # SignatureScheme
    signature: bytes  # <0..2^16-1>


@dataclass(slots=True)
class Finished:
    """RFC 9846 §4.4.4: ``verify_data[Hash.length]``."""

    verify_data: bytes


@dataclass(slots=True)
class NewSessionTicket:
    """RFC 9846 §4.6.1."""

    ticket_lifetime: int  # uint32
    ticket_age_add: int  # uint32
    ticket_nonce: bytes  # <0..255>
    ticket: bytes  # <1..2^16-1>
    extensions: Extensions  # <0..2^16-1>


@dataclass(slots=True)
class EndOfEarlyData:
    """RFC 9846 §4.5: an empty structure."""


@dataclass(slots=True)
class KeyUpdate:
    """RFC 9846 §4.6.3."""

    request_update: int  # KeyUpdateRequest: 0 or 1


HandshakeMessage = Union[
    ClientHello,
    ServerHello,
    EncryptedExtensions,
    CertificateRequest,
    Certificate,
    CompressedCertificate,
    CertificateVerify,
    Finished,
    NewSessionTicket,
    EndOfEarlyData,
    KeyUpdate,
]


def get_extension(exts: Extensions, ext_type: int) -> bytes | None:
    """The raw body of the extension ``ext_type`` in ``exts``, or None if absent."""
    for t, data in exts:
        if t == ext_type:
            return data
    return None


# --------------------------------------------------------------------------
# Extension blocks (RFC 9846 §4.2)
# --------------------------------------------------------------------------
def _pull_extensions(buf: Buffer, min_len: int = 0) -> Extensions:
    """``Extension extensions<min_len..2^16-1>``; rejects duplicate types."""
    exts = buf.pull_tlv_block(min_len)
    if len({t for t, _ in exts}) != len(exts):
        # §4.2: "There MUST NOT be more than one extension of the same type
        # in a given extension block." Syntactically valid but inconsistent:
        # illegal_parameter (§6.2).
        seen: set[int] = set()
        for ext_type, _ in exts:
            if ext_type in seen:
                raise IllegalParameter(f"duplicate extension {ext_type}")
            seen.add(ext_type)
    return exts


_EXT_HEADER = struct.Struct("!HH")


def _push_extensions(buf: Buffer, exts: Extensions) -> None:
    # Built as one join (no back-patched length): this runs for every hello,
    # EncryptedExtensions and NewSessionTicket.
    parts = []
    for ext_type, data in exts:
        if len(data) > 0xFFFF:
            raise ValueError("vector too long for its length prefix")
        parts.append(_EXT_HEADER.pack(ext_type, len(data)))
        parts.append(data)
    block = b"".join(parts)
    buf.push_opaque(2, block)


def _pull_u16_vector(buf: Buffer, min_len: int, max_len: int) -> list[int]:
    """A ``uint16 x<min..max>`` vector with a 2-byte length prefix."""
    n = buf.pull_uint16()
    if n < min_len or n > max_len or n & 1:
        raise DecodeError(f"uint16 vector length {n} invalid for <{min_len}..{max_len}>")
    raw = buf.pull_bytes(n)
    return list(struct.unpack(f"!{n >> 1}H", raw))


def _push_u16_vector(buf: Buffer, values: list[int]) -> None:
    buf.push_uint16(2 * len(values))
    buf.push_bytes(struct.pack(f"!{len(values)}H", *values))


# --------------------------------------------------------------------------
# Per-message body decoders / encoders
# --------------------------------------------------------------------------
def _pull_client_hello(buf: Buffer, dtls: bool = False) -> ClientHello:
    # §4.1.2; DTLS adds legacy_cookie (RFC 9147 §5.3)
    legacy_version = buf.pull_uint16()
    random = buf.pull_bytes(32)
    legacy_session_id = buf.pull_opaque(1, 0, 32)
    legacy_cookie = buf.pull_opaque(1) if dtls else None
    cipher_suites = _pull_u16_vector(buf, 2, 0xFFFE)
    compression = buf.pull_opaque(1, 1, 0xFF)
    if buf.eof():
        # No extensions block at all: a pre-extensions (TLS 1.2 or older)
        # hello. Left to the engine, which will answer protocol_version.
        extensions: Extensions = []
    else:
        # The TLS 1.3 floor <7..> only restates that supported_versions is
        # mandatory, which the engine checks (answering protocol_version to a
        # TLS 1.2 hello). The codec only rejects an empty block, which is not
        # TLS 1.3 syntax and would not re-encode identically.
        extensions = _pull_extensions(buf, 1)
        # §4.2.11: pre_shared_key MUST be the last extension in the ClientHello.
        for ext_type, _ in extensions[:-1]:
            if ext_type == _PRE_SHARED_KEY:
                raise IllegalParameter("pre_shared_key is not the last ClientHello extension")
    return ClientHello(
        random=random,
        legacy_session_id=legacy_session_id,
        cipher_suites=cipher_suites,
        extensions=extensions,
        legacy_compression_methods=compression,
        legacy_version=legacy_version,
        legacy_cookie=legacy_cookie,
    )


def _push_client_hello(buf: Buffer, m: ClientHello) -> None:
    buf.push_uint16(m.legacy_version)
    _check_len(m.random, 32, "ClientHello.random")
    buf.push_bytes(m.random)
    buf.push_opaque(1, m.legacy_session_id)
    if m.legacy_cookie is not None:
        buf.push_opaque(1, m.legacy_cookie)
    _push_u16_vector(buf, m.cipher_suites)
    buf.push_opaque(1, m.legacy_compression_methods)
    if m.extensions:
        _push_extensions(buf, m.extensions)


def _pull_server_hello(buf: Buffer) -> ServerHello:
    # §4.1.3
    legacy_version = buf.pull_uint16()
    random = buf.pull_bytes(32)
    session_id_echo = buf.pull_opaque(1, 0, 32)
    cipher_suite = buf.pull_uint16()
    compression = buf.pull_uint8()
    # As for ClientHello, the <6..> floor is left to the supported_versions
    # check of the engine; only an empty block is rejected here.
    extensions = [] if buf.eof() else _pull_extensions(buf, 1)
    return ServerHello(
        random=random,
        legacy_session_id_echo=session_id_echo,
        cipher_suite=cipher_suite,
        extensions=extensions,
        legacy_compression_method=compression,
        legacy_version=legacy_version,
    )


def _push_server_hello(buf: Buffer, m: ServerHello) -> None:
    buf.push_uint16(m.legacy_version)
    _check_len(m.random, 32, "ServerHello.random")
    buf.push_bytes(m.random)
    buf.push_opaque(1, m.legacy_session_id_echo)
    buf.push_uint16(m.cipher_suite)
    buf.push_uint8(m.legacy_compression_method)
    if m.extensions:
        _push_extensions(buf, m.extensions)


def _pull_encrypted_extensions(buf: Buffer) -> EncryptedExtensions:
    # §4.3.1
    return EncryptedExtensions(extensions=_pull_extensions(buf))


def _push_encrypted_extensions(buf: Buffer, m: EncryptedExtensions) -> None:
    _push_extensions(buf, m.extensions)


def _pull_certificate_request(buf: Buffer) -> CertificateRequest:
    # §4.3.2
    context = buf.pull_opaque(1)
    return CertificateRequest(certificate_request_context=context, extensions=_pull_extensions(buf))


def _push_certificate_request(buf: Buffer, m: CertificateRequest) -> None:
    buf.push_opaque(1, m.certificate_request_context)
    _push_extensions(buf, m.extensions)


def _pull_certificate(buf: Buffer) -> Certificate:
    # §4.4.2
    context = buf.pull_opaque(1)
    entries: list[CertificateEntry] = []
    with buf.pull_block(3):
        while not buf.eof():
            cert_data = buf.pull_opaque(3, 1)
            entries.append(CertificateEntry(cert_data, _pull_extensions(buf)))
    return Certificate(certificate_request_context=context, certificate_list=entries)


def _push_certificate(buf: Buffer, m: Certificate) -> None:
    buf.push_opaque(1, m.certificate_request_context)
    with buf.push_block(3):
        for entry in m.certificate_list:
            buf.push_opaque(3, entry.cert_data)
            _push_extensions(buf, entry.extensions)


def _pull_compressed_certificate(buf: Buffer) -> CompressedCertificate:
    # RFC 8879 §4
    algorithm = buf.pull_uint16()
    uncompressed_length = buf.pull_uint24()
    data = buf.pull_opaque(3, 1)
    return CompressedCertificate(algorithm, uncompressed_length, data)


def _push_compressed_certificate(buf: Buffer, m: CompressedCertificate) -> None:
    buf.push_uint16(m.algorithm)
    buf.push_uint24(m.uncompressed_length)
    buf.push_opaque(3, m.compressed_certificate_message)


def _pull_certificate_verify(buf: Buffer) -> CertificateVerify:
    # §4.4.3
    algorithm = buf.pull_uint16()
    return CertificateVerify(algorithm=algorithm, signature=buf.pull_opaque(2))


def _push_certificate_verify(buf: Buffer, m: CertificateVerify) -> None:
    buf.push_uint16(m.algorithm)
    buf.push_opaque(2, m.signature)


def _push_finished(buf: Buffer, m: Finished) -> None:
    buf.push_bytes(m.verify_data)


def _pull_new_session_ticket(buf: Buffer) -> NewSessionTicket:
    # §4.6.1
    lifetime = buf.pull_uint32()
    age_add = buf.pull_uint32()
    nonce = buf.pull_opaque(1)
    ticket = buf.pull_opaque(2, 1)
    return NewSessionTicket(lifetime, age_add, nonce, ticket, _pull_extensions(buf))


_NST_HEAD = struct.Struct("!IIB")


def _push_new_session_ticket(buf: Buffer, m: NewSessionTicket) -> None:
    nonce, ticket = m.ticket_nonce, m.ticket
    if len(nonce) > 0xFF or len(ticket) > 0xFFFF:
        raise ValueError("vector too long for its length prefix")
    # A server sends num_tickets of these per handshake: one pack, one join.
    head = _NST_HEAD.pack(m.ticket_lifetime, m.ticket_age_add, len(nonce))
    buf.push_bytes(b"".join((head, nonce, len(ticket).to_bytes(2, "big"), ticket)))
    _push_extensions(buf, m.extensions)


def _pull_end_of_early_data(buf: Buffer) -> EndOfEarlyData:
    # §4.5
    return EndOfEarlyData()


def _push_end_of_early_data(buf: Buffer, m: EndOfEarlyData) -> None:
    pass


def _pull_key_update(buf: Buffer) -> KeyUpdate:
    # §4.6.3: "If an implementation receives any other value, it MUST
    # terminate the connection with an "illegal_parameter" alert."
    value = buf.pull_uint8()
    buf.expect_end("KeyUpdate")  # trailing bytes are a decode_error first
    if value > 1:
        raise IllegalParameter(f"KeyUpdate.request_update {value} is neither 0 nor 1")
    return KeyUpdate(request_update=value)


def _push_key_update(buf: Buffer, m: KeyUpdate) -> None:
    buf.push_uint8(m.request_update)


def _check_len(value: bytes, n: int, what: str) -> None:
    if len(value) != n:
        raise ValueError(f"{what} must be {n} bytes, not {len(value)}")


_PULLERS: dict[int, Callable[[Buffer], HandshakeMessage]] = {
    HandshakeType.client_hello: _pull_client_hello,
    HandshakeType.server_hello: _pull_server_hello,
    HandshakeType.encrypted_extensions: _pull_encrypted_extensions,
    HandshakeType.certificate_request: _pull_certificate_request,
    HandshakeType.certificate: _pull_certificate,
    HandshakeType.compressed_certificate: _pull_compressed_certificate,
    HandshakeType.certificate_verify: _pull_certificate_verify,
    HandshakeType.new_session_ticket: _pull_new_session_ticket,
    HandshakeType.end_of_early_data: _pull_end_of_early_data,
    HandshakeType.key_update: _pull_key_update,
}

# type -> (handshake type code, body encoder)
_PUSHERS: dict[type, tuple[int, Callable[[Buffer, object], None]]] = {
    ClientHello: (HandshakeType.client_hello, _push_client_hello),  # type: ignore[dict-item]
    ServerHello: (HandshakeType.server_hello, _push_server_hello),  # type: ignore[dict-item]
    EncryptedExtensions: (HandshakeType.encrypted_extensions, _push_encrypted_extensions),  # type: ignore[dict-item]
    CertificateRequest: (HandshakeType.certificate_request, _push_certificate_request),  # type: ignore[dict-item]
    Certificate: (HandshakeType.certificate, _push_certificate),  # type: ignore[dict-item]
    CompressedCertificate: (HandshakeType.compressed_certificate, _push_compressed_certificate),  # type: ignore[dict-item]
    CertificateVerify: (HandshakeType.certificate_verify, _push_certificate_verify),  # type: ignore[dict-item]
    Finished: (HandshakeType.finished, _push_finished),  # type: ignore[dict-item]
    NewSessionTicket: (HandshakeType.new_session_ticket, _push_new_session_ticket),  # type: ignore[dict-item]
    EndOfEarlyData: (HandshakeType.end_of_early_data, _push_end_of_early_data),  # type: ignore[dict-item]
    KeyUpdate: (HandshakeType.key_update, _push_key_update),  # type: ignore[dict-item]
}


# --------------------------------------------------------------------------
# Public codec entry points
# --------------------------------------------------------------------------
def decode_handshake(
    msg_type: int, body: bytes | bytearray | memoryview, *, hash_len: int | None = None, dtls: bool = False
) -> HandshakeMessage:
    """Parse the body (without the 4-byte header) of one handshake message.

    Args:
        msg_type: the ``HandshakeType`` from the header.
        body: exactly the message body; ``bytes``, ``bytearray`` or ``memoryview``.
        hash_len: for Finished, the negotiated hash length; ``verify_data``
            must be exactly that long (RFC 9846 §4.4.4). With ``None`` any
            non-empty length is accepted.
        dtls: DTLS 1.3 syntax (RFC 9147 §5.3: the ClientHello has a
            ``legacy_cookie`` field).

    Returns:
        The message dataclass.

    Raises:
        DecodeError: short data, trailing data, a vector length out of range.
        IllegalParameter: duplicate extension, misplaced pre_shared_key,
            KeyUpdate value other than 0/1.
        UnexpectedMessage: unknown handshake type (or message_hash, which is
            never sent on the wire).
    """
    if msg_type == HandshakeType.finished:
        n = len(body)
        if (hash_len is not None and n != hash_len) or n == 0:
            raise DecodeError(f"Finished.verify_data is {n} bytes, expected {hash_len}")
        return Finished(verify_data=bytes(body))
    puller = _PULLERS.get(msg_type)
    if puller is None:
        raise UnexpectedMessage(f"unknown handshake message type {msg_type}")
    buf = Buffer(body)
    msg = _pull_client_hello(buf, True) if dtls and msg_type == HandshakeType.client_hello else puller(buf)
    buf.expect_end("handshake message")
    return msg


def encode_handshake_body(msg: HandshakeMessage) -> tuple[int, bytes]:
    """``(msg_type, body)`` for ``msg``, without the 4-byte header."""
    try:
        msg_type, pusher = _PUSHERS[type(msg)]
    except KeyError:
        raise TypeError(f"not a handshake message: {type(msg).__name__}") from None
    buf = Buffer()
    pusher(buf, msg)
    return msg_type, buf.data()


def encode_handshake(msg: HandshakeMessage) -> bytes:
    """The complete handshake message: ``msg_type``, ``uint24 length``, body (RFC 9846 §4)."""
    try:
        msg_type, pusher = _PUSHERS[type(msg)]
    except KeyError:
        raise TypeError(f"not a handshake message: {type(msg).__name__}") from None
    buf = Buffer()
    pusher(buf, msg)
    body = buf.view_written()
    n = len(body)
    if n >= 1 << 24:
        raise ValueError("vector too long for its length prefix")
    # The header in front of the body: one join, no back-patching.
    return b"".join((bytes((msg_type, n >> 16, (n >> 8) & 0xFF, n & 0xFF)), body))


# --------------------------------------------------------------------------
# Reassembly (RFC 9846 §5.1)
# --------------------------------------------------------------------------
DEFAULT_MAX_HANDSHAKE_MESSAGE_SIZE = 1 << 18
"""Largest accepted handshake message body (256 KiB): far above any sane
ClientHello or certificate chain, small enough to bound memory per peer."""


class HandshakeReader:
    """Reassemble handshake messages from consecutive handshake record payloads.

    RFC 9846 §5.1: handshake messages may be coalesced into one record or
    fragmented across several. Feed each record's payload with :meth:`feed`,
    then call :meth:`next_message` until it returns ``None``.

    The length in a message header is checked against ``max_message_size``
    as soon as the header is complete, before the body is buffered, so a peer
    cannot make us hold more than one header + ``max_message_size`` bytes
    beyond what it has actually sent.
    """

    __slots__ = ("_buf", "max_message_size")

    def __init__(self, max_message_size: int = DEFAULT_MAX_HANDSHAKE_MESSAGE_SIZE) -> None:
        self._buf = bytearray()
        self.max_message_size = max_message_size

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append the payload of one handshake record.

        Raises:
            DecodeError: a buffered header claims more than ``max_message_size``.
        """
        self._buf += data
        self._check_header()

    def _check_header(self) -> int:
        buf = self._buf
        if len(buf) < 4:
            return -1
        length = (buf[1] << 16) | (buf[2] << 8) | buf[3]
        if length > self.max_message_size:
            raise DecodeError(
                f"handshake message of {length} bytes exceeds the limit of {self.max_message_size}"
            )
        return length

    def next_message(self) -> tuple[int, bytes] | None:
        """``(msg_type, full message bytes incl. header)`` or None if incomplete."""
        buf = self._buf
        have = len(buf)
        if have < 4:
            return None
        length = (buf[1] << 16) | (buf[2] << 8) | buf[3]  # _check_header, inlined
        if length > self.max_message_size:
            raise DecodeError(f"handshake message of {length} bytes exceeds the limit of {self.max_message_size}")
        end = 4 + length
        if have < end:
            return None
        if have == end:  # the usual case: a record ends with a message
            msg = bytes(buf)
            buf.clear()
        else:
            msg = bytes(buf[:end])
            del buf[:end]
        return msg[0], msg

    def has_partial(self) -> bool:
        """True if any bytes are buffered (a partial or not yet retrieved message).

        RFC 9846 §5.1: handshake messages MUST NOT span a key change; an
        engine that is about to change keys and sees this return True must
        abort with unexpected_message.
        """
        return len(self._buf) > 0

    def __len__(self) -> int:
        return len(self._buf)
