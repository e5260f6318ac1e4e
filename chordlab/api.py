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
from .validation import AttentionProblem, check_block_size, lse_dtype, prepare


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


def named_backend(name: str, p: AttentionProblem, blocks_given: bool, options: dict) -> Backend:
    """The backend called ``name``, after checking that it can take this request; the error says why not."""
    b = get_backend(name)
    a = b.available()
    if not a:
        raise RuntimeError(f"backend {b.name!r} is unavailable: {a.reason}")
    s = b.supports(p)
    if not s:
        raise TypeError(s.reason)
    if blocks_given and not b.takes_block_sizes:
        raise ValueError(f"backend {b.name!r} takes no block sizes; leave block_q and block_k as None")
    b.check_options(options)
    return b


def run_backend(b: Backend, call):
    """``call()`` (a backend's forward or backward), with a driver's or compiler's failure turned into a
    `BackendError` that says what to do (argument errors and memory refusals pass through as they are)."""
    try:
        return call()
    except (ValueError, TypeError, BackendError, MemoryBudgetError, NotImplementedError):
        raise
    except Exception as exc:  # third-party driver errors come in many kinds
        err = BackendError(f"backend {b.name!r} failed while running: {b.failure_reason(exc)}; {b.run_advice}")
        err.original = exc
    raise err  # outside the except block: the third-party traceback is not printed with it


def _block_mask_tiles(p: AttentionProblem, block_q, block_k, tuning: bool):
    """With a block mask, the tiles are its blocks: refuse other sizes, and fill them in when not given."""
    bm = p.block_mask
    if bm is None:
        return block_q, block_k
    if tuning:
        raise ValueError("block_q='auto' cannot be tuned with a block_mask: the tiles are the block mask's "
                         f"({bm.block_q} x {bm.block_k}); build the block mask with the block sizes you want")
    for name, given, own in (("block_q", block_q, bm.block_q), ("block_k", block_k, bm.block_k)):
        if given is not None and given != own:
            raise ValueError(f"{name}={given} differs from the block mask's {name}={own}: a kernel's tiles must be "
                             "the block mask's tiles (leave it None, or build the block mask with that size)")
    return bm.block_q, bm.block_k


def run_forward(b: Backend, p: AttentionProblem, block_q, block_k, options: dict):
    return run_backend(b, lambda: b.forward(p, block_q, block_k, **options))


def attention(q, k, v, *, mask=None, causal=False, scale=None, backend="auto", block_q=None,
              block_k=None, return_lse=False, window=None, alibi_slopes=None, softcap=None, block_mask=None,
              **options):
    """Scaled dot-product attention ``softmax(scale · Q Kᵀ + mask) V``.

    Args:
        q: ``[B, Hq, Lq, D]`` (or ``[Hq, Lq, D]`` or ``[Lq, D]``), float32, float64, float16 or bfloat16
            (``ml_dtypes.bfloat16``; chapter 12: the softmax and its sums run in float32, out has q's dtype, lse is
            float32).
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
        window: ``(left, right)``: query ``i`` sees key ``j`` iff ``i + Lk - Lq - left <= j <= i + Lk - Lq + right``
            (None on a side: unbounded; ``causal=True`` is ``right = 0``). FlashAttention's ``window_size``.
        alibi_slopes: ``[Hq]`` or ``[B, Hq]``: adds ``-slope · |i + Lk - Lq - j|`` to the scaled score.
        softcap: a float > 0: the scaled score becomes ``softcap · tanh(score / softcap)`` before bias and masks.
        block_mask: from `chordlab.block_mask`: empty tiles are never computed, full ones are not masked; the
            tiles are the block mask's (block_q and block_k, if given, must equal its block sizes).
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
    p = prepare(q, k, v, mask=mask, causal=causal, scale=scale, window=window, alibi_slopes=alibi_slopes,
                softcap=softcap, block_mask=block_mask)
    tune_q, tune_k = isinstance(block_q, str) and block_q == "auto", isinstance(block_k, str) and block_k == "auto"
    block_q = None if tune_q else check_block_size("block_q", block_q)
    block_k = None if tune_k else check_block_size("block_k", block_k)
    tiles = _block_mask_tiles(p, block_q, block_k, tune_q or tune_k)
    if backend == "auto":
        b = choose_backend(p, block_q, block_k, needs_blocks=tune_q or tune_k, **options)
    else:
        b = named_backend(backend, p, block_q is not None or block_k is not None or tune_q or tune_k, options)
    if (tune_q or tune_k) and p.q.size and p.len_k:
        from .tuning import autotune

        tuned = autotune(b.name, p.shape, causal=p.causal, dtype=p.dtype, progress=False, **options)
        block_q = tuned.block_q if tune_q else block_q
        block_k = tuned.block_k if tune_k else block_k
    if p.block_mask is not None:
        block_q, block_k = tiles

    if p.q.size == 0 or p.len_k == 0:
        out, lse = p.empty_result()
    else:
        total, output, extra = _predicted_total(b, p, block_q, block_k, options)
        check_fits(
            f"backend {b.name!r} on q {list(p.q.shape)}, k {list(p.k.shape)} ({p.dtype}) "
            f"(output {format_bytes(output)} + working memory {format_bytes(extra)})",
            total, b.memory_advice())
        out, lse = run_forward(b, p, block_q, block_k, options)
    out, lse = p.to_caller_layout(np.asarray(out, dtype=p.dtype), np.asarray(lse, dtype=lse_dtype(p.dtype)))
    return (out, lse) if return_lse else out


def _check_like(name: str, x, shape: tuple, dtype: np.dtype, what: str) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array ({what}), got {type(x).__name__}")
    if x.dtype != dtype:
        whose = "q's dtype" if name != "lse" else "the dtype"
        raise TypeError(f"{name} must have {whose} {dtype} ({what}), got {x.dtype}")
    if x.shape != shape:
        raise ValueError(f"{name} must have shape {shape} ({what}), got {x.shape}")
    return x


def backward_backends(problem: AttentionProblem, block_q=None, block_k=None, **options
                      ) -> list[tuple[str, str | None]]:
    """Like `explain_auto`, for the backward: ``[(name, why it is passed over or None), ...]``."""
    rows = []
    for name in backend_names():
        b = _REGISTRY[name]
        sb = b.supports_backward(problem)
        why = None if sb else sb.reason
        why = why or _why_not(b, problem, block_q is not None or block_k is not None, block_q, block_k, options)
        if why is None:
            need = _backward_bytes(b, problem, block_q, block_k, options)
            if need > get_memory_limit():
                why = f"needs {format_bytes(need)}, over the memory limit"
        rows.append((name, why))
    return rows


def _backward_bytes(b: Backend, p: AttentionProblem, block_q, block_k, options) -> int:
    grads = p.q.nbytes + 2 * p.k.nbytes
    return grads + b.backward_extra_bytes(p.shape, p.dtype.itemsize, block_q=block_q, block_k=block_k,
                                          causal=p.causal, mask_shape=None if p.mask is None else p.mask.shape,
                                          **options)


def attention_backward(dout, q, k, v, out, lse, *, mask=None, causal=False, scale=None, backend="auto",
                       block_q=None, block_k=None, window=None, alibi_slopes=None, softcap=None, block_mask=None,
                       **options):
    """Gradients of `attention` with respect to q, k and v.

    With ``O = softmax(S) V``, ``S = scale · Q Kᵀ + mask`` and a loss whose gradient with respect to O is
    ``dout``: ``P = exp(S - lse)``, ``dV = Pᵀ dO``, ``dP = dO Vᵀ``, ``D = rowsum(dO ∘ O)``,
    ``dS = P ∘ (dP - D)``, ``dQ = scale · dS K``, ``dK = scale · dSᵀ Q``.

    Args:
        dout: the gradient of the output, q's shape and dtype.
        q, k, v, mask, causal, scale, window, alibi_slopes, softcap, block_mask: exactly as given to `attention`.
        out, lse: what ``attention(q, k, v, ..., return_lse=True)`` returned (q's shape; q's shape without D).
        backend: a backend with a backward pass (``"tiled"``, ``"reference"``), or ``"auto"``: the fastest
            available one that fits the memory budget.
        block_q, block_k: tile sizes for backends that tile (``"auto"`` is not supported here).

    Returns:
        ``(dq, dk, dv)``: dq has q's shape, dk and dv k's shape; with grouped-query attention dk and dv sum
        over the query heads of each group. Masks get no gradient. A query row whose every key is masked
        gives zero gradients, and its keys receive nothing from it.

    Raises:
        TypeError / ValueError naming the argument for bad inputs (out, lse or dout that do not match q);
        NotImplementedError for a backend without a backward pass; `chordlab.MemoryBudgetError` before
        allocating past the memory limit; `chordlab.BackendError` when a driver fails.
    """
    p = prepare(q, k, v, mask=mask, causal=causal, scale=scale, window=window, alibi_slopes=alibi_slopes,
                softcap=softcap, block_mask=block_mask)
    q_shape = np.shape(q)
    dout = _check_like("dout", dout, q_shape, p.dtype, "the gradient of attention's output: q's shape")
    out = _check_like("out", out, q_shape, p.dtype, "the output of attention(q, k, v, ..., return_lse=True)")
    lse = _check_like("lse", lse, q_shape[:-1], lse_dtype(p.dtype),
                      "the lse of attention(q, k, v, ..., return_lse=True): q's shape without the head dim")
    for name, value in (("block_q", block_q), ("block_k", block_k)):
        if isinstance(value, str):
            raise ValueError(f"{name}={value!r}: the backward takes block sizes or None (its defaults), not a "
                             "tuning request")
    block_q, block_k = check_block_size("block_q", block_q), check_block_size("block_k", block_k)
    tiles = _block_mask_tiles(p, block_q, block_k, False)
    if backend == "auto":
        reasons = backward_backends(p, block_q, block_k, **options)
        name = next((n for n, why in reasons if why is None), None)
        if name is None:
            raise RuntimeError("no backend can run this backward (" + "; ".join(f"{n}: {w}" for n, w in reasons)
                               + ")")
        b = _REGISTRY[name]
    else:
        if not get_backend(backend).has_backward:
            with_one = ", ".join(n for n in backend_names() if _REGISTRY[n].has_backward)
            raise NotImplementedError(f"backend {backend!r} has no backward pass yet; backends with one: {with_one} "
                                      "(or backend='auto')")
        b = named_backend(backend, p, block_q is not None or block_k is not None, options)
        sb = b.supports_backward(p)
        if not sb:
            raise TypeError(sb.reason)
    if p.block_mask is not None:
        block_q, block_k = tiles
    if p.q.size == 0 or p.len_k == 0:
        dq, dk, dv = np.zeros_like(p.q), np.zeros_like(p.k), np.zeros_like(p.v)
    else:
        check_fits(f"the backward of backend {b.name!r} on q {list(p.q.shape)}, k {list(p.k.shape)} ({p.dtype})",
                   _backward_bytes(b, p, block_q, block_k, options), b.memory_advice())
        dout4, out4 = (np.ascontiguousarray(x).reshape(p.q.shape) for x in (dout, out))
        lse4 = np.ascontiguousarray(lse).reshape(p.q.shape[:3])
        dq, dk, dv = run_backend(b, lambda: b.backward(p, out4, lse4, dout4, block_q, block_k, **options))
    return (np.asarray(dq, p.dtype).reshape(q_shape), np.asarray(dk, p.dtype).reshape(np.shape(k)),
            np.asarray(dv, p.dtype).reshape(np.shape(v)))
