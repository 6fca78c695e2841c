"""DTLS 1.3 (RFC 9147), sans-IO.

Layers, bottom up:

* :mod:`tcpls.dtls.record`: datagram → records (DTLSPlaintext and the
  DTLSCiphertext unified header), epochs, record number encryption, per-epoch
  protection, replay windows and AEAD limits.
* :mod:`tcpls.dtls.handshake`: the DTLS handshake header, fragmentation and
  reassembly, flights, ACKs and retransmission timers.

The connection object that joins these layers to the TLS 1.3 handshake state
machines is not written yet (see docs/dtls.md).
"""
