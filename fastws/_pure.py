"""The pure-Python twin of the compiled hot path (``src_c/_speedups.pyx``).

Same names, same behaviour; this is the reference that the differential tests
hold the extension to, and the fallback where no compiler was available.
Nothing here imports asyncio: bytes come in through ``receive_data``, bytes
go out through the ``_write`` callable, messages through ``_on_message``.
"""

from __future__ import annotations

import codecs
import os
import struct
from collections.abc import Callable
from typing import Any

from .exceptions import ConnectionClosed, PayloadTooBig, ProtocolError, connection_closed
from .frames import build_close_payload, check_close_code_to_send, parse_close_payload, truncate_reason

__all__ = ["apply_mask", "Utf8Validator", "ProtocolCore", "encode_frame", "frame_header", "broadcast", "IMPLEMENTATION"]

IMPLEMENTATION = "python"

# Connection states after the opening handshake (CONNECTING is the handshake's business).
OPEN, CLOSING, CLOSED = 1, 2, 3

# Payloads at least this large are written apart from their header instead of
# being copied into one buffer with it.
_WRITE_SEPARATELY = 16384


def compressed_frame_limit(max_size: int) -> int:
    """The largest compressed frame buffered before inflating it.

    Deflate can expand incompressible data a little (stored blocks), so allow
    max_size plus 1/8 plus 1 KiB: well above zlib's worst case, still bounded.
    """
    return max_size + (max_size >> 3) + 1024


def apply_mask(data: bytes | bytearray | memoryview, mask: bytes) -> bytes:
    """XOR ``data`` with the 4-byte ``mask`` repeated (RFC 6455 5.3)."""
    if len(mask) != 4:
        raise ValueError("mask must be 4 bytes long")
    n = len(data)
    if n == 0:
        return b""
    key = int.from_bytes(bytes(mask) * (n // 4 + 1), "little") & ((1 << (8 * n)) - 1)
    return (int.from_bytes(data, "little") ^ key).to_bytes(n, "little")


class Utf8Validator:
    """Incremental UTF-8 validation that fails at the first impossible byte."""

    __slots__ = ("_decoder", "_ok")

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._ok = True

    def validate(self, chunk: bytes | bytearray | memoryview, final: bool = False) -> bool:
        """Feed ``chunk``; False once the text so far cannot be valid UTF-8.

        With ``final`` the text must also end here (no truncated sequence).
        """
        if self._ok:
            try:
                self._decoder.decode(chunk, final)
            except UnicodeDecodeError:
                self._ok = False
            else:
                # CPython keeps a cut surrogate prefix (ED A0..BF) pending instead of
                # failing; no valid text starts so, and the compiled twin fails here.
                pending = self._decoder.getstate()[0]
                if len(pending) >= 2 and pending[0] == 0xED and pending[1] >= 0xA0:
                    self._ok = False
        return self._ok

    def reset(self) -> None:
        self._decoder.reset()
        self._ok = True


class _MaskKeys:
    """Mask keys for client frames from the OS CSPRNG, fetched 4 KiB at a time."""

    __slots__ = ("_pool", "_pos")

    def __init__(self) -> None:
        self._pool = b""
        self._pos = 0

    def next(self) -> bytes:
        if self._pos >= len(self._pool):
            self._pool = os.urandom(4096)
            self._pos = 0
        key = self._pool[self._pos : self._pos + 4]
        self._pos += 4
        return key


_mask_keys = _MaskKeys()


def frame_header(opcode: int, length: int, fin: bool = True, rsv1: bool = False, masked: bool = False) -> bytes:
    """The 2 to 10 header bytes of a frame, without the mask key."""
    if not 0 <= opcode <= 15 or length < 0:
        raise ValueError("opcode must be 0..15 and length not negative")
    if length >> 63:
        raise OverflowError("payload length does not fit in 63 bits")
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    mbit = 0x80 if masked else 0
    if length < 126:
        return bytes((b0, mbit | length))
    if length < 65536:
        return struct.pack("!BBH", b0, mbit | 126, length)
    return struct.pack("!BBQ", b0, mbit | 127, length)


def encode_frame(
    opcode: int, payload: bytes | bytearray | memoryview, fin: bool = True, rsv1: bool = False, mask: bool = False
) -> bytes:
    """One frame, header and payload; masked with a fresh key when ``mask``."""
    header = frame_header(opcode, len(payload), fin, rsv1, mask)
    if mask:
        key = _mask_keys.next()
        return header + key + apply_mask(payload, key)
    return header + payload


class ProtocolCore:
    """RFC 6455 after the opening handshake: framing, assembly, validation, closing.

    Hot outputs are plain callables so that the asyncio layer can point them at
    the transport and the application with no Python frame in between:
    ``_write(data)`` and ``_on_message(core, data, is_text)``. Rare events are
    methods that a subclass overrides: ``_on_ping``, ``_on_pong``,
    ``_on_close_frame`` and ``_close_transport``.
    """

    def __init__(
        self,
        client: bool,
        *,
        max_size: int | None = 2**20,
        max_fragments: int | None = None,
        extension: Any = None,
    ) -> None:
        self.client = client
        self.max_size = max_size
        self.max_fragments = max_fragments
        self.extension = extension  # permessage-deflate, when negotiated
        self.state = OPEN
        self.close_code: int | None = None  # received in a close frame, or sent when we failed
        self.close_reason = ""
        self.close_sent = False
        self._requested_close: tuple[int, str] = (1000, "")  # what close() sent, until the peer answers
        self.close_received = False
        self.failure: ProtocolError | None = None
        # Set on every receive; keepalive clears it and reads it back (any data is liveness).
        self.received_data = False
        # The transport's write buffer is over its high-water mark: pings are not
        # answered at once; only the latest one's payload waits (RFC 6455 5.5.3).
        self.writing_paused = False
        self._pending_pong: bytes | None = None
        self._write: Callable[[bytes], Any] = _discard
        self._on_message: Callable[[Any, bytes, bool], Any] = _discard_message
        # Header and large payload in one call (one writev on uvloop); the
        # asyncio layer points it at transport.writelines.
        self._writelines: Callable[[Any], Any] = self._write_each
        self._buffer = bytearray()
        # The message being assembled (opcode None: no message in progress).
        self._msg_opcode: int | None = None
        self._msg_compressed = False
        self._msg_parts = bytearray()
        self._msg_size = 0
        self._msg_fragments = 0
        self._validator = Utf8Validator()
        # The frame at the head of the buffer whose header was already checked:
        # (fin, opcode, rsv1, header length, payload length, mask key) and how many of
        # its payload bytes are already unmasked (and validated, for text).
        self._frame: tuple[bool, int, bool, int, int, bytes] | None = None
        self._frame_done = 0

    # -- hooks for subclasses (rare events) ----------------------------------

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

    # -- input ------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes from the peer: every complete message is handed out at once."""
        self.received_data = True
        if self.failure is not None or self.close_received or self.state == CLOSED:
            return  # nothing after a close frame or a failure is read
        self._buffer += data
        try:
            self._parse()
        except ProtocolError as exc:
            self.failure = exc  # read nothing more
            self._on_protocol_error(exc)

    def _parse(self) -> None:
        buf = self._buffer
        pos = 0
        end = len(buf)
        try:
            while end - pos >= 2:
                frame = self._frame
                if frame is None:
                    frame = self._parse_header(buf, pos, end)
                    if frame is None:
                        break
                    self._frame = frame
                    self._frame_done = 0
                fin, opcode, rsv1, hlen, length, key = frame
                start = pos + hlen
                avail = min(end - start, length)
                done = self._frame_done
                if avail > done:
                    if key:
                        if done & 3:
                            key = key[done & 3 :] + key[: done & 3]
                        buf[start + done : start + avail] = apply_mask(buf[start + done : start + avail], key)
                    if opcode < 8 and self._msg_opcode == 1 and not self._msg_compressed:
                        if not self._validator.validate(buf[start + done : start + avail]):
                            raise ProtocolError("invalid UTF-8 in a text message", 1007)
                    self._frame_done = avail
                if avail < length:
                    break
                if fin and opcode < 8 and self._msg_opcode == 1 and not self._msg_compressed:
                    if not self._validator.validate(b"", True):
                        raise ProtocolError("text message ends inside a UTF-8 sequence", 1007)
                pos = start + length
                self._frame = None
                payload = bytes(buf[start:pos])
                if opcode >= 8:
                    self._handle_control(opcode, payload)
                else:
                    self._handle_data(fin, payload)
                if self.close_received:
                    pos = end
                    break
        finally:
            del buf[:pos]

    def _parse_header(self, buf: bytearray, pos: int, end: int) -> tuple[bool, int, bool, int, int, bytes] | None:
        """Check the header at ``pos``; None until all of it has arrived."""
        b0 = buf[pos]
        b1 = buf[pos + 1]
        fin = bool(b0 & 0x80)
        rsv1 = bool(b0 & 0x40)
        opcode = b0 & 0x0F
        length = b1 & 0x7F
        hlen = 2
        if length == 126:
            hlen = 4
        elif length == 127:
            hlen = 10
        masked = bool(b1 & 0x80)
        if masked:
            hlen += 4
        if end - pos < hlen:
            return None
        if length == 126:
            length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
        elif length == 127:
            length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
            if length >> 63:
                raise ProtocolError("payload length with the most significant bit set")
        if b0 & 0x30:
            raise ProtocolError("reserved bits RSV2/RSV3 set")
        if masked == self.client:
            raise ProtocolError("masked frame from server" if self.client else "unmasked frame from client")
        if opcode >= 8:
            if opcode > 10:
                raise ProtocolError(f"reserved opcode {opcode}")
            if not fin:
                raise ProtocolError("fragmented control frame")
            if length > 125:
                raise ProtocolError("control frame payload longer than 125 bytes")
            if rsv1:
                raise ProtocolError("RSV1 set on a control frame")
        else:
            if opcode > 2:
                raise ProtocolError(f"reserved opcode {opcode}")
            if opcode == 0:
                if self._msg_opcode is None:
                    raise ProtocolError("continuation frame with no message to continue")
                if rsv1:
                    raise ProtocolError("RSV1 set on a continuation frame")
                self._msg_fragments += 1
                if self.max_fragments is not None and self._msg_fragments > self.max_fragments:
                    raise PayloadTooBig(f"message in more than {self.max_fragments} fragments")
            else:
                if self._msg_opcode is not None:
                    raise ProtocolError("new data frame inside a fragmented message")
                if rsv1 and self.extension is None:
                    raise ProtocolError("RSV1 set with no extension negotiated")
                self._msg_opcode = opcode
                self._msg_compressed = rsv1
                self._msg_size = 0
                self._msg_fragments = 1
            if not self._msg_compressed:
                self._msg_size += length
                if self.max_size is not None and self._msg_size > self.max_size:
                    raise PayloadTooBig(f"message larger than max_size ({self.max_size} bytes)")
            elif self.max_size is not None and length > compressed_frame_limit(self.max_size):
                raise PayloadTooBig(f"compressed frame larger than max_size ({self.max_size} bytes)")
        key = bytes(buf[pos + hlen - 4 : pos + hlen]) if masked else b""
        return fin, opcode, rsv1, hlen, length, key

    def _handle_data(self, fin: bool, payload: bytes) -> None:
        is_text = self._msg_opcode == 1
        if self._msg_compressed:
            payload = self.extension.decode(payload, fin, self._msg_size, self.max_size)
            self._msg_size += len(payload)
            if is_text and not self._validator.validate(payload):
                raise ProtocolError("invalid UTF-8 in a text message", 1007)
            if is_text and fin and not self._validator.validate(b"", True):
                raise ProtocolError("text message ends inside a UTF-8 sequence", 1007)
        if not fin:
            self._msg_parts += payload
            return
        if self._msg_parts:
            self._msg_parts += payload
            payload = bytes(self._msg_parts)
            self._msg_parts = bytearray()
        self._msg_opcode = None
        if is_text:
            self._validator.reset()
        self._on_message(self, payload, is_text)

    def _handle_control(self, opcode: int, payload: bytes) -> None:
        if opcode == 9:
            if self.state == OPEN:
                if self.writing_paused:
                    self._pending_pong = payload
                else:
                    self._write(encode_frame(10, payload, mask=self.client))
            self._on_ping(payload)
        elif opcode == 10:
            self._on_pong(payload)
        else:
            code, reason = parse_close_payload(payload)
            self.close_received = True
            self.close_code = code
            self.close_reason = reason
            if self.state == OPEN:
                self._send_close(None if code == 1005 else code, b"")
            self._on_close_frame(code, reason)
            if not self.client:
                self._close_transport()

    # -- flow control (the transport calls these) ------------------------------------

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
                self._write(encode_frame(10, payload, mask=self.client))

    # -- output -------------------------------------------------------------------

    def send(self, data: str | bytes | bytearray | memoryview, text: bool | None = None) -> None:
        """Send one message: str as text, bytes-like as binary unless ``text`` says otherwise."""
        if isinstance(data, str):
            payload: bytes | bytearray | memoryview = data.encode()
            opcode = 2 if text is False else 1
        else:
            payload = data
            opcode = 1 if text else 2
        self.send_frame(opcode, payload, True)

    def send_frame(self, opcode: int, payload: bytes | bytearray | memoryview, fin: bool = True) -> None:
        """Send one frame as is; the caller keeps the fragmentation rules."""
        if self.state != OPEN:
            raise self.closed_error()
        rsv1 = False
        ext = self.extension
        if ext is not None and opcode < 8:
            payload, rsv1 = ext.encode(opcode, payload, fin)
        if not self.client and len(payload) >= _WRITE_SEPARATELY:
            self._writelines((frame_header(opcode, len(payload), fin, rsv1), payload))
        else:
            self._write(encode_frame(opcode, payload, fin, rsv1, self.client))

    def _write_each(self, parts: Any) -> None:
        for part in parts:
            self._write(part)

    def ping(self, payload: bytes = b"") -> None:
        if len(payload) > 125:
            raise ValueError("ping payload longer than 125 bytes")
        self.send_frame(9, payload)

    def pong(self, payload: bytes = b"") -> None:
        if len(payload) > 125:
            raise ValueError("pong payload longer than 125 bytes")
        self.send_frame(10, payload)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake (nothing to do if it already started)."""
        encoded = check_close_code_to_send(code, reason)
        if self.state == OPEN:
            self._requested_close = (code, reason)
            self._send_close(code, encoded)

    def _send_close(self, code: int | None, reason: bytes) -> None:
        self._write(encode_frame(8, build_close_payload(code, reason), mask=self.client))
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
            self.close_code = 1006

    def closed_error(self) -> ConnectionClosed:
        """The exception that tells why this connection can no longer be used.

        Before the peer answers our close(), that is the code we sent.
        """
        if self.close_code is None and self.close_sent:
            return connection_closed(*self._requested_close)
        return connection_closed(self.close_code or 1006, self.close_reason)


def broadcast(connections: Any, opcode: int, payload: bytes) -> int:
    """Send one message to many connections; returns how many were open.

    The frame is encoded once and the same bytes object is written to every
    plain server connection; client connections (which mask each frame) and
    compressed ones get their own frame.
    """
    frame = None
    sent = 0
    for conn in connections:
        if conn.state != OPEN:
            continue
        if conn.client or conn.extension is not None:
            conn.send_frame(opcode, payload)
        else:
            if frame is None:
                frame = encode_frame(opcode, payload)
            conn._write(frame)
        sent += 1
    return sent


def _discard(data: bytes) -> None:
    pass


def _discard_message(core: Any, data: bytes, is_text: bool) -> None:
    pass
