"""The NATS broker: topics as NATS subjects (``nats://host:port[,host:port...]``, ``pip install 'fastws[nats]'``)."""

from __future__ import annotations

import asyncio
from typing import Any, Unpack
from urllib.parse import urlsplit

from .base import BrokerOptions, QueuedBroker, logger, quietly, require

# Bytes of a topic's UTF-8 that stand for themselves in a subject token; every
# other byte (".", "*", ">", whitespace, "%", non-ASCII...) becomes %XX.
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def subject_token(topic: str) -> str:
    """``topic`` as one NATS subject token: ``[A-Za-z0-9_-]`` kept, other bytes ``%XX``, ``""`` as ``%``.

    One token, so that no topic is a wildcard or reaches into another's
    hierarchy; reversible, so that a subject names one topic only.
    """
    if not topic:
        return "%"
    return "".join(chr(byte) if byte in _SAFE else f"%{byte:02X}" for byte in topic.encode())


class NatsBroker(QueuedBroker):
    """Publishes through NATS core pub/sub (nats-py).

    One connection per process both publishes and subscribes: to the subject
    ``channel_prefix + subject_token(topic)`` (``fastws.`` by default) for each
    topic with local subscribers. It connects with ``no_echo``, so the server
    does not send a process its own publishes back (they were delivered
    locally). A batch of publishes is followed by a flush (PING/PONG): what the
    server did not acknowledge is counted lost (nats-py may write the PING ahead
    of the batch's last publishes: see ``_confirm``). nats-py's own reconnection is
    off: when the connection drops, the outage is counted here, the publishes
    meanwhile are lost (not buffered and sent late), and the broker reconnects
    with backoff to the URL's servers in turn and subscribes again.
    """

    kind = "NATS"

    def __init__(self, url: str = "nats://127.0.0.1:4222", **options: Unpack[BrokerOptions]) -> None:
        require("nats", "NATS", "nats")
        options.setdefault("channel_prefix", "fastws.")
        super().__init__(url, **options)
        parts = urlsplit(url)
        userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        hosts = parts.netloc.rsplit("@", 1)[-1].split(",")
        self.servers = [f"{parts.scheme}://{userinfo}{host.strip()}" for host in hosts if host.strip()]
        if not self.servers:
            raise ValueError(f"no server in {url!r}")
        self._nc: Any = None
        self._subscriptions: dict[str, Any] = {}

    def subject(self, topic: str) -> str:
        """The NATS subject of ``topic``."""
        return self.channel_prefix + subject_token(topic)

    async def _send(self, batch: list[tuple[str, bytes]]) -> int:
        nc = self._nc
        if nc is None or not nc.is_connected:
            raise ConnectionError("not connected")
        for topic, message in batch:
            await nc.publish(self.subject(topic), message)
        await nc.flush(timeout=self.connect_timeout)
        return len(batch)

    async def _session(self) -> None:
        import nats
        import nats.errors

        loop = asyncio.get_running_loop()
        closed: asyncio.Future[None] = loop.create_future()

        async def on_closed() -> None:
            if not closed.done():
                closed.set_result(None)

        async def on_error(exc: Exception) -> None:
            # A connection error is followed by the closing, which counts and logs it once.
            if isinstance(exc, nats.errors.SlowConsumerError):
                logger.warning("%s %s: messages dropped for a slow subscription: %s", self.kind, self.url, exc)

        nc: Any = await nats.connect(  # typed Any: its flush() wants int seconds, floats work
            servers=self.servers,
            allow_reconnect=False,
            # Each server tried twice at most, at once (0 would mean "for ever" to nats-py's
            # initial connect): the backoff between attempts is ours.
            max_reconnect_attempts=1,
            reconnect_time_wait=0,
            connect_timeout=self.connect_timeout,
            no_echo=True,
            closed_cb=on_closed,
            error_cb=on_error,
        )
        reader = asyncio.ensure_future(self._until_closed(nc, closed))
        try:
            assert self._topics_changed is not None
            self._topics_changed.clear()
            self._subscriptions = {}
            wanted = set(self.hub.topics)
            await self._subscribe(nc, sorted(wanted))
            await self._confirm(nc)
            self._subscribed = wanted
            self._nc = nc
            self._set_up()

            async def subscribe(topics: list[str]) -> None:
                await self._subscribe(nc, topics)
                await self._confirm(nc)

            async def unsubscribe(topics: list[str]) -> None:
                for topic in topics:
                    subscription = self._subscriptions.pop(topic, None)
                    if subscription is not None:
                        await subscription.unsubscribe()

            await self._follow_topics(subscribe, unsubscribe, reader)
        finally:
            await self._publisher_drained()
            self._nc = None
            reader.cancel()
            await asyncio.wait([reader], timeout=1.0)
            await quietly(nc.close())

    async def _confirm(self, nc: Any) -> None:
        """Until the server has the subscriptions just sent, so that "synced" means deliverable.

        nats-py's ``flush()`` writes its PING straight to the socket while the
        SUB commands before it wait in its buffer for its flusher task: the
        first PONG can come back before the server has read them, and a message
        published meanwhile by another process is not delivered here (seen
        under load). The flusher runs before that PONG is read, so the second
        PING goes out behind the SUBs.
        """
        await nc.flush(timeout=self.connect_timeout)
        await nc.flush(timeout=self.connect_timeout)

    async def _subscribe(self, nc: Any, topics: list[str]) -> None:
        for topic in topics:
            self._subscriptions[topic] = await nc.subscribe(self.subject(topic), cb=self._handler(topic))

    def _handler(self, topic: str) -> Any:
        receive = self._receive

        async def handle(msg: Any) -> None:
            receive(topic, msg.data)

        return handle

    @staticmethod
    async def _until_closed(nc: Any, closed: asyncio.Future[None]) -> None:
        await closed
        raise ConnectionError(f"the connection closed: {nc.last_error or 'by the server'}")
