"""One open WebSocket connection on asyncio, and the low-level callback API.

After the opening handshake the transport talks straight to a ``Connection``:
it *is* the protocol core (compiled or pure Python), so bytes go from the
event loop into the frame parser and out to ``Listener.on_message`` with no
Python frame in between, and ``Connection.send`` writes at once. On the
compiled path a plain socket's connection also moves to the extension's own
transport (``take_over_transport``): recv() into the parser and send() out,
both from C; a TLS connection is on the extension's ``TLSTransport`` from its
first byte (``start_own_tls``).
"""

from __future__ import annotations

import asyncio
import asyncio.selector_events
import logging
import os
import socket
import ssl
import sys
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from . import _accel
from .defaults import CLOSE_TIMEOUT, MAX_SIZE
from .exceptions import InvalidState, ProtocolError
from .handshake import Request, Response

if TYPE_CHECKING:
    from .pubsub import PubSub

__all__ = ["Listener", "Connection", "broadcast", "OPEN", "CLOSING", "CLOSED"]

OPEN, CLOSING, CLOSED = _accel.OPEN, _accel.CLOSING, _accel.CLOSED

# Why a connection does not read (Connection._reading_held).
_HELD_BY_APPLICATION = 1  # pause_reading(), e.g. the WebSocket API's full receive queue
_HELD_BY_WRITES = 2  # the write buffer is over its high-water mark


class Listener:
    """Callbacks for one connection, called from the event loop as data arrives.

    Subclass it and override what you need; keep the callbacks short and
    non-blocking (they run inside ``data_received``).
    """

    #: Stop reading from the peer while the write buffer is over its high-water
    #: mark, so that what callbacks write in answer to the peer (``conn.send`` in
    #: ``on_message``) cannot pile up: a peer that sends without reading is held
    #: back by TCP instead. A listener that bounds its own output sets it False
    #: and keeps reading (the ``WebSocket`` API does: its ``send`` waits). Pongs
    #: never pile up either way: while writing is paused only the latest waits.
    pause_reading_while_writing_paused = True

    def on_connect(self, conn: Connection) -> None:
        """The handshake is done; ``conn`` can send."""

    def on_message(self, conn: Connection, data: bytes, is_text: bool) -> None:
        """A complete message. Text arrives as validated UTF-8 bytes with ``is_text``."""

    def on_pong(self, conn: Connection, payload: bytes) -> None:
        """A pong arrived."""

    def on_close(self, conn: Connection, code: int, reason: str) -> None:
        """The connection is gone; ``code`` is 1006 if it ended without a closing handshake."""

    def on_protocol_error(self, conn: Connection, exc: ProtocolError) -> None:
        """The peer broke the protocol; nothing after the bad frame is read.

        The default fails the connection at once (close frame with ``exc.code``).
        An override may first finish with the messages already received, but
        must call ``conn.fail(exc)`` in the end.
        """
        conn.fail(exc)

    def pause_writing(self, conn: Connection) -> None:
        """The transport's write buffer went over its high-water mark."""

    def resume_writing(self, conn: Connection) -> None:
        """The write buffer drained below its low-water mark."""


class Connection(_accel.ProtocolCore):
    """A WebSocket connection after the handshake; also the transport's protocol.

    ``send(data)`` writes a message (str → text, bytes → binary), ``ping()``,
    ``close(code, reason)``; ``request`` is the HTTP request (server side) and
    ``response`` the HTTP response (client side); ``subprotocol`` what was
    negotiated.
    """

    def __init__(
        self,
        transport: asyncio.Transport,
        listener: Listener,
        *,
        client: bool,
        request: Request,
        response: Response | None = None,
        subprotocol: str | None = None,
        extension: Any = None,
        max_size: int | None = MAX_SIZE,
        max_fragments: int | None = None,
        close_timeout: float | None = CLOSE_TIMEOUT,
        ping_interval: float | None = None,
        ping_timeout: float | None = None,
        write_limit: int | tuple[int, int | None] | None = None,
        logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
        server: Any = None,
    ) -> None:
        super().__init__(client, max_size=max_size, max_fragments=max_fragments, extension=extension)
        self.transport = transport
        self.listener = listener
        self.request = request
        self.response = response
        self.subprotocol = subprotocol
        self.server = server  # the fastws.Server that accepted it (None on the client side)
        self.close_timeout = close_timeout
        self.remote_address = transport.get_extra_info("peername")
        self.logger = logger or logging.getLogger("fastws.client" if client else "fastws.server")
        self._reading_held = 0  # _HELD_BY_* bits: reading resumes when none is left
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.opened_at = asyncio.get_running_loop().time()  # for the access log's duration
        self.closed_by: str | None = None  # "server" or "client": who started the closing (None: nobody did)
        self._ping_sent_at: float | None = None  # the keepalive ping awaiting its pong
        self._abort_handle: asyncio.TimerHandle | None = None
        self._write = transport.write
        # write_frames(data): bytes that already are whole frames go to the transport
        # as they are. For fan-out (fastws.pubsub): a frame encoded once, the same
        # bytes object written to many connections, so it is the transport's own
        # write, not a method around it. The frames must suit this connection:
        # unmasked (server side), and not compressed unless for its own context.
        # Nothing is checked; applications use send().
        self.write_frames = transport.write
        if not _writelines_skips_flow_control(transport):
            self._writelines = transport.writelines  # else the core writes each part
        self._on_message = listener.on_message
        if write_limit is not None:
            high, low = write_limit if isinstance(write_limit, tuple) else (write_limit, None)
            transport.set_write_buffer_limits(high=high, low=high // 4 if low is None else low)
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self._keepalive_handle: asyncio.TimerHandle | None = None
        self._unsent_at_ping = 0  # the write buffer's size after the last keepalive ping
        if ping_interval is not None:
            self._keepalive_handle = asyncio.get_running_loop().call_later(ping_interval, self._keepalive_ping)

    # -- keepalive (timers, nothing per message: the cores only set received_data) --

    def _keepalive_ping(self) -> None:
        """Every ping_interval: ping, and expect a sign of life from the peer within ping_timeout.

        A sign of life is data from the peer, or, while we hold reading back
        because the peer is slow to take our output, the peer taking some of it:
        its silence is then our doing.
        """
        if self.state != OPEN:
            return
        loop = asyncio.get_running_loop()
        self.received_data = False
        self.ping(b"")
        self._ping_sent_at = time.monotonic()  # not loop.time(): uvloop's has millisecond steps
        self._unsent_at_ping = self.transport.get_write_buffer_size()
        if self.ping_timeout is None:
            self._keepalive_handle = loop.call_later(self.ping_interval, self._keepalive_ping)  # type: ignore[arg-type]
        else:
            self._keepalive_handle = loop.call_later(self.ping_timeout, self._keepalive_check)

    def _keepalive_check(self) -> None:
        if self.state != OPEN:
            return
        if not self.received_data and self.transport.get_write_buffer_size() >= self._unsent_at_ping:
            # Nothing at all (not even the pong) since the ping, and none of our
            # output taken either: the peer or the path is gone.
            self._keepalive_handle = None
            self.fail(ProtocolError("keepalive ping timeout", 1011))
            return
        delay = max(self.ping_interval - self.ping_timeout, 0.0)  # type: ignore[operator]
        self._keepalive_handle = asyncio.get_running_loop().call_later(delay, self._keepalive_ping)

    # The transport calls these after the handshake (see handshake protocols).
    data_received = _accel.ProtocolCore.receive_data

    def connection_made(self, transport: Any) -> None:
        pass  # the handshake protocol saw it; we take over an open transport

    def eof_received(self) -> None:
        return None  # let the transport close: a WebSocket has no half-close

    def connection_lost(self, exc: Exception | None) -> None:
        was_open = self.state == OPEN
        self.connection_closed()
        if self.closed_by is None and self.failure is not None:
            self.closed_by = "client" if self.client else "server"  # we failed it
        if self._abort_handle is not None:
            self._abort_handle.cancel()
        if self._keepalive_handle is not None:
            self._keepalive_handle.cancel()
        if self.server is not None:
            self.server.pubsub.unsubscribe_all(self)  # the hub keeps the subscriptions
        if self.failure is not None:
            self.logger.info("%s: closed the connection: %s", _addr(self.remote_address), self.failure)
        elif was_open and (isinstance(exc, ssl.SSLError) or self.transport.get_extra_info("ssl_object") is not None):
            # A TLS peer gone without a closing handshake: perhaps mid-record, which
            # the loop's SSL transport reports as a plain EOF (None) and ours as an SSLError.
            self.logger.info("%s: TLS connection lost without a closing handshake: %s", _addr(self.remote_address), exc or "EOF")
        try:
            self.listener.on_close(self, self.close_code or 1006, self.close_reason)  # connection_closed() set it
        finally:
            if not self.closed.done():
                self.closed.set_result(None)

    def pause_writing(self) -> None:
        super().pause_writing()  # pongs wait
        if self.server is not None:
            self.server.metrics.write_paused += 1
        if self.listener.pause_reading_while_writing_paused:
            self._hold_reading(_HELD_BY_WRITES)
        self.listener.pause_writing(self)

    def resume_writing(self) -> None:
        super().resume_writing()  # the pending pong goes out
        self._release_reading(_HELD_BY_WRITES)
        if self.server is not None:
            self.server.pubsub.writing_resumed(self)
        self.listener.resume_writing(self)

    # -- reading (back-pressure on the peer) ---------------------------------------

    def pause_reading(self) -> None:
        """Stop reading from the peer until ``resume_reading()``; TCP pushes back on it."""
        self._hold_reading(_HELD_BY_APPLICATION)

    def resume_reading(self) -> None:
        """Read again, unless the write buffer is still over its high-water mark."""
        self._release_reading(_HELD_BY_APPLICATION)

    def start_reading(self) -> None:
        """After the handshake: start reading unless something already holds it."""
        if not self._reading_held and self.state != CLOSED:
            self.transport.resume_reading()

    def _hold_reading(self, reason: int) -> None:
        if not self._reading_held and self.state != CLOSED:
            self.transport.pause_reading()
        self._reading_held |= reason

    def _release_reading(self, reason: int) -> None:
        if self._reading_held & reason:
            self._reading_held &= ~reason
            if not self._reading_held and self.state != CLOSED and not self.transport.is_closing():
                self.transport.resume_reading()

    # -- pub/sub (see fastws.pubsub) -----------------------------------------

    def subscribe(self, topic: str) -> bool:
        """Receive what is published to ``topic`` until unsubscribed or closed; False if already subscribed."""
        return self._pubsub().subscribe(self, topic)

    def unsubscribe(self, topic: str) -> bool:
        """Stop receiving ``topic``; False if not subscribed."""
        return self._pubsub().unsubscribe(self, topic)

    @property
    def topics(self) -> frozenset[str]:
        """The topics this connection is subscribed to."""
        return frozenset() if self.server is None else self.server.pubsub.topics_of(self)

    def _pubsub(self) -> PubSub:
        if self.server is None:
            raise InvalidState("topics are a server feature: a client connection cannot subscribe")
        pubsub: PubSub = self.server.pubsub
        return pubsub

    # -- core hooks ---------------------------------------------------------

    def _on_pong(self, payload: bytes) -> None:
        if self._ping_sent_at is not None and not payload:
            if self.server is not None:
                self.server.metrics.ping_rtt(time.monotonic() - self._ping_sent_at)
            self._ping_sent_at = None
        self.listener.on_pong(self, payload)

    def _on_protocol_error(self, exc: ProtocolError) -> None:
        if self.server is not None:
            self.server.metrics.protocol_error(exc.code)
        self.listener.on_protocol_error(self, exc)

    def _on_close_frame(self, code: int, reason: str) -> None:
        if self.closed_by is None:
            self.closed_by = "server" if self.client else "client"
        if self.client:
            # The server closes TCP first; give it close_timeout to do so.
            self._schedule_abort()

    def _close_transport(self) -> None:
        self.transport.close()
        self._schedule_abort()

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake; the transport is aborted if the peer does not finish it."""
        was_open = self.state == OPEN
        super().close(code, reason)
        if was_open:
            if self.closed_by is None:
                self.closed_by = "client" if self.client else "server"
            self._schedule_abort()

    def abort(self) -> None:
        """Drop the TCP connection now, without a closing handshake."""
        self.transport.abort()

    def _schedule_abort(self) -> None:
        if self._abort_handle is None and self.close_timeout is not None and self.state != CLOSED:
            loop = asyncio.get_running_loop()
            self._abort_handle = loop.call_later(self.close_timeout, self.transport.abort)

    def __repr__(self) -> str:
        return f"<fastws.Connection {_addr(self.remote_address)} state={self.state}>"


# CPython 3.12.0-3.12.8 and 3.13.0-3.13.1: the selector socket transport's own
# writelines never pauses its protocol (gh-127655), so a sender would never be held
# back and a peer that does not read could grow the write buffer without bound.
_BUGGY_WRITELINES = (3, 12) <= sys.version_info[:3] < (3, 12, 9) or (3, 13) <= sys.version_info[:3] < (3, 13, 2)
_SELECTOR_SOCKET_TRANSPORT: Any = getattr(asyncio.selector_events, "_SelectorSocketTransport", None)


def _writelines_skips_flow_control(transport: Any) -> bool:
    return _BUGGY_WRITELINES and _SELECTOR_SOCKET_TRANSPORT is not None and isinstance(transport, _SELECTOR_SOCKET_TRANSPORT)


def take_over_transport(transport: Any) -> Any:
    """The transport to run a just-opened connection on.

    On the compiled path a plain TCP (or Unix) connection moves to
    ``SocketTransport``: the socket's descriptor is duplicated and the event
    loop's transport, which has nothing left to write, is aborted (closing only
    its own descriptor). TLS connections, and everything in pure Python, keep
    the loop's transport. Reading stays paused until ``resume_reading()``.
    """
    if _accel.SocketTransport is None or transport.get_extra_info("sslcontext") is not None:
        return transport
    sock = transport.get_extra_info("socket")
    if sock is None or sock.type != socket.SOCK_STREAM or transport.get_write_buffer_size():
        return transport
    fd = os.dup(sock.fileno())
    extra = {name: transport.get_extra_info(name) for name in ("peername", "sockname")}
    transport.abort()
    return _accel.SocketTransport(asyncio.get_running_loop(), fd, extra)


def own_tls_available() -> bool:
    """Whether TLS connections run on fastws's own transport here (compiled, with OpenSSL)."""
    return _accel.TLS_AVAILABLE


def start_own_tls(
    transport: Any,
    context: ssl.SSLContext,
    *,
    server_side: bool,
    server_hostname: str | None = None,
    on_handshake: Callable[[BaseException | None], object],
) -> Any:
    """Move a just-opened TCP connection to the extension's ``TLSTransport``; None if it cannot.

    The TLS handshake then runs on fastws's own transport (OpenSSL from C on
    an ``SSLObject`` that ``context`` made, so everything the context holds
    applies) and ``on_handshake(None)`` or ``on_handshake(exc)`` reports its
    end. None (nothing done) in pure Python, in a build without OpenSSL, or
    when the extension cannot drive this Python's ``ssl`` objects: the caller
    uses the event loop's SSL transport instead.
    """
    if not _accel.TLS_AVAILABLE or _accel.TLSTransport is None or _accel.tls_attachable is None:
        return None
    if transport.get_extra_info("sslcontext") is not None:
        return None  # already TLS (to a proxy): its socket carries that session's records
    sock = transport.get_extra_info("socket")
    if sock is None or sock.type != socket.SOCK_STREAM or transport.get_write_buffer_size():
        return None
    sslobject = context.wrap_bio(
        ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=server_side, server_hostname=server_hostname
    )
    if not _accel.tls_attachable(sslobject):
        return None
    fd = os.dup(sock.fileno())
    extra = {name: transport.get_extra_info(name) for name in ("peername", "sockname")}
    transport.set_protocol(asyncio.Protocol())  # its connection_lost is no news to the caller
    transport.abort()
    return _accel.TLSTransport(asyncio.get_running_loop(), fd, extra, sslobject, context, on_handshake)


def broadcast(connections: Iterable[Connection], message: str | bytes) -> int:
    """Send ``message`` to every open connection; returns how many got it.

    The frame is encoded once and the same bytes object is written to each
    server-side transport (see ``ProtocolCore`` twins' ``broadcast``).
    """
    if isinstance(message, str):
        return _accel.broadcast(connections, 1, message.encode())
    return _accel.broadcast(connections, 2, message)


def _addr(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)
