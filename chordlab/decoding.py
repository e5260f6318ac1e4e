"""`decode`: new queries against a KV cache (chapter 10), and Flash-Decoding's split-KV in NumPy.

Decode is attention with few queries (usually one new token per sequence) and many keys (everything generated so
far). Each query row reads every cached key and value once and does two multiply-adds per element it reads, so its
speed is set by memory bandwidth, not by FLOPs. Shapes::

    q     [B, Hq, Lq, D]       Lq >= 1 new tokens per sequence (their keys already appended to the cache)
    cache KVCache (row b is sequence b) or PagedKVCache (sequence seq_ids[b])
    out   [B, Hq, Lq, D], lse [B, Hq, Lq]

Query ``i`` of sequence ``b`` (length ``n_b``) sees key ``j`` iff ``j <= i + n_b - Lq`` (causal, bottom-right), and
the window, ALiBi and softcap of chapter 11 apply relative to ``n_b``. The result equals
``attention(q[b], k_b, v_b, causal=True, ...)`` on the gathered cache of every sequence (tested).

Split-KV (Flash-Decoding): the keys a sequence's queries may see are cut into ``splits`` equal ranges, each
computed independently into a partial state ``(m, l, acc)`` (chapter 2), then merged by log-sum-exp::

    m = max_s m_s,   l = Σ_s l_s · e^(m_s - m),   out = Σ_s acc_s · e^(m_s - m) / l,   lse = m + log l

so that one sequence with few heads still gives every core work. ``splits="auto"`` (`auto_splits`): enough items
(batch x kv heads x splits) for two per thread, but no split shorter than 256 keys (each split's merge and its
scratch cost a little), and 1 for a single-threaded NumPy run.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from . import variants
from .backends import _REGISTRY, backend_names, get_backend
from .kv_cache import KVCache, PagedKVCache

MIN_SPLIT_KEYS = 256


@dataclass(frozen=True)
class DecodeProblem:
    """A checked `decode` request: q ``[B, Hq, Lq, D]`` contiguous; the cache; each sequence's length; for a paged
    cache the block table ``[B, pages]`` (-1 padded); the scale; chapter 11's window, ALiBi slopes and softcap."""

    q: np.ndarray
    cache: KVCache | PagedKVCache
    seq_ids: tuple | None
    lengths: np.ndarray
    block_table: np.ndarray | None
    scale: float
    window: tuple | None = None
    alibi: np.ndarray | None = None
    softcap: float | None = None

    batch = property(lambda self: self.q.shape[0])
    heads_q = property(lambda self: self.q.shape[1])
    len_q = property(lambda self: self.q.shape[2])
    head_dim = property(lambda self: self.q.shape[3])
    heads_kv = property(lambda self: self.cache.kv_heads)
    dtype = property(lambda self: self.q.dtype)
    kv_dtype = property(lambda self: self.cache.dtype)
    paged = property(lambda self: isinstance(self.cache, PagedKVCache))

    @property
    def group(self) -> int:
        return self.heads_q // self.heads_kv

    def gathered(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Sequence b's cached keys and values, ``[Hkv, n_b, D]`` each (a copy for a paged cache)."""
        if self.paged:
            return self.cache.gather(self.seq_ids[b])
        return self.cache.keys(b), self.cache.values(b)

    def bounds(self, b: int) -> tuple[int, int, int, int]:
        """``(lo, hi, first, last)``: query i sees key j iff lo <= j - i <= hi; its queries see keys [first, last)."""
        n, Lq = int(self.lengths[b]), self.len_q
        off = n - Lq
        left, right = self.window if self.window is not None else (None, None)
        lo = -(1 << 62) if left is None else off - left
        hi = off if right is None else min(off, off + right)
        return lo, hi, max(0, lo), min(n, Lq - 1 + hi + 1)


def _check_q(q) -> np.ndarray:
    if not isinstance(q, np.ndarray):
        raise TypeError(f"q must be a NumPy array [B, Hq, Lq, D], got {type(q).__name__}")
    from .validation import SUPPORTED_DTYPES

    if q.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"q must be float32, float64, float16 or bfloat16, got {q.dtype}")
    if q.ndim != 4:
        raise ValueError(f"q must be [B, Hq, Lq, D] (Lq new tokens, usually 1), got shape {q.shape}")
    return q


def prepare_decode(q, cache, *, scale=None, seq_ids=None, window=None, alibi_slopes=None, softcap=None
                   ) -> DecodeProblem:
    """Check `decode`'s arguments; errors name the argument and the expected shape."""
    q = _check_q(q)
    if not isinstance(cache, (KVCache, PagedKVCache)):
        raise TypeError(f"cache must be a chordlab.KVCache or chordlab.PagedKVCache, got {type(cache).__name__}")
    B, Hq, Lq, D = q.shape
    if isinstance(cache, PagedKVCache):
        seq_ids = tuple(cache.sequences if seq_ids is None else seq_ids)
        if len(seq_ids) != B:
            raise ValueError(f"q has batch {B} but {len(seq_ids)} sequences were given (seq_ids: q's row b is "
                             "sequence seq_ids[b]; the default is every live sequence, in the order they were added)")
        table, lengths = cache.tables(seq_ids)
    else:
        if seq_ids is not None:
            raise ValueError("seq_ids is for a PagedKVCache; a KVCache's row b is sequence b")
        if B != cache.batch:
            raise ValueError(f"q has batch {B}, the cache {cache.batch}")
        table, lengths = None, cache.lengths
    if D != cache.head_dim:
        raise ValueError(f"q has head dim {D}, the cache {cache.head_dim}")
    if Hq % cache.kv_heads:
        raise ValueError(f"query heads Hq={Hq} must be a multiple of the cache's kv heads {cache.kv_heads}")
    short = [b for b in range(B) if lengths[b] < Lq]
    if short:
        raise ValueError(f"sequence {short[0]} holds {int(lengths[short[0]])} keys, fewer than the Lq = {Lq} new "
                         "queries: append the new tokens' keys and values to the cache first")
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    elif isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number or None, got {scale!r}")
    return DecodeProblem(np.ascontiguousarray(q), cache, seq_ids, lengths, table, float(scale),
                         variants.check_window(window), variants.check_alibi(alibi_slopes, B, Hq),
                         variants.check_softcap(softcap))


def auto_splits(batch: int, kv_heads: int, max_keys: int, threads: int) -> int:
    """``splits="auto"``: two items per thread over (sequence, kv head, split), no split under 256 keys."""
    if threads <= 1:
        return 1
    want = -(-2 * threads // (batch * kv_heads))
    return max(1, min(want, max_keys // MIN_SPLIT_KEYS))


def check_splits(splits, p: DecodeProblem, threads: int) -> int:
    if isinstance(splits, str) and splits == "auto":
        longest = max(last - first for _, _, first, last in map(p.bounds, range(p.batch)))
        return auto_splits(p.batch, p.heads_kv, longest, threads)
    if isinstance(splits, bool) or not isinstance(splits, numbers.Integral) or splits < 1:
        raise ValueError(f"splits must be a positive int or 'auto', got {splits!r}")
    return int(splits)


# ------------------------------------------------------------------------------------------------ NumPy kernels

def reference_decode(p: DecodeProblem) -> tuple[np.ndarray, np.ndarray]:
    """`attention` (the reference) on each sequence's gathered cache: the definition decode must match."""
    from .api import attention

    out = np.zeros(p.q.shape, p.dtype)
    lse = np.zeros(p.q.shape[:3], p.dtype)
    for b in range(p.batch):
        k, v = (x.astype(p.dtype)[None] for x in p.gathered(b))
        out[b:b + 1], lse[b:b + 1] = attention(
            p.q[b:b + 1], k, v, causal=True, scale=p.scale, window=p.window, softcap=p.softcap,
            alibi_slopes=None if p.alibi is None else p.alibi[min(b, len(p.alibi) - 1)], backend="reference",
            return_lse=True)
    return out, lse


def _chunks(p: DecodeProblem, b: int, hk: int, k0: int, k1: int):
    """``(j0, K, V)`` over keys [k0, k1) of sequence b, head hk, each a contiguous run: a page of a paged cache
    (through the block table: no gather) or the whole range of a contiguous one. K, V ``[n, D]`` views."""
    if k1 <= k0:
        return
    if not p.paged:
        yield k0, p.cache.k[b, hk, k0:k1], p.cache.v[b, hk, k0:k1]
        return
    size = p.cache.page_size
    j = k0
    while j < k1:
        page, slot = int(p.block_table[b, j // size]), j % size
        n = min(k1 - j, size - slot)
        yield j, p.cache.k[hk, page, slot:slot + n], p.cache.v[hk, page, slot:slot + n]
        j += n


def _partial_state(p: DecodeProblem, b: int, heads: range, qs: np.ndarray, j0: int, K, V):
    """Partial (m, l, acc) of query rows ``qs [G, Lq, D]`` (pre-scaled) over keys j0 .. j0 + n: the hook, the window
    and causal rule, then exp against the chunk's own max."""
    K, V = K.astype(p.dtype), V.astype(p.dtype)
    S = qs @ K.T  # [G, Lq, n]
    n, Lq = K.shape[0], p.len_q
    if p.softcap is not None:
        S = p.softcap * np.tanh(S / p.softcap)
    rel = (j0 + np.arange(n))[None, :] - np.arange(Lq)[:, None]  # j - i
    if p.alibi is not None:
        off = int(p.lengths[b]) - Lq
        slopes = p.alibi[min(b, len(p.alibi) - 1), heads.start:heads.stop].astype(p.dtype)
        S = S - slopes[:, None, None] * np.abs(rel - off)
    lo, hi, _, _ = p.bounds(b)
    S = np.where((rel >= lo) & (rel <= hi), S, -np.inf)
    m = S.max(axis=-1)
    e = np.exp(S - np.where(np.isneginf(m), 0, m)[..., None])
    return m, e.sum(axis=-1), e @ V


def merge(a, b):
    """Two partial states ``(m, l, acc)`` into one (chapter 2's merge, with the output accumulators)."""
    m = np.maximum(a[0], b[0])
    safe = np.where(np.isneginf(m), 0, m)
    wa, wb = np.exp(a[0] - safe), np.exp(b[0] - safe)
    return m, a[1] * wa + b[1] * wb, a[2] * wa[..., None] + b[2] * wb[..., None]


def split_kv_decode(p: DecodeProblem, splits: int) -> tuple[np.ndarray, np.ndarray]:
    """Flash-Decoding in NumPy: per (sequence, kv head), the visible keys cut into ``splits`` ranges, each a partial
    state (page by page in a paged cache), merged at the end."""
    G, Lq, D = p.group, p.len_q, p.head_dim
    out = np.zeros(p.q.shape, p.dtype)
    lse = np.full(p.q.shape[:3], -np.inf, p.dtype)
    for b in range(p.batch):
        _, _, first, last = p.bounds(b)
        per = -(-max(last - first, 0) // splits)
        for hk in range(p.heads_kv):
            heads = range(hk * G, (hk + 1) * G)
            qs = p.q[b, heads.start:heads.stop] * p.dtype.type(p.scale)
            def empty():
                return np.full((G, Lq), -np.inf, p.dtype), np.zeros((G, Lq), p.dtype), np.zeros((G, Lq, D), p.dtype)

            state = empty()
            for s in range(splits):  # independent: a thread (or a GPU block) each, in the C kernel
                k0, k1 = first + s * per, min(first + (s + 1) * per, last)
                part = empty()
                for j0, K, V in _chunks(p, b, hk, k0, k1):
                    part = merge(part, _partial_state(p, b, heads, qs, j0, K, V))
                state = merge(state, part)
            m, l, acc = state
            np.divide(acc, l[..., None], out=out[b, heads.start:heads.stop], where=l[..., None] > 0)
            with np.errstate(divide="ignore"):
                lse[b, heads.start:heads.stop] = np.where(l > 0, m + np.log(np.where(l > 0, l, 1)), -np.inf)
    return out, lse


# ------------------------------------------------------------------------------------------------ the function

def _why_not(b, p: DecodeProblem, options: dict) -> tuple[type, str] | None:
    """Why backend ``b`` cannot decode ``p`` with these options, as (the exception to raise, the reason), or None."""
    if not b.has_decode:
        return NotImplementedError, "has no decode kernel"
    a = b.available()
    if not a:
        return RuntimeError, f"unavailable: {a.reason}"
    s = b.supports_decode(p)
    if not s:
        return TypeError, s.reason
    unknown = sorted(set(options) - set(b.decode_options))
    if unknown:
        takes = ", ".join(b.decode_options) or "none"
        return TypeError, f"takes no decode option {unknown[0]!r} (its options: {takes})"
    return None


def decode_backends(p: DecodeProblem, **options) -> list[tuple[str, str | None]]:
    """``[(name, why it is passed over or None), ...]`` in the order ``backend="auto"`` tries them."""
    rows = []
    for name in backend_names():
        why = _why_not(_REGISTRY[name], p, options)
        rows.append((name, None if why is None else why[1]))
    return rows


def decode(q, cache, *, scale=None, backend="auto", splits="auto", return_lse=False, seq_ids=None, window=None,
           alibi_slopes=None, softcap=None, block_mask=None, **options):
    """Attention of new queries ``q [B, Hq, Lq, D]`` over a KV cache (see the module docstring).

    Args:
        q: float32 (or float64 for the NumPy backends; float16 and bfloat16 are decoded in float32 and returned in
            their dtype); its new tokens' keys already appended to the cache.
        cache: a `KVCache` (row b) or a `PagedKVCache` (sequence ``seq_ids[b]``; default: every live sequence).
        scale: default ``1 / sqrt(D)``.
        backend: ``"simd"`` (C, float32/float16/bfloat16 caches), ``"tiled"`` (split-KV in NumPy),
            ``"reference"`` (attention on the gathered cache) or ``"auto"`` (the first that can).
        splits: split-KV ranges per (sequence, kv head), or ``"auto"`` (`auto_splits`).
        window, alibi_slopes, softcap: chapter 11's variants, relative to each sequence's length.
        **options: backend options (``isa``, ``threads`` for ``simd``).

    Returns:
        out ``[B, Hq, Lq, D]`` in q's dtype (and lse ``[B, Hq, Lq]`` with ``return_lse``).
    """
    if block_mask is not None:
        raise TypeError("decode takes no block_mask (its keys grow every step); use window= or attention(...)")
    from .validation import compute_dtype, lse_dtype

    out_dtype = q.dtype if isinstance(q, np.ndarray) else None
    if out_dtype is not None and compute_dtype(out_dtype) != out_dtype:
        q = q.astype(compute_dtype(out_dtype))  # 16-bit queries: decoded in float32, returned in their dtype
    p = prepare_decode(q, cache, scale=scale, seq_ids=seq_ids, window=window, alibi_slopes=alibi_slopes,
                       softcap=softcap)
    if backend == "auto":
        reasons = decode_backends(p, **options)
        name = next((n for n, why in reasons if why is None), None)
        if name is None:
            raise RuntimeError("no backend can decode this (" + "; ".join(f"{n}: {w}" for n, w in reasons) + ")")
        b = _REGISTRY[name]
    else:
        b = get_backend(backend)
        why = _why_not(b, p, options)
        if why is not None:
            kind, reason = why
            if kind is NotImplementedError:
                reason += "; backends with one: " + ", ".join(n for n in backend_names() if _REGISTRY[n].has_decode)
            raise kind(f"backend {b.name!r} {reason}")
    n_splits = check_splits(splits, p, b.decode_threads(**options))
    from .api import run_backend

    out, lse = run_backend(b, lambda: b.decode(p, n_splits, **options))
    out, lse = np.asarray(out, out_dtype), np.asarray(lse, lse_dtype(out_dtype))
    return (out, lse) if return_lse else out
