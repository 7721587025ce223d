/* See fastws_tls.h. */
#include "fastws_tls.h"

#include <stdio.h>
#include <string.h>

#ifdef FASTWS_OPENSSL

#include <errno.h>
#include <stdlib.h>
#include <sys/socket.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

/* Bytes OpenSSL may read ahead of the record it decrypts. */
#define FASTWS_TLS_READ_AHEAD 65536

/* A batch of records goes to the socket in one send() of up to this much. */
#define FASTWS_TLS_BATCH 262144

typedef struct {
    int fd;
    int sys_errno;  /* of the last failed recv()/send() */
    int eof;        /* recv() said 0 */
    int drained;    /* the last recv() was short or said EAGAIN */
    int batching;   /* records are collected in the thread's batch buffer */
    size_t batched; /* bytes in it */
    char *held;     /* records the socket did not take yet (malloc'd), sent before anything else */
    size_t held_off, held_len;
} bio_state;

/* The records of one batch, shared by the connections of a thread: a batch
 * starts and ends within one write call, and what the socket does not take at
 * its end moves to the connection's ``held``. */
static __thread char *batch_buffer;

static BIO_METHOD *socket_method;
static int socket_method_type;

static int bio_create(BIO *bio)
{
    bio_state *state = OPENSSL_zalloc(sizeof(*state));
    if (state == NULL)
        return 0;
    state->fd = -1;
    BIO_set_data(bio, state);
    BIO_set_init(bio, 1);
    return 1;
}

static void drop_held(bio_state *state)
{
    free(state->held);
    state->held = NULL;
    state->held_off = state->held_len = 0;
}

static int bio_destroy(BIO *bio)
{
    bio_state *state = BIO_get_data(bio);
    if (state != NULL)
        drop_held(state);
    OPENSSL_free(state);
    BIO_set_data(bio, NULL);
    BIO_set_init(bio, 0);
    return 1;
}

/* The BIO's state before a recv()/send(), or NULL once its descriptor is gone. */
static bio_state *ready(BIO *bio)
{
    bio_state *state = BIO_get_data(bio);
    BIO_clear_retry_flags(bio);
    if (state->fd < 0) {
        state->sys_errno = EBADF;
        return NULL;
    }
    return state;
}

static int bio_read(BIO *bio, char *buf, int len)
{
    bio_state *state = ready(bio);
    ssize_t n;
    if (state == NULL)
        return -1;
    do
        n = recv(state->fd, buf, (size_t)len, 0);
    while (n < 0 && errno == EINTR);
    if (n > 0) {
        state->drained = n < len;
        return (int)n;
    }
    if (n == 0) {
        state->eof = 1;
        return 0;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
        state->drained = 1;
        BIO_set_retry_read(bio);
        return -1;
    }
    state->sys_errno = errno;
    return -1;
}

/* send() as much of [buf, buf + len) as the socket takes now: the count, 0 when
 * it is full, -1 on an error (in state->sys_errno). */
static ssize_t send_some(bio_state *state, const char *buf, size_t len)
{
    ssize_t n;
    do
        n = send(state->fd, buf, len, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n >= 0)
        return n;
    if (errno == EAGAIN || errno == EWOULDBLOCK)
        return 0;
    state->sys_errno = errno;
    return -1;
}

/* Send held records: 1 when none are left, 0 when the socket is full, -1 on an error. */
static int flush_held(bio_state *state)
{
    ssize_t n;
    if (state->held == NULL)
        return 1;
    n = send_some(state, state->held + state->held_off, state->held_len - state->held_off);
    if (n < 0)
        return -1;
    state->held_off += (size_t)n;
    if (state->held_off < state->held_len)
        return 0;
    drop_held(state);
    return 1;
}

/* Send the batch buffer; what the socket does not take becomes ``held``. 0, or -1 on an error. */
static int flush_batch(bio_state *state)
{
    size_t len = state->batched;
    ssize_t n;
    state->batched = 0;
    if (len == 0)
        return 0;
    n = state->held == NULL ? send_some(state, batch_buffer, len) : 0;
    if (n < 0)
        return -1;
    if ((size_t)n < len) {
        char *rest = realloc(state->held, state->held_len + len - (size_t)n);
        if (rest == NULL) {
            state->sys_errno = ENOMEM;
            return -1;
        }
        memcpy(rest + state->held_len, batch_buffer + n, len - (size_t)n);
        state->held = rest;
        state->held_len += len - (size_t)n;
    }
    return 0;
}

/* A record from OpenSSL: into the batch while one is open (OpenSSL's write
 * buffer holds one record, and a send() per 16 KiB record was a third of a
 * bulk stream's system calls), else to the socket; never ahead of held records. */
static int bio_write(BIO *bio, const char *buf, int len)
{
    bio_state *state = ready(bio);
    ssize_t n;
    int flushed;
    if (state == NULL)
        return -1;
    if (state->held != NULL) {
        flushed = flush_held(state);
        if (flushed < 0)
            return -1;
        if (flushed == 0) {
            BIO_set_retry_write(bio);
            return -1;
        }
    }
    if (state->batching) {
        if (state->batched + (size_t)len > FASTWS_TLS_BATCH) {
            if (flush_batch(state) < 0)
                return -1;
            if (state->held != NULL) {  /* the socket is full */
                BIO_set_retry_write(bio);
                return -1;
            }
        }
        memcpy(batch_buffer + state->batched, buf, (size_t)len);
        state->batched += (size_t)len;
        return len;
    }
    n = send_some(state, buf, (size_t)len);
    if (n > 0)
        return (int)n;
    if (n == 0)
        BIO_set_retry_write(bio);
    return -1;
}

static long bio_ctrl(BIO *bio, int cmd, long num, void *ptr)
{
    bio_state *state = BIO_get_data(bio);
    (void)num;
    (void)ptr;
    switch (cmd) {
    case BIO_CTRL_FLUSH:
    case BIO_CTRL_DUP:
        return 1;
    case BIO_CTRL_EOF:
        return state->eof;
    default:
        return 0;
    }
}

static BIO_METHOD *get_method(void)
{
    if (socket_method == NULL) {
        int type = BIO_get_new_index() | BIO_TYPE_SOURCE_SINK;
        BIO_METHOD *method = BIO_meth_new(type, "fastws socket");
        if (method == NULL)
            return NULL;
        BIO_meth_set_create(method, bio_create);
        BIO_meth_set_destroy(method, bio_destroy);
        BIO_meth_set_read(method, bio_read);
        BIO_meth_set_write(method, bio_write);
        BIO_meth_set_ctrl(method, bio_ctrl);
        socket_method = method;
        socket_method_type = type;
    }
    return socket_method;
}

int fastws_tls_supported(void) { return 1; }

int fastws_tls_check(void *ssl_p, void *owner, void *ctx_p)
{
    SSL *ssl = ssl_p;
    const SSL_METHOD *method;
    if (ssl == NULL || ctx_p == NULL || SSL_get_SSL_CTX(ssl) != (SSL_CTX *)ctx_p)
        return 0;
    if (SSL_get_app_data(ssl) != owner)
        return 0;
    /* The method tables are static data of libssl: the same pointers mean the
     * same library as the one Python's _ssl made this SSL* with. */
    method = SSL_CTX_get_ssl_method(ctx_p);
    return method == TLS_method() || method == TLS_server_method() || method == TLS_client_method();
}

void *fastws_tls_attach(void *ssl_p, int fd)
{
    SSL *ssl = ssl_p;
    BIO_METHOD *method = get_method();
    BIO *bio;
    if (method == NULL || (bio = BIO_new(method)) == NULL)
        return NULL;
    ((bio_state *)BIO_get_data(bio))->fd = fd;
    SSL_set_bio(ssl, bio, bio);  /* drops the memory BIOs Python gave it */
    SSL_set_mode(ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_AUTO_RETRY);
    /* Read-ahead into a buffer of several records: a recv() of up to that much, not
     * 5 bytes then one record (a MiB in 16 recv()s, not 128). */
    SSL_set_read_ahead(ssl, 1);
    SSL_set_default_read_buffer_len(ssl, FASTWS_TLS_READ_AHEAD);
    return bio;
}

void fastws_tls_detach(void *bio)
{
    if (bio != NULL) {
        bio_state *state = BIO_get_data(bio);
        state->fd = -1;
        drop_held(state);
    }
}

int fastws_tls_batch(void *bio)
{
    bio_state *state = BIO_get_data(bio);
    if (batch_buffer == NULL && (batch_buffer = malloc(FASTWS_TLS_BATCH)) == NULL)
        return 0;
    state->batching = 1;
    state->batched = 0;
    return 1;
}

int fastws_tls_batch_end(void *bio)
{
    bio_state *state = BIO_get_data(bio);
    if (!state->batching)
        return 0;
    state->batching = 0;
    if (state->fd < 0) {
        state->batched = 0;
        return 0;
    }
    return flush_batch(state) < 0 ? -1 : 0;
}

ssize_t fastws_tls_unsent(void *bio)
{
    bio_state *state = BIO_get_data(bio);
    return state->held == NULL ? 0 : (ssize_t)(state->held_len - state->held_off);
}

ssize_t fastws_tls_flush(void *bio)
{
    bio_state *state = BIO_get_data(bio);
    if (state->fd < 0)
        return 0;
    if (flush_held(state) < 0)
        return -1;
    return fastws_tls_unsent(bio);
}

int fastws_tls_discard(void *bio)
{
    bio_state *state = BIO_get_data(bio);
    int had = state->held != NULL;
    drop_held(state);
    state->batched = 0;
    return had;
}

int fastws_tls_errno(void *bio) { return ((bio_state *)BIO_get_data(bio))->sys_errno; }

int fastws_tls_keep_buffers(void *ssl_p)
{
    SSL *ssl = ssl_p;
    if (!(SSL_get_mode(ssl) & SSL_MODE_RELEASE_BUFFERS))
        return 0;
    SSL_clear_mode(ssl, SSL_MODE_RELEASE_BUFFERS);
    return 1;
}

void fastws_tls_release_buffers(void *ssl_p)
{
    SSL *ssl = ssl_p;
    SSL_set_mode(ssl, SSL_MODE_RELEASE_BUFFERS);
    SSL_free_buffers(ssl);  /* refuses while a buffer holds data: then it goes once empty */
}

int fastws_tls_drained(void *bio) { return ((bio_state *)BIO_get_data(bio))->drained; }

static void fill_error(SSL *ssl, int ret, fastws_tls_error *err)
{
    BIO *bio = SSL_get_rbio(ssl);
    bio_state *state = bio != NULL && BIO_method_type(bio) == socket_method_type ? BIO_get_data(bio) : NULL;
    unsigned long code;
    const char *text;
    memset(err, 0, sizeof(*err));
    err->code = SSL_get_error(ssl, ret);
    if (state != NULL) {
        err->eof = state->eof;
        if (err->code == SSL_ERROR_SYSCALL)
            err->sys_errno = state->sys_errno;
    }
    code = ERR_peek_error();
    if (code != 0) {
        text = ERR_lib_error_string(code);
        if (ERR_GET_LIB(code) == ERR_LIB_SSL)
            text = "SSL";
        snprintf(err->library, sizeof(err->library), "%s", text != NULL ? text : "");
        text = ERR_reason_error_string(code);
        snprintf(err->reason, sizeof(err->reason), "%s", text != NULL ? text : "");
        if (ERR_GET_LIB(code) == ERR_LIB_SSL && ERR_GET_REASON(code) == SSL_R_CERTIFICATE_VERIFY_FAILED) {
            err->verify_failed = 1;
            err->verify_code = SSL_get_verify_result(ssl);
            snprintf(err->verify_message, sizeof(err->verify_message), "%s",
                     X509_verify_cert_error_string(err->verify_code));
        }
    }
    ERR_clear_error();
}

/* Empty the thread's error queue before an SSL call, so that SSL_get_error() sees
 * only what that call left.  ERR_clear_error() wipes all 16 slots of the queue
 * (about 800 instructions, two calls per echoed message were 8% of the TLS
 * path's user-space instructions); the queue is nearly always empty already,
 * since fill_error() clears it after every failure, and a look costs little. */
static inline void clear_errors(void)
{
    if (ERR_peek_error() != 0)
        ERR_clear_error();
}

int fastws_tls_handshake(void *ssl, fastws_tls_error *err)
{
    int ret;
    clear_errors();
    ret = SSL_do_handshake(ssl);
    if (ret == 1)
        return FASTWS_TLS_OK;
    fill_error(ssl, ret, err);
    return err->code;
}

/* What SSL_read_ex()/SSL_write_ex() returned as a count, or -1 with ``err`` filled. */
static ssize_t transferred(void *ssl, int ret, size_t count, fastws_tls_error *err)
{
    if (ret == 1)
        return (ssize_t)count;
    fill_error(ssl, ret, err);
    return -1;
}

ssize_t fastws_tls_read(void *ssl, char *buf, size_t n, fastws_tls_error *err)
{
    size_t got = 0;
    int ret;
    clear_errors();
    ret = SSL_read_ex(ssl, buf, n, &got);
    return transferred(ssl, ret, got, err);
}

ssize_t fastws_tls_write(void *ssl, const char *buf, size_t n, fastws_tls_error *err)
{
    size_t done = 0;
    int ret;
    clear_errors();
    ret = SSL_write_ex(ssl, buf, n, &done);
    return transferred(ssl, ret, done, err);
}

int fastws_tls_pending(void *ssl) { return SSL_has_pending(ssl); }

void fastws_tls_shutdown(void *ssl)
{
    ERR_clear_error();
    if (SSL_is_init_finished((SSL *)ssl))
        SSL_shutdown(ssl);
    ERR_clear_error();
}

#else /* no OpenSSL headers: TLS stays on the event loop's transport */

int fastws_tls_supported(void) { return 0; }
int fastws_tls_check(void *ssl, void *owner, void *ctx) { (void)ssl; (void)owner; (void)ctx; return 0; }
void *fastws_tls_attach(void *ssl, int fd) { (void)ssl; (void)fd; return NULL; }
void fastws_tls_detach(void *bio) { (void)bio; }
int fastws_tls_drained(void *bio) { (void)bio; return 1; }
int fastws_tls_batch(void *bio) { (void)bio; return 0; }
int fastws_tls_batch_end(void *bio) { (void)bio; return 0; }
ssize_t fastws_tls_unsent(void *bio) { (void)bio; return 0; }
ssize_t fastws_tls_flush(void *bio) { (void)bio; return 0; }
int fastws_tls_discard(void *bio) { (void)bio; return 0; }
int fastws_tls_errno(void *bio) { (void)bio; return 0; }
int fastws_tls_keep_buffers(void *ssl) { (void)ssl; return 0; }
void fastws_tls_release_buffers(void *ssl) { (void)ssl; }
static int unsupported(fastws_tls_error *err)
{
    memset(err, 0, sizeof(*err));
    err->code = FASTWS_TLS_ERROR_SSL;
    strcpy(err->reason, "fastws was built without OpenSSL");
    return err->code;
}
int fastws_tls_handshake(void *ssl, fastws_tls_error *err) { (void)ssl; return unsupported(err); }
ssize_t fastws_tls_read(void *ssl, char *buf, size_t n, fastws_tls_error *err) { (void)ssl; (void)buf; (void)n; unsupported(err); return -1; }
ssize_t fastws_tls_write(void *ssl, const char *buf, size_t n, fastws_tls_error *err) { (void)ssl; (void)buf; (void)n; unsupported(err); return -1; }
int fastws_tls_pending(void *ssl) { (void)ssl; return 0; }
void fastws_tls_shutdown(void *ssl) { (void)ssl; }

#endif
