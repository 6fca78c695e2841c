"""Handing the record layer of an established connection to someone else.

Theory of operation
-------------------
After the handshake, the record protection of one or both directions can be
done outside the engine, typically by the Linux kernel (kTLS, see
:mod:`tcpls.ktls`). The engine keeps everything the kernel cannot do:
post-handshake messages (NewSessionTicket, KeyUpdate) and alerts.

:meth:`TLSConnection.export_traffic_state` returns the current traffic
secrets and sequence numbers (a :class:`TrafficState`);
:meth:`TLSConnection.offload` then swaps the engine's
``RecordEncryptor``/``RecordDecryptor`` for the stand-ins below. They do not
encrypt: every record the engine would have sealed becomes a
``SendRecord(content_type, plaintext)`` action, and every key change
(KeyUpdate, RFC 9846 §4.6.3) a ``InstallKey(direction, secret)`` action, in
the order the engine produced them. The transport drains them with
:meth:`OffloadActions.drain` and carries them out (``sendmsg`` with a
record-type cmsg, ``setsockopt(TLS_TX/TLS_RX)``). Records the kernel
decrypted but could not deliver as application data (handshake, alert) go
back into the engine with :meth:`TLSConnection.receive_plaintext_record`.

Nothing here touches sockets or clocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from .suites import CipherSuiteInfo

__all__ = ["TrafficState", "SendRecord", "InstallKey", "OffloadActions", "OffloadedEncryptor", "OffloadedDecryptor"]


@dataclass(frozen=True)
class TrafficState:
    """Application traffic keys of an established connection.

    Attributes:
        cipher_suite: the negotiated ``CipherSuite`` codepoint.
        tx_secret / tx_seq: our current sending traffic secret and the
            sequence number of the next record we send.
        rx_secret / rx_seq: the peer's current traffic secret and the
            sequence number of the next record we expect.
    """

    cipher_suite: int
    tx_secret: bytes = field(repr=False)
    tx_seq: int
    rx_secret: bytes = field(repr=False)
    rx_seq: int


@dataclass(frozen=True)
class SendRecord:
    """Send one record of ``content_type`` carrying ``data`` (plaintext)."""

    content_type: int
    data: bytes


@dataclass(frozen=True)
class InstallKey:
    """Switch ``direction`` (``"tx"`` or ``"rx"``) to ``secret``, sequence number 0."""

    direction: str
    secret: bytes = field(repr=False)


Action = Union[SendRecord, InstallKey]


class OffloadActions:
    """Ordered queue of what the transport must do for an offloaded connection."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: list[Action] = []

    def append(self, action: Action) -> None:
        self._items.append(action)

    def drain(self) -> list[Action]:
        items, self._items = self._items, []
        return items

    def __bool__(self) -> bool:
        return bool(self._items)


class _Offloaded:
    """Shared shape of the stand-ins: what the engine reads off a protection object."""

    __slots__ = ("suite", "secret", "seq", "records_protected", "_actions", "_direction")

    def __init__(self, suite: CipherSuiteInfo, secret: bytes, actions: OffloadActions, direction: str) -> None:
        self.suite = suite
        self.secret = secret
        # Records are counted by whoever protects them (the kernel); the
        # engine's own KeyUpdate-after-N-records check must never fire.
        self.seq = 0
        self.records_protected = 0
        self._actions = actions
        self._direction = direction

    def update(self, new_secret: bytes) -> None:
        self.secret = new_secret
        self._actions.append(InstallKey(self._direction, new_secret))


class OffloadedEncryptor(_Offloaded):
    """Stands in for :class:`~tcpls.tls.protection.RecordEncryptor` when the
    records are protected elsewhere: ``seal`` queues a :class:`SendRecord`."""

    __slots__ = ()

    def seal(self, content_type: int, data: bytes | bytearray | memoryview, out: list, padding: int = 0) -> None:
        self._actions.append(SendRecord(int(content_type), bytes(data)))


class OffloadedDecryptor(_Offloaded):
    """Stands in for :class:`~tcpls.tls.protection.RecordDecryptor` when the
    records are opened elsewhere (they arrive via ``receive_plaintext_record``)."""

    __slots__ = ()

    def open(self, header: bytes | memoryview, ciphertext: bytes | memoryview) -> tuple[int, bytes]:
        raise AssertionError("protected records must not reach an engine whose receiving side is offloaded")
