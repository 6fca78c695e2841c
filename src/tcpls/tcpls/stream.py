"""One TCPLS stream: send buffer with retransmission, bounded receive reassembly.

Theory of operation
-------------------
Send side. Written bytes stay in ``_buf`` (starting at stream offset
``_base``) until the peer has acknowledged every record that carried them:
TCPLS ACKs are per connection and per record, and the session maps each
acknowledged record back to the ``(stream, offset, length, fin)`` ranges it
carried (:meth:`on_acked`). A range sent on a connection that died is handed
back with :meth:`on_lost` and goes out again, first, from the retransmit
set. :meth:`next_chunk` hands out retransmissions, then new bytes, never
beyond ``_base + window``: that bound is the flow control. The receiver
reorders at most ``window`` bytes (the same setting on both sides), and
since the sender never gets ahead of its lowest unacknowledged byte by
more than that, a conforming sender can never overflow a receiver.

Receive side. Bytes at ``recv_offset`` are delivered at once; bytes beyond
it wait in a reorder buffer of at most ``window`` bytes past
``recv_offset`` (a frame reaching further is a protocol violation, never a
reason to buffer more). The buffer keeps disjoint segments (a
retransmission overlapping buffered bytes only adds the bytes not yet held,
and adjacent segments merge), so it holds at most ``window`` bytes in at
most ``MAX_REORDER_SEGMENTS`` pieces whatever the peer sends. Bytes below
``recv_offset`` or already buffered are duplicates (retransmissions after a
failover) and are dropped: delivery is exactly once by offset.

Lifetime. A stream is :attr:`Stream.finished` once both directions are:
ours when the peer acknowledged every byte and the FIN (or the Stream Reset
we sent), the peer's when its FIN was delivered (or its reset received).
The session then forgets it.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Optional

from ..errors import IllegalParameter, LocalProtocolError
from ..tls.enums import AlertDescription


#: Most disjoint out-of-order pieces one stream buffers (each gap needs a
#: separate record in flight; a peer scattering tiny frames hits this bound).
MAX_REORDER_SEGMENTS = 4096


class ReorderBufferOverflow(LocalProtocolError):
    """The peer sent stream data beyond the reorder window (flow control violation)."""

    def __init__(self, message: str) -> None:
        LocalProtocolError.__init__(self, AlertDescription.unexpected_message, message)


class RangeSet:
    """Disjoint, sorted half-open integer ranges ``[start, end)``."""

    __slots__ = ("ranges",)

    def __init__(self) -> None:
        self.ranges: list[list[int]] = []

    def add(self, start: int, end: int) -> None:
        if start >= end:
            return
        out: list[list[int]] = []
        placed = False
        for s, e in self.ranges:
            if e < start:
                out.append([s, e])
            elif s > end:
                if not placed:
                    out.append([start, end])
                    placed = True
                out.append([s, e])
            else:
                start, end = min(s, start), max(e, end)
        if not placed:
            out.append([start, end])
        self.ranges = out

    def subtract(self, start: int, end: int) -> None:
        out: list[list[int]] = []
        for s, e in self.ranges:
            if e <= start or s >= end:
                out.append([s, e])
                continue
            if s < start:
                out.append([s, start])
            if e > end:
                out.append([end, e])
        self.ranges = out

    def first(self) -> Optional[tuple[int, int]]:
        return (self.ranges[0][0], self.ranges[0][1]) if self.ranges else None

    def covers_prefix_from(self, start: int) -> int:
        """End of the range containing ``start`` (``start`` if none)."""
        for s, e in self.ranges:
            if s <= start < e:
                return e
        return start

    def __bool__(self) -> bool:
        return bool(self.ranges)


class Stream:
    """State of one stream in both directions. Owned by the session."""

    def __init__(self, stream_id: int, window: int, high_water: int, low_water: int) -> None:
        self.stream_id = stream_id
        self.window = window
        self.high_water = high_water
        self.low_water = low_water
        #: Connection this stream is pinned to (None: the scheduler chooses).
        self.conn_id: Optional[int] = None
        # send side
        self._buf = bytearray()
        self._base = 0  # stream offset of _buf[0]; everything below is acknowledged
        self._next = 0  # next never-sent offset
        self._acked = RangeSet()
        self._retransmit = RangeSet()
        self.fin_queued = False
        self._fin_sent = False
        self._fin_lost = False
        self.fin_acked = False
        self.reset_sent = False
        self.reset_acked = False  # the peer acknowledged our Stream Reset
        self.blocked = False  # buffered reached high_water since the last SendBufferLow
        # receive side
        self.recv_offset = 0
        self._pending: dict[int, bytearray] = {}  # disjoint segments by offset
        self._pending_offsets: list[int] = []  # sorted keys of _pending
        self._pending_bytes = 0
        self.final_size: Optional[int] = None
        self.recv_finished = False  # FIN delivered or reset received

    # ------------------------------------------------------------------ send
    @property
    def send_end(self) -> int:
        return self._base + len(self._buf)

    @property
    def buffered(self) -> int:
        """Bytes written and not yet acknowledged by the peer."""
        return len(self._buf)

    def write(self, data: bytes, fin: bool) -> None:
        self._buf += data
        if fin:
            self.fin_queued = True
        if self.buffered >= self.high_water:
            self.blocked = True

    def has_data_to_send(self) -> bool:
        if self.reset_sent:
            return False
        if self._retransmit or self._fin_lost:
            return True
        if self._next < min(self.send_end, self._base + self.window):
            return True
        return self.fin_queued and not self._fin_sent

    def next_chunk(self, max_len: int) -> Optional[tuple[int, bytes, bool]]:
        """``(offset, data, fin)`` to put in one Stream frame, or None."""
        if self.reset_sent:
            return None
        first = self._retransmit.first()
        if first is not None:
            start, end = first
            end = min(end, start + max_len)
            self._retransmit.subtract(start, end)
            fin = self.fin_queued and end == self.send_end and (self._fin_lost or not self._fin_sent)
            if fin:
                self._fin_lost = False
                self._fin_sent = True
            return start, bytes(self._buf[start - self._base : end - self._base]), fin
        limit = min(self.send_end, self._base + self.window)
        if self._next < limit:
            start = self._next
            end = min(limit, start + max_len)
            self._next = end
            fin = self.fin_queued and end == self.send_end
            if fin:
                self._fin_sent = True
            return start, bytes(self._buf[start - self._base : end - self._base]), fin
        if self.fin_queued and self._next == self.send_end and (not self._fin_sent or self._fin_lost):
            self._fin_sent = True
            self._fin_lost = False
            return self.send_end, b"", True
        return None

    def on_acked(self, offset: int, length: int, fin: bool) -> bool:
        """The peer received these bytes. Returns True if the buffer shrank."""
        if fin:
            self.fin_acked = True
        if length == 0:
            return False
        self._acked.add(offset, offset + length)
        self._retransmit.subtract(offset, offset + length)
        new_base = self._acked.covers_prefix_from(self._base)
        if new_base > self._base:
            del self._buf[: new_base - self._base]
            self._acked.subtract(0, new_base)
            self._base = new_base
            return True
        return False

    def on_lost(self, offset: int, length: int, fin: bool) -> None:
        """These bytes went out on a connection that died: send them again."""
        start = max(offset, self._base)
        end = offset + length
        if start < end:
            self._retransmit.add(start, end)
            for s, e in list(self._acked.ranges):
                self._retransmit.subtract(s, e)
        if fin and not self.fin_acked:
            self._fin_lost = True

    @property
    def send_done(self) -> bool:
        return self.reset_sent or (self.fin_acked and not self._buf)

    @property
    def send_closed(self) -> bool:
        """Our direction is over and the peer knows it (all acknowledged)."""
        return self.reset_acked or (self.fin_acked and not self._buf)

    @property
    def finished(self) -> bool:
        """Both directions are over: the session may forget this stream."""
        return self.send_closed and self.recv_finished

    @property
    def reorder_buffered(self) -> int:
        """Bytes waiting in the reorder buffer."""
        return self._pending_bytes

    # --------------------------------------------------------------- receive
    def receive(self, offset: int, data: bytes, fin: bool) -> list[tuple[int, bytes]]:
        """Accept one Stream frame; returns the chunks now deliverable in order.

        Raises:
            ReorderBufferOverflow: data beyond ``recv_offset + window``.
            IllegalParameter: inconsistent final size.
        """
        end = offset + len(data)
        if self.final_size is not None and (end > self.final_size or (fin and end != self.final_size)):
            raise IllegalParameter(f"stream {self.stream_id}: data beyond or changing its final size")
        if fin:
            if end < self.recv_offset or any(o + len(d) > end for o, d in self._pending.items()):
                raise IllegalParameter(f"stream {self.stream_id}: FIN below data already received")
            self.final_size = end
        if self.recv_finished:
            return []
        if end > self.recv_offset + self.window:
            raise ReorderBufferOverflow(
                f"stream {self.stream_id}: data up to offset {end} exceeds the reorder window "
                f"({self.window} bytes past {self.recv_offset})"
            )
        out: list[tuple[int, bytes]] = []
        if end <= self.recv_offset:
            return out  # duplicate
        if offset < self.recv_offset:
            data = data[self.recv_offset - offset :]
            offset = self.recv_offset
        if offset > self.recv_offset:
            self._buffer(offset, data)
            return out
        out.append((offset, data))
        self.recv_offset = end
        # drain the reorder buffer (segments are disjoint and sorted)
        offs = self._pending_offsets
        while offs and offs[0] <= self.recv_offset:
            o = offs.pop(0)
            d = self._pending.pop(o)
            self._pending_bytes -= len(d)
            e = o + len(d)
            if e > self.recv_offset:
                out.append((self.recv_offset, bytes(d[self.recv_offset - o :])))
                self.recv_offset = e
        return out

    def _buffer(self, offset: int, data: bytes) -> None:
        """Keep the bytes of ``[offset, offset + len(data))`` not buffered yet."""
        end = offset + len(data)
        offs, pending = self._pending_offsets, self._pending
        pieces: list[tuple[int, bytes]] = []
        pos = offset
        j = max(bisect_right(offs, offset) - 1, 0)
        while j < len(offs) and offs[j] < end:
            o = offs[j]
            e = o + len(pending[o])
            if e > pos:
                if o > pos:
                    pieces.append((pos, data[pos - offset : o - offset]))
                pos = e
            j += 1
        if pos < end:
            pieces.append((pos, data[pos - offset :]))
        for p, d in pieces:
            self._pending_bytes += len(d)
            k = bisect_right(offs, p)
            if k > 0 and offs[k - 1] + len(pending[offs[k - 1]]) == p:
                p = offs[k - 1]
                pending[p] += d  # append to the adjacent segment before
                k -= 1
            else:
                offs.insert(k, p)
                pending[p] = bytearray(d)
            if k + 1 < len(offs) and offs[k + 1] == p + len(pending[p]):
                pending[p] += pending.pop(offs.pop(k + 1))  # and merge the one after
        if self._pending_bytes > self.window:
            raise ReorderBufferOverflow(f"stream {self.stream_id}: reorder buffer over {self.window} bytes")
        if len(offs) > MAX_REORDER_SEGMENTS:
            raise ReorderBufferOverflow(
                f"stream {self.stream_id}: reorder buffer split in over {MAX_REORDER_SEGMENTS} pieces"
            )

    @property
    def highest_received(self) -> int:
        """End of the furthest stream byte received (delivered or buffered)."""
        if not self._pending_offsets:
            return self.recv_offset
        last = self._pending_offsets[-1]
        return max(self.recv_offset, last + len(self._pending[last]))

    def drop_reorder_buffer(self) -> None:
        """The peer reset its direction: out-of-order bytes will never be delivered."""
        self._pending.clear()
        self._pending_offsets.clear()
        self._pending_bytes = 0

    @property
    def fin_complete(self) -> bool:
        return self.final_size is not None and self.recv_offset == self.final_size
