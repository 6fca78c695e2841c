"""Peer TCP settings (tcpls extension): policy and ``setsockopt``.

The engine turns the peer's TCP Setting frames into
:class:`~tcpls.tcpls.events.TCPSettingRequested` events; the adapters call
:func:`handle_request` with the sockets of the targeted connections, which
asks the policy (``TCPLSConfig.tcp_setting_policy`` or :func:`default_policy`),
applies the option and returns the status and reason for
``session.answer_tcp_setting``.
"""

from __future__ import annotations

import logging
import socket
from typing import Any, Callable, Optional, Sequence

from ..tcpls.codepoints import TCPSetting, TCPSettingStatus

__all__ = [
    "ALLOWED_CC_PATH",
    "USER_TIMEOUT_BOUNDS",
    "allowed_congestion_control",
    "default_policy",
    "apply_setting",
    "handle_request",
]

logger = logging.getLogger("tcpls.aio.tcp_settings")

TCP_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", 18)  # Linux
TCP_CONGESTION = getattr(socket, "TCP_CONGESTION", 13)  # Linux
#: Algorithms an unprivileged process may select (the kernel's list).
ALLOWED_CC_PATH = "/proc/sys/net/ipv4/tcp_allowed_congestion_control"
#: User timeouts the default policy accepts, in ms (0 = back to the kernel default).
USER_TIMEOUT_BOUNDS = (100, 600_000)

Policy = Callable[[int, object, Optional[int]], Optional[str]]


def allowed_congestion_control(path: str = ALLOWED_CC_PATH) -> list[str]:
    """The kernel's ``tcp_allowed_congestion_control`` list ([] if unreadable)."""
    try:
        with open(path, encoding="ascii") as f:
            return f.read().split()
    except OSError:
        return []


def default_policy(setting: int, value: object, conn_id: Optional[int]) -> Optional[str]:
    """Accept a user timeout of 0 (kernel default) or within
    :data:`USER_TIMEOUT_BOUNDS`, and a congestion control algorithm the kernel
    lets any process select (``tcp_allowed_congestion_control``, even when we
    run as root and could set more); refuse everything else."""
    if setting == TCPSetting.USER_TIMEOUT:
        assert isinstance(value, int)
        lo, hi = USER_TIMEOUT_BOUNDS
        if value != 0 and not lo <= value <= hi:
            return f"user timeout {value} ms outside {lo}-{hi} ms"
        return None
    if setting == TCPSetting.CONGESTION_CONTROL:
        allowed = allowed_congestion_control()
        if value not in allowed:
            return f"congestion control {value!r} not allowed (allowed: {' '.join(allowed) or 'none'})"
        return None
    return f"unknown setting {setting}"


def apply_setting(sock: Any, setting: int, value: object) -> None:
    """``setsockopt`` one setting; raises OSError."""
    if setting == TCPSetting.USER_TIMEOUT:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_USER_TIMEOUT, int(value))  # type: ignore[call-overload]
    elif setting == TCPSetting.CONGESTION_CONTROL:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_CONGESTION, str(value).encode("ascii"))
    else:
        raise ValueError(f"unknown setting {setting}")


def handle_request(policy: Optional[Policy], setting: int, value: object, conn_id: Optional[int],
                   sockets: Sequence[Any]) -> tuple[TCPSettingStatus, str]:
    """Ask ``policy`` (None: :func:`default_policy`) and apply the setting on
    ``sockets``; returns (status, reason) for the TCP Setting Result."""
    try:
        refusal = (policy or default_policy)(setting, value, conn_id)
    except Exception as exc:  # noqa: BLE001 - a failing hook refuses, never kills the session
        logger.warning("TCP setting policy failed: %s", exc)
        refusal = f"policy error: {exc}"
    if refusal is not None:
        return TCPSettingStatus.REFUSED, str(refusal)
    socks = [s for s in sockets if s is not None]
    if not socks:
        return TCPSettingStatus.FAILED, "no socket to apply it to"
    try:
        for s in socks:
            apply_setting(s, setting, value)
    except (OSError, ValueError, OverflowError, TypeError) as exc:  # a hook accepted a timeout beyond a C int
        return TCPSettingStatus.FAILED, f"setsockopt failed: {exc}"
    name = "user timeout" if setting == TCPSetting.USER_TIMEOUT else "congestion control"
    return TCPSettingStatus.APPLIED, f"{name} {value} set on {len(socks)} connection(s)"
