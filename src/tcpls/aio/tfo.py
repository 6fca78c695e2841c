"""TCP Fast Open (RFC 7413) sockets for the TCPLS adapters (Linux).

Client: ``TCP_FASTOPEN_CONNECT`` before ``connect()``: connect returns at
once and the first ``send()`` goes out in the SYN when the kernel holds a
Fast Open cookie for the server (the first connection to a server obtains
one); without a cookie the kernel sends an ordinary SYN asking for one.
The ClientHello (with 0-RTT stream data, or a join's ClientHello and
key-possession proof) is the first write, so it rides in the SYN.

Server: ``TCP_FASTOPEN`` on the listening socket with the length of the
queue of connections accepted from a SYN with data not yet completed.

Both need ``net.ipv4.tcp_fastopen`` to allow them (bit 0x1 client, 0x2
server). Whether a connection really used it: ``TCP_INFO``'s
``tcpi_options`` has ``TCPI_OPT_SYN_DATA`` (0x20) when our SYN carried data
the server acknowledged.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Optional

TCP_FASTOPEN = getattr(socket, "TCP_FASTOPEN", 23)
TCP_FASTOPEN_CONNECT = getattr(socket, "TCP_FASTOPEN_CONNECT", 30)
TCPI_OPT_SYN_DATA = 0x20
_TCPI_OPTIONS = 5  # byte offset of tcpi_options in struct tcp_info
SYSCTL = "/proc/sys/net/ipv4/tcp_fastopen"


def sysctl_value() -> Optional[int]:
    """``net.ipv4.tcp_fastopen`` of this network namespace (None: not Linux)."""
    try:
        with open(SYSCTL) as f:
            return int(f.read().split()[0], 0)
    except (OSError, ValueError, IndexError):
        return None


async def connect_socket(loop: asyncio.AbstractEventLoop, host: str, port: int, local: Optional[str]) -> socket.socket:
    """A connected non-blocking TCP socket with ``TCP_FASTOPEN_CONNECT`` set."""
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    if not infos:
        raise OSError(f"cannot resolve {host}")
    family, type_, proto, _name, addr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN_CONNECT, 1)
        if local:
            sock.bind((local, 0))
        await loop.sock_connect(sock, addr)
    except BaseException:
        sock.close()
        raise
    return sock


def enable_server(sock: Any, queue: int) -> None:
    """Accept TCP Fast Open on a listening socket (``queue`` pending SYNs with data)."""
    sock.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN, int(queue))


def syn_data_acked(sock: Any) -> Optional[bool]:
    """True if this client socket's SYN carried data the server acknowledged."""
    if sock is None or not hasattr(socket, "TCP_INFO"):
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    except OSError:
        return None
    if len(info) <= _TCPI_OPTIONS:
        return None
    return bool(info[_TCPI_OPTIONS] & TCPI_OPT_SYN_DATA)
