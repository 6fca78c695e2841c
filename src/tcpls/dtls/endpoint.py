"""Many DTLS 1.3 associations over one UDP socket, sans-IO.

Theory of operation
-------------------
:class:`DTLSEndpoint` multiplexes DTLS connections (any object with the
:class:`Connection` interface, normally :class:`tcpls.dtls.connection.DTLSConnection`)
over one datagram socket that an adapter owns. Like the connections it
drives, it never touches sockets, threads or the clock:

* ``receive_datagram(data, addr, now)`` — one datagram from the socket;
* ``datagrams_to_send(now, limit)`` → ``[(bytes, addr), ...]``;
* ``get_timer()`` / ``handle_timer(now)`` — one deadline for everything;
* ``next_event()`` — :class:`EndpointEvent` objects for the application;
* verbs: ``connect``, ``send_data``, ``key_update``, ``close``.

Demultiplexing (RFC 9147 §4, §9). A datagram whose first record is a
unified header with the C bit carries the connection ID the endpoint chose
for that association (``cid_length`` bytes, assigned at creation and
unique per endpoint), so it is routed by CID and the peer may change
address. Everything else is routed by source address.

Two memory pools with separate hard limits (issue 5: a handshake flood must
not hurt established traffic):

* *handshakes*: at most ``max_handshakes`` contexts and ``max_handshake_bytes``
  (each context is charged ``handshake_cost`` bytes). When full, a new
  ClientHello evicts the oldest handshake that made no progress for
  ``stale_handshake_after`` seconds, or is refused (dropped, event
  :class:`HandshakeRefused`). Handshakes not finished within
  ``handshake_timeout`` are cancelled.
* *established*: at most ``max_connections``; a handshake that completes
  while the pool is full is closed. Established connections are never
  evicted to make room for handshakes.

Stateless cookies (§5.1). With a :class:`StatelessResponder`, a ClientHello
that carries no valid cookie is answered (HelloRetryRequest with a cookie)
without creating any state; the reply waits in a bounded queue of its own.

Fairness. The writer serves connections with pending output round-robin,
at most ``burst`` datagrams each per turn, and mixes in one stateless reply
after every ``stateless_ratio`` connection datagrams (stateless replies use
the whole budget when no connection has output). A noisy peer can thus
neither starve other connections nor the cookie exchange.

Offloading (the expensive part of a handshake is public-key work). All
datagrams of an association that is still handshaking are processed by a
pluggable :class:`Executor`: ``submit(fn)`` returns a future-like object
(``done()``, ``result()``, ``add_done_callback()``). The default
:class:`InlineExecutor` runs the job at once (deterministic tests); an
adapter can pass a ``concurrent.futures.ThreadPoolExecutor`` (``cryptography``
releases the GIL inside OpenSSL). While a job runs, the endpoint does not
touch that connection: later datagrams queue (bounded) behind it, and the
job's results are collected by :meth:`DTLSEndpoint.poll` (which every entry
point calls). Established connections are always processed inline, so they
keep being served while handshakes wait for workers.

Compact established state. An optional ``compactor(conn)`` hook is called
once a connection is established and idle (no output, no timer pending
retransmission); the object it returns replaces the connection (see
:mod:`tcpls.dtls.established`), so that everything only the handshake
needed can be freed.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import os
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Protocol

from ..errors import TLSError, UsageError
from ..tls import events as _ev

__all__ = [
    "Association",
    "AssociationState",
    "Connection",
    "ConnectionClosed",
    "CookieResponder",
    "build_endpoint",
    "dtls_connection_factory",
    "ConnectionEstablished",
    "ConnectionEvent",
    "DTLSEndpoint",
    "EndpointEvent",
    "EndpointLimits",
    "Executor",
    "HandshakeCancelled",
    "HandshakeRefused",
    "InlineExecutor",
    "StatelessResponder",
    "StatelessVerdict",
]

Address = Any  # whatever the socket layer uses: (host, port) tuples normally


# --------------------------------------------------------------------------
# Interfaces
# --------------------------------------------------------------------------
class Connection(Protocol):
    """What the endpoint needs from one association's engine."""

    def start_handshake(self, now: float) -> None: ...
    def receive_datagram(self, data: bytes, now: float) -> None: ...
    def datagrams_to_send(self, now: float) -> list[bytes]: ...
    def get_timer(self) -> Optional[float]: ...
    def handle_timer(self, now: float) -> None: ...
    def next_event(self) -> Any: ...
    def send_data(self, data: bytes) -> None: ...
    def close(self) -> None: ...


class StatelessVerdict(enum.Enum):
    ACCEPT = "accept"  #: create state for this ClientHello (cookie valid or not required)
    REPLY = "reply"  #: answer with the reply datagram, keep nothing
    DROP = "drop"  #: not a ClientHello worth answering


class StatelessResponder(Protocol):
    """Decides, without state, what to do with a datagram from an unknown peer (§5.1)."""

    def check(self, data: bytes, addr: Address, now: float) -> tuple[StatelessVerdict, Optional[bytes]]:
        """``(REPLY, datagram)``, ``(ACCEPT, None or the datagram to start
        the association with)`` or ``(DROP, None)``."""
        ...


class Future(Protocol):
    def done(self) -> bool: ...
    def result(self) -> Any: ...
    def add_done_callback(self, fn: Callable[[Any], None]) -> None: ...


class Executor(Protocol):
    def submit(self, fn: Callable[..., Any], *args: Any) -> Future: ...


class _DoneFuture:
    __slots__ = ("_result", "_error")

    def __init__(self, fn: Callable[..., Any], args: tuple) -> None:
        self._result: Any = None
        self._error: Optional[BaseException] = None
        try:
            self._result = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - re-raised by result()
            self._error = exc

    def done(self) -> bool:
        return True

    def result(self) -> Any:
        if self._error is not None:
            raise self._error
        return self._result

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        fn(self)


class InlineExecutor:
    """Runs each job at once in the caller's thread (the default)."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> _DoneFuture:
        return _DoneFuture(fn, args)


# --------------------------------------------------------------------------
# Configuration and events
# --------------------------------------------------------------------------
@dataclass
class EndpointLimits:
    """Hard limits and fairness knobs of a :class:`DTLSEndpoint`.

    Attributes:
        max_handshakes: handshake contexts at once.
        max_handshake_bytes: memory budget for handshake contexts.
        handshake_cost: bytes charged per handshake context.
        max_connections: established connections at once.
        handshake_timeout: seconds a handshake may take before it is cancelled.
        stale_handshake_after: a handshake idle this long may be evicted by a
            new one when the handshake pool is full.
        idle_timeout: established connections silent this long are closed
            (None: never).
        max_pending_datagrams: datagrams queued for a connection whose
            previous ones are still being processed by the executor.
        max_stateless_replies: stateless replies waiting to be sent.
        burst: datagrams one connection may send per round-robin turn.
        stateless_ratio: connection datagrams between two stateless replies.
        compact_after: with a ``compactor``, seconds an association stays
            established (and quiet) before its engine is replaced by the
            compact state: long enough for the peer to be done
            retransmitting its last handshake flight.
        peer_close_linger: seconds an established association stays open
            for sending after the peer's close_notify (a half-close, RFC 9846
            §6.1: the peer closed its direction only), until the application
            calls :meth:`DTLSEndpoint.close`; lets a server answer requests
            that arrived together with the close_notify. 0: answer with our
            close_notify and forget the association at once.
    """

    max_handshakes: int = 1024
    max_handshake_bytes: int = 64 * 1024 * 1024
    handshake_cost: int = 32 * 1024
    max_connections: int = 100_000
    handshake_timeout: float = 10.0
    stale_handshake_after: float = 2.0
    idle_timeout: Optional[float] = None
    max_pending_datagrams: int = 16
    max_stateless_replies: int = 256
    burst: int = 4
    stateless_ratio: int = 4
    compact_after: float = 5.0
    peer_close_linger: float = 0.0

    def __post_init__(self) -> None:
        for name in ("max_handshakes", "max_connections", "burst", "stateless_ratio", "max_pending_datagrams"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.handshake_timeout <= 0:
            raise ValueError("handshake_timeout must be positive")


class AssociationState(enum.Enum):
    HANDSHAKING = "handshaking"
    ESTABLISHED = "established"
    CLOSED = "closed"


class EndpointEvent:
    """Base class of the endpoint's events."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class ConnectionEstablished(EndpointEvent):
    """The handshake of ``association`` completed."""

    association: "Association"


@dataclass(frozen=True, slots=True)
class ConnectionEvent(EndpointEvent):
    """An event of the connection engine (data received, key update, ...)."""

    association: "Association"
    event: Any


@dataclass(frozen=True, slots=True)
class ConnectionClosed(EndpointEvent):
    """The association is gone; ``error`` tells why when it failed."""

    association: "Association"
    error: Optional[BaseException] = None


@dataclass(frozen=True, slots=True)
class HandshakeCancelled(EndpointEvent):
    """A handshake was cancelled: ``reason`` is ``"timeout"`` or ``"evicted"``."""

    association: "Association"
    reason: str


@dataclass(frozen=True, slots=True)
class HandshakeRefused(EndpointEvent):
    """A new handshake from ``addr`` was refused (the handshake pool is full)."""

    addr: Address
    reason: str


# --------------------------------------------------------------------------
# One association
# --------------------------------------------------------------------------
class Association:
    """The endpoint's bookkeeping for one peer (handles given to the application)."""

    __slots__ = (
        "id",
        "addr",
        "cid",
        "conn",
        "state",
        "is_client",
        "started",
        "last_activity",
        "outbox",
        "inbox",
        "busy",
        "timer",
        "in_ready",
        "closing",
    )

    def __init__(self, ident: int, addr: Address, cid: bytes, conn: Any, is_client: bool, now: float) -> None:
        self.id = ident
        self.addr = addr
        self.cid = cid
        self.conn = conn
        self.state = AssociationState.HANDSHAKING
        self.is_client = is_client
        self.started = now
        self.last_activity = now
        self.outbox: Optional[deque[bytes]] = None  # allocated only while output waits
        self.inbox: Optional[deque[tuple[bytes, float]]] = None  # while an executor job runs
        self.busy = False
        self.timer: Optional[float] = None
        self.in_ready = False
        self.closing = False  # close_notify sent, waiting for the peer's

    @property
    def established(self) -> bool:
        return self.state is AssociationState.ESTABLISHED

    def __repr__(self) -> str:
        return f"<Association {self.id} {self.addr!r} {self.state.value}>"


def _authenticated_records(conn: Any) -> int:
    """Records of ``conn`` that passed authentication so far."""
    count = getattr(conn, "authenticated_records", None)
    if count is not None:
        return int(count)
    records = getattr(conn, "_records", None)  # DTLSConnection's record layer
    if records is None:
        return 0
    return sum(epoch.records_deprotected for epoch in records.read_epochs.values())


def _is_terminal(event: Any) -> bool:
    # A fatal alert ends the association; so does close_notify (§5.10: DTLS
    # has no half-close worth keeping state for, we answer with ours).
    return isinstance(event, (_ev.AlertReceived, _ev.CloseNotifyReceived))


# --------------------------------------------------------------------------
# The endpoint
# --------------------------------------------------------------------------
class DTLSEndpoint:
    """Demultiplexes one UDP socket into many DTLS associations.

    Args:
        connection_factory: ``factory(addr, cid, is_client, **kwargs)`` →
            a new :class:`Connection` (``cid``: the connection ID the peer
            must put on records to us, ``b""`` without CIDs; ``kwargs`` are
            those given to :meth:`connect`).
        server: accept handshakes from unknown peers.
        limits: :class:`EndpointLimits`.
        stateless: optional :class:`StatelessResponder` consulted before any
            state is created for an unknown peer.
        executor: where handshake datagrams are processed (default inline).
        cid_length: length of the connection IDs the endpoint assigns (0:
            route by address only).
        compactor: optional ``compactor(conn)`` → compact established state.
        wakeup: called (from any thread) when an executor job finished, so
            that an adapter can call :meth:`poll` soon.
        random: source of CID bytes (tests pass a deterministic one).
    """

    def __init__(
        self,
        connection_factory: Callable[..., Connection],
        *,
        server: bool = True,
        limits: Optional[EndpointLimits] = None,
        stateless: Optional[StatelessResponder] = None,
        executor: Optional[Executor] = None,
        cid_length: int = 0,
        compactor: Optional[Callable[[Any], Any]] = None,
        wakeup: Optional[Callable[[], None]] = None,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if not 0 <= cid_length <= 20:
            raise ValueError("cid_length must be 0..20 (RFC 9146)")
        self._factory = connection_factory
        self.server = server
        self.limits = limits or EndpointLimits()
        self._stateless = stateless
        self._executor: Executor = executor or InlineExecutor()
        self.cid_length = cid_length
        self._compactor = compactor
        self._wakeup = wakeup
        self._random = random
        self._ids = itertools.count(1)
        self._by_addr: dict[Address, Association] = {}
        self._by_cid: dict[bytes, Association] = {}
        self._handshakes: dict[int, Association] = {}  # insertion order = age
        # A set, not a dict by id: no int key object per association.
        self._established: set[Association] = set()
        self._ready: deque[Association] = deque()  # round-robin order of associations with output
        self._stateless_out: deque[tuple[bytes, Address]] = deque()
        self._events: deque[EndpointEvent] = deque()
        self._timers: list[tuple[float, int, Association]] = []
        self._timer_seq = itertools.count()
        self._armed = 0  # associations with a deadline (live heap entries)
        self._extra_cids = False  # some association got CIDs beyond the one assigned
        self._finished_jobs: deque[tuple[Association, Future]] = deque()
        self._since_stateless = 0
        #: Counters for monitoring and tests.
        self.stats: dict[str, int] = {
            "datagrams_in": 0,
            "datagrams_out": 0,
            "stateless_replies": 0,
            "stateless_dropped": 0,
            "refused": 0,
            "evicted": 0,
            "timed_out": 0,
            "unknown_dropped": 0,
            "pending_dropped": 0,
            "compacted": 0,
        }

    # ---------------------------------------------------------------- views
    @property
    def handshake_count(self) -> int:
        return len(self._handshakes)

    @property
    def connection_count(self) -> int:
        return len(self._established)

    @property
    def handshake_bytes(self) -> int:
        return len(self._handshakes) * self.limits.handshake_cost

    def associations(self) -> list[Association]:
        return [*self._handshakes.values(), *sorted(self._established, key=lambda a: a.id)]

    # ---------------------------------------------------------------- demux
    def _route(self, data: bytes, addr: Address) -> Optional[Association]:
        # Unified header with the C bit (§4): 001C SLEE, the CID follows.
        if self.cid_length and data and (data[0] & 0xE0) == 0x20 and data[0] & 0x10:
            assoc = self._by_cid.get(bytes(data[1 : 1 + self.cid_length]))
            if assoc is not None:
                return assoc
        return self._by_addr.get(addr)

    def _new_cid(self) -> bytes:
        if not self.cid_length:
            return b""
        while True:
            cid = self._random(self.cid_length)
            if cid not in self._by_cid:
                return cid

    # ---------------------------------------------------------------- input
    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """Feed one datagram received from ``addr``. Never raises on bad input."""
        self.poll(now)
        self.stats["datagrams_in"] += 1
        data = bytes(data)
        assoc = self._route(data, addr)
        if assoc is None:
            self._receive_unknown(data, addr, now)
            return
        self._feed(assoc, data, addr, now)

    def _receive_unknown(self, data: bytes, addr: Address, now: float) -> None:
        # Only a plaintext handshake record (content type 22, §4.1) may start
        # an association; anything else from an unknown peer is dropped.
        if not self.server or not data or data[0] != 22:
            self.stats["unknown_dropped"] += 1
            return
        if self._stateless is not None:
            try:
                verdict, reply = self._stateless.check(data, addr, now)
            except (TLSError, ValueError):
                verdict, reply = StatelessVerdict.DROP, None
            if verdict is StatelessVerdict.DROP:
                self.stats["unknown_dropped"] += 1
                return
            if verdict is StatelessVerdict.REPLY:
                if reply is not None:
                    if len(self._stateless_out) >= self.limits.max_stateless_replies:
                        self.stats["stateless_dropped"] += 1
                    else:
                        self._stateless_out.append((reply, addr))
                return
            if reply is not None:
                data = reply  # ACCEPT: the (reassembled) ClientHello to start from
        if not self._make_room(addr, now):
            return
        assoc = self._create(addr, False, now, {})
        self._feed(assoc, data, addr, now)

    def _make_room(self, addr: Address, now: float) -> bool:
        limits = self.limits
        while (
            len(self._handshakes) >= limits.max_handshakes
            or (len(self._handshakes) + 1) * limits.handshake_cost > limits.max_handshake_bytes
        ):
            oldest = next(iter(self._handshakes.values()), None)
            if oldest is None or oldest.busy or now - oldest.last_activity < limits.stale_handshake_after:
                self.stats["refused"] += 1
                self._events.append(HandshakeRefused(addr, "handshake limit reached"))
                return False
            self.stats["evicted"] += 1
            self._remove(oldest, HandshakeCancelled(oldest, "evicted"))
        return True

    def _create(self, addr: Address, is_client: bool, now: float, kwargs: dict) -> Association:
        cid = self._new_cid()
        conn = self._factory(addr, cid, is_client, **kwargs)
        assoc = Association(next(self._ids), addr, cid, conn, is_client, now)
        self._handshakes[assoc.id] = assoc
        self._by_addr[addr] = assoc
        if cid:
            self._by_cid[cid] = assoc
        self._arm(assoc, now + self.limits.handshake_timeout)
        return assoc

    def _feed(self, assoc: Association, data: bytes, addr: Address, now: float) -> None:
        if assoc.state is AssociationState.CLOSED:
            return
        if assoc.state is AssociationState.HANDSHAKING:
            if assoc.busy:
                if assoc.inbox is None:
                    assoc.inbox = deque()
                if len(assoc.inbox) >= self.limits.max_pending_datagrams:
                    self.stats["pending_dropped"] += 1
                    return
                assoc.inbox.append((data, now))
                return
            assoc.last_activity = now
            self._submit(assoc, self._job_receive, assoc.conn, [(data, now)])
            return
        assoc.last_activity = now
        moved = addr != assoc.addr
        before = _authenticated_records(assoc.conn) if moved else 0
        try:
            assoc.conn.receive_datagram(data, now)
        except TLSError as exc:
            self._collect(assoc, now)
            self._remove(assoc, ConnectionClosed(assoc, exc))
            return
        # §9 / RFC 9146 §6: follow a new address only once a record from it
        # passed authentication (anyone can copy a CID off the wire).
        if moved and assoc.cid and _authenticated_records(assoc.conn) > before:
            self._move(assoc, addr)
        self._collect(assoc, now)

    def _move(self, assoc: Association, addr: Address) -> None:
        if self._by_addr.get(assoc.addr) is assoc:
            del self._by_addr[assoc.addr]
        assoc.addr = addr
        self._by_addr[addr] = assoc

    # ---------------------------------------------------------------- executor
    @staticmethod
    def _job_receive(conn: Any, items: list[tuple[bytes, float]]) -> Optional[BaseException]:
        for data, now in items:
            try:
                conn.receive_datagram(data, now)
            except TLSError as exc:
                return exc
        return None

    @staticmethod
    def _job_timer(conn: Any, now: float) -> Optional[BaseException]:
        try:
            conn.handle_timer(now)
        except TLSError as exc:
            return exc
        return None

    @staticmethod
    def _job_start(conn: Any, now: float) -> Optional[BaseException]:
        try:
            conn.start_handshake(now)
        except TLSError as exc:
            return exc
        return None

    def _submit(self, assoc: Association, fn: Callable[..., Any], *args: Any) -> None:
        assoc.busy = True
        future = self._executor.submit(fn, *args)
        if future.done():
            self._finish(assoc, future)
            return

        def done(fut: Future, assoc: Association = assoc) -> None:
            self._finished_jobs.append((assoc, fut))  # deque.append is thread-safe
            if self._wakeup is not None:
                self._wakeup()

        future.add_done_callback(done)

    def _finish(self, assoc: Association, future: Future) -> None:
        assoc.busy = False
        try:
            error = future.result()
        except Exception as exc:  # a bug in the engine: fail this association only
            error = exc
        now = assoc.last_activity
        if assoc.state is AssociationState.CLOSED:
            return
        self._collect(assoc, now)
        if error is not None:
            self._remove(assoc, ConnectionClosed(assoc, error))
            return
        if assoc.inbox and assoc.state is AssociationState.HANDSHAKING:
            items = list(assoc.inbox)
            assoc.inbox = None
            assoc.last_activity = items[-1][1]
            self._submit(assoc, self._job_receive, assoc.conn, items)
        elif assoc.inbox:
            items = list(assoc.inbox)
            assoc.inbox = None
            for data, t in items:
                self._feed(assoc, data, assoc.addr, t)

    def poll(self, now: Optional[float] = None) -> None:
        """Collect finished executor jobs (every entry point calls it first)."""
        while self._finished_jobs:
            assoc, future = self._finished_jobs.popleft()
            self._finish(assoc, future)

    @property
    def jobs_pending(self) -> int:
        return sum(1 for a in self._handshakes.values() if a.busy)

    # ---------------------------------------------------------------- engine output
    def _collect(self, assoc: Association, now: float) -> None:
        """Move the engine's datagrams and events out; update state and timer."""
        conn = assoc.conn
        while True:
            event = conn.next_event()
            if event is None:
                break
            if isinstance(event, _ev.HandshakeComplete) and assoc.state is AssociationState.HANDSHAKING:
                if not self._establish(assoc):
                    return
                self._events.append(ConnectionEstablished(assoc))
            self._events.append(ConnectionEvent(assoc, event))
            kind = type(event).__name__
            if kind == "ConnectionIdsIssued":  # §9: more CIDs of ours route here
                for cid in event.cids:
                    if len(cid) == self.cid_length and cid not in self._by_cid:
                        self._by_cid[cid] = assoc
                        self._extra_cids = True
            elif kind == "ConnectionIdsRetired":
                for cid in event.cids:
                    if cid != assoc.cid and self._by_cid.get(cid) is assoc:
                        del self._by_cid[cid]
            if _is_terminal(event):
                if (
                    isinstance(event, _ev.CloseNotifyReceived)
                    and self.limits.peer_close_linger > 0
                    and assoc.established
                    and not assoc.closing
                ):
                    # Half-close: the application may still send until it
                    # closes (or the linger time runs out).
                    assoc.closing = True
                    self._arm(assoc, now + self.limits.peer_close_linger)
                    continue
                self._close_conn(assoc)
                self._queue_output(assoc, conn.datagrams_to_send(now))
                self._remove(assoc, ConnectionClosed(assoc, None))
                return
        self._queue_output(assoc, conn.datagrams_to_send(now))
        engine_timer = conn.get_timer()
        timer = engine_timer
        if assoc.state is AssociationState.HANDSHAKING:
            deadline = assoc.started + self.limits.handshake_timeout
            timer = deadline if timer is None else min(timer, deadline)
        elif assoc.closing:
            timer = assoc.timer
        else:
            if self.limits.idle_timeout is not None:
                idle = assoc.last_activity + self.limits.idle_timeout
                timer = idle if timer is None else min(timer, idle)
            if self._compactor is not None and not getattr(conn, "compact", False):
                due = assoc.started + self.limits.compact_after
                if now >= due and engine_timer is None and not assoc.outbox:
                    compact = self._compactor(conn)
                    if compact is not None:
                        assoc.conn = compact
                        self.stats["compacted"] += 1
                else:
                    timer = due if timer is None else min(timer, max(due, now))
        self._arm(assoc, timer)

    def _establish(self, assoc: Association) -> bool:
        del self._handshakes[assoc.id]
        if len(self._established) >= self.limits.max_connections:
            assoc.state = AssociationState.CLOSED
            self._close_conn(assoc)
            self._forget(assoc)
            self._events.append(ConnectionClosed(assoc, UsageError("connection limit reached")))
            return False
        assoc.state = AssociationState.ESTABLISHED
        assoc.started = assoc.last_activity  # from now on: when it was established
        self._established.add(assoc)
        return True

    def _queue_output(self, assoc: Association, datagrams: Iterable[bytes]) -> None:
        datagrams = list(datagrams)
        if not datagrams:
            return
        if assoc.outbox is None:
            assoc.outbox = deque()
        assoc.outbox.extend(datagrams)
        if not assoc.in_ready:
            assoc.in_ready = True
            self._ready.append(assoc)

    def _arm(self, assoc: Association, when: Optional[float]) -> None:
        if when == assoc.timer and when is not None:
            return  # already in the heap
        if when is None:
            self._disarm(assoc)
            return
        if assoc.timer is None:
            self._armed += 1
        assoc.timer = when
        timers = self._timers
        heapq.heappush(timers, (when, next(self._timer_seq), assoc))
        # Entries are invalidated lazily (the association's deadline moved);
        # rebuild once stale ones dominate, so that idle associations cost
        # nothing here (amortised O(1) per push).
        if len(timers) > 64 + 2 * self._armed:
            live = [e for e in timers if e[2].timer == e[0] and e[2].state is not AssociationState.CLOSED]
            heapq.heapify(live)
            self._timers = live

    def _disarm(self, assoc: Association) -> None:
        if assoc.timer is not None:
            assoc.timer = None
            self._armed -= 1

    # ---------------------------------------------------------------- removal
    def _close_conn(self, assoc: Association) -> None:
        if assoc.busy:
            return  # a worker owns the engine right now; it is dropped unclosed
        try:
            assoc.conn.close()
        except TLSError:
            pass

    def _forget(self, assoc: Association) -> None:
        if self._by_addr.get(assoc.addr) is assoc:
            del self._by_addr[assoc.addr]
        if assoc.cid and self._by_cid.get(assoc.cid) is assoc:
            del self._by_cid[assoc.cid]
        extra = [cid for cid, owner in self._by_cid.items() if owner is assoc] if self._extra_cids else ()
        for cid in extra:
            del self._by_cid[cid]
        assoc.inbox = None
        self._disarm(assoc)

    def _remove(self, assoc: Association, event: EndpointEvent) -> None:
        if assoc.state is AssociationState.CLOSED:
            return
        self._handshakes.pop(assoc.id, None)
        self._established.discard(assoc)
        assoc.state = AssociationState.CLOSED
        self._forget(assoc)
        self._events.append(event)

    # ---------------------------------------------------------------- output
    def datagrams_to_send(self, now: float, limit: Optional[int] = None) -> list[tuple[bytes, Address]]:
        """Up to ``limit`` datagrams, fairly interleaved (see the module doc)."""
        self.poll(now)
        out: list[tuple[bytes, Address]] = []
        limit = limit if limit is not None else 1 << 62
        ratio = self.limits.stateless_ratio
        while len(out) < limit and (self._ready or self._stateless_out):
            if self._stateless_out and (not self._ready or self._since_stateless >= ratio):
                out.append(self._stateless_out.popleft())
                self.stats["stateless_replies"] += 1
                self._since_stateless = 0
                continue
            assoc = self._ready.popleft()
            box = assoc.outbox
            n = 0
            while box and n < self.limits.burst and len(out) < limit:
                out.append((box.popleft(), assoc.addr))
                n += 1
            self._since_stateless += n
            if box:
                self._ready.append(assoc)  # back of the line
            else:
                assoc.outbox = None
                assoc.in_ready = False
        self.stats["datagrams_out"] += len(out)
        return out

    def has_output(self) -> bool:
        return bool(self._ready or self._stateless_out)

    # ---------------------------------------------------------------- timers
    def get_timer(self) -> Optional[float]:
        heap = self._timers
        while heap:
            when, _, assoc = heap[0]
            if assoc.timer == when and assoc.state is not AssociationState.CLOSED:
                return when
            heapq.heappop(heap)
        return None

    def handle_timer(self, now: float) -> None:
        """Run every association whose deadline passed."""
        self.poll(now)
        heap = self._timers
        while heap and heap[0][0] <= now:
            when, _, assoc = heapq.heappop(heap)
            if assoc.timer != when or assoc.state is AssociationState.CLOSED:
                continue
            self._disarm(assoc)
            self._expire(assoc, now)

    def _expire(self, assoc: Association, now: float) -> None:
        limits = self.limits
        if assoc.state is AssociationState.HANDSHAKING:
            if now >= assoc.started + limits.handshake_timeout:
                self.stats["timed_out"] += 1
                self._close_conn(assoc)
                self._remove(assoc, HandshakeCancelled(assoc, "timeout"))
                return
            if assoc.busy:
                self._arm(assoc, now + 0.05)
                return
            self._submit(assoc, self._job_timer, assoc.conn, now)
            return
        if assoc.closing or (limits.idle_timeout is not None and now >= assoc.last_activity + limits.idle_timeout):
            self._close_conn(assoc)
            self._queue_output(assoc, assoc.conn.datagrams_to_send(now))
            self._remove(assoc, ConnectionClosed(assoc, None))
            return
        try:
            assoc.conn.handle_timer(now)
        except TLSError as exc:
            self._collect(assoc, now)
            self._remove(assoc, ConnectionClosed(assoc, exc))
            return
        self._collect(assoc, now)

    # ---------------------------------------------------------------- events
    def next_event(self) -> Optional[EndpointEvent]:
        self.poll()
        return self._events.popleft() if self._events else None

    # ---------------------------------------------------------------- verbs
    def connect(self, addr: Address, now: float, **kwargs: Any) -> Association:
        """Start a client handshake with ``addr`` (``kwargs`` go to the factory)."""
        self.poll(now)
        if addr in self._by_addr:
            raise UsageError(f"an association with {addr!r} exists already")
        if not self._make_room(addr, now):
            raise UsageError("handshake limit reached")
        assoc = self._create(addr, True, now, kwargs)
        self._submit(assoc, self._job_start, assoc.conn, now)
        return assoc

    @staticmethod
    def _tell_time(conn: Any, now: float) -> None:
        set_now = getattr(conn, "set_now", None)
        if set_now is not None:
            set_now(now)

    def _usable(self, assoc: Association) -> None:
        if assoc.state is AssociationState.CLOSED:
            raise UsageError("the association is closed")

    def send_data(self, assoc: Association, data: bytes, now: float) -> None:
        """Send application data on an established association."""
        self._usable(assoc)
        if assoc.busy:
            raise UsageError("the handshake is still in progress")
        self._tell_time(assoc.conn, now)
        assoc.conn.send_data(data)
        self._collect(assoc, now)

    def send_data_batch(self, assoc: Association, chunks: Any, now: float) -> None:
        """Send several payloads, one record and one datagram each, in order
        (the engine's ``send_data_batch``)."""
        self._usable(assoc)
        if assoc.busy:
            raise UsageError("the handshake is still in progress")
        self._tell_time(assoc.conn, now)
        assoc.conn.send_data_batch(chunks)
        self._collect(assoc, now)

    def key_update(self, assoc: Association, now: float, *, request_peer_update: bool = True) -> None:
        """Send a KeyUpdate (RFC 9147 §8); ``request_peer_update=False``
        updates only our sending keys."""
        self._usable(assoc)
        if assoc.busy:
            raise UsageError("the handshake is still in progress")
        self._tell_time(assoc.conn, now)
        assoc.conn.key_update(request_peer_update)
        self._collect(assoc, now)

    def close(self, assoc: Association, now: float, *, wait_for_peer: Optional[float] = None) -> None:
        """Send close_notify (§5.10).

        Without ``wait_for_peer`` the association is forgotten at once. With
        it, the association keeps receiving (what the peer sent before it saw
        our close_notify) until the peer's close_notify arrives or
        ``wait_for_peer`` seconds pass.
        """
        if assoc.state is AssociationState.CLOSED:
            return
        if assoc.closing:
            conn = assoc.conn
            if not getattr(conn, "peer_closed", False) or getattr(conn, "local_closed", True):
                return  # our close_notify is out already
            wait_for_peer = None  # half-closed by the peer: ours ends it
        self._close_conn(assoc)
        if not assoc.busy:
            self._queue_output(assoc, assoc.conn.datagrams_to_send(now))
        if wait_for_peer is not None and assoc.established:
            assoc.closing = True
            self._arm(assoc, now + wait_for_peer)
            return
        self._remove(assoc, ConnectionClosed(assoc, None))


# --------------------------------------------------------------------------
# Glue for DTLSConnection
# --------------------------------------------------------------------------
class CookieResponder:
    """:class:`StatelessResponder` backed by the stateless HelloRetryRequest
    of :mod:`tcpls.dtls.connection` (RFC 9147 §5.1).

    A ClientHello split over several datagrams (§5.5; large key shares) is
    first put together by a bounded
    :class:`~tcpls.dtls.hello.ClientHelloReassembler` keyed by address.
    A whole ClientHello with a valid cookie is accepted (the verdict
    carries the one-datagram ClientHello to feed to the new connection,
    which checks the cookie again and restores the transcript from it); one
    without a cookie is answered with a HelloRetryRequest carrying one;
    anything else (a fragment, no ClientHello, a forged or expired cookie)
    is dropped without an answer.
    """

    def __init__(self, config: Any, secret: Any, reassembler: Any = None) -> None:
        from .hello import ClientHelloReassembler

        self.config = config
        self.secret = secret
        self.reassembler = reassembler if reassembler is not None else ClientHelloReassembler()

    def check(self, data: bytes, addr: Address, now: float) -> tuple[StatelessVerdict, Optional[bytes]]:
        from .connection import _read_client_hello, cookie_is_valid, stateless_hello_retry

        reassembler = self.reassembler
        reassembler.expire(now)
        whole = _read_client_hello(data)  # the usual case: one datagram (parsed once, see there)
        if whole is not None and len(whole.data) - 4 <= reassembler.max_message_size:
            reassembler.discard(addr)
            hello: Optional[bytes] = data
        else:
            hello = reassembler.add(addr, data, now)
        if hello is None:
            return StatelessVerdict.DROP, None
        reply = stateless_hello_retry(self.config, hello, addr, self.secret, now)
        if reply is not None:
            return StatelessVerdict.REPLY, reply
        if cookie_is_valid(hello, addr, self.secret, now):
            return StatelessVerdict.ACCEPT, hello
        return StatelessVerdict.DROP, None


def dtls_connection_factory(
    config: Any,
    *,
    cookie_secret: Any = None,
    use_cid: bool = False,
    **defaults: Any,
) -> Callable[..., Any]:
    """A ``connection_factory`` building :class:`~tcpls.dtls.connection.DTLSConnection`.

    ``use_cid``: negotiate connection IDs (RFC 9146, §9), using the CID the
    endpoint assigned (the endpoint's ``cid_length`` must be non-zero).
    ``defaults`` (and the keyword arguments of :meth:`DTLSEndpoint.connect`)
    go to the DTLSConnection constructor.
    """
    from .connection import DTLSConnection

    def factory(addr: Address, cid: bytes, is_client: bool, **kwargs: Any) -> DTLSConnection:
        options = {**defaults, **kwargs}
        if use_cid:
            options.setdefault("connection_id", cid)
        if not is_client:
            options.setdefault("client_address", addr)
            options.setdefault("cookie_secret", cookie_secret)
        return DTLSConnection(config, is_client=is_client, **options)

    return factory


def build_endpoint(
    config: Any,
    *,
    server: bool,
    cookie_secret: Any,
    cid: bool = False,
    stateless_cookies: bool = True,
    limits: Optional[EndpointLimits] = None,
    executor: Any = None,
    compact: bool = False,
    connection_options: Optional[dict] = None,
    wakeup: Optional[Callable[[], None]] = None,
) -> "DTLSEndpoint":
    """The endpoint the asyncio and blocking adapters run: DTLSConnection
    associations, 8-byte connection IDs with ``cid``, stateless cookie
    HelloRetryRequests on a server unless ``stateless_cookies`` is False
    (then connections skip the cookie exchange), idle associations compacted
    with ``compact``. ``connection_options`` go to every DTLSConnection."""
    options = dict(connection_options or {})
    if server and not stateless_cookies:
        options.setdefault("require_cookie", False)
    compactor = None
    if compact:
        from .established import compact_connection

        compactor = compact_connection
    return DTLSEndpoint(
        dtls_connection_factory(config, cookie_secret=cookie_secret, use_cid=cid, **options),
        server=server,
        limits=limits,
        stateless=CookieResponder(config, cookie_secret) if server and stateless_cookies else None,
        executor=executor,
        cid_length=8 if cid else 0,
        compactor=compactor,
        wakeup=wakeup,
    )
