"""Pub/sub topics: connections subscribe to topics, ``publish`` reaches every subscriber.

A ``PubSub`` hub belongs to one ``Server``. It keeps the local subscribers of
each topic and writes published messages to them; an optional broker (Redis,
``RedisBroker``) carries publishes to the hubs of other processes and machines.

Delivery is corked: publishes made while the event loop runs one batch of
callbacks are written right after it, each frame encoded once per process and
consecutive frames of one topic joined, so every subscriber gets one
``transport.write`` per batch and all subscribers get the same bytes object.
Messages a callback sends with ``conn.send`` go out at once and may therefore
overtake its publishes to the same connection.

A subscriber whose transport holds more than ``subscriber_buffer`` bytes of
unsent output is slow: new messages are dropped for it (``stats["dropped"]``)
until its buffer drains, or, with ``slow_subscriber="close"``, it is closed
with 1013 (try again later).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import KeysView
from typing import TYPE_CHECKING, Any, Literal

from . import _accel
from .defaults import SLOW_SUBSCRIBER, SUBSCRIBER_BUFFER

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["PubSub", "Broker", "RedisBroker", "make_broker"]

logger = logging.getLogger("fastws.pubsub")

OPEN = _accel.OPEN
SlowSubscriberPolicy = Literal["drop", "close"]


class Broker:
    """Carries publishes between the hubs of several processes.

    The hub calls ``publish`` synchronously for every local publish and
    ``topics_changed`` when a topic gets its first local subscriber or loses
    its last one; the broker calls ``hub.deliver`` for messages from elsewhere.
    """

    hub: PubSub

    def attach(self, hub: PubSub) -> None:
        self.hub = hub

    async def start(self) -> None:
        """Connect; a broker that is down must not stop the server from starting."""

    def publish(self, topic: str, opcode: int, payload: bytes) -> None:
        raise NotImplementedError

    def topics_changed(self) -> None:
        """``hub.topics`` changed: subscribe to or unsubscribe from the difference."""

    async def aclose(self) -> None:
        """Send what is still queued (briefly) and disconnect."""


class PubSub:
    """The topics of one server: subscriptions, publishing, delivery and counters.

    ``stats`` counts: ``published`` (local publish calls), ``delivered``
    (messages written to local subscribers), ``dropped`` (messages not written
    to a slow subscriber), ``closed_slow`` (subscribers closed with 1013),
    ``received`` (messages that came from the broker), ``sent`` (publishes
    the broker accepted), ``lost`` (publishes that never reached the broker),
    ``outages`` (times the broker connection was lost or could not be made).
    """

    def __init__(
        self,
        broker: Broker | None = None,
        *,
        subscriber_buffer: int = SUBSCRIBER_BUFFER,
        slow_subscriber: SlowSubscriberPolicy = SLOW_SUBSCRIBER,
    ) -> None:
        if slow_subscriber not in ("drop", "close"):
            raise ValueError(f"slow_subscriber must be 'drop' or 'close', not {slow_subscriber!r}")
        if subscriber_buffer < 0:
            raise ValueError("subscriber_buffer must be >= 0")
        self.subscriber_buffer = subscriber_buffer
        self.slow_subscriber = slow_subscriber
        self.broker = broker
        self.stats: dict[str, int] = dict.fromkeys(
            ("published", "delivered", "dropped", "closed_slow", "received", "sent", "lost", "outages"), 0
        )
        # Messages and payload bytes written as ready-made frames (write_frames), which
        # the connections' own counters do not see: text, binary messages; text, binary bytes.
        self.fanout = [0, 0, 0, 0]
        self._subscribers: dict[str, set[Connection]] = {}
        self._topics_of: dict[Connection, set[str]] = {}  # the other direction: a subscriber's topics
        self._pending: list[tuple[str, bytes, int, bytes]] = []  # (topic, frame, opcode, payload)
        self._flush_scheduled = False
        self._over: set[Connection] = set()  # found over the bound; cleared when their writing resumes
        if broker is not None:
            broker.attach(self)

    # -- subscriptions ------------------------------------------------------------

    @property
    def topics(self) -> KeysView[str]:
        """Topics with at least one local subscriber (a live view)."""
        return self._subscribers.keys()

    def topics_of(self, conn: Connection) -> frozenset[str]:
        """The topics ``conn`` is subscribed to (what ``conn.topics`` returns)."""
        topics = self._topics_of.get(conn)
        return frozenset(topics) if topics else frozenset()

    def subscribers(self, topic: str) -> int:
        """How many local connections are subscribed to ``topic``."""
        members = self._subscribers.get(topic)
        return len(members) if members else 0

    def subscribe(self, conn: Connection, topic: str) -> bool:
        """Subscribe ``conn`` to ``topic``; False if it already was or is no longer open."""
        if not isinstance(topic, str):
            raise TypeError(f"topic must be str, not {type(topic).__name__}")
        if conn.state != OPEN:
            return False
        topics = self._topics_of.get(conn)
        if topics is None:
            topics = self._topics_of[conn] = set()
        elif topic in topics:
            return False
        topics.add(topic)
        members = self._subscribers.get(topic)
        if members is None:
            self._subscribers[topic] = {conn}
            if self.broker is not None:
                self.broker.topics_changed()
        else:
            members.add(conn)
        return True

    def unsubscribe(self, conn: Connection, topic: str) -> bool:
        """Unsubscribe ``conn`` from ``topic``; False if it was not subscribed."""
        topics = self._topics_of.get(conn)
        if not topics or topic not in topics:
            return False
        topics.discard(topic)
        if not topics:
            del self._topics_of[conn]
        self._forget(conn, topic)
        return True

    def unsubscribe_all(self, conn: Connection) -> None:
        """Drop every subscription of ``conn`` (done when it closes)."""
        topics = self._topics_of.pop(conn, None)
        if topics:
            for topic in topics:
                self._forget(conn, topic)
        self._over.discard(conn)

    def _forget(self, conn: Connection, topic: str) -> None:
        members = self._subscribers.get(topic)
        if members is None:
            return
        members.discard(conn)
        if not members:
            del self._subscribers[topic]
            if self.broker is not None:
                self.broker.topics_changed()

    def writing_resumed(self, conn: Connection) -> None:
        """``conn``'s write buffer drained: it gets messages again."""
        self._over.discard(conn)

    # -- publishing -----------------------------------------------------------------

    def publish(self, topic: str, message: str | bytes | bytearray | memoryview, text: bool | None = None) -> None:
        """Send ``message`` to every subscriber of ``topic``, here and through the broker.

        ``str`` is sent as text, bytes-like as binary unless ``text`` says
        otherwise (bytes with ``text=True`` must be valid UTF-8). Synchronous:
        local subscribers get it once the current batch of callbacks is done,
        the broker side is queued and sent in order in the background.
        """
        if isinstance(message, str):
            payload = message.encode()
            opcode = 2 if text is False else 1
        else:
            payload = bytes(message)
            opcode = 1 if text else 2
        self.stats["published"] += 1
        self._queue(topic, opcode, payload)
        if self.broker is not None:
            self.broker.publish(topic, opcode, payload)

    def deliver(self, topic: str, opcode: int, payload: bytes) -> None:
        """A message from the broker: deliver it to the local subscribers only."""
        self.stats["received"] += 1
        self._queue(topic, opcode, payload)

    def _queue(self, topic: str, opcode: int, payload: bytes) -> None:
        if topic not in self._subscribers:
            return
        self._pending.append((topic, _accel.encode_frame(opcode, payload), opcode, payload))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Write the queued messages now (called by the event loop after each batch of callbacks)."""
        self._flush_scheduled = False
        pending = self._pending
        if not pending:
            return
        self._pending = []
        count = len(pending)
        start = 0
        while start < count:
            topic = pending[start][0]
            end = start + 1
            while end < count and pending[end][0] == topic:
                end += 1
            members = self._subscribers.get(topic)
            if members:
                run = pending[start:end]
                data = run[0][1] if len(run) == 1 else b"".join([item[1] for item in run])
                self._write_to(members, data, run)
            start = end

    def _write_to(self, members: set[Connection], data: bytes, run: list[tuple[str, bytes, int, bytes]]) -> None:
        limit = self.subscriber_buffer
        over = self._over
        written = plain = 0
        slow: list[Connection] | None = None
        for conn in members:
            if conn.state != OPEN:
                continue
            if conn.writing_paused and (conn in over or conn.transport.get_write_buffer_size() > limit):
                if slow is None:
                    slow = []
                slow.append(conn)
                continue
            if conn.extension is None:
                conn.write_frames(data)
                plain += 1
            else:  # compressed connections need their own frames
                for _, _, opcode, payload in run:
                    conn.send_frame(opcode, payload)
            written += 1
        self.stats["delivered"] += written * len(run)
        if plain:
            fanout = self.fanout
            for _, _, opcode, payload in run:
                kind = opcode - 1  # 0 text, 1 binary
                fanout[kind] += plain
                fanout[kind + 2] += plain * len(payload)
        if slow is not None:
            self._slow(slow, len(run))

    def _slow(self, conns: list[Connection], messages: int) -> None:
        if self.slow_subscriber == "close":
            for conn in conns:
                logger.info("closing a slow subscriber (over %d bytes of unsent output): %r", self.subscriber_buffer, conn)
                self.stats["closed_slow"] += 1
                conn.close(1013, "try again later")
        else:
            self.stats["dropped"] += messages * len(conns)
            self._over.update(conns)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self.broker is not None:
            await self.broker.start()

    async def aclose(self) -> None:
        self.flush()
        if self.broker is not None:
            await self.broker.aclose()

    def __repr__(self) -> str:
        return f"<fastws.PubSub topics={len(self._subscribers)} broker={self.broker!r}>"


# -- Redis ------------------------------------------------------------------------------

# A message on a Redis channel: MAGIC, kind (b"t" text / b"b" binary), the
# publishing process's 8-byte id, then the payload. 0xFE never occurs in UTF-8,
# so text published by other tools (``redis-cli PUBLISH``) is told apart.
_MAGIC = b"\xfe"
_HEADER_SIZE = 10


class RedisBroker(Broker):
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

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        channel_prefix: str = "fastws:",
        reconnect_min: float = 0.1,
        reconnect_max: float = 5.0,
        max_backlog: int = 10_000,
        connect_timeout: float = 5.0,
    ) -> None:
        try:
            import redis.asyncio  # noqa: F401
        except ImportError:
            raise ImportError("the Redis broker needs redis-py: pip install 'fastws[redis]'") from None
        self.url = url
        self.channel_prefix = channel_prefix
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.max_backlog = max_backlog
        self.connect_timeout = connect_timeout
        self.connected = False
        self._node = os.urandom(8)
        self._headers = {1: _MAGIC + b"t" + self._node, 2: _MAGIC + b"b" + self._node}
        self._prefix = channel_prefix.encode()
        self._private_channel = self._prefix + b"\x00node:" + self._node.hex().encode()
        self._backlog: list[tuple[bytes, bytes]] = []  # (channel, message) waiting for the publisher task
        self._backlog_ready: asyncio.Event | None = None
        self._topics_changed: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._first_attempt: asyncio.Future[None] | None = None
        self._subscribed: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._publisher: Any = None
        self._closing = False
        self._state_waiters: list[asyncio.Future[None]] = []

    def __repr__(self) -> str:
        return f"<fastws.RedisBroker {self.url} {'connected' if self.connected else 'disconnected'}>"

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

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._backlog_ready = asyncio.Event()
        self._topics_changed = asyncio.Event()
        self._stop = asyncio.Event()
        self._first_attempt = loop.create_future()
        self._publisher = self._client()
        self._tasks = [
            asyncio.ensure_future(self._subscriber_loop()),
            asyncio.ensure_future(self._publisher_loop()),
        ]
        await asyncio.shield(self._first_attempt)

    # -- publishing side ------------------------------------------------------------

    def publish(self, topic: str, opcode: int, payload: bytes) -> None:
        if not self.connected or len(self._backlog) >= self.max_backlog:
            self.hub.stats["lost"] += 1
            return
        self._backlog.append((self._prefix + topic.encode(), self._headers[opcode] + payload))
        if len(self._backlog) == 1 and self._backlog_ready is not None:
            self._backlog_ready.set()

    async def _publisher_loop(self) -> None:
        assert self._backlog_ready is not None
        stats = self.hub.stats
        while True:
            if not self._backlog:
                if self._closing:
                    return
                self._backlog_ready.clear()
                await self._backlog_ready.wait()
                continue
            batch, self._backlog = self._backlog, []
            pipe = self._publisher.pipeline(transaction=False)
            for channel, message in batch:
                pipe.publish(channel, message)
            try:
                await pipe.execute()
            except asyncio.CancelledError:
                stats["lost"] += len(batch)
                raise
            except Exception as exc:
                # The subscriber connection notices the outage too and handles reconnecting.
                stats["lost"] += len(batch)
                logger.warning("Redis %s: %d publishes lost: %s", self.url, len(batch), exc)
            else:
                stats["sent"] += len(batch)

    # -- subscribing side ---------------------------------------------------------------

    def topics_changed(self) -> None:
        if self._topics_changed is not None:
            self._topics_changed.set()

    async def wait_synced(self) -> None:
        """Wait until connected with Redis subscriptions matching the local topics."""
        await self._wait_until(lambda: self.connected and self._subscribed == set(self.hub.topics))

    async def wait_disconnected(self) -> None:
        """Wait until the broker has noticed that Redis is gone."""
        await self._wait_until(lambda: not self.connected)

    async def _wait_until(self, condition: Any) -> None:
        while not condition():
            waiter = asyncio.get_running_loop().create_future()
            self._state_waiters.append(waiter)
            await waiter

    def _state_changed(self) -> None:
        waiters, self._state_waiters = self._state_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _subscriber_loop(self) -> None:
        assert self._topics_changed is not None and self._first_attempt is not None and self._stop is not None
        delay = self.reconnect_min
        client = self._client()
        try:
            while not self._closing:
                pubsub = client.pubsub()
                reader: asyncio.Task[None] | None = None
                try:
                    self._topics_changed.clear()
                    wanted = set(self.hub.topics)
                    await pubsub.subscribe(self._private_channel, *[self._channel(t) for t in wanted])
                    self._subscribed = wanted
                    reader = asyncio.ensure_future(self._read(pubsub))
                    # The publishing connection may still be the one from before an
                    # outage: drop it so that the next publish does not fail on it.
                    await _quietly(self._publisher.connection_pool.disconnect())
                    self._set_up()
                    delay = self.reconnect_min
                    await self._sync_topics(pubsub, reader)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._set_down(exc)
                finally:
                    if reader is not None:
                        reader.cancel()
                        await asyncio.wait([reader], timeout=1.0)
                    await _quietly(pubsub.aclose())
                    await _quietly(client.connection_pool.disconnect())
                    if not self._first_attempt.done():
                        self._first_attempt.set_result(None)
                if self._closing:
                    return
                stop = asyncio.ensure_future(self._stop.wait())
                try:
                    await asyncio.wait([stop], timeout=delay * random.uniform(0.8, 1.2))
                finally:
                    stop.cancel()
                delay = min(delay * 2, self.reconnect_max)
        finally:
            await _quietly(client.aclose())

    async def _sync_topics(self, pubsub: Any, reader: asyncio.Task[None]) -> None:
        """Follow the local topics until the connection fails (the reader ends)."""
        assert self._topics_changed is not None
        changed = self._topics_changed
        while True:
            wanted = set(self.hub.topics)
            added, removed = wanted - self._subscribed, self._subscribed - wanted
            if added:
                await pubsub.subscribe(*[self._channel(t) for t in added])
            if removed:
                await pubsub.unsubscribe(*[self._channel(t) for t in removed])
            self._subscribed = wanted
            if not changed.is_set():
                self._state_changed()
            wait_changed = asyncio.ensure_future(changed.wait())
            try:
                await asyncio.wait([reader, wait_changed], return_when=asyncio.FIRST_COMPLETED)
            finally:
                wait_changed.cancel()
            if self._closing:
                return
            if reader.done():
                reader.result()  # raises what ended it
                raise ConnectionError("the Redis subscription ended")
            changed.clear()

    async def _read(self, pubsub: Any) -> None:
        hub = self.hub
        prefix_len = len(self._prefix)
        node = self._node
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
            if message is None or message["type"] != "message":
                continue
            data: bytes = message["data"]
            if data[:1] == _MAGIC and len(data) >= _HEADER_SIZE:
                if data[2:_HEADER_SIZE] == node:
                    continue  # ours: delivered locally when it was published
                opcode = 1 if data[1:2] == b"t" else 2
                payload = data[_HEADER_SIZE:]
            else:  # published by another tool: text when it is UTF-8
                try:
                    data.decode()
                    opcode = 1
                except UnicodeDecodeError:
                    opcode = 2
                payload = data
            try:
                topic = message["channel"][prefix_len:].decode()
            except UnicodeDecodeError:
                continue
            hub.deliver(topic, opcode, payload)

    def _channel(self, topic: str) -> bytes:
        return self._prefix + topic.encode()

    def _set_up(self) -> None:
        self.connected = True
        logger.info("Redis %s: connected, %d topics subscribed", self.url, len(self._subscribed))
        if self._first_attempt is not None and not self._first_attempt.done():
            self._first_attempt.set_result(None)
        self._state_changed()

    def _set_down(self, exc: BaseException) -> None:
        """Count and log an outage once, when it starts (not at every failed reconnection)."""
        assert self._first_attempt is not None
        if self.connected or not self._first_attempt.done():
            self.hub.stats["outages"] += 1
            logger.warning("Redis %s unreachable (%s); local delivery goes on, reconnecting", self.url, exc)
        self.connected = False
        self._state_changed()

    async def aclose(self) -> None:
        self._closing = True
        if not self._tasks:
            return
        # Ask the tasks to finish (the publisher sends its backlog first) rather than
        # cancelling them in the middle of a redis-py call; cancel what overstays.
        for event in (self._stop, self._topics_changed, self._backlog_ready):
            if event is not None:
                event.set()
        _, overstaying = await asyncio.wait(self._tasks, timeout=self.connect_timeout)
        for task in overstaying:
            task.cancel()
        if overstaying:
            await asyncio.wait(overstaying, timeout=1.0)
        self.hub.stats["lost"] += len(self._backlog)
        self._backlog = []
        self.connected = False
        await _quietly(self._publisher.aclose())
        self._tasks = []


async def _quietly(awaitable: Any) -> None:
    """Await a clean-up step whose failure (the server is gone) changes nothing."""
    try:
        await awaitable
    except Exception:
        pass


def make_broker(broker: str | Broker | None) -> Broker | None:
    """``broker=`` of ``serve`` / ``create_server``: None (in-process), a URL, or a Broker."""
    if broker is None or isinstance(broker, Broker):
        return broker
    if isinstance(broker, str):
        if broker.startswith(("redis://", "rediss://", "unix://")):
            return RedisBroker(broker)
        raise ValueError(f"unsupported broker URL {broker!r} (expected redis://host:port/db)")
    raise TypeError(f"broker must be a URL or a fastws.pubsub.Broker, not {type(broker).__name__}")
