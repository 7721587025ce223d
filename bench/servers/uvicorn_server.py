"""The Starlette echo endpoint of tests/asgi_echo.py under uvicorn, with the WebSocket implementation named
by FASTWS_BENCH_UVICORN_WS: ``fastws`` (fastws.uvicorn:WebSocketProtocol, compiled
hot path), ``websockets-sansio`` (uvicorn's default) or ``wsproto``.

What an ASGI app sees: ``websocket.receive()`` and ``send_text``/``send_bytes`` on
Starlette's WebSocket, one message at a time. uvicorn runs on uvloop with
httptools, compression and keepalive pings off, access log off, 32 MiB messages.
"""
import os
import socket
import sys

import uvicorn

from common import MAX_SIZE, announce, lib_version, run_server

# The endpoint itself: the one Autobahn|Testsuite checks in .ci/run.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests"))
from asgi_echo import app  # noqa: E402

IMPLEMENTATIONS = {
    "fastws": "fastws.uvicorn:WebSocketProtocol",
    "websockets-sansio": "websockets-sansio",
    "wsproto": "wsproto",
}


async def main(args, loop_name):
    ws = os.environ.get("FASTWS_BENCH_UVICORN_WS", "fastws")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(1024)
    config = uvicorn.Config(app, ws=IMPLEMENTATIONS[ws], http="httptools", loop="none", lifespan="off",
                            log_level="warning", access_log=False, ws_max_size=MAX_SIZE,
                            ws_per_message_deflate=False, ws_ping_interval=None, backlog=1024)
    server = uvicorn.Server(config)
    info = dict(library="uvicorn+" + ws, version=lib_version("uvicorn"), loop=loop_name, ws=ws,
                starlette=lib_version("starlette"))
    if ws == "fastws":
        import fastws
        info.update(fastws=lib_version("fastws"), extension=bool(getattr(fastws, "USING_EXTENSION", False)))
    elif ws == "wsproto":
        info.update(wsproto=lib_version("wsproto"))
    else:
        info.update(websockets=lib_version("websockets"))
    announce(sock.getsockname()[1], **info)
    await server.serve(sockets=[sock])


if __name__ == "__main__":
    run_server(main, __doc__)
