"""The cold rules of the protocol core, written once for both hot paths.

``fastws/_pure.py`` and the compiled ``fastws._speedups`` (``src_c/core.pyx``)
each hand-write only what runs per byte or per message: the streaming receive
loop, unmasking and UTF-8 validation, frame encoding and ``send``. Everything
else a ``ProtocolCore`` does is here, in ``CoreRules``, and both twins run this
source: the pure-Python class inherits from ``CoreRules``; the compiled class (a
``cdef class``, which cannot) lists the same functions in its class body
(``close = CoreRules.close``), taken from ``fastws._rules_c``, which is this file
compiled by Cython (setup.py), so that FASTWS_EXTENSION=0 still interprets it.
``tests/test_differential.py`` checks that every rule below is the one each class
runs.

The rules are: constructor options (``max_size``, ``max_fragments``),
control frames (answering pings, the pong that waits while writing is paused,
answering a close frame), the closing handshake (``close``, ``fail``,
``connection_closed``, ``closed_error``) and the argument checks of
``send_frame``, ``ping``, ``pong`` and ``broadcast``. They may cost a Python
call: none of them runs per data frame.

What a twin provides for them: the attributes set in ``_init_rules``, the
property pair ``max_size``/``max_fragments`` (stored as the twin likes, checked
with ``check_limit``), ``send_frame`` (which calls ``check_frame_args`` for
anything but a data opcode), ``_write_frame(opcode, payload)`` (one unmasked or
masked frame, no checks) and ``_drop_message()`` (free the partial message).
"""

from __future__ import annotations

import operator
import sys
from collections.abc import Callable
from typing import Any

from . import defaults
from .exceptions import ConnectionClosed, ProtocolError, connection_closed
from .frames import (
    CLOSE_ABNORMAL,
    CLOSE_NO_STATUS,
    CLOSE_NORMAL,
    MAX_CONTROL_PAYLOAD,
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    build_close_payload,
    check_close_code_to_send,
    parse_close_payload,
    truncate_reason,
)

__all__ = [
    "COUNTERS",
    "OPEN",
    "CLOSING",
    "CLOSED",
    "DEFAULT_MAX_SIZE",
    "CoreRules",
    "check_limit",
    "check_frame_args",
    "payload_type_error",
    "RULES",
]

# Connection states after the opening handshake (CONNECTING is the handshake's business).
OPEN, CLOSING, CLOSED = 1, 2, 3

# The core's default limit (fastws.defaults holds every default); the core sets no
# fragment limit of its own: Connection and the sans-I/O protocols pass one.
DEFAULT_MAX_SIZE = defaults.MAX_SIZE

_OPCODE_NAMES = {OP_CONT: "continuation", OP_TEXT: "text", OP_BINARY: "binary", OP_CLOSE: "close", OP_PING: "ping", OP_PONG: "pong"}


def check_limit(name: str, value: Any, minimum: int) -> int | None:
    """A size limit option: None (no limit) or an int from ``minimum`` to sys.maxsize."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{name} must be None or an int, not bool")
    try:
        limit = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be None or an int, not {type(value).__name__}") from None
    if not minimum <= limit <= sys.maxsize:
        raise ValueError(f"{name} must be None (no limit) or an int from {minimum} to {sys.maxsize}, not {limit}")
    return limit


def payload_type_error(payload: Any) -> TypeError:
    """What sending anything but a bytes-like payload raises (on both twins)."""
    return TypeError(f"a frame payload must be bytes-like (bytes, bytearray, memoryview), not {type(payload).__name__}")


def payload_size(payload: Any) -> int:
    """Bytes in a frame payload (a memoryview's nbytes, not its item count)."""
    if isinstance(payload, (bytes, bytearray)):
        return len(payload)
    try:
        return memoryview(payload).nbytes
    except TypeError:
        raise payload_type_error(payload) from None


def check_frame_args(opcode: Any, payload: Any, fin: Any) -> None:
    """The arguments of ``send_frame`` (and ``ping``, ``pong``, ``broadcast``).

    The twins call this for anything but an int data opcode (0, 1, 2), so a data
    frame costs no call here; a data frame's payload type is checked where it is
    encoded, with ``payload_type_error``.
    """
    if isinstance(opcode, bool) or not isinstance(opcode, int):
        raise TypeError(f"opcode must be an int, not {type(opcode).__name__}")
    if opcode in (OP_CONT, OP_TEXT, OP_BINARY):
        return
    if opcode == OP_PING or opcode == OP_PONG:
        if not fin:
            raise ValueError(f"a {_OPCODE_NAMES[opcode]} frame cannot be fragmented (fin=False)")
        if payload_size(payload) > MAX_CONTROL_PAYLOAD:
            raise ValueError(f"{_OPCODE_NAMES[opcode]} payload longer than {MAX_CONTROL_PAYLOAD} bytes")
        return
    if opcode == OP_CLOSE:
        raise ValueError("send_frame cannot send a close frame: use close(), which runs the closing handshake")
    raise ValueError(
        f"invalid opcode {opcode}: send_frame sends 0 (continuation), 1 (text), 2 (binary), 9 (ping) or 10 (pong)"
    )


def _discard(data: Any) -> None:
    pass


def _discard_message(core: Any, data: bytes, is_text: bool) -> None:
    pass


class CoreRules:
    """The cold half of ``ProtocolCore``, shared by both twins (see the module docstring).

    Attributes (set by ``_init_rules``): ``client``, ``extension``, ``state``,
    ``close_code``, ``close_reason``, ``close_sent``, ``close_received``,
    ``failure``, ``received_data``, ``writing_paused``, and the private
    ``_requested_code``/``_requested_reason`` (what close() sent, until the peer
    answers), ``_pending_pong`` and the outputs ``_write``, ``_writelines``,
    ``_on_message``.
    """

    # Provided by each twin.
    client: bool
    extension: Any
    state: int
    close_code: int | None
    close_reason: str
    close_sent: bool
    close_received: bool
    failure: ProtocolError | None
    received_data: bool
    writing_paused: bool
    max_size: int | None
    max_fragments: int | None
    _requested_code: int
    _requested_reason: str
    _pending_pong: bytes | None
    _write: Callable[[bytes], Any]
    _writelines: Callable[[Any], Any]
    _on_message: Callable[[Any, bytes, bool], Any]

    def send_frame(self, opcode: int, payload: Any, fin: bool = True) -> None:  # pragma: no cover - each twin's own
        raise NotImplementedError

    def _write_frame(self, opcode: int, payload: bytes) -> None:  # pragma: no cover - each twin's own
        raise NotImplementedError

    def _drop_message(self) -> None:  # pragma: no cover - each twin's own
        raise NotImplementedError

    # -- construction ---------------------------------------------------------

    def _init_rules(self, client: bool, max_size: int | None, max_fragments: int | None, extension: Any) -> None:
        """The state every core starts with; options are checked (``check_limit``) before anything is set."""
        check_limit("max_size", max_size, 0)
        check_limit("max_fragments", max_fragments, 1)
        self.client = bool(client)
        self.max_size = max_size
        self.max_fragments = max_fragments
        self.extension = extension  # permessage-deflate, when negotiated
        self.state = OPEN
        self.close_code = None  # received in a close frame, or sent when we failed
        self.close_reason = ""
        self.close_sent = False
        self._requested_code = CLOSE_NORMAL
        self._requested_reason = ""
        self.close_received = False
        self.failure = None
        # Set on every receive; keepalive clears it and reads it back (any data is liveness).
        self.received_data = False
        # The transport's write buffer is over its high-water mark: pings are not
        # answered at once; only the latest one's payload waits (RFC 6455 5.5.3).
        self.writing_paused = False
        self._pending_pong = None
        self._write = _discard
        self._on_message = _discard_message
        # Header and large payload in one call (one writev on uvloop); the
        # asyncio layer points it at transport.writelines.
        self._writelines = self._write_each

    # -- hooks for subclasses (rare events) -----------------------------------

    def _on_ping(self, payload: bytes) -> None:
        """A ping arrived (the pong is sent, or waits for the write buffer to drain)."""

    def _on_pong(self, payload: bytes) -> None:
        """A pong arrived."""

    def _on_close_frame(self, code: int, reason: str) -> None:
        """A valid close frame arrived (and was answered if we had not closed)."""

    def _close_transport(self) -> None:
        """Time to close the TCP connection (server after the closing handshake, or on failure)."""

    def _on_protocol_error(self, exc: ProtocolError) -> None:
        """The peer broke the protocol; input stops here. Fails the connection unless overridden
        (the asyncio layer lets the application read what came before the error first)."""
        self.fail(exc)

    # -- control frames (the receive loops hand each one here) -------------------

    def _control_frame(self, opcode: int, payload: bytes) -> None:
        """A complete, checked control frame from the peer."""
        if opcode == OP_PING:
            if self.state == OPEN:
                if self.writing_paused:
                    self._pending_pong = payload
                else:
                    self._write_frame(OP_PONG, payload)
            self._on_ping(payload)
        elif opcode == OP_PONG:
            self._on_pong(payload)
        else:
            code, reason = parse_close_payload(payload)
            self.close_received = True
            self.close_code = code
            self.close_reason = reason
            if self.state == OPEN:
                self._send_close(None if code == CLOSE_NO_STATUS else code, b"")
            self._on_close_frame(code, reason)
            if not self.client:
                self._close_transport()

    # -- flow control (the transport calls these) ------------------------------

    def pause_writing(self) -> None:
        """The write buffer is over its high-water mark: pongs wait, the latest one only."""
        self.writing_paused = True

    def resume_writing(self) -> None:
        """The write buffer drained: the pong of the latest unanswered ping goes out."""
        self.writing_paused = False
        payload = self._pending_pong
        if payload is not None:
            self._pending_pong = None
            if self.state == OPEN:
                self._write_frame(OP_PONG, payload)

    # -- output ------------------------------------------------------------------

    def _write_each(self, parts: Any) -> None:
        for part in parts:
            self._write(part)

    def ping(self, payload: bytes | bytearray | memoryview = b"") -> None:
        """Send a ping (at most 125 bytes)."""
        self.send_frame(OP_PING, payload)

    def pong(self, payload: bytes | bytearray | memoryview = b"") -> None:
        """Send an unsolicited pong (at most 125 bytes)."""
        self.send_frame(OP_PONG, payload)

    # -- closing -----------------------------------------------------------------

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Start the closing handshake (nothing to do if it already started)."""
        encoded = check_close_code_to_send(code, reason)
        if self.state == OPEN:
            self._requested_code = code
            self._requested_reason = reason
            self._send_close(code, encoded)

    def _send_close(self, code: int | None, reason: bytes) -> None:
        self._write_frame(OP_CLOSE, build_close_payload(code, reason))
        self.close_sent = True
        self.state = CLOSING

    def fail(self, exc: ProtocolError) -> None:
        """Fail the connection: close frame with the error's code, then close the TCP connection."""
        if self.failure is None:
            self.failure = exc
        if self.state == OPEN:
            self._send_close(exc.code, truncate_reason(str(exc)))
        if self.close_code is None:
            self.close_code = exc.code
            self.close_reason = str(exc)
        self._close_transport()

    def connection_closed(self) -> None:
        """The TCP connection is gone."""
        self.state = CLOSED
        if self.close_code is None:
            self.close_code = CLOSE_ABNORMAL
        self._drop_message()

    def closed_error(self) -> ConnectionClosed:
        """The exception that tells why this connection can no longer be used.

        Before the peer answers our close(), that is the code we sent.
        """
        if self.close_code is None and self.close_sent:
            return connection_closed(self._requested_code, self._requested_reason)
        return connection_closed(self.close_code or CLOSE_ABNORMAL, self.close_reason)


# The rules that both ProtocolCore classes must hold as the very same functions.
RULES = (
    "_init_rules",
    "_on_ping",
    "_on_pong",
    "_on_close_frame",
    "_close_transport",
    "_on_protocol_error",
    "_control_frame",
    "pause_writing",
    "resume_writing",
    "_write_each",
    "ping",
    "pong",
    "close",
    "_send_close",
    "fail",
    "connection_closed",
    "closed_error",
)

# The message counters both ProtocolCore twins keep (C integers in the compiled one),
# in the order sum_counters() adds them up; fastws.metrics reads them.
COUNTERS = (
    "messages_received_text",
    "messages_received_binary",
    "bytes_received_text",
    "bytes_received_binary",
    "messages_sent_text",
    "messages_sent_binary",
    "bytes_sent_text",
    "bytes_sent_binary",
)
