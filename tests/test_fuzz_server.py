"""Mutated ClientHellos and client flights never crash a server engine.

Real messages from our own client are mutated (byte flips, truncation,
insertion, duplication of a region) and fed to a fresh server. The only
acceptable outcomes are progress or a ``LocalProtocolError`` with its alert
queued; any other exception is a bug.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tcpls.errors import LocalProtocolError
from tcpls.tls.connection import TLSConnection

from tlspair import configs

_CLIENT_CFG, _SERVER_CFG = configs()


def _hello() -> bytes:
    client = TLSConnection(_CLIENT_CFG, server_side=False, server_name="localhost")
    client.start_handshake()
    return client.data_to_send()


HELLO = _hello()


@st.composite
def mutated(draw, base: bytes = HELLO) -> bytes:
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "set", "truncate", "insert", "duplicate"]))
        if not data:
            break
        # Positions are drawn independently of the length (flights vary in
        # size, e.g. ECDSA signatures) so that generation stays reproducible.
        pos = draw(st.integers(0, 1 << 20)) % len(data)
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[pos] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]))
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        else:
            end = min(len(data), pos + draw(st.integers(1, 40)))
            data[pos:pos] = data[pos:end]
    return bytes(data)


def _feed(server: TLSConnection, data: bytes) -> None:
    try:
        server.receive_data(data)
    except LocalProtocolError as exc:
        assert server.terminated
        assert server.data_to_send(), f"no alert queued for {exc!r}"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_client_hello(data):
    _feed(TLSConnection(_SERVER_CFG, server_side=True), data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600), st.integers(1, 64))
def test_random_bytes_in_random_pieces(data, step):
    server = TLSConnection(_SERVER_CFG, server_side=True)
    for i in range(0, len(data), step):
        if server.terminated:
            break
        _feed(server, data[i : i + step])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_client_second_flight(data):
    """A valid ClientHello, then a mutated encrypted Finished flight."""
    client = TLSConnection(_CLIENT_CFG, server_side=False, server_name="localhost")
    server = TLSConnection(_SERVER_CFG, server_side=True)
    client.start_handshake()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    flight = client.data_to_send()
    _feed(server, data.draw(mutated(flight)))
