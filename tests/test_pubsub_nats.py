"""Pub/sub through a real ``nats-server`` (started by the tests on free loopback ports):
topics as subjects, exactly-once delivery, a restart mid-test, the chat command."""

from __future__ import annotations

import asyncio
import json
import shutil
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

import fastws
from _brokerutil import (
    ServerProcess,
    broker_of,
    chat_processes_survive_an_outage,
    chat_server,
    exchange,
    free_port,
    one_topic_exactly_once,
    other_publishers_reach,
    running,
    start_cli,
    starts_while_down,
    stop_cli,
    survives_an_outage,
    wait,
    wait_all_sent_or_lost,
)
from _wsutil import IO_TIMEOUT, scaled, uri_of

nats = pytest.importorskip("nats", reason="nats-py is not installed (pip install 'fastws[nats]')")
if shutil.which("nats-server") is None:
    pytest.skip("nats-server is not installed (apt-get install nats-server)", allow_module_level=True)

from fastws.brokers.nats import NatsBroker, subject_token  # noqa: E402

T = IO_TIMEOUT


class NatsServer(ServerProcess):
    """A throwaway nats-server on loopback, with its monitoring port (to count subscriptions)."""

    def __init__(self) -> None:
        self.port, self.monitor = free_port(), free_port()
        argv = ["nats-server", "-a", "127.0.0.1", "-p", str(self.port), "-m", str(self.monitor)]
        super().__init__(argv, "Server is ready", "nats-server")

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def subscriptions(self, subject: str) -> int:
        """How many connections subscribe to ``subject`` (from the monitoring endpoint)."""

        def fetch() -> Any:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor}/connz?subs=1", timeout=T) as response:
                return json.load(response)

        connz = await asyncio.to_thread(fetch)
        return sum(subject in (conn.get("subscriptions_list") or []) for conn in connz["connections"])

    async def wait_subscriptions(self, subject: str, count: int) -> None:
        """Poll until ``count`` connections subscribe to ``subject`` (processes do it in the background)."""
        while await self.subscriptions(subject) != count:
            await asyncio.sleep(0.01)


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    with running(NatsServer()) as server:
        yield server


def broker_for(server: NatsServer) -> NatsBroker:
    return NatsBroker(server.url, reconnect_min=0.02, reconnect_max=0.2)


def test_subject_tokens_escape_everything_but_a_safe_set() -> None:
    assert subject_token("room-1_A") == "room-1_A"
    assert subject_token("a.b") == "a%2Eb"  # no hierarchy
    assert subject_token("*") == "%2A" and subject_token(">") == "%3E"  # no wildcards
    assert subject_token("x y\r\n") == "x%20y%0D%0A"
    assert subject_token("%") == "%25" and subject_token("") == "%"
    assert subject_token("é") == "%C3%A9"
    topics = ["", "%", "%25", "a.b", "a%2Eb", "é", "e"]
    assert len({subject_token(t) for t in topics}) == len(topics)  # one subject per topic


def test_two_servers_form_one_topic_exactly_once_in_order(run: Any, nats_server: NatsServer) -> None:
    async def main() -> None:
        async with chat_server(broker_for(nats_server)) as one, chat_server(broker_for(nats_server)) as two:
            elsewhere = await fastws.connect(uri_of(two, "/other.room"))
            await one_topic_exactly_once(one, two, "room")
            await elsewhere.send("elsewhere")  # the other room heard nothing of this one
            assert await wait(elsewhere.recv()) == "elsewhere"
            for server, published in ((one, 201), (two, 201)):
                stats = await wait_all_sent_or_lost(server)
                assert stats["published"] == stats["sent"] == published and stats["lost"] == 0, stats
            # Each got the other's messages from NATS, and not its own (no_echo).
            assert one.pubsub.stats["received"] == 200 and two.pubsub.stats["received"] == 201
            await elsewhere.close()

    run(main())


def test_nats_subscriptions_are_reference_counted(run: Any, nats_server: NatsServer) -> None:
    async def main() -> None:
        async with chat_server(broker_for(nats_server)) as server:
            broker = broker_of(server, NatsBroker)
            clients = [await fastws.connect(uri_of(server, "/counted")) for _ in range(3)]
            await wait(broker.wait_synced())
            assert await nats_server.subscriptions("fastws.counted") == 1  # one subscription for three
            for ws in clients:
                await ws.close()
            await wait(asyncio.gather(*[conn.closed for conn in list(server.connections)]))
            await wait(broker.wait_synced())
            await wait(nats_server.wait_subscriptions("fastws.counted", 0))

    run(main())


def test_messages_from_other_nats_publishers(run: Any, nats_server: NatsServer) -> None:
    topic = "news.*%20"  # a path is not percent-decoded: the topic holds "%20" as it is
    subject = "fastws.news%2E%2A%2520"

    async def publish(messages: list[bytes]) -> None:
        client = await nats.connect(nats_server.url)
        try:
            for message in messages:
                await client.publish(subject, message)
            await client.flush()
        finally:
            await client.close()

    async def main() -> None:
        async with chat_server(broker_for(nats_server)) as server:
            assert broker_of(server, NatsBroker).subject(topic) == subject
            await other_publishers_reach(server, topic, publish)

    run(main())


def test_delivery_resumes_after_a_nats_restart_and_losses_are_counted(run: Any, nats_server: NatsServer) -> None:
    async def main() -> None:
        async with chat_server(broker_for(nats_server)) as one, chat_server(broker_for(nats_server)) as two:
            await survives_an_outage(one, two, "ops", down=lambda: nats_server.stop(kill=True), up=nats_server.start)

    run(main())


def test_server_starts_while_nats_is_down(run: Any) -> None:
    down = NatsServer()  # free ports, nothing started on them yet

    async def main() -> None:
        async with chat_server(NatsBroker(down.url, reconnect_min=0.02, reconnect_max=0.1)) as server:
            ws = await starts_while_down(server, down.start)
            assert await down.subscriptions("fastws.solo") == 1
            await ws.close()

    try:
        run(main())
    finally:
        down.stop()


def test_nats_broker_urls() -> None:
    broker = fastws.pubsub.make_broker("nats://u:p@127.0.0.1:4222,127.0.0.1:4223")
    assert isinstance(broker, NatsBroker)
    assert broker.servers == ["nats://u:p@127.0.0.1:4222", "nats://u:p@127.0.0.1:4223"]
    assert NatsBroker("nats://h:1", channel_prefix="app.ws.").subject("x") == "app.ws.x"


def test_two_chat_processes_share_rooms_through_nats(nats_server: NatsServer) -> None:
    procs = []
    try:
        for _ in range(2):
            procs.append(start_cli("chat", "--broker", nats_server.url))
        ports = [port for _, port in procs]

        async def main() -> None:
            a = await fastws.connect(f"ws://127.0.0.1:{ports[0]}/hall")
            b = await fastws.connect(f"ws://127.0.0.1:{ports[1]}/hall")
            c = await fastws.connect(f"ws://127.0.0.1:{ports[1]}/lobby")
            await wait(nats_server.wait_subscriptions("fastws.hall", 2))
            await exchange(a, b)
            await c.send("lobby only")  # rooms isolated
            assert await wait(c.recv()) == "lobby only"
            await a.send("hall end")
            assert await wait(b.recv()) == "hall end" and await wait(a.recv()) == "hall end"
            for ws in (a, b, c):
                await ws.close()

        asyncio.run(asyncio.wait_for(main(), scaled(30)))
    finally:
        for proc, _ in procs:
            stop_cli(proc)
    assert [proc.returncode for proc, _ in procs] == [0, 0]


def test_two_chat_processes_across_a_nats_restart(nats_server: NatsServer) -> None:
    async def main() -> None:
        await chat_processes_survive_an_outage(
            nats_server.url, "crowd", down=lambda: nats_server.stop(kill=True), up=nats_server.start,
            subscribed=lambda count: nats_server.wait_subscriptions("fastws.crowd", count),
        )

    asyncio.run(asyncio.wait_for(main(), scaled(60)))  # the processes are the servers: one client loop is enough
