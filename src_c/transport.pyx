# The asyncio layer of the compiled module: included by _speedups.pyx after core.pyx
# (declarations in transport.pxd). SocketTransport is an asyncio transport of its
# own for open connections on plain sockets: recv() into a page-aligned per-thread
# buffer and ProtocolCore._data_in on it, a C call per read; send() at once.

import os
import threading

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from libc.errno cimport errno, EAGAIN, EINTR
from libc.string cimport memcpy, memset
from libc.stdint cimport uint8_t

cdef extern from "unistd.h" nogil:
    int close(int fd)

cdef extern from "errno.h":
    int EWOULDBLOCK

# Size of the per-thread receive buffer (SocketTransport's, and get_buffer's).
DEF READ_BUFFER = 262144
DEF PAGE = 4096


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
            self._lose()

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
                if not self._deliver(n):
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

    cdef bint _deliver(self, Py_ssize_t n) except -1:
        """Hand the receive buffer's first ``n`` bytes to the protocol; False after a fatal error."""
        try:
            if self._core is not None:
                self._core._data_in(<const uint8_t *>self._rptr, n)
            else:
                self._protocol.data_received(PyBytes_FromStringAndSize(self._rptr, n))
        except Exception as exc:
            self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")
            return False
        return True

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
        self._written()

    cdef _written(self):
        """After a pass over the queue: resume the protocol, drop the writer, finish a close."""
        if self._lost:
            return
        self._resume_if_low()
        if self._queued == 0 and not self._lost:
            self._loop.remove_writer(self._fd)
            if self._closing:
                self._lose()

    cdef _resume_if_low(self):
        if self._writing_paused and self._queued <= self._low:
            self._writing_paused = False
            try:
                self._protocol.resume_writing()
            except Exception as exc:
                self._report("protocol.resume_writing() failed", exc)

    cdef _lose(self):
        """Closing, everything sent: connection_lost next."""
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

    cdef _went_idle(self):
        """Nothing read for a sweep interval (see _ResetSweep); TLSTransport frees OpenSSL's buffers."""

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
            if not transport._suspect and not transport._lost:
                transport._went_idle()
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

