"""``async for ws in fastws.connect(...)``: reconnection with backoff and jitter, what stops
it, what it logs, and a real server process killed and started again under it."""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import socket
import time
from typing import Any

import pytest

import fastws
from _serveproc import ServeProcess
from _wsutil import IO_TIMEOUT, echo_handler, scaled

T = IO_TIMEOUT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RetryLog(logging.Handler):
    """Collects fastws.client's retry messages; ``wait_for(n)`` until n arrived."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []
        self.changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self.changed.set()

    async def wait_for(self, count: int) -> None:
        while len(self.messages) < count:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), T)

    def delays(self) -> list[float]:
        return [float(m) for m in re.findall(r"(?:retrying|reconnecting) in ([0-9.]+) s", "\n".join(self.messages))]


@pytest.fixture
def retry_log() -> Any:
    handler = RetryLog()
    client_logger = logging.getLogger("fastws.client")
    client_logger.addHandler(handler)
    level = client_logger.level
    client_logger.setLevel(logging.INFO)
    yield handler
    client_logger.removeHandler(handler)
    client_logger.setLevel(level)


def test_reconnects_after_server_restart_and_loses_nothing(run: Any, retry_log: RetryLog) -> None:
    backoff_max = 0.4

    async def main() -> None:
        received: list[Any] = []

        async def recording_echo(ws: fastws.WebSocket) -> None:
            async for message in ws:
                received.append(message)
                await ws.send(message)

        server = await fastws.serve(recording_echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        connections: list[fastws.WebSocket] = []
        back_at: list[float] = []
        restarted_at = 0.0

        async def restart_after_failed_attempts() -> None:
            nonlocal server, restarted_at
            await retry_log.wait_for(3)  # "reconnecting", then two refused attempts
            server = await fastws.serve(recording_echo, "127.0.0.1", port)
            restarted_at = time.monotonic()

        async for ws in fastws.connect(f"ws://127.0.0.1:{port}/", backoff_initial=0.05, backoff_max=backoff_max):
            connections.append(ws)
            if len(connections) == 1:
                await ws.send("before")
                assert await asyncio.wait_for(ws.recv(), T) == "before"
                server.close()  # 1001 to the client, and nothing listens any more
                await server.wait_closed()
                with pytest.raises(fastws.ConnectionClosedOK):
                    await asyncio.wait_for(ws.recv(), T)
                restarter = asyncio.create_task(restart_after_failed_attempts())
                continue
            await restarter
            back_at.append(time.monotonic())
            messages = [f"after {i}" for i in range(200)] + [b"\x00bin\xff"]
            for message in messages:
                await ws.send(message)
            echoed = [await asyncio.wait_for(ws.recv(), T) for _ in messages]
            assert echoed == messages
            break
        await connections[-1].close()
        server.close()
        await server.wait_closed()
        assert len(connections) == 2
        assert connections[0].close_code == 1001
        assert back_at[0] - restarted_at < backoff_max + scaled(1.0), "the client must be back within the backoff bound"
        assert received == ["before"] + messages
        assert all(d <= backoff_max for d in retry_log.delays())

    run(main())


def test_delays_grow_by_the_factor_up_to_the_maximum_with_jitter(run: Any, retry_log: RetryLog) -> None:
    async def main() -> None:
        port = free_port()  # nothing listens there: connection refused
        initial, factor, maximum = 0.01, 2.0, 0.04
        iterator = fastws.connect(
            f"ws://127.0.0.1:{port}/", backoff_initial=initial, backoff_factor=factor, backoff_max=maximum
        ).__aiter__()
        first = asyncio.ensure_future(iterator.__anext__())
        await retry_log.wait_for(6)
        async with fastws.serve(echo_handler, "127.0.0.1", port):
            ws = await asyncio.wait_for(first, T)
            await ws.send("hi")
            assert await asyncio.wait_for(ws.recv(), T) == "hi"
            await iterator.aclose()  # type: ignore[attr-defined]
            assert ws.close_code == 1000, "closing the iterator closes its connection"
        assert all("Connection refused" in m or "Errno" in m for m in retry_log.messages[:6]), retry_log.messages
        ceilings = [min(maximum, initial * factor**i) for i in range(6)]
        for delay, ceiling in zip(retry_log.delays(), ceilings, strict=False):
            assert ceiling / 2 - 0.005 <= delay <= ceiling + 0.005, (retry_log.delays(), ceilings)

    run(main())


def test_close_1008_ends_the_iteration(run: Any) -> None:
    async def main() -> None:
        accepted = 0

        async def refuse(ws: fastws.WebSocket) -> None:
            nonlocal accepted
            accepted += 1
            await ws.close(1008, "go away")

        async with fastws.serve(refuse, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            seen = []
            async for ws in fastws.connect(f"ws://127.0.0.1:{port}/", backoff_initial=0.01):
                try:
                    await asyncio.wait_for(ws.recv(), T)
                except fastws.ConnectionClosedError as exc:
                    seen.append(exc.code)
                    continue
        assert seen == [1008]
        assert accepted == 1

    run(main())


@pytest.mark.parametrize("status", [400, 403, 404])
def test_4xx_answer_is_raised_without_retrying(run: Any, status: int) -> None:
    async def main() -> None:
        requests = 0

        def refuse(request: fastws.Request) -> fastws.Response:
            nonlocal requests
            requests += 1
            return fastws.Response(status, body=b"no\n")

        async with fastws.serve(echo_handler, "127.0.0.1", 0, process_request=refuse) as server:
            port = server.sockets[0].getsockname()[1]
            with pytest.raises(fastws.InvalidResponse) as info:
                async for _ in fastws.connect(f"ws://127.0.0.1:{port}/", backoff_initial=0.01):
                    raise AssertionError("no connection expected")
        assert info.value.status == status
        assert requests == 1

    run(main())


def test_429_and_5xx_answers_are_retried_and_logged(run: Any, retry_log: RetryLog) -> None:
    async def main() -> None:
        answers = [503, 429, 500]

        def flaky(request: fastws.Request) -> fastws.Response | None:
            return fastws.Response(answers.pop(0)) if answers else None

        async with fastws.serve(echo_handler, "127.0.0.1", 0, process_request=flaky) as server:
            port = server.sockets[0].getsockname()[1]
            async for ws in fastws.connect(f"ws://127.0.0.1:{port}/", backoff_initial=0.01, backoff_max=0.02):
                await ws.send("through")
                assert await asyncio.wait_for(ws.recv(), T) == "through"
                break
            await ws.close()
        assert answers == []
        statuses = [int(s) for s in re.findall(r"HTTP (\d{3})", "\n".join(retry_log.messages))]
        assert statuses == [503, 429, 500], retry_log.messages

    run(main())


def test_bad_uri_is_raised_at_once(run: Any) -> None:
    async def main() -> None:
        with pytest.raises(fastws.InvalidURI):
            async for _ in fastws.connect("http://127.0.0.1:1/"):
                raise AssertionError("no connection expected")

    run(main())


def test_backoff_settings_are_checked() -> None:
    for bad in ({"backoff_initial": 0}, {"backoff_initial": 2.0, "backoff_max": 1.0}, {"backoff_factor": 0.5}):
        with pytest.raises(ValueError):
            fastws.connect("ws://127.0.0.1:1/", **bad)


def test_survives_a_killed_server_process(run: Any, loop_kind: str) -> None:
    """SIGKILL (no closing handshake, 1006), then a new process on the same port."""
    backoff_max = 0.5

    async def main() -> None:
        server = await asyncio.to_thread(ServeProcess, "--port", "0", "--loop", loop_kind)
        port = server.port
        restarted_at = 0.0

        async def start_again() -> None:
            nonlocal server, restarted_at
            await asyncio.to_thread(server.proc.wait)
            server = await asyncio.to_thread(ServeProcess, "--port", str(port), "--loop", loop_kind)
            restarted_at = time.monotonic()

        try:
            rounds = 0
            async for ws in fastws.connect(f"ws://127.0.0.1:{port}/", backoff_initial=0.05, backoff_max=backoff_max):
                rounds += 1
                if rounds == 1:
                    await ws.send("first life")
                    assert await asyncio.wait_for(ws.recv(), T) == "first life"
                    server.proc.send_signal(signal.SIGKILL)
                    with pytest.raises(fastws.ConnectionClosedError) as info:
                        await asyncio.wait_for(ws.recv(), T)
                    assert info.value.code == 1006
                    restarter = asyncio.create_task(start_again())  # the client retries meanwhile
                    continue
                await restarter
                assert time.monotonic() - restarted_at < backoff_max + scaled(1.0)
                messages = [f"second life {i}" for i in range(100)]
                for message in messages:
                    await ws.send(message)
                assert [await asyncio.wait_for(ws.recv(), T) for _ in messages] == messages
                break
            await ws.close()
            assert rounds == 2
        finally:
            await asyncio.to_thread(server.__exit__)

    run(main(), timeout=60)
