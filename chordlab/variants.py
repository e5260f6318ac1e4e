"""Attention variants (chapter 11): sliding window, ALiBi, softcap and block-sparse masks.

Every variant enters a kernel in one of two places, the same in every backend:

* the **score hook**, applied to each scaled score ``s = scale · q_i · k_j`` before any mask::

      s  ->  softcap · tanh(s / softcap)           (Gemma 2's logit softcap, when softcap is set)
      s  ->  s - slope[b, h] · |i + Lk - Lq - j|    (ALiBi, when alibi_slopes is set)

  then the user's mask (bool hides, float adds) is applied;

* the **tile-visit rule**: query ``i`` sees key ``j`` iff ``i + off - left <= j <= i + off + right`` with
  ``off = Lk - Lq`` (bottom-right alignment, FlashAttention's ``window_size``; ``None`` on a side is unbounded and
  ``causal=True`` is ``right = 0``), and, with a `BlockMask`, iff its tile is not empty and, in a partial tile, its
  stored mask says so. A kernel never visits a tile that no (query, key) pair of it can see, and masks element by
  element only the tiles that the window's edge or a partial block cuts.

The backward differentiates through the hook: ``d softcap·tanh(s/softcap) / ds = 1 - tanh²(s/softcap)``; the ALiBi
bias is a constant (the slopes get no gradient).

`block_mask(mask_fn, B, H, Lq, Lk, block_q, block_k)` is FlexAttention's BlockMask: it evaluates a predicate
``mask_fn(b, h, q_idx, kv_idx) -> bool`` over broadcast index arrays, classifies each ``block_q x block_k`` tile as
empty, full or partial, and keeps only the partial tiles' masks.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

import numpy as np

EMPTY, FULL, PARTIAL = 0, 1, 2
_UNBOUNDED = 1 << 62


# ---------------------------------------------------------------------------------------------- checks

def check_window(window) -> tuple[int | None, int | None] | None:
    """``None`` or ``(left, right)``, each a non-negative int or None (unbounded)."""
    if window is None:
        return None
    if isinstance(window, (str, bytes)) or not hasattr(window, "__len__") or len(window) != 2:
        raise TypeError(f"window must be (left, right), each a non-negative int or None; got {window!r}")
    sides = []
    for name, w in zip(("left", "right"), window, strict=True):
        if w is None:
            sides.append(None)
            continue
        if isinstance(w, bool) or not isinstance(w, numbers.Integral):
            raise TypeError(f"window {name} must be a non-negative int or None (unbounded), got {w!r}")
        if w < 0:
            raise ValueError(f"window {name} must be >= 0 (a query always may see its own diagonal position), "
                             f"got {w}; window=(left, right) counts keys before and after it")
        sides.append(int(w))
    return sides[0], sides[1]


def check_alibi(slopes, batch: int, heads_q: int) -> np.ndarray | None:
    """The ALiBi slopes as a float64 ``[1 or B, Hq]`` array (from ``[Hq]`` or ``[B, Hq]``)."""
    if slopes is None:
        return None
    arr = np.asarray(slopes)
    if arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
        raise TypeError(f"alibi_slopes must be real numbers, [Hq] or [B, Hq]; got dtype {arr.dtype}")
    if arr.shape not in ((heads_q,), (batch, heads_q)):
        raise ValueError(f"alibi_slopes must have shape [Hq] = ({heads_q},) or [B, Hq] = ({batch}, {heads_q}), "
                         f"one slope per query head; got {arr.shape}")
    arr = arr.astype(np.float64).reshape(-1, heads_q)
    if not np.isfinite(arr).all():
        raise ValueError("alibi_slopes must be finite (no NaN or inf)")
    return np.ascontiguousarray(arr)


def check_softcap(softcap) -> float | None:
    if softcap is None:
        return None
    if isinstance(softcap, bool) or not isinstance(softcap, numbers.Real):
        raise TypeError(f"softcap must be a positive real number or None, got {softcap!r}")
    value = float(softcap)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"softcap must be a finite number > 0 (scores become softcap·tanh(s/softcap)), got {value}")
    return value


def alibi_slopes(heads: int) -> np.ndarray:
    """The standard ALiBi slopes of the paper (Press et al.) for ``heads`` heads: ``2^(-8 i / n)`` for a power of two
    ``n``, interleaved otherwise. Returns float64 ``[heads]``."""
    def power_of_two(n):
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if heads <= 0:
        raise ValueError(f"heads must be positive, got {heads}")
    n = 2 ** math.floor(math.log2(heads))
    slopes = power_of_two(n)
    if n < heads:
        slopes += power_of_two(2 * n)[0::2][: heads - n]
    return np.asarray(slopes)


# ---------------------------------------------------------------------------------------------- block masks

@dataclass(frozen=True)
class BlockMask:
    """A mask kept per tile: ``kinds [Bm, Hm, nQ, nK]`` (EMPTY 0, FULL 1, PARTIAL 2; Bm is 1 or B, Hm 1 or H), and
    for partial tiles ``index`` into ``tiles [n_partial, block_q, block_k]`` (bool, True = attend; an edge tile is
    padded with False). Build one with `block_mask`."""

    batch: int | None
    heads: int | None
    len_q: int
    len_k: int
    block_q: int
    block_k: int
    kinds: np.ndarray
    index: np.ndarray
    tiles: np.ndarray
    _rows_ok: bool = field(default=True, repr=False)

    @property
    def n_tiles(self) -> tuple[int, int]:
        return self.kinds.shape[2], self.kinds.shape[3]

    def counts(self) -> dict[str, int]:
        """Tiles of each kind, over every (batch, head) the mask holds."""
        return {name: int((self.kinds == kind).sum()) for name, kind in
                (("empty", EMPTY), ("full", FULL), ("partial", PARTIAL))}

    def density(self) -> float:
        """The fraction of tiles a kernel visits (full or partial)."""
        return float((self.kinds != EMPTY).mean())

    def dense(self) -> np.ndarray:
        """The full boolean mask ``[Bm, Hm, Lq, Lk]`` (True = attend), rebuilt from the tiles."""
        Bm, Hm, nq, nk = self.kinds.shape
        bq, bk = self.block_q, self.block_k
        full = np.zeros((Bm, Hm, nq * bq, nk * bk), bool)
        for b, h, i, j in zip(*np.nonzero(self.kinds), strict=True):
            tile = True if self.kinds[b, h, i, j] == FULL else self.tiles[self.index[b, h, i, j]]
            full[b, h, i * bq:(i + 1) * bq, j * bk:(j + 1) * bk] = tile
        return full[..., : self.len_q, : self.len_k]

    def check_fits(self, batch: int, heads_q: int, len_q: int, len_k: int) -> None:
        """ValueError unless this mask was built for these sizes."""
        Bm, Hm = self.kinds.shape[:2]
        wrong = []
        if (self.len_q, self.len_k) != (len_q, len_k):
            wrong.append(f"it was built for Lq={self.len_q}, Lk={self.len_k}, the inputs have Lq={len_q}, Lk={len_k}")
        if Bm not in (1, batch):
            wrong.append(f"it holds B={Bm}, the inputs have B={batch}")
        if Hm not in (1, heads_q):
            wrong.append(f"it holds H={Hm}, the inputs have Hq={heads_q}")
        if wrong:
            raise ValueError("block_mask does not match the inputs: " + "; ".join(wrong)
                             + " (build it again with chordlab.block_mask for this shape)")

    def __repr__(self) -> str:
        c = self.counts()
        return (f"BlockMask(Lq={self.len_q}, Lk={self.len_k}, blocks {self.block_q}x{self.block_k}, "
                f"tiles {self.kinds.shape[2]}x{self.kinds.shape[3]} per (b, h) x {self.kinds.shape[0]}x"
                f"{self.kinds.shape[1]}: {c['full']} full, {c['partial']} partial, {c['empty']} empty; "
                f"density {self.density():.3f})")


def block_mask(mask_fn, B, H, Lq: int, Lk: int, block_q: int = 128, block_k: int = 128) -> BlockMask:
    """Evaluate ``mask_fn(b, h, q_idx, kv_idx) -> bool`` (True = attend; NumPy-vectorized over broadcast index
    arrays, as FlexAttention's ``mask_mod``) and keep it per ``block_q x block_k`` tile.

    ``B`` or ``H`` may be None: the mask is the same for every batch row or head (``mask_fn`` gets index 0)."""
    for name, value in (("Lq", Lq), ("Lk", Lk), ("block_q", block_q), ("block_k", block_k)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    for name, value in (("B", B), ("H", H)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0):
            raise ValueError(f"{name} must be a positive int or None (the same mask for all), got {value!r}")
    if not callable(mask_fn):
        raise TypeError(f"mask_fn must be a function mask_fn(b, h, q_idx, kv_idx) -> bool, got {mask_fn!r}")
    Bm, Hm = B or 1, H or 1
    nq, nk = -(-Lq // block_q), -(-Lk // block_k)
    kinds = np.zeros((Bm, Hm, nq, nk), np.uint8)
    index = np.full((Bm, Hm, nq, nk), -1, np.int32)
    tiles: list[np.ndarray] = []
    rows_ok = True
    b_idx = np.arange(Bm).reshape(Bm, 1, 1, 1)
    h_idx = np.arange(Hm).reshape(1, Hm, 1, 1)
    kv = np.arange(nk * block_k).reshape(1, 1, 1, -1)
    for i in range(nq):
        q_idx = np.arange(i * block_q, (i + 1) * block_q).reshape(1, 1, -1, 1)
        got = np.broadcast_to(np.asarray(mask_fn(b_idx, h_idx, np.minimum(q_idx, Lq - 1), np.minimum(kv, Lk - 1))),
                              (Bm, Hm, block_q, nk * block_k)).astype(bool)
        got = got & (q_idx < Lq) & (kv < Lk)
        rows_ok &= bool(got[:, :, : min(block_q, Lq - i * block_q)].any(axis=-1).all())
        per_tile = got.reshape(Bm, Hm, block_q, nk, block_k)
        anyv = per_tile.any(axis=(2, 4))
        rows = min(block_q, Lq - i * block_q)
        cols = np.minimum(block_k, Lk - np.arange(nk) * block_k)
        counts = per_tile.sum(axis=(2, 4))
        allv = counts == rows * cols[None, None, :]
        kinds[:, :, i] = np.where(allv, FULL, np.where(anyv, PARTIAL, EMPTY))
        for b, h, j in zip(*np.nonzero(kinds[:, :, i] == PARTIAL), strict=True):
            index[b, h, i, j] = len(tiles)
            tiles.append(per_tile[b, h, :, j, :].copy())
    stacked = np.stack(tiles) if tiles else np.zeros((0, block_q, block_k), bool)
    return BlockMask(B, H, int(Lq), int(Lk), int(block_q), int(block_k), kinds, index, stacked, rows_ok)


# Block masks that models use, as FlexAttention's examples write them.

def causal_mask_fn(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def sliding_window_mask_fn(window: int):
    """Causal with the last ``window`` keys: ``0 <= q - kv < window`` (Mistral)."""
    def fn(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (q_idx - kv_idx < window)
    return fn


def document_mask_fn(doc_ids):
    """Packed sequences: a query sees only keys of its own document (``doc_ids[i]`` = document of position i)."""
    doc_ids = np.asarray(doc_ids)

    def fn(b, h, q_idx, kv_idx):
        return doc_ids[q_idx] == doc_ids[kv_idx]
    return fn


def prefix_lm_mask_fn(prefix_len: int):
    """Prefix-LM: every query sees the whole prefix, and causally after it."""
    def fn(b, h, q_idx, kv_idx):
        return (kv_idx < prefix_len) | (q_idx >= kv_idx)
    return fn


# ---------------------------------------------------------------------------------------------- the tile rules

def visibility_bounds(problem) -> tuple[int, int]:
    """``(lo, hi)``: query ``i`` sees key ``j`` iff ``i + lo <= j <= i + hi`` (the window and causal together;
    ±2^62 for an unbounded side)."""
    off = problem.len_k - problem.len_q
    left, right = problem.window if problem.window is not None else (None, None)
    lo = -_UNBOUNDED if left is None else off - left
    hi = _UNBOUNDED if right is None else off + right
    if problem.causal:
        hi = min(hi, off)
    return lo, hi


def key_range(problem, qs: int, qe: int) -> tuple[int, int]:
    """Keys ``[start, stop)`` that some query of ``[qs, qe)`` may see (by the window and causal)."""
    lo, hi = visibility_bounds(problem)
    return max(0, qs + lo), min(problem.len_k, max(0, qe - 1 + hi + 1))


def query_range(problem, ks: int, ke: int) -> tuple[int, int]:
    """Queries ``[start, stop)`` that may see some key of ``[ks, ke)``."""
    lo, hi = visibility_bounds(problem)
    return max(0, ks - hi), min(problem.len_q, max(0, ke - 1 - lo + 1))


def window_keep(problem, qs: int, qe: int, ks: int, ke: int) -> np.ndarray | None:
    """Boolean ``[qe-qs, ke-ks]`` tile of the window/causal rule, or None when every pair is visible (built with
    ``np.tri``: one byte per element, no integer matrix)."""
    lo, hi = visibility_bounds(problem)
    if ks >= qe - 1 + lo and ke - 1 <= qs + hi:
        return None
    shape = (qe - qs, ke - ks)
    keep = None
    if hi < _UNBOUNDED:  # j - i <= hi
        keep = np.tri(*shape, k=qs - ks + hi, dtype=bool)
    if lo > -_UNBOUNDED:  # j - i >= lo
        below = np.tri(*shape, k=qs - ks + lo - 1, dtype=bool)
        np.logical_not(below, out=below)
        keep = below if keep is None else np.logical_and(keep, below, out=keep)
    return keep


def check_rows_have_keys(problem) -> None:
    """ValueError when the window or the block mask leaves a query row with no key at all (almost always a
    mistake: such a row would get zeros and lse = -inf)."""
    if problem.window is not None:
        lo, hi = visibility_bounds(problem)
        # row i sees [max(0, i + lo), min(Lk - 1, i + hi)]
        bad = [i for i in (0, problem.len_q - 1) if max(0, i + lo) > min(problem.len_k - 1, i + hi)]
        if bad:
            raise ValueError(f"window={problem.window}{' with causal=True' if problem.causal else ''} leaves query "
                             f"row {bad[0]} with no key (Lq={problem.len_q}, Lk={problem.len_k}; query i sees keys "
                             f"i + Lk - Lq - left .. i + Lk - Lq + right); widen the window")
    bm = problem.block_mask
    if bm is not None and not bm._rows_ok:
        raise ValueError("block_mask leaves some query row with no key (every kv_idx is False for it); "
                         "fix mask_fn so that every query sees at least one key")


def score_hook(problem, S: np.ndarray, qs: int, ks: int, keep_tanh: bool = False) -> np.ndarray | None:
    """Softcap then ALiBi on a block of scaled scores ``S [B, Hq, bq, bk]`` (queries ``qs..``, keys ``ks..``),
    in place. With ``keep_tanh`` returns ``tanh(s / softcap)`` (for the backward), else None."""
    t = None
    if problem.softcap is not None:
        S /= problem.softcap
        np.tanh(S, out=S)
        if keep_tanh:
            t = S.copy()
        S *= problem.softcap
    if problem.alibi is not None:
        bq, bk = S.shape[-2:]
        dist = np.abs(np.arange(qs, qs + bq)[:, None] + (problem.len_k - problem.len_q) - np.arange(ks, ks + bk)[None])
        slopes = problem.alibi.astype(S.dtype)[:, :, None, None]
        S -= slopes * dist.astype(S.dtype)
    return t


def block_empty(problem, qs: int, ks: int) -> bool:
    """Whether the block mask's tile holding query qs and key ks is empty for every (batch, head): never visited."""
    bm = problem.block_mask
    return bm is not None and bool((bm.kinds[:, :, qs // bm.block_q, ks // bm.block_k] == EMPTY).all())


def block_keep(problem, qs: int, qe: int, ks: int, ke: int) -> tuple[str, np.ndarray | None]:
    """The block mask on tile ``(qs // block_q, ks // block_k)``: ``("empty" | "full" | "partial", keep)`` where keep is
    a bool ``[Bm, Hm, qe-qs, ke-ks]`` for a tile whose kind differs by (batch, head) or that is partial."""
    bm = problem.block_mask
    i, j = qs // bm.block_q, ks // bm.block_k
    kinds = bm.kinds[:, :, i, j]
    if (kinds == EMPTY).all():
        return "empty", None
    if (kinds == FULL).all():
        return "full", None
    keep = np.zeros(kinds.shape + (qe - qs, ke - ks), bool)
    keep[kinds == FULL] = True
    for b, h in zip(*np.nonzero(kinds == PARTIAL), strict=True):
        keep[b, h] = bm.tiles[bm.index[b, h, i, j], : qe - qs, : ke - ks]
    return "partial", keep


def hide(S: np.ndarray, keep: np.ndarray | None) -> None:
    if keep is not None:
        np.copyto(S, -np.inf, where=~keep)


def dense_visibility(problem) -> np.ndarray | None:
    """The window/causal and block-mask visibility as one bool array broadcastable to ``[B, Hq, Lq, Lk]`` (or None)."""
    keep = window_keep(problem, 0, problem.len_q, 0, problem.len_k)
    if problem.block_mask is not None:
        dense = problem.block_mask.dense()
        keep = dense if keep is None else keep & dense
    return keep


def tile_map(len_q: int, len_k: int, block_q: int, block_k: int, *, causal: bool = False, window=None,
             block_mask: BlockMask | None = None) -> np.ndarray:
    """Which tiles a kernel visits, by the tile-visit rule: ``[n_q_tiles, n_k_tiles]`` of EMPTY 0 (never computed),
    FULL 1 (computed, no mask needed) and PARTIAL 2 (computed, masked element by element), for batch 0, head 0.
    Chapter 11 draws it; the variants benchmark counts its visited tiles for the ideal speed-up."""
    from types import SimpleNamespace

    p = SimpleNamespace(len_q=len_q, len_k=len_k, causal=causal, window=check_window(window))
    nq, nk = -(-len_q // block_q), -(-len_k // block_k)
    kinds = np.zeros((nq, nk), np.uint8)
    for i in range(nq):
        qs, qe = i * block_q, min((i + 1) * block_q, len_q)
        start, stop = key_range(p, qs, qe)
        for j in range(start // block_k, -(-stop // block_k)):
            ks, ke = j * block_k, min((j + 1) * block_k, len_k)
            kind = FULL if window_keep(p, qs, qe, ks, ke) is None else PARTIAL
            if block_mask is not None:
                bkind = block_mask.kinds[0, 0, i, j]
                kind = EMPTY if bkind == EMPTY else max(kind, bkind)
            kinds[i, j] = kind
    return kinds
