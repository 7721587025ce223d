# The TLS transport of the compiled module: included by _speedups.pyx after transport.pyx
# (declarations in tls.pxd). TLSTransport is SocketTransport with OpenSSL between the
# socket and the parser: SSL_read() into the per-thread buffer and ProtocolCore._data_in
# on it, SSL_write() from the bytes the writer hands over, both from C.

import ssl as _ssl_module
import sys
import sysconfig

from cpython.object cimport PyObject

# The largest record's plaintext: a read stops filling the buffer when less is left.
DEF MAX_RECORD = 16384
# A connection that reads this often between two sweeps of _ResetSweep (a second)
# is busy: OpenSSL keeps its buffers for it until it goes quiet.
DEF BUSY_READS = 16
# writelines() copies the leading buffers into one record of at most this size
# (a frame header alone would be a record, and a send(), of its own).
DEF FIRST_RECORD = 16384


# The start of CPython's _ssl objects (Modules/_ssl.c), the same on 3.11-3.13:
# PySSLContext is PyObject_HEAD then its SSL_CTX*; PySSLSocket PyObject_HEAD, a
# weak reference, then its SSL*. fastws_tls_check() confirms both on each object.
ctypedef struct _SSLContextHead:
    PyObject ob_base
    void *ctx

ctypedef struct _SSLSocketHead:
    PyObject ob_base
    PyObject *socket
    void *ssl


cdef bint _layout_known = (
    fastws_tls_supported() != 0
    and (3, 11) <= sys.version_info[:2] <= (3, 13)
    and not sysconfig.get_config_var("Py_GIL_DISABLED")
)
# Whether TLS connections can run on TLSTransport in this build and this Python.
TLS_AVAILABLE = _layout_known

cdef object _SSLSocketType = type(_ssl_module.SSLContext(_ssl_module.PROTOCOL_TLS_CLIENT).wrap_bio(
    _ssl_module.MemoryBIO(), _ssl_module.MemoryBIO())._sslobj)


cdef void *_ssl_of(object sslobject):
    """The SSL* of an ssl.SSLObject made by ``wrap_bio``, or NULL when fastws cannot drive it."""
    cdef object inner
    cdef object context
    cdef void *ssl
    if not _layout_known or not isinstance(sslobject, _ssl_module.SSLObject):
        return NULL
    inner = getattr(sslobject, "_sslobj", None)
    context = sslobject.context
    if type(inner) is not _SSLSocketType or not isinstance(context, _ssl_module.SSLContext):
        return NULL
    ssl = (<_SSLSocketHead *><PyObject *>inner).ssl
    if not fastws_tls_check(ssl, <PyObject *>inner, (<_SSLContextHead *><PyObject *>context).ctx):
        return NULL
    return ssl


def tls_attachable(sslobject):
    """Whether TLSTransport can run ``sslobject`` (a fresh ``SSLContext.wrap_bio`` result):
    the extension has OpenSSL, it is the one Python's ssl module uses, and the
    objects are laid out as this CPython's are."""
    return _ssl_of(sslobject) != NULL


cdef object _tls_exception(fastws_tls_error *err):
    """The ssl module's exception for what OpenSSL reported (the loop's SSL transport raises the same kinds)."""
    cdef str library, reason, mnemonic, message
    if err.code == FASTWS_TLS_ERROR_SYSCALL or (err.code == FASTWS_TLS_ERROR_SSL and not err.reason[0]):
        if err.sys_errno:
            return OSError(err.sys_errno, os.strerror(err.sys_errno))
        return _ssl_module.SSLEOFError(8, "EOF occurred in violation of protocol")
    if err.code == FASTWS_TLS_ZERO_RETURN:
        return _ssl_module.SSLZeroReturnError(6, "TLS/SSL connection has been closed (EOF)")
    library = err.library.decode("utf-8", "replace")
    reason = err.reason.decode("utf-8", "replace")
    mnemonic = reason.upper().replace(" ", "_")
    if err.verify_failed:
        message = err.verify_message.decode("utf-8", "replace")
        exc = _ssl_module.SSLCertVerificationError(1, f"[{library}: {mnemonic}] {reason}: {message}")
        exc.verify_code = err.verify_code
        exc.verify_message = message
    else:
        exc = _ssl_module.SSLError(1, f"[{library}: {mnemonic}] {reason}")
    exc.library = library
    exc.reason = mnemonic
    return exc


cdef class TLSTransport(SocketTransport):
    """SocketTransport for a TLS connection: OpenSSL in C between the socket and the protocol.

    The loop's SSL transport runs every record through Python (``SSLObject``
    and ``MemoryBIO`` calls, a copy into and out of the memory BIOs). This one
    takes the ``SSL*`` of an ``SSLObject`` that the user's ``SSLContext`` made
    (``wrap_bio``: certificates, verification, ciphers, ALPN and the SNI
    callback all apply, and ``ssl_object`` in ``get_extra_info`` is that
    object), gives it a BIO that recv()s and send()s on the socket, and runs
    the handshake, SSL_read() and SSL_write() from C.

    It starts with the handshake and calls ``on_handshake(None)`` when it is
    done (or ``on_handshake(exc)`` once, closing itself); the protocol, set
    with ``set_protocol``, reads once ``resume_reading()`` is called.
    ``close()`` sends close_notify after the queued data, ``abort()`` does not.
    """

    def __init__(self, loop, int fd, dict extra, sslobject, context, on_handshake):
        SocketTransport.__init__(self, loop, fd, extra)
        self._ssl = _ssl_of(sslobject)
        if self._ssl == NULL:
            raise RuntimeError("fastws cannot drive this SSL object (see tls_attachable)")
        self._bio = fastws_tls_attach(self._ssl, fd)
        if self._bio == NULL:
            raise MemoryError("no BIO for the TLS transport")
        self._sslobj = sslobject
        self._context = context
        self._on_handshake = on_handshake
        self._handshaking = True
        self._handshake_writer = False
        self._batching = False
        self._keeping = False
        self._notified = False
        self._registered = True  # the handshake reads whatever _reading says
        loop.add_reader(fd, self._read_ready)
        loop.call_soon(self._start)

    def __repr__(self):
        return "<fastws.TLSTransport fd=%d%s>" % (self._fd, " closing" if self._closing else "")

    def _start(self):
        self._handshake_step()  # a client's ClientHello; a server reads first anyway

    cdef _handshake_step(self):
        cdef fastws_tls_error err
        cdef int status
        if not self._handshaking or self._lost:
            return
        status = fastws_tls_handshake(self._ssl, &err)
        if status == FASTWS_TLS_OK:
            self._handshaking = False
            self._drop_handshake_writer()
            sslobject = self._sslobj
            self._extra.update(
                ssl_object=sslobject,
                sslcontext=self._context,
                peercert=sslobject.getpeercert(),
                cipher=sslobject.cipher(),
                compression=sslobject.compression(),
            )
            callback, self._on_handshake = self._on_handshake, None
            try:
                callback(None)
            except Exception as exc:
                self._fatal_error(exc, "Fatal error: the TLS handshake's callback failed.")
                return
            if self._queued and not self._lost:
                self._write_ready()
        elif status == FASTWS_TLS_WANT_READ:
            self._drop_handshake_writer()
        elif status == FASTWS_TLS_WANT_WRITE:
            if not self._handshake_writer:
                self._handshake_writer = True
                self._loop.add_writer(self._fd, self._write_ready)
        else:
            self._handshake_failed(_tls_exception(&err))

    cdef _handshake_failed(self, exc):
        self._drop_handshake_writer()
        callback, self._on_handshake = self._on_handshake, None
        self._force_close(exc)
        if callback is not None:
            callback(exc)

    cdef _drop_handshake_writer(self):
        if self._handshake_writer:
            self._handshake_writer = False
            if not self._queued:
                self._loop.remove_writer(self._fd)

    # -- reading -------------------------------------------------------------

    def resume_reading(self):
        cdef bint was_reading = self._reading
        SocketTransport.resume_reading(self)
        if self._reading and not was_reading and not self._handshaking and fastws_tls_pending(self._ssl):
            self._loop.call_soon(self._read_ready)  # records already read off the socket

    def _read_ready(self):
        """Decrypt what the socket has into the receive buffer, several records per parser call.

        Like SocketTransport's: no read that would only say EAGAIN after a short
        one (the BIO notes it), with OpenSSL's own buffer checked first.
        """
        cdef fastws_tls_error err
        cdef ssize_t n = 0
        cdef Py_ssize_t filled
        cdef Py_ssize_t budget = READS_PER_EVENT
        self._read_events += 1
        if self._handshaking:
            self._handshake_step()
            return
        if not self._reading:
            self._stop_reading()
            return
        if not self._keeping and self._read_events - self._swept_events >= BUSY_READS:
            # Busy: no malloc() and free() of OpenSSL's buffers per record any
            # more; they go when the connection is quiet for a sweep (_went_idle),
            # so an idle connection still holds no buffer.
            self._keeping = fastws_tls_keep_buffers(self._ssl)
        while self._reading:
            filled = 0
            while True:
                n = fastws_tls_read(self._ssl, self._rptr + filled, READ_BUFFER - filled, &err)
                if n <= 0:
                    break
                filled += n
                if READ_BUFFER - filled < MAX_RECORD:
                    break
                if not fastws_tls_pending(self._ssl) and fastws_tls_drained(self._bio):
                    break
            if filled:
                if not self._deliver(filled) or self._lost:
                    return
            if n > 0:
                if READ_BUFFER - filled >= MAX_RECORD:  # drained, as far as we know
                    if not self._suspect:
                        _ResetSweep.watch(self)
                    return
                budget -= 1
                if budget == 0:
                    return  # other connections' turn; the socket stays readable
                continue
            if err.code == FASTWS_TLS_WANT_READ or err.code == FASTWS_TLS_WANT_WRITE:
                return
            if err.code == FASTWS_TLS_ZERO_RETURN or (err.eof and not err.reason[0]):
                self._eof_received()  # close_notify (or an end OpenSSL was told to take as one)
            else:  # an error, or TCP's end without close_notify (mid-record perhaps): as the loop's SSL transport
                self._fatal_error(_tls_exception(&err), "Fatal read error on TLS transport")
            return

    # -- writing -------------------------------------------------------------

    def writelines(self, list_of_data):
        """The buffers as a stream: the leading ones copied into one record, the rest from where they are;
        the records of a call go to the socket together (see ``_begin_batch``)."""
        if self._lost:
            return
        items = list(list_of_data)
        if self._queued or self._handshaking:
            for item in items:
                self.write(item)
            return
        if not self._begin_batch():
            self._writelines(items)
            return
        try:
            self._writelines(items)
        finally:
            self._end_batch()

    cdef _writelines(self, list items):
        cdef char first[FIRST_RECORD]
        cdef Py_buffer view
        cdef Py_ssize_t filled = 0, taken, sent, index = 0, offset = 0, count
        count = len(items)
        # The first record: whole buffers, and the start of the one that does not fit.
        while index < count and filled < FIRST_RECORD:
            PyObject_GetBuffer(items[index], &view, PyBUF_SIMPLE)
            taken = min(view.len, FIRST_RECORD - filled)
            memcpy(first + filled, view.buf, taken)
            filled += taken
            if taken == view.len:
                index += 1
            else:
                offset = taken  # the record is full
            PyBuffer_Release(&view)
        if filled:
            sent = self._send(first, filled)
            if sent < 0:
                return
            if sent < filled:
                self._enqueue(PyBytes_FromStringAndSize(first + sent, filled - sent), 0)
                for i in range(index, count):
                    item = items[i]
                    self._enqueue_from(item, offset if i == index else 0)
                return
        for i in range(index, count):
            item = items[i]
            if self._queued:
                self._enqueue_from(item, offset if i == index else 0)
                continue
            PyObject_GetBuffer(item, &view, PyBUF_SIMPLE)
            try:
                taken = offset if i == index else 0
                sent = self._send(<char *>view.buf + taken, view.len - taken) if view.len > taken else 0
                if sent < 0:
                    return
                if taken + sent < view.len:
                    self._enqueue_from(item, taken + sent)
            finally:
                PyBuffer_Release(&view)

    cdef _enqueue_from(self, item, Py_ssize_t offset):
        """Queue ``item`` from ``offset``: bytes as they are, other buffers copied.

        Only the head of the queue keeps an offset (``_queue_offset``): bytes
        going behind other items are cut (a copy) instead.
        """
        if PyBytes_CheckExact(item) and (offset == 0 or not self._queue):
            if offset < PyBytes_GET_SIZE(item):
                self._enqueue(item, offset)
            return
        data = bytes(memoryview(item).cast("B")[offset:])
        if data:
            self._enqueue(data, 0)

    cdef bint _begin_batch(self):
        """Collect the records of the SSL_write() calls until ``_end_batch`` and send them in one go.

        OpenSSL encrypts one record (16 KiB at most) into its write buffer and
        hands it to the BIO; sent as they come, a MiB was 64 send() calls, each
        a trip through TCP and, on loopback, through the receiver's side too. In
        a batch the BIO copies them into a buffer of the thread (256 KiB) and
        sends it when it is full and at the end; records the socket does not
        take then are held by the BIO and go first when it is writable again.
        False when a batch is already open (or cannot be).
        """
        if self._batching or self._handshaking:
            return False
        if not fastws_tls_batch(self._bio):
            return False
        self._batching = True
        return True

    cdef int _end_batch(self) except -1:
        self._batching = False
        if fastws_tls_batch_end(self._bio) < 0:
            err = fastws_tls_errno(self._bio)
            self._fatal_error(OSError(err, os.strerror(err)), "Fatal write error on TLS transport")
        elif fastws_tls_unsent(self._bio) and not self._queued and not self._lost:
            self._loop.add_writer(self._fd, self._write_ready)  # for the held records
        return 0

    cdef Py_ssize_t _send(self, const char *p, Py_ssize_t n) except -2:
        """SSL_write() what the socket takes now (a batch when it is more than a record)."""
        cdef Py_ssize_t done
        if n <= MAX_RECORD or not self._begin_batch():
            return self._ssl_write(p, n)
        try:
            done = self._ssl_write(p, n)
        finally:
            self._end_batch()
        return -1 if self._lost else done

    cdef Py_ssize_t _ssl_write(self, const char *p, Py_ssize_t n) except -2:
        """SSL_write() what the socket takes now: bytes taken, or -1 after a fatal error.

        SocketTransport.write() calls it, and queues what it does not take. Bytes
        not taken must come back first, the same bytes (they may have moved):
        OpenSSL holds the record it could not finish sending. Nothing is taken
        before the handshake is done.
        """
        cdef fastws_tls_error err
        cdef Py_ssize_t done = 0
        cdef ssize_t r
        if self._handshaking:
            return 0
        while done < n:
            r = fastws_tls_write(self._ssl, p + done, n - done, &err)
            if r > 0:
                done += r
                continue
            if err.code == FASTWS_TLS_WANT_WRITE or err.code == FASTWS_TLS_WANT_READ:
                return done
            self._fatal_error(_tls_exception(&err), "Fatal write error on TLS transport")
            return -1
        return done

    def _write_ready(self):
        """The socket takes more: held records first, then the queue, oldest first, in one batch."""
        cdef ssize_t unsent
        if self._handshaking:
            self._handshake_step()
            return
        unsent = fastws_tls_flush(self._bio)
        if unsent < 0:
            err = fastws_tls_errno(self._bio)
            self._fatal_error(OSError(err, os.strerror(err)), "Fatal write error on TLS transport")
            return
        if unsent:
            return  # still full
        if not self._queued or not self._begin_batch():
            self._write_queue()
        else:
            try:
                self._write_queue()
            finally:
                self._end_batch()
        self._written()

    cdef _write_queue(self):
        cdef Py_ssize_t sent, size
        cdef object item
        cdef char *base
        while self._queued and not self._lost:
            item = self._queue[0]
            if PyBytes_CheckExact(item):
                base = PyBytes_AS_STRING(item)
                size = PyBytes_GET_SIZE(item)
            else:
                base = PyByteArray_AS_STRING(item)
                size = PyByteArray_GET_SIZE(item)
            size -= self._queue_offset
            sent = self._send(base + self._queue_offset, size)
            if sent < 0:
                return  # _fatal_error has closed the transport
            self._queued -= sent
            if sent < size:
                self._queue_offset += sent
                break  # the socket is full: wait for the next writable event
            del self._queue[0]
            self._queue_offset = 0
            if not self._queue:
                self._tail = None

    cdef _written(self):
        """SocketTransport's, but the writer stays (and a close waits) while records are held."""
        if self._lost or not fastws_tls_unsent(self._bio):
            SocketTransport._written(self)
        else:
            self._resume_if_low()

    # -- closing -------------------------------------------------------------

    def close(self):
        """Stop reading; after everything queued (and held), send close_notify and close."""
        if self._handshaking:
            self.abort()
            return
        if self._closing:
            return
        self._closing = True
        self._stop_reading()
        if self._queued == 0 and not fastws_tls_unsent(self._bio):
            self._lose()

    def get_write_buffer_size(self):
        """Bytes queued plus encrypted records the socket has not taken yet."""
        return self._queued + fastws_tls_unsent(self._bio)

    cdef _went_idle(self):
        if self._keeping:
            self._keeping = False
            fastws_tls_release_buffers(self._ssl)

    cdef _force_close(self, exc):
        if not self._lost and fastws_tls_discard(self._bio) and not self._queued:
            self._loop.remove_writer(self._fd)  # it was there for the held records
        SocketTransport._force_close(self, exc)

    cdef _lose(self):
        """Everything sent: close_notify, then SocketTransport's end.

        The alert goes out in a batch, so that when the socket is full (the
        peer still reading the last data) the BIO holds it and the writer sends
        it when the socket takes more, coming back here through ``_written``.
        Sent straight, it would be refused and the descriptor closed without
        it: a peer would see the connection truncated.
        """
        if not self._notified:
            self._notified = True
            if not self._begin_batch():
                fastws_tls_shutdown(self._ssl)
            else:
                try:
                    fastws_tls_shutdown(self._ssl)
                finally:
                    self._end_batch()
                if self._lost or fastws_tls_unsent(self._bio):
                    return  # failed (closed), or the alert waits for the writer
        SocketTransport._lose(self)

    def abort(self):
        """Close now, dropping whatever is queued and the handshake if it is not done."""
        if self._handshaking and not self._lost:
            self._handshake_failed(ConnectionAbortedError("the TLS handshake was aborted"))
            return
        self._force_close(None)

    def _connection_lost(self, exc):
        fastws_tls_detach(self._bio)  # the descriptor closes now; the SSL* lives on in ssl_object
        SocketTransport._connection_lost(self, exc)
