"""Step 2: softmax numerics and the online (streaming) softmax.

Three ways to compute ``softmax(x)_j = exp(x_j) / Σ_k exp(x_k)`` along the last axis:

* `softmax_naive`: the formula as written; ``exp`` overflows to inf for x > 88 (float32), giving NaN.
* `softmax_safe`: subtract the row max first. Exact same math, no overflow. Needs the max *before*
  the exponentials: two passes over the row.
* `online_softmax`: one streaming pass over chunks of the row keeps a running state
  ``(m, l) = (max so far, Σ exp(x - m) so far)``. When a chunk raises the max from m to m', the old sum is
  rescaled by ``exp(m - m')``. States of separate chunks merge associatively (`merge_states`), so chunks can
  be processed in any order or in parallel: the key idea FlashAttention is built on.

A state with ``m = -inf`` and ``l = 0`` is the empty state (no elements, or all masked): merging it changes
nothing, and its log-sum-exp is -inf.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np


def softmax_naive(x: np.ndarray) -> np.ndarray:
    """``exp(x) / sum(exp(x))`` along the last axis: overflows for large inputs."""
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def softmax_safe(x: np.ndarray) -> np.ndarray:
    """Max-subtracted softmax along the last axis: ``exp(x - m) / sum(exp(x - m))``."""
    x = np.asarray(x)
    m = x.max(axis=-1, keepdims=True)
    m = np.where(np.isneginf(m), 0.0, m)
    e = np.exp(x - m)
    s = e.sum(axis=-1, keepdims=True)
    return np.divide(e, s, out=np.zeros_like(e), where=s > 0)


@dataclass(frozen=True)
class SoftmaxState:
    """Running softmax statistics of the elements seen so far (per row).

    ``m``: their max; ``l``: ``Σ exp(x - m)``. Arrays of the row shape (or scalars)."""

    m: np.ndarray
    l: np.ndarray

    @classmethod
    def empty(cls, shape=(), dtype=np.float64) -> SoftmaxState:
        return cls(np.full(shape, -np.inf, dtype=dtype), np.zeros(shape, dtype=dtype))

    @classmethod
    def of(cls, chunk: np.ndarray) -> SoftmaxState:
        """The state of one chunk (last axis = the elements)."""
        chunk = np.asarray(chunk)
        if chunk.shape[-1] == 0:
            return cls.empty(chunk.shape[:-1], chunk.dtype)
        m = chunk.max(axis=-1)
        m_safe = np.where(np.isneginf(m), 0.0, m)
        l = np.exp(chunk - m_safe[..., None]).sum(axis=-1)
        return cls(m, l)

    def merge(self, other: SoftmaxState) -> SoftmaxState:
        """The state of both sets of elements: ``m = max(m1, m2)``, ``l = l1 e^(m1-m) + l2 e^(m2-m)``."""
        return merge_states(self, other)

    @property
    def lse(self) -> np.ndarray:
        """``log Σ exp(x)`` of the elements seen: ``m + log l`` (-inf when empty)."""
        with np.errstate(divide="ignore"):
            return np.where(self.l > 0, self.m + np.log(np.where(self.l > 0, self.l, 1.0)), -np.inf)


def merge_states(a: SoftmaxState, b: SoftmaxState) -> SoftmaxState:
    """Associative, commutative merge of two partial softmax states."""
    m = np.maximum(a.m, b.m)
    m_safe = np.where(np.isneginf(m), 0.0, m)
    l = a.l * np.exp(a.m - m_safe) + b.l * np.exp(b.m - m_safe)
    return SoftmaxState(m, l)


def _chunk_bounds(n: int, chunk_size: int | None, num_chunks: int | None) -> list[tuple[int, int]]:
    if (chunk_size is None) == (num_chunks is None):
        raise ValueError("give exactly one of chunk_size or num_chunks")
    if chunk_size is None:
        if isinstance(num_chunks, bool) or not isinstance(num_chunks, (int, np.integer)) or num_chunks < 1:
            raise ValueError(f"num_chunks must be a positive int, got {num_chunks!r}")
        edges = np.linspace(0, n, min(num_chunks, max(n, 1)) + 1).round().astype(int)
        return list(zip(edges[:-1], edges[1:], strict=True))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    return [(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]


def online_softmax_state(x: np.ndarray, *, chunk_size: int | None = None,
                         num_chunks: int | None = None) -> SoftmaxState:
    """Stream over chunks of the last axis, folding each chunk's state into a running one."""
    x = np.asarray(x)
    state = SoftmaxState.empty(x.shape[:-1], x.dtype if x.dtype.kind == "f" else np.float64)
    for start, stop in _chunk_bounds(x.shape[-1], chunk_size, num_chunks):
        state = state.merge(SoftmaxState.of(x[..., start:stop]))
    return state


def online_softmax(x: np.ndarray, *, chunk_size: int | None = None, num_chunks: int | None = None
                   ) -> np.ndarray:
    """Softmax along the last axis from a streaming pass over chunks.

    The streaming pass gives the final ``(m, l)``; a second pass writes ``exp(x - m) / l``. A row whose
    every element is -inf gives zeros (not NaN). Same result as `softmax_safe`, to rounding."""
    x = np.asarray(x)
    state = online_softmax_state(x, chunk_size=chunk_size, num_chunks=num_chunks)
    m = np.where(np.isneginf(state.m), 0.0, state.m)[..., None]
    l = state.l[..., None]
    return np.divide(np.exp(x - m), l, out=np.zeros(x.shape, dtype=np.result_type(x, l)), where=l > 0)


def merge_all(states) -> SoftmaxState:
    """Merge many partial states (in any order or grouping: the merge is associative)."""
    return functools.reduce(merge_states, states)
