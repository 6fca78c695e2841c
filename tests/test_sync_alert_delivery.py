"""The blocking APIs deliver a fatal alert to a peer that is still sending.

Closing a socket with unread input makes the kernel answer with a TCP
reset, which can destroy the alert before the peer reads it (a peer blocked
in ``sendall`` gets the reset instead). After a fatal error the blocking
TLS socket sends FIN after the alert and, on ``close()``, reads and drops
input until the peer closes or a bounded linger runs out.
"""

from __future__ import annotations

import socket
import threading
import time

from tcpls import sync
from tcpls.errors import LocalProtocolError
from tcpls.sync import socket as sync_socket
from tcpls.tls.config import TLSConfig

# A ClientHello record whose handshake header claims 2^17 + 32 bytes: over
# the server's max_handshake_message_size, rejected from its header.
_HUGE_HELLO_START = b"\x16\x03\x01\x40\x00" + b"\x01" + (131104).to_bytes(3, "big")
_DECODE_ERROR_ALERT = b"\x15\x03\x03\x00\x02\x02\x32"


def _server_config(pki) -> TLSConfig:
    config = TLSConfig()
    config.load_cert_chain(pki.leaf().cert_file, pki.leaf().key_file)
    return config


def test_blocking_server_alert_survives_a_client_still_sending(pki):
    listener = sync.create_server(("127.0.0.1", 0), _server_config(pki))
    listener.settimeout(10)
    box: dict = {}

    def serve() -> None:
        tls, _ = listener.accept()
        tls.settimeout(10)
        try:
            tls.do_handshake()
        except LocalProtocolError as exc:
            box["error"] = exc
        t0 = time.monotonic()
        tls.close()
        box["close_seconds"] = time.monotonic() - t0

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with socket.create_connection(listener.getsockname(), timeout=10) as sock:
            sock.sendall(_HUGE_HELLO_START + bytes(0x4000 - 4))
            # the rest of the message, as a sender that reads nothing before it wrote everything
            for _ in range(64):
                sock.sendall(b"\x16\x03\x03\x40\x00" + bytes(0x4000))
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
        t.join(10)
        assert not t.is_alive()
    finally:
        listener.close()
    assert received == _DECODE_ERROR_ALERT
    assert box["error"].alert == 50
    # the peer closed after reading: close() did not wait for the linger bound
    assert box["close_seconds"] < sync_socket.FAILURE_LINGER


def test_blocking_close_after_failure_is_bounded(pki):
    """A peer that keeps sending and never closes: close() returns after
    the linger bound, not never."""
    listener = sync.create_server(("127.0.0.1", 0), _server_config(pki))
    listener.settimeout(10)
    box: dict = {}
    stop = threading.Event()

    def serve() -> None:
        tls, _ = listener.accept()
        tls.settimeout(10)
        try:
            tls.do_handshake()
        except LocalProtocolError as exc:
            box["error"] = exc
        t0 = time.monotonic()
        tls.close()
        box["close_seconds"] = time.monotonic() - t0
        stop.set()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with socket.create_connection(listener.getsockname(), timeout=10) as sock:
            sock.sendall(_HUGE_HELLO_START + bytes(0x4000 - 4))
            sent = 0
            try:
                while not stop.is_set():  # keep sending, never read
                    sock.sendall(bytes(0x4000))
                    sent += 0x4000
                    time.sleep(0.01)
            except OSError:
                pass
        t.join(10)
        assert not t.is_alive()
    finally:
        listener.close()
    assert box["error"].alert == 50
    assert sync_socket.FAILURE_LINGER - 0.1 <= box["close_seconds"] < sync_socket.FAILURE_LINGER + 1.0
