"""asyncio API for TLS 1.3 streams (see :mod:`tcpls.aio.api`)."""

from .api import DEFAULT_LIMIT, open_connection, start_server
from .protocol import TLSStreamProtocol, TLSStreamWriter

__all__ = ["open_connection", "start_server", "TLSStreamWriter", "TLSStreamProtocol", "DEFAULT_LIMIT"]
