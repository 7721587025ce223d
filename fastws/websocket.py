"""The high-level API: ``await ws.recv()``, ``async for message in ws``, ``await ws.send()``.

``WebSocket`` is a ``Listener`` that queues messages for coroutines; the
low-level ``Connection`` under it does the protocol work.
"""

from __future__ import annotations

import asyncio
import collections
import os
from collections.abc import AsyncIterator
from typing import Any

from .connection import CLOSED, OPEN, Connection, Listener
from .defaults import MAX_QUEUE
from .exceptions import ConnectionClosedOK, InvalidState, ProtocolError, connection_closed
from .handshake import Request, Response

__all__ = ["WebSocket"]

Message = str | bytes

# Compressed messages larger than this are sent in fragments of this size.
COMPRESS_CHUNK = 128 * 1024


def answer_pings(waiters: dict[bytes, tuple[float, Any]], payload: bytes, now: float) -> None:
    """A pong arrived: resolve its ping's waiter, and those of every ping sent before it (RFC 6455 5.5.3).

    ``waiters`` maps ping payloads to (time sent, future of the round-trip time);
    asyncio and concurrent.futures futures both do.
    """
    if payload not in waiters:
        return
    answered_at = waiters[payload][0]
    for key, (sent_at, waiter) in list(waiters.items()):
        if sent_at <= answered_at:
            del waiters[key]
            if not waiter.done():
                waiter.set_result(now - sent_at)


class WebSocket(Listener):
    """A connection seen from coroutines.

    ``max_queue`` bounds the received messages not yet read: when it is full,
    the transport stops reading (TCP pushes back on the peer) until ``recv``
    drains it to half.
    """

    # send() waits while the write buffer is full, so reading can go on (and
    # full-duplex streams between two fastws peers cannot stall each other).
    pause_reading_while_writing_paused = False

    def __init__(self, *, max_queue: int | None = MAX_QUEUE) -> None:
        self.max_queue = max_queue
        self.conn: Connection | None = None
        self._messages: collections.deque[Message] = collections.deque()
        self._reading_paused = False
        self._pending_failure: ProtocolError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._pong_waiters: dict[bytes, tuple[float, asyncio.Future[float]]] = {}
        self._loop = asyncio.get_running_loop()
        # Serializes sends while a large compressed message goes out in fragments.
        self._send_lock: asyncio.Lock | None = None
        self._send_lock_users = 0

    # -- Listener callbacks ---------------------------------------------------------

    def on_connect(self, conn: Connection) -> None:
        self.conn = conn

    def on_message(self, conn: Connection, data: bytes, is_text: bool) -> None:
        self._messages.append(data.decode() if is_text else data)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self.max_queue is not None and len(self._messages) >= self.max_queue and not self._reading_paused:
            self._reading_paused = True
            conn.pause_reading()

    def on_pong(self, conn: Connection, payload: bytes) -> None:
        answer_pings(self._pong_waiters, payload, self._loop.time())

    def on_close(self, conn: Connection, code: int, reason: str) -> None:
        for fut in (self._waiter, self._drain_waiter):
            if fut is not None and not fut.done():
                fut.set_result(None)
        for _, pong_waiter in self._pong_waiters.values():
            if not pong_waiter.done():
                pong_waiter.set_exception(connection_closed(code, reason))
        self._pong_waiters.clear()

    def on_protocol_error(self, conn: Connection, exc: ProtocolError) -> None:
        # Messages that arrived before the bad frame are still the application's:
        # fail the connection once they are read, so that the close frame follows
        # whatever the application sends in answer to them.
        if self._messages:
            self._pending_failure = exc
        else:
            conn.fail(exc)

    def pause_writing(self, conn: Connection) -> None:
        pass

    def resume_writing(self, conn: Connection) -> None:
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    # -- public API -----------------------------------------------------------------------

    @property
    def request(self) -> Request:
        return self._conn.request

    @property
    def response(self) -> Response | None:
        return self._conn.response

    @property
    def subprotocol(self) -> str | None:
        return self._conn.subprotocol

    @property
    def remote_address(self) -> Any:
        return self._conn.remote_address

    @property
    def close_code(self) -> int | None:
        """The close code once the connection is closed (1006: no closing handshake), else None."""
        conn = self._conn
        return conn.close_code if conn.state == CLOSED else None

    @property
    def close_reason(self) -> str | None:
        conn = self._conn
        return conn.close_reason if conn.state == CLOSED else None

    @property
    def state(self) -> int:
        return self._conn.state

    # -- pub/sub (server side; see fastws.pubsub) ---------------------------------------

    def subscribe(self, topic: str) -> bool:
        """Receive what is published to ``topic`` (it arrives through ``recv``); False if already subscribed."""
        return self._conn.subscribe(topic)

    def unsubscribe(self, topic: str) -> bool:
        """Stop receiving ``topic``; False if not subscribed."""
        return self._conn.unsubscribe(topic)

    @property
    def topics(self) -> frozenset[str]:
        """The topics this connection is subscribed to."""
        return self._conn.topics

    def publish(self, topic: str, message: str | bytes, text: bool | None = None) -> None:
        """Send ``message`` to every subscriber of ``topic`` (this connection too, if subscribed); no await needed."""
        self._conn._pubsub().publish(topic, message, text)

    @property
    def _conn(self) -> Connection:
        if self.conn is None:
            raise InvalidState("the connection is not open yet")
        return self.conn

    async def recv(self) -> Message:
        """The next message: ``str`` for text, ``bytes`` for binary.

        Raises ConnectionClosedOK or ConnectionClosedError once the connection
        is closed and every message received before was read.
        """
        messages = self._messages
        while not messages:
            conn = self._conn
            if self._pending_failure is not None:
                conn.fail(self._pending_failure)
                self._pending_failure = None
            if conn.state == CLOSED:
                raise conn.closed_error()
            if self._waiter is not None:
                raise InvalidState("another coroutine is already waiting in recv()")
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        message = messages.popleft()
        if self._reading_paused and len(messages) <= (self.max_queue or 0) // 2:
            self._reading_paused = False
            self._conn.resume_reading()
        return message

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message]:
        """Messages until the connection closes; a normal closure ends the loop quietly."""
        while True:
            try:
                yield await self.recv()
            except ConnectionClosedOK:
                return

    async def send(self, message: str | bytes | bytearray | memoryview) -> None:
        """Send a message (str → text frame, bytes-like → binary); waits while the write buffer is full."""
        conn = self._conn
        if conn.state != OPEN:
            raise self._conn.closed_error()
        if self._send_lock is not None or (conn.extension is not None and len(message) > COMPRESS_CHUNK):
            await self._send_serialized(message)
            return
        conn.send(message)
        if conn.writing_paused:
            await self._drain()

    async def _send_serialized(self, message: str | bytes | bytearray | memoryview) -> None:
        """Send after any fragmented send in progress; fragment a large message for compression.

        Deflating a multi-MiB message in one call would hold the event loop for
        tens of milliseconds, so it goes out in COMPRESS_CHUNK fragments with the
        loop free (and the write buffer drained) between them. Everything stays
        on the loop thread: the compressor's context is shared by the messages
        of the connection, so a worker thread would need the same ordering anyway.
        """
        if self._send_lock is None:
            self._send_lock = asyncio.Lock()
        lock = self._send_lock
        self._send_lock_users += 1
        try:
            async with lock:
                conn = self._conn
                if conn.state != OPEN:
                    raise self._conn.closed_error()
                if conn.extension is None or len(message) <= COMPRESS_CHUNK:
                    conn.send(message)
                    if conn.writing_paused:
                        await self._drain()
                    return
                if isinstance(message, str):
                    payload, opcode = memoryview(message.encode()), 1
                else:
                    payload, opcode = memoryview(message).cast("B"), 2
                last = len(payload) - COMPRESS_CHUNK
                for start in range(0, len(payload), COMPRESS_CHUNK):
                    if conn.state != OPEN:
                        raise self._conn.closed_error()
                    conn.send_frame(opcode if start == 0 else 0, payload[start : start + COMPRESS_CHUNK], start >= last)
                    if conn.writing_paused:
                        await self._drain()
                    else:
                        await asyncio.sleep(0)
        finally:
            self._send_lock_users -= 1
            if self._send_lock_users == 0:
                self._send_lock = None

    async def _drain(self) -> None:
        conn = self._conn
        while conn.writing_paused and conn.state != CLOSED:
            if self._drain_waiter is None or self._drain_waiter.done():
                self._drain_waiter = self._loop.create_future()
            await asyncio.shield(self._drain_waiter)
        if conn.state == CLOSED:
            raise conn.closed_error()

    async def ping(self, data: bytes | str | None = None) -> asyncio.Future[float]:
        """Send a ping; returns a future that resolves to the round-trip time when the pong arrives."""
        conn = self._conn
        if conn.state != OPEN:
            raise self._conn.closed_error()
        if data is None:
            data = os.urandom(4)
            while data in self._pong_waiters:
                data = os.urandom(4)
        elif isinstance(data, str):
            data = data.encode()
        if data in self._pong_waiters:
            raise InvalidState("a ping with the same payload is already waiting for its pong")
        waiter: asyncio.Future[float] = self._loop.create_future()
        self._pong_waiters[data] = (self._loop.time(), waiter)
        conn.ping(data)
        return waiter

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close with a closing handshake and wait until the TCP connection is gone.

        Waits at most ``close_timeout`` for the peer, then drops the connection.
        """
        conn = self._conn
        if self._pending_failure is not None:
            conn.fail(self._pending_failure)
        else:
            conn.close(code, reason)
        await asyncio.shield(conn.closed)

    async def wait_closed(self) -> None:
        """Wait until the connection is closed."""
        await asyncio.shield(self._conn.closed)

    async def __aenter__(self) -> WebSocket:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    def __repr__(self) -> str:
        conn = self.conn
        return f"<fastws.WebSocket {conn!r}>"
