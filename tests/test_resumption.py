"""Session tickets, resumption, external PSKs, 0-RTT and exporters with
in-memory client/server engines (RFC 9846 §2.2, §2.3, §4.2.9-§4.2.11,
§4.6.1, §7.5, §8)."""

from __future__ import annotations

import dataclasses
import os

import pytest

from tcpls.errors import LocalProtocolError, RemoteAlert, UsageError
from tcpls.tls import events as ev
from tcpls.tls.config import TLSConfig
from tcpls.tls.connection import TLSConnection
from tcpls.tls.enums import AlertDescription as A
from tcpls.tls.enums import CipherSuite, NamedGroup, PskKeyExchangeMode
from tcpls.tls.session import AntiReplay, ExternalPSK, MemoryStore, Session, TicketKeys

from tlspair import configs

T0 = 1_700_000_000.0
SHA256 = CipherSuite.TLS_AES_128_GCM_SHA256
SHA384 = CipherSuite.TLS_AES_256_GCM_SHA384


class Run:
    """A client and a server engine pumped in memory at a given ``now``."""

    def __init__(self, c_cfg: TLSConfig, s_cfg: TLSConfig, now: float = T0, session=None, early: bytes = b"", start: bool = True):
        self.client = TLSConnection(c_cfg, server_side=False, server_name="localhost", session=session)
        self.server = TLSConnection(s_cfg, server_side=True)
        self.now = now
        self.cev: list = []
        self.sev: list = []
        if early:
            self.client.send_early_data(early)
        if start:
            self.client.start_handshake(now)

    def pump(self, rounds: int = 20) -> "Run":
        for _ in range(rounds):
            moved = False
            d = self.client.data_to_send()
            if d:
                moved = True
                self.server.receive_data(d, self.now)
            self._drain()
            d = self.server.data_to_send()
            if d:
                moved = True
                self.client.receive_data(d, self.now)
            self._drain()
            if not moved:
                return self
        raise AssertionError("too many round trips")

    def _drain(self) -> None:
        for conn, into in ((self.client, self.cev), (self.server, self.sev)):
            while (e := conn.next_event()) is not None:
                into.append(e)

    def of(self, side: str, cls) -> list:
        return [e for e in (self.cev if side == "client" else self.sev) if isinstance(e, cls)]

    def data(self, side: str, cls=ev.DataReceived) -> bytes:
        return b"".join(e.data for e in self.of(side, cls))

    def exchange(self) -> None:
        a, b = os.urandom(3000), os.urandom(2000)
        self.client.send_data(a)
        self.server.send_data(b)
        self.pump()
        assert self.data("server").endswith(a) and self.data("client").endswith(b)


def first_session(c, s, now: float = T0) -> tuple[Run, Session]:
    r = Run(c, s, now).pump()
    assert r.client.handshake_complete and not r.client.session_resumed
    tickets = r.of("client", ev.SessionTicketReceived)
    assert tickets and tickets[0].session is not None
    return r, tickets[0].session


# ----------------------------------------------------------------- tickets
def test_server_sends_two_tickets_by_default_and_resumption_works():
    c, s = configs(c_alpn_protocols=["h2"], s_alpn_protocols=["h2"])
    r, sess = first_session(c, s)
    assert len(r.of("client", ev.SessionTicketReceived)) == 2
    assert r.client.session is r.client.sessions[-1]
    assert sess.alpn_protocol == "h2" and sess.server_name == "localhost" and sess.cipher_suite == r.client.cipher_suite
    r2 = Run(c, s, T0 + 5, session=sess).pump()
    assert r2.client.session_resumed and r2.server.session_resumed
    hc = r2.of("client", ev.HandshakeComplete)[0]
    # §2.2: the PSK stands for the original authentication: the resumed
    # connection reports the server certificate the session was made with.
    assert hc.session_resumed and hc.peer_certificate_subject == "CN=localhost"
    assert r2.client.peer_certificates == r.client.peer_certificates
    assert r2.of("server", ev.HandshakeComplete)[0].session_resumed
    assert r2.client.alpn_protocol == "h2"
    assert r2.client.group == NamedGroup.x25519  # psk_dhe_ke by default
    r2.exchange()
    # a resumed connection issues fresh tickets that resume again
    sess2 = r2.client.session
    assert sess2 is not None and sess2.ticket != sess.ticket
    assert Run(c, s, T0 + 10, session=sess2).pump().client.session_resumed


@pytest.mark.parametrize("n", [0, 1, 3])
def test_num_tickets(n):
    c, s = configs(s_num_tickets=n)
    r = Run(c, s).pump()
    assert len(r.of("client", ev.SessionTicketReceived)) == n


def test_resumed_server_reports_the_ticket_holders_client_certificate():
    """A ticket issued after client authentication carries the client's
    chain: the resumed connection (no Certificate message) reports it, as it
    must not make an authenticated client look anonymous (§2.2)."""
    from tlspair import client_cert

    cert, key = client_cert("ec256")
    c, s = configs(s_require_client_certificate=True)
    c.certificate_chain, c.private_key = [cert], key
    r, sess = first_session(c, s)
    assert r.server.peer_certificates == [cert]
    r2 = Run(c, s, T0 + 5, session=sess).pump()
    assert r2.server.session_resumed and r2.server.peer_certificates == [cert]
    assert r2.of("server", ev.HandshakeComplete)[0].peer_certificate_subject == cert.subject.rfc4514_string()
    # and the tickets of the resumed connection carry it on
    r3 = Run(c, s, T0 + 10, session=r2.client.session).pump()
    assert r3.server.session_resumed and r3.server.peer_certificates == [cert]


def test_no_ticket_when_the_client_chain_does_not_fit_in_one():
    """A client certificate too large for a stateless ticket (ticket<1..2^16-1>):
    the server issues none rather than failing or dropping the identity."""
    from cryptography import x509

    from tcpls import _testcerts
    from tlspair import _CACHE, pki

    pki()
    ca, ca_key = _CACHE["ca"]
    padding = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\0" * 70000)
    big, key = _testcerts.make_leaf(ca, ca_key, names=["big.client"], client=True, extra_extensions=[padding])
    c, s = configs(s_require_client_certificate=True)
    c.certificate_chain, c.private_key = [big], key
    r = Run(c, s, T0).pump()
    assert r.client.handshake_complete and r.server.peer_certificates == [big]
    assert r.of("client", ev.SessionTicketReceived) == []
    r.exchange()


def test_resumed_without_client_authentication_reports_no_client_certificate():
    c, s = configs()
    _, sess = first_session(c, s)
    r2 = Run(c, s, T0 + 5, session=sess).pump()
    assert r2.server.session_resumed and r2.server.peer_certificates == []


def test_server_requiring_client_certificates_ignores_tickets_without_one():
    """A ticket issued without client authentication (by a fleet member that
    does not require it, sharing the ticket keys) must not let a client skip
    the authentication this server requires: full handshake, certificate asked."""
    from tlspair import client_cert

    cert, key = client_cert("ec256")
    c, s = configs()
    _, sess = first_session(c, s)
    strict = dataclasses.replace(s, require_client_certificate=True)
    c.certificate_chain, c.private_key = [cert], key
    r2 = Run(c, strict, T0 + 5, session=sess).pump()
    assert r2.client.handshake_complete and not r2.server.session_resumed
    assert r2.server.peer_certificates == [cert]
    # its tickets carry the certificate, and do resume on the strict server
    r3 = Run(c, strict, T0 + 10, session=r2.client.session).pump()
    assert r3.server.session_resumed and r3.server.peer_certificates == [cert]


def test_session_saved_before_peer_certificates_still_loads():
    """Sessions written without the certificate field (older files) load,
    with no peer certificates, and still resume."""
    from cryptography.hazmat.primitives.serialization import Encoding

    c, s = configs()
    r, sess = first_session(c, s)
    der = r.client.peer_certificates[0].public_bytes(Encoding.DER)
    assert sess.peer_certificates == (der,)
    old = dataclasses.replace(sess, peer_certificates=()).to_bytes()[:-3]  # no certificate list at all
    loaded = Session.from_bytes(old)
    assert loaded.peer_certificates == () and loaded.ticket == sess.ticket
    assert Run(c, s, T0 + 1, session=loaded).pump().client.session_resumed


def test_ticket_state_of_version_2_still_decodes():
    """Tickets sealed before the client chain was added (state version 2)
    still resume, without client certificates."""
    from tcpls.tls.session import TicketState

    st = TicketState(cipher_suite=SHA256, psk=b"k" * 32, ticket_age_add=7, created_at=T0, lifetime=3600,
                     peer_certificates=(b"\x30\x03abc",))
    assert TicketState.decode(st.encode()) == st
    v2 = b"\x02" + dataclasses.replace(st, peer_certificates=()).encode()[1:-3]
    assert TicketState.decode(v2) == dataclasses.replace(st, peer_certificates=())
    assert TicketState.decode(st.encode()[:-1]) is None


def test_session_serialises():
    c, s = configs()
    _, sess = first_session(c, s)
    blob = sess.to_bytes()
    again = Session.from_bytes(blob)
    assert again == sess
    with pytest.raises(ValueError):
        Session.from_bytes(blob[:-1])
    with pytest.raises(ValueError):
        Session.from_bytes(b"nonsense")
    assert Run(c, s, T0 + 1, session=again).pump().client.session_resumed


@pytest.mark.parametrize("suite", [SHA256, SHA384], ids=lambda x: x.name)
def test_each_ticket_psk_is_the_one_the_server_sealed(suite):
    """§4.6.1: PSK = HKDF-Expand-Label(resumption_secret, "resumption",
    ticket_nonce, Hash.length): one per ticket, the same on both sides (the
    client derives it when the session is first used)."""
    from tcpls.tls.session import TicketState

    c, s = configs(c_cipher_suites=[suite], s_num_tickets=3)
    r, _ = first_session(c, s)
    sessions = [e.session for e in r.of("client", ev.SessionTicketReceived)]
    psks = [sess.psk for sess in sessions]
    assert len(set(psks)) == 3 and all(len(p) == (48 if suite == SHA384 else 32) for p in psks)
    for sess, psk in zip(sessions, psks):
        state = TicketState.decode(s.ticket_keys.open(sess.ticket))
        assert state is not None and state.psk == psk
        assert Session.from_bytes(sess.to_bytes()).psk == psk
        assert Run(c, s, T0 + 1, session=sess).pump().server.session_resumed


def test_session_from_config():
    c, s = configs()
    _, sess = first_session(c, s)
    c2 = dataclasses.replace(c, session=sess, _cache={})
    assert Run(c2, s, T0 + 1).pump().server.session_resumed


@pytest.mark.parametrize("suite", [SHA256, SHA384, CipherSuite.TLS_CHACHA20_POLY1305_SHA256], ids=lambda x: x.name)
def test_resumption_each_suite(suite):
    c, s = configs(c_cipher_suites=[suite])
    _, sess = first_session(c, s)
    r = Run(c, s, T0 + 1, session=sess).pump()
    assert r.client.session_resumed and r.client.cipher_suite == suite
    r.exchange()


def test_ticket_hash_must_match_offered_suites():
    c, s = configs(c_cipher_suites=[SHA384])
    _, sess = first_session(c, s)
    c2, _ = configs(c_cipher_suites=[SHA256])
    r = Run(c2, s, T0 + 1, session=sess).pump()  # not offered: full handshake
    assert r.client.handshake_complete and not r.client.session_resumed


def test_psk_ke_mode_without_dhe():
    modes = [PskKeyExchangeMode.psk_ke]
    c, s = configs(c_psk_key_exchange_modes=modes, s_psk_key_exchange_modes=[PskKeyExchangeMode.psk_dhe_ke, PskKeyExchangeMode.psk_ke])
    _, sess = first_session(c, s)
    r = Run(c, s, T0 + 1, session=sess).pump()
    assert r.client.session_resumed and r.client.group is None and r.server.group is None
    r.exchange()


def test_psk_ke_only_client_sends_no_key_share_and_falls_back_with_hello_retry():
    """§4.2.8/§4.2.9: offering a PSK for psk_ke only, the client sends an empty
    client_shares; a server that refuses the ticket asks for a share with a
    HelloRetryRequest and the full handshake follows."""
    from tcpls.tls import extensions as X
    from tcpls.tls import messages as M
    from tcpls.tls.enums import ExtensionType

    modes = [PskKeyExchangeMode.psk_ke]
    c, s = configs(c_psk_key_exchange_modes=modes, s_psk_key_exchange_modes=modes)
    first, sess = first_session(c, s)
    assert first.client.group == NamedGroup.x25519  # no PSK offered: a share is sent
    r = Run(c, s, T0 + 1, session=sess, start=False)
    r.client.start_handshake(T0 + 1)
    wire = r.client.data_to_send()
    hello = M.decode_handshake(1, wire[5 + 4 :])
    assert X.decode_key_share_ch(dict(hello.extensions)[ExtensionType.key_share]) == []
    r.server.receive_data(wire, r.now)
    r.pump()
    assert r.client.session_resumed and not r.client.hello_retry and r.client.group is None
    r.exchange()
    # The ticket refused (other ticket keys): HelloRetryRequest for x25519, then a full handshake.
    s2 = dataclasses.replace(s, ticket_keys=TicketKeys(), _cache={})
    r2 = Run(c, s2, T0 + 2, session=sess).pump()
    assert r2.client.handshake_complete and not r2.client.session_resumed
    assert r2.client.hello_retry and r2.client.group == NamedGroup.x25519 and r2.client.peer_certificates
    r2.exchange()


def test_server_prefers_dhe_when_both_offered():
    both = [PskKeyExchangeMode.psk_dhe_ke, PskKeyExchangeMode.psk_ke]
    c, s = configs(c_psk_key_exchange_modes=both, s_psk_key_exchange_modes=both)
    _, sess = first_session(c, s)
    r = Run(c, s, T0 + 1, session=sess).pump()
    assert r.client.session_resumed and r.client.group is not None


def test_no_common_psk_mode_means_no_tickets():
    c, s = configs(c_psk_key_exchange_modes=[PskKeyExchangeMode.psk_ke])
    r = Run(c, s).pump()
    assert r.client.handshake_complete and not r.of("client", ev.SessionTicketReceived)


def test_stateful_tickets_are_single_use():
    store = MemoryStore()
    c, s = configs(s_ticket_store=store)
    r, sess = first_session(c, s)
    assert len(store) == 2
    assert Run(c, s, T0 + 1, session=sess).pump().client.session_resumed
    again = Run(c, s, T0 + 2, session=sess).pump()
    assert again.client.handshake_complete and not again.client.session_resumed


def test_unknown_ticket_falls_back_to_full_handshake():
    c, s = configs()
    _, sess = first_session(c, s)
    s2 = dataclasses.replace(s, ticket_keys=TicketKeys(), _cache={})
    r = Run(c, s2, T0 + 1, session=sess).pump()
    assert r.client.handshake_complete and not r.client.session_resumed
    assert r.client.peer_certificates


def test_expired_ticket_is_not_offered_and_not_accepted():
    c, s = configs(s_ticket_lifetime=60)
    _, sess = first_session(c, s)
    assert sess.lifetime == 60
    assert not Run(c, s, T0 + 61, session=sess).pump().client.session_resumed
    # a client that ignores the lifetime: the server still refuses
    liar = dataclasses.replace(sess, lifetime=3600)
    r = Run(c, s, T0 + 200, session=liar).pump()
    assert r.client.handshake_complete and not r.client.session_resumed


def test_ticket_keys_rotate_and_old_keys_still_open():
    keys = TicketKeys(rotation=100)
    c, s = configs(s_ticket_keys=keys)
    _, old = first_session(c, s, T0)
    _, new = first_session(c, s, T0 + 150)  # rotated
    assert old.ticket[:16] != new.ticket[:16]
    assert Run(c, s, T0 + 160, session=old).pump().client.session_resumed


def test_sni_mismatch_is_not_resumed():
    c, s = configs()
    _, sess = first_session(c, s)
    other = dataclasses.replace(sess, server_name="other.example")
    r = Run(c, s, T0 + 1, session=other).pump()
    assert not r.client.session_resumed


def test_bad_binder_is_decrypt_error():
    c, s = configs()
    _, sess = first_session(c, s)
    forged = dataclasses.replace(sess, psk=bytes(len(sess.psk)))
    r = Run(c, s, T0 + 1, session=forged)
    with pytest.raises(LocalProtocolError) as ei:
        r.server.receive_data(r.client.data_to_send(), r.now)
    assert ei.value.alert == A.decrypt_error
    with pytest.raises(RemoteAlert):
        r.client.receive_data(r.server.data_to_send(), r.now)


def test_pre_shared_key_must_be_last():
    c, s = configs()
    _, sess = first_session(c, s)
    r = Run(c, s, T0 + 1, session=sess)
    data = bytearray(r.client.data_to_send())
    # swap the order of the last two extensions? simpler: append a trailing
    # unknown extension by re-encoding the ClientHello
    from tcpls.tls import messages as M
    from tcpls.tls.enums import HandshakeType as H

    body = memoryview(bytes(data))[5 + 4 :]
    ch = M.decode_handshake(H.client_hello, body)
    ch.extensions.append((0xFAFA, b""))
    rec = M.encode_handshake(ch)
    wire = b"\x16\x03\x01" + len(rec).to_bytes(2, "big") + rec
    with pytest.raises(LocalProtocolError) as ei:
        r.server.receive_data(wire, r.now)
    assert ei.value.alert == A.illegal_parameter


@pytest.mark.parametrize("cookie", [True, False])
def test_hello_retry_with_psk(cookie):
    c, s = configs(
        c_groups=[NamedGroup.secp256r1, NamedGroup.x25519],
        c_key_share_groups=[NamedGroup.secp256r1],
        s_hello_retry_cookie=cookie,
    )
    _, sess = first_session(c, s)
    s.groups = [NamedGroup.x25519]
    r = Run(c, s, T0 + 1, session=sess).pump()
    assert r.client.hello_retry and r.client.session_resumed and r.server.session_resumed
    assert r.client.group == NamedGroup.x25519
    r.exchange()


def test_hello_retry_with_stateful_ticket():
    c, s = configs(c_key_share_groups=[NamedGroup.secp256r1], s_ticket_store=MemoryStore())
    _, sess = first_session(c, s)
    s.groups = [NamedGroup.x448]
    r = Run(c, s, T0 + 1, session=sess).pump()
    assert r.client.hello_retry and r.client.session_resumed


# ----------------------------------------------------------------- external PSK
KEY = bytes(range(32))


def psk_configs(hash_name="sha256", *, server_cert=False, identity=b"client1", key=KEY, modes=None, **kw):
    c = TLSConfig(psk=ExternalPSK(identity, key, hash_name), **{k[2:]: v for k, v in kw.items() if k.startswith("c_")})
    table = {b"client1": ExternalPSK(b"client1", KEY, hash_name)}
    if server_cert:
        _, s = configs()
        s.psk_lookup = table.get
    else:
        s = TLSConfig(psk_lookup=table.get, **{k[2:]: v for k, v in kw.items() if k.startswith("s_")})
    if modes:
        c.psk_key_exchange_modes = s.psk_key_exchange_modes = modes
    return c, s


@pytest.mark.parametrize("hash_name", ["sha256", "sha384"])
@pytest.mark.parametrize("mode", [PskKeyExchangeMode.psk_dhe_ke, PskKeyExchangeMode.psk_ke], ids=lambda m: m.name)
def test_external_psk(hash_name, mode):
    c, s = psk_configs(hash_name, modes=[mode])
    r = Run(c, s).pump()
    assert r.client.handshake_complete and r.client.session_resumed and r.server.session_resumed
    expected = SHA384 if hash_name == "sha384" else SHA256
    assert r.client.cipher_suite == expected
    assert (r.client.group is None) == (mode == PskKeyExchangeMode.psk_ke)
    r.exchange()


def test_external_psk_bytes_lookup_means_sha256():
    c, s = psk_configs()
    s.psk_lookup = {b"client1": KEY}.get
    assert Run(c, s).pump().client.session_resumed


def test_external_psk_wrong_key_is_decrypt_error():
    c, s = psk_configs(key=b"\x01" * 32)
    r = Run(c, s)
    with pytest.raises(LocalProtocolError) as ei:
        r.server.receive_data(r.client.data_to_send(), r.now)
    assert ei.value.alert == A.decrypt_error


def test_external_psk_unknown_identity_psk_only_server_fails():
    c, s = psk_configs(identity=b"nobody")
    r = Run(c, s)
    with pytest.raises(LocalProtocolError) as ei:
        r.server.receive_data(r.client.data_to_send(), r.now)
    assert ei.value.alert == A.handshake_failure


def test_external_psk_unknown_identity_falls_back_to_certificate():
    c, s = psk_configs(identity=b"nobody", server_cert=True)
    ca = s.trust_anchors
    c.trust_anchors = ca
    r = Run(c, s).pump()
    assert r.client.handshake_complete and not r.client.session_resumed and r.client.peer_certificates


def test_external_psk_with_certificate_server_prefers_psk():
    c, s = psk_configs(server_cert=True)
    r = Run(c, s).pump()
    assert r.client.session_resumed and not r.client.peer_certificates


def test_external_psk_with_hrr():
    c, s = psk_configs(c_groups=[NamedGroup.secp256r1, NamedGroup.x25519], s_groups=[NamedGroup.x25519])
    r = Run(c, s).pump()
    assert r.client.hello_retry and r.client.session_resumed


# ----------------------------------------------------------------- 0-RTT
def early_configs(**kw):
    c, s = configs(c_alpn_protocols=["x"], s_alpn_protocols=["x"], s_max_early_data=4096, **kw)
    s.anti_replay = AntiReplay(window=10)
    return c, s


def test_early_data_accepted():
    c, s = early_configs()
    _, sess = first_session(c, s)
    assert sess.max_early_data == 4096
    r = Run(c, s, T0 + 2, session=sess, early=b"GET / early")
    r.client.send_early_data(b" and more")  # still in 0-RTT
    r.pump()
    assert r.of("client", ev.EarlyDataAccepted) and not r.of("client", ev.EarlyDataRejected)
    assert r.data("server", ev.EarlyDataReceived) == b"GET / early and more"
    assert r.data("server") == b""
    assert r.client.early_data_accepted is True and r.server.early_data_accepted is True
    assert r.client.session_resumed
    # events order: early data before the handshake completes on the server
    kinds = [type(e) for e in r.sev]
    assert kinds.index(ev.EarlyDataReceived) < kinds.index(ev.HandshakeComplete)
    assert r.client.export_early_keying_material("EXPORTER-early", b"c", 24) == r.server.export_early_keying_material(
        "EXPORTER-early", b"c", 24
    )
    r.exchange()
    with pytest.raises(UsageError):
        r.client.send_early_data(b"late")


def test_early_data_too_big_or_without_session():
    c, s = early_configs()
    _, sess = first_session(c, s)
    conn = TLSConnection(c, server_side=False, server_name="localhost", session=sess)
    with pytest.raises(UsageError):
        conn.send_early_data(b"x" * 5000)
    conn2 = TLSConnection(c, server_side=False, server_name="localhost")
    with pytest.raises(UsageError):
        conn2.send_early_data(b"x")


def test_server_without_early_data_issues_tickets_without_it():
    c, s = configs()
    _, sess = first_session(c, s)
    assert sess.max_early_data == 0
    with pytest.raises(UsageError):
        TLSConnection(c, server_side=False, server_name="localhost", session=sess).send_early_data(b"x")


def test_early_data_rejected_by_callback_is_skipped_and_not_resent():
    c, s = early_configs()
    _, sess = first_session(c, s)
    offers = []
    s.early_data_callback = lambda offer: offers.append(offer) or False
    r = Run(c, s, T0 + 2, session=sess, early=b"replayable request").pump()
    assert offers and offers[0].alpn_protocol == "x" and offers[0].server_name == "localhost"
    assert 1.5 < offers[0].ticket_age < 2.5
    rej = r.of("client", ev.EarlyDataRejected)
    assert rej and rej[0].data == b"replayable request"
    assert r.client.early_data_accepted is False and r.server.early_data_accepted is False
    assert r.client.session_resumed and r.server.handshake_complete
    assert r.data("server", ev.EarlyDataReceived) == b"" and r.data("server") == b""
    r.exchange()


def test_early_data_rejected_resend_option():
    c, s = early_configs(c_resend_early_data_on_reject=True)
    _, sess = first_session(c, s)
    s.early_data_callback = lambda offer: False
    r = Run(c, s, T0 + 2, session=sess, early=b"again please").pump()
    assert r.of("client", ev.EarlyDataRejected)
    assert r.data("server") == b"again please"


def test_early_data_rejected_when_server_turned_it_off():
    c, s = early_configs()
    _, sess = first_session(c, s)
    s.max_early_data = 0
    r = Run(c, s, T0 + 2, session=sess, early=b"x" * 3000).pump()
    assert r.of("client", ev.EarlyDataRejected) and r.client.session_resumed


def test_early_data_with_hello_retry_is_rejected_and_skipped():
    c, s = early_configs(c_groups=[NamedGroup.secp256r1, NamedGroup.x25519], c_key_share_groups=[NamedGroup.secp256r1])
    _, sess = first_session(c, s)
    s.groups = [NamedGroup.x25519]
    r = Run(c, s, T0 + 2, session=sess, early=b"early")
    r.pump()
    assert r.client.hello_retry and r.client.session_resumed
    assert r.of("client", ev.EarlyDataRejected) and not r.of("server", ev.EarlyDataReceived)
    r.exchange()


def test_early_data_replay_is_rejected():
    c, s = early_configs()
    _, sess = first_session(c, s)
    r = Run(c, s, T0 + 2, session=sess, early=b"pay 100")
    flight = r.client.data_to_send()
    first = TLSConnection(s, server_side=True)
    first.receive_data(flight, T0 + 2)
    got1 = [e for e in iter(first.next_event, None) if isinstance(e, ev.EarlyDataReceived)]
    replay = TLSConnection(s, server_side=True)
    replay.receive_data(flight, T0 + 3)  # an attacker replays the first flight
    got2 = [e for e in iter(replay.next_event, None) if isinstance(e, ev.EarlyDataReceived)]
    assert [e.data for e in got1] == [b"pay 100"] and got2 == []
    assert replay.early_data_accepted is False


def test_early_data_stale_client_hello_is_rejected():
    c, s = early_configs()
    _, sess = first_session(c, s)
    r = Run(c, s, T0 + 2, session=sess, early=b"old")
    flight = r.client.data_to_send()
    late = TLSConnection(s, server_side=True)
    late.receive_data(flight, T0 + 60)  # held back for a minute: outside the window
    assert not [e for e in iter(late.next_event, None) if isinstance(e, ev.EarlyDataReceived)]
    assert late.early_data_accepted is False


def test_early_data_with_stateful_single_use_tickets():
    c, s = early_configs(s_ticket_store=MemoryStore())
    _, sess = first_session(c, s)
    r = Run(c, s, T0 + 2, session=sess, early=b"once").pump()
    assert r.data("server", ev.EarlyDataReceived) == b"once"
    r2 = Run(c, s, T0 + 3, session=sess, early=b"twice").pump()
    assert r2.of("client", ev.EarlyDataRejected) and not r2.client.session_resumed


def test_server_rejects_too_much_early_data():
    c, s = early_configs()
    _, sess = first_session(c, s)
    big = dataclasses.replace(sess, max_early_data=10_000)  # a client ignoring the limit
    r = Run(c, s, T0 + 2, session=big, early=b"z" * 6000)
    with pytest.raises(LocalProtocolError) as ei:
        r.server.receive_data(r.client.data_to_send(), r.now)
    assert ei.value.alert == A.unexpected_message


def test_early_data_expired_session_reports_rejection():
    c, s = early_configs()
    _, sess = first_session(c, s)
    conn = TLSConnection(c, server_side=False, server_name="localhost", session=sess)
    conn.send_early_data(b"hello")
    conn.start_handshake(T0 + 100_000)  # expired by now
    events = list(iter(conn.next_event, None))
    assert isinstance(events[0], ev.EarlyDataRejected) and events[0].data == b"hello"


# ----------------------------------------------------------------- exporters
def test_exporters_match_and_differ_by_label_and_context():
    c, s = configs()
    r = Run(c, s).pump()
    a = r.client.export_keying_material("EXPORTER-test", b"ctx", 32)
    assert a == r.server.export_keying_material(b"EXPORTER-test", b"ctx", 32)
    assert len(r.client.export_keying_material("EXPORTER-test", b"", 100)) == 100
    assert a != r.client.export_keying_material("EXPORTER-test", b"ctx2", 32)
    assert a != r.client.export_keying_material("EXPORTER-tesT", b"ctx", 32)
    with pytest.raises(UsageError):
        r.client.export_early_keying_material("x")
    fresh = TLSConnection(c, server_side=False, server_name="localhost")
    with pytest.raises(UsageError):
        fresh.export_keying_material("x")
