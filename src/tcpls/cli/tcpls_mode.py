"""``tcpls server --tcpls`` / ``tcpls client --tcpls``: thin glue over :mod:`tcpls.aio.tcpls_session`.

Contract (tests and other tools rely on it):

* server: listens on every ``--host`` at ``--port``, prints ``listening on
  HOST:PORT`` (one line per address, on stderr), announces all addresses
  to each client, and either sends ``--serve-file`` on a stream it opens
  (then ends it) or echoes each stream the client opens (``--echo``, the
  default). In serve-file mode the client's streams are read and ended.
* client: opens stream 0, sends stdin on it and prints what comes back,
  plus everything the server sends on its own streams, to stdout. With
  ``--path LOCAL=REMOTE`` it joins one connection per path (connection 0
  goes to ``HOST``, from the LOCAL of a path whose REMOTE is HOST). At the
  end it prints one line on stderr::

      tcpls: summary: bytes=N seconds=S goodput_mbps=G paths=ID:BYTES:MBPS,... migrations=M failovers=F early_sent=E early_accepted=yes|no|- tfo=yes|no|-

  where ``bytes`` are the application bytes written to stdout and the
  per-path figures count the TCP payload received on each connection
  (records included); ``early_sent`` the stream bytes sent as 0-RTT early
  data (``--sess-in`` with ``--early-data``), ``early_accepted`` whether
  the server took them (``-``: no 0-RTT; rejected bytes were resent),
  ``tfo`` whether connection 0's SYN carried data (``--tfo``).
* 0-RTT: ``--sess-in``/``--sess-out`` as for TLS (a ticket of a TCPLS
  session); ``--early-data FILE`` sends FILE first on stream 0 (0-RTT up
  to the ticket's limit, the rest after the handshake), then stdin;
  ``--early-data -`` takes stdin's first bytes, up to the ticket's limit,
  as the early data. The server (``--max-early-data N``) prints
  ``tcpls: stream S: E early bytes`` per stream that carried early data.
* client ``HOST`` may be a comma-separated list (plus ``--also-connect``):
  happy eyeballs, the first TCP connection to complete carries the
  session; each failed attempt prints ``tcpls: attempt HOST:PORT failed: REASON``.
* ``--peer-user-timeout MS`` / ``--peer-cc NAME`` (both sides) ask the peer,
  after the handshake, to set TCP_USER_TIMEOUT / TCP_CONGESTION on its
  sockets; the answer is printed on stderr as
  ``tcpls: peer SETTING VALUE: applied|refused|failed (REASON)``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from typing import Any, Optional, TextIO

from ..aio import tcpls_session as tio
from ..errors import UsageError
from ..tcpls import events as ev
from ..tcpls.config import TCPLSConfig
from ..tcpls.scheduler import SCHEDULERS

READ_SIZE = 256 * 1024


class _AppendHost(argparse.Action):
    """``--host`` may repeat: ``args.host`` keeps the first value (what
    the TLS server uses), ``args.hosts`` all of them."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        hosts = list(getattr(namespace, "hosts", None) or [])
        hosts.append(values)
        namespace.hosts = hosts
        namespace.host = hosts[0]


def add_arguments(server: argparse.ArgumentParser, client: argparse.ArgumentParser) -> None:
    """The TCPLS flags of ``tcpls server`` and ``tcpls client``."""
    for p in (server, client):
        p.add_argument("--tcpls", action="store_true", help="run TCPLS (several TCP connections per session)")
        p.add_argument("--scheduler", choices=sorted(SCHEDULERS), default="round_robin",
                       help="TCPLS: which connection carries the next record")
        p.add_argument("--dead-timeout", type=float, metavar="S",
                       help="TCPLS: declare a connection dead after S seconds without ACK (default 3, 1 with --failover)")
        p.add_argument("--user-timeout", type=int, metavar="MS", help="TCPLS: set TCP_USER_TIMEOUT on every connection, and declare a connection dead "
                       "when its records stay unacknowledged this long while another connection delivers")
        p.add_argument("--peer-user-timeout", type=int, metavar="MS",
                       help="TCPLS: ask the peer to set TCP_USER_TIMEOUT to MS on its connections (TCP Setting frame)")
        p.add_argument("--peer-cc", metavar="NAME",
                       help="TCPLS: ask the peer to use congestion control NAME on its connections (TCP Setting frame)")
    client.add_argument("--also-connect", action="append", default=[], metavar="HOST",
                        help="TCPLS: another address of the server to race for connection 0 (happy eyeballs; "
                        "HOST may also be a comma-separated list)")
    client.add_argument("--connect-timeout", type=float, metavar="S",
                        help="TCPLS: timeout of each connection attempt (default: --timeout)")
    client.add_argument("--stagger", type=float, default=0.25, metavar="S",
                        help="TCPLS: delay between connection attempts (RFC 8305 connection attempt delay, default 0.25)")
    client.add_argument("--path", action="append", default=[], metavar="LOCAL=REMOTE",
                        help="TCPLS: also use a connection from LOCAL to REMOTE (repeatable; joined and aggregated)")
    client.add_argument("--migrate-to", metavar="[LOCAL=]REMOTE", help="TCPLS: move the session to this path ...")
    client.add_argument("--migrate-after", type=int, metavar="BYTES", default=0, help="... after BYTES received")
    client.add_argument("--failover", action="store_true",
                        help="TCPLS: detect dead paths fast and rejoin on another path if none is left")
    client.add_argument("--goodput-log", metavar="FILE", help="TCPLS: CSV 'time,conn_id,bytes' of every read")
    client.add_argument("--progress", action="store_true", help="TCPLS: progress bar on stderr")
    client.add_argument("--tfo", action="store_true",
                        help="TCPLS: TCP Fast Open on connection 0 and joins (the ClientHello rides in the SYN once a cookie is cached)")
    server.add_argument("--tfo", type=int, nargs="?", const=64, default=0, metavar="QLEN",
                        help="TCPLS: accept TCP Fast Open (TCP_FASTOPEN, pending queue QLEN, default 64)")


def host_action() -> type[argparse.Action]:
    return _AppendHost


def _config(args: argparse.Namespace, tls: Any, *, client: bool) -> TCPLSConfig:
    failover = client and getattr(args, "failover", False)
    dead = args.dead_timeout if args.dead_timeout is not None else (1.0 if failover else 3.0)
    # --user-timeout bounds path failure detection twice: in the kernel
    # (TCP_USER_TIMEOUT) and in the engine (failover_timeout: a connection
    # whose records stay unacknowledged while another one delivers).
    ut = args.user_timeout / 1000 if args.user_timeout else None
    return TCPLSConfig(tls, scheduler=args.scheduler, dead_timeout=dead, ping_interval=dead / 2 if failover else None,
                       failover_timeout=ut)


async def _ask_peer(args: argparse.Namespace, driver: tio.SessionDriver) -> None:
    """--peer-user-timeout / --peer-cc: ask the peer, print its answer."""
    asks = []
    if args.peer_user_timeout is not None:
        asks.append(("user-timeout", args.peer_user_timeout, driver.set_peer_user_timeout))
    if args.peer_cc:
        asks.append(("cc", args.peer_cc, driver.set_peer_congestion_control))
    for what, value, ask in asks:
        try:
            answer = await ask(value)
            status = {0: "applied", 1: "refused", 2: "failed"}.get(answer.status, f"status {answer.status}")
            print(f"tcpls: peer {what} {value}: {status} ({answer.reason})", file=sys.stderr, flush=True)
        except (asyncio.TimeoutError, ConnectionError, OSError) as exc:
            print(f"tcpls: peer {what} {value}: no answer ({exc or type(exc).__name__})", file=sys.stderr, flush=True)
        except UsageError as exc:
            print(f"tcpls: peer {what} {value}: not sent ({exc})", file=sys.stderr, flush=True)


def client_hosts(args: argparse.Namespace) -> list[str]:
    """The client's candidate server addresses: HOST (comma-separated) and --also-connect."""
    hosts = [h.strip() for h in args.host.split(",") if h.strip()]
    for extra in getattr(args, "also_connect", []) or []:
        hosts.extend(h.strip() for h in extra.split(",") if h.strip())
    return hosts


def _split_path(spec: str) -> tuple[Optional[str], str]:
    local, sep, remote = spec.rpartition("=")
    return (local or None) if sep else None, remote


# ------------------------------------------------------------------ server
async def _serve(args: argparse.Namespace, tls: Any) -> int:
    config = _config(args, tls, client=False)
    path = getattr(args, "serve_file", None)
    if path and not os.path.isfile(path):
        from .commands import UsageFailure

        raise UsageFailure(f"--serve-file: {path} is not a readable file")

    def report_early(writer: tio.TCPLSStreamWriter) -> None:
        n = writer.session.early_bytes(writer.stream_id)
        if n:
            print(f"tcpls: stream {writer.stream_id}: {n} early bytes", file=sys.stderr, flush=True)

    async def echo(reader: Any, writer: tio.TCPLSStreamWriter) -> None:
        try:
            while data := await reader.read(READ_SIZE):
                writer.write(data)
                await writer.drain()
            writer.write_eof()
        except (ConnectionError, OSError):
            pass
        report_early(writer)

    async def discard(reader: Any, writer: tio.TCPLSStreamWriter) -> None:
        try:
            while await reader.read(READ_SIZE):
                pass
            writer.write_eof()
        except (ConnectionError, OSError):
            pass
        report_early(writer)

    async def send_file(session: tio.ServerSession) -> None:
        assert path is not None
        if not session.get_extra_info("tcpls"):
            return  # a plain TLS client gets stream 0 (echo/discard), no file
        try:
            _r, writer = session.open_stream()
            with open(path, "rb") as f:
                while chunk := f.read(READ_SIZE):
                    writer.write(chunk)
                    await writer.drain()
            writer.write_eof()
            await session.wait_acked()
        except (ConnectionError, OSError) as exc:
            tio.logger.info("serve-file: %s", exc)

    async def on_session(session: tio.ServerSession) -> None:
        if session.get_extra_info("tcpls"):
            asyncio.ensure_future(_ask_peer(args, session))
        if path:
            await send_file(session)

    asking = args.peer_user_timeout is not None or args.peer_cc
    hosts = getattr(args, "hosts", None) or [args.host]
    server = await tio.serve(hosts, args.port, config=config, on_stream=discard if path else echo,
                             on_session=on_session if (path or asking) else None, user_timeout=args.user_timeout,
                             tfo=getattr(args, "tfo", 0) or 0)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    for host, port in server.addresses:
        print(f"listening on {host}:{port}", file=sys.stderr, flush=True)
    async with server:
        await stop.wait()
    return 0


def cmd_server(args: argparse.Namespace, tls: Any) -> int:
    try:
        return asyncio.run(_serve(args, tls))
    except KeyboardInterrupt:
        return 0


# ------------------------------------------------------------------ client
class _Stats:
    def __init__(self, log: Optional[TextIO]) -> None:
        self.start = time.monotonic()
        self.app_bytes = 0
        self.per_conn: dict[int, int] = {}
        self.log = log
        self.tfo: Optional[bool] = None  # connection 0's SYN carried data (read while it is open)
        if log is not None:
            log.write("time,conn_id,bytes\n")

    def on_read(self, conn_id: int, n: int) -> None:
        self.per_conn[conn_id] = self.per_conn.get(conn_id, 0) + n
        if self.log is not None:
            self.log.write(f"{time.monotonic() - self.start:.6f},{conn_id},{n}\n")

    def line(self, client: tio.TCPLSClient) -> str:
        secs = max(time.monotonic() - self.start, 1e-6)
        paths = ",".join(f"{cid}:{n}:{n * 8 / secs / 1e6:.2f}" for cid, n in sorted(self.per_conn.items()))
        return (
            f"tcpls: summary: bytes={self.app_bytes} seconds={secs:.3f} goodput_mbps={self.app_bytes * 8 / secs / 1e6:.2f}"
            f" paths={paths or '-'} migrations={client.migrations} failovers={client.failovers}"
            f" early_sent={client.session.early_data_sent} early_accepted={_yes_no(client.session.early_data_accepted)}"
            f" tfo={_yes_no(self.tfo)}"
        )


def _yes_no(v: Optional[bool]) -> str:
    return "-" if v is None else ("yes" if v else "no")


async def _progress(stats: _Stats) -> None:
    while True:
        await asyncio.sleep(0.25)
        secs = max(time.monotonic() - stats.start, 1e-6)
        per = " ".join(f"[{cid}] {n / 1e6:.1f}MB" for cid, n in sorted(stats.per_conn.items()))
        sys.stderr.write(f"\r{stats.app_bytes / 1e6:10.2f} MB {stats.app_bytes * 8 / secs / 1e6:8.2f} Mbit/s  {per}   ")
        sys.stderr.flush()


async def _client(args: argparse.Namespace, tls: Any, server_name: str) -> int:
    config = _config(args, tls, client=True)
    hosts = client_hosts(args)
    paths = [_split_path(p) for p in args.path]
    local0 = next((local for local, remote in paths if remote in hosts), None)
    extra = [(local, remote) for local, remote in paths if not (remote in hosts and local == local0)]
    log = open(args.goodput_log, "w") if args.goodput_log else None
    stats = _Stats(log)
    out = sys.stdout.buffer
    server_streams: list[asyncio.Task[Any]] = []

    async def on_stream(reader: Any, writer: tio.TCPLSStreamWriter) -> None:
        writer.write_eof()  # we send nothing on the server's streams
        while data := await reader.read(READ_SIZE):
            out.write(data)
            stats.app_bytes += len(data)
        out.flush()

    def on_stream_cb(reader: Any, writer: tio.TCPLSStreamWriter) -> Any:
        task = asyncio.ensure_future(on_stream(reader, writer))
        server_streams.append(task)
        return task

    progress = None
    ticket, early, early_fin = await _early_input(args)
    try:
        client = await tio.connect(
            hosts if len(hosts) > 1 else hosts[0], args.port, config=config, server_name=server_name, local_addr=local0,
            user_timeout=args.user_timeout, timeout=args.timeout, on_stream=on_stream_cb,
            rejoin=args.failover, rejoin_paths=[(local0, h) for h in hosts] + extra,
            attempt_timeout=args.connect_timeout, stagger=args.stagger,
            session=ticket, early_data=early, early_fin=early_fin, tfo=args.tfo,
        )
        while not client.events.empty():  # report the happy-eyeballs race
            e = client.events.get_nowait()
            if isinstance(e, ev.ConnectionAttemptFailed):
                print(f"tcpls: attempt {e.host}:{e.port} failed: {e.reason}", file=sys.stderr, flush=True)
            elif isinstance(e, ev.ConnectionEstablished) and e.conn_id == 0 and (args.verbose or len(hosts) > 1):
                print(f"tcpls: connected to {e.remote[0]}:{e.remote[1]}", file=sys.stderr, flush=True)
        if client.get_extra_info("tcpls"):
            await _ask_peer(args, client)
        migrate_spec = _split_path(args.migrate_to) if args.migrate_to else None
        migrating: list[asyncio.Task[Any]] = []

        def observe(conn_id: int, n: int) -> None:
            stats.on_read(conn_id, n)
            if migrate_spec is not None and not migrating and sum(stats.per_conn.values()) >= args.migrate_after:
                local, remote = migrate_spec
                migrating.append(asyncio.ensure_future(client.migrate_to(remote, local)))

        client.observer = observe
        if args.verbose:
            print(f"tcpls: {'yes' if client.get_extra_info('tcpls') else 'no (plain TLS 1.3)'}", file=sys.stderr)
        if client.get_extra_info("tcpls"):
            for local, remote in extra:
                cid = await client.join(remote, local)
                if args.verbose:
                    print(f"joined connection {cid}: {local or '*'} -> {remote}", file=sys.stderr)
        if args.progress:
            progress = asyncio.ensure_future(_progress(stats))
        if args.tfo:
            stats.tfo = client.tfo_used(0)
        if args.verbose and ticket is not None:
            print(f"resumed: {client.session.tls.session_resumed}", file=sys.stderr)
        reader, writer = client.early_stream or client.open_stream()
        loop = asyncio.get_running_loop()

        async def pump_stdin() -> None:
            if early_fin:
                return  # stdin ended inside the early data
            stdin = sys.stdin.buffer
            read = getattr(stdin, "read1", stdin.read)
            while data := await loop.run_in_executor(None, read, READ_SIZE):
                writer.write(data)
                await writer.drain()
            writer.write_eof()

        pump = asyncio.ensure_future(pump_stdin())
        while data := await reader.read(READ_SIZE):
            out.write(data)
            stats.app_bytes += len(data)
        out.flush()
        await pump
        if server_streams:
            await asyncio.gather(*server_streams)
        if migrating:
            await migrating[0]
        _save_ticket(args, client)
        await client.close()
    finally:
        if progress is not None:
            progress.cancel()
            sys.stderr.write("\n")
        if log is not None:
            log.close()
    print(stats.line(client), file=sys.stderr, flush=True)
    return 0


async def _early_input(args: argparse.Namespace) -> tuple[Any, Optional[bytes], bool]:
    """--sess-in / --early-data: (ticket, early bytes, stdin already ended)."""
    from ..tls.session import Session
    from .commands import UsageFailure

    ticket = None
    try:
        if args.sess_in:
            with open(args.sess_in, "rb") as f:
                ticket = Session.from_bytes(f.read())
        if not args.early_data:
            return ticket, None, False
        if ticket is None:
            raise UsageFailure("--early-data needs --sess-in")
        if args.early_data != "-":
            with open(args.early_data, "rb") as f:
                return ticket, f.read(), False
    except (OSError, ValueError) as exc:
        raise UsageFailure(f"{exc}") from None
    # stdin's first bytes, as many as fit in the ticket's 0-RTT budget
    room = max(0, ticket.max_early_data - 15)  # one Stream frame's header (frames.STREAM_FRAME_OVERHEAD)
    loop = asyncio.get_running_loop()
    stdin = sys.stdin.buffer
    read = getattr(stdin, "read1", stdin.read)
    buf = bytearray()
    while len(buf) < room:
        data = await loop.run_in_executor(None, read, room - len(buf))
        if not data:
            return ticket, bytes(buf), True
        buf += data
    return ticket, bytes(buf), False


def _save_ticket(args: argparse.Namespace, client: tio.TCPLSClient) -> None:
    """--sess-out: the newest ticket of the TCPLS session (owner-only file)."""
    ticket = client.resumption_session()
    if not args.sess_out or ticket is None:
        return
    fd = os.open(args.sess_out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(ticket.to_bytes())


def cmd_client(args: argparse.Namespace, tls: Any) -> int:
    hosts = client_hosts(args)
    if not hosts:
        from .commands import UsageFailure

        raise UsageFailure("no server address given")
    names = [h for h in hosts if not tio._is_ip(h)]
    return asyncio.run(_client(args, tls, args.sni or (names or hosts)[0]))
