"""The DTLS 1.3 handshake transport (RFC 9147 §5.2, §5.5, §5.7, §5.8, §7), sans-IO.

Theory of operation
-------------------
This layer sits between the record layer (:mod:`tcpls.dtls.record`) and the
TLS 1.3 handshake state machines. It makes handshake messages reliable over
datagrams; it knows nothing about what the messages mean.

Wire format. Each handshake message is sent as one or more *fragments*, each
with the 12-byte DTLSHandshake header (§5.2)::

    msg_type(1) length(3) message_seq(2) fragment_offset(3) fragment_length(3)

The transcript, however, covers the TLS-style message (4-byte header, no
message_seq/fragment fields): :func:`tls_message` and
:func:`split_tls_message` convert.

Receiving. :class:`Reassembler` buffers fragments per ``message_seq``,
accepts overlaps and duplicates, rejects bytes that change between copies
(``illegal_parameter``, §5.5) and hands out complete messages strictly in
``message_seq`` order (§5.2: older ones are discarded, newer ones queued).
Memory is bounded: a message may not exceed ``max_message_size``, at most
``max_future_messages`` beyond the next one are buffered, and their buffers
together stay under ``max_buffered_bytes`` (fragments over the budget are
dropped, and therefore not acknowledged).

Sending. :class:`HandshakeTransport` groups outgoing messages into *flights*
(§5.7) and drives the timeout and retransmission state machine of §5.8.1:

* PREPARING: :meth:`HandshakeTransport.send_message` buffers messages;
* SENDING happens inside :meth:`~HandshakeTransport.end_flight`,
  :meth:`~HandshakeTransport.handle_timer` and ACK processing: only the
  fragments not yet acknowledged are (re)sent, cut to the datagram size,
  several records per datagram;
* WAITING: the flight is outstanding, the retransmission timer runs
  (initially 1 s, doubled at each expiry up to 60 s, §5.8.2);
* FINISHED: nothing outstanding.

A flight ends when every record carrying it was acknowledged by an ACK
(§7.2), or implicitly when the peer starts its next flight (for flights
created with ``expect_response=True``: every handshake flight except the
client's last; §7.1). The RTT measured on a flight sent only once sets the
timer to 1.5 RTT (§5.8.2).

ACKs (§7). Records of handshake messages that were processed or buffered
are remembered; an ACK listing them is sent at once when a gap shows (a
message or fragment out of order), after a quarter of the retransmission
timer when part of a flight arrived but no response was generated, on
:meth:`~HandshakeTransport.send_ack` (the state machine knows when a flight
needs an explicit ACK), and again when the peer retransmits a flight we
have no pending response to. Starting our next flight clears the list: the
new flight acknowledges implicitly. ACKs are only sent and processed once
``acks_enabled`` is set, i.e. once DTLS 1.3 is known to be negotiated (§7).

Pausing. Processing of a datagram stops after a record that completes a
handshake message; the records behind it are opened on the next
:meth:`~HandshakeTransport.next_message` call. The state machine thus
installs the handshake keys after the ServerHello before the
EncryptedExtensions record sharing its datagram is deprotected.

Time is always passed in (``now``, seconds); nothing here reads a clock.
"""

from __future__ import annotations

import enum
from collections import Counter, deque
from dataclasses import dataclass, field

from .._buffer import Buffer
from ..errors import DecodeError, IllegalParameter, InternalError, LocalProtocolError, UnexpectedMessage
from .record import (
    CT_ACK,
    CT_HANDSHAKE,
    MAX_PLAINTEXT,
    CiphertextRecord,
    DropReason,
    PlaintextRecord,
    ReceivedRecord,
    RecordLayer,
    RecordNumber,
    handshake_type_allowed,
    parse_datagram,
    plaintext_prefix_length,
)

__all__ = [
    "HANDSHAKE_HEADER_LEN",
    "HandshakeFragment",
    "parse_fragments",
    "fragment_headers",
    "fragment_message",
    "tls_message",
    "split_tls_message",
    "encode_ack",
    "decode_ack",
    "ReceivedMessage",
    "FragmentStatus",
    "Reassembler",
    "FlightState",
    "HandshakeTransport",
]

HANDSHAKE_HEADER_LEN = 12
_TLS_HEADER_LEN = 4
_MAX_UINT24 = (1 << 24) - 1
MESSAGE_SEQ_LIMIT = 1 << 16
_RECORD_NUMBER_LEN = 16
_FIRST_APPLICATION_EPOCH = 3
_PLAINTEXT_CONTENT_TYPES = frozenset((21, 22, 26))  # alert, handshake, ack: DTLSPlaintext (§4.1)


# --------------------------------------------------------------------------
# Handshake header codec (§5.2)
# --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class HandshakeFragment:
    """One DTLSHandshake fragment.

    Attributes:
        msg_type: HandshakeType.
        length: length of the whole message body.
        message_seq: the message's sequence number.
        fragment_offset: where ``body`` starts in the message body.
        body: the fragment bytes (``fragment_length`` is its length).
    """

    msg_type: int
    length: int
    message_seq: int
    fragment_offset: int
    body: bytes

    @property
    def fragment_length(self) -> int:
        return len(self.body)

    @property
    def end(self) -> int:
        return self.fragment_offset + len(self.body)

    def encode(self) -> bytes:
        if not (0 <= self.fragment_offset and self.end <= self.length <= _MAX_UINT24):
            raise ValueError("fragment outside its message")
        if not 0 <= self.message_seq < MESSAGE_SEQ_LIMIT:
            raise ValueError("message_seq out of range")
        return b"".join(
            (
                bytes((self.msg_type,)),
                self.length.to_bytes(3, "big"),
                self.message_seq.to_bytes(2, "big"),
                self.fragment_offset.to_bytes(3, "big"),
                len(self.body).to_bytes(3, "big"),
                self.body,
            )
        )


def parse_fragments(payload: bytes | bytearray | memoryview) -> list[HandshakeFragment]:
    """All fragments in the payload of one handshake record.

    Raises:
        UnexpectedMessage: empty payload (as for TLS, a handshake record is never empty).
        DecodeError: truncated header or body, or a fragment outside its message.
    """
    data = bytes(payload)
    return [
        HandshakeFragment(msg_type, length, seq, offset, data[start:end])
        for msg_type, length, seq, offset, start, end in fragment_headers(data)
    ]


def fragment_headers(data: bytes) -> list[tuple[int, int, int, int, int, int]]:
    """The fragments of one handshake record's payload as
    ``(msg_type, length, message_seq, fragment_offset, start, end)``, where
    ``data[start:end]`` is the fragment body (so ``data[start - 12:start - 8]``
    is the TLS-format header of its message). Same checks as
    :func:`parse_fragments`, without building fragment objects.

    Raises:
        UnexpectedMessage: empty payload.
        DecodeError: truncated header or body, or a fragment outside its message.
    """
    n = len(data)
    if not n:
        raise UnexpectedMessage("empty handshake record")
    out = []
    pos = 0
    from_bytes = int.from_bytes
    while pos < n:
        start = pos + HANDSHAKE_HEADER_LEN
        if start > n:
            raise DecodeError("truncated handshake fragment header")
        # msg_type(1) length(3) message_seq(2) fragment_offset(3) fragment_length(3)
        v = from_bytes(data[pos:start], "big")
        length = (v >> 64) & _MAX_UINT24
        offset = (v >> 24) & _MAX_UINT24
        end = start + (v & _MAX_UINT24)
        if end > n:
            raise DecodeError("truncated handshake fragment")
        if offset + end - start > length:
            raise DecodeError("handshake fragment extends past the end of its message")
        out.append((v >> 88, length, (v >> 48) & 0xFFFF, offset, start, end))
        pos = end
    return out


def fragment_message(
    msg_type: int, body: bytes, message_seq: int, max_fragment: int, start: int = 0, end: int | None = None
) -> list[HandshakeFragment]:
    """Cut ``body[start:end]`` into fragments of at most ``max_fragment`` bytes.

    The ranges are contiguous and never overlap (§5.5). An empty message is
    one empty fragment.
    """
    if max_fragment < 1:
        raise ValueError("max_fragment must be positive")
    end = len(body) if end is None else end
    if end == start:
        return [HandshakeFragment(msg_type, len(body), message_seq, start, b"")]
    return [
        HandshakeFragment(msg_type, len(body), message_seq, pos, body[pos : min(pos + max_fragment, end)])
        for pos in range(start, end, max_fragment)
    ]


def tls_message(msg_type: int, body: bytes) -> bytes:
    """The TLS-format message (4-byte header) that enters the transcript (§5.2)."""
    if len(body) > _MAX_UINT24:
        raise ValueError("handshake message too long")
    return bytes((msg_type,)) + len(body).to_bytes(3, "big") + body


def split_tls_message(data: bytes) -> tuple[int, bytes]:
    """``(msg_type, body)`` of one TLS-format handshake message.

    Raises:
        DecodeError: not exactly one message.
    """
    buf = Buffer(data)
    msg_type = buf.pull_uint8()
    body = buf.pull_opaque(3)
    buf.expect_end("handshake message")
    return msg_type, body


# --------------------------------------------------------------------------
# ACK codec (§7)
# --------------------------------------------------------------------------
def encode_ack(record_numbers: "list[RecordNumber] | set[RecordNumber]") -> bytes:
    """``struct { RecordNumber record_numbers<0..2^16-1>; } ACK``, sorted ascending."""
    numbers = sorted(set(record_numbers))
    if len(numbers) * _RECORD_NUMBER_LEN > 0xFFFF:
        raise ValueError("too many record numbers for one ACK")
    buf = Buffer()
    buf.push_uint16(len(numbers) * _RECORD_NUMBER_LEN)
    for rn in numbers:
        buf.push_uint64(rn.epoch)
        buf.push_uint64(rn.seq)
    return buf.data()


def decode_ack(data: bytes | bytearray | memoryview, received_epoch: int | None = None) -> list[RecordNumber]:
    """Parse an ACK.

    Args:
        data: the ACK record content.
        received_epoch: the epoch the ACK arrived in; an entry naming a
            higher epoch is an ``illegal_parameter`` (§7.2).

    Raises:
        DecodeError: bad length, trailing bytes.
        IllegalParameter: an entry beyond ``received_epoch``.
    """
    buf = Buffer(bytes(data))
    out: list[RecordNumber] = []
    with buf.pull_block(2) as n:
        if n % _RECORD_NUMBER_LEN:
            raise DecodeError("ACK length is not a multiple of 16")
        for _ in range(n // _RECORD_NUMBER_LEN):
            epoch = buf.pull_uint64()
            seq = buf.pull_uint64()
            if received_epoch is not None and epoch > received_epoch:
                raise IllegalParameter("ACK names a record of an epoch above its own")
            out.append(RecordNumber(epoch, seq))
    buf.expect_end("ACK")
    return out


# --------------------------------------------------------------------------
# Reassembly (§5.2, §5.5)
# --------------------------------------------------------------------------
class _Ranges:
    """Sorted, merged, half-open byte ranges."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list[tuple[int, int]] = []

    def add(self, start: int, end: int) -> None:
        if start >= end:
            return
        merged: list[tuple[int, int]] = []
        placed = False
        for s, e in self.items:
            if e < start:
                merged.append((s, e))
            elif s > end:
                if not placed:
                    merged.append((start, end))
                    placed = True
                merged.append((s, e))
            else:
                start, end = min(s, start), max(e, end)
        if not placed:
            merged.append((start, end))
        self.items = merged

    def covers(self, start: int, end: int) -> bool:
        return any(s <= start and end <= e for s, e in self.items)

    def missing(self, start: int, end: int) -> list[tuple[int, int]]:
        gaps: list[tuple[int, int]] = []
        pos = start
        for s, e in self.items:
            if e <= pos:
                continue
            if s >= end:
                break
            if s > pos:
                gaps.append((pos, s))
            pos = max(pos, e)
        if pos < end:
            gaps.append((pos, end))
        return gaps

    def prefix(self) -> int:
        """Length of the contiguous range starting at 0."""
        if self.items and self.items[0][0] == 0:
            return self.items[0][1]
        return 0


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """A complete handshake message, in message_seq order.

    Attributes:
        msg_type, body: the message.
        message_seq: its DTLS sequence number.
        epoch: the epoch its records were protected with.
    """

    msg_type: int
    body: bytes
    message_seq: int
    epoch: int
    #: The TLS-format message, when the receiver had it at hand (a message
    #: that arrived in one fragment); :meth:`tls_bytes` builds it otherwise.
    tls: bytes | None = field(default=None, compare=False, repr=False)

    def tls_bytes(self) -> bytes:
        """The TLS-format message for the transcript (§5.2)."""
        tls = self.tls
        return tls if tls is not None else tls_message(self.msg_type, self.body)


class FragmentStatus(enum.Enum):
    """What :meth:`Reassembler.add` did with a fragment."""

    ACCEPTED = "in order: processed or buffered"
    OUT_OF_ORDER = "buffered, but a gap precedes it"
    OLD = "belongs to a message already delivered (a retransmission)"
    DROPPED = "not buffered (too far ahead or over the memory budget)"


class _Partial:
    __slots__ = ("msg_type", "length", "epoch", "data", "ranges")

    def __init__(self, msg_type: int, length: int, epoch: int) -> None:
        self.msg_type = msg_type
        self.length = length
        self.epoch = epoch
        self.data = bytearray(length)
        self.ranges = _Ranges()

    def add(self, frag: HandshakeFragment, epoch: int) -> None:
        if frag.msg_type != self.msg_type or frag.length != self.length:
            raise IllegalParameter("fragments of one handshake message disagree on its type or length")
        if epoch != self.epoch:
            raise IllegalParameter("fragments of one handshake message arrived in different epochs")
        start, end = frag.fragment_offset, frag.end
        body = frag.body
        # §5.5: overlapping bytes must not change on retransmission.
        for s, e in self.ranges.items:
            lo, hi = max(s, start), min(e, end)
            if lo < hi and self.data[lo:hi] != body[lo - start : hi - start]:
                raise IllegalParameter("retransmitted handshake bytes differ from the first copy")
        self.data[start:end] = body
        self.ranges.add(start, end)

    @property
    def complete(self) -> bool:
        return self.length == 0 or self.ranges.covers(0, self.length)


class Reassembler:
    """In-order delivery of handshake messages from fragments.

    Args:
        max_message_size: largest accepted message body; larger ones are a
            ``decode_error`` (as for TLS).
        max_future_messages: messages beyond the next expected one that are
            buffered; fragments of later ones are dropped (§5.2 allows this).
        max_buffered_bytes: budget for the buffers of messages beyond the next
            expected one. The next expected message is always accepted (up to
            ``max_message_size``), so a peer can make us hold at most
            ``max_message_size + max_buffered_bytes``.
    """

    def __init__(
        self,
        *,
        max_message_size: int = 1 << 18,
        max_future_messages: int = 16,
        max_buffered_bytes: int = 1 << 18,
    ) -> None:
        self.max_message_size = max_message_size
        self.max_future_messages = max_future_messages
        self.max_buffered_bytes = max_buffered_bytes
        #: message_seq of the next message to deliver (next_receive_seq, §5.2).
        self.next_seq = 0
        self._partials: dict[int, _Partial] = {}
        self._ready: deque[ReceivedMessage] = deque()

    @property
    def buffered_bytes(self) -> int:
        return sum(p.length for p in self._partials.values())

    def add(self, frag: HandshakeFragment, epoch: int) -> FragmentStatus:
        """Take one fragment received in ``epoch``.

        Raises:
            DecodeError: the message is larger than ``max_message_size``.
            IllegalParameter: the fragment contradicts earlier ones.
        """
        seq = frag.message_seq
        if seq < self.next_seq:
            return FragmentStatus.OLD
        if seq >= self.next_seq + 1 + self.max_future_messages:
            return FragmentStatus.DROPPED
        if frag.length > self.max_message_size:
            raise DecodeError(f"handshake message of {frag.length} bytes exceeds the limit of {self.max_message_size}")
        partial = self._partials.get(seq)
        if partial is None:
            if seq != self.next_seq and self.buffered_bytes + frag.length > self.max_buffered_bytes + self._next_size():
                return FragmentStatus.DROPPED
            partial = self._partials[seq] = _Partial(frag.msg_type, frag.length, epoch)
        in_order = seq == self.next_seq and frag.fragment_offset <= partial.ranges.prefix()
        partial.add(frag, epoch)
        self._deliver()
        return FragmentStatus.ACCEPTED if in_order else FragmentStatus.OUT_OF_ORDER

    def add_whole(self, msg_type: int, seq: int, epoch: int, tls: bytes) -> bool:
        """Fast path for a message that arrived in one fragment: deliver it
        without reassembly buffers when it is the next one expected and no
        fragment of it is buffered. Returns False (nothing done) otherwise;
        the caller then goes through :meth:`add`.

        ``tls`` is the TLS-format message (4-byte header, then the body).
        """
        if seq != self.next_seq or seq in self._partials or len(tls) - 4 > self.max_message_size:
            return False
        self._ready.append(ReceivedMessage(msg_type, tls[4:], seq, epoch, tls))
        self.next_seq = seq + 1
        if self._partials:
            self._deliver()
        return True

    def _next_size(self) -> int:
        nxt = self._partials.get(self.next_seq)
        return nxt.length if nxt is not None else 0

    def _deliver(self) -> None:
        while (partial := self._partials.get(self.next_seq)) is not None and partial.complete:
            del self._partials[self.next_seq]
            self._ready.append(ReceivedMessage(partial.msg_type, bytes(partial.data), self.next_seq, partial.epoch))
            self.next_seq += 1

    def next_message(self) -> ReceivedMessage | None:
        """The next complete message in order, or None."""
        return self._ready.popleft() if self._ready else None

    def has_message(self) -> bool:
        """True if :meth:`next_message` has a message to return."""
        return bool(self._ready)

    def has_partial(self) -> bool:
        """True while fragments of undelivered messages are buffered."""
        return bool(self._partials)


# --------------------------------------------------------------------------
# Flights and retransmission (§5.8, §7)
# --------------------------------------------------------------------------
class FlightState(enum.Enum):
    """States of the timeout and retransmission state machine (§5.8.1)."""

    PREPARING = "preparing"
    WAITING = "waiting"
    FINISHED = "finished"


class _OutMessage:
    __slots__ = ("msg_type", "body", "message_seq", "epoch", "acked", "prefix")

    def __init__(self, msg_type: int, body: bytes, message_seq: int, epoch: int) -> None:
        self.msg_type = msg_type
        self.body = body
        self.message_seq = message_seq
        self.epoch = epoch
        self.acked = _Ranges()
        #: The first 6 bytes of each fragment header: msg_type, length, message_seq (§5.2).
        self.prefix = ((msg_type << 40) | (len(body) << 16) | message_seq).to_bytes(6, "big")

    def unacked(self) -> list[tuple[int, int]]:
        n = len(self.body)
        if n == 0:
            return [] if self.acked.items else [(0, 0)]
        return self.acked.missing(0, n)


@dataclass(slots=True)
class _Flight:
    messages: list[_OutMessage]
    expect_response: bool
    responds: bool
    retransmit: bool
    #: Which message ranges each sent record carried, in sending order.
    sent: dict[RecordNumber, list[tuple[int, int, int]]] = field(default_factory=dict)
    #: Position of each sent record in the sending order.
    order: dict[RecordNumber, int] = field(default_factory=dict)
    #: The peer's next_receive_seq when this flight was sent: its messages
    #: below this are the flight this one answers (or older).
    peer_seq: int = 0
    first_sent: float = 0.0
    transmissions: int = 0
    timeouts: int = 0
    timer: float | None = None

    def fully_acked(self) -> bool:
        return all(not m.unacked() for m in self.messages)

    def any_acked(self) -> bool:
        return any(m.acked.items for m in self.messages)


class HandshakeTransport:
    """Reliable handshake message delivery over one :class:`~tcpls.dtls.record.RecordLayer`.

    Args:
        records: the association's record layer (epochs must be installed
            there by the caller, and write epochs kept while a flight that
            used them is outstanding).
        max_datagram_size: largest datagram payload to produce (PMTU minus
            IP/UDP headers).
        initial_timeout: first retransmission timeout in seconds (§5.8.2: 1 s).
        max_timeout: the timeout stops doubling here (§5.8.2: at least 60 s).
        min_timeout: floor for the RTT-derived timeout.
        max_retransmissions: give up on a flight after this many timer
            expiries (``None``: never); :attr:`gave_up` is then set.
        max_records_per_transmission: records sent at once per flight
            (§5.8.3 recommends at most 10); the rest follows as ACKs come in
            or the timer fires. ``None``: no limit.
        ack_delay_factor: an incomplete flight is acknowledged after this
            fraction of the retransmission timeout (§7.1 suggests 1/4).
        max_message_size, max_future_messages, max_buffered_bytes: passed to
            the :class:`Reassembler`.
    """

    def __init__(
        self,
        records: RecordLayer,
        *,
        max_datagram_size: int = 1200,
        initial_timeout: float = 1.0,
        max_timeout: float = 60.0,
        min_timeout: float = 0.05,
        max_retransmissions: int | None = None,
        max_records_per_transmission: int | None = 10,
        ack_delay_factor: float = 0.25,
        max_message_size: int = 1 << 18,
        max_future_messages: int = 16,
        max_buffered_bytes: int = 1 << 18,
    ) -> None:
        self.records = records
        self.max_datagram_size = max_datagram_size
        self.initial_timeout = initial_timeout
        self.max_timeout = max_timeout
        self.min_timeout = min_timeout
        self.max_retransmissions = max_retransmissions
        self.max_records_per_transmission = max_records_per_transmission
        self.ack_delay_factor = ack_delay_factor
        self.reassembler = Reassembler(
            max_message_size=max_message_size,
            max_future_messages=max_future_messages,
            max_buffered_bytes=max_buffered_bytes,
        )
        #: Current retransmission timeout (seconds).
        self.timeout = initial_timeout
        #: Send and process ACKs; set once DTLS 1.3 is known to be negotiated (§7).
        self.acks_enabled = False
        #: Set when a flight exceeded ``max_retransmissions``.
        self.gave_up = False
        #: Discarded records and fragments, by reason (diagnostics, §4.5.2).
        self.drops: Counter[DropReason | str] = Counter()
        self._next_send_seq = 0
        self._preparing: list[_OutMessage] = []
        self._flights: list[_Flight] = []
        self._ack_pending: set[RecordNumber] = set()
        #: Records were added to ``_ack_pending`` since the last ACK we sent.
        self._ack_news = False
        self._ack_at: float | None = None
        self._last_ack_at: float | None = None
        self._records_in: deque[ReceivedRecord] = deque()
        self._incoming: deque[PlaintextRecord | CiphertextRecord] = deque()
        self._incoming_now = 0.0
        self._datagram_open = False
        #: The protected rest of a datagram that started with plaintext
        #: records, framed once those are processed (see receive_datagram).
        self._rest: bytes | bytearray | memoryview | None = None
        self._ack_now = False
        self._retransmit_now = False
        self._datagrams: list[bytes] = []
        self._pending_records: list[bytes] = []
        #: Low epoch bits of protected records to keep, instead of dropping,
        #: while their keys are not installed yet (§4.2.1 permits buffering):
        #: the connection sets 3 during the handshake, so that epoch 3 records
        #: overtaking the Finished that makes them readable are not lost.
        #: None: buffer nothing.
        self.future_epoch_bits: int | None = None
        #: Bounds of that buffer; beyond them such records are dropped.
        self.max_future_records = 4
        self.max_future_bytes = 8192
        self._future: list[CiphertextRecord] = []

    # ------------------------------------------------------------------ state
    @property
    def state(self) -> FlightState:
        if self._preparing:
            return FlightState.PREPARING
        if self._flights:
            return FlightState.WAITING
        return FlightState.FINISHED

    @property
    def next_send_seq(self) -> int:
        return self._next_send_seq

    # ------------------------------------------------------------------ sending
    def send_message(self, msg_type: int, body: bytes, *, epoch: int | None = None) -> int:
        """Queue a handshake message for the flight being prepared.

        ``epoch`` defaults to the record layer's current write epoch.
        Returns the message_seq given to it.

        Raises:
            InternalError: message_seq would wrap (§5.2).
        """
        seq = self._next_send_seq
        if seq >= MESSAGE_SEQ_LIMIT:
            raise InternalError("message_seq exhausted; a new association is needed")
        if len(body) > _MAX_UINT24:
            raise ValueError("handshake message too long")
        epoch = self.records.write_epoch if epoch is None else epoch
        self._preparing.append(_OutMessage(msg_type, bytes(body), seq, epoch))
        self._next_send_seq = seq + 1
        return seq

    def send_tls_message(self, data: bytes, *, epoch: int | None = None) -> int:
        """:meth:`send_message` for a TLS-format message (4-byte header)."""
        if len(data) < _TLS_HEADER_LEN or int.from_bytes(data[1:4], "big") != len(data) - _TLS_HEADER_LEN:
            msg_type, body = split_tls_message(data)  # raises DecodeError
        else:
            msg_type, body = data[0], bytes(data[4:])
        return self.send_message(msg_type, body, epoch=epoch)

    def end_flight(
        self, now: float, *, expect_response: bool = True, responds: bool = True, retransmit: bool = True
    ) -> object:
        """Send the prepared messages as one flight and arm its timer.

        Args:
            expect_response: the peer answers this flight with its own, which
                acknowledges it implicitly (every handshake flight but the
                client's last, and post-handshake CertificateRequest). With
                False only ACKs complete it (client Finished, NewSessionTicket,
                KeyUpdate, ...; §7.1).
            responds: this flight answers the peer's previous flight, so a
                retransmission of that flight means ours was lost and is
                answered by retransmitting ours (§5.8.1, WAITING exit 3).
                False for flights the peer did not ask for (NewSessionTicket,
                KeyUpdate, post-handshake CertificateRequest, the first
                ClientHello); duplicates are then acknowledged instead.
            retransmit: False for a stateless HelloRetryRequest (§3.1): sent
                once, never retransmitted.

        Returns:
            an opaque handle for :meth:`outstanding`.
        """
        if not self._preparing:
            raise ValueError("no messages to send")
        flight = _Flight(self._preparing, expect_response, responds, retransmit)
        self._preparing = []
        # Starting our next flight implicitly acknowledges the peer's (§7).
        self._ack_pending.clear()
        self._ack_news = False
        self._ack_at = None
        flight.first_sent = now
        flight.peer_seq = self.reassembler.next_seq
        self._transmit(flight)
        if retransmit:
            flight.timer = now + self.timeout
            self._flights.append(flight)
        return flight

    def outstanding(self, flight: object) -> bool:
        """Whether the flight returned by :meth:`end_flight` still waits for
        an acknowledgement (explicit or implicit) and is being retransmitted."""
        return flight in self._flights

    def queue_datagram(self, datagram: bytes) -> None:
        """Send ``datagram`` (e.g. application data or an alert sealed by the
        caller) after what is already queued, keeping the order."""
        self._flush()
        self._datagrams.append(datagram)

    def resume_after_stateless_retry(self, receive_seq: int, send_seq: int) -> None:
        """Start a fresh transport as if it had exchanged the first messages.

        A server that answered ClientHello1 with a stateless HelloRetryRequest
        (message_seq 0) keeps no state; when the second ClientHello arrives
        (message_seq ``receive_seq``), its own next message is ``send_seq``
        (§5.1, §5.2: message_seq is never reset within an association).
        """
        if self._next_send_seq or self.reassembler.next_seq or self._flights:
            raise InternalError("the transport has already been used")
        self.reassembler.next_seq = receive_seq
        self._next_send_seq = send_seq

    def send_ack(self, now: float) -> None:
        """Acknowledge now the handshake records received in the current flight.

        For flights that need an explicit ACK (the client's last flight,
        post-handshake messages; §7.1) or when the response will be slow.
        Nothing is sent when an ACK already went out at this same ``now``
        and no record arrived since (several messages of one record each ask
        for an ACK); a later call sends again (e.g. a probe after a lost ACK).
        """
        if not self._ack_news and self._last_ack_at == now:
            return
        self._ack_at = now
        self._maybe_send_ack(now)

    def _transmit(self, flight: _Flight, before: int | None = None) -> None:
        """SENDING: the unacknowledged parts of ``flight``, packed into datagrams.

        Consecutive fragments of the same epoch share a record while they
        fit in the datagram (§5.5 allows several handshake fragments per
        record): fewer records to protect, open and acknowledge. A record
        never spans datagrams.

        With ``before``, only the parts whose last transmission was in a
        record sent before position ``before`` (records sent after the newest
        acknowledged one are presumably still in flight).
        """
        budget = self.max_records_per_transmission
        flight.transmissions += 1
        if before is None:
            todo = [msg.unacked() for msg in flight.messages]
        else:
            todo = self._presumed_lost(flight, before)
        records = self.records
        max_datagram = self.max_datagram_size
        pending = self._pending_records
        used = sum(len(r) for r in pending)  # bytes of the datagram being filled
        # The record being filled: its epoch, fragments, ranges and size.
        rec_epoch = -1
        parts: list[bytes] = []
        ranges: list[tuple[int, int, int]] = []
        rec_size = 0
        rec_overhead = 0

        def close_record() -> None:
            nonlocal used, parts, ranges, rec_size
            number, record = records.seal(CT_HANDSHAKE, b"".join(parts), rec_epoch)
            flight.sent[number] = ranges
            flight.order[number] = len(flight.order)
            pending.append(record)
            used += len(record)
            parts, ranges, rec_size = [], [], 0

        for index, msg in enumerate(flight.messages):
            spans = todo[index]
            if not spans:
                continue
            epoch = msg.epoch
            if parts and epoch != rec_epoch:
                close_record()
            if not parts:
                rec_epoch = epoch
                rec_overhead = records.overhead(epoch)
            body = msg.body
            for start, end in spans:
                pos = start
                while True:
                    want = HANDSHAKE_HEADER_LEN + min(end - pos, 32)
                    if parts and used + rec_overhead + rec_size + want > max_datagram:
                        close_record()
                    if not parts:
                        if budget is not None and budget <= 0:
                            self._pending_records = pending
                            self._flush()
                            return
                        if used + rec_overhead + want > max_datagram:
                            self._pending_records = pending
                            self._flush()
                            pending = self._pending_records
                            used = 0
                        if budget is not None:
                            budget -= 1
                    space = min(max_datagram - used - rec_overhead, MAX_PLAINTEXT) - rec_size - HANDSHAKE_HEADER_LEN
                    chunk = min(end - pos, space)
                    if chunk < 0 or (chunk == 0 and end > pos):
                        raise ValueError("max_datagram_size too small for a handshake fragment")
                    stop = pos + chunk
                    header = msg.prefix + ((pos << 24) | chunk).to_bytes(6, "big")
                    parts.append(header)
                    parts.append(body if chunk == len(body) else body[pos:stop])
                    ranges.append((index, pos, stop))
                    rec_size += HANDSHAKE_HEADER_LEN + chunk
                    pos = stop
                    if pos >= end:
                        break
        if parts:
            close_record()
        self._pending_records = pending
        self._flush()

    @staticmethod
    def _presumed_lost(flight: _Flight, before: int) -> list[list[tuple[int, int]]]:
        latest: dict[tuple[int, int], int] = {}
        for number, ranges in flight.sent.items():
            for index, start, end in ranges:
                latest[(index, start)] = max(latest.get((index, start), -1), flight.order[number])
        lost = [_Ranges() for _ in flight.messages]
        lost_empty: set[int] = set()
        for number, ranges in flight.sent.items():
            if flight.order[number] >= before:
                continue
            for index, start, end in ranges:
                # A range resent later (after ``before``) may still arrive.
                if latest[(index, start)] < before:
                    lost[index].add(start, end)
                    if start == end:
                        lost_empty.add(index)
        out: list[list[tuple[int, int]]] = []
        for index, msg in enumerate(flight.messages):
            if not msg.body:
                out.append(msg.unacked() if index in lost_empty else [])
                continue
            gaps: list[tuple[int, int]] = []
            for s, e in lost[index].items:
                gaps += msg.acked.missing(s, e)
            out.append(gaps)
        return out

    def _space_left(self) -> int:
        return self.max_datagram_size - sum(len(r) for r in self._pending_records)

    def _flush(self) -> None:
        if self._pending_records:
            self._datagrams.append(b"".join(self._pending_records))
            self._pending_records = []

    def datagrams_to_send(self) -> list[bytes]:
        """Datagrams produced since the last call, one ``bytes`` per datagram."""
        self._flush()
        out, self._datagrams = self._datagrams, []
        return out

    # ------------------------------------------------------------------ timers
    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` should next be called (or None)."""
        times = [f.timer for f in self._flights if f.timer is not None]
        if self._ack_at is not None:
            times.append(self._ack_at)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        """Fire due timers: retransmit (with backoff) and send delayed ACKs."""
        self._maybe_send_ack(now)
        for flight in list(self._flights):
            if flight.timer is None or flight.timer > now:
                continue
            flight.timeouts += 1
            if self.max_retransmissions is not None and flight.timeouts > self.max_retransmissions:
                flight.timer = None
                self._flights.remove(flight)
                self.gave_up = True
                continue
            # §5.8.2: double the timer at each retransmission, up to the maximum.
            self.timeout = min(self.timeout * 2, self.max_timeout)
            self._transmit(flight)
            flight.timer = now + self.timeout

    def _flight_done(self, flight: _Flight, now: float) -> None:
        flight.timer = None
        if flight in self._flights:
            self._flights.remove(flight)
        if flight.transmissions == 1:
            # §5.8.2: acknowledged without retransmission: 1.5 x the RTT.
            rtt = now - flight.first_sent
            self.timeout = min(max(1.5 * rtt, self.min_timeout), self.max_timeout)

    # ------------------------------------------------------------------ receiving
    def receive_datagram(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """Process one datagram: handshake fragments, ACKs and other records.

        Invalid records are dropped (and counted in :attr:`drops`).

        Raises:
            LocalProtocolError: a protected record carries an invalid
                handshake fragment or ACK (``decode_error``,
                ``illegal_parameter``, ...). Invalid plaintext (epoch 0)
                ones are dropped instead: they are unauthenticated.
        """
        rest = None
        if data and data[0] in _PLAINTEXT_CONTENT_TYPES:
            # Plaintext records first (a ServerHello): the protected records
            # behind them are framed only once those are processed, since the
            # ServerHello may install the connection ID they carry (§9).
            cut = plaintext_prefix_length(data)
            if cut < len(data):
                data, rest = data[:cut], data[cut:]
        self._parse_into_incoming(data)
        self._rest = rest
        self._incoming_now = now
        self._datagram_open = True
        self._pump()

    def _parse_into_incoming(self, data: bytes | bytearray | memoryview) -> None:
        parsed, drops = parse_datagram(data, len(self.records.receive_cid))
        if drops:
            self.drops.update(drops)
        self._incoming.extend(parsed)

    def _pump(self) -> None:
        """Open and process queued records until a message is complete.

        Processing pauses as soon as a handshake message is ready, so that
        the state machine can install new keys (e.g. after the ServerHello)
        before the records behind it in the same datagram are opened;
        :meth:`next_message` resumes it.
        """
        now = self._incoming_now
        while self._incoming or self._rest is not None:
            if self.reassembler.has_message():
                return
            if not self._incoming:
                rest, self._rest = self._rest, None
                assert rest is not None
                self._parse_into_incoming(rest)
                continue
            rec = self._incoming.popleft()
            result = self.records.open_record(rec)
            if isinstance(result, DropReason):
                if result is DropReason.UNKNOWN_EPOCH and self._keep_for_later(rec):
                    self.drops["kept until its epoch's keys exist"] += 1
                else:
                    self.drops[result] += 1
                if result is DropReason.UNKNOWN_EPOCH and self.acks_enabled and self._ack_at is None:
                    # §7.1: records we cannot decrypt yet (e.g. the ServerHello
                    # was lost): an ACK, even an empty one, speeds up
                    # retransmission.
                    self._ack_at = now + self.ack_delay_factor * self.timeout
            elif not result.protected and result.content_type in (CT_HANDSHAKE, CT_ACK):
                # Epoch 0 is unauthenticated: anyone can inject it. A
                # malformed one is an invalid record, dropped (§4.5.2), so
                # that a forged datagram cannot tear the association down.
                try:
                    self._on_record(result, now)
                except LocalProtocolError:
                    self.drops["malformed plaintext record"] += 1
            else:
                self._on_record(result, now)
        if self._datagram_open:
            self._datagram_open = False
            self._end_of_datagram(now)

    def _keep_for_later(self, rec: PlaintextRecord | CiphertextRecord) -> bool:
        """Buffer a protected record of an epoch without keys yet (see
        :attr:`future_epoch_bits`); False when it is not one or there is no room."""
        if not isinstance(rec, CiphertextRecord) or rec.epoch_bits != self.future_epoch_bits:
            return False
        size = len(rec.header) + len(rec.encrypted_record)
        used = sum(len(r.header) + len(r.encrypted_record) for r in self._future)
        if len(self._future) >= self.max_future_records or used + size > self.max_future_bytes:
            return False
        self._future.append(rec)
        return True

    def release_future_records(self) -> None:
        """New read keys are installed: process the kept records again
        (after those of the current datagram). Those still unreadable are
        kept again (bounds permitting) or dropped."""
        if not self._future:
            return
        self._incoming.extend(self._future)
        self._future = []
        self._datagram_open = True

    def discard_future_records(self) -> None:
        """Stop keeping records for later and drop those kept."""
        self.future_epoch_bits = None
        self.drops[DropReason.UNKNOWN_EPOCH] += len(self._future)
        self._future = []

    @property
    def future_records(self) -> int:
        """Records currently kept until their epoch's keys exist."""
        return len(self._future)

    def _on_record(self, result: ReceivedRecord, now: float) -> None:
        if result.content_type == CT_HANDSHAKE:
            a, r = self._on_handshake_record(result, now)
            self._ack_now |= a
            self._retransmit_now |= r
        elif result.content_type == CT_ACK:
            self._on_ack(result, now)
        else:
            self._records_in.append(result)

    def _end_of_datagram(self, now: float) -> None:
        ack_now, retransmit = self._ack_now, self._retransmit_now
        self._ack_now = self._retransmit_now = False
        if retransmit:
            # §5.8.1 (3): the peer retransmitted the flight ours answers.
            for flight in self._flights:
                if flight.responds and not flight.any_acked() and flight.peer_seq > 0:
                    self._transmit(flight)
                    flight.timer = now + self.timeout
        if ack_now and self._ack_pending:
            # At most one immediate ACK per ACK delay: a burst of records
            # after one gap is covered by the next, delayed ACK.
            delay = self.ack_delay_factor * self.timeout
            if self._last_ack_at is None or now - self._last_ack_at >= delay:
                self._ack_at = now
            elif self._ack_at is None:
                self._ack_at = now + delay
        self._maybe_send_ack(now)

    def _on_handshake_record(self, rec: ReceivedRecord, now: float) -> tuple[bool, bool]:
        """Returns ``(send an ACK now, retransmit our response flight)``."""
        epoch = rec.number.epoch
        data = rec.data
        statuses = []
        old_seqs = []
        reassembler = self.reassembler
        for msg_type, length, seq, offset, start, end in fragment_headers(data):
            if not handshake_type_allowed(epoch, msg_type):
                self.drops["handshake type not allowed in epoch"] += 1
                statuses.append(FragmentStatus.DROPPED)
                continue
            # A whole message, the next one expected (the usual case): no
            # reassembly buffers, and the TLS-format message is cut out of
            # the record directly (its 4-byte header is the fragment's first).
            if (
                offset == 0
                and end - start == length
                and reassembler.add_whole(msg_type, seq, epoch, data[start - 12 : start - 8] + data[start:end])
            ):
                statuses.append(FragmentStatus.ACCEPTED)
                continue
            status = reassembler.add(HandshakeFragment(msg_type, length, seq, offset, data[start:end]), epoch)
            statuses.append(status)
            if status is FragmentStatus.OLD:
                old_seqs.append(seq)
        if FragmentStatus.DROPPED in statuses:
            return False, False  # not fully buffered: must not be acknowledged (§7)
        new = [s for s in statuses if s is not FragmentStatus.OLD]
        if new:
            # The peer's next flight has started: it implicitly acknowledges
            # our flights that expected a response (§7).
            for flight in list(self._flights):
                if flight.expect_response:
                    self._flight_done(flight, now)
            self._ack_pending.add(rec.number)
            self._ack_news = True
            if self._ack_at is None:
                self._ack_at = now + self.ack_delay_factor * self.timeout
            return FragmentStatus.OUT_OF_ORDER in statuses, False
        # Only retransmitted messages we already have. If they belong to the
        # flight one of our outstanding flights answers, that flight was lost.
        if any(f.responds and not f.any_acked() and min(old_seqs) < f.peer_seq for f in self._flights):
            return False, True
        # Nothing of ours that is outstanding answers them (e.g. the client's
        # last flight, whose ACK was lost; §5.8.1 FINISHED state, §7):
        # acknowledge again.
        self._ack_pending.add(rec.number)
        self._ack_news = True
        return True, False

    def _on_ack(self, rec: ReceivedRecord, now: float) -> None:
        if not self.acks_enabled and rec.number.epoch == 0:
            return  # §7: ignored until DTLS 1.3 is known to be negotiated
        # §7.2 forbids entries above the ACK's own epoch. That holds during
        # the handshake; afterwards the two directions' epochs move
        # independently with KeyUpdate (§8), and the peer must acknowledge
        # our epoch-N KeyUpdate from its own, possibly lower, epoch.
        epoch = rec.number.epoch
        numbers = decode_ack(rec.data, epoch if epoch < _FIRST_APPLICATION_EPOCH else None)
        for flight in list(self._flights):
            progress = False
            newest = -1
            for rn in numbers:
                ranges = flight.sent.get(rn)
                if ranges is None:
                    continue
                newest = max(newest, flight.order[rn])
                for index, start, end in ranges:
                    msg = flight.messages[index]
                    if start == end:
                        if not msg.acked.items:
                            msg.acked.items = [(0, 0)]
                            progress = True
                    elif not msg.acked.covers(start, end):
                        msg.acked.add(start, end)
                        progress = True
            if flight.fully_acked():
                self._flight_done(flight, now)
            elif not numbers:
                # An empty ACK: the peer is alive but could not process
                # anything (§7.1): resend the flight.
                self._transmit(flight)
                flight.timer = now + self.timeout
            elif progress:
                # §5.8.1 (2): an ACK for part of the flight: resend the
                # unacknowledged parts sent before the newest acknowledged
                # record (later ones are presumably still in flight).
                self._transmit(flight, before=newest)
                flight.timer = now + self.timeout

    def _maybe_send_ack(self, now: float) -> None:
        if self._ack_at is None or self._ack_at > now:
            return
        self._ack_at = None
        if not self.acks_enabled:
            return
        self._last_ack_at = now
        epoch = self.records.write_epoch
        if epoch == 1:
            epoch = 0  # §7: never ACK in epoch 1 (early data)
        # As many record numbers as fit in one datagram, the newest first
        # (§7.1: favour records not yet acknowledged); older ones are
        # forgotten, which bounds the list.
        room = max((self.max_datagram_size - self.records.overhead(epoch) - 2) // _RECORD_NUMBER_LEN, 1)
        numbers = sorted(self._ack_pending)
        if len(numbers) > room:
            numbers = numbers[-room:]
            self._ack_pending = set(numbers)
        _, record = self.records.seal(CT_ACK, encode_ack(numbers), epoch)
        self._ack_news = False
        self._flush()
        self._datagrams.append(record)

    # ------------------------------------------------------------------ output to the state machine
    def next_message(self) -> ReceivedMessage | None:
        """The next complete handshake message, in message_seq order.

        Call it until it returns None after every :meth:`receive_datagram`:
        records behind a completed message are only processed then (see
        :meth:`_pump`).
        """
        msg = self.reassembler.next_message()
        if msg is None and (self._incoming or self._datagram_open):
            self._pump()
            msg = self.reassembler.next_message()
        return msg

    def next_record(self) -> ReceivedRecord | None:
        """The next received alert or application data record."""
        return self._records_in.popleft() if self._records_in else None
