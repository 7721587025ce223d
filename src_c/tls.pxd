# Declarations of the TLS transport (tls.pyx), included by src_c/fastws/_speedups.pxd after
# transport.pxd: a SocketTransport whose bytes go through OpenSSL (fastws_tls.h) in C.

cdef extern from "fastws_tls.h":
    ctypedef struct fastws_tls_error:
        int code
        int sys_errno
        int eof
        int verify_failed
        long verify_code
        char verify_message[160]
        char library[48]
        char reason[160]
    int FASTWS_TLS_OK
    int FASTWS_TLS_ERROR_SSL
    int FASTWS_TLS_WANT_READ
    int FASTWS_TLS_WANT_WRITE
    int FASTWS_TLS_ERROR_SYSCALL
    int FASTWS_TLS_ZERO_RETURN
    int fastws_tls_supported()
    int fastws_tls_check(void *ssl, void *owner, void *ctx)
    void *fastws_tls_attach(void *ssl, int fd)
    void fastws_tls_detach(void *bio)
    int fastws_tls_drained(void *bio)
    int fastws_tls_batch(void *bio)
    int fastws_tls_batch_end(void *bio)
    ssize_t fastws_tls_unsent(void *bio)
    ssize_t fastws_tls_flush(void *bio)
    int fastws_tls_discard(void *bio)
    int fastws_tls_errno(void *bio)
    int fastws_tls_keep_buffers(void *ssl)
    void fastws_tls_release_buffers(void *ssl)
    int fastws_tls_handshake(void *ssl, fastws_tls_error *err)
    ssize_t fastws_tls_read(void *ssl, char *buf, size_t n, fastws_tls_error *err)
    ssize_t fastws_tls_write(void *ssl, const char *buf, size_t n, fastws_tls_error *err)
    int fastws_tls_pending(void *ssl)
    void fastws_tls_shutdown(void *ssl)


cdef class TLSTransport(SocketTransport):
    cdef void *_ssl  # owned by _sslobj (Python's SSLObject), which this keeps alive
    cdef void *_bio  # owned by _ssl
    cdef object _sslobj
    cdef object _context
    cdef object _on_handshake  # called once: None when the handshake is done, else the error
    cdef bint _handshaking
    cdef bint _handshake_writer  # the loop's writer is installed for the handshake
    cdef bint _batching  # SSL_write()'s records are collected and sent together (fastws_tls_batch)
    cdef bint _keeping  # OpenSSL keeps its buffers between records (a busy connection, see _read_ready)
    cdef bint _notified  # close_notify is written (sent, or held by the BIO until the socket takes it)

    cdef _handshake_step(self)
    cdef _handshake_failed(self, exc)
    cdef _drop_handshake_writer(self)
    cdef Py_ssize_t _send(self, const char *p, Py_ssize_t n) except -2
    cdef Py_ssize_t _ssl_write(self, const char *p, Py_ssize_t n) except -2
    cdef bint _begin_batch(self)
    cdef int _end_batch(self) except -1
    cdef _writelines(self, list items)
    cdef _write_queue(self)
    cdef _written(self)
    cdef _force_close(self, exc)
    cdef _went_idle(self)
    cdef _lose(self)
    cdef _enqueue_from(self, item, Py_ssize_t offset)
