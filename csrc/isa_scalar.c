/* isa_scalar.c: the baseline path. Plain C floats (W = 1), the same register-blocked kernel, and GCC's
 * auto-vectorizer switched off so that "scalar" really means one float at a time: the honest baseline the
 * SIMD paths are measured against. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-tree-vectorize")
#endif

#include <math.h>

#include "simd_internal.h"

#define CL_ISA scalar
#define CL_ISA_NAME "scalar"
#define W 1
typedef float vec;

static inline vec vload(const float *p) { return *p; }
static inline void vstore(float *p, vec x) { *p = x; }
static inline vec vset1(float x) { return x; }
static inline vec vzero(void) { return 0.0f; }
static inline vec vadd(vec a, vec b) { return a + b; }
static inline vec vsub(vec a, vec b) { return a - b; }
static inline vec vmul(vec a, vec b) { return a * b; }
static inline vec vfma(vec a, vec b, vec c) { return a * b + c; }
static inline vec vmax(vec a, vec b) { return a > b ? a : b; } /* like maxps: b when either is NaN */
static inline vec vmin(vec a, vec b) { return a < b ? a : b; } /* like minps: b when either is NaN */
static inline vec vrcp(vec x) { return 1.0f / x; }
static inline void vhsum4(vec a0, vec a1, vec a2, vec a3, float *out) {
    out[0] = a0; out[1] = a1; out[2] = a2; out[3] = a3;
}
static inline vec vload_f16(const uint16_t *p) { return cl_f16_to_f32(*p); }
static inline vec vload_bf16(const uint16_t *p) { return cl_bf16_to_f32(*p); }
static inline float vhsum(vec x) { return x; }
static inline float vhmax(vec x) { return x; }

static inline vec vexp(vec x) {
    if (x != x) return x;
    if (x < CL_EXP_LO) return 0.0f;
    if (x > CL_EXP_OVERFLOW) return INFINITY;
    if (x > CL_EXP_HI) x = CL_EXP_HI;
    /* round to nearest even without libm: adding 1.5 * 2^23 pushes the fraction out of the mantissa */
    const float fx = (x * CL_LOG2E + 12582912.0f) - 12582912.0f;
    x = x - fx * CL_LN2_HI;
    x = x - fx * CL_LN2_LO;
    const float z = x * x;
    float y = CL_EXP_P0;
    y = y * x + CL_EXP_P1;
    y = y * x + CL_EXP_P2;
    y = y * x + CL_EXP_P3;
    y = y * x + CL_EXP_P4;
    y = y * x + CL_EXP_P5;
    y = y * z + x + 1.0f;
    union { int32_t i; float f; } two_n = {.i = ((int32_t)fx + 127) << 23};
    return y * two_n.f;
}

/* vexp2's words (flash_kernel.inc): round to nearest even without libm (adding 1.5 * 2^23 pushes the fraction out of
 * the mantissa); p·2^n from the exponent bits for integral n >= -127 (n = -127 makes 0; NaN stays NaN) */
static inline vec vround(vec x) { return (x + 12582912.0f) - 12582912.0f; }
static inline vec vldexp(vec p, vec n) {
    if (n != n) return p + n;
    union { int32_t i; float f; } two_n = {.i = ((int32_t)n + 127) << 23};
    return p * two_n.f;
}
#define CL_EXP2_FLOOR (-127.0f)

/* 4 keys x 4 queries of scalar accumulators: the seed's 4-way unrolling, as a register block */
#define S_MR 4
#define S_NR 4
#define PV_MR 4
#define PV_NR 4

/* decode: query rows per register block (x 4 keys of accumulators) */
#define DEC_RB 2

#include "flash_kernel.inc"
