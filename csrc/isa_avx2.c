/* isa_avx2.c: 8 floats per vector with fused multiply-add (Intel Haswell / AMD Zen and newer).
 * Compiled with its own target attributes; only called when the CPU reports AVX2, FMA and F16C. */
#if defined(__x86_64__) || defined(__i386__)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC target("avx2,fma,f16c")
#endif

#include <immintrin.h>

#include "simd_internal.h"

#define CL_ISA avx2
#define CL_ISA_NAME "avx2"
#define W 8
typedef __m256 vec;

#define vload _mm256_loadu_ps
#define vstore _mm256_storeu_ps
#define vset1 _mm256_set1_ps
#define vzero _mm256_setzero_ps
#define vadd _mm256_add_ps
#define vsub _mm256_sub_ps
#define vmul _mm256_mul_ps
#define vfma _mm256_fmadd_ps
#define vmax _mm256_max_ps
#define vmin _mm256_min_ps /* like minps: b when either is NaN */
/* W float16 (F16C) or bfloat16 (a 16-bit shift) values to float32 */
/* the sums of four vectors, into out[0..4): three horizontal adds and one 128-bit add */
static inline void vhsum4(vec a0, vec a1, vec a2, vec a3, float *out) {
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
}
#define vload_f16(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))
#define vload_bf16(p) _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p))), 16))
/* 1/x to about float precision: the 12-bit estimate and two Newton steps (no divider) */
static inline vec vrcp(vec x) {
    vec r = _mm256_rcp_ps(x);
    r = _mm256_mul_ps(r, _mm256_fnmadd_ps(x, r, _mm256_set1_ps(2.0f)));
    return _mm256_mul_ps(r, _mm256_fnmadd_ps(x, r, _mm256_set1_ps(2.0f)));
}

static inline float vhsum(vec x) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float vhmax(vec x) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline vec vexp(vec xin) {
    /* min/max with the constant first: a NaN input passes through */
    vec x = _mm256_min_ps(_mm256_set1_ps(CL_EXP_HI), xin);
    x = _mm256_max_ps(_mm256_set1_ps(CL_EXP_LO), x);
    const vec fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(CL_LOG2E)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(CL_LN2_HI), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(CL_LN2_LO), x);
    const vec z = _mm256_mul_ps(x, x);
    vec y = _mm256_set1_ps(CL_EXP_P0);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(CL_EXP_P1));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(CL_EXP_P2));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(CL_EXP_P3));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(CL_EXP_P4));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(CL_EXP_P5));
    y = _mm256_add_ps(_mm256_fmadd_ps(y, z, x), _mm256_set1_ps(1.0f));
    const __m256i n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
    y = _mm256_mul_ps(y, _mm256_castsi256_ps(n));
    y = _mm256_andnot_ps(_mm256_cmp_ps(xin, _mm256_set1_ps(CL_EXP_LO), _CMP_LT_OQ), y);
    return _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY),
                            _mm256_cmp_ps(xin, _mm256_set1_ps(CL_EXP_OVERFLOW), _CMP_GT_OQ));
}

/* vexp2's words (flash_kernel.inc): round to nearest; p·2^n from the exponent bits for integral n >= -127 (n = -127
 * makes 0) */
#define vround(x) _mm256_round_ps((x), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
static inline vec vldexp(vec p, vec n) {
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
#define CL_EXP2_FLOOR (-127.0f)

/* 16 registers: 6 x 2 accumulators + 2 loads + 1 broadcast (the classic 6x16 sgemm kernel) */
#define S_MR 6
#define S_NR 2
#define PV_MR 6
#define PV_NR 2

/* decode: query rows per register block (x 4 keys of accumulators) */
#define DEC_RB 2

#include "flash_kernel.inc"

#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
