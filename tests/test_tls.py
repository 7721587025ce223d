"""TLS: ``serve(ssl=...)`` and ``connect("wss://...")`` with certificates from trustme, with
fastws, websockets and aiohttp peers, with and without compression."""

from __future__ import annotations

import asyncio
import os
import ssl
from typing import Any

import aiohttp
import pytest
import trustme
import websockets
import websockets.asyncio.client
import websockets.asyncio.server

import fastws
from _wsutil import IO_TIMEOUT, echo_handler


@pytest.fixture(scope="module")
def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


async def wait(aw: Any, timeout: float = IO_TIMEOUT) -> Any:
    return await asyncio.wait_for(aw, timeout)


def wss_uri(server: Any) -> str:
    return f"wss://127.0.0.1:{server.sockets[0].getsockname()[1]}/tls"


MESSAGES: list[str | bytes] = ["", "héllo", b"\x00\x01", os.urandom(200_000), "z" * 3_000_000]


@pytest.mark.parametrize("compression", [None, "deflate"])
def test_fastws_over_tls(run: Any, server_context: ssl.SSLContext, client_context: ssl.SSLContext, compression: Any) -> None:
    async def main() -> None:
        options = {"compression": compression, "max_size": 2**23}
        async with fastws.serve(echo_handler, "127.0.0.1", 0, ssl=server_context, **options) as server:
            async with fastws.connect(wss_uri(server), ssl=client_context, **options) as ws:
                assert ws.conn.transport.get_extra_info("ssl_object") is not None
                assert (ws.conn.extension is not None) == (compression is not None)
                assert ws.request.path == "/tls"
                for message in MESSAGES:
                    await ws.send(message)
                    assert await wait(ws.recv()) == message
            assert ws.close_code == 1000

    run(main())


def test_untrusted_certificate_is_refused(run: Any, server_context: ssl.SSLContext) -> None:
    async def main() -> None:
        async with fastws.serve(echo_handler, "127.0.0.1", 0, ssl=server_context) as server:
            # The default context trusts the system CAs, not our test CA.
            with pytest.raises(ssl.SSLCertVerificationError):
                await fastws.connect(wss_uri(server), open_timeout=IO_TIMEOUT)
            # The server survives the failed handshake.
            assert not server.connections

    run(main())


def test_plain_ws_to_a_tls_server_fails_cleanly(run: Any, server_context: ssl.SSLContext) -> None:
    async def main() -> None:
        async with fastws.serve(echo_handler, "127.0.0.1", 0, ssl=server_context, open_timeout=1) as server:
            port = server.sockets[0].getsockname()[1]
            with pytest.raises((fastws.InvalidHandshake, OSError)):
                await fastws.connect(f"ws://127.0.0.1:{port}/", open_timeout=IO_TIMEOUT)

    run(main())


def test_websockets_client_over_tls_with_compression(
    run: Any, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    async def main() -> None:
        async with fastws.serve(echo_handler, "127.0.0.1", 0, ssl=server_context, compression="deflate", max_size=2**23) as server:
            async with websockets.asyncio.client.connect(
                wss_uri(server), ssl=client_context, compression="deflate", max_size=2**23
            ) as ws:
                assert ws.response.headers["Sec-WebSocket-Extensions"].startswith("permessage-deflate")
                for message in MESSAGES:
                    await ws.send(message)
                    assert await wait(ws.recv()) == message

    run(main())


def test_aiohttp_client_over_tls_with_compression(
    run: Any, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    async def main() -> None:
        async with fastws.serve(echo_handler, "127.0.0.1", 0, ssl=server_context, compression="deflate", max_size=2**23) as server:
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(wss_uri(server), ssl=client_context, compress=15, max_msg_size=2**23) as ws:
                    assert ws.compress
                    for message in MESSAGES:
                        if isinstance(message, str):
                            await ws.send_str(message)
                        else:
                            await ws.send_bytes(message)
                        reply = await wait(ws.receive())
                        assert reply.data == message

    run(main())


def test_fastws_client_with_websockets_server_over_tls(
    run: Any, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    async def echo(ws: Any) -> None:
        async for message in ws:
            await ws.send(message)

    async def main() -> None:
        async with websockets.asyncio.server.serve(
            echo, "127.0.0.1", 0, ssl=server_context, compression="deflate", max_size=2**23
        ) as server:
            uri = f"wss://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
            async with fastws.connect(uri, ssl=client_context, compression="deflate", max_size=2**23) as ws:
                assert ws.conn.extension is not None
                for message in MESSAGES:
                    await ws.send(message)
                    assert await wait(ws.recv()) == message

    run(main())
