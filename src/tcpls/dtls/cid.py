"""Connection ID updates after the handshake (RFC 9147 §9), sans-IO.

Theory of operation
-------------------
The ``connection_id`` extension (RFC 9146) fixes one CID per direction
during the handshake. Afterwards either side may hand the other more CIDs
with NewConnectionId (handshake type 10), and ask for some with
RequestConnectionId (type 9). Both are post-handshake messages in epoch
3 and up, outside the transcript, sent as their own flight and
acknowledged with an ACK (§7.1).

:class:`ConnectionIds` keeps the bookkeeping of one association and never
touches records or flights; :class:`~tcpls.dtls.connection.DTLSConnection`
sends the messages it builds and feeds it what arrives:

* **Ours (peer → us).** ``receive_cids`` lists the CIDs we issued and have
  not retired, oldest first; the record layer accepts records carrying any
  of them. They all have the length of the handshake CID: the unified
  header does not carry a CID length (§4), so the receiver's parser needs
  one. At most ``max_receive_cids`` are active. When the peer starts
  using one of them, the CIDs issued before the one it used just before
  are retired (the previous one stays for reordered records).
* **Theirs (us → peer).** ``spare_send_cids`` holds the peer's unused
  CIDs in the order given ("SHOULD use receiver-provided CIDs in the order
  they were provided"); more than ``max_spare_cids`` are discarded (MAY).
  ``cid_immediate`` switches ``send_cid`` to the first new one at once.
* **Rules** (§9): neither message without a negotiated CID; no
  NewConnectionId when we receive an empty CID, no RequestConnectionId
  when we send one (violations: unexpected_message); one NewConnectionId
  outstanding at a time, one unfulfilled RequestConnectionId at a time (a
  second request before our answer: too_many_cids_requested, alert 52).
"""

from __future__ import annotations

import enum
import os
from collections import deque
from dataclasses import dataclass
from typing import Callable, Optional

from .._buffer import Buffer
from ..errors import DecodeError, IllegalParameter, LocalProtocolError, UnexpectedMessage, UsageError
from ..tls.enums import AlertDescription

__all__ = [
    "REQUEST_CONNECTION_ID",
    "NEW_CONNECTION_ID",
    "ConnectionIdUsage",
    "NewConnectionId",
    "RequestConnectionId",
    "ConnectionIds",
    "TooManyCidsRequested",
]

#: RFC 9147 §5.2 HandshakeType values.
REQUEST_CONNECTION_ID = 9
NEW_CONNECTION_ID = 10
#: RFC 9147 §14: the too_many_cids_requested alert.
TOO_MANY_CIDS_REQUESTED = 52


class TooManyCidsRequested(LocalProtocolError):
    """Fatal too_many_cids_requested alert (RFC 9147 §9)."""

    def __init__(self, message: str = "") -> None:
        LocalProtocolError.__init__(self, AlertDescription.too_many_cids_requested, message)


class ConnectionIdUsage(enum.IntEnum):
    """``ConnectionIdUsage`` (§9)."""

    cid_immediate = 0
    cid_spare = 1


@dataclass(frozen=True, slots=True)
class NewConnectionId:
    """``struct { ConnectionId cids<0..2^16-1>; ConnectionIdUsage usage; }`` (§9)."""

    cids: tuple[bytes, ...]
    usage: ConnectionIdUsage

    def encode(self) -> bytes:
        """The message body (without the handshake header)."""
        buf = Buffer()
        inner = b"".join(bytes((len(c),)) + c for c in self.cids)
        buf.push_opaque(2, inner)
        buf.push_uint8(self.usage)
        return buf.data()

    @classmethod
    def decode(cls, body: bytes) -> "NewConnectionId":
        """Raises DecodeError (malformed) or IllegalParameter (unknown usage, empty CID)."""
        buf = Buffer(body)
        inner = Buffer(buf.pull_opaque(2))
        usage = buf.pull_uint8()
        buf.expect_end("NewConnectionId")
        cids = []
        while not inner.eof():
            cid = inner.pull_opaque(1)
            if not cid:
                raise IllegalParameter("empty CID in NewConnectionId")
            cids.append(cid)
        if usage not in (ConnectionIdUsage.cid_immediate, ConnectionIdUsage.cid_spare):
            raise IllegalParameter(f"unknown ConnectionIdUsage {usage}")
        if usage == ConnectionIdUsage.cid_immediate and not cids:
            raise IllegalParameter("cid_immediate without any CID")  # "one of the new CIDs MUST be used"
        return cls(tuple(cids), ConnectionIdUsage(usage))


@dataclass(frozen=True, slots=True)
class RequestConnectionId:
    """``struct { uint8 num_cids; }`` (§9)."""

    num_cids: int

    def encode(self) -> bytes:
        return bytes((self.num_cids,))

    @classmethod
    def decode(cls, body: bytes) -> "RequestConnectionId":
        if len(body) != 1:
            raise DecodeError("RequestConnectionId is one byte")
        return cls(body[0])


class ConnectionIds:
    """CID bookkeeping of one association after the handshake (§9).

    Args:
        receive_cid: the CID negotiated for records sent to us (None: the
            extension was not negotiated).
        send_cid: the CID negotiated for records we send.
        max_receive_cids: CIDs of ours active at once.
        max_spare_cids: unused CIDs of the peer kept.
        generate: ``n -> n random bytes`` for new CIDs.
    """

    def __init__(
        self,
        receive_cid: Optional[bytes],
        send_cid: Optional[bytes],
        *,
        max_receive_cids: int = 8,
        max_spare_cids: int = 8,
        generate: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.negotiated = receive_cid is not None and send_cid is not None
        self.receive_cids: list[bytes] = [receive_cid] if receive_cid else []
        self.send_cid: bytes = send_cid or b""
        self.spare_send_cids: deque[bytes] = deque()
        self.max_receive_cids = max_receive_cids
        self.max_spare_cids = max_spare_cids
        self._generate = generate
        self._cid_length = len(receive_cid or b"")
        #: Our RequestConnectionId awaits its NewConnectionId.
        self.request_unfulfilled = False
        #: CIDs the peer asked for and we have not sent yet (None: no request).
        self.peer_request: Optional[int] = None
        #: CIDs retired since the last call of :meth:`take_retired`.
        self._retired: list[bytes] = []

    # ---------------------------------------------------------------- ours
    def can_issue(self) -> bool:
        """We may send NewConnectionId: CIDs negotiated and ours non-empty (§9)."""
        return self.negotiated and self._cid_length > 0

    def room(self) -> int:
        return max(0, self.max_receive_cids - len(self.receive_cids))

    def issue(self, count: int, cids: Optional[list[bytes]] = None) -> list[bytes]:
        """New CIDs of ours (given, or ``count`` random ones), now accepted.

        Raises:
            UsageError: CIDs not negotiated or ours empty, more than
                ``max_receive_cids`` active, wrong length or duplicates.
        """
        if not self.can_issue():
            raise UsageError("NewConnectionId needs a negotiated, non-empty connection ID of ours (RFC 9147 §9)")
        if cids is None:
            cids = []
            while len(cids) < count:
                c = self._generate(self._cid_length)
                if c not in self.receive_cids and c not in cids:
                    cids.append(c)
        cids = [bytes(c) for c in cids]
        if any(len(c) != self._cid_length for c in cids):
            raise UsageError(f"our connection IDs must all be {self._cid_length} bytes long")
        if len(set(cids)) != len(cids) or any(c in self.receive_cids for c in cids):
            raise UsageError("connection ID already issued")
        if len(cids) > self.room():
            raise UsageError(f"at most {self.max_receive_cids} connection IDs of ours may be active")
        self.receive_cids.extend(cids)
        return cids

    def peer_used(self, cid: bytes) -> None:
        """An authenticated record carried ``cid``: retire the CIDs issued
        before the one in use before it."""
        try:
            i = self.receive_cids.index(cid)
        except ValueError:
            return
        if i >= 2:
            self._retired.extend(self.receive_cids[: i - 1])
            del self.receive_cids[: i - 1]

    def take_retired(self) -> list[bytes]:
        retired, self._retired = self._retired, []
        return retired

    # ---------------------------------------------------------------- theirs
    def on_new_connection_id(self, body: bytes) -> NewConnectionId:
        """The peer's NewConnectionId; with cid_immediate ``send_cid`` changes."""
        if not self.negotiated or not self.send_cid:
            # The peer negotiated receiving an empty CID, or none at all.
            raise UnexpectedMessage("NewConnectionId without a negotiated non-empty connection ID")
        msg = NewConnectionId.decode(body)
        self.request_unfulfilled = False
        fresh = [c for c in msg.cids if c != self.send_cid and c not in self.spare_send_cids]
        if msg.usage == ConnectionIdUsage.cid_immediate:
            self.send_cid = msg.cids[0]
            fresh = [c for c in fresh if c != self.send_cid]
        for c in fresh:
            if len(self.spare_send_cids) < self.max_spare_cids:
                self.spare_send_cids.append(c)  # extras are discarded (§9 MAY)
        return msg

    def next_send_cid(self) -> bytes:
        """Switch to the peer's oldest spare CID.

        Raises:
            UsageError: no spare CID.
        """
        if not self.spare_send_cids:
            raise UsageError("no spare connection ID from the peer")
        self.send_cid = self.spare_send_cids.popleft()
        return self.send_cid

    def can_request(self) -> bool:
        """We may send RequestConnectionId: CIDs negotiated, we send a
        non-empty one, and no request of ours is unfulfilled (§9)."""
        return self.negotiated and bool(self.send_cid) and not self.request_unfulfilled

    def on_request_connection_id(self, body: bytes) -> int:
        """The peer's RequestConnectionId: how many CIDs it wants."""
        if not self.negotiated or not self.can_issue():
            # The peer sends an empty CID (ours is empty) or none was negotiated.
            raise UnexpectedMessage("RequestConnectionId without a negotiated non-empty connection ID")
        msg = RequestConnectionId.decode(body)
        if self.peer_request is not None:
            raise TooManyCidsRequested("RequestConnectionId while the previous one is unanswered")
        self.peer_request = msg.num_cids
        return msg.num_cids
