/* isa_avx512bf16.c: chapter 12's bfloat16 forward with AVX512-BF16 dot products (Zen 4, Zen 5, Intel Cooper Lake and
 * Sapphire Rapids and newer). Compiled with target avx512f + avx512bf16; dispatch.c calls it only for bfloat16
 * inputs on a CPU that reports AVX512_BF16 (CPUID 7.1 EAX bit 5), with the avx512 path chosen.
 *
 * What it adds over the float32 kernel (the same tiles, hook, masks and online softmax, from flash_kernel.inc):
 *   - vdpbf16ps does two bfloat16 products per float32 lane and adds them to a float32 accumulator: twice the
 *     products of an FMA per instruction. Both products of the tile use it:
 *       Sᵀ[key][query] = Σ_p K[key][2p, 2p+1] · QP[p][query]        (QP: Q transposed, pairs of dims interleaved)
 *       O[query][dim] += Σ_p PP[p][query] · VP[p][dim]              (PP, VP: pairs of keys interleaved)
 *     with the pair of K (or P) broadcast as one 32-bit value, as the float32 kernel broadcasts one float;
 *   - P is rounded to bfloat16 (round to nearest even) for the second product, as FlashAttention does on GPUs; the
 *     running max, the sums and lse stay float32, and l sums the float32 P;
 *   - the scale multiplies the float32 scores (Q is not pre-scaled: bfloat16 would round q · scale).
 * vdpbf16ps treats bfloat16 subnormals as zero (its DAZ behaviour): a subnormal input contributes 0, not 1e-39.
 */
#if defined(__x86_64__) || defined(__i386__)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bf16"))), apply_to = function)
#else
#pragma GCC target("avx512f,avx512bf16")
#endif

#include <immintrin.h>

#include "simd_internal.h"

#define CL_ISA avx512bf16
#define CL_ISA_NAME "avx512bf16"
#include "vocab_avx512.h"

/* 2^x for x <= 0 (the softmax's arguments, base-2 units) to 4e-5 relative: 2^n · 2^f with n = round(x),
 * |f| <= 1/2, 2^f by its degree-4 Taylor polynomial, and scalef for 2^n. x is clamped at -160, where 2^x is 0 in
 * float32, so a hidden key (-inf) weighs exactly 0; NaN stays NaN (max returns its second operand for it). P is
 * rounded to bfloat16 (2^-9) afterwards, so the float32 kernel's degree-6 polynomial would be wasted work here. */
static inline vec vexp2_bf16path(vec x) {
    const vec t = _mm512_max_ps(_mm512_set1_ps(-160.0f), x);
    const vec n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const vec f = _mm512_sub_ps(t, n);
    vec p = _mm512_fmadd_ps(_mm512_set1_ps(9.6181291e-3f), f, _mm512_set1_ps(5.5504109e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022651e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}
#define CL_SOFTMAX_EXP2 vexp2_bf16path

/* bf16_kernel.inc's pair vocabulary */
typedef __m512i pvec;
#define pload(p) _mm512_loadu_si512(p)
#define pset1(x) _mm512_set1_epi32((int)(x))
#define vdot2(acc, a, b) _mm512_dpbf16_ps((acc), (__m512bh)(a), (__m512bh)(b))
static inline void pstore_p(uint32_t *d, vec r0, vec r1) {
    const __m512i lo = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(r0));
    const __m512i hi = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(r1));
    _mm512_storeu_si512(d, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
}
static inline void pstore_v(uint32_t *d, const uint16_t *v0, const uint16_t *v1) {
    const __m512i lo = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)v0));
    const __m512i hi = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)v1));
    _mm512_storeu_si512(d, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
}

#include "flash_kernel.inc"

#include "bf16_kernel.inc"

#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
