"""A fatal alert reaches a peer that is still sending.

When a server rejects a message while the client is still transmitting (a
huge handshake message, say), closing the socket with unread input makes
the kernel send a TCP reset, which can destroy the alert before the client
reads it (tlsfuzzer's finished script, padding probes). The asyncio adapter
sends FIN after the alert and drains the input for a while instead, so the
client can finish sending, then reads the alert and a clean EOF.
"""

from __future__ import annotations

import socket

from conftest import DEFAULT_TIMEOUT, wait_until

# A handshake record whose ClientHello claims 2^17 + 32 bytes: over the
# server's max_handshake_message_size, rejected from its header with decode_error.
_HUGE_HELLO_START = b"\x16\x03\x01\x40\x00" + b"\x01" + (131104).to_bytes(3, "big")
_DECODE_ERROR_ALERT = b"\x15\x03\x03\x00\x02\x02\x32"


def test_alert_survives_a_client_still_sending(tcpls_cli_server, pki):
    leaf = pki.leaf("ec256")
    srv = tcpls_cli_server("--cert", leaf.cert_file, "--key", leaf.key_file, "--echo")
    with socket.create_connection(("127.0.0.1", srv.port), timeout=DEFAULT_TIMEOUT) as sock:
        sock.sendall(_HUGE_HELLO_START + bytes(0x4000 - 4))
        # the rest of the message, in full records, as a sender that does not
        # read before it has written everything would send it
        for _ in range(64):
            sock.sendall(b"\x16\x03\x03\x40\x00" + bytes(0x4000))
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received == _DECODE_ERROR_ALERT
    # The server logs the rejection after sending the alert: wait for the line.
    wait_until(lambda: "exceeds the limit" in srv.stderr, DEFAULT_TIMEOUT, "the server's log of the rejection")
