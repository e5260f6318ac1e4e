/* isa_neonbf16.c: chapter 12's bfloat16 forward with BFDOT (Arm's BF16 extension, Armv8.6-A: Apple M2 and newer,
 * AWS Graviton 3 and 4, Neoverse V1/V2/N2). The same kernel as isa_avx512bf16.c (bf16_kernel.inc), over NEON's pair
 * vocabulary: BFDOT adds two bfloat16 products to each float32 lane, BFCVTN rounds float32 to bfloat16 (to nearest
 * even). dispatch.c calls it only for bfloat16 inputs, isa neon, on a CPU that reports BF16 (HWCAP2_BF16; tested under
 * qemu, whose default CPU has it). */
#if defined(__aarch64__)
#include "simd_internal.h"

#if defined(__clang__) && !defined(__ARM_FEATURE_BF16)
/* clang's arm_neon.h declares the BF16 types and intrinsics only when the whole file targets BF16 (-march=...+bf16):
 * without that, no BFDOT kernel is built, and bfloat16 inputs take the converting path. */
int cl_neon_bf16_compiled(void) { return 0; }
void cl_attention_item_bf16dot(const cl_attention_args *a, int64_t item, cl_scratch *s) {
    (void)a; (void)item; (void)s;
}
#else
#if !defined(__clang__)
#pragma GCC target("arch=armv8.2-a+bf16")
#endif

#include <arm_neon.h>

int cl_neon_bf16_compiled(void) { return 1; }

#define CL_ISA neonbf16
#define CL_ISA_NAME "neonbf16"
#include "vocab_neon.h"

/* bf16_kernel.inc's pair vocabulary */
typedef bfloat16x8_t pvec;
#define pload(p) vreinterpretq_bf16_u32(vld1q_u32(p))
#define pset1(x) vreinterpretq_bf16_u32(vdupq_n_u32(x))
#define vdot2(acc, a, b) vbfdotq_f32((acc), (a), (b))
static inline void pstore_p(uint32_t *d, vec r0, vec r1) {
    const uint16x4_t a = vreinterpret_u16_bf16(vcvt_bf16_f32(r0)), b = vreinterpret_u16_bf16(vcvt_bf16_f32(r1));
    vst1q_u16((uint16_t *)d, vcombine_u16(vzip1_u16(a, b), vzip2_u16(a, b)));
}
static inline void pstore_v(uint32_t *d, const uint16_t *v0, const uint16_t *v1) {
    const uint16x4_t a = vld1_u16(v0), b = vld1_u16(v1);
    vst1q_u16((uint16_t *)d, vcombine_u16(vzip1_u16(a, b), vzip2_u16(a, b)));
}

#include "flash_kernel.inc"

#include "bf16_kernel.inc"
#endif
#endif
