"""The single-Redis broker: classic Redis pub/sub (``redis://``, ``rediss://``, ``unix://``)."""

from __future__ import annotations

import asyncio
from typing import Any, Unpack

from .base import BrokerOptions, QueuedBroker, quietly, require


class RedisBroker(QueuedBroker):
    """Publishes through Redis pub/sub (redis-py's asyncio client: ``pip install 'fastws[redis]'``).

    One connection subscribes (to ``channel_prefix + topic`` for every topic
    with local subscribers), one publishes, in order, from a queue that local
    publishes append to. A process skips its own messages when they come back,
    since it delivered them locally already. When Redis is unreachable local
    delivery goes on, publishes are counted in ``stats["lost"]``, and the
    broker reconnects with exponential backoff between ``reconnect_min`` and
    ``reconnect_max`` seconds, then subscribes again. At most ``max_backlog``
    publishes wait for Redis; beyond that they are lost (and counted).
    """

    kind = "Redis"

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", **options: Unpack[BrokerOptions]) -> None:
        require("redis.asyncio", "Redis", "redis")
        super().__init__(url, **options)
        self._prefix = self.channel_prefix.encode()
        self._private_channel = self._prefix + b"\x00node:" + self.node.hex().encode()
        self._publisher: Any = None

    def _client(self) -> Any:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # No retries inside redis-py: an outage must surface here, where it is counted and logged.
        return Redis.from_url(
            self.url,
            retry=Retry(NoBackoff(), 0),
            socket_connect_timeout=self.connect_timeout,
            health_check_interval=0,
        )

    def _channel(self, topic: str) -> bytes:
        return self._prefix + topic.encode()

    async def _send(self, batch: list[tuple[str, bytes]]) -> int:
        if self._publisher is None:
            self._publisher = self._client()
        pipe = self._publisher.pipeline(transaction=False)
        for topic, message in batch:
            pipe.publish(self._channel(topic), message)
        await pipe.execute()
        return len(batch)

    async def _close_publisher(self) -> None:
        if self._publisher is not None:
            await self._publisher.aclose()

    async def _session(self) -> None:
        client = self._client()
        pubsub = client.pubsub()
        reader: asyncio.Task[None] | None = None
        try:
            assert self._topics_changed is not None
            self._topics_changed.clear()
            wanted = set(self.hub.topics)
            await pubsub.subscribe(self._private_channel, *[self._channel(t) for t in wanted])
            self._subscribed = wanted
            reader = asyncio.ensure_future(self._read(pubsub))
            # The publishing connection may still be the one from before an
            # outage: drop it so that the next publish does not fail on it.
            if self._publisher is not None:
                await quietly(self._publisher.connection_pool.disconnect())
            self._set_up()

            async def subscribe(topics: list[str]) -> None:
                await pubsub.subscribe(*[self._channel(t) for t in topics])

            async def unsubscribe(topics: list[str]) -> None:
                await pubsub.unsubscribe(*[self._channel(t) for t in topics])

            await self._follow_topics(subscribe, unsubscribe, reader)
        finally:
            if reader is not None:
                reader.cancel()
                await asyncio.wait([reader], timeout=1.0)
            await quietly(pubsub.aclose())
            await quietly(client.connection_pool.disconnect())
            await quietly(client.aclose())

    async def _read(self, pubsub: Any) -> None:
        prefix_len = len(self._prefix)
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
            if message is None or message["type"] != "message":
                continue
            try:
                topic = message["channel"][prefix_len:].decode()
            except UnicodeDecodeError:
                continue
            self._receive(topic, message["data"])
