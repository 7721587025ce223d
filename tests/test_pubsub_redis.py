"""Pub/sub through a real ``redis-server`` (started by the tests on a free loopback port):
topics shared by several servers, exactly-once delivery, outages, the chat command."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest

import fastws
import fastws.apps
from _brokerutil import (
    broker_of,
    chat_server,
    exchange,
    free_port,
    other_publishers_reach,
    running,
    start_cli,
    starts_while_down,
    stop_cli,
    survives_an_outage,
    wait,
)
from _wsutil import IO_TIMEOUT, scaled, until, uri_of

redis = pytest.importorskip("redis", reason="redis-py is not installed (pip install 'fastws[redis]')")
if shutil.which("redis-server") is None:
    pytest.skip("redis-server is not installed (apt-get install redis-server)", allow_module_level=True)

from fastws.pubsub import RedisBroker  # noqa: E402

T = IO_TIMEOUT


class RedisServer:
    """A throwaway redis-server: no persistence, loopback only, stopped by the test."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="fastws-redis-")
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self.dir, "--loglevel", "notice"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + T
        lines = []
        for line in self.proc.stdout:  # blocks until the next log line: no sleeping
            lines.append(line)
            if "Ready to accept connections" in line:
                return
            if time.monotonic() > deadline:
                break
        self.stop()
        raise RuntimeError("redis-server did not start:\n" + "".join(lines[-10:]))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(T)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with running(RedisServer()) as server:
        yield server


def broker_for(redis_server: RedisServer) -> RedisBroker:
    return RedisBroker(redis_server.url, reconnect_min=0.02, reconnect_max=0.2)


async def numsub(redis_server: RedisServer, topic: str) -> int:
    client = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        [(_, count)] = await client.pubsub_numsub(f"fastws:{topic}")
        return int(count)
    finally:
        await client.aclose()


def test_two_servers_form_one_topic_exactly_once_in_order(run: Any, redis_server: RedisServer) -> None:
    async def main() -> None:
        async with chat_server(broker_for(redis_server)) as one, chat_server(broker_for(redis_server)) as two:
            a = await fastws.connect(uri_of(one, "/room"))
            b = await fastws.connect(uri_of(two, "/room"))
            await wait(broker_of(one, RedisBroker).wait_synced())
            await wait(broker_of(two, RedisBroker).wait_synced())
            sent_a = [f"a{i}" for i in range(200)]
            sent_b = [f"b{i}".encode() for i in range(200)]
            for x, y in zip(sent_a, sent_b, strict=True):
                await a.send(x)
                await b.send(y)
            for ws in (a, b):
                got = [await wait(ws.recv()) for _ in range(400)]
                # Each sees every message once, with its type, in order per publisher.
                assert [m for m in got if isinstance(m, str)] == sent_a
                assert [m for m in got if isinstance(m, bytes)] == sent_b
            # Nothing more is on the way (no second copy of anything): a marker is next.
            await a.send("marker")
            assert await wait(b.recv()) == "marker"
            assert await wait(a.recv()) == "marker"
            # "sent" counts what Redis acknowledged. Redis delivers a message to the
            # subscribers before its publisher reads the acknowledgement, so the marker
            # can be here before the count: wait for each publisher to account for all.
            for server, published in ((one, len(sent_a) + 1), (two, len(sent_b))):
                stats = server.pubsub.stats
                await until(lambda stats=stats: stats["sent"] + stats["lost"] == stats["published"], what="every publish sent or lost")
                assert stats["published"] == stats["sent"] == published and stats["lost"] == 0, stats
            await a.close()
            await b.close()

    run(main())


def test_redis_subscriptions_are_reference_counted(run: Any, redis_server: RedisServer) -> None:
    async def main() -> None:
        async with chat_server(broker_for(redis_server)) as server:
            broker = broker_of(server, RedisBroker)
            clients = [await fastws.connect(uri_of(server, "/counted")) for _ in range(3)]
            await wait(broker.wait_synced())
            assert await numsub(redis_server, "counted") == 1  # one Redis subscription for three
            for ws in clients[:2]:
                await ws.close()
            await wait(broker.wait_synced())
            assert await numsub(redis_server, "counted") == 1
            await clients[2].close()
            await wait(asyncio.gather(*[conn.closed for conn in list(server.connections)]))
            await wait(broker.wait_synced())
            assert await numsub(redis_server, "counted") == 0

    run(main())


def test_messages_from_other_redis_publishers(run: Any, redis_server: RedisServer) -> None:
    async def publish(messages: list[bytes]) -> None:
        client = redis.asyncio.Redis.from_url(redis_server.url)
        try:
            for message in messages:
                await client.publish("fastws:news", message)
        finally:
            await client.aclose()

    async def main() -> None:
        async with chat_server(broker_for(redis_server)) as server:
            await other_publishers_reach(server, "news", publish)

    run(main())


def test_delivery_resumes_after_a_redis_restart_and_losses_are_counted(run: Any, redis_server: RedisServer) -> None:
    async def main() -> None:
        async with chat_server(broker_for(redis_server)) as one, chat_server(broker_for(redis_server)) as two:
            await survives_an_outage(one, two, "ops", down=redis_server.stop, up=redis_server.start)  # same port

    run(main())


def test_server_starts_while_redis_is_down(run: Any) -> None:
    down = RedisServer()  # a free port, nothing started on it yet

    async def main() -> None:
        async with chat_server(RedisBroker(down.url, reconnect_min=0.02, reconnect_max=0.1)) as server:
            ws = await starts_while_down(server, down.start)
            assert await numsub(down, "solo") == 1
            await ws.close()

    try:
        run(main())
    finally:
        down.cleanup()


def test_redis_broker_needs_a_redis_url() -> None:
    with pytest.raises(ValueError):
        fastws.pubsub.make_broker("http://127.0.0.1:6379")
    assert isinstance(fastws.pubsub.make_broker("redis://127.0.0.1:1/0"), RedisBroker)


# -- the command line: two `fastws serve chat` processes on one Redis -------------------------


async def wait_redis_subscribers(redis_server: RedisServer, topic: str, count: int) -> None:
    """Poll PUBSUB NUMSUB until ``count`` processes subscribed (they do it in the background)."""
    while await numsub(redis_server, topic) < count:
        await asyncio.sleep(0.01)


def test_two_chat_processes_share_rooms(redis_server: RedisServer) -> None:
    procs = []
    try:
        for _ in range(2):
            procs.append(start_cli("chat", "--broker", redis_server.url))
        ports = [port for _, port in procs]

        async def main() -> None:
            a = await fastws.connect(f"ws://127.0.0.1:{ports[0]}/hall")
            b = await fastws.connect(f"ws://127.0.0.1:{ports[1]}/hall")
            await wait(wait_redis_subscribers(redis_server, "hall", 2))
            await exchange(a, b)
            await a.close()
            await b.close()

        asyncio.run(asyncio.wait_for(main(), scaled(30)))
    finally:
        for proc, _ in procs:
            stop_cli(proc)
    assert [proc.returncode for proc, _ in procs] == [0, 0]


def test_chat_workers_on_one_port_share_rooms(redis_server: RedisServer) -> None:
    proc, port = start_cli("chat", "--workers", "2", "--broker", redis_server.url)
    try:

        async def main() -> None:
            uri = f"ws://127.0.0.1:{port}/hall"
            a = await fastws.connect(uri)
            worker_a = a.response.headers["Fastws-Worker"]
            others = []
            # SO_REUSEPORT spreads connections by hash: connect until one lands on the other worker.
            for _ in range(64):
                b = await fastws.connect(uri)
                if b.response.headers["Fastws-Worker"] != worker_a:
                    break
                others.append(b)
            else:
                pytest.fail("64 connections all went to the same worker")
            for ws in others:
                await ws.close()
            await wait(wait_redis_subscribers(redis_server, "hall", 2))
            await exchange(a, b)
            await a.close()
            await b.close()

        asyncio.run(asyncio.wait_for(main(), scaled(30)))
    finally:
        stop_cli(proc)
    assert proc.returncode == 0
