"""Block-size tuning: sweep (block_q, block_k) for any backend that takes block sizes, explain the result
with a cache model, and remember the best configuration per machine.

* `sweep(backend, shape, block_qs, block_ks)`: times every pair (warm-up, interleaved repeats, BLAS threads
  pinned), returns a `SweepTable` (one `SweepRow` per pair: median/min time, GFLOP/s, the tile working set,
  its cache level, the predicted extra memory; pairs a backend refuses are kept with the reason).
* `cache_sizes()`: L1d/L2/L3 read from the OS (Linux sysfs, macOS sysctl), with a stated fallback.
* `autotune(backend, shape)`: sweeps a sensible grid and stores the winner in a JSON file in the user's cache
  directory, keyed by backend, shape class and CPU model; ``attention(..., block_q="auto")`` uses it.
* ``python -m chordlab tune --backend B --seq-len N --head-dim D`` runs the same code.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .api import attention
from .backends import get_backend
from .memory import predict_memory
from .sysinfo import cpu_identity
from .timing import pinned_threads, time_interleaved
from .validation import ProblemShape

FALLBACK_CACHES = {"L1": 32 * 1024, "L2": 1024 * 1024, "L3": 32 * 1024 * 1024}
DEFAULT_GRID = (16, 32, 64, 128, 256)


@dataclass(frozen=True)
class CacheSizes:
    sizes: dict  # {"L1": bytes, "L2": bytes, "L3": bytes}
    source: str  # where they were read, or "fallback"

    def level(self, nbytes: int) -> str:
        """The smallest cache level the bytes fit in, or "RAM"."""
        for name in ("L1", "L2", "L3"):
            if name in self.sizes and nbytes <= self.sizes[name]:
                return name
        return "RAM"


def _parse_size(text: str) -> int:
    text = text.strip().upper()
    mult = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * mult


def cache_sizes() -> CacheSizes:
    """Per-core data caches of this machine (L1d, L2) and the shared L3, from the OS; a fallback otherwise."""
    sizes = {}
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    try:
        for index in sorted(base.glob("index*")):
            kind = (index / "type").read_text().strip()
            if kind in ("Data", "Unified"):
                sizes[f"L{(index / 'level').read_text().strip()}"] = _parse_size((index / "size").read_text())
    except (OSError, ValueError):
        sizes = {}
    if sizes:
        return CacheSizes(sizes, str(base))
    if platform.system() == "Darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "hw.l1dcachesize", "hw.l2cachesize", "hw.l3cachesize"],
                                 capture_output=True, text=True, timeout=5).stdout.split()
            sizes = {f"L{i + 1}": int(v) for i, v in enumerate(out) if v.isdigit() and int(v) > 0}
        except (OSError, subprocess.SubprocessError):
            sizes = {}
        if sizes:
            return CacheSizes(sizes, "sysctl")
    return CacheSizes(dict(FALLBACK_CACHES), "fallback (the OS did not say)")


def working_set_bytes(block_q: int, block_k: int, head_dim: int, itemsize: int = 4) -> int:
    """Bytes one tile step touches: the Q tile, a K and a V tile, the score tile and the output accumulator."""
    return itemsize * (2 * block_q * head_dim + 2 * block_k * head_dim + block_q * block_k)


@dataclass
class SweepRow:
    block_q: int
    block_k: int
    median_s: float | None
    min_s: float | None
    gflops: float | None
    working_set: int
    cache_level: str
    predicted_extra: int | None
    skipped: str | None = None


@dataclass
class SweepTable:
    backend: str
    shape: ProblemShape
    causal: bool
    threads: int
    caches: CacheSizes
    rows: list[SweepRow] = field(default_factory=list)

    @property
    def best(self) -> SweepRow:
        timed = [r for r in self.rows if r.gflops is not None]
        if not timed:
            raise ValueError("no configuration of the sweep ran: " + "; ".join(
                f"{r.block_q}x{r.block_k}: {r.skipped}" for r in self.rows))
        return max(timed, key=lambda r: r.gflops)

    def grid(self) -> tuple[list[int], list[int], np.ndarray]:
        """(block_qs, block_ks, GFLOP/s matrix [len(block_qs), len(block_ks)], NaN where skipped)."""
        qs = sorted({r.block_q for r in self.rows})
        ks = sorted({r.block_k for r in self.rows})
        g = np.full((len(qs), len(ks)), np.nan)
        for r in self.rows:
            if r.gflops is not None:
                g[qs.index(r.block_q), ks.index(r.block_k)] = r.gflops
        return qs, ks, g

    def __str__(self) -> str:
        s = self.shape
        head = (f"sweep of {self.backend!r}: B={s.batch} H={s.heads_q} L={s.len_q} D={s.head_dim} "
                f"causal={self.causal}, {self.threads} thread(s)")
        lines = [head, f"{'block_q':>7} {'block_k':>7} {'ms':>9} {'GFLOP/s':>8} {'tiles':>10} cache"]
        for r in self.rows:
            if r.skipped:
                lines.append(f"{r.block_q:>7} {r.block_k:>7}  skipped: {r.skipped}")
            else:
                lines.append(f"{r.block_q:>7} {r.block_k:>7} {r.median_s * 1e3:9.2f} {r.gflops:8.1f} "
                             f"{r.working_set / 1024:8.1f}Ki {r.cache_level}")
        return "\n".join(lines)

    def _repr_pretty_(self, p, cycle):
        p.text(str(self))


def _as_shape(shape) -> ProblemShape:
    if isinstance(shape, ProblemShape):
        return shape
    if isinstance(shape, dict):
        return ProblemShape(shape.get("batch", 1), shape.get("heads", 8), shape.get("heads_kv", shape.get("heads", 8)),
                            shape["seq_len"], shape.get("seq_len_k", shape["seq_len"]), shape["head_dim"])
    if len(shape) == 4:
        B, H, L, D = shape
        return ProblemShape(B, H, H, L, L, D)
    raise ValueError(f"shape must be a ProblemShape, a dict or (B, H, L, D), got {shape!r}")


def _tunable(backend: str):
    b = get_backend(backend)
    if not b.takes_block_sizes:
        raise ValueError(f"backend {backend!r} takes no block sizes; tunable backends: "
                         + ", ".join(n for n in _tunable_names()))
    a = b.available()
    if not a:
        raise RuntimeError(f"backend {backend!r} is unavailable: {a.reason}")
    return b


def _tunable_names() -> list[str]:
    from .backends import backends

    return [r.name for r in backends() if r.takes_block_sizes and r.available]


def sweep(backend: str, shape, block_qs=DEFAULT_GRID, block_ks=DEFAULT_GRID, *, causal: bool = False,
          repeats: int = 3, threads: int | None = None, dtype=np.float32, seed: int = 0, progress: bool = True,
          **options) -> SweepTable:
    """Time ``backend`` at every (block_q, block_k) pair on random inputs of ``shape``.

    ``shape``: a `ProblemShape`, ``(B, H, L, D)`` or ``{"seq_len": N, "head_dim": D, "heads": H}``. BLAS threads
    (and the backend's own, when it takes ``threads``) are pinned to ``threads`` (default: every usable core)."""
    from tqdm.auto import tqdm

    from .sysinfo import usable_cores

    b = _tunable(backend)
    s = _as_shape(shape)
    threads = threads or usable_cores()
    if "threads" in b.options:
        options.setdefault("threads", threads)
    r = np.random.default_rng(seed)
    q = r.standard_normal((s.batch, s.heads_q, s.len_q, s.head_dim)).astype(dtype)
    k = r.standard_normal((s.batch, s.heads_kv, s.len_k, s.head_dim)).astype(dtype)
    v = r.standard_normal((s.batch, s.heads_kv, s.len_k, s.head_dim)).astype(dtype)
    flops = s.flops(causal)
    caches = cache_sizes()
    table = SweepTable(backend, s, causal, threads, caches)
    pairs = [(bq, bk) for bq in block_qs for bk in block_ks]
    itemsize = np.dtype(dtype).itemsize
    bar = tqdm(pairs, desc=f"sweep {backend}", disable=not progress or len(pairs) * flops < 2e9, leave=False)
    with pinned_threads(threads):
        for bq, bk in bar:
            ws = working_set_bytes(bq, bk, s.head_dim, itemsize)
            row = SweepRow(bq, bk, None, None, None, ws, caches.level(ws), None)
            try:
                row.predicted_extra = predict_memory(backend, q.shape, k.shape, dtype=dtype, block_q=bq, block_k=bk,
                                                     causal=causal, **options).extra

                def call(bq=bq, bk=bk):
                    return attention(q, k, v, causal=causal, backend=backend, block_q=bq, block_k=bk, **options)

                t = time_interleaved({"c": call}, repeats=repeats, warmup=1)["c"]
                row.median_s, row.min_s, row.gflops = t.median, t.best, t.gflops(flops)
            except (ValueError, MemoryError) as exc:
                row.skipped = str(exc).split(";")[0]
            table.rows.append(row)
    return table


# ------------------------------------------------------------------------------------------ autotune cache

def cache_file() -> Path:
    """``$CHORDLAB_TUNE_CACHE``, else ``$XDG_CACHE_HOME/chordlab/autotune.json`` (``~/.cache/...``)."""
    env = os.environ.get("CHORDLAB_TUNE_CACHE")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "chordlab" / "autotune.json"


def shape_class(shape: ProblemShape, causal: bool, dtype) -> str:
    """Problems that share a best tile: same head dim, causal flag and dtype, and length within a power of 2."""
    bucket = 2 ** max(0, math.ceil(math.log2(max(shape.len_k, 1))))
    return f"D{shape.head_dim}-L{bucket}-{'causal' if causal else 'full'}-{np.dtype(dtype).name}"


@dataclass
class TuneResult:
    backend: str
    block_q: int
    block_k: int
    gflops: float
    from_cache: bool
    note: str = ""


def _load_cache(path: Path) -> tuple[dict, str]:
    if not path.exists():
        return {}, ""
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
            raise ValueError("not a chordlab autotune file")
        return data, ""
    except (OSError, ValueError) as exc:
        return {}, f"ignored the unreadable autotune cache {path} ({exc}); tuning again"


def autotune(backend: str, shape, *, causal: bool = False, dtype=np.float32, block_qs=None, block_ks=None,
             force: bool = False, repeats: int = 3, progress: bool = True, **options) -> TuneResult:
    """The best (block_q, block_k) for ``backend`` on problems like ``shape``, from the cache or a sweep.

    A cache entry is used only when it was measured on the same CPU (model, family/model/stepping, flags:
    `sysinfo.CpuIdentity.key`); an unreadable file or an entry
    from another machine is ignored (the result's ``note`` and a warning say so) and replaced."""
    b = _tunable(backend)
    s = _as_shape(shape)
    path = cache_file()
    data, note = _load_cache(path)
    key = f"{backend}|{shape_class(s, causal, dtype)}"
    entry = data.get("entries", {}).get(key)
    machine = cpu_identity().key()
    if entry and not force:
        if entry.get("cpu") == machine:
            return TuneResult(backend, entry["block_q"], entry["block_k"], entry["gflops"], True,
                              f"from {path}")
        note = (f"ignored the cached tuning for {key}: it was measured on {entry.get('cpu')!r}, this is "
                f"{machine!r}; tuning again")
    if note:
        warnings.warn(note, stacklevel=2)
    if block_qs is None or block_ks is None:
        dq, dk = b.default_blocks or (64, 64)
        grid_q = sorted({x for x in DEFAULT_GRID if x <= max(s.len_q, 16)} | {dq})
        grid_k = sorted({x for x in DEFAULT_GRID if x <= max(s.len_k, 16)} | {dk})
        block_qs, block_ks = block_qs or grid_q, block_ks or grid_k
    table = sweep(backend, s, block_qs, block_ks, causal=causal, dtype=dtype, repeats=repeats, progress=progress,
                  **options)
    best = table.best
    data.setdefault("entries", {})[key] = dict(block_q=best.block_q, block_k=best.block_k, gflops=best.gflops,
                                               cpu=machine, shape=asdict(s), threads=table.threads)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(path)
    except OSError as exc:
        note = (note + "; " if note else "") + f"could not save the tuning to {path} ({exc})"
    return TuneResult(backend, best.block_q, best.block_k, best.gflops, False, note)
