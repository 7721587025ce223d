# Declarations of the sans-I/O protocol core (core.pyx), included by src_c/fastws/_speedups.pxd:
# the C layout of ProtocolCore and its C-level methods, so that the transport
# (transport.pyx) calls the parser (_data_in) without a Python call.
from cpython.object cimport PyObject
from libc.stdint cimport uint8_t

from kernels cimport fastws_utf8_state


# Opcodes and connection states as C constants: the same values as fastws.frames
# (OP_*) and fastws._rules (OPEN, CLOSING, CLOSED), checked when the module is imported.
cdef enum:
    OP_CONT = 0x0
    OP_TEXT = 0x1
    OP_BINARY = 0x2
    OP_CLOSE = 0x8
    OP_PING = 0x9
    OP_PONG = 0xA

cdef enum:
    ST_OPEN = 1
    ST_CLOSING = 2
    ST_CLOSED = 3


cdef class ProtocolCore:
    # -- the state the cold rules (fastws._rules.CoreRules) read and write --
    cdef public bint client
    cdef public object extension
    cdef public int state
    cdef public object close_code
    cdef public object close_reason
    cdef public bint close_sent
    cdef public int _requested_code  # what close() sent, until the peer answers
    cdef public object _requested_reason
    cdef public bint close_received
    cdef public object failure
    cdef public bint received_data  # set on every receive; keepalive reads and clears it
    # The transport's write buffer is over its high-water mark: pings are not
    # answered at once; only the latest one's payload waits (RFC 6455 5.5.3).
    cdef public bint writing_paused
    cdef public object _pending_pong
    cdef public object _write
    cdef public object _on_message
    # Header and large payload in one call (one writev on uvloop); the
    # asyncio layer points it at transport.writelines.
    cdef public object _writelines
    # Message counters, read by the metrics (fastws.metrics) and the access log:
    # messages delivered / framed by send(), payload bytes before compression.
    cdef readonly unsigned long long messages_received_text
    cdef readonly unsigned long long messages_received_binary
    cdef readonly unsigned long long bytes_received_text
    cdef readonly unsigned long long bytes_received_binary
    cdef readonly unsigned long long messages_sent_text
    cdef readonly unsigned long long messages_sent_binary
    cdef readonly unsigned long long bytes_sent_text
    cdef readonly unsigned long long bytes_sent_binary
    cdef int _tx_opcode  # the type of the message being sent, for its continuation frames

    # -- the hot path's own --
    cdef Py_ssize_t _max_size  # -1: no limit
    cdef Py_ssize_t _max_fragments  # -1: no limit
    # The read buffer handed to the event loop by get_buffer (see transport.pyx).
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

    # Input: bytes at p (the transport's recv() buffer or a Python buffer).
    cdef int _data_in(self, const uint8_t *p, Py_ssize_t n) except -1
    cdef int _receive(self, const uint8_t *p, Py_ssize_t n) except -1
    cdef int _parse(self, const uint8_t *p, Py_ssize_t n) except -1
    cdef int _start_frame(self, const uint8_t *h, Py_ssize_t hlen) except -1
    cdef int _reserve(self, Py_ssize_t extra) except -1
    cdef int _payload(self, const uint8_t *p, Py_ssize_t take) except -1
    cdef int _end_data_frame(self) except -1
    cdef int _handle_control(self) except -1
    # Output: send(), send_frame() and broadcast() come here without a Python call.
    cdef int _send_frame(self, int opcode, object payload, bint fin) except -1
    cdef int _send_raw(self, int opcode, const uint8_t *payload, Py_ssize_t n, bint fin) except -1
    cdef void _count_sent(self, int opcode, Py_ssize_t n, bint fin) noexcept
