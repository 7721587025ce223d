"""``fastws serve --workers N``: processes sharing the port with SO_REUSEPORT, supervised.

Each worker names itself in the ``Fastws-Worker`` response header, so a test can
see which process served a connection."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from typing import Any

import pytest

import fastws
from _serveproc import NEUTRAL_CWD, STARTUP_TIMEOUT, child_env, serving
from _wsutil import IO_TIMEOUT

T = IO_TIMEOUT

pytestmark = pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="--workers needs SO_REUSEPORT")


async def open_and_name_worker(port: int) -> tuple[fastws.WebSocket, int]:
    ws = await fastws.connect(f"ws://127.0.0.1:{port}/", open_timeout=T)
    assert ws.response is not None
    return ws, int(ws.response.headers["Fastws-Worker"])


async def served_by(port: int, count: int) -> list[int]:
    """Open ``count`` connections at once, check each echoes, close them; the worker pid of each."""
    opened = await asyncio.gather(*(open_and_name_worker(port) for _ in range(count)))
    for i, (ws, _) in enumerate(opened):
        await ws.send(f"n{i}")
    for i, (ws, _) in enumerate(opened):
        assert await asyncio.wait_for(ws.recv(), T) == f"n{i}"
    await asyncio.gather(*(ws.close() for ws, _ in opened))
    return [pid for _, pid in opened]


def test_connections_spread_over_two_workers_and_a_killed_worker_is_replaced(run: Any, loop_kind: str) -> None:
    async def main() -> None:
        async with serving("--port", "0", "--workers", "2", "--loop", loop_kind) as server:
            assert "(2 workers," in server.startup_line
            pids = await served_by(server.port, 40)
            workers = set(pids)
            assert len(workers) == 2, f"40 connections all served by {workers}"
            assert server.proc.pid not in workers, "the supervisor itself serves nothing"

            victim = pids[0]
            os.kill(victim, signal.SIGKILL)
            # Connections that reach a dying worker's accept queue are reset with it: wait until it is gone.
            await asyncio.to_thread(server.wait_for_error_output, f"worker {victim} exited with status -9")
            # The port stays served: every connection now reaches the survivor or a replacement.
            survivors = set(await served_by(server.port, 20))
            assert victim not in survivors and survivors
            # The supervisor starts a replacement (after a second: the victim died young);
            # new connections find it.
            replacement: set[int] = set()
            deadline = asyncio.get_running_loop().time() + T
            while not replacement and asyncio.get_running_loop().time() < deadline:
                replacement = set(await served_by(server.port, 10)) - workers
            assert len(replacement) == 1, "no replacement worker served a connection"

            assert await asyncio.to_thread(server.stop) == 0
            assert "Traceback" not in server.errors()

    run(main(), timeout=90)


def test_sigterm_closes_connections_on_every_worker_with_1001(run: Any, loop_kind: str) -> None:
    async def main() -> None:
        async with serving("--port", "0", "--workers", "2", "--loop", loop_kind) as server:
            opened = await asyncio.gather(*(open_and_name_worker(server.port) for _ in range(16)))
            assert len({pid for _, pid in opened}) == 2
            status = asyncio.ensure_future(asyncio.to_thread(server.stop, signal.SIGTERM))
            for ws, _ in opened:
                with pytest.raises(fastws.ConnectionClosedOK) as info:
                    await asyncio.wait_for(ws.recv(), T)
                assert info.value.code == 1001
            assert await status == 0
            for pid in {pid for _, pid in opened}:
                with pytest.raises(ProcessLookupError):
                    os.kill(pid, 0)  # reaped by the supervisor before it exited

    run(main(), timeout=60)


def test_workers_stop_by_themselves_when_the_supervisor_is_killed(run: Any, loop_kind: str) -> None:
    async def main() -> None:
        async with serving("--port", "0", "--workers", "2", "--loop", loop_kind) as server:
            opened = await asyncio.gather(*(open_and_name_worker(server.port) for _ in range(16)))
            server.proc.kill()
            for ws, _ in opened:
                with pytest.raises(fastws.ConnectionClosedOK) as info:
                    await asyncio.wait_for(ws.recv(), T)
                assert info.value.code == 1001
            with pytest.raises(OSError):
                await fastws.connect(f"ws://127.0.0.1:{server.port}/", open_timeout=T)

    run(main(), timeout=60)


def test_port_in_use_with_workers_exits_2_with_one_line_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "fastws", "serve", "--port", str(port), "--workers", "2"],
            capture_output=True, text=True, timeout=STARTUP_TIMEOUT, env=child_env(), cwd=NEUTRAL_CWD,
        )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastws: error:") and str(port) in lines[0], result.stderr
    assert result.stdout == ""
