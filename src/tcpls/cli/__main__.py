"""``tcpls`` command line: ``server``, ``client``, ``demo`` and ``plot`` subcommands."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from . import commands, dtls_mode, plot, tcpls_mode


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tcpls", description="TLS 1.3 client and server (tcpls).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--alpn", metavar="LIST", help="ALPN protocols, comma separated")
        p.add_argument(
            "--ciphers",
            "--ciphersuites",
            dest="ciphers",
            metavar="LIST",
            help="TLS 1.3 cipher suites (IANA names, ',' or ':' separated); TLS_AES_128_CCM_SHA256 and "
            "TLS_AES_128_CCM_8_SHA256 are used only when listed",
        )
        p.add_argument("--groups", metavar="LIST", help="key exchange groups (IANA names, ',' or ':' separated)")
        p.add_argument("--keylog", metavar="FILE", help="append SSLKEYLOGFILE lines to FILE")
        p.add_argument("-v", "--verbose", action="store_true", help="print negotiated parameters / log connections")
        p.add_argument("--psk", metavar="HEX", help="external PSK (hex); with --psk-identity")
        p.add_argument("--psk-identity", metavar="ID", help="identity of the external PSK")
        p.add_argument("--psk-hash", choices=["sha256", "sha384"], default="sha256", help="hash of the external PSK")
        p.add_argument(
            "--psk-modes",
            metavar="LIST",
            help="PSK key exchange modes, preferred first: psk_dhe_ke, psk_ke (default psk_dhe_ke; psk_ke, PSK "
            "without (EC)DHE, has no forward secrecy). Server: the modes accepted; client: the modes offered",
        )
        p.add_argument("--key-update", action="store_true", help="send a KeyUpdate (update_requested) right after the handshake")
        p.add_argument("--record-size-limit", type=int, metavar="N", help="offer/accept records of at most N bytes (RFC 8449)")
        p.add_argument(
            "--cert-compression", metavar="LIST", help="accept/send compressed certificates: zlib,brotli,zstd (RFC 8879)"
        )

    server = sub.add_parser("server", help="serve TLS connections (echo or www)")
    server.add_argument("--cert", help="PEM certificate chain, leaf first (required unless --psk)")
    server.add_argument("--key", help="PEM private key")
    server.add_argument(
        "--hrr-cookie", action="store_true", help="put a cookie in HelloRetryRequest (RFC 9846 §4.2.2)"
    )
    server.add_argument("--num-tickets", type=int, default=2, metavar="N", help="session tickets per connection (default 2)")
    server.add_argument("--max-early-data", type=int, default=0, metavar="N", help="accept up to N bytes of 0-RTT data (default 0: off)")
    auth = server.add_mutually_exclusive_group()
    auth.add_argument("--require-client-cert", action="store_true", help="require a client certificate (verified against --cafile)")
    auth.add_argument("--request-client-cert", action="store_true", help="ask for an optional client certificate")
    server.add_argument("--cafile", help="trust these PEM CAs for client certificates (their names go in CertificateRequest)")
    server.add_argument(
        "--request-post-handshake-auth",
        action="store_true",
        help="ask for a client certificate after the handshake (RFC 9846 §4.6.2; clients offering post_handshake_auth)",
    )
    server.add_argument("--ocsp-response", metavar="FILE", help="staple this DER OCSP response when the client asks (status_request)")
    server.add_argument(
        "--redis", metavar="URL", help="share 0-RTT anti-replay records (and ticket keys) through Redis (redis://host:port/db)"
    )
    server.add_argument(
        "--ticket-key-file", metavar="FILE", help="ticket-sealing key shared by servers (created if missing; secret!)"
    )
    server.add_argument("--stateful-tickets", action="store_true", help="single-use tickets kept in --redis")
    server.add_argument("--host", default="127.0.0.1", action=tcpls_mode.host_action(),
                        help="listen address (repeatable with --tcpls: every address is announced)")
    server.add_argument("--port", type=int, default=4433, help="0 picks a free port")
    mode = server.add_mutually_exclusive_group()
    mode.add_argument("--echo", action="store_true", help="echo each connection's bytes (default)")
    mode.add_argument(
        "--www",
        action="store_true",
        help="answer HTTP requests with a status page (GET /keyupdate: after a KeyUpdate with update_requested)",
    )
    mode.add_argument("--serve-file", metavar="PATH", help="send PATH to each client (sendfile), then close")
    server.add_argument("--ktls", choices=["off", "auto", "required"], default="off",
                        help="hand the record layer to the kernel (kTLS) after the handshake")
    common(server)
    server.set_defaults(func=commands.cmd_server)

    client = sub.add_parser("client", help="connect, send stdin, print what comes back")
    commands.add_client_target_arguments(client)
    client.add_argument("--timeout", type=float, default=30.0, help="connect and handshake timeout (seconds)")
    client.add_argument("--sess-out", metavar="FILE", help="write the newest resumable session to FILE (secret!)")
    client.add_argument("--sess-in", metavar="FILE", help="resume the session stored in FILE")
    client.add_argument("--early-data", metavar="FILE", help="send FILE's contents as 0-RTT data (needs --sess-in)")
    client.add_argument("--cert", help="PEM client certificate chain, leaf first (client authentication)")
    client.add_argument("--key", help="PEM private key of --cert")
    client.add_argument("--status", action="store_true", help="ask for a stapled OCSP response (printed with -v)")
    client.add_argument("--ktls", choices=["off", "auto", "required"], default="off",
                        help="hand the record layer to the kernel (kTLS) after the handshake")
    common(client)
    tcpls_mode.add_arguments(server, client)
    client.set_defaults(func=commands.cmd_client)

    dtls_mode.add_parsers(sub, common)

    demo = sub.add_parser("demo", help="run a local server and client with a throwaway CA")
    demo.set_defaults(func=commands.cmd_demo)

    plot.add_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return commands.run(args)


if __name__ == "__main__":
    sys.exit(main())
