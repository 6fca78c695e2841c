"""Illegal transitions: every handshake message in every state.

A server (or client) engine is driven to each state of its peer's handshake
through a real exchange whose messages are captured one by one. Then a
message that the state does not allow is injected, protected with the key
the victim expects. The victim must raise ``LocalProtocolError`` with
unexpected_message, queue the alert, and end up ``terminated``. Random bytes
in any state may only ever produce a ``LocalProtocolError``.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpls.errors import LocalProtocolError
from tcpls.tls import messages as M
from tcpls.tls.connection import TLSConnection
from tcpls.tls.enums import AlertDescription as A
from tcpls.tls.enums import HandshakeType as H
from tcpls.tls.enums import NamedGroup
from tcpls.tls.protection import RecordEncryptor
from tcpls.tls.record import encode_plaintext_records

from tlspair import configs

CCS = b"\x14\x03\x03\x00\x01\x01"


class Recorder:
    """Wraps a connection's send_handshake to capture each message."""

    def __init__(self, conn: TLSConnection) -> None:
        self.messages: list[bytes] = []
        orig = conn.send_handshake

        def send_handshake(data: bytes) -> None:
            self.messages.append(bytes(data))
            orig(data)

        conn.send_handshake = send_handshake  # type: ignore[method-assign]
        conn._hs.sink = conn  # the handshake calls through the connection object


def _captured_handshake(request_cert: bool = False):
    """Run one full handshake; return the messages each side sent and the secrets."""
    c, s = configs(s_request_client_certificate=request_cert)
    client = TLSConnection(c, server_side=False, server_name="localhost")
    server = TLSConnection(s, server_side=True)
    rc, rs = Recorder(client), Recorder(server)
    client.start_handshake()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    assert client.handshake_complete and server.handshake_complete
    return c, s, client, server, rc.messages, rs.messages


# Valid bodies for every handshake type, to inject where they do not belong.
def _samples(cm: list[bytes], sm: list[bytes]) -> dict[int, bytes]:
    by_type = {m[0]: m for m in cm + sm}
    by_type[H.key_update] = M.encode_handshake(M.KeyUpdate(0))
    by_type[H.end_of_early_data] = M.encode_handshake(M.EndOfEarlyData())
    by_type[H.new_session_ticket] = M.encode_handshake(M.NewSessionTicket(7200, 1, b"n", b"ticket", []))
    by_type[H.certificate_request] = M.encode_handshake(
        M.CertificateRequest(b"", [(13, b"\x00\x02\x04\x03")])
    )
    by_type[H.compressed_certificate] = M.encode_handshake(M.CompressedCertificate(1, 100, b"compressed"))
    by_type[99] = b"\x63\x00\x00\x00"  # unassigned type
    return by_type


def _client_at(step: int):
    """A fresh client that has processed the first ``step`` server messages.

    Server messages: 0 ServerHello (plaintext), 1 EE, 2 Certificate, 3 CV, 4 Finished.
    Returns the client and a function that protects a message with the key
    the client expects next.
    """
    c, s, _, srv, cm, sm = _captured_handshake()
    client = TLSConnection(c, server_side=False, server_name="localhost")
    client.start_handshake()
    # Reuse the captured ClientHello's randomness is not possible; run the
    # real server against this client instead and split its flight.
    server = TLSConnection(s, server_side=True)
    rs = Recorder(server)
    server.receive_data(client.data_to_send())
    flight = rs.messages  # SH, EE, Cert, CV, Fin
    hs = server._hs
    suite = hs.suite
    client.receive_data(_plain(flight[0]))
    enc = RecordEncryptor(suite, hs.server_hs_secret)
    for m in flight[1 : step + 1]:
        client.receive_data(_seal(enc, m))
    if step >= 4:
        enc = RecordEncryptor(suite, hs.server_app_secret)
    return client, (lambda data: _seal(enc, data)), _samples(cm, sm)


def _plain(msg: bytes) -> bytes:
    out: list = []
    encode_plaintext_records(22, msg, out)
    return b"".join(out)


def _seal(enc: RecordEncryptor, msg: bytes) -> bytes:
    out: list = []
    enc.seal(22, msg, out)
    return b"".join(out)


CLIENT_ALLOWED = {
    1: {H.certificate, H.certificate_request},  # after EE
    2: {H.certificate_verify},
    3: {H.finished},
    4: {H.new_session_ticket, H.key_update},  # connected
}
ALL_TYPES = [int(t) for t in H if t != H.message_hash] + [99]


def _expect_unexpected(conn: TLSConnection, data: bytes) -> None:
    with pytest.raises(LocalProtocolError) as ei:
        conn.receive_data(data)
    assert ei.value.alert == A.unexpected_message, ei.value
    assert conn.terminated
    assert conn.data_to_send(), "the alert was queued"


@pytest.mark.parametrize(
    "step,msg_type", [(st_, t) for st_ in (1, 2, 3, 4) for t in ALL_TYPES if t not in CLIENT_ALLOWED[st_]]
)
def test_client_rejects_illegal_message(step, msg_type):
    client, protect, samples = _client_at(step)
    _expect_unexpected(client, protect(samples[msg_type]))


@pytest.mark.parametrize("msg_type", [t for t in ALL_TYPES if t != H.server_hello])
def test_client_waiting_for_server_hello(msg_type):
    c, s, _, _, cm, sm = _captured_handshake()
    client = TLSConnection(c, server_side=False, server_name="localhost")
    client.start_handshake()
    _expect_unexpected(client, _plain(_samples(cm, sm)[msg_type]))


@pytest.mark.parametrize("msg_type", [t for t in ALL_TYPES if t != H.client_hello])
def test_server_waiting_for_client_hello(msg_type):
    c, s, _, _, cm, sm = _captured_handshake()
    server = TLSConnection(s, server_side=True)
    _expect_unexpected(server, _plain(_samples(cm, sm)[msg_type]))


def _server_waiting_for_finished():
    c, s, _, _, cm, sm = _captured_handshake()
    client = TLSConnection(c, server_side=False, server_name="localhost")
    server = TLSConnection(s, server_side=True)
    client.start_handshake()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    client.data_to_send()  # drop the client's Finished
    suite = client._hs.suite
    enc = RecordEncryptor(suite, client._hs.client_hs_secret)
    return server, client, enc, _samples(cm, sm)


@pytest.mark.parametrize("msg_type", [t for t in ALL_TYPES if t != H.finished])
def test_server_waiting_for_finished(msg_type):
    server, _, enc, samples = _server_waiting_for_finished()
    _expect_unexpected(server, _seal(enc, samples[msg_type]))


@pytest.mark.parametrize("msg_type", [t for t in ALL_TYPES if t != H.key_update])
def test_server_connected(msg_type):
    c, s, client, server, cm, sm = _captured_handshake()
    enc = RecordEncryptor(client._hs.suite, client._hs.client_app_secret)
    _expect_unexpected(server, _seal(enc, _samples(cm, sm)[msg_type]))


def test_application_data_before_keys():
    c, s = configs()
    server = TLSConnection(s, server_side=True)
    out: list = []
    encode_plaintext_records(23, b"hello", out)
    _expect_unexpected(server, b"".join(out))


def test_change_cipher_spec_after_handshake():
    c, s, client, server, _, _ = _captured_handshake()
    _expect_unexpected(server, b"\x14\x03\x03\x00\x01\x01")


def test_handshake_message_spanning_key_change():
    """ServerHello and the start of the next message in one plaintext record."""
    c, s = configs()
    client = TLSConnection(c, server_side=False, server_name="localhost")
    client.start_handshake()
    server = TLSConnection(s, server_side=True)
    rs = Recorder(server)
    server.receive_data(client.data_to_send())
    _expect_unexpected(client, _plain(rs.messages[0] + rs.messages[1][:3]))


@settings(max_examples=150, deadline=None)
@given(step=st.integers(0, 4), junk=st.binary(min_size=1, max_size=300), protect=st.booleans())
def test_random_input_never_crashes(step, junk, protect):
    client, protector, _ = _client_at(step) if step else (None, None, None)
    if client is None:
        c, s = configs()
        client = TLSConnection(c, server_side=False, server_name="localhost")
        client.start_handshake()
        data = _plain(junk) if protect else junk
    else:
        data = protector(junk) if protect else junk
    try:
        client.receive_data(data)
    except LocalProtocolError:
        assert client.terminated


def test_empty_alert_is_unexpected_message():
    c, s, client, server, _, _ = _captured_handshake()
    enc = RecordEncryptor(client._hs.suite, client._hs.client_app_secret)
    # seal() refuses to build an empty alert, so protect one by hand.
    inner = b"\x15" + bytes(5)  # content type alert followed by zero padding
    header = b"\x17\x03\x03" + (len(inner) + 16).to_bytes(2, "big")
    nonce = (enc._iv ^ enc.seq).to_bytes(12, "big")
    record = header + enc._aead.encrypt(nonce, inner, header)
    _expect_unexpected(server, record)


def test_record_between_handshake_fragments():
    """RFC 9846 §5.1: a KeyUpdate split over two records with application data between."""
    c, s, client, server, _, _ = _captured_handshake()
    enc = RecordEncryptor(client._hs.suite, client._hs.client_app_secret)
    ku = M.encode_handshake(M.KeyUpdate(0))
    out: list = []
    enc.seal(22, ku[:2], out)
    enc.seal(23, b"data", out)
    enc.seal(22, ku[2:], out)
    _expect_unexpected(server, b"".join(out))


def test_change_cipher_spec_after_hello_retry_and_after_server_hello():
    """RFC 9846 §5, appendix D.4: a CCS may come "at any time" in the
    handshake and is dropped. Java's JSSE server sends one after its
    HelloRetryRequest and another after its ServerHello."""
    c, s = configs(s_groups=[NamedGroup.secp384r1])
    client = TLSConnection(c, server_side=False, server_name="localhost")
    server = TLSConnection(s, server_side=True)
    client.start_handshake()
    server.receive_data(client.data_to_send())  # -> HelloRetryRequest + CCS
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())  # second ClientHello (+ the client's CCS)
    flight = server.data_to_send()
    sh_end = 5 + int.from_bytes(flight[3:5], "big")
    assert flight[0] == 22 and flight[sh_end] == 23  # ServerHello, then protected records
    client.receive_data(flight[:sh_end] + CCS + flight[sh_end:])  # a second CCS, after ServerHello
    assert client.handshake_complete and client.hello_retry
    server.receive_data(client.data_to_send())
    assert server.handshake_complete


def test_two_change_cipher_specs_in_a_row_are_refused():
    """Compatibility mode never sends two CCS records without a handshake
    record between them (appendix D.4)."""
    c, s = configs()
    client = TLSConnection(c, server_side=False, server_name="localhost")
    server = TLSConnection(s, server_side=True)
    client.start_handshake()
    server.receive_data(client.data_to_send())
    server.receive_data(CCS)  # the compatibility CCS is dropped
    _expect_unexpected(server, CCS)


def test_plaintext_application_data_during_handshake_any_version():
    """A zero-length application_data record between ClientHello fragments."""
    c, s = configs()
    server = TLSConnection(s, server_side=True)
    client = TLSConnection(c, server_side=False, server_name="localhost")
    client.start_handshake()
    hello_message = client.data_to_send()[5:]  # the ClientHello without its record header
    server.receive_data(_plain(hello_message[:2]))  # first fragment in its own record
    _expect_unexpected(server, b"\x17\x03\x01\x00\x00")
