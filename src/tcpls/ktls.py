"""Linux kernel TLS (kTLS) for connections whose handshake tcpls ran.

Theory of operation
-------------------
After a TLS 1.3 handshake the kernel can protect application records itself
(``setsockopt(IPPROTO_TCP, TCP_ULP, "tls")`` then ``SOL_TLS``/``TLS_TX`` and
``TLS_RX`` with a ``struct tls12_crypto_info_*``). Then ``send``, ``recv``
and ``sendfile`` run with no Python in the data path. The engine
(:class:`~tcpls.tls.connection.TLSConnection`) keeps what the kernel cannot
do, through :mod:`tcpls.tls.offload`:

* it exports its traffic secrets and sequence numbers
  (``export_traffic_state``) once the transport has read up to a record
  boundary and written everything the engine queued;
* :func:`offload` installs them and switches the engine to *actions*:
  records it would have sealed (alerts, KeyUpdate, NewSessionTicket) are sent
  with ``sendmsg`` and a ``TLS_SET_RECORD_TYPE`` cmsg (:func:`send_record`);
  records the kernel decrypted that are not application data arrive from
  ``recvmsg`` with a ``TLS_GET_RECORD_TYPE`` cmsg (:func:`recv_record`) and
  go back to the engine (``receive_plaintext_record``);
* a KeyUpdate becomes an :class:`~tcpls.tls.offload.InstallKey` action, done
  with a second ``TLS_TX``/``TLS_RX``. Kernels before ~6.14 refuse that with
  ``EBUSY``, and an offloaded direction can never be taken back from the
  kernel (the ULP cannot be removed; ciphertext it has consumed cannot be
  read raw). So on such kernels ``key_update="decline"`` refuses offload up
  front (KeyUpdate then works in userspace), and ``key_update="abort"`` (the
  default) offloads anyway: :meth:`KernelRecordLayer.check_key_update` makes a
  local ``key_update()`` fail *before* anything is sent, and a KeyUpdate from
  the peer ends the connection with :class:`KTLSRekeyError` after a fatal
  alert under the still valid old key.

Detection (:func:`probe`) runs once per cipher suite on a scratch loopback
TCP pair, so a kernel without kTLS (``TCP_ULP`` fails with ``ENOENT`` when
``CONFIG_TLS`` is unset) is found without touching the real socket. Mode
``"auto"`` then falls back to userspace and logs why on the ``tcpls.ktls``
logger; ``"required"`` raises :class:`KTLSUnavailable`. The real socket is
never left half-configured: a ULP without keys is a pass-through, and when
the receive key fails after the send key succeeded the connection stays
usable with only TX in the kernel.

``struct tls12_crypto_info_aes_gcm_{128,256}``:
``u16 version, u16 cipher_type, iv[8], key[16|32], salt[4], rec_seq[8]``;
``struct tls12_crypto_info_chacha20_poly1305``:
``u16 version, u16 cipher_type, iv[12], key[32], rec_seq[8]``. For TLS 1.3
the per-record nonce is ``(salt || iv) XOR seq``, i.e. ``salt || iv`` is the
12-byte ``write_iv`` of RFC 9846 §7.3.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional

from .errors import BadRecordMac, TLSError
from .tls.connection import TLSConnection
from .tls.enums import AlertDescription, AlertLevel, CipherSuite, ContentType
from .tls.key_schedule import traffic_key_iv
from .tls.offload import InstallKey, OffloadActions, SendRecord, TrafficState
from .tls.suites import suite_info

__all__ = [
    "SOL_TLS",
    "TCP_ULP",
    "TLS_TX",
    "TLS_RX",
    "KernelCipher",
    "KERNEL_CIPHERS",
    "crypto_info",
    "parse_crypto_info",
    "KTLSError",
    "KTLSUnavailable",
    "KTLSRekeyError",
    "KernelSupport",
    "probe",
    "offload",
    "KernelRecordLayer",
    "send_record",
    "recv_record",
    "MODES",
    "KEY_UPDATE_POLICIES",
    "logger",
]

logger = logging.getLogger("tcpls.ktls")

SOL_TLS = 282
TCP_ULP = 31
TLS_TX = 1
TLS_RX = 2
TLS_SET_RECORD_TYPE = 1  # cmsg type, sending side
TLS_GET_RECORD_TYPE = 2  # cmsg type, receiving side
TLS_1_3_VERSION = 0x0304
EKEYEXPIRED = getattr(errno, "EKEYEXPIRED", 127)
RECORD_RECV_SIZE = 2**14 + 256  # a control record is returned whole

MODES = ("off", "auto", "required")
KEY_UPDATE_POLICIES = ("abort", "decline")

_CT_APPDATA = int(ContentType.APPLICATION_DATA)
_CT_ALERT = int(ContentType.ALERT)


@dataclass(frozen=True)
class KernelCipher:
    """One ``TLS_CIPHER_*`` of ``<linux/tls.h>`` and its crypto_info layout."""

    name: str
    cipher_type: int
    key_len: int
    salt_len: int
    iv_len: int

    @property
    def info_len(self) -> int:
        return 4 + self.iv_len + self.key_len + self.salt_len + 8


KERNEL_CIPHERS: dict[int, KernelCipher] = {
    CipherSuite.TLS_AES_128_GCM_SHA256: KernelCipher("AES_GCM_128", 51, 16, 4, 8),
    CipherSuite.TLS_AES_256_GCM_SHA384: KernelCipher("AES_GCM_256", 52, 32, 4, 8),
    CipherSuite.TLS_CHACHA20_POLY1305_SHA256: KernelCipher("CHACHA20_POLY1305", 54, 32, 0, 12),
}


class KTLSError(TLSError):
    """Base class of kTLS failures."""


class KTLSUnavailable(KTLSError):
    """kTLS was required but cannot be used here; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"kTLS required but unavailable: {reason}")
        self.reason = reason
        self.layer: Optional["KernelRecordLayer"] = None  # set when TX stayed offloaded


class KTLSRekeyError(KTLSError):
    """A KeyUpdate needs a new key in the kernel and the kernel refused it."""


def crypto_info(suite: int, key: bytes, iv: bytes, seq: int) -> bytes:
    """The ``struct tls12_crypto_info_*`` for TLS 1.3 (``iv`` is the 12-byte write_iv).

    Raises:
        KeyError: the suite has no kTLS cipher.
        ValueError: wrong key/IV length or sequence number out of range.
    """
    c = KERNEL_CIPHERS[suite]
    if len(key) != c.key_len or len(iv) != c.salt_len + c.iv_len:
        raise ValueError(f"{c.name}: key must be {c.key_len} bytes and IV {c.salt_len + c.iv_len} bytes")
    if not 0 <= seq < 2**64:
        raise ValueError("sequence number out of range")
    salt, explicit = iv[: c.salt_len], iv[c.salt_len :]
    return struct.pack("=HH", TLS_1_3_VERSION, c.cipher_type) + explicit + key + salt + seq.to_bytes(8, "big")


def parse_crypto_info(data: bytes) -> tuple[int, int, bytes, bytes, int]:
    """Inverse of :func:`crypto_info`: ``(version, suite, key, write_iv, seq)``."""
    version, cipher_type = struct.unpack_from("=HH", data)
    for suite, c in KERNEL_CIPHERS.items():
        if c.cipher_type == cipher_type:
            break
    else:
        raise ValueError(f"unknown kTLS cipher type {cipher_type}")
    if len(data) != c.info_len:
        raise ValueError(f"{c.name}: crypto_info is {c.info_len} bytes, got {len(data)}")
    p = 4
    explicit = data[p : p + c.iv_len]
    p += c.iv_len
    key = data[p : p + c.key_len]
    p += c.key_len
    salt = data[p : p + c.salt_len]
    p += c.salt_len
    return version, suite, key, salt + explicit, int.from_bytes(data[p : p + 8], "big")


def _info_for(suite: int, secret: bytes, seq: int) -> bytes:
    key, iv = traffic_key_iv(suite_info(suite), secret)
    return crypto_info(suite, key, iv, seq)


# ---------------------------------------------------------------- detection
@dataclass(frozen=True)
class KernelSupport:
    """What :func:`probe` found for one cipher suite."""

    available: bool
    rekey: bool = False
    reason: str = ""


_probe_cache: dict[int, KernelSupport] = {}
_probe_lock = threading.Lock()


def _describe_oserror(what: str, exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    text = f"{what} failed: {name} ({os.strerror(exc.errno)})" if exc.errno else f"{what} failed: {exc}"
    if what.startswith("setsockopt(TCP_ULP") and exc.errno == errno.ENOENT:
        text += ": the kernel has no TLS ULP (CONFIG_TLS unset or the tls module missing)"
    return text


def probe(suite: int, *, refresh: bool = False) -> KernelSupport:
    """Can this kernel offload ``suite`` in both directions, and rekey it?

    Runs once per suite (cached) on a scratch loopback TCP pair.
    """
    if suite not in KERNEL_CIPHERS:
        return KernelSupport(False, reason=f"cipher suite 0x{suite:04x} has no kTLS cipher")
    with _probe_lock:
        if not refresh and suite in _probe_cache:
            return _probe_cache[suite]
        result = _probe(suite)
        _probe_cache[suite] = result
        return result


def _probe(suite: int) -> KernelSupport:
    if not hasattr(socket, "SOL_TCP") or os.uname().sysname != "Linux":
        return KernelSupport(False, reason="kTLS needs Linux")
    try:
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    except OSError as exc:
        return KernelSupport(False, reason=_describe_oserror("socket()", exc))
    c = a = None
    try:
        ls.bind(("127.0.0.1", 0))
        ls.listen(1)
        c = socket.create_connection(ls.getsockname(), timeout=5)
        a, _ = ls.accept()
        step = "setsockopt(TCP_ULP, 'tls')"
        try:
            c.setsockopt(socket.IPPROTO_TCP, TCP_ULP, b"tls")
            info = _info_for(suite, bytes(suite_info(suite).hash_len), 0)
            step = "setsockopt(SOL_TLS, TLS_TX)"
            c.setsockopt(SOL_TLS, TLS_TX, info)
            step = "setsockopt(SOL_TLS, TLS_RX)"
            c.setsockopt(SOL_TLS, TLS_RX, info)
        except OSError as exc:
            return KernelSupport(False, reason=_describe_oserror(step, exc))
        try:
            c.setsockopt(SOL_TLS, TLS_TX, info)
            c.setsockopt(SOL_TLS, TLS_RX, info)
            rekey = True
        except OSError:
            rekey = False  # EBUSY before Linux ~6.14
        return KernelSupport(True, rekey=rekey)
    except OSError as exc:
        return KernelSupport(False, reason=_describe_oserror("loopback probe connection", exc))
    finally:
        for s in (c, a, ls):
            if s is not None:
                s.close()


# ---------------------------------------------------------------- record I/O
def send_record(sock: socket.socket, content_type: int, data: bytes) -> None:
    """Send one non-application record through the kernel (``TLS_SET_RECORD_TYPE``)."""
    cmsg = [(SOL_TLS, TLS_SET_RECORD_TYPE, bytes((content_type,)))]
    view = memoryview(data)
    while True:
        sent = sock.sendmsg([view], cmsg)
        view = view[sent:]
        if not view:
            return


_CMSG_SPACE = socket.CMSG_SPACE(1) if hasattr(socket, "CMSG_SPACE") else 32


def recv_record(sock: socket.socket, bufsize: int) -> tuple[int, bytes]:
    """One ``recvmsg`` on a socket with ``TLS_RX``: ``(content type, plaintext)``.

    Application data may span several records; a non-application record is
    returned alone (``bufsize`` should be at least :data:`RECORD_RECV_SIZE`).
    ``b""`` is TCP EOF.
    """
    data, anc, _flags, _addr = sock.recvmsg(bufsize, _CMSG_SPACE)
    ctype = _CT_APPDATA
    for level, kind, value in anc:
        if level == SOL_TLS and kind == TLS_GET_RECORD_TYPE and value:
            ctype = value[0]
    return ctype, data


# ---------------------------------------------------------------- offload
class KernelRecordLayer:
    """The kernel side of one offloaded connection.

    Attributes:
        tx / rx: which directions the kernel protects.
        rekey: whether the kernel accepts new keys (KeyUpdate).
        suite: the negotiated cipher suite.
    """

    def __init__(
        self, sock: socket.socket, conn: TLSConnection, actions: OffloadActions, *, tx: bool, rx: bool, rekey: bool
    ) -> None:
        self.sock = sock
        self.conn = conn
        self.actions = actions
        self.tx = tx
        self.rx = rx
        self.rekey = rekey
        self.suite = conn.cipher_suite
        self.rekeys = 0

    def __repr__(self) -> str:
        dirs = "+".join(d for d, on in (("tx", self.tx), ("rx", self.rx)) if on)
        return f"<KernelRecordLayer {dirs} rekey={self.rekey}>"

    @property
    def description(self) -> str:
        return "+".join(d.upper() for d, on in (("tx", self.tx), ("rx", self.rx)) if on)

    def check_key_update(self, request_peer_update: bool = False) -> None:
        """Raise :class:`KTLSRekeyError` if a local KeyUpdate cannot be done
        (nothing has been sent yet: the connection stays usable)."""
        if self.rekey:
            return
        if self.tx or (self.rx and request_peer_update):
            which = "TLS_TX" if self.tx else "TLS_RX (the peer's answering KeyUpdate)"
            raise KTLSRekeyError(
                f"this kernel cannot install a new {which} key (EBUSY): KeyUpdate is impossible while "
                "the kernel owns that key; offload with key_update='decline' to keep KeyUpdate"
            )

    def perform(self, items: list, write: Optional[Callable[[bytes], None]] = None) -> None:
        """Carry out engine actions in order (caller serialises socket writes).

        Raises:
            KTLSRekeyError: a key change the kernel refused; a fatal alert
                has been sent under the old key and no later action is done.
        """
        sock = self.sock
        for i, item in enumerate(items):
            if isinstance(item, SendRecord):
                if not self.tx:
                    raise AssertionError("records to send only exist with TX offloaded")
                if item.content_type == _CT_APPDATA:
                    (write or sock.sendall)(item.data)
                else:
                    send_record(sock, item.content_type, item.data)
            elif isinstance(item, InstallKey):
                opt = TLS_TX if item.direction == "tx" else TLS_RX
                try:
                    sock.setsockopt(SOL_TLS, opt, _info_for(self.suite, item.secret, 0))
                    self.rekeys += 1
                    logger.debug("kTLS: installed new %s key after KeyUpdate", item.direction.upper())
                except OSError as exc:
                    self._abort(items[i + 1 :])
                    raise KTLSRekeyError(
                        f"KeyUpdate: the kernel refused the new {item.direction.upper()} key "
                        f"({_describe_oserror('setsockopt(TLS_' + item.direction.upper() + ')', exc)}); "
                        "an offloaded direction cannot be taken back into userspace on this kernel, "
                        "so the connection is closed (use key_update='decline' to keep KeyUpdate working)"
                    ) from exc

    def _abort(self, rest: list) -> None:  # noqa: ARG002 - rest is dropped
        """Best effort: a fatal internal_error alert under the current (old) send key."""
        if not self.tx:
            return
        try:
            send_record(self.sock, _CT_ALERT, bytes((AlertLevel.FATAL, AlertDescription.internal_error)))
        except OSError:
            pass

    def read(self, bufsize: int) -> tuple[int, bytes]:
        """:func:`recv_record` mapping kernel errors to TLS errors."""
        try:
            return recv_record(self.sock, max(bufsize, RECORD_RECV_SIZE))
        except OSError as exc:
            if exc.errno == errno.EBADMSG:
                raise BadRecordMac("record authentication failed (kernel TLS_RX)") from exc
            if exc.errno == EKEYEXPIRED:
                raise KTLSRekeyError("the kernel waits for a new TLS_RX key that was never installed") from exc
            raise


def _check_mode(mode: Any) -> str:
    if mode is None or mode is False:
        return "off"
    if mode is True:
        return "auto"
    if mode not in MODES:
        raise ValueError(f"kTLS mode must be one of {MODES}, not {mode!r}")
    return str(mode)


def offload(
    sock: socket.socket,
    conn: TLSConnection,
    mode: Any = "auto",
    *,
    tx: bool = True,
    rx: bool = True,
    key_update: str = "abort",
) -> tuple[Optional[KernelRecordLayer], str]:
    """Move the record layer of ``conn`` (established over ``sock``) into the kernel.

    The caller has written everything ``conn`` queued and read up to a record
    boundary (:meth:`TLSConnection.bytes_to_record_boundary` is 0), and
    holds whatever locks keep other threads off ``sock`` and ``conn``.

    Returns:
        ``(layer, "")`` on success, ``(None, reason)`` when mode is ``"auto"``
        (or ``"off"``) and the record layer stays in userspace.

    Raises:
        KTLSUnavailable: mode ``"required"`` and kTLS cannot be used.
        ValueError: unknown mode or key_update policy.
    """
    mode = _check_mode(mode)
    if key_update not in KEY_UPDATE_POLICIES:
        raise ValueError(f"key_update must be one of {KEY_UPDATE_POLICIES}, not {key_update!r}")
    if mode == "off":
        return None, "kTLS not requested"
    if not (tx or rx):
        raise ValueError("offload at least one of tx and rx")

    def decline(reason: str) -> tuple[None, str]:
        if mode == "required":
            raise KTLSUnavailable(reason)
        logger.info("kTLS not used, staying in userspace: %s", reason)
        return None, reason

    suite = conn.cipher_suite
    if not conn.handshake_complete or suite is None:
        return decline("the handshake is not complete")
    if conn.terminated or conn.local_closed:
        return decline("the connection is closing")
    if conn.peer_closed:
        rx = False  # nothing more to receive: offload sending only
        if not tx:
            return decline("the peer has closed its side; nothing to receive")
    support = probe(suite)
    if not support.available:
        return decline(support.reason)
    if key_update == "decline" and not support.rekey:
        return decline(
            "the kernel cannot rekey (EBUSY on a second TLS_TX/TLS_RX) and key_update='decline' "
            "keeps KeyUpdate possible"
        )
    state: TrafficState = conn.export_traffic_state()
    step = "setsockopt(TCP_ULP, 'tls')"
    try:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, TCP_ULP, b"tls")
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise
        if tx:
            step = "setsockopt(SOL_TLS, TLS_TX)"
            sock.setsockopt(SOL_TLS, TLS_TX, _info_for(suite, state.tx_secret, state.tx_seq))
    except OSError as exc:
        # Nothing protected by the kernel yet: a bare ULP passes bytes through.
        return decline(_describe_oserror(step, exc))
    rx_error = None
    if rx:
        try:
            sock.setsockopt(SOL_TLS, TLS_RX, _info_for(suite, state.rx_secret, state.rx_seq))
        except OSError as exc:
            rx_error = _describe_oserror("setsockopt(SOL_TLS, TLS_RX)", exc)
            if not tx:
                return decline(rx_error)
    rx_done = rx and rx_error is None
    actions = conn.offload(tx=tx, rx=rx_done)
    layer = KernelRecordLayer(sock, conn, actions, tx=tx, rx=rx_done, rekey=support.rekey)
    if rx_error is not None:
        # TX is in the kernel and cannot come back: stay consistent (TX only).
        if mode == "required":
            err = KTLSUnavailable(rx_error + " (TX stays offloaded)")
            err.layer = layer
            raise err
        logger.info("kTLS: TX offloaded, RX stays in userspace: %s", rx_error)
        return layer, rx_error
    logger.debug("kTLS: %s offloaded (%s, rekey=%s)", layer.description, KERNEL_CIPHERS[suite].name, support.rekey)
    return layer, ""
