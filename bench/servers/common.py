"""Shared bits of the benchmark echo servers: argument parsing, event loop
selection and the start-up lines the runner waits for.

Protocol with bench/run.py (stdout, one line each, flushed):
    INFO {"library": ..., "version": ..., "loop": ..., ...}
    PORT <n>          printed once the socket is listening

With --certfile/--keyfile every server serves wss:// (the runner makes one
self-signed certificate per run); ``server_ssl`` builds the same context for all
the Python servers, and the INFO line says ``"tls": true``.
"""
import argparse
import asyncio
import json
import os
import platform
import ssl
import sys

MAX_SIZE = 32 * 1024 * 1024  # message size limit used by every server (>= 16 MiB payloads)


def parse_args(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (printed as 'PORT <n>')")
    p.add_argument("--no-uvloop", action="store_true", help="use the default asyncio loop")
    p.add_argument("--certfile", help="serve wss:// with this certificate (PEM)")
    p.add_argument("--keyfile", help="private key of --certfile (PEM)")
    return p.parse_args()


def server_ssl(args):
    """The server's TLS context, or None for plain ws://.

    Python's defaults for a server (TLS 1.2 and 1.3, OpenSSL's default cipher
    suites); the load generator asks for TLS 1.3, so every server negotiates
    the same protocol and suite with it."""
    if not args.certfile:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.certfile, args.keyfile)
    return ctx


def install_loop(args):
    """Return the name of the event loop in use (uvloop unless disabled/missing)."""
    if args.no_uvloop:
        return "asyncio"
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop " + uvloop.__version__


def lib_version(dist):
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:
        return "unknown"


def run_server(main, description):
    """Parse the arguments, pick the loop and run ``main(args, loop_name)`` until interrupted."""
    args = parse_args(description)
    loop_name = install_loop(args)
    try:
        asyncio.run(main(args, loop_name))
    except KeyboardInterrupt:
        pass


def announce(port, **info):
    info.setdefault("python", platform.python_version())
    info.setdefault("tls", "--certfile" in sys.argv)
    info.setdefault("pid", os.getpid())
    sys.stdout.write("INFO " + json.dumps(info) + "\n")
    sys.stdout.write("PORT %d\n" % port)
    sys.stdout.flush()
