"""Happy-eyeballs TCP connect (RFC 8305) for the TCPLS client.

:func:`race` starts one TCP connection attempt per address, staggered by
``stagger`` seconds (RFC 8305 §5 "Connection Attempt Delay", 250 ms by
default); an attempt that fails early starts the next one at once (§5).
Each attempt has its own ``attempt_timeout``. The first attempt whose TCP
handshake completes wins; the other attempts are cancelled and their
sockets closed. Every failed or abandoned attempt is reported through
``on_failure(host, port, reason)``. When all fail, :class:`AllAttemptsFailed`
lists each address's error.

:func:`resolve` turns a host name into its addresses, IPv6 and IPv4
interleaved starting with the first family returned (RFC 8305 §4).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Callable, Optional, Sequence, Union

__all__ = ["AllAttemptsFailed", "Target", "race", "resolve", "interleave"]

Target = tuple[str, int]
#: RFC 8305 §5: recommended Connection Attempt Delay.
DEFAULT_STAGGER = 0.25


class AllAttemptsFailed(ConnectionError):
    """Every connection attempt failed; ``errors`` is ``[(host, port, reason), ...]``."""

    def __init__(self, errors: list[tuple[str, int, str]]) -> None:
        self.errors = errors
        detail = "; ".join(f"{h}:{p}: {r}" for h, p, r in errors) or "no address to try"
        super().__init__(f"every connection attempt failed: {detail}")


def interleave(addrs: Sequence[Target]) -> list[Target]:
    """RFC 8305 §4: alternate address families, starting with the family of
    the first address, keeping the order within each family."""
    if not addrs:
        return []

    def fam(a: Target) -> int:
        try:
            return ipaddress.ip_address(a[0].split("%")[0]).version
        except ValueError:
            return 0

    first = fam(addrs[0])
    a = [x for x in addrs if fam(x) == first]
    b = [x for x in addrs if fam(x) != first]
    out: list[Target] = []
    for i in range(max(len(a), len(b))):
        out.extend(x[i] for x in (a, b) if i < len(x))
    return out


async def resolve(host: str, port: int) -> list[Target]:
    """Addresses of ``host`` (an IP literal is returned as is), interleaved."""
    try:
        ipaddress.ip_address(host.split("%")[0])
        return [(host, port)]
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[Target] = []
    for _f, _t, _p, _c, sa in infos:
        t = (str(sa[0]), int(sa[1]))
        if t not in seen:
            seen.append(t)
    return interleave(seen)


async def _attempt(target: Target, local: Optional[str], timeout: Optional[float]) -> socket.socket:
    loop = asyncio.get_running_loop()
    host, port = target
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    family, _t, proto, _c, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM, proto)
    try:
        sock.setblocking(False)
        if local:
            sock.bind((local, 0))
        await asyncio.wait_for(loop.sock_connect(sock, sockaddr), timeout)
    except BaseException:
        sock.close()
        raise
    return sock


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, asyncio.CancelledError):
        return f"abandoned: {exc.args[0] if exc.args else 'cancelled'}"
    return f"{type(exc).__name__}: {exc}"


async def race(
    targets: Sequence[Union[str, Target]],
    port: int,
    *,
    attempt_timeout: Optional[float] = 10.0,
    stagger: float = DEFAULT_STAGGER,
    local_addr: Optional[str] = None,
    on_failure: Optional[Callable[[str, int, str], None]] = None,
) -> tuple[socket.socket, Target]:
    """Connect to the first of ``targets`` (hosts or (host, port); a bare
    host uses ``port``) that answers; returns (connected socket, target).

    Raises:
        AllAttemptsFailed: no attempt connected.
    """
    norm: list[Target] = [(t, port) if isinstance(t, str) else (t[0], int(t[1])) for t in targets]
    errors: list[tuple[str, int, str]] = []

    def failed(t: Target, exc: BaseException) -> None:
        errors.append((t[0], t[1], _reason(exc)))
        if on_failure is not None:
            on_failure(t[0], t[1], _reason(exc))

    pending: dict[asyncio.Task[socket.socket], Target] = {}
    queue = list(norm)
    winner: Optional[tuple[socket.socket, Target]] = None
    try:
        while winner is None and (queue or pending):
            if queue:
                t = queue.pop(0)
                pending[asyncio.ensure_future(_attempt(t, local_addr, attempt_timeout))] = t
            # wait for a result, at most the stagger while addresses remain
            while winner is None and pending:
                done, _ = await asyncio.wait(pending, timeout=stagger if queue else None, return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    break  # stagger elapsed: start the next attempt
                for task in done:
                    t = pending.pop(task)
                    exc = task.exception()
                    if exc is None:
                        if winner is None:
                            winner = (task.result(), t)
                        else:
                            task.result().close()
                    else:
                        failed(t, exc)
                if winner is None and not pending and queue:
                    break  # every running attempt failed: the next one starts now (RFC 8305 §5)
    finally:
        why = asyncio.CancelledError("another attempt connected first" if winner is not None else "connect cancelled or timed out")
        for task in pending:
            task.cancel()
        for task, t in pending.items():
            try:
                sock = await task
            except asyncio.CancelledError:
                failed(t, why)
            except BaseException as exc:  # noqa: BLE001 - failed meanwhile: report it
                failed(t, exc)
            else:
                sock.close()  # connected too late
                failed(t, why)
    if winner is None:
        raise AllAttemptsFailed(errors)
    return winner
