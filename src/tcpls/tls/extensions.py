"""Typed codec for the bodies of TLS extensions (RFC 9846 §4.2 and related RFCs).

Theory of operation
-------------------
:mod:`tcpls.tls.messages` keeps each extension as ``(type, raw_bytes)``. The
functions here turn one raw ``extension_data`` into a Python value
(``decode_X``) and back (``encode_X``). An extension's structure often depends
on the message carrying it (RFC 9846 §4.2: "select (Handshake.msg_type)"); the
variants have separate functions suffixed ``_ch`` (ClientHello), ``_sh``
(ServerHello), ``_hrr`` (HelloRetryRequest), ``_nst`` (NewSessionTicket) or
``_cert_entry`` (CertificateEntry).

Decoders implement full recognition (RFC 9846 §4.2: "receivers MUST abort the
handshake with a "decode_error" alert if there is data left over after parsing
the structure"): short data, trailing data, vector lengths outside their
``<floor..ceiling>`` and odd-length ``uint16`` vectors raise
:class:`~tcpls.errors.DecodeError`. Values that parse but are forbidden raise
:class:`~tcpls.errors.IllegalParameter` where an RFC says so (e.g. a
record_size_limit below 64, RFC 8449 §4). Choosing and cross-checking values
(is the offered version known, is the group supported, ...) is the handshake
engine's job.

Every decoder accepts ``bytes``, ``bytearray`` or ``memoryview``; encoders
return ``bytes``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable, TypeVar

from .._buffer import Buffer
from ..errors import DecodeError, IllegalParameter

__all__ = [
    "PskIdentity",
    "OfferedPsks",
    "OCSPStatusRequest",
    "decode_empty",
    "encode_empty",
    "decode_server_name",
    "encode_server_name",
    "decode_supported_versions_ch",
    "encode_supported_versions_ch",
    "decode_supported_versions_sh",
    "encode_supported_versions_sh",
    "decode_supported_groups",
    "encode_supported_groups",
    "decode_signature_algorithms",
    "encode_signature_algorithms",
    "decode_signature_algorithms_cert",
    "encode_signature_algorithms_cert",
    "decode_key_share_ch",
    "encode_key_share_ch",
    "decode_key_share_sh",
    "encode_key_share_sh",
    "decode_key_share_hrr",
    "encode_key_share_hrr",
    "decode_alpn",
    "encode_alpn",
    "decode_psk_key_exchange_modes",
    "encode_psk_key_exchange_modes",
    "decode_cookie",
    "encode_cookie",
    "decode_early_data_nst",
    "encode_early_data_nst",
    "decode_pre_shared_key_ch",
    "encode_pre_shared_key_ch",
    "decode_pre_shared_key_sh",
    "encode_pre_shared_key_sh",
    "binders_block_length",
    "encode_psk_binders",
    "decode_record_size_limit",
    "encode_record_size_limit",
    "decode_post_handshake_auth",
    "encode_post_handshake_auth",
    "decode_certificate_authorities",
    "encode_certificate_authorities",
    "decode_oid_filters",
    "encode_oid_filters",
    "decode_status_request_ch",
    "encode_status_request_ch",
    "decode_status_request_cert_entry",
    "encode_status_request_cert_entry",
    "decode_compress_certificate",
    "encode_compress_certificate",
]

T = TypeVar("T")
Data = bytes | bytearray | memoryview


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def _whole(data: Data, parse: Callable[[Buffer], T]) -> T:
    """Run ``parse`` over all of ``data`` and reject trailing bytes."""
    buf = Buffer(data)
    value = parse(buf)
    buf.expect_end("extension")
    return value


def _u16_list(data: Data, prefix: int, min_len: int, max_len: int, what: str) -> list[int]:
    """A ``uint16 x<min..max>`` vector with a ``prefix``-byte length, as the whole body."""
    size = len(data)
    if size < prefix:
        raise DecodeError("message is shorter than its encoding says")
    n = data[0] if prefix == 1 else (data[0] << 8) | data[1]
    if n < min_len or n > max_len or n & 1:
        raise DecodeError(f"{what}: bad vector length {n}")
    if size != prefix + n:
        short = size < prefix + n
        raise DecodeError("message is shorter than its encoding says" if short else f"trailing bytes after {what}")
    return list(struct.unpack_from(f"!{n >> 1}H", data, prefix))


def _u16_whole(data: Data) -> int:
    """A body that is exactly one ``uint16``."""
    if len(data) != 2:
        short = len(data) < 2
        raise DecodeError("message is shorter than its encoding says" if short else "trailing bytes after extension")
    return (data[0] << 8) | data[1]


def _encode_u16_list(values: list[int], prefix: int) -> bytes:
    return (2 * len(values)).to_bytes(prefix, "big") + struct.pack(f"!{len(values)}H", *values)


def _encode_opaque(prefix: int, b: bytes) -> bytes:
    if len(b) >= 1 << (8 * prefix):
        raise ValueError("vector too long for its length prefix")
    return len(b).to_bytes(prefix, "big") + bytes(b)


# --------------------------------------------------------------------------
# empty bodies: early_data (CH, EE), post_handshake_auth, server's server_name
# --------------------------------------------------------------------------
def decode_empty(data: Data) -> None:
    """``struct {} Empty`` (RFC 9846 §4.2.10, §4.2.6): the body must be empty."""
    if len(data):
        raise DecodeError("extension body must be empty")


def encode_empty(value: None = None) -> bytes:
    return b""


decode_post_handshake_auth = decode_empty
encode_post_handshake_auth = encode_empty


# --------------------------------------------------------------------------
# server_name (RFC 6066 §3)
# --------------------------------------------------------------------------
_HOST_NAME = 0


def decode_server_name(data: Data) -> str:
    """ClientHello ``ServerNameList`` holding one ``host_name``; returns the name.

    ``server_name_list<1..2^16-1>`` of ``{NameType name_type; HostName
    name}``; HostName is ``opaque<1..2^16-1>``, ASCII without a trailing dot.
    Only host_name (0) is defined and the structure of any other type is
    unknown, so an entry of another type is a decode_error; two host_name
    entries (RFC 6066: "MUST NOT contain more than one name of the same
    name_type") and a non-ASCII name or one with a trailing dot are
    illegal_parameter. The server's acknowledgement in EncryptedExtensions is
    empty: use :func:`decode_empty`.
    """

    def parse(buf: Buffer) -> str:
        name: bytes | None = None
        with buf.pull_block(2, 1):
            while not buf.eof():
                name_type = buf.pull_uint8()
                if name_type != _HOST_NAME:
                    raise DecodeError(f"server_name: unknown name_type {name_type}")
                host = buf.pull_opaque(2, 1)
                if name is not None:
                    raise IllegalParameter("server_name: more than one host_name")
                name = host
        assert name is not None  # the block is non-empty and every entry is a host_name
        if not name.isascii() or name.endswith(b".") or b"\x00" in name:
            raise IllegalParameter("server_name: host_name is not an ASCII name without trailing dot")
        return name.decode("ascii")

    return _whole(data, parse)


def encode_server_name(host_name: str) -> bytes:
    host = host_name.encode("ascii")
    entry = b"\x00" + _encode_opaque(2, host)
    return _encode_opaque(2, entry)


# --------------------------------------------------------------------------
# supported_versions (RFC 9846 §4.2.1)
# --------------------------------------------------------------------------
def decode_supported_versions_ch(data: Data) -> list[int]:
    """``ProtocolVersion versions<2..254>``."""
    return _u16_list(data, 1, 2, 254, "supported_versions")


def encode_supported_versions_ch(versions: list[int]) -> bytes:
    return _encode_u16_list(versions, 1)


def decode_supported_versions_sh(data: Data) -> int:
    """``ProtocolVersion selected_version`` (ServerHello and HelloRetryRequest)."""
    return _u16_whole(data)


def encode_supported_versions_sh(version: int) -> bytes:
    return version.to_bytes(2, "big")


# --------------------------------------------------------------------------
# supported_groups (RFC 9846 §4.2.7), signature_algorithms(_cert) (§4.2.3)
# --------------------------------------------------------------------------
def decode_supported_groups(data: Data) -> list[int]:
    """``NamedGroup named_group_list<2..2^16-1>``."""
    return _u16_list(data, 2, 2, 0xFFFF, "supported_groups")


def encode_supported_groups(groups: list[int]) -> bytes:
    return _encode_u16_list(groups, 2)


def decode_signature_algorithms(data: Data) -> list[int]:
    """``SignatureScheme supported_signature_algorithms<2..2^16-2>``."""
    return _u16_list(data, 2, 2, 0xFFFE, "signature_algorithms")


def encode_signature_algorithms(schemes: list[int]) -> bytes:
    return _encode_u16_list(schemes, 2)


decode_signature_algorithms_cert = decode_signature_algorithms
encode_signature_algorithms_cert = encode_signature_algorithms


# --------------------------------------------------------------------------
# key_share (RFC 9846 §4.2.8)
# --------------------------------------------------------------------------
def _pull_key_share_entry(buf: Buffer) -> tuple[int, bytes]:
    group = buf.pull_uint16()
    return group, buf.pull_opaque(2, 1)  # key_exchange<1..2^16-1>


def _encode_key_share_entry(entry: tuple[int, bytes]) -> bytes:
    group, key_exchange = entry
    return group.to_bytes(2, "big") + _encode_opaque(2, key_exchange)


def decode_key_share_ch(data: Data) -> list[tuple[int, bytes]]:
    """``KeyShareEntry client_shares<0..2^16-1>`` as ``[(group, key_exchange)]``.

    "Clients MUST NOT offer multiple KeyShareEntry values for the same group
    ... Servers MAY check for violations of these rules and abort the
    handshake with an "illegal_parameter" alert": we do (IllegalParameter).
    """

    # KeyShareEntry {NamedGroup group; opaque key_exchange<1..2^16-1>} has
    # the layout of an extension entry: one block read.
    buf = Buffer(data)
    shares = buf.pull_tlv_block()
    for _, key_exchange in shares:
        if not key_exchange:
            raise DecodeError("key_share: empty key_exchange")
    if len({g for g, _ in shares}) != len(shares):
        raise IllegalParameter("key_share: two shares for the same group")
    buf.expect_end("extension")
    return shares


def encode_key_share_ch(shares: list[tuple[int, bytes]]) -> bytes:
    return _encode_opaque(2, b"".join(_encode_key_share_entry(e) for e in shares))


def decode_key_share_sh(data: Data) -> tuple[int, bytes]:
    """``KeyShareEntry server_share``."""
    return _whole(data, _pull_key_share_entry)


def encode_key_share_sh(share: tuple[int, bytes]) -> bytes:
    return _encode_key_share_entry(share)


def decode_key_share_hrr(data: Data) -> int:
    """``NamedGroup selected_group``."""
    return _u16_whole(data)


def encode_key_share_hrr(group: int) -> bytes:
    return group.to_bytes(2, "big")


# --------------------------------------------------------------------------
# application_layer_protocol_negotiation (RFC 7301 §3.1)
# --------------------------------------------------------------------------
def decode_alpn(data: Data) -> list[bytes]:
    """``ProtocolName protocol_name_list<2..2^16-1>``, ``opaque ProtocolName<1..2^8-1>``.

    In EncryptedExtensions the list must hold exactly one name (RFC 7301
    §3.1); that check is the engine's.
    """

    def parse(buf: Buffer) -> list[bytes]:
        return buf.pull_list(2, lambda: buf.pull_opaque(1, 1), 2)

    return _whole(data, parse)


def encode_alpn(protocols: list[bytes]) -> bytes:
    return _encode_opaque(2, b"".join(_encode_opaque(1, p) for p in protocols))


# --------------------------------------------------------------------------
# psk_key_exchange_modes (§4.2.9), cookie (§4.2.2), early_data (§4.2.10)
# --------------------------------------------------------------------------
def decode_psk_key_exchange_modes(data: Data) -> list[int]:
    """``PskKeyExchangeMode ke_modes<1..255>``."""

    if not data or len(data) != 1 + data[0] or not data[0]:
        raise DecodeError("psk_key_exchange_modes: bad vector length")
    return list(data[1:])


def encode_psk_key_exchange_modes(modes: list[int]) -> bytes:
    return _encode_opaque(1, bytes(modes))


def decode_cookie(data: Data) -> bytes:
    """``opaque cookie<1..2^16-1>``."""
    return _whole(data, lambda buf: buf.pull_opaque(2, 1))


def encode_cookie(cookie: bytes) -> bytes:
    return _encode_opaque(2, cookie)


def decode_early_data_nst(data: Data) -> int:
    """NewSessionTicket form: ``uint32 max_early_data_size`` (CH/EE form: :func:`decode_empty`)."""
    return _whole(data, Buffer.pull_uint32)


def encode_early_data_nst(max_early_data_size: int) -> bytes:
    return max_early_data_size.to_bytes(4, "big")


# --------------------------------------------------------------------------
# pre_shared_key (RFC 9846 §4.2.11)
# --------------------------------------------------------------------------
@dataclass(slots=True)
class PskIdentity:
    identity: bytes  # <1..2^16-1>
    obfuscated_ticket_age: int  # uint32


@dataclass(slots=True)
class OfferedPsks:
    identities: list[PskIdentity]  # <7..2^16-1>
    binders: list[bytes]  # PskBinderEntry<32..255>, binders<33..2^16-1>


def _pull_psk_identity(buf: Buffer) -> PskIdentity:
    identity = buf.pull_opaque(2, 1)
    return PskIdentity(identity, buf.pull_uint32())


def decode_pre_shared_key_ch(data: Data) -> OfferedPsks:
    """ClientHello form: ``OfferedPsks``.

    The binders must be "one for each value in the identities list and in
    the same order"; a count mismatch parses but is inconsistent, so it is an
    IllegalParameter.
    """

    def parse(buf: Buffer) -> OfferedPsks:
        identities = []
        with buf.pull_block(2, 7):
            while not buf.eof():
                identities.append(_pull_psk_identity(buf))
        binders = []
        with buf.pull_block(2, 33):
            while not buf.eof():
                binders.append(buf.pull_opaque(1, 32, 255))
        if len(binders) != len(identities):
            raise IllegalParameter(
                f"pre_shared_key: {len(identities)} identities but {len(binders)} binders"
            )
        return OfferedPsks(identities, binders)

    return _whole(data, parse)


def encode_pre_shared_key_ch(offered: OfferedPsks) -> bytes:
    ids = b"".join(
        _encode_opaque(2, i.identity) + i.obfuscated_ticket_age.to_bytes(4, "big")
        for i in offered.identities
    )
    return _encode_opaque(2, ids) + encode_psk_binders(offered.binders)


def encode_psk_binders(binders: list[bytes]) -> bytes:
    """The ``PskBinderEntry binders<33..2^16-1>`` vector alone, length prefix included.

    This is the tail of a ClientHello that offers PSKs: it is exactly the last
    :func:`binders_block_length` bytes of the encoded message, so the engine
    can compute the binders over ``Truncate(ClientHello)`` and then splice
    ``encode_psk_binders(real_binders)`` in place of the dummy ones.
    """
    return _encode_opaque(2, b"".join(_encode_opaque(1, b) for b in binders))


def binders_block_length(binder_lengths: list[int]) -> int:
    """Bytes that Truncate() removes from a ClientHello (RFC 9846 §4.2.11.2).

    The binders list is the last field of the last extension of the
    ClientHello, so ``Truncate(CH) == CH[:-binders_block_length(lengths)]``
    where ``lengths`` are the hash lengths of the offered PSKs' binders:
    ``2 + sum(1 + length)``.
    """
    return 2 + sum(1 + n for n in binder_lengths)


def decode_pre_shared_key_sh(data: Data) -> int:
    """ServerHello form: ``uint16 selected_identity``."""
    return _u16_whole(data)


def encode_pre_shared_key_sh(selected_identity: int) -> bytes:
    return selected_identity.to_bytes(2, "big")


# --------------------------------------------------------------------------
# record_size_limit (RFC 8449 §4)
# --------------------------------------------------------------------------
def decode_record_size_limit(data: Data) -> int:
    """``uint16 RecordSizeLimit``; "An endpoint MUST treat receipt of a smaller
    value [than 64] as a fatal error and generate an illegal_parameter alert"."""
    value = _whole(data, Buffer.pull_uint16)
    if value < 64:
        raise IllegalParameter(f"record_size_limit {value} < 64")
    return value


def encode_record_size_limit(limit: int) -> bytes:
    return limit.to_bytes(2, "big")


# --------------------------------------------------------------------------
# certificate_authorities (§4.2.4), oid_filters (§4.2.5)
# --------------------------------------------------------------------------
def decode_certificate_authorities(data: Data) -> list[bytes]:
    """``DistinguishedName authorities<3..2^16-1>``, ``opaque DistinguishedName<1..2^16-1>`` (DER)."""

    def parse(buf: Buffer) -> list[bytes]:
        return buf.pull_list(2, lambda: buf.pull_opaque(2, 1), 3)

    return _whole(data, parse)


def encode_certificate_authorities(names: list[bytes]) -> bytes:
    return _encode_opaque(2, b"".join(_encode_opaque(2, n) for n in names))


def decode_oid_filters(data: Data) -> list[tuple[bytes, bytes]]:
    """``OIDFilter filters<0..2^16-1>`` as ``[(DER OID, DER extension values)]``."""

    def item(buf: Buffer) -> tuple[bytes, bytes]:
        oid = buf.pull_opaque(1, 1)
        return oid, buf.pull_opaque(2)

    return _whole(data, lambda buf: buf.pull_list(2, lambda: item(buf)))


def encode_oid_filters(filters: list[tuple[bytes, bytes]]) -> bytes:
    return _encode_opaque(2, b"".join(_encode_opaque(1, o) + _encode_opaque(2, v) for o, v in filters))


# --------------------------------------------------------------------------
# status_request (RFC 6066 §8; RFC 9846 §4.4.2.1)
# --------------------------------------------------------------------------
_OCSP = 1


@dataclass(slots=True)
class OCSPStatusRequest:
    """``OCSPStatusRequest`` (status_type ocsp(1)) from a ClientHello or CertificateRequest."""

    responder_id_list: list[bytes]  # ResponderID<1..2^16-1>, list <0..2^16-1>
    request_extensions: bytes = b""  # DER Extensions, opaque<0..2^16-1>


def decode_status_request_ch(data: Data) -> OCSPStatusRequest | None:
    """``CertificateStatusRequest`` in a ClientHello or CertificateRequest.

    Returns None for a status_type other than ocsp(1): its structure is
    unknown, so the extension is to be ignored (RFC 9846 §4.2: the
    no-trailing-data rule "does not apply if the receiver does not
    implement" it).
    """

    def parse(buf: Buffer) -> OCSPStatusRequest | None:
        if buf.pull_uint8() != _OCSP:
            buf.pull_rest()
            return None
        responders = buf.pull_list(2, lambda: buf.pull_opaque(2, 1))
        return OCSPStatusRequest(responders, buf.pull_opaque(2))

    return _whole(data, parse)


def encode_status_request_ch(request: OCSPStatusRequest) -> bytes:
    ids = b"".join(_encode_opaque(2, r) for r in request.responder_id_list)
    return b"\x01" + _encode_opaque(2, ids) + _encode_opaque(2, request.request_extensions)


def decode_status_request_cert_entry(data: Data) -> bytes:
    """``CertificateStatus`` in a CertificateEntry: the DER OCSPResponse<1..2^24-1>.

    Only ocsp(1) is defined, and we only ever request that, so any other
    status_type is an illegal_parameter.
    """

    def parse(buf: Buffer) -> bytes:
        status_type = buf.pull_uint8()
        if status_type != _OCSP:
            raise IllegalParameter(f"status_request: unexpected status_type {status_type}")
        return buf.pull_opaque(3, 1)

    return _whole(data, parse)


def encode_status_request_cert_entry(ocsp_response: bytes) -> bytes:
    return b"\x01" + _encode_opaque(3, ocsp_response)


# --------------------------------------------------------------------------
# compress_certificate (RFC 8879 §3)
# --------------------------------------------------------------------------
def decode_compress_certificate(data: Data) -> list[int]:
    """``CertificateCompressionAlgorithm algorithms<2..2^8-2>``."""
    return _u16_list(data, 1, 2, 0xFE, "compress_certificate")


def encode_compress_certificate(algorithms: list[int]) -> bytes:
    return _encode_u16_list(algorithms, 1)
