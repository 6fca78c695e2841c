"""DTLS 1.3 (RFC 9147), sans-IO.

Layers, bottom up:

* :mod:`tcpls.dtls.record`: datagram → records (DTLSPlaintext and the
  DTLSCiphertext unified header), epochs, record number encryption, per-epoch
  protection, replay windows and AEAD limits.
* :mod:`tcpls.dtls.handshake`: the DTLS handshake header, fragmentation and
  reassembly, flights, ACKs and retransmission timers.
* :mod:`tcpls.dtls.cookie`: stateless HelloRetryRequest cookies.
* :mod:`tcpls.dtls.hello`: reassembling a fragmented first ClientHello
  without a connection (:class:`~tcpls.dtls.hello.ClientHelloReassembler`).
* :mod:`tcpls.dtls.cid`: NewConnectionId / RequestConnectionId (§9).
* :mod:`tcpls.dtls.events`: the DTLS-only events (connection IDs).
* :mod:`tcpls.dtls.connection`: :class:`DTLSConnection`, the engine that
  drives the TLS 1.3 handshake state machines over these layers, and
  :func:`stateless_hello_retry` for endpoints (see docs/dtls.md).
"""
