"""Joining connections: the TLS extensions, single-use tokens, routing.

Theory of operation
-------------------
Negotiation (draft §"TCPLS TLS Extensions"). :class:`TCPLSHook` plugs into
the TLS engine through :class:`~tcpls.tls.config.ExtensionHook`: the client
adds an empty ``tcpls`` extension to its ClientHello; a server that accepts
TCPLS answers with ``tcpls`` and ``tcpls_token`` (the token with sequence 1)
in EncryptedExtensions, where they are confidential. Without ``tcpls`` in
both, the session stays plain TLS 1.3.

Tokens. The server draws each token from ``os.urandom(32)`` (random, so
tokens of one session cannot be correlated), remembers it with its
sequence number (the Connection ID the joined connection will get) and
registers it in the listener-wide :class:`TokenRegistry`. A token is
consumed by the first ClientHello that carries it, valid or not: it is
single use. The server keeps at most ``max_joins`` tokens outstanding plus
connections joined, so joins are bounded by tokens issued.

Join security. A token crosses the network in clear in the ClientHello's
``tcpls_join``, so an on-path observer can copy it; a token therefore only
*reserves* a Connection ID and never authenticates anything. The joined
connection becomes usable (:class:`ConnState.ACTIVE`) on the server only
once a record protected with the session's client application key and
that connection's nonce (Connection ID = token sequence, record sequence 0)
has been authenticated on it: only a holder of the session keys can
produce it. The client sends this proof (a Ping frame) right after its
ClientHello and in turn treats the connection as joined only after an
authenticated server record on it. A ClientHello with an unknown or used
token gets ``illegal_parameter``; a failed proof gets ``bad_record_mac`` on
that connection only (the session survives: a thief cannot kill it, only
burn one token, which the server then replaces).
"""

from __future__ import annotations

import os
import weakref
from typing import TYPE_CHECKING, Any, Callable, Optional

from ..errors import DecodeError, IllegalParameter, UnexpectedMessage
from ..tls import messages as M
from ..tls.config import ExtensionHook
from ..tls.enums import ContentType, HandshakeType
from ..tls.record import RecordReader
from .codepoints import TOKEN_LENGTH, TCPLSExtension

if TYPE_CHECKING:  # pragma: no cover
    pass

_EXT = TCPLSExtension


def new_token() -> bytes:
    return os.urandom(TOKEN_LENGTH)


class TokenRegistry:
    """Server: outstanding join tokens of every session of a listener.

    Sessions are held weakly: a session the listener dropped leaves the
    registry with its tokens (and sessions retire their tokens when they
    fail or close), so the registry never keeps finished sessions alive.
    """

    def __init__(self) -> None:
        self._by_token: weakref.WeakValueDictionary[bytes, Any] = weakref.WeakValueDictionary()

    def register(self, token: bytes, session: Any) -> None:
        self._by_token[token] = session

    def claim(self, token: bytes) -> Optional[Any]:
        """The session that issued ``token``, removing it (single use)."""
        return self._by_token.pop(token, None)

    def discard(self, token: bytes) -> None:
        self._by_token.pop(token, None)

    def __len__(self) -> int:
        return len(self._by_token)


def _decode_token(body: bytes, what: str) -> bytes:
    # draft: ``opaque token<32>``; we send and accept exactly 32 raw bytes,
    # the same shape as the New Token frame's Token (256).
    if len(body) != TOKEN_LENGTH:
        raise DecodeError(f"{what} must carry a {TOKEN_LENGTH}-byte token")
    return bytes(body)


class TCPLSHook(ExtensionHook):
    """The TCPLS extensions of one handshake (one instance per connection).

    Client: ``join_token`` set means "this ClientHello joins a session".
    Server: ``issue_token`` is called once to get the EE token.
    """

    encrypted_extension_types = frozenset({_EXT.tcpls, _EXT.tcpls_token})

    def __init__(
        self,
        enable: bool,
        join_token: Optional[bytes] = None,
        issue_token: Optional[Callable[[], bytes]] = None,
    ) -> None:
        self.enable = enable
        self.join_token = join_token
        self.issue_token = issue_token
        self.peer_offered = False  # server: ClientHello had tcpls
        self.negotiated = False
        self.first_token: Optional[bytes] = None  # client: from tcpls_token

    # client
    def client_hello_extensions(self) -> list[tuple[int, bytes]]:
        if not self.enable:
            return []
        exts = [(int(_EXT.tcpls), b"")]
        if self.join_token is not None:
            exts.append((int(_EXT.tcpls_join), self.join_token))
        return exts

    def on_encrypted_extensions(self, extensions: list[tuple[int, bytes]]) -> None:
        exts = dict(extensions)
        if _EXT.tcpls in exts:
            if exts[_EXT.tcpls]:
                raise DecodeError("tcpls extension must be empty")
            self.negotiated = True
        if _EXT.tcpls_token in exts:
            if not self.negotiated:
                raise IllegalParameter("tcpls_token without tcpls")
            self.first_token = _decode_token(exts[_EXT.tcpls_token], "tcpls_token")

    # server
    def on_client_hello(self, extensions: list[tuple[int, bytes]]) -> None:
        exts = dict(extensions)
        if _EXT.tcpls_join in exts:
            # Valid joins are routed to their session before any TLS
            # handshake runs (TCPLSSession.accept_join); one reaching a
            # handshake carries an unknown or already used token.
            raise IllegalParameter("tcpls_join with an unknown or already used token")
        if _EXT.tcpls in exts:
            if exts[_EXT.tcpls]:
                raise DecodeError("tcpls extension must be empty")
            self.peer_offered = True

    def encrypted_extensions(self) -> list[tuple[int, bytes]]:
        if not (self.enable and self.peer_offered):
            return []
        self.negotiated = True
        exts = [(int(_EXT.tcpls), b"")]
        if self.issue_token is not None:
            exts.append((int(_EXT.tcpls_token), self.issue_token()))
        return exts


def parse_client_hello(data: bytes | memoryview, max_message_size: Optional[int] = None) -> Optional[tuple[Optional[bytes], int]]:
    """Look at the first bytes of a new TCP connection (server side).

    Returns None while the ClientHello is incomplete, else
    ``(join token or None, bytes taken by the ClientHello's records)``.

    Raises:
        DecodeError, UnexpectedMessage: not a well-formed ClientHello.
    """
    reader = RecordReader()
    reader.feed(bytes(data))
    # the handshake's own limit, so an oversized ClientHello gets its decode_error from the header
    hs = M.HandshakeReader() if max_message_size is None else M.HandshakeReader(max_message_size)
    used = 0
    while True:
        rec = reader.next_record()
        if rec is None:
            return None
        ctype, header, body = rec
        used += 5 + len(body)
        if ctype != ContentType.HANDSHAKE:
            raise UnexpectedMessage("a connection must start with a ClientHello")
        hs.feed(body)
        msg = hs.next_message()
        if msg is None:
            continue
        msg_type, raw = msg
        if msg_type != HandshakeType.client_hello or hs.has_partial():
            raise UnexpectedMessage("a connection must start with a ClientHello")
        ch = M.decode_handshake(msg_type, memoryview(raw)[4:])
        assert isinstance(ch, M.ClientHello)
        exts = dict(ch.extensions)
        token = exts.get(_EXT.tcpls_join)
        if token is not None and _EXT.tcpls not in exts:
            raise IllegalParameter("tcpls_join without tcpls")
        return (_decode_token(token, "tcpls_join") if token is not None else None), used
