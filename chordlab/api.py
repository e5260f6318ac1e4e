"""`attention`: the one function every chapter, test and benchmark calls.

It validates once (`validation.prepare`), picks a backend by name or ``"auto"``, checks the memory
budget with that backend's own prediction, runs it, and returns results in the caller's layout.

The ``"auto"`` rule: among the registered backends that are available here, support the problem's dtype,
accept block sizes if any were given, and fit the memory budget, take the one with the lowest
``auto_priority`` (the expected fastest): CUDA, then SIMD C, then NumPy ``tiled``; ``reference`` only as a
last resort. `explain_auto` says which one it would take and why the others were passed over.
"""

from __future__ import annotations

import numpy as np

from .backends import _REGISTRY, Backend, BackendError, backend_names, get_backend
from .memory import MemoryBudgetError, check_fits, format_bytes, get_memory_limit, predict_memory
from .validation import AttentionProblem, check_block_size, prepare


def _predicted_total(b: Backend, p: AttentionProblem, block_q, block_k, options) -> tuple[int, int, int]:
    est = predict_memory(b.name, p.q.shape, p.k.shape, dtype=p.dtype, block_q=block_q, block_k=block_k,
                         causal=p.causal, mask_shape=None if p.mask is None else p.mask.shape, **options)
    return est.total, est.output, est.extra


def _why_not(b: Backend, p: AttentionProblem, blocks_given: bool, block_q, block_k, options) -> str | None:
    a = b.available()
    if not a:
        return f"unavailable: {a.reason}"
    s = b.supports(p)
    if not s:
        return s.reason
    if blocks_given and not b.takes_block_sizes:
        return "takes no block sizes"
    unknown = sorted(set(options) - set(b.options))
    if unknown:
        return f"takes no option {unknown[0]!r}"
    total, _, _ = _predicted_total(b, p, block_q, block_k, options)
    if total > get_memory_limit():
        return f"needs {format_bytes(total)}, over the memory limit"
    return None


def explain_auto(problem: AttentionProblem, block_q=None, block_k=None, *, needs_blocks: bool = False,
                 **options) -> list[tuple[str, str | None]]:
    """``[(backend name, reason it was passed over or None), ...]`` in the order ``auto`` tries them."""
    given = needs_blocks or block_q is not None or block_k is not None
    return [(n, _why_not(_REGISTRY[n], problem, given, block_q, block_k, options)) for n in backend_names()]


def choose_backend(problem: AttentionProblem, block_q=None, block_k=None, *, needs_blocks: bool = False,
                   **options) -> Backend:
    """The backend ``"auto"`` takes for this problem (see the module docstring for the rule)."""
    reasons = explain_auto(problem, block_q, block_k, needs_blocks=needs_blocks, **options)
    for name, why in reasons:
        if why is None:
            return _REGISTRY[name]
    detail = "; ".join(f"{n}: {w}" for n, w in reasons)
    raise RuntimeError(f"no backend can run this request ({detail})")


def run_forward(b: Backend, p: AttentionProblem, block_q, block_k, options: dict):
    """``b.forward``, with a driver's or compiler's failure turned into a `BackendError` that says what to do
    (argument errors and memory refusals pass through as they are)."""
    try:
        return b.forward(p, block_q, block_k, **options)
    except (ValueError, TypeError, BackendError, MemoryBudgetError):
        raise
    except Exception as exc:  # third-party driver errors come in many kinds
        err = BackendError(f"backend {b.name!r} failed while running: {b.failure_reason(exc)}; {b.run_advice}")
        err.original = exc
    raise err  # outside the except block: the third-party traceback is not printed with it


def attention(q, k, v, *, mask=None, causal=False, scale=None, backend="auto", block_q=None,
              block_k=None, return_lse=False, **options):
    """Scaled dot-product attention ``softmax(scale · Q Kᵀ + mask) V``.

    Args:
        q: ``[B, Hq, Lq, D]`` (or ``[Hq, Lq, D]`` or ``[Lq, D]``), float32 or float64.
        k, v: ``[B, Hkv, Lk, D]`` in the same layout and dtype; ``Hq`` must be a multiple of ``Hkv``
            (grouped-query attention: query head ``h`` uses key/value head ``h // (Hq // Hkv)``).
        mask: optional, broadcastable to ``[B, Hq, Lq, Lk]`` (``[Lq, Lk]``, ``[B, 1, Lq, Lk]``,
            ``[B, Hq, Lq, Lk]``, ...). bool: True = attend. float: added to the scores (-inf hides).
        causal: hide the future. With ``Lq != Lk`` the diagonal is aligned bottom-right, as when decoding
            with a KV cache: query ``i`` sees keys ``j <= i + (Lk - Lq)``, so the last query sees every key.
        scale: multiplies the scores; default ``1 / sqrt(D)``.
        backend: a name from `chordlab.backends()` or ``"auto"``.
        block_q, block_k: tile sizes for backends that tile (``tiled``, SIMD C, CUDA, ...); ``"auto"`` takes
            the best measured on this machine (`chordlab.tuning.autotune`: cached, or tuned on first use).
        return_lse: also return the row log-sum-exp ``log Σ_j exp(s_ij)``, ``[B, Hq, Lq]``.
        **options: backend-specific, e.g. ``isa="avx2"`` and ``threads=2`` for ``simd``
            (a backend rejects options it does not know with a TypeError).

    Returns:
        out ``[B, Hq, Lq, D]`` in the input dtype (and lse when asked), in the caller's layout. A query row
        whose every key is masked gets zeros and lse = -inf.

    Raises:
        TypeError / ValueError for bad arguments (naming the argument and the expected shape);
        `chordlab.MemoryBudgetError` before allocating when the request would exceed the memory limit;
        `chordlab.BackendError` when the backend's driver or compiler fails while running, naming the backend,
        the reason and what to do.
    """
    p = prepare(q, k, v, mask=mask, causal=causal, scale=scale)
    tune_q, tune_k = isinstance(block_q, str) and block_q == "auto", isinstance(block_k, str) and block_k == "auto"
    block_q = None if tune_q else check_block_size("block_q", block_q)
    block_k = None if tune_k else check_block_size("block_k", block_k)
    if backend == "auto":
        b = choose_backend(p, block_q, block_k, needs_blocks=tune_q or tune_k, **options)
    else:
        b = get_backend(backend)
        a = b.available()
        if not a:
            raise RuntimeError(f"backend {b.name!r} is unavailable: {a.reason}")
        s = b.supports(p)
        if not s:
            raise TypeError(s.reason)
        if (block_q is not None or block_k is not None or tune_q or tune_k) and not b.takes_block_sizes:
            raise ValueError(f"backend {b.name!r} takes no block sizes; leave block_q and block_k as None")
        b.check_options(options)
    if (tune_q or tune_k) and p.q.size and p.len_k:
        from .tuning import autotune

        tuned = autotune(b.name, p.shape, causal=p.causal, dtype=p.dtype, progress=False, **options)
        block_q = tuned.block_q if tune_q else block_q
        block_k = tuned.block_k if tune_k else block_k

    if p.q.size == 0 or p.len_k == 0:
        out, lse = p.empty_result()
    else:
        total, output, extra = _predicted_total(b, p, block_q, block_k, options)
        check_fits(
            f"backend {b.name!r} on q {list(p.q.shape)}, k {list(p.k.shape)} ({p.dtype}) "
            f"(output {format_bytes(output)} + working memory {format_bytes(extra)})",
            total, b.memory_advice())
        out, lse = run_forward(b, p, block_q, block_k, options)
    out, lse = p.to_caller_layout(np.asarray(out, dtype=p.dtype), np.asarray(lse, dtype=p.dtype))
    return (out, lse) if return_lse else out
