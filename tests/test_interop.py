"""Interoperability: the fastws server with the ``websockets`` and ``aiohttp`` clients, and
the fastws client with a ``websockets`` server. Text and binary from 0 B to 16 MiB, close
codes and reasons both ways. Both event loops."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import aiohttp
import pytest
import websockets
import websockets.asyncio.client
import websockets.asyncio.server
import websockets.exceptions

import fastws
from _wsutil import IO_TIMEOUT, echo_server, uri_of

BIG = 32 * 2**20  # max_size on both sides: above the 16 MiB messages
SIZES = [0, 125, 126, 65536, 2**20]
HUGE = 16 * 2**20


async def wait(aw: Any, timeout: float = IO_TIMEOUT) -> Any:
    return await asyncio.wait_for(aw, timeout)


def text_of(size: int) -> str:
    """A str of exactly ``size`` UTF-8 bytes, mostly 3-byte characters."""
    return "€" * (size // 3) + "a" * (size % 3)


def payload(kind: str, size: int) -> str | bytes:
    return text_of(size) if kind == "text" else os.urandom(size)


# -- fastws server, websockets client ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["text", "binary"])
def test_websockets_client_echo(run: Any, kind: str) -> None:
    async def main() -> None:
        async with echo_server(max_size=BIG) as server:
            async with websockets.asyncio.client.connect(uri_of(server), max_size=BIG) as ws:
                for size in SIZES:
                    message = payload(kind, size)
                    await ws.send(message)
                    echoed = await wait(ws.recv())
                    assert type(echoed) is type(message) and echoed == message, size

    run(main())


def test_websockets_client_16_mib(run: Any) -> None:
    async def main() -> None:
        message = os.urandom(HUGE)
        async with echo_server(max_size=BIG) as server:
            async with websockets.asyncio.client.connect(uri_of(server), max_size=BIG) as ws:
                await ws.send(message)
                assert await wait(ws.recv(), 60) == message

    run(main(), timeout=90)


def test_websockets_client_closes_with_code_and_reason(run: Any) -> None:
    async def main() -> None:
        seen: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def handler(ws: fastws.WebSocket) -> None:
            try:
                await ws.recv()
            except fastws.ConnectionClosed as exc:
                seen.set_result((type(exc), exc.code, exc.reason))

        async with fastws.serve(handler, "127.0.0.1", 0) as server:
            async with websockets.asyncio.client.connect(uri_of(server)) as ws:
                await ws.close(4000, "bye from websockets")
                assert ws.close_code == 4000
            assert await wait(seen) == (fastws.ConnectionClosedError, 4000, "bye from websockets")

    run(main())


def test_fastws_server_close_reaches_websockets_client(run: Any) -> None:
    async def main() -> None:
        async def handler(ws: fastws.WebSocket) -> None:
            await ws.close(4001, "bye from fastws")

        async with fastws.serve(handler, "127.0.0.1", 0) as server:
            async with websockets.asyncio.client.connect(uri_of(server)) as ws:
                with pytest.raises(websockets.exceptions.ConnectionClosedError) as info:
                    await wait(ws.recv())
                assert info.value.rcvd is not None
                assert (info.value.rcvd.code, info.value.rcvd.reason) == (4001, "bye from fastws")

    run(main())


def test_websockets_client_normal_close_ends_handler_iteration(run: Any) -> None:
    async def main() -> None:
        seen: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def handler(ws: fastws.WebSocket) -> None:
            messages = [m async for m in ws]
            seen.set_result((messages, ws.close_code, ws.close_reason))

        async with fastws.serve(handler, "127.0.0.1", 0) as server:
            async with websockets.asyncio.client.connect(uri_of(server)) as ws:
                await ws.send("one")
                await ws.send(b"two")
            assert await wait(seen) == (["one", b"two"], 1000, "")

    run(main())


def test_websockets_client_ping_and_fragmented_send(run: Any) -> None:
    async def main() -> None:
        async with echo_server() as server:
            async with websockets.asyncio.client.connect(uri_of(server)) as ws:
                pong = await ws.ping(b"interop")
                assert isinstance(await wait(pong), float)
                await ws.send(["frag", "mented ", "€"])  # an iterable is sent as fragments
                assert await wait(ws.recv()) == "fragmented €"
                await ws.send([b"\x01", b"\x02"])
                assert await wait(ws.recv()) == b"\x01\x02"

    run(main())


# -- fastws server, aiohttp client -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["text", "binary"])
def test_aiohttp_client_echo(run: Any, kind: str) -> None:
    async def main() -> None:
        async with echo_server(max_size=BIG) as server:
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(uri_of(server), max_msg_size=BIG) as ws:
                    for size in SIZES:
                        message = payload(kind, size)
                        if kind == "text":
                            await ws.send_str(message)  # type: ignore[arg-type]
                        else:
                            await ws.send_bytes(message)  # type: ignore[arg-type]
                        msg = await wait(ws.receive())
                        expected_type = aiohttp.WSMsgType.TEXT if kind == "text" else aiohttp.WSMsgType.BINARY
                        assert msg.type == expected_type, (size, msg)
                        assert msg.data == message, size

    run(main())


def test_aiohttp_client_16_mib_text(run: Any) -> None:
    async def main() -> None:
        message = text_of(HUGE)
        async with echo_server(max_size=BIG) as server:
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(uri_of(server), max_msg_size=BIG) as ws:
                    await ws.send_str(message)
                    msg = await wait(ws.receive(), 60)
                    assert msg.type == aiohttp.WSMsgType.TEXT and msg.data == message

    run(main(), timeout=90)


def test_aiohttp_client_closes_with_code_and_reason(run: Any) -> None:
    async def main() -> None:
        seen: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def handler(ws: fastws.WebSocket) -> None:
            try:
                await ws.recv()
            except fastws.ConnectionClosed as exc:
                seen.set_result((type(exc), exc.code, exc.reason))

        async with fastws.serve(handler, "127.0.0.1", 0) as server:
            async with aiohttp.ClientSession() as session:
                ws = await session.ws_connect(uri_of(server))
                await wait(ws.close(code=4002, message=b"bye from aiohttp"))
                assert ws.closed
            assert await wait(seen) == (fastws.ConnectionClosedError, 4002, "bye from aiohttp")

    run(main())


def test_fastws_server_close_reaches_aiohttp_client(run: Any) -> None:
    async def main() -> None:
        async def handler(ws: fastws.WebSocket) -> None:
            await ws.send("before closing")
            await ws.close(4003, "bye to aiohttp")

        async with fastws.serve(handler, "127.0.0.1", 0) as server:
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(uri_of(server)) as ws:
                    msg = await wait(ws.receive())
                    assert (msg.type, msg.data) == (aiohttp.WSMsgType.TEXT, "before closing")
                    msg = await wait(ws.receive())
                    assert msg.type == aiohttp.WSMsgType.CLOSE
                    assert (msg.data, msg.extra) == (4003, "bye to aiohttp")
                    assert ws.close_code == 4003

    run(main())


def test_aiohttp_client_with_subprotocol(run: Any) -> None:
    async def main() -> None:
        async def handler(ws: fastws.WebSocket) -> None:
            await ws.send(f"{ws.subprotocol}")

        async with fastws.serve(handler, "127.0.0.1", 0, subprotocols=["graphql-ws", "chat"]) as server:
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(uri_of(server), protocols=("chat", "graphql-ws")) as ws:
                    assert ws.protocol == "graphql-ws"
                    msg = await wait(ws.receive())
                    assert msg.data == "graphql-ws"

    run(main())


# -- fastws client, websockets server --------------------------------------------------------------


async def ws_echo(connection: Any) -> None:
    async for message in connection:
        await connection.send(message)


def ws_uri(server: Any) -> str:
    port = next(iter(server.sockets)).getsockname()[1]
    return f"ws://127.0.0.1:{port}/"


@pytest.mark.parametrize("kind", ["text", "binary"])
def test_fastws_client_with_websockets_server(run: Any, kind: str) -> None:
    async def main() -> None:
        async with websockets.asyncio.server.serve(ws_echo, "127.0.0.1", 0, max_size=BIG) as server:
            async with fastws.connect(ws_uri(server), max_size=BIG) as ws:
                for size in SIZES:
                    message = payload(kind, size)
                    await ws.send(message)
                    echoed = await wait(ws.recv())
                    assert type(echoed) is type(message) and echoed == message, size

    run(main())


def test_fastws_client_16_mib_with_websockets_server(run: Any) -> None:
    async def main() -> None:
        message = os.urandom(HUGE)
        async with websockets.asyncio.server.serve(ws_echo, "127.0.0.1", 0, max_size=BIG) as server:
            async with fastws.connect(ws_uri(server), max_size=BIG) as ws:
                await ws.send(message)
                assert await wait(ws.recv(), 60) == message

    run(main(), timeout=90)


def test_fastws_client_closes_websockets_server_with_code(run: Any) -> None:
    async def main() -> None:
        seen: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def handler(connection: Any) -> None:
            try:
                await connection.recv()
            except websockets.exceptions.ConnectionClosed as exc:
                seen.set_result((type(exc).__name__, exc.rcvd.code, exc.rcvd.reason))

        async with websockets.asyncio.server.serve(handler, "127.0.0.1", 0) as server:
            ws = await fastws.connect(ws_uri(server))
            await wait(ws.close(4004, "bye from fastws client"))
            assert ws.close_code == 4004
            assert await wait(seen) == ("ConnectionClosedError", 4004, "bye from fastws client")

    run(main())


def test_websockets_server_close_reaches_fastws_client(run: Any) -> None:
    async def main() -> None:
        async def handler(connection: Any) -> None:
            await connection.send(b"last")
            await connection.close(4005, "bye from websockets server")

        async with websockets.asyncio.server.serve(handler, "127.0.0.1", 0) as server:
            ws = await fastws.connect(ws_uri(server))
            assert await wait(ws.recv()) == b"last"
            with pytest.raises(fastws.ConnectionClosedError) as info:
                await wait(ws.recv())
            assert (info.value.code, info.value.reason) == (4005, "bye from websockets server")
            await wait(ws.wait_closed())
            assert (ws.close_code, ws.close_reason) == (4005, "bye from websockets server")

    run(main())


def test_fastws_client_subprotocol_and_ping_with_websockets_server(run: Any) -> None:
    async def main() -> None:
        async def handler(connection: Any) -> None:
            await connection.send(connection.request.headers.get("X-Custom", "-"))
            await connection.wait_closed()

        async with websockets.asyncio.server.serve(handler, "127.0.0.1", 0, subprotocols=["b", "a"]) as server:
            async with fastws.connect(ws_uri(server), subprotocols=["a", "b"], extra_headers=[("X-Custom", "yes")]) as ws:
                assert ws.subprotocol in ("a", "b")
                assert await wait(ws.recv()) == "yes"
                assert isinstance(await wait(await ws.ping()), float)

    run(main())
