"""A blocking client for code that is not async: scripts, tests, threads of a web app.

::

    from fastws.sync import connect

    with connect("ws://localhost:8000/") as ws:
        ws.send("hello")
        print(ws.recv(timeout=5))

``connect`` takes the options of ``fastws.create_connection`` (``proxy=`` too) and
``max_queue``, and raises what the async client raises. The connection runs on the
same core as the async client, on one event loop that a background daemon thread
runs for the whole process (started by the first ``connect``); the calling thread
blocks on a lock or a condition, never polls. Every method may be called from any
thread: ``send`` from several at once, each message whole; ``recv`` from several
at once, each message to one of them.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import os
import threading
import time
from collections.abc import Iterator
from typing import Any, TypeVar

from .client import create_connection
from .connection import Connection, Listener
from .defaults import MAX_QUEUE
from .exceptions import ConnectionClosedOK, InvalidState
from .handshake import Request, Response
from .loop import new_event_loop
from .websocket import answer_pings

__all__ = ["connect", "ClientConnection"]

T = TypeVar("T")
Message = str | bytes


class _LoopThread:
    """The process's background event loop, started on first use (and again in a forked child)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None

    def get(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self.loop is None:
                loop = new_event_loop()
                started = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(started.set)
                    loop.run_forever()

                self.thread = threading.Thread(target=run, name="fastws-sync", daemon=True)
                self.thread.start()
                started.wait()
                self.loop = loop
            return self.loop

    def forget(self) -> None:
        """In a forked child: the parent's thread does not exist there; the next call starts one."""
        self._lock = threading.Lock()
        self.loop = self.thread = None

    def run(self, coro: Any, timeout: float | None = None) -> Any:
        """Run ``coro`` on the loop and wait for its result in this thread."""
        loop = self.get()
        if threading.current_thread() is self.thread:
            coro.close()
            raise InvalidState("fastws.sync called from its own event loop thread: use the async API there")
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(timeout)
        except BaseException:
            future.cancel()
            raise


_background = _LoopThread()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_background.forget)


class _SyncListener(Listener):
    """The connection's listener: hands messages, pongs and the end over to blocking threads.

    Its callbacks run on the loop thread; the ``ClientConnection`` methods on
    others. ``cond`` guards the message queue and the closed state.
    """

    # send() waits while the write buffer is full, so reading goes on.
    pause_reading_while_writing_paused = False

    def __init__(self, max_queue: int | None) -> None:
        self.max_queue = max_queue
        self.conn: Connection | None = None
        self.cond = threading.Condition(threading.Lock())
        self.messages: collections.deque[Message] = collections.deque()
        self.reading_paused = False  # by us, because the queue is full
        self.resume_scheduled = False
        self.closed = threading.Event()
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.drain_waiters: list[concurrent.futures.Future[None]] = []
        self.pong_waiters: dict[bytes, tuple[float, concurrent.futures.Future[float]]] = {}

    def on_connect(self, conn: Connection) -> None:
        self.conn = conn

    def on_message(self, conn: Connection, data: bytes, is_text: bool) -> None:
        message = data.decode() if is_text else data
        with self.cond:
            self.messages.append(message)
            self.cond.notify()
            if self.max_queue is not None and len(self.messages) >= self.max_queue and not self.reading_paused:
                self.reading_paused = True
                conn.pause_reading()

    def resume_if_drained(self) -> None:
        """On the loop thread, after a recv() took the queue down to half."""
        assert self.conn is not None
        with self.cond:
            self.resume_scheduled = False
            if self.reading_paused and len(self.messages) <= (self.max_queue or 0) // 2:
                self.reading_paused = False
                self.conn.resume_reading()

    def on_pong(self, conn: Connection, payload: bytes) -> None:
        answer_pings(self.pong_waiters, payload, time.monotonic())

    def on_close(self, conn: Connection, code: int, reason: str) -> None:
        with self.cond:
            self.close_code, self.close_reason = code, reason
            self.closed.set()
            self.cond.notify_all()
        self._release_drain_waiters()
        for _, waiter in self.pong_waiters.values():
            if not waiter.done():
                waiter.set_exception(conn.closed_error())
        self.pong_waiters.clear()

    def resume_writing(self, conn: Connection) -> None:
        self._release_drain_waiters()

    def _release_drain_waiters(self) -> None:
        waiters, self.drain_waiters = self.drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


class ClientConnection:
    """A client connection used from blocking code; made by ``fastws.sync.connect``."""

    def __init__(self, conn: Connection, loop: asyncio.AbstractEventLoop) -> None:
        listener = conn.listener
        assert isinstance(listener, _SyncListener)
        self._listener = listener
        self._conn = conn
        self._loop = loop

    # -- receiving -----------------------------------------------------------------------

    def recv(self, timeout: float | None = None) -> Message:
        """The next message: ``str`` for text, ``bytes`` for binary.

        Waits at most ``timeout`` seconds (None: for ever), then raises
        ``TimeoutError``; no message is lost to a timeout. Raises
        ``ConnectionClosedOK`` or ``ConnectionClosedError`` once the connection is
        closed and every message received before was read.
        """
        listener = self._listener
        deadline = None if timeout is None else time.monotonic() + timeout
        with listener.cond:
            while not listener.messages:
                if listener.closed.is_set():
                    raise self._conn.closed_error()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"no message within {timeout} s")
                listener.cond.wait(remaining)
            message = listener.messages.popleft()
            if listener.reading_paused and not listener.resume_scheduled and len(listener.messages) <= (listener.max_queue or 0) // 2:
                listener.resume_scheduled = True
                self._call_soon(listener.resume_if_drained)
        return message

    def __iter__(self) -> Iterator[Message]:
        """Messages until the connection closes; a normal closure ends the loop quietly."""
        while True:
            try:
                yield self.recv()
            except ConnectionClosedOK:
                return

    # -- sending -------------------------------------------------------------------------

    def send(self, message: str | bytes | bytearray | memoryview) -> None:
        """Send a message (str: text, bytes-like: binary); blocks while the write buffer is full.

        Safe from several threads at once: each message goes out whole.
        """
        if isinstance(message, (bytearray, memoryview)):
            message = bytes(message)  # the caller may reuse its buffer once we return
        elif not isinstance(message, (str, bytes)):
            raise TypeError(f"a message is str or bytes-like, not {type(message).__name__}")
        self._wait(self._submit(self._send_on_loop, message))

    def _send_on_loop(self, message: Message, done: concurrent.futures.Future[None]) -> None:
        conn = self._conn
        conn.send(message)  # raises ConnectionClosed when it is not open
        if conn.writing_paused:
            self._listener.drain_waiters.append(done)
        else:
            done.set_result(None)

    def ping(self, data: bytes | str | None = None) -> concurrent.futures.Future[float]:
        """Send a ping; the future's result is the round-trip time in seconds once the pong arrives.

        ``ws.ping().result(timeout=5)`` waits for it. The future fails with
        ``ConnectionClosed`` if the connection closes first.
        """
        if isinstance(data, str):
            data = data.encode()
        pong: concurrent.futures.Future[float] = concurrent.futures.Future()
        self._wait(self._submit(self._ping_on_loop, data, pong))
        return pong

    def _ping_on_loop(self, data: bytes | None, pong: concurrent.futures.Future[float], done: concurrent.futures.Future[None]) -> None:
        waiters = self._listener.pong_waiters
        if data is None:
            data = os.urandom(4)
            while data in waiters:
                data = os.urandom(4)
        elif data in waiters:
            raise InvalidState("a ping with the same payload is already waiting for its pong")
        self._conn.ping(data)  # raises ConnectionClosed when it is not open
        waiters[data] = (time.monotonic(), pong)
        done.set_result(None)

    # -- closing -------------------------------------------------------------------------

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close with a closing handshake and wait until the connection is gone.

        The peer gets ``close_timeout`` seconds to answer, then the connection is dropped.
        """
        if not self._listener.closed.is_set():
            self._wait(self._submit(self._close_on_loop, code, reason))
        self._listener.closed.wait()

    def _close_on_loop(self, code: int, reason: str, done: concurrent.futures.Future[None]) -> None:
        self._conn.close(code, reason)  # a no-op once closing or closed
        done.set_result(None)

    @property
    def close_code(self) -> int | None:
        """The close code once the connection is closed (1006: no closing handshake), else None."""
        return self._listener.close_code

    @property
    def close_reason(self) -> str | None:
        return self._listener.close_reason

    def __enter__(self) -> ClientConnection:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # -- what the handshake said ---------------------------------------------------------

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

    def __repr__(self) -> str:
        return f"<fastws.sync.ClientConnection {self._conn!r}>"

    # -- the loop thread -----------------------------------------------------------------

    def _call_soon(self, callback: Any, *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: the interpreter is shutting down
            pass

    def _submit(self, function: Any, *args: Any) -> concurrent.futures.Future[None]:
        """Run ``function(*args, done)`` on the loop thread; its exception fails ``done``."""
        if threading.current_thread() is _background.thread:
            raise InvalidState("fastws.sync called from its own event loop thread: use the async API there")
        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def call() -> None:
            try:
                function(*args, done)
            except BaseException as exc:
                if not done.done():
                    done.set_exception(exc)

        self._loop.call_soon_threadsafe(call)
        return done

    @staticmethod
    def _wait(done: concurrent.futures.Future[None]) -> None:
        done.result()


def connect(uri: str, *, max_queue: int | None = MAX_QUEUE, **options: Any) -> ClientConnection:
    """Open a client connection and return it once the opening handshake is done.

    Takes the options of ``fastws.create_connection`` (``open_timeout``, ``ssl``,
    ``proxy``, ``compression``, ``max_size``...) and ``max_queue``, the most
    received messages held for ``recv`` before reading from the server pauses.
    Raises what ``fastws.connect`` raises: ``InvalidURI``, ``InvalidResponse``,
    ``ProxyError``, ``OpenTimeout``, ``OSError``...
    """
    loop = _background.get()
    conn = _background.run(create_connection(lambda: _SyncListener(max_queue), uri, **options))
    return ClientConnection(conn, loop)
