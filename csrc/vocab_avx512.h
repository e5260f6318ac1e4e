/* vocab_avx512.h: the AVX-512 vector vocabulary (16 floats per vector, 32 registers), shared by isa_avx512.c and
 * isa_avx512bf16.c. Include it under a target that has avx512f, after simd_internal.h. */
#ifndef CHORDLAB_VOCAB_AVX512_H
#define CHORDLAB_VOCAB_AVX512_H

#include <immintrin.h>

#define W 16
typedef __m512 vec;

#define vload _mm512_loadu_ps
#define vstore _mm512_storeu_ps
#define vset1 _mm512_set1_ps
#define vzero _mm512_setzero_ps
#define vadd _mm512_add_ps
#define vsub _mm512_sub_ps
#define vmul _mm512_mul_ps
#define vfma _mm512_fmadd_ps
#define vmax _mm512_max_ps
#define vmin _mm512_min_ps /* like minps: b when either is NaN */
/* W float16 or bfloat16 values to float32 (bf16: a 16-bit shift, what AVX512-BF16's vcvtpbh2ps does) */
/* the sums of four vectors, into out[0..4): one transpose-and-add tree instead of four full reductions */
static inline void vhsum4(vec a0, vec a1, vec a2, vec a3, float *out) {
    const __m512 s01 = _mm512_add_ps(_mm512_shuffle_f32x4(a0, a1, 0x44), _mm512_shuffle_f32x4(a0, a1, 0xEE));
    const __m512 s23 = _mm512_add_ps(_mm512_shuffle_f32x4(a2, a3, 0x44), _mm512_shuffle_f32x4(a2, a3, 0xEE));
    __m512 v = _mm512_add_ps(_mm512_shuffle_f32x4(s01, s23, 0x88), _mm512_shuffle_f32x4(s01, s23, 0xDD));
    v = _mm512_add_ps(v, _mm512_permute_ps(v, 0x4E));
    v = _mm512_add_ps(v, _mm512_permute_ps(v, 0xB1));
    const __m512i pick = _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    _mm_storeu_ps(out, _mm512_castps512_ps128(_mm512_permutexvar_ps(pick, v)));
}
#define vload_f16(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p)))
#define vload_bf16(p) _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p))), 16))
/* 1/x to about float precision: the 14-bit estimate and one Newton step (no divider) */
static inline vec vrcp(vec x) {
    const vec r = _mm512_rcp14_ps(x);
    return _mm512_mul_ps(r, _mm512_fnmadd_ps(x, r, _mm512_set1_ps(2.0f)));
}
#define vhsum _mm512_reduce_add_ps
#define vhmax _mm512_reduce_max_ps

static inline vec vexp(vec xin) {
    /* the clamps keep the reduction in range (NaN passes: max and min return their second operand for it); vscalefps
     * applies 2^n exactly and makes +inf past 88.72 by itself */
    vec x = _mm512_min_ps(_mm512_set1_ps(CL_EXP_SCALEF_HI), _mm512_max_ps(_mm512_set1_ps(CL_EXP_LO), xin));
    const vec fx = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(CL_LOG2E)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(CL_LN2_HI), x);
    x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(CL_LN2_LO), x);
    const vec z = _mm512_mul_ps(x, x);
    vec y = _mm512_set1_ps(CL_EXP_P0);
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(CL_EXP_P1));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(CL_EXP_P2));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(CL_EXP_P3));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(CL_EXP_P4));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(CL_EXP_P5));
    y = _mm512_add_ps(_mm512_fmadd_ps(y, z, x), _mm512_set1_ps(1.0f));
    y = _mm512_scalef_ps(y, fx);
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(xin, _mm512_set1_ps(CL_EXP_LO), _CMP_NLT_UQ), y);
}

/* vexp2's words (flash_kernel.inc): round to nearest, p·2^n for integral n (vscalefps: 0 below -150 by itself) */
#define vround(x) _mm512_roundscale_ps((x), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define vldexp _mm512_scalef_ps
#define CL_EXP2_FLOOR (-151.0f)

/* the softmax walks 8 query vectors down a tile at once (8 max and 8 sum chains) */
#define SM_NC 8

/* 32 registers: 6 x 4 accumulators + 4 loads + 1 broadcast */
#define S_MR 6
#define S_NR 4
#define PV_MR 6
#define PV_NR 4

/* decode: query rows per register block (x 4 keys of accumulators) */
#define DEC_RB 4

#endif
