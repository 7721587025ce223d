"""Connecting to WebSocket servers: the low-level ``create_connection`` and the high-level ``connect``."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl as ssl_module
import urllib.parse
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, cast

from .connection import Connection, Listener, own_tls_available, start_own_tls, take_over_transport
from .defaults import (
    BACKOFF_FACTOR,
    BACKOFF_INITIAL,
    BACKOFF_MAX,
    CLOSE_TIMEOUT,
    MAX_FRAGMENTS,
    MAX_QUEUE,
    MAX_SIZE,
    OPEN_TIMEOUT,
    PING_INTERVAL,
    PING_TIMEOUT,
    USER_AGENT,
    WRITE_LIMIT,
)
from .exceptions import InvalidHandshake, InvalidResponse, InvalidURI, OpenTimeout, ProxyError, ProxyTimeout
from .extensions.permessage_deflate import CompressionOption, deflate_settings
from .protocol import ACCEPTED, REFUSED, ClientOpening
from .proxy import Tunnel, open_tunnel, proxy_for, run_over_tunnel
from .websocket import WebSocket

__all__ = ["create_connection", "connect", "parse_uri", "WebSocketURI"]

logger = logging.getLogger("fastws.client")


@dataclass(frozen=True)
class WebSocketURI:
    secure: bool
    host: str
    port: int
    path: str  # with the query string


def parse_uri(uri: str) -> WebSocketURI:
    """Split a ``ws://`` or ``wss://`` URI; InvalidURI for anything else."""
    try:
        parts = urllib.parse.urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        raise InvalidURI(f"{uri!r} is not a valid URI: {exc}") from None
    if parts.scheme not in ("ws", "wss"):
        raise InvalidURI(f"{uri!r} is not a WebSocket URI: the scheme must be ws or wss")
    if not parts.hostname:
        raise InvalidURI(f"{uri!r} has no host")
    if parts.fragment:
        raise InvalidURI(f"{uri!r} has a fragment, which WebSocket URIs may not have")
    secure = parts.scheme == "wss"
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return WebSocketURI(secure, parts.hostname, port or (443 if secure else 80), path)


class _HandshakeProtocol(asyncio.Protocol):
    """The transport's protocol until the handshake is done: runs the sans-I/O ``ClientOpening``.

    Sends its request, feeds it the answer, and resolves ``done`` when it accepted
    (reading paused until a ``Connection`` takes over) or with its error.
    """

    __slots__ = ("opening", "done", "transport", "tls_first")

    def __init__(self, opening: ClientOpening, done: asyncio.Future[None], tls_first: bool = False) -> None:
        self.opening = opening
        self.done = done
        self.transport: asyncio.Transport | None = None
        self.tls_first = tls_first  # TCP first, then fastws's own TLS transport calls connection_made again

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.tls_first:
            self.tls_first = False
            cast(asyncio.Transport, transport).pause_reading()
            return
        self.transport = cast(asyncio.Transport, transport)  # a stream's (uvloop's are not asyncio.Transport subclasses)
        self.transport.write(self.opening.request_bytes)

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        state = self.opening.receive_data(data)
        if state == ACCEPTED:
            assert self.transport is not None  # connection_made() set it
            self.transport.pause_reading()
            self.done.set_result(None)
        elif state == REFUSED:
            assert self.opening.error is not None
            self.done.set_exception(self.opening.error)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(
                InvalidResponse("connection closed during the opening handshake")
                if exc is None
                else exc
            )


async def create_connection(
    listener_factory: Callable[[], Listener],
    uri: str,
    *,
    ssl: ssl_module.SSLContext | bool | None = None,
    server_hostname: str | None = None,
    subprotocols: Sequence[str] = (),
    origin: str | None = None,
    extra_headers: Sequence[tuple[str, str]] = (),
    user_agent: str | None = USER_AGENT,
    max_size: int | None = MAX_SIZE,
    max_fragments: int | None = MAX_FRAGMENTS,
    open_timeout: float | None = OPEN_TIMEOUT,
    close_timeout: float | None = CLOSE_TIMEOUT,
    ping_interval: float | None = PING_INTERVAL,
    ping_timeout: float | None = PING_TIMEOUT,
    write_limit: int | tuple[int, int | None] = WRITE_LIMIT,
    compression: CompressionOption = None,
    sock: Any = None,
    proxy: str | bool | None = True,
    proxy_ssl: ssl_module.SSLContext | None = None,
) -> Connection:
    """Connect to ``uri`` and return the open Connection driving a new ``Listener``.

    ``compression="deflate"`` offers permessage-deflate (see ``fastws.extensions.Deflate``);
    ``ping_interval``/``ping_timeout`` run keepalive (None disables it); ``write_limit``
    is the write buffer's high-water mark (or ``(high, low)``). Raises ``OpenTimeout``
    (a ``TimeoutError``) when TCP, TLS and the handshake take over ``open_timeout`` seconds.

    ``proxy``: a proxy URL (``http://[user:password@]host:port``, ``https://``,
    ``socks5://``, ``socks5h://``, ``socks4://``), None for a direct connection, or
    True (the default) for the environment's, as curl reads it (``https_proxy``,
    ``http_proxy``, ``all_proxy``, ``no_proxy``); ``proxy_ssl`` is the SSL context
    for an ``https://`` proxy. A proxy that cannot be reached or refuses raises
    ``ProxyError`` (``ProxyTimeout`` when it does not answer within ``open_timeout``).
    """
    deflate_settings(compression)  # a bad value is a ValueError before anything else
    target = parse_uri(uri)
    if target.secure and ssl is None:
        ssl = True
    if ssl and not target.secure:
        raise InvalidURI(f"{uri!r} is ws://, but an SSL context was given: use wss://")
    if ssl is True:
        ssl = ssl_module.create_default_context()
    opening = ClientOpening(
        target.host,
        target.port,
        target.path,
        secure=target.secure,
        subprotocols=subprotocols,
        origin=origin,
        extra_headers=extra_headers,
        user_agent=user_agent,
        compression=compression,
    )
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    kwargs: dict[str, Any] = {"ssl": ssl or None}
    if ssl:
        kwargs["server_hostname"] = server_hostname or target.host
    if sock is not None:
        if isinstance(proxy, str):
            raise ValueError("give sock or proxy, not both")
        kwargs["sock"] = sock
        route = None
    else:
        kwargs["host"], kwargs["port"] = target.host, target.port
        route = proxy_for(target.secure, target.host, target.port, proxy)
    tunnel_open = False

    def handshake() -> _HandshakeProtocol:
        return _HandshakeProtocol(opening, done)

    async def open_connection() -> asyncio.Transport:
        nonlocal tunnel_open
        tunnel = None
        if route is not None:
            tunnel = await open_tunnel(route, target.host, target.port, proxy_ssl=proxy_ssl, user_agent=user_agent)
            tunnel_open = True
        transport = await open_own_tls(tunnel) if ssl else None
        if transport is None:
            if tunnel is None:
                transport, _ = await loop.create_connection(handshake, **kwargs)
            else:
                transport = await run_over_tunnel(tunnel, handshake, ssl=kwargs["ssl"], server_hostname=kwargs.get("server_hostname"))
        try:
            await done
        except BaseException:
            transport.abort()
            raise
        return transport

    async def open_own_tls(tunnel: Tunnel | None) -> asyncio.Transport | None:
        """TLS on fastws's own transport, over a new TCP connection or a proxy's tunnel.

        None (nothing opened or used) where that is not available, and for a
        tunnel inside TLS to an https:// proxy: TLS in TLS stays on the loop.
        """
        if not own_tls_available() or (isinstance(tunnel, asyncio.BaseTransport) and tunnel.get_extra_info("sslcontext")):
            return None
        assert isinstance(ssl, ssl_module.SSLContext)
        protocol = _HandshakeProtocol(opening, done, tls_first=True)
        if tunnel is None:
            plain = {key: value for key, value in kwargs.items() if key not in ("ssl", "server_hostname")}
            raw, _ = await loop.create_connection(lambda: protocol, **plain)
        elif isinstance(tunnel, socket.socket):  # SOCKS
            try:
                raw, _ = await loop.create_connection(lambda: protocol, sock=tunnel)
            except BaseException:
                tunnel.close()
                raise
        else:  # HTTP CONNECT: the proxy's TCP connection, reading paused since its answer
            raw = tunnel
            raw.set_protocol(protocol)
            protocol.connection_made(raw)
        handshake: asyncio.Future[None] = loop.create_future()

        def on_handshake(exc: BaseException | None) -> None:
            if not handshake.done():
                handshake.set_exception(exc) if exc is not None else handshake.set_result(None)

        own = start_own_tls(raw, ssl, server_side=False, server_hostname=kwargs["server_hostname"], on_handshake=on_handshake)
        if own is None:  # cannot drive this context after all: the loop's TLS on this TCP stream
            raw.resume_reading()
            tls = await loop.start_tls(raw, protocol, ssl, server_side=False, server_hostname=kwargs["server_hostname"])
            assert tls is not None
            protocol.connection_made(tls)
            return tls
        try:
            await handshake
        except BaseException:
            own.abort()
            raise
        own.set_protocol(protocol)
        protocol.connection_made(own)
        own.resume_reading()
        return cast(asyncio.Transport, own)

    try:
        async with asyncio.timeout(open_timeout) as deadline:
            transport = await open_connection()
    except TimeoutError:
        if not deadline.expired():  # the kernel's connect timeout: an OSError, let it be
            raise
        if route is not None and not tunnel_open:
            raise ProxyTimeout(f"proxy {route} did not open a tunnel to {uri} within open_timeout={open_timeout} s") from None
        raise OpenTimeout(f"connection to {uri} not open within open_timeout={open_timeout} s") from None
    transport = take_over_transport(transport)
    listener = listener_factory()
    conn = Connection(
        transport,
        listener,
        client=True,
        request=opening.request,
        response=opening.response,
        subprotocol=opening.subprotocol,
        extension=opening.extension,
        max_size=max_size,
        max_fragments=max_fragments,
        close_timeout=close_timeout,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        write_limit=write_limit,
        logger=logger,
    )
    transport.set_protocol(conn)
    listener.on_connect(conn)
    if opening.rest:
        conn.receive_data(opening.rest)
    conn.start_reading()
    return conn


class connect:
    """Open a connection: ``async with fastws.connect(uri) as ws`` or ``ws = await fastws.connect(uri)``.

    ``async for ws in fastws.connect(uri)`` reconnects: it yields a new connection
    each time the loop body ends (catch ``ConnectionClosed`` and ``continue``),
    waiting between attempts with exponential backoff (``backoff_initial`` seconds,
    times ``backoff_factor`` per failure, at most ``backoff_max``) and jitter. It
    stops after a close with 1008 (policy violation), and raises a refusal that
    retrying cannot fix: a 4xx answer other than 429, a bad URI, an untrusted
    certificate.

    Accepts the options of ``create_connection`` plus ``max_queue``.
    """

    def __init__(
        self,
        uri: str,
        *,
        max_queue: int | None = MAX_QUEUE,
        backoff_initial: float = BACKOFF_INITIAL,
        backoff_max: float = BACKOFF_MAX,
        backoff_factor: float = BACKOFF_FACTOR,
        **kwargs: Any,
    ) -> None:
        if not 0 < backoff_initial <= backoff_max or backoff_factor < 1:
            raise ValueError("need 0 < backoff_initial <= backoff_max and backoff_factor >= 1")
        self.uri = uri
        self._max_queue = max_queue
        self._kwargs = kwargs
        self._backoff = (backoff_initial, backoff_max, backoff_factor)
        self.ws: WebSocket | None = None

    async def _open(self) -> WebSocket:
        max_queue = self._max_queue
        conn = await create_connection(lambda: WebSocket(max_queue=max_queue), self.uri, **self._kwargs)
        ws = conn.listener
        assert isinstance(ws, WebSocket)
        self.ws = ws
        return ws

    def __await__(self) -> Generator[Any, None, WebSocket]:
        return self._open().__await__()

    async def __aenter__(self) -> WebSocket:
        return await self._open()

    async def __aexit__(self, *exc_info: Any) -> None:
        assert self.ws is not None
        await self.ws.close()

    def __aiter__(self) -> AsyncIterator[WebSocket]:
        return self._reconnecting()

    async def _reconnecting(self) -> AsyncIterator[WebSocket]:
        initial, maximum, factor = self._backoff
        ceiling = initial  # of the next wait
        while True:
            try:
                ws = await self._open()
            except Exception as exc:
                if not _worth_retrying(exc):
                    raise
                delay = ceiling * random.uniform(0.5, 1.0)  # jitter spreads the clients of a restarted server
                ceiling = min(maximum, ceiling * factor)
                logger.info("connecting to %s failed: %s; retrying in %.2f s", self.uri, exc or type(exc).__name__, delay)
                await asyncio.sleep(delay)
                continue
            try:
                yield ws
            finally:
                await ws.close()
            if ws.close_code == 1008:
                logger.info("%s closed with 1008 (policy violation): not reconnecting", self.uri)
                return
            delay = initial * random.uniform(0.5, 1.0)
            ceiling = min(maximum, initial * factor)
            logger.info("connection to %s closed (%s); reconnecting in %.2f s", self.uri, ws.close_code, delay)
            await asyncio.sleep(delay)


def _worth_retrying(exc: Exception) -> bool:
    """Whether another attempt may succeed: network trouble and 5xx or 429 answers, not refusals."""
    if isinstance(exc, (InvalidResponse, ProxyError)):
        return exc.status is None or exc.status == 429 or not 400 <= exc.status < 500
    if isinstance(exc, (InvalidHandshake, ssl_module.SSLCertVerificationError)):
        return False
    return isinstance(exc, (OSError, TimeoutError, EOFError))
