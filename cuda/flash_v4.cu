/* flash_v4.cu: step 5, version 4: tensor cores. fp16 or bf16 inputs, fp32 accumulation (sm_80 and newer).
 *
 * Adds over v3: the two matrix products run on tensor cores through WMMA (each warp issues mma.sync on
 * 16x16x16 tiles): S = Q_w Kᵀ with Q_w the warp's 16 query rows, and O += P V. A block of BLOCK_Q / 16 warps
 * shares K/V tiles of BLOCK_K keys in shared memory. The online softmax between the two products runs in
 * fp32, one lane per query row, on the score tile the first product stored to shared memory; the
 * probabilities are rounded to the input precision for the second product. The output accumulator lives in
 * shared memory because a WMMA fragment's element-to-row mapping is opaque: it is rescaled there by each
 * row's alpha, loaded into an accumulator fragment, multiplied into, and stored back.
 * Costs: inputs in 16-bit precision (about 3 decimal digits for fp16, 2 for bf16: the tests use wider
 * tolerances), head dims that are multiples of 16, a GPU of compute capability 8.0 or newer. Not run on the
 * CPU path (WMMA has no OpenCL form).
 *
 * Launch: grid (ceil(Lq / BLOCK_Q), Hq, B), block (BLOCK_Q / 16 * 32). Compile-time: HEAD_DIM, BLOCK_Q,
 * BLOCK_K. Runtime: use_bf16 picks the input type; q, k, v arrive as 16-bit patterns.
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include "cuda_compat.h"
#include "flash_common.h"

#ifndef BLOCK_Q
#define BLOCK_Q 64
#endif
#ifndef BLOCK_K
#define BLOCK_K 32
#endif
#define WARPS (BLOCK_Q / 16)
#define LDH (HEAD_DIM + 8)   /* half rows: a multiple of 8 elements, as WMMA requires */
#define LDF (HEAD_DIM + 4)   /* float rows: a multiple of 4 */
#define LDS (BLOCK_K + 4)
#define LDP (BLOCK_K + 8)

#if HEAD_DIM % 16 != 0
#error "kernel v4 needs HEAD_DIM to be a multiple of 16"
#endif

using namespace nvcuda;

template <typename T> DEVICE T from_float(float x);
template <> __device__ __forceinline__ half from_float<half>(float x) { return __float2half(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16(x); }

template <typename T>
DEVICE void flash_v4_body(const T *q, const T *k, const T *v, const unsigned char *mask_b, const float *mask_f,
                          const float *alibi, float *out, float *lse, int Hq, int Hkv, int Lq, int Lk, float scale,
                          int vis_lo, int vis_hi, float softcap, int mask_kind, index_t msb, index_t msh, index_t msi, index_t msj, T *q_tile, T *k_tile,
                          T *v_tile, float *s_all, T *p_all, float *o_all, float *m_all, float *l_all) {
    const int t = threadIdx.x, lane = t % WARP_SIZE, warp = t / WARP_SIZE;
    const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * BLOCK_Q;
    const int hk = h / (Hq / Hkv);
    const T *qh = q + ((index_t)b * Hq + h) * Lq * HEAD_DIM;
    const T *kh = k + ((index_t)b * Hkv + hk) * Lk * HEAD_DIM;
    const T *vh = v + ((index_t)b * Hkv + hk) * Lk * HEAD_DIM;
    const index_t mbase = b * msb + h * msh;
    const int offset = Lk - Lq;
    float *s_w = s_all + warp * 16 * LDS;
    T *p_w = p_all + warp * 16 * LDP;
    float *o_w = o_all + warp * 16 * LDF;
    float *m_w = m_all + warp * 16, *l_w = l_all + warp * 16;
    const T zero = from_float<T>(0.0f);

    for (int e = t; e < BLOCK_Q * HEAD_DIM; e += WARPS * WARP_SIZE) {
        const int r = e / HEAD_DIM, c = e % HEAD_DIM;
        q_tile[r * LDH + c] = q0 + r < Lq ? qh[(index_t)(q0 + r) * HEAD_DIM + c] : zero;
    }
    for (int e = lane; e < 16 * HEAD_DIM; e += WARP_SIZE) o_w[(e / HEAD_DIM) * LDF + e % HEAD_DIM] = 0.0f;
    if (lane < 16) { m_w[lane] = -INFINITY; l_w[lane] = 0.0f; }

    const float slope = alibi[(index_t)b * Hq + h];
    const int k_stop = key_stop(vis_hi, q0 + BLOCK_Q, Lq, Lk);
    for (int k0 = key_start(vis_lo, q0, BLOCK_K); k0 < k_stop; k0 += BLOCK_K) {
        __syncthreads();
        for (int e = t; e < BLOCK_K * HEAD_DIM; e += WARPS * WARP_SIZE) {
            const int r = e / HEAD_DIM, c = e % HEAD_DIM;
            const bool in = k0 + r < Lk;
            k_tile[r * LDH + c] = in ? kh[(index_t)(k0 + r) * HEAD_DIM + c] : zero;
            v_tile[r * LDH + c] = in ? vh[(index_t)(k0 + r) * HEAD_DIM + c] : zero;
        }
        __syncthreads();

        /* S = Q_w Kᵀ on tensor cores: Kᵀ is K read column-major */
        for (int nb = 0; nb < BLOCK_K / 16; nb++) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
            wmma::fill_fragment(c, 0.0f);
            for (int kk = 0; kk < HEAD_DIM / 16; kk++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> bt;
                wmma::load_matrix_sync(a, q_tile + warp * 16 * LDH + kk * 16, LDH);
                wmma::load_matrix_sync(bt, k_tile + nb * 16 * LDH + kk * 16, LDH);
                wmma::mma_sync(c, a, bt, c);
            }
            wmma::store_matrix_sync(s_w + nb * 16, c, LDS, wmma::mem_row_major);
        }
        __syncwarp();

        /* online softmax in fp32, one lane per row */
        if (lane < 16) {
            const int i = q0 + warp * 16 + lane;
            float tile_max = -INFINITY;
            for (int jj = 0; jj < BLOCK_K; jj++) {
                const int j = k0 + jj;
                float s = -INFINITY;
                if (i < Lq && j < Lk && visible(i, j, vis_lo, vis_hi))
                    s = score_hook(s_w[lane * LDS + jj] * scale, softcap, slope, i, j, offset) +
                        mask_bias(mask_b, mask_f, mask_kind, mbase, msi, msj, i, j);
                s_w[lane * LDS + jj] = s;
                tile_max = fmaxf(tile_max, s);
            }
            const float m_new = fmaxf(m_w[lane], tile_max), m_use = usable_max(m_new);
            const float alpha = expf(m_w[lane] - m_use);
            float sum = 0.0f;
            for (int jj = 0; jj < BLOCK_K; jj++) {
                const float p = expf(s_w[lane * LDS + jj] - m_use);
                p_w[lane * LDP + jj] = from_float<T>(p);
                sum += p;
            }
            l_w[lane] = l_w[lane] * alpha + sum;
            m_w[lane] = m_new;
            for (int d = 0; d < HEAD_DIM; d++) o_w[lane * LDF + d] *= alpha;
        }
        __syncwarp();

        /* O += P V on tensor cores, the accumulator round-tripping through shared memory */
        for (int nd = 0; nd < HEAD_DIM / 16; nd++) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
            wmma::load_matrix_sync(c, o_w + nd * 16, LDF, wmma::mem_row_major);
            for (int kk = 0; kk < BLOCK_K / 16; kk++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> bv;
                wmma::load_matrix_sync(a, p_w + kk * 16, LDP);
                wmma::load_matrix_sync(bv, v_tile + kk * 16 * LDH + nd * 16, LDH);
                wmma::mma_sync(c, a, bv, c);
            }
            wmma::store_matrix_sync(o_w + nd * 16, c, LDF, wmma::mem_row_major);
        }
        __syncwarp();
    }

    for (int e = lane; e < 16 * HEAD_DIM; e += WARP_SIZE) {
        const int r = e / HEAD_DIM, d = e % HEAD_DIM, i = q0 + warp * 16 + r;
        if (i < Lq) {
            const float l = l_w[r];
            out[(((index_t)b * Hq + h) * Lq + i) * HEAD_DIM + d] = l > 0.0f ? o_w[r * LDF + d] / l : 0.0f;
        }
    }
    if (lane < 16 && q0 + warp * 16 + lane < Lq) {
        const float l = l_w[lane];
        lse[((index_t)b * Hq + h) * Lq + q0 + warp * 16 + lane] = l > 0.0f ? m_w[lane] + logf(l) : -INFINITY;
    }
}

KERNEL void flash_v4(const unsigned short *q, const unsigned short *k, const unsigned short *v,
                     const unsigned char *mask_b, const float *mask_f, const float *alibi, float *out, float *lse,
                     int Hq, int Hkv, int Lq, int Lk, float scale, int vis_lo, int vis_hi, float softcap,
                     int mask_kind, index_t msb, index_t msh, index_t msi, index_t msj, int use_bf16) {
    __shared__ __align__(32) unsigned short q_tile[BLOCK_Q * LDH];
    __shared__ __align__(32) unsigned short k_tile[BLOCK_K * LDH];
    __shared__ __align__(32) unsigned short v_tile[BLOCK_K * LDH];
    __shared__ __align__(32) float s_all[WARPS * 16 * LDS];
    __shared__ __align__(32) unsigned short p_all[WARPS * 16 * LDP];
    __shared__ __align__(32) float o_all[WARPS * 16 * LDF];
    __shared__ __align__(32) float m_all[WARPS * 16];
    __shared__ __align__(32) float l_all[WARPS * 16];
    if (use_bf16)
        flash_v4_body<__nv_bfloat16>(
            reinterpret_cast<const __nv_bfloat16 *>(q), reinterpret_cast<const __nv_bfloat16 *>(k),
            reinterpret_cast<const __nv_bfloat16 *>(v), mask_b, mask_f, alibi, out, lse, Hq, Hkv, Lq, Lk, scale,
            vis_lo, vis_hi, softcap, mask_kind, msb, msh, msi, msj, reinterpret_cast<__nv_bfloat16 *>(q_tile),
            reinterpret_cast<__nv_bfloat16 *>(k_tile), reinterpret_cast<__nv_bfloat16 *>(v_tile), s_all,
            reinterpret_cast<__nv_bfloat16 *>(p_all), o_all, m_all, l_all);
    else
        flash_v4_body<half>(reinterpret_cast<const half *>(q), reinterpret_cast<const half *>(k),
                            reinterpret_cast<const half *>(v), mask_b, mask_f, alibi, out, lse, Hq, Hkv, Lq, Lk,
                            scale, vis_lo, vis_hi, softcap, mask_kind, msb, msh, msi, msj, reinterpret_cast<half *>(q_tile),
                            reinterpret_cast<half *>(k_tile), reinterpret_cast<half *>(v_tile), s_all,
                            reinterpret_cast<half *>(p_all), o_all, m_all, l_all);
}
