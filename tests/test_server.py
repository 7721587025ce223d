"""The asyncio server: ``fastws.serve`` handlers, closing, back-pressure, process_request,
and the low-level ``create_server`` / ``Listener`` / ``broadcast`` API. Both event loops."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

import fastws
from _wsutil import (
    IO_TIMEOUT,
    RawClient,
    build_frame,
    close_payload,
    echo_server,
    port_of,
    uri_of,
)

T = IO_TIMEOUT


async def wait(aw: Any) -> Any:
    return await asyncio.wait_for(aw, T)


# -- messages -------------------------------------------------------------------------------


def test_text_arrives_as_str_and_binary_as_bytes(run: Any) -> None:
    async def main() -> None:
        received: list[Any] = []

        async def handler(ws: fastws.WebSocket) -> None:
            async for message in ws:
                received.append(message)
                await ws.send(message)

        async with fastws.serve(handler, "127.0.0.1", 0) as server:
            async with fastws.connect(uri_of(server)) as ws:
                for message in ["héllo €", b"\x00\xff\x10", "", b""]:
                    await ws.send(message)
                    echoed = await wait(ws.recv())
                    assert type(echoed) is type(message) and echoed == message
        assert received == ["héllo €", b"\x00\xff\x10", "", b""]
        assert [type(m) for m in received] == [str, bytes, str, bytes]

    run(main())


def test_async_for_ends_quietly_on_close_1000(run: Any) -> None:
    async def main() -> None:
        result: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def handler(ws: fastws.WebSocket) -> None:
            messages = [m async for m in ws]
            result.set_result((messages, ws.close_code, ws.close_reason))

        async with fastws.serve(handler, "127.0.0.1", 0) as server:
            ws = await fastws.connect(uri_of(server))
            for i in range(3):
                await ws.send(f"m{i}")
            await wait(ws.close(1000, "done"))
            assert ws.close_code == 1000
            assert await wait(result) == (["m0", "m1", "m2"], 1000, "done")

    run(main())


def test_request_path_headers_and_remote_address(run: Any) -> None:
    async def main() -> None:
        seen: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def handler(ws: fastws.WebSocket) -> None:
            seen.set_result((ws.request.method, ws.request.path, ws.request.headers.get("X-Token"),
                             ws.request.headers.get("origin"), ws.request.headers.get("User-Agent"), ws.remote_address))
            await ws.recv()

        async with fastws.serve(handler, "127.0.0.1", 0) as server:
            async with fastws.connect(uri_of(server, "/chat/room?id=7&x=%20"), extra_headers=[("X-Token", "abc")],
                                      origin="https://app.example", user_agent="tester/1") as ws:
                method, path, token, origin, agent, remote = await wait(seen)
                assert method == "GET"
                assert path == "/chat/room?id=7&x=%20"
                assert token == "abc"
                assert origin == "https://app.example"
                assert agent == "tester/1"
                assert remote[0] == "127.0.0.1"
                assert remote[1] == ws.conn.transport.get_extra_info("sockname")[1]  # type: ignore[union-attr]

    run(main())


@pytest.mark.parametrize(
    "server_protocols, client_protocols, expected",
    [(["v2", "v1"], ["v1", "v2"], "v2"), (["v1"], ["v1", "v2"], "v1"), (["v3"], ["v1"], None), ([], ["v1"], None), (["v1"], [], None)],
)
def test_subprotocol_negotiation(run: Any, server_protocols: list[str], client_protocols: list[str], expected: str | None) -> None:
    async def main() -> None:
        async def handler(ws: fastws.WebSocket) -> None:
            await ws.send(repr(ws.subprotocol))

        async with fastws.serve(handler, "127.0.0.1", 0, subprotocols=server_protocols) as server:
            async with fastws.connect(uri_of(server), subprotocols=client_protocols) as ws:
                assert ws.subprotocol == expected
                assert await wait(ws.recv()) == repr(expected)

    run(main())


def test_select_subprotocol_callback(run: Any) -> None:
    async def main() -> None:
        def select(request: fastws.Request, offered: list[str]) -> str | None:
            return "b" if request.path == "/b" else None

        async with fastws.serve(lambda ws: ws.recv(), "127.0.0.1", 0, select_subprotocol=select) as server:
            async with fastws.connect(uri_of(server, "/b"), subprotocols=["a", "b"]) as ws:
                assert ws.subprotocol == "b"
            async with fastws.connect(uri_of(server, "/a"), subprotocols=["a", "b"]) as ws:
                assert ws.subprotocol is None

    run(main())


# -- closing -----------------------------------------------------------------------------------


def test_client_close_4000_is_connection_closed_error_in_handler(run: Any) -> None:
    async def main() -> None:
        outcome: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def handler(ws: fastws.WebSocket) -> None:
            try:
                async for _ in ws:
                    pass
            except fastws.ConnectionClosed as exc:
                outcome.set_result((type(exc), exc.code, exc.reason, ws.close_code, ws.close_reason))
                raise
            outcome.set_result("iteration ended quietly")

        async with fastws.serve(handler, "127.0.0.1", 0) as server:
            ws = await fastws.connect(uri_of(server))
            await wait(ws.close(4000, "bye"))
            assert (ws.close_code, ws.close_reason) == (4000, "")  # the server echoes the code only
            assert await wait(outcome) == (fastws.ConnectionClosedError, 4000, "bye", 4000, "bye")

    run(main())


def test_handler_close_with_code_reaches_client(run: Any) -> None:
    async def main() -> None:
        server_side: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def handler(ws: fastws.WebSocket) -> None:
            await ws.send("last words")
            await ws.close(4001, "done here")
            server_side.set_result((ws.close_code, ws.close_reason))

        async with fastws.serve(handler, "127.0.0.1", 0) as server:
            ws = await fastws.connect(uri_of(server))
            assert await wait(ws.recv()) == "last words"
            with pytest.raises(fastws.ConnectionClosedError) as info:
                await wait(ws.recv())
            assert (info.value.code, info.value.reason) == (4001, "done here")
            await wait(ws.wait_closed())
            assert (ws.close_code, ws.close_reason) == (4001, "done here")
            assert await wait(server_side) == (4001, "")

    run(main())


def test_handler_return_closes_with_1000(run: Any) -> None:
    async def main() -> None:
        async def handler(ws: fastws.WebSocket) -> None:
            await ws.send("hi")

        async with fastws.serve(handler, "127.0.0.1", 0) as server:
            ws = await fastws.connect(uri_of(server))
            assert [m async for m in ws] == ["hi"]
            with pytest.raises(fastws.ConnectionClosedOK) as info:
                await ws.recv()
            assert info.value.code == 1000
            assert ws.close_code == 1000

    run(main())


def test_handler_exception_closes_with_1011_and_is_logged(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async def handler(ws: fastws.WebSocket) -> None:
            await ws.recv()
            raise RuntimeError("application bug")

        async with fastws.serve(handler, "127.0.0.1", 0) as server:
            ws = await fastws.connect(uri_of(server))
            await ws.send("trigger")
            with pytest.raises(fastws.ConnectionClosedError) as info:
                await wait(ws.recv())
            assert info.value.code == 1011

    with caplog.at_level(logging.INFO, logger="fastws"):
        run(main())
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("fastws")]
    assert len(errors) == 1
    assert errors[0].exc_info is not None and "application bug" in str(errors[0].exc_info[1])


def test_send_after_close_raises_connection_closed(run: Any) -> None:
    async def main() -> None:
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def handler(ws: fastws.WebSocket) -> None:
            await ws.close()
            try:
                await ws.send("too late")
            except fastws.ConnectionClosed as exc:
                done.set_result(type(exc))

        async with fastws.serve(handler, "127.0.0.1", 0) as server:
            ws = await fastws.connect(uri_of(server))
            assert await wait(done) is fastws.ConnectionClosedOK
            await wait(ws.wait_closed())

    run(main())


def test_server_close_sends_1001_and_wait_closed_returns(run: Any) -> None:
    async def main() -> None:
        ended: list[str] = []
        started = asyncio.Event()
        connected = 0

        async def handler(ws: fastws.WebSocket) -> None:
            nonlocal connected
            connected += 1
            if connected == 2:
                started.set()
            try:
                async for _ in ws:
                    pass
            finally:
                ended.append(ws.request.path)

        server = await fastws.serve(handler, "127.0.0.1", 0)
        port = port_of(server)
        a = await fastws.connect(f"ws://127.0.0.1:{port}/a")
        b = await fastws.connect(f"ws://127.0.0.1:{port}/b")
        await wait(started.wait())
        server.close()
        for ws in (a, b):
            with pytest.raises(fastws.ConnectionClosedOK) as info:
                await wait(ws.recv())
            assert info.value.code == 1001
        await wait(server.wait_closed())
        assert sorted(ended) == ["/a", "/b"]
        assert server.connections == set()
        with pytest.raises(OSError):
            await wait(fastws.connect(f"ws://127.0.0.1:{port}/"))

    run(main())


def test_serve_context_exit_closes_connections(run: Any) -> None:
    async def main() -> None:
        async with echo_server() as server:
            ws = await fastws.connect(uri_of(server))
            await ws.send("x")
            assert await wait(ws.recv()) == "x"
        with pytest.raises(fastws.ConnectionClosedOK) as info:
            await wait(ws.recv())
        assert info.value.code == 1001

    run(main())


# -- ping ----------------------------------------------------------------------------------------


def test_ping_from_handler_resolves_to_round_trip_time(run: Any) -> None:
    async def main() -> None:
        async def handler(ws: fastws.WebSocket) -> None:
            waiter = await ws.ping()
            rtt = await wait(waiter)
            named = await wait(await ws.ping(b"named"))
            await ws.send(f"{type(rtt).__name__} {rtt >= 0} {type(named).__name__}")

        async with fastws.serve(handler, "127.0.0.1", 0) as server:
            async with fastws.connect(uri_of(server)) as ws:
                assert await wait(ws.recv()) == "float True float"

    run(main())


def test_ping_waiters_fail_when_connection_closes(run: Any) -> None:
    async def main() -> None:
        result: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def handler(ws: fastws.WebSocket) -> None:
            waiter = await ws.ping(b"never")  # nothing yields before the abort: no pong can arrive
            ws.conn.abort()  # type: ignore[union-attr]
            try:
                await wait(waiter)
            except fastws.ConnectionClosed as exc:
                result.set_result(exc.code)

        async with fastws.serve(handler, "127.0.0.1", 0) as server:
            ws = await fastws.connect(uri_of(server))
            assert await wait(result) == 1006
            await wait(ws.wait_closed())

    run(main())


def test_two_pings_with_the_same_payload_are_refused(run: Any) -> None:
    async def main() -> None:
        result: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def handler(ws: fastws.WebSocket) -> None:
            first = await ws.ping(b"same")
            try:
                await ws.ping(b"same")  # nothing yielded: the first pong cannot have arrived
            except fastws.InvalidState:
                result.set_result("refused")
            await wait(first)

        async with fastws.serve(handler, "127.0.0.1", 0) as server:
            async with fastws.connect(uri_of(server)):
                assert await wait(result) == "refused"

    run(main())


# -- back-pressure --------------------------------------------------------------------------------


@pytest.mark.parametrize("max_queue, pong_expected", [(2, False), (None, True)])
def test_max_queue_stops_reading_while_the_app_does_not_read(run: Any, max_queue: int | None, pong_expected: bool) -> None:
    """With a full queue the server reads nothing more, so a ping sent after many large
    messages gets no pong until the handler reads; without max_queue it gets one at once."""
    count, size = 12, 300 * 1024  # each message needs more than one read of the transport

    async def main() -> None:
        release = asyncio.Event()
        got: asyncio.Future[list[bytes]] = asyncio.get_running_loop().create_future()

        async def handler(ws: fastws.WebSocket) -> None:
            await release.wait()
            got.set_result([await ws.recv() for _ in range(count)])  # type: ignore[misc]
            await ws.recv()

        async with fastws.serve(handler, "127.0.0.1", 0, max_queue=max_queue) as server:
            async with fastws.connect(uri_of(server)) as ws:
                payloads = [bytes([i]) * size for i in range(count)]

                async def send_all() -> asyncio.Future[float]:
                    for p in payloads:
                        await ws.send(p)
                    return await ws.ping(b"after")

                sender = asyncio.ensure_future(send_all())
                if pong_expected:
                    pong = await wait(sender)
                    assert isinstance(await wait(pong), float)
                    release.set()
                else:
                    done, _ = await asyncio.wait([sender], timeout=1.0)
                    pong = await wait(sender) if done else None
                    if pong is not None:
                        done, _ = await asyncio.wait([pong], timeout=1.0)
                        assert not done, "the server read the ping although the application did not read"
                    release.set()
                    pong = await wait(sender)
                    assert isinstance(await wait(pong), float)
                assert await wait(got) == payloads

    run(main(), timeout=60)


# -- process_request -----------------------------------------------------------------------------


async def raw_http_get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    client = await RawClient.open(port)
    client.send(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    head = await client.read_http_response()
    rest = await client.read_all_until_eof()
    client.close()
    assert rest == b""  # the server closes after a plain HTTP answer
    return head.status, head.headers, head.body


@pytest.mark.parametrize("asynchronous", [False, True])
def test_process_request_answers_plain_http_on_the_same_port(run: Any, asynchronous: bool) -> None:
    async def main() -> None:
        seen: list[str] = []

        def decide(request: fastws.Request) -> fastws.Response | None:
            seen.append(request.path)
            if request.path == "/healthz":
                return fastws.Response(200, fastws.Headers([("X-Health", "good")]), b"ok\n")
            if request.path == "/private":
                return fastws.Response(403, body=b"no")
            return None

        async def decide_async(request: fastws.Request) -> fastws.Response | None:
            await asyncio.sleep(0)
            return decide(request)

        process_request = decide_async if asynchronous else decide
        async with echo_server(process_request=process_request) as server:
            status, headers, body = await raw_http_get(port_of(server), "/healthz")
            assert (status, body, headers["x-health"]) == (200, b"ok\n", "good")
            with pytest.raises(fastws.InvalidResponse) as info:
                await wait(fastws.connect(uri_of(server, "/private")))
            assert info.value.status == 403
            async with fastws.connect(uri_of(server, "/ws")) as ws:
                await ws.send("upgraded")
                assert await wait(ws.recv()) == "upgraded"
        assert seen == ["/healthz", "/private", "/ws"]

    run(main())


def test_process_request_that_raises_gives_500(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        def broken(request: fastws.Request) -> None:
            raise ValueError("boom")

        async with echo_server(process_request=broken) as server:
            status, _, _ = await raw_http_get(port_of(server), "/")
            assert status == 500

    with caplog.at_level(logging.INFO, logger="fastws"):
        run(main())
    assert any(r.levelno >= logging.ERROR and r.exc_info for r in caplog.records)


def test_origin_refused_by_server_is_403_for_client(run: Any) -> None:
    async def main() -> None:
        async with echo_server(origins=["https://good.example"]) as server:
            with pytest.raises(fastws.InvalidResponse) as info:
                await wait(fastws.connect(uri_of(server), origin="https://evil.example"))
            assert info.value.status == 403
            async with fastws.connect(uri_of(server), origin="https://good.example") as ws:
                await ws.send("ok")
                assert await wait(ws.recv()) == "ok"

    run(main())


def test_server_max_size_closes_with_1009(run: Any) -> None:
    async def main() -> None:
        async with echo_server(max_size=1000) as server:
            ws = await fastws.connect(uri_of(server))
            await ws.send(b"x" * 1000)
            assert await wait(ws.recv()) == b"x" * 1000
            await ws.send(b"x" * 1001)
            with pytest.raises(fastws.ConnectionClosedError) as info:
                await wait(ws.recv())
            assert info.value.code == 1009

    run(main())


def test_messages_before_a_protocol_error_are_handled_first(run: Any) -> None:
    async def main() -> None:
        async with echo_server() as server:
            client = await RawClient.connect(port_of(server))
            client.send(build_frame(1, b"a") + build_frame(2, b"b") + build_frame(5, b"bad"))
            first, second = await client.read_frame(), await client.read_frame()
            assert [(first.opcode, first.payload), (second.opcode, second.payload)] == [(1, b"a"), (2, b"b")]
            assert (await client.expect_close()).close_code == 1002
            client.close()

    run(main())


def test_fragmented_message_with_ping_reaches_the_handler_whole(run: Any) -> None:
    async def main() -> None:
        async with echo_server() as server:
            client = await RawClient.connect(port_of(server))
            client.send(build_frame(1, b"fr", fin=False) + build_frame(9, b"hb") + build_frame(0, "ag€".encode()))
            pong = await client.read_frame()
            assert (pong.opcode, pong.payload, pong.masked) == (10, b"hb", False)
            echo = await client.read_frame()
            assert (echo.fin, echo.opcode, echo.payload) == (True, 1, "frag€".encode())
            client.send(build_frame(8, close_payload(1000)))
            assert (await client.expect_close()).close_code == 1000
            client.close()

    run(main())


# -- the low-level API -------------------------------------------------------------------------------


class Recorder(fastws.Listener):
    """Records every callback in a shared list; echoes messages with conn.send."""

    log: list[tuple[Any, ...]] = []
    closed: asyncio.Queue[tuple[int, str]] | None = None

    def on_connect(self, conn: fastws.Connection) -> None:
        self.log.append(("connect", conn.request.path, conn.client))

    def on_message(self, conn: fastws.Connection, data: bytes, is_text: bool) -> None:
        self.log.append(("message", data, is_text))
        conn.send(data, is_text)

    def on_close(self, conn: fastws.Connection, code: int, reason: str) -> None:
        self.log.append(("close", code, reason))
        assert self.closed is not None
        self.closed.put_nowait((code, reason))


def test_listener_callbacks_and_send_from_on_message(run: Any) -> None:
    async def main() -> None:
        Recorder.log = []
        Recorder.closed = asyncio.Queue()
        server = await fastws.create_server(Recorder, "127.0.0.1", 0)
        try:
            async with fastws.connect(uri_of(server, "/low")) as ws:
                await ws.send("text ✓")
                assert await wait(ws.recv()) == "text ✓"
                await ws.send(b"\x01\x02")
                assert await wait(ws.recv()) == b"\x01\x02"
            assert await wait(Recorder.closed.get()) == (1000, "")
            assert Recorder.log == [
                ("connect", "/low", False),
                ("message", "text ✓".encode(), True),
                ("message", b"\x01\x02", False),
                ("close", 1000, ""),
            ]
        finally:
            server.close()
            await wait(server.wait_closed())

    run(main())


def test_listener_on_close_gets_1006_when_peer_vanishes(run: Any) -> None:
    async def main() -> None:
        Recorder.log = []
        Recorder.closed = asyncio.Queue()
        server = await fastws.create_server(Recorder, "127.0.0.1", 0)
        try:
            client = await RawClient.connect(port_of(server))
            client.writer.transport.abort()
            assert await wait(Recorder.closed.get()) == (1006, "")
        finally:
            server.close()
            await wait(server.wait_closed())

    run(main())


def test_broadcast_sends_to_every_open_connection(run: Any) -> None:
    async def main() -> None:
        connected = asyncio.Queue()  # type: asyncio.Queue[fastws.Connection]
        received = asyncio.Queue()  # type: asyncio.Queue[tuple[bytes, bool]]

        class Member(fastws.Listener):
            def on_connect(self, conn: fastws.Connection) -> None:
                connected.put_nowait(conn)

            def on_message(self, conn: fastws.Connection, data: bytes, is_text: bool) -> None:
                received.put_nowait((data, is_text))

        server = await fastws.create_server(Member, "127.0.0.1", 0)
        try:
            clients = [await fastws.connect(uri_of(server)) for _ in range(3)]
            conns = [await wait(connected.get()) for _ in range(3)]
            assert server.connections == set(conns)
            assert fastws.broadcast(server.connections, "news ✓") == 3
            assert fastws.broadcast(conns, b"\x00bin") == 3
            for ws in clients:
                assert await wait(ws.recv()) == "news ✓"
                assert await wait(ws.recv()) == b"\x00bin"
            # A closed connection is skipped.
            await clients[0].close()
            await wait(conns[0].closed)
            assert fastws.broadcast(conns, "again") == 2
            for ws in clients[1:]:
                assert await wait(ws.recv()) == "again"
            # Client-side connections get a frame of their own, masked as the server requires.
            client_side = [ws.conn for ws in clients]
            assert fastws.broadcast(client_side, "to server") == 2
            assert [await wait(received.get()) for _ in range(2)] == [(b"to server", True)] * 2
            for ws in clients[1:]:
                await ws.close()
                assert ws.close_code == 1000  # no protocol error: the frames were masked
        finally:
            server.close()
            await wait(server.wait_closed())

    run(main())


def test_connection_close_and_closed_future(run: Any) -> None:
    async def main() -> None:
        conns = asyncio.Queue()  # type: asyncio.Queue[fastws.Connection]

        class Closer(fastws.Listener):
            def on_message(self, conn: fastws.Connection, data: bytes, is_text: bool) -> None:
                conn.close(4002, "from listener")
                conns.put_nowait(conn)

        server = await fastws.create_server(Closer, "127.0.0.1", 0)
        try:
            ws = await fastws.connect(uri_of(server))
            await ws.send("close me")
            with pytest.raises(fastws.ConnectionClosedError) as info:
                await wait(ws.recv())
            assert (info.value.code, info.value.reason) == (4002, "from listener")
            conn = await wait(conns.get())
            await wait(conn.closed)
            assert conn.state == fastws.connection.CLOSED
            assert conn.close_code == 4002
        finally:
            server.close()
            await wait(server.wait_closed())

    run(main())
