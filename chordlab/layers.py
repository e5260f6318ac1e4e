"""`MultiHeadAttention`: a NumPy attention layer around `chordlab.attention`.

Layout at its edges is ``[L, H, D]`` per sequence (the seed transformer's), i.e. activations
``x [B, L, d_model]`` (or ``[L, d_model]``) are projected to ``q [B, L, H, D]`` and ``k, v [B, L, Hkv, D]``,
transposed to the kernels' ``[B, H, L, D]``, attended, transposed back and projected out:

    q = x Wq,  k = x Wk,  v = x Wv           (Wq: [d_model, H·D], Wk and Wv: [d_model, Hkv·D])
    y = attention(q, k, v) Wo                (Wo: [H·D, d_model])

Weights are drawn from a seeded generator, so two layers built with the same seed are identical and the
output is the same whichever backend computes the attention.

`backward(dy)` returns the gradients of the input(s) and of the four projections, through
`chordlab.attention_backward` (the forward keeps q, k, v, its output and lse for it):

    dWo = Oᵀ dy,  dO = dy Woᵀ  ->  (dq, dk, dv) = attention_backward(dO, ...)
    dWq = xᵀ dq,  dWk = cᵀ dk,  dWv = cᵀ dv,  dx = dq Wqᵀ (+ dk Wkᵀ + dv Wvᵀ when c = x)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .api import attention, attention_backward


@dataclass
class MhaGrads:
    """What `MultiHeadAttention.backward` returns: the input's gradient (``dcontext`` too for cross-attention,
    else None) and the gradients of the four projection matrices."""

    dx: np.ndarray
    dcontext: np.ndarray | None
    w_q: np.ndarray
    w_k: np.ndarray
    w_v: np.ndarray
    w_o: np.ndarray


class MultiHeadAttention:
    """Multi-head (or grouped-query, or multi-query) self/cross attention with seeded weights.

    Args:
        d_model: width of the activations.
        num_heads: query heads ``H``; ``d_model`` must be divisible by it (``D = d_model // H``).
        num_kv_heads: key/value heads ``Hkv`` (default ``H``); ``H`` must be a multiple of it.
        seed: seeds the weight initialisation (normal, std ``1/sqrt(d_model)``).
        backend: default backend for `forward` (any name from `chordlab.backends()` or ``"auto"``).
        dtype: float32 or float64.
    """

    def __init__(self, d_model: int, num_heads: int, num_kv_heads: int | None = None, *, seed: int = 0,
                 backend: str = "auto", dtype=np.float32):
        if num_heads <= 0 or d_model % num_heads:
            raise ValueError(f"d_model={d_model} must be a positive multiple of num_heads={num_heads}")
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_kv_heads <= 0 or num_heads % num_kv_heads:
            raise ValueError(f"num_heads={num_heads} must be a multiple of num_kv_heads={num_kv_heads}")
        self.d_model, self.num_heads, self.num_kv_heads = d_model, num_heads, num_kv_heads
        self.head_dim = d_model // num_heads
        self.backend = backend
        self.dtype = np.dtype(dtype)
        rng = np.random.default_rng(seed)
        std = 1.0 / np.sqrt(d_model)
        kv_width = num_kv_heads * self.head_dim

        def w(rows, cols):
            return (rng.standard_normal((rows, cols)) * std).astype(self.dtype)

        self.w_q, self.w_k, self.w_v = w(d_model, d_model), w(d_model, kv_width), w(d_model, kv_width)
        self.w_o = w(d_model, d_model)

    def __call__(self, x, context=None, **kwargs):
        return self.forward(x, context, **kwargs)

    def forward(self, x, context=None, *, mask=None, causal=False, backend=None, block_q=None,
                block_k=None):
        """``x [B, Lq, d_model]`` (or ``[Lq, d_model]``) -> same shape. ``context`` (default ``x``) gives
        the keys and values. ``mask`` as in `chordlab.attention`."""
        x = np.asarray(x)
        context = x if context is None else np.asarray(context)
        if x.ndim not in (2, 3) or x.shape[-1] != self.d_model:
            raise ValueError(f"x must be [L, d_model] or [B, L, d_model] with d_model={self.d_model}, "
                             f"got {x.shape}")
        if context.ndim != x.ndim or context.shape[-1] != self.d_model or context.shape[:-2] != x.shape[:-2]:
            raise ValueError(f"context must match x's batch and d_model; got {context.shape} for x {x.shape}")
        squeeze = x.ndim == 2
        x3 = x[None] if squeeze else x
        c3 = context[None] if squeeze else context
        x3, c3 = x3.astype(self.dtype, copy=False), c3.astype(self.dtype, copy=False)
        B, Lq, _ = x3.shape
        Lk = c3.shape[1]
        H, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
        # [B, L, H, D] at the edges (the seed's layout) -> [B, H, L, D] for the kernels
        q = (x3 @ self.w_q).reshape(B, Lq, H, D).transpose(0, 2, 1, 3)
        k = (c3 @ self.w_k).reshape(B, Lk, Hkv, D).transpose(0, 2, 1, 3)
        v = (c3 @ self.w_v).reshape(B, Lk, Hkv, D).transpose(0, 2, 1, 3)
        o, lse = attention(q, k, v, mask=mask, causal=causal, backend=backend or self.backend,
                           block_q=block_q, block_k=block_k, return_lse=True)
        o2 = o.transpose(0, 2, 1, 3).reshape(B, Lq, H * D)
        y = o2 @ self.w_o
        self._saved = dict(x=x3, c=c3, q=q, k=k, v=v, o=o, o2=o2, lse=lse, mask=mask, causal=causal,
                           squeeze=squeeze, self_attention=context is x)
        return y[0] if squeeze else y

    def extend(self, x, cache, *, backend: str = "auto", **decode_options):
        """Generation with a KV cache (chapter 10): the new tokens ``x [B, L_new, d_model]`` (or ``[L_new, d_model]``
        for a batch-1 cache) have their keys and values appended to ``cache`` (a `chordlab.KVCache` with this
        layer's kv heads and head dim; they are converted to its dtype), then their queries attend to everything
        cached (`chordlab.decode`, causal). The result equals the last ``L_new`` rows of ``forward`` over the whole
        sequence with ``causal=True``, without recomputing the earlier tokens' keys and values."""
        from .decoding import decode
        from .kv_cache import KVCache

        if not isinstance(cache, KVCache):
            raise TypeError(f"cache must be a chordlab.KVCache, got {type(cache).__name__}")
        if (cache.kv_heads, cache.head_dim) != (self.num_kv_heads, self.head_dim):
            raise ValueError(f"the cache holds {cache.kv_heads} kv heads of dim {cache.head_dim}; this layer has "
                             f"{self.num_kv_heads} of dim {self.head_dim}")
        x = np.asarray(x)
        squeeze = x.ndim == 2
        x3 = (x[None] if squeeze else x).astype(self.dtype, copy=False)
        if x3.ndim != 3 or x3.shape[-1] != self.d_model:
            raise ValueError(f"x must be [L, d_model] or [B, L, d_model] with d_model={self.d_model}, got {x.shape}")
        B, L, _ = x3.shape
        H, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
        q = (x3 @ self.w_q).reshape(B, L, H, D).transpose(0, 2, 1, 3)
        k = (x3 @ self.w_k).reshape(B, L, Hkv, D).transpose(0, 2, 1, 3)
        v = (x3 @ self.w_v).reshape(B, L, Hkv, D).transpose(0, 2, 1, 3)
        cache.append(np.ascontiguousarray(k).astype(cache.dtype), np.ascontiguousarray(v).astype(cache.dtype))
        o = decode(np.ascontiguousarray(q), cache, backend=backend, **decode_options)
        y = o.transpose(0, 2, 1, 3).reshape(B, L, H * D) @ self.w_o
        return y[0] if squeeze else y

    def backward(self, dy, *, backend: str = "auto") -> MhaGrads:
        """Gradients for ``dy``, the gradient of the last `forward`'s output (same shape). ``backend``: one with
        a backward pass (`chordlab.attention_backward`); the forward may have used any."""
        saved = getattr(self, "_saved", None)
        if saved is None:
            raise RuntimeError("backward() needs a forward() first: it uses that call's activations")
        dy = np.asarray(dy, dtype=self.dtype)
        want = saved["o2"].shape[:2] + (self.d_model,)
        want = want[1:] if saved["squeeze"] else want
        if dy.shape != want:
            raise ValueError(f"dy must have the shape of the last forward's output {want}, got {dy.shape}")
        dy3 = dy[None] if saved["squeeze"] else dy
        x3, c3, q, k, v, o = (saved[n] for n in ("x", "c", "q", "k", "v", "o"))
        B, Lq, _ = x3.shape
        Lk = c3.shape[1]
        H, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
        w_o = np.einsum("bli,blj->ij", saved["o2"], dy3)
        do = (dy3 @ self.w_o.T).reshape(B, Lq, H, D).transpose(0, 2, 1, 3)
        dq, dk, dv = attention_backward(np.ascontiguousarray(do), q, k, v, o, saved["lse"], mask=saved["mask"],
                                        causal=saved["causal"], backend=backend)
        dq2 = dq.transpose(0, 2, 1, 3).reshape(B, Lq, H * D)
        dk2 = dk.transpose(0, 2, 1, 3).reshape(B, Lk, Hkv * D)
        dv2 = dv.transpose(0, 2, 1, 3).reshape(B, Lk, Hkv * D)
        grads = MhaGrads(dx=dq2 @ self.w_q.T, dcontext=dk2 @ self.w_k.T + dv2 @ self.w_v.T,
                         w_q=np.einsum("bli,blj->ij", x3, dq2), w_k=np.einsum("bli,blj->ij", c3, dk2),
                         w_v=np.einsum("bli,blj->ij", c3, dv2), w_o=w_o)
        if saved["self_attention"]:
            grads.dx, grads.dcontext = grads.dx + grads.dcontext, None
        if saved["squeeze"]:
            grads.dx = grads.dx[0]
            grads.dcontext = None if grads.dcontext is None else grads.dcontext[0]
        return grads

    def __repr__(self) -> str:
        return (f"MultiHeadAttention(d_model={self.d_model}, num_heads={self.num_heads}, "
                f"num_kv_heads={self.num_kv_heads}, backend={self.backend!r}, dtype={self.dtype})")
