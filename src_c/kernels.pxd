# Cython declarations for the C kernels in fastws_kernels.c (see fastws_kernels.h).
from libc.stdint cimport uint8_t

cdef extern from "fastws_kernels.h" nogil:
    void fastws_mask(uint8_t *dst, const uint8_t *src, size_t len, const uint8_t *key)

    # Fields are private to the C code; declared so the struct can be embedded by value.
    ctypedef struct fastws_utf8_state:
        uint8_t need
        uint8_t lo
        uint8_t hi
        uint8_t failed

    void fastws_utf8_init(fastws_utf8_state *s)
    int fastws_utf8_feed(fastws_utf8_state *s, const uint8_t *p, size_t n)
    int fastws_utf8_complete(const fastws_utf8_state *s)
    int fastws_utf8_valid(const uint8_t *p, size_t n)
    const char *fastws_kernels_isa()
    const char *fastws_kernels_isa_name(int level)
    int fastws_kernels_isa_available(int level)
    int fastws_kernels_select(const char *name)
