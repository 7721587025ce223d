"""Plain HTTP on the CLI server's port (``fastws.http``): the page, /healthz, 404, 405,
while upgrade requests still become WebSocket connections. In process, both loops."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

import fastws
from _wsutil import IO_TIMEOUT, RawClient, upgrade_request
from fastws.cli import build_parser, serve_config, start_server
from fastws.http import page_bytes

T = IO_TIMEOUT


@contextlib.asynccontextmanager
async def cli_server(*args: str) -> AsyncIterator[int]:
    """The server ``fastws serve ARGS`` would run, in this process; yields its port."""
    config = serve_config(build_parser().parse_args(["serve", "--port", "0", *args]))
    server = await start_server(config, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def http(port: int, request: bytes) -> Any:
    client = await RawClient.open(port)
    try:
        client.send(request)
        response = await client.read_http_response()
        assert await client.read_all_until_eof() == b"", "the server closes after a plain-HTTP answer"
        return response
    finally:
        client.close()


def get(path: str, method: str = "GET", extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: test\r\n{extra}\r\n".encode()


def test_root_answers_the_browser_page(run: Any) -> None:
    async def main() -> None:
        async with cli_server() as port:
            for path in ["/", "/?room=lobby"]:
                response = await http(port, get(path))
                assert response.status == 200
                assert response.headers["content-type"] == "text/html; charset=utf-8"
                assert response.body == page_bytes()
                assert b"new WebSocket(" in response.body

    run(main())


def test_healthz_answers_200(run: Any) -> None:
    async def main() -> None:
        async with cli_server("chat") as port:
            response = await http(port, get("/healthz"))
            assert (response.status, response.body) == (200, b"ok\n")
            assert response.headers["cache-control"] == "no-store"

    run(main())


@pytest.mark.parametrize("path", ["/nope", "/healthz/x", "/lobby", "/index.html"])
def test_unknown_path_without_upgrade_is_404(run: Any, path: str) -> None:
    async def main() -> None:
        async with cli_server("chat") as port:
            response = await http(port, get(path))
            assert response.status == 404

    run(main())


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "HEAD", "OPTIONS"])
def test_other_methods_without_upgrade_are_405(run: Any, method: str) -> None:
    async def main() -> None:
        async with cli_server() as port:
            response = await http(port, get("/healthz", method))
            assert response.status == 405
            assert response.headers["allow"] == "GET"
            if method == "HEAD":  # the headers a GET would get, no body
                assert int(response.headers["content-length"]) > 0
                assert response.body == b""
            else:
                assert b"not allowed" in response.body

    run(main())


def test_non_get_upgrade_request_is_still_400(run: Any) -> None:
    async def main() -> None:
        async with cli_server() as port:
            response = await http(port, upgrade_request("/", method="POST"))
            assert response.status == 400

    run(main())


def test_upgrade_on_any_path_is_a_websocket(run: Any) -> None:
    async def main() -> None:
        async with cli_server() as port:
            for path in ["/", "/healthz", "/some/room"]:
                async with fastws.connect(f"ws://127.0.0.1:{port}{path}") as ws:
                    await ws.send(path)
                    assert await asyncio.wait_for(ws.recv(), T) == path
            response = await http(port, get("/healthz"))
            assert response.status == 200, "plain HTTP still answered after upgrades"

    run(main())


def test_upgrade_header_without_the_rest_is_refused_not_served_the_page(run: Any) -> None:
    async def main() -> None:
        async with cli_server() as port:
            response = await http(port, get("/", extra="Upgrade: websocket\r\n"))
            assert response.status == 400  # no Connection: Upgrade, no key

    run(main())


@pytest.mark.parametrize(
    "request_bytes",
    [
        get("/healthz\x00"),
        get("/", extra="X-Forwarded-For: 1.2.3.4\x00\r\n"),
        get("/healthz").replace(b"\r\n", b"\n"),
    ],
    ids=["nul-in-target", "nul-in-value", "bare-lf"],
)
def test_hostile_plain_request_is_400_before_process_request(run: Any, request_bytes: bytes) -> None:
    async def main() -> None:
        async with cli_server() as port:
            response = await asyncio.wait_for(http(port, request_bytes), T)
            assert response.status == 400, "refused by the parser, never served the page or /healthz"
            assert response.headers["content-type"].startswith("text/plain")
            response = await http(port, get("/healthz"))
            assert response.status == 200, "and the server goes on serving"

    run(main())
