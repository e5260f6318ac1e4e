/* flash_common.h: what every kernel version shares, in the dialect of cuda_compat.h.
 *
 * All versions take the same arguments (KERNEL_ARGS) and follow the library's conventions:
 *   q [B, Hq, Lq, D], k and v [B, Hkv, Lk, D], out [B, Hq, Lq, D], lse [B, Hq, Lq], float32, contiguous;
 *   grid.z = batch, grid.y = query head; key/value head = query head / (Hq / Hkv) (GQA, no copies);
 *   mask_kind 0 none, 1 bool (uint8, nonzero = attend), 2 additive float; element [b, h, i, j] of the mask
 *   at b*msb + h*msh + i*msi + j*msj (a stride of 0 broadcasts);
 *   visibility (chapter 11's window and causal, as bounds): key j visible to query i iff
 *   vis_lo <= j - i <= vis_hi (causal alone: vis_lo unbounded, vis_hi = Lk - Lq; ±2^30 = unbounded);
 *   the score hook: s -> softcap · tanh(s / softcap) when softcap > 0, then s -= alibi[b·Hq + h] · |i + Lk - Lq - j|
 *   (alibi always holds B·Hq slopes, zeros without ALiBi);
 *   a row with no visible key: zeros and lse = -inf.
 * HEAD_DIM is a compile-time constant (the backend compiles one module per head dim and block size).
 */
#ifndef CHORDLAB_FLASH_COMMON_H
#define CHORDLAB_FLASH_COMMON_H

#ifndef HEAD_DIM
#error "compile with -DHEAD_DIM=<head dim>"
#endif

#define KERNEL_ARGS                                                                                         \
    const GLOBAL float *q, const GLOBAL float *k, const GLOBAL float *v, const GLOBAL unsigned char *mask_b, \
        const GLOBAL float *mask_f, const GLOBAL float *alibi, GLOBAL float *out, GLOBAL float *lse, int Hq,   \
        int Hkv, int Lq, int Lk, float scale, int vis_lo, int vis_hi, float softcap, int mask_kind, index_t msb, \
        index_t msh, index_t msi, index_t msj

/* the mask's contribution to score (i, j): 0, -inf (hidden) or the additive value */
DEVICE float mask_bias(const GLOBAL unsigned char *mask_b, const GLOBAL float *mask_f, int mask_kind,
                       index_t base, index_t msi, index_t msj, int i, int j) {
    if (mask_kind == 1) return mask_b[base + i * msi + j * msj] ? 0.0f : -INFINITY;
    if (mask_kind == 2) return mask_f[base + i * msi + j * msj];
    return 0.0f;
}

/* the window and causal rule for query i and key j */
DEVICE int visible(int i, int j, int vis_lo, int vis_hi) { return j - i >= vis_lo && j - i <= vis_hi; }

/* the first key that query row row0 (or any later row) may see, rounded down to a multiple of block */
DEVICE int key_start(int vis_lo, int row0, int block) {
    const int start = row0 + vis_lo;
    return start > 0 ? start / block * block : 0;
}

/* the last key (exclusive) that any query row < row_end may see */
DEVICE int key_stop(int vis_hi, int row_end, int Lq, int Lk) {
    const int last_row = (row_end < Lq ? row_end : Lq) - 1;
    const int stop = last_row + vis_hi + 1;
    return stop < Lk ? (stop > 0 ? stop : 0) : Lk;
}

/* the score hook of chapter 11 on a scaled score s of query i, key j: softcap, then ALiBi */
DEVICE float score_hook(float s, float softcap, float slope, int i, int j, int offset) {
    if (softcap > 0.0f) s = softcap * tanhf(s / softcap);
    return s - slope * fabsf((float)(i + offset - j));
}

/* a max of -inf (nothing visible yet) is used as 0 so that exp(s - m) gives 0, not NaN */
DEVICE float usable_max(float m) { return m == -INFINITY ? 0.0f : m; }

#endif
