"""Step 1: the O(N²) reference, attention exactly as the textbook writes it.

    O = softmax(scale · Q Kᵀ + mask) V

computed in numbered passes, each over the whole ``[B, Hq, Lq, Lk]`` score matrix:

    pass 1  scores      S = scale · Q Kᵀ             (then the score hook of chapter 11: softcap, ALiBi;
                                                    then masked: -inf where a key is hidden)
    pass 2  max         m = max_j S[i, j]
    pass 3  exp and sum P = exp(S - m),  l = Σ_j P[i, j]
    pass 4  normalize   P = P / l
    pass 5  weight      O = P V,         lse = m + log l

Every later kernel (online softmax, tiled, SIMD C, CUDA, WebGPU) fuses these passes and is checked
against this one. The backward pass is written the same way (`reference_backward`), from the forward's
``out`` and ``lse`` and the gradient of the output ``dO``:

    pass 1  recompute   P = exp(hook(scale · Q Kᵀ) + mask - lse)   (the forward's weights, not stored)
    pass 2  values      dV = Pᵀ dO
    pass 3  weights     dP = dO Vᵀ
    pass 4  row dot     D = rowsum(dO ∘ O)                     (= rowsum(P ∘ dP): the softmax Jacobian's term)
    pass 5  scores      dS = P ∘ (dP - D)   (times 1 - tanh²(s / softcap) with a softcap: the hook's derivative)
    pass 6  inputs      dQ = scale · dS K,  dK = scale · dSᵀ Q

Its cost is the score matrix: ``B·Hq·Lq·Lk`` numbers, so it checks the memory budget first and refuses
(saying how much it needs) rather than letting the machine swap or die. The backward holds two of them.

Run it: ``chordlab.attention(q, k, v, backend="reference")``;
``chordlab.attention_backward(dout, q, k, v, out, lse, backend="reference")``.
"""

from __future__ import annotations

import numpy as np

from . import variants
from .backends import Backend, register
from .validation import SUPPORTED_DTYPES, AttentionProblem, ProblemShape

#: Every variant of chapter 11; the reference computes them all on the full score matrix.
ALL_VARIANTS = frozenset({"window", "alibi", "softcap", "block_mask"})


def apply_mask(scores: np.ndarray, mask: np.ndarray | None, keep: np.ndarray | None = None) -> None:
    """Mask a block of scores ``[..., bq, bk]`` in place: ``mask`` is the matching block of the user's mask
    (bool: False hides a key; float: added), already sliced and broadcastable; ``keep`` (bool, broadcastable) hides
    where False: the window/causal rule and the block mask of chapter 11 (`chordlab.variants`)."""
    if mask is not None:
        if mask.dtype == np.bool_:
            np.copyto(scores, -np.inf, where=~mask)
        else:
            scores += mask
    variants.hide(scores, keep)


def hook_and_mask(p: AttentionProblem, S: np.ndarray, keep_tanh: bool = False):
    """Pass 1's tail on the full score matrix ``S [B, Hq, Lq, Lk]``: the score hook, then every mask."""
    t = variants.score_hook(p, S, 0, 0, keep_tanh=keep_tanh)
    apply_mask(S, p.mask, variants.dense_visibility(p))
    return t


def safe_max(m: np.ndarray) -> np.ndarray:
    """The row max with -inf (a row whose every key is masked) replaced by 0, so that
    ``exp(S - m)`` gives 0 instead of ``exp(-inf - -inf) = NaN``."""
    return np.where(np.isneginf(m), 0.0, m).astype(m.dtype, copy=False)


def reference_forward(p: AttentionProblem) -> tuple[np.ndarray, np.ndarray]:
    """The five passes over a full score matrix. Returns ``(out [B,Hq,Lq,D], lse [B,Hq,Lq])``."""
    B, Hq, Hkv, G = p.batch, p.heads_q, p.heads_kv, p.group
    Lq, Lk, D = p.len_q, p.len_k, p.head_dim
    q = p.q.reshape(B, Hkv, G, Lq, D)  # the G query heads of one kv head share its K and V (no copy)
    k = p.k[:, :, None]
    v = p.v[:, :, None]

    # pass 1: scores S = scale * Q K^T, then the mask
    S = np.matmul(q, k.swapaxes(-1, -2))  # [B, Hkv, G, Lq, Lk]
    S *= p.scale
    S = S.reshape(B, Hq, Lq, Lk)
    hook_and_mask(p, S)

    # pass 2: row max
    m = S.max(axis=-1, keepdims=True)
    m = safe_max(m)

    # pass 3: exponentiate and sum (in place: S now holds P)
    S -= m
    np.exp(S, out=S)
    l = S.sum(axis=-1, keepdims=True)

    # pass 4: normalize; a fully masked row has l = 0 and stays all zeros
    inv_l = np.zeros_like(l)
    np.divide(1.0, l, out=inv_l, where=l > 0)
    S *= inv_l

    # pass 5: weight the values
    out = np.matmul(S.reshape(B, Hkv, G, Lq, Lk), v).reshape(B, Hq, Lq, D)
    with np.errstate(divide="ignore"):
        lse = (m + np.log(l))[..., 0]
    return out, lse


def recompute_weights(S: np.ndarray, lse: np.ndarray) -> np.ndarray:
    """``P = exp(S - lse)`` in place on the masked scores ``S [..., bq, bk]``, lse ``[..., bq]``; a row that saw no
    key (lse = -inf) gets weights 0, not NaN."""
    lse_safe = np.where(np.isneginf(lse), np.inf, lse)[..., None]  # exp(S - inf) = 0
    S -= lse_safe
    np.exp(S, out=S)
    return S


def reference_backward(p: AttentionProblem, out: np.ndarray, lse: np.ndarray, dout: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The six backward passes over full score matrices. ``out``, ``dout`` ``[B,Hq,Lq,D]``, ``lse [B,Hq,Lq]``.
    Returns ``(dq [B,Hq,Lq,D], dk, dv [B,Hkv,Lk,D])``; with GQA, dk and dv sum over the query heads of a group."""
    B, Hq, Hkv, G = p.batch, p.heads_q, p.heads_kv, p.group
    Lq, Lk, D = p.len_q, p.len_k, p.head_dim
    q = p.q.reshape(B, Hkv, G, Lq, D)
    k, v = p.k[:, :, None], p.v[:, :, None]
    do = dout.reshape(B, Hkv, G, Lq, D)

    # pass 1: recompute P from the scores and the forward's lse
    S = np.matmul(q, k.swapaxes(-1, -2))
    S *= p.scale
    S = S.reshape(B, Hq, Lq, Lk)
    tanh = hook_and_mask(p, S, keep_tanh=True)
    P = recompute_weights(S, lse).reshape(B, Hkv, G, Lq, Lk)

    # pass 2: dV = P^T dO, summed over the query heads that share a kv head
    dv = np.matmul(P.swapaxes(-1, -2), do).sum(axis=2)

    # pass 3: dP = dO V^T
    dS = np.matmul(do, v.swapaxes(-1, -2))

    # pass 4: D = rowsum(dO * O)
    Drow = np.einsum("bhgid,bhgid->bhgi", do, out.reshape(B, Hkv, G, Lq, D))[..., None]

    # pass 5: dS = P * (dP - D), in place
    dS -= Drow
    dS *= P
    if tanh is not None:  # through the softcap: d(c·tanh(s/c))/ds = 1 - tanh²
        dS *= 1 - tanh.reshape(dS.shape) ** 2

    # pass 6: dQ = scale dS K, dK = scale dS^T Q
    dq = np.matmul(dS, k).reshape(B, Hq, Lq, D) * p.scale
    dk = np.matmul(dS.swapaxes(-1, -2), q).sum(axis=2) * p.scale
    return dq.astype(p.dtype, copy=False), dk.astype(p.dtype, copy=False), dv.astype(p.dtype, copy=False)


class ReferenceBackend(Backend):
    name = "reference"
    summary = "NumPy, textbook O(N²): the full score matrix (the ground truth)"
    auto_priority = 90
    dtypes = SUPPORTED_DTYPES  # 16-bit inputs are computed in float32
    variants = ALL_VARIANTS
    backward_variants = ALL_VARIANTS

    def extra_bytes(self, shape: ProblemShape, itemsize: int, *, block_q=None, block_k=None,
                    causal=False, mask_shape=None, **options) -> int:
        rows = shape.batch * shape.heads_q * shape.len_q
        scores = rows * shape.len_k * itemsize
        row_stats = 3 * rows * itemsize  # m, l, 1/l
        # a bool mask (or the causal mask) is inverted once: one byte per element of its own shape
        mask_temp = 0
        if mask_shape is not None:
            mask_temp = int(np.prod(mask_shape))
        if causal:
            mask_temp = max(mask_temp, 0) + 2 * shape.len_q * shape.len_k
        return scores + row_stats + mask_temp

    def memory_advice(self) -> str:
        return "Use backend='tiled' (or 'auto'), which needs O(N) memory."

    def forward(self, problem, block_q=None, block_k=None, **options):
        return reference_forward(problem.upcast())  # 16-bit inputs: computed in float32

    has_backward = True

    def backward_extra_bytes(self, shape: ProblemShape, itemsize: int, *, block_q=None, block_k=None,
                             causal=False, mask_shape=None, **options) -> int:
        rows = shape.batch * shape.heads_q * shape.len_q
        # P and dP/dS, each a full score matrix, plus dV's and dK's per-query-head products before the group sum
        scores = 2 * rows * shape.len_k * itemsize
        per_head = 2 * shape.batch * shape.heads_q * shape.len_k * shape.head_dim * itemsize
        return scores + per_head + self.extra_bytes(shape, itemsize, causal=causal, mask_shape=mask_shape) \
            - rows * shape.len_k * itemsize

    def backward(self, problem, out, lse, dout, block_q=None, block_k=None, **options):
        f32 = problem.upcast()
        return reference_backward(f32, out.astype(f32.dtype, copy=False), lse.astype(f32.dtype, copy=False),
                                  dout.astype(f32.dtype, copy=False))

    has_decode = True

    def decode(self, problem, splits, **options):
        from .decoding import reference_decode

        return reference_decode(problem)


register(ReferenceBackend())
