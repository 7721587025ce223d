"""Keepalive: ping_interval / ping_timeout on both sides; any inbound data counts as liveness."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import fastws
from _wsutil import IO_TIMEOUT, RawClient, accept_upgrade, build_frame, echo_server, raw_server, scaled

# The keepalive settings under test are scaled too: a peer that sends every
# TIMEOUT / 4 must look alive to the server even when a busy machine delays it.
INTERVAL = scaled(0.2)
TIMEOUT = scaled(0.2)
SLACK = scaled(0.5)  # timers on a loaded 2-vCPU CI machine


async def wait(aw: Any, timeout: float = IO_TIMEOUT) -> Any:
    return await asyncio.wait_for(aw, timeout)


def test_silent_client_is_closed_with_1011(run: Any) -> None:
    """A client that never answers pings (nor sends anything) is dropped within interval + timeout."""

    async def main() -> None:
        async with echo_server(ping_interval=INTERVAL, ping_timeout=TIMEOUT, close_timeout=0.5) as server:
            started = time.monotonic()  # before the server can start its timer: a safe lower bound
            client = await RawClient.connect(server.sockets[0].getsockname()[1])
            ping = await client.read_frame()
            assert ping.opcode == 9
            frame = await client.read_frame()
            elapsed = time.monotonic() - started
            assert frame.opcode == 8 and frame.close_code == 1011
            assert frame.close_reason == "keepalive ping timeout"
            assert INTERVAL + TIMEOUT - 0.05 <= elapsed <= INTERVAL + TIMEOUT + SLACK, elapsed
            # The server does not wait for our close frame: TCP goes away (at once or at close_timeout).
            assert await wait(client.read_all_until_eof()) == b""
            assert not server.connections

    run(main())


def test_answering_client_stays_connected(run: Any) -> None:
    async def main() -> None:
        async with echo_server(ping_interval=INTERVAL, ping_timeout=TIMEOUT) as server:
            async with fastws.connect(f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/", ping_interval=None) as ws:
                conn = next(iter(server.connections))
                pongs: list[bytes] = []
                conn.listener.on_pong = lambda c, payload: pongs.append(payload)  # type: ignore[method-assign]
                deadline = asyncio.get_running_loop().time() + 3 * (INTERVAL + TIMEOUT)
                while asyncio.get_running_loop().time() < deadline:
                    await ws.send("still here")
                    assert await wait(ws.recv()) == "still here"
                    await asyncio.sleep(INTERVAL / 2)  # pacing, not synchronisation
                assert conn.state == fastws.connection.OPEN
                assert len(pongs) >= 2  # the client's core answered the keepalive pings

    run(main())


def test_data_without_pongs_counts_as_liveness(run: Any) -> None:
    """A peer busy sending data is alive even if its pongs are stuck behind that data."""

    async def main() -> None:
        async with echo_server(ping_interval=INTERVAL, ping_timeout=TIMEOUT) as server:
            client = await RawClient.connect(server.sockets[0].getsockname()[1])
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 3 * (INTERVAL + TIMEOUT)
            pings = 0
            while loop.time() < deadline:
                client.send(build_frame(1, b"busy"))  # never a pong
                frame = await client.read_frame()
                if frame.opcode == 9:
                    pings += 1
                    frame = await client.read_frame()
                assert frame.opcode == 1 and frame.payload == b"busy", frame
                await asyncio.sleep(TIMEOUT / 4)
            assert pings >= 2
            conn = next(iter(server.connections))
            assert conn.state == fastws.connection.OPEN
            client.close()

    run(main())


def test_client_detects_a_silent_server(run: Any) -> None:
    """Half-open from the client's side: the server accepted, then went quiet."""
    held: list[RawClient] = []

    async def silent(peer: RawClient) -> None:
        await accept_upgrade(peer)
        held.append(peer)
        await peer.read_all_until_eof()

    async def main() -> None:
        async with raw_server(silent) as port:
            ws = await fastws.connect(f"ws://127.0.0.1:{port}/", ping_interval=INTERVAL, ping_timeout=TIMEOUT, close_timeout=0.3)
            started = time.monotonic()
            try:
                await wait(ws.recv())
            except fastws.ConnectionClosedError as exc:
                assert exc.code == 1011 and exc.reason == "keepalive ping timeout"
            else:
                raise AssertionError("recv() returned on a silent connection")
            assert time.monotonic() - started <= INTERVAL + TIMEOUT + 0.3 + SLACK
            assert ws.close_code == 1011

    run(main())


def test_keepalive_can_be_disabled(run: Any) -> None:
    async def main() -> None:
        async with echo_server(ping_interval=None) as server:
            client = await RawClient.connect(server.sockets[0].getsockname()[1])
            client.send(build_frame(9, b"probe"))
            # Within 3 intervals, the only frame we get is the pong to our own ping.
            frame = await client.read_frame()
            assert frame.opcode == 10 and frame.payload == b"probe"
            try:
                frame = await asyncio.wait_for(client.read_frame(), 3 * INTERVAL)
            except TimeoutError:
                pass
            else:
                raise AssertionError(f"unexpected frame with keepalive off: {frame}")
            conn = next(iter(server.connections))
            assert conn._keepalive_handle is None
            client.close()

    run(main())


def test_defaults_are_20_seconds(run: Any) -> None:
    async def main() -> None:
        async with echo_server() as server:
            async with fastws.connect(f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/") as ws:
                conn = next(iter(server.connections))
                assert (conn.ping_interval, conn.ping_timeout) == (20.0, 20.0)
                assert (ws.conn.ping_interval, ws.conn.ping_timeout) == (20.0, 20.0)

    run(main())
