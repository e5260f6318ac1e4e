/* flash_bwd.cu: step 5's backward pass (chapter 9), the simplest correct one: one thread per row.
 *
 * Two kernels, FlashAttention-2's split without its atomics (so results do not depend on scheduling):
 *   flash_bwd_dq   one thread per query row i: for each key j it sees, p = exp(s - lse_i),
 *                  ds = p (dO_i·v_j - D_i), dQ_i += ds k_j;                   then dQ_i *= scale.
 *   flash_bwd_dkv  one thread per key row j (of a kv head): for each query row i of each query head of the
 *                  group that sees j, dV_j += p dO_i and dK_j += ds q_i;       then dK_j *= scale.
 * D_i = rowsum(dO_i ∘ O_i) comes from the caller (drow). Like v1: no reuse between threads, the baseline.
 * Costs: each thread holds a row of HEAD_DIM (dQ) or 2·HEAD_DIM (dK, dV) floats in registers, which spill to
 * local memory at large head dims; S and dP are computed in both kernels.
 *
 * Launch: flash_bwd_dq grid (ceil(Lq / THREADS), Hq, B); flash_bwd_dkv grid (ceil(Lk / THREADS), Hkv, B);
 * block (THREADS). Compile-time: HEAD_DIM, THREADS.
 */
#include "cuda_compat.h"
#include "flash_common.h"

#ifndef THREADS
#define THREADS 128
#endif

#define BWD_ARGS                                                                                             \
    const GLOBAL float *q, const GLOBAL float *k, const GLOBAL float *v, const GLOBAL unsigned char *mask_b, \
        const GLOBAL float *mask_f, const GLOBAL float *alibi, const GLOBAL float *lse,                     \
        const GLOBAL float *dout, const GLOBAL float *drow, GLOBAL float *dq, GLOBAL float *dk,              \
        GLOBAL float *dv, int Hq, int Hkv, int Lq, int Lk, float scale, int vis_lo, int vis_hi, float softcap, \
        int mask_kind, index_t msb, index_t msh, index_t msi, index_t msj

/* p = exp(hook(s) + bias - lse) for score (i, j), or 0 when the key is hidden or the row saw no key; *dcap gets
 * the score hook's derivative (1 - tanh² with a softcap, else 1) */
DEVICE float weight(const GLOBAL float *qi, const GLOBAL float *kj, float scale, float bias, float lse_i,
                    float softcap, float slope, int i, int j, int offset, float *dcap) {
    *dcap = 1.0f;
    if (bias == -INFINITY || lse_i == -INFINITY) return 0.0f;
    float s = 0.0f;
    for (int d = 0; d < HEAD_DIM; d++) s += qi[d] * kj[d];
    s *= scale;
    if (softcap > 0.0f) {
        const float t = tanhf(s / softcap);
        *dcap = 1.0f - t * t;
    }
    return expf(score_hook(s, softcap, slope, i, j, offset) + bias - lse_i);
}

KERNEL void flash_bwd_dq(BWD_ARGS) {
    const int b = blockIdx.z, h = blockIdx.y;
    const int i = blockIdx.x * THREADS + threadIdx.x;
    if (i >= Lq) return;
    const int hk = h / (Hq / Hkv);
    const index_t row = ((index_t)b * Hq + h) * Lq + i;
    const GLOBAL float *qi = q + row * HEAD_DIM;
    const GLOBAL float *doi = dout + row * HEAD_DIM;
    const GLOBAL float *kh = k + ((index_t)b * Hkv + hk) * Lk * HEAD_DIM;
    const GLOBAL float *vh = v + ((index_t)b * Hkv + hk) * Lk * HEAD_DIM;
    const index_t mbase = b * msb + h * msh;
    float acc[HEAD_DIM];
    for (int d = 0; d < HEAD_DIM; d++) acc[d] = 0.0f;
    const int stop = key_stop(vis_hi, i + 1, Lq, Lk), offset = Lk - Lq;
    const float slope = alibi[(index_t)b * Hq + h];
    for (int j = key_start(vis_lo, i, 1); j < stop; j++) {
        const float bias = mask_bias(mask_b, mask_f, mask_kind, mbase, msi, msj, i, j);
        float dcap;
        const float p = weight(qi, kh + (index_t)j * HEAD_DIM, scale, bias, lse[row], softcap, slope, i, j, offset,
                               &dcap);
        if (p == 0.0f) continue;
        float dp = 0.0f;
        for (int d = 0; d < HEAD_DIM; d++) dp += doi[d] * vh[(index_t)j * HEAD_DIM + d];
        const float ds = p * (dp - drow[row]) * dcap;
        for (int d = 0; d < HEAD_DIM; d++) acc[d] += ds * kh[(index_t)j * HEAD_DIM + d];
    }
    for (int d = 0; d < HEAD_DIM; d++) dq[row * HEAD_DIM + d] = acc[d] * scale;
}

KERNEL void flash_bwd_dkv(BWD_ARGS) {
    const int b = blockIdx.z, hk = blockIdx.y;
    const int j = blockIdx.x * THREADS + threadIdx.x;
    if (j >= Lk) return;
    const int G = Hq / Hkv;
    const index_t krow = ((index_t)b * Hkv + hk) * Lk + j;
    const GLOBAL float *kj = k + krow * HEAD_DIM;
    const GLOBAL float *vj = v + krow * HEAD_DIM;
    float dk_acc[HEAD_DIM], dv_acc[HEAD_DIM];
    for (int d = 0; d < HEAD_DIM; d++) dk_acc[d] = dv_acc[d] = 0.0f;
    /* the window and causal rule: query row i sees key j iff j - vis_hi <= i <= j - vis_lo */
    const int first = j - vis_hi > 0 ? j - vis_hi : 0, last = j - vis_lo < Lq - 1 ? j - vis_lo : Lq - 1;
    const int offset = Lk - Lq;
    for (int g = 0; g < G; g++) {
        const int h = hk * G + g;
        const index_t mbase = b * msb + h * msh;
        const float slope = alibi[(index_t)b * Hq + h];
        for (int i = first; i <= last; i++) {
            const index_t row = ((index_t)b * Hq + h) * Lq + i;
            const float bias = mask_bias(mask_b, mask_f, mask_kind, mbase, msi, msj, i, j);
            float dcap;
            const float p = weight(q + row * HEAD_DIM, kj, scale, bias, lse[row], softcap, slope, i, j, offset,
                                   &dcap);
            if (p == 0.0f) continue;
            const GLOBAL float *doi = dout + row * HEAD_DIM;
            const GLOBAL float *qi = q + row * HEAD_DIM;
            float dp = 0.0f;
            for (int d = 0; d < HEAD_DIM; d++) dp += doi[d] * vj[d];
            const float ds = p * (dp - drow[row]) * dcap;
            for (int d = 0; d < HEAD_DIM; d++) {
                dv_acc[d] += p * doi[d];
                dk_acc[d] += ds * qi[d];
            }
        }
    }
    for (int d = 0; d < HEAD_DIM; d++) {
        dk[krow * HEAD_DIM + d] = dk_acc[d] * scale;
        dv[krow * HEAD_DIM + d] = dv_acc[d];
    }
}
