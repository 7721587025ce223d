"""In-process pub/sub topics: subscribe, publish, unsubscribe, close, slow subscribers,
the built-in chat app. Both event loops, both hot paths."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import fastws
import fastws.apps
import fastws.pubsub
from _wsutil import IO_TIMEOUT, RawClient, build_frame, close_payload, parse_frames, port_of, upgrade_request, uri_of

T = IO_TIMEOUT


async def wait(aw: Any) -> Any:
    return await asyncio.wait_for(aw, T)


class Subscriber(fastws.Listener):
    """Subscribes to the topics named in the path (``/a,b``) and publishes what it receives to topic ``out``."""

    joined: asyncio.Queue[fastws.Connection]

    def on_connect(self, conn: fastws.Connection) -> None:
        for topic in conn.request.path.lstrip("/").split(","):
            if topic:
                conn.subscribe(topic)
        self.joined.put_nowait(conn)

    def on_message(self, conn: fastws.Connection, data: bytes, is_text: bool) -> None:
        conn.server.publish("out", data, is_text)


async def start(**options: Any) -> tuple[fastws.Server, asyncio.Queue[fastws.Connection]]:
    joined: asyncio.Queue[fastws.Connection] = asyncio.Queue()

    def factory() -> Subscriber:
        listener = Subscriber()
        listener.joined = joined
        return listener

    server = await fastws.create_server(factory, "127.0.0.1", 0, **options)
    return server, joined


async def join(server: fastws.Server, joined: asyncio.Queue[fastws.Connection], path: str) -> Any:
    """A client connected to ``path``, once the server side has subscribed it."""
    client = await fastws.connect(uri_of(server, path))
    await wait(joined.get())
    return client


def test_publish_reaches_exactly_the_subscribers_of_the_topic(run: Any) -> None:
    async def main() -> None:
        server, joined = await start()
        async with server:
            a = await join(server, joined, "/news")
            b = await join(server, joined, "/news,sport")
            c = await join(server, joined, "/sport")
            assert server.pubsub.subscribers("news") == 2 and server.pubsub.subscribers("sport") == 2
            server.publish("news", "héllo")
            server.publish("sport", b"\x00\xff")
            server.publish("nobody", "lost in space")
            assert await wait(a.recv()) == "héllo"
            assert [await wait(b.recv()), await wait(b.recv())] == ["héllo", b"\x00\xff"]
            assert await wait(c.recv()) == b"\x00\xff"
            # Nothing else is on the way: a marker published now is the next message.
            server.publish("news", "marker")
            server.publish("sport", "marker")
            for ws in (a, b, c):
                assert await wait(ws.recv()) == "marker"
            assert server.pubsub.stats["published"] == 5
            assert server.pubsub.stats["delivered"] == 8
            for ws in (a, b, c):
                await ws.close()

    run(main())


def test_message_type_follows_text_flag(run: Any) -> None:
    async def main() -> None:
        server, joined = await start()
        async with server:
            ws = await join(server, joined, "/t")
            server.publish("t", b"raw utf-8 \xc3\xa9", text=True)
            server.publish("t", "as binary", text=False)
            server.publish("t", bytearray(b"ba"))
            server.publish("t", memoryview(b"mv"))
            assert await wait(ws.recv()) == "raw utf-8 é"
            assert await wait(ws.recv()) == b"as binary"
            assert await wait(ws.recv()) == b"ba"
            assert await wait(ws.recv()) == b"mv"
            await ws.close()

    run(main())


def test_publishing_from_on_message_keeps_order_and_type(run: Any) -> None:
    async def main() -> None:
        server, joined = await start()
        async with server:
            reader = await join(server, joined, "/out")
            writer = await join(server, joined, "/")
            sent = [f"message {i}" if i % 3 else f"{i}".encode() for i in range(500)]
            for message in sent:
                await writer.send(message)
            got = [await wait(reader.recv()) for _ in sent]
            assert got == sent
            await reader.close()
            await writer.close()

    run(main())


def test_order_is_kept_across_topics(run: Any) -> None:
    async def main() -> None:
        server, joined = await start()
        async with server:
            ws = await join(server, joined, "/x,y")
            expected = []
            for i in range(300):
                topic = "x" if i % 7 < 4 else "y"
                server.publish(topic, f"{topic}{i}")
                expected.append(f"{topic}{i}")
            assert [await wait(ws.recv()) for _ in expected] == expected
            await ws.close()

    run(main())


def test_every_subscriber_is_written_the_same_bytes_object(run: Any) -> None:
    async def main() -> None:
        server, joined = await start()
        async with server:
            clients = [await join(server, joined, "/same") for _ in range(5)]
            written: list[bytes] = []
            for conn in server.connections:
                write = conn.write_frames

                def record(data: bytes, write: Any = write) -> None:
                    written.append(data)
                    write(data)

                conn.write_frames = record  # what the hub writes with
            server.publish("same", b"x" * 1000)
            for ws in clients:
                assert await wait(ws.recv()) == b"x" * 1000
            assert len(written) == 5
            assert len({id(data) for data in written}) == 1
            for ws in clients:
                await ws.close()

    run(main())


def test_unsubscribe_and_close_drop_the_subscriptions(run: Any) -> None:
    async def main() -> None:
        server, joined = await start()
        async with server:
            a = await join(server, joined, "/room,other")
            b = await join(server, joined, "/room")
            conn_a = next(conn for conn in server.connections if "other" in conn.topics)
            assert conn_a.topics == {"room", "other"}
            assert conn_a.unsubscribe("room") is True
            assert conn_a.unsubscribe("room") is False
            assert conn_a.subscribe("other") is False
            server.publish("room", "only b")
            server.publish("other", "only a")
            assert await wait(b.recv()) == "only b"
            assert await wait(a.recv()) == "only a"
            await a.close()
            await wait(conn_a.closed)
            assert conn_a.topics == frozenset()
            assert set(server.pubsub.topics) == {"room"}
            await b.close()
            await wait(asyncio.gather(*[conn.closed for conn in list(server.connections)]))
            assert set(server.pubsub.topics) == set()

    run(main())


def test_high_level_websocket_topics(run: Any) -> None:
    async def main() -> None:
        ready: asyncio.Queue[None] = asyncio.Queue()

        async def handler(ws: fastws.WebSocket) -> None:
            room = ws.request.path.lstrip("/")
            assert ws.subscribe(room) is True
            assert ws.topics == {room}
            ready.put_nowait(None)
            async for message in ws:
                ws.publish(room, message)

        async with fastws.serve(handler, "127.0.0.1", 0) as server:
            alice = await fastws.connect(uri_of(server, "/lobby"))
            await wait(ready.get())
            bob = await fastws.connect(uri_of(server, "/lobby"))
            await wait(ready.get())
            eve = await fastws.connect(uri_of(server, "/elsewhere"))
            await wait(ready.get())
            await alice.send("hi bob")
            await bob.send(b"hi alice")
            for ws in (alice, bob):
                assert {await wait(ws.recv()), await wait(ws.recv())} == {"hi bob", b"hi alice"}
            await eve.send("anyone?")
            assert await wait(eve.recv()) == "anyone?"
            for ws in (alice, bob, eve):
                await ws.close()

    run(main())


def test_client_connections_cannot_subscribe(run: Any) -> None:
    async def main() -> None:
        server, _ = await start()
        async with server:
            async with fastws.connect(uri_of(server, "/")) as ws:
                with pytest.raises(fastws.InvalidState):
                    ws.subscribe("x")

    run(main())


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError):
        fastws.pubsub.PubSub(slow_subscriber="wait")
    with pytest.raises(ValueError):
        fastws.pubsub.make_broker("amqp://localhost/")


def test_chat_app_is_built_on_topics(run: Any) -> None:
    async def main() -> None:
        server = await fastws.create_server(fastws.apps.ChatListener, "127.0.0.1", 0)
        async with server:
            a = await fastws.connect(uri_of(server, "/kitchen"))
            b = await fastws.connect(uri_of(server, "/kitchen"))
            c = await fastws.connect(uri_of(server, "/garden"))
            # on_connect runs before the 101 answer leaves: the rooms are joined already.
            assert server.pubsub.subscribers("kitchen") == 2 and server.pubsub.subscribers("garden") == 1
            await a.send("from a")
            await b.send(b"from b")
            await c.send("from c")
            for ws in (a, b):
                assert {await wait(ws.recv()), await wait(ws.recv())} == {"from a", b"from b"}
            assert await wait(c.recv()) == "from c"
            for ws in (a, b, c):
                await ws.close()

    run(main())


# -- slow subscribers -------------------------------------------------------------------------


async def stalled_subscriber(port: int, path: str) -> RawClient:
    """A subscriber whose socket is never read once its small stream buffer is full."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=4096)
    client = RawClient(reader, writer)
    client.send(upgrade_request(path))
    head = await client.read_http_head()
    assert head.status == 101
    return client


class CountingReader(fastws.Listener):
    """A client that checks the numbered messages arrive in order and wakes the test at a target count."""

    def __init__(self) -> None:
        self.count = 0
        self.out_of_order = 0
        self.target = 0
        self.reached: asyncio.Future[None] | None = None

    def expect(self, target: int) -> asyncio.Future[None]:
        self.target = target
        self.reached = asyncio.get_running_loop().create_future()
        if self.count >= target:
            self.reached.set_result(None)
        return self.reached

    def on_message(self, conn: fastws.Connection, data: bytes, is_text: bool) -> None:
        if int.from_bytes(data[:8], "big") != self.count:
            self.out_of_order += 1
        self.count += 1
        if self.count >= self.target and self.reached is not None and not self.reached.done():
            self.reached.set_result(None)


def test_a_subscriber_that_never_reads_stays_within_the_bound(run: Any) -> None:
    """100,000 messages: the stalled subscriber's pending output stays bounded, the other gets all."""
    limit = 256 * 1024
    total, batch, size = 100_000, 1000, 200

    async def main() -> None:
        server, joined = await start(subscriber_buffer=limit)
        async with server:
            stalled = await stalled_subscriber(port_of(server), "/feed")
            stalled_conn = await wait(joined.get())
            reader = CountingReader()
            client = await fastws.create_connection(lambda: reader, uri_of(server, "/feed"))
            await wait(joined.get())
            largest_backlog = 0
            payload = b"p" * (size - 8)
            for start_at in range(0, total, batch):
                for i in range(start_at, start_at + batch):
                    server.publish("feed", i.to_bytes(8, "big") + payload)
                await wait(reader.expect(start_at + batch))
                largest_backlog = max(largest_backlog, stalled_conn.transport.get_write_buffer_size())
            assert reader.count == total and reader.out_of_order == 0
            stats = server.pubsub.stats
            assert stats["dropped"] > total // 2  # the stalled one missed most of them
            assert stats["delivered"] + stats["dropped"] == 2 * total
            # Bounded: the limit, plus the one batch that found it just under the limit.
            assert 0 < largest_backlog <= limit + batch * (size + 4)
            assert stalled_conn.state == fastws.connection.OPEN
            stalled.close()
            client.close()
            await wait(client.closed)

    run(main(), timeout=60)


def test_slow_subscriber_can_be_closed_with_1013(run: Any) -> None:
    limit = 64 * 1024

    async def main() -> None:
        server, joined = await start(subscriber_buffer=limit, slow_subscriber="close")
        async with server:
            stalled = await stalled_subscriber(port_of(server), "/feed")
            stalled_conn = await wait(joined.get())
            for _ in range(200):  # at most 20 MB; the kernel's socket buffers hold a few
                for _ in range(100):
                    server.publish("feed", b"q" * 1000)
                server.pubsub.flush()
                if server.pubsub.stats["closed_slow"]:
                    break
            assert server.pubsub.stats["closed_slow"] == 1
            assert stalled_conn.state != fastws.connection.OPEN
            # Reading now drains the backlog; the close frame comes last.
            frames: list[Any] = []
            rest = stalled.buffer
            while not frames or frames[-1].opcode != 8:
                chunk = await wait(stalled.reader.read(1 << 16))
                assert chunk, "EOF before the close frame"
                new, rest = parse_frames(rest + chunk)
                frames += new
            assert frames[-1].close_code == 1013 and rest == b""
            assert len(frames) > 1 and all(frame.opcode == 2 and frame.payload == b"q" * 1000 for frame in frames[:-1])
            stalled.send(build_frame(8, close_payload(1013)))
            await wait(stalled_conn.closed)
            assert server.pubsub.subscribers("feed") == 0

    run(main(), timeout=60)
