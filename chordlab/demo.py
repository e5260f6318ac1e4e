"""The seed's demo, re-measured here: batch 1, 8 heads, seq 512, head dim 64: the memory of standard
(O(N²)) attention against flash attention, the time of each, and the speed-up. Used by chapter 07 and by
``python -m chordlab demo``; every number is measured on this machine when it runs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .api import attention, choose_backend
from .memory import format_bytes, measure_peak, predict_memory
from .sysinfo import cpu_identity, usable_cores
from .timing import pinned_threads, time_interleaved
from .validation import prepare


@dataclass
class DemoRow:
    name: str
    backend: str
    predicted_bytes: int
    measured_bytes: int
    median_s: float


@dataclass
class DemoReport:
    shape: tuple
    threads: int
    cpu: str
    rows: list[DemoRow]
    max_abs_diff: float

    def speedup(self, name: str, over: str = "standard") -> float:
        t = {r.name: r.median_s for r in self.rows}
        return t[over] / t[name]

    def memory_ratio(self, name: str, over: str = "standard") -> float:
        m = {r.name: r.measured_bytes for r in self.rows}
        return m[over] / max(m[name], 1)

    def __str__(self) -> str:
        B, H, L, D = self.shape
        lines = [f"Seed demo re-measured: batch {B}, {H} heads, seq {L}, head dim {D}, float32, "
                 f"{self.threads} thread(s), {self.cpu}",
                 f"{'':<22}{'backend':<10}{'memory (measured)':>20}{'predicted':>12}{'time':>11}{'speed-up':>10}"]
        for r in self.rows:
            lines.append(f"{r.name:<22}{r.backend:<10}{format_bytes(r.measured_bytes):>20}"
                         f"{format_bytes(r.predicted_bytes):>12}{r.median_s * 1e3:>9.2f}ms"
                         f"{self.speedup(r.name):>9.2f}x")
        best = self.rows[-1]
        lines.append(f"{best.name} uses {self.memory_ratio(best.name):.1f}x less memory than standard attention "
                     f"and runs {self.speedup(best.name):.2f}x as fast; outputs agree to {self.max_abs_diff:.1e}.")
        return "\n".join(lines)

    def _repr_pretty_(self, p, cycle):
        p.text(str(self))


def seed_demo(seq_len: int = 512, heads: int = 8, head_dim: int = 64, batch: int = 1, repeats: int = 7,
              threads: int | None = None, seed: int = 0) -> DemoReport:
    """Measure standard (reference) against flash (NumPy tiled, and the fastest backend here)."""
    r = np.random.default_rng(seed)
    q, k, v = (r.standard_normal((batch, heads, seq_len, head_dim)).astype(np.float32) for _ in range(3))
    threads = threads or usable_cores()
    fastest = choose_backend(prepare(q, k, v)).name
    contenders = [("standard", "reference"), ("flash (NumPy tiled)", "tiled")]
    if fastest not in ("reference", "tiled"):
        contenders.append((f"flash ({fastest})", fastest))
    opts = {name: ({"threads": threads} if name == "simd" else {}) for _, name in contenders}
    rows, outs = [], {}
    with pinned_threads(threads):
        times = time_interleaved({label: (lambda b=b: attention(q, k, v, backend=b, **opts[b]))
                                  for label, b in contenders}, repeats=repeats)
        for label, b in contenders:
            outs[label], peak = measure_peak(attention, q, k, v, backend=b, **opts[b])
            pred = predict_memory(b, q.shape, k.shape, **opts[b])
            rows.append(DemoRow(label, b, pred.total, peak, times[label].median))
    diff = max(float(np.abs(outs[label] - outs["standard"]).max()) for label, _ in contenders)
    return DemoReport((batch, heads, seq_len, head_dim), threads, cpu_identity().describe(), rows, diff)
