"""Model answers to the chapter exercises, revealed on demand: ``chordlab.solution("tile_update")``.

They ship with the package so that a teacher can reveal one when the class is ready; the notebooks never
print them by themselves. The tests check that every model answer passes its exercise.
"""

import numpy as np


def score_matrix_bytes(B, H, L, itemsize):
    return B * H * L * L * itemsize


def attention_2d(q, k, v):
    s = q @ k.T / np.sqrt(q.shape[-1])
    s -= s.max(axis=1, keepdims=True)
    p = np.exp(s)
    return (p / p.sum(axis=1, keepdims=True)) @ v


def merge_states(m1, l1, m2, l2):
    m = max(m1, m2)
    if m == -np.inf:  # both states empty (every key masked): stay empty, no -inf - -inf = NaN
        return m, 0.0
    return m, l1 * np.exp(m1 - m) + l2 * np.exp(m2 - m)


def tile_update(m, l, acc, S, V):
    m_new = np.maximum(m, S.max(axis=1))
    p = np.exp(S - m_new[:, None])
    alpha = np.exp(m - m_new)
    return m_new, alpha * l + p.sum(axis=1), alpha[:, None] * acc + p @ V


def tiled_forward(q, k, v, block_q, block_k, causal):
    Lq, D = q.shape
    Lk = k.shape[0]
    out, lse = np.zeros((Lq, D)), np.full(Lq, -np.inf)
    for i0 in range(0, Lq, block_q):
        i1 = min(i0 + block_q, Lq)
        m, l, acc = np.full(i1 - i0, -np.inf), np.zeros(i1 - i0), np.zeros((i1 - i0, D))
        stop = min(Lk, i1 - 1 + Lk - Lq + 1) if causal else Lk  # keys past this are hidden for the whole tile
        for j0 in range(0, max(stop, 0), block_k):
            j1 = min(j0 + block_k, Lk)
            S = q[i0:i1] @ k[j0:j1].T / np.sqrt(D)
            if causal:
                rows, cols = np.arange(i0, i1)[:, None], np.arange(j0, j1)[None, :]
                S = np.where(cols <= rows + Lk - Lq, S, -np.inf)
            m_new = np.maximum(m, S.max(axis=1))
            safe = np.where(np.isneginf(m_new), 0.0, m_new)  # rows that have seen no key yet
            P = np.exp(S - safe[:, None])
            alpha = np.exp(m - safe)
            l, acc, m = alpha * l + P.sum(axis=1), alpha[:, None] * acc + P @ v[j0:j1], m_new
        seen = l > 0
        out[i0:i1][seen] = acc[seen] / l[seen, None]
        lse[i0:i1][seen] = m[seen] + np.log(l[seen])
    return out, lse


SCORES_BLOCK = r"""
    for (int64_t d = 0; d < D; d++) {
        vec qv[S_NR];
        for (int c = 0; c < nr; c++) qv[c] = vload(QT + d * ldq + c * W);
        for (int r = 0; r < mr; r++) {
            const vec kb = vset1(K[r * ldk + d]);
            for (int c = 0; c < nr; c++) acc[r][c] = vfma(kb, qv[c], acc[r][c]);
        }
    }
"""


def simd_scores_block(q, k, v, isa):
    import chordlab
    from chordlab.exercises import edited_copy
    from chordlab.step4_simd import build_library

    library = build_library(edited_copy("c", "scores_block", SCORES_BLOCK))
    return chordlab.attention(q, k, v, backend="simd", isa=isa, library=library, threads=1)


V1_UPDATE = r"""
        const float m_new = fmaxf(m, s);
        const float alpha = expf(m - m_new);
        const float p = expf(s - m_new);
        l = l * alpha + p;
        for (int d = 0; d < HEAD_DIM; d++) acc[d] = acc[d] * alpha + p * vh[(index_t)j * HEAD_DIM + d];
        m = m_new;
"""


def cuda_v1_update(q, k, v, causal):
    import chordlab
    from chordlab.exercises import edited_copy

    folder = edited_copy("cuda", "v1_update", V1_UPDATE)
    return chordlab.attention(q, k, v, causal=causal, backend="cuda-cpu", kernel="v1", source_dir=folder)


C_DOT = r"""
#include <stdint.h>
float my_dot(const float *a, const float *b, int64_t n) {
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += a[i] * b[i]; s1 += a[i+1] * b[i+1]; s2 += a[i+2] * b[i+2]; s3 += a[i+3] * b[i+3];
    }
    for (; i < n; i++) s0 += a[i] * b[i];
    return (s0 + s1) + (s2 + s3);
}
"""


def c_dot(a, b):
    from chordlab.step4_simd import compile_c

    ffi, lib = compile_c(C_DOT, "float my_dot(const float *a, const float *b, int64_t n);")
    return lib.my_dot(ffi.from_buffer("float[]", a), ffi.from_buffer("float[]", b), len(a))


def v2_shared_bytes(D, block_q, block_k):
    return 4 * (block_q * (D + 1) + block_k * (D + 1) + block_k * D + block_q * (block_k + 1))


def working_set(block_q, block_k, D):
    return 4 * (block_q * D + 2 * block_k * D + block_q * block_k + block_q * D)


def mha_params(d_model, heads, kv_heads):
    head_dim = d_model // heads
    return 2 * d_model * d_model + 2 * d_model * kv_heads * head_dim


def w2_workgroup_bytes(D, block_k):
    return 2 * block_k * D * 4


def tile_ds(P, dO, V, O):
    dP = dO @ V.T
    Drow = (dO * O).sum(axis=1, keepdims=True)
    return P * (dP - Drow)


def sink_window_mask(b, h, q_idx, kv_idx):
    return (kv_idx <= q_idx) & ((q_idx - kv_idx < 4) | (kv_idx < 2))


def block_table_lookup(block_table, page_size, j):
    return block_table[j // page_size], j % page_size


def to_bfloat16(x):
    bits = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


SOLUTIONS = {f.__name__: f for f in (score_matrix_bytes, attention_2d, merge_states, tile_update, tiled_forward,
                                     c_dot, simd_scores_block, v2_shared_bytes, cuda_v1_update, working_set,
                                     mha_params, w2_workgroup_bytes, tile_ds, sink_window_mask, block_table_lookup,
                                     to_bfloat16)}
EDITS = {"simd_scores_block": SCORES_BLOCK, "cuda_v1_update": V1_UPDATE}


class Solution:
    """A model answer: prints as its source code; ``.fn`` is the function itself."""

    def __init__(self, name: str):
        import inspect

        if name not in SOLUTIONS:
            raise ValueError(f"no model answer for {name!r}; exercises: {', '.join(SOLUTIONS)}")
        self.name, self.fn = name, SOLUTIONS[name]
        parts = [inspect.getsource(self.fn)]
        if name == "c_dot":
            parts.insert(0, f"C_DOT = r\"\"\"{C_DOT}\"\"\"\n")
        for code_name, code in EDITS.items():
            if name == code_name:
                parts.insert(0, f"# the code that goes in the marked region:\n{code}\n")
        self.source = "\n".join(parts)

    def __repr__(self) -> str:
        return f"Model answer for {self.name!r}:\n\n{self.source}"


def solution(name: str) -> Solution:
    """The model answer of exercise ``name``, for the teacher to reveal when the class is ready."""
    return Solution(name)
