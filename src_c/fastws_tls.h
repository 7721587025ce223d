/* TLS for SocketTransport: OpenSSL driven on an SSL* that Python's ssl module
 * created (so everything set on the SSLContext applies), over a BIO that
 * recv()s and send()s on the transport's socket.  Built with FASTWS_OPENSSL
 * defined when setup.py finds the OpenSSL headers; without it every function
 * is a stub and fastws_tls_supported() says 0 (TLS stays on the loop's transport). */
#ifndef FASTWS_TLS_H
#define FASTWS_TLS_H

#include <stddef.h>
#include <sys/types.h>

/* SSL_get_error() values (the same numbers as OpenSSL's). */
#define FASTWS_TLS_OK 0
#define FASTWS_TLS_ERROR_SSL 1
#define FASTWS_TLS_WANT_READ 2
#define FASTWS_TLS_WANT_WRITE 3
#define FASTWS_TLS_ERROR_SYSCALL 5
#define FASTWS_TLS_ZERO_RETURN 6

typedef struct {
    int code;            /* one of the values above */
    int sys_errno;       /* the socket's errno for FASTWS_TLS_ERROR_SYSCALL, else 0 */
    int eof;             /* the peer closed TCP */
    int verify_failed;   /* the peer's certificate did not verify */
    long verify_code;    /* X509_V_ERR_* when verify_failed */
    char verify_message[160];
    char library[48];
    char reason[160];    /* OpenSSL's text for the first error, e.g. "wrong version number" */
} fastws_tls_error;

int fastws_tls_supported(void);
/* Whether ``ssl`` is an SSL* of the OpenSSL this module is linked with, owned
 * by the Python object ``owner`` (its app data) on the SSL_CTX ``ctx``. */
int fastws_tls_check(void *ssl, void *owner, void *ctx);
/* Put the socket BIO on ``ssl`` (replacing its memory BIOs): returns the BIO or NULL. */
void *fastws_tls_attach(void *ssl, int fd);
/* The BIO stops touching its descriptor (about to be closed). */
void fastws_tls_detach(void *bio);
/* The last recv() was short or said EAGAIN: the socket had nothing more. */
int fastws_tls_drained(void *bio);
/* Collect the records of the next SSL_write() calls and send them together at
 * fastws_tls_batch_end() (0: no batch buffer, records go out one by one). */
int fastws_tls_batch(void *bio);
/* Send the batch; what the socket does not take is held (fastws_tls_unsent).
 * 0, or -1 on a socket error (fastws_tls_errno). */
int fastws_tls_batch_end(void *bio);
/* Bytes of records taken from OpenSSL that the socket has not taken yet. */
ssize_t fastws_tls_unsent(void *bio);
/* Send held records: what is still unsent, or -1 on a socket error. */
ssize_t fastws_tls_flush(void *bio);
/* Drop held records (the connection is being closed); whether there were any. */
int fastws_tls_discard(void *bio);
int fastws_tls_errno(void *bio);
/* Python's SSLContext sets SSL_MODE_RELEASE_BUFFERS: OpenSSL frees its read and
 * write buffers whenever they are empty and allocates them again for the next
 * record (a malloc() and a free() of 64 KiB and of 17 KiB per echoed message).
 * keep: clear the mode (1 if it was set); release: set it again and free the
 * buffers now if they are empty. */
int fastws_tls_keep_buffers(void *ssl);
void fastws_tls_release_buffers(void *ssl);
int fastws_tls_handshake(void *ssl, fastws_tls_error *err);
/* Bytes read (> 0), or -1 with ``err`` filled. */
ssize_t fastws_tls_read(void *ssl, char *buf, size_t n, fastws_tls_error *err);
/* Bytes taken (> 0), or -1 with ``err`` filled (FASTWS_TLS_WANT_WRITE: the
 * socket is full; call again with the same bytes first). */
ssize_t fastws_tls_write(void *ssl, const char *buf, size_t n, fastws_tls_error *err);
int fastws_tls_pending(void *ssl);
/* Send close_notify if the socket takes it now; never waits for the peer's. */
void fastws_tls_shutdown(void *ssl);

#endif
