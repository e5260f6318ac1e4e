/* flash_v1.cu: step 5, version 1: one thread per query row.
 *
 * Adds over the CPU kernels: only parallelism. Each thread runs chapter 2's online softmax over every key
 * for its own query row, reading K and V straight from global memory, with its output row in registers.
 * Costs: no reuse between threads (each reads all of K and V, so the kernel moves Lq times more data than
 * it must), and neighbouring threads read addresses HEAD_DIM floats apart (uncoalesced). The baseline.
 *
 * Launch: grid (ceil(Lq / THREADS), Hq, B), block (THREADS). Compile-time: HEAD_DIM, THREADS.
 */
#include "cuda_compat.h"
#include "flash_common.h"

#ifndef THREADS
#define THREADS 128
#endif

KERNEL void flash_v1(KERNEL_ARGS) {
    const int b = blockIdx.z, h = blockIdx.y;
    const int i = blockIdx.x * THREADS + threadIdx.x;
    if (i >= Lq) return;
    const int hk = h / (Hq / Hkv);
    const GLOBAL float *qi = q + (((index_t)b * Hq + h) * Lq + i) * HEAD_DIM;
    const GLOBAL float *kh = k + ((index_t)b * Hkv + hk) * Lk * HEAD_DIM;
    const GLOBAL float *vh = v + ((index_t)b * Hkv + hk) * Lk * HEAD_DIM;
    const index_t mbase = b * msb + h * msh;
    const int k_stop = key_stop(vis_hi, i + 1, Lq, Lk), offset = Lk - Lq;
    const float slope = alibi[(index_t)b * Hq + h];

    float acc[HEAD_DIM];
#pragma unroll
    for (int d = 0; d < HEAD_DIM; d++) acc[d] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    for (int j = key_start(vis_lo, i, 1); j < k_stop; j++) {
        float s = 0.0f;
#pragma unroll 8 /* not fully: the q row stays in memory (L1), so the registers hold the output row */
        for (int d = 0; d < HEAD_DIM; d++) s += qi[d] * kh[(index_t)j * HEAD_DIM + d];
        s = score_hook(s * scale, softcap, slope, i, j, offset) + mask_bias(mask_b, mask_f, mask_kind, mbase, msi, msj, i, j);
        if (s == -INFINITY) continue; /* a hidden key adds nothing */
        /* EXERCISE v1_update BEGIN (chapter 5: fold score s and value row j into m, l and acc) */
        const float m_new = fmaxf(m, s);
        const float alpha = expf(m - m_new); /* rescales what was summed under the old max */
        const float p = expf(s - m_new);
        l = l * alpha + p;
#pragma unroll
        for (int d = 0; d < HEAD_DIM; d++) acc[d] = acc[d] * alpha + p * vh[(index_t)j * HEAD_DIM + d];
        m = m_new;
        /* EXERCISE v1_update END */
    }
    GLOBAL float *oi = out + (((index_t)b * Hq + h) * Lq + i) * HEAD_DIM;
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
    for (int d = 0; d < HEAD_DIM; d++) oi[d] = acc[d] * inv;
    lse[((index_t)b * Hq + h) * Lq + i] = l > 0.0f ? m + logf(l) : -INFINITY;
}
