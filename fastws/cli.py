"""The ``fastws`` command: ``fastws serve`` runs a server, ``fastws --version`` says what is in use."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Sequence

from . import __version__
from ._accel import IMPLEMENTATION, KERNEL_ISA, USING_EXTENSION
from .apps import EchoListener
from .loop import event_loop_name, run
from .server import create_server

logger = logging.getLogger("fastws.cli")


def version_text() -> str:
    if USING_EXTENSION:
        path = f"compiled extension ({IMPLEMENTATION}, kernels: {KERNEL_ISA})"
    else:
        path = "pure Python (no compiled extension)"
    return f"fastws {__version__}\nhot path: {path}\nevent loop: {event_loop_name()}\npython: {sys.version.split()[0]}"


class _UsageError(Exception):
    """A bad argument: one line on stderr and exit code 2."""


async def _serve(args: argparse.Namespace) -> None:
    try:
        server = await create_server(EchoListener, args.host, args.port, max_size=args.max_size)
    except OSError as exc:
        raise _UsageError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    for sock in server.sockets:
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"fastws {__version__} serving echo on ws://{shown}:{port}/ ({'compiled' if USING_EXTENSION else 'pure Python'}, {event_loop_name(loop)})", flush=True)
    await stop
    logger.info("shutting down: closing %d connections with 1001", len(server.connections))
    server.close(1001, "server shutting down")
    await server.wait_closed()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastws", description="A fast WebSocket server and client.")
    parser.add_argument("--version", action="store_true", help="print the version, the hot path in use and the event loop")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="run the echo server")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8765, help="port to listen on (default 8765)")
    serve.add_argument("--max-size", type=int, default=2**20, help="largest message in bytes (default 1 MiB)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    if args.version:
        print(version_text())
        return 0
    if args.command != "serve":
        parser.print_help()
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run(_serve(args))
    except _UsageError as exc:
        print(f"fastws: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
