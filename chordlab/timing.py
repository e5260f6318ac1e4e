"""The one timing runner that benchmarks, chapters and the tuner share.

Machines here are shared and noisy (and a VM may slow a call that follows an idle pause), so:
* every implementation is warmed up, then timed in back-to-back bursts;
* implementations being compared are *interleaved* (round-robin), so drift hits all of them alike;
* results are medians, reported with the minimum, and compared as ratios measured side by side;
* BLAS (and torch) threads are pinned to the same count as our own kernels (`pinned_threads`).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Timing:
    name: str
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def best(self) -> float:
        return min(self.seconds)

    def gflops(self, flops: float) -> float:
        return flops / self.median / 1e9


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1,
                     min_seconds: float = 0.0) -> dict[str, Timing]:
    """Time each callable ``repeats`` times, round-robin, after ``warmup`` untimed calls each.

    With ``min_seconds`` > 0, keeps adding rounds until every callable has run at least that long in total."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    timings = {name: Timing(name) for name in fns}
    rounds = 0
    while rounds < repeats or (min_seconds and min(sum(t.seconds) for t in timings.values()) < min_seconds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            timings[name].seconds.append(time.perf_counter() - t0)
        rounds += 1
        if rounds >= 1000:
            break
    return timings


def time_call(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> Timing:
    return time_interleaved({"call": fn}, repeats, warmup)["call"]


@contextlib.contextmanager
def pinned_threads(n: int):
    """Pin BLAS (threadpoolctl) and, when it is imported, torch to ``n`` threads for the block."""
    import sys

    from threadpoolctl import threadpool_limits

    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch else None
    with threadpool_limits(limits=n):
        if torch:
            torch.set_num_threads(n)
        try:
            yield
        finally:
            if torch:
                torch.set_num_threads(before)


def measured_here() -> str:
    """A line for every stored timing: which machine measured it, and an invitation to measure yours."""
    import datetime

    from .sysinfo import cpu_identity

    return (f"[timed on {cpu_identity().describe()}, {datetime.date.today()}; "
            "numbers differ between machines: rerun this cell to measure yours]")
