/*
 * loadgen.c - WebSocket load generator for the fastws load benchmarks.
 *
 * Single-threaded, epoll based, libc only.  Built by bench/run.py with
 * `cc -O2` into a cache directory outside the repository.
 *
 * Modes:
 *   rr      each connection sends one message and waits for its echo
 *   stream  each connection keeps K messages in flight (--inflight K)
 *   fanout  connection 0 sends one message, the server delivers it to every
 *           connection on the path (sender included); the next message is sent
 *           once all N connections got it.  messages = deliveries.  With
 *           --inflight K the publisher keeps K such rounds outstanding (a new
 *           message each time the oldest round completes).  --port2 P puts every
 *           odd connection on a second server (pub/sub through a broker).
 *   idle    open N connections and hold them; report how many stay open.
 *
 * --tls: every mode over wss:// (OpenSSL, TLS 1.3 only; built with
 * -DLOADGEN_TLS -lssl -lcrypto, see bench/run.py).  The same frames and the
 * same verification; the records are encrypted / decrypted here, so the TLS
 * cost of the client side is in this process, never in the server's CPU time.
 * --tls-ca FILE verifies the server's certificate against FILE (and checks
 * that it names --host); without it the certificate is not checked.
 *
 * Output: one JSON object on stdout.  Progress markers on stderr, each on its
 * own line and flushed: "CONNECTED n", "MEASURE_START", "MEASURE_END".  The
 * runner samples the server's CPU time / memory when it sees them.
 *
 * Design notes (keeping the generator cheap per message):
 *   - frames are built once, already masked; every connection writes from a
 *     prebuilt buffer that repeats its frame several times, so one send()
 *     covers a whole batch of queued messages;
 *   - incoming data is read into one large buffer and verified while it is
 *     parsed (no reassembly copies); messages up to 64 KiB are compared in
 *     full, larger ones in full for the first 64 KiB and then 16 bytes out of
 *     every 4 KiB plus the tail;
 *   - masking: each connection gets its own random mask key, chosen once, and
 *     reuses it for all of its frames (RFC 6455 asks for a fresh key per frame;
 *     for a benchmark against loopback servers one key per connection is fine
 *     and keeps the per-message cost at zero).  When N copies of a very large
 *     frame would not fit in 256 MiB, connections share a few prebuilt frames
 *     (and so their mask keys).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#ifdef LOADGEN_TLS
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#endif

enum { MODE_RR, MODE_STREAM, MODE_FANOUT, MODE_IDLE };

/* ------------------------------------------------------------------ utils */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rng(void) {
    uint64_t x = rng_state;
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    return rng_state = x;
}

static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double cpu_seconds(double *user, double *sys) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    *user = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6;
    *sys = ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    return *user + *sys;
}

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "loadgen: fatal: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(2);
}

/* ------------------------------------------------- SHA-1 + base64 (tiny) */

typedef struct { uint32_t h[5]; uint64_t len; uint8_t buf[64]; size_t n; } sha1_t;

static uint32_t rol32(uint32_t v, int s) { return (v << s) | (v >> (32 - s)); }

static void sha1_block(sha1_t *s, const uint8_t *p) {
    uint32_t w[80];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 80; i++) w[i] = rol32(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    uint32_t a = s->h[0], b = s->h[1], c = s->h[2], d = s->h[3], e = s->h[4];
    for (int i = 0; i < 80; i++) {
        uint32_t f, k;
        if (i < 20) { f = (b & c) | (~b & d); k = 0x5A827999; }
        else if (i < 40) { f = b ^ c ^ d; k = 0x6ED9EBA1; }
        else if (i < 60) { f = (b & c) | (b & d) | (c & d); k = 0x8F1BBCDC; }
        else { f = b ^ c ^ d; k = 0xCA62C1D6; }
        uint32_t t = rol32(a, 5) + f + e + k + w[i];
        e = d; d = c; c = rol32(b, 30); b = a; a = t;
    }
    s->h[0] += a; s->h[1] += b; s->h[2] += c; s->h[3] += d; s->h[4] += e;
}

static void sha1_init(sha1_t *s) {
    static const uint32_t iv[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    memcpy(s->h, iv, sizeof iv);
    s->len = 0; s->n = 0;
}

static void sha1_update(sha1_t *s, const uint8_t *p, size_t n) {
    s->len += n;
    while (n) {
        size_t take = 64 - s->n < n ? 64 - s->n : n;
        memcpy(s->buf + s->n, p, take);
        s->n += take; p += take; n -= take;
        if (s->n == 64) { sha1_block(s, s->buf); s->n = 0; }
    }
}

static void sha1_final(sha1_t *s, uint8_t out[20]) {
    uint64_t bits = s->len * 8;
    uint8_t pad = 0x80, zero = 0, lenb[8];
    sha1_update(s, &pad, 1);
    while (s->n != 56) sha1_update(s, &zero, 1);
    for (int i = 0; i < 8; i++) lenb[i] = (uint8_t)(bits >> (56 - 8 * i));
    sha1_update(s, lenb, 8);
    for (int i = 0; i < 5; i++) {
        out[4 * i] = s->h[i] >> 24; out[4 * i + 1] = s->h[i] >> 16;
        out[4 * i + 2] = s->h[i] >> 8; out[4 * i + 3] = s->h[i];
    }
}

static void base64(const uint8_t *in, size_t n, char *out) {
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t i = 0, o = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = tbl[v >> 18]; out[o++] = tbl[(v >> 12) & 63];
        out[o++] = tbl[(v >> 6) & 63]; out[o++] = tbl[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0);
        out[o++] = tbl[v >> 18]; out[o++] = tbl[(v >> 12) & 63];
        out[o++] = i + 1 < n ? tbl[(v >> 6) & 63] : '=';
        out[o++] = '=';
    }
    out[o] = 0;
}

/* ----------------------------------------------------- latency histogram */
/* log-linear buckets over nanoseconds: exact below 128, then 64 sub-buckets
 * per power of two (about 1.5 % resolution). */
#define HIST_N (128 + 58 * 64)
static uint64_t hist[HIST_N];
static uint64_t hist_count;

static inline int hist_index(uint64_t v) {
    if (v < 128) return (int)v;
    int e = 63 - __builtin_clzll(v); /* >= 7 */
    int shift = e - 6;
    return 128 + (e - 7) * 64 + (int)((v >> shift) - 64);
}

static double hist_value(int idx) {
    if (idx < 128) return idx;
    int e = (idx - 128) / 64 + 7, sub = (idx - 128) % 64;
    double lo = (double)(64 + sub) * (double)(1ull << (e - 6));
    return lo + (double)(1ull << (e - 6)) / 2.0;
}

static double hist_pct(double p) {
    if (!hist_count) return 0;
    uint64_t want = (uint64_t)(p * (double)hist_count + 0.5);
    if (want < 1) want = 1;
    uint64_t acc = 0;
    for (int i = 0; i < HIST_N; i++) {
        acc += hist[i];
        if (acc >= want) return hist_value(i);
    }
    return hist_value(HIST_N - 1);
}

/* ----------------------------------------------------------- connections */

typedef struct {
    int fd;
    int open;
    int want_out;       /* EPOLLOUT armed */
    int dirty;          /* on the flush list */
    /* send side: an endless stream of identical frames, `sent` bytes done */
    const uint8_t *batch;
    uint64_t owed;      /* bytes queued but not written */
    uint64_t sent;
    /* receive side parser */
    uint8_t hdr[14];
    int hlen, hneed;
    int in_payload, ctrl, fin;
    uint64_t prem;      /* payload bytes left in the current frame */
    int msg_op;         /* opcode of the message being received, 0 if none */
    uint64_t moff;      /* bytes of the message received so far */
    /* send timestamps (ring) */
    uint64_t *ts;
    uint32_t ts_head, ts_tail;
    uint64_t got;       /* fanout: messages received (the index of the next one) */
#ifdef LOADGEN_TLS
    SSL *ssl;           /* NULL over plain TCP */
    int write_wants_read; /* SSL_write asked for readable data first (key update) */
    int pending;        /* on the pending list: OpenSSL holds data epoll cannot see */
    uint8_t *early;     /* bytes after the 101 response, fed once the connection is set up */
    size_t nearly;
#endif
} conn_t;

/* options */
static const char *opt_host = "127.0.0.1";
static int opt_port = 0;
static int opt_port2 = 0;      /* fanout: odd connections go to this server */
static const char *opt_path = "/";
static int opt_conns = 1;
static int opt_mode = MODE_RR;
static uint64_t opt_size = 16;
static int opt_text = 0;
static int opt_inflight = 1;
static double opt_warmup = 1.0, opt_duration = 5.0;
static int opt_max_errors_print = 10;
static int opt_tls = 0;
static const char *opt_tls_ca = NULL;
static const char *opt_ciphersuites = NULL;

/* state */
static conn_t *conns;
static uint8_t *payload;       /* expected payload */
static size_t flen;            /* one frame */
static size_t batch_frames;    /* frames per prebuilt batch buffer */
static size_t batch_len;
static int epfd;
static uint8_t *rbuf;
#define RBUF_SIZE (1u << 20)

static int measuring = 0, running = 1;
static uint64_t m_msgs, m_bytes, m_rounds;
static uint64_t errors, pings, closes_seen, unexpected_eof;
static int nopen;
static int *flush_list; static int nflush;

#ifdef LOADGEN_TLS
static SSL_CTX *tls_ctx;
static int *pend_list, *pend_spare; static int npend;  /* connections with bytes left in OpenSSL */
static char tls_desc[128];

static const char *tls_errstr(void) {
    static char buf[256];
    unsigned long e = ERR_get_error();
    if (!e) return errno ? strerror(errno) : "unexpected EOF";
    ERR_error_string_n(e, buf, sizeof buf);
    ERR_clear_error();
    return buf;
}

static void tls_setup(void) {
    tls_ctx = SSL_CTX_new(TLS_client_method());
    if (!tls_ctx) die("SSL_CTX_new: %s", tls_errstr());
    SSL_CTX_set_min_proto_version(tls_ctx, TLS1_3_VERSION);
    SSL_CTX_set_max_proto_version(tls_ctx, TLS1_3_VERSION);
    SSL_CTX_set_session_cache_mode(tls_ctx, SSL_SESS_CACHE_OFF);
    /* partial writes: one SSL_write per record, so `sent` advances like send();
     * the write buffer may move between retries (the batch phase is recomputed) */
    SSL_CTX_set_mode(tls_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    /* read ahead: one recv() may bring several records (fewer syscalls here);
     * what OpenSSL buffers is drained through the pending list */
    SSL_CTX_set_read_ahead(tls_ctx, 1);
    if (opt_mode == MODE_IDLE) SSL_CTX_set_mode(tls_ctx, SSL_MODE_RELEASE_BUFFERS);
    if (opt_ciphersuites && SSL_CTX_set_ciphersuites(tls_ctx, opt_ciphersuites) != 1)
        die("--ciphersuites %s: %s", opt_ciphersuites, tls_errstr());
    if (opt_tls_ca) {
        if (SSL_CTX_load_verify_locations(tls_ctx, opt_tls_ca, NULL) != 1) die("--tls-ca %s: %s", opt_tls_ca, tls_errstr());
        SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_PEER, NULL);
    } else {
        SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_NONE, NULL);
    }
}

/* blocking TLS handshake on a connected socket (its SO_RCVTIMEO/SO_SNDTIMEO bound it) */
static SSL *tls_connect(int fd) {
    SSL *ssl = SSL_new(tls_ctx);
    if (!ssl) die("SSL_new: %s", tls_errstr());
    SSL_set_fd(ssl, fd);
    struct in6_addr a6; struct in_addr a4;
    int is_ip = inet_pton(AF_INET, opt_host, &a4) == 1 || inet_pton(AF_INET6, opt_host, &a6) == 1;
    if (!is_ip) SSL_set_tlsext_host_name(ssl, opt_host);
    if (opt_tls_ca) {
        X509_VERIFY_PARAM *vp = SSL_get0_param(ssl);
        if (is_ip) X509_VERIFY_PARAM_set1_ip_asc(vp, opt_host);
        else X509_VERIFY_PARAM_set1_host(vp, opt_host, 0);
    }
    if (SSL_connect(ssl) != 1) die("TLS handshake: %s", tls_errstr());
    if (!tls_desc[0])
        snprintf(tls_desc, sizeof tls_desc, "%s %s", SSL_get_version(ssl), SSL_get_cipher_name(ssl));
    return ssl;
}

static void pend_add(conn_t *c) {
    if (!c->pending) { c->pending = 1; pend_list[npend++] = (int)(c - conns); }
}
#endif

/* send on a connection: bytes written, or -1 with errno EAGAIN (wait for
 * EPOLLOUT) or another errno (the connection is broken; *why says why) */
static ssize_t conn_send(conn_t *c, const void *p, size_t n, const char **why) {
#ifdef LOADGEN_TLS
    if (c->ssl) {
        if (n > (1u << 30)) n = 1u << 30;
        ERR_clear_error();
        int w = SSL_write(c->ssl, p, (int)n);
        if (w > 0) return w;
        int e = SSL_get_error(c->ssl, w);
        if (e == SSL_ERROR_WANT_WRITE) { errno = EAGAIN; return -1; }
        if (e == SSL_ERROR_WANT_READ) { c->write_wants_read = 1; errno = EAGAIN; return -1; }
        *why = tls_errstr();
        errno = EPIPE;
        return -1;
    }
#endif
    ssize_t w;
    do w = send(c->fd, p, n, MSG_NOSIGNAL); while (w < 0 && errno == EINTR);
    if (w < 0) *why = strerror(errno);
    return w;
}

/* receive: bytes, 0 at EOF, -1 with errno EAGAIN (nothing more now) or another
 * errno (*why says why) */
static ssize_t conn_recv(conn_t *c, void *p, size_t n, const char **why) {
#ifdef LOADGEN_TLS
    if (c->ssl) {
        ERR_clear_error();
        int r = SSL_read(c->ssl, p, (int)n);
        if (r > 0) return r;
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) { errno = EAGAIN; return -1; }
        if (e == SSL_ERROR_ZERO_RETURN) return 0;
        *why = tls_errstr();
        errno = EPROTO;
        return -1;
    }
#endif
    ssize_t r;
    do r = recv(c->fd, p, n, 0); while (r < 0 && errno == EINTR);
    if (r < 0) *why = strerror(errno);
    return r;
}

/* fanout: rounds in flight, indexed by message number modulo opt_inflight + 1 */
static uint32_t *fan_count;    /* deliveries of each message in flight */
static uint64_t *fan_ts;       /* when it was sent */
static uint64_t fan_sent, fan_done;

static void err(conn_t *c, const char *fmt, ...) {
    errors++;
    if (errors <= (uint64_t)opt_max_errors_print) {
        va_list ap;
        va_start(ap, fmt);
        fprintf(stderr, "loadgen: error (conn %ld): ", c ? (long)(c - conns) : -1L);
        vfprintf(stderr, fmt, ap);
        fprintf(stderr, "\n");
        va_end(ap);
    }
}

static void conn_close(conn_t *c) {
    if (!c->open) return;
    c->open = 0;
    nopen--;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
#ifdef LOADGEN_TLS
    if (c->ssl) { SSL_free(c->ssl); c->ssl = NULL; }
#endif
    close(c->fd);
}

static void set_out(conn_t *c, int on) {
    if (c->want_out == on) return;
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.u32 = (uint32_t)(c - conns)};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = on;
}

static void flush(conn_t *c) {
    while (c->owed && c->open) {
        size_t phase = (size_t)(c->sent % flen);
        size_t avail = batch_len - phase;
        size_t len = c->owed < avail ? (size_t)c->owed : avail;
        const char *why = NULL;
        ssize_t w = conn_send(c, c->batch + phase, len, &why);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
#ifdef LOADGEN_TLS
                if (c->write_wants_read) return; /* retried after the next read */
#endif
                set_out(c, 1);
                return;
            }
            err(c, "send: %s", why);
            conn_close(c);
            return;
        }
        c->sent += (uint64_t)w;
        c->owed -= (uint64_t)w;
    }
    if (c->want_out) set_out(c, 0);
}

static inline void queue_msg(conn_t *c, uint64_t t) {
    c->owed += flen;
    if (c->ts) { c->ts[c->ts_head % (uint32_t)(opt_inflight + 1)] = t; c->ts_head++; }
    if (!c->dirty) { c->dirty = 1; flush_list[nflush++] = (int)(c - conns); }
}

static void verify(conn_t *c, uint64_t off, const uint8_t *p, size_t n) {
    uint64_t end = off + n;
    if (off < 65536) {
        size_t k = end < 65536 ? n : (size_t)(65536 - off);
        if (memcmp(p, payload + off, k) != 0) { err(c, "payload mismatch near offset %llu", (unsigned long long)off); return; }
    }
    if (end > 65536) {
        uint64_t a = off < 65536 ? 65536 : (off + 4095) & ~4095ull;
        for (; a < end; a += 4096) {
            size_t k = end - a < 16 ? (size_t)(end - a) : 16;
            if (memcmp(p + (a - off), payload + a, k) != 0) { err(c, "payload mismatch at offset %llu", (unsigned long long)a); return; }
        }
        if (end == opt_size) {
            size_t k = n < 16 ? n : 16;
            if (memcmp(p + n - k, payload + end - k, k) != 0) { err(c, "payload tail mismatch"); return; }
        }
    }
}

static void on_message(conn_t *c, uint64_t t) {
    if (opt_mode == MODE_RR || opt_mode == MODE_STREAM) {
        uint64_t t0 = 0;
        if (c->ts_tail != c->ts_head) { t0 = c->ts[c->ts_tail % (uint32_t)(opt_inflight + 1)]; c->ts_tail++; }
        else err(c, "echo without a matching request");
        if (measuring) {
            m_msgs++; m_bytes += opt_size;
            if (t0) { hist[hist_index(t - t0)]++; hist_count++; }
        }
        if (running) queue_msg(c, t);
    } else if (opt_mode == MODE_FANOUT) {
        uint32_t ring = (uint32_t)opt_inflight + 1;
        if (measuring) { m_msgs++; m_bytes += opt_size; }
        if (c->got >= fan_sent) { err(c, "more fan-out messages than were sent"); return; }
        fan_count[c->got++ % ring]++;
        while (fan_done < fan_sent && fan_count[fan_done % ring] >= (uint32_t)nopen) {
            if (measuring) { m_rounds++; hist[hist_index(t - fan_ts[fan_done % ring])]++; hist_count++; }
            fan_count[fan_done % ring] = 0;
            fan_done++;
            if (running && conns[0].open) { fan_ts[fan_sent % ring] = t; fan_sent++; queue_msg(&conns[0], t); }
        }
    } else {
        err(c, "unexpected message in idle mode");
    }
}

static void frame_done(conn_t *c, uint64_t t) {
    c->in_payload = 0;
    c->hlen = 0;
    if (c->ctrl) { c->ctrl = 0; return; }
    if (c->fin) {
        if (c->moff != opt_size) err(c, "echo length %llu, expected %llu", (unsigned long long)c->moff, (unsigned long long)opt_size);
        c->msg_op = 0;
        on_message(c, t);
    }
}

/* returns -1 if the connection must be dropped */
static int feed(conn_t *c, const uint8_t *p, size_t n, uint64_t t) {
    int want_op = opt_text ? 1 : 2;
    while (n) {
        if (!c->in_payload) {
            if (c->hlen < 2) { c->hneed = 2; }
            while (n && c->hlen < c->hneed) {
                c->hdr[c->hlen++] = *p++; n--;
                if (c->hlen == 2) {
                    int l7 = c->hdr[1] & 0x7f;
                    c->hneed = 2 + (l7 == 126 ? 2 : l7 == 127 ? 8 : 0) + ((c->hdr[1] & 0x80) ? 4 : 0);
                }
            }
            if (c->hlen < c->hneed || c->hlen < 2) break;
            uint8_t b0 = c->hdr[0], b1 = c->hdr[1];
            int op = b0 & 0x0f, l7 = b1 & 0x7f;
            uint64_t len = l7;
            if (l7 == 126) len = (uint64_t)c->hdr[2] << 8 | c->hdr[3];
            else if (l7 == 127) { len = 0; for (int i = 0; i < 8; i++) len = len << 8 | c->hdr[2 + i]; }
            if (b1 & 0x80) { err(c, "server frame is masked"); return -1; }
            if (b0 & 0x70) { err(c, "unexpected RSV bits 0x%x", b0 & 0x70); return -1; }
            c->fin = (b0 & 0x80) != 0;
            if (op >= 8) {
                if (len > 125 || !c->fin) { err(c, "bad control frame"); return -1; }
                if (op == 8) { closes_seen++; if (running) err(c, "unexpected close frame from server"); return -1; }
                if (op == 9) pings++;
                c->ctrl = 1;
            } else if (op == 0) {
                if (!c->msg_op) { err(c, "continuation frame without a message"); return -1; }
            } else if (op == 1 || op == 2) {
                if (c->msg_op) { err(c, "new message inside a fragmented one"); return -1; }
                if (op != want_op) err(c, "echo opcode %d, expected %d", op, want_op);
                c->msg_op = op;
                c->moff = 0;
            } else { err(c, "unknown opcode %d", op); return -1; }
            if (!c->ctrl && c->moff + len > opt_size) { err(c, "echo longer than the request"); return -1; }
            c->prem = len;
            c->in_payload = 1;
            if (len == 0) frame_done(c, t);
        } else {
            size_t take = c->prem < n ? (size_t)c->prem : n;
            if (!c->ctrl) { verify(c, c->moff, p, take); c->moff += take; }
            c->prem -= take; p += take; n -= take;
            if (c->prem == 0) frame_done(c, t);
        }
    }
    return 0;
}

/* ------------------------------------------------------------- payloads */

static void make_payload(void) {
    payload = malloc(opt_size ? opt_size : 1);
    if (!payload) die("out of memory");
    if (!opt_text) {
        for (uint64_t i = 0; i < opt_size; i++) payload[i] = (uint8_t)(rng() >> 24);
        return;
    }
    /* valid UTF-8 mixing 1-, 2-, 3- and 4-byte characters, exactly opt_size bytes */
    static const char *chars[] = {"a", "Z", "7", " ", "\xc3\xa9", "\xd0\x96", "\xe2\x82\xac",
                                  "\xe4\xb8\xad", "\xf0\x9f\x98\x80", "\xf0\x9d\x84\x9e"};
    uint64_t i = 0;
    while (i < opt_size) {
        const char *ch = chars[rng() % 10];
        size_t k = strlen(ch);
        if (i + k > opt_size) ch = "x", k = 1;
        memcpy(payload + i, ch, k);
        i += k;
    }
}

static uint8_t *make_batch(uint8_t mask[4]) {
    size_t hl = 2 + (opt_size < 126 ? 0 : opt_size < 65536 ? 2 : 8) + 4;
    uint8_t *b = malloc(batch_len);
    if (!b) die("out of memory for frames");
    uint8_t *f = b;
    f[0] = 0x80 | (opt_text ? 1 : 2);
    if (opt_size < 126) f[1] = 0x80 | (uint8_t)opt_size;
    else if (opt_size < 65536) { f[1] = 0x80 | 126; f[2] = opt_size >> 8; f[3] = opt_size & 0xff; }
    else { f[1] = 0x80 | 127; for (int i = 0; i < 8; i++) f[2 + i] = (uint8_t)(opt_size >> (56 - 8 * i)); }
    memcpy(f + hl - 4, mask, 4);
    for (uint64_t i = 0; i < opt_size; i++) f[hl + i] = payload[i] ^ mask[i & 3];
    for (size_t k = 1; k < batch_frames; k++) memcpy(b + k * flen, b, flen);
    return b;
}

/* ------------------------------------------------------------ handshake */

/* blocking write of the whole buffer (handshake time: the socket is still blocking) */
static void write_all(conn_t *c, const char *p, size_t n) {
    while (n) {
        const char *why = "?";
        ssize_t w = conn_send(c, p, n, &why);
        if (w <= 0) die("send handshake: %s", why);
        p += w; n -= (size_t)w;
    }
}

static void connect_one(conn_t *c, struct sockaddr_storage *sa, socklen_t salen, char *key_out) {
    int fd = socket(sa->ss_family, SOCK_STREAM, 0);
    if (fd < 0) die("socket: %s (raise RLIMIT_NOFILE?)", strerror(errno));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)sa, salen) < 0) die("connect: %s", strerror(errno));
    c->fd = fd;
#ifdef LOADGEN_TLS
    if (opt_tls) c->ssl = tls_connect(fd);
#endif
    uint8_t raw[16];
    for (int i = 0; i < 16; i++) raw[i] = (uint8_t)(rng() >> 32);
    base64(raw, 16, key_out);
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nUser-Agent: fastws-loadgen\r\n\r\n",
                     opt_path, opt_host, opt_port, key_out);
    write_all(c, req, (size_t)n);
}

/* Reads the HTTP response headers into resp (NUL terminated) without taking
 * any byte after them from the socket: plain TCP peeks, then reads exactly the
 * headers; TLS cannot peek through records, so it reads and keeps what
 * follows the headers in c->early. */
static void read_response(conn_t *c, char *resp, size_t cap) {
    size_t got = 0;
    char *end = NULL;
#ifdef LOADGEN_TLS
    if (c->ssl) {
        for (;;) {
            if (got >= cap - 1) die("handshake response too large");
            const char *why = "?";
            ssize_t r = conn_recv(c, resp + got, cap - 1 - got, &why);
            if (r <= 0) die("handshake: %s", r == 0 ? "connection closed" : why);
            got += (size_t)r;
            resp[got] = 0;
            if ((end = strstr(resp, "\r\n\r\n"))) break;
        }
        size_t hl = (size_t)(end - resp) + 4;
        if (got > hl) {
            c->nearly = got - hl;
            c->early = malloc(c->nearly);
            if (!c->early) die("out of memory");
            memcpy(c->early, resp + hl, c->nearly);
        }
        resp[hl] = 0;
        return;
    }
#endif
    for (;;) {
        ssize_t r = recv(c->fd, resp, cap - 1, MSG_PEEK);
        if (r <= 0) die("handshake: %s", r == 0 ? "connection closed" : strerror(errno));
        resp[r] = 0;
        if ((end = strstr(resp, "\r\n\r\n"))) break;
        if ((size_t)r >= cap - 1) die("handshake response too large");
        if ((size_t)r == got) usleep(200);
        got = (size_t)r;
    }
    size_t hlen = (size_t)(end - resp) + 4;
    if (recv(c->fd, resp, hlen, 0) != (ssize_t)hlen) die("handshake read");
    resp[hlen] = 0;
}

static void finish_handshake(conn_t *c, const char *key) {
    char resp[8192];
    read_response(c, resp, sizeof resp);
    if (strncmp(resp, "HTTP/1.1 101", 12) != 0) {
        char *nl = strstr(resp, "\r\n");
        if (nl) *nl = 0;
        die("handshake refused: %s", resp);
    }
    char buf[128];
    snprintf(buf, sizeof buf, "%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", key);
    sha1_t s; uint8_t dig[20]; char expect[32];
    sha1_init(&s); sha1_update(&s, (const uint8_t *)buf, strlen(buf)); sha1_final(&s, dig);
    base64(dig, 20, expect);
    int ok = 0;
    for (char *line = strstr(resp, "\r\n"); line && line[2]; line = strstr(line + 2, "\r\n")) {
        char *l = line + 2;
        if (strncasecmp(l, "sec-websocket-accept:", 21) == 0) {
            l += 21;
            while (*l == ' ' || *l == '\t') l++;
            ok = strncmp(l, expect, strlen(expect)) == 0;
            break;
        }
    }
    if (!ok) die("bad or missing Sec-WebSocket-Accept");
}

/* ------------------------------------------------------------ receiving */

/* Reads what a ready connection has (up to 4 MiB at a time, so that one busy
 * connection does not hold up the others) and feeds it to the parser. */
static void read_some(conn_t *c, uint64_t t) {
    size_t total = 0;
    while (total < 4 * RBUF_SIZE) {
        const char *why = "?";
        ssize_t r = conn_recv(c, rbuf, RBUF_SIZE, &why);
        if (r < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            err(c, "recv: %s", why);
            conn_close(c);
            return;
        }
        if (r == 0) { unexpected_eof++; err(c, "connection closed by the server"); conn_close(c); return; }
        if (feed(c, rbuf, (size_t)r, t) < 0) { conn_close(c); return; }
        total += (size_t)r;
#ifdef LOADGEN_TLS
        /* one record per SSL_read: go on while OpenSSL holds more; when it holds
         * nothing, the socket is next and epoll says when (no recv() for EAGAIN) */
        if (c->ssl) { if (SSL_has_pending(c->ssl)) continue; break; }
#endif
        if ((size_t)r < RBUF_SIZE) break;
    }
#ifdef LOADGEN_TLS
    if (c->ssl) {
        /* epoll cannot see what OpenSSL already read from the socket */
        if (SSL_has_pending(c->ssl)) pend_add(c);
        if (c->write_wants_read) {
            c->write_wants_read = 0;
            if (!c->dirty) { c->dirty = 1; flush_list[nflush++] = (int)(c - conns); }
        }
    }
#endif
}

/* ---------------------------------------------------------------- main */

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen --port P [--host H] [--path /] [--mode rr|stream|fanout|idle]\n"
            "               [--conns N] [--size BYTES] [--text] [--inflight K]\n"
            "               [--warmup S] [--duration S] [--seed N] [--port2 P]\n"
            "               [--tls [--tls-ca PEM] [--ciphersuites LIST]]\n");
    exit(2);
}

int main(int argc, char **argv) {
    static struct option lo[] = {
        {"host", 1, 0, 'h'}, {"port", 1, 0, 'p'}, {"path", 1, 0, 'P'}, {"conns", 1, 0, 'c'},
        {"mode", 1, 0, 'm'}, {"size", 1, 0, 's'}, {"text", 0, 0, 't'}, {"inflight", 1, 0, 'k'},
        {"warmup", 1, 0, 'w'}, {"duration", 1, 0, 'd'}, {"seed", 1, 0, 'r'}, {"port2", 1, 0, 'q'},
        {"tls", 0, 0, 'T'}, {"tls-ca", 1, 0, 'C'}, {"ciphersuites", 1, 0, 'S'}, {0, 0, 0, 0}};
    uint64_t seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    int o;
    while ((o = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (o) {
        case 'h': opt_host = optarg; break;
        case 'p': opt_port = atoi(optarg); break;
        case 'P': opt_path = optarg; break;
        case 'c': opt_conns = atoi(optarg); break;
        case 'm':
            if (!strcmp(optarg, "rr")) opt_mode = MODE_RR;
            else if (!strcmp(optarg, "stream")) opt_mode = MODE_STREAM;
            else if (!strcmp(optarg, "fanout")) opt_mode = MODE_FANOUT;
            else if (!strcmp(optarg, "idle")) opt_mode = MODE_IDLE;
            else usage();
            break;
        case 's': opt_size = strtoull(optarg, NULL, 10); break;
        case 't': opt_text = 1; break;
        case 'k': opt_inflight = atoi(optarg); break;
        case 'w': opt_warmup = atof(optarg); break;
        case 'd': opt_duration = atof(optarg); break;
        case 'r': seed = strtoull(optarg, NULL, 10) | 1; break;
        case 'q': opt_port2 = atoi(optarg); break;
        case 'T': opt_tls = 1; break;
        case 'C': opt_tls_ca = optarg; opt_tls = 1; break;
        case 'S': opt_ciphersuites = optarg; break;
        default: usage();
        }
    }
    if (!opt_port || opt_conns < 1 || opt_inflight < 1) usage();
    if (opt_size > (64ull << 20)) die("size above 64 MiB is not supported");
    if (opt_mode != MODE_STREAM && opt_mode != MODE_FANOUT) opt_inflight = 1;
    rng_state = seed ? seed : 1;
#ifdef LOADGEN_TLS
    if (opt_tls) tls_setup();
#else
    if (opt_tls) die("--tls: this loadgen was built without OpenSSL (cc -DLOADGEN_TLS ... -lssl -lcrypto)");
#endif

    /* file descriptors: raise the soft limit (and the hard one if allowed) */
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rlim_t need = (rlim_t)opt_conns + 64;
    if (rl.rlim_cur < need) {
        if (rl.rlim_max < need) { rl.rlim_max = need; }
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0) {
            getrlimit(RLIMIT_NOFILE, &rl);
            rl.rlim_cur = rl.rlim_max;
            setrlimit(RLIMIT_NOFILE, &rl);
        }
    }

    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai;
    char portstr[16];
    snprintf(portstr, sizeof portstr, "%d", opt_port);
    if (getaddrinfo(opt_host, portstr, &hints, &ai) != 0) die("cannot resolve %s", opt_host);
    struct sockaddr_storage sa, sa2;
    socklen_t salen = ai->ai_addrlen;
    memcpy(&sa, ai->ai_addr, ai->ai_addrlen);
    freeaddrinfo(ai);
    memcpy(&sa2, &sa, sizeof sa);
    if (opt_port2) {
        if (sa2.ss_family == AF_INET) ((struct sockaddr_in *)&sa2)->sin_port = htons((uint16_t)opt_port2);
        else ((struct sockaddr_in6 *)&sa2)->sin6_port = htons((uint16_t)opt_port2);
    }

    make_payload();
    flen = (size_t)opt_size + 2 + (opt_size < 126 ? 0 : opt_size < 65536 ? 2 : 8) + 4;
    batch_frames = (size_t)opt_inflight;
    if (batch_frames * flen > 256 * 1024) batch_frames = 256 * 1024 / flen;
    if (batch_frames < 1) batch_frames = 1;
    batch_len = batch_frames * flen;
    size_t nframes = (size_t)opt_conns;
    if (nframes * batch_len > (256ull << 20)) nframes = (256ull << 20) / batch_len;
    if (nframes < 1) nframes = 1;
    if (opt_mode == MODE_IDLE || opt_mode == MODE_FANOUT) nframes = 1;
    uint8_t **frames = calloc(nframes, sizeof *frames);
    for (size_t i = 0; i < nframes; i++) {
        uint8_t mask[4];
        uint64_t r = rng();
        memcpy(mask, &r, 4);
        frames[i] = make_batch(mask);
    }

    conns = calloc((size_t)opt_conns, sizeof *conns);
    flush_list = calloc((size_t)opt_conns, sizeof *flush_list);
#ifdef LOADGEN_TLS
    pend_list = calloc((size_t)opt_conns, sizeof *pend_list);
    pend_spare = calloc((size_t)opt_conns, sizeof *pend_spare);
    if (!pend_list || !pend_spare) die("setup failed");
#endif
    rbuf = malloc(RBUF_SIZE);
    epfd = epoll_create1(0);
    if (!conns || !flush_list || !rbuf || epfd < 0) die("setup failed");

    /* connect in small batches: connect + request for a batch, then read the responses */
    const int HB = 64;
    char (*keys)[32] = calloc((size_t)HB, 32);
    for (int base = 0; base < opt_conns; base += HB) {
        int cnt = opt_conns - base < HB ? opt_conns - base : HB;
        for (int i = 0; i < cnt; i++)
            connect_one(&conns[base + i], opt_port2 && (base + i) % 2 ? &sa2 : &sa, salen, keys[i]);
        for (int i = 0; i < cnt; i++) {
            conn_t *c = &conns[base + i];
            finish_handshake(c, keys[i]);
            fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
            c->open = 1;
            nopen++;
            c->batch = frames[(size_t)(base + i) % nframes];
            if (opt_mode == MODE_RR || opt_mode == MODE_STREAM)
                c->ts = calloc((size_t)opt_inflight + 1, sizeof(uint64_t));
            struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)(base + i)};
            if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl: %s", strerror(errno));
        }
    }
    free(keys);
#ifdef LOADGEN_TLS
    /* bytes that came with the 101 response: nothing was requested yet, so any
     * frame here is an error in every mode (as it would be over plain TCP) */
    for (int i = 0; i < opt_conns; i++) {
        conn_t *c = &conns[i];
        if (c->nearly && feed(c, c->early, c->nearly, now_ns()) < 0) conn_close(c);
        free(c->early); c->early = NULL; c->nearly = 0;
    }
#endif
    fprintf(stderr, "CONNECTED %d\n", nopen);
    fflush(stderr);
    if (opt_mode == MODE_FANOUT) usleep(200000); /* let the server register every connection */

    uint64_t t_start = now_ns();
    uint64_t t_warm = t_start + (uint64_t)(opt_warmup * 1e9);
    uint64_t t_end = t_warm + (uint64_t)(opt_duration * 1e9);
    double cpu0 = 0, u0 = 0, s0 = 0, cpu1 = 0, u1 = 0, s1 = 0;
    uint64_t t_m0 = 0, t_m1 = 0;

    if (opt_mode == MODE_RR || opt_mode == MODE_STREAM) {
        for (int i = 0; i < opt_conns; i++)
            for (int k = 0; k < opt_inflight; k++) queue_msg(&conns[i], t_start);
    } else if (opt_mode == MODE_FANOUT) {
        fan_count = calloc((size_t)opt_inflight + 1, sizeof *fan_count);
        fan_ts = calloc((size_t)opt_inflight + 1, sizeof *fan_ts);
        for (int k = 0; k < opt_inflight; k++) { fan_ts[k] = t_start; fan_sent++; queue_msg(&conns[0], t_start); }
    }

    struct epoll_event *evs = calloc(1024, sizeof *evs);
    for (;;) {
        for (int i = 0; i < nflush; i++) { conns[flush_list[i]].dirty = 0; flush(&conns[flush_list[i]]); }
        nflush = 0;
        uint64_t t = now_ns();
        if (!measuring && t >= t_warm && t_m0 == 0) {
            measuring = 1;
            t_m0 = t;
            m_msgs = m_bytes = m_rounds = 0;
            memset(hist, 0, sizeof hist); hist_count = 0;
            cpu0 = cpu_seconds(&u0, &s0);
            fprintf(stderr, "MEASURE_START\n");
            fflush(stderr);
        }
        if (t >= t_end) {
            t_m1 = t;
            cpu1 = cpu_seconds(&u1, &s1);
            measuring = 0;
            running = 0;
            fprintf(stderr, "MEASURE_END\n");
            fflush(stderr);
            break;
        }
        uint64_t next = measuring ? t_end : t_warm;
        int timeout = (int)((next - t + 999999) / 1000000);
#ifdef LOADGEN_TLS
        if (npend) timeout = 0; /* OpenSSL holds bytes of some connection: no waiting */
#endif
        int ne = epoll_wait(epfd, evs, 1024, timeout);
        if (ne < 0) { if (errno == EINTR) continue; die("epoll_wait: %s", strerror(errno)); }
        t = now_ns();
#ifdef LOADGEN_TLS
        if (npend) {
            /* take the list first: read_some() puts a connection back on it */
            int n = npend;
            int *todo = pend_list;
            pend_list = pend_spare; pend_spare = todo; npend = 0;
            for (int i = 0; i < n; i++) {
                conn_t *c = &conns[todo[i]];
                c->pending = 0;
                if (c->open) read_some(c, t);
            }
        }
#endif
        for (int e = 0; e < ne; e++) {
            conn_t *c = &conns[evs[e].data.u32];
            if (!c->open) continue;
            if (evs[e].events & EPOLLOUT) { if (!c->dirty) { c->dirty = 1; flush_list[nflush++] = (int)(c - conns); } }
            if (evs[e].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) read_some(c, t);
        }
    }

    /* say goodbye: a masked close frame (code 1000) where no frame is half written */
    int still_open = nopen;
    static const uint8_t closefr[] = {0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8};
    for (int i = 0; i < opt_conns; i++) {
        conn_t *c = &conns[i];
        if (!c->open) continue;
        const char *why;
#ifdef LOADGEN_TLS
        /* OpenSSL wants a pending write retried with the same bytes first: no close frame then */
        if (c->ssl && c->owed) { SSL_free(c->ssl); c->ssl = NULL; close(c->fd); continue; }
#endif
        if (c->sent % flen == 0) (void)conn_send(c, closefr, sizeof closefr, &why);
#ifdef LOADGEN_TLS
        if (c->ssl) { (void)SSL_shutdown(c->ssl); SSL_free(c->ssl); c->ssl = NULL; }
#endif
        close(c->fd);
    }

    if (opt_mode == MODE_FANOUT && m_rounds == 0) err(NULL, "no fan-out round completed in the measured window");
    if ((opt_mode == MODE_RR || opt_mode == MODE_STREAM) && m_msgs == 0) err(NULL, "no echo received in the measured window");
    double secs = (double)(t_m1 - t_m0) / 1e9;
    if (secs <= 0) secs = 1e-9;
    printf("{\"mode\": \"%s\", \"conns\": %d, \"size\": %llu, \"text\": %s, \"inflight\": %d, "
           "\"duration_s\": %.4f, \"messages\": %llu, \"msgs_per_s\": %.1f, \"mb_per_s\": %.3f, "
           "\"p50_us\": %.2f, \"p99_us\": %.2f, \"latency_samples\": %llu, \"rounds\": %llu, "
           "\"open\": %d, \"pings\": %llu, \"errors\": %llu, "
           "\"loadgen_cpu_s\": %.4f, \"loadgen_user_s\": %.4f, \"loadgen_sys_s\": %.4f, \"tls\": \"%s\"}\n",
           opt_mode == MODE_RR ? "rr" : opt_mode == MODE_STREAM ? "stream" : opt_mode == MODE_FANOUT ? "fanout" : "idle",
           opt_conns, (unsigned long long)opt_size, opt_text ? "true" : "false", opt_inflight, secs,
           (unsigned long long)m_msgs, (double)m_msgs / secs, (double)m_bytes / secs / 1e6,
           hist_pct(0.50) / 1e3, hist_pct(0.99) / 1e3, (unsigned long long)hist_count,
           (unsigned long long)m_rounds, still_open, (unsigned long long)pings,
           (unsigned long long)errors, cpu1 - cpu0, u1 - u0, s1 - s0,
#ifdef LOADGEN_TLS
           opt_tls ? tls_desc : "");
#else
           "");
#endif
    fflush(stdout);
    if (opt_mode == MODE_IDLE && still_open != opt_conns) return 1;
    return errors ? 1 : 0;
}
