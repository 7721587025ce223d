/*
 * fastws_kernels.c - WebSocket masking and UTF-8 validation kernels.
 *
 * Layout:
 *   1. portable C implementations (always built; the fallback everywhere),
 *   2. x86-64 SIMD implementations: SSE2 (baseline of x86-64, used without
 *      checks), SSSE3 and AVX2 (compiled per function with target attributes,
 *      so the rest of the file keeps the compiler's default ISA),
 *   3. run-time dispatch and the public API.
 */
#include "fastws_kernels.h"

#include <string.h>

#if defined(__x86_64__) || defined(_M_X64)
#define FASTWS_X86 1
#include <emmintrin.h>
/* Per-function target attributes and __builtin_cpu_supports are GCC/Clang
   features; other x86-64 compilers stay at SSE2. */
#if defined(__GNUC__) || defined(__clang__)
#define FASTWS_X86_DISPATCH 1
#include <immintrin.h>
#endif
#endif

#if defined(__GNUC__) || defined(__clang__)
#define FASTWS_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define FASTWS_UNLIKELY(x) (x)
#endif

/* ======================================================================
 * 1. Portable C
 * ==================================================================== */

/* The masking key as a 32-bit word, in memory order (endianness-neutral:
   it is only ever XORed with words loaded the same way). */
static uint32_t key_word(const uint8_t key[4])
{
    uint32_t k;
    memcpy(&k, key, 4);
    return k;
}

static void mask_scalar(uint8_t *dst, const uint8_t *src, size_t len, const uint8_t key[4])
{
    uint32_t k = key_word(key);
    uint64_t k64 = ((uint64_t)k << 32) | k;
    size_t i = 0;

    for (; i + 8 <= len; i += 8) {
        uint64_t v;
        memcpy(&v, src + i, 8);
        v ^= k64;
        memcpy(dst + i, &v, 8);
    }
    for (; i < len; i++)
        dst[i] = src[i] ^ key[i & 3];
}

/* Classify a UTF-8 lead byte.  Returns the number of continuation bytes it
   requires (0 for ASCII) and the allowed range of the first continuation
   byte, or -1 if the byte can never start a character.  The narrowed ranges
   exclude overlong forms (E0, F0), surrogates (ED) and code points above
   U+10FFFF (F4). */
static int utf8_lead(uint8_t c, uint8_t *lo, uint8_t *hi)
{
    *lo = 0x80;
    *hi = 0xBF;
    if (c < 0x80)
        return 0;
    if (c < 0xC2)           /* stray continuation byte, or overlong C0/C1 */
        return -1;
    if (c < 0xE0)
        return 1;
    if (c < 0xF0) {
        if (c == 0xE0)
            *lo = 0xA0;
        else if (c == 0xED)
            *hi = 0x9F;
        return 2;
    }
    if (c < 0xF5) {
        if (c == 0xF0)
            *lo = 0x90;
        else if (c == 0xF4)
            *hi = 0x8F;
        return 3;
    }
    return -1;
}

/* Byte-at-a-time automaton used at chunk edges (at most a few bytes per
   feed).  Returns 0 at the first byte that cannot continue valid UTF-8. */
static int utf8_dfa_run(fastws_utf8_state *s, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint8_t c = p[i];
        if (s->need == 0) {
            int need = utf8_lead(c, &s->lo, &s->hi);
            if (need < 0)
                return 0;
            s->need = (uint8_t)need;
        } else {
            if (c < s->lo || c > s->hi)
                return 0;
            s->need--;
            s->lo = 0x80;
            s->hi = 0xBF;
        }
    }
    return 1;
}

static int ascii_word_pair(const uint8_t *p)
{
    uint64_t a, b;
    memcpy(&a, p, 8);
    memcpy(&b, p + 8, 8);
    return ((a | b) & UINT64_C(0x8080808080808080)) == 0;
}

/* Complete validation, one character at a time with an ASCII skip. */
static int utf8_valid_scalar(const uint8_t *p, size_t n)
{
    size_t i = 0;

    while (i < n) {
        uint8_t lo, hi;
        int need;

        if (p[i] < 0x80) {
            i++;
            while (i + 16 <= n && ascii_word_pair(p + i))
                i += 16;
            continue;
        }
        need = utf8_lead(p[i], &lo, &hi);
        if (need < 0 || n - i <= (size_t)need)
            return 0;
        if (p[i + 1] < lo || p[i + 1] > hi)
            return 0;
        for (int k = 2; k <= need; k++)
            if ((p[i + k] & 0xC0) != 0x80)
                return 0;
        i += (size_t)need + 1;
    }
    return 1;
}

/* ======================================================================
 * 2. x86-64 SIMD
 * ==================================================================== */
#ifdef FASTWS_X86

/* Key vector for a stream position p with p % 4 == phase: the 32-bit key
   rotated so that its first byte is key[phase] (x86 is little-endian). */
static uint32_t key_at_phase(uint32_t k, size_t phase)
{
    unsigned r = (unsigned)(phase & 3) * 8;
    return r ? (k >> r) | (k << (32 - r)) : k;
}

/*
 * Masking strategy shared by the SSE2 and AVX2 versions (len >= vector width W):
 * the first and the last W bytes are computed up front from the original
 * source, the middle is done with stores aligned on dst, and the edge
 * vectors are stored last where the middle did not reach.  Edge and middle
 * stores may overlap, but every
 * value is derived from unmodified source bytes, so this is also correct in
 * place, and it avoids both a byte loop and split stores.
 */
static void mask_sse2(uint8_t *dst, const uint8_t *src, size_t len, const uint8_t key[4])
{
    if (len < 16) {
        mask_scalar(dst, src, len, key);
        return;
    }
    uint32_t k = key_word(key);
    size_t last = len - 16;
    __m128i head = _mm_xor_si128(_mm_loadu_si128((const __m128i *)src),
                                 _mm_set1_epi32((int)k));
    __m128i tail = _mm_xor_si128(_mm_loadu_si128((const __m128i *)(src + last)),
                                 _mm_set1_epi32((int)key_at_phase(k, last)));
    size_t dst_align = (size_t)(-(uintptr_t)dst & 15), i = dst_align;
    __m128i vk = _mm_set1_epi32((int)key_at_phase(k, i));

    for (; i + 64 <= len; i += 64) {
        __m128i a = _mm_loadu_si128((const __m128i *)(src + i));
        __m128i b = _mm_loadu_si128((const __m128i *)(src + i + 16));
        __m128i c = _mm_loadu_si128((const __m128i *)(src + i + 32));
        __m128i d = _mm_loadu_si128((const __m128i *)(src + i + 48));
        _mm_store_si128((__m128i *)(dst + i), _mm_xor_si128(a, vk));
        _mm_store_si128((__m128i *)(dst + i + 16), _mm_xor_si128(b, vk));
        _mm_store_si128((__m128i *)(dst + i + 32), _mm_xor_si128(c, vk));
        _mm_store_si128((__m128i *)(dst + i + 48), _mm_xor_si128(d, vk));
    }
    for (; i + 16 <= len; i += 16)
        _mm_store_si128((__m128i *)(dst + i),
                        _mm_xor_si128(_mm_loadu_si128((const __m128i *)(src + i)), vk));
    if (dst_align)
        _mm_storeu_si128((__m128i *)dst, head);
    if (i < len)
        _mm_storeu_si128((__m128i *)(dst + last), tail);
}

#ifdef FASTWS_X86_DISPATCH

__attribute__((target("avx2")))
static void mask_avx2(uint8_t *dst, const uint8_t *src, size_t len, const uint8_t key[4])
{
    if (len < 32) {
        mask_sse2(dst, src, len, key);
        return;
    }
    uint32_t k = key_word(key);
    size_t last = len - 32;
    __m256i head = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)src),
                                    _mm256_set1_epi32((int)k));
    __m256i tail = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(src + last)),
                                    _mm256_set1_epi32((int)key_at_phase(k, last)));
    size_t dst_align = (size_t)(-(uintptr_t)dst & 31), i = dst_align;
    __m256i vk = _mm256_set1_epi32((int)key_at_phase(k, i));

    for (; i + 128 <= len; i += 128) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(src + i));
        __m256i b = _mm256_loadu_si256((const __m256i *)(src + i + 32));
        __m256i c = _mm256_loadu_si256((const __m256i *)(src + i + 64));
        __m256i d = _mm256_loadu_si256((const __m256i *)(src + i + 96));
        _mm256_store_si256((__m256i *)(dst + i), _mm256_xor_si256(a, vk));
        _mm256_store_si256((__m256i *)(dst + i + 32), _mm256_xor_si256(b, vk));
        _mm256_store_si256((__m256i *)(dst + i + 64), _mm256_xor_si256(c, vk));
        _mm256_store_si256((__m256i *)(dst + i + 96), _mm256_xor_si256(d, vk));
    }
    for (; i + 32 <= len; i += 32)
        _mm256_store_si256((__m256i *)(dst + i),
                           _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(src + i)), vk));
    if (dst_align)
        _mm256_storeu_si256((__m256i *)dst, head);
    if (i < len)
        _mm256_storeu_si256((__m256i *)(dst + last), tail);
}

/* 1 if the n < 64 bytes at p are all ASCII (word-wise; overlapping words
   are fine for an OR).  Lets the vector validators skip their padded path
   for the common short ASCII message. */
static int ascii_short(const uint8_t *p, size_t n)
{
    uint64_t acc = 0, w;

    if (n < 8) {
        for (size_t i = 0; i < n; i++)
            acc |= p[i];
        return acc < 0x80;
    }
    for (size_t i = 0; i + 8 <= n; i += 8) {
        memcpy(&w, p + i, 8);
        acc |= w;
    }
    memcpy(&w, p + n - 8, 8);
    acc |= w;
    return (acc & UINT64_C(0x8080808080808080)) == 0;
}

/*
 * UTF-8 validation after Keiser & Lemire, "Validating UTF-8 in less than one
 * instruction per byte" (2021).  For each byte position we look at the byte
 * before it (prev1) and at the current byte; every two-byte error pattern is
 * a product of three nibble classes, so one table lookup per nibble
 * (prev1 high, prev1 low, current high) and two ANDs give one error bit per
 * pattern:
 */
#define U8_TOO_SHORT  0x01 /* lead byte followed by a non-continuation      */
#define U8_TOO_LONG   0x02 /* ASCII followed by a continuation              */
#define U8_OVERLONG3  0x04 /* E0 80..9F                                     */
#define U8_TOO_LARGE  0x08 /* F4 90..BF, F5..FF 90..BF                      */
#define U8_SURROGATE  0x10 /* ED A0..BF                                     */
#define U8_OVERLONG2  0x20 /* C0/C1 continuation                           */
#define U8_F_80       0x40 /* F0 80 (overlong) and F5..FF 80                */
#define U8_TWO_CONTS  0x80 /* continuation after continuation (see below)   */
/*
 * A continuation after a continuation is legal only as the 3rd byte of a
 * 3/4-byte sequence or the 4th byte of a 4-byte one, i.e. exactly when
 * prev2 >= E0 or prev3 >= F0.  That condition is computed separately and
 * XORed with TWO_CONTS, which also catches a missing 3rd/4th byte.
 */
#define U8_CONT_ANY (U8_TOO_LONG | U8_OVERLONG2 | U8_TWO_CONTS)

/* Indexed by the high nibble of prev1. */
#define U8_PREV1_HIGH                                                       \
    U8_TOO_LONG, U8_TOO_LONG, U8_TOO_LONG, U8_TOO_LONG,                     \
    U8_TOO_LONG, U8_TOO_LONG, U8_TOO_LONG, U8_TOO_LONG,                     \
    U8_TWO_CONTS, U8_TWO_CONTS, U8_TWO_CONTS, U8_TWO_CONTS,                 \
    U8_TOO_SHORT | U8_OVERLONG2,                                            \
    U8_TOO_SHORT,                                                           \
    U8_TOO_SHORT | U8_OVERLONG3 | U8_SURROGATE,                             \
    U8_TOO_SHORT | U8_TOO_LARGE | U8_F_80

/* Indexed by the low nibble of prev1 (the three "any lead" classes pass). */
#define U8_ALL (U8_TOO_SHORT | U8_TOO_LONG | U8_TWO_CONTS)
#define U8_PREV1_LOW                                                        \
    U8_ALL | U8_OVERLONG3 | U8_OVERLONG2 | U8_F_80, /* 0: C0 E0 F0 */       \
    U8_ALL | U8_OVERLONG2,                          /* 1: C1       */       \
    U8_ALL, U8_ALL,                                                         \
    U8_ALL | U8_TOO_LARGE,                          /* 4: F4       */       \
    U8_ALL | U8_TOO_LARGE | U8_F_80,                /* 5..F: F5..FF */      \
    U8_ALL | U8_TOO_LARGE | U8_F_80,                                        \
    U8_ALL | U8_TOO_LARGE | U8_F_80,                                        \
    U8_ALL | U8_TOO_LARGE | U8_F_80,                                        \
    U8_ALL | U8_TOO_LARGE | U8_F_80,                                        \
    U8_ALL | U8_TOO_LARGE | U8_F_80,                                        \
    U8_ALL | U8_TOO_LARGE | U8_F_80,                                        \
    U8_ALL | U8_TOO_LARGE | U8_F_80,                                        \
    U8_ALL | U8_TOO_LARGE | U8_F_80 | U8_SURROGATE, /* D: ED too */         \
    U8_ALL | U8_TOO_LARGE | U8_F_80,                                        \
    U8_ALL | U8_TOO_LARGE | U8_F_80

/* Indexed by the high nibble of the current byte. */
#define U8_CUR_HIGH                                                         \
    U8_TOO_SHORT, U8_TOO_SHORT, U8_TOO_SHORT, U8_TOO_SHORT,                 \
    U8_TOO_SHORT, U8_TOO_SHORT, U8_TOO_SHORT, U8_TOO_SHORT,                 \
    U8_CONT_ANY | U8_OVERLONG3 | U8_F_80,           /* 80..8F */            \
    U8_CONT_ANY | U8_OVERLONG3 | U8_TOO_LARGE,      /* 90..9F */            \
    U8_CONT_ANY | U8_SURROGATE | U8_TOO_LARGE,      /* A0..AF */            \
    U8_CONT_ANY | U8_SURROGATE | U8_TOO_LARGE,      /* B0..BF */            \
    U8_TOO_SHORT, U8_TOO_SHORT, U8_TOO_SHORT, U8_TOO_SHORT

#define U8_X8(x) x, x, x, x, x, x, x, x
#define U8_X32(x) U8_X8(x), U8_X8(x), U8_X8(x), U8_X8(x)

/* prev2 >= E0 or prev3 >= F0 <=> saturating subtraction leaves bit 7 set. */
#define U8_THIRD_SUB  (0xE0 - 0x80)
#define U8_FOURTH_SUB (0xF0 - 0x80)

/* Constants as 32-byte arrays (the 16-byte code uses the first half).  Kept
   in memory on purpose: the AVX2 loop needs more registers than x86-64 has,
   and with memory constants the compiler folds them into the instructions
   as load operands instead of re-creating them every iteration. */
static const uint8_t u8_prev1_high[32] = {U8_PREV1_HIGH, U8_PREV1_HIGH};
static const uint8_t u8_prev1_low[32] = {U8_PREV1_LOW, U8_PREV1_LOW};
static const uint8_t u8_cur_high[32] = {U8_CUR_HIGH, U8_CUR_HIGH};
static const uint8_t u8_nibble[32] = {U8_X32(0x0F)};
static const uint8_t u8_third_sub[32] = {U8_X32(U8_THIRD_SUB)};
static const uint8_t u8_fourth_sub[32] = {U8_X32(U8_FOURTH_SUB)};
static const uint8_t u8_bit7[32] = {U8_X32(0x80)};
/* Saturating subtraction of this from the last block leaves a nonzero byte
   iff one of its last three bytes is a lead byte needing more bytes than
   remain in the block (>= C0 in the last, >= E0 in the second to last,
   >= F0 in the third to last position). */
static const uint8_t u8_incomplete_limit[32] = {
    U8_X8(0xFF), U8_X8(0xFF), U8_X8(0xFF), 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xEF, 0xDF, 0xBF};
static const uint8_t u8_incomplete_limit16[16] = {
    U8_X8(0xFF), 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xEF, 0xDF, 0xBF};

#define LOAD16(a) _mm_loadu_si128((const __m128i *)(a))
#define LOAD32(a) _mm256_loadu_si256((const __m256i *)(a))

/* SSSE3: 16-byte blocks. */
__attribute__((target("ssse3")))
static inline __m128i u8_check16(__m128i cur, __m128i prev)
{
    const __m128i nib = LOAD16(u8_nibble);
    __m128i prev1 = _mm_alignr_epi8(cur, prev, 15);
    __m128i prev2 = _mm_alignr_epi8(cur, prev, 14);
    __m128i prev3 = _mm_alignr_epi8(cur, prev, 13);
    __m128i e = _mm_shuffle_epi8(LOAD16(u8_prev1_high), _mm_and_si128(_mm_srli_epi16(prev1, 4), nib));
    e = _mm_and_si128(e, _mm_shuffle_epi8(LOAD16(u8_prev1_low), _mm_and_si128(prev1, nib)));
    e = _mm_and_si128(e, _mm_shuffle_epi8(LOAD16(u8_cur_high), _mm_and_si128(_mm_srli_epi16(cur, 4), nib)));
    __m128i need_cont = _mm_or_si128(_mm_subs_epu8(prev2, LOAD16(u8_third_sub)),
                                     _mm_subs_epu8(prev3, LOAD16(u8_fourth_sub)));
    return _mm_xor_si128(e, _mm_and_si128(need_cont, LOAD16(u8_bit7)));
}

__attribute__((target("ssse3")))
static int utf8_valid_ssse3(const uint8_t *p, size_t n)
{
    __m128i err = _mm_setzero_si128(), prev = err, prev_inc = err;
    size_t i = 0;

    for (; i + 64 <= n; i += 64) {
        __m128i a = LOAD16(p + i);
        __m128i b = LOAD16(p + i + 16);
        __m128i c = LOAD16(p + i + 32);
        __m128i d = LOAD16(p + i + 48);
        __m128i any = _mm_or_si128(_mm_or_si128(a, b), _mm_or_si128(c, d));
        if (_mm_movemask_epi8(any) == 0) {
            /* ASCII: only a sequence left open by the previous block can fail. */
            err = _mm_or_si128(err, prev_inc);
            prev_inc = _mm_setzero_si128();
        } else {
            err = _mm_or_si128(err, u8_check16(a, prev));
            err = _mm_or_si128(err, u8_check16(b, a));
            err = _mm_or_si128(err, u8_check16(c, b));
            err = _mm_or_si128(err, u8_check16(d, c));
            prev_inc = _mm_subs_epu8(d, LOAD16(u8_incomplete_limit16));
        }
        prev = d;
    }
    if (n < 64) {
        if (ascii_short(p, n))
            return 1;
        /* Zero padding is ASCII, so a sequence cut by the end of the input
           shows up as an error in the padded blocks themselves. */
        uint8_t buf[64] = {0};
        memcpy(buf, p, n);
        for (size_t j = 0; j < 64; j += 16) {
            __m128i a = LOAD16(buf + j);
            err = _mm_or_si128(err, u8_check16(a, prev));
            prev = a;
        }
    } else if (i < n) {
        /* Whole blocks while they fit, then the last 16 bytes of the input,
           which may overlap bytes already checked: a byte checked twice,
           each time with its true predecessors, gives the same verdict. */
        for (; i + 16 < n; i += 16) {
            __m128i a = LOAD16(p + i);
            err = _mm_or_si128(err, u8_check16(a, prev));
            prev = a;
        }
        __m128i last = LOAD16(p + n - 16);
        err = _mm_or_si128(err, u8_check16(last, LOAD16(p + n - 32)));
        err = _mm_or_si128(err, _mm_subs_epu8(last, LOAD16(u8_incomplete_limit16)));
    } else {
        err = _mm_or_si128(err, prev_inc);
    }
    return _mm_movemask_epi8(_mm_cmpeq_epi8(err, _mm_setzero_si128())) == 0xFFFF;
}

/* AVX2: 32-byte blocks.  prev1..3 need bytes from the previous block's high
   lane; the permute builds [prev.high, cur.low] for the lane-wise alignr. */
__attribute__((target("avx2")))
static inline __m256i u8_check32(__m256i cur, __m256i prev)
{
    const __m256i nib = LOAD32(u8_nibble);
    __m256i shifted = _mm256_permute2x128_si256(prev, cur, 0x21);
    __m256i prev1 = _mm256_alignr_epi8(cur, shifted, 15);
    __m256i prev2 = _mm256_alignr_epi8(cur, shifted, 14);
    __m256i prev3 = _mm256_alignr_epi8(cur, shifted, 13);
    __m256i e = _mm256_shuffle_epi8(LOAD32(u8_prev1_high), _mm256_and_si256(_mm256_srli_epi16(prev1, 4), nib));
    e = _mm256_and_si256(e, _mm256_shuffle_epi8(LOAD32(u8_prev1_low), _mm256_and_si256(prev1, nib)));
    e = _mm256_and_si256(e, _mm256_shuffle_epi8(LOAD32(u8_cur_high), _mm256_and_si256(_mm256_srli_epi16(cur, 4), nib)));
    __m256i need_cont = _mm256_or_si256(_mm256_subs_epu8(prev2, LOAD32(u8_third_sub)),
                                        _mm256_subs_epu8(prev3, LOAD32(u8_fourth_sub)));
    return _mm256_xor_si256(e, _mm256_and_si256(need_cont, LOAD32(u8_bit7)));
}

__attribute__((target("avx2")))
static int utf8_valid_avx2(const uint8_t *p, size_t n)
{
    __m256i err = _mm256_setzero_si256(), prev = err, prev_inc = err;
    size_t i = 0;

    for (; i + 64 <= n; i += 64) {
        __m256i a = LOAD32(p + i);
        __m256i b = LOAD32(p + i + 32);
        if (_mm256_movemask_epi8(_mm256_or_si256(a, b)) == 0) {
            /* ASCII: only a sequence left open by the previous block can fail. */
            err = _mm256_or_si256(err, prev_inc);
            prev_inc = _mm256_setzero_si256();
        } else {
            err = _mm256_or_si256(err, u8_check32(a, prev));
            err = _mm256_or_si256(err, u8_check32(b, a));
            prev_inc = _mm256_subs_epu8(b, LOAD32(u8_incomplete_limit));
        }
        prev = b;
    }
    if (n < 64) {
        if (ascii_short(p, n))
            return 1;
        /* Zero padding is ASCII, so a sequence cut by the end of the input
           shows up as an error in the padded blocks themselves. */
        uint8_t buf[64] = {0};
        memcpy(buf, p, n);
        __m256i a = LOAD32(buf);
        err = _mm256_or_si256(u8_check32(a, prev), u8_check32(LOAD32(buf + 32), a));
    } else if (i < n) {
        /* One more whole block if it fits, then the last 32 bytes of the
           input, which may overlap bytes already checked: a byte checked
           twice, each time with its true predecessors, gives the same verdict. */
        if (i + 32 < n)
            err = _mm256_or_si256(err, u8_check32(LOAD32(p + i), prev));
        __m256i last = LOAD32(p + n - 32);
        err = _mm256_or_si256(err, u8_check32(last, LOAD32(p + n - 64)));
        err = _mm256_or_si256(err, _mm256_subs_epu8(last, LOAD32(u8_incomplete_limit)));
    } else {
        err = _mm256_or_si256(err, prev_inc);
    }
    return _mm256_testz_si256(err, err);
}

#endif /* FASTWS_X86_DISPATCH */
#endif /* FASTWS_X86 */

/* ======================================================================
 * 3. Dispatch and public API
 * ==================================================================== */

typedef void (*mask_fn)(uint8_t *, const uint8_t *, size_t, const uint8_t *);
typedef int (*valid_fn)(const uint8_t *, size_t);

/* Families, weakest first: a CPU that runs one runs every one before it. */
enum { ISA_SCALAR, ISA_SSE2, ISA_SSSE3, ISA_AVX2, ISA_COUNT };
static const char *const isa_names[ISA_COUNT] = {"scalar", "sse2", "ssse3", "avx2"};

static void mask_first(uint8_t *dst, const uint8_t *src, size_t len, const uint8_t key[4]);
static int valid_first(const uint8_t *p, size_t n);

/* Set by fastws_kernels_select(), or on first use to the best family.
   Threads racing through a first call all store the same values (aligned
   pointer/int stores), so no lock is needed. */
static mask_fn mask_impl = mask_first;
static valid_fn valid_impl = valid_first;
static int isa_level = -1;

/* The most capable family that both this build and this CPU can run. */
static int isa_supported(void)
{
#if defined(FASTWS_X86_DISPATCH)
    __builtin_cpu_init();
    /* libgcc/compiler-rt also check that the OS saves the YMM registers. */
    if (__builtin_cpu_supports("avx2"))
        return ISA_AVX2;
    if (__builtin_cpu_supports("ssse3"))
        return ISA_SSSE3;
    return ISA_SSE2;
#elif defined(FASTWS_X86)
    return ISA_SSE2;
#else
    return ISA_SCALAR;
#endif
}

/* level must be <= isa_supported(). */
static void select_isa(int level)
{
    switch (level) {
#ifdef FASTWS_X86_DISPATCH
    case ISA_AVX2:
        mask_impl = mask_avx2;
        valid_impl = utf8_valid_avx2;
        break;
    case ISA_SSSE3:
        mask_impl = mask_sse2;
        valid_impl = utf8_valid_ssse3;
        break;
#endif
#ifdef FASTWS_X86
    case ISA_SSE2:
        mask_impl = mask_sse2;
        valid_impl = utf8_valid_scalar;
        break;
#endif
    default:
        level = ISA_SCALAR;
        mask_impl = mask_scalar;
        valid_impl = utf8_valid_scalar;
        break;
    }
    isa_level = level;
}

static void mask_first(uint8_t *dst, const uint8_t *src, size_t len, const uint8_t key[4])
{
    select_isa(isa_supported());
    mask_impl(dst, src, len, key);
}

static int valid_first(const uint8_t *p, size_t n)
{
    select_isa(isa_supported());
    return valid_impl(p, n);
}

const char *fastws_kernels_isa(void)
{
    if (isa_level < 0)
        select_isa(isa_supported());
    return isa_names[isa_level];
}

const char *fastws_kernels_isa_name(int level)
{
    return level >= 0 && level < ISA_COUNT ? isa_names[level] : NULL;
}

int fastws_kernels_isa_available(int level)
{
    return level >= 0 && level <= isa_supported();
}

int fastws_kernels_select(const char *name)
{
    if (name == NULL || name[0] == '\0') {
        select_isa(isa_supported());
        return 0;
    }
    for (int level = 0; level < ISA_COUNT; level++) {
        if (strcmp(name, isa_names[level]) == 0) {
            if (!fastws_kernels_isa_available(level))
                return -2;
            select_isa(level);
            return 0;
        }
    }
    return -1;
}

void fastws_mask(uint8_t *dst, const uint8_t *src, size_t len, const uint8_t key[4])
{
    mask_impl(dst, src, len, key);
}

int fastws_utf8_valid(const uint8_t *p, size_t n)
{
    return valid_impl(p, n);
}

void fastws_utf8_init(fastws_utf8_state *s)
{
    s->need = 0;
    s->lo = 0x80;
    s->hi = 0xBF;
    s->failed = 0;
}

/* Length of the longest prefix of p[0:n] that does not end inside a
   sequence: drops a trailing lead byte that has fewer bytes after it than
   it needs (whether or not those bytes are valid continuations). */
static size_t utf8_boundary(const uint8_t *p, size_t n)
{
    if (n >= 1 && p[n - 1] >= 0xC0)
        return n - 1;
    if (n >= 2 && p[n - 2] >= 0xE0)
        return n - 2;
    if (n >= 3 && p[n - 3] >= 0xF0)
        return n - 3;
    return n;
}

/*
 * The automaton finishes a sequence left open by the previous chunk, the
 * vector validator checks the largest middle part that starts and ends on
 * character boundaries, and the automaton takes the (at most 3-byte) cut
 * sequence at the end, so an impossible prefix there fails right away.
 * If the input is not valid the cut may land mid-sequence, but then one of
 * the two parts is invalid as well, so the verdict is unchanged.
 */
int fastws_utf8_feed(fastws_utf8_state *s, const uint8_t *p, size_t n)
{
    if (s->failed)
        return 0;
    if (s->need) {
        size_t k = n < s->need ? n : s->need;
        if (!utf8_dfa_run(s, p, k))
            goto fail;
        p += k;
        n -= k;
        if (s->need)
            return 1;
    }
    size_t m = utf8_boundary(p, n);
    if (m && !valid_impl(p, m))
        goto fail;
    if (!utf8_dfa_run(s, p + m, n - m))
        goto fail;
    return 1;
fail:
    s->failed = 1;
    return 0;
}

int fastws_utf8_complete(const fastws_utf8_state *s)
{
    return !s->failed && s->need == 0;
}
