"""Every TCPLS codepoint, in one place.

draft-piraux-tcpls-04 leaves the TLS ExtensionType values TBD. Until IANA
assigns them we use values from the "Reserved for Private Use" range of
the TLS ExtensionType registry (65280-65535, RFC 8446 §11 / RFC 8447),
avoiding 65281 (0xff01, renegotiation_info, registered before that range
was reserved). Peers must agree on them out of band: only tcpls speaks them.

Frame types are TCPLS-internal (carried inside protected records, never
seen by TLS). The draft's values 0x00-0x09 are used as written; the one
frame we add (Stream Reset, which the draft lacks) takes a value from the
top of the 8-bit space, away from the draft's future allocations.
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


#: Frames that do not elicit an ACK (draft: rule "N").
NON_ACK_ELICITING = frozenset({FrameType.PADDING, FrameType.ACK})

#: Length in bytes of tokens (tcpls_join, tcpls_token, New Token).
TOKEN_LENGTH = 32
