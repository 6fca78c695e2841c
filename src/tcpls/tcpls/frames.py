"""TCPLS frame codec (draft-piraux-tcpls-04 §"TCPLS Frames").

Theory of operation
-------------------
A protected record of a TCPLS session carries a sequence of frames. Each
frame is ``Value || Type``: its type is its *last* byte and its fields come
before it, so a receiver parses a record from the end towards the start
(the draft's zero-copy layout: the data of the first Stream frame sits at
offset 0 of the record). :func:`parse_frames` does exactly that and
recognises the whole record before anything is processed (full recognition
before processing): any truncated field, unknown type, bad address version
or overflowing offset raises :class:`~tcpls.errors.DecodeError` (alert
``decode_error``) and nothing of the record is acted upon.

:func:`parse_frames` returns the frames in *parse order* (the last frame of
the record first), which is the order the draft says to process them in.
:func:`encode_frames` writes frames in the given order, so
``parse_frames(encode_frames(fs)) == list(reversed(fs))`` (adjacent Padding
frames merge into one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from ..errors import DecodeError
from .codepoints import TCP_CA_NAME_MAX, TOKEN_LENGTH, FrameType, TCPSetting

__all__ = [
    "Padding",
    "Ping",
    "StreamFrame",
    "AckFrame",
    "NewTokenFrame",
    "ConnectionResetFrame",
    "NewAddressFrame",
    "RemoveAddressFrame",
    "StreamChangeFrame",
    "StreamResetFrame",
    "TCPSettingFrame",
    "TCPSettingResultFrame",
    "Frame",
    "encode_frame",
    "encode_frames",
    "parse_frames",
    "STREAM_FRAME_OVERHEAD",
    "ACK_FRAME_SIZE",
]

U16, U32, U64 = 1 << 16, 1 << 32, 1 << 64

#: Bytes a Stream frame adds to its data (Length 2, Offset 8, Stream ID 4, Type 1).
STREAM_FRAME_OVERHEAD = 15
#: Size of an encoded ACK frame.
ACK_FRAME_SIZE = 13


@dataclass(frozen=True, slots=True)
class Padding:
    """``length`` Padding frames (each the single byte 0x00)."""

    length: int = 1


@dataclass(frozen=True, slots=True)
class Ping:
    """Elicits an ACK of the record carrying it."""


@dataclass(frozen=True, slots=True)
class StreamFrame:
    stream_id: int
    offset: int
    data: bytes
    fin: bool = False


@dataclass(frozen=True, slots=True)
class AckFrame:
    """Highest record sequence number received on connection ``conn_id``."""

    conn_id: int
    highest_seq: int


@dataclass(frozen=True, slots=True)
class NewTokenFrame:
    """Server only: a join token and its sequence number (the future Connection ID)."""

    seq: int
    token: bytes


@dataclass(frozen=True, slots=True)
class ConnectionResetFrame:
    conn_id: int


@dataclass(frozen=True, slots=True)
class NewAddressFrame:
    address_id: int
    version: int  # 4 or 6
    address: bytes  # 4 or 16 bytes
    port: int


@dataclass(frozen=True, slots=True)
class RemoveAddressFrame:
    address_id: int


@dataclass(frozen=True, slots=True)
class StreamChangeFrame:
    """Hint: the next record on this connection starts with this stream/offset."""

    stream_id: int
    offset: int


@dataclass(frozen=True, slots=True)
class StreamResetFrame:
    """tcpls extension: the sender abandons the stream; ``final_offset`` is
    the stream's size as far as the receiver must account for it."""

    stream_id: int
    final_offset: int
    error_code: int = 0


@dataclass(frozen=True, slots=True)
class TCPSettingFrame:
    """tcpls extension: ask the peer to apply TCP setting ``setting``
    (a :class:`~tcpls.tcpls.codepoints.TCPSetting` value, or an unknown one)
    with the encoded ``value`` on its connection ``conn_id``
    (``ALL_CONNECTIONS``: every one). ``request_id`` pairs it with its result."""

    request_id: int
    setting: int
    conn_id: int
    value: bytes


@dataclass(frozen=True, slots=True)
class TCPSettingResultFrame:
    """tcpls extension: the answer to TCP Setting ``request_id``
    (a :class:`~tcpls.tcpls.codepoints.TCPSettingStatus` value and an ASCII reason)."""

    request_id: int
    status: int
    reason: str = ""


Frame = Union[
    Padding,
    Ping,
    StreamFrame,
    AckFrame,
    NewTokenFrame,
    ConnectionResetFrame,
    NewAddressFrame,
    RemoveAddressFrame,
    StreamChangeFrame,
    StreamResetFrame,
    TCPSettingFrame,
    TCPSettingResultFrame,
]

_ADDRESS_LENGTH = {4: 4, 6: 16}


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise ValueError(what)


def check_tcp_setting_value(setting: int, value: bytes) -> None:
    """Raise ValueError unless ``value`` is well formed for a known ``setting``
    (unknown settings carry any value up to 255 bytes)."""
    if setting == TCPSetting.USER_TIMEOUT:
        _check(len(value) == 4, "USER_TIMEOUT value must be 4 bytes")
    elif setting == TCPSetting.CONGESTION_CONTROL:
        _check(0 < len(value) <= TCP_CA_NAME_MAX, f"congestion control name must be 1-{TCP_CA_NAME_MAX} bytes")
        _check(all(0x21 <= b <= 0x7E for b in value), "congestion control name must be printable ASCII")
    _check(len(value) < 256, "TCP Setting value longer than 255 bytes")


def encode_frame(f: Frame) -> bytes:
    """Encode one frame (``Value || Type``). Raises ValueError for fields out of range."""
    t = type(f)
    if t is StreamFrame:
        assert isinstance(f, StreamFrame)
        n = len(f.data)
        _check(n < U16 and 0 <= f.stream_id < U32 and 0 <= f.offset and f.offset + n < U64, "Stream frame field out of range")
        return b"".join(
            (
                f.data,
                n.to_bytes(2, "big"),
                f.offset.to_bytes(8, "big"),
                f.stream_id.to_bytes(4, "big"),
                bytes((FrameType.STREAM_FIN if f.fin else FrameType.STREAM,)),
            )
        )
    if t is AckFrame:
        assert isinstance(f, AckFrame)
        _check(0 <= f.highest_seq < U64 and 0 <= f.conn_id < U32, "ACK frame field out of range")
        return f.highest_seq.to_bytes(8, "big") + f.conn_id.to_bytes(4, "big") + bytes((FrameType.ACK,))
    if t is Padding:
        assert isinstance(f, Padding)
        _check(f.length >= 1, "Padding length must be >= 1")
        return bytes(f.length)
    if t is Ping:
        return bytes((FrameType.PING,))
    if t is NewTokenFrame:
        assert isinstance(f, NewTokenFrame)
        _check(len(f.token) == TOKEN_LENGTH and 0 <= f.seq < 256, "New Token frame field out of range")
        return bytes(f.token) + bytes((f.seq, FrameType.NEW_TOKEN))
    if t is ConnectionResetFrame:
        assert isinstance(f, ConnectionResetFrame)
        _check(0 <= f.conn_id < U32, "Connection ID out of range")
        return f.conn_id.to_bytes(4, "big") + bytes((FrameType.CONNECTION_RESET,))
    if t is NewAddressFrame:
        assert isinstance(f, NewAddressFrame)
        _check(_ADDRESS_LENGTH.get(f.version) == len(f.address), "address does not match its version")
        _check(0 <= f.port < U16 and 0 <= f.address_id < 256, "New Address frame field out of range")
        return f.port.to_bytes(2, "big") + bytes(f.address) + bytes((f.version, f.address_id, FrameType.NEW_ADDRESS))
    if t is RemoveAddressFrame:
        assert isinstance(f, RemoveAddressFrame)
        _check(0 <= f.address_id < 256, "Address ID out of range")
        return bytes((f.address_id, FrameType.REMOVE_ADDRESS))
    if t is StreamChangeFrame:
        assert isinstance(f, StreamChangeFrame)
        _check(0 <= f.stream_id < U32 and 0 <= f.offset < U64, "Stream Change frame field out of range")
        return f.stream_id.to_bytes(4, "big") + f.offset.to_bytes(8, "big") + bytes((FrameType.STREAM_CHANGE,))
    if t is StreamResetFrame:
        assert isinstance(f, StreamResetFrame)
        _check(0 <= f.stream_id < U32 and 0 <= f.final_offset < U64 and 0 <= f.error_code < U32, "Stream Reset field out of range")
        return (
            f.error_code.to_bytes(4, "big")
            + f.final_offset.to_bytes(8, "big")
            + f.stream_id.to_bytes(4, "big")
            + bytes((FrameType.STREAM_RESET,))
        )
    if t is TCPSettingFrame:
        assert isinstance(f, TCPSettingFrame)
        _check(0 <= f.request_id < U16 and 0 <= f.setting < 256 and 0 <= f.conn_id < U32, "TCP Setting field out of range")
        check_tcp_setting_value(f.setting, f.value)
        return (
            bytes(f.value)
            + bytes((len(f.value),))
            + f.conn_id.to_bytes(4, "big")
            + bytes((f.setting,))
            + f.request_id.to_bytes(2, "big")
            + bytes((FrameType.TCP_SETTING,))
        )
    if t is TCPSettingResultFrame:
        assert isinstance(f, TCPSettingResultFrame)
        _check(0 <= f.request_id < U16 and 0 <= f.status < 256, "TCP Setting Result field out of range")
        reason = f.reason.encode("ascii", "replace")[:255]
        return reason + bytes((len(reason), f.status)) + f.request_id.to_bytes(2, "big") + bytes((FrameType.TCP_SETTING_RESULT,))
    raise TypeError(f"not a TCPLS frame: {f!r}")


def encode_frames(frames: list[Frame]) -> bytes:
    return b"".join(encode_frame(f) for f in frames)


def _u(buf: memoryview, start: int, end: int) -> int:
    return int.from_bytes(buf[start:end], "big")


def parse_frames(payload: bytes | memoryview) -> list[Frame]:
    """All frames of one record's content, last frame first.

    Raises:
        DecodeError: the content is not a well-formed sequence of frames.
    """
    buf = memoryview(payload)
    end = len(buf)
    out: list[Frame] = []
    while end > 0:
        ftype = buf[end - 1]
        pos = end - 1
        if ftype == FrameType.PADDING:
            start = pos
            while start > 0 and buf[start - 1] == 0:
                start -= 1
            out.append(Padding(end - start))
            end = start
            continue
        if ftype == FrameType.PING:
            out.append(Ping())
        elif ftype in (FrameType.STREAM, FrameType.STREAM_FIN):
            if pos < 14:
                raise DecodeError("truncated Stream frame")
            sid = _u(buf, pos - 4, pos)
            offset = _u(buf, pos - 12, pos - 4)
            length = _u(buf, pos - 14, pos - 12)
            pos -= 14
            if length > pos:
                raise DecodeError("Stream frame length exceeds the record")
            if offset + length >= U64:
                raise DecodeError("Stream frame offset + length overflows 2^64")
            out.append(StreamFrame(sid, offset, bytes(buf[pos - length : pos]), ftype == FrameType.STREAM_FIN))
            pos -= length
        elif ftype == FrameType.ACK:
            if pos < 12:
                raise DecodeError("truncated ACK frame")
            out.append(AckFrame(_u(buf, pos - 4, pos), _u(buf, pos - 12, pos - 4)))
            pos -= 12
        elif ftype == FrameType.NEW_TOKEN:
            if pos < 1 + TOKEN_LENGTH:
                raise DecodeError("truncated New Token frame")
            out.append(NewTokenFrame(buf[pos - 1], bytes(buf[pos - 1 - TOKEN_LENGTH : pos - 1])))
            pos -= 1 + TOKEN_LENGTH
        elif ftype == FrameType.CONNECTION_RESET:
            if pos < 4:
                raise DecodeError("truncated Connection Reset frame")
            out.append(ConnectionResetFrame(_u(buf, pos - 4, pos)))
            pos -= 4
        elif ftype == FrameType.NEW_ADDRESS:
            if pos < 2:
                raise DecodeError("truncated New Address frame")
            addr_id, version = buf[pos - 1], buf[pos - 2]
            alen = _ADDRESS_LENGTH.get(version)
            if alen is None:
                raise DecodeError(f"New Address frame with unknown address version {version}")
            pos -= 2
            if pos < alen + 2:
                raise DecodeError("truncated New Address frame")
            address = bytes(buf[pos - alen : pos])
            port = _u(buf, pos - alen - 2, pos - alen)
            out.append(NewAddressFrame(addr_id, version, address, port))
            pos -= alen + 2
        elif ftype == FrameType.REMOVE_ADDRESS:
            if pos < 1:
                raise DecodeError("truncated Remove Address frame")
            out.append(RemoveAddressFrame(buf[pos - 1]))
            pos -= 1
        elif ftype == FrameType.STREAM_CHANGE:
            if pos < 12:
                raise DecodeError("truncated Stream Change frame")
            out.append(StreamChangeFrame(_u(buf, pos - 12, pos - 8), _u(buf, pos - 8, pos)))
            pos -= 12
        elif ftype == FrameType.STREAM_RESET:
            if pos < 16:
                raise DecodeError("truncated Stream Reset frame")
            out.append(StreamResetFrame(_u(buf, pos - 4, pos), _u(buf, pos - 12, pos - 4), _u(buf, pos - 16, pos - 12)))
            pos -= 16
        elif ftype == FrameType.TCP_SETTING:
            if pos < 8:
                raise DecodeError("truncated TCP Setting frame")
            request_id = _u(buf, pos - 2, pos)
            setting = buf[pos - 3]
            conn_id = _u(buf, pos - 7, pos - 3)
            vlen = buf[pos - 8]
            pos -= 8
            if vlen > pos:
                raise DecodeError("TCP Setting value length exceeds the record")
            value = bytes(buf[pos - vlen : pos])
            try:
                check_tcp_setting_value(setting, value)
            except ValueError as exc:
                raise DecodeError(f"malformed TCP Setting frame: {exc}") from None
            out.append(TCPSettingFrame(request_id, setting, conn_id, value))
            pos -= vlen
        elif ftype == FrameType.TCP_SETTING_RESULT:
            if pos < 4:
                raise DecodeError("truncated TCP Setting Result frame")
            request_id = _u(buf, pos - 2, pos)
            status = buf[pos - 3]
            rlen = buf[pos - 4]
            pos -= 4
            if rlen > pos:
                raise DecodeError("TCP Setting Result reason length exceeds the record")
            try:
                reason = bytes(buf[pos - rlen : pos]).decode("ascii")
            except UnicodeDecodeError:
                raise DecodeError("TCP Setting Result reason is not ASCII") from None
            out.append(TCPSettingResultFrame(request_id, status, reason))
            pos -= rlen
        else:
            raise DecodeError(f"unknown TCPLS frame type 0x{ftype:02x}")
        end = pos
    return out
