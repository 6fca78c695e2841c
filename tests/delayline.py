"""A userspace delay line between two network namespaces (this kernel has no netem).

Usage (root)::

    python3 tests/delayline.py NS_A NS_B DEV_A,DEV_B,DELAY_MS [DEV_A,DEV_B,DELAY_MS ...]

Each ``DEV_A,DEV_B,DELAY_MS`` names a TUN device in ``NS_A`` and one in
``NS_B`` (created beforehand with ``ip tuntap add DEV mode tun``, so that
the testbed configures them like any link); this process attaches to both
and forwards every IP packet read from one to the other ``DELAY_MS``
milliseconds later (one-way delay; the RTT of the path is twice that plus
queueing). Rate limits stay in the kernel (tbf on the TUN devices), so the
queue a sender fills is the tbf queue, ahead of this delay.

It prints ``ready`` once attached and runs until killed; the devices stay
(they belong to the namespaces). Packets are never reordered within a
direction; a write the kernel refuses (TUN queue full) drops the packet,
like a full router queue would.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import select
import struct
import sys
import time
from collections import deque

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
BATCH = 256  # packets read from one device per wake-up, at most

_libc = ctypes.CDLL(None, use_errno=True)


def _enter(ns_path: str) -> None:
    fd = os.open(ns_path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({ns_path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def attach(ns: str, dev: str, home: str) -> int:
    """Open TUN device ``dev`` of namespace ``ns`` (non-blocking fd)."""
    _enter(f"/run/netns/{ns}")
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", dev.encode(), IFF_TUN | IFF_NO_PI))
        return fd
    finally:
        _enter(home)


class Direction:
    """Packets read from ``src`` wait ``delay`` seconds, then go to ``dst``."""

    __slots__ = ("src", "dst", "delay", "queue")

    def __init__(self, src: int, dst: int, delay: float) -> None:
        self.src, self.dst, self.delay = src, dst, delay
        self.queue: deque[tuple[float, bytes]] = deque()

    def pull(self, now: float) -> None:
        due = now + self.delay
        q, read, src = self.queue, os.read, self.src
        for _ in range(BATCH):
            try:
                q.append((due, read(src, 65536)))
            except BlockingIOError:
                return
            except OSError:  # device down: nothing to read now
                return

    def push(self, now: float) -> None:
        q, write, dst = self.queue, os.write, self.dst
        while q and q[0][0] <= now:
            pkt = q.popleft()[1]
            try:
                write(dst, pkt)
            except OSError:
                pass  # TUN queue full or device down: dropped


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    ns_a, ns_b, specs = argv[0], argv[1], argv[2:]
    home = "/proc/self/ns/net"
    home_fd = os.open(home, os.O_RDONLY)
    home_path = f"/proc/{os.getpid()}/fd/{home_fd}"
    dirs: dict[int, Direction] = {}
    for spec in specs:
        dev_a, dev_b, ms = spec.split(",")
        fa, fb = attach(ns_a, dev_a, home_path), attach(ns_b, dev_b, home_path)
        dirs[fa] = Direction(fa, fb, float(ms) / 1000)
        dirs[fb] = Direction(fb, fa, float(ms) / 1000)
    ep = select.epoll()
    for fd in dirs:
        ep.register(fd, select.EPOLLIN)
    print("ready", flush=True)
    all_dirs = list(dirs.values())
    clock = time.monotonic
    while True:
        now = clock()
        nxt = min((d.queue[0][0] for d in all_dirs if d.queue), default=now + 1.0)
        for fd, _mask in ep.poll(max(0.0, nxt - now)):
            dirs[fd].pull(clock())
        now = clock()
        for d in all_dirs:
            d.push(now)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(0)
