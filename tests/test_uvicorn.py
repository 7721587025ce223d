"""fastws under uvicorn: real FastAPI and Starlette apps served by ``uvicorn.Server`` in
this process with ``ws=fastws.uvicorn.WebSocketProtocol``, talked to by the websockets
client and by a raw client (bad input). The server listens on a socket bound to a free
loopback port before it starts, so clients can connect at once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

pytest.importorskip("uvicorn", reason="the test extra installs uvicorn")  # `pip install '.[test]'`

import uvicorn  # noqa: E402
import websockets  # noqa: E402
from fastapi import Depends, FastAPI, Query, WebSocket, WebSocketException, status  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.endpoints import WebSocketEndpoint  # noqa: E402
from starlette.responses import PlainTextResponse  # noqa: E402
from starlette.routing import WebSocketRoute  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

from _wsutil import IO_TIMEOUT, RawClient, build_frame, close_payload, scaled, upgrade_request  # noqa: E402
from fastws import _accel  # noqa: E402
from fastws.uvicorn import WebSocketProtocol  # noqa: E402

# -- the apps -----------------------------------------------------------------------------------

fastapi_app = FastAPI()
disconnects: list[int] = []  # codes the echo endpoints saw in websocket.disconnect


@fastapi_app.websocket("/echo")
async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            disconnects.append(message["code"])
            return
        await websocket.send(dict(message, type="websocket.send"))  # its "text" or "bytes" back


@fastapi_app.websocket("/items/{item_id}")
async def item(websocket: WebSocket, item_id: int, q: str | None = None) -> None:
    await websocket.accept()
    await websocket.send_json({"item_id": item_id, "q": q, "path": websocket.url.path})
    await websocket.close()


def token(token: str | None = Query(None)) -> str:
    if token != "sesame":
        raise WebSocketException(code=status.WS_1008_POLICY_VIOLATION)  # before accept: HTTP 403
    return token


@fastapi_app.websocket("/private")
async def private(websocket: WebSocket, user: str = Depends(token)) -> None:
    await websocket.accept()
    await websocket.send_text(f"welcome, {user}")
    await websocket.close()


@fastapi_app.websocket("/denied")
async def denied(websocket: WebSocket) -> None:
    await websocket.send_denial_response(PlainTextResponse("no entry for you\n" * 100, status_code=401, headers={"x-why": "test"}))


@fastapi_app.websocket("/chat")
async def chat(websocket: WebSocket) -> None:
    offered = websocket.scope["subprotocols"]
    chosen = "v2.chat" if "v2.chat" in offered else None
    await websocket.accept(subprotocol=chosen)
    await websocket.send_text(f"{chosen} of {','.join(offered)}")
    await websocket.close()


class StarletteEcho(WebSocketEndpoint):
    encoding = "text"

    async def on_receive(self, websocket: Any, data: str) -> None:
        await websocket.send_text(f"{websocket.path_params['room']}: {data}")

    async def on_disconnect(self, websocket: Any, close_code: int) -> None:
        disconnects.append(close_code)


starlette_app = Starlette(routes=[WebSocketRoute("/rooms/{room}", StarletteEcho)])


async def scope_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A bare ASGI app that sends the scope back (minus what is not JSON)."""
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept", "headers": [(b"x-app", b"bare")]})
    shown = {k: scope[k] for k in ("path", "raw_path", "root_path", "query_string", "scheme", "subprotocols")}
    shown["headers"] = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
    shown["spec_version"] = scope["asgi"]["spec_version"]
    await send({"type": "websocket.send", "text": repr(shown)})
    await send({"type": "websocket.close", "code": 4000, "reason": "done"})


# -- the server -----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serving(app: Any, **options: Any) -> AsyncIterator[tuple[uvicorn.Server, int]]:
    """uvicorn with fastws's protocol on a free loopback port; stops (graceful shutdown) on exit."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    options.setdefault("log_config", None)  # records propagate to the root logger (caplog)
    config = uvicorn.Config(app, ws=WebSocketProtocol, lifespan="off", **options)
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        yield server, sock.getsockname()[1]
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, scaled(15))
        sock.close()


def url(port: int, path: str = "/echo") -> str:
    return f"ws://127.0.0.1:{port}{path}"


async def assert_echo(port: int, message: str | bytes = "still serving") -> None:
    async with connect(url(port), open_timeout=IO_TIMEOUT) as ws:
        await ws.send(message)
        assert await asyncio.wait_for(ws.recv(), IO_TIMEOUT) == message


def quiet(caplog: pytest.LogCaptureFixture) -> None:
    """Nothing from uvicorn or fastws at WARNING or above, and no traceback."""
    records = [r for r in caplog.records if r.name.startswith(("uvicorn", "fastws"))]
    loud = [f"{r.levelname} {r.name}: {r.getMessage()}" for r in records if r.levelno >= logging.WARNING or r.exc_info]
    assert loud == []


# -- routes, parameters, dependencies, subprotocols -------------------------------------------------


def test_fastapi_echo_text_and_binary(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with serving(fastapi_app) as (_, port):
            async with connect(url(port)) as ws:
                for message in ["hello", "é€𝄞", "", b"\x00\xffbinary", b""]:
                    await ws.send(message)
                    assert await asyncio.wait_for(ws.recv(), IO_TIMEOUT) == message

    with caplog.at_level(logging.INFO):
        run(main())
    quiet(caplog)
    assert any('"WebSocket /echo" [accepted]' in r.getMessage() for r in caplog.records if r.name == "uvicorn.error")


def test_path_and_query_parameters(run: Any) -> None:
    async def main() -> None:
        async with serving(fastapi_app) as (_, port):
            async with connect(url(port, "/items/42?q=caf%C3%A9")) as ws:
                assert await asyncio.wait_for(ws.recv(), IO_TIMEOUT) == '{"item_id":42,"q":"café","path":"/items/42"}'
                await asyncio.wait_for(ws.wait_closed(), IO_TIMEOUT)
                assert ws.close_code == 1000

    run(main())


def test_invalid_path_parameter_is_refused_before_accept(run: Any) -> None:
    async def main() -> None:
        async with serving(fastapi_app) as (_, port):
            with pytest.raises(websockets.InvalidStatus) as info:
                await connect(url(port, "/items/not-a-number"))
            assert info.value.response.status_code == 403

    run(main())


def test_dependency_admits_and_denies_with_403(run: Any) -> None:
    async def main() -> None:
        async with serving(fastapi_app) as (_, port):
            async with connect(url(port, "/private?token=sesame")) as ws:
                assert await asyncio.wait_for(ws.recv(), IO_TIMEOUT) == "welcome, sesame"
            for query in ["", "?token=guess"]:
                with pytest.raises(websockets.InvalidStatus) as info:
                    await connect(url(port, "/private" + query))
                assert info.value.response.status_code == 403
            await assert_echo(port)

    run(main())


async def upgrade(port: int, path: str) -> RawClient:
    """A raw client that has sent an upgrade request for ``path``."""
    client = await RawClient.open(port)
    client.send(upgrade_request(path))
    return client


def test_custom_denial_response_with_a_body(run: Any) -> None:
    async def main() -> None:
        async with serving(fastapi_app) as (_, port):
            client = await upgrade(port, "/denied")
            head = await client.read_http_response()
            assert head.status == 401
            assert head.headers["x-why"] == "test"
            assert head.headers["content-type"] == "text/plain; charset=utf-8"
            assert head.body == b"no entry for you\n" * 100
            assert await client.read_all_until_eof() == b""
            client.close()

    run(main())


def test_denial_streamed_in_chunks_without_a_length(run: Any) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.http.response.start", "status": 429, "headers": [(b"retry-after", b"5")]})
        for part in (b"slow ", b"", b"down"):
            await send({"type": "websocket.http.response.body", "body": part, "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"!"})

    async def main() -> None:
        async with serving(app) as (_, port):
            client = await upgrade(port, "/")
            head = await client.read_http_head()
            assert head.status == 429
            assert head.headers["transfer-encoding"] == "chunked"
            assert "content-length" not in head.headers
            body = await client.read_all_until_eof()  # what follows the head
            assert body == b"5\r\nslow \r\n4\r\ndown\r\n1\r\n!\r\n0\r\n\r\n"
            client.close()

    run(main())


def test_subprotocol_chosen_by_the_app(run: Any) -> None:
    async def main() -> None:
        async with serving(fastapi_app) as (_, port):
            async with connect(url(port, "/chat"), subprotocols=["v1.chat", "v2.chat"]) as ws:  # type: ignore[list-item]
                assert ws.subprotocol == "v2.chat"
                assert await asyncio.wait_for(ws.recv(), IO_TIMEOUT) == "v2.chat of v1.chat,v2.chat"
            async with connect(url(port, "/chat")) as ws:
                assert ws.subprotocol is None

    run(main())


def test_starlette_endpoint_with_path_parameter(run: Any) -> None:
    async def main() -> None:
        disconnects.clear()
        async with serving(starlette_app) as (_, port):
            async with connect(url(port, "/rooms/lobby")) as ws:
                await ws.send("hi")
                assert await asyncio.wait_for(ws.recv(), IO_TIMEOUT) == "lobby: hi"
                await ws.close(4001, "bye")
            with pytest.raises(websockets.InvalidStatus) as info:
                await connect(url(port, "/nowhere"))
            assert info.value.response.status_code == 403
        assert disconnects == [4001]

    run(main())


def test_scope_root_path_and_default_headers(run: Any) -> None:
    async def main() -> None:
        async with serving(scope_app, root_path="/api", headers=[("x-served-by", "fastws")]) as (_, port):
            async with connect(url(port, "/a%2Fb?x=1"), subprotocols=["p1", "p2"]) as ws:  # type: ignore[list-item]
                response = ws.response
                assert response is not None
                assert response.headers["server"] == "uvicorn"
                assert response.headers["x-served-by"] == "fastws"
                assert response.headers["x-app"] == "bare"
                assert "date" in response.headers
                shown = await asyncio.wait_for(ws.recv(), IO_TIMEOUT)
                await asyncio.wait_for(ws.wait_closed(), IO_TIMEOUT)
                assert (ws.close_code, ws.close_reason) == (4000, "done")
        scope = eval(shown)  # a repr of plain data, made by the app above
        assert scope["path"] == "/api/a/b"
        assert scope["raw_path"] == b"/api/a%2Fb"
        assert scope["root_path"] == "/api"
        assert scope["query_string"] == b"x=1"
        assert scope["scheme"] == "ws"
        assert scope["subprotocols"] == ["p1", "p2"]
        assert scope["spec_version"] == "2.4"
        assert ("sec-websocket-protocol", "p1, p2") in scope["headers"]

    run(main())


def test_connection_moves_to_fastws_transport_on_the_compiled_path(run: Any) -> None:
    async def main() -> None:
        async with serving(fastapi_app) as (server, port):
            async with connect(url(port)) as ws:
                await ws.send("x")
                assert await asyncio.wait_for(ws.recv(), IO_TIMEOUT) == "x"
                [protocol] = [c for c in server.server_state.connections if isinstance(c, WebSocketProtocol)]
                if _accel.SocketTransport is None:  # pure Python: the event loop's own transport stays
                    assert protocol.transport.get_extra_info("socket") is not None
                else:
                    assert isinstance(protocol.transport, _accel.SocketTransport)

    run(main())


# -- large and fragmented messages, compression ----------------------------------------------------


def test_large_and_fragmented_messages(run: Any) -> None:
    big = bytes(range(256)) * 4096 * 4  # 4 MiB
    text = "fragmenté " * 10000

    async def main() -> None:
        async with serving(fastapi_app) as (_, port):
            async with connect(url(port), max_size=None, compression=None) as ws:
                await ws.send(big)
                assert await asyncio.wait_for(ws.recv(), IO_TIMEOUT) == big
                await ws.send([text[i : i + 777] for i in range(0, len(text), 777)])  # one message in fragments
                assert await asyncio.wait_for(ws.recv(), IO_TIMEOUT) == text
                await ws.send([b"a" * 1000, b"", b"b" * 70000])
                assert await asyncio.wait_for(ws.recv(), IO_TIMEOUT) == b"a" * 1000 + b"b" * 70000

    run(main())


def test_message_over_ws_max_size_is_1009(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        disconnects.clear()
        async with serving(fastapi_app, ws_max_size=1000) as (_, port):
            client = await RawClient.connect(port, "/echo")
            client.send(build_frame(2, b"\0" * 1001)[:8])  # the header says it all
            close = await client.expect_close()
            assert close.close_code == 1009
            client.close()
            async with connect(url(port)) as ws:
                await ws.send(b"x" * 1000)
                assert await asyncio.wait_for(ws.recv(), IO_TIMEOUT) == b"x" * 1000
        assert disconnects[0] == 1009

    with caplog.at_level(logging.DEBUG):
        run(main())
    quiet(caplog)


@pytest.mark.parametrize("enabled", [True, False])
def test_permessage_deflate(run: Any, enabled: bool) -> None:
    text = "compressible " * 50000

    async def main() -> None:
        async with serving(fastapi_app, ws_per_message_deflate=enabled) as (_, port):
            async with connect(url(port), compression="deflate", max_size=None) as ws:
                response = ws.response
                assert response is not None
                extensions = response.headers.get("sec-websocket-extensions") or ""
                assert ("permessage-deflate" in extensions) is enabled
                for message in [text, b"\x00" * 100000, "small"]:
                    await ws.send(message)
                    assert await asyncio.wait_for(ws.recv(), IO_TIMEOUT) == message

    run(main())


# -- shutdown ------------------------------------------------------------------------------------------


def test_graceful_shutdown_closes_with_1012(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        disconnects.clear()
        async with contextlib.AsyncExitStack() as stack:
            server, port = await stack.enter_async_context(serving(fastapi_app))
            clients = [await stack.enter_async_context(connect(url(port))) for _ in range(3)]
            for ws in clients:
                await ws.send("before")
                assert await asyncio.wait_for(ws.recv(), IO_TIMEOUT) == "before"
            server.should_exit = True
            for ws in clients:
                with pytest.raises(websockets.ConnectionClosedError) as info:
                    await asyncio.wait_for(ws.recv(), IO_TIMEOUT)
                assert info.value.rcvd is not None and info.value.rcvd.code == 1012
        assert disconnects == [1012, 1012, 1012]

    with caplog.at_level(logging.INFO):
        run(main())
    quiet(caplog)


# -- bad input: right codes, no traceback, the server keeps serving --------------------------------


def fails_with(code: int, *frames: bytes) -> Any:
    async def scenario(port: int) -> None:
        client = await RawClient.connect(port, "/echo")
        client.send(b"".join(frames))
        close = await client.expect_close()
        assert close.close_code == code, (close.close_code, close.payload)
        client.close()

    return scenario


def refused(request: bytes, *statuses: int) -> Any:
    async def scenario(port: int) -> None:
        client = await RawClient.open(port)
        client.send(request)
        head = await client.read_http_response()
        assert head.status in statuses, head
        assert await client.read_all_until_eof() == b""
        client.close()

    return scenario


def vanishes_mid_frame(port: int) -> Any:
    async def scenario() -> None:
        client = await RawClient.connect(port, "/echo")
        client.send(build_frame(1, b"x" * 100)[:20])
        await client.writer.drain()
        client.writer.transport.abort()

    return scenario()


BAD_INPUT = {
    "unmasked-frame": fails_with(1002, build_frame(1, b"hello", mask=False)),
    "rsv-bits": fails_with(1002, build_frame(1, b"hello", rsv=4)),
    "reserved-opcode": fails_with(1002, build_frame(3, b"x")),
    "fragmented-ping": fails_with(1002, build_frame(9, b"ping", fin=False)),
    "orphan-continuation": fails_with(1002, build_frame(0, b"orphan")),
    "bad-close-code": fails_with(1002, build_frame(8, close_payload(1005))),
    "invalid-utf8": fails_with(1007, build_frame(1, b"caf\xc3(")),
    "invalid-utf8-fragment": fails_with(1007, build_frame(1, b"ok", fin=False), build_frame(0, b"\xff", fin=False)),
    "wrong-version": refused(upgrade_request("/echo", ws_version="8"), 426),
    "missing-key": refused(upgrade_request("/echo", key=None), 400),
    "malformed-key": refused(upgrade_request("/echo", key="c2hvcnQ="), 400),
    "vanishes-mid-frame": vanishes_mid_frame,
}


@pytest.mark.parametrize("scenario", list(BAD_INPUT.values()), ids=list(BAD_INPUT))
def test_bad_input(run: Any, caplog: pytest.LogCaptureFixture, scenario: Any) -> None:
    async def main() -> None:
        async with serving(fastapi_app) as (_, port):
            await scenario(port)
            await assert_echo(port)
            await assert_echo(port, b"\x00binary too")

    with caplog.at_level(logging.DEBUG):
        run(main())
    quiet(caplog)


def test_messages_before_a_bad_frame_are_answered_before_the_close(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with serving(fastapi_app) as (_, port):
            client = await RawClient.connect(port, "/echo")
            client.send(build_frame(1, b"first") + build_frame(2, b"second") + build_frame(1, b"bad", rsv=2) + build_frame(9, b""))
            for expected in (b"first", b"second"):
                frame = await client.read_frame()
                assert (frame.opcode, frame.payload) == (1 if expected == b"first" else 2, expected)
            close = await client.expect_close()
            assert close.close_code == 1002
            client.close()
            await assert_echo(port)

    with caplog.at_level(logging.DEBUG):
        run(main())
    quiet(caplog)


@pytest.mark.parametrize(
    "accept",
    [
        {"type": "websocket.accept", "subprotocol": "chat\r\nX-Injected: 1"},
        {"type": "websocket.accept", "headers": [(b"x-ok", b"1\r\nX-Injected: 1")]},
        {"type": "websocket.accept", "headers": [(b"x-ok\nX-Injected", b"1")]},
    ],
    ids=["subprotocol", "header-value", "header-name"],
)
def test_crlf_in_accept_headers_is_refused_not_sent(run: Any, caplog: pytest.LogCaptureFixture, accept: dict[str, Any]) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send(accept)

    async def main() -> None:
        async with serving(app) as (_, port):
            client = await upgrade(port, "/")
            head = await client.read_http_response()
            assert head.status == 500
            assert "x-injected" not in head.headers
            client.close()

    with caplog.at_level(logging.INFO):
        run(main())
    assert any("invalid character in response header" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)


def test_app_that_raises_before_accept_gets_500_and_one_logged_error(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        raise ValueError("boom")

    async def main() -> None:
        async with serving(app) as (_, port):
            with pytest.raises(websockets.InvalidStatus) as info:
                await connect(url(port))
            assert info.value.response.status_code == 500

    with caplog.at_level(logging.INFO):
        run(main())
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage().strip() for r in errors] == ["Exception in ASGI application"]


# -- TLS: the connection stays on the event loop's transport -------------------------------------


def test_wss_echo_and_scope_scheme(run: Any, tmp_path: Any) -> None:
    import ssl

    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)

    async def main() -> None:
        async with serving(scope_app, ssl_certfile=str(tmp_path / "server.pem")) as (server, port):
            async with connect(f"wss://127.0.0.1:{port}/tls", ssl=client_context) as ws:
                shown = await asyncio.wait_for(ws.recv(), IO_TIMEOUT)
                assert "'scheme': 'wss'" in str(shown)
                await asyncio.wait_for(ws.wait_closed(), IO_TIMEOUT)
                assert ws.close_code == 4000
        async with serving(fastapi_app, ssl_certfile=str(tmp_path / "server.pem")) as (server, port):
            async with connect(f"wss://127.0.0.1:{port}/echo", ssl=client_context, max_size=None) as ws:
                for message in ["over tls", b"\x01" * 300000]:
                    await ws.send(message)
                    assert await asyncio.wait_for(ws.recv(), IO_TIMEOUT) == message
                [protocol] = [c for c in server.server_state.connections if isinstance(c, WebSocketProtocol)]
                assert protocol.transport.get_extra_info("sslcontext") is not None

    run(main())
