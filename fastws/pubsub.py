"""Pub/sub topics: connections subscribe to topics, ``publish`` reaches every subscriber.

A ``PubSub`` hub belongs to one ``Server``. It keeps the local subscribers of
each topic and writes published messages to them; an optional broker
(``fastws.brokers``: Redis, Redis Cluster, NATS) carries publishes to the hubs
of other processes and machines.

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
from collections.abc import KeysView
from typing import TYPE_CHECKING, Literal

from . import _accel
from .brokers import Broker, make_broker
from .brokers.redis import RedisBroker
from .defaults import SLOW_SUBSCRIBER, SUBSCRIBER_BUFFER

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["PubSub", "Broker", "RedisBroker", "make_broker"]

logger = logging.getLogger("fastws.pubsub")

OPEN = _accel.OPEN
SlowSubscriberPolicy = Literal["drop", "close"]


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
