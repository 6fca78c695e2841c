"""TCP Setting frames (tcpls extension) and address announcement, in memory with a fake clock."""

from __future__ import annotations

import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tcpls.aio import tcp_settings
from tcpls.errors import DecodeError, LocalProtocolError, UsageError
from tcpls.tcpls import events as ev
from tcpls.tcpls import frames as F
from tcpls.tcpls.codepoints import ALL_CONNECTIONS, FrameType, TCPSetting, TCPSettingStatus
from tcpls.tls.enums import ContentType

from tcplspair import TCPLSPair, of_type, tcpls_configs


def _pair(client_kw=None, server_kw=None) -> TCPLSPair:
    c, s = tcpls_configs(client_kw, server_kw)
    p = TCPLSPair(c, s)
    p.pump()
    assert p.client.mode == p.server.mode == "tcpls"
    return p


# ----------------------------------------------------------------- codec
@pytest.mark.parametrize(
    "frame",
    [
        F.TCPSettingFrame(0, TCPSetting.USER_TIMEOUT, ALL_CONNECTIONS, (2500).to_bytes(4, "big")),
        F.TCPSettingFrame(65535, TCPSetting.CONGESTION_CONTROL, 3, b"reno"),
        F.TCPSettingFrame(7, TCPSetting.CONGESTION_CONTROL, 0, b"x" * 16),
        F.TCPSettingFrame(9, 0x7F, 1, b"anything \x00 goes"),  # unknown setting: opaque value
        F.TCPSettingResultFrame(1, TCPSettingStatus.APPLIED, "user timeout 2500 set"),
        F.TCPSettingResultFrame(2, TCPSettingStatus.REFUSED, ""),
        F.TCPSettingResultFrame(3, TCPSettingStatus.FAILED, "r" * 255),
    ],
)
def test_tcp_setting_frames_round_trip(frame):
    wire = F.encode_frame(frame)
    assert wire[-1] in (FrameType.TCP_SETTING, FrameType.TCP_SETTING_RESULT)  # type last
    # with a Stream frame before it and a Ping after: parsed last-first
    frames = [F.StreamFrame(0, 5, b"data"), frame, F.Ping()]
    assert F.parse_frames(F.encode_frames(frames)) == list(reversed(frames))


def test_tcp_setting_wire_layout():
    wire = F.encode_frame(F.TCPSettingFrame(0x0102, TCPSetting.CONGESTION_CONTROL, 5, b"cubic"))
    # Value | Length (8) | Connection ID (32) | Setting ID (8) | Request ID (16) | Type
    assert wire == b"cubic" + bytes([5]) + (5).to_bytes(4, "big") + bytes([0x02]) + bytes([1, 2]) + bytes([0xF1])
    res = F.encode_frame(F.TCPSettingResultFrame(0x0304, TCPSettingStatus.REFUSED, "no"))
    # Reason | Length (8) | Status (8) | Request ID (16) | Type
    assert res == b"no" + bytes([2, 1, 3, 4, 0xF2])


@pytest.mark.parametrize(
    "wire, what",
    [
        (b"\x00\x00\x07" + bytes([3]) + (0).to_bytes(4, "big") + bytes([1, 0, 0, 0xF1]), "USER_TIMEOUT"),  # 3-byte value
        (b"a" * 17 + bytes([17]) + (0).to_bytes(4, "big") + bytes([2, 0, 0, 0xF1]), "congestion"),  # name > 16
        (bytes([0]) + (0).to_bytes(4, "big") + bytes([2, 0, 0, 0xF1]), "congestion"),  # empty name
        (b"re no" + bytes([5]) + (0).to_bytes(4, "big") + bytes([2, 0, 0, 0xF1]), "printable"),  # space
        (b"reno" + bytes([9]) + (0).to_bytes(4, "big") + bytes([2, 0, 0, 0xF1]), "exceeds"),  # length past start
        ((0).to_bytes(4, "big") + bytes([2, 0, 0, 0xF1]), "truncated"),
        (bytes([0, 0, 0xF2]), "truncated"),
        (b"ab" + bytes([3, 0, 0, 0, 0xF2]), "exceeds"),
    ],
)
def test_malformed_tcp_setting_is_decode_error(wire, what):
    with pytest.raises(DecodeError, match=what):
        F.parse_frames(wire)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=40), st.sampled_from([0xF1, 0xF2]))
def test_tcp_setting_parser_fuzz(body, ftype):
    try:
        out = F.parse_frames(body + bytes([ftype]))
    except DecodeError:
        return
    # whatever parsed re-encodes to frames that parse the same
    assert F.parse_frames(F.encode_frames(list(reversed(out)))) == out


def test_encoder_refuses_bad_values():
    with pytest.raises(ValueError):
        F.encode_frame(F.TCPSettingFrame(0, TCPSetting.CONGESTION_CONTROL, 0, b"x" * 17))
    with pytest.raises(ValueError):
        F.encode_frame(F.TCPSettingFrame(1 << 16, TCPSetting.USER_TIMEOUT, 0, bytes(4)))


# ----------------------------------------------------------------- engine
def test_request_answer_both_directions():
    p = _pair()
    rid = p.client.request_tcp_setting(TCPSetting.USER_TIMEOUT, 2500)
    p.pump()
    (req,) = of_type(p.server_events, ev.TCPSettingRequested)
    assert req == ev.TCPSettingRequested(rid, TCPSetting.USER_TIMEOUT, 2500, None)
    assert not of_type(p.client_events, ev.TCPSettingAnswered)  # nothing until the server answers
    p.server.answer_tcp_setting(req.request_id, TCPSettingStatus.APPLIED, "ok")
    p.pump()
    (ans,) = of_type(p.client_events, ev.TCPSettingAnswered)
    assert ans == ev.TCPSettingAnswered(rid, TCPSettingStatus.APPLIED, "ok") and ans.applied

    rid2 = p.server.request_tcp_setting(TCPSetting.CONGESTION_CONTROL, "reno", conn_id=0)
    p.pump()
    (req2,) = of_type(p.client_events, ev.TCPSettingRequested)
    assert (req2.setting, req2.value, req2.conn_id) == (TCPSetting.CONGESTION_CONTROL, "reno", 0)
    p.client.answer_tcp_setting(req2.request_id, TCPSettingStatus.REFUSED, "policy says no")
    p.pump()
    (ans2,) = of_type(p.server_events, ev.TCPSettingAnswered)
    assert ans2.request_id == rid2 and not ans2.applied and ans2.reason == "policy says no"


def test_unknown_setting_and_connection_refused_without_event():
    p = _pair()
    rid = p.client.request_tcp_setting(0x42, b"\x01\x02")
    rid2 = p.client.request_tcp_setting(TCPSetting.USER_TIMEOUT, 1000, conn_id=9)
    p.pump()
    assert not of_type(p.server_events, ev.TCPSettingRequested)
    answers = {a.request_id: a for a in of_type(p.client_events, ev.TCPSettingAnswered)}
    assert answers[rid].status == TCPSettingStatus.REFUSED and "unknown setting 0x42" in answers[rid].reason
    assert answers[rid2].status == TCPSettingStatus.REFUSED and "unknown connection 9" in answers[rid2].reason
    assert not p.client.terminated and not p.server.terminated


def test_duplicate_request_and_answer_handled_once():
    p = _pair()
    frame = F.TCPSettingFrame(77, TCPSetting.USER_TIMEOUT, ALL_CONNECTIONS, (900).to_bytes(4, "big"))
    conn = p.client._conns[0]
    p.client._send_record(conn, [frame], [], p.now)
    p.client._send_record(conn, [frame], [], p.now)  # a retransmission after a failover
    p.pump()
    assert len(of_type(p.server_events, ev.TCPSettingRequested)) == 1
    p.server._send_record(p.server._conns[0], [F.TCPSettingResultFrame(77, 0, "x")] * 2, [], p.now)
    p.pump()
    assert not of_type(p.client_events, ev.TCPSettingAnswered)  # never asked: ignored


def test_malformed_tcp_setting_record_is_decode_error_alert():
    p = _pair()
    raw = b"a b" + bytes([3]) + (0).to_bytes(4, "big") + bytes([2, 0, 1, 0xF1])
    p.client._seal(p.client._conns[0], ContentType.APPLICATION_DATA, raw)
    with pytest.raises(LocalProtocolError) as info:
        p.pump()
    assert info.value.alert_name == "decode_error"
    assert p.server.terminated


def test_request_misuse():
    p = _pair()
    for bad in (-1, 1 << 32, "x" * 17, "bad name", "é", True, 1.5):
        with pytest.raises(UsageError):
            setting = TCPSetting.USER_TIMEOUT if isinstance(bad, (int, float)) else TCPSetting.CONGESTION_CONTROL
            p.client.request_tcp_setting(setting, bad)
    fallback = _fallback_pair()
    with pytest.raises(UsageError):
        fallback.client.request_tcp_setting(TCPSetting.USER_TIMEOUT, 1000)


def _fallback_pair() -> TCPLSPair:
    c, s = tcpls_configs(None, {"enable": False})
    p = TCPLSPair(c, s)
    p.pump()
    assert p.client.mode == "tls"
    return p


def test_request_survives_failover():
    """A TCP Setting lost with its connection goes out again on another one."""
    p = _pair()
    cid = p.join()
    p.dropped.add(cid)
    frame = F.TCPSettingFrame(5, TCPSetting.USER_TIMEOUT, 0, (3000).to_bytes(4, "big"))
    p.client._tcp_requests[5] = frame
    p.client._send_record(p.client._conns[cid], [frame], [], p.now)
    p.pump()
    assert not of_type(p.server_events, ev.TCPSettingRequested)
    p.client.fail_connection(cid, p.now, "test")
    p.pump()
    (req,) = of_type(p.server_events, ev.TCPSettingRequested)
    assert (req.request_id, req.value, req.conn_id) == (5, 3000, 0)
    p.server.answer_tcp_setting(5, TCPSettingStatus.APPLIED, "ok")
    p.pump()
    assert [a.request_id for a in of_type(p.client_events, ev.TCPSettingAnswered)] == [5]


# ----------------------------------------------------------------- policy
def test_default_policy(monkeypatch, tmp_path):
    allowed = tmp_path / "allowed"
    allowed.write_text("reno bbr\n")
    monkeypatch.setattr(tcp_settings, "ALLOWED_CC_PATH", str(allowed))
    monkeypatch.setattr(tcp_settings.allowed_congestion_control, "__defaults__", (str(allowed),))
    pol = tcp_settings.default_policy
    assert pol(TCPSetting.USER_TIMEOUT, 2000, None) is None
    assert pol(TCPSetting.USER_TIMEOUT, 0, None) is None
    assert "outside" in pol(TCPSetting.USER_TIMEOUT, 5, None)
    assert "outside" in pol(TCPSetting.USER_TIMEOUT, 10**9, 0)
    assert pol(TCPSetting.CONGESTION_CONTROL, "reno", None) is None
    assert "not allowed" in pol(TCPSetting.CONGESTION_CONTROL, "cubic", None)


def test_handle_request_hook_and_failure():
    class Sock:
        def __init__(self, fail=False):
            self.calls, self.fail = [], fail

        def setsockopt(self, *a):
            if self.fail:
                raise OSError(1, "Operation not permitted")
            self.calls.append(a)

    s = Sock()
    status, reason = tcp_settings.handle_request(lambda *a: "never", TCPSetting.USER_TIMEOUT, 1000, None, [s])
    assert (status, reason) == (TCPSettingStatus.REFUSED, "never") and not s.calls
    status, _ = tcp_settings.handle_request(lambda *a: None, TCPSetting.USER_TIMEOUT, 1000, None, [s, Sock()])
    assert status == TCPSettingStatus.APPLIED and s.calls[0][2] == 1000
    status, reason = tcp_settings.handle_request(lambda *a: None, TCPSetting.USER_TIMEOUT, 1000, None, [Sock(fail=True)])
    assert status == TCPSettingStatus.FAILED and "not permitted" in reason

    real = socket.socket()
    try:
        status, reason = tcp_settings.handle_request(lambda *a: None, TCPSetting.USER_TIMEOUT, (1 << 32) - 1, None, [real])
    finally:
        real.close()
    assert status == TCPSettingStatus.FAILED and "setsockopt failed" in reason

    def broken(*a):
        raise RuntimeError("bug in hook")

    status, reason = tcp_settings.handle_request(broken, TCPSetting.USER_TIMEOUT, 1000, None, [s])
    assert status == TCPSettingStatus.REFUSED and "bug in hook" in reason


# ----------------------------------------------------------------- addresses
def test_addresses_announced_both_directions_v4_v6_with_ports():
    p = _pair()
    p.client.advertise_address(0, "2001:db8::7", 8443)
    p.client.advertise_address(1, "192.0.2.9", 1234)
    p.server.advertise_address(0, "10.0.2.2", 4433)
    p.server.advertise_address(3, "fe80::1", 65535)
    p.pump()
    assert p.server.peer_addresses() == {0: ("2001:db8::7", 8443), 1: ("192.0.2.9", 1234)}
    assert p.client.peer_addresses() == {0: ("10.0.2.2", 4433), 3: ("fe80::1", 65535)}
    v6 = [e for e in of_type(p.server_events, ev.AddressAdvertised) if e.version == 6]
    assert v6 == [ev.AddressAdvertised(0, 6, bytes.fromhex("20010db8000000000000000000000007"), 8443)]
    p.client._control.append((None, F.RemoveAddressFrame(1)))
    p.client.flush(p.now)
    p.pump()
    assert p.server.peer_addresses() == {0: ("2001:db8::7", 8443)}
    assert ev.AddressRemoved(1) in p.server_events
    with pytest.raises(ValueError):
        p.client.advertise_address(2, "not an address", 1)


def test_tcp_setting_result_with_a_non_ascii_reason_is_decode_error():
    # Reason 0x80 (1 byte) | Length 1 | Status 0 | Request ID 0 | Type 0xF2
    with pytest.raises(DecodeError, match="not ASCII"):
        F.parse_frames(b"\x80\x01\x00\x00\x00\xf2")
    assert F.parse_frames(b"ok\x02\x00\x00\x07\xf2") == [F.TCPSettingResultFrame(7, 0, "ok")]
