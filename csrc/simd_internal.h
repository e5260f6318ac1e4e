/* simd_internal.h: what dispatch.c and the per-ISA files share (not part of the public interface). */
#ifndef CHORDLAB_SIMD_INTERNAL_H
#define CHORDLAB_SIMD_INTERNAL_H

#include <math.h>
#include <stdint.h>

#include "chordlab_simd.h"

/* e^x as in Cephes' expf: x = n ln2 + f with |f| <= ln2/2 (ln2 split in two for an exact product),
 * e^f = 1 + f + f^2 P(f), e^x = 2^n e^f. Max relative error below one float32 epsilon (1.19e-7) on
 * [-87.3, 88.0] (tested in tests/test_simd.py); 0 below -87.3 (no subnormals), +inf above 88.72. */
#define CL_EXP_HI 88.0f
#define CL_EXP_LO (-87.33654475f)
#define CL_EXP_OVERFLOW 88.72283906f
#define CL_EXP_SCALEF_HI 88.8f /* AVX-512: past the overflow, so that vscalefps gives +inf */
#define CL_LOG2E 1.44269504088896341f
#define CL_LN2_HI 0.693359375f
#define CL_LN2_LO (-2.12194440e-4f)
#define CL_EXP_P0 1.9875691500e-4f
#define CL_EXP_P1 1.3981999507e-3f
#define CL_EXP_P2 8.3334519073e-3f
#define CL_EXP_P3 4.1665795894e-2f
#define CL_EXP_P4 1.6666665459e-1f
#define CL_EXP_P5 5.0000001201e-1f

/* 2^x for the online softmax, whose scores carry log2(e) in their scale (FlashAttention's softmax_scale_log2), so
 * that the argument needs no reduction by ln 2: x = n + f with n = round(x), |f| <= 1/2, 2^f by a degree-6
 * polynomial (relative error 2e-9 before float32 rounding), 2^n exactly. Its domain is the softmax's: x <= 0,
 * -inf and NaN (x = s - max, never positive); 0 below -126.5 (AVX-512: subnormals down to -149), NaN stays NaN. */
#define CL_LN2 0.693147180559945309f
#define CL_EXP2_P0 1.535336188319500e-4f
#define CL_EXP2_P1 1.339887440266574e-3f
#define CL_EXP2_P2 9.618437357674640e-3f
#define CL_EXP2_P3 5.550332471162809e-2f
#define CL_EXP2_P4 2.402264791363012e-1f
#define CL_EXP2_P5 6.931472028550421e-1f

static inline int64_t cl_round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
/* The query tile of a work item (items count query tiles within a head): the last tile first. Under a causal mask it
 * sees the most keys, so threads that take items in order (an atomic counter) start with the heavy ones and are left
 * with light ones at the end: they finish together (longest first). Results do not depend on the order. */
static inline int64_t cl_query_tile(int64_t item, int64_t n_qt) { return n_qt - 1 - item % n_qt; }

/* One work item = one (batch, query head, query tile). Scratch is one thread's private memory. */
typedef struct {
    float *qt;     /* [D][bq_pad]  the query tile, transposed and scaled */
    float *st;     /* [block_k][bq_pad] scores, then probabilities, keys-major */
    float *acc;    /* [bq_pad][d_pad] unnormalized output */
    float *vpad;   /* [block_k][d_pad] a value tile padded to whole vectors (D % lanes != 0) or converted (16-bit) */
    float *kconv;  /* [block_k][D] a key tile converted from 16 bits */
    float *m, *l, *alpha; /* [bq_pad] running max, running sum, rescale factor */
} cl_scratch;

/* The backward's per-thread scratch (ldq = block_q rounded up to lanes, dp = D rounded up to lanes). */
typedef struct {
    float *qt, *dot; /* [D][ldq]  the query tile transposed and scaled; the dO tile transposed */
    float *st, *ds;  /* [block_k][ldq] S then P; dP then dS (keys-major) */
    float *dcap;     /* [block_k][ldq] 1 - tanh²(s / softcap): the softcap's derivative (with a softcap) */
    float *rows;     /* [ldq][dp] a Q or dO tile padded to whole vectors */
    float *kpad;     /* [block_k][dp] a K tile padded */
    float *acc, *acc2; /* [max(ldq, block_k)][dp] dQ, or dK and dV of a key tile */
    float *lse, *drow, *ones; /* [max(ldq, block_k)] per query lane; ones for the micro-kernel's alpha */
} cl_bscratch;

/* float16 and bfloat16 bits to float32, one value (the tails of vector loads, and the scalar path). */
static inline float cl_bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } x = {(uint32_t)h << 16};
    return x.f;
}
static inline float cl_f16_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    union { uint32_t u; float f; } x;
    if (exp == 0x1f) {
        x.u = sign | 0x7f800000u | (man << 13); /* inf, NaN */
    } else if (exp == 0) {
        x.f = (float)man * 5.9604644775390625e-8f; /* subnormal: man * 2^-24 */
        x.u |= sign;
    } else {
        x.u = sign | ((exp + 112) << 23) | (man << 13);
    }
    return x.f;
}

/* Element i of a q/k/v array of type dtype (CL_KV_*), as float32. */
static inline float cl_elem(const void *p, int dtype, int64_t i) {
    if (dtype == 1) return cl_f16_to_f32(((const uint16_t *)p)[i]);
    if (dtype == 2) return cl_bf16_to_f32(((const uint16_t *)p)[i]);
    return ((const float *)p)[i];
}

typedef struct {
    const char *name;
    int lanes;
    float (*dot)(const float *, const float *, int64_t);
    void (*axpy)(float, const float *, float *, int64_t);
    void (*scale)(float *, float, int64_t);
    float (*max)(const float *, int64_t);
    void (*exp)(const float *, float *, int64_t);
    void (*exp2)(const float *, float *, int64_t); /* the softmax's 2^x, for x <= 0 */
    void (*attention_item)(const cl_attention_args *, int64_t item, cl_scratch *);
    void (*attention_item_rowwise)(const cl_attention_args *, int64_t item, cl_scratch *);
    void (*backward_dkv_item)(const cl_attention_args *, const cl_backward_args *, int64_t item, cl_bscratch *);
    void (*backward_dq_item)(const cl_attention_args *, const cl_backward_args *, int64_t item, cl_bscratch *);
    void (*decode_item)(const cl_decode_args *, int64_t item, float *scratch, float *part);
    double (*sum)(const float *x, int64_t n); /* the bandwidth probe's read */
} cl_isa_impl;

/* The decode kernel's chunk of keys and its per-thread scratch (floats), for R = G * Lq query rows. */
#define CL_DEC_CHUNK 32
static inline int64_t cl_decode_scratch_floats(int lanes, int64_t D, int64_t R) {
    const int64_t dp = cl_round_up(D, lanes);
    return 2 * R * dp + 2 * R + R * CL_DEC_CHUNK + 2 * CL_DEC_CHUNK * dp + 64;
}

/* Defined by each ISA file that is compiled for this architecture. */
extern const cl_isa_impl cl_impl_scalar;
#if defined(__x86_64__) || defined(__i386__)
extern const cl_isa_impl cl_impl_avx2;
extern const cl_isa_impl cl_impl_avx512;
#endif
#if defined(__aarch64__)
extern const cl_isa_impl cl_impl_neon;
#endif
/* The forward for bfloat16 inputs with bfloat16 dot products (chapter 12): isa_avx512bf16.c (vdpbf16ps) on x86,
 * isa_neonbf16.c (BFDOT) on aarch64, where cl_neon_bf16_compiled() says whether the compiler could build it. */
void cl_attention_item_bf16dot(const cl_attention_args *, int64_t item, cl_scratch *);
#if defined(__aarch64__)
int cl_neon_bf16_compiled(void);
#endif

/* The unbounded side of a visibility bound (vis_lo, vis_hi). */
#define CL_UNBOUNDED ((int64_t)1 << 62)

#endif
