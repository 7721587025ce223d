"""Runs in pproxy's own venv (see tests/_proxies.py), not under pytest: starts one pproxy
server per URI given (``http://127.0.0.1:0``, ``socks5://127.0.0.1:0#user:pass``, ...),
prints their ports on one line, logs each connection it opens to ``--log FILE`` as
pproxy words it ("socks5 127.0.0.1:5555 -> localhost:8000"), and serves until its
standard input closes, so that it ends with the test process that started it."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import pproxy  # type: ignore[import-not-found]
import pproxy.server  # type: ignore[import-not-found]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("uris", nargs="+")
    parser.add_argument("--log", required=True)
    parser.add_argument("--cert", help="PEM file with the certificate and key, for +ssl URIs")
    args = parser.parse_args()
    log = open(args.log, "a", buffering=1)  # noqa: SIM115 (open for the process's lifetime)

    def verbose(line: str) -> None:
        log.write(line + "\n")

    servers: list[Any] = []
    for uri in args.uris:
        server = pproxy.Server(uri)
        if args.cert:
            for context in pproxy.server.sslcontexts:
                context.load_cert_chain(args.cert)
        # authtime=-1: every connection authenticates (pproxy otherwise trusts an IP that once did).
        servers.append(await server.start_server({"rserver": [], "verbose": verbose, "authtime": -1}))
    print(" ".join(str(s.sockets[0].getsockname()[1]) for s in servers), flush=True)
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    await stdin.read()  # until EOF: the test closed it, or ended
    for server in servers:
        server.close()


asyncio.run(main())
