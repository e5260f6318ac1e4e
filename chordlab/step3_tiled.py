"""Step 3: tiled FlashAttention forward in NumPy: O(N) memory.

What it adds over step 1: the score matrix is never built. Queries are cut into blocks of ``block_q``
rows and keys/values into blocks of ``block_k``; for each query block we stream over the key blocks and
keep, per query row, the online-softmax state of step 2 plus an unnormalized output accumulator:

    for each key block j:
        S   = scale · Q_i K_jᵀ, masked                  (pass 1, one block only)
        m'  = max(m, rowmax S)                          (pass 2, running)
        P   = exp(S - m'),  α = exp(m - m')             (pass 3, running)
        l   = α l + rowsum P
        acc = α acc + P V_j                             (pass 5, running)
        m   = m'
    O_i = acc / l,  lse_i = m + log l                   (pass 4, once at the end)

Causal attention skips key blocks that lie wholly above the diagonal and masks only the blocks it cuts; a sliding
window (chapter 11) visits only the key blocks inside its band, and a block mask skips its empty tiles. Softcap and
ALiBi enter through one score hook (`chordlab.variants.score_hook`) right after the scaling.
All (batch, head) pairs are processed together per block, so the working set is
``B·Hq·block_q·(block_k + 2D)`` numbers, independent of the sequence length.

The backward (`tiled_backward`) is FlashAttention-2's: D = rowsum(dO ∘ O) once, then an outer loop over
key/value tiles that holds that tile's dK and dV, and an inner loop over the query tiles that see it, which
recomputes P from the forward's lse and adds each tile's share into dQ. Nothing of size N² is stored.

Run it: ``chordlab.attention(q, k, v, backend="tiled", block_q=64, block_k=128)``;
``chordlab.attention_backward(dout, q, k, v, out, lse, backend="tiled")``.
"""

from __future__ import annotations

import numpy as np

from . import variants
from .backends import Backend, register
from .step1_reference import ALL_VARIANTS, apply_mask, recompute_weights, safe_max
from .validation import SUPPORTED_DTYPES, AttentionProblem, ProblemShape


def _mask_as_groups(mask: np.ndarray | None, heads_kv: int, group: int) -> np.ndarray | None:
    """View a 4-D mask ``[mb, mh, mq, mk]`` as ``[mb, Hkv, G, mq, mk]`` to match the grouped queries."""
    if mask is None:
        return None
    mb, mh, mq, mk = mask.shape
    if mh == 1:
        return mask.reshape(mb, 1, 1, mq, mk)
    return mask.reshape(mb, heads_kv, group, mq, mk)


def _block(mask5: np.ndarray, qs: int, qe: int, ks: int, ke: int) -> np.ndarray:
    rows = slice(qs, qe) if mask5.shape[-2] > 1 else slice(None)
    cols = slice(ks, ke) if mask5.shape[-1] > 1 else slice(None)
    return mask5[..., rows, cols]


def _visit(p: AttentionProblem, S: np.ndarray, mask5, qs: int, qe: int, ks: int, ke: int, keep_tanh=False):
    """One tile ``S [B, Hkv, G, bq, bk]`` of scaled scores: the score hook, then the user's mask, the window/causal
    rule and the block mask. Returns tanh(s / softcap) for the backward when asked."""
    B, Hkv, G, bq, bk = S.shape
    t = variants.score_hook(p, S.reshape(B, Hkv * G, bq, bk), qs, ks, keep_tanh=keep_tanh)
    apply_mask(S, None if mask5 is None else _block(mask5, qs, qe, ks, ke), variants.window_keep(p, qs, qe, ks, ke))
    if p.block_mask is not None:
        kind, keep = variants.block_keep(p, qs, qe, ks, ke)
        if keep is not None:
            variants.hide(S, _mask_as_groups(keep, Hkv, G))
    return t


def tiled_forward(p: AttentionProblem, block_q: int, block_k: int) -> tuple[np.ndarray, np.ndarray]:
    """FlashAttention forward over ``block_q x block_k`` tiles. Returns ``(out, lse)`` like step 1."""
    B, Hkv, G = p.batch, p.heads_kv, p.group
    Lq, Lk, D = p.len_q, p.len_k, p.head_dim
    q = p.q.reshape(B, Hkv, G, Lq, D)
    k = p.k[:, :, None]
    v = p.v[:, :, None]
    mask5 = _mask_as_groups(p.mask, Hkv, G)

    out = np.zeros((B, Hkv, G, Lq, D), dtype=p.dtype)
    lse = np.full((B, Hkv, G, Lq), -np.inf, dtype=p.dtype)
    for qs in range(0, Lq, block_q):
        qe = min(qs + block_q, Lq)
        q_blk = q[..., qs:qe, :]
        m = np.full((B, Hkv, G, qe - qs, 1), -np.inf, dtype=p.dtype)
        l = np.zeros_like(m)
        acc = np.zeros((B, Hkv, G, qe - qs, D), dtype=p.dtype)
        # causal or a window: only the key blocks some row of this block can see (e.g. causal: keys up to
        # qe - 1 + offset); a block mask's empty tiles are skipped
        k_start, k_stop = variants.key_range(p, qs, qe)
        for ks in range(k_start // block_k * block_k, k_stop, block_k):
            ke = min(ks + block_k, Lk)
            if variants.block_empty(p, qs, ks):
                continue
            S = np.matmul(q_blk, k[..., ks:ke, :].swapaxes(-1, -2))
            S *= p.scale
            _visit(p, S, mask5, qs, qe, ks, ke)
            m_new = np.maximum(m, S.max(axis=-1, keepdims=True))
            m_safe = safe_max(m_new)
            S -= m_safe
            np.exp(S, out=S)
            alpha = np.exp(m - m_safe)
            l *= alpha
            l += S.sum(axis=-1, keepdims=True)
            acc *= alpha
            acc += np.matmul(S, v[..., ks:ke, :])
            m = m_new
        np.divide(acc, l, out=out[..., qs:qe, :], where=l > 0)
        with np.errstate(divide="ignore"):
            np.add(m[..., 0], np.log(l[..., 0]), out=lse[..., qs:qe], where=l[..., 0] > 0)
    return out.reshape(B, p.heads_q, Lq, D), lse.reshape(B, p.heads_q, Lq)


def tiled_backward(p: AttentionProblem, out: np.ndarray, lse: np.ndarray, dout: np.ndarray, block_q: int,
                   block_k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FlashAttention-2 backward over ``block_q x block_k`` tiles; returns ``(dq, dk, dv)`` like step 1's."""
    B, Hkv, G = p.batch, p.heads_kv, p.group
    Lq, Lk, D = p.len_q, p.len_k, p.head_dim
    q = p.q.reshape(B, Hkv, G, Lq, D)
    k, v = p.k[:, :, None], p.v[:, :, None]
    do = dout.reshape(B, Hkv, G, Lq, D)
    lse5 = lse.reshape(B, Hkv, G, Lq)
    mask5 = _mask_as_groups(p.mask, Hkv, G)
    Drow = np.einsum("bhgid,bhgid->bhgi", do, out.reshape(B, Hkv, G, Lq, D))  # D = rowsum(dO * O), once

    dq = np.zeros((B, Hkv, G, Lq, D), dtype=p.dtype)
    dk = np.zeros((B, Hkv, Lk, D), dtype=p.dtype)
    dv = np.zeros((B, Hkv, Lk, D), dtype=p.dtype)
    for ks in range(0, Lk, block_k):
        ke = min(ks + block_k, Lk)
        k_blk, v_blk = k[..., ks:ke, :], v[..., ks:ke, :]
        dk_acc = np.zeros((B, Hkv, G, ke - ks, D), dtype=p.dtype)
        dv_acc = np.zeros_like(dk_acc)
        # causal or a window: only the query tiles holding rows that see these keys (causal: from ks - offset)
        q_start, q_stop = variants.query_range(p, ks, ke)
        for qs in range(q_start // block_q * block_q, q_stop, block_q):
            qe = min(qs + block_q, Lq)
            if variants.block_empty(p, qs, ks):
                continue
            S = np.matmul(q[..., qs:qe, :], k_blk.swapaxes(-1, -2))
            S *= p.scale
            tanh = _visit(p, S, mask5, qs, qe, ks, ke, keep_tanh=True)
            P = recompute_weights(S, lse5[..., qs:qe])
            dv_acc += np.matmul(P.swapaxes(-1, -2), do[..., qs:qe, :])
            dS = np.matmul(do[..., qs:qe, :], v_blk.swapaxes(-1, -2))
            dS -= Drow[..., qs:qe, None]
            dS *= P
            if tanh is not None:  # through the softcap
                dS *= 1 - tanh.reshape(dS.shape) ** 2
            dq[..., qs:qe, :] += np.matmul(dS, k_blk) * p.scale
            dk_acc += np.matmul(dS.swapaxes(-1, -2), q[..., qs:qe, :])
        dk[..., ks:ke, :] = dk_acc.sum(axis=2) * p.scale
        dv[..., ks:ke, :] = dv_acc.sum(axis=2)
    return dq.reshape(B, p.heads_q, Lq, D), dk, dv


class TiledBackend(Backend):
    name = "tiled"
    summary = "NumPy FlashAttention: online softmax over block_q x block_k tiles, O(N) memory"
    takes_block_sizes = True
    default_blocks = (128, 128)
    auto_priority = 80
    dtypes = SUPPORTED_DTYPES  # 16-bit inputs are computed in float32
    variants = ALL_VARIANTS
    backward_variants = ALL_VARIANTS

    def extra_bytes(self, shape: ProblemShape, itemsize: int, *, block_q=None, block_k=None,
                    causal=False, mask_shape=None, **options) -> int:
        bq, bk = self.resolve_blocks(block_q, block_k)
        bq, bk = min(bq, max(shape.len_q, 1)), min(bk, max(shape.len_k, 1))
        rows = shape.batch * shape.heads_q * bq
        # the score tile S, the accumulator and P·V's result (D each), and ~6 per-row vectors
        working = rows * (bk + 2 * shape.head_dim + 6) * itemsize
        # the causal keep-mask of a tile and its inverse (bool)
        mask_temp = 2 * bq * bk if causal else 0
        if mask_shape is not None:
            mask_temp += rows * bk  # a bool mask block is inverted (1 byte per element)
        return working + mask_temp

    def forward(self, problem, block_q=None, block_k=None, **options):
        return tiled_forward(problem.upcast(), *self.resolve_blocks(block_q, block_k))  # 16-bit: in float32

    has_backward = True

    def backward_extra_bytes(self, shape: ProblemShape, itemsize: int, *, block_q=None, block_k=None,
                             causal=False, mask_shape=None, **options) -> int:
        bq, bk = self.resolve_blocks(block_q, block_k)
        bq, bk = min(bq, max(shape.len_q, 1)), min(bk, max(shape.len_k, 1))
        rows = shape.batch * shape.heads_q * bq
        tiles = 3 * rows * bk * itemsize  # S/P, dS and a product's temporary
        per_tile = 4 * shape.batch * shape.heads_q * bk * shape.head_dim * itemsize  # dK, dV partials and products
        row_vectors = shape.batch * shape.heads_q * shape.len_q * itemsize  # D = rowsum(dO * O)
        products = 2 * rows * shape.head_dim * itemsize  # dS K and its scaled copy
        mask_temp = (2 * bq * bk if causal else 0) + (rows * bk if mask_shape is not None else 0)
        return tiles + per_tile + row_vectors + products + mask_temp

    def backward(self, problem, out, lse, dout, block_q=None, block_k=None, **options):
        f32 = problem.upcast()
        return tiled_backward(f32, out.astype(f32.dtype, copy=False), lse.astype(f32.dtype, copy=False),
                              dout.astype(f32.dtype, copy=False), *self.resolve_blocks(block_q, block_k))

    has_decode = True

    def decode(self, problem, splits, **options):
        """Flash-Decoding's split-KV in NumPy (`chordlab.decoding.split_kv_decode`)."""
        from .decoding import split_kv_decode

        return split_kv_decode(problem, splits)


register(TiledBackend())
