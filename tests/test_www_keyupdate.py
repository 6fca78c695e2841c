"""``tcpls server --www``: ``GET /keyupdate`` is answered after a KeyUpdate
with update_requested (RFC 9846 §4.6.3), the resource test clients such as
tlsfuzzer's keyupdate-from-server use to make a server initiate a key update.
Other paths get no KeyUpdate.
"""

from __future__ import annotations

import pytest

from conftest import needs_openssl, run_s_client
from enginepeers import EngineClient
from tcpls.tls import events as ev
from tcpls.tls.config import TLSConfig


def _get(port: int, ca_file: str, path: str) -> tuple[bytes, list]:
    """One HTTP/1.0 request through our client engine, read up to the
    server's close_notify; (response, events)."""
    cfg = TLSConfig()
    cfg.load_verify_locations(ca_file)
    cl = EngineClient.connected(("127.0.0.1", port), cfg)
    try:
        cl.send(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        cl.read_until(lambda: bool(cl.of(ev.CloseNotifyReceived)), "close_notify")
    finally:
        cl.sock.close()
    return cl.received(), cl.events


@pytest.fixture
def www(tcpls_cli_server, pki):
    leaf = pki.leaf("ec256")
    return tcpls_cli_server("--cert", leaf.cert_file, "--key", leaf.key_file, "--www")


def test_get_keyupdate_updates_both_directions(www, pki):
    body, events = _get(www.port, pki.ca_file, "/keyupdate")
    assert body.startswith(b"HTTP/1.0 200") and b"GET /keyupdate" in body
    updates = [e.direction for e in events if isinstance(e, ev.KeyUpdated)]
    # the server's KeyUpdate (our receive key), then our answer to update_requested
    assert updates == ["receive", "send"], updates


def test_other_paths_get_no_keyupdate(www, pki):
    body, events = _get(www.port, pki.ca_file, "/")
    assert body.startswith(b"HTTP/1.0 200")
    assert not [e for e in events if isinstance(e, ev.KeyUpdated)]


@needs_openssl
def test_s_client_sees_the_keyupdate(www, pki):
    res = run_s_client(
        www.port,
        ["-tls1_3", "-msg", "-CAfile", pki.ca_file, "-servername", "localhost", "-verify_return_error", "-ign_eof"],
        b"GET /keyupdate HTTP/1.0\r\n\r\n",
        expect_text=b"</html>",
    )
    text = res.text
    assert "<<< TLS 1.3, Handshake [length 0005], KeyUpdate" in text and "</html>" in text, text[-3000:]
