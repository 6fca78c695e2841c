"""Events specific to DTLS 1.3, next to the TLS ones (:mod:`tcpls.tls.events`).

:class:`~tcpls.dtls.connection.DTLSConnection` returns both kinds from
``next_event()``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..tls.events import Event

__all__ = ["ConnectionIdsIssued", "ConnectionIdsReceived", "ConnectionIdsRetired"]


@dataclass(frozen=True, slots=True)
class ConnectionIdsReceived(Event):
    """The peer sent NewConnectionId (RFC 9147 §9).

    Attributes:
        cids: the CIDs it wants us to use, in its order.
        immediate: ``cid_immediate``: we now send with ``cids[0]``; else
            they are spare (see ``DTLSConnection.use_next_connection_id``).
    """

    cids: tuple[bytes, ...]
    immediate: bool


@dataclass(frozen=True, slots=True)
class ConnectionIdsRetired(Event):
    """CIDs of ours no longer accepted on received records (the peer moved
    on to later ones); an endpoint demultiplexing by CID forgets them."""

    cids: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class ConnectionIdsIssued(Event):
    """We sent NewConnectionId with these CIDs of ours (by
    ``issue_connection_ids`` or answering the peer's RequestConnectionId):
    records carrying them are accepted from now on; an endpoint
    demultiplexing by CID maps them to this connection."""

    cids: tuple[bytes, ...]
