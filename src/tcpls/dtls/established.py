"""Compact state of an established DTLS 1.3 server association.

Theory of operation
-------------------
After the handshake a :class:`~tcpls.dtls.connection.DTLSConnection` still
holds everything the handshake needed: the TLS state machine, transcript,
certificates, the handshake transport with its flights and buffers, the
epoch 0/1/2 keys. An endpoint serving 100K associations cannot keep all of
that per peer, so once a server association is established and quiet
(nothing outstanding to retransmit, no KeyUpdate in flight, nothing
buffered), :func:`compact_connection` moves out only what the rest of the
association's life needs and the endpoint drops the DTLSConnection:

* the current write epoch and current read epoch (raw keys, sequence
  numbers, replay window: :mod:`tcpls.dtls.record` builds AEAD objects on
  demand from a bounded shared cache, so an idle association holds none);
  the previous read epoch after a KeyUpdate, for reordered records (§4.2.1);
* the two application traffic secrets, to derive the next epochs (§8);
* the connection IDs and the handshake ``message_seq`` counters;
* lazily, the events and datagrams not yet collected and the state of a
  KeyUpdate of ours waiting for its ACK.

What it still does (everything an established association needs): send and
receive application data; close_notify and fatal alerts (§5.10); ACKs of
the peer's post-handshake records and of our KeyUpdate (§7); KeyUpdate in
both directions, with our epoch switching only once the peer ACKed (§8),
retransmitted with the §5.8.2 backoff; an automatic KeyUpdate when the
AEAD confidentiality limit approaches (§4.5.3). Post-handshake messages a
server never receives in a valid exchange (client-sent NewSessionTicket,
certificates without a request, ...) are ``unexpected_message``.

Epoch 2 (handshake) keys are not kept: the endpoint compacts only after the
association has been established for a while (``compact_after``), long
after a client would retransmit its Finished for a lost ACK.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Optional

from ..errors import (
    ConnectionClosedError,
    DecodeError,
    LocalProtocolError,
    RemoteAlert,
    UnexpectedMessage,
    UsageError,
)
from ..tls import events as _ev
from ..tls.enums import AlertDescription, AlertLevel, HandshakeType, KeyUpdateRequest
from ..tls.key_schedule import DTLS13_LABEL_PREFIX, next_traffic_secret
from .handshake import HandshakeFragment, decode_ack, encode_ack, parse_fragments
from .record import (
    CT_ACK,
    CT_ALERT,
    CT_APPLICATION_DATA,
    CT_HANDSHAKE,
    EPOCH_APPLICATION,
    CiphertextRecord,
    ReadEpoch,
    ReceivedRecord,
    RecordNumber,
    WriteEpoch,
    parse_datagram,
    reconstruct_epoch,
)

__all__ = ["EstablishedConnection", "compact_connection"]

_INITIAL_TIMEOUT = 1.0  # §5.8.2
_MAX_TIMEOUT = 60.0


class _PendingKeyUpdate:
    """Our KeyUpdate waiting for its ACK (§8)."""

    __slots__ = ("fragment", "records", "deadline", "timeout")

    def __init__(self, fragment: bytes) -> None:
        self.fragment = fragment
        self.records: list[RecordNumber] = []
        self.deadline = 0.0
        self.timeout = _INITIAL_TIMEOUT


class EstablishedConnection:
    """What an established server association keeps (see the module doc).

    Same engine interface as DTLSConnection for an established association:
    ``receive_datagram``, ``datagrams_to_send``, ``get_timer``,
    ``handle_timer``, ``next_event``, ``send_data``, ``key_update``, ``close``.
    """

    __slots__ = (
        "_write",
        "_read",
        "_read_prev",
        "_write_secret",
        "_read_secret",
        "_send_cid",
        "_receive_cid",
        "_send_msg_seq",
        "_recv_msg_seq",
        "_max_datagram",
        "_events",
        "_out",
        "_ku",
        "_ku_after",
        "_flags",
        "_now",
    )

    _LOCAL_CLOSED = 1
    _PEER_CLOSED = 2
    _TERMINATED = 4
    _KU_REQUESTED = 8

    is_client = False
    handshake_complete = True
    compact = True

    def __init__(
        self,
        write: WriteEpoch,
        read: ReadEpoch,
        write_secret: bytes,
        read_secret: bytes,
        *,
        send_cid: bytes = b"",
        receive_cid: bytes = b"",
        send_msg_seq: int = 0,
        recv_msg_seq: int = 0,
        max_datagram_size: int = 1200,
        read_prev: Optional[ReadEpoch] = None,
        key_update_after: Optional[int] = None,
    ) -> None:
        if write.epoch < EPOCH_APPLICATION or read.epoch < EPOCH_APPLICATION:
            raise ValueError("compact state starts in the application epochs")
        self._write = write
        self._read = read
        self._read_prev = read_prev
        self._write_secret = write_secret
        self._read_secret = read_secret
        self._send_cid = send_cid
        self._receive_cid = receive_cid
        self._send_msg_seq = send_msg_seq
        self._recv_msg_seq = recv_msg_seq
        self._max_datagram = max_datagram_size
        self._events: Optional[deque[_ev.Event]] = None
        self._out: Optional[list[bytes]] = None
        self._ku: Optional[_PendingKeyUpdate] = None
        #: Records per write epoch before an automatic KeyUpdate (the
        #: DTLSConnection's ``key_update_after``; None: the AEAD limit).
        self._ku_after = key_update_after
        self._flags = 0
        self._now = 0.0

    # ------------------------------------------------------------ queries
    @property
    def receive_cid(self) -> Optional[bytes]:
        return self._receive_cid or None

    @property
    def send_cid(self) -> Optional[bytes]:
        return self._send_cid or None

    @property
    def write_epoch(self) -> int:
        return self._write.epoch

    @property
    def read_epochs(self) -> list[int]:
        prev = self._read_prev
        return ([prev.epoch] if prev is not None else []) + [self._read.epoch]

    @property
    def authenticated_records(self) -> int:
        """Records that passed authentication in the epochs still held."""
        prev = self._read_prev
        return self._read.records_deprotected + (prev.records_deprotected if prev is not None else 0)

    @property
    def max_data_size(self) -> int:
        return self._max_datagram - self._write.overhead(cid_len=len(self._send_cid))

    @property
    def local_closed(self) -> bool:
        return bool(self._flags & self._LOCAL_CLOSED)

    @property
    def peer_closed(self) -> bool:
        return bool(self._flags & self._PEER_CLOSED)

    @property
    def terminated(self) -> bool:
        return bool(self._flags & self._TERMINATED)

    # ------------------------------------------------------------ output helpers
    def _emit(self, event: _ev.Event) -> None:
        if self._events is None:
            self._events = deque()
        self._events.append(event)

    def _send_record(self, content_type: int, data: bytes) -> RecordNumber:
        number, record = self._write.seal(content_type, data, cid=self._send_cid)
        if self._out is None:
            self._out = []
        self._out.append(record)
        return number

    def _send_alert(self, description: int, level: int) -> None:
        self._send_record(CT_ALERT, bytes((level, description)))

    def _fail(self, exc: LocalProtocolError) -> LocalProtocolError:
        if not self._flags & self._TERMINATED:
            self._flags |= self._TERMINATED
            self._send_alert(exc.alert, AlertLevel.FATAL)
        return exc

    # ------------------------------------------------------------ verbs
    def set_now(self, now: float) -> None:
        """The endpoint's clock before a verb (the engine never reads one)."""
        self._now = now

    def send_data(self, data: bytes | bytearray | memoryview) -> None:
        if self._flags & (self._TERMINATED | self._LOCAL_CLOSED):
            raise ConnectionClosedError("the connection is closed")
        data = bytes(data)
        if len(data) > self.max_data_size:
            raise UsageError(f"{len(data)} bytes do not fit one datagram (at most {self.max_data_size})")
        self._send_record(CT_APPLICATION_DATA, data)
        if self._ku is None and self._key_update_due():
            self._start_key_update(False)  # §4.5.3

    def _key_update_due(self) -> bool:
        write = self._write
        after = self._ku_after
        return write.key_usage_exhausted or (after is not None and write.records_protected >= after)

    def send_data_batch(self, chunks: Any) -> None:
        """Same interface as ``DTLSConnection.send_data_batch``."""
        data = [bytes(c) for c in chunks]
        if any(len(c) > self.max_data_size for c in data):
            raise UsageError(f"a chunk does not fit one datagram (at most {self.max_data_size})")
        for chunk in data:
            self.send_data(chunk)

    def key_update(self, request_peer_update: bool = True) -> None:
        if self._flags & (self._TERMINATED | self._LOCAL_CLOSED):
            raise ConnectionClosedError("connection is closed")
        if self._ku is not None:
            raise UsageError("the previous KeyUpdate is not acknowledged yet")
        self._start_key_update(request_peer_update)

    def close(self) -> None:
        if self._flags & (self._TERMINATED | self._LOCAL_CLOSED):
            return
        self._flags |= self._LOCAL_CLOSED
        self._send_alert(AlertDescription.close_notify, AlertLevel.WARNING)

    def datagrams_to_send(self, now: float = 0.0) -> list[bytes]:
        out, self._out = self._out, None
        if not out:
            return []
        # Pack records into datagrams of at most max_datagram_size (§4.3).
        datagrams: list[bytes] = []
        current = b""
        for record in out:
            if current and len(current) + len(record) > self._max_datagram:
                datagrams.append(current)
                current = b""
            current += record
        datagrams.append(current)
        return datagrams

    def next_event(self) -> Optional[_ev.Event]:
        events = self._events
        if not events:
            return None
        event = events.popleft()
        if not events:
            self._events = None
        return event

    def get_timer(self) -> Optional[float]:
        ku = self._ku
        if ku is None or self._flags & self._TERMINATED:
            return None
        return ku.deadline

    def handle_timer(self, now: float) -> None:
        ku = self._ku
        if ku is None or now < ku.deadline or self._flags & self._TERMINATED:
            return
        self._now = now
        ku.timeout = min(ku.timeout * 2, _MAX_TIMEOUT)  # §5.8.2 backoff
        self._transmit_key_update()

    # ------------------------------------------------------------ KeyUpdate (§8)
    def _start_key_update(self, request_peer: bool) -> None:
        request = KeyUpdateRequest.update_requested if request_peer else KeyUpdateRequest.update_not_requested
        body = bytes((int(request),))
        fragment = HandshakeFragment(HandshakeType.key_update, 1, self._send_msg_seq, 0, body).encode()
        self._send_msg_seq += 1
        self._ku = _PendingKeyUpdate(fragment)
        self._transmit_key_update()

    def _transmit_key_update(self) -> None:
        ku = self._ku
        assert ku is not None
        ku.records.append(self._send_record(CT_HANDSHAKE, ku.fragment))
        ku.deadline = self._now + ku.timeout

    def _on_ack(self, numbers: list[RecordNumber]) -> None:
        ku = self._ku
        if ku is None or not any(n in numbers for n in ku.records):
            return
        # Our KeyUpdate arrived: switch the write epoch now (§8).
        self._ku = None
        old = self._write
        secret = next_traffic_secret(old.suite.hash_name, self._write_secret, DTLS13_LABEL_PREFIX)
        self._write = WriteEpoch(old.epoch + 1, old.suite, secret, old._cache)
        self._write_secret = secret
        self._emit(_ev.KeyUpdated("send"))
        if self._flags & self._KU_REQUESTED:
            self._flags &= ~self._KU_REQUESTED
            self._start_key_update(False)

    def _on_key_update(self, request: int) -> None:
        if request not in (KeyUpdateRequest.update_not_requested, KeyUpdateRequest.update_requested):
            raise self._fail(DecodeError("bad KeyUpdate request"))
        cur = self._read
        secret = next_traffic_secret(cur.suite.hash_name, self._read_secret, DTLS13_LABEL_PREFIX)
        self._read_prev = cur
        self._read = ReadEpoch(cur.epoch + 1, cur.suite, secret, cur.window.size if cur.replay_protection else 0, cur._cache)
        self._read_secret = secret
        self._emit(_ev.KeyUpdated("receive"))
        if request == KeyUpdateRequest.update_requested and not self._flags & self._LOCAL_CLOSED:
            if self._ku is None:
                self._start_key_update(False)
            # else: ours is in flight; it answers the request (§8).

    # ------------------------------------------------------------ input
    def receive_datagram(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """Process one datagram; invalid records are dropped (§4.5.2).

        Raises:
            LocalProtocolError: the peer violated the protocol (alert queued).
            RemoteAlert: the peer sent a fatal alert.
        """
        if self._flags & self._TERMINATED:
            return
        self._now = now
        records, _ = parse_datagram(data, len(self._receive_cid))
        acks: list[RecordNumber] = []
        try:
            for rec in records:
                if not isinstance(rec, CiphertextRecord) or rec.cid != self._receive_cid:
                    continue  # epoch 0 leftovers and foreign CIDs are dropped
                epochs = {self._read.epoch: self._read}
                if self._read_prev is not None:
                    epochs[self._read_prev.epoch] = self._read_prev
                epoch = reconstruct_epoch(rec.epoch_bits, epochs)
                if epoch is None:
                    continue
                result = epochs[epoch].open(rec)
                if not isinstance(result, ReceivedRecord):
                    continue  # a DropReason: invalid records are dropped (§4.5.2)
                if self._handle(result.number, result.content_type, result.data):
                    acks.append(result.number)
        finally:
            if acks and not self._flags & self._TERMINATED:
                self._send_record(CT_ACK, encode_ack(acks))  # §7: ACK post-handshake records

    def _handle(self, number: RecordNumber, content_type: int, content: bytes) -> bool:
        """Process one deprotected record; True if it must be acknowledged."""
        if content_type == CT_APPLICATION_DATA:
            if not self._flags & self._PEER_CLOSED:
                self._emit(_ev.DataReceived(content))
            return False
        if content_type == CT_ALERT:
            if len(content) != 2:
                raise self._fail(DecodeError("bad alert"))
            level, description = content
            if description == AlertDescription.close_notify:
                self._flags |= self._PEER_CLOSED
                self._emit(_ev.CloseNotifyReceived())
                return False
            if level == AlertLevel.WARNING and description == AlertDescription.user_canceled:
                return False
            self._flags |= self._TERMINATED
            self._emit(_ev.AlertReceived(description, level))
            raise RemoteAlert(description)
        if content_type == CT_ACK:
            # No received_epoch check: §7.2's "no entry above the ACK's own
            # epoch" holds during the handshake only. Afterwards each
            # direction's epoch moves on its own (§8): a peer that never
            # updates acknowledges our epoch-N KeyUpdate from epoch 3.
            try:
                self._on_ack(decode_ack(content))
            except LocalProtocolError as exc:
                raise self._fail(exc) from None
            return False
        if content_type == CT_HANDSHAKE:
            try:
                fragments = parse_fragments(content)
            except LocalProtocolError as exc:
                raise self._fail(exc) from None
            for frag in fragments:
                self._handle_fragment(frag)
            return True
        return False

    def _handle_fragment(self, frag: HandshakeFragment) -> None:
        if frag.message_seq < self._recv_msg_seq:
            return  # a retransmission: the ACK of its record is enough
        if frag.message_seq > self._recv_msg_seq or frag.fragment_offset or frag.fragment_length != frag.length:
            # A message that is neither the next one nor whole: the peer
            # retransmits it (§5.8); a KeyUpdate is one byte and never split.
            return
        if frag.msg_type != HandshakeType.key_update:
            raise self._fail(UnexpectedMessage(f"handshake message {frag.msg_type} after the handshake"))
        if frag.length != 1:
            raise self._fail(DecodeError("KeyUpdate length"))
        self._recv_msg_seq += 1
        self._on_key_update(frag.body[0])


def compact_connection(conn: Any) -> Optional[EstablishedConnection]:
    """The compact state of an established, quiet server DTLSConnection, or
    None when it cannot be compacted yet (client role, handshake or
    KeyUpdate in progress, data or events not collected, closing)."""
    if getattr(conn, "compact", False):
        return None
    try:
        if (
            conn.is_client
            or not conn.handshake_complete
            or conn.terminated
            or conn.local_closed
            or conn.peer_closed
            or getattr(conn, "_key_update_flight", None) is not None
            or getattr(conn, "_key_update_requested", False)
            or getattr(conn, "_key_update_pending_request", None) is not None
            or conn._pending_app
            or conn.get_timer() is not None
            or conn._events
        ):
            return None
        records = conn._records
        transport = conn._transport
        if len(getattr(records, "receive_cid_set", None) or ()) > 1:
            return None  # several CIDs issued (§9): the compact state keeps one
        write_epoch = records.write_epoch
        read_epoch = max(records.read_epochs)
        if write_epoch < EPOCH_APPLICATION or read_epoch < EPOCH_APPLICATION:
            return None
        pending = transport.datagrams_to_send()
        prev = records.read_epochs.get(read_epoch - 1)
        state = EstablishedConnection(
            records.write_epochs[write_epoch],
            records.read_epochs[read_epoch],
            conn._write_secrets[write_epoch],
            conn._read_secrets[read_epoch],
            send_cid=records.send_cid,
            receive_cid=records.receive_cid,
            send_msg_seq=transport.next_send_seq,
            recv_msg_seq=transport.reassembler.next_seq,
            max_datagram_size=transport.max_datagram_size,
            read_prev=prev if prev is not None and prev.epoch >= EPOCH_APPLICATION else None,
            key_update_after=getattr(conn, "_key_update_after", None),
        )
    except (AttributeError, KeyError):
        return None  # an engine this function does not know how to compact
    state._now = getattr(conn, "_now", 0.0)
    if pending:
        state._out = list(pending)  # already datagrams: sent as they are
    return state
