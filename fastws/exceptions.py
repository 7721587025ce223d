"""Every error fastws raises, in one tree.

::

    FastWSError
    ├── ConnectionClosed              the connection is closed; carries code and reason
    │   ├── ConnectionClosedOK        ... with 1000 or 1001 (a normal end)
    │   └── ConnectionClosedError     ... with any other code, or none (1006)
    ├── InvalidHandshake              the opening handshake failed
    │   ├── InvalidRequest            the client's request is bad (carries the HTTP status to answer)
    │   ├── InvalidResponse           the server's answer is bad or not 101
    │   ├── InvalidOrigin             the Origin header is not allowed (403)
    │   ├── InvalidURI                connect() got a URI (or proxy URL) it cannot use
    │   └── ProxyError                the proxy could not be reached or did not open the tunnel
    │       └── ProxyTimeout (also OpenTimeout)   ... did not answer within open_timeout
    ├── ProtocolError                 the peer broke RFC 6455; carries the close code to send
    │   └── PayloadTooBig             a message over max_size (1009)
    ├── OpenTimeout (also TimeoutError)    the client's connection did not open within open_timeout
    └── InvalidState (also RuntimeError)   the API was used at the wrong time

OS errors stay ``OSError`` (a TCP connect that times out in the kernel is the
builtin ``TimeoutError``, an ``OSError``). ``OpenTimeout`` is the only timeout
raised: a closing handshake that overruns ``close_timeout`` drops the connection
instead, and a keepalive timeout closes it with 1011 (``ConnectionClosedError``).
"""

from __future__ import annotations

from http import HTTPStatus

__all__ = [
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


class FastWSError(Exception):
    """Base class of every fastws exception."""


class ConnectionClosed(FastWSError):
    """The connection is closed. ``code`` and ``reason`` say how.

    ``code`` is the code the peer sent, or the one we sent when we failed the
    connection, or 1006 when the TCP connection ended without a closing handshake.
    """

    def __init__(self, code: int, reason: str = "") -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"connection closed: {code} {reason}".rstrip())


class ConnectionClosedOK(ConnectionClosed):
    """The connection ended normally (1000 or 1001)."""


class ConnectionClosedError(ConnectionClosed):
    """The connection ended with an error code or without a closing handshake."""


def connection_closed(code: int, reason: str = "") -> ConnectionClosed:
    """The right ConnectionClosed subclass for a close code."""
    if code in (1000, 1001):
        return ConnectionClosedOK(code, reason)
    return ConnectionClosedError(code, reason)


class InvalidHandshake(FastWSError):
    """The opening handshake failed."""


class InvalidRequest(InvalidHandshake):
    """A client's upgrade request that the server refuses with ``status``.

    ``headers`` are extra response headers (for example ``Sec-WebSocket-Version``
    with a 426).
    """

    def __init__(
        self,
        message: str,
        status: int = HTTPStatus.BAD_REQUEST,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        self.status = HTTPStatus(status)
        self.headers = headers or []
        super().__init__(message)


class InvalidOrigin(InvalidRequest):
    """The request's Origin is not allowed (403)."""

    def __init__(self, origin: str | None) -> None:
        super().__init__(f"origin not allowed: {origin!r}", HTTPStatus.FORBIDDEN)
        self.origin = origin


class InvalidResponse(InvalidHandshake):
    """The server did not accept the upgrade. ``status`` is the HTTP status it sent, if any."""

    def __init__(self, message: str, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class InvalidURI(InvalidHandshake):
    """A URI that connect() cannot use."""


class ProxyError(InvalidHandshake):
    """The proxy could not be reached, refused the tunnel, or answered nonsense.

    ``status`` is the HTTP status an HTTP proxy refused with (407: it wants
    credentials, or refused ours; 403: not allowed; 502: it could not reach the
    server), None when there was no HTTP answer (SOCKS, or a proxy that could not
    be reached). ``async for ws in connect(...)`` retries it unless ``status`` is a
    4xx other than 429.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class ProtocolError(FastWSError):
    """The peer violated the protocol; ``code`` is the close code to answer with."""

    def __init__(self, message: str, code: int = 1002) -> None:
        self.code = code
        super().__init__(message)


class PayloadTooBig(ProtocolError):
    """A message larger than ``max_size`` (close code 1009)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 1009)


class OpenTimeout(FastWSError, TimeoutError):
    """The client's connection (TCP, TLS and the opening handshake) did not open within ``open_timeout``.

    Both a ``FastWSError`` and the builtin ``TimeoutError``: ``except TimeoutError``
    catches it too. Not an ``InvalidHandshake``: the server did nothing wrong that
    we saw, so ``async for ws in connect(...)`` retries it.
    """


class ProxyTimeout(ProxyError, OpenTimeout):
    """The proxy did not open the tunnel within ``open_timeout``: an ``OpenTimeout`` too."""


class InvalidState(FastWSError, RuntimeError):
    """An operation that the connection's state does not allow."""
