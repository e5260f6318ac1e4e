/* flash_common.h: what every kernel version shares, in the dialect of cuda_compat.h.
 *
 * All versions take the same arguments (KERNEL_ARGS) and follow the library's conventions:
 *   q [B, Hq, Lq, D], k and v [B, Hkv, Lk, D], out [B, Hq, Lq, D], lse [B, Hq, Lq], float32, contiguous;
 *   grid.z = batch, grid.y = query head; key/value head = query head / (Hq / Hkv) (GQA, no copies);
 *   mask_kind 0 none, 1 bool (uint8, nonzero = attend), 2 additive float; element [b, h, i, j] of the mask
 *   at b*msb + h*msh + i*msi + j*msj (a stride of 0 broadcasts);
 *   causal: key j visible to query i iff j <= i + (Lk - Lq);
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
        const GLOBAL float *mask_f, GLOBAL float *out, GLOBAL float *lse, int Hq, int Hkv, int Lq, int Lk,   \
        float scale, int causal, int mask_kind, index_t msb, index_t msh, index_t msi, index_t msj

/* the mask's contribution to score (i, j): 0, -inf (hidden) or the additive value */
DEVICE float mask_bias(const GLOBAL unsigned char *mask_b, const GLOBAL float *mask_f, int mask_kind,
                       index_t base, index_t msi, index_t msj, int i, int j) {
    if (mask_kind == 1) return mask_b[base + i * msi + j * msj] ? 0.0f : -INFINITY;
    if (mask_kind == 2) return mask_f[base + i * msi + j * msj];
    return 0.0f;
}

/* the last key (exclusive) that any query row < row_end may see */
DEVICE int key_stop(int causal, int row_end, int Lq, int Lk) {
    if (!causal) return Lk;
    const int last_row = (row_end < Lq ? row_end : Lq) - 1;
    const int stop = last_row + (Lk - Lq) + 1;
    return stop < Lk ? (stop > 0 ? stop : 0) : Lk;
}

/* a max of -inf (nothing visible yet) is used as 0 so that exp(s - m) gives 0, not NaN */
DEVICE float usable_max(float m) { return m == -INFINITY ? 0.0f : m; }

#endif
