/*
 * fastws_kernels.h - hot loops of fastws: WebSocket payload masking and
 * incremental UTF-8 validation.
 *
 * Every function runs one of several implementations (AVX2, SSSE3, SSE2 or
 * portable C), picked at run time from what the CPU supports on first use,
 * or forced with fastws_kernels_select(); fastws_kernels_isa() tells which.
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

/* Kernel families, weakest first; a CPU that runs one runs all before it:
     0 "scalar"  portable C,
     1 "sse2"    masking in SSE2, UTF-8 in portable C,
     2 "ssse3"   masking in SSE2, UTF-8 in SSSE3,
     3 "avx2"    both in AVX2.
   The kernels use the best family that this build and this CPU can run
   (chosen on first use) unless fastws_kernels_select() picked another. */

/* Name of family `level`, or NULL past the last one (to enumerate them). */
const char *fastws_kernels_isa_name(int level);

/* 1 if this build and this CPU can run family `level`. */
int fastws_kernels_isa_available(int level);

/* Use the family called `name` from now on; NULL or "" means the best one.
   Returns 0, -1 for an unknown name, -2 for a family this build or CPU
   cannot run (then nothing changes).  Call it before any kernel runs (at
   initialisation): it is not synchronised with kernels running in other
   threads.  The kernels call through pointers set here, at no extra cost. */
int fastws_kernels_select(const char *name);

/* Name of the family in use. */
const char *fastws_kernels_isa(void);

#ifdef __cplusplus
}
#endif

#endif /* FASTWS_KERNELS_H */
