"""The ``tcpls`` subcommands: thin glue over :mod:`tcpls.sync` and :mod:`tcpls.aio`.

No protocol logic lives here: commands build a :class:`TLSConfig` from the
flags, open connections with the public APIs, and move bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import logging
import os
import signal
import sys
import threading
import time
from typing import Any, Optional

from .. import aio, sync
from . import tcpls_mode
from ..errors import LocalProtocolError, ProtocolError, RemoteAlert, TLSError
from ..tls.config import TLSConfig, parse_cipher_suites, parse_groups, parse_psk_modes
from ..tls.enums import AlertDescription, CertificateCompressionAlgorithm, CipherSuite, NamedGroup, enum_name
from ..tls.session import AntiReplay, ExternalPSK, Session

log = logging.getLogger("tcpls.cli")

READ_SIZE = 256 * 1024
_CERT_ALERTS = {
    AlertDescription.bad_certificate,
    AlertDescription.unknown_ca,
    AlertDescription.certificate_expired,
    AlertDescription.certificate_unknown,
    AlertDescription.certificate_revoked,
    AlertDescription.unsupported_certificate,
}


class UsageFailure(Exception):
    """Bad command-line input (printed as one error line, exit status 2)."""


# ---------------------------------------------------------------- helpers
def describe_error(exc: BaseException) -> str:
    """One line for ``tcpls: error: ...``; always names the alert for TLS errors."""
    if isinstance(exc, RemoteAlert):
        return str(exc)
    if isinstance(exc, LocalProtocolError):
        text = exc.message or exc.alert_name
        if exc.alert in _CERT_ALERTS and "certificate verify failed" not in text:
            text = f"certificate verify failed: {text}"
        text = f"{text} (alert {exc.alert_name})" if exc.alert_name not in text else text
        return " ".join(text.split())
    if isinstance(exc, TimeoutError):
        return f"timed out{': ' + str(exc) if str(exc) else ''}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return " ".join((str(exc) or type(exc).__name__).split())


def _name(enum_cls: Any, value: Any) -> str:
    return "none" if value is None else enum_name(enum_cls, int(value))


def negotiated(get: Any) -> list[tuple[str, str]]:
    """``(key, value)`` lines describing a connection; ``get(name)`` reads an attribute."""
    certs = get("peer_certificates") or []
    return [
        ("version", get("version") or "none"),
        ("cipher_suite", _name(CipherSuite, get("cipher_suite"))),
        ("group", _name(NamedGroup, get("group"))),
        ("alpn", get("alpn_protocol") or "none"),
        ("server_name", get("server_name") or "none"),
        ("hello_retry", "yes" if get("hello_retry") else "no"),
        ("peer_subject", certs[0].subject.rfc4514_string() if certs else "none"),
    ]


def _writer_info(writer: aio.TLSStreamWriter) -> Any:
    names = {"version": "tls_version"}
    return lambda key: writer.get_extra_info(names.get(key, key))


def build_config(args: argparse.Namespace, *, server: bool) -> TLSConfig:
    config = TLSConfig()
    try:
        if getattr(args, "ciphers", None):
            config.cipher_suites = parse_cipher_suites(args.ciphers)
        if getattr(args, "groups", None):
            config.groups = parse_groups(args.groups)
        if getattr(args, "psk_modes", None):
            config.psk_key_exchange_modes = parse_psk_modes(args.psk_modes)
    except ValueError as exc:
        raise UsageFailure(str(exc)) from None
    if getattr(args, "alpn", None):
        config.alpn_protocols = [p.strip() for p in args.alpn.split(",") if p.strip()]
    if getattr(args, "keylog", None):
        config.keylog_file = args.keylog
    _extension_options(args, config)
    psk = None
    if getattr(args, "psk", None) or getattr(args, "psk_identity", None):
        if not (args.psk and args.psk_identity):
            raise UsageFailure("--psk and --psk-identity go together")
        try:
            psk = ExternalPSK(args.psk_identity.encode(), bytes.fromhex(args.psk), args.psk_hash)
        except ValueError as exc:
            raise UsageFailure(f"bad --psk: {exc}") from None
    try:
        if server:
            config.num_tickets = args.num_tickets
            config.hello_retry_cookie = getattr(args, "hrr_cookie", False)
            config.max_early_data = args.max_early_data
            if psk is not None:
                config.psk_lookup = lambda ident: psk if ident == psk.identity else None
            if args.cert or psk is None:
                if not args.cert:
                    raise ValueError("--cert is required (unless --psk)")
                config.load_cert_chain(args.cert, args.key)
            _server_auth_options(args, config)
        elif psk is not None:
            config.psk = psk
            if args.insecure:
                config.verify_peer = False
                config.check_hostname = False
            elif args.cafile:
                config.load_verify_locations(cafile=args.cafile)
        elif args.insecure:
            config.verify_peer = False
            config.check_hostname = False
        elif args.cafile:
            config.load_verify_locations(cafile=args.cafile)
        if not server:
            if getattr(args, "cert", None):
                config.load_cert_chain(args.cert, args.key)
            elif getattr(args, "key", None):
                raise ValueError("--key needs --cert")
            config.request_ocsp = getattr(args, "status", False)
        config.validate(server_side=server)
    except (OSError, ValueError) as exc:
        raise UsageFailure(describe_error(exc)) from None
    return config


def _extension_options(args: argparse.Namespace, config: TLSConfig) -> None:
    """--record-size-limit and --cert-compression (both roles)."""
    if getattr(args, "record_size_limit", None) is not None:
        config.record_size_limit = args.record_size_limit
    if getattr(args, "cert_compression", None):
        names = [n.strip() for n in args.cert_compression.split(",") if n.strip()]
        try:
            config.certificate_compression = [CertificateCompressionAlgorithm[n] for n in names]
        except KeyError as exc:
            raise UsageFailure(f"unknown certificate compression algorithm {exc.args[0]!r} (zlib, brotli, zstd)") from None


def _server_auth_options(args: argparse.Namespace, config: TLSConfig) -> None:
    """--require-client-cert / --request-client-cert / --cafile / --ocsp-response."""
    config.require_client_certificate = getattr(args, "require_client_cert", False)
    config.request_client_certificate = getattr(args, "request_client_cert", False)
    if getattr(args, "cafile", None):
        config.load_verify_locations(cafile=args.cafile)
    elif config.require_client_certificate or config.request_client_certificate or getattr(args, "request_post_handshake_auth", False):
        raise ValueError("client certificates need --cafile (the CAs to trust)")
    if getattr(args, "ocsp_response", None):
        with open(args.ocsp_response, "rb") as f:
            config.ocsp_response = f.read()
    _shared_state_options(args, config)


def _shared_state_options(args: argparse.Namespace, config: TLSConfig) -> None:
    """--redis / --ticket-key-file / --stateful-tickets: what several server
    processes must share to resume each other's tickets and refuse each
    other's replayed 0-RTT (RFC 9846 §8)."""
    now = time.time()
    store = None
    if getattr(args, "redis", None):
        from ..stores.redis import RedisStore, load_shared_ticket_keys

        store = RedisStore(args.redis)
        config.anti_replay = AntiReplay(store=store, window=config.anti_replay.window)
        if not getattr(args, "ticket_key_file", None):
            try:
                load_shared_ticket_keys(store, config.ticket_keys, now)
            except OSError as exc:
                raise ValueError(f"--redis {args.redis}: {describe_error(exc)}") from None
        if getattr(args, "stateful_tickets", False):
            config.ticket_store = store
    elif getattr(args, "stateful_tickets", False):
        raise ValueError("--stateful-tickets needs --redis")
    if getattr(args, "ticket_key_file", None):
        name, key = _ticket_key_file(args.ticket_key_file)
        config.ticket_keys.add_key(name, key, now)
        if store is None:
            # §8.2: keys outliving this process's in-memory replay records;
            # refuse 0-RTT until a full window has passed.
            config.anti_replay.started_at = now
    if config.max_early_data > 0 or store is not None:
        log_early = config.early_data_callback

        def early_data_callback(offer: Any) -> bool:
            ok = log_early(offer) if log_early is not None else True
            log.info("0-RTT %s (server_name=%s)", "accepted" if ok else "refused", offer.server_name)
            return ok

        config.early_data_callback = early_data_callback


def _ticket_key_file(path: str) -> tuple[bytes, bytes]:
    """16-byte key name + 32-byte key; the first server creates the file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(48))
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) != 48:
        raise ValueError(f"--ticket-key-file {path}: expected 48 bytes, found {len(blob)}")
    return blob[:16], blob[16:]


# ---------------------------------------------------------------- server
def _post_handshake_actions(args: argparse.Namespace, handler: Any) -> Any:
    """--key-update and --request-post-handshake-auth: engine verbs right after
    the handshake, before the connection's handler runs."""
    if not (getattr(args, "key_update", False) or getattr(args, "request_post_handshake_auth", False)):
        return handler

    async def wrapped(reader: asyncio.StreamReader, writer: aio.TLSStreamWriter) -> None:
        conn = writer.get_extra_info("tls_connection")
        try:
            if args.key_update:
                if hasattr(writer, "key_update"):
                    writer.key_update(True)
                else:
                    conn.key_update(True)
                log.info("%s: KeyUpdate sent", _peer(writer))
            if args.request_post_handshake_auth:
                if conn.peer_certificates:
                    log.info("%s: client already authenticated", _peer(writer))
                else:
                    conn.request_client_certificate(required=args.require_client_cert)
                    log.info("%s: post-handshake CertificateRequest sent", _peer(writer))
        except TLSError as exc:
            log.warning("%s: %s", _peer(writer), describe_error(exc))
        transport = writer.transport
        out = conn.data_to_send()
        if out and transport is not None:
            transport.write(out)
        await handler(reader, writer)

    return wrapped


async def _close_quietly(writer: aio.TLSStreamWriter) -> None:
    """Close a connection at the end of a handler; its errors were already reported."""
    writer.close()
    try:
        await writer.wait_closed()
    except Exception:  # noqa: BLE001
        pass


def add_client_target_arguments(client: argparse.ArgumentParser) -> None:
    """HOST PORT, --cafile | --insecure and --sni: the TLS and DTLS clients' shared options."""
    client.add_argument("host")
    client.add_argument("port", type=int)
    trust = client.add_mutually_exclusive_group()
    trust.add_argument("--cafile", help="trust these PEM certificates (default: system store)")
    trust.add_argument("--insecure", action="store_true", help="do NOT verify the server certificate")
    client.add_argument("--sni", help="server name to send and verify (default: HOST)")


async def _echo(reader: asyncio.StreamReader, writer: aio.TLSStreamWriter) -> None:
    peer = _peer(writer)
    log.info("%s: connected: %s", peer, ", ".join(f"{k}={v}" for k, v in negotiated(_writer_info(writer))))
    conn = writer.get_extra_info("tls_connection")
    subject = _subject(conn)
    try:
        while data := await reader.read(READ_SIZE):
            if _subject(conn) != subject:
                subject = _subject(conn)
                log.info("%s: client certificate (post-handshake): %s", peer, subject)
            writer.write(data)
            await writer.drain()
        log.info("%s: close_notify received", peer)
    except (TLSError, OSError) as exc:
        log.warning("%s: %s", peer, describe_error(exc))
    finally:
        if _subject(conn) != subject:
            log.info("%s: client certificate (post-handshake): %s", peer, _subject(conn))
        await _close_quietly(writer)


async def _www(reader: asyncio.StreamReader, writer: aio.TLSStreamWriter) -> None:
    peer = _peer(writer)
    try:
        request = await reader.readuntil(b"\r\n\r\n")
        first = request.split(b"\r\n", 1)[0].decode("latin-1")
        log.info("%s: %s", peer, first)
        if first.split(" ")[1:2] == ["/keyupdate"]:
            # A test resource: KeyUpdate(update_requested) before the answer (RFC 9846 §4.6.3).
            writer.key_update(True)
            log.info("%s: KeyUpdate sent", peer)
        rows = "".join(
            f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>\n"
            for k, v in negotiated(_writer_info(writer))
        )
        body = (
            "<!DOCTYPE html>\n<html><head><title>tcpls</title></head><body>\n"
            f"<h1>tcpls</h1>\n<p>Request: <code>{html.escape(first)}</code></p>\n"
            f"<table>\n{rows}</table>\n</body></html>\n"
        ).encode()
        head = (
            "HTTP/1.0 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        writer.write(head + body)
        await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        log.info("%s: no complete HTTP request", peer)
    except (TLSError, OSError) as exc:
        log.warning("%s: %s", peer, describe_error(exc))
    finally:
        await _close_quietly(writer)


async def _serve_file(path: str, reader: asyncio.StreamReader, writer: aio.TLSStreamWriter) -> None:
    """--serve-file: send the file (``loop.sendfile`` when TX is in the kernel), then close."""
    peer = _peer(writer)
    try:
        with open(path, "rb") as f:
            sent = await writer.sendfile(f)
        log.info("%s: sent %d bytes of %s (%s)", peer, sent, path, "kTLS " + writer.ktls if writer.ktls else "userspace")
        # close_notify, then wait for the client's: closing with its bytes unread would reset the connection
        writer.write_eof()
        while await asyncio.wait_for(reader.read(READ_SIZE), 60):
            pass
    except (TLSError, OSError) as exc:
        log.warning("%s: %s", peer, describe_error(exc))
    finally:
        await _close_quietly(writer)


def _with_ktls(mode: str, handler: Any) -> Any:
    """--ktls: offload each connection after its handshake, then run ``handler``."""
    if mode == "off":
        return handler

    async def wrapped(reader: asyncio.StreamReader, writer: aio.TLSStreamWriter) -> None:
        try:
            await writer.enable_ktls(mode)
        except (TLSError, OSError) as exc:
            log.error("%s: %s", _peer(writer), describe_error(exc))
            writer.close()
            return
        if writer.ktls:
            log.info("%s: kTLS %s", _peer(writer), writer.ktls)
        await handler(reader, writer)

    return wrapped


def _subject(conn: Any) -> Optional[str]:
    certs = conn.peer_certificates if conn is not None else []
    return certs[0].subject.rfc4514_string() if certs else None


def _peer(writer: aio.TLSStreamWriter) -> str:
    addr = writer.get_extra_info("peername")
    return f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)


async def _serve(args: argparse.Namespace, config: TLSConfig) -> int:
    handler: Any = _www if args.www else _echo
    if getattr(args, "serve_file", None):
        path = args.serve_file
        if not os.path.isfile(path):
            raise UsageFailure(f"--serve-file: {path} is not a readable file")

        async def serve_file(reader: asyncio.StreamReader, writer: aio.TLSStreamWriter) -> None:
            await _serve_file(path, reader, writer)

        handler = serve_file

    handler = _with_ktls(getattr(args, "ktls", "off"), handler)
    handler = _post_handshake_actions(args, handler)
    server = await aio.start_server(handler, args.host, args.port, config=config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    host, port = server.sockets[0].getsockname()[:2]
    print(f"listening on {host}:{port}", file=sys.stderr, flush=True)
    async with server:
        await stop.wait()
    log.info("stopping")
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    config = build_config(args, server=True)
    if getattr(args, "tcpls", False):
        return tcpls_mode.cmd_server(args, config)
    try:
        return asyncio.run(_serve(args, config))
    except KeyboardInterrupt:  # interrupted before the signal handlers were installed
        return 0


# ---------------------------------------------------------------- client
def cmd_client(args: argparse.Namespace) -> int:
    config = build_config(args, server=False)
    if getattr(args, "tcpls", False):
        return tcpls_mode.cmd_client(args, config)
    # For an IP literal the engine sends no SNI and checks the IP address SAN.
    server_name = args.sni or args.host
    session = None
    early = None
    try:
        if args.sess_in:
            with open(args.sess_in, "rb") as f:
                session = Session.from_bytes(f.read())
        if args.early_data:
            if session is None:
                raise UsageFailure("--early-data needs --sess-in")
            with open(args.early_data, "rb") as f:
                early = f.read()
    except (OSError, ValueError) as exc:
        raise UsageFailure(describe_error(exc)) from None
    sock = sync.connect(
        (args.host, args.port), config, server_name=server_name, timeout=args.timeout, session=session, early_data=early
    )
    sock.settimeout(None)
    if getattr(args, "ktls", "off") != "off":
        try:
            sock.enable_ktls(args.ktls)
        except BaseException:
            sock.close()
            raise
        if args.verbose:
            print(f"ktls: {sock.ktls or 'off (' + str(sock.ktls_reason) + ')'}", file=sys.stderr)
    if args.verbose and (session is not None or config.psk is not None):
        conn = sock.connection
        print(f"resumed: {conn.session_resumed}", file=sys.stderr)
        if early is not None:
            print(f"early data: {'accepted' if conn.early_data_accepted else 'rejected'}", file=sys.stderr)
    with sock:
        if args.key_update:
            if hasattr(sock, "key_update"):
                sock.key_update(True)
            else:
                conn = sock.connection
                conn.key_update(True)
                sock.socket.sendall(conn.data_to_send())
        if args.verbose:
            for key, value in negotiated(lambda k: getattr(sock, k)):
                print(f"{key}: {value}", file=sys.stderr)
            if args.status:
                ocsp = sock.connection.ocsp_response
                print(f"ocsp_response: {len(ocsp)} bytes" if ocsp else "ocsp_response: none", file=sys.stderr)
            sys.stderr.flush()
        pump = threading.Thread(target=_pump_stdin, args=(sock,), name="tcpls-stdin", daemon=True)
        pump.start()
        out = sys.stdout.buffer
        while data := sock.recv(READ_SIZE):
            out.write(data)
            out.flush()
            _save_session(args, sock)
        _save_session(args, sock)
    return 0


def _save_session(args: argparse.Namespace, sock: sync.TLSSocket) -> None:
    """--sess-out: keep the newest session ticket (written owner-only)."""
    session = sock.connection.session
    if not args.sess_out or session is None or getattr(args, "_saved", None) is session:
        return
    fd = os.open(args.sess_out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(session.to_bytes())
    args._saved = session


def _pump_stdin(sock: sync.TLSSocket) -> None:
    """stdin → socket, then close_notify. Runs in its own thread."""
    # Read the raw descriptor, not sys.stdin.buffer: a thread blocked inside
    # the buffered reader holds its lock, and the interpreter aborts at exit
    # ("_enter_buffered_busy") when the server closes first.
    try:
        fd = sys.stdin.fileno()
        while data := os.read(fd, READ_SIZE):
            sock.sendall(data)
        sock.shutdown_write()
    except (OSError, TLSError, ValueError):
        pass  # the reading side reports connection errors


# ---------------------------------------------------------------- demo
async def _demo() -> int:
    from .._testcerts import make_ca, make_leaf

    ca_cert, ca_key = make_ca()
    leaf, leaf_key = make_leaf(ca_cert, ca_key, names=["localhost", "127.0.0.1"])
    server_config = TLSConfig(certificate_chain=[leaf, ca_cert], private_key=leaf_key, alpn_protocols=["echo/1"])
    client_config = TLSConfig(trust_anchors=[ca_cert], alpn_protocols=["echo/1"])

    server = await aio.start_server(_echo, "127.0.0.1", 0, config=server_config)
    port = server.sockets[0].getsockname()[1]
    print(f"server: listening on 127.0.0.1:{port} (throwaway CA {ca_cert.subject.rfc4514_string()!r})")
    async with server:
        reader, writer = await aio.open_connection(
            "127.0.0.1", port, config=client_config, server_hostname="localhost"
        )
        print("client: handshake complete, verified against the demo CA")
        for key, value in negotiated(_writer_info(writer)):
            print(f"  {key}: {value}")
        messages = [b"hello, tcpls", b"TLS 1.3 from scratch", b"x" * 50_000]
        for msg in messages:
            writer.write(msg)
            await writer.drain()
            echoed = await reader.readexactly(len(msg))
            if echoed != msg:
                print("demo: echo mismatch", file=sys.stderr)
                return 1
            shown = msg if len(msg) < 60 else msg[:20] + b"..." + f" ({len(msg)} bytes)".encode()
            print(f"  sent and echoed: {shown!r}")
        writer.write_eof()
        rest = await reader.read()
        print(f"client: close_notify exchanged ({len(rest)} trailing bytes)")
        writer.close()
        await writer.wait_closed()
    print("demo: ok")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    return asyncio.run(_demo())


# ---------------------------------------------------------------- entry
def run(args: argparse.Namespace) -> int:
    """Run the selected command; errors become one ``tcpls: error:`` line."""
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
        format="tcpls: %(message)s",
    )
    try:
        return int(args.func(args))
    except UsageFailure as exc:
        print(f"tcpls: error: {exc}", file=sys.stderr)
        return 2
    except (ProtocolError, TLSError, OSError, ValueError) as exc:
        print(f"tcpls: error: {describe_error(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130

