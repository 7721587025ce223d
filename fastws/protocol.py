"""The sans-I/O protocol: bytes in, events and bytes out, no sockets, no event loop.

``ServerProtocol`` and ``ClientProtocol`` run the opening handshake and then
the same ``ProtocolCore`` the asyncio layer uses. Tests, fuzzers and other
event loops drive them::

    proto = ServerProtocol(compression="deflate")
    proto.receive_data(data)
    for event in proto.events_received(): ...
    for chunk in proto.data_to_send(): sock.sendall(chunk)
    if proto.close_expected(): sock.close()

The opening handshake itself is ``ServerOpening`` / ``ClientOpening``: the one
driver of it, which the asyncio server and client run too (they only add the
socket, the open timeout and the ``Connection``). It reads the head within the
limits of ``HeadReader``, answers plain HTTP (``process_request``, 405 to other
methods, no body to HEAD), checks origins, picks the subprotocol and
negotiates permessage-deflate.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from . import _accel
from .defaults import MAX_FRAGMENTS, MAX_SIZE, SERVER_HEADER, USER_AGENT
from .exceptions import InvalidHandshake, InvalidRequest, ProtocolError
from .extensions.permessage_deflate import (
    ClientDeflate,
    CompressionOption,
    PerMessageDeflate,
    client_extension,
    server_extension_factory,
)
from .handshake import (
    ClientHandshake,
    HeadReader,
    OriginsType,
    Request,
    Response,
    SelectSubprotocol,
    ServerHandshake,
    http_response,
)

__all__ = [
    "ServerProtocol",
    "ClientProtocol",
    "ServerOpening",
    "ClientOpening",
    "server_handshake",
    "ProcessRequest",
    "Connected",
    "Message",
    "Ping",
    "Pong",
    "CloseReceived",
    "Failed",
    "HandshakeFailed",
    "RequestAnswered",
    "CONNECTING",
    "OPEN",
    "CLOSING",
    "CLOSED",
    "READING",
    "DECIDING",
    "ACCEPTED",
    "REFUSED",
]

logger = logging.getLogger("fastws.server")

CONNECTING = 0
OPEN, CLOSING, CLOSED = _accel.OPEN, _accel.CLOSING, _accel.CLOSED

#: ``process_request(request)``: a ``Response`` to answer with plain HTTP, or None to
#: go on with the WebSocket handshake; it may be a coroutine function (asyncio only).
ProcessRequest = Callable[[Request], "Response | None | Awaitable[Response | None]"]

# Where an opening handshake is (``ServerOpening.state``, ``ClientOpening.state``).
READING: Final = 0  # the head is not complete: feed more bytes
DECIDING: Final = 1  # server: the request waits for an asynchronous process_request (``decision``)
ACCEPTED: Final = 2  # write ``answer`` (server); the connection is open with what was negotiated
REFUSED: Final = 3  # server: write ``answer``, then close; client: ``error`` says why


@dataclass
class Connected:
    """The opening handshake succeeded."""

    request: Request
    response: Response | None
    subprotocol: str | None


@dataclass
class Message:
    data: bytes
    is_text: bool


@dataclass
class Ping:
    data: bytes


@dataclass
class Pong:
    data: bytes


@dataclass
class CloseReceived:
    code: int
    reason: str


@dataclass
class Failed:
    """We failed the connection: a close frame with ``error.code`` was queued."""

    error: ProtocolError


@dataclass
class HandshakeFailed:
    error: InvalidHandshake


@dataclass
class RequestAnswered:
    """``process_request`` answered the request over plain HTTP (500 if it raised); TCP is to be closed."""

    request: Request
    response: Response


Event = Connected | Message | Ping | Pong | CloseReceived | Failed | HandshakeFailed | RequestAnswered


# -- the opening handshake: one driver for the sans-I/O protocols and asyncio ------------------


def server_handshake(
    *,
    subprotocols: Sequence[str] = (),
    select_subprotocol: SelectSubprotocol | None = None,
    origins: OriginsType = None,
    extra_headers: Sequence[tuple[str, str]] = (),
    server_header: str | None = SERVER_HEADER,
    compression: CompressionOption = None,
) -> ServerHandshake:
    """The server's handshake settings from the options of ``serve`` (shared by all its connections)."""
    return ServerHandshake(
        subprotocols=subprotocols,
        select_subprotocol=select_subprotocol,
        origins=origins,
        extra_headers=extra_headers,
        server_header=server_header,
        extension_factory=server_extension_factory(compression),
    )


class ServerOpening:
    """The server's opening handshake of one connection, sans-I/O.

    Feed it what the peer sends with ``receive_data(data)``, which returns the
    ``state``:

    - READING: the request's head is not complete yet.
    - DECIDING: ``process_request`` returned an awaitable, left in ``decision``
      for the caller to await (bytes that arrive meanwhile are kept in ``rest``);
      then ``decide(result)``, or ``process_request_failed()`` if it raised.
    - ACCEPTED: write ``answer`` (the 101) and run the connection with ``request``,
      ``subprotocol`` and ``extension``; ``rest`` holds the bytes after the head
      (frames already sent by the client).
    - REFUSED: write ``answer``, then close. ``error`` is why the handshake refused
      the request (an ``InvalidRequest``), or None when ``process_request``
      answered it (``response``).

    ``handshake`` is the server's settings (see ``server_handshake``); nothing here
    keeps time: the caller's open timeout bounds the whole.
    """

    __slots__ = (
        "handshake",
        "process_request",
        "state",
        "request",
        "answer",
        "rest",
        "subprotocol",
        "extension",
        "error",
        "response",
        "decision",
        "_reader",
        "_head_method",
    )

    def __init__(self, handshake: ServerHandshake, process_request: ProcessRequest | None = None) -> None:
        self.handshake = handshake
        self.process_request = process_request
        self.state: int = READING
        self.request: Request | None = None
        self.answer = b""
        self.rest = b""
        self.subprotocol: str | None = None
        self.extension: Any = None
        self.error: InvalidRequest | None = None
        self.response: Response | None = None
        self.decision: Awaitable[Response | None] | None = None
        self._reader = HeadReader(InvalidRequest)
        self._head_method = False  # a HEAD request: answers carry no body

    def receive_data(self, data: bytes) -> int:
        state = self.state
        if state == READING:
            try:
                head = self._reader.feed(data)
                if head is None:
                    return READING
                start_line, headers, self.rest = head
                self._head_method = start_line.startswith("HEAD ")
                self.request = self.handshake.parse(start_line, headers)
            except InvalidRequest as exc:
                return self._refuse(exc)
            return self._run_process_request()
        if state == DECIDING:
            self.rest += data
        return state

    def _run_process_request(self) -> int:
        process_request = self.process_request
        if process_request is None:
            return self.decide(None)
        assert self.request is not None
        try:
            result = process_request(self.request)
        except Exception:
            return self.process_request_failed()
        if inspect.isawaitable(result):
            self.state = DECIDING
            self.decision = result
            return DECIDING
        return self.decide(result)

    def decide(self, response: Response | None) -> int:
        """What ``process_request`` said: None goes on with the handshake, a Response is the answer."""
        if response is not None:
            self.response = response
            self.answer = http_response(response.status, response.body, list(response.headers), head=self._head_method)
            self.state = REFUSED
            return REFUSED
        assert self.request is not None
        try:
            self.answer, self.subprotocol, self.extension = self.handshake.accept(self.request)
        except InvalidRequest as exc:
            return self._refuse(exc)
        self.state = ACCEPTED
        return ACCEPTED

    def process_request_failed(self) -> int:
        """``process_request`` raised: log it with its traceback (call this in the ``except`` block) and answer 500."""
        logger.exception("process_request failed")
        return self.decide(Response(500, body=b"Internal Server Error\n"))

    def _refuse(self, exc: InvalidRequest) -> int:
        self.error = exc
        self.answer = http_response(exc.status, f"{exc}\n", exc.headers, head=self._head_method)
        self.state = REFUSED
        return REFUSED


class ClientOpening:
    """The client's opening handshake of one connection, sans-I/O.

    Send ``request_bytes`` first, then feed the server's bytes to
    ``receive_data(data)``, which returns the ``state``: READING until the answer
    is complete, then ACCEPTED (``response``, ``subprotocol``, ``extension``, and
    ``rest``, the bytes after the head) or REFUSED (``error``, an
    ``InvalidHandshake``: the server refused, or its answer is not acceptable).
    Options: those of ``connect``'s handshake (``compression`` offers permessage-deflate).
    """

    __slots__ = ("handshake", "deflate", "request", "request_bytes", "state", "response", "subprotocol", "extension", "rest", "error")

    def __init__(
        self,
        host: str,
        port: int,
        path: str = "/",
        *,
        secure: bool = False,
        subprotocols: Sequence[str] = (),
        origin: str | None = None,
        extra_headers: Sequence[tuple[str, str]] = (),
        user_agent: str | None = USER_AGENT,
        compression: CompressionOption = None,
    ) -> None:
        self.deflate: ClientDeflate | None = client_extension(compression)
        self.handshake = ClientHandshake(
            host,
            port,
            path,
            secure=secure,
            subprotocols=subprotocols,
            origin=origin,
            extra_headers=extra_headers,
            user_agent=user_agent,
            extension_offer=self.deflate.offer if self.deflate is not None else None,
        )
        self.request = Request("GET", path, self.handshake.headers)
        self.request_bytes: bytes = self.handshake.request
        self.state: int = READING
        self.response: Response | None = None
        self.subprotocol: str | None = None
        self.extension: PerMessageDeflate | None = None
        self.rest = b""
        self.error: InvalidHandshake | None = None

    def receive_data(self, data: bytes) -> int:
        if self.state != READING:
            return self.state
        try:
            result = self.handshake.receive_data(data)
            if result is None:
                return READING
            response, rest = result
            if self.deflate is not None:
                self.extension = self.deflate.accept(response.headers.get_all("Sec-WebSocket-Extensions"))
        except InvalidHandshake as exc:
            self.error = exc
            self.state = REFUSED
            return REFUSED
        self.response = response
        self.subprotocol = response.headers.get("Sec-WebSocket-Protocol")
        self.rest = rest
        self.state = ACCEPTED
        return ACCEPTED


# -- the sans-I/O protocols -------------------------------------------------------------------


class _EventCore(_accel.ProtocolCore):
    """A ProtocolCore that records its events and output in lists."""

    def __init__(self, owner: _SansIOProtocol, client: bool, **options: Any) -> None:
        super().__init__(client, **options)
        self.owner = owner
        self._write = owner._output.append
        self._on_message = owner._message

    def _on_ping(self, payload: bytes) -> None:
        self.owner._events.append(Ping(payload))

    def _on_pong(self, payload: bytes) -> None:
        self.owner._events.append(Pong(payload))

    def _on_close_frame(self, code: int, reason: str) -> None:
        self.owner._events.append(CloseReceived(code, reason))

    def _close_transport(self) -> None:
        if self.failure is not None:
            self.owner._events.append(Failed(self.failure))
        self.owner._close_expected = True


class _SansIOProtocol:
    client: bool

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._events: list[Event] = []
        self._output: list[bytes] = []
        self._close_expected = False
        self.core: _EventCore | None = None

    @property
    def state(self) -> int:
        return CONNECTING if self.core is None else self.core.state

    def _open(self, extension: Any, rest: bytes) -> None:
        options = self._options
        if options.get("extension") is None:  # an extension given as an option is used as is
            options = dict(options, extension=extension)
        self.core = _EventCore(self, self.client, **options)
        if rest:
            self.core.receive_data(rest)

    def _message(self, core: Any, data: bytes, is_text: bool) -> None:
        self._events.append(Message(data, is_text))

    def events_received(self) -> list[Event]:
        """Events since the last call."""
        events, self._events = self._events, []
        return events

    def data_to_send(self) -> list[bytes]:
        """Bytes to write to the peer since the last call."""
        output = self._output[:]
        self._output.clear()  # the core holds this list's append
        return output

    def close_expected(self) -> bool:
        """Whether the TCP connection should now be closed."""
        return self._close_expected

    def _core(self) -> _EventCore:
        if self.core is None:
            raise InvalidHandshake("the opening handshake is not done")
        return self.core

    def send(self, data: str | bytes, text: bool | None = None) -> None:
        self._core().send(data, text)

    def send_frame(self, opcode: int, payload: bytes, fin: bool = True) -> None:
        self._core().send_frame(opcode, payload, fin)

    def ping(self, payload: bytes = b"") -> None:
        self._core().ping(payload)

    def close(self, code: int = 1000, reason: str = "") -> None:
        self._core().close(code, reason)

    def connection_lost(self) -> None:
        if self.core is not None:
            self.core.connection_closed()
        self._close_expected = True


class ServerProtocol(_SansIOProtocol):
    """The server side, with the handshake options of ``serve``.

    ``compression``, ``subprotocols``, ``select_subprotocol``, ``origins``,
    ``extra_headers``, ``server_header`` (or a ready ``handshake``, a
    ``ServerHandshake``), ``process_request`` (synchronous here: a Response is
    answered over plain HTTP and ends in a ``RequestAnswered`` event), and the
    core's ``max_size`` and ``max_fragments``. Events of the handshake:
    ``Connected``, ``HandshakeFailed`` or ``RequestAnswered``.
    """

    client = False

    def __init__(
        self,
        *,
        subprotocols: Sequence[str] = (),
        select_subprotocol: SelectSubprotocol | None = None,
        origins: OriginsType = None,
        extra_headers: Sequence[tuple[str, str]] = (),
        server_header: str | None = SERVER_HEADER,
        compression: CompressionOption = None,
        process_request: ProcessRequest | None = None,
        handshake: ServerHandshake | None = None,
        max_size: int | None = MAX_SIZE,
        max_fragments: int | None = MAX_FRAGMENTS,
        **options: Any,
    ) -> None:
        if inspect.iscoroutinefunction(process_request):
            raise TypeError("ServerProtocol runs process_request synchronously: it cannot be a coroutine function")
        super().__init__(max_size=max_size, max_fragments=max_fragments, **options)
        if handshake is None:
            handshake = server_handshake(
                subprotocols=subprotocols,
                select_subprotocol=select_subprotocol,
                origins=origins,
                extra_headers=extra_headers,
                server_header=server_header,
                compression=compression,
            )
        self.handshake = handshake
        self.opening = ServerOpening(handshake, process_request)

    @property
    def request(self) -> Request | None:
        """The request, once its head is complete."""
        return self.opening.request

    def receive_data(self, data: bytes) -> None:
        if self.core is not None:
            self.core.receive_data(data)
            return
        if self._close_expected:
            return
        opening = self.opening
        state = opening.receive_data(data)
        if state == READING:
            return
        if state == DECIDING:
            decision, opening.decision = opening.decision, None
            if inspect.iscoroutine(decision):
                decision.close()  # never awaited, and says so no more
            try:
                raise TypeError("process_request returned an awaitable: ServerProtocol needs a synchronous one")
            except TypeError:
                state = opening.process_request_failed()
        self._output.append(opening.answer)
        if state == ACCEPTED:
            assert opening.request is not None
            self._events.append(Connected(opening.request, None, opening.subprotocol))
            self._open(opening.extension, opening.rest)
            return
        if opening.error is not None:
            self._events.append(HandshakeFailed(opening.error))
        else:
            assert opening.request is not None and opening.response is not None
            self._events.append(RequestAnswered(opening.request, opening.response))
        self._close_expected = True


class ClientProtocol(_SansIOProtocol):
    """The client side, with the handshake options of ``connect``; ``data_to_send()`` first gives the request.

    ``secure`` (wss: the Host header leaves out port 443), ``subprotocols``,
    ``origin``, ``extra_headers``, ``user_agent``, ``compression``, and the
    core's ``max_size`` and ``max_fragments``.
    """

    client = True

    def __init__(
        self,
        host: str,
        port: int,
        path: str = "/",
        *,
        secure: bool = False,
        subprotocols: Sequence[str] = (),
        origin: str | None = None,
        extra_headers: Sequence[tuple[str, str]] = (),
        user_agent: str | None = USER_AGENT,
        compression: CompressionOption = None,
        max_size: int | None = MAX_SIZE,
        max_fragments: int | None = MAX_FRAGMENTS,
        **options: Any,
    ) -> None:
        super().__init__(max_size=max_size, max_fragments=max_fragments, **options)
        self.opening = ClientOpening(
            host,
            port,
            path,
            secure=secure,
            subprotocols=subprotocols,
            origin=origin,
            extra_headers=extra_headers,
            user_agent=user_agent,
            compression=compression,
        )
        self.handshake = self.opening.handshake
        self._output.append(self.opening.request_bytes)

    def receive_data(self, data: bytes) -> None:
        if self.core is not None:
            self.core.receive_data(data)
            return
        if self._close_expected:
            return
        opening = self.opening
        state = opening.receive_data(data)
        if state == READING:
            return
        if state == REFUSED:
            assert opening.error is not None
            self._events.append(HandshakeFailed(opening.error))
            self._close_expected = True
            return
        self._events.append(Connected(opening.request, opening.response, opening.subprotocol))
        self._open(opening.extension, opening.rest)
