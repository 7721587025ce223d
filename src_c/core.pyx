# The sans-I/O protocol core of the compiled module: included by _speedups.pyx
# (declarations in core.pxd). The hot half of ProtocolCore is written here, and
# again in fastws/_pure.py: the streaming receive loop, unmasking and UTF-8
# validation into the message being assembled, frame encoding, send(). The
# cold half (options, control frames, closing, argument checks) is
# fastws._rules.CoreRules, compiled from the same source as fastws._rules_c (setup.py),
# whose functions the class body below lists.

import os

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.buffer cimport PyObject_CheckBuffer, PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.long cimport PyLong_CheckExact
from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF, Py_INCREF, Py_XDECREF
from cpython.unicode cimport PyUnicode_AsUTF8String
from libc.string cimport memcpy
from libc.stdint cimport uint8_t, uint64_t

from kernels cimport fastws_mask, fastws_utf8_state, fastws_utf8_init, fastws_utf8_feed, fastws_utf8_complete

from fastws import _rules_c as _rules, frames as _frames
from fastws._rules_c import CoreRules, check_frame_args, check_limit, payload_type_error
from fastws.exceptions import PayloadTooBig, ProtocolError

cdef extern from "Python.h":
    int _PyBytes_Resize(PyObject **bytes, Py_ssize_t newsize) except -1
    bint PyBytes_CheckExact(object o)
    bint PyUnicode_CheckExact(object o)
    bint PyUnicode_IS_ASCII(object o)
    void *PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)

# The C constants of core.pxd are the shared ones.
if (OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG) != (
    _frames.OP_CONT, _frames.OP_TEXT, _frames.OP_BINARY, _frames.OP_CLOSE, _frames.OP_PING, _frames.OP_PONG
) or (ST_OPEN, ST_CLOSING, ST_CLOSED) != (_rules.OPEN, _rules.CLOSING, _rules.CLOSED):
    raise ImportError("src_c/core.pxd disagrees with fastws.frames / fastws._rules on opcodes or states")

OPEN, CLOSING, CLOSED = _rules.OPEN, _rules.CLOSING, _rules.CLOSED

# Payloads at least this large are written apart from their header.
DEF WRITE_SEPARATELY = 16384
# A frame payload below this size gets its whole buffer at once; above, the
# buffer grows as bytes arrive, so a header alone cannot make us allocate much.
DEF PREALLOCATE = 262144


cpdef Py_ssize_t compressed_frame_limit(Py_ssize_t max_size):
    """The largest compressed frame buffered before inflating it.

    Deflate can expand incompressible data a little (stored blocks), so allow
    max_size plus 1/8 plus 1 KiB: well above zlib's worst case, still bounded.
    """
    return max_size + (max_size >> 3) + 1024


def apply_mask(data, mask):
    """XOR ``data`` with the 4-byte ``mask`` repeated (RFC 6455 5.3)."""
    cdef Py_buffer src, key
    cdef Py_ssize_t n
    if PyBytes_CheckExact(data) and PyBytes_CheckExact(mask) and PyBytes_GET_SIZE(mask) == 4:
        # The common case without the buffer protocol: at 125 B acquiring and
        # releasing two buffers costs as much as the masking itself.
        n = PyBytes_GET_SIZE(data)
        out = PyBytes_FromStringAndSize(NULL, n)
        fastws_mask(<uint8_t *>PyBytes_AS_STRING(out), <const uint8_t *>PyBytes_AS_STRING(data), n,
                    <const uint8_t *>PyBytes_AS_STRING(mask))
        return out
    PyObject_GetBuffer(mask, &key, PyBUF_SIMPLE)
    try:
        if key.len != 4:
            raise ValueError("mask must be 4 bytes long")
        PyObject_GetBuffer(data, &src, PyBUF_SIMPLE)
        try:
            out = PyBytes_FromStringAndSize(NULL, src.len)
            fastws_mask(<uint8_t *>PyBytes_AS_STRING(out), <const uint8_t *>src.buf, src.len, <const uint8_t *>key.buf)
            return out
        finally:
            PyBuffer_Release(&src)
    finally:
        PyBuffer_Release(&key)


cdef class Utf8Validator:
    """Incremental UTF-8 validation that fails at the first impossible byte."""

    cdef fastws_utf8_state state

    def __cinit__(self):
        fastws_utf8_init(&self.state)

    def validate(self, chunk, bint final=False):
        """Feed ``chunk``; False once the text so far cannot be valid UTF-8.

        With ``final`` the text must also end here (no truncated sequence).
        """
        cdef Py_buffer view
        if PyBytes_CheckExact(chunk):
            # No buffer protocol for bytes: it is most of the cost of a short chunk.
            if not fastws_utf8_feed(&self.state, <const uint8_t *>PyBytes_AS_STRING(chunk), PyBytes_GET_SIZE(chunk)):
                return False
        else:
            PyObject_GetBuffer(chunk, &view, PyBUF_SIMPLE)
            try:
                if not fastws_utf8_feed(&self.state, <const uint8_t *>view.buf, view.len):
                    return False
            finally:
                PyBuffer_Release(&view)
        if final:
            return bool(fastws_utf8_complete(&self.state))
        return True

    def reset(self):
        fastws_utf8_init(&self.state)


cdef class _MaskKeys:
    """Mask keys for client frames from the OS CSPRNG, fetched 4 KiB at a time."""

    cdef bytes pool
    cdef Py_ssize_t pos

    def __cinit__(self):
        self.pool = b""
        self.pos = 0

    cdef const uint8_t *next(self) except NULL:
        if self.pos + 4 > PyBytes_GET_SIZE(self.pool):
            self.pool = os.urandom(4096)
            self.pos = 0
        cdef const uint8_t *key = <const uint8_t *>PyBytes_AS_STRING(self.pool) + self.pos
        self.pos += 4
        return key


cdef _MaskKeys _mask_keys = _MaskKeys()


cdef inline Py_ssize_t _write_header(uint8_t *out, int opcode, Py_ssize_t length, bint fin, bint rsv1, bint masked):
    """Write a frame header (without mask key) at ``out``; returns its length."""
    out[0] = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    cdef uint8_t mbit = 0x80 if masked else 0
    cdef uint64_t n = <uint64_t>length
    cdef int i
    if length < 126:
        out[1] = mbit | <uint8_t>length
        return 2
    if length < 65536:
        out[1] = mbit | 126
        out[2] = <uint8_t>(n >> 8)
        out[3] = <uint8_t>n
        return 4
    out[1] = mbit | 127
    for i in range(8):
        out[2 + i] = <uint8_t>(n >> (56 - 8 * i))
    return 10


cdef object _encode(int opcode, const uint8_t *payload, Py_ssize_t n, bint fin, bint rsv1, bint mask):
    """One frame as a new bytes object (masked with a fresh key when ``mask``)."""
    cdef uint8_t header[14]
    cdef Py_ssize_t hlen = _write_header(header, opcode, n, fin, rsv1, mask)
    cdef const uint8_t *key
    cdef object frame = PyBytes_FromStringAndSize(NULL, hlen + (4 if mask else 0) + n)
    cdef uint8_t *out = <uint8_t *>PyBytes_AS_STRING(frame)
    memcpy(out, header, hlen)
    if mask:
        key = _mask_keys.next()
        memcpy(out + hlen, key, 4)
        fastws_mask(out + hlen + 4, payload, n, key)
    elif n:
        memcpy(out + hlen, payload, n)
    return frame


def frame_header(int opcode, Py_ssize_t length, bint fin=True, bint rsv1=False, bint masked=False):
    """The 2 to 10 header bytes of a frame, without the mask key."""
    cdef uint8_t header[14]
    if not 0 <= opcode <= 15 or length < 0:
        raise ValueError("opcode must be 0..15 and length not negative")
    cdef Py_ssize_t hlen = _write_header(header, opcode, length, fin, rsv1, masked)
    return PyBytes_FromStringAndSize(<char *>header, hlen)


def encode_frame(int opcode, payload, bint fin=True, bint rsv1=False, bint mask=False):
    """One frame, header and payload; masked with a fresh key when ``mask``."""
    cdef Py_buffer view
    if not 0 <= opcode <= 15:
        raise ValueError("opcode must be 0..15")
    PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
    try:
        return _encode(opcode, <const uint8_t *>view.buf, view.len, fin, rsv1, mask)
    finally:
        PyBuffer_Release(&view)


cdef inline Py_ssize_t _header_length(uint8_t b1):
    cdef Py_ssize_t n = 2
    cdef uint8_t length = b1 & 0x7F
    if length == 126:
        n = 4
    elif length == 127:
        n = 10
    if b1 & 0x80:
        n += 4
    return n


cdef class ProtocolCore:
    """RFC 6455 after the opening handshake: framing, assembly, validation, closing.

    Hot outputs are plain callables so that the asyncio layer can point them at
    the transport and the application with no Python frame in between:
    ``_write(data)`` and ``_on_message(core, data, is_text)``. Rare events are
    methods that a subclass overrides: ``_on_ping``, ``_on_pong``,
    ``_on_close_frame``, ``_close_transport`` and ``_on_protocol_error``.
    Attributes are declared in core.pxd.

    ``get_buffer``/``buffer_updated`` (asyncio.BufferedProtocol) are the asyncio
    layer's, but stay on this class: uvloop and its TLS protocol find them on the
    protocol object, which is the ``Connection`` subclass of this class, so a
    separate class would only add a second base to choose between in
    ``fastws._accel`` for both twins; their read buffer lives in transport.pyx.
    """

    # -- the cold rules: the very functions fastws._pure.ProtocolCore inherits --
    _init_rules = CoreRules._init_rules
    _on_ping = CoreRules._on_ping
    _on_pong = CoreRules._on_pong
    _on_close_frame = CoreRules._on_close_frame
    _close_transport = CoreRules._close_transport
    _on_protocol_error = CoreRules._on_protocol_error
    _control_frame = CoreRules._control_frame
    pause_writing = CoreRules.pause_writing
    resume_writing = CoreRules.resume_writing
    _write_each = CoreRules._write_each
    ping = CoreRules.ping
    pong = CoreRules.pong
    close = CoreRules.close
    _send_close = CoreRules._send_close
    fail = CoreRules.fail
    connection_closed = CoreRules.connection_closed
    closed_error = CoreRules.closed_error

    def __cinit__(self, *args, **kwargs):
        self._msg = NULL

    def __init__(self, client, *, max_size=_rules.DEFAULT_MAX_SIZE, max_fragments=None, extension=None):
        self._init_rules(client, max_size, max_fragments, extension)
        self._hdr_len = 0
        self._in_frame = False
        self._msg_opcode = 0
        self._inflated = None
        self._rbuf = None
        fastws_utf8_init(&self._utf8)

    def __dealloc__(self):
        Py_XDECREF(self._msg)
        self._msg = NULL

    property max_size:
        def __get__(self):
            return None if self._max_size < 0 else self._max_size

        def __set__(self, value):
            value = check_limit("max_size", value, 0)
            self._max_size = -1 if value is None else value

    property max_fragments:
        def __get__(self):
            return None if self._max_fragments < 0 else self._max_fragments

        def __set__(self, value):
            value = check_limit("max_fragments", value, 1)
            self._max_fragments = -1 if value is None else value

    def _drop_message(self):
        """The connection is gone: let go of a partial message."""
        Py_XDECREF(self._msg)
        self._msg = NULL

    # -- input ------------------------------------------------------------------

    def receive_data(self, data):
        """Feed bytes from the peer: every complete message is handed out at once."""
        cdef Py_buffer view
        self.received_data = True
        if self.failure is not None or self.close_received or self.state == ST_CLOSED:
            return
        if PyBytes_CheckExact(data):
            self._receive(<const uint8_t *>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
            return
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            self._receive(<const uint8_t *>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)

    def get_buffer(self, Py_ssize_t sizehint):
        """asyncio.BufferedProtocol: where the event loop should read to."""
        if self._rbuf is None:
            self._rbuf = _read_buffer()
            self._rptr = <char *>_buffer_address(self._rbuf)
        return self._rbuf

    def buffer_updated(self, Py_ssize_t nbytes):
        """asyncio.BufferedProtocol: ``nbytes`` were read into the buffer."""
        self._data_in(<const uint8_t *>self._rptr, nbytes)

    cdef int _data_in(self, const uint8_t *p, Py_ssize_t n) except -1:
        self.received_data = True
        if self.failure is not None or self.close_received or self.state == ST_CLOSED:
            return 0
        return self._receive(p, n)

    cdef int _receive(self, const uint8_t *p, Py_ssize_t n) except -1:
        try:
            self._parse(p, n)
        except ProtocolError as exc:
            self.failure = exc  # read nothing more
            self._on_protocol_error(exc)
        return 0

    cdef int _parse(self, const uint8_t *p, Py_ssize_t n) except -1:
        cdef Py_ssize_t need, take
        while n > 0 or (self._in_frame and self._f_done == self._f_len):
            if not self._in_frame:
                # Collect a header: straight from the input when it is all there.
                if self._hdr_len == 0 and n >= 2:
                    need = _header_length(p[1])
                    if n >= need:
                        self._start_frame(p, need)
                        p += need
                        n -= need
                        continue
                take = 2 - self._hdr_len if self._hdr_len < 2 else _header_length(self._hdr[1]) - self._hdr_len
                if take > n:
                    take = n
                memcpy(self._hdr + self._hdr_len, p, take)
                self._hdr_len += take
                p += take
                n -= take
                if self._hdr_len >= 2 and self._hdr_len == _header_length(self._hdr[1]):
                    self._hdr_len = 0
                    self._start_frame(self._hdr, _header_length(self._hdr[1]))
                continue
            take = self._f_len - self._f_done
            if take > n:
                take = n
            if take:
                self._payload(p, take)
                p += take
                n -= take
            if self._f_done == self._f_len:
                self._in_frame = False
                if self._f_opcode >= OP_CLOSE:
                    self._handle_control()
                else:
                    self._end_data_frame()
                if self.close_received or self.failure is not None or self.state == ST_CLOSED:
                    return 0
        return 0

    cdef int _start_frame(self, const uint8_t *h, Py_ssize_t hlen) except -1:
        """Check a complete header and get ready for its payload."""
        cdef uint8_t b0 = h[0]
        cdef uint8_t b1 = h[1]
        cdef bint fin = (b0 & 0x80) != 0
        cdef bint rsv1 = (b0 & 0x40) != 0
        cdef int opcode = b0 & 0x0F
        cdef bint masked = (b1 & 0x80) != 0
        cdef uint64_t length = b1 & 0x7F
        cdef int i
        if length == 126:
            length = (<uint64_t>h[2] << 8) | h[3]
        elif length == 127:
            length = 0
            for i in range(8):
                length = (length << 8) | h[2 + i]
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
                if self._msg_opcode == 0:
                    raise ProtocolError("continuation frame with no message to continue")
                if rsv1:
                    raise ProtocolError("RSV1 set on a continuation frame")
                self._msg_fragments += 1
                if self._max_fragments >= 0 and self._msg_fragments > self._max_fragments:
                    raise PayloadTooBig(f"message in more than {self._max_fragments} fragments")
            else:
                if self._msg_opcode != 0:
                    raise ProtocolError("new data frame inside a fragmented message")
                if rsv1 and self.extension is None:
                    raise ProtocolError("RSV1 set with no extension negotiated")
                self._msg_opcode = opcode
                self._msg_compressed = rsv1
                self._msg_size = 0
                self._msg_len = 0
                self._msg_fragments = 1
                if opcode == OP_TEXT:
                    fastws_utf8_init(&self._utf8)
                if rsv1:
                    self._inflated = None
            if not self._msg_compressed:
                if self._max_size >= 0 and length > <uint64_t>(self._max_size - self._msg_size):
                    raise PayloadTooBig(f"message larger than max_size ({self._max_size} bytes)")
                self._msg_size += <Py_ssize_t>length
            elif self._max_size >= 0 and length > <uint64_t>compressed_frame_limit(self._max_size):
                raise PayloadTooBig(f"compressed frame larger than max_size ({self._max_size} bytes)")
            self._frame_start = self._msg_len
        if masked:
            memcpy(self._f_key, h + hlen - 4, 4)
        self._in_frame = True
        self._f_fin = fin
        self._f_opcode = opcode
        self._f_len = <Py_ssize_t>length
        self._f_done = 0
        self._f_masked = masked
        return 0

    cdef int _reserve(self, Py_ssize_t extra) except -1:
        """Room in the message buffer for ``extra`` more bytes of this frame."""
        cdef Py_ssize_t needed = self._msg_len + extra
        cdef Py_ssize_t frame_end = self._frame_start + self._f_len
        cdef Py_ssize_t cap
        if self._msg != NULL and needed <= self._msg_cap:
            return 0
        if self._f_len - self._f_done > extra and self._f_len <= PREALLOCATE:
            cap = frame_end  # small frame: all of it at once
        else:
            # Large frame: at most four times what has arrived (a header alone
            # cannot make us allocate much), in few steps, because each step
            # may copy: with connections interleaving, realloc seldom extends
            # a block in place.
            cap = (needed if needed > self._msg_cap else self._msg_cap) * 4
            if cap > frame_end:
                cap = frame_end
        if self._msg == NULL:
            buf = PyBytes_FromStringAndSize(NULL, cap)
            Py_INCREF(buf)  # owned through _msg from here on
            self._msg = <PyObject *>buf
        else:
            _PyBytes_Resize(&self._msg, cap)
        self._msg_cap = cap
        return 0

    cdef int _payload(self, const uint8_t *p, Py_ssize_t take) except -1:
        cdef uint8_t key[4]
        cdef uint8_t *dst
        cdef int shift, i
        if self._f_opcode >= OP_CLOSE:
            dst = self._ctrl + self._f_done
        else:
            self._reserve(take)
            dst = <uint8_t *>PyBytes_AS_STRING(<object>self._msg) + self._msg_len
        if self._f_masked:
            shift = self._f_done & 3
            for i in range(4):
                key[i] = self._f_key[(i + shift) & 3]
            fastws_mask(dst, p, take, key)
        else:
            memcpy(dst, p, take)
        self._f_done += take
        if self._f_opcode < OP_CLOSE:
            self._msg_len += take
            if self._msg_opcode == OP_TEXT and not self._msg_compressed:
                if not fastws_utf8_feed(&self._utf8, dst, take):
                    raise ProtocolError("invalid UTF-8 in a text message", 1007)
        return 0

    cdef int _end_data_frame(self) except -1:
        cdef bint is_text = self._msg_opcode == OP_TEXT
        cdef object chunk
        cdef Py_ssize_t size
        if self._msg_compressed:
            chunk = PyBytes_FromStringAndSize(PyBytes_AS_STRING(<object>self._msg) + self._frame_start, self._msg_len - self._frame_start) if self._msg != NULL else b""
            self._msg_len = self._frame_start
            chunk = self.extension.decode(chunk, self._f_fin, self._msg_size, None if self._max_size < 0 else self._max_size)
            size = len(chunk)
            self._msg_size += size
            if is_text and size and not fastws_utf8_feed(&self._utf8, <const uint8_t *>PyBytes_AS_STRING(chunk), size):
                raise ProtocolError("invalid UTF-8 in a text message", 1007)
            if self._inflated is not None:
                self._inflated += chunk
            elif not self._f_fin:
                self._inflated = bytearray(chunk)
        if not self._f_fin:
            return 0
        if is_text and not fastws_utf8_complete(&self._utf8):
            raise ProtocolError("text message ends inside a UTF-8 sequence", 1007)
        if self._msg_compressed:
            # A one-frame message is the inflated chunk itself; the compressed
            # frame buffer is released so that an idle connection holds none.
            data = chunk if self._inflated is None else bytes(self._inflated)
            self._inflated = None
            Py_XDECREF(self._msg)
            self._msg = NULL
        elif self._msg == NULL:
            data = b""
        else:
            if self._msg_len != self._msg_cap:
                _PyBytes_Resize(&self._msg, self._msg_len)
            data = <object>self._msg
            Py_DECREF(data)  # the reference we held through _msg goes to ``data``
            self._msg = NULL
        self._msg_cap = 0
        self._msg_len = 0
        self._msg_opcode = 0
        if is_text:
            self.messages_received_text += 1
            self.bytes_received_text += PyBytes_GET_SIZE(data)
        else:
            self.messages_received_binary += 1
            self.bytes_received_binary += PyBytes_GET_SIZE(data)
        self._on_message(self, data, is_text)
        return 0

    cdef int _handle_control(self) except -1:
        """A complete control frame: CoreRules._control_frame answers it."""
        self._control_frame(self._f_opcode, PyBytes_FromStringAndSize(<char *>self._ctrl, self._f_len))
        return 0

    # -- output (ping, pong, close: CoreRules) ------------------------------------------

    def send(self, data, text=None):
        """Send one message: str as text, bytes-like as binary unless ``text`` says otherwise."""
        cdef int opcode
        if PyUnicode_CheckExact(data):
            opcode = OP_BINARY if text is False else OP_TEXT
            if PyUnicode_IS_ASCII(data) and self.extension is None and self.state == ST_OPEN:
                # ASCII is its own UTF-8: frame it straight from the str's storage.
                self._send_raw(opcode, <const uint8_t *>PyUnicode_DATA(data), PyUnicode_GET_LENGTH(data), True)
                return
            data = PyUnicode_AsUTF8String(data)
        elif isinstance(data, str):
            opcode = OP_BINARY if text is False else OP_TEXT
            data = data.encode()
        else:
            opcode = OP_TEXT if text else OP_BINARY
        self._send_frame(opcode, data, True)

    def send_frame(self, opcode, payload, fin=True):
        """Send one frame as is; the caller keeps the fragmentation rules."""
        if not (PyLong_CheckExact(opcode) and (opcode == OP_CONT or opcode == OP_TEXT or opcode == OP_BINARY)):
            check_frame_args(opcode, payload, fin)  # control frames, bad arguments
        self._send_frame(opcode, payload, fin)

    cdef int _send_frame(self, int opcode, object payload, bint fin) except -1:
        """send_frame without a Python call: send() and broadcast() come here per message."""
        cdef Py_buffer view
        cdef bint rsv1 = False
        if self.state != ST_OPEN:
            raise self.closed_error()
        if PyBytes_CheckExact(payload):
            self._count_sent(opcode, PyBytes_GET_SIZE(payload), fin)
        elif not PyObject_CheckBuffer(payload):
            raise payload_type_error(payload)
        elif opcode <= OP_BINARY:
            PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
            self._count_sent(opcode, view.len, fin)
            PyBuffer_Release(&view)
        if self.extension is not None and opcode < OP_CLOSE:
            payload, rsv1 = self.extension.encode(opcode, payload, fin)
        if PyBytes_CheckExact(payload):
            if not self.client and PyBytes_GET_SIZE(payload) >= WRITE_SEPARATELY:
                self._writelines((frame_header(opcode, PyBytes_GET_SIZE(payload), fin, rsv1), payload))
                return 0
            self._write(_encode(opcode, <const uint8_t *>PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload), fin, rsv1, self.client))
            return 0
        PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
        try:
            self._write(_encode(opcode, <const uint8_t *>view.buf, view.len, fin, rsv1, self.client))
        finally:
            PyBuffer_Release(&view)
        return 0

    cdef void _count_sent(self, int opcode, Py_ssize_t n, bint fin) noexcept:
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

    cdef int _send_raw(self, int opcode, const uint8_t *payload, Py_ssize_t n, bint fin) except -1:
        self._count_sent(opcode, n, fin)
        self._write(_encode(opcode, payload, n, fin, False, self.client))
        return 0

    def _write_frame(self, int opcode, bytes payload not None):
        """One control frame, no questions asked (CoreRules checked what needed checking)."""
        self._write(_encode(opcode, <const uint8_t *>PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload), True, False, self.client))


cdef Py_ssize_t _payload_size(object payload) except -1:
    cdef Py_buffer view
    cdef Py_ssize_t n
    if PyBytes_CheckExact(payload):
        return PyBytes_GET_SIZE(payload)
    PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
    n = view.len
    PyBuffer_Release(&view)
    return n


def sum_counters(connections):
    """How many ``connections``, and their message counters added up (in fastws.metrics.CORE_COUNTERS order).

    One C loop, so that a metrics snapshot of many connections costs little.
    """
    cdef unsigned long long t0 = 0, t1 = 0, t2 = 0, t3 = 0, t4 = 0, t5 = 0, t6 = 0, t7 = 0
    cdef Py_ssize_t count = 0
    cdef ProtocolCore core
    for conn in connections:
        core = <ProtocolCore?>conn
        count += 1
        t0 += core.messages_received_text
        t1 += core.messages_received_binary
        t2 += core.bytes_received_text
        t3 += core.bytes_received_binary
        t4 += core.messages_sent_text
        t5 += core.messages_sent_binary
        t6 += core.bytes_sent_text
        t7 += core.bytes_sent_binary
    return count, (t0, t1, t2, t3, t4, t5, t6, t7)


def broadcast(connections, opcode, payload):
    """Send one message to many connections; returns how many were open.

    The frame is encoded once and the same bytes object is written to every
    plain server connection; client connections (which mask each frame) and
    compressed ones get their own frame.
    """
    cdef object frame = None
    cdef ProtocolCore core
    cdef Py_ssize_t sent = 0
    cdef Py_ssize_t size = -1
    if not (PyLong_CheckExact(opcode) and (opcode == OP_CONT or opcode == OP_TEXT or opcode == OP_BINARY)):
        check_frame_args(opcode, payload, True)
    for conn in connections:
        core = <ProtocolCore?>conn
        if core.state != ST_OPEN:
            continue
        if core.client or core.extension is not None:
            core._send_frame(opcode, payload, True)
        else:
            if frame is None:
                frame = encode_frame(opcode, payload)
                size = _payload_size(payload)
            core._count_sent(opcode, size, True)
            core._write(frame)
        sent += 1
    return sent
