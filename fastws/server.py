"""Serving WebSocket connections on asyncio: the low-level ``create_server`` and the high-level ``serve``."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl as ssl_module
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, cast

from .connection import OPEN, Connection, Listener, _addr, start_own_tls, take_over_transport
from .defaults import (
    CLOSE_TIMEOUT,
    MAX_FRAGMENTS,
    MAX_QUEUE,
    MAX_SIZE,
    OPEN_TIMEOUT,
    PING_INTERVAL,
    PING_TIMEOUT,
    SERVER_HEADER,
    SLOW_SUBSCRIBER,
    SUBSCRIBER_BUFFER,
    WRITE_LIMIT,
)
from .exceptions import ConnectionClosed
from .extensions.permessage_deflate import CompressionOption
from .handshake import OriginsType, Response, SelectSubprotocol, ServerHandshake
from .metrics import ServerMetrics
from .protocol import ACCEPTED, DECIDING, READING, ProcessRequest, ServerOpening, server_handshake
from .pubsub import Broker, PubSub, SlowSubscriberPolicy, make_broker
from .websocket import WebSocket

__all__ = ["Server", "create_server", "serve", "ProcessRequest"]

logger = logging.getLogger("fastws.server")


@dataclass
class ConnectionOptions:
    """Per-connection settings shared by every connection of a server or client."""

    max_size: int | None = MAX_SIZE
    max_fragments: int | None = MAX_FRAGMENTS
    close_timeout: float | None = CLOSE_TIMEOUT
    ping_interval: float | None = PING_INTERVAL
    ping_timeout: float | None = PING_TIMEOUT
    write_limit: int | tuple[int, int | None] = WRITE_LIMIT


class _HandshakeProtocol(asyncio.Protocol):
    """The transport's protocol until the handshake is done: runs the sans-I/O ``ServerOpening``.

    Feeds it the bytes, writes what it answers, keeps the open timeout, and once
    it accepted hands the transport to a ``Connection`` with what it negotiated.
    On a TLS server it first runs the TLS handshake on the accepted TCP
    connection (``_start_tls``), within the same open timeout.
    """

    __slots__ = ("server", "opening", "transport", "timer", "peer", "tls_task")

    def __init__(self, server: Server) -> None:
        self.server = server
        self.opening = ServerOpening(server.handshake, server.process_request)
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.peer: Any = None
        self.tls_task: asyncio.Future[None] | None = None  # the loop's TLS handshake (see _start_tls)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a stream's (uvloop's are not asyncio.Transport subclasses)
        if self.tls_task is not None:
            return  # the loop's SSL transport after its handshake (_loop_tls): the timer runs already
        self.peer = transport.get_extra_info("peername")
        self.server._handshakes.add(self)
        timeout = self.server.open_timeout
        if timeout is not None:
            self.timer = asyncio.get_running_loop().call_later(timeout, self._timed_out)
        if self.server.ssl is not None:
            self._start_tls(self.server.ssl)

    # -- TLS: fastws's own transport on the compiled path, else the loop's --------

    def _start_tls(self, context: ssl_module.SSLContext) -> None:
        """Run the TLS handshake on the TCP connection just accepted.

        Either on fastws's own ``TLSTransport`` (compiled, with OpenSSL), or on
        the loop's SSL transport over a duplicate of the socket
        (``connect_accepted_socket``, whose protocol is in place before its
        first read: uvloop starts reading after ``connection_made`` even when
        it paused, so a ``start_tls`` here could miss the ClientHello). Either
        way failures are ours to see and log, and the open timeout bounds it.
        """
        raw = self.transport
        assert raw is not None
        own = start_own_tls(raw, context, server_side=True, on_handshake=self._own_tls_done)
        if own is not None:
            self.transport = own
            return
        sock = raw.get_extra_info("socket")
        duplicate = socket.socket(sock.family, sock.type, sock.proto, os.dup(sock.fileno()))
        raw.set_protocol(asyncio.Protocol())  # its connection_lost is not ours
        raw.abort()
        self.transport = None
        self.tls_task = asyncio.ensure_future(self._loop_tls(duplicate, context))
        self.server._track(self.tls_task)

    def _own_tls_done(self, exc: BaseException | None) -> None:
        if exc is not None:
            self._tls_failed(exc, quiet=self.transport is None)  # None: our own timeout aborted it
            return
        transport = self.transport
        assert transport is not None
        transport.set_protocol(self)
        transport.resume_reading()

    async def _loop_tls(self, sock: socket.socket, context: ssl_module.SSLContext) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(lambda: self, sock, ssl=context)  # calls connection_made again
        except asyncio.CancelledError:
            self._finish()  # the open timeout or the server's close: said already
        except Exception as exc:
            self._tls_failed(exc, quiet=False)
        finally:
            self.tls_task = None

    def _tls_failed(self, exc: BaseException, *, quiet: bool) -> None:
        if not quiet and not self.server._closing:
            logger.info("%s: TLS handshake failed: %s", _addr(self.peer), exc or type(exc).__name__)
        self._finish()
        self.transport = None

    # -- the HTTP upgrade ----------------------------------------------------

    def data_received(self, data: bytes) -> None:
        state = self.opening.receive_data(data)
        if state == READING:
            return
        if state == DECIDING:
            decision = self.opening.decision
            if decision is not None:  # process_request is a coroutine: await it once
                self.opening.decision = None
                self.server._track(asyncio.ensure_future(self._await_decision(decision)))
            return
        self._act(state)

    async def _await_decision(self, decision: Awaitable[Response | None]) -> None:
        try:
            response = await decision
        except Exception:
            state = self.opening.process_request_failed()
        else:
            state = self.opening.decide(response)
        self._act(state)

    def _act(self, state: int) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if state == ACCEPTED:
            self._upgrade()
            return
        error = self.opening.error
        if error is not None:
            self.server.metrics.handshake_failed(error.status)
            logger.info("%s: refused the handshake: %d %s", _addr(self.peer), error.status, error)
        self._finish()
        self.transport.write(self.opening.answer)
        self.transport.close()

    def _upgrade(self) -> None:
        server = self.server
        opening = self.opening
        assert self.transport is not None and opening.request is not None
        self._finish()
        transport = take_over_transport(self.transport)
        listener = server.listener_factory()
        options = server.options
        conn = Connection(
            transport,
            listener,
            client=False,
            request=opening.request,
            subprotocol=opening.subprotocol,
            extension=opening.extension,
            max_size=options.max_size,
            max_fragments=options.max_fragments,
            close_timeout=options.close_timeout,
            ping_interval=options.ping_interval,
            ping_timeout=options.ping_timeout,
            write_limit=options.write_limit,
            logger=logger,
            server=server,
        )
        transport.write(opening.answer)
        transport.set_protocol(conn)
        conn.start_reading()
        server._add_connection(conn)
        listener.on_connect(conn)
        rest, opening.rest = opening.rest, b""
        if rest and conn.state == OPEN:
            conn.receive_data(rest)

    def _timed_out(self) -> None:
        logger.info("%s: no complete handshake within %s s; closing", _addr(self.peer), self.server.open_timeout)
        self.timer = None
        self._finish()
        transport, self.transport = self.transport, None
        if transport is not None:
            transport.abort()
        if self.tls_task is not None:
            self.tls_task.cancel()

    def _finish(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.server._handshakes.discard(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish()
        self.transport = None


class Server:
    """A listening WebSocket server and the connections it serves.

    ``close()`` stops accepting, sends 1001 to every open connection and, after
    ``close_timeout``, drops those that did not finish the closing handshake.
    """

    def __init__(
        self,
        listener_factory: Callable[[], Listener],
        *,
        options: ConnectionOptions,
        handshake: ServerHandshake,
        process_request: ProcessRequest | None = None,
        open_timeout: float | None = OPEN_TIMEOUT,
        pubsub: PubSub | None = None,
    ) -> None:
        self.listener_factory = listener_factory
        self.options = options
        self.handshake = handshake
        self.process_request = process_request
        self.open_timeout = open_timeout
        #: The TLS context for new connections (None: plain ws://); see ``set_ssl_context``.
        self.ssl: ssl_module.SSLContext | None = None
        self.pubsub = pubsub if pubsub is not None else PubSub()  # topics: conn.subscribe(), server.publish()
        self._server: asyncio.Server | None = None
        self._connections: set[Connection] = set()
        self._handshakes: set[_HandshakeProtocol] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._closed: asyncio.Future[None] | None = None
        self.metrics = ServerMetrics()  # what stats reports, with the connections' own counters

    @property
    def connections(self) -> set[Connection]:
        """The open connections (a live set: copy it before awaiting)."""
        return self._connections

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._server.sockets) if self._server is not None else ()

    async def _start(self, host: str | Sequence[str] | None, port: int | None, **kwargs: Any) -> None:
        loop = asyncio.get_running_loop()
        self._closed = loop.create_future()
        await self.pubsub.start()  # the broker first: connections may subscribe at once
        try:
            self._server = await loop.create_server(lambda: _HandshakeProtocol(self), host, port, **kwargs)
        except BaseException:
            await self.pubsub.aclose()
            raise

    def publish(self, topic: str, message: str | bytes, text: bool | None = None) -> None:
        """Send ``message`` to every subscriber of ``topic``, in this process and through the broker.

        Synchronous (callable from ``Listener.on_message``); see ``fastws.pubsub.PubSub.publish``.
        """
        self.pubsub.publish(topic, message, text)

    def set_ssl_context(self, context: ssl_module.SSLContext) -> None:
        """Serve new connections with ``context`` (a renewed certificate); open ones keep theirs.

        Each connection's TLS session is made from the server's context when
        it is accepted, so replacing the context (rather than loading new
        files into the one in use, which a bad key would leave half-changed)
        never touches a connection already open. For a TLS server only.
        """
        if self.ssl is None:
            raise ValueError("set_ssl_context(): this server does not serve TLS")
        if not isinstance(context, ssl_module.SSLContext):
            raise TypeError(f"set_ssl_context() needs an ssl.SSLContext, not {type(context).__name__}")
        self.ssl = context

    @property
    def stats(self) -> dict[str, Any]:
        """A snapshot of the counters: connections, messages and bytes by type, closes, failures, pub/sub.

        Keys: ``connections_open``, ``connections_total``, ``messages_received``,
        ``messages_sent``, ``received_bytes``, ``sent_bytes`` (each by ``text`` /
        ``binary``), ``connections_closed`` (by close code), ``handshake_failures``
        (by HTTP status), ``protocol_errors`` (by close code), ``write_paused``,
        ``ping_rtt`` (a histogram of keepalive round trips) and ``pubsub``.
        """
        return self.metrics.snapshot(self._connections, self.pubsub)

    def _add_connection(self, conn: Connection) -> None:
        self._connections.add(conn)
        self.metrics.connections_total += 1
        conn.closed.add_done_callback(lambda _: self._connection_ended(conn))
        if self._closing:
            conn.close(1001, "server shutting down")

    def _connection_ended(self, conn: Connection) -> None:
        self._connections.discard(conn)
        self.metrics.connection_ended(conn, asyncio.get_running_loop().time())

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self, code: int = 1001, reason: str = "server shutting down") -> None:
        """Stop listening and start closing every connection with ``code``."""
        if self._closing:
            return
        self._closing = True
        self.pubsub.flush()  # what was published before close() goes out before the close frames
        if self._server is not None:
            self._server.close()
        for handshake in list(self._handshakes):
            if handshake.transport is not None:
                handshake.transport.abort()
            if handshake.tls_task is not None:
                handshake.tls_task.cancel()
        for conn in list(self._connections):
            if conn.state == OPEN:
                conn.close(code, reason)

    async def wait_closed(self) -> None:
        """Wait until the server is closed and every connection and handler has ended."""
        if self._server is not None:
            await self._server.wait_closed()
        pending = [conn.closed for conn in self._connections]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self.pubsub.aclose()
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

    async def serve_forever(self) -> None:
        """Serve until ``close()`` is called (or the task is cancelled)."""
        assert self._closed is not None
        try:
            await asyncio.shield(self._closed)
        except asyncio.CancelledError:
            self.close()
            await self.wait_closed()
            raise

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self.close()
        await self.wait_closed()

    def __repr__(self) -> str:
        return f"<fastws.Server sockets={[s.getsockname() for s in self.sockets]} connections={len(self._connections)}>"


def _build_server(
    listener_factory: Callable[[], Listener],
    *,
    max_size: int | None = MAX_SIZE,
    max_fragments: int | None = MAX_FRAGMENTS,
    close_timeout: float | None = CLOSE_TIMEOUT,
    open_timeout: float | None = OPEN_TIMEOUT,
    ping_interval: float | None = PING_INTERVAL,
    ping_timeout: float | None = PING_TIMEOUT,
    write_limit: int | tuple[int, int | None] = WRITE_LIMIT,
    compression: CompressionOption = None,
    subprotocols: Sequence[str] = (),
    select_subprotocol: SelectSubprotocol | None = None,
    origins: OriginsType = None,
    extra_headers: Sequence[tuple[str, str]] = (),
    server_header: str | None = SERVER_HEADER,
    process_request: ProcessRequest | None = None,
    broker: str | Broker | None = None,
    subscriber_buffer: int = SUBSCRIBER_BUFFER,
    slow_subscriber: SlowSubscriberPolicy = SLOW_SUBSCRIBER,
) -> Server:
    pubsub = PubSub(make_broker(broker), subscriber_buffer=subscriber_buffer, slow_subscriber=slow_subscriber)
    handshake = server_handshake(
        subprotocols=subprotocols,
        select_subprotocol=select_subprotocol,
        origins=origins,
        extra_headers=extra_headers,
        server_header=server_header,
        compression=compression,
    )
    options = ConnectionOptions(
        max_size=max_size,
        max_fragments=max_fragments,
        close_timeout=close_timeout,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        write_limit=write_limit,
    )
    return Server(
        listener_factory,
        options=options,
        handshake=handshake,
        process_request=process_request,
        open_timeout=open_timeout,
        pubsub=pubsub,
    )


async def create_server(
    listener_factory: Callable[[], Listener],
    host: str | Sequence[str] | None = None,
    port: int | None = None,
    *,
    ssl: ssl_module.SSLContext | None = None,
    sock: socket.socket | None = None,
    reuse_port: bool | None = None,
    backlog: int = 1024,
    **options: Any,
) -> Server:
    """Start a server of low-level ``Listener`` objects, one made per connection.

    Options: ``max_size`` (bytes, None for no limit), ``max_fragments``,
    ``close_timeout``, ``open_timeout``, ``subprotocols``, ``select_subprotocol``,
    ``origins``, ``extra_headers``, ``server_header``, ``process_request``;
    ``compression`` (``"deflate"``, a ``fastws.extensions.Deflate`` or None),
    ``ping_interval``/``ping_timeout`` (seconds, None to disable keepalive),
    ``write_limit`` (high-water mark of the write buffer, or ``(high, low)``);
    pub/sub: ``broker`` (None: in-process topics; ``"redis://host:port/db"``
    or a ``fastws.pubsub.Broker``: topics shared by every server on it),
    ``subscriber_buffer`` (bytes of unsent output a subscriber may hold) and
    ``slow_subscriber`` (``"drop"`` its new messages, or ``"close"`` it with 1013).
    """
    server = _build_server(listener_factory, **options)
    server.ssl = ssl  # TLS runs per connection on the accepted TCP stream (see _HandshakeProtocol)
    kwargs: dict[str, Any] = {"backlog": backlog, "reuse_port": reuse_port}
    if sock is not None:
        kwargs["sock"] = sock
    await server._start(host, port, **kwargs)
    return server


Handler = Callable[[WebSocket], Awaitable[Any]]


class _HandlerSocket(WebSocket):
    """Runs the application's handler coroutine for one connection."""

    def __init__(self, handler: Handler, server: Server, max_queue: int | None) -> None:
        super().__init__(max_queue=max_queue)
        self._handler = handler
        self._server = server

    def on_connect(self, conn: Connection) -> None:
        super().on_connect(conn)
        self._server._track(asyncio.ensure_future(self._run()))

    async def _run(self) -> None:
        conn = self.conn
        assert conn is not None
        try:
            await self._handler(self)
        except ConnectionClosed:
            pass
        except Exception:
            logger.exception("%s: connection handler failed", _addr(conn.remote_address))
            if conn.state == OPEN:
                conn.close(1011, "internal error")
        else:
            if self._pending_failure is not None:
                conn.fail(self._pending_failure)
            elif conn.state == OPEN:
                conn.close(1000)
        await asyncio.shield(conn.closed)


class serve:
    """Serve ``handler(ws)`` coroutines: ``async with fastws.serve(handler, host, port) as server``.

    Also awaitable (``server = await fastws.serve(...)``). Accepts the options of
    ``create_server`` plus ``max_queue``.
    """

    def __init__(
        self,
        handler: Handler,
        host: str | Sequence[str] | None = None,
        port: int | None = None,
        *,
        max_queue: int | None = MAX_QUEUE,
        **kwargs: Any,
    ) -> None:
        self._handler = handler
        self._host = host
        self._port = port
        self._max_queue = max_queue
        self._kwargs = kwargs
        self.server: Server | None = None

    async def _create(self) -> Server:
        holder: list[Server] = []
        handler, max_queue = self._handler, self._max_queue
        server = await create_server(
            lambda: _HandlerSocket(handler, holder[0], max_queue), self._host, self._port, **self._kwargs
        )
        holder.append(server)
        self.server = server
        return server

    def __await__(self) -> Generator[Any, None, Server]:
        return self._create().__await__()

    async def __aenter__(self) -> Server:
        return await self._create()

    async def __aexit__(self, *exc_info: Any) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
