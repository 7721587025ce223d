/*
 * fastws_kernels.h - hot loops of fastws: WebSocket payload masking and
 * incremental UTF-8 validation.
 *
 * Every function picks its implementation (AVX2, SSSE3, SSE2 or portable C)
 * at run time on first use; fastws_kernels_isa() tells which one was chosen.
 */
#ifndef FASTWS_KERNELS_H
#define FASTWS_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* XOR src with the 4-byte key into dst: dst[i] = src[i] ^ key[i % 4].
   dst == src (in place) is allowed; otherwise the regions must not overlap.
   Callers that resume in the middle of a frame pass a rotated key. */
void fastws_mask(uint8_t *dst, const uint8_t *src, size_t len, const uint8_t key[4]);

/* Incremental UTF-8 validation (RFC 3629: no overlong forms, no surrogates
   U+D800..U+DFFF, nothing above U+10FFFF).  Treat the fields as private;
   the struct is public only so that callers can embed it by value. */
typedef struct {
    uint8_t need;   /* continuation bytes still expected (0: at a character boundary) */
    uint8_t lo;     /* allowed range of the next byte while need > 0 */
    uint8_t hi;
    uint8_t failed; /* sticky: set at the first invalid byte */
} fastws_utf8_state;

void fastws_utf8_init(fastws_utf8_state *s);

/* Feed the next chunk.  Returns 1 if everything fed so far is a prefix of
   some valid UTF-8 string, 0 as soon as it is not (an impossible incomplete
   sequence at the end of the chunk already fails).  Failure is sticky. */
int fastws_utf8_feed(fastws_utf8_state *s, const uint8_t *p, size_t n);

/* 1 if not failed and no incomplete sequence is pending (the message may end here). */
int fastws_utf8_complete(const fastws_utf8_state *s);

/* One-shot: 1 if p[0:n] is complete, valid UTF-8. */
int fastws_utf8_valid(const uint8_t *p, size_t n);

/* Instruction set the dispatchers picked: "avx2", "ssse3" (UTF-8 in SSSE3,
   masking in SSE2), "sse2" (masking in SSE2, UTF-8 in portable C) or "scalar". */
const char *fastws_kernels_isa(void);

#ifdef FASTWS_KERNELS_TEST
/* Test builds only: force a less capable implementation ("avx2", "ssse3",
   "sse2", "scalar").  Returns 0 if the CPU or the build cannot run it. */
int fastws_kernels_force_isa(const char *name);
#endif

#ifdef __cplusplus
}
#endif

#endif /* FASTWS_KERNELS_H */
