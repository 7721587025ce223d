# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The compiled hot path of fastws: the twin of ``fastws/_pure.py``.

Same names and behaviour as the pure-Python module; ``fastws._accel`` picks
one. The parser streams: bytes are consumed as they arrive, unmasked straight
into the bytes object that will carry the message to the application, and
validated as UTF-8 on the way, so an invalid text message is refused before
its end arrives and nothing is copied twice.
"""

import os
import threading

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF, Py_INCREF, Py_XDECREF
from cpython.unicode cimport PyUnicode_AsUTF8String
from libc.errno cimport errno, EAGAIN, EINTR
from libc.string cimport memcpy, memset
from libc.stdint cimport uint8_t, uint64_t

from kernels cimport (
    fastws_mask, fastws_utf8_state, fastws_utf8_init, fastws_utf8_feed,
    fastws_utf8_complete, fastws_kernels_isa, fastws_kernels_isa_name,
    fastws_kernels_isa_available, fastws_kernels_select,
)

from fastws.exceptions import PayloadTooBig, ProtocolError, connection_closed
from fastws.frames import build_close_payload, check_close_code_to_send, parse_close_payload, truncate_reason

cdef extern from "sys/socket.h" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len
    struct msghdr:
        iovec *msg_iov
        size_t msg_iovlen
    ssize_t recv(int fd, void *buf, size_t n, int flags)
    ssize_t send(int fd, const void *buf, size_t n, int flags)
    ssize_t sendmsg(int fd, const msghdr *msg, int flags)
    ctypedef unsigned int socklen_t
    int getsockopt(int fd, int level, int name, void *value, socklen_t *size)
    int MSG_NOSIGNAL
    int SOL_SOCKET
    int SO_ERROR

cdef extern from "unistd.h" nogil:
    int close(int fd)

cdef extern from "errno.h":
    int EWOULDBLOCK

cdef extern from "Python.h":
    int _PyBytes_Resize(PyObject **bytes, Py_ssize_t newsize) except -1
    bint PyBytes_CheckExact(object o)
    bint PyUnicode_CheckExact(object o)
    bint PyUnicode_IS_ASCII(object o)
    void *PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)

IMPLEMENTATION = "cython"


# -- kernel family: the best one this CPU runs, or FASTWS_KERNEL_ISA -------------------------

cdef tuple _kernel_isas(bint available_only):
    cdef int level = 0
    names = []
    while fastws_kernels_isa_name(level) != NULL:
        if not available_only or fastws_kernels_isa_available(level):
            names.append(fastws_kernels_isa_name(level).decode())
        level += 1
    return tuple(names)


# Every family the kernels know, and those this build and CPU can run; weakest first.
KERNEL_ISAS = _kernel_isas(False)
KERNEL_ISAS_AVAILABLE = _kernel_isas(True)


def _check_kernel_isa(str requested, tuple available):
    """Validate a FASTWS_KERNEL_ISA value (already stripped; "" means automatic) against
    the families ``available``: ValueError naming the valid values and what this CPU runs."""
    if requested and requested not in available:
        reason = "unknown value" if requested not in KERNEL_ISAS else "this CPU cannot run it"
        raise ValueError(
            f"FASTWS_KERNEL_ISA={requested!r}: {reason}; valid values: {', '.join(KERNEL_ISAS)} "
            f"or empty for automatic; this CPU runs: {', '.join(available)}"
        )


# Read once, here: the kernels call through function pointers set now.
_requested_isa = os.environ.get("FASTWS_KERNEL_ISA", "").strip()
_check_kernel_isa(_requested_isa, KERNEL_ISAS_AVAILABLE)
if fastws_kernels_select(_requested_isa.encode()) != 0:
    raise RuntimeError(f"the kernels refused FASTWS_KERNEL_ISA={_requested_isa!r}")  # checked just above
# The family in use, and whether FASTWS_KERNEL_ISA chose it.
KERNEL_ISA = fastws_kernels_isa().decode()
KERNEL_ISA_FORCED = bool(_requested_isa)

OPEN = 1
CLOSING = 2
CLOSED = 3

# Payloads at least this large are written apart from their header.
DEF WRITE_SEPARATELY = 16384
# A frame payload below this size gets its whole buffer at once; above, the
# buffer grows as bytes arrive, so a header alone cannot make us allocate much.
DEF PREALLOCATE = 262144
# Size of the per-thread receive buffer handed to the event loop.
DEF READ_BUFFER = 262144
DEF PAGE = 4096


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


_local = threading.local()


cdef void *_buffer_address(object buf) except NULL:
    """Start of ``buf``'s memory; it stays put while a memoryview exports it."""
    cdef Py_buffer view
    PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
    PyBuffer_Release(&view)
    return view.buf


cdef memoryview _read_buffer():
    """The receive buffer of this thread: every connection reads into it.

    ``get_buffer`` and ``buffer_updated`` run back to back for one connection
    and the parser consumes everything, so connections of one event loop can
    share it.  It starts on a page boundary: the kernel's copy out of the
    socket (rep movsb) runs several times slower into a destination that is
    misaligned against its source, which a malloc'd block always is.
    """
    cdef bytearray block
    cdef size_t skip
    try:
        return _local.buffer
    except AttributeError:
        block = bytearray(READ_BUFFER + PAGE)
        skip = (PAGE - (<size_t>_buffer_address(block)) % PAGE) % PAGE
        _local.buffer = memoryview(block)[skip:skip + READ_BUFFER]
        return _local.buffer


cdef class ProtocolCore:
    """RFC 6455 after the opening handshake: framing, assembly, validation, closing.

    Hot outputs are plain callables so that the asyncio layer can point them at
    the transport and the application with no Python frame in between:
    ``_write(data)`` and ``_on_message(core, data, is_text)``. Rare events are
    methods that a subclass overrides: ``_on_ping``, ``_on_pong``,
    ``_on_close_frame``, ``_close_transport`` and ``_on_protocol_error``.
    """

    cdef public bint client
    cdef public object extension
    cdef public int state
    cdef public object close_code
    cdef public object close_reason
    cdef public bint close_sent
    cdef int _requested_code  # what close() sent, until the peer answers
    cdef str _requested_reason
    cdef public bint close_received
    cdef public object failure
    cdef public bint received_data  # set on every receive; keepalive reads and clears it
    # The transport's write buffer is over its high-water mark: pings are not
    # answered at once; only the latest one's payload waits (RFC 6455 5.5.3).
    cdef public bint writing_paused
    cdef object _pending_pong
    cdef public object _write
    cdef public object _on_message
    # Header and large payload in one call (one writev on uvloop); the
    # asyncio layer points it at transport.writelines.
    cdef public object _writelines

    cdef Py_ssize_t _max_size  # -1: no limit
    cdef Py_ssize_t _max_fragments  # -1: no limit
    cdef memoryview _rbuf
    cdef char *_rptr

    # A header being collected across chunks.
    cdef uint8_t _hdr[14]
    cdef Py_ssize_t _hdr_len
    # The frame whose payload is arriving.
    cdef bint _in_frame
    cdef bint _f_fin
    cdef int _f_opcode
    cdef Py_ssize_t _f_len
    cdef Py_ssize_t _f_done
    cdef bint _f_masked
    cdef uint8_t _f_key[4]
    cdef uint8_t _ctrl[125]
    # The message being assembled: a bytes object we own and fill in place.
    cdef int _msg_opcode  # 0: none
    cdef bint _msg_compressed
    cdef PyObject *_msg
    cdef Py_ssize_t _msg_len
    cdef Py_ssize_t _msg_cap
    cdef Py_ssize_t _msg_size  # counted against max_size
    cdef Py_ssize_t _msg_fragments
    cdef Py_ssize_t _frame_start  # where a compressed frame's payload starts in _msg
    cdef bytearray _inflated
    cdef fastws_utf8_state _utf8

    def __cinit__(self, *args, **kwargs):
        self._msg = NULL

    def __init__(self, bint client, *, max_size=2**20, max_fragments=None, extension=None):
        self.client = client
        self.max_size = max_size
        self.max_fragments = max_fragments
        self.extension = extension
        self.state = OPEN
        self.close_code = None
        self.close_reason = ""
        self.close_sent = False
        self._requested_code = 1000
        self._requested_reason = ""
        self.close_received = False
        self.failure = None
        self.received_data = False
        self.writing_paused = False
        self._pending_pong = None
        self._write = _discard
        self._on_message = _discard_message
        self._writelines = self._write_each
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
            self._max_size = -1 if value is None else value

    property max_fragments:
        def __get__(self):
            return None if self._max_fragments < 0 else self._max_fragments

        def __set__(self, value):
            self._max_fragments = -1 if value is None else value

    # -- hooks for subclasses (rare events) ----------------------------------

    def _on_ping(self, payload):
        """A ping arrived (the pong is sent, or waits for the write buffer to drain)."""

    def _on_pong(self, payload):
        """A pong arrived."""

    def _on_close_frame(self, code, reason):
        """A valid close frame arrived (and was answered if we had not closed)."""

    def _close_transport(self):
        """Time to close the TCP connection (server after the closing handshake, or on failure)."""

    def _on_protocol_error(self, exc):
        """The peer broke the protocol; input stops here. Fails the connection unless overridden
        (the asyncio layer lets the application read what came before the error first)."""
        self.fail(exc)

    # -- input ------------------------------------------------------------------

    def receive_data(self, data):
        """Feed bytes from the peer: every complete message is handed out at once."""
        cdef Py_buffer view
        self.received_data = True
        if self.failure is not None or self.close_received or self.state == CLOSED:
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
        if self.failure is not None or self.close_received or self.state == CLOSED:
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
                if self._f_opcode >= 8:
                    self._handle_control()
                else:
                    self._end_data_frame()
                if self.close_received or self.failure is not None or self.state == CLOSED:
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
                if opcode == 1:
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
        if self._f_opcode >= 8:
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
        if self._f_opcode < 8:
            self._msg_len += take
            if self._msg_opcode == 1 and not self._msg_compressed:
                if not fastws_utf8_feed(&self._utf8, dst, take):
                    raise ProtocolError("invalid UTF-8 in a text message", 1007)
        return 0

    cdef int _end_data_frame(self) except -1:
        cdef bint is_text = self._msg_opcode == 1
        cdef object chunk
        cdef Py_ssize_t size
        if self._msg_compressed:
            chunk = PyBytes_FromStringAndSize(PyBytes_AS_STRING(<object>self._msg) + self._frame_start, self._msg_len - self._frame_start) if self._msg != NULL else b""
            self._msg_len = self._frame_start
            chunk = self.extension.decode(chunk, self._f_fin, self._msg_size, self.max_size)
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
        self._on_message(self, data, is_text)
        return 0

    cdef int _handle_control(self) except -1:
        payload = PyBytes_FromStringAndSize(<char *>self._ctrl, self._f_len)
        if self._f_opcode == 9:
            if self.state == OPEN:
                if self.writing_paused:
                    self._pending_pong = payload
                else:
                    self._write(_encode(10, self._ctrl, self._f_len, True, False, self.client))
            self._on_ping(payload)
        elif self._f_opcode == 10:
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
        return 0

    # -- flow control (the transport calls these) ------------------------------------

    def pause_writing(self):
        """The write buffer is over its high-water mark: pongs wait, the latest one only."""
        self.writing_paused = True

    def resume_writing(self):
        """The write buffer drained: the pong of the latest unanswered ping goes out."""
        self.writing_paused = False
        payload = self._pending_pong
        if payload is not None:
            self._pending_pong = None
            if self.state == OPEN:
                self._write(_encode(10, <const uint8_t *>PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload), True, False, self.client))

    # -- output -------------------------------------------------------------------

    def send(self, data, text=None):
        """Send one message: str as text, bytes-like as binary unless ``text`` says otherwise."""
        cdef int opcode
        if PyUnicode_CheckExact(data):
            opcode = 2 if text is False else 1
            if PyUnicode_IS_ASCII(data) and self.extension is None and self.state == OPEN:
                # ASCII is its own UTF-8: frame it straight from the str's storage.
                self._send_raw(opcode, <const uint8_t *>PyUnicode_DATA(data), PyUnicode_GET_LENGTH(data), True)
                return
            data = PyUnicode_AsUTF8String(data)
        elif isinstance(data, str):
            opcode = 2 if text is False else 1
            data = data.encode()
        else:
            opcode = 1 if text else 2
        self._send_frame(opcode, data, True)

    def send_frame(self, int opcode, payload, bint fin=True):
        """Send one frame as is; the caller keeps the fragmentation rules."""
        self._send_frame(opcode, payload, fin)

    cdef int _send_frame(self, int opcode, object payload, bint fin) except -1:
        """send_frame without a Python call: send() and broadcast() come here per message."""
        cdef Py_buffer view
        cdef bint rsv1 = False
        if self.state != OPEN:
            raise self.closed_error()
        if self.extension is not None and opcode < 8:
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

    def _write_each(self, parts):
        for part in parts:
            self._write(part)

    cdef int _send_raw(self, int opcode, const uint8_t *payload, Py_ssize_t n, bint fin) except -1:
        self._write(_encode(opcode, payload, n, fin, False, self.client))
        return 0

    def ping(self, payload=b""):
        if len(payload) > 125:
            raise ValueError("ping payload longer than 125 bytes")
        self.send_frame(9, payload)

    def pong(self, payload=b""):
        if len(payload) > 125:
            raise ValueError("pong payload longer than 125 bytes")
        self.send_frame(10, payload)

    def close(self, int code=1000, str reason=""):
        """Start the closing handshake (nothing to do if it already started)."""
        encoded = check_close_code_to_send(code, reason)
        if self.state == OPEN:
            self._requested_code = code
            self._requested_reason = reason
            self._send_close(code, encoded)

    def _send_close(self, code, bytes reason):
        payload = build_close_payload(code, reason)
        self._write(_encode(8, <const uint8_t *>PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload), True, False, self.client))
        self.close_sent = True
        self.state = CLOSING

    def fail(self, exc):
        """Fail the connection: close frame with the error's code, then close the TCP connection."""
        if self.failure is None:
            self.failure = exc
        if self.state == OPEN:
            self._send_close(exc.code, truncate_reason(str(exc)))
        if self.close_code is None:
            self.close_code = exc.code
            self.close_reason = str(exc)
        self._close_transport()

    def connection_closed(self):
        """The TCP connection is gone."""
        self.state = CLOSED
        if self.close_code is None:
            self.close_code = 1006
        Py_XDECREF(self._msg)
        self._msg = NULL

    def closed_error(self):
        """The exception that tells why this connection can no longer be used.

        Before the peer answers our close(), that is the code we sent.
        """
        if self.close_code is None and self.close_sent:
            return connection_closed(self._requested_code, self._requested_reason)
        return connection_closed(self.close_code or 1006, self.close_reason)


def broadcast(connections, int opcode, payload):
    """Send one message to many connections; returns how many were open.

    The frame is encoded once and the same bytes object is written to every
    plain server connection; client connections (which mask each frame) and
    compressed ones get their own frame.
    """
    cdef object frame = None
    cdef ProtocolCore core
    cdef Py_ssize_t sent = 0
    for conn in connections:
        core = <ProtocolCore?>conn
        if core.state != OPEN:
            continue
        if core.client or core.extension is not None:
            core._send_frame(opcode, payload, True)
        else:
            if frame is None:
                frame = encode_frame(opcode, payload)
            core._write(frame)
        sent += 1
    return sent


# -- the socket transport -------------------------------------------------

# At most this many buffers go to one sendmsg().
DEF MAX_IOV = 64
# Full buffers read per readiness event before the other connections get a turn.
DEF READS_PER_EVENT = 16
# asyncio's default write buffer limits.
DEF DEFAULT_HIGH = 65536
# Queued writes smaller than this are copied into one buffer at the queue's end
# instead of each keeping its own object: a flood of tiny frames (pongs, small
# echoes) then holds what its bytes weigh, not an object and a list slot each.
DEF COALESCE_BELOW = 1024
# That buffer stops growing here and the next small write starts another.
DEF COALESCE_UP_TO = 65536


cdef class SocketTransport:
    """An asyncio stream transport for an open WebSocket on a plain socket.

    The event loops' own stream transports reach a buffered protocol through
    two Python calls per read (``get_buffer``, ``buffer_updated``), use
    read()/write() (the VFS path: a file-position lock and more layers per
    call than recv()/send()), and, on uvloop, queue every write before trying
    it. This one waits for readiness with ``loop.add_reader``, recv()s into
    the per-thread buffer and hands the bytes to the compiled parser without
    leaving C, and send()s at once whatever nothing is queued ahead of.

    It takes over a connection after the opening handshake: it owns the file
    descriptor it is given (and closes it). It implements the part of
    ``asyncio.Transport`` that fastws and its users need: write, writelines,
    close, abort, is_closing, pause/resume_reading, is_reading, write buffer
    limits and size, get_extra_info, set/get_protocol.
    """
    cdef object _loop
    cdef int _fd
    cdef object _protocol
    cdef ProtocolCore _core  # the protocol when it is a ProtocolCore: bytes go to it in C
    cdef dict _extra
    cdef list _queue  # what is not sent yet: bytes (and bytearray) objects, the first from _queue_offset
    cdef bytearray _tail  # the queue's last item while it collects small writes, else None
    cdef Py_ssize_t _queue_offset
    cdef Py_ssize_t _queued
    cdef Py_ssize_t _high
    cdef Py_ssize_t _low
    cdef bint _reading  # wanted: pause_reading() clears it at once
    cdef bint _registered  # the loop's reader is installed (removed lazily, see pause_reading)
    cdef bint _closing
    cdef bint _lost  # connection_lost is scheduled or done
    cdef bint _writing_paused
    cdef unsigned long _read_events  # readiness events so far (see _ResetSweep)
    cdef unsigned long _swept_events  # _read_events at the last sweep
    cdef bint _suspect  # watched by _ResetSweep
    cdef memoryview _rbuf
    cdef char *_rptr

    def __cinit__(self):
        self._fd = -1

    def __init__(self, loop, int fd, dict extra=None):
        self._loop = loop
        self._fd = fd
        self._protocol = None
        self._core = None
        self._extra = extra if extra is not None else {}
        self._queue = []
        self._tail = None
        self._queue_offset = 0
        self._queued = 0
        self._high = DEFAULT_HIGH
        self._low = DEFAULT_HIGH // 4
        self._reading = False
        self._registered = False
        self._closing = False
        self._lost = False
        self._writing_paused = False
        self._read_events = 0
        self._swept_events = 0
        self._suspect = False
        self._rbuf = _read_buffer()
        self._rptr = <char *>_buffer_address(self._rbuf)

    def __dealloc__(self):
        if self._fd >= 0:
            close(self._fd)

    def __repr__(self):
        return "<fastws.SocketTransport fd=%d%s>" % (self._fd, " closing" if self._closing else "")

    # -- asyncio.BaseTransport ---------------------------------------------

    def get_extra_info(self, name, default=None):
        return self._extra.get(name, default)

    def is_closing(self):
        return self._closing

    def set_protocol(self, protocol):
        self._protocol = protocol
        self._core = protocol if isinstance(protocol, ProtocolCore) else None

    def get_protocol(self):
        return self._protocol

    def close(self):
        """Stop reading; close once everything queued is sent."""
        if self._closing:
            return
        self._closing = True
        self._stop_reading()
        if self._queued == 0:
            self._lost = True
            self._loop.call_soon(self._connection_lost, None)

    def abort(self):
        """Close now, dropping whatever is queued."""
        self._force_close(None)

    # -- reading -------------------------------------------------------------

    def is_reading(self):
        return self._reading

    def pause_reading(self):
        """Stop reading now; the loop's reader goes at the next readiness event.

        Flow control pauses and resumes often (each time the write buffer
        crosses its marks); a pause that ends before the peer sends again costs
        no epoll_ctl() at all.
        """
        if not self._closing:
            self._reading = False

    def resume_reading(self):
        if self._closing or self._reading:
            return
        self._reading = True
        if not self._registered:
            self._registered = True
            self._loop.add_reader(self._fd, self._read_ready)

    cdef _stop_reading(self):
        self._reading = False
        if self._registered:
            self._registered = False
            self._loop.remove_reader(self._fd)

    def _read_ready(self):
        """Read what the socket has: until a short read, EOF, an error or the budget.

        A short read ends the call without a recv() that would only say EAGAIN
        (a syscall per event, 15-20% of small-message CPU). Its risk is a reset
        that arrived with the data: uvloop reports a socket error by running
        the reader once more and then dropping the descriptor, so an error
        behind the data would never be read. Such a transport is a suspect
        until its next readiness event; ``_ResetSweep`` reads the ones that
        stay silent for a sweep interval.
        """
        cdef ssize_t n
        cdef int err
        cdef Py_ssize_t budget = READS_PER_EVENT
        self._read_events += 1
        if not self._reading:
            self._stop_reading()  # paused since the last event: now the reader goes
            return
        while self._reading:
            n = recv(self._fd, self._rptr, READ_BUFFER, 0)
            if n > 0:
                try:
                    if self._core is not None:
                        self._core._data_in(<const uint8_t *>self._rptr, n)
                    else:
                        self._protocol.data_received(PyBytes_FromStringAndSize(self._rptr, n))
                except Exception as exc:
                    self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")
                    return
                budget -= 1
                if n < READ_BUFFER:
                    if not self._suspect:
                        _ResetSweep.watch(self)
                    return  # drained, as far as we know
                if budget == 0:
                    # Other connections' turn; a pending error must not wait for
                    # a readiness event that uvloop may not deliver again.
                    err = _socket_error(self._fd)
                    if err:
                        self._fatal_error(OSError(err, os.strerror(err)), "Fatal read error on socket transport")
                    return
            elif n == 0:
                self._eof_received()
                return
            else:
                err = errno
                if err == EINTR:
                    continue
                if err != EAGAIN and err != EWOULDBLOCK:
                    self._fatal_error(OSError(err, os.strerror(err)), "Fatal read error on socket transport")
                return

    cdef _eof_received(self):
        self._stop_reading()
        try:
            keep_open = self._protocol.eof_received()
        except Exception as exc:
            self._fatal_error(exc, "Fatal error: protocol.eof_received() call failed.")
            return
        if not keep_open:  # no half-closed streams here: nothing could write EOF later
            self.close()

    # -- writing -------------------------------------------------------------

    def get_write_buffer_size(self):
        return self._queued

    def get_write_buffer_limits(self):
        return (self._low, self._high)

    def set_write_buffer_limits(self, high=None, low=None):
        if high is None:
            high = DEFAULT_HIGH if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError("high (%r) must be >= low (%r) must be >= 0" % (high, low))
        self._high = high
        self._low = low
        self._check_high_water()

    def write(self, data):
        """Send ``data`` now if nothing is queued; queue what the socket does not take."""
        cdef Py_buffer view
        cdef Py_ssize_t sent
        if self._lost:
            return
        if PyBytes_CheckExact(data):
            if self._queued:
                self._enqueue(data, 0)
            elif PyBytes_GET_SIZE(data):
                sent = self._send(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
                if 0 <= sent < PyBytes_GET_SIZE(data):
                    self._enqueue(data, sent)
            return
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            sent = self._send(<char *>view.buf, view.len) if self._queued == 0 and view.len else 0
            if 0 <= sent < view.len:  # the caller may reuse its buffer: keep a copy
                self._enqueue(PyBytes_FromStringAndSize(<char *>view.buf + sent, view.len - sent), 0)
        finally:
            PyBuffer_Release(&view)

    def writelines(self, list_of_data):
        """Send several buffers in one sendmsg() (a frame header and its payload)."""
        cdef Py_buffer views[MAX_IOV]
        cdef iovec iov[MAX_IOV]
        cdef msghdr msg
        cdef Py_ssize_t count = 0, i, sent, total = 0, size
        if self._lost:
            return
        items = list_of_data if isinstance(list_of_data, (list, tuple)) else list(list_of_data)
        if self._queued or len(items) > MAX_IOV:
            for item in items:
                self.write(item)
            return
        try:
            for item in items:
                PyObject_GetBuffer(item, &views[count], PyBUF_SIMPLE)
                iov[count].iov_base = views[count].buf
                iov[count].iov_len = views[count].len
                total += views[count].len
                count += 1
            if total == 0:
                return
            memset(&msg, 0, sizeof(msg))
            msg.msg_iov = iov
            msg.msg_iovlen = count
            sent = self._sendmsg(&msg)
            if sent < 0 or sent == total:
                return
            for i in range(count):  # queue the rest, copying what is not bytes
                size = views[i].len
                if sent >= size:
                    sent -= size
                    continue
                if PyBytes_CheckExact(items[i]):
                    self._enqueue(items[i], sent)
                else:
                    self._enqueue(PyBytes_FromStringAndSize(<char *>views[i].buf + sent, size - sent), 0)
                sent = 0
        finally:
            for i in range(count):
                PyBuffer_Release(&views[i])

    cdef Py_ssize_t _send(self, const char *p, Py_ssize_t n) except -2:
        """send() what the socket takes now (see ``_sent``)."""
        cdef ssize_t r
        while True:
            r = send(self._fd, p, n, MSG_NOSIGNAL)
            if r >= 0 or errno != EINTR:
                return self._sent(r)

    cdef Py_ssize_t _sendmsg(self, msghdr *msg) except -2:
        """sendmsg() what the socket takes now (see ``_sent``)."""
        cdef ssize_t r
        while True:
            r = sendmsg(self._fd, msg, MSG_NOSIGNAL)
            if r >= 0 or errno != EINTR:
                return self._sent(r)

    cdef Py_ssize_t _sent(self, ssize_t r) except -2:
        """A send's result as bytes sent: 0 when the socket is full, -1 after a fatal error."""
        cdef int err
        if r >= 0:
            return r
        err = errno
        if err == EAGAIN or err == EWOULDBLOCK:
            return 0
        self._fatal_error(OSError(err, os.strerror(err)), "Fatal write error on socket transport")
        return -1

    cdef _enqueue(self, bytes data, Py_ssize_t offset):
        """Queue ``data`` from ``offset`` (only the first item of an empty queue has one)."""
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data) - offset
        cdef Py_ssize_t size
        if not self._queued:
            self._queue_offset = 0
            self._loop.add_writer(self._fd, self._write_ready)
        if n < COALESCE_BELOW:
            if self._tail is None or PyByteArray_GET_SIZE(self._tail) >= COALESCE_UP_TO:
                self._tail = bytearray()
                self._queue.append(self._tail)
            size = PyByteArray_GET_SIZE(self._tail)
            PyByteArray_Resize(self._tail, size + n)
            memcpy(PyByteArray_AS_STRING(self._tail) + size, PyBytes_AS_STRING(data) + offset, n)
        else:
            if not self._queue:
                self._queue_offset = offset
            self._queue.append(data)
            self._tail = None
        self._queued += n
        self._check_high_water()

    cdef _check_high_water(self):
        if self._queued > self._high and not self._writing_paused and not self._lost:
            self._writing_paused = True
            try:
                self._protocol.pause_writing()
            except Exception as exc:
                self._report("protocol.pause_writing() failed", exc)

    def _write_ready(self):
        """The socket takes more: send the queue, oldest first, in sendmsg() batches."""
        cdef iovec iov[MAX_IOV]
        cdef msghdr msg
        cdef Py_ssize_t count, i, sent, batch
        cdef object item
        while self._queued and not self._lost:
            count = min(len(self._queue), MAX_IOV)
            batch = 0
            for i in range(count):
                item = self._queue[i]
                if PyBytes_CheckExact(item):
                    iov[i].iov_base = PyBytes_AS_STRING(item)
                    iov[i].iov_len = PyBytes_GET_SIZE(item)
                else:
                    iov[i].iov_base = PyByteArray_AS_STRING(item)
                    iov[i].iov_len = PyByteArray_GET_SIZE(item)
                batch += iov[i].iov_len
            iov[0].iov_base = <char *>iov[0].iov_base + self._queue_offset
            iov[0].iov_len -= self._queue_offset
            batch -= self._queue_offset
            memset(&msg, 0, sizeof(msg))
            msg.msg_iov = iov
            msg.msg_iovlen = count
            sent = self._sendmsg(&msg)
            if sent < 0:
                return  # _fatal_error has closed the transport
            self._queued -= sent
            i = 0
            while i < count and sent >= <Py_ssize_t>iov[i].iov_len:
                sent -= iov[i].iov_len
                i += 1
            if i:
                del self._queue[:i]
                self._queue_offset = sent
                if not self._queue:
                    self._tail = None
            else:
                self._queue_offset += sent
            if self._queued and sent < batch:
                break  # the socket is full: wait for the next writable event
        if self._lost:
            return
        if self._writing_paused and self._queued <= self._low:
            self._writing_paused = False
            try:
                self._protocol.resume_writing()
            except Exception as exc:
                self._report("protocol.resume_writing() failed", exc)
        if self._queued == 0 and not self._lost:
            self._loop.remove_writer(self._fd)
            if self._closing:
                self._lost = True
                self._loop.call_soon(self._connection_lost, None)

    # -- closing -------------------------------------------------------------

    cdef _report(self, message, exc):
        self._loop.call_exception_handler({
            "message": message, "exception": exc, "transport": self, "protocol": self._protocol,
        })

    cdef _fatal_error(self, exc, message):
        if not isinstance(exc, OSError):  # a peer that resets or vanishes is no news
            self._report(message, exc)
        self._force_close(exc)

    cdef _force_close(self, exc):
        if self._lost:
            return
        if self._queued:
            self._queue.clear()
            self._tail = None
            self._queued = 0
            self._loop.remove_writer(self._fd)
        self._closing = True
        self._stop_reading()
        self._lost = True
        self._loop.call_soon(self._connection_lost, exc)

    def _connection_lost(self, exc):
        if self._suspect:
            _ResetSweep.forget(self)
        try:
            if self._protocol is not None:
                self._protocol.connection_lost(exc)
        finally:
            if self._fd >= 0:
                close(self._fd)
                self._fd = -1
            self._protocol = None
            self._core = None


# Seconds a suspect transport (see SocketTransport._read_ready) may stay silent
# before it is read once more.
cdef double RESET_SWEEP_INTERVAL = 1.0


cdef class _ResetSweep:
    """Reads, once, the transports whose last read was short and that then went silent.

    One per event loop with suspects. Per event a transport only counts its
    readiness events; once a sweep interval it is checked here: still active,
    it stays watched; silent, it is read once more (EAGAIN, data, or the error
    that a reset left behind its last data) and forgotten.
    """
    cdef object loop
    cdef set suspects
    cdef object handle

    @staticmethod
    cdef watch(SocketTransport transport):
        cdef _ResetSweep sweep = _reset_sweeps.get(transport._loop)
        if sweep is None:
            sweep = _ResetSweep.__new__(_ResetSweep)
            sweep.loop = transport._loop
            sweep.suspects = set()
            sweep.handle = sweep.loop.call_later(RESET_SWEEP_INTERVAL, sweep.run)
            _reset_sweeps[sweep.loop] = sweep
        sweep.suspects.add(transport)
        transport._suspect = True
        transport._swept_events = transport._read_events

    @staticmethod
    cdef forget(SocketTransport transport):
        cdef _ResetSweep sweep = _reset_sweeps.get(transport._loop)
        transport._suspect = False
        if sweep is not None:
            sweep.suspects.discard(transport)
            if not sweep.suspects:
                sweep.handle.cancel()
                del _reset_sweeps[sweep.loop]

    def run(self):
        cdef SocketTransport transport
        for transport in list(self.suspects):
            if transport._read_events != transport._swept_events and transport._reading:
                transport._swept_events = transport._read_events  # active: watch on
                continue
            self.suspects.discard(transport)
            transport._suspect = False
            if transport._reading and not transport._lost:
                transport._read_ready()
        if self.suspects:
            self.handle = self.loop.call_later(RESET_SWEEP_INTERVAL, self.run)
        else:
            del _reset_sweeps[self.loop]


cdef dict _reset_sweeps = {}  # event loop -> its _ResetSweep, while it has suspects


cdef int _socket_error(int fd):
    """The socket's pending error (SO_ERROR, which reading it clears), or 0."""
    cdef int err = 0
    cdef socklen_t size = sizeof(err)
    if getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &size) != 0:
        return errno
    return err


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


def _discard(data):
    pass


def _discard_message(core, data, is_text):
    pass
