"""Graceful shutdown: server.close() sends 1001 to everyone, waits close_timeout, aborts the rest."""

from __future__ import annotations

import asyncio
import resource
import time
from typing import Any

import pytest

import fastws
from _wsutil import IO_TIMEOUT, RawClient, echo_server, scaled

CLIENTS = 1000


@pytest.fixture
def enough_file_descriptors() -> Any:
    """Both ends of CLIENTS connections live in this process: raise the soft fd limit if needed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * CLIENTS + 200
    if soft != resource.RLIM_INFINITY and soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below the {wanted} descriptors this test needs")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_close_delivers_1001_to_1000_clients(run: Any, enough_file_descriptors: Any) -> None:
    async def main() -> None:
        handlers_done = 0

        async def handler(ws: fastws.WebSocket) -> None:
            nonlocal handlers_done
            try:
                async for message in ws:
                    await ws.send(message)
            finally:
                handlers_done += 1

        close_timeout = scaled(5)
        server = await fastws.serve(handler, "127.0.0.1", 0, backlog=CLIENTS, close_timeout=close_timeout)
        port = server.sockets[0].getsockname()[1]
        clients: list[fastws.WebSocket] = []
        for start in range(0, CLIENTS, 100):  # 100 handshakes in flight at a time
            clients += await asyncio.gather(
                *(fastws.connect(f"ws://127.0.0.1:{port}/", open_timeout=IO_TIMEOUT) for _ in range(start, start + 100))
            )
        assert len(server.connections) == CLIENTS
        started = time.monotonic()
        server.close()
        await asyncio.wait_for(server.wait_closed(), IO_TIMEOUT)
        elapsed = time.monotonic() - started
        await asyncio.wait_for(asyncio.gather(*(ws.wait_closed() for ws in clients)), IO_TIMEOUT)
        codes = {ws.close_code for ws in clients}
        reasons = {ws.close_reason for ws in clients}
        assert codes == {1001} and reasons == {"server shutting down"}
        assert handlers_done == CLIENTS and not server.connections
        # Everyone answered the closing handshake: nobody waited for close_timeout.
        assert elapsed < close_timeout, elapsed

    run(main(), timeout=60)


def test_unresponsive_client_is_aborted_after_close_timeout(run: Any) -> None:
    async def main() -> None:
        close_timeout = 0.3
        async with echo_server(close_timeout=close_timeout) as server:
            port = server.sockets[0].getsockname()[1]
            deaf = await RawClient.connect(port)  # reads, never answers the close frame
            polite = await fastws.connect(f"ws://127.0.0.1:{port}/")
            started = time.monotonic()
            server.close()
            frame = await deaf.read_frame()
            assert frame.opcode == 8 and frame.close_code == 1001
            await asyncio.wait_for(server.wait_closed(), IO_TIMEOUT)
            elapsed = time.monotonic() - started
            assert close_timeout - 0.05 <= elapsed <= close_timeout + scaled(1.0), elapsed
            assert await deaf.read_all_until_eof() == b""
            await polite.wait_closed()
            assert polite.close_code == 1001

    run(main())


def test_connections_arriving_during_shutdown_are_refused(run: Any) -> None:
    async def main() -> None:
        async with echo_server() as server:
            port = server.sockets[0].getsockname()[1]
            async with fastws.connect(f"ws://127.0.0.1:{port}/") as ws:
                server.close()
                with pytest.raises(fastws.ConnectionClosedOK) as info:
                    await asyncio.wait_for(ws.recv(), IO_TIMEOUT)
                assert info.value.code == 1001
                await asyncio.wait_for(server.wait_closed(), IO_TIMEOUT)
                with pytest.raises(OSError):
                    await fastws.connect(f"ws://127.0.0.1:{port}/", open_timeout=IO_TIMEOUT)

    run(main())
