"""The sans-I/O protocol: bytes in, events and bytes out, no sockets, no event loop.

``ServerProtocol`` and ``ClientProtocol`` run the opening handshake and then
the same ``ProtocolCore`` the asyncio layer uses. Tests, fuzzers and other
event loops drive them::

    proto = ServerProtocol()
    proto.receive_data(data)
    for event in proto.events_received(): ...
    for chunk in proto.data_to_send(): sock.sendall(chunk)
    if proto.close_expected(): sock.close()
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import _accel
from .exceptions import InvalidHandshake, InvalidRequest, ProtocolError
from .handshake import ClientHandshake, HeadReader, Request, Response, ServerHandshake, http_response

__all__ = [
    "ServerProtocol",
    "ClientProtocol",
    "Connected",
    "Message",
    "Ping",
    "Pong",
    "CloseReceived",
    "Failed",
    "HandshakeFailed",
    "CONNECTING",
    "OPEN",
    "CLOSING",
    "CLOSED",
]

CONNECTING = 0
OPEN, CLOSING, CLOSED = _accel.OPEN, _accel.CLOSING, _accel.CLOSED


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


Event = Connected | Message | Ping | Pong | CloseReceived | Failed | HandshakeFailed


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

    def _open(self) -> None:
        self.core = _EventCore(self, self.client, **self._options)

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
    """The server side. Options: ProtocolCore's (``max_size``...) and ServerHandshake's."""

    client = False

    def __init__(
        self,
        *,
        subprotocols: Sequence[str] = (),
        origins: Any = None,
        extra_headers: Sequence[tuple[str, str]] = (),
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.handshake = ServerHandshake(subprotocols=subprotocols, origins=origins, extra_headers=extra_headers)
        self._reader = HeadReader(InvalidRequest)
        self.request: Request | None = None

    def receive_data(self, data: bytes) -> None:
        if self.core is not None:
            self.core.receive_data(data)
            return
        if self._close_expected:
            return
        try:
            head = self._reader.feed(data)
            if head is None:
                return
            start_line, headers, rest = head
            self.request = self.handshake.parse(start_line, headers)
            answer, subprotocol, extension = self.handshake.accept(self.request)
        except InvalidRequest as exc:
            self._output.append(http_response(exc.status, f"{exc}\n", exc.headers))
            self._events.append(HandshakeFailed(exc))
            self._close_expected = True
            return
        self._output.append(answer)
        self._options.setdefault("extension", extension)
        self._open()
        self._events.append(Connected(self.request, None, subprotocol))
        if rest:
            self._core().receive_data(rest)


class ClientProtocol(_SansIOProtocol):
    """The client side; ``request_bytes()`` is what to send first."""

    client = True

    def __init__(self, host: str, port: int, path: str = "/", *, subprotocols: Sequence[str] = (), **options: Any) -> None:
        super().__init__(**options)
        self.handshake = ClientHandshake(host, port, path, subprotocols=subprotocols)
        self._output.append(self.handshake.request)

    def receive_data(self, data: bytes) -> None:
        if self.core is not None:
            self.core.receive_data(data)
            return
        if self._close_expected:
            return
        try:
            result = self.handshake.receive_data(data)
        except InvalidHandshake as exc:
            self._events.append(HandshakeFailed(exc))
            self._close_expected = True
            return
        if result is None:
            return
        response, rest = result
        self._open()
        self._events.append(
            Connected(Request("GET", "/", self.handshake.headers), response, response.headers.get("Sec-WebSocket-Protocol"))
        )
        if rest:
            self._core().receive_data(rest)
