"""0-RTT for TCPLS sessions: the first stream bytes in TLS early data.

Theory of operation
-------------------
A TCPLS client resumed from a ticket of an earlier TCPLS session (RFC 9846
§2.3, §4.6.1; ``TCPLSSession(..., session=ticket)``) may put Stream frames,
in the draft's record format, into TLS early data (§4.2.10):

* Client. Stream bytes written before ``start_handshake(now,
  early_data=True)`` are cut into Stream frames, in stream-ID order, until
  the ticket's ``max_early_data_size`` is used up. The budget counts record
  payload (the frames with their headers), which is what the server's TLS
  layer counts. Each record's payload goes to the TLS engine of connection
  0, which protects it under client_early_traffic_secret. What did not fit
  waits for the handshake like any stream data.
* Server. The TLS layer decides (``TLSConfig.max_early_data``, the
  ticket's limit, ``anti_replay``, ``early_data_callback``: all unchanged),
  then hands over each early record's payload; if the ClientHello offered
  ``tcpls`` (and we enable it) the payload is parsed as frames. Only
  Stream and Padding frames are allowed there (anything else is
  ``unexpected_message``): ACKs, tokens or resets need the session's
  1-RTT state. Bytes are delivered at once, marked ``early=True`` in
  :class:`~tcpls.tcpls.events.StreamDataReceived`. A server that does not
  run TCPLS with this client delivers TLS early data on stream 0, as for
  any plain TLS 1.3 client.

Acknowledgment and record counting. Early records are not TCPLS records:
they are protected by the TLS layer under the early key, carry no
Connection ID in their nonce (connection 0's is 0 anyway) and are not
numbered for ACK frames; record numbers of connection 0 start with the
first record under the application keys, as without 0-RTT. Instead:

* accepted (the server's EncryptedExtensions has ``early_data``): every
  early byte counts as acknowledged when the handshake completes. The
  server's Finished covers the EncryptedExtensions, and TLS delivers the
  early records in order before the client's EndOfEarlyData and Finished,
  so nothing can be missing.
* rejected (no ``early_data`` in EncryptedExtensions, a HelloRetryRequest,
  a ticket the client could not offer after all): every early byte counts
  as lost and goes out again as ordinary stream data under the 1-RTT keys,
  at the same offsets. The server's TLS layer skipped the early records
  without looking at them, so each byte arrives exactly once.

Replay. Early data can be replayed (RFC 9846 §8); the TLS layer's
anti-replay (single-use binders inside a freshness window) stays in force,
and the application sees which bytes were early.

Binding to TCPLS. A client formats early data as TCPLS frames only with a
ticket from a TCPLS session: :attr:`TCPLSSession.resumption_session` is
None in plain TLS fallback. If a server nevertheless accepts early data
without negotiating TCPLS (it read our frames as plain bytes), the client
ends the session with ``illegal_parameter``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from ..errors import IllegalParameter, UnexpectedMessage
from ..tls.session import Session
from . import events as ev
from . import frames as F

if TYPE_CHECKING:  # pragma: no cover
    from .session import TCPLSSession

_MAX_CONTENT = 1 << 14


class EarlyState:
    """0-RTT bookkeeping of one session."""

    def __init__(self, session: Optional[Session]) -> None:
        self.session = session  # client: the ticket we resume
        self.ranges: list[tuple[int, int, int, bool]] = []  # (stream, offset, length, fin) sent early
        self.sent = 0  # client: stream bytes sent early
        self.received = 0  # server: stream bytes received early
        self.offered = False
        self.accepted: Optional[bool] = None

    def limit(self, tcpls: "TCPLSSession") -> int:
        s = self.session
        if s is None or not tcpls.is_client or not tcpls.config.enable:
            return 0
        return max(0, s.max_early_data)


def queue_early_data(tcpls: "TCPLSSession", st: EarlyState) -> None:
    """Client, before the ClientHello: move written stream bytes into 0-RTT records."""
    budget = st.limit(tcpls)
    if budget <= F.STREAM_FRAME_OVERHEAD:
        return
    streams = tcpls._streams
    for sid in sorted(streams):
        s = streams[sid]
        while budget > F.STREAM_FRAME_OVERHEAD and s.has_data_to_send():
            room = min(_MAX_CONTENT, budget) - F.STREAM_FRAME_OVERHEAD
            chunk = s.next_chunk(room)
            if chunk is None:
                break
            offset, data, fin = chunk
            payload = F.encode_frames([F.StreamFrame(sid, offset, data, fin)])
            tcpls._tls.send_early_data(payload)
            budget -= len(payload)
            st.ranges.append((sid, offset, len(data), fin))
            st.sent += len(data)
            st.offered = True
        if budget <= F.STREAM_FRAME_OVERHEAD:
            break


def on_early_data(tcpls: "TCPLSSession", st: EarlyState, payload: bytes) -> None:
    """Server: one accepted early record's payload from the TLS layer."""
    st.offered = st.accepted = True
    if not (tcpls.config.enable and tcpls._hook.peer_offered):
        # a plain TLS 1.3 client: its early bytes start stream 0
        s = tcpls._streams.get(0)
        if s is None:
            s = tcpls._new_stream(0)
            tcpls._emit(ev.StreamOpened(0))
        tcpls._emit(ev.StreamDataReceived(0, payload, s.recv_offset, True))
        s.recv_offset += len(payload)
        st.received += len(payload)
        return
    for f in F.parse_frames(payload):
        if isinstance(f, F.StreamFrame):
            tcpls._on_stream_frame(f, early=True)
            st.received += len(f.data)
        elif not isinstance(f, F.Padding):
            raise UnexpectedMessage(f"{type(f).__name__} is not allowed in 0-RTT early data (only Stream frames)")


def on_handshake_complete(tcpls: "TCPLSSession", st: EarlyState, tcpls_mode: bool) -> Optional[bool]:
    """Settle early stream bytes; returns the ``early_data`` outcome for
    ``HandshakeCompleted`` (None: no 0-RTT)."""
    tls = tcpls._tls
    if not tcpls.is_client:
        answer = tls.early_data_accepted
        if answer is not None:
            st.offered = True
            st.accepted = answer
        return st.accepted if st.offered else None
    if not st.offered:
        return None
    st.accepted = tls.early_data_accepted is True
    if st.accepted and not tcpls_mode:
        raise IllegalParameter("the server accepted TCPLS early data without negotiating TCPLS")
    for sid, offset, length, fin in st.ranges:
        s = tcpls._streams.get(sid)
        if s is None:
            continue
        if st.accepted:
            s.on_acked(offset, length, fin)
        else:
            s.on_lost(offset, length, fin)
    st.ranges = []
    return st.accepted


# ----------------------------------------------------------------- 0.5-RTT
# Server. Right after its Finished the server holds its application write
# key (RFC 9846 §4.4.4, "0.5-RTT data"), so a TCPLS server takes over the
# sending half of connection 0 there, not at the client's Finished: stream
# bytes it writes in answer to 0-RTT data leave with (or right after) its
# flight instead of one round trip later. Record numbers and nonces of
# connection 0 start at 0 under that key, as they would at completion. What
# the TLS engine still seals afterwards under that key (NewSessionTickets,
# an alert) is opened again and re-sealed by the session, so every record
# on the wire has its own nonce. Not with client certificates requested:
# the client is then not authenticated before its Finished.


def half_rtt_possible(tcpls: "TCPLSSession") -> bool:
    cfg = tcpls._tls_config
    return not (cfg.request_client_certificate or cfg.require_client_certificate)


def maybe_start_half_rtt(tcpls: "TCPLSSession") -> None:
    """Server, after each handshake record: take over connection 0's sending
    half once the TLS engine switched to the application write key."""
    from .path import ConnectionDecryptor, ConnectionEncryptor

    tls = tcpls._tls
    hs = tls._hs
    secret = getattr(hs, "server_app_secret", b"")
    if tcpls.is_client or tcpls._half_rtt is not None or not secret or tls.handshake_complete:
        return
    if not tcpls._hook.negotiated or not half_rtt_possible(tcpls) or tls.terminated:
        return
    enc = tls._encryptor
    if enc is None or enc.secret != secret or tls._out or tls._hs_out:
        return
    suite = hs.suite
    conn0 = tcpls._conns[0]
    conn0.encryptor = ConnectionEncryptor(suite, secret, 0, enc.seq)
    conn0.tx_records = enc.seq
    # opens what the TLS engine seals later under the same key
    tcpls._half_rtt = ConnectionDecryptor(suite, secret, 0, enc.seq)


def reseal_tls_output(tcpls: "TCPLSSession", out: bytes) -> None:
    """TLS records sealed under the server's application key after the
    takeover: open them and seal their content again on connection 0."""
    from ..tls.record import RecordReader

    dec = tcpls._half_rtt
    assert dec is not None
    reader = RecordReader()
    reader.feed(out)
    while (rec := reader.next_record()) is not None:
        _ctype, header, body = rec
        inner, payload = dec.open(header, body)
        tcpls._seal(tcpls._conns[0], inner, bytes(payload))
