"""The ``fastws`` command.

``fastws serve [APP]`` runs a server (one process, or ``--workers N`` supervised
processes sharing the port), which also answers plain HTTP: ``GET /`` the
browser client page, ``GET /healthz`` 200. ``fastws connect URL`` is an
interactive client. ``fastws --version`` says which hot path and loop are in use.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib
import logging
import os
import signal
import ssl as ssl_module
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ._accel import IMPLEMENTATION, KERNEL_ISA, KERNEL_ISA_FORCED, TLS_AVAILABLE, USING_EXTENSION
from ._version import __version__
from .client import connect
from .connection import Listener
from .defaults import MAX_SIZE, PING_INTERVAL, PING_TIMEOUT
from .exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from .http import PageAndHealth
from .loop import event_loop_name, run, uvloop
from .metrics import JsonFormatter, MetricsExporter, bind_slot, start_publishing
from .pubsub import make_broker
from .server import Server, create_server, serve
from .workers import Supervisor, WorkerStartError

logger = logging.getLogger("fastws.cli")

BUILTIN_APPS = {"echo": "fastws.apps:EchoListener", "chat": "fastws.apps:ChatListener"}
WORKER_HEADER = "Fastws-Worker"  # names the process that served a request when there are several
LOOP_CHOICES = {"auto": None, "uvloop": True, "asyncio": False}  # --loop: use_uvloop for fastws.run
PARENT_CHECK_INTERVAL = 1.0  # a worker whose supervisor vanished stops within this many seconds


def version_text() -> str:
    if USING_EXTENSION:
        forced = ", forced by FASTWS_KERNEL_ISA" if KERNEL_ISA_FORCED else ""
        path = f"compiled extension ({IMPLEMENTATION}, kernels: {KERNEL_ISA}{forced})"
    else:
        path = "pure Python (no compiled extension)"
    tls = f"fastws's own transport ({ssl_module.OPENSSL_VERSION})" if TLS_AVAILABLE else "the event loop's SSL transport"
    return (
        f"fastws {__version__}\nhot path: {path}\nevent loop: {event_loop_name()}\ntls: {tls}\n"
        f"python: {sys.version.split()[0]}"
    )


class UsageError(Exception):
    """A bad argument: one line on stderr and exit status 2."""


# -- serve: configuration ------------------------------------------------------------------


@dataclass(frozen=True)
class App:
    """What ``fastws serve`` runs: a ``Listener`` subclass or a handler coroutine function."""

    name: str
    target: Any

    @property
    def is_listener(self) -> bool:
        return isinstance(self.target, type) and issubclass(self.target, Listener)


def load_app(spec: str) -> App:
    """``echo``, ``chat`` or ``module:attribute`` (imported from the current directory too, like uvicorn)."""
    path = BUILTIN_APPS.get(spec, spec)
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(f"unknown app {spec!r}: use echo, chat or module:callable")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise  # the app's own imports failed: the traceback helps
        raise UsageError(f"cannot import module {module_name!r} for app {spec!r}") from None
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise UsageError(f"module {module_name!r} has no attribute {attribute!r}") from None
    app = App(spec, target)
    if not app.is_listener and (isinstance(target, type) or not callable(target)):
        raise UsageError(f"app {spec!r} is neither a handler coroutine function nor a fastws.Listener subclass")
    return app


@dataclass(frozen=True)
class TLSFiles:
    """The ``--ssl-*`` options: read again by ``make_ssl_context`` on each (re)load."""

    certfile: str
    keyfile: str | None = None
    password: str | None = None
    ca_certs: str | None = None
    cert_reqs: int = ssl_module.CERT_NONE
    ciphers: str | None = None


def tls_files(args: argparse.Namespace) -> TLSFiles | None:
    """The TLS options given, checked; None without ``--ssl-certfile``."""
    if not args.ssl_certfile:
        for option in ("ssl_keyfile", "ssl_keyfile_password", "ssl_ca_certs", "ssl_ciphers"):
            if getattr(args, option):
                raise UsageError(f"--{option.replace('_', '-')} needs --ssl-certfile")
        if args.ssl_cert_reqs != ssl_module.CERT_NONE:
            raise UsageError("--ssl-cert-reqs needs --ssl-certfile")
        return None
    for option, path in (("--ssl-certfile", args.ssl_certfile), ("--ssl-keyfile", args.ssl_keyfile), ("--ssl-ca-certs", args.ssl_ca_certs)):
        if path and not os.path.isfile(path):
            raise UsageError(f"{option}: no such file: {path}")
    return TLSFiles(args.ssl_certfile, args.ssl_keyfile, args.ssl_keyfile_password, args.ssl_ca_certs, args.ssl_cert_reqs, args.ssl_ciphers)


def make_ssl_context(files: TLSFiles) -> ssl_module.SSLContext:
    """A new server context from the files as they are now; UsageError when they do not load."""
    context = ssl_module.create_default_context(ssl_module.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(files.certfile, files.keyfile, files.password)
    except (ssl_module.SSLError, OSError) as exc:
        raise UsageError(f"cannot load the certificate {files.certfile} (key {files.keyfile or 'in the same file'}): {exc}") from None
    if files.ca_certs:
        try:
            context.load_verify_locations(files.ca_certs)
        except (ssl_module.SSLError, OSError) as exc:
            raise UsageError(f"--ssl-ca-certs: cannot load {files.ca_certs}: {exc}") from None
    context.verify_mode = ssl_module.VerifyMode(files.cert_reqs)
    if files.ciphers:
        try:
            context.set_ciphers(files.ciphers)
        except ssl_module.SSLError as exc:
            raise UsageError(f"--ssl-ciphers: {exc}") from None
    context.set_alpn_protocols(["http/1.1"])
    return context


@dataclass(frozen=True)
class ServeConfig:
    app: App
    host: str
    port: int
    workers: int
    ssl: ssl_module.SSLContext | None
    use_uvloop: bool | None
    tls: TLSFiles | None = None  # what SIGHUP reloads
    options: dict[str, Any] = field(default_factory=dict)  # passed to create_server / serve
    metrics: tuple[str, int] | None = None  # --metrics: where to serve /metrics

    @property
    def scheme(self) -> str:
        return "wss" if self.ssl is not None else "ws"


def loop_choice(name: str) -> bool | None:
    """``--loop`` as ``use_uvloop`` for ``fastws.run``."""
    if name == "uvloop" and uvloop is None:
        raise UsageError("--loop uvloop: uvloop is not installed")
    return LOOP_CHOICES[name]


def serve_config(args: argparse.Namespace) -> ServeConfig:
    """Check the arguments of ``serve``; UsageError for a bad one."""
    options: dict[str, Any] = {"max_size": args.max_size or None}
    # Library defaults stand unless the option is given.
    if args.compression is not None:
        options["compression"] = None if args.compression == "off" else "deflate"
    if args.ping_interval is not None:
        options["ping_interval"] = args.ping_interval or None
    if args.ping_timeout is not None:
        options["ping_timeout"] = args.ping_timeout or None
    if args.broker is not None:
        try:
            make_broker(args.broker)  # checks the URL and that its client library is installed; each process connects its own
        except (ValueError, ImportError) as exc:
            raise UsageError(f"--broker: {exc}") from None
        options["broker"] = args.broker
    tls = tls_files(args)
    return ServeConfig(
        app=load_app(args.app),
        host=args.host,
        port=args.port,
        workers=args.workers,
        ssl=make_ssl_context(tls) if tls is not None else None,
        use_uvloop=loop_choice(args.loop),
        options=options,
        tls=tls,
        metrics=None if args.metrics is None else metrics_address(args.metrics, args.host),
    )


def metrics_address(text: str, default_host: str) -> tuple[str, int]:
    """``--metrics [HOST:]PORT`` (an IPv6 host in brackets); the host defaults to ``--host``'s."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host = default_host
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        number = port_number(port)
    except (ValueError, argparse.ArgumentTypeError):
        raise UsageError(f"--metrics: {text!r} is not [HOST:]PORT") from None
    return host or default_host, number


def start_exporter(config: ServeConfig, slots: int) -> MetricsExporter:
    assert config.metrics is not None
    host, port = config.metrics
    try:
        return MetricsExporter(host, port, slots)
    except OSError as exc:
        raise UsageError(f"--metrics: cannot listen on {host}:{port}: {exc.strerror or exc}") from None


# -- serve: running ------------------------------------------------------------------------


async def start_server(config: ServeConfig, port: int, *, reuse_port: bool = False, extra_headers: Sequence[tuple[str, str]] = ()) -> Server:
    """The app's server on ``port``, answering plain HTTP too (the page, /healthz)."""
    options = dict(config.options, process_request=PageAndHealth(extra_headers), ssl=config.ssl)
    if reuse_port:
        options["reuse_port"] = True
    if extra_headers:
        options["extra_headers"] = list(extra_headers)
    try:
        if config.app.is_listener:
            server = await create_server(config.app.target, config.host, port, **options)
        else:
            server = await serve(config.app.target, config.host, port, **options)
    except OSError as exc:
        raise UsageError(f"cannot listen on {config.host}:{port}: {exc.strerror or exc}") from None
    return server


async def run_server(
    config: ServeConfig,
    port: int,
    on_listening: Callable[[Server], None],
    *,
    worker: bool = False,
) -> None:
    """Serve until SIGTERM or SIGINT, then close every connection with 1001.

    A ``worker`` listens with SO_REUSEPORT, names itself in a response header and
    stops when its supervisor is gone.
    """
    extra_headers = [(WORKER_HEADER, str(os.getpid()))] if worker else []
    if worker and config.tls is not None:  # a worker started after a reload reads the files as they are now
        config = replace(config, ssl=make_ssl_context(config.tls))
    server = await start_server(config, port, reuse_port=worker, extra_headers=extra_headers)
    stop_publishing = start_publishing(server)  # --metrics: this process's counters into its slot
    loop = asyncio.get_running_loop()
    stop = loop.create_future()

    def request_stop() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, request_stop)
    if config.tls is not None:
        loop.add_signal_handler(signal.SIGHUP, reload_tls, server, config.tls)
    if worker:
        parent = os.getppid()

        def check_parent() -> None:
            if os.getppid() != parent:
                logger.warning("the supervisor is gone; stopping")
                request_stop()
            else:
                loop.call_later(PARENT_CHECK_INTERVAL, check_parent)

        loop.call_later(PARENT_CHECK_INTERVAL, check_parent)
    on_listening(server)
    await stop
    logger.info("shutting down: closing %d connections with 1001", len(server.connections))
    server.close(1001, "server shutting down")
    await server.wait_closed()
    if stop_publishing is not None:
        stop_publishing()


def reload_tls(server: Server, files: TLSFiles) -> None:
    """SIGHUP: the certificate and key as the files are now, for new connections."""
    try:
        server.set_ssl_context(make_ssl_context(files))
    except UsageError as exc:
        logger.error("TLS reload failed, keeping the certificate in use: %s", exc)
    else:
        logger.info("reloaded the TLS certificate %s for new connections", files.certfile)


def listening_urls(server: Server, scheme: str) -> list[str]:
    urls = []
    for sock in server.sockets:
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        urls.append(f"{scheme}://{shown}:{port}/")
    return urls


def announce(config: ServeConfig, urls: list[str], loop_name: str) -> None:
    """The startup lines: where, how many workers, which hot path and loop."""
    workers = f"{config.workers} worker{'s' if config.workers > 1 else ''}"
    hot_path = "compiled extension" if USING_EXTENSION else "pure Python"
    print(f"fastws {__version__} serving {config.app.name} on {' and '.join(urls)} ({workers}, {hot_path}, {loop_name})", flush=True)
    page = urls[0].replace("ws", "http", 1)
    print(f"browser client at {page} , health check at {page}healthz", flush=True)


def serve_single(config: ServeConfig) -> int:
    exporter = None
    if config.metrics is not None:
        exporter = start_exporter(config, 1)
        exporter.workers = 1
        bind_slot(exporter.block, 0)

    def listening(server: Server) -> None:
        announce(config, listening_urls(server, config.scheme), event_loop_name())
        if exporter is not None:
            exporter.start()
            print(f"metrics at {exporter.url}", flush=True)

    try:
        run(run_server(config, config.port, listening), use_uvloop=config.use_uvloop)
    finally:
        if exporter is not None:
            exporter.close()
    return 0


def worker_main(config: ServeConfig, port: int, report: Callable[[Any], None]) -> int:
    """One worker process of ``serve --workers N``."""

    def listening(server: Server) -> None:
        report(("ready", {"urls": listening_urls(server, config.scheme), "loop": event_loop_name()}))

    try:
        run(run_server(config, port, listening, worker=True), use_uvloop=config.use_uvloop)
    except UsageError as exc:
        report(("error", str(exc)))
        return 2
    return 0


def serve_workers(config: ServeConfig) -> int:
    exporter = None if config.metrics is None else start_exporter(config, config.workers)

    def started(port: int, infos: list[dict[str, Any]]) -> None:
        announce(config, infos[0]["urls"], infos[0]["loop"])
        if exporter is not None:
            exporter.start()
            print(f"metrics at {exporter.url}", flush=True)

    try:
        supervisor = Supervisor(functools.partial(worker_main, config), config.workers, exporter=exporter)
        return supervisor.run(config.host, config.port, started)
    except WorkerStartError as exc:
        raise UsageError(str(exc)) from None
    finally:
        if exporter is not None:
            exporter.close()


# -- connect -------------------------------------------------------------------------------


def render(message: str | bytes) -> str:
    if isinstance(message, str):
        return message
    shown = message[:64].hex(" ")
    return f"(binary, {len(message)} bytes) {shown}{' …' if len(message) > 64 else ''}"


def read_lines(loop: asyncio.AbstractEventLoop, lines: asyncio.Queue[str | None]) -> None:
    """In a daemon thread (stdin may be a terminal, a pipe or a file): each line, then None at EOF."""
    try:
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line.rstrip("\r\n"))
        loop.call_soon_threadsafe(lines.put_nowait, None)
    except RuntimeError:  # the loop is closed: the client is done
        pass


async def interactive_client(uri: str, max_size: int | None, proxy: str | bool | None = True) -> int:
    try:
        ws = await connect(uri, max_size=max_size, proxy=proxy)
    except (InvalidURI, ImportError) as exc:  # ImportError: a socks proxy without python-socks
        raise UsageError(str(exc)) from None
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        print(f"fastws: cannot connect to {uri}: {exc or type(exc).__name__}", file=sys.stderr)
        return 1
    print(f"connected to {uri}; type a line to send it, end with Ctrl-D", flush=True)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, lambda: loop.create_task(ws.close()))
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    threading.Thread(target=read_lines, args=(loop, lines), daemon=True, name="fastws-stdin").start()

    async def send_lines() -> None:
        while (line := await lines.get()) is not None:
            await ws.send(line)
        await ws.close()

    sender = asyncio.create_task(send_lines())
    try:
        async for message in ws:
            print(f"< {render(message)}", flush=True)
    except ConnectionClosed:
        pass
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
    print(f"connection closed: {ws.close_code} {ws.close_reason or ''}".rstrip(), flush=True)
    return 0 if ws.close_code in (1000, 1001) else 1


# -- the command line ----------------------------------------------------------------------


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def port_number(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port (0 to 65535)")
    return value


def non_negative(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"must not be negative: {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def size_text(size: int) -> str:
    """A byte count for help texts: 1 MiB, 64 KiB, 1000 bytes."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} bytes"


MAX_SIZE_HELP = f"largest message in bytes, 0 for no limit (default {size_text(MAX_SIZE)})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastws", description="A fast WebSocket server and client.")
    parser.add_argument("--version", action="store_true", help="print the version, the hot path in use and the event loop")
    sub = parser.add_subparsers(dest="command")

    serve_parser = sub.add_parser(
        "serve", help="run a server", description="Run a WebSocket server; it also answers GET / (a browser client) and GET /healthz."
    )
    serve_parser.add_argument(
        "app",
        nargs="?",
        default="echo",
        help="echo (default), chat (path /ROOM joins room ROOM), or module:callable (a handler coroutine or a fastws.Listener subclass)",
    )
    serve_parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve_parser.add_argument("--port", type=port_number, default=8765, help="port to listen on; 0 picks a free one (default 8765)")
    serve_parser.add_argument(
        "--workers", type=positive_int, default=1, help="processes sharing the port with SO_REUSEPORT, restarted if they die (default 1)"
    )
    serve_parser.add_argument("--ssl-certfile", help="certificate chain (PEM): serve wss://")
    serve_parser.add_argument("--ssl-keyfile", help="private key (PEM), if not in the certificate file")
    serve_parser.add_argument("--ssl-keyfile-password", help="password of an encrypted private key")
    serve_parser.add_argument("--ssl-ca-certs", help="CA certificates (PEM) that client certificates are verified against")
    serve_parser.add_argument(
        "--ssl-cert-reqs",
        type=int,
        choices=[ssl_module.CERT_NONE, ssl_module.CERT_OPTIONAL, ssl_module.CERT_REQUIRED],
        default=ssl_module.CERT_NONE,
        help="client certificates: 0 not asked (default), 1 optional, 2 required (mTLS)",
    )
    serve_parser.add_argument("--ssl-ciphers", help="OpenSSL cipher list for TLS 1.2 and below (default: Python's)")
    serve_parser.add_argument("--compression", choices=["off", "deflate"], help="permessage-deflate (default off)")
    serve_parser.add_argument("--max-size", type=non_negative(int), default=MAX_SIZE, help=MAX_SIZE_HELP)
    serve_parser.add_argument(
        "--ping-interval", type=non_negative(float), help=f"seconds between keepalive pings, 0 for none (default {PING_INTERVAL:g})"
    )
    serve_parser.add_argument(
        "--ping-timeout", type=non_negative(float), help=f"seconds to wait for a pong before closing, 0 for no limit (default {PING_TIMEOUT:g})"
    )
    serve_parser.add_argument(
        "--broker",
        metavar="URL",
        help=(
            "share pub/sub topics (chat rooms) with every server on this broker: redis://host:port/db, "
            "redis-cluster://host:port[,host:port...], nats://host:port[,host:port...] (default: in-process)"
        ),
    )
    serve_parser.add_argument("--loop", choices=LOOP_CHOICES, default="auto", help="event loop (default: uvloop when installed)")
    serve_parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve_parser.add_argument("--log-format", default="text", choices=["text", "json"], help="log lines as text or one JSON object each")
    serve_parser.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a line per connection when it ends, on logger fastws.access (default on)",
    )
    serve_parser.add_argument(
        "--metrics",
        metavar="[HOST:]PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics, summed over every worker (HOST defaults to --host)",
    )

    connect_parser = sub.add_parser("connect", help="an interactive client: lines typed are sent, messages received are printed")
    connect_parser.add_argument("url", help="ws:// or wss:// URL")
    connect_parser.add_argument("--max-size", type=non_negative(int), default=MAX_SIZE, help=MAX_SIZE_HELP)
    connect_parser.add_argument("--loop", choices=LOOP_CHOICES, default="auto", help="event loop (default: uvloop when installed)")
    connect_parser.add_argument(
        "--proxy",
        metavar="URL",
        help="connect through this proxy: http://[user:pass@]host:port, https://, socks5://, socks5h://, socks4://; "
        "'none' connects directly (default: https_proxy, http_proxy or all_proxy from the environment, honouring no_proxy)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        print(version_text())
        return 0
    try:
        if args.command == "serve":
            config = serve_config(args)
            log_format = "%(asctime)s %(levelname)s %(name)s" + ("[%(process)d]" if config.workers > 1 else "") + ": %(message)s"
            handler = logging.StreamHandler()
            handler.setFormatter(JsonFormatter() if args.log_format == "json" else logging.Formatter(log_format))
            logging.basicConfig(level=args.log_level.upper(), handlers=[handler])
            if not args.access_log:
                logging.getLogger("fastws.access").setLevel(logging.WARNING)
            return serve_single(config) if config.workers == 1 else serve_workers(config)
        if args.command == "connect":
            proxy = True if args.proxy is None else None if args.proxy.lower() == "none" else args.proxy
            return run(interactive_client(args.url, args.max_size or None, proxy), use_uvloop=loop_choice(args.loop))
    except UsageError as exc:
        print(f"fastws: error: {exc}", file=sys.stderr)
        return 2
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
