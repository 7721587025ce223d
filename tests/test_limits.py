"""Limits and backpressure: fragments per message, the receive queue, the write buffer, slow readers."""

from __future__ import annotations

import asyncio
import socket
import time
import tracemalloc
from typing import Any

import fastws
from _wsutil import IO_TIMEOUT, RawClient, build_frame, echo_server, until, upgrade_request

MESSAGE = 2**20
VOLUME = 2**30  # what the producer sends to the slow reader


async def wait(aw: Any, timeout: float = IO_TIMEOUT) -> Any:
    return await asyncio.wait_for(aw, timeout)


def test_too_many_fragments_is_1009(run: Any) -> None:
    async def main() -> None:
        async with echo_server(max_fragments=10) as server:
            client = await RawClient.connect(server.sockets[0].getsockname()[1])
            client.send(build_frame(1, b"a", fin=False) + b"".join(build_frame(0, b"a", fin=False) for _ in range(10)))
            frame = await client.expect_close()
            assert frame.close_code == 1009 and "fragments" in frame.close_reason

    run(main())


def test_default_fragment_cap_admits_65536_fragments(run: Any) -> None:
    async def main() -> None:
        async with echo_server() as server:
            client = await RawClient.connect(server.sockets[0].getsockname()[1])
            frames = [build_frame(2, b"x", fin=False)] + [build_frame(0, b"x", fin=False)] * 65534 + [build_frame(0, b"x")]
            client.send(b"".join(frames))
            echoed = await client.read_frame()
            assert echoed.opcode == 2 and echoed.payload == b"x" * 65536
            client.close()

    run(main())


def test_write_limit_sets_the_transport_water_marks(run: Any) -> None:
    async def main() -> None:
        async with echo_server(write_limit=(40_000, 10_000)) as server:
            async with fastws.connect(f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/", write_limit=8192) as ws:
                conn = next(iter(server.connections))
                assert conn.transport.get_write_buffer_limits() == (10_000, 40_000)
                assert ws.conn.transport.get_write_buffer_limits() == (2048, 8192)

    run(main())


def test_max_queue_stops_reading_from_a_flooding_client(run: Any) -> None:
    async def main() -> None:
        reading = asyncio.Event()
        received: list[Any] = []
        queues: list[fastws.WebSocket] = []

        async def lazy(ws: fastws.WebSocket) -> None:
            queues.append(ws)
            await reading.wait()
            async for message in ws:
                received.append(message)

        async with fastws.serve(lazy, "127.0.0.1", 0, max_queue=4) as server:
            async with fastws.connect(f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/") as client:
                messages = [str(i).encode() * (2**14 // len(str(i))) for i in range(200)]
                for message in messages:
                    await client.send(message)
                ws = queues[0]
                await until(lambda: not ws.conn.transport.is_reading())
                # Reading stops at max_queue; what one read of the event loop (at most
                # 256 KiB) already carried is parsed too. The rest waits in kernel buffers.
                queued = sum(len(m) for m in ws._messages)
                assert len(ws._messages) >= 4 and queued <= 4 * 2**14 + 2**18, queued
                reading.set()
                await until(lambda: len(received) == 200)
                assert received == messages

    run(main())


def test_slow_reader_keeps_server_memory_bounded(run: Any) -> None:
    """A producer sends 1 GiB to a reader that first reads nothing, then reads it all.

    Bound: what the server holds for the connection (transport write buffer)
    never exceeds write_limit plus one message, and Python allocations stay small.
    """
    payload = bytes(MESSAGE)
    write_limit = 2**16

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        conns: list[Any] = []

        async def producer(ws: fastws.WebSocket) -> None:
            conns.append(ws.conn)
            for _ in range(VOLUME // MESSAGE):
                await ws.send(payload)
            done.set_result(time.monotonic())

        async with fastws.serve(producer, "127.0.0.1", 0, write_limit=write_limit) as server:
            sock = socket.create_connection(server.sockets[0].getsockname()[:2])
            sock.setblocking(False)
            await loop.sock_sendall(sock, upgrade_request())
            buffer = bytearray(4 * 2**20)
            view = memoryview(buffer)
            head = b""
            while b"\r\n\r\n" not in head:
                n = await wait(loop.sock_recv_into(sock, view))
                assert n
                head += bytes(view[:n])
            received = len(head) - head.index(b"\r\n\r\n") - 4
            await until(lambda: bool(conns) and conns[0].writing_paused)
            conn = conns[0]
            # Phase 1: nobody reads. The producer is parked in send(); the server holds little.
            parked = conn.transport.get_write_buffer_size()
            assert not done.done()
            assert parked <= write_limit + MESSAGE + 14, parked

            # Phase 2: read everything as fast as possible, sampling what the server holds.
            peak = parked
            tracemalloc.start()
            started = time.monotonic()
            try:
                expected = (VOLUME // MESSAGE) * (MESSAGE + 10)
                while received < expected:
                    n = await wait(loop.sock_recv_into(sock, view))
                    assert n, "connection closed early"
                    received += n
                    peak = max(peak, conn.transport.get_write_buffer_size())
                _, traced_peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            elapsed = time.monotonic() - started
            await wait(done)
            sock.close()
            assert received >= expected
            assert peak <= write_limit + MESSAGE + 14, peak
            assert traced_peak < 16 * 2**20, traced_peak
            print(f"1 GiB to a slow reader in {elapsed:.2f} s; peak server write buffer {peak} B, traced peak {traced_peak} B")

    run(main(), timeout=60)
