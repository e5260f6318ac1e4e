/* flash_v3.cu: step 5, version 3: warp-level, a warp per group of query rows.
 *
 * Adds over v2: the work of one row is spread over a warp's 32 lanes. A key tile has 32 keys, one per
 * lane: each lane computes one score, the row's max and sum come from __shfl_xor_sync butterfly reductions
 * (5 steps, no shared memory, no block barrier), and for P·V each lane owns HEAD_DIM / 32 output columns.
 * A block of NUM_WARPS warps handles BLOCK_Q = NUM_WARPS * ROWS_PER_WARP rows and shares each K/V tile among
 * them; tiles come from global memory as float4 (16-byte) loads when HEAD_DIM is a multiple of 4.
 * Costs: the online-softmax bookkeeping is per row and per tile; scores are still fp32 FMAs on CUDA cores
 * (v4 moves them to tensor cores).
 *
 * Launch: grid (ceil(Lq / BLOCK_Q), Hq, B), block (NUM_WARPS * 32).
 * Compile-time: HEAD_DIM, NUM_WARPS, ROWS_PER_WARP (BLOCK_K is the warp size, 32).
 */
#include "cuda_compat.h"
#include "flash_common.h"

#ifndef NUM_WARPS
#define NUM_WARPS 4
#endif
#ifndef ROWS_PER_WARP
#define ROWS_PER_WARP 4
#endif
#define BLOCK_Q (NUM_WARPS * ROWS_PER_WARP)
#define BLOCK_K WARP_SIZE
#define THREADS (NUM_WARPS * WARP_SIZE)
#define DIMS_PER_LANE ((HEAD_DIM + WARP_SIZE - 1) / WARP_SIZE)

DEVICE float warp_max(float x, SHARED_PTR float *scratch) {
    for (int o = WARP_SIZE / 2; o > 0; o >>= 1) x = fmaxf(x, WARP_SHFL_XOR(x, o, scratch));
    return x;
}

DEVICE float warp_sum(float x, SHARED_PTR float *scratch) {
    for (int o = WARP_SIZE / 2; o > 0; o >>= 1) x += WARP_SHFL_XOR(x, o, scratch);
    return x;
}

KERNEL void flash_v3(KERNEL_ARGS) {
    SHARED float q_tile[BLOCK_Q][HEAD_DIM];
    SHARED float k_tile[BLOCK_K][HEAD_DIM + 1];
    SHARED float v_tile[BLOCK_K][HEAD_DIM];
    SHARED float p_row[NUM_WARPS][WARP_SIZE];
    WARP_SCRATCH_DECL(scratch, THREADS);

    const int t = threadIdx.x, lane = t % WARP_SIZE, warp = t / WARP_SIZE;
    const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * BLOCK_Q;
    const int hk = h / (Hq / Hkv);
    const GLOBAL float *qh = q + ((index_t)b * Hq + h) * Lq * HEAD_DIM;
    const GLOBAL float *kh = k + ((index_t)b * Hkv + hk) * Lk * HEAD_DIM;
    const GLOBAL float *vh = v + ((index_t)b * Hkv + hk) * Lk * HEAD_DIM;
    const index_t mbase = b * msb + h * msh;
    const int offset = Lk - Lq;

    if (HEAD_DIM % 4 == 0) { /* float4 loads: a row starts on a 16-byte boundary */
        for (int e = t; e < BLOCK_Q * HEAD_DIM / 4; e += THREADS) {
            const int r = e / (HEAD_DIM / 4), c = (e % (HEAD_DIM / 4)) * 4;
            if (q0 + r < Lq) {
                const float4 x = FLOAT4_LOAD(qh + (index_t)(q0 + r) * HEAD_DIM, c / 4);
                q_tile[r][c] = x.x * scale; q_tile[r][c + 1] = x.y * scale;
                q_tile[r][c + 2] = x.z * scale; q_tile[r][c + 3] = x.w * scale;
            } else {
                q_tile[r][c] = 0.0f; q_tile[r][c + 1] = 0.0f; q_tile[r][c + 2] = 0.0f; q_tile[r][c + 3] = 0.0f;
            }
        }
    } else {
        for (int e = t; e < BLOCK_Q * HEAD_DIM; e += THREADS) {
            const int r = e / HEAD_DIM, c = e % HEAD_DIM;
            q_tile[r][c] = q0 + r < Lq ? qh[(index_t)(q0 + r) * HEAD_DIM + c] * scale : 0.0f;
        }
    }

    float acc[ROWS_PER_WARP][DIMS_PER_LANE], m[ROWS_PER_WARP], l[ROWS_PER_WARP];
#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
#pragma unroll
        for (int c = 0; c < DIMS_PER_LANE; c++) acc[r][c] = 0.0f;
    }
    const float slope = alibi[(index_t)b * Hq + h];
    const int k_stop = key_stop(vis_hi, q0 + BLOCK_Q, Lq, Lk); /* block-uniform */

    for (int k0 = key_start(vis_lo, q0, BLOCK_K); k0 < k_stop; k0 += BLOCK_K) {
        __syncthreads();
        if (HEAD_DIM % 4 == 0) {
            for (int e = t; e < BLOCK_K * HEAD_DIM / 4; e += THREADS) {
                const int r = e / (HEAD_DIM / 4), c = (e % (HEAD_DIM / 4)) * 4;
                if (k0 + r < Lk) {
                    const float4 x = FLOAT4_LOAD(kh + (index_t)(k0 + r) * HEAD_DIM, c / 4);
                    const float4 y = FLOAT4_LOAD(vh + (index_t)(k0 + r) * HEAD_DIM, c / 4);
                    k_tile[r][c] = x.x; k_tile[r][c + 1] = x.y; k_tile[r][c + 2] = x.z; k_tile[r][c + 3] = x.w;
                    v_tile[r][c] = y.x; v_tile[r][c + 1] = y.y; v_tile[r][c + 2] = y.z; v_tile[r][c + 3] = y.w;
                } else {
                    for (int u = 0; u < 4; u++) { k_tile[r][c + u] = 0.0f; v_tile[r][c + u] = 0.0f; }
                }
            }
        } else {
            for (int e = t; e < BLOCK_K * HEAD_DIM; e += THREADS) {
                const int r = e / HEAD_DIM, c = e % HEAD_DIM;
                const bool in = k0 + r < Lk;
                k_tile[r][c] = in ? kh[(index_t)(k0 + r) * HEAD_DIM + c] : 0.0f;
                v_tile[r][c] = in ? vh[(index_t)(k0 + r) * HEAD_DIM + c] : 0.0f;
            }
        }
        __syncthreads();

#pragma unroll
        for (int r = 0; r < ROWS_PER_WARP; r++) {
            const int row = warp * ROWS_PER_WARP + r, i = q0 + row, j = k0 + lane;
            float s = -INFINITY; /* lane = key */
            if (i < Lq && j < Lk && visible(i, j, vis_lo, vis_hi)) {
                s = 0.0f;
                for (int d = 0; d < HEAD_DIM; d++) s += q_tile[row][d] * k_tile[lane][d];
                s = score_hook(s, softcap, slope, i, j, offset) + mask_bias(mask_b, mask_f, mask_kind, mbase, msi, msj, i, j);
            }
            const float m_new = fmaxf(m[r], warp_max(s, scratch));
            const float m_use = usable_max(m_new);
            const float p = expf(s - m_use);
            const float alpha = expf(m[r] - m_use);
            l[r] = l[r] * alpha + warp_sum(p, scratch);
            m[r] = m_new;
            p_row[warp][lane] = p;
            SYNC_WARP();
#pragma unroll
            for (int c = 0; c < DIMS_PER_LANE; c++) {
                const int d = lane + c * WARP_SIZE;
                float a = acc[r][c] * alpha;
                if (d < HEAD_DIM)
                    for (int jj = 0; jj < BLOCK_K; jj++) a += p_row[warp][jj] * v_tile[jj][d];
                acc[r][c] = a;
            }
            SYNC_WARP();
        }
    }

#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; r++) {
        const int i = q0 + warp * ROWS_PER_WARP + r;
        if (i < Lq) {
            GLOBAL float *oi = out + (((index_t)b * Hq + h) * Lq + i) * HEAD_DIM;
            const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
#pragma unroll
            for (int c = 0; c < DIMS_PER_LANE; c++) {
                const int d = lane + c * WARP_SIZE;
                if (d < HEAD_DIM) oi[d] = acc[r][c] * inv;
            }
            if (lane == 0) lse[((index_t)b * Hq + h) * Lq + i] = l[r] > 0.0f ? m[r] + logf(l[r]) : -INFINITY;
        }
    }
}
