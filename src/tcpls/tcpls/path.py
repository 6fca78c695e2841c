"""One TCP connection of a TCPLS session: state, record protection, ACK state.

Theory of operation
-------------------
Every connection of a session protects its records with the session's
application traffic keys and its own nonce (draft §"Record protection"):

    nonce = write_iv XOR (Connection ID << 64) XOR connection record sequence

i.e. the 32-bit Connection ID is XORed into the top 32 bits of the 96-bit
IV and each connection keeps its own 64-bit sequence number per direction.
Connection 0 (the handshake connection) therefore continues exactly the
nonces of plain TLS 1.3, and no (Connection ID, sequence) pair — hence no
nonce — is ever used twice under one key.

Key updates are per connection and direction (RFC 9846 §4.6.3): a KeyUpdate
sent on a connection switches that connection's sending key to the next
generation and restarts its nonce sequence at 0 (§5.3), with the same
Connection ID mask. ACK frames do not name nonce sequence numbers but
*record numbers*: every record sent on a connection, whatever its key,
counts once (``tx_records`` / ``rx_records``), so acknowledgments stay
unambiguous across key updates; without a key update the two coincide.

A connection remembers, for each record it sent, the stream ranges the
record carried and when it was sent, until an ACK frame (which may arrive
on any connection) covers it. If the connection dies, the session hands the
unacknowledged ranges back to their streams for retransmission elsewhere.
"""

from __future__ import annotations

from collections import deque
from enum import Enum
from typing import Optional

from ..tls.protection import RecordDecryptor, RecordEncryptor
from ..tls.record import RecordReader
from ..tls.suites import CipherSuiteInfo


class ConnState(Enum):
    HANDSHAKING = "handshaking"  # connection 0: TLS handshake in progress
    JOINING = "joining"  # join sent/received, key possession not yet proven
    ACTIVE = "active"
    CLOSED = "closed"  # closed by us or the peer (Connection Reset, EOF)
    FAILED = "failed"  # declared dead


class _ConnMask:
    """Mixin: XOR the Connection ID into the top 32 bits of the 96-bit IV."""

    __slots__ = ()

    def _set_conn_id(self, conn_id: int) -> None:
        self.conn_id = conn_id  # type: ignore[attr-defined]
        self._iv ^= conn_id << 64  # type: ignore[attr-defined]

    def update(self, new_secret: bytes) -> None:
        """Next key generation (KeyUpdate): new key and IV, sequence 0, same Connection ID."""
        self._install(new_secret)  # type: ignore[attr-defined]
        self._iv ^= self.conn_id << 64  # type: ignore[attr-defined]


class ConnectionEncryptor(_ConnMask, RecordEncryptor):
    __slots__ = ("conn_id",)

    def __init__(self, suite: CipherSuiteInfo, secret: bytes, conn_id: int, seq: int = 0) -> None:
        super().__init__(suite, secret)
        self._set_conn_id(conn_id)
        self.seq = seq


class ConnectionDecryptor(_ConnMask, RecordDecryptor):
    __slots__ = ("conn_id",)

    def __init__(self, suite: CipherSuiteInfo, secret: bytes, conn_id: int, seq: int = 0) -> None:
        super().__init__(suite, secret)
        self._set_conn_id(conn_id)
        self.seq = seq


#: What one sent record carried: (stream_id, offset, length, fin) per Stream frame.
Ranges = list[tuple[int, int, int, bool]]


class SentRecord:
    __slots__ = ("seq", "sent_at", "ranges", "ack_eliciting", "controls")

    def __init__(self, seq: int, sent_at: float, ranges: Ranges, ack_eliciting: bool, controls: Optional[list] = None) -> None:
        self.controls = controls or []  # control frames to resend if the record is lost
        self.seq = seq
        self.sent_at = sent_at
        self.ranges = ranges
        self.ack_eliciting = ack_eliciting


class Connection:
    """One TCP connection as the session sees it."""

    def __init__(self, conn_id: int, state: ConnState) -> None:
        self.conn_id = conn_id
        self.state = state
        self.out: list[bytes] = []
        self.reader = RecordReader()
        self.encryptor: Optional[ConnectionEncryptor] = None
        self.decryptor: Optional[ConnectionDecryptor] = None
        self.sent: deque[SentRecord] = deque()  # unacknowledged, oldest first
        self.in_flight = 0  # stream bytes in unacknowledged records
        self.highest_acked = -1
        self.last_ack_at = -1.0  # when an ACK last acknowledged new records
        self.srtt: Optional[float] = None
        self.rttvar = 0.0
        # receive side: what we owe the peer an ACK for
        self.highest_received = -1
        self.ack_pending = False
        # record numbers for ACK frames (never reset by a key update)
        self.tx_records = 0
        self.rx_records = 0
        # key generation per direction (0: the session's first application keys)
        self.tx_gen = 0
        self.rx_gen = 0
        self.last_received = 0.0
        self.last_sent = 0.0
        self.ping_outstanding = False
        # send side backpressure, reported by the adapter: False while the
        # TCP connection's buffers are full (the scheduler skips it)
        self.writable = True

    def queued(self) -> int:
        """Bytes of records waiting in ``out`` for the adapter."""
        return sum(len(b) for b in self.out)

    @property
    def usable(self) -> bool:
        return self.state is ConnState.ACTIVE

    @property
    def rtt(self) -> float:
        """Smoothed RTT, or 0 before any sample (unknown counts as fast)."""
        return self.srtt if self.srtt is not None else 0.0

    def install_keys(self, suite: CipherSuiteInfo, tx: bytes, tx_seq: int, rx: bytes, rx_seq: int) -> None:
        self.encryptor = ConnectionEncryptor(suite, tx, self.conn_id, tx_seq)
        self.decryptor = ConnectionDecryptor(suite, rx, self.conn_id, rx_seq)
        self.tx_records, self.rx_records = tx_seq, rx_seq

    def on_ack(self, highest_seq: int, now: float) -> list[SentRecord]:
        """Records newly acknowledged by an ACK up to ``highest_seq``."""
        acked: list[SentRecord] = []
        sent = self.sent
        while sent and sent[0].seq <= highest_seq:
            rec = sent.popleft()
            acked.append(rec)
            self.in_flight -= sum(r[2] for r in rec.ranges)
        if acked:
            self.last_ack_at = now
        if highest_seq > self.highest_acked:
            self.highest_acked = highest_seq
        if acked and acked[-1].seq == highest_seq:
            sample = max(now - acked[-1].sent_at, 0.0)
            if self.srtt is None:
                self.srtt, self.rttvar = sample, sample / 2
            else:
                self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - sample)
                self.srtt = 0.875 * self.srtt + 0.125 * sample
        self.ping_outstanding = False
        return acked

    def take_unacked(self) -> list[SentRecord]:
        recs = list(self.sent)
        self.sent.clear()
        self.in_flight = 0
        return recs
