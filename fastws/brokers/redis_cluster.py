"""The Redis Cluster broker: sharded pub/sub (``SPUBLISH`` / ``SSUBSCRIBE``, Redis 7+).

``redis-cluster://host:port[,host:port...]``. Classic ``PUBLISH`` on a cluster
goes to every node, so more nodes add no capacity; a sharded channel lives on
the shard that owns its hash slot, and only that shard carries its messages.
"""

from __future__ import annotations

import asyncio
from typing import Any, Unpack
from urllib.parse import urlsplit

from .base import BrokerOptions, QueuedBroker, logger, quietly, require, split_hosts

Node = tuple[str, int]
SLOTS = 16384


class SlotMoved(Exception):
    """A shard dropped a channel we still want (its slot moved elsewhere): map the slots again."""


class RedisClusterBroker(QueuedBroker):
    """Publishes through a Redis Cluster's sharded pub/sub (redis-py: ``pip install 'fastws[redis]'``).

    The broker keeps the cluster's slot map (``CLUSTER SLOTS`` from any node
    that answers, the URL's nodes first) and, for each primary that owns the
    slot of at least one local topic, one subscribing connection holding the
    ``SSUBSCRIBE`` of all those topics: a connection per shard in use, not per
    topic. Publishes are grouped by owner and sent, in order, on one
    connection per node with ``SPUBLISH``; a topic always hashes to one shard,
    so the order per publisher holds. Nothing is retried, so nothing arrives
    twice: what a node did not acknowledge is counted in ``stats["lost"]``.

    When a shard's connection fails, the other shards keep delivering; the
    broker counts an outage, maps the slots again after a backoff and
    subscribes where the slots now are (on the same node once it is back, or
    on the replica that took over). A ``sunsubscribe`` the broker did not ask
    for (the slot moved, Redis 7 drops the subscription) maps the slots again
    at once.
    """

    kind = "Redis Cluster"

    def __init__(self, url: str = "redis-cluster://127.0.0.1:7000", **options: Unpack[BrokerOptions]) -> None:
        require("redis.asyncio", "Redis Cluster", "redis")
        super().__init__(url, **options)
        parts = urlsplit(url)
        self.startup_nodes: list[Node] = split_hosts(parts.netloc, 6379)
        self.username = parts.username
        self.password = parts.password
        self._prefix = self.channel_prefix.encode()
        self._slots: list[Node | None] | None = None  # slot -> primary, None until mapped
        self._shards: dict[Node, _Shard] = {}
        self._publishers: dict[Node, Any] = {}
        self._resync: asyncio.Event | None = None
        self._remap = False
        self._background: set[asyncio.Task[None]] = set()
        self._suspect: set[Node] = set()  # nodes whose shard failed: their publisher may be stale

    # -- the slot map ---------------------------------------------------------------------

    def _client(self, node: Node) -> Any:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # No retries inside redis-py: a failure must surface here, where it is counted.
        return Redis(
            host=node[0],
            port=node[1],
            username=self.username,
            password=self.password,
            retry=Retry(NoBackoff(), 0),
            socket_connect_timeout=self.connect_timeout,
            health_check_interval=0,
        )

    def _channel(self, topic: str) -> bytes:
        return self._prefix + topic.encode()

    def owner(self, topic: str) -> Node | None:
        """The primary that owns ``topic``'s channel, as last mapped (None: not covered or not mapped yet)."""
        from redis.crc import key_slot

        if self._slots is None:
            return None
        return self._slots[key_slot(self._channel(topic))]

    async def _map_slots(self) -> None:
        """Ask for ``CLUSTER SLOTS``: the nodes we hold a live subscription to, then the URL's, then
        the others we know, nodes that just failed last; raise if none answers."""
        live = [node for node, shard in self._shards.items() if shard.up]
        known = [*live, *self.startup_nodes, *self._shards, *self._publishers]
        candidates = [node for node in dict.fromkeys(known) if node not in self._suspect]
        candidates += [node for node in dict.fromkeys(known) if node in self._suspect]
        errors = []
        for node in candidates:
            client = self._client(node)
            try:
                reply = await asyncio.wait_for(client.execute_command("CLUSTER", "SLOTS"), self.connect_timeout)
            except Exception as exc:
                errors.append(f"{node[0]}:{node[1]}: {exc}")
                continue
            finally:
                await quietly(client.aclose())
            slots: list[Node | None] = [None] * SLOTS
            for entry in reply:
                start, end, primary = int(entry[0]), int(entry[1]), entry[2]
                host = primary[0].decode() if isinstance(primary[0], bytes) else str(primary[0])
                owner = (host or node[0], int(primary[1]))
                slots[start : end + 1] = [owner] * (end - start + 1)
            self._slots = slots
            return
        raise ConnectionError("no node of the cluster answered: " + "; ".join(errors))

    # -- publishing side ----------------------------------------------------------------

    def publish(self, topic: str, opcode: int, payload: bytes) -> None:
        # Gated on the slot map, not on every shard being up: a publish to a healthy
        # shard goes through while another is down; one to a dead shard fails and is counted.
        if self._slots is None or len(self._backlog) >= self.max_backlog:
            self.hub.stats["lost"] += 1
            return
        self._backlog.append((topic, self._headers[opcode] + payload))
        if len(self._backlog) == 1 and self._backlog_ready is not None:
            self._backlog_ready.set()

    async def _send(self, batch: list[tuple[str, bytes]]) -> int:
        groups: dict[Node, list[tuple[bytes, bytes]]] = {}
        unmapped = 0
        for topic, message in batch:
            node = self.owner(topic)
            if node is None:
                unmapped += 1
            else:
                groups.setdefault(node, []).append((self._channel(topic), message))
        if unmapped:
            self._ask_resync()
        nodes = list(groups)
        results = await asyncio.gather(*[self._send_to(node, groups[node]) for node in nodes], return_exceptions=True)
        sent = 0
        for node, result in zip(nodes, results, strict=True):
            if isinstance(result, BaseException):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                logger.warning("%s %s: %d publishes to %s:%d lost: %s", self.kind, self.url, len(groups[node]), *node, result)
                self._drop_publisher(node)
                self._ask_resync()
            else:
                sent += result
        return sent

    async def _send_to(self, node: Node, items: list[tuple[bytes, bytes]]) -> int:
        client = self._publishers.get(node)
        if client is None:
            client = self._publishers[node] = self._client(node)
        pipe = client.pipeline(transaction=False)
        for channel, message in items:
            pipe.execute_command("SPUBLISH", channel, message)
        results = await pipe.execute(raise_on_error=False)
        failed = [r for r in results if isinstance(r, Exception)]
        if failed:  # MOVED / CLUSTERDOWN: the map is stale or the cluster is not serving that slot
            logger.warning("%s %s: %d publishes to %s:%d refused: %s", self.kind, self.url, len(failed), *node, failed[0])
            self._ask_resync()
        return len(results) - len(failed)

    def _drop_publisher(self, node: Node) -> None:
        client = self._publishers.pop(node, None)
        if client is not None:
            self._in_background(quietly(client.aclose()))

    async def _close_publisher(self) -> None:
        for node in list(self._publishers):
            await quietly(self._publishers.pop(node).aclose())

    def _in_background(self, coro: Any) -> None:
        """Run a clean-up step without waiting for it (and keep it referenced until it is done)."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _ask_resync(self) -> None:
        self._remap = True
        if self._resync is not None:
            self._resync.set()

    # -- subscribing side ---------------------------------------------------------------

    async def _session(self) -> None:
        """Map the slots, keep one shard subscriber per owner in use, until a shard fails."""
        assert self._topics_changed is not None and self._stop is not None
        if self._resync is None:
            self._resync = asyncio.Event()
        resync = self._resync
        remaps = 0
        try:
            await self._map_slots()
            self._remap = False
            while not self._closing:
                resync.clear()
                self._topics_changed.clear()
                if self._remap or any(shard.moved for shard in self._shards.values()):
                    # A slot moved or a publish was refused: map again now, no outage, unless
                    # the map keeps being wrong (then the backoff of an outage applies).
                    remaps += 1
                    if remaps > 3:
                        raise ConnectionError("the slot map keeps changing")
                    self._remap = False
                    await self._map_slots()
                self._plan()
                await self._wait_until(self._settled)
                failed = [shard for shard in self._shards.values() if shard.failure is not None and not shard.moved]
                if failed:
                    shard = failed[0]
                    raise ConnectionError(f"shard {shard.node[0]}:{shard.node[1]}: {shard.failure}")
                if self._remap or any(shard.moved for shard in self._shards.values()):
                    continue
                remaps = 0
                self._subscribed = set().union(*[shard.subscribed for shard in self._shards.values()])
                if not self.connected:
                    self._set_up()
                else:
                    self._state_changed()
                waits = [asyncio.ensure_future(event.wait()) for event in (self._topics_changed, resync, self._stop)]
                try:
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for waiter in waits:
                        waiter.cancel()
        finally:
            if self._closing:
                await asyncio.gather(*[shard.stop() for shard in self._shards.values()])
                self._shards.clear()
            else:  # the failed shards go; the healthy ones keep delivering through the backoff
                for node, shard in list(self._shards.items()):
                    if shard.failure is not None:
                        del self._shards[node]

    def _plan(self) -> None:
        """Start, update or stop shard subscribers so that each local topic is on its owner's."""
        plan: dict[Node, set[str]] = {}
        for topic in self.hub.topics:
            node = self.owner(topic)
            if node is None:
                raise ConnectionError(f"topic {topic!r}: its slot is not covered by the cluster")
            plan.setdefault(node, set()).add(topic)
        for node, shard in list(self._shards.items()):
            if node not in plan or shard.failure is not None:
                del self._shards[node]
                self._in_background(shard.stop())
        for node, topics in plan.items():
            current = self._shards.get(node)
            if current is None:
                current = self._shards[node] = _Shard(self, node)
                current.want(topics)
                current.start()
            else:
                current.want(topics)

    def _settled(self) -> bool:
        return all(shard.failure is not None or (shard.up and shard.subscribed == shard.wanted) for shard in self._shards.values())

    def _shard_failed(self) -> None:
        if self._resync is not None:
            self._resync.set()
        self._state_changed()

    def _synced(self) -> bool:
        shards = self._shards.values()
        return (
            self.connected
            and all(shard.up and shard.subscribed == shard.wanted for shard in shards)
            and set().union(*[shard.subscribed for shard in shards]) == set(self.hub.topics)
        )

    async def aclose(self) -> None:
        if self._resync is not None:
            self._resync.set()
        await super().aclose()
        for shard in list(self._shards.values()):
            await shard.stop()
        self._shards.clear()
        if self._background:
            await asyncio.wait(self._background, timeout=1.0)


class _Shard:
    """One subscribing connection to one primary, with the ``SSUBSCRIBE`` of every local topic it owns."""

    def __init__(self, broker: RedisClusterBroker, node: Node) -> None:
        self.broker = broker
        self.node = node
        self.wanted: set[str] = set()
        self.subscribed: set[str] = set()
        self.up = False
        self.moved = False
        self.failure: BaseException | None = None
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.ensure_future(self._run())

    def want(self, topics: set[str]) -> None:
        if topics != self.wanted:
            self.wanted = set(topics)
            self.changed.set()

    async def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            await asyncio.wait([self.task], timeout=self.broker.connect_timeout)

    async def _run(self) -> None:
        from redis.exceptions import ResponseError

        broker = self.broker
        client = broker._client(self.node)
        pubsub = client.pubsub()
        reader: asyncio.Task[None] | None = None
        try:
            self.changed.clear()
            first = set(self.wanted)
            await self._command(pubsub.ssubscribe, first)
            self.subscribed = first
            reader = asyncio.ensure_future(self._read(pubsub))
            if self.node in broker._suspect:
                # Back from an outage: a publishing connection to it that sat idle meanwhile is
                # stale (only then: dropping a healthy one would fail the publishes in flight).
                broker._suspect.discard(self.node)
                broker._drop_publisher(self.node)
            self.up = True
            while True:
                added, removed = self.wanted - self.subscribed, self.subscribed - self.wanted
                if added:
                    await self._command(pubsub.ssubscribe, added)
                    self.subscribed |= added
                if removed:
                    self.subscribed -= removed
                    await self._command(pubsub.sunsubscribe, removed)
                if not self.changed.is_set():
                    broker._state_changed()
                wait_changed = asyncio.ensure_future(self.changed.wait())
                try:
                    await asyncio.wait([reader, wait_changed], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    wait_changed.cancel()
                if reader.done():
                    reader.result()
                    raise ConnectionError("the subscription ended")
                self.changed.clear()
        except asyncio.CancelledError:
            raise
        except SlotMoved as exc:
            self.moved = True
            self.failure = exc
        except ResponseError as exc:  # MOVED: the node does not own a slot we asked it for
            self.moved = str(exc).startswith(("MOVED", "ASK"))
            self.failure = exc
        except Exception as exc:
            self.failure = exc
        finally:
            self.up = False
            if reader is not None:
                reader.cancel()
                await asyncio.wait([reader], timeout=1.0)
            await quietly(pubsub.aclose())
            await quietly(client.aclose())
            if self.failure is not None:
                if not self.moved:
                    broker._suspect.add(self.node)
                broker._shard_failed()

    async def _command(self, command: Any, topics: set[str]) -> None:
        """``SSUBSCRIBE`` / ``SUNSUBSCRIBE`` ``topics``: one call per hash slot, as Redis requires."""
        from redis.crc import key_slot

        by_slot: dict[int, list[bytes]] = {}
        for topic in sorted(topics):
            channel = self.broker._channel(topic)
            by_slot.setdefault(key_slot(channel), []).append(channel)
        for channels in by_slot.values():
            await command(*channels)

    async def _read(self, pubsub: Any) -> None:
        broker = self.broker
        prefix = broker._prefix
        prefix_len = len(prefix)
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=False, timeout=None)
            if message is None:
                continue
            kind = message["type"]
            channel: bytes = message["channel"]
            if kind == "smessage":
                try:
                    topic = channel[prefix_len:].decode()
                except UnicodeDecodeError:
                    continue
                broker._receive(topic, message["data"])
            elif kind == "sunsubscribe" and channel.startswith(prefix):
                try:
                    topic = channel[prefix_len:].decode()
                except UnicodeDecodeError:
                    continue
                if topic in self.wanted and topic in self.subscribed:
                    raise SlotMoved(f"{channel!r} left {self.node[0]}:{self.node[1]}")
