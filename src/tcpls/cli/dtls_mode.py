"""``tcpls dtls-server`` and ``tcpls dtls-client``: DTLS 1.3 over UDP.

Same option handling as the TLS ``server``/``client`` commands
(:func:`tcpls.cli.commands.build_config`) and the same stdin/stdout
contract for the client: stdin goes to the server (cut into records of at
most one datagram), what comes back goes to stdout; at the end of stdin the
client sends close_notify and keeps printing until the server's
close_notify (or ``--timeout`` of silence), then exits. No protocol logic
lives here: the asyncio adapter :mod:`tcpls.aio.dtls` does the work.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
from typing import Any, Optional

from ..aio import dtls as adtls
from ..dtls.endpoint import EndpointLimits
from .commands import READ_SIZE, UsageFailure, add_client_target_arguments, build_config, negotiated

__all__ = ["add_parsers"]

log = logging.getLogger("tcpls.cli")


def add_parsers(sub: Any, common: Any) -> None:
    server = sub.add_parser("dtls-server", help="serve DTLS 1.3 over UDP (echo)")
    common(server)
    server.add_argument("--cert", help="PEM certificate chain, leaf first (required unless --psk)")
    server.add_argument("--key", help="PEM private key")
    server.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    server.add_argument("--port", type=int, default=4433, help="UDP port; 0 picks a free one")
    server.add_argument("--echo", action="store_true", help="echo each record back (the default and only mode)")
    server.add_argument("--cid", action="store_true", help="negotiate connection IDs (RFC 9146)")
    add_datagram_size_argument(server)
    server.add_argument("--num-tickets", type=int, default=2, metavar="N", help="session tickets per connection")
    server.add_argument(
        "--no-cookie", action="store_true", help="do not require the stateless HelloRetryRequest cookie exchange"
    )
    server.add_argument("--max-handshakes", type=int, default=1024, metavar="N", help="handshakes in progress at most")
    server.add_argument("--max-connections", type=int, default=100_000, metavar="N", help="established connections at most")
    server.add_argument("--workers", type=int, default=0, metavar="N", help="threads for handshake work (0: inline)")
    server.add_argument(
        "--max-early-data", type=int, default=0, metavar="BYTES",
        help="0-RTT data accepted per resumed connection (with --no-cookie: a cookie exchange rejects 0-RTT)",
    )
    server.set_defaults(func=cmd_dtls_server)

    client = sub.add_parser("dtls-client", help="DTLS 1.3 client: send stdin, print what comes back")
    common(client)
    add_client_target_arguments(client)
    client.add_argument("--cid", action="store_true", help="negotiate connection IDs (RFC 9146)")
    add_datagram_size_argument(client)
    client.add_argument("--timeout", type=float, default=10.0, help="handshake timeout and final wait (seconds)")
    client.set_defaults(func=cmd_dtls_client)


def _datagram_size(text: str) -> int:
    size = int(text)
    # RFC 9147 §4.4: stay within the path MTU; 65507 is the largest UDP
    # payload over IPv4, 256 leaves room for a record header and some data.
    if not 256 <= size <= 65507:
        raise argparse.ArgumentTypeError("must be between 256 and 65507")
    return size


def add_datagram_size_argument(parser: Any) -> None:
    parser.add_argument(
        "--max-datagram-size",
        type=_datagram_size,
        default=1200,
        metavar="N",
        help="largest UDP datagram we send, in bytes (default 1200: fits any IPv6 path; "
        "raise it only on paths with a larger MTU)",
    )


# ---------------------------------------------------------------- server
async def _echo(channel: adtls.DTLSChannel) -> None:
    log.info("connection from %s", channel.peer_address)
    try:
        while data := await channel.recv():
            # A peer whose datagrams are larger than ours gets its data back
            # in as many records as it takes.
            size = channel.max_data_size
            if len(data) <= size:
                channel.send(data)
            else:
                channel.send_many([data[i : i + size] for i in range(0, len(data), size)])
    except Exception as exc:  # noqa: BLE001 - one association's failure is logged, not fatal
        log.info("connection from %s failed: %s", channel.peer_address, exc)
        return
    channel.close()
    log.info("connection from %s closed", channel.peer_address)


async def _serve(args: argparse.Namespace, config: Any) -> int:
    executor = None
    if args.workers > 0:
        from concurrent.futures import ThreadPoolExecutor

        executor = ThreadPoolExecutor(args.workers, thread_name_prefix="tcpls-dtls-hs")
    limits = EndpointLimits(
        max_handshakes=args.max_handshakes, max_connections=args.max_connections, peer_close_linger=5.0
    )
    try:
        server = await adtls.serve(
            config,
            args.host,
            args.port,
            _echo,
            cid=args.cid,
            stateless_cookies=not args.no_cookie,
            limits=limits,
            executor=executor,
            compact=True,
            connection_options={"max_datagram_size": args.max_datagram_size},
        )
    except OSError as exc:
        raise UsageFailure(f"cannot bind {args.host}:{args.port}: {exc.strerror or exc}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    host, port = server.local_address[:2]
    print(f"listening on {host}:{port} (udp)", file=sys.stderr, flush=True)
    async with server:
        await stop.wait()
    if executor is not None:
        executor.shutdown(wait=False, cancel_futures=True)
    return 0


def cmd_dtls_server(args: argparse.Namespace) -> int:
    config = build_config(args, server=True)
    # DTLS clients on embedded stacks (wolfSSL among them) still list TLS
    # 1.2-only curves in supported_groups; we never select them, so the
    # offer is not worth refusing the handshake over.
    config.reject_obsolete_groups = False
    try:
        return asyncio.run(_serve(args, config))
    except KeyboardInterrupt:
        return 0


# ---------------------------------------------------------------- client
def _read_stdin(loop: asyncio.AbstractEventLoop, queue: "asyncio.Queue[Optional[bytes]]") -> None:
    # The raw descriptor, as the TLS client does (no buffered-reader lock at exit).
    try:
        fd = sys.stdin.fileno()
        while data := os.read(fd, READ_SIZE):
            loop.call_soon_threadsafe(queue.put_nowait, data)
    except (OSError, ValueError):
        pass
    loop.call_soon_threadsafe(queue.put_nowait, None)


async def _client(args: argparse.Namespace, config: Any) -> int:
    channel = await adtls.connect(
        config,
        args.host,
        args.port,
        server_name=args.sni or args.host,
        timeout=args.timeout,
        cid=args.cid,
        connection_options={"max_datagram_size": args.max_datagram_size},
    )
    conn = channel.connection
    if args.verbose:
        for key, value in negotiated(lambda k: getattr(conn, k, None)):
            print(f"{key}: {value}", file=sys.stderr)
        print(f"resumed: {'yes' if conn.session_resumed else 'no'}", file=sys.stderr)
        print(f"connection_id: {conn.receive_cid.hex() if conn.receive_cid else 'none'}", file=sys.stderr)
        sys.stderr.flush()
    # Our first records must not overtake the server's processing of our
    # Finished (a server may drop them): wait until it is acknowledged.
    # Under load that can take several retransmissions: up to --timeout.
    if not await channel.wait_confirmed(args.timeout):
        log.warning("the server did not acknowledge our Finished within %.1f s; sending anyway", args.timeout)
    if args.key_update:
        channel.key_update()
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Optional[bytes]] = asyncio.Queue()
    threading.Thread(target=_read_stdin, args=(loop, queue), name="tcpls-stdin", daemon=True).start()
    out = sys.stdout.buffer

    async def pump_in() -> None:
        size = channel.max_data_size
        while (data := await queue.get()) is not None:
            # One record per datagram, protected and sent as one batch (GSO).
            channel.send_many([data[i : i + size] for i in range(0, len(data), size)])
        channel.close(wait_for_peer=args.timeout)

    sender = asyncio.create_task(pump_in())
    try:
        while data := await channel.recv():
            out.write(data)
            out.flush()
    finally:
        sender.cancel()
        channel._protocol.close()
    if channel.dropped:
        log.warning("%d records dropped (stdout too slow)", channel.dropped)
    return 0


def cmd_dtls_client(args: argparse.Namespace) -> int:
    config = build_config(args, server=False)
    return asyncio.run(_client(args, config))
