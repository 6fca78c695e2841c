"""IANA registries used by TLS 1.3 (RFC 9846 §4, §6, appendix B.3).

Plain ``IntEnum`` classes; values that are not in an enum (unknown codepoints
received from the network) are kept as plain ``int`` by the codec, so every
consumer must accept ``int`` as well as the enum member.
"""

from __future__ import annotations

from enum import IntEnum


class ContentType(IntEnum):
    """RFC 9846 §5.1."""

    INVALID = 0
    CHANGE_CIPHER_SPEC = 20
    ALERT = 21
    HANDSHAKE = 22
    APPLICATION_DATA = 23


class AlertLevel(IntEnum):
    """RFC 9846 §6."""

    WARNING = 1
    FATAL = 2


class AlertDescription(IntEnum):
    """RFC 9846 §6."""

    close_notify = 0
    unexpected_message = 10
    bad_record_mac = 20
    record_overflow = 22
    handshake_failure = 40
    bad_certificate = 42
    unsupported_certificate = 43
    certificate_revoked = 44
    certificate_expired = 45
    certificate_unknown = 46
    illegal_parameter = 47
    unknown_ca = 48
    access_denied = 49
    decode_error = 50
    decrypt_error = 51
    too_many_cids_requested = 52  # RFC 9147 §9 (DTLS 1.3)
    protocol_version = 70
    insufficient_security = 71
    internal_error = 80
    inappropriate_fallback = 86
    user_canceled = 90
    missing_extension = 109
    unsupported_extension = 110
    unrecognized_name = 112
    bad_certificate_status_response = 113
    unknown_psk_identity = 115
    certificate_required = 116
    general_error = 117
    no_application_protocol = 120
    ech_required = 121


class HandshakeType(IntEnum):
    """RFC 9846 §4."""

    client_hello = 1
    server_hello = 2
    new_session_ticket = 4
    end_of_early_data = 5
    encrypted_extensions = 8
    certificate = 11
    certificate_request = 13
    certificate_verify = 15
    finished = 20
    key_update = 24
    compressed_certificate = 25  # RFC 8879
    message_hash = 254


class ExtensionType(IntEnum):
    """RFC 9846 §4.2 and the extensions of related RFCs."""

    server_name = 0
    max_fragment_length = 1
    status_request = 5
    supported_groups = 10
    ec_point_formats = 11
    signature_algorithms = 13
    use_srtp = 14
    heartbeat = 15
    application_layer_protocol_negotiation = 16
    signed_certificate_timestamp = 18
    client_certificate_type = 19
    server_certificate_type = 20
    padding = 21
    encrypt_then_mac = 22
    extended_master_secret = 23
    compress_certificate = 27
    record_size_limit = 28
    session_ticket = 35
    pre_shared_key = 41
    early_data = 42
    supported_versions = 43
    cookie = 44
    psk_key_exchange_modes = 45
    certificate_authorities = 47
    oid_filters = 48
    post_handshake_auth = 49
    signature_algorithms_cert = 50
    key_share = 51
    connection_id = 54  # RFC 9146 / RFC 9147
    renegotiation_info = 0xFF01


class CipherSuite(IntEnum):
    """RFC 9846 appendix B.4."""

    TLS_AES_128_GCM_SHA256 = 0x1301
    TLS_AES_256_GCM_SHA384 = 0x1302
    TLS_CHACHA20_POLY1305_SHA256 = 0x1303
    TLS_AES_128_CCM_SHA256 = 0x1304
    TLS_AES_128_CCM_8_SHA256 = 0x1305
    TLS_EMPTY_RENEGOTIATION_INFO_SCSV = 0x00FF


class NamedGroup(IntEnum):
    """RFC 9846 §4.2.7 (and the hybrid ML-KEM codepoint)."""

    secp256r1 = 0x0017
    secp384r1 = 0x0018
    secp521r1 = 0x0019
    x25519 = 0x001D
    x448 = 0x001E
    ffdhe2048 = 0x0100
    ffdhe3072 = 0x0101
    ffdhe4096 = 0x0102
    ffdhe6144 = 0x0103
    ffdhe8192 = 0x0104
    X25519MLKEM768 = 0x11EC


class SignatureScheme(IntEnum):
    """RFC 9846 §4.2.3."""

    rsa_pkcs1_sha256 = 0x0401
    rsa_pkcs1_sha384 = 0x0501
    rsa_pkcs1_sha512 = 0x0601
    ecdsa_secp256r1_sha256 = 0x0403
    ecdsa_secp384r1_sha384 = 0x0503
    ecdsa_secp521r1_sha512 = 0x0603
    rsa_pss_rsae_sha256 = 0x0804
    rsa_pss_rsae_sha384 = 0x0805
    rsa_pss_rsae_sha512 = 0x0806
    ed25519 = 0x0807
    ed448 = 0x0808
    rsa_pss_pss_sha256 = 0x0809
    rsa_pss_pss_sha384 = 0x080A
    rsa_pss_pss_sha512 = 0x080B
    rsa_pkcs1_sha1 = 0x0201
    ecdsa_sha1 = 0x0203


class PskKeyExchangeMode(IntEnum):
    """RFC 9846 §4.2.9."""

    psk_ke = 0
    psk_dhe_ke = 1


class KeyUpdateRequest(IntEnum):
    """RFC 9846 §4.6.3."""

    update_not_requested = 0
    update_requested = 1


class CertificateCompressionAlgorithm(IntEnum):
    """RFC 8879 §3."""

    zlib = 1
    brotli = 2
    zstd = 3


TLS_1_2 = 0x0303
TLS_1_3 = 0x0304
TLS_1_0 = 0x0301
# RFC 9147 §5.3: DTLS 1.3 in supported_versions; legacy_version stays DTLS 1.2.
DTLS_1_2 = 0xFEFD
DTLS_1_3 = 0xFEFC

# RFC 9846 §4.1.3: the ServerHello.random of a HelloRetryRequest.
HELLO_RETRY_REQUEST_RANDOM = bytes.fromhex(
    "CF21AD74E59A6111BE1D8C021E65B891C2A211167ABB8C5E079E09E2C8A8339C"
)
# RFC 9846 §4.1.3: downgrade sentinels in the last 8 bytes of ServerHello.random.
DOWNGRADE_TLS12 = bytes.fromhex("444F574E47524401")
DOWNGRADE_TLS11 = bytes.fromhex("444F574E47524400")


def enum_name(enum_cls: type[IntEnum], value: int) -> str:
    """Name of ``value`` in ``enum_cls``, or a hex form for unknown codepoints."""
    try:
        return enum_cls(value).name
    except ValueError:
        return f"0x{value:04x}"
