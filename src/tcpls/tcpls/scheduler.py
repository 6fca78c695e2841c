"""Which connection carries the next Stream frame.

A scheduler sees the connections that are usable right now (joined, not
failed, not closing) and picks one per record. Schedulers are chosen by
name in :class:`~tcpls.tcpls.config.TCPLSConfig` (``"round_robin"``,
``"lowest_rtt"``, ``"fill_fastest_first"``); :data:`SCHEDULERS` is the
registry, so adding one is adding an entry.
"""

from __future__ import annotations

from typing import Callable, Optional, Protocol, Sequence

from .path import Connection


class Scheduler(Protocol):
    def choose(self, connections: Sequence[Connection], record_size: int) -> Optional[Connection]: ...


class RoundRobin:
    """Each record on the next connection in Connection ID order."""

    def __init__(self, inflight_limit: int) -> None:
        self._last = -1

    def choose(self, connections: Sequence[Connection], record_size: int) -> Optional[Connection]:
        if not connections:
            return None
        ordered = sorted(connections, key=lambda c: c.conn_id)
        for c in ordered:
            if c.conn_id > self._last:
                self._last = c.conn_id
                return c
        self._last = ordered[0].conn_id
        return ordered[0]


class LowestRTT:
    """Always the connection with the lowest smoothed RTT (ties: lowest ID)."""

    def __init__(self, inflight_limit: int) -> None:
        pass

    def choose(self, connections: Sequence[Connection], record_size: int) -> Optional[Connection]:
        if not connections:
            return None
        return min(connections, key=lambda c: (c.rtt, c.conn_id))


class FillFastestFirst:
    """The fastest connection until ``inflight_limit`` unacknowledged stream
    bytes sit on it, then the next fastest, ...; when all are full, the
    fastest anyway (the sender never stalls on the scheduler)."""

    def __init__(self, inflight_limit: int) -> None:
        self.limit = inflight_limit

    def choose(self, connections: Sequence[Connection], record_size: int) -> Optional[Connection]:
        if not connections:
            return None
        ordered = sorted(connections, key=lambda c: (c.rtt, c.conn_id))
        for c in ordered:
            if c.in_flight + record_size <= self.limit:
                return c
        return ordered[0]


SCHEDULERS: dict[str, Callable[[int], Scheduler]] = {
    "round_robin": RoundRobin,
    "lowest_rtt": LowestRTT,
    "fill_fastest_first": FillFastestFirst,
}


def make_scheduler(name: str, inflight_limit: int) -> Scheduler:
    try:
        return SCHEDULERS[name](inflight_limit)
    except KeyError:
        raise ValueError(f"unknown scheduler {name!r} (known: {', '.join(SCHEDULERS)})") from None
