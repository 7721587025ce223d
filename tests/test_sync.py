"""``fastws.sync``: the blocking client, used from threads while a fastws server runs on the
test's event loop: echo from 8 threads at once (8 connections, and 8 threads on one),
``recv`` timeouts that lose nothing, close codes, errors, pings, back-pressure, proxies."""

from __future__ import annotations

import asyncio
import collections
import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest

import fastws
import fastws.sync
from _proxies import pproxy
from _wsutil import IO_TIMEOUT, echo_handler, uri_of

T = IO_TIMEOUT


def in_thread(function: Callable[..., Any], *args: Any) -> Any:
    """Run blocking client code off the loop that serves it."""
    return asyncio.wait_for(asyncio.to_thread(function, *args), T)


def test_eight_threads_each_with_a_connection(run: Any) -> None:
    def client(uri: str, n: int) -> list[str | bytes]:
        got: list[str | bytes] = []
        with fastws.sync.connect(uri, open_timeout=T) as ws:
            for i in range(50):
                message: str | bytes = f"{n}:{i}" if i % 2 else bytes([n, i]) * 1000
                ws.send(message)
                got.append(ws.recv(timeout=T))
                assert got[-1] == message
        assert ws.close_code == 1000
        return got

    async def main() -> None:
        async with fastws.serve(echo_handler, "127.0.0.1", 0) as server:
            results = await asyncio.gather(*(in_thread(client, uri_of(server), n) for n in range(8)))
        assert [len(r) for r in results] == [50] * 8

    run(main())


def test_eight_threads_send_on_one_connection(run: Any) -> None:
    """Messages sent from 8 threads at once arrive whole, each once, each thread's in order."""

    def senders_and_reader(uri: str) -> dict[str, list[int]]:
        with fastws.sync.connect(uri, open_timeout=T) as ws:
            start = threading.Barrier(8)

            def sender(n: int) -> None:
                start.wait(T)
                for i in range(200):
                    ws.send(f"{n}:{i}:" + "x" * (i * 37 % 3000))

            threads = [threading.Thread(target=sender, args=(n,)) for n in range(8)]
            for thread in threads:
                thread.start()
            seen: dict[str, list[int]] = collections.defaultdict(list)
            for _ in range(8 * 200):
                message = ws.recv(timeout=T)
                assert isinstance(message, str)
                n, i, padding = message.split(":")
                assert padding == "x" * (int(i) * 37 % 3000)
                seen[n].append(int(i))
            for thread in threads:
                thread.join(T)
                assert not thread.is_alive()
        return seen

    async def main() -> None:
        async with fastws.serve(echo_handler, "127.0.0.1", 0) as server:
            seen = await in_thread(senders_and_reader, uri_of(server))
        assert seen == {str(n): list(range(200)) for n in range(8)}

    run(main())


def test_recv_timeout_loses_nothing(run: Any) -> None:
    async def main() -> None:
        release = asyncio.Event()

        async def handler(ws: fastws.WebSocket) -> None:
            await release.wait()
            await ws.send("late")
            await ws.wait_closed()

        async with fastws.serve(handler, "127.0.0.1", 0) as server:
            ws = await in_thread(fastws.sync.connect, uri_of(server))
            for timeout in (0, 0.01, 0.05):
                with pytest.raises(TimeoutError):
                    await in_thread(ws.recv, timeout)
            release.set()
            assert await in_thread(ws.recv, T) == "late"
            await in_thread(ws.close)

    run(main())


@pytest.mark.parametrize(
    ("code", "reason", "error"),
    [(1000, "", fastws.ConnectionClosedOK), (1001, "going", fastws.ConnectionClosedOK), (4002, "nope", fastws.ConnectionClosedError)],
)
def test_server_closes(run: Any, code: int, reason: str, error: type[Exception]) -> None:
    async def handler(ws: fastws.WebSocket) -> None:
        await ws.send("last words")
        await ws.close(code, reason)

    def client(uri: str) -> None:
        ws = fastws.sync.connect(uri)
        if error is fastws.ConnectionClosedOK:
            assert list(ws) == ["last words"]  # iteration ends quietly on 1000 and 1001
        else:
            assert ws.recv(timeout=T) == "last words"
        with pytest.raises(error) as caught:
            ws.recv(timeout=T)
        assert (caught.value.code, caught.value.reason) == (code, reason)  # type: ignore[attr-defined]
        assert (ws.close_code, ws.close_reason) == (code, reason)
        with pytest.raises(error):
            ws.send("too late")
        with pytest.raises(error):
            ws.ping()
        ws.close()  # closing a closed connection does nothing

    async def main() -> None:
        async with fastws.serve(handler, "127.0.0.1", 0) as server:
            await in_thread(client, uri_of(server))

    run(main())


def test_client_closes_with_code_and_reason(run: Any) -> None:
    async def main() -> None:
        seen: asyncio.Future[tuple[int | None, str | None]] = asyncio.get_running_loop().create_future()

        async def handler(ws: fastws.WebSocket) -> None:
            with pytest.raises(fastws.ConnectionClosedError):  # 4100 is no normal closure
                async for message in ws:
                    await ws.send(message)
            seen.set_result((ws.close_code, ws.close_reason))

        def client(uri: str) -> None:
            ws = fastws.sync.connect(uri)
            assert ws.close_code is None and ws.close_reason is None
            assert ws.remote_address[0] == "127.0.0.1" and ws.response is not None and ws.response.status == 101
            rtt = ws.ping(b"p").result(T)
            assert 0 <= rtt < T
            ws.send(b"bytes")
            assert ws.recv(timeout=T) == b"bytes"
            ws.close(4100, "done here")
            assert ws.close_code == 4100  # as the server echoed it (its reason is its own: none)
            with pytest.raises(fastws.ConnectionClosedError):
                ws.recv(timeout=T)

        async with fastws.serve(handler, "127.0.0.1", 0) as server:
            await in_thread(client, uri_of(server))
            assert await asyncio.wait_for(seen, T) == (4100, "done here")

    run(main())


def test_back_pressure_with_a_small_queue(run: Any) -> None:
    async def handler(ws: fastws.WebSocket) -> None:
        for i in range(500):
            await ws.send(f"{i:04d}" * 100)
        await ws.close()

    def client(uri: str) -> list[str | bytes]:
        with fastws.sync.connect(uri, max_queue=4) as ws:
            return list(ws)

    async def main() -> None:
        async with fastws.serve(handler, "127.0.0.1", 0) as server:
            assert await in_thread(client, uri_of(server)) == [f"{i:04d}" * 100 for i in range(500)]

    run(main())


def test_errors_are_those_of_the_async_client(run: Any) -> None:
    async def refuse(request: fastws.Request) -> fastws.Response | None:
        return fastws.Response(403, body=b"no")

    def client(good: str, refusing: str, refused_port: int, silent_port: int) -> None:
        with pytest.raises(fastws.InvalidURI):
            fastws.sync.connect("http://example.com/")
        with pytest.raises(fastws.InvalidResponse) as caught:
            fastws.sync.connect(refusing)
        assert caught.value.status == 403
        with pytest.raises(ConnectionRefusedError):
            fastws.sync.connect(f"ws://127.0.0.1:{refused_port}/")
        with pytest.raises(fastws.OpenTimeout):
            fastws.sync.connect(f"ws://127.0.0.1:{silent_port}/", open_timeout=0.2)
        with pytest.raises(fastws.ProxyError):
            fastws.sync.connect(good, proxy=f"http://127.0.0.1:{refused_port}")
        with fastws.sync.connect(good) as ws:
            with pytest.raises(TypeError):
                ws.send(42)  # type: ignore[arg-type]
            ws.send("still fine")
            assert ws.recv(timeout=T) == "still fine"

    async def main() -> None:
        with socket.socket() as refused, socket.socket() as silent:
            refused.bind(("127.0.0.1", 0))  # bound, not listening: refuses
            silent.bind(("127.0.0.1", 0))
            silent.listen(4)  # accepts in the kernel, never answers
            async with fastws.serve(echo_handler, "127.0.0.1", 0) as good, fastws.serve(echo_handler, "127.0.0.1", 0, process_request=refuse) as no:
                await in_thread(client, uri_of(good), uri_of(no), refused.getsockname()[1], silent.getsockname()[1])

    run(main())


def test_through_a_socks_proxy(run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    with pproxy("socks5://127.0.0.1:0", "http://127.0.0.1:0") as proxies:

        def client(uri: str) -> None:
            with fastws.sync.connect(uri, proxy=f"socks5://127.0.0.1:{proxies.ports[0]}") as ws:
                ws.send("via socks")
                assert ws.recv(timeout=T) == "via socks"
            monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxies.ports[1]}")
            with fastws.sync.connect(uri) as ws:
                ws.send("via http")
                assert ws.recv(timeout=T) == "via http"

        async def main() -> None:
            async with fastws.serve(echo_handler, "127.0.0.1", 0) as server:
                await in_thread(client, uri_of(server))
                target = uri_of(server).removeprefix("ws://").rstrip("/")
                assert [line.split(" ")[0] for line in proxies.log().splitlines() if line.endswith(target)] == ["socks5", "http"]

        run(main())
