"""fastws: a fast, correct WebSocket (RFC 6455) server and client for asyncio."""

from __future__ import annotations

__version__ = "0.1.0"

from ._accel import USING_EXTENSION  # noqa: E402
from .client import connect, create_connection  # noqa: E402
from .connection import Connection, Listener, broadcast  # noqa: E402
from .exceptions import (  # noqa: E402
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
)
from .handshake import Headers, Request, Response  # noqa: E402
from .loop import event_loop_name, new_event_loop, run  # noqa: E402
from .server import Server, create_server, serve  # noqa: E402
from .websocket import WebSocket  # noqa: E402

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
    "ProtocolError",
    "PayloadTooBig",
    "OpenTimeout",
    "InvalidState",
]
