"""The DTLS 1.3 connection engine (RFC 9147), sans-IO.

Theory of operation
-------------------
``DTLSConnection`` joins three existing layers; it adds only what is
specific to running the TLS 1.3 handshake over datagrams:

* :class:`~tcpls.dtls.record.RecordLayer`: epochs and record protection;
* :class:`~tcpls.dtls.handshake.HandshakeTransport`: fragmentation,
  reassembly, flights, ACKs, retransmission timers;
* the TLS 1.3 handshake state machines (``ClientHandshake`` /
  ``ServerHandshake`` with ``dtls=True``), for which this class is the
  :class:`~tcpls.tls.handshake.common.RecordSink`.

Epochs (§6.1). The state machines announce secrets, never epochs; the
secret tells which epoch it is: client_early_traffic_secret = 1,
[sender]_handshake_traffic_secret = 2, [sender]_application_traffic_secret_0
= 3, and each KeyUpdate adds one. Handshake messages are queued in the
epoch current when they are produced, so one flight may span epochs 0 and 2
(ServerHello, then EncryptedExtensions ... Finished). Old epochs stay
installed: retransmissions reuse the original epoch (§4.2.1), and the
server keeps reading epoch 2 after the handshake so that it can acknowledge
a retransmitted client Finished whose ACK was lost (§7.1).

Flights (§5.7, §7.1). After each message the state machine handled, the
messages it produced are ended as one flight:

=================================  ================  ========  ============
flight                             expect_response   responds  explicit ACK
=================================  ================  ========  ============
ClientHello1                       yes               no        —
ClientHello2 (after HRR)           yes               yes       —
ServerHello .. Finished            yes               yes       —
client Certificate .. Finished     no                yes       server ACKs
NewSessionTicket(s)                no                no        client ACKs
KeyUpdate                          no                no        peer ACKs
post-handshake CertificateRequest  yes               no        —
=================================  ================  ========  ============

KeyUpdate (§8). Ours is sent in the current epoch N; the write epoch moves
to N+1 only once the KeyUpdate is acknowledged, and no second one is sent
before that. A received KeyUpdate is acknowledged and the read epoch N+1
installed (epoch N stays readable for reordered records).

Cookies (§5.1). A server requires a cookie by default: a ClientHello
without a valid one is answered with a stateless HelloRetryRequest (see
:func:`stateless_hello_retry`, which an endpoint calls before creating any
connection) and nothing is remembered. A ClientHello carrying a valid
cookie resumes the handshake from the cookie's contents.

Errors. Invalid records are dropped (§4.5.2), never raised. A protocol
violation in an accepted record queues the fatal alert and raises
:class:`~tcpls.errors.LocalProtocolError`; a fatal alert from the peer
raises :class:`~tcpls.errors.RemoteAlert`. Either way the connection is
``terminated``.

The engine never reads a clock, opens a socket or blocks.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Optional, Sequence, Union


from ..errors import (
    BadRecordMac,
    ConnectionClosedError,
    DecodeError,
    IllegalParameter,
    InternalError,
    LocalProtocolError,
    ProtocolError,
    RemoteAlert,
    UnexpectedMessage,
    UsageError,
)
from ..tls import events as ev
from ..tls import extensions as X
from ..tls import messages as M
from ..tls.config import TLSConfig
from ..tls.enums import DTLS_1_3, AlertDescription, AlertLevel, ExtensionType as E, HandshakeType as H
from ..tls.enums import KeyUpdateRequest
from ..tls.handshake.client import ClientHandshake, ClientState
from ..tls.handshake.common import DTLS13, HandshakeQueries
from ..tls.handshake.server import ServerHandshake, encode_hello_retry_request
from ..tls.kex import SUPPORTED_GROUPS
from ..tls.key_schedule import DTLS13_LABEL_PREFIX, next_traffic_secret
from ..tls.session import Session
from ..tls.suites import SUITES, CipherSuiteInfo, suite_info
from . import events as dtls_events
from .cid import NEW_CONNECTION_ID, REQUEST_CONNECTION_ID, ConnectionIds, ConnectionIdUsage, NewConnectionId, RequestConnectionId
from .cookie import CookieContents, CookieSecret, client_hello_hash
from .handshake import FlightState, HandshakeTransport, tls_message
from .hello import ClientHelloReassembler, collect_client_hello
from .record import (
    CT_ALERT,
    CT_APPLICATION_DATA,
    CT_HANDSHAKE,
    EPOCH_APPLICATION,
    EPOCH_EARLY_DATA,
    EPOCH_HANDSHAKE,
    ReceivedRecord,
    RecordLayer,
    RecordNumber,
    WriteEpoch,
    encode_plaintext,
)

__all__ = ["DTLSConnection", "stateless_hello_retry", "cookie_is_valid", "ClientHelloReassembler"]

_PREFIX = DTLS13_LABEL_PREFIX


# --------------------------------------------------------------------------
# The first ClientHello, read without any connection state (§5.1)
# --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Hello:
    record_seq: int
    message_seq: int
    data: bytes  # TLS-format message (transcript form, §5.2)
    hello: M.ClientHello
    extensions: dict[int, bytes]


#: The last datagram :func:`_read_client_hello` read, and what it found: an
#: endpoint checks a ClientHello's cookie statelessly, then hands the same
#: datagram to the new connection, which reads it again (one entry, replaced
#: whole, so threads sharing it see either the old or the new pair).
_last_hello: Optional[tuple[bytes, Optional[_Hello]]] = None


def _read_client_hello(datagram: bytes | bytearray | memoryview) -> Optional[_Hello]:
    """The DTLS 1.3 ClientHello that ``datagram`` carries whole, in one or
    several fragments and records (§5.5; see :class:`ClientHelloReassembler`
    for one spread over several datagrams); None for anything else."""
    global _last_hello
    data = bytes(datagram)
    last = _last_hello
    if last is not None and last[0] == data:
        return last[1]
    found = _parse_client_hello(data)
    _last_hello = (data, found)
    return found


def _parse_client_hello(datagram: bytes) -> Optional[_Hello]:
    try:
        found = collect_client_hello(datagram)
        if found is None:
            return None
        record_seq, frag = found
        hello = M.decode_handshake(H.client_hello, frag.body, dtls=True)
        assert isinstance(hello, M.ClientHello)
        exts = dict(hello.extensions)
        if E.supported_versions not in exts or DTLS_1_3 not in X.decode_supported_versions_ch(exts[E.supported_versions]):
            return None
    except (ProtocolError, ValueError, IndexError):
        return None
    return _Hello(record_seq, frag.message_seq, tls_message(frag.msg_type, frag.body), hello, exts)


def _selected_config(config: TLSConfig, hello: _Hello) -> Optional[TLSConfig]:
    """The configuration ``config.select_context(server_name, alpn_offers)``
    picks for ``hello`` (the state machine asks the same question again for
    the ClientHello2); None if the callback fails."""
    if config.select_context is None:
        return config
    exts = hello.extensions
    try:
        name = X.decode_server_name(exts[E.server_name]) if E.server_name in exts else None
        alpn = exts.get(E.application_layer_protocol_negotiation)
        offers = [p.decode("latin-1") for p in X.decode_alpn(alpn)] if alpn is not None else []
        chosen = config.select_context(name, offers)
        if chosen is not None and chosen is not config:
            chosen.validate(server_side=True)
    except Exception:  # noqa: BLE001 - the state machine reports it (internal_error)
        return None
    return chosen if chosen is not None else config


def _retry_parameters(config: TLSConfig, hello: _Hello) -> Optional[tuple[int, Optional[int]]]:
    """``(suite, group)`` for a HelloRetryRequest to ``hello``: our preferred
    suite, and the group to ask a key share for (None when the client already
    sent a usable one, or offers no key_share at all: the HRR then only
    carries the cookie), both under the configuration ``select_context``
    picks (per server name / ALPN). None when nothing is in common."""
    selected = _selected_config(config, hello)
    if selected is None:
        return None
    config = selected
    offered = set(hello.hello.cipher_suites)
    suites = [s for s in config.cipher_suites if s in offered and s in SUITES]
    if not suites:
        return None
    exts = hello.extensions
    try:
        client_groups = X.decode_supported_groups(exts[E.supported_groups]) if E.supported_groups in exts else []
        shares = X.decode_key_share_ch(exts[E.key_share]) if E.key_share in exts else None
    except ProtocolError:
        return None
    usable = [g for g in config.groups if g in SUPPORTED_GROUPS]
    if shares is None or any(g in usable for g, _ in shares):
        return int(suites[0]), None
    group = next((g for g in usable if g in client_groups), None)
    if group is None:
        return None
    return int(suites[0]), int(group)


def _cookie_of(hello: _Hello) -> Optional[bytes]:
    data = hello.extensions.get(E.cookie)
    if data is None:
        return None
    try:
        return X.decode_cookie(data)
    except ProtocolError:
        return b""


_last_secret: Optional[tuple[bytes, CookieSecret]] = None


def _as_secret(secret: Union[CookieSecret, bytes, None]) -> CookieSecret:
    global _last_secret
    if isinstance(secret, CookieSecret):
        return secret
    if secret is None:
        return CookieSecret(None)
    # Connections created one by one with the same raw secret share one
    # CookieSecret, and with it the derived MAC keys (one HMAC per period,
    # not one per connection).
    last = _last_secret
    if last is not None and last[0] == secret:
        return last[1]
    made = CookieSecret(bytes(secret))
    _last_secret = (bytes(secret), made)
    return made


def _hello_retry_datagram(
    config: TLSConfig, hello: _Hello, client_address: object, secret: CookieSecret, now: float
) -> Optional[bytes]:
    """The HelloRetryRequest datagram for ``hello`` (message_seq 0, the
    ClientHello's record sequence number echoed), or None."""
    params = _retry_parameters(config, hello)
    # A legacy_session_id is allowed (a client with a cached pre-DTLS 1.3
    # session sets it) and never echoed (RFC 9147 §5.3).
    if params is None or hello.hello.legacy_cookie:
        return None
    suite, group = params
    ch_hash = client_hello_hash(suite_info(suite).hash_name, hello.data)
    cookie = secret.mint(client_address, CookieContents(suite, group, ch_hash), now)
    body = encode_hello_retry_request(DTLS13, suite, group, cookie, b"")[4:]
    fragment = bytes((H.server_hello,)) + len(body).to_bytes(3, "big") + b"\x00\x00" + b"\x00\x00\x00"
    fragment += len(body).to_bytes(3, "big") + body
    return encode_plaintext(CT_HANDSHAKE, hello.record_seq, fragment)


def stateless_hello_retry(
    config: TLSConfig,
    datagram: bytes | bytearray | memoryview,
    client_address: object,
    secret: Union[CookieSecret, bytes],
    now: float,
) -> Optional[bytes]:
    """Answer a cookieless ClientHello without keeping any state (RFC 9147 §5.1).

    Returns the HelloRetryRequest datagram (with a cookie bound to
    ``client_address``) to send back, or None: the datagram is not a
    complete DTLS 1.3 ClientHello (fragments in one datagram are reassembled;
    for fragments over several datagrams, pass each through a
    :class:`ClientHelloReassembler` first and call this with what it
    returns), it shares nothing with ``config``, or it
    already carries a cookie (check it with :func:`cookie_is_valid`, then
    create the connection with ``DTLSConnection(config, is_client=False,
    client_address=..., cookie_secret=secret)`` and feed it the datagram).
    """
    hello = _read_client_hello(datagram)
    if hello is None or _cookie_of(hello) is not None:
        return None
    return _hello_retry_datagram(config, hello, client_address, _as_secret(secret), now)


def cookie_is_valid(
    datagram: bytes | bytearray | memoryview, client_address: object, secret: Union[CookieSecret, bytes], now: float
) -> bool:
    """True if ``datagram`` is a ClientHello carrying a cookie we minted for
    ``client_address`` (recently enough). Stateless."""
    hello = _read_client_hello(datagram)
    if hello is None:
        return False
    cookie = _cookie_of(hello)
    return bool(cookie) and _as_secret(secret).open(cookie, client_address, now) is not None


# --------------------------------------------------------------------------
# The connection
# --------------------------------------------------------------------------
class _Default:
    """Marks an argument left to its role-dependent default."""

    def __repr__(self) -> str:
        return "<default>"


_DEFAULT = _Default()


class DTLSConnection(HandshakeQueries):
    """One DTLS 1.3 association, client or server. See ``docs/dtls.md``.

    Args:
        config: the TLS configuration (certificates, suites, groups, PSKs...).
        is_client: our role.
        server_name: client: SNI and the name to verify.
        session: client: a session to resume (from ``SessionTicketReceived``).
        client_address: server: the peer's transport address, bound into
            cookies.
        cookie_secret: server: the endpoint's :class:`CookieSecret` (or raw
            secret bytes); random if omitted.
        require_cookie: server: answer a ClientHello without a valid cookie
            with a stateless HelloRetryRequest (default; §5.1 SHOULD).
        connection_id: a CID the peer should put on records it sends us
            (RFC 9146; ``b""`` to accept one without asking for one); None
            disables the extension. Default: a client offers ``b""`` (RFC
            9147 §5.1: clients SHOULD offer the extension even when they do
            not want a CID, so that a server may ask for one); a server
            answers only when given one (``b""`` included).
        max_datagram_size: largest datagram we produce.
        initial_timeout: first retransmission timeout (§5.8.2).
        max_retransmissions: give up a flight after this many timeouts
            (None: never); :attr:`gave_up` then tells.
        key_update_after: records sent in one epoch before an automatic
            KeyUpdate (default: the AEAD confidentiality limit, §4.5.3).
    """

    _label_prefix = _PREFIX  # RFC 9147 §5.9: exporters use "dtls13" too

    def __init__(
        self,
        config: TLSConfig,
        *,
        is_client: bool,
        server_name: Optional[str] = None,
        session: Optional[Session] = None,
        client_address: object = None,
        cookie_secret: Union[CookieSecret, bytes, None] = None,
        require_cookie: bool = True,
        connection_id: Union[bytes, None, _Default] = _DEFAULT,
        max_datagram_size: int = 1200,
        initial_timeout: float = 1.0,
        max_retransmissions: Optional[int] = None,
        key_update_after: Optional[int] = None,
    ) -> None:
        config.validate(server_side=not is_client)
        if isinstance(connection_id, _Default):
            connection_id = b"" if is_client else None
        if connection_id is not None and len(connection_id) > 255:
            raise ValueError("a connection ID is at most 255 bytes")
        self.config = config
        self.is_client = is_client
        self.client_address = client_address
        self._require_cookie = require_cookie and not is_client
        # Only a server that asks for cookies uses the secret (a client or a
        # cookieless server skips the key setup; a secret passed is still checked).
        self._cookie_secret: Optional[CookieSecret] = (
            _as_secret(cookie_secret) if cookie_secret is not None or self._require_cookie else None
        )
        self._local_cid = connection_id
        self._key_update_after = key_update_after
        self._max_datagram_size = max_datagram_size
        self._probe_at: Optional[float] = None
        self._probe_interval = initial_timeout
        self._records = RecordLayer()
        self._transport = HandshakeTransport(
            self._records,
            max_datagram_size=max_datagram_size,
            initial_timeout=initial_timeout,
            max_retransmissions=max_retransmissions,
            max_message_size=config.max_handshake_message_size,
        )
        # Keep a few epoch 3 records arriving before the keys to read them (§4.2.1).
        self._transport.future_epoch_bits = EPOCH_APPLICATION & 3
        self._events: deque[ev.Event] = deque()
        self._keylog_path = config.get_keylog_file()
        self._suite: Optional[CipherSuiteInfo] = None
        self._read_secrets: dict[int, bytes] = {}
        self._write_secrets: dict[int, bytes] = {}
        self._pending_app: list[bytes] = []
        self._pending_close = False
        self._key_update_flight: Optional[object] = None
        self._key_update_requested = False
        self._close_number: Optional[RecordNumber] = None
        self._hello_accepted = not self._require_cookie
        # A ClientHello fragmented over datagrams, before the cookie (§5.5);
        # created when a first datagram does not carry a whole ClientHello.
        self._hello_reassembler: Optional[ClientHelloReassembler] = None
        # Anti-amplification before address validation (§5.1).
        self._address_validated = self._require_cookie
        self._bytes_received = 0
        self._bytes_sent = 0
        self._held: list[bytes] = []
        self._early_limit: Optional[int] = None
        self._early_read = 0
        self._early_sent: list[bytes] = []
        self._early_pending: list[bytes] = []
        self._started = False
        self._now = 0.0
        # The data path's cached max_data_size, valid for this write epoch and CID length.
        self._app_epoch: Optional[WriteEpoch] = None
        self._app_cid_len = 0
        self._app_max = 0
        #: Stateless HelloRetryRequests this server connection sent (§5.1).
        self.hello_retries_sent = 0
        #: Client: resumable sessions from NewSessionTickets, oldest first.
        self.sessions: list[Session] = []
        #: Negotiated connection IDs: ours (peer → us) and the peer's (us → peer).
        #: ``send_cid`` follows NewConnectionId updates (§9); see also
        #: :attr:`receive_cids`.
        self.receive_cid: Optional[bytes] = None
        self.send_cid: Optional[bytes] = None
        self._cids: Optional[ConnectionIds] = None
        self._cid_flight: Optional[object] = None
        self.handshake_complete = False
        self.peer_closed = False
        self.local_closed = False
        self.terminated = False
        self._hs: Union[ClientHandshake, ServerHandshake]
        if is_client:
            self._hs = ClientHandshake(config, self, server_name, session, dtls=True)
            self._hs.on_early_data = self._on_early_data
        else:
            self._hs = ServerHandshake(config, self, dtls=True)
        self._hs.on_key_update = self._on_key_update
        self._wire_post_handshake_callbacks(not is_client)
        self._hs.traffic_secret = self._traffic_secret
        self._hs.hello_extensions = _ConnectionIdExtension(self) if connection_id is not None else None

    # ---------------------------------------------------------------- queries
    @property
    def version(self) -> Optional[int]:
        return DTLS_1_3 if self.handshake_complete else None

    @property
    def write_epoch(self) -> int:
        return self._records.write_epoch

    @property
    def read_epochs(self) -> list[int]:
        return sorted(self._records.read_epochs)

    @property
    def receive_cids(self) -> list[bytes]:
        """CIDs of ours accepted on received records, oldest first: the
        negotiated one and those issued by NewConnectionId, minus retired
        ones (§9). Empty without a (non-empty) CID."""
        if self._cids is not None:
            return list(self._cids.receive_cids)
        return [self.receive_cid] if self.receive_cid else []

    @property
    def spare_send_cids(self) -> list[bytes]:
        """The peer's CIDs received by NewConnectionId and not used yet."""
        return list(self._cids.spare_send_cids) if self._cids is not None else []

    @property
    def gave_up(self) -> bool:
        """A flight was retransmitted ``max_retransmissions`` times in vain."""
        return self._transport.gave_up

    @property
    def drops(self) -> dict:
        """Discarded records and fragments by reason (diagnostics, §4.5.2)."""
        return dict(self._transport.drops)

    @property
    def max_data_size(self) -> int:
        """The largest ``send_data`` payload: one record in one datagram."""
        epoch = self._records.write_epoch if self._records.write_epoch >= EPOCH_APPLICATION else None
        if epoch is not None:
            overhead = self._records.overhead(epoch)
        else:  # the application suite is not known yet: the largest overhead
            overhead = 1 + len(self.send_cid or b"") + 2 + 2 + 1 + 16
        return self._max_datagram_size - overhead

    # ------------------------------------------------------------------ verbs
    def start_handshake(self, now: float = 0.0) -> None:
        """Client: send the ClientHello (with queued early data). Server: nothing."""
        if self._started:
            return
        self._started = True
        self._now = now
        hs = self._hs
        if isinstance(hs, ClientHandshake):
            self._guard(lambda: self._client_start(hs, now))

    def _client_start(self, hs: ClientHandshake, now: float) -> None:
        hs.start(now, early_data=bool(self._early_pending))
        self._end_flight(now, expect_response=True, responds=False)
        pending, self._early_pending = self._early_pending, []
        if hs.early_data_state == "offered":
            for chunk in pending:
                self._send_early(chunk)
        elif pending:
            self._emit(ev.EarlyDataRejected(b"".join(pending)))

    def send_early_data(self, data: bytes | bytearray | memoryview) -> None:
        """Client: 0-RTT data (epoch 1), before :meth:`start_handshake` or while
        0-RTT is in progress. One record per call. Replayable: see RFC 9846 §8."""
        hs = self._hs
        if not isinstance(hs, ClientHandshake):
            raise UsageError("only a client sends early data")
        data = bytes(data)
        if not self._started:
            limit = hs.can_send_early_data(check_age=False)
            if not limit:
                raise UsageError("no resumable session allowing early data")
            if sum(map(len, self._early_pending)) + len(data) > limit:
                raise UsageError(f"early data exceeds the ticket's max_early_data_size ({limit})")
            self._early_pending.append(data)
            return
        if self._records.write_epoch != EPOCH_EARLY_DATA:
            raise UsageError("0-RTT is not in progress")
        self._send_early(data)

    def _send_early(self, data: bytes) -> None:
        hs = self._hs
        assert isinstance(hs, ClientHandshake)
        if sum(map(len, self._early_sent)) + len(data) > hs.can_send_early_data():
            raise UsageError("early data exceeds the ticket's max_early_data_size")
        self._check_size(data)
        self._early_sent.append(data)
        _, record = self._records.seal(CT_APPLICATION_DATA, data, EPOCH_EARLY_DATA)
        self._transport.queue_datagram(record)

    def send_data(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` as one record in one datagram (at most :attr:`max_data_size`).

        Before the application keys exist it waits for the handshake.
        Datagrams may be lost, reordered or (never, here) duplicated: DTLS does
        not retransmit application data.

        Raises:
            UsageError: ``data`` does not fit one datagram.
            ConnectionClosedError: after :meth:`close` or a failure.
        """
        if self.terminated:
            raise ConnectionClosedError("the connection has failed")
        if self.local_closed:
            raise ConnectionClosedError("cannot send after close()")
        if type(data) is not bytes:
            data = bytes(data)
        records = self._records
        if self.handshake_complete and records.write_epoch >= EPOCH_APPLICATION:
            # The data path: one record, one datagram.
            epoch = records.write_epochs[records.write_epoch]
            cid = records.send_cid
            if epoch is not self._app_epoch or len(cid) != self._app_cid_len:
                self._app_epoch = epoch
                self._app_cid_len = len(cid)
                self._app_max = self._max_datagram_size - epoch.overhead(seq_len=records.seq_len, cid_len=len(cid))
            if len(data) > self._app_max:
                raise UsageError(f"{len(data)} bytes do not fit one datagram (at most {self._app_max})")
            self._transport.queue_datagram(epoch.protect(CT_APPLICATION_DATA, data, seq_len=records.seq_len, cid=cid))
            if epoch.records_protected >= self._key_update_at(epoch):
                self._maybe_key_update(epoch)
            return
        self._check_size(data)
        if not self.handshake_complete and not (not self.is_client and records.write_epoch >= EPOCH_APPLICATION):
            self._pending_app.append(data)
            return
        self._seal_app(data)

    def send_data_batch(self, chunks: "Sequence[bytes | bytearray | memoryview]") -> None:
        """:meth:`send_data` for each chunk (one record, one datagram each), in
        order, with the per-record work shared across the batch.

        Raises:
            UsageError: a chunk does not fit one datagram (nothing is sent).
            ConnectionClosedError: after :meth:`close` or a failure.
        """
        if self.terminated:
            raise ConnectionClosedError("the connection has failed")
        if self.local_closed:
            raise ConnectionClosedError("cannot send after close()")
        records = self._records
        if not (self.handshake_complete and records.write_epoch >= EPOCH_APPLICATION):
            for chunk in chunks:
                self.send_data(chunk)
            return
        epoch = records.write_epochs[records.write_epoch]
        limit = self._max_datagram_size - epoch.overhead(seq_len=records.seq_len, cid_len=len(records.send_cid))
        data = [c if type(c) is bytes else bytes(c) for c in chunks]
        for chunk in data:
            if len(chunk) > limit:
                raise UsageError(f"{len(chunk)} bytes do not fit one datagram (at most {limit})")
        queue = self._transport.queue_datagram
        while data:
            # Up to the KeyUpdate threshold, as send_data would (§4.5.3).
            room = self._key_update_at(epoch) - epoch.records_protected
            if room <= 0:
                room = len(data)  # past it: the KeyUpdate is under way (or we are closing)
            part, data = data[:room], data[room:]
            for record in epoch.protect_batch(CT_APPLICATION_DATA, part, seq_len=records.seq_len, cid=records.send_cid):
                queue(record)
            if epoch.records_protected >= self._key_update_at(epoch):
                self._maybe_key_update(epoch)

    def _check_size(self, data: bytes) -> None:
        if len(data) > self.max_data_size:
            raise UsageError(f"{len(data)} bytes do not fit one datagram (at most {self.max_data_size})")

    def _key_update_at(self, epoch: WriteEpoch) -> int:
        """Records after which ``epoch`` needs a KeyUpdate (§4.5.3, ``key_update_after``)."""
        limit = epoch.limits.confidentiality
        if self._key_update_after is not None:
            limit = min(limit, self._key_update_after)
        return limit

    def _seal_app(self, data: bytes) -> None:
        records = self._records
        self._transport.queue_datagram(records.protect(CT_APPLICATION_DATA, data))
        epoch = records.write_epochs[records.write_epoch]
        if epoch.records_protected >= self._key_update_at(epoch):
            self._maybe_key_update(epoch)

    def _maybe_key_update(self, epoch: WriteEpoch) -> None:
        if self._key_update_flight is None and not self.local_closed:
            self._send_key_update(False)

    def key_update(self, request_peer_update: bool = True) -> None:
        """Send a KeyUpdate (§8); our write epoch changes once it is ACKed.

        Raises:
            UsageError: before the handshake, or while a KeyUpdate is unacknowledged.
        """
        if not self.handshake_complete:
            raise UsageError("KeyUpdate is only possible after the handshake")
        if self.local_closed or self.terminated:
            raise ConnectionClosedError("connection is closed")
        if self._key_update_flight is not None:
            raise UsageError("the previous KeyUpdate is not acknowledged yet")
        self._send_key_update(request_peer_update)

    def request_client_certificate(self, required: bool = False) -> bytes:
        """Server: post-handshake client authentication (RFC 9846 §4.6.2).

        Returns the certificate_request_context; the outcome arrives as
        ``PostHandshakeAuthCompleted``.
        """
        hs = self._hs
        if not isinstance(hs, ServerHandshake):
            raise UsageError("only a server requests client certificates")
        if self.local_closed or self.terminated:
            raise ConnectionClosedError("connection is closed")
        context = hs.request_client_certificate(required)
        # The client's Certificate .. Finished answers (and acknowledges) it.
        self._end_flight(self._now, expect_response=True, responds=False)
        return context

    # -- connection IDs after the handshake (§9)
    def _cid_state(self) -> ConnectionIds:
        if not self.handshake_complete or self._cids is None:
            raise UsageError("connection ID updates need a completed handshake")
        if self.local_closed or self.terminated:
            raise ConnectionClosedError("connection is closed")
        return self._cids

    def issue_connection_ids(
        self, count: int = 1, *, cids: Optional[list[bytes]] = None, immediate: bool = False
    ) -> list[bytes]:
        """Send NewConnectionId with ``count`` new random CIDs of ours (or
        ``cids``, of the negotiated CID's length); records carrying them
        are accepted at once. ``immediate``: the peer must switch to the
        first one (``cid_immediate``), else they are spare.

        Returns the CIDs issued.

        Raises:
            UsageError: before the handshake, without a negotiated non-empty
                CID of ours, while our previous NewConnectionId is not
                acknowledged (one outstanding at most, §9), or beyond
                ``max_receive_cids`` active CIDs.
        """
        state = self._cid_state()
        if self._cid_flight is not None:
            raise UsageError("the previous NewConnectionId is not acknowledged yet")
        if not 0 < (len(cids) if cids is not None else count) <= 255:
            raise UsageError("issue 1 to 255 connection IDs at a time")
        issued = state.issue(count, cids)
        usage = ConnectionIdUsage.cid_immediate if immediate else ConnectionIdUsage.cid_spare
        self._send_new_connection_id(issued, usage, self._now)
        return issued

    def request_connection_ids(self, count: int = 1) -> None:
        """Send RequestConnectionId for ``count`` CIDs (§9); they arrive as
        :class:`~tcpls.dtls.events.ConnectionIdsReceived`.

        Raises:
            UsageError: before the handshake, when we send an empty CID or
                none was negotiated, or while a request is unfulfilled.
        """
        state = self._cid_state()
        if not state.can_request():
            raise UsageError("RequestConnectionId needs a non-empty CID to the peer and no unfulfilled request")
        if not 0 < count <= 255:
            raise UsageError("request 1 to 255 connection IDs")
        state.request_unfulfilled = True
        self._transport.send_message(REQUEST_CONNECTION_ID, RequestConnectionId(count).encode())
        self._transport.end_flight(self._now, expect_response=False, responds=False)

    def use_next_connection_id(self) -> bytes:
        """Send with the peer's oldest spare CID from now on (e.g. on a new
        path, §9). Returns it.

        Raises:
            UsageError: no spare CID from the peer.
        """
        cid = self._cid_state().next_send_cid()
        self.send_cid = self._records.send_cid = cid
        return cid

    def _send_new_connection_id(self, issued: list[bytes], usage: ConnectionIdUsage, now: float) -> None:
        assert self._cids is not None
        self._records.receive_cid_set = set(self._cids.receive_cids)
        self._transport.send_message(NEW_CONNECTION_ID, NewConnectionId(tuple(issued), usage).encode())
        self._cid_flight = self._transport.end_flight(now, expect_response=False, responds=False)
        if issued:
            self._emit(dtls_events.ConnectionIdsIssued(tuple(issued)))

    def _handle_cid_message(self, msg_type: int, body: bytes, now: float) -> None:
        """RequestConnectionId / NewConnectionId from the peer (§9)."""
        state = self._cids
        if state is None or not self.handshake_complete:
            raise UnexpectedMessage("connection ID messages without negotiated connection IDs")
        if msg_type == NEW_CONNECTION_ID:
            msg = state.on_new_connection_id(body)
            self.send_cid = self._records.send_cid = state.send_cid
            self._emit(dtls_events.ConnectionIdsReceived(msg.cids, msg.usage == ConnectionIdUsage.cid_immediate))
        else:
            state.on_request_connection_id(body)
        self._transport.send_ack(now)  # §7.1: post-handshake messages are ACKed
        self._answer_cid_request(now)

    def _answer_cid_request(self, now: float) -> None:
        """Answer the peer's RequestConnectionId with NewConnectionId
        (cid_spare) once none of ours is outstanding; fewer CIDs (possibly
        none) when it asks beyond ``max_receive_cids`` (§9 MAY)."""
        state = self._cids
        if state is None or state.peer_request is None or self._cid_flight is not None or self.local_closed:
            return
        count = min(state.peer_request, state.room())
        state.peer_request = None
        issued = state.issue(count) if count else []
        self._send_new_connection_id(issued, ConnectionIdUsage.cid_spare, now)

    def _after_cid_datagram(self, now: float) -> None:
        """Retire our CIDs the peer moved past; answer a deferred request."""
        state = self._cids
        if state is None:
            return
        flight = self._cid_flight
        if flight is not None and not self._transport.outstanding(flight):
            self._cid_flight = None
            self._answer_cid_request(now)
        if self._records.last_received_cid is not None:
            state.peer_used(self._records.last_received_cid)
            retired = state.take_retired()
            if retired:
                self._records.receive_cid_set = set(state.receive_cids)
                self._emit(dtls_events.ConnectionIdsRetired(tuple(retired)))

    def close(self) -> None:
        """Send close_notify (§5.10). Alerts are not retransmitted."""
        if self.local_closed or self.terminated:
            return
        self.local_closed = True
        if self._pending_app and not self.handshake_complete:
            self._pending_close = True  # after the queued data
        else:
            self._send_alert(AlertDescription.close_notify, AlertLevel.WARNING)

    def datagrams_to_send(self, now: float = 0.0) -> list[bytes]:
        """Datagrams to write to the socket, one ``bytes`` each (drains).

        A server that has not validated the client's address (no cookie
        exchange, no authenticated record from the client yet) sends at most
        three times what it received (§5.1); the rest waits.
        """
        out = self._transport.datagrams_to_send()
        if self._address_validated or self.is_client:
            return out
        if any(epoch.records_deprotected for epoch in self._records.read_epochs.values()):
            # The client derived the handshake keys: it got our ServerHello.
            self._address_validated = True
            self._transport.max_datagram_size = self._max_datagram_size
            held, self._held = self._held, []
            return held + out
        if out:
            # Newer output supersedes what is still held: the transport
            # retransmits anything unacknowledged on its own timer.
            self._held = out
        allowed: list[bytes] = []
        while self._held and self._bytes_sent + len(self._held[0]) <= 3 * self._bytes_received:
            d = self._held.pop(0)
            self._bytes_sent += len(d)
            allowed.append(d)
        return allowed

    def get_timer(self) -> Optional[float]:
        """When :meth:`handle_timer` should be called next (None: no timer)."""
        if self.terminated:
            return None
        times = [t for t in (self._transport.get_timer(), self._probe_at) if t is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        """Retransmit flights and send delayed ACKs that are due."""
        if self.terminated:
            return
        self._now = now
        self._transport.handle_timer(now)
        if self._probe_at is not None and self._probe_at <= now:
            # Still waiting for the rest of the server's flight: acknowledge
            # what we have (possibly nothing), which makes the server resend
            # the rest (§7.1) and, being protected, validates our address.
            self._probe_interval = min(self._probe_interval * 2, self._transport.max_timeout)
            self._probe_at = None
            self._transport.send_ack(now)
        self._arm_probe(now)

    def _arm_probe(self, now: float) -> None:
        """Client between the ServerHello and the server's Finished: nothing
        of ours is outstanding, so without this timer a lost ACK could leave
        both sides waiting (the server limited by §5.1 amplification)."""
        waiting = (
            self.is_client
            and not self.handshake_complete
            and self._transport.acks_enabled
            and self._transport.state is FlightState.FINISHED
        )
        if not waiting:
            self._probe_at = None
        elif self._probe_at is None:
            self._probe_at = now + self._probe_interval

    def next_event(self) -> Optional[ev.Event]:
        return self._events.popleft() if self._events else None

    # ------------------------------------------------------------------ input
    def receive_datagram(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """Process one datagram. Invalid records are dropped silently.

        Raises:
            LocalProtocolError: the peer violated the protocol in an accepted
                record (the fatal alert is queued).
            RemoteAlert: the peer sent a fatal alert.
        """
        if self.terminated:
            return
        self._started = True
        self._now = now
        self._bytes_received += len(data)
        if not self._address_validated and not self.is_client:
            # Cut what we send into datagrams that fit the budget (§5.1).
            budget = 3 * self._bytes_received - self._bytes_sent
            self._transport.max_datagram_size = max(min(self._max_datagram_size, budget), 256)
        if not self._hello_accepted:
            self._guard(lambda: self._receive_first_hello(bytes(data), now))
            return
        self._guard(lambda: self._receive(data, now))

    def _receive(self, data: bytes | bytearray | memoryview, now: float) -> None:
        transport = self._transport
        transport.receive_datagram(data, now)
        while True:
            msg = transport.next_message()
            if msg is not None:
                self._handle_message(msg.msg_type, msg.tls_bytes(), msg.epoch, now)
                continue
            rec = transport.next_record()
            if rec is None:
                break
            self._handle_record(rec)
        if any(e.forgery_limit_reached for e in self._records.read_epochs.values()):
            # §4.5.3: too many forgeries under one key: close the association.
            raise BadRecordMac("AEAD integrity limit reached")
        self._check_key_update_acked()
        self._after_cid_datagram(now)
        self._arm_probe(now)

    def _receive_first_hello(self, data: bytes, now: float) -> None:
        """Server before a valid cookie (§5.1): stateless until it comes,
        except for a small buffer that reassembles a ClientHello fragmented
        over several datagrams (§5.5)."""
        reassembler = self._hello_reassembler
        # The usual case: a whole ClientHello and nothing buffered.
        hello = _read_client_hello(data) if reassembler is None or not len(reassembler) else None
        if hello is None:
            if reassembler is None:
                reassembler = self._hello_reassembler = ClientHelloReassembler(
                    max_entries=1,
                    max_message_size=min(self.config.max_handshake_message_size, 1 << 16),
                    timeout=60.0,
                )
            whole = reassembler.add(None, data, now)
            if whole is None:
                self._transport.drops["not a complete ClientHello"] += 1
                return
            data = whole
            hello = _read_client_hello(data)
            if hello is None:
                self._transport.drops["not a complete ClientHello"] += 1
                return
        cookie = _cookie_of(hello)
        if cookie is None:
            assert self._cookie_secret is not None
            reply = _hello_retry_datagram(self.config, hello, self.client_address, self._cookie_secret, now)
            if reply is None:
                # Nothing in common: let the state machine say why.
                self._hello_accepted = True
                self._hello_reassembler = None
                self._receive(data, now)
                return
            self.hello_retries_sent += 1
            self._transport.queue_datagram(reply)
            return
        assert self._cookie_secret is not None
        contents = self._cookie_secret.open(cookie, self.client_address, now)
        if contents is None:
            raise IllegalParameter("invalid or expired cookie")  # §5.1
        hs = self._hs
        assert isinstance(hs, ServerHandshake)
        self._hello_accepted = True
        self._hello_reassembler = None
        # Our stateless HelloRetryRequest was message 0 (§5.2).
        self._transport.resume_after_stateless_retry(hello.message_seq, 1)
        hs.restore_hello_retry(contents.suite, contents.group, contents.client_hello_hash, cookie)
        self._receive(data, now)

    def _handle_message(self, msg_type: int, data: bytes, epoch: int, now: float) -> None:
        if msg_type in (REQUEST_CONNECTION_ID, NEW_CONNECTION_ID):
            # Post-handshake, outside the transcript: not for the TLS machines.
            self._handle_cid_message(msg_type, data[4:], now)
            return
        hs = self._hs
        was_complete = hs.complete
        before = hs.state
        hs.handle_message(msg_type, data, now)
        transport = self._transport
        if self.is_client:
            if before is ClientState.WAIT_SH:
                transport.acks_enabled = True  # DTLS 1.3 is negotiated (§7)
                if hs.state is ClientState.WAIT_SH:  # HelloRetryRequest: ClientHello2
                    self._end_flight(now, expect_response=True, responds=True)
            elif not was_complete and hs.complete:
                # Our last flight: the server acknowledges it with an ACK (§7.1).
                self._end_flight(now, expect_response=False, responds=True)
                self._on_handshake_complete()
            elif was_complete:
                if msg_type == H.certificate_request:
                    self._end_flight(now, expect_response=False, responds=True)
                else:
                    transport.send_ack(now)  # NewSessionTicket, KeyUpdate (§7.1)
                    self._end_flight(now, expect_response=False, responds=False)
        else:
            if msg_type == H.client_hello:
                transport.acks_enabled = True
                self._end_flight(now, expect_response=True, responds=True)
            elif not was_complete and hs.complete:
                # The client's last flight is acknowledged explicitly (§7.1).
                transport.send_ack(now)
                self._on_handshake_complete()
                self._end_flight(now, expect_response=False, responds=False)  # NewSessionTickets
            elif was_complete:  # KeyUpdate, post-handshake authentication
                transport.send_ack(now)
                self._end_flight(now, expect_response=False, responds=False)
        if self._key_update_requested:
            # The peer asked for our update (§8); sent after its ACK above.
            self._key_update_requested = False
            if self._key_update_flight is None and not self.local_closed:
                self._send_key_update(False)

    def _end_flight(self, now: float, *, expect_response: bool, responds: bool) -> Optional[object]:
        if self._transport.state is not FlightState.PREPARING:
            return None
        return self._transport.end_flight(now, expect_response=expect_response, responds=responds)

    def _handle_record(self, rec: ReceivedRecord) -> None:
        if rec.content_type == CT_ALERT:
            self._receive_alert(rec)
        elif rec.content_type == CT_APPLICATION_DATA:
            epoch = rec.number.epoch
            if epoch == EPOCH_EARLY_DATA:
                self._receive_early(rec.data)
                return
            if self._close_number is not None and rec.number > self._close_number:
                return  # §5.10: data after close_notify is ignored
            if not self._read_secrets.get(epoch) or epoch < EPOCH_APPLICATION:
                raise UnexpectedMessage("application data outside the application epochs")
            self._emit(ev.DataReceived(rec.data))
        else:
            raise UnexpectedMessage(f"unexpected record of content type {rec.content_type}")

    def _receive_early(self, payload: bytes) -> None:
        """Server: accepted 0-RTT data, at most max_early_data bytes (RFC 9846 §4.2.10)."""
        if self._early_limit is None:
            return  # rejected 0-RTT (epoch discarded meanwhile): dropped
        self._early_read += len(payload)
        if self._early_read > self._early_limit:
            raise UnexpectedMessage("client sent more early data than max_early_data_size")
        self._emit(ev.EarlyDataReceived(payload))

    def _receive_alert(self, rec: ReceivedRecord) -> None:
        payload = rec.data
        if not rec.protected and (len(payload) != 2 or self._records.read_epochs):
            # Unauthenticated: malformed ones, and any once the peer
            # protects its records, are invalid records (§4.5.2).
            self._transport.drops["plaintext alert ignored"] += 1
            return
        if len(payload) != 2:
            raise DecodeError("alert record must be 2 bytes")
        level, desc = payload[0], payload[1]
        if desc == AlertDescription.close_notify:
            if not self.peer_closed:
                self.peer_closed = True
                self._close_number = rec.number
                self._emit(ev.CloseNotifyReceived())
            return
        if desc == AlertDescription.user_canceled:
            return
        self.terminated = True
        self._emit(ev.AlertReceived(desc, level))
        raise RemoteAlert(desc)

    # -------------------------------------------------------------- RecordSink
    def send_handshake(self, data: bytes) -> None:
        self._transport.send_tls_message(data)

    def send_change_cipher_spec(self) -> None:
        raise InternalError("no ChangeCipherSpec in DTLS 1.3")  # RFC 9147 §5

    def _epoch_of(self, secret: bytes) -> int:
        hs = self._hs
        if secret == hs.client_early_secret:
            return EPOCH_EARLY_DATA
        if secret in (hs.client_hs_secret, hs.server_hs_secret):
            return EPOCH_HANDSHAKE
        if secret in (hs.client_app_secret, hs.server_app_secret):
            return EPOCH_APPLICATION
        raise InternalError("secret of an unknown epoch")

    def set_write_secret(self, suite: CipherSuiteInfo, secret: bytes) -> None:
        self._suite = suite
        epoch = self._epoch_of(secret)
        records = self._records
        if epoch in records.write_epochs:
            records.write_epoch = epoch
        else:
            records.install_write_epoch(epoch, suite, secret)
        self._write_secrets[epoch] = secret

    def set_read_secret(self, suite: CipherSuiteInfo, secret: bytes) -> None:
        self._suite = suite
        epoch = self._epoch_of(secret)
        if epoch not in self._records.read_epochs:
            self._records.install_read_epoch(epoch, suite, secret)
            # Epoch 3 records that overtook the Finished (§4.2.1).
            self._transport.release_future_records()
        self._read_secrets[epoch] = secret
        if epoch == EPOCH_APPLICATION and not self.is_client:
            # §5.6: 0-RTT is over once the client's Finished arrived.
            self._records.discard_read_epoch(EPOCH_EARLY_DATA)
            self._early_limit = None

    def set_write_plaintext(self) -> None:
        """Client after a HelloRetryRequest: 0-RTT is over, back to epoch 0."""
        self._records.write_epoch = 0

    def set_record_size_limit(self, send: int, receive: Optional[int]) -> None:
        """RFC 8449: datagrams already bound our records; nothing more to do."""

    def accept_early_data(self, suite: CipherSuiteInfo, secret: bytes, limit: int) -> None:
        """Server: read 0-RTT application data in epoch 1."""
        self._records.install_read_epoch(EPOCH_EARLY_DATA, suite, secret)
        self._read_secrets[EPOCH_EARLY_DATA] = secret
        self._early_limit = limit
        self._early_read = 0

    def skip_early_data(self, limit: int, trial_decrypt: bool) -> None:
        """Server: rejected 0-RTT records are in epoch 1, for which we have no
        keys: the record layer drops them (§4.5.2)."""

    # -------------------------------------------------------------- internals
    def _guard(self, action: "object") -> None:
        """Run ``action``; on a local protocol error queue the alert, fail, re-raise."""
        try:
            action()  # type: ignore[operator]
        except LocalProtocolError as exc:
            self._fail(exc)
            raise
        except RemoteAlert:
            self.terminated = True
            raise

    def _emit(self, event: ev.Event) -> None:
        self._events.append(event)

    def _on_handshake_complete(self) -> None:
        self.handshake_complete = True
        if self.receive_cid is not None:
            self._cids = ConnectionIds(self.receive_cid, self.send_cid)
        if EPOCH_APPLICATION in self._records.read_epochs:
            self._transport.future_epoch_bits = None  # kept ones were released
        hs = self._hs
        assert hs.suite is not None
        subject = hs.peer_certificates[0].subject.rfc4514_string() if hs.peer_certificates else None
        self._emit(
            ev.HandshakeComplete(
                version=DTLS_1_3,
                cipher_suite=hs.suite.suite,
                group=hs.group,
                alpn_protocol=hs.alpn_protocol,
                server_name=hs.server_name,
                hello_retry=hs.hello_retry,
                session_resumed=hs.session_resumed,
                peer_certificate_subject=subject,
            )
        )
        self._flush_pending()

    def _flush_pending(self) -> None:
        pending, self._pending_app = self._pending_app, []
        for chunk in pending:
            self._seal_app(chunk)
        if self._pending_close:
            self._pending_close = False
            self._send_alert(AlertDescription.close_notify, AlertLevel.WARNING)

    def _send_key_update(self, request_peer: bool) -> None:
        """§8: the KeyUpdate goes out in the current epoch; we switch once it is ACKed."""
        req = KeyUpdateRequest.update_requested if request_peer else KeyUpdateRequest.update_not_requested
        self._transport.send_tls_message(M.encode_handshake(M.KeyUpdate(req)))
        self._key_update_flight = self._transport.end_flight(self._now, expect_response=False, responds=False)

    def _check_key_update_acked(self) -> None:
        flight = self._key_update_flight
        if flight is None or self._transport.outstanding(flight):
            return
        self._key_update_flight = None
        if self._transport.gave_up:
            return
        records = self._records
        old = records.write_epoch
        assert self._suite is not None
        secret = next_traffic_secret(self._suite.hash_name, self._write_secrets[old], _PREFIX)
        records.install_write_epoch(old + 1, self._suite, secret)
        self._write_secrets[old + 1] = secret
        self._emit(ev.KeyUpdated("send"))

    def _on_key_update(self, requested: bool) -> None:
        """§8: install the next read epoch; the ACK follows; answer if asked."""
        records = self._records
        current = max(records.read_epochs)
        if current < EPOCH_APPLICATION or self._suite is None:
            raise UnexpectedMessage("KeyUpdate before the application epochs")
        secret = next_traffic_secret(self._suite.hash_name, self._read_secrets[current], _PREFIX)
        records.install_read_epoch(current + 1, self._suite, secret)
        self._read_secrets[current + 1] = secret
        self._emit(ev.KeyUpdated("receive"))
        # An update of ours already in flight satisfies a request.
        self._key_update_requested = requested

    def _traffic_secret(self, direction: str) -> bytes:
        if direction == "write":
            return self._write_secrets[self._records.write_epoch]
        return self._read_secrets[max(self._read_secrets)]

    def _on_early_data(self, accepted: bool) -> None:
        if accepted:
            self._emit(ev.EarlyDataAccepted())
        else:
            self._emit(ev.EarlyDataRejected(b"".join(self._early_sent)))
        self._early_sent = []

    def _send_alert(self, desc: int, level: int = AlertLevel.FATAL) -> None:
        epoch = self._records.write_epoch
        _, record = self._records.seal(CT_ALERT, bytes((level, desc)), epoch)
        self._transport.queue_datagram(record)

    def _fail(self, exc: ProtocolError) -> None:
        if self.terminated:
            return
        self.terminated = True
        try:
            self._send_alert(exc.alert, AlertLevel.FATAL)
        except Exception:  # noqa: BLE001 - an alert we cannot protect is dropped
            pass


class _ConnectionIdExtension:
    """RFC 9146 ``connection_id`` (type 54) in ClientHello and ServerHello,
    as RFC 9147 §9 uses it: each side sends the CID it wants to receive."""

    def __init__(self, conn: DTLSConnection) -> None:
        self.conn = conn
        self.types = frozenset({int(E.connection_id)})

    def _ours(self) -> bytes:
        cid = self.conn._local_cid
        assert cid is not None
        return bytes((len(cid),)) + cid

    @staticmethod
    def _decode(data: bytes) -> bytes:
        if not data or data[0] != len(data) - 1:
            raise DecodeError("malformed connection_id extension")
        return bytes(data[1:])

    # client side
    def client_hello_extensions(self) -> list[tuple[int, bytes]]:
        return [(int(E.connection_id), self._ours())]

    def on_server_hello(self, exts: dict[int, bytes]) -> None:
        data = exts.get(E.connection_id)
        if data is not None:
            self._install(self._decode(data))

    # server side
    def on_client_hello(self, exts: dict[int, bytes]) -> list[tuple[int, bytes]]:
        """Returns the ServerHello extensions answering the client's offer."""
        data = exts.get(E.connection_id)
        if data is None:
            return []
        self._install(self._decode(data))
        return [(int(E.connection_id), self._ours())]

    def _install(self, peer_cid: bytes) -> None:
        conn = self.conn
        ours = conn._local_cid or b""
        conn.send_cid, conn.receive_cid = peer_cid, ours
        # CIDs apply to protected records only (§4: DTLSPlaintext has none).
        conn._records.send_cid = peer_cid
        conn._records.receive_cid = ours
