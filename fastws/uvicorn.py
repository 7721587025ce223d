"""fastws under uvicorn: ``uvicorn app:app --ws fastws.uvicorn:WebSocketProtocol``.

uvicorn's HTTP protocols (h11, httptools, zttp) hand a WebSocket upgrade to the
class named by ``--ws`` (``uvicorn.run(app, ws=WebSocketProtocol)``): they build
it with the server's ``config`` and state, give it the transport and replay the
request's head into ``data_received``. This class then runs the ASGI WebSocket
spec (2.4, with the ``websocket.http.response`` denial extension) on fastws's
sans-I/O handshake (``ServerOpening``) and its protocol core: the class *is* a
``ProtocolCore``, so frames are parsed, unmasked and validated by the compiled
core, and each message goes from the parser to the application's queue with one
Python call. On the compiled path a plain TCP connection moves to fastws's own
socket transport at ``websocket.accept`` (as ``fastws serve`` does).

It behaves as uvicorn's own implementations do where the ASGI spec leaves room
(uvicorn's WebSocket test suite runs against it): the same log lines on
``uvicorn.error``, 403 when the app closes before accepting, 500 when it
returns or raises first, a close frame with 1012 on server shutdown, reading
paused while a received message waits for the application, ``send`` waiting
while the transport's write buffer is full.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
from collections import deque
from http import HTTPStatus
from typing import Any, Final
from urllib.parse import unquote

from uvicorn.config import Config
from uvicorn.protocols.utils import ClientDisconnected, get_local_addr, get_remote_addr, is_ssl
from uvicorn.server import ServerState

from . import _accel
from .connection import _writelines_skips_flow_control, take_over_transport
from .defaults import MAX_FRAGMENTS
from .exceptions import ConnectionClosed, InvalidState, ProtocolError
from .extensions.permessage_deflate import server_extension_factory
from .handshake import Request, ServerHandshake
from .protocol import ACCEPTED, READING, ServerOpening

__all__ = ["WebSocketProtocol"]

# Where the ASGI conversation is (WebSocketProtocol._phase).
_HANDSHAKE: Final = 0  # the app has not answered websocket.connect yet
_OPEN: Final = 1  # accepted: messages flow
_CLOSING: Final = 2  # the app sent websocket.close; waiting for the peer's close frame
_DENYING: Final = 3  # websocket.http.response.start sent; body to come
_DONE: Final = 4  # the HTTP answer is complete, or the connection is gone

_RECEIVE: Final = "websocket.receive"
_SEND: Final = "websocket.send"
_CONNECT_EVENT: Final = {"type": "websocket.connect"}

_INTERNAL_ERROR: Final = (
    b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 21\r\nconnection: close\r\n\r\nInternal Server Error"
)
_FORBIDDEN_HEAD: Final = b"HTTP/1.1 403 Forbidden\r\n"
_DENIAL_TYPES: Final = ("websocket.http.response.start", "websocket.http.response.body")
_UNSAFE_IN_HEADERS: Final = frozenset(b"\r\n\x00")


class _Detached(asyncio.Protocol):
    """What an event-loop transport left behind by take_over_transport tells: nothing."""


_DETACHED: Final = _Detached()


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {status} {phrase}\r\n".encode("latin-1")


def _header_lines(headers: Any) -> list[bytes]:
    """ASGI (name, value) byte pairs as header lines; CR, LF or NUL in either is an error."""
    lines = []
    for name, value in headers:
        name, value = bytes(name), bytes(value)
        if _UNSAFE_IN_HEADERS.intersection(name) or _UNSAFE_IN_HEADERS.intersection(value):
            raise RuntimeError(f"invalid character in response header {name!r}")
        lines.append(name + b": " + value + b"\r\n")
    return lines


class WebSocketProtocol(_accel.ProtocolCore, asyncio.Protocol):
    """uvicorn's WebSocket protocol on fastws: pass it as ``ws=`` (or ``--ws fastws.uvicorn:WebSocketProtocol``).

    uvicorn's options apply: ``ws_max_size`` (1009 past it), ``ws_ping_interval``
    and ``ws_ping_timeout`` (keepalive; 1011 when the pong is late),
    ``ws_per_message_deflate``, ``root_path``, the default headers (``server``,
    ``date``, ``--header``). Reading pauses while a message waits for the app,
    so at most one read's worth of messages is queued (``ws_max_queue`` has no
    further effect).
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not config.loaded:
            config.load()
        super().__init__(False, max_size=config.ws_max_size, max_fragments=MAX_FRAGMENTS)
        self.config = config
        self.app = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        self.logger = logging.getLogger("uvicorn.error")
        self.root_path = config.root_path
        self.app_state = app_state
        self.connections = server_state.connections
        self.tasks = server_state.tasks
        self.default_headers = server_state.default_headers
        self.transport: Any = None
        self.server_addr: tuple[str, int | None] | None = None
        self.client_addr: tuple[str, int] | None = None
        self.scope: dict[str, Any] = {}
        handshake = ServerHandshake(
            server_header=None,
            extension_factory=server_extension_factory("deflate" if config.ws_per_message_deflate else None),
        )
        self.opening = ServerOpening(handshake)
        self.request: Request | None = None
        self._phase = _HANDSHAKE
        self._early = b""  # frames that came before the app accepted
        # Messages for the app: a deque and one waiter (cheaper than asyncio.Queue).
        self._queue: deque[dict[str, Any]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._disconnect: dict[str, Any] | None = None  # the one disconnect event, once queued
        self._read_paused = False
        self._disconnected = False  # the transport is gone
        self._writable: asyncio.Future[None] | None = None
        self._pending_failure: ProtocolError | None = None  # the peer's error, after the messages before it
        self._pending_timer: asyncio.TimerHandle | None = None
        # Denial response (websocket.http.response.*).
        self._deny_status = 0
        self._deny_headers: list[bytes] = []
        self._deny_mode = ""  # "" head not written yet, "length", "chunked"
        # Closing.
        self.close_timeout = 10.0
        self.close_timer: asyncio.TimerHandle | None = None
        self._abort_timer: asyncio.TimerHandle | None = None
        # Keepalive.
        self.ping_interval: float | None = config.ws_ping_interval
        self.ping_timeout: float | None = config.ws_ping_timeout
        self.ping_timer: asyncio.TimerHandle | None = None
        self.pong_timer: asyncio.TimerHandle | None = None
        self.pending_ping_payload: bytes | None = None
        self.ping_sent_at = 0.0
        self._on_message = self._message_received

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.connections.add(self)  # type: ignore[arg-type]  # uvicorn lists its own protocol classes
        self.transport = transport
        self.server_addr = get_local_addr(transport)  # type: ignore[arg-type]
        self.client_addr = get_remote_addr(transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        """Before ``websocket.accept``: the request's head; after it, frames for the core."""
        if self._phase == _HANDSHAKE and self.request is None:
            self._head_received(data)
        elif self._phase in (_OPEN, _CLOSING):
            self.receive_data(data)
        elif self._phase == _HANDSHAKE:
            # A client may not send frames before the 101: keep them for after it,
            # and read no more until then.
            self._early += data
            if not self._read_paused:
                self._read_paused = True
                self.transport.pause_reading()
        # _DENYING, _DONE: an HTTP answer is going out; what the peer sends is not read.

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.connection_closed()
        self._disconnected = True
        self._stop_keepalive()
        for timer in (self.close_timer, self._abort_timer, self._pending_timer):
            if timer is not None:
                timer.cancel()
        self.close_timer = self._abort_timer = self._pending_timer = None
        self._pending_failure = None
        self._queue_disconnect(1006)
        self._phase = _DONE
        self.connections.discard(self)
        writable = self._writable
        if writable is not None and not writable.done():
            writable.set_result(None)  # a send() waiting for the buffer to drain raises now
        if exc is None and self.transport is not None:
            self.transport.close()

    def pause_writing(self) -> None:
        super().pause_writing()  # pongs wait (the core's rule)

    def resume_writing(self) -> None:
        super().resume_writing()  # the latest pending pong goes out
        writable = self._writable
        if writable is not None and not writable.done():
            writable.set_result(None)

    def shutdown(self) -> None:
        """uvicorn is shutting down: 1012 to an open connection, 500 to one still in the handshake."""
        self._stop_keepalive()
        phase = self._phase
        if phase == _OPEN:
            self._queue_disconnect(1012)
            self.close(1012)
            self._phase = _CLOSING
            self._arm_close_timer()
        elif phase == _CLOSING:
            if self.close_timer is not None:
                self.close_timer.cancel()
                self.close_timer = None
            self.transport.close()
        elif phase == _HANDSHAKE:
            self._send_500_response()
            self.transport.close()
        elif phase == _DENYING:
            self._phase = _DONE
            self.transport.close()

    # -- the opening handshake ------------------------------------------------------

    def _head_received(self, data: bytes) -> None:
        opening = self.opening
        state = opening.receive_data(data)
        if state == READING:
            return
        if state != ACCEPTED:
            # Not a valid upgrade (ServerOpening says why); the app is not called.
            error = opening.error
            self.logger.info('%s - "WebSocket" %d %s', self._peer(), error.status if error else 0, error or "")
            self._phase = _DONE
            self.transport.write(opening.answer)
            self.transport.close()
            return
        request = self.request = opening.request
        assert request is not None
        if opening.rest:
            self._early, opening.rest = opening.rest, b""
        root_path = self.root_path
        raw_path, _, query_string = request.path.partition("?")
        subprotocols = [t.strip() for v in request.headers.get_all("Sec-WebSocket-Protocol") for t in v.split(",") if t.strip()]
        self.scope = {
            "type": "websocket",
            "asgi": {"version": self.config.asgi_version, "spec_version": "2.4"},
            "http_version": "1.1",
            "scheme": "wss" if is_ssl(self.transport) else "ws",
            "server": self.server_addr,
            "client": self.client_addr,
            "root_path": root_path,
            "path": root_path + unquote(raw_path),
            "raw_path": root_path.encode("latin-1") + raw_path.encode("latin-1"),
            "query_string": query_string.encode("latin-1"),
            "headers": [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in request.headers],
            "subprotocols": subprotocols,
            "state": self.app_state.copy(),
            "extensions": {"websocket.http.response": {}},
        }
        self._queue.append(_CONNECT_EVENT.copy())
        task = self.loop.create_task(self.run_asgi())
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    def _accept(self, message: Any) -> None:
        lines = [self.opening.answer[:-2]]
        lines += _header_lines(self.default_headers)
        lines += _header_lines(message.get("headers") or ())
        subprotocol = message.get("subprotocol")
        if subprotocol:
            lines += _header_lines([(b"Sec-WebSocket-Protocol", subprotocol.encode("latin-1"))])
        lines.append(b"\r\n")
        self.logger.info('%s - "WebSocket %s" [accepted]', self._peer(), self._path())
        transport = self.transport
        if transport.is_closing():
            return
        self.extension = self.opening.extension
        self._phase = _OPEN
        new = self._take_over(transport)
        self._write = new.write
        if hasattr(new, "writelines") and not _writelines_skips_flow_control(new):
            self._writelines = new.writelines
        new.write(b"".join(lines))
        self._start_keepalive()
        if new is not transport or self._read_paused:
            self._read_paused = False
            new.resume_reading()  # a new SocketTransport starts paused
        self.data_received = self.receive_data  # type: ignore[method-assign]  # the transport feeds the core directly
        early, self._early = self._early, b""
        if early:
            self.receive_data(early)

    def _take_over(self, transport: Any) -> Any:
        """Move a plain TCP connection to fastws's SocketTransport (compiled path only)."""
        if _accel.SocketTransport is None or not hasattr(transport, "set_protocol"):
            return transport
        transport.set_protocol(_DETACHED)  # its connection_lost after the abort is not ours
        new = take_over_transport(transport)
        new.set_protocol(self)
        self.transport = new
        return new

    # -- ASGI ------------------------------------------------------------------------

    async def run_asgi(self) -> None:
        try:
            result = await self.app(self.scope, self.receive, self.asgi_send)
        except ClientDisconnected:
            pass
        except BaseException:
            self.logger.exception("Exception in ASGI application\n")
            self._send_500_response()
        else:
            if self._phase == _HANDSHAKE:
                self.logger.error("ASGI callable returned without completing handshake.")
                self._send_500_response()
            elif result is not None:
                self.logger.error("ASGI callable should return None, but returned '%s'.", result)
        if self._pending_failure is not None:
            self._fail_pending()
        if self._phase == _DENYING and not self._deny_mode:
            self._write_denial_head(b"content-length: 0\r\n")  # a start without a body: an empty body
        if self.close_timer is None and self.transport is not None:
            self.transport.close()

    async def receive(self) -> dict[str, Any]:
        """ASGI ``receive``: the next event; after the disconnect event, that event again."""
        queue = self._queue
        while not queue:
            if self._pending_failure is not None:
                self._fail_pending()  # queues the disconnect event
                continue
            if self._disconnect is not None:
                return self._disconnect
            waiter = self._waiter = self.loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        message = queue.popleft()
        if self._read_paused and not queue and self._phase == _OPEN:
            self._read_paused = False
            self.transport.resume_reading()
        return message

    async def asgi_send(self, message: Any) -> None:
        """ASGI ``send``."""
        if self.writing_paused and not self._disconnected:
            await self._drained()
        kind = message["type"]
        if kind == _SEND and self._phase == _OPEN and not self._disconnected:  # the hot path first
            data = message.get("bytes")
            if data is None:
                data = message.get("text")
                if data is None:
                    return
            try:
                self.send(data)
            except (ConnectionClosed, InvalidState):
                raise ClientDisconnected() from None
            return
        if self._disconnected:
            raise ClientDisconnected()
        phase = self._phase
        if phase == _OPEN:
            if kind == "websocket.close":
                code = message.get("code") or 1000
                reason = message.get("reason") or ""
                if self.state != _accel.OPEN:
                    return  # the peer closed first; its disconnect event is queued
                if self._pending_failure is not None:
                    self._fail_pending()  # the peer broke the protocol: its close code, not the app's
                    return
                self.close(code, reason)
                self._queue_disconnect(code, reason)
                self._phase = _CLOSING
                self._stop_keepalive()
                if self._read_paused:
                    self._read_paused = False
                    self.transport.resume_reading()
                self._arm_close_timer()
            else:
                raise RuntimeError(f"Expected ASGI message 'websocket.send' or 'websocket.close', but got '{kind}'.")
        elif phase == _HANDSHAKE:
            if kind == "websocket.accept":
                self._accept(message)
            elif kind == "websocket.close":
                self.logger.info('%s - "WebSocket %s" 403', self._peer(), self._path())
                self._queue_disconnect(1006)
                self._phase = _DONE
                head = [_FORBIDDEN_HEAD, *_header_lines(self.default_headers), b"content-length: 0\r\nconnection: close\r\n\r\n"]
                self.transport.write(b"".join(head))
                self.transport.close()
            elif kind == "websocket.http.response.start":
                self._deny_start(message)
            else:
                raise RuntimeError(
                    "Expected ASGI message 'websocket.accept', 'websocket.close' "
                    f"or 'websocket.http.response.start' but got '{kind}'."
                )
        elif phase == _DENYING:
            if kind != "websocket.http.response.body":
                raise RuntimeError(f"Expected ASGI message 'websocket.http.response.body' but got '{kind}'.")
            self._deny_body(message.get("body", b""), message.get("more_body", False))
        elif phase == _CLOSING:
            raise RuntimeError(f"Unexpected ASGI message '{kind}', after sending 'websocket.close'.")
        elif kind in _DENIAL_TYPES or kind == "websocket.close":
            raise RuntimeError(f"Unexpected ASGI message '{kind}', after the response was sent.")
        else:
            raise ClientDisconnected()

    async def _drained(self) -> None:
        writable = self._writable
        if writable is None or writable.done():
            writable = self._writable = self.loop.create_future()
        await writable

    # -- the denial response (websocket.http.response) -------------------------------

    def _deny_start(self, message: Any) -> None:
        status = message["status"]
        if not isinstance(status, int) or not 100 <= status < 600:
            raise RuntimeError(f"Invalid HTTP status code '{status}' in response.")
        headers = _header_lines(message.get("headers") or ())
        self.logger.info('%s - "WebSocket %s" %d', self._peer(), self._path(), status)
        names = {line.split(b":", 1)[0].strip().lower() for line in headers}
        defaults = [line for line in _header_lines(self.default_headers) if line.split(b":", 1)[0].lower() not in names]
        if b"connection" not in names:
            headers.append(b"connection: close\r\n")
        self._deny_status = status
        self._deny_headers = defaults + headers
        self._phase = _DENYING
        if b"content-length" in names or b"transfer-encoding" in names:
            self._write_denial_head(b"")
            self._deny_mode = "length"

    def _write_denial_head(self, framing: bytes) -> None:
        self.transport.write(b"".join([_status_line(self._deny_status), *self._deny_headers, framing, b"\r\n"]))

    def _deny_body(self, body: bytes, more: bool) -> None:
        mode = self._deny_mode
        if not mode:
            if not more:
                self._write_denial_head(b"content-length: %d\r\n" % len(body))
                mode = "length"
            else:
                self._write_denial_head(b"transfer-encoding: chunked\r\n")
                mode = "chunked"
            self._deny_mode = mode
        if mode == "chunked":
            if body:
                self.transport.write(b"%x\r\n%s\r\n" % (len(body), body))
            if not more:
                self.transport.write(b"0\r\n\r\n")
        elif body:
            self.transport.write(body)
        if not more:
            self._queue_disconnect(1006)
            self._phase = _DONE
            self.transport.close()

    def _send_500_response(self) -> None:
        if self._phase != _HANDSHAKE or self.transport is None:
            return
        self._phase = _DONE
        self._queue_disconnect(1006)
        if not self.transport.is_closing():
            self.transport.write(_INTERNAL_ERROR)

    # -- messages in (the core calls these) ------------------------------------------

    def _message_received(self, core: Any, data: bytes, is_text: bool) -> None:
        if self._phase != _OPEN:
            return  # past websocket.close: dropped, so that reading goes on to the peer's close frame
        queue = self._queue
        waiter = self._waiter
        if waiter is not None and not queue:
            # The app waits in receive() for exactly this message: no need to hold reading.
            queue.append({"type": _RECEIVE, "text": data.decode()} if is_text else {"type": _RECEIVE, "bytes": data})
            if not waiter.done():
                waiter.set_result(None)
            return
        queue.append({"type": _RECEIVE, "text": data.decode()} if is_text else {"type": _RECEIVE, "bytes": data})
        if not self._read_paused:
            self._read_paused = True
            self.transport.pause_reading()

    def _queue_disconnect(self, code: int, reason: str | None = None) -> None:
        if self._disconnect is not None:
            return
        event: dict[str, Any] = {"type": "websocket.disconnect", "code": code}
        if reason is not None:
            event["reason"] = reason
        self._disconnect = event
        self._queue.append(event)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_close_frame(self, code: int, reason: str) -> None:
        self._queue_disconnect(code, reason)

    def _on_protocol_error(self, exc: ProtocolError) -> None:
        self.logger.info("%s - WebSocket closed: %s (%d)", self._peer(), exc, exc.code)
        if self._queue and self._phase == _OPEN:
            # Messages that came before the bad frame are still the app's: fail once it
            # has taken them (its next receive()), so that the close frame follows what
            # it sends in answer; close_timeout bounds the wait.
            self._pending_failure = exc
            self._pending_timer = self.loop.call_later(self.close_timeout, self._fail_pending)
        else:
            self._queue_disconnect(exc.code, str(exc))
            self.fail(exc)

    def _fail_pending(self) -> None:
        exc, self._pending_failure = self._pending_failure, None
        if self._pending_timer is not None:
            self._pending_timer.cancel()
            self._pending_timer = None
        if exc is not None and self.state == _accel.OPEN:
            self._queue_disconnect(exc.code, str(exc))
            self.fail(exc)

    def _on_pong(self, payload: bytes) -> None:
        if self.pending_ping_payload is None or payload != self.pending_ping_payload:
            return
        self.pending_ping_payload = None
        if self.pong_timer is not None:
            self.pong_timer.cancel()
            self.pong_timer = None
            self._schedule_ping()

    def _close_transport(self) -> None:
        """The closing handshake is over (or failed): close TCP."""
        if self.close_timer is not None:
            self.close_timer.cancel()
            self.close_timer = None
        self._stop_keepalive()
        transport = self.transport
        transport.close()
        if self._abort_timer is None and hasattr(transport, "abort") and not self._disconnected:
            self._abort_timer = self.loop.call_later(self.close_timeout, transport.abort)

    def _arm_close_timer(self) -> None:
        if self.close_timer is None:
            self.close_timer = self.loop.call_later(self.close_timeout, self._close_timed_out)

    def _close_timed_out(self) -> None:
        """The peer did not answer our close frame in time."""
        self.close_timer = None
        self._close_transport()

    # -- keepalive -----------------------------------------------------------------------

    def _start_keepalive(self) -> None:
        if self.ping_interval is not None and self.ping_interval > 0:
            self._schedule_ping()

    def _stop_keepalive(self) -> None:
        for timer in (self.ping_timer, self.pong_timer):
            if timer is not None:
                timer.cancel()
        self.ping_timer = self.pong_timer = None
        self.pending_ping_payload = None

    def _schedule_ping(self) -> None:
        assert self.ping_interval is not None
        self.ping_timer = self.loop.call_later(self.ping_interval, self._keepalive_ping)

    def _keepalive_ping(self) -> None:
        self.ping_timer = None
        if self.state != _accel.OPEN or self._phase != _OPEN:
            return
        self.pending_ping_payload = struct.pack("!I", random.getrandbits(32))
        self.ping_sent_at = self.loop.time()
        self.ping(self.pending_ping_payload)
        if self.ping_timeout is not None:
            self.pong_timer = self.loop.call_later(self.ping_timeout, self._keepalive_timed_out)
        else:
            self._schedule_ping()

    def _keepalive_timed_out(self) -> None:
        self.pong_timer = None
        self.pending_ping_payload = None
        if self.state != _accel.OPEN:
            return
        self.logger.info("%s - WebSocket keepalive ping timeout", self._peer())
        self._queue_disconnect(1011, "keepalive ping timeout")
        self.fail(ProtocolError("keepalive ping timeout", 1011))

    # -- helpers -------------------------------------------------------------------------

    def _peer(self) -> str:
        client = self.client_addr
        return f"{client[0]}:{client[1]}" if client else ""

    def _path(self) -> str:
        scope = self.scope
        path: str = scope["raw_path"].decode("latin-1")
        if scope["query_string"]:
            path += "?" + scope["query_string"].decode("latin-1")
        return path.replace('"', "%22")

    def __repr__(self) -> str:
        return f"<fastws.uvicorn.WebSocketProtocol {self._peer()} phase={self._phase}>"

