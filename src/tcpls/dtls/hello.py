"""Reassembling a first ClientHello before any connection exists (RFC 9147 §5.1, §5.5).

Theory of operation
-------------------
A server that requires a cookie answers the first ClientHello without
creating a connection. A ClientHello may be bigger than a datagram (large
key shares, e.g. hybrid post-quantum groups), so the client fragments it
(§5.5) over several records, in one datagram or in several.

* Fragments in one datagram need no state: :func:`collect_client_hello`
  reassembles them from the datagram alone.
* Fragments spread over several datagrams must be kept somewhere until the
  rest arrives. :class:`ClientHelloReassembler` is that place: a buffer
  owned by the endpoint (or by a server connection waiting for its
  cookie), keyed by the peer's address, bounded in entries, bytes, message
  size and time. When a ClientHello is complete it returns one datagram
  holding the whole message in a single DTLSPlaintext record, which the
  stateless functions of :mod:`tcpls.dtls.connection` and
  ``DTLSConnection.receive_datagram`` accept like any other.

Epoch 0 is unauthenticated, so nothing here raises on bad input: a fragment
that does not fit (another message, changed bytes) resets the entry for
that address, and anything that is not a ClientHello fragment is ignored.
This module never reads a clock: ``now`` is passed in.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Hashable, Optional

from ..errors import ProtocolError
from ..tls.enums import HandshakeType as H
from .handshake import HandshakeFragment, parse_fragments
from .record import CT_HANDSHAKE, PlaintextRecord, encode_plaintext, parse_datagram

__all__ = ["ClientHelloReassembler", "collect_client_hello", "client_hello_fragments"]


#: More disjoint received ranges than this in one ClientHello: given up
#: (a peer sending tiny scattered fragments only wastes our time).
_MAX_RANGES = 32


@dataclass
class _Partial:
    """One ClientHello being reassembled (a message_seq and a length)."""

    message_seq: int
    length: int
    record_seq: int
    started: float
    body: bytearray = field(init=False)
    ranges: list[tuple[int, int]] = field(init=False)  # received [start, end), sorted, disjoint
    missing: int = field(init=False)

    def __post_init__(self) -> None:
        self.body = bytearray(self.length)
        self.ranges = []
        self.missing = self.length

    def matches(self, frag: HandshakeFragment) -> bool:
        return frag.message_seq == self.message_seq and frag.length == self.length

    def add(self, frag: HandshakeFragment) -> bool:
        """Copy ``frag`` in; False if it contradicts bytes already received
        (§5.5) or scatters the message into too many pieces."""
        start, end = frag.fragment_offset, frag.end
        body = frag.body
        if start == end:
            return True
        for s, e in self.ranges:
            lo, hi = max(s, start), min(e, end)
            if lo < hi and self.body[lo:hi] != body[lo - start : hi - start]:
                return False
        self.body[start:end] = body
        merged: list[tuple[int, int]] = []
        for s, e in sorted(self.ranges + [(start, end)]):
            if merged and s <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], e))
            else:
                merged.append((s, e))
        if len(merged) > _MAX_RANGES:
            return False
        self.ranges = merged
        self.missing = self.length - sum(e - s for s, e in merged)
        return True

    def datagram(self) -> bytes:
        """The whole ClientHello as one fragment in one DTLSPlaintext record."""
        whole = HandshakeFragment(H.client_hello, self.length, self.message_seq, 0, bytes(self.body))
        return encode_plaintext(CT_HANDSHAKE, self.record_seq, whole.encode())


def client_hello_fragments(datagram: bytes | bytearray | memoryview) -> list[tuple[int, HandshakeFragment]]:
    """``(record_seq, fragment)`` for every ClientHello fragment in the
    plaintext handshake records of ``datagram`` (malformed records and
    fragments are skipped: epoch 0 is unauthenticated)."""
    try:
        records, _ = parse_datagram(datagram, 0)
    except (ProtocolError, ValueError):
        return []
    out: list[tuple[int, HandshakeFragment]] = []
    for rec in records:
        if not isinstance(rec, PlaintextRecord) or rec.content_type != CT_HANDSHAKE:
            continue
        try:
            frags = parse_fragments(rec.fragment)
        except (ProtocolError, ValueError):
            continue
        out.extend((rec.seq, f) for f in frags if f.msg_type == H.client_hello)
    return out


def collect_client_hello(
    datagram: bytes | bytearray | memoryview, max_message_size: int = 1 << 16
) -> Optional[tuple[int, HandshakeFragment]]:
    """The ClientHello carried whole by ``datagram``, reassembled from its
    fragments in that datagram alone (§5.5): ``(record_seq, fragment)`` with
    ``fragment`` the complete message (record_seq: that of the record which
    carried its first bytes). None when the datagram holds no complete
    ClientHello (the fragments of the first message_seq seen are used)."""
    return _collect(client_hello_fragments(datagram), max_message_size)


def _collect(frags: list[tuple[int, HandshakeFragment]], max_message_size: int) -> Optional[tuple[int, HandshakeFragment]]:
    if not frags:
        return None
    seq0, first = frags[0]
    if first.length > max_message_size:
        return None
    if first.fragment_offset == 0 and first.end == first.length:
        return seq0, first  # the usual case: one fragment, nothing to copy
    partial = _Partial(first.message_seq, first.length, seq0, 0.0)
    for rec_seq, frag in frags:
        if not partial.matches(frag):
            continue
        if frag.fragment_offset == 0:
            partial.record_seq = rec_seq
        if not partial.add(frag):
            return None
    if partial.missing:
        return None
    return partial.record_seq, HandshakeFragment(H.client_hello, partial.length, partial.message_seq, 0, bytes(partial.body))


class ClientHelloReassembler:
    """A bounded buffer for ClientHellos fragmented over several datagrams.

    Owned by an endpoint (one for all addresses) or by a server
    connection waiting for its cookie. Per address it keeps at most one
    ClientHello in progress; it never raises on network input.

    Args:
        max_entries: addresses with a ClientHello in progress; a new one
            beyond that evicts the oldest.
        max_bytes: total bytes buffered (the sum of the announced message
            lengths); a new entry evicts the oldest ones until it fits.
        max_message_size: larger announced ClientHellos are ignored.
        timeout: seconds after its first fragment an incomplete entry is
            forgotten (the client retransmits the whole ClientHello anyway).
    """

    def __init__(
        self,
        *,
        max_entries: int = 256,
        max_bytes: int = 1 << 20,
        max_message_size: int = 16384,
        timeout: float = 10.0,
    ) -> None:
        if max_entries < 1 or max_bytes < 1 or max_message_size < 1 or timeout <= 0:
            raise ValueError("ClientHelloReassembler limits must be positive")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_message_size = min(max_message_size, max_bytes)
        self.timeout = timeout
        self._entries: OrderedDict[Hashable, _Partial] = OrderedDict()
        self._bytes = 0
        #: Entries dropped to make room (diagnostics).
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def buffered_bytes(self) -> int:
        return self._bytes

    def add(self, address: Hashable, datagram: bytes | bytearray | memoryview, now: float) -> Optional[bytes]:
        """Feed one datagram from ``address``.

        Returns:
            ``datagram`` itself when it carries a complete ClientHello; a
            datagram holding the whole ClientHello in one record when this
            datagram completed one spread over several; None otherwise
            (fragment buffered, or no ClientHello fragment at all).
        """
        self.expire(now)
        frags = client_hello_fragments(datagram)
        if not frags:
            return None
        if _collect(frags, self.max_message_size) is not None:
            self._forget(address)
            return bytes(datagram)
        result: Optional[bytes] = None
        for rec_seq, frag in frags:
            if frag.length > self.max_message_size or frag.length == 0:
                continue
            entry = self._entries.get(address)
            if entry is not None and not entry.matches(frag):
                self._forget(address)  # another ClientHello: start over
                entry = None
            if entry is None:
                entry = self._create(address, frag, rec_seq, now)
            if frag.fragment_offset == 0:
                entry.record_seq = rec_seq
            if not entry.add(frag):
                self._forget(address)
                continue
            if not entry.missing:
                result = entry.datagram()
                self._forget(address)
        return result

    def expire(self, now: float) -> None:
        """Forget entries older than ``timeout``."""
        while self._entries:
            address, entry = next(iter(self._entries.items()))
            if now - entry.started < self.timeout:
                break
            self._forget(address)

    def get_timer(self) -> Optional[float]:
        """When the oldest entry expires (None: empty)."""
        if not self._entries:
            return None
        return next(iter(self._entries.values())).started + self.timeout

    def discard(self, address: Hashable) -> None:
        """Forget the ClientHello in progress from ``address`` (if any)."""
        self._forget(address)

    def _create(self, address: Hashable, frag: HandshakeFragment, rec_seq: int, now: float) -> _Partial:
        while self._entries and (len(self._entries) >= self.max_entries or self._bytes + frag.length > self.max_bytes):
            self._forget(next(iter(self._entries)))
            self.evicted += 1
        entry = _Partial(frag.message_seq, frag.length, rec_seq, now)
        self._entries[address] = entry
        self._bytes += frag.length
        return entry

    def _forget(self, address: Hashable) -> None:
        entry = self._entries.pop(address, None)
        if entry is not None:
            self._bytes -= entry.length
