"""The pure-Python twin of the compiled hot path (``src_c/core.pyx``).

Same names, same behaviour; this is the reference that the differential tests
hold the extension to, and the fallback where no compiler was available.
Nothing here imports asyncio: bytes come in through ``receive_data``, bytes
go out through the ``_write`` callable, messages through ``_on_message``.

Only the hot half is written here (and again in Cython): the receive loop,
masking, UTF-8 validation, frame encoding and ``send``/``send_frame``. The
cold rules (options, control frames, closing, argument checks) are
``fastws._rules.CoreRules``, which both twins share.
"""

from __future__ import annotations

import codecs
import operator
import os
import struct
from typing import Any

from ._rules import CLOSED, CLOSING, COUNTERS, DEFAULT_MAX_SIZE, OPEN, CoreRules, check_frame_args, check_limit, payload_size, payload_type_error
from .exceptions import PayloadTooBig, ProtocolError
from .frames import OP_BINARY, OP_CLOSE, OP_CONT, OP_PONG, OP_TEXT

__all__ = [
    "apply_mask",
    "Utf8Validator",
    "ProtocolCore",
    "encode_frame",
    "frame_header",
    "broadcast",
    "sum_counters",
    "IMPLEMENTATION",
    "OPEN",
    "CLOSING",
    "CLOSED",
]

IMPLEMENTATION = "python"

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


class ProtocolCore(CoreRules):
    """RFC 6455 after the opening handshake: framing, assembly, validation, closing.

    Hot outputs are plain callables so that the asyncio layer can point them at
    the transport and the application with no Python frame in between:
    ``_write(data)`` and ``_on_message(core, data, is_text)``. Rare events are
    methods that a subclass overrides: ``_on_ping``, ``_on_pong``,
    ``_on_close_frame``, ``_close_transport`` and ``_on_protocol_error``
    (their defaults, and every other cold rule, are ``CoreRules``).
    """

    def __init__(
        self,
        client: bool,
        *,
        max_size: int | None = DEFAULT_MAX_SIZE,
        max_fragments: int | None = None,
        extension: Any = None,
    ) -> None:
        self._init_rules(client, max_size, max_fragments, extension)
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
        # Message counters (the compiled twin's are C integers, read only): messages
        # delivered / framed by send(), payload bytes before compression.
        self.messages_received_text = 0
        self.messages_received_binary = 0
        self.bytes_received_text = 0
        self.bytes_received_binary = 0
        self.messages_sent_text = 0
        self.messages_sent_binary = 0
        self.bytes_sent_text = 0
        self.bytes_sent_binary = 0
        self._tx_opcode = 0  # the type of the message being sent, for its continuation frames

    @property
    def max_size(self) -> int | None:
        return self._max_size

    @max_size.setter
    def max_size(self, value: int | None) -> None:
        self._max_size = check_limit("max_size", value, 0)

    @property
    def max_fragments(self) -> int | None:
        return self._max_fragments

    @max_fragments.setter
    def max_fragments(self, value: int | None) -> None:
        self._max_fragments = check_limit("max_fragments", value, 1)

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
                    if opcode < OP_CLOSE and self._msg_opcode == OP_TEXT and not self._msg_compressed:
                        if not self._validator.validate(buf[start + done : start + avail]):
                            raise ProtocolError("invalid UTF-8 in a text message", 1007)
                    self._frame_done = avail
                if avail < length:
                    break
                if fin and opcode < OP_CLOSE and self._msg_opcode == OP_TEXT and not self._msg_compressed:
                    if not self._validator.validate(b"", True):
                        raise ProtocolError("text message ends inside a UTF-8 sequence", 1007)
                pos = start + length
                self._frame = None
                payload = bytes(buf[start:pos])
                if opcode >= OP_CLOSE:
                    self._control_frame(opcode, payload)
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
        if opcode >= OP_CLOSE:
            if opcode > OP_PONG:
                raise ProtocolError(f"reserved opcode {opcode}")
            if not fin:
                raise ProtocolError("fragmented control frame")
            if length > 125:
                raise ProtocolError("control frame payload longer than 125 bytes")
            if rsv1:
                raise ProtocolError("RSV1 set on a control frame")
        else:
            if opcode > OP_BINARY:
                raise ProtocolError(f"reserved opcode {opcode}")
            if opcode == OP_CONT:
                if self._msg_opcode is None:
                    raise ProtocolError("continuation frame with no message to continue")
                if rsv1:
                    raise ProtocolError("RSV1 set on a continuation frame")
                self._msg_fragments += 1
                if self._max_fragments is not None and self._msg_fragments > self._max_fragments:
                    raise PayloadTooBig(f"message in more than {self._max_fragments} fragments")
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
                if self._max_size is not None and self._msg_size > self._max_size:
                    raise PayloadTooBig(f"message larger than max_size ({self._max_size} bytes)")
            elif self._max_size is not None and length > compressed_frame_limit(self._max_size):
                raise PayloadTooBig(f"compressed frame larger than max_size ({self._max_size} bytes)")
        key = bytes(buf[pos + hlen - 4 : pos + hlen]) if masked else b""
        return fin, opcode, rsv1, hlen, length, key

    def _handle_data(self, fin: bool, payload: bytes) -> None:
        is_text = self._msg_opcode == OP_TEXT
        if self._msg_compressed:
            payload = self.extension.decode(payload, fin, self._msg_size, self._max_size)
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
            self.messages_received_text += 1
            self.bytes_received_text += len(payload)
        else:
            self.messages_received_binary += 1
            self.bytes_received_binary += len(payload)
        self._on_message(self, payload, is_text)

    def _drop_message(self) -> None:
        """The connection is gone: let go of a partial message."""
        self._buffer = bytearray()
        self._msg_parts = bytearray()

    # -- output (the cold rules, ping/pong/close, are CoreRules') --------------------

    def send(self, data: str | bytes | bytearray | memoryview, text: bool | None = None) -> None:
        """Send one message: str as text, bytes-like as binary unless ``text`` says otherwise."""
        if isinstance(data, str):
            self._send_frame(OP_BINARY if text is False else OP_TEXT, data.encode(), True)
        else:
            self._send_frame(OP_TEXT if text else OP_BINARY, data, True)

    def send_frame(self, opcode: int, payload: bytes | bytearray | memoryview, fin: bool = True) -> None:
        """Send one frame as is; the caller keeps the fragmentation rules."""
        if type(opcode) is not int or not OP_CONT <= opcode <= OP_BINARY:
            check_frame_args(opcode, payload, fin)  # control frames, bad arguments
        self._send_frame(opcode, payload, fin)

    def _send_frame(self, opcode: int, payload: bytes | bytearray | memoryview, fin: bool) -> None:
        if self.state != OPEN:
            raise self.closed_error()
        if not isinstance(payload, (bytes, bytearray)):
            # The buffer's bytes, whatever its item size (len() would count items).
            try:
                payload = memoryview(payload).cast("B")
            except TypeError:
                raise payload_type_error(payload) from None
        if opcode <= OP_BINARY:  # _count_sent, inlined: one method call would be most of its cost
            kind = opcode or self._tx_opcode
            self._tx_opcode = kind
            if kind == OP_TEXT:
                self.bytes_sent_text += len(payload)
                if fin:
                    self.messages_sent_text += 1
            elif kind == OP_BINARY:
                self.bytes_sent_binary += len(payload)
                if fin:
                    self.messages_sent_binary += 1
        rsv1 = False
        ext = self.extension
        if ext is not None and opcode < OP_CLOSE:
            payload, rsv1 = ext.encode(opcode, payload, fin)
        if not self.client and len(payload) >= _WRITE_SEPARATELY:
            self._writelines((frame_header(opcode, len(payload), fin, rsv1), payload))
        else:
            self._write(encode_frame(opcode, payload, fin, rsv1, self.client))

    def _count_sent(self, opcode: int, n: int, fin: bool) -> None:
        """Count a data frame of ``n`` payload bytes (before compression); the message at its last frame."""
        if opcode == OP_CONT:
            opcode = self._tx_opcode
        elif opcode <= OP_BINARY:
            self._tx_opcode = opcode
        else:
            return  # control frames are not messages
        if opcode == OP_TEXT:
            self.bytes_sent_text += n
            if fin:
                self.messages_sent_text += 1
        elif opcode == OP_BINARY:
            self.bytes_sent_binary += n
            if fin:
                self.messages_sent_binary += 1

    def _write_frame(self, opcode: int, payload: bytes) -> None:
        """One control frame, no questions asked (CoreRules checked what needed checking)."""
        self._write(encode_frame(opcode, payload, mask=self.client))


_COUNTERS = operator.attrgetter(*COUNTERS)


def sum_counters(connections: Any) -> tuple[int, tuple[int, ...]]:
    """How many ``connections``, and their message counters added up (in fastws.metrics.CORE_COUNTERS order)."""
    rows = list(map(_COUNTERS, connections))
    if not rows:
        return 0, (0,) * 8
    return len(rows), tuple(map(sum, zip(*rows, strict=True)))


def broadcast(connections: Any, opcode: int, payload: bytes) -> int:
    """Send one message to many connections; returns how many were open.

    The frame is encoded once and the same bytes object is written to every
    plain server connection; client connections (which mask each frame) and
    compressed ones get their own frame.
    """
    if type(opcode) is not int or not OP_CONT <= opcode <= OP_BINARY:
        check_frame_args(opcode, payload, True)
    frame = None
    sent = size = 0
    for conn in connections:
        if conn.state != OPEN:
            continue
        if conn.client or conn.extension is not None:
            conn.send_frame(opcode, payload)
        else:
            if frame is None:
                frame = encode_frame(opcode, payload)
                size = payload_size(payload)
            conn._count_sent(opcode, size, True)
            conn._write(frame)
        sent += 1
    return sent
