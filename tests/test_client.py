"""The asyncio client: ``fastws.connect`` and ``create_connection`` against fastws servers
and against hand-driven raw servers (for what a real server would never send). Both loops."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

import fastws
from _wsutil import (
    IO_TIMEOUT,
    RawClient,
    accept_upgrade,
    build_frame,
    close_payload,
    echo_server,
    raw_server,
    scaled,
    uri_of,
)

T = IO_TIMEOUT


async def wait(aw: Any) -> Any:
    return await asyncio.wait_for(aw, T)


def test_connect_returns_open_websocket_with_response(run: Any) -> None:
    async def main() -> None:
        async with echo_server() as server:
            ws = await fastws.connect(uri_of(server))
            assert ws.state == fastws.connection.OPEN
            assert ws.response is not None and ws.response.status == 101
            assert ws.response.headers["server"].startswith("fastws/")
            assert ws.request.path == "/"
            assert ws.close_code is None and ws.close_reason is None
            await ws.send("ping")
            assert await wait(ws.recv()) == "ping"
            await wait(ws.close())
            assert ws.close_code == 1000
            assert ws.state == fastws.connection.CLOSED

    run(main())


def test_context_manager_closes_with_1000(run: Any) -> None:
    async def main() -> None:
        outcome: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def handler(ws: fastws.WebSocket) -> None:
            async for _ in ws:
                pass
            outcome.set_result(ws.close_code)

        async with fastws.serve(handler, "127.0.0.1", 0) as server:
            async with fastws.connect(uri_of(server)) as ws:
                await ws.send("x")
            assert ws.close_code == 1000
            assert await wait(outcome) == 1000

    run(main())


def test_messages_sent_before_server_close_are_all_read(run: Any) -> None:
    async def main() -> None:
        async def handler(ws: fastws.WebSocket) -> None:
            for i in range(5):
                await ws.send(f"n{i}" if i % 2 else f"n{i}".encode())
            await ws.close(1001, "bye")

        async with fastws.serve(handler, "127.0.0.1", 0) as server:
            ws = await fastws.connect(uri_of(server))
            await wait(ws.wait_closed())
            assert [m async for m in ws] == [b"n0", "n1", b"n2", "n3", b"n4"]
            assert (ws.close_code, ws.close_reason) == (1001, "bye")
            with pytest.raises(fastws.ConnectionClosedOK):
                await ws.recv()

    run(main())


def test_client_close_code_validation(run: Any) -> None:
    async def main() -> None:
        async with echo_server() as server:
            async with fastws.connect(uri_of(server)) as ws:
                for code in (999, 1005, 1006, 1015, 5000):
                    with pytest.raises(ValueError):
                        await ws.close(code)
                with pytest.raises(ValueError):
                    await ws.close(1000, "r" * 124)
                await ws.send("still open")
                assert await wait(ws.recv()) == "still open"

    run(main())


def test_send_after_close_raises_connection_closed_ok(run: Any) -> None:
    async def main() -> None:
        async with echo_server() as server:
            ws = await fastws.connect(uri_of(server))
            await ws.close()
            with pytest.raises(fastws.ConnectionClosedOK):
                await ws.send("late")
            with pytest.raises(fastws.ConnectionClosedOK):
                await ws.ping()

    run(main())


def test_two_concurrent_recv_calls_are_refused(run: Any) -> None:
    async def main() -> None:
        async with echo_server() as server:
            async with fastws.connect(uri_of(server)) as ws:
                first = asyncio.ensure_future(ws.recv())
                await asyncio.sleep(0)  # let it start waiting (not synchronisation with a peer)
                with pytest.raises(fastws.InvalidState):
                    await ws.recv()
                await ws.send("for the first")
                assert await wait(first) == "for the first"

    run(main())


def test_client_ping_resolves_to_float(run: Any) -> None:
    async def main() -> None:
        async with echo_server() as server:
            async with fastws.connect(uri_of(server)) as ws:
                waiters = [await ws.ping() for _ in range(3)] + [await ws.ping("text payload")]
                rtts = [await wait(w) for w in waiters]
                assert all(isinstance(r, float) and r >= 0 for r in rtts)

    run(main())


def test_client_max_size_fails_with_1009(run: Any) -> None:
    async def main() -> None:
        server_saw: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def handler(ws: fastws.WebSocket) -> None:
            await ws.send(b"x" * 100)
            await ws.send(b"x" * 101)
            try:
                await ws.recv()
            except fastws.ConnectionClosed as exc:
                server_saw.set_result(exc.code)

        async with fastws.serve(handler, "127.0.0.1", 0) as server:
            ws = await fastws.connect(uri_of(server), max_size=100)
            assert await wait(ws.recv()) == b"x" * 100
            with pytest.raises(fastws.ConnectionClosedError) as info:
                await wait(ws.recv())
            assert info.value.code == 1009
            assert await wait(server_saw) == 1009

    run(main())


def test_large_message_round_trip_with_raised_limits(run: Any) -> None:
    async def main() -> None:
        payload = bytes(range(256)) * 8192  # 2 MiB
        async with echo_server(max_size=4 * 2**20) as server:
            async with fastws.connect(uri_of(server), max_size=4 * 2**20) as ws:
                await ws.send(payload)
                assert await wait(ws.recv()) == payload

    run(main())


# -- URIs and connection failures -----------------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    ["http://127.0.0.1/", "127.0.0.1:80", "ws://", "ws:///path", "ws://127.0.0.1/#frag", "ws://127.0.0.1:99999/", "wss//x"],
)
def test_invalid_uri_is_refused(run: Any, uri: str) -> None:
    async def main() -> None:
        with pytest.raises(fastws.InvalidURI):
            await fastws.connect(uri)

    run(main())


def test_ssl_context_with_ws_scheme_is_refused(run: Any) -> None:
    import ssl

    async def main() -> None:
        with pytest.raises(fastws.InvalidURI):
            await fastws.connect("ws://127.0.0.1:1/", ssl=ssl.create_default_context())

    run(main())


def test_uri_path_and_query_are_sent(run: Any) -> None:
    async def main() -> None:
        async def handler(ws: fastws.WebSocket) -> None:
            await ws.send(ws.request.path)

        async with fastws.serve(handler, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            async with fastws.connect(f"ws://127.0.0.1:{port}") as ws:
                assert await wait(ws.recv()) == "/"
            async with fastws.connect(f"ws://127.0.0.1:{port}/p/q?a=1&b=2") as ws:
                assert await wait(ws.recv()) == "/p/q?a=1&b=2"

    run(main())


def test_connection_refused_is_os_error(run: Any) -> None:
    async def main() -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))  # bound, not listening: connecting is refused
            port = sock.getsockname()[1]
            with pytest.raises(OSError):
                await wait(fastws.connect(f"ws://127.0.0.1:{port}/"))

    run(main())


def test_open_timeout_when_server_never_answers(run: Any) -> None:
    async def main() -> None:
        got_request = asyncio.Event()

        async def silent(peer: RawClient) -> None:
            await peer.reader.readuntil(b"\r\n\r\n")
            got_request.set()
            await peer.reader.read()  # until the client gives up

        async with raw_server(silent) as port:
            loop = asyncio.get_running_loop()
            start = loop.time()
            with pytest.raises(TimeoutError):
                await fastws.connect(f"ws://127.0.0.1:{port}/", open_timeout=scaled(0.3))
            assert got_request.is_set()
            assert loop.time() - start < scaled(5)

    run(main())


def test_open_timeout_is_a_fastws_error_and_a_timeout_error(run: Any) -> None:
    async def main() -> None:
        async def mute(peer: RawClient) -> None:
            await peer.reader.read()  # accepts TCP, never answers, until the client gives up

        async with raw_server(mute) as port:
            loop = asyncio.get_running_loop()
            start = loop.time()
            try:
                await fastws.connect(f"ws://127.0.0.1:{port}/", open_timeout=0.2)
            except fastws.FastWSError as exc:
                error: BaseException = exc
            else:
                raise AssertionError("no timeout")
            assert loop.time() - start < scaled(5)
        assert isinstance(error, fastws.OpenTimeout)
        assert isinstance(error, TimeoutError), "except TimeoutError must still catch it"
        assert isinstance(error, fastws.FastWSError)
        assert not isinstance(error, fastws.InvalidHandshake), "a timeout is not a refusal"
        assert "open_timeout=0.2" in str(error)
        assert fastws.client._worth_retrying(error), "connect()'s reconnecting loop retries it"

    run(main())


@pytest.mark.parametrize(
    "extra",
    ["X-Evil: a\x01b\r\n", "X-Evil: a\x00b\r\n", "X-Evil: \x7f\r\n", "X-Evil: a\rb\r\n", "X-Evil: bare-lf\n"],
    ids=["ctl", "nul", "del", "lone-cr", "bare-lf"],
)
def test_control_characters_in_the_answer_are_invalid_response(run: Any, extra: str) -> None:
    async def main() -> None:
        hung_up = asyncio.Event()

        async def evil(peer: RawClient) -> None:
            await accept_upgrade(peer, extra)
            await peer.reader.read()  # until the client closes the TCP connection
            hung_up.set()

        async with raw_server(evil) as port:
            with pytest.raises(fastws.InvalidResponse):
                await wait(fastws.connect(f"ws://127.0.0.1:{port}/"))
            await wait(hung_up.wait())

    run(main())


def test_server_closing_during_handshake_is_invalid_response(run: Any) -> None:
    async def main() -> None:
        async def hang_up(peer: RawClient) -> None:
            await peer.reader.readuntil(b"\r\n\r\n")

        async with raw_server(hang_up) as port:
            with pytest.raises(fastws.InvalidResponse):
                await wait(fastws.connect(f"ws://127.0.0.1:{port}/"))

    run(main())


def test_non_101_answer_carries_status(run: Any) -> None:
    async def main() -> None:
        async def refuse(peer: RawClient) -> None:
            await peer.reader.readuntil(b"\r\n\r\n")
            peer.send(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy")
            await peer.reader.read()

        async with raw_server(refuse) as port:
            with pytest.raises(fastws.InvalidResponse) as info:
                await wait(fastws.connect(f"ws://127.0.0.1:{port}/"))
            assert info.value.status == 503

    run(main())


def test_wrong_accept_from_server_is_refused(run: Any) -> None:
    async def main() -> None:
        async def wrong(peer: RawClient) -> None:
            await peer.reader.readuntil(b"\r\n\r\n")
            peer.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
            await peer.reader.read()

        async with raw_server(wrong) as port:
            with pytest.raises(fastws.InvalidResponse):
                await wait(fastws.connect(f"ws://127.0.0.1:{port}/"))

    run(main())


# -- what a misbehaving server sends ----------------------------------------------------------------


def test_client_fails_with_1002_on_masked_server_frame(run: Any) -> None:
    async def main() -> None:
        client_close: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def masking_server(peer: RawClient) -> None:
            await accept_upgrade(peer)
            peer.send(build_frame(1, b"masked!", mask=True))
            frame = await peer.read_frame()
            client_close.set_result((frame.opcode, frame.masked, frame.close_code))
            await peer.reader.read()

        async with raw_server(masking_server) as port:
            ws = await fastws.connect(f"ws://127.0.0.1:{port}/", close_timeout=2)
            with pytest.raises(fastws.ConnectionClosedError) as info:
                await wait(ws.recv())
            assert info.value.code == 1002
            assert await wait(client_close) == (8, True, 1002)

    run(main())


def test_client_answers_server_ping_and_close(run: Any) -> None:
    async def main() -> None:
        seen: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def pinging_server(peer: RawClient) -> None:
            await accept_upgrade(peer)
            peer.send(build_frame(9, b"are you there", mask=False) + build_frame(1, b"hello", mask=False))
            pong = await peer.read_frame()
            peer.send(build_frame(8, close_payload(4005, b"enough"), mask=False))
            close = await peer.read_frame()
            seen.set_result([(pong.opcode, pong.masked, pong.payload), (close.opcode, close.masked, close.close_code)])
            # Then the server closes the TCP connection (handler returns).

        async with raw_server(pinging_server) as port:
            ws = await fastws.connect(f"ws://127.0.0.1:{port}/")
            assert await wait(ws.recv()) == "hello"
            with pytest.raises(fastws.ConnectionClosedError) as info:
                await wait(ws.recv())
            assert (info.value.code, info.value.reason) == (4005, "enough")
            assert await wait(seen) == [(10, True, b"are you there"), (8, True, 4005)]
            assert ws.close_code == 4005

    run(main())


def test_client_receives_fragmented_message_from_server(run: Any) -> None:
    async def main() -> None:
        async def fragmenting_server(peer: RawClient) -> None:
            await accept_upgrade(peer)
            data = build_frame(2, b"ab", fin=False, mask=False) + build_frame(0, b"cd", fin=False, mask=False) + build_frame(
                0, b"ef", mask=False
            )
            for i in range(len(data)):  # one byte per write
                peer.send(data[i : i + 1])
                await peer.writer.drain()
            await peer.reader.read()

        async with raw_server(fragmenting_server) as port:
            ws = await fastws.connect(f"ws://127.0.0.1:{port}/", close_timeout=1)
            assert await wait(ws.recv()) == b"abcdef"

    run(main())


def test_close_timeout_drops_a_server_that_never_answers_close(run: Any) -> None:
    async def main() -> None:
        async def deaf(peer: RawClient) -> None:
            await accept_upgrade(peer)
            await peer.reader.read()  # reads the close frame and never answers

        async with raw_server(deaf) as port:
            ws = await fastws.connect(f"ws://127.0.0.1:{port}/", close_timeout=0.2)
            loop = asyncio.get_running_loop()
            start = loop.time()
            await wait(ws.close())
            assert loop.time() - start < 5
            assert ws.close_code == 1006
            with pytest.raises(fastws.ConnectionClosedError):
                await ws.recv()

    run(main())


def test_server_that_drops_tcp_gives_1006(run: Any) -> None:
    async def main() -> None:
        async def rude(peer: RawClient) -> None:
            await accept_upgrade(peer)
            peer.send(build_frame(1, b"only this", mask=False))
            await peer.writer.drain()
            # The handler returns: TCP is closed without a closing handshake.

        async with raw_server(rude) as port:
            ws = await fastws.connect(f"ws://127.0.0.1:{port}/")
            assert await wait(ws.recv()) == "only this"
            with pytest.raises(fastws.ConnectionClosedError) as info:
                await wait(ws.recv())
            assert info.value.code == 1006
            assert ws.close_code == 1006

    run(main())


# -- the low-level client --------------------------------------------------------------------------


def test_create_connection_with_listener(run: Any) -> None:
    async def main() -> None:
        events: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

        class Client(fastws.Listener):
            def on_connect(self, conn: fastws.Connection) -> None:
                events.put_nowait(("connect", conn.client, conn.response.status if conn.response else None))

            def on_message(self, conn: fastws.Connection, data: bytes, is_text: bool) -> None:
                events.put_nowait(("message", data, is_text))

            def on_pong(self, conn: fastws.Connection, payload: bytes) -> None:
                events.put_nowait(("pong", payload))

            def on_close(self, conn: fastws.Connection, code: int, reason: str) -> None:
                events.put_nowait(("close", code, reason))

        async with echo_server() as server:
            conn = await fastws.create_connection(Client, uri_of(server))
            assert isinstance(conn.listener, Client)
            assert await wait(events.get()) == ("connect", True, 101)
            conn.send("tëxt")
            assert await wait(events.get()) == ("message", "tëxt".encode(), True)
            conn.send(b"\x01", text=False)
            assert await wait(events.get()) == ("message", b"\x01", False)
            conn.ping(b"pp")
            assert await wait(events.get()) == ("pong", b"pp")
            conn.close(1000, "done")
            assert await wait(events.get()) == ("close", 1000, "")
            await wait(conn.closed)

    run(main())
