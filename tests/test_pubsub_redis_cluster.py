"""Pub/sub through a real 3-node Redis Cluster (started by the tests on free loopback ports):
sharded pub/sub, one subscribing connection per shard, a node killed and restarted."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
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
    remove_dir,
    running,
    start_cli,
    starts_while_down,
    stop_cli,
    survives_an_outage,
    temp_dir,
    wait,
    wait_all_sent_or_lost,
)
from _wsutil import IO_TIMEOUT, scaled, until, uri_of

redis = pytest.importorskip("redis", reason="redis-py is not installed (pip install 'fastws[redis]')")
if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
    pytest.skip("redis-server is not installed (apt-get install redis-server)", allow_module_level=True)

from redis.crc import key_slot  # noqa: E402

from fastws.brokers.redis_cluster import RedisClusterBroker  # noqa: E402

T = IO_TIMEOUT


class RedisCluster:
    """Three redis-server primaries in cluster mode, no replicas, joined by ``redis-cli --cluster create``.

    A short node timeout so that a killed node is noticed quickly, and partial coverage
    allowed so that the other shards serve while one is down.
    """

    def __init__(self, size: int = 3) -> None:
        self.dir = temp_dir("fastws-cluster-")
        self.primaries = size
        self.ports: list[int] = []
        self.nodes: list[ServerProcess] = []
        self._taken: set[int] = set()
        for _ in range(size):
            self._add_node()

    def _add_node(self) -> ServerProcess:
        port, bus = self._free(self._taken), self._free(self._taken)
        node_dir = os.path.join(self.dir, str(len(self.nodes)))
        os.mkdir(node_dir)
        argv = ["redis-server", "--port", str(port), "--cluster-port", str(bus), "--bind", "127.0.0.1",
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "1000",
                "--cluster-require-full-coverage", "no", "--repl-diskless-sync-delay", "0", "--save", "", "--appendonly", "no", "--dir", node_dir]
        self.ports.append(port)
        node = ServerProcess(argv, "Ready to accept connections", f"redis-server :{port}")
        self.nodes.append(node)
        return node

    def add_replica(self, primary: int) -> int:
        """Start a node and make it a replica of node ``primary``; returns its index."""
        self._add_node().start()
        index = len(self.nodes) - 1
        with redis.Redis(port=self.ports[primary], socket_timeout=T) as client:
            primary_id = client.execute_command("CLUSTER", "MYID").decode()
        subprocess.run(
            ["redis-cli", "--cluster", "add-node", f"127.0.0.1:{self.ports[index]}", f"127.0.0.1:{self.ports[primary]}",
             "--cluster-slave", "--cluster-master-id", primary_id],
            check=True, capture_output=True, timeout=T,
        )
        deadline = time.monotonic() + T
        while not self._replicating(self.ports[index]):  # no event for "in sync" either: poll
            if time.monotonic() > deadline:
                raise TimeoutError("the replica did not sync")
            time.sleep(0.02)
        self.wait_ok()
        return index

    def _replicating(self, port: int) -> bool:
        with redis.Redis(port=port, socket_timeout=T) as client:
            return client.info("replication").get("master_link_status") == "up"

    @staticmethod
    def _free(taken: set[int]) -> int:
        while True:
            port = free_port()
            if port not in taken:
                taken.add(port)
                return port

    @property
    def url(self) -> str:
        return "redis-cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(
            ["redis-cli", "--cluster", "create", *[f"127.0.0.1:{port}" for port in self.ports[: self.primaries]],
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=T,
        )
        self.wait_ok()

    def wait_ok(self, nodes: list[int] | None = None) -> None:
        """Until every node (or those of ``nodes``) says the cluster is ok (gossip has no event to wait on: poll)."""
        deadline = time.monotonic() + T
        while not all(self._ok(self.ports[i]) for i in (range(len(self.ports)) if nodes is None else nodes)):
            if time.monotonic() > deadline:
                raise TimeoutError("the Redis Cluster did not become ok")
            time.sleep(0.02)

    def _ok(self, port: int) -> bool:
        try:
            with redis.Redis(port=port, socket_timeout=T) as client:
                return b"cluster_state:ok" in client.execute_command("CLUSTER", "INFO")
        except redis.ConnectionError:
            return False

    def owner_index(self, topic: str) -> int:
        """Which node owns ``fastws:<topic>``'s slot."""
        slot = key_slot(f"fastws:{topic}".encode())
        alive = next(port for port, node in zip(self.ports, self.nodes, strict=True) if node.proc is not None)
        with redis.Redis(port=alive, socket_timeout=T) as client:
            for start, end, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return self.ports.index(int(primary[1]))
        raise AssertionError(f"slot {slot} is not covered")

    def topics_on_every_node(self, prefix: str) -> list[str]:
        """One topic per node: ``prefix0``, ``prefix1``... chosen so that each lives on another shard."""
        found: dict[int, str] = {}
        i = 0
        while len(found) < self.primaries:
            topic = f"{prefix}{i}"
            found.setdefault(self.owner_index(topic), topic)
            i += 1
        return [found[index] for index in range(self.primaries)]

    def cleanup(self) -> None:
        for node in self.nodes:
            node.stop()
        remove_dir(self.dir)


@pytest.fixture
def redis_cluster() -> Iterator[RedisCluster]:
    with running(RedisCluster()) as cluster:
        yield cluster


def broker_for(cluster: RedisCluster) -> RedisClusterBroker:
    return RedisClusterBroker(cluster.url, reconnect_min=0.02, reconnect_max=0.2)


async def shard_subscribers(cluster: RedisCluster, index: int) -> list[int]:
    """For each client of node ``index`` holding sharded subscriptions: how many it holds."""
    client = redis.asyncio.Redis(port=cluster.ports[index])
    try:
        listing = (await client.execute_command("CLIENT", "LIST")).decode()
    finally:
        await client.aclose()
    counts = []
    for line in listing.splitlines():
        fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
        if int(fields.get("ssub", "0")) > 0:
            counts.append(int(fields["ssub"]))
    return counts


def test_two_servers_one_chat_through_sharded_pubsub(run: Any, redis_cluster: RedisCluster) -> None:
    rooms = redis_cluster.topics_on_every_node("room")  # one room on each shard

    async def main() -> None:
        async with chat_server(broker_for(redis_cluster)) as one, chat_server(broker_for(redis_cluster)) as two:
            pairs = []
            for room in rooms:
                pairs.append((await fastws.connect(uri_of(one, f"/{room}")), await fastws.connect(uri_of(two, f"/{room}"))))
            extra = [await fastws.connect(uri_of(one, f"/{room}x{i}")) for room in rooms for i in range(3)]
            for server in (one, two):
                await wait(broker_of(server, RedisClusterBroker).wait_synced())
            # One subscribing connection per shard and server, whatever the number of topics.
            for index in range(3):
                counts = sorted(await shard_subscribers(redis_cluster, index))
                owned = sum(redis_cluster.owner_index(t) == index for t in one.pubsub.topics)
                assert len(counts) == 2 and max(counts) == owned, (index, counts, owned)
            # Each room is one chat across the two servers, in order per publisher, type kept,
            # and no room hears another's messages (each one's marker comes right after its own).
            for room in rooms:
                await one_topic_exactly_once(one, two, room, count=100)
            # The first clients of each room heard that room's 201 messages, and none of another's.
            for (a, b), room in zip(pairs, rooms, strict=True):
                await a.send(f"{room}:end")
                for ws in (a, b):
                    got = [await wait(ws.recv()) for _ in range(202)]
                    assert all(isinstance(m, str | bytes) and (m if isinstance(m, str) else m.decode()).startswith(f"{room}:") for m in got)
                    assert got[-1] == f"{room}:end"
            for server in (one, two):
                stats = await wait_all_sent_or_lost(server)
                assert stats["lost"] == 0 and stats["outages"] == 0, stats
            for ws in [*extra, *[ws for pair in pairs for ws in pair]]:
                await ws.close()

    run(main(), timeout=60)


def test_a_node_killed_and_restarted(run: Any, redis_cluster: RedisCluster) -> None:
    ops, calm = redis_cluster.topics_on_every_node("ops")[:2]  # on two different shards
    victim = redis_cluster.nodes[redis_cluster.owner_index(ops)]

    async def main() -> None:
        async with chat_server(broker_for(redis_cluster)) as one, chat_server(broker_for(redis_cluster)) as two:
            c, d = await fastws.connect(uri_of(one, f"/{calm}")), await fastws.connect(uri_of(two, f"/{calm}"))

            async def calm_room_carries_on() -> None:  # the other shard, while the first one is down
                await c.send("calm")
                assert await wait(d.recv()) == "calm" and await wait(c.recv()) == "calm"

            # Same port, same nodes.conf when it comes back: it takes its slots back.
            await survives_an_outage(one, two, ops, down=lambda: victim.stop(kill=True), up=victim.start, meanwhile=calm_room_carries_on)
            await calm_room_carries_on()
            for ws in (c, d):
                await ws.close()

    run(main(), timeout=60)


async def move_slot(cluster: RedisCluster, slot: int, source: int, target: int) -> None:
    """Hand an (empty) slot from node ``source`` to node ``target``, as a resharding does."""
    clients = [redis.asyncio.Redis(port=port) for port in cluster.ports]
    try:
        ids = [(await client.execute_command("CLUSTER", "MYID")).decode() for client in clients]
        await clients[target].execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
        await clients[source].execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
        for index in (target, source, *[i for i in range(len(clients)) if i not in (source, target)]):
            await clients[index].execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target])
    finally:
        for client in clients:
            await client.aclose()


def test_subscriptions_follow_a_slot_that_moves(run: Any, redis_cluster: RedisCluster) -> None:
    room = "moving"
    source = redis_cluster.owner_index(room)
    target = (source + 1) % 3

    async def main() -> None:
        async with chat_server(broker_for(redis_cluster)) as one, chat_server(broker_for(redis_cluster)) as two:
            a, b = await fastws.connect(uri_of(one, f"/{room}")), await fastws.connect(uri_of(two, f"/{room}"))
            for server in (one, two):
                await wait(broker_of(server, RedisClusterBroker).wait_synced())
            await a.send("before")
            assert await wait(b.recv()) == "before" and await wait(a.recv()) == "before"
            await move_slot(redis_cluster, key_slot(f"fastws:{room}".encode()), source, target)
            # The old owner drops the subscriptions (sunsubscribe); both servers map the slots
            # again and subscribe at the new owner, without an outage.
            await wait(wait_shard_subscribers(redis_cluster, room, 2, index=target))
            for server in (one, two):
                await until(lambda server=server: broker_of(server, RedisClusterBroker).owner(room) == ("127.0.0.1", redis_cluster.ports[target]),
                            what="the new slot map")
            await a.send("after")
            assert await wait(b.recv()) == "after" and await wait(a.recv()) == "after"
            await b.send("back")
            assert await wait(a.recv()) == "back" and await wait(b.recv()) == "back"
            for server in (one, two):
                stats = await wait_all_sent_or_lost(server)
                assert stats["lost"] == 0 and stats["outages"] == 0, stats
            for ws in (a, b):
                await ws.close()

    run(main(), timeout=60)


def test_a_replica_takes_over_from_a_failed_primary(run: Any, redis_cluster: RedisCluster) -> None:
    room = "failover"
    primary = redis_cluster.owner_index(room)
    replica = redis_cluster.add_replica(primary)

    async def main() -> None:
        async with chat_server(broker_for(redis_cluster)) as one, chat_server(broker_for(redis_cluster)) as two:

            def fail_over() -> None:
                redis_cluster.nodes[primary].stop(kill=True)

            async def promoted() -> None:  # the cluster elects the replica (node timeout 1 s): nothing to restart
                await until(lambda: redis_cluster.owner_index(room) == replica, timeout=scaled(20), what="the replica promoted")

            # The killed primary stays down: the brokers find the slot on the promoted replica.
            await survives_an_outage(one, two, room, down=fail_over, up=lambda: None, meanwhile=promoted)
            for server in (one, two):
                assert broker_of(server, RedisClusterBroker).owner(room) == ("127.0.0.1", redis_cluster.ports[replica])

    run(main(), timeout=60)


def test_server_starts_while_the_whole_cluster_is_down(run: Any) -> None:
    """No node answers at start: an outage, local delivery, the publish counted lost; then the
    nodes start (without slots until the cluster is created) and the subscription lands on
    the shard that owns it."""
    down = RedisCluster()  # free ports, nothing started on them yet

    async def main() -> None:
        async with chat_server(broker_for(down)) as server:
            ws = await starts_while_down(server, down.start)
            assert await shard_subscribers(down, down.owner_index("solo")) == [1]
            await ws.send("through the cluster")
            assert await wait(ws.recv()) == "through the cluster"
            stats = await wait_all_sent_or_lost(server)
            assert stats["sent"] == 1 and stats["lost"] == 1 and stats["outages"] == 1, stats
            owner = redis.asyncio.Redis(port=down.ports[down.owner_index("solo")])
            try:  # the subscription is live on its shard: another publisher reaches the client
                await owner.execute_command("SPUBLISH", "fastws:solo", "from another publisher")
            finally:
                await owner.aclose()
            assert await wait(ws.recv()) == "from another publisher"
            await ws.close()

    try:
        run(main(), timeout=60)
    finally:
        down.cleanup()


def test_cluster_broker_urls() -> None:
    broker = fastws.pubsub.make_broker("redis-cluster://127.0.0.1:7000,[::1]:7001,localhost")
    assert isinstance(broker, RedisClusterBroker)
    assert broker.startup_nodes == [("127.0.0.1", 7000), ("::1", 7001), ("localhost", 6379)]


async def wait_shard_subscribers(cluster: RedisCluster, topic: str, count: int, index: int | None = None) -> None:
    """Poll PUBSUB SHARDNUMSUB on the owner (or node ``index``) until ``count`` processes
    subscribed (they do it in the background)."""
    client = redis.asyncio.Redis(port=cluster.ports[cluster.owner_index(topic) if index is None else index])
    try:
        while True:
            _, subscribed = await client.execute_command("PUBSUB", "SHARDNUMSUB", f"fastws:{topic}")
            if int(subscribed) >= count:
                return
            await asyncio.sleep(0.01)
    finally:
        await client.aclose()


def test_two_chat_processes_on_a_cluster(redis_cluster: RedisCluster) -> None:
    rooms = redis_cluster.topics_on_every_node("hall")[:2]
    procs = []
    try:
        for _ in range(2):
            procs.append(start_cli("chat", "--broker", redis_cluster.url))
        ports = [port for _, port in procs]

        async def main() -> None:
            clients = []
            for room in rooms:
                a = await fastws.connect(f"ws://127.0.0.1:{ports[0]}/{room}")
                b = await fastws.connect(f"ws://127.0.0.1:{ports[1]}/{room}")
                await wait(wait_shard_subscribers(redis_cluster, room, 2))
                clients.append((a, b))
            for (a, b), room in zip(clients, rooms, strict=True):
                await exchange(a, b, tag=(f"{room}a", f"{room}b"))
            for (a, b), room in zip(clients, rooms, strict=True):  # rooms isolated: each one's marker is next
                await b.send(f"{room}:end")
                assert await wait(a.recv()) == await wait(b.recv()) == f"{room}:end"
            for pair in clients:
                for ws in pair:
                    await ws.close()

        asyncio.run(asyncio.wait_for(main(), scaled(30)))
    finally:
        for proc, _ in procs:
            stop_cli(proc)
    assert [proc.returncode for proc, _ in procs] == [0, 0]


def test_two_chat_processes_across_a_node_restart(redis_cluster: RedisCluster) -> None:
    room = "crowd"
    victim = redis_cluster.nodes[redis_cluster.owner_index(room)]

    async def main() -> None:
        await chat_processes_survive_an_outage(
            redis_cluster.url, room, down=lambda: victim.stop(kill=True), up=victim.start,
            subscribed=lambda count: wait_shard_subscribers(redis_cluster, room, count),
        )

    asyncio.run(asyncio.wait_for(main(), scaled(60)))  # the processes are the servers: one client loop is enough
