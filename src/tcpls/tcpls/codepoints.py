"""Every TCPLS codepoint, in one place.

draft-piraux-tcpls-04 leaves the TLS ExtensionType values TBD. Until IANA
assigns them we use values from the "Reserved for Private Use" range of
the TLS ExtensionType registry (65280-65535, RFC 8446 §11 / RFC 8447),
avoiding 65281 (0xff01, renegotiation_info, registered before that range
was reserved). Peers must agree on them out of band: only tcpls speaks them.

Frame types are TCPLS-internal (carried inside protected records, never
seen by TLS). The draft's values 0x00-0x09 are used as written; the one
frames we add (Stream Reset, TCP Setting and TCP Setting Result, which
the draft lacks) take values from the top of the 8-bit space, away from
the draft's future allocations.
"""

from __future__ import annotations

from enum import IntEnum


class TCPLSExtension(IntEnum):
    """TLS ExtensionType values (draft §"TCPLS TLS Extensions": TBD1-TBD3)."""

    tcpls = 0xFF50  # CH, EE: empty; both present => TCPLS after the handshake
    tcpls_join = 0xFF51  # CH: opaque token<32> (exactly 32 bytes here)
    tcpls_token = 0xFF52  # EE: opaque token<32>, the token with sequence 1


class FrameType(IntEnum):
    """TCPLS frame types (draft §"TCPLS Frames"); the type is a frame's last byte."""

    PADDING = 0x00
    PING = 0x01
    STREAM = 0x02  # 0x02 | FIN (0x03 = Stream with FIN)
    STREAM_FIN = 0x03
    ACK = 0x04
    NEW_TOKEN = 0x05
    CONNECTION_RESET = 0x06
    NEW_ADDRESS = 0x07
    REMOVE_ADDRESS = 0x08
    STREAM_CHANGE = 0x09
    # tcpls extension (not in draft-04): abort a stream in both directions'
    # sense of "no more data will come": Error Code (32) | Final Offset (64) |
    # Stream ID (32) | Type.
    STREAM_RESET = 0xF0
    # tcpls extension (not in draft-04): ask the peer to apply a TCP socket
    # option on one of its connections (or all):
    # Value (Length bytes) | Length (8) | Connection ID (32) | Setting ID (8) |
    # Request ID (16) | Type. See TCPSetting for the values.
    TCP_SETTING = 0xF1
    # tcpls extension: the answer to a TCP Setting frame:
    # Reason (Length bytes, ASCII) | Length (8) | Status (8) | Request ID (16) | Type.
    TCP_SETTING_RESULT = 0xF2


class TCPSetting(IntEnum):
    """Setting IDs of the TCP Setting frame (tcpls extension)."""

    USER_TIMEOUT = 0x01  # Value: milliseconds, 32-bit (TCP_USER_TIMEOUT; 0 = the kernel default)
    CONGESTION_CONTROL = 0x02  # Value: algorithm name, 1-16 printable ASCII bytes (TCP_CONGESTION)


class TCPSettingStatus(IntEnum):
    """Status of a TCP Setting Result frame."""

    APPLIED = 0x00  # set on every targeted connection
    REFUSED = 0x01  # the receiver's policy said no (or unknown setting / connection)
    FAILED = 0x02  # the policy accepted it but the socket option could not be set


#: Connection ID of a TCP Setting frame meaning "every connection of the session".
ALL_CONNECTIONS = 0xFFFFFFFF
#: Longest congestion control name (the kernel's TCP_CA_NAME_MAX).
TCP_CA_NAME_MAX = 16


#: Frames that do not elicit an ACK (draft: rule "N").
NON_ACK_ELICITING = frozenset({FrameType.PADDING, FrameType.ACK})

#: Length in bytes of tokens (tcpls_join, tcpls_token, New Token).
TOKEN_LENGTH = 32
