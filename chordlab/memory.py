"""Memory: the budget every backend checks before it allocates, the predictor, and a peak measurer.

* `memory_limit()` / `set_memory_limit()`: the most extra bytes one attention call may allocate
  (default: the smaller of 2 GiB and half the machine's RAM; env ``CHORDLAB_MEMORY_LIMIT`` overrides).
  A backend that would need more raises `MemoryBudgetError` *before* allocating, saying how much it needs.
* `predict_memory(backend, ...)`: the output bytes plus the backend's extra (working) bytes for a shape.
* `measure_peak(fn, ...)`: run ``fn`` and report the peak bytes NumPy allocated meanwhile (tracemalloc),
  so chapters can plot predicted against measured.
"""

from __future__ import annotations

import contextlib
import os
import re
import tracemalloc
from dataclasses import dataclass

import numpy as np

_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2, "mib": 1024**2,
          "g": 1024**3, "gb": 1024**3, "gib": 1024**3, "t": 1024**4, "tb": 1024**4, "tib": 1024**4}


class MemoryBudgetError(MemoryError):
    """Raised before allocating when a call would need more memory than the budget allows."""


def parse_bytes(value) -> int:
    """``4096``, ``"512 MiB"``, ``"2G"`` -> bytes."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError(f"a memory size must be positive, got {value}")
        return int(value)
    if isinstance(value, float) and value > 0:
        return int(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"cannot read {value!r} as a memory size (try 4096, '512 MiB' or '2 GiB')")
    n = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if n <= 0:
        raise ValueError(f"a memory size must be positive, got {value!r}")
    return n


def format_bytes(n: float) -> str:
    """Human-readable binary units: ``format_bytes(3 * 2**30) == '3.00 GiB'``."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def physical_memory_bytes() -> int | None:
    """Total RAM, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _default_limit() -> int:
    env = os.environ.get("CHORDLAB_MEMORY_LIMIT")
    if env:
        return parse_bytes(env)
    ram = physical_memory_bytes()
    return min(2 * 1024**3, ram // 2) if ram else 2 * 1024**3


_limit: int = _default_limit()


def get_memory_limit() -> int:
    """The current budget in bytes for one attention call's extra memory."""
    return _limit


def set_memory_limit(value) -> int:
    """Set the budget (bytes or a string like ``"8 GiB"``); returns the previous one."""
    global _limit
    previous, _limit = _limit, parse_bytes(value)
    return previous


@contextlib.contextmanager
def memory_limit(value):
    """``with chordlab.memory_limit("8 GiB"): ...`` raises the budget for the block only."""
    previous = set_memory_limit(value)
    try:
        yield
    finally:
        set_memory_limit(previous)


def check_fits(what: str, needed: int, suggestion: str) -> None:
    """Raise `MemoryBudgetError` when ``needed`` bytes exceed the budget, before anything is allocated."""
    limit = get_memory_limit()
    if needed > limit:
        raise MemoryBudgetError(
            f"{what} needs {format_bytes(needed)}, more than the memory limit of {format_bytes(limit)}. "
            f"{suggestion} To allow it anyway: chordlab.set_memory_limit('{format_bytes(needed * 1.1)}')."
        )


def device_copy_bytes(shape, mask_shape=None) -> int:
    """Bytes a device (OpenCL, WebGPU) holds for one float32 call: q, k, v, out, two floats per row (lse or
    running max and sum) and the mask as float32. ``shape`` is a `validation.ProblemShape`."""
    q = shape.batch * shape.heads_q * shape.len_q * shape.head_dim
    kv = 2 * shape.batch * shape.heads_kv * shape.len_k * shape.head_dim
    mask = 4 * int(np.prod(mask_shape)) if mask_shape is not None else 0
    return 4 * (2 * q + kv + 2 * shape.batch * shape.heads_q * shape.len_q) + mask


@dataclass(frozen=True)
class MemoryEstimate:
    """Predicted bytes of one call: ``output`` (out + lse) and ``extra`` (working memory)."""

    backend: str
    output: int
    extra: int

    @property
    def total(self) -> int:
        return self.output + self.extra


def predict_memory(backend: str, q_shape, k_shape, *, dtype=np.float32, block_q=None, block_k=None,
                   causal=False, mask_shape=None, **options) -> MemoryEstimate:
    """Predict the bytes an `attention` call allocates for these shapes, without running it.

    ``output`` is the result ``[B, Hq, Lq, D]`` plus the log-sum-exp ``[B, Hq, Lq]``; ``extra`` is what the
    backend allocates beyond that while it runs (for `reference`: the ``[B, Hq, Lq, Lk]`` score matrix).
    """
    from .backends import get_backend
    from .validation import ProblemShape

    shape = ProblemShape.of(q_shape, k_shape)
    itemsize = np.dtype(dtype).itemsize
    output = (shape.batch * shape.heads_q * shape.len_q * (shape.head_dim + 1)) * itemsize
    b = get_backend(backend)
    b.check_options(options)
    extra = b.extra_bytes(shape, itemsize, block_q=block_q, block_k=block_k, causal=causal,
                          mask_shape=mask_shape, **options)
    return MemoryEstimate(backend, int(output), int(extra))


def measure_peak(fn, *args, **kwargs):
    """Run ``fn(*args, **kwargs)``; return ``(result, peak_bytes)``.

    ``peak_bytes`` is the highest number of bytes allocated through Python's and NumPy's allocators during
    the call, above what was allocated when it started (tracemalloc; NumPy reports its array buffers to it).
    Memory a C extension takes with its own ``malloc`` is not seen.
    """
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        result = fn(*args, **kwargs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        if not was_tracing:
            tracemalloc.stop()
    return result, max(0, peak - before)
