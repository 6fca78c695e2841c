"""TCPLS frame codec: round trips, parsing from the end, malformed input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpls.errors import DecodeError, LocalProtocolError
from tcpls.tcpls import frames as F
from tcpls.tcpls.codepoints import FrameType, TCPLSExtension

u32 = st.integers(0, 2**32 - 1)
u8 = st.integers(0, 255)

frame_st = st.one_of(
    st.builds(F.Ping),
    st.builds(F.Padding, st.integers(1, 5)),
    st.builds(
        lambda sid, off, data, fin: F.StreamFrame(sid, off, data, fin),
        u32,
        st.integers(0, 2**63),
        st.binary(max_size=300),
        st.booleans(),
    ),
    st.builds(F.AckFrame, u32, st.integers(0, 2**64 - 1)),
    st.builds(F.NewTokenFrame, u8, st.binary(min_size=32, max_size=32)),
    st.builds(F.ConnectionResetFrame, u32),
    st.builds(F.NewAddressFrame, u8, st.just(4), st.binary(min_size=4, max_size=4), st.integers(0, 65535)),
    st.builds(F.NewAddressFrame, u8, st.just(6), st.binary(min_size=16, max_size=16), st.integers(0, 65535)),
    st.builds(F.RemoveAddressFrame, u8),
    st.builds(F.StreamChangeFrame, u32, st.integers(0, 2**64 - 1)),
    st.builds(F.StreamResetFrame, u32, st.integers(0, 2**64 - 1), u32),
)


def _merge_padding(frames):
    out = []
    for f in frames:
        if isinstance(f, F.Padding) and out and isinstance(out[-1], F.Padding):
            out[-1] = F.Padding(out[-1].length + f.length)
        else:
            out.append(f)
    return out


def test_codepoints_are_private_use():
    for ext in TCPLSExtension:
        assert 65280 <= ext <= 65535 and ext != 0xFF01


def test_stream_frame_layout_matches_the_draft():
    wire = F.encode_frame(F.StreamFrame(7, 0x0102, b"abc", fin=True))
    # Stream Data | Length (16) | Offset (64) | Stream ID (32) | FIN-bit Type
    assert wire == b"abc" + b"\x00\x03" + (0x0102).to_bytes(8, "big") + (7).to_bytes(4, "big") + b"\x03"
    assert F.encode_frame(F.StreamFrame(7, 0, b"")) [-1] == FrameType.STREAM
    assert F.encode_frame(F.AckFrame(3, 9)) == (9).to_bytes(8, "big") + (3).to_bytes(4, "big") + b"\x04"
    assert F.encode_frame(F.NewTokenFrame(2, bytes(32))) == bytes(32) + b"\x02\x05"


@given(st.lists(frame_st, max_size=12))
@settings(max_examples=300, deadline=None)
def test_round_trip_parsed_from_the_end(frames):
    wire = F.encode_frames(frames)
    assert F.parse_frames(wire) == _merge_padding(list(reversed(frames)))


@given(st.lists(frame_st, min_size=1, max_size=6), st.data())
@settings(max_examples=300, deadline=None)
def test_truncated_records_fail_cleanly(frames, data):
    wire = F.encode_frames(frames)
    cut = data.draw(st.integers(1, len(wire)))
    try:
        F.parse_frames(wire[cut:])  # the start of the record is missing
    except DecodeError:
        pass


@given(st.binary(max_size=200))
@settings(max_examples=500, deadline=None)
def test_random_bytes_never_crash(blob):
    try:
        F.parse_frames(blob)
    except LocalProtocolError as exc:
        assert exc.alert_name == "decode_error"


@pytest.mark.parametrize(
    "wire, message",
    [
        (b"\x42", "unknown TCPLS frame type 0x42"),
        (b"\x00" * 5 + b"\x02", "truncated Stream frame"),
        (b"\x00\x09" + bytes(8) + bytes(4) + b"\x02", "length exceeds"),
        (b"X\x00\x01" + b"\xff" * 8 + bytes(4) + b"\x02", "overflows"),
        (bytes(11) + b"\x04", "truncated ACK"),
        (bytes(31) + b"\x01\x05", "truncated New Token"),
        (b"\x00\x00\x05\x01\x07", "unknown address version"),
        (bytes(4) + b"\x04\x01\x07", "truncated New Address"),
        (b"\x08", "truncated Remove Address"),
        (bytes(11) + b"\x09", "truncated Stream Change"),
        (bytes(3) + b"\x06", "truncated Connection Reset"),
    ],
)
def test_malformed_frames(wire, message):
    with pytest.raises(DecodeError, match=message) as info:
        F.parse_frames(wire)
    assert info.value.alert_name == "decode_error"


def test_encoder_refuses_out_of_range_fields():
    with pytest.raises(ValueError):
        F.encode_frame(F.NewTokenFrame(1, b"short"))
    with pytest.raises(ValueError):
        F.encode_frame(F.NewAddressFrame(1, 4, bytes(16), 80))
    with pytest.raises(ValueError):
        F.encode_frame(F.StreamFrame(2**32, 0, b""))
