"""fastws: a fast, correct WebSocket (RFC 6455) server and client for asyncio."""

from __future__ import annotations

from ._accel import USING_EXTENSION
from ._version import __version__
from .client import connect, create_connection
from .connection import Connection, Listener, broadcast
from .exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    FastWSError,
    InvalidHandshake,
    InvalidOrigin,
    InvalidRequest,
    InvalidResponse,
    InvalidState,
    InvalidURI,
    OpenTimeout,
    PayloadTooBig,
    ProtocolError,
    ProxyError,
    ProxyTimeout,
)
from .handshake import Headers, Request, Response
from .loop import event_loop_name, new_event_loop, run
from .server import Server, create_server, serve
from .websocket import WebSocket

__all__ = [
    "__version__",
    "USING_EXTENSION",
    "connect",
    "create_connection",
    "serve",
    "create_server",
    "Server",
    "Connection",
    "Listener",
    "WebSocket",
    "broadcast",
    "Headers",
    "Request",
    "Response",
    "run",
    "new_event_loop",
    "event_loop_name",
    "FastWSError",
    "ConnectionClosed",
    "ConnectionClosedOK",
    "ConnectionClosedError",
    "InvalidHandshake",
    "InvalidRequest",
    "InvalidResponse",
    "InvalidOrigin",
    "InvalidURI",
    "ProxyError",
    "ProxyTimeout",
    "ProtocolError",
    "PayloadTooBig",
    "OpenTimeout",
    "InvalidState",
]
