/* vocab_neon.h: the NEON vector vocabulary (4 floats per vector, 32 registers), shared by isa_neon.c and
 * isa_neonbf16.c. Include it after simd_internal.h and arm_neon.h. */
#ifndef CHORDLAB_VOCAB_NEON_H
#define CHORDLAB_VOCAB_NEON_H

#define W 4
typedef float32x4_t vec;

#define vload vld1q_f32
#define vstore vst1q_f32
#define vset1 vdupq_n_f32
#define vzero() vdupq_n_f32(0.0f)
#define vadd vaddq_f32
#define vsub vsubq_f32
#define vmul vmulq_f32
#define vfma(a, b, c) vfmaq_f32((c), (a), (b))
#define vmax vmaxq_f32
#define vmin vminq_f32
/* W float16 (fcvtl) or bfloat16 (a 16-bit shift) values to float32 */
/* the sums of four vectors, into out[0..4): three pairwise adds */
#define vhsum4(a0, a1, a2, a3, out) vst1q_f32((out), vpaddq_f32(vpaddq_f32((a0), (a1)), vpaddq_f32((a2), (a3))))
#define vload_f16(p) vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16((const uint16_t *)(p))))
#define vload_bf16(p) vreinterpretq_f32_u32(vshll_n_u16(vld1_u16((const uint16_t *)(p)), 16))
/* 1/x to about float precision: the 8-bit estimate and two Newton steps (no divider) */
static inline vec vrcp(vec x) {
    vec r = vrecpeq_f32(x);
    r = vmulq_f32(r, vrecpsq_f32(x, r));
    r = vmulq_f32(r, vrecpsq_f32(x, r));
    return vmulq_f32(r, vrecpsq_f32(x, r));
}
#define vhsum vaddvq_f32
#define vhmax vmaxvq_f32

static inline vec vexp(vec xin) {
    vec x = vminq_f32(xin, vdupq_n_f32(CL_EXP_HI)); /* NEON min/max propagate NaN */
    x = vmaxq_f32(x, vdupq_n_f32(CL_EXP_LO));
    const vec fx = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(CL_LOG2E)));
    x = vfmsq_f32(x, fx, vdupq_n_f32(CL_LN2_HI));
    x = vfmsq_f32(x, fx, vdupq_n_f32(CL_LN2_LO));
    const vec z = vmulq_f32(x, x);
    vec y = vdupq_n_f32(CL_EXP_P0);
    y = vfmaq_f32(vdupq_n_f32(CL_EXP_P1), y, x);
    y = vfmaq_f32(vdupq_n_f32(CL_EXP_P2), y, x);
    y = vfmaq_f32(vdupq_n_f32(CL_EXP_P3), y, x);
    y = vfmaq_f32(vdupq_n_f32(CL_EXP_P4), y, x);
    y = vfmaq_f32(vdupq_n_f32(CL_EXP_P5), y, x);
    y = vaddq_f32(vfmaq_f32(x, y, z), vdupq_n_f32(1.0f));
    const int32x4_t n = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(fx), vdupq_n_s32(127)), 23);
    y = vmulq_f32(y, vreinterpretq_f32_s32(n));
    y = vbslq_f32(vcltq_f32(xin, vdupq_n_f32(CL_EXP_LO)), vdupq_n_f32(0.0f), y);
    return vbslq_f32(vcgtq_f32(xin, vdupq_n_f32(CL_EXP_OVERFLOW)), vdupq_n_f32(INFINITY), y);
}

/* vexp2's words (flash_kernel.inc): round to nearest; p·2^n from the exponent bits for integral n >= -127 (n = -127
 * makes 0) */
#define vround vrndnq_f32
static inline vec vldexp(vec p, vec n) {
    const int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
    return vmulq_f32(p, vreinterpretq_f32_s32(e));
}
#define CL_EXP2_FLOOR (-127.0f)

/* the softmax walks 8 query vectors down a tile at once */
#define SM_NC 8

#define S_MR 6
#define S_NR 4
#define PV_MR 6
#define PV_NR 4

/* decode: query rows per register block (x 4 keys of accumulators) */
#define DEC_RB 4

#endif
