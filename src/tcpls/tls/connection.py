"""The TLS 1.3 connection engine (sans-IO).

Theory of operation
-------------------
``TLSConnection`` owns the record layer of one TLS connection and drives a
handshake state machine (``ClientHandshake`` or ``ServerHandshake``):

* input: ``receive_data(bytes, now)`` splits the stream into records
  (``RecordReader``), removes protection with the current read key
  (``RecordDecryptor``), reassembles handshake messages
  (``HandshakeReader``) and hands them to the handshake; application data,
  alerts and post-handshake messages become events.
* output: the handshake and the verbs (``send_data``, ``close``,
  ``key_update``) append protected records to one outgoing buffer, drained
  by ``data_to_send()``. Handshake messages written under the same key are
  coalesced into as few records as possible.
* errors: a violation by the peer raises ``LocalProtocolError`` after the
  fatal alert has been queued; a fatal alert from the peer raises
  ``RemoteAlert``. Either way the connection is ``terminated``.

The engine never reads a clock, opens a socket or blocks.
"""

from __future__ import annotations

from collections import deque
from typing import Optional, Union


from ..errors import (
    BadRecordMac,
    ConnectionClosedError,
    DecodeError,
    LocalProtocolError,
    ProtocolError,
    RemoteAlert,
    UnexpectedEOF,
    UnexpectedMessage,
    UsageError,
)
from . import events as ev
from . import messages as M
from .config import TLSConfig
from .enums import TLS_1_3, AlertDescription, AlertLevel, ContentType, KeyUpdateRequest
from .handshake.client import ClientHandshake
from .handshake.common import HandshakeQueries
from .handshake.server import ServerHandshake
from .key_schedule import export_keying_material, next_traffic_secret
from .offload import OffloadActions, OffloadedDecryptor, OffloadedEncryptor, TrafficState
from .protection import RecordDecryptor, RecordEncryptor
from .record import RecordReader, encode_plaintext_records
from .session import Session
from .suites import CipherSuiteInfo

_CT_CCS = ContentType.CHANGE_CIPHER_SPEC
_CT_ALERT = ContentType.ALERT
_CT_HANDSHAKE = ContentType.HANDSHAKE
_CT_APPDATA = ContentType.APPLICATION_DATA
_CCS_RECORD = b"\x14\x03\x03\x00\x01\x01"

# RFC 9846 §5.5: stay far below the AEAD confidentiality limits
# (2^24.5 full-size records for AES-GCM) by updating keys early.
KEY_UPDATE_AFTER_RECORDS = 1 << 23


class TLSConnection(HandshakeQueries):
    """One TLS 1.3 connection, client or server. See ``docs/engine-api.md``."""

    def __init__(
        self,
        config: TLSConfig,
        *,
        server_side: bool,
        server_name: Optional[str] = None,
        session: Optional[Session] = None,
    ) -> None:
        config.validate(server_side=server_side)
        self.config = config
        self.server_side = server_side
        self._out: list[bytes] = []  # protected records waiting for the transport
        self._hs_out = bytearray()  # handshake bytes not yet put in records
        self._events: deque[ev.Event] = deque()
        self._rx: list[bytes | memoryview] = []  # application data not yet turned into an event
        self._reader = RecordReader()
        self._hs_reader = M.HandshakeReader(config.max_handshake_message_size)
        self._encryptor: Optional[RecordEncryptor] = None
        self._decryptor: Optional[RecordDecryptor] = None
        self._suite: Optional[CipherSuiteInfo] = None
        self._app_read = False  # application read key installed
        self._app_write = False
        self._pending_app: list[bytes] = []
        self._pending_close = False
        self._keylog_path = config.get_keylog_file()
        self._started = False
        self._ccs_since_handshake = False  # a CCS dropped since the last handshake record (§5)
        self._answered_key_update = False  # our last KeyUpdate answered the peer's request
        self._now = 0.0
        # 0-RTT (RFC 9846 §4.2.10). Client: data queued before the ClientHello,
        # what was sent, and whether the write key is the early one.
        self._early_pending: list[bytes] = []
        self._early_sent: list[bytes] = []
        self._early_writing = False
        self._early_rejected: Optional[bytes] = None
        # Server: accepted 0-RTT (limit and count), or skipping rejected records.
        self._early_read_limit: Optional[int] = None
        self._early_read = 0
        self._skip_budget = 0
        self._skip_mode: Optional[str] = None  # None, "until-handshake" or "trial"
        self.sessions: list[Session] = []  # client: from NewSessionTickets, oldest first
        self.handshake_complete = False
        self.peer_closed = False
        self.local_closed = False
        self.terminated = False
        self._hs: Union[ClientHandshake, ServerHandshake]
        if server_side:
            self._hs = ServerHandshake(config, self)
        else:
            self._hs = ClientHandshake(config, self, server_name, session)
            self._hs.on_early_data = self._on_early_data
        self._hs.on_key_update = self._on_key_update
        self._wire_post_handshake_callbacks(server_side)
        self._hs.traffic_secret = self._traffic_secret
        self._send_record_limit: Optional[int] = None
        self._recv_record_limit: Optional[int] = None

    # ---------------------------------------------------------------- queries
    @property
    def version(self) -> Optional[int]:
        return TLS_1_3 if self._hs.suite is not None else None

    def export_early_keying_material(self, label: str | bytes, context: bytes = b"", length: int = 32) -> bytes:
        """TLS-Exporter over the early_exporter_secret (RFC 9846 §7.5); only
        when 0-RTT was offered (client) or accepted (server). Replayable."""
        hs = self._hs
        suite = getattr(hs, "early_suite", None) or hs.suite
        if not hs.early_exporter_secret or suite is None:
            raise UsageError("early_exporter_secret is not available (no 0-RTT)")
        lab = label.encode() if isinstance(label, str) else bytes(label)
        return export_keying_material(suite.hash_name, hs.early_exporter_secret, lab, bytes(context), length)

    # ------------------------------------------------------------------ verbs
    def start_handshake(self, now: float = 0.0) -> None:
        """Client: queue the ClientHello. Server: nothing to do."""
        if self._started:
            return
        self._started = True
        self._now = now
        if isinstance(self._hs, ClientHandshake):
            hs = self._hs
            hs.start(now, early_data=bool(self._early_pending))
            self._flush_handshake()
            pending, self._early_pending = self._early_pending, []
            if hs.early_data_state == "offered":
                for chunk in pending:
                    self._seal_early(chunk)
            elif pending:
                # The session could not be offered (expired, suite, SNI): not sent.
                self._on_early_rejected(b"".join(pending))

    def send_early_data(self, data: bytes | bytearray | memoryview) -> None:
        """Client: queue 0-RTT data (RFC 9846 §2.3, §4.2.10).

        Call before :meth:`start_handshake` (the ClientHello then offers
        early data) or while 0-RTT is still in progress. Needs a session whose
        ticket allows early data; at most its ``max_early_data`` bytes.
        Early data can be replayed by an attacker: send only what is safe to
        repeat. The outcome arrives as ``EarlyDataAccepted`` or
        ``EarlyDataRejected`` (carrying the data, which is not resent unless
        ``TLSConfig.resend_early_data_on_reject``).
        """
        hs = self._hs
        if not isinstance(hs, ClientHandshake):
            raise UsageError("only a client sends early data")
        if self.terminated or self.local_closed:
            raise ConnectionClosedError("connection is closed")
        data = bytes(data)
        if not self._started:
            limit = hs.can_send_early_data(check_age=False)
            if not limit:
                raise UsageError("no resumable session allowing early data (session= with max_early_data > 0)")
            if sum(map(len, self._early_pending)) + len(data) > limit:
                raise UsageError(f"early data exceeds the ticket's max_early_data_size ({limit})")
            self._early_pending.append(data)
            return
        if not self._early_writing:
            raise UsageError("0-RTT is not in progress")
        self._seal_early(data)

    def _seal_early(self, data: bytes) -> None:
        hs = self._hs
        assert isinstance(hs, ClientHandshake) and self._encryptor is not None
        limit = hs.can_send_early_data()
        if sum(map(len, self._early_sent)) + len(data) > limit:
            raise UsageError(f"early data exceeds the ticket's max_early_data_size ({limit})")
        if data:
            self._early_sent.append(data)
            self._encryptor.seal(_CT_APPDATA, data, self._out)

    def send_data(self, data: bytes | bytearray | memoryview) -> None:
        """Queue application data; before the handshake completes it waits."""
        if self.terminated:
            raise ConnectionClosedError("the connection has failed")
        if self.local_closed:
            raise ConnectionClosedError("cannot send after close()")
        if not data:
            return
        if self._app_write and self.handshake_complete:
            enc = self._encryptor
            assert enc is not None
            enc.seal(_CT_APPDATA, data, self._out)
            if enc.seq >= KEY_UPDATE_AFTER_RECORDS:
                self._send_key_update(False)
        else:
            self._pending_app.append(bytes(data))

    def close(self) -> None:
        """Send close_notify (half-close: receiving goes on until the peer's)."""
        if self.local_closed or self.terminated:
            return
        self.local_closed = True
        if self.handshake_complete or self._encryptor is not None or not self._started:
            self._send_alert(AlertDescription.close_notify, AlertLevel.WARNING)
        else:
            self._pending_close = True

    def key_update(self, request_peer_update: bool = True) -> None:
        """Send a KeyUpdate (RFC 9846 §4.6.3) and switch our sending key."""
        if not self.handshake_complete:
            raise UsageError("KeyUpdate is only possible after the handshake")
        if self.local_closed or self.terminated:
            raise ConnectionClosedError("connection is closed")
        self._send_key_update(request_peer_update)

    def request_client_certificate(self, required: bool = False) -> bytes:
        """Server: ask for a client certificate after the handshake (RFC 9846 §4.6.2).

        The client must have offered post_handshake_auth. Returns the
        certificate_request_context; the answer arrives as
        ``PostHandshakeAuthCompleted`` (then ``peer_certificates`` holds the
        chain). With ``required``, an empty answer is a fatal
        certificate_required alert.
        """
        hs = self._hs
        if not isinstance(hs, ServerHandshake):
            raise UsageError("only a server requests client certificates")
        if self.local_closed or self.terminated:
            raise ConnectionClosedError("connection is closed")
        context = hs.request_client_certificate(required)
        self._flush_handshake()
        return context

    def data_to_send(self) -> bytes:
        """Bytes to write to the transport (drains the buffer)."""
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    def buffers_to_send(self) -> list[bytes]:
        """Like :meth:`data_to_send` but as a list of buffers, for
        scatter-gather writes (``socket.sendmsg``) that avoid one copy."""
        out = self._out
        self._out = []
        return out

    def next_event(self) -> Optional[ev.Event]:
        return self._events.popleft() if self._events else None

    # ------------------------------------------------------------------ input
    def receive_data(self, data: bytes | bytearray | memoryview, now: float = 0.0) -> None:
        """Process bytes received from the transport."""
        self._receive(data, now, borrowed=False)

    def receive_data_borrowed(self, data: bytes | bytearray | memoryview, now: float = 0.0) -> None:
        """Like :meth:`receive_data`, without copying ``data``.

        ``data`` may be a view on a buffer that the caller reuses as soon as
        this call returns (e.g. the target of ``socket.recv_into``): the
        engine copies out only an incomplete trailing record.
        """
        self._receive(data, now, borrowed=True)

    def _receive(self, data: bytes | bytearray | memoryview, now: float, borrowed: bool) -> None:
        if self.terminated:
            raise ConnectionClosedError("the connection has failed")
        if not self._started:
            self._started = True
        self._now = now
        if not data:
            return
        reader = self._reader
        if borrowed:
            reader.feed_borrowed(data)
        else:
            reader.feed(data)
        try:
            self._process_records()
        except LocalProtocolError as exc:
            self._fail(exc)
            raise
        finally:
            if borrowed:
                reader.release()
            self._flush_received()
            self._flush_handshake()

    def receive_eof(self) -> None:
        """The transport reached EOF. Truncation is an error."""
        if self.peer_closed or self.terminated:
            return
        self.terminated = True
        raise UnexpectedEOF(
            "peer closed the connection during the handshake"
            if not self.handshake_complete
            else "peer closed the connection without close_notify"
        )

    def _flush_received(self) -> None:
        """Turn the application data gathered so far into one event."""
        rx = self._rx
        if rx:
            self._events.append(ev.DataReceived(b"".join(rx)))
            rx.clear()

    def _emit(self, event: ev.Event) -> None:
        """Queue ``event`` after any data that arrived before it."""
        self._flush_received()
        self._events.append(event)

    def _process_records(self) -> None:
        received = self._rx
        reader = self._reader
        while True:
            rec = reader.next_record()
            if rec is None:
                return
            ctype, header, body = rec
            if ctype == _CT_CCS:
                self._receive_ccs(body)
                continue
            dec = self._decryptor
            if dec is None:
                if ctype == _CT_APPDATA:
                    if self._skip_mode == "until-handshake":
                        self._skip_rejected_early(body)
                        continue
                    raise UnexpectedMessage("protected record before keys were established")
                inner, payload = ctype, bytes(body)
            elif ctype == _CT_APPDATA:
                if self._skip_mode is not None:
                    # §4.2.10: trial decryption; the first success ends skipping.
                    try:
                        inner, payload = dec.open(header, body)
                    except BadRecordMac:
                        if self._skip_mode != "trial":
                            raise
                        self._skip_rejected_early(body)
                        continue
                    self._skip_mode = None
                else:
                    inner, payload = dec.open(header, body)
            elif ctype == _CT_ALERT and not self.handshake_complete:
                # A peer that failed to install keys may still alert in clear.
                inner, payload = ctype, bytes(body)
            else:
                raise UnexpectedMessage(f"unprotected record of type {ctype} after keys were established")

            if inner != _CT_HANDSHAKE and self._hs_reader.has_partial():
                # RFC 9846 §5.1: no other record between the fragments of a
                # handshake message.
                raise UnexpectedMessage("record interleaved with a fragmented handshake message")
            if inner == _CT_APPDATA:
                if not self._app_read:
                    if self._early_read_limit is not None:
                        self._receive_early(payload)
                        continue
                    raise UnexpectedMessage("application data before the handshake completed")
                if self.peer_closed:
                    continue  # RFC 9846 §6.1: data after close_notify is ignored
                received.append(payload)  # a view on immutable bytes: joined once later
            elif inner == _CT_HANDSHAKE:
                self._receive_handshake(payload)
            elif inner == _CT_ALERT:
                self._receive_alert(payload)
            else:
                raise UnexpectedMessage(f"unexpected content type {inner} in a protected record")

    def _skip_rejected_early(self, body: bytes | memoryview) -> None:
        """RFC 9846 §4.2.10: drop one rejected 0-RTT record, within the budget.

        After a HelloRetryRequest every protected record before the second
        ClientHello is skipped; otherwise those that fail to decrypt under the
        handshake key, until one succeeds.
        """
        self._skip_budget -= len(body)
        if self._skip_budget < 0:
            raise BadRecordMac("more undecryptable early data than max_early_data_size")

    def _receive_early(self, payload: bytes | memoryview) -> None:
        """Server: accepted 0-RTT data (§4.2.10), at most max_early_data bytes (§4.6.1)."""
        assert self._early_read_limit is not None
        self._early_read += len(payload)
        if self._early_read > self._early_read_limit:
            raise UnexpectedMessage("client sent more early data than max_early_data_size")
        self._emit(ev.EarlyDataReceived(bytes(payload)))

    def _receive_ccs(self, body: bytes | memoryview) -> None:
        """RFC 9846 §5: a single 0x01 byte, only while the handshake runs."""
        if bytes(body) != b"\x01":
            raise UnexpectedMessage("invalid change_cipher_spec")
        if self.handshake_complete or (self.server_side and self._hs.state.name == "START"):
            raise UnexpectedMessage("change_cipher_spec outside the handshake")
        # §5 and appendix D.4: each one is dropped, not just the first: a
        # server may send one after HelloRetryRequest and another after
        # ServerHello (Java's JSSE does). Compatibility mode puts a CCS next
        # to a handshake message, never two in a row, so two without a
        # handshake record between them are refused, as OpenSSL does.
        if self._ccs_since_handshake:
            raise UnexpectedMessage("two change_cipher_spec records in a row")
        self._ccs_since_handshake = True

    def _receive_handshake(self, payload: bytes | memoryview) -> None:
        if not payload:
            raise UnexpectedMessage("empty handshake record")
        self._ccs_since_handshake = False
        hs_reader = self._hs_reader
        hs_reader.feed(payload)
        while True:
            msg = hs_reader.next_message()
            if msg is None:
                return
            msg_type, data = msg
            self._hs.handle_message(msg_type, data, self._now)
            if self._hs.complete and not self.handshake_complete:
                self._on_handshake_complete()

    def _receive_alert(self, payload: bytes | memoryview) -> None:
        if not payload:
            # RFC 9846 §5.1: zero-length alert fragments are forbidden.
            raise UnexpectedMessage("empty alert record")
        if len(payload) != 2:
            raise DecodeError("alert record must be 2 bytes")
        level, desc = payload[0], payload[1]
        if desc == AlertDescription.close_notify:
            self.peer_closed = True
            self._emit(ev.CloseNotifyReceived())
            return
        if desc == AlertDescription.user_canceled:
            return  # RFC 9846 §6.1: followed by close_notify
        # RFC 9846 §6.2: every other alert is fatal whatever its level.
        self.terminated = True
        self._emit(ev.AlertReceived(desc, level))
        raise RemoteAlert(desc)

    # -------------------------------------------------------------- RecordSink
    def send_handshake(self, data: bytes) -> None:
        self._hs_out += data

    def send_change_cipher_spec(self) -> None:
        self._flush_handshake()
        self._out.append(_CCS_RECORD)

    def set_write_secret(self, suite: CipherSuiteInfo, secret: bytes) -> None:
        self._flush_handshake()
        self._suite = suite
        self._encryptor = RecordEncryptor(suite, secret)
        self._early_writing = bool(secret) and secret == getattr(self._hs, "client_early_secret", b"")
        if self._send_record_limit is not None and not self._early_writing:
            self._encryptor.max_plaintext = self._send_record_limit
        if self._hs.master_secret is not None and secret in (self._hs.client_app_secret, self._hs.server_app_secret):
            self._app_write = True

    def set_read_secret(self, suite: CipherSuiteInfo, secret: bytes) -> None:
        # RFC 9846 §5.1: handshake messages must not span a key change.
        if self._hs_reader.has_partial():
            raise UnexpectedMessage("handshake data left over at a key change")
        self._suite = suite
        self._decryptor = RecordDecryptor(suite, secret)
        self._early_read_limit = None
        if self._recv_record_limit is not None:
            self._decryptor.max_plaintext = self._recv_record_limit
        if self._hs.master_secret is not None and secret in (self._hs.client_app_secret, self._hs.server_app_secret):
            self._app_read = True

    def set_write_plaintext(self) -> None:
        """Client after a HelloRetryRequest: back to unprotected records (§4.1.4)."""
        self._flush_handshake()
        self._encryptor = None
        self._early_writing = False

    def set_record_size_limit(self, send: int, receive: Optional[int]) -> None:
        """RFC 8449 §4: largest content per protected record we send / accept,
        for the current keys and the following ones (0-RTT keys excepted)."""
        self._send_record_limit = send
        self._recv_record_limit = receive
        if self._encryptor is not None and not self._early_writing:
            self._encryptor.max_plaintext = send
        if receive is not None and self._decryptor is not None and self._early_read_limit is None:
            self._decryptor.max_plaintext = receive

    def accept_early_data(self, suite: CipherSuiteInfo, secret: bytes, limit: int) -> None:
        """Server: read 0-RTT application data under ``secret`` until EndOfEarlyData."""
        self.set_read_secret(suite, secret)
        self._early_read_limit = limit
        self._early_read = 0

    def skip_early_data(self, limit: int, trial_decrypt: bool) -> None:
        """Server: skip rejected 0-RTT records (§4.2.10), at most ``limit`` bytes of them."""
        self._skip_mode = "trial" if trial_decrypt else "until-handshake"
        self._skip_budget = limit + 256  # record expansion allowance

    # -------------------------------------------------------------- internals
    def _flush_handshake(self) -> None:
        if not self._hs_out:
            return
        data = bytes(self._hs_out)
        self._hs_out.clear()
        if self._encryptor is not None:
            self._encryptor.seal(_CT_HANDSHAKE, data, self._out)
        else:
            encode_plaintext_records(_CT_HANDSHAKE, data, self._out)

    def _on_handshake_complete(self) -> None:
        self.handshake_complete = True
        self._flush_handshake()
        hs = self._hs
        subject = hs.peer_certificates[0].subject.rfc4514_string() if hs.peer_certificates else None
        assert hs.suite is not None
        self._emit(
            ev.HandshakeComplete(
                version=TLS_1_3,
                cipher_suite=hs.suite.suite,
                group=hs.group,
                alpn_protocol=hs.alpn_protocol,
                server_name=hs.server_name,
                hello_retry=hs.hello_retry,
                session_resumed=hs.session_resumed,
                peer_certificate_subject=subject,
            )
        )
        pending, self._pending_app = self._pending_app, []
        rejected, self._early_rejected = self._early_rejected, None
        if rejected and self.config.resend_early_data_on_reject:
            # §4.2.10: never resend automatically if the ALPN changed.
            s = getattr(hs, "session", None)
            if s is not None and s.alpn_protocol == hs.alpn_protocol:
                pending.insert(0, rejected)
        closing = self.local_closed
        self.local_closed = False
        for chunk in pending:
            self.send_data(chunk)
        self.local_closed = closing
        if self._pending_close:
            self._pending_close = False
            self._send_alert(AlertDescription.close_notify, AlertLevel.WARNING)

    def _on_key_update(self, requested: bool) -> None:
        """RFC 9846 §4.6.3: switch the read key; answer if asked."""
        if self._hs_reader.has_partial():
            raise UnexpectedMessage("handshake data left over at a KeyUpdate")
        dec = self._decryptor
        assert dec is not None and self._suite is not None
        dec.update(next_traffic_secret(self._suite.hash_name, dec.secret))
        self._emit(ev.KeyUpdated("receive"))
        if requested and not self.local_closed:
            # §4.6.3: an implementation "which receives multiple KeyUpdates
            # while it is silent [responds] with a single update": if our
            # last answer is still queued, with nothing sealed after it, it
            # serves this request too.
            enc = self._encryptor
            assert enc is not None
            if not (self._answered_key_update and enc.seq == 0 and self._out):
                self._send_key_update(False)
                self._answered_key_update = True

    def _send_key_update(self, request_peer: bool) -> None:
        enc = self._encryptor
        assert enc is not None and self._suite is not None
        req = KeyUpdateRequest.update_requested if request_peer else KeyUpdateRequest.update_not_requested
        enc.seal(_CT_HANDSHAKE, M.encode_handshake(M.KeyUpdate(req)), self._out)
        enc.update(next_traffic_secret(self._suite.hash_name, enc.secret))
        self._answered_key_update = False
        self._emit(ev.KeyUpdated("send"))

    def _traffic_secret(self, direction: str) -> bytes:
        """The current sending ("write") or receiving ("read") traffic secret."""
        half = self._encryptor if direction == "write" else self._decryptor
        assert half is not None
        return half.secret

    def _on_early_data(self, accepted: bool) -> None:
        if accepted:
            self._emit(ev.EarlyDataAccepted())
        else:
            self._on_early_rejected(b"".join(self._early_sent))
        self._early_sent = []

    def _on_early_rejected(self, data: bytes) -> None:
        self._early_rejected = data
        self._emit(ev.EarlyDataRejected(data))

    def _send_alert(self, desc: int, level: int = AlertLevel.FATAL) -> None:
        self._flush_handshake()
        payload = bytes((level, desc))
        if self._encryptor is not None:
            self._encryptor.seal(_CT_ALERT, payload, self._out)
        else:
            encode_plaintext_records(_CT_ALERT, payload, self._out)

    def _fail(self, exc: ProtocolError) -> None:
        """Queue the fatal alert for ``exc`` and mark the connection dead."""
        if self.terminated:
            return
        self.terminated = True
        self._hs_out.clear()
        try:
            self._send_alert(exc.alert, AlertLevel.FATAL)
        except Exception:  # noqa: BLE001 - an alert we cannot protect is dropped
            pass

    # ------------------------------------------------------- record layer offload
    # See tcpls.tls.offload (theory of operation) and tcpls.ktls (the kernel side).
    def bytes_to_record_boundary(self) -> int:
        """Raw bytes still missing from a partly received record (0 if none).

        Before the receiving side is offloaded, the transport reads exactly
        this many bytes (``recv(n)`` never returns more), feeds them with
        :meth:`receive_data` and asks again, until it returns 0.
        """
        return self._reader.bytes_to_boundary()

    def export_traffic_state(self) -> TrafficState:
        """Current application traffic secrets and sequence numbers, for a
        layer that takes over record protection after the handshake: the
        kernel (:mod:`tcpls.ktls`) or a TCPLS session (which protects every
        connection's records itself). Call it at a record boundary, after
        draining :meth:`data_to_send`.

        Raises:
            UsageError: the handshake is not complete, the connection is
                closed or failed, output is waiting in :meth:`data_to_send`,
                or a partial record or handshake message is buffered.
        """
        if not self.handshake_complete or self._suite is None:
            raise UsageError("traffic keys can only be exported after the handshake")
        if self.terminated or self.local_closed:
            raise ConnectionClosedError("connection is closed")
        if self._out or self._hs_out or self._pending_app:
            raise UsageError("send data_to_send() before exporting the traffic state")
        if self._reader.buffered() or self._hs_reader.has_partial():
            raise UsageError("a partial record is buffered: read up to a record boundary first")
        enc, dec = self._encryptor, self._decryptor
        assert enc is not None and dec is not None
        return TrafficState(self._suite.suite, enc.secret, enc.seq, dec.secret, dec.seq)

    def offload(self, *, tx: bool, rx: bool) -> OffloadActions:
        """Hand record protection of ``tx`` and/or ``rx`` to the caller.

        Call right after :meth:`export_traffic_state` and after installing
        its keys elsewhere. From now on the engine queues, instead of
        protected records, :class:`~tcpls.tls.offload.SendRecord` and
        :class:`~tcpls.tls.offload.InstallKey` actions on the returned queue
        (the same queue on every call). For an offloaded receiving side,
        feed decrypted non-application records to
        :meth:`receive_plaintext_record`.
        """
        self.export_traffic_state()  # same preconditions
        actions = getattr(self, "_offload_actions", None)
        if actions is None:
            actions = self._offload_actions = OffloadActions()
        suite = self._suite
        assert suite is not None and self._encryptor is not None and self._decryptor is not None
        if tx and not isinstance(self._encryptor, OffloadedEncryptor):
            self._encryptor = OffloadedEncryptor(suite, self._encryptor.secret, actions, "tx")  # type: ignore[assignment]
        if rx and not isinstance(self._decryptor, OffloadedDecryptor):
            self._decryptor = OffloadedDecryptor(suite, self._decryptor.secret, actions, "rx")  # type: ignore[assignment]
        return actions

    def receive_plaintext_record(self, content_type: int, payload: bytes, now: float = 0.0) -> None:
        """Process one record that was decrypted outside the engine
        (offloaded receiving side): handshake, alert or application data."""
        if self.terminated:
            raise ConnectionClosedError("the connection has failed")
        try:
            if content_type == _CT_HANDSHAKE:
                self._receive_handshake(payload)
            elif content_type == _CT_ALERT:
                self._receive_alert(payload)
            elif content_type == _CT_APPDATA:
                if not self.peer_closed:
                    self._rx.append(payload)
            else:
                raise UnexpectedMessage(f"unexpected content type {content_type} in a protected record")
        except LocalProtocolError as exc:
            self._fail(exc)
            raise
        finally:
            self._flush_received()
            self._flush_handshake()
