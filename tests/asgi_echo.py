"""A Starlette echo endpoint: what .ci/run puts under uvicorn with fastws for the
Autobahn|Testsuite, and what bench/servers/uvicorn_server.py measures:

    uvicorn asgi_echo:app --app-dir tests --ws fastws.uvicorn:WebSocketProtocol --ws-max-size 33554432

Every path echoes: a text message back as text, binary as binary.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                await websocket.send_text(message["text"])
            else:
                await websocket.send_bytes(message["bytes"])
    except WebSocketDisconnect:
        pass


app = Starlette(routes=[WebSocketRoute("/{path:path}", echo)])
