/* flash_v2.cu: step 5, version 2: the seed's design made real, a thread block per query tile.
 *
 * Adds over v1: reuse through shared memory. Grid (num_q_blocks, Hq, B); a block of BLOCK_Q threads owns a
 * tile of BLOCK_Q query rows (one row per thread). The block loads the Q tile once and then, tile by tile,
 * BLOCK_K rows of K and V into shared memory with coalesced loads (consecutive threads read consecutive
 * floats), so each K/V element read from global memory serves BLOCK_Q rows. Scores go to a shared tile;
 * each thread then does the online softmax with its tile's max and sum (chapter 3's step on a GPU).
 * Costs: one thread per row does all D-long dot products serially; shared memory (Q, K, V and S tiles)
 * limits BLOCK_Q x BLOCK_K (48 KiB per block), and with few threads per block occupancy is modest.
 * Rows are padded by one float so that threads reading the same column hit different banks.
 *
 * Launch: grid (ceil(Lq / BLOCK_Q), Hq, B), block (BLOCK_Q). Compile-time: HEAD_DIM, BLOCK_Q, BLOCK_K.
 */
#include "cuda_compat.h"
#include "flash_common.h"

#ifndef BLOCK_Q
#define BLOCK_Q 64
#endif
#ifndef BLOCK_K
#define BLOCK_K 32
#endif

KERNEL void flash_v2(KERNEL_ARGS) {
    SHARED float q_tile[BLOCK_Q][HEAD_DIM + 1];
    SHARED float k_tile[BLOCK_K][HEAD_DIM + 1];
    SHARED float v_tile[BLOCK_K][HEAD_DIM];
    SHARED float s_tile[BLOCK_Q][BLOCK_K + 1];

    const int t = threadIdx.x;
    const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * BLOCK_Q;
    const int hk = h / (Hq / Hkv);
    const int i = q0 + t;
    const GLOBAL float *qh = q + ((index_t)b * Hq + h) * Lq * HEAD_DIM;
    const GLOBAL float *kh = k + ((index_t)b * Hkv + hk) * Lk * HEAD_DIM;
    const GLOBAL float *vh = v + ((index_t)b * Hkv + hk) * Lk * HEAD_DIM;
    const index_t mbase = b * msb + h * msh;
    const int offset = Lk - Lq;

    /* coalesced: thread t loads elements t, t + BLOCK_Q, ... of the tile; the scale is applied once here */
    for (int e = t; e < BLOCK_Q * HEAD_DIM; e += BLOCK_Q) {
        const int r = e / HEAD_DIM, c = e % HEAD_DIM;
        q_tile[r][c] = q0 + r < Lq ? qh[(index_t)(q0 + r) * HEAD_DIM + c] * scale : 0.0f;
    }

    float acc[HEAD_DIM];
#pragma unroll
    for (int d = 0; d < HEAD_DIM; d++) acc[d] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    const float slope = alibi[(index_t)b * Hq + h];
    const int k_stop = key_stop(vis_hi, q0 + BLOCK_Q, Lq, Lk); /* block-uniform: every thread loops alike */

    for (int k0 = key_start(vis_lo, q0, BLOCK_K); k0 < k_stop; k0 += BLOCK_K) {
        __syncthreads(); /* the previous tile is no longer read */
        for (int e = t; e < BLOCK_K * HEAD_DIM; e += BLOCK_Q) {
            const int r = e / HEAD_DIM, c = e % HEAD_DIM;
            const bool in = k0 + r < Lk;
            k_tile[r][c] = in ? kh[(index_t)(k0 + r) * HEAD_DIM + c] : 0.0f;
            v_tile[r][c] = in ? vh[(index_t)(k0 + r) * HEAD_DIM + c] : 0.0f;
        }
        __syncthreads();

        /* pass 1 and 2 for my row: scores into the shared tile, and the tile's max */
        float tile_max = -INFINITY;
        for (int jj = 0; jj < BLOCK_K; jj++) {
            const int j = k0 + jj;
            float s = -INFINITY;
            if (i < Lq && j < Lk && visible(i, j, vis_lo, vis_hi)) {
                s = 0.0f;
#pragma unroll
                for (int d = 0; d < HEAD_DIM; d++) s += q_tile[t][d] * k_tile[jj][d];
                s = score_hook(s, softcap, slope, i, j, offset) + mask_bias(mask_b, mask_f, mask_kind, mbase, msi, msj, i, j);
            }
            s_tile[t][jj] = s;
            tile_max = fmaxf(tile_max, s);
        }
        /* pass 3: rescale by the new max, exponentiate, sum */
        const float m_new = fmaxf(m, tile_max);
        const float m_use = usable_max(m_new);
        const float alpha = expf(m - m_use);
        float tile_sum = 0.0f;
        for (int jj = 0; jj < BLOCK_K; jj++) {
            const float p = expf(s_tile[t][jj] - m_use);
            s_tile[t][jj] = p;
            tile_sum += p;
        }
        l = l * alpha + tile_sum;
        m = m_new;
        /* pass 5: accumulate P V */
#pragma unroll
        for (int d = 0; d < HEAD_DIM; d++) acc[d] *= alpha;
        for (int jj = 0; jj < BLOCK_K; jj++) {
            const float p = s_tile[t][jj];
#pragma unroll
            for (int d = 0; d < HEAD_DIM; d++) acc[d] += p * v_tile[jj][d];
        }
    }
    if (i < Lq) {
        GLOBAL float *oi = out + (((index_t)b * Hq + h) * Lq + i) * HEAD_DIM;
        const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
        for (int d = 0; d < HEAD_DIM; d++) oi[d] = acc[d] * inv;
        lse[((index_t)b * Hq + h) * Lq + i] = l > 0.0f ? m + logf(l) : -INFINITY;
    }
}
