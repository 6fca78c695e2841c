"""Blocking, socket-like TLS 1.3 API (see :mod:`tcpls.sync.socket`)."""

from .socket import SocketIO, TLSListener, TLSSocket, connect, create_server, version_name

__all__ = ["TLSSocket", "TLSListener", "SocketIO", "connect", "create_server", "version_name"]
