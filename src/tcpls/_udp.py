"""UDP socket helpers shared by the DTLS adapters (``tcpls.aio.dtls``,
``tcpls.sync.dtls``): batched sending with UDP GSO and a larger receive
buffer. Adapter layer: the sans-IO engines never import this module.

Batched sending. Linux ≥ 4.18 can send many datagrams with one ``sendmsg``
call: the buffer is the datagrams concatenated, and the ``UDP_SEGMENT``
control message gives the segment size; the kernel cuts the buffer into
datagrams of that size (the last one may be shorter). Each DTLS datagram
keeps its own boundaries. :class:`UDPSender` groups consecutive datagrams
to one destination into such runs (all of the same size except the last,
at most :data:`MAX_SEGMENTS` segments and :data:`MAX_GSO_BYTES` bytes) and
sends the others with one ``sendto`` each. Support is probed once per
socket; a run refused with EIO or EINVAL (a device without checksum
offload, an old kernel) turns GSO off for that sender and is resent with
``sendto``.
"""

from __future__ import annotations

import errno
import socket
import struct
from typing import Any, Callable, Iterable, Optional, Sequence

__all__ = [
    "MAX_GSO_BYTES",
    "MAX_SEGMENTS",
    "UDPSender",
    "gso_supported",
    "read_burst",
    "set_receive_buffer",
]

SOL_UDP = 17
UDP_SEGMENT = 103  # linux/udp.h
_SO_RCVBUFFORCE = 33  # asm-generic/socket.h (needs CAP_NET_ADMIN)
#: Segments per sendmsg: the kernel refuses more than UDP_MAX_SEGMENTS (64).
MAX_SEGMENTS = 64
#: Bytes per sendmsg: one UDP datagram of at most 64 KB before segmentation.
MAX_GSO_BYTES = 65000

_GSO_REFUSED = (errno.EIO, errno.EINVAL, errno.EOPNOTSUPP, errno.EMSGSIZE)


def gso_supported(sock: socket.socket) -> bool:
    """Whether the kernel knows ``UDP_SEGMENT`` on this socket (Linux ≥ 4.18)."""
    if sock.type != socket.SOCK_DGRAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    try:
        sock.getsockopt(SOL_UDP, UDP_SEGMENT)
    except OSError:
        return False
    return True


def set_receive_buffer(sock: socket.socket, size: int) -> int:
    """Ask for a ``size``-byte receive buffer, best effort: ``SO_RCVBUFFORCE``
    when allowed (root), else ``SO_RCVBUF`` (capped by ``net.core.rmem_max``).
    Returns what the kernel reports afterwards (Linux reports twice the
    value granted: bookkeeping overhead included)."""
    for option in (_SO_RCVBUFFORCE, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, size)
            break
        except OSError:
            continue
    return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))


def read_burst(
    sock: socket.socket, buffer: bytearray, view: memoryview, limit: int, deliver: Callable[[bytes, Any], None]
) -> int:
    """Read up to ``limit`` datagrams that the (non-blocking) socket already
    holds into ``buffer`` and hand a copy of each to ``deliver(data, addr)``;
    returns how many. The bound keeps one busy socket from starving the rest
    of the loop. ICMP errors end the burst: the DTLS timers deal with dead
    peers."""
    count = 0
    while count < limit:
        try:
            n, addr = sock.recvfrom_into(buffer)
        except (BlockingIOError, InterruptedError):
            break
        except OSError:
            break
        count += 1
        deliver(bytes(view[:n]), addr)
    return count


def _runs(datagrams: Sequence[tuple[bytes, Any]]) -> Iterable[tuple[int, int]]:
    """``(start, end)`` index ranges of ``datagrams`` that one GSO send can
    carry: same destination, same size except the last, bounded."""
    i = 0
    n = len(datagrams)
    while i < n:
        data, addr = datagrams[i]
        size = len(data)
        limit = min(MAX_SEGMENTS, max(MAX_GSO_BYTES // size, 1)) if size else 1
        j = i + 1
        while j < n and j - i < limit:
            d, a = datagrams[j]
            if a != addr or len(d) > size:
                break
            j += 1
            if len(d) < size:
                break  # a shorter one ends the run
        yield i, j
        i = j


class UDPSender:
    """Sends ``(datagram, address)`` lists on one socket, with GSO when the
    kernel has it (see the module doc).

    Args:
        sock: the UDP socket (blocking or not).
        gso: None: probe; False: never use GSO.
        fallback_send: ``fallback(datagram, address)`` for what the socket
            cannot take now (EAGAIN): the asyncio adapter passes its
            transport's ``sendto``, which buffers. Default: raise
            ``BlockingIOError`` to the caller with :attr:`unsent` set.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        gso: Optional[bool] = None,
        fallback_send: Optional[Callable[[bytes, Any], None]] = None,
    ) -> None:
        self.sock = sock
        self.gso = gso_supported(sock) if gso is None else bool(gso)
        self._fallback = fallback_send
        #: Counters: datagrams sent, system calls made, GSO sends.
        self.datagrams = 0
        self.calls = 0
        self.gso_sends = 0
        #: The datagrams not sent when BlockingIOError was raised.
        self.unsent: list[tuple[bytes, Any]] = []

    def send(self, datagrams: Sequence[tuple[bytes, Any]]) -> None:
        """Send ``datagrams`` in order. Errors other than EAGAIN are a lost
        datagram for UDP (ICMP errors, unreachable): ignored.

        Raises:
            BlockingIOError: without ``fallback_send``, the socket buffer is
                full; :attr:`unsent` holds what is left, in order.
        """
        sock = self.sock
        for start, end in _runs(datagrams):
            if end - start > 1 and self.gso:
                run = datagrams[start:end]
                try:
                    sock.sendmsg(
                        [b"".join(d for d, _ in run)],
                        [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", len(run[0][0])))],
                        0,
                        run[0][1],
                    )
                except BlockingIOError:
                    self._blocked(datagrams, start)
                    return
                except OSError as exc:
                    if exc.errno in _GSO_REFUSED:
                        self.gso = False  # resent below, one datagram each
                    else:
                        continue  # a lost run, as a lost datagram
                else:
                    self.calls += 1
                    self.gso_sends += 1
                    self.datagrams += end - start
                    continue
            for k in range(start, end):
                data, addr = datagrams[k]
                try:
                    sock.sendto(data, addr)
                except BlockingIOError:
                    self._blocked(datagrams, k)
                    return
                except OSError:
                    continue  # UDP: a send error is a lost datagram
                self.calls += 1
                self.datagrams += 1

    def _blocked(self, datagrams: Sequence[tuple[bytes, Any]], index: int) -> None:
        rest = list(datagrams[index:])
        if self._fallback is None:
            self.unsent = rest
            raise BlockingIOError(errno.EAGAIN, "UDP socket buffer full")
        for data, addr in rest:
            self._fallback(data, addr)
