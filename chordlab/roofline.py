"""The roofline of this machine (chapter 10): how fast it multiplies, how fast it reads, and which one limits a kernel.

A kernel that does ``F`` FLOPs while moving ``B`` bytes has arithmetic intensity ``I = F / B``. It can run no faster
than ``min(peak FLOP/s, I · bandwidth)``: below the ridge point ``peak / bandwidth`` it is memory-bound, above it
compute-bound. Both limits are measured here, not looked up:

* `matmul_rate`: float32 GFLOP/s of NumPy's matrix product (the machine's BLAS sgemm) on ``threads`` threads, the
  practical FMA limit, measured in a subprocess without the OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE overrides that
  some machines set (`chordlab.peers.sgemm_limit`: they halve a current OpenBLAS);
* `read_bandwidth`: GB/s of a STREAM-like read of a buffer far larger than the caches, by the SIMD library's probe
  (`SimdLibrary.read_bandwidth`), or, without it, by NumPy's sum (slower: say so).

Intensities of attention (float32, D head dim; K/V of ``n`` keys read once per kv head)::

    prefill, N queries and N keys:  FLOPs 4·N²·D·H,  bytes about 4·(2 + 2)·N·D·H   ->  I ≈ N/4
    decode, 1 query, n cached keys: FLOPs 4·n·D·Hq,  bytes 2·n·D·Hkv·itemsize      ->  I = 2·G / itemsize
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Roofline:
    """Measured limits: ``peak_gflops`` (float32 FMA work) and ``bandwidth_gbs`` (reads), on ``threads`` threads."""

    peak_gflops: float
    bandwidth_gbs: float
    threads: int
    bandwidth_source: str

    @property
    def ridge(self) -> float:
        """The intensity (FLOP per byte) where the two limits meet."""
        return self.peak_gflops / self.bandwidth_gbs

    def attainable(self, intensity) -> np.ndarray:
        """GFLOP/s the roofline allows at ``intensity`` FLOP/byte."""
        return np.minimum(self.peak_gflops, np.asarray(intensity, float) * self.bandwidth_gbs)


def matmul_rate(threads: int = 1, n: int = 1024) -> float:
    """float32 GFLOP/s of an ``n x n`` matrix product with BLAS on ``threads`` threads (`peers.sgemm_limit`)."""
    from .peers import sgemm_limit

    return float(sgemm_limit(threads, n)["gflops"])


def read_bandwidth(threads: int = 1, megabytes: int = 256) -> tuple[float, str]:
    """``(GB/s, how it was measured)``: the SIMD library's probe when it is built, else NumPy's sum (1 thread)."""
    from .backends import get_backend

    if get_backend("simd").available():
        from .step4_simd import library

        return library().read_bandwidth(threads=threads, megabytes=megabytes), "the C probe (vector loads)"
    x = np.ones((megabytes << 20) // 4, np.float32)
    x.sum()
    best = np.inf
    for _ in range(3):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    return x.nbytes / best / 1e9, "NumPy's sum (one thread; the C probe is not built here)"


def measure(threads: int = 1) -> Roofline:
    """This machine's roofline on ``threads`` threads (a second or two)."""
    gbs, how = read_bandwidth(threads)
    return Roofline(matmul_rate(threads), gbs, threads, how)


def decode_intensity(group: int, itemsize: int) -> float:
    """FLOP per byte of decode with one new query: each cached K/V element (``itemsize`` bytes) feeds ``group``
    query heads with one multiply-add (2 FLOPs) each: ``4·G·D`` FLOPs per key over ``2·D·itemsize`` bytes."""
    return 2.0 * group / itemsize


def prefill_intensity(length: int, head_dim: int, causal: bool = False) -> float:
    """FLOP per byte of attention over ``length`` queries and keys (float32: q, k, v read and out written once)."""
    flops = 4.0 * length * length * head_dim / (2 if causal else 1)
    return flops / (4 * 4 * length * head_dim)
