"""The broker interface, and the machinery the brokers of fastws share.

``Broker`` is all a hub (``fastws.pubsub.PubSub``) needs. ``QueuedBroker`` is
the common half of the brokers shipped here: the message envelope that lets a
process skip its own messages, the ordered publish queue with its loss
accounting, outage counting and reconnection with backoff. A new broker
subclasses it and writes three methods (see the README, "Adding a broker").
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:
    from ..pubsub import PubSub

logger = logging.getLogger("fastws.pubsub")

# A message on the wire: MAGIC, kind (b"t" text / b"b" binary), the publishing
# process's 8-byte id, then the payload. 0xFE never occurs in UTF-8, so text
# published by other tools (``redis-cli PUBLISH``, ``nats pub``) is told apart.
MAGIC = b"\xfe"
HEADER_SIZE = 10


class BrokerOptions(TypedDict, total=False):
    """The options every ``QueuedBroker`` takes (see its docstring)."""

    channel_prefix: str
    reconnect_min: float
    reconnect_max: float
    max_backlog: int
    connect_timeout: float


def require(module: str, kind: str, extra: str) -> None:
    """Fail early, when the broker is made, if its client library is missing."""
    try:
        importlib.import_module(module)
    except ImportError:
        raise ImportError(f"the {kind} broker needs {module.split('.')[0]}: pip install 'fastws[{extra}]'") from None


class Broker:
    """Carries publishes between the hubs of several processes.

    The hub calls ``publish`` synchronously for every local publish and
    ``topics_changed`` when a topic gets its first local subscriber or loses
    its last one; the broker calls ``hub.deliver`` for messages from elsewhere
    and counts in ``hub.stats`` (``sent``, ``lost``, ``outages``, see ``PubSub``).
    """

    hub: PubSub
    connected: bool = False

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


class QueuedBroker(Broker):
    """A broker with one ordered publish queue and a reconnecting subscriber.

    Subclasses write:

    - ``_send(batch)``: publish ``[(topic, message), ...]`` in order; return how
      many the server accepted (raise if none was).
    - ``_session()``: connect, subscribe to ``hub.topics``, call ``_set_up()``,
      then follow topic changes (``_follow_topics`` does it for one connection)
      until the connection fails (raise) or the broker closes (return); pass
      what arrives to ``_receive(topic, data)``.
    - ``_close_publisher()``: drop the publishing client at the end.

    Topics are named ``channel_prefix + topic`` on the broker's server (each
    broker says how). Local delivery never waits for the broker. While it is disconnected, or
    with ``max_backlog`` publishes already waiting, a publish is lost and
    counted in ``stats["lost"]``; an outage is counted once, when it starts,
    and the subscriber reconnects with exponential backoff between
    ``reconnect_min`` and ``reconnect_max`` seconds.
    """

    kind = "broker"  # for the logs

    def __init__(
        self,
        url: str,
        *,
        channel_prefix: str = "fastws:",
        reconnect_min: float = 0.1,
        reconnect_max: float = 5.0,
        max_backlog: int = 10_000,
        connect_timeout: float = 5.0,
    ) -> None:
        self.url = url
        self.channel_prefix = channel_prefix
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.max_backlog = max_backlog
        self.connect_timeout = connect_timeout
        self.connected = False
        self.node = os.urandom(8)
        self._headers = {1: MAGIC + b"t" + self.node, 2: MAGIC + b"b" + self.node}
        self._backlog: list[tuple[str, bytes]] = []  # (topic, message) waiting for the publisher task
        self._backlog_ready: asyncio.Event | None = None
        self._topics_changed: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._first_attempt: asyncio.Future[None] | None = None
        self._subscribed: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._delay = reconnect_min
        self._state_waiters: list[asyncio.Future[None]] = []

    def __repr__(self) -> str:
        return f"<fastws.{type(self).__name__} {self.url} {'connected' if self.connected else 'disconnected'}>"

    # -- hooks --------------------------------------------------------------------------

    async def _send(self, batch: list[tuple[str, bytes]]) -> int:
        raise NotImplementedError

    async def _session(self) -> None:
        raise NotImplementedError

    async def _close_publisher(self) -> None:
        pass

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._backlog_ready = asyncio.Event()
        self._topics_changed = asyncio.Event()
        self._stop = asyncio.Event()
        self._first_attempt = loop.create_future()
        self._tasks = [
            asyncio.ensure_future(self._subscriber_loop()),
            asyncio.ensure_future(self._publisher_loop()),
        ]
        await asyncio.shield(self._first_attempt)

    async def aclose(self) -> None:
        self._closing = True
        if not self._tasks:
            return
        # Ask the tasks to finish (the publisher sends its backlog first) rather than
        # cancelling them in the middle of a client call; cancel what overstays.
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
        await quietly(self._close_publisher())
        self._tasks = []

    # -- publishing side ----------------------------------------------------------------

    def publish(self, topic: str, opcode: int, payload: bytes) -> None:
        if not self.connected or len(self._backlog) >= self.max_backlog:
            self.hub.stats["lost"] += 1
            return
        self._backlog.append((topic, self._headers[opcode] + payload))
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
            try:
                sent = await self._send(batch)
            except asyncio.CancelledError:
                stats["lost"] += len(batch)
                raise
            except Exception as exc:
                # The subscriber notices the outage too and handles reconnecting.
                stats["lost"] += len(batch)
                logger.warning("%s %s: %d publishes lost: %s", self.kind, self.url, len(batch), exc)
            else:
                stats["sent"] += sent
                if sent < len(batch):
                    stats["lost"] += len(batch) - sent
                    logger.warning("%s %s: %d publishes lost", self.kind, self.url, len(batch) - sent)

    # -- subscribing side ---------------------------------------------------------------

    def topics_changed(self) -> None:
        if self._topics_changed is not None:
            self._topics_changed.set()

    def _synced(self) -> bool:
        return self.connected and self._subscribed == set(self.hub.topics)

    async def wait_synced(self) -> None:
        """Wait until connected with subscriptions matching the local topics."""
        await self._wait_until(self._synced)

    async def wait_disconnected(self) -> None:
        """Wait until the broker has noticed that its server is gone."""
        await self._wait_until(lambda: not self.connected)

    async def _wait_until(self, condition: Callable[[], bool]) -> None:
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
        assert self._first_attempt is not None and self._stop is not None
        while not self._closing:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._set_down(exc)
            finally:
                if not self._first_attempt.done():
                    self._first_attempt.set_result(None)
            if self._closing:
                return
            await self._pause(self._delay * random.uniform(0.8, 1.2))
            self._delay = min(self._delay * 2, self.reconnect_max)

    async def _publisher_drained(self) -> None:
        """When closing: wait (briefly) for the publisher to send its backlog, for a
        broker whose session owns the connection the publisher uses."""
        if self._closing and len(self._tasks) == 2:
            await asyncio.wait([self._tasks[1]], timeout=self.connect_timeout)

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds``, or less if the broker closes meanwhile."""
        assert self._stop is not None
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait([stop], timeout=seconds)
        finally:
            stop.cancel()

    async def _follow_topics(
        self,
        subscribe: Callable[[list[str]], Any],
        unsubscribe: Callable[[list[str]], Any],
        reader: asyncio.Task[None],
    ) -> None:
        """On one subscribing connection: follow the local topics until it fails (``reader`` ends)."""
        assert self._topics_changed is not None
        changed = self._topics_changed
        while True:
            wanted = set(self.hub.topics)
            added, removed = wanted - self._subscribed, self._subscribed - wanted
            if added:
                await subscribe(sorted(added))
            if removed:
                await unsubscribe(sorted(removed))
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
                raise ConnectionError(f"the {self.kind} subscription ended")
            changed.clear()

    def _receive(self, topic: str, data: bytes) -> None:
        """A message on ``topic`` from the broker: to the local subscribers, unless it is ours."""
        if data[:1] == MAGIC and len(data) >= HEADER_SIZE:
            if data[2:HEADER_SIZE] == self.node:
                return  # ours: delivered locally when it was published
            opcode = 1 if data[1:2] == b"t" else 2
            payload = data[HEADER_SIZE:]
        else:  # published by another tool: text when it is UTF-8
            try:
                data.decode()
                opcode = 1
            except UnicodeDecodeError:
                opcode = 2
            payload = data
        self.hub.deliver(topic, opcode, payload)

    def _set_up(self) -> None:
        self.connected = True
        self._delay = self.reconnect_min
        logger.info("%s %s: connected, %d topics subscribed", self.kind, self.url, len(self._subscribed))
        if self._first_attempt is not None and not self._first_attempt.done():
            self._first_attempt.set_result(None)
        self._state_changed()

    def _set_down(self, exc: BaseException) -> None:
        """Count and log an outage once, when it starts (not at every failed reconnection)."""
        if self.connected or (self._first_attempt is not None and not self._first_attempt.done()):
            self.hub.stats["outages"] += 1
            logger.warning("%s %s unreachable (%s); local delivery goes on, reconnecting", self.kind, self.url, exc)
        self.connected = False
        self._state_changed()


async def quietly(awaitable: Any) -> None:
    """Await a clean-up step whose failure (the server is gone) changes nothing."""
    try:
        await awaitable
    except Exception:
        pass


def split_hosts(netloc: str, default_port: int) -> list[tuple[str, int]]:
    """``host:port[,host:port...]`` (IPv6 in brackets) as ``[(host, port), ...]``."""
    hosts: list[tuple[str, int]] = []
    for item in netloc.split(","):
        item = item.strip().rsplit("@", 1)[-1]
        if not item:
            continue
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port = int(rest[1:]) if rest.startswith(":") else default_port
        elif item.count(":") == 1:
            host, _, port_text = item.partition(":")
            port = int(port_text) if port_text else default_port
        else:
            host, port = item, default_port
        hosts.append((host, port))
    if not hosts:
        raise ValueError(f"no host in {netloc!r}")
    return hosts

