"""The second ClientHello after a HelloRetryRequest must be the first one with
only the changes RFC 9846 §4.1.2 lists (new key_share, no early_data, a
cookie, updated pre_shared_key, padding); anything else is illegal_parameter.

The server tests run our own client into an HRR, then rewrite its second
ClientHello on the wire before the server sees it. The PSK rules are checked
on the comparison function directly.
"""

from __future__ import annotations

import dataclasses

import pytest

from tcpls.errors import IllegalParameter, LocalProtocolError
from tcpls.tls import extensions as X
from tcpls.tls import messages as M
from tcpls.tls.connection import TLSConnection
from tcpls.tls.enums import AlertDescription, CipherSuite, ContentType, ExtensionType as E, HandshakeType as H, NamedGroup
from tcpls.tls.handshake.retry import check_second_client_hello
from conftest import needs_openssl, run_s_client, wait_until
from tlspair import configs

HRR_KW = dict(
    c_groups=[NamedGroup.secp256r1, NamedGroup.x25519],
    c_key_share_groups=[NamedGroup.secp256r1],
    c_alpn_protocols=["h2", "http/1.1"],
    s_groups=[NamedGroup.x25519],
    s_alpn_protocols=["http/1.1"],
)


def _records(data: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    while pos < len(data):
        n = int.from_bytes(data[pos + 3 : pos + 5], "big")
        out.append((data[pos], data[pos + 5 : pos + 5 + n]))
        pos += 5 + n
    return out


def _to_second_hello(cookie: bool = False):
    """A server that sent HelloRetryRequest, and the client's answer (CCS
    record bytes, decoded second ClientHello)."""
    c, s = configs(s_hello_retry_cookie=cookie, **HRR_KW)
    client = TLSConnection(c, server_side=False, server_name="localhost")
    server = TLSConnection(s, server_side=True)
    client.start_handshake()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    prefix, ch2 = b"", None
    for ctype, body in _records(client.data_to_send()):
        if ctype == ContentType.HANDSHAKE:
            assert body[0] == H.client_hello
            ch2 = M.decode_handshake(H.client_hello, memoryview(body)[4:])
        else:
            prefix += bytes([ctype]) + b"\x03\x03" + len(body).to_bytes(2, "big") + body
    assert ch2 is not None and server._hs.hello_retry
    return server, prefix, ch2


def _feed(server: TLSConnection, prefix: bytes, ch: M.ClientHello) -> bytes:
    msg = M.encode_handshake(ch)
    server.receive_data(prefix + b"\x16\x03\x03" + len(msg).to_bytes(2, "big") + msg)
    return server.data_to_send()


def _exts(ch: M.ClientHello) -> list[tuple[int, bytes]]:
    return [(t, bytes(b)) for t, b in ch.extensions]


@pytest.mark.parametrize("cookie", [False, True])
def test_unchanged_second_hello_is_answered(cookie):
    server, prefix, ch2 = _to_second_hello(cookie)
    out = _feed(server, prefix, ch2)
    assert out and _records(out)[0][0] == ContentType.HANDSHAKE  # the ServerHello


def test_padding_may_change():
    server, prefix, ch2 = _to_second_hello()
    exts = _exts(ch2)
    exts.insert(len(exts) - 1, (E.padding, bytes(100)))
    assert _feed(server, prefix, dataclasses.replace(ch2, extensions=exts))


def _mutations():
    def reorder(ch):
        return dataclasses.replace(ch, extensions=list(reversed(_exts(ch))))

    def swap_first_two(ch):
        e = _exts(ch)
        return dataclasses.replace(ch, extensions=[e[1], e[0], *e[2:]])

    def change_alpn(ch):
        e = [(t, X.encode_alpn([b"http/1.1"]) if t == E.application_layer_protocol_negotiation else b) for t, b in _exts(ch)]
        return dataclasses.replace(ch, extensions=e)

    def drop_extension(ch):
        return dataclasses.replace(ch, extensions=[(t, b) for t, b in _exts(ch) if t != E.signature_algorithms_cert])

    def add_unknown_extension(ch):
        return dataclasses.replace(ch, extensions=[(0xFA0A, b"new"), *_exts(ch)])

    def change_supported_groups(ch):
        e = [(t, X.encode_supported_groups([NamedGroup.x25519]) if t == E.supported_groups else b) for t, b in _exts(ch)]
        return dataclasses.replace(ch, extensions=e)

    def change_suites(ch):
        return dataclasses.replace(ch, cipher_suites=list(reversed(ch.cipher_suites)))

    def drop_a_suite(ch):
        return dataclasses.replace(ch, cipher_suites=[CipherSuite.TLS_AES_128_GCM_SHA256])

    def change_random(ch):
        return dataclasses.replace(ch, random=bytes(32))

    def change_session_id(ch):
        return dataclasses.replace(ch, legacy_session_id=b"\x01" * 32)

    def change_legacy_version(ch):
        return dataclasses.replace(ch, legacy_version=0x0301)

    return [reorder, swap_first_two, change_alpn, drop_extension, add_unknown_extension, change_supported_groups,
            change_suites, drop_a_suite, change_random, change_session_id, change_legacy_version]


@pytest.mark.parametrize("mutate", _mutations(), ids=lambda f: f.__name__)
def test_other_changes_are_illegal_parameter(mutate):
    server, prefix, ch2 = _to_second_hello()
    with pytest.raises(LocalProtocolError) as err:
        _feed(server, prefix, mutate(ch2))
    assert err.value.alert == AlertDescription.illegal_parameter


# ------------------------------------------------ the comparison on its own
def _psk(*identities: bytes) -> bytes:
    ids = [X.PskIdentity(i, 7) for i in identities]
    return X.encode_pre_shared_key_ch(X.OfferedPsks(ids, [bytes(32)] * len(ids)))


def _hello(exts) -> M.ClientHello:
    return M.ClientHello(random=b"r" * 32, legacy_session_id=b"", cipher_suites=[0x1301], extensions=list(exts))


BASE = [(E.supported_versions, b"\x02\x03\x04"), (E.key_share, b"\x00\x00"), (E.psk_key_exchange_modes, b"\x01\x01")]


def test_psk_identities_may_be_dropped_or_reaged():
    first = _hello([*BASE, (E.early_data, b""), (E.pre_shared_key, _psk(b"a", b"b", b"c"))])
    for ids in ((b"a", b"b", b"c"), (b"a", b"c"), (b"b",)):
        check_second_client_hello(first, _hello([*BASE, (E.cookie, b"\x00\x01c"), (E.pre_shared_key, _psk(*ids))]))
    # every PSK dropped: the extension goes
    check_second_client_hello(first, _hello(BASE))


@pytest.mark.parametrize("ids", [(b"d",), (b"b", b"a"), (b"a", b"a")])
def test_new_or_reordered_psk_identities_are_illegal(ids):
    first = _hello([*BASE, (E.pre_shared_key, _psk(b"a", b"b"))])
    with pytest.raises(IllegalParameter):
        check_second_client_hello(first, _hello([*BASE, (E.pre_shared_key, _psk(*ids))]))


def test_pre_shared_key_may_not_appear_in_the_second_hello():
    with pytest.raises(IllegalParameter):
        check_second_client_hello(_hello(BASE), _hello([*BASE, (E.pre_shared_key, _psk(b"a"))]))


def test_early_data_may_only_disappear():
    first = _hello(BASE)
    with pytest.raises(IllegalParameter):
        check_second_client_hello(first, _hello([(E.early_data, b""), *BASE]))


# ------------------------------------------------ client side (§4.1.4, §4.2.8)
def _client(suites=(CipherSuite.TLS_AES_128_GCM_SHA256, CipherSuite.TLS_AES_256_GCM_SHA384)):
    c, _ = configs(
        c_groups=[NamedGroup.x25519, NamedGroup.secp256r1, NamedGroup.secp384r1],
        c_key_share_groups=[NamedGroup.x25519],
        c_cipher_suites=list(suites),
    )
    client = TLSConnection(c, server_side=False, server_name="localhost")
    client.start_handshake()
    client.data_to_send()
    return client


def _server_hello(client, *, retry: bool, suite=CipherSuite.TLS_AES_128_GCM_SHA256, group=NamedGroup.secp256r1, extra=()):
    from tcpls.tls.enums import HELLO_RETRY_REQUEST_RANDOM, TLS_1_3

    exts = [(E.supported_versions, X.encode_supported_versions_sh(TLS_1_3))]
    if group is not None:
        share = X.encode_key_share_hrr(group) if retry else X.encode_key_share_sh((group, b"\x04" + bytes(64)))
        exts.append((E.key_share, share))
    sh = M.ServerHello(
        random=HELLO_RETRY_REQUEST_RANDOM if retry else bytes(range(32)),
        legacy_session_id_echo=client._hs.session_id,
        cipher_suite=suite,
        extensions=exts + list(extra),
    )
    msg = M.encode_handshake(sh)
    return b"\x16\x03\x03" + len(msg).to_bytes(2, "big") + msg


def _client_alert(client, *wire: bytes) -> int:
    with pytest.raises(LocalProtocolError) as err:
        for w in wire:
            client.receive_data(w)
    return err.value.alert


def test_client_answers_a_valid_hello_retry_request():
    client = _client()
    client.receive_data(_server_hello(client, retry=True))
    assert client._hs.hello_retry and list(client._hs.key_shares) == [NamedGroup.secp256r1]
    assert client.data_to_send()


@pytest.mark.parametrize(
    "kw,alert",
    [
        (dict(group=NamedGroup.x448), AlertDescription.illegal_parameter),  # not in supported_groups
        (dict(group=NamedGroup.x25519), AlertDescription.illegal_parameter),  # a share was already sent
        (dict(group=None), AlertDescription.illegal_parameter),  # no change to the ClientHello
        (dict(suite=CipherSuite.TLS_CHACHA20_POLY1305_SHA256), AlertDescription.illegal_parameter),  # not offered
        (dict(extra=[(E.early_data, b"")]), AlertDescription.unsupported_extension),  # not offered
        (dict(extra=[(E.server_name, b"")]), AlertDescription.illegal_parameter),  # offered, not for HRR
    ],
    ids=["group-not-offered", "group-already-shared", "no-change", "suite-not-offered", "extension-not-offered",
         "extension-not-for-hrr"],
)
def test_client_refuses_bad_hello_retry_request(kw, alert):
    client = _client()
    assert _client_alert(client, _server_hello(client, retry=True, **kw)) == alert


def test_client_refuses_a_second_hello_retry_request():
    client = _client()
    client.receive_data(_server_hello(client, retry=True))
    client.data_to_send()
    hrr2 = _server_hello(client, retry=True, group=NamedGroup.secp384r1)
    assert _client_alert(client, hrr2) == AlertDescription.unexpected_message


def test_client_refuses_server_hello_with_another_suite_than_the_retry():
    client = _client()
    client.receive_data(_server_hello(client, retry=True, suite=CipherSuite.TLS_AES_256_GCM_SHA384))
    client.data_to_send()
    sh = _server_hello(client, retry=False, suite=CipherSuite.TLS_AES_128_GCM_SHA256)
    assert _client_alert(client, sh) == AlertDescription.illegal_parameter


def test_client_refuses_server_hello_with_another_group_than_the_retry():
    client = _client()
    client.receive_data(_server_hello(client, retry=True, group=NamedGroup.secp256r1))
    client.data_to_send()
    sh = _server_hello(client, retry=False, group=NamedGroup.x25519)
    assert _client_alert(client, sh) == AlertDescription.illegal_parameter


# ------------------------------------------------ real peers
@needs_openssl
def test_s_client_resumption_through_hello_retry_request(tcpls_cli_server, pki, tmp_path):
    """openssl's second ClientHello with a recomputed pre_shared_key passes the
    check: a resumed handshake with HelloRetryRequest (P-256 share, server wants x25519)."""
    leaf = pki.leaf("ec256")
    srv = tcpls_cli_server("--cert", leaf.cert_file, "--key", leaf.key_file, "--echo", "-v", "--groups", "x25519")
    sess = str(tmp_path / "sess.pem")
    base = ["-tls1_3", "-CAfile", pki.ca_file, "-servername", "localhost", "-verify_return_error", "-groups", "P-256:X25519"]
    r1 = run_s_client(srv.port, [*base, "-sess_out", sess], b"one\n", expect_text=b"\none\n", close_stdin=False)
    assert b"\none\n" in r1.stdout, r1.stderr[-2000:]
    r2 = run_s_client(srv.port, [*base, "-sess_in", sess], b"two\n", expect_text=b"\ntwo\n", close_stdin=False)
    assert b"\ntwo\n" in r2.stdout and "Reused, TLSv1.3" in r2.text, r2.text[-2000:]
    wait_until(lambda: srv.stderr.count("connected:") >= 2, what="two 'connected' log lines")
    lines = [line for line in srv.stderr.splitlines() if "connected:" in line]
    assert all("hello_retry=yes" in line and "group=x25519" in line for line in lines), lines
