/*
 * echo_server.c - the fixed WebSocket echo server of the client benchmarks.
 *
 * The clients under test (bench/clients/) all drive this one server, so that the
 * server's cost is the same for each and small next to theirs.  Single-threaded,
 * epoll, libc only; built by bench/run.py with `cc -O2` into its cache directory.
 *
 *   echo_server [--host 127.0.0.1] [--port 0]
 *
 * Prints "INFO {json}" and "PORT <n>" once listening (the protocol of
 * bench/servers/common.py), then serves until SIGINT or SIGTERM.  Answers any
 * upgrade request with 101; echoes each data frame as it came (opcode and FIN
 * kept, payload unmasked), answers pings, echoes a close frame and then closes.
 * No permessage-deflate, no UTF-8 check: the clients do their own work.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_PAYLOAD (64u << 20)
#define READ_CHUNK (256 * 1024)

typedef struct {
    char *data;
    size_t len, cap, off; /* valid bytes are data[off .. len) */
} buf_t;

typedef struct {
    int fd;
    int upgraded;
    int closing; /* close frame echoed: close once the output is written */
    int want_out; /* EPOLLOUT is registered */
    buf_t in, out;
} conn_t;

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static void need(buf_t *b, size_t extra) {
    if (b->off && b->off == b->len) b->off = b->len = 0;
    if (b->len + extra <= b->cap) return;
    if (b->off) { /* compact before growing */
        memmove(b->data, b->data + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
        if (b->len + extra <= b->cap) return;
    }
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra) cap *= 2;
    char *p = realloc(b->data, cap);
    if (!p) { perror("realloc"); exit(2); }
    b->data = p;
    b->cap = cap;
}

static void put(buf_t *b, const void *p, size_t n) {
    need(b, n);
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

/* --- SHA-1 of a short message (the key + GUID), for Sec-WebSocket-Accept --- */

static uint32_t rol(uint32_t x, int k) { return (x << k) | (x >> (32 - k)); }

static void sha1_short(const uint8_t *msg, size_t n, uint8_t digest[20]) {
    uint8_t padded[128] = {0}; /* n < 120: at most two blocks */
    memcpy(padded, msg, n);
    padded[n] = 0x80;
    size_t total = n + 9 <= 64 ? 64 : 128;
    uint64_t bits = (uint64_t)n * 8;
    for (int i = 0; i < 8; i++) padded[total - 1 - i] = (uint8_t)(bits >> (8 * i));
    uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    for (size_t block = 0; block < total; block += 64) {
        uint32_t w[80];
        for (int t = 0; t < 16; t++) {
            const uint8_t *q = padded + block + 4 * t;
            w[t] = (uint32_t)q[0] << 24 | (uint32_t)q[1] << 16 | (uint32_t)q[2] << 8 | q[3];
        }
        for (int t = 16; t < 80; t++) w[t] = rol(w[t - 3] ^ w[t - 8] ^ w[t - 14] ^ w[t - 16], 1);
        uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
        for (int t = 0; t < 80; t++) {
            uint32_t f, k;
            if (t < 20) { f = (b & c) | (~b & d); k = 0x5A827999; }
            else if (t < 40) { f = b ^ c ^ d; k = 0x6ED9EBA1; }
            else if (t < 60) { f = (b & c) | (b & d) | (c & d); k = 0x8F1BBCDC; }
            else { f = b ^ c ^ d; k = 0xCA62C1D6; }
            uint32_t next = rol(a, 5) + f + e + k + w[t];
            e = d; d = c; c = rol(b, 30); b = a; a = next;
        }
        h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e;
    }
    for (int i = 0; i < 20; i++) digest[i] = (uint8_t)(h[i / 4] >> (24 - 8 * (i % 4)));
}

static void to_base64(const uint8_t *p, size_t n, char *out) {
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) | (i + 2 < n ? p[i + 2] : 0);
        out[o++] = alphabet[v >> 18 & 63];
        out[o++] = alphabet[v >> 12 & 63];
        out[o++] = i + 1 < n ? alphabet[v >> 6 & 63] : '=';
        out[o++] = i + 2 < n ? alphabet[v & 63] : '=';
    }
    out[o] = 0;
}

/* --- the protocol --- */

/* 1: answered, 0: need more bytes, -1: bad request */
static int handshake(conn_t *c) {
    char *start = c->in.data + c->in.off;
    size_t avail = c->in.len - c->in.off;
    char *end = memmem(start, avail, "\r\n\r\n", 4);
    if (!end) return avail > 16384 ? -1 : 0;
    const char *key = NULL;
    size_t key_len = 0;
    for (char *line = start; line < end;) {
        char *eol = memmem(line, (size_t)(end + 2 - line), "\r\n", 2);
        if (eol - line > 18 && strncasecmp(line, "Sec-WebSocket-Key:", 18) == 0) {
            key = line + 18;
            while (*key == ' ' || *key == '\t') key++;
            key_len = (size_t)(eol - key);
            while (key_len && (key[key_len - 1] == ' ' || key[key_len - 1] == '\t')) key_len--;
        }
        line = eol + 2;
    }
    if (!key || key_len == 0 || key_len > 64) return -1;
    uint8_t material[64 + 36], digest[20];
    memcpy(material, key, key_len);
    memcpy(material + key_len, "258EAFA5-E914-47DA-95CA-C5AB0DC85B11", 36);
    sha1_short(material, key_len + 36, digest);
    char accept[32], answer[256];
    to_base64(digest, 20, accept);
    int n = snprintf(answer, sizeof answer,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: %s\r\n\r\n", accept);
    put(&c->out, answer, (size_t)n);
    c->in.off += (size_t)(end + 4 - start);
    c->upgraded = 1;
    return 1;
}

static void frame_head(buf_t *out, int fin_opcode, uint64_t n) {
    uint8_t h[10];
    size_t k = 2;
    h[0] = (uint8_t)fin_opcode;
    if (n < 126) h[1] = (uint8_t)n;
    else if (n < 65536) { h[1] = 126; h[2] = (uint8_t)(n >> 8); h[3] = (uint8_t)n; k = 4; }
    else { h[1] = 127; for (int i = 0; i < 8; i++) h[2 + i] = (uint8_t)(n >> (56 - 8 * i)); k = 10; }
    put(out, h, k);
}

/* Echo every complete frame in the input. 0: fine, -1: drop the connection. */
static int frames(conn_t *c) {
    for (;;) {
        uint8_t *p = (uint8_t *)c->in.data + c->in.off;
        size_t avail = c->in.len - c->in.off;
        if (avail < 2) return 0;
        int fin_opcode = p[0], opcode = p[0] & 0x0F;
        if (!(p[1] & 0x80)) return -1; /* client frames are masked */
        uint64_t n = p[1] & 0x7F;
        size_t head = 2;
        if (n == 126) {
            if (avail < 4) return 0;
            n = (uint64_t)p[2] << 8 | p[3];
            head = 4;
        } else if (n == 127) {
            if (avail < 10) return 0;
            n = 0;
            for (int i = 0; i < 8; i++) n = n << 8 | p[2 + i];
            head = 10;
        }
        if (n > MAX_PAYLOAD) return -1;
        if (avail < head + 4 + n) {
            need(&c->in, head + 4 + n - avail); /* room for the rest, read in one go */
            return 0;
        }
        const uint8_t *mask = p + head;
        uint8_t *payload = p + head + 4;
        uint32_t key32;
        memcpy(&key32, mask, 4);
        size_t i = 0;
        for (; i + 4 <= n; i += 4) { /* unmask a word at a time */
            uint32_t w;
            memcpy(&w, payload + i, 4);
            w ^= key32;
            memcpy(payload + i, &w, 4);
        }
        for (; i < n; i++) payload[i] ^= mask[i & 3];
        if (opcode == 0x9) {
            frame_head(&c->out, 0x8A, n);
            put(&c->out, payload, n);
        } else if (opcode == 0x8) {
            frame_head(&c->out, 0x88, n < 2 ? 0 : 2);
            put(&c->out, payload, n < 2 ? 0 : 2);
            c->closing = 1;
            c->in.off = c->in.len;
            return 0;
        } else if (opcode <= 0x2) {
            frame_head(&c->out, fin_opcode, n);
            put(&c->out, payload, n);
        } /* pongs and anything else: ignored */
        c->in.off += head + 4 + n;
    }
}

/* 0: all written or would block (EPOLLOUT wanted when out is not empty), -1: error */
static int flush_out(conn_t *c) {
    while (c->out.off < c->out.len) {
        ssize_t w = send(c->fd, c->out.data + c->out.off, c->out.len - c->out.off, MSG_NOSIGNAL);
        if (w < 0) return errno == EAGAIN ? 0 : -1;
        c->out.off += (size_t)w;
    }
    c->out.off = c->out.len = 0;
    return 0;
}

static void drop(int ep, conn_t *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->in.data);
    free(c->out.data);
    free(c);
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1";
    int port = 0;
    static const struct option opts[] = {{"host", 1, 0, 'h'}, {"port", 1, 0, 'p'}, {0, 0, 0, 0}};
    for (int o; (o = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
        if (o == 'h') host = optarg;
        else if (o == 'p') port = atoi(optarg);
        else return 2;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGPIPE, SIG_IGN);
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) { fprintf(stderr, "bad --host\n"); return 2; }
    if (bind(ls, (struct sockaddr *)&addr, sizeof addr) || listen(ls, 4096)) { perror("bind/listen"); return 2; }
    socklen_t alen = sizeof addr;
    getsockname(ls, (struct sockaddr *)&addr, &alen);
    printf("INFO {\"library\": \"C echo server\", \"version\": \"bench/load/echo_server.c\", \"loop\": \"epoll\", \"pid\": %d}\n",
           (int)getpid());
    printf("PORT %d\n", ntohs(addr.sin_port));
    fflush(stdout);

    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    struct epoll_event events[256];
    while (!stop) {
        int k = epoll_wait(ep, events, 256, 200);
        for (int e = 0; e < k; e++) {
            conn_t *c = events[e].data.ptr;
            if (!c) { /* the listening socket */
                int fd;
                while ((fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    conn_t *nc = calloc(1, sizeof *nc);
                    nc->fd = fd;
                    struct epoll_event cev = {.events = EPOLLIN, .data.ptr = nc};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
                }
                continue;
            }
            int bad = 0;
            if (events[e].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                for (;;) {
                    need(&c->in, READ_CHUNK);
                    size_t room = c->in.cap - c->in.len;
                    ssize_t r = recv(c->fd, c->in.data + c->in.len, room, 0);
                    if (r == 0 || (r < 0 && errno != EAGAIN)) { bad = 1; break; }
                    if (r < 0) break;
                    c->in.len += (size_t)r;
                    if (!c->upgraded) {
                        int h = handshake(c);
                        if (h < 0) { bad = 1; break; }
                        if (h == 0) continue;
                    }
                    if (frames(c) < 0) { bad = 1; break; }
                    if ((size_t)r < room) break; /* drained, most likely: skip the EAGAIN call (level-triggered) */
                }
            }
            if (!bad && flush_out(c) < 0) bad = 1;
            if (bad || (c->closing && c->out.len == 0)) { drop(ep, c); continue; }
            if (c->want_out != (c->out.len != 0)) {
                c->want_out = c->out.len != 0;
                struct epoll_event mod = {.events = EPOLLIN | (c->want_out ? EPOLLOUT : 0), .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &mod);
            }
        }
    }
    return 0;
}
