"""Connecting to WebSocket servers: the low-level ``create_connection`` and the high-level ``connect``."""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_module
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable, Generator, Sequence

from . import __version__
from .connection import Connection, Listener
from .exceptions import InvalidHandshake, InvalidResponse, InvalidURI
from .handshake import ClientHandshake, Request
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
    """Sends the upgrade request, checks the answer, then hands the transport to a Connection."""

    def __init__(self, handshake: ClientHandshake, done: "asyncio.Future[tuple[Any, bytes]]") -> None:
        self.handshake = handshake
        self.done = done
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are not asyncio.Transport
        transport.write(self.handshake.request)

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        try:
            result = self.handshake.receive_data(data)
        except InvalidHandshake as exc:
            self.done.set_exception(exc)
            return
        if result is not None:
            self.transport.pause_reading()  # type: ignore[union-attr]
            self.done.set_result(result)

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
    user_agent: str | None = f"fastws/{__version__}",
    max_size: int | None = 2**20,
    max_fragments: int | None = None,
    open_timeout: float | None = 10.0,
    close_timeout: float | None = 10.0,
    sock: Any = None,
) -> Connection:
    """Connect to ``uri`` and return the open Connection driving a new ``Listener``."""
    target = parse_uri(uri)
    if target.secure and ssl is None:
        ssl = True
    if ssl and not target.secure:
        raise InvalidURI(f"{uri!r} is ws://, but an SSL context was given: use wss://")
    if ssl is True:
        ssl = ssl_module.create_default_context()
    handshake = ClientHandshake(
        target.host,
        target.port,
        target.path,
        secure=target.secure,
        subprotocols=subprotocols,
        origin=origin,
        extra_headers=extra_headers,
        user_agent=user_agent,
    )
    loop = asyncio.get_running_loop()
    done: asyncio.Future[tuple[Any, bytes]] = loop.create_future()
    kwargs: dict[str, Any] = {"ssl": ssl or None}
    if ssl:
        kwargs["server_hostname"] = server_hostname or target.host
    if sock is not None:
        kwargs["sock"] = sock
        host, port = None, None
    else:
        host, port = target.host, target.port

    async def open_connection() -> tuple[asyncio.Transport, tuple[Any, bytes]]:
        transport, _ = await loop.create_connection(lambda: _HandshakeProtocol(handshake, done), host, port, **kwargs)
        try:
            return transport, await done  # type: ignore[return-value]
        except BaseException:
            transport.abort()
            raise

    transport, (response, rest) = await asyncio.wait_for(open_connection(), open_timeout)
    listener = listener_factory()
    request = Request("GET", target.path, handshake.headers)
    conn = Connection(
        transport,
        listener,
        client=True,
        request=request,
        response=response,
        subprotocol=response.headers.get("Sec-WebSocket-Protocol"),
        max_size=max_size,
        max_fragments=max_fragments,
        close_timeout=close_timeout,
        logger=logger,
    )
    transport.set_protocol(conn)
    listener.on_connect(conn)
    if rest:
        conn.receive_data(rest)
    transport.resume_reading()
    return conn


class connect:
    """Open a connection: ``async with fastws.connect(uri) as ws`` or ``ws = await fastws.connect(uri)``.

    Accepts the options of ``create_connection`` plus ``max_queue``.
    """

    def __init__(self, uri: str, *, max_queue: int | None = 16, **kwargs: Any) -> None:
        self.uri = uri
        self._max_queue = max_queue
        self._kwargs = kwargs
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
