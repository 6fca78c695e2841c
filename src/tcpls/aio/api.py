"""asyncio streams over TLS 1.3: :func:`open_connection` and :func:`start_server`.

Shaped like :func:`asyncio.open_connection` / :func:`asyncio.start_server`:
the reader is a plain :class:`asyncio.StreamReader`, the writer a
:class:`~tcpls.aio.protocol.TLSStreamWriter`. Both functions hand out streams
only after the handshake has completed.
"""

from __future__ import annotations

import asyncio
from typing import Any, Optional

from ..tls.config import TLSConfig
from ..tls.connection import TLSConnection
from .protocol import ClientConnectedCallback, TLSStreamProtocol, TLSStreamWriter

__all__ = ["open_connection", "start_server", "DEFAULT_LIMIT"]

DEFAULT_LIMIT = 2**16  # same as asyncio.streams


async def open_connection(
    host: Optional[str] = None,
    port: Optional[int] = None,
    *,
    config: TLSConfig,
    server_hostname: Optional[str] = None,
    limit: int = DEFAULT_LIMIT,
    handshake_timeout: Optional[float] = 60.0,
    ktls: Any = None,
    ktls_key_update: str = "abort",
    **kwds: Any,
) -> tuple[asyncio.StreamReader, TLSStreamWriter]:
    """Connect to ``host:port`` and complete a TLS handshake.

    ``server_hostname`` (default: ``config.server_name``, else ``host``) is
    sent as SNI and checked against the certificate. ``ktls``
    (``"auto"``/``"required"``) hands the record layer to the kernel after
    the handshake (:meth:`TLSStreamWriter.enable_ktls`). Extra keyword arguments
    go to :meth:`loop.create_connection` (``sock=``, ``local_addr=``, ...).

    Raises the engine's :class:`~tcpls.errors.LocalProtocolError` /
    :class:`~tcpls.errors.RemoteAlert` if the handshake fails.
    """
    loop = asyncio.get_running_loop()
    config.validate(server_side=False)
    name = server_hostname or config.server_name or host or None
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    conn = TLSConnection(config, server_side=False, server_name=name)
    protocol = TLSStreamProtocol(conn, reader, server_side=False, handshake_timeout=handshake_timeout, loop=loop)
    await loop.create_connection(lambda: protocol, host, port, **kwds)
    try:
        await protocol.wait_handshake()
        if ktls:
            await protocol.enable_ktls(ktls, key_update=ktls_key_update)
    except BaseException:
        protocol.close()
        raise
    return reader, protocol.writer


async def start_server(
    client_connected_cb: ClientConnectedCallback,
    host: Any = None,
    port: Optional[int] = None,
    *,
    config: TLSConfig,
    limit: int = DEFAULT_LIMIT,
    handshake_timeout: Optional[float] = 60.0,
    **kwds: Any,
) -> asyncio.Server:
    """Serve TLS on ``host:port``; ``client_connected_cb(reader, writer)`` runs
    after each successful handshake (it may be a coroutine function).

    A failed handshake is logged on the ``tcpls.aio`` logger and the
    connection dropped; the server keeps serving. Extra keyword arguments go
    to :meth:`loop.create_server` (``reuse_port=``, ``backlog=``, ...).
    """
    loop = asyncio.get_running_loop()
    config.validate(server_side=True)

    def factory() -> TLSStreamProtocol:
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        conn = TLSConnection(config, server_side=True)
        return TLSStreamProtocol(
            conn,
            reader,
            server_side=True,
            client_connected_cb=client_connected_cb,
            handshake_timeout=handshake_timeout,
            loop=loop,
        )

    return await loop.create_server(factory, host, port, **kwds)
