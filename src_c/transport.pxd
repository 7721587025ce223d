# Declarations of the asyncio layer (transport.pyx), included by src_c/fastws/_speedups.pxd
# after core.pxd: SocketTransport holds a ProtocolCore and feeds it in C.
from libc.stdint cimport uint8_t

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


cdef class SocketTransport:
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

    cdef _stop_reading(self)
    cdef bint _deliver(self, Py_ssize_t n) except -1
    cdef _eof_received(self)
    cdef Py_ssize_t _send(self, const char *p, Py_ssize_t n) except -2
    cdef Py_ssize_t _sendmsg(self, msghdr *msg) except -2
    cdef Py_ssize_t _sent(self, ssize_t r) except -2
    cdef _enqueue(self, bytes data, Py_ssize_t offset)
    cdef _check_high_water(self)
    cdef _written(self)
    cdef _resume_if_low(self)
    cdef _lose(self)
    cdef _report(self, message, exc)
    cdef _fatal_error(self, exc, message)
    cdef _force_close(self, exc)
    cdef _went_idle(self)
