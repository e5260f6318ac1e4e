"""Plots the chapters draw (matplotlib). Each function returns the Figure; data come from plain functions.

* `memory_table` / `plot_memory`: predicted and measured bytes against sequence length, log-log.
* `plot_tiles`: FlashAttention's tiling of the score matrix, skipped, cut and full tiles coloured.
* `plot_chunk_error`: streaming-softmax error against the number of chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .api import attention
from .memory import measure_peak, predict_memory


@dataclass(frozen=True)
class MemoryRow:
    backend: str
    seq_len: int
    predicted: int
    measured: int | None


def memory_table(backends, seq_lens, *, batch=1, heads=8, head_dim=64, dtype=np.float32, measure_up_to=2048,
                 causal=False, seed=0, **block_kw) -> list[MemoryRow]:
    """Predict (every length) and measure (lengths up to ``measure_up_to``) each backend's total bytes."""
    rows = []
    r = np.random.default_rng(seed)
    for L in seq_lens:
        shape = (batch, heads, L, head_dim)
        qkv = None
        for b in backends:
            kw = block_kw if b != "reference" else {}
            pred = predict_memory(b, shape, shape, dtype=dtype, causal=causal, **kw).total
            measured = None
            if L <= measure_up_to:
                if qkv is None:
                    qkv = [r.standard_normal(shape).astype(dtype) for _ in range(3)]
                _, measured = measure_peak(attention, *qkv, backend=b, causal=causal, return_lse=True, **kw)
            rows.append(MemoryRow(b, L, pred, measured))
    return rows


def plot_memory(rows: list[MemoryRow], title="Memory of one attention call"):
    """Log-log bytes against length: solid = predicted, dots = measured, with N and N² guide slopes."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, b in enumerate(dict.fromkeys(r.backend for r in rows)):
        mine = [r for r in rows if r.backend == b]
        color = f"C{i}"
        ax.plot([r.seq_len for r in mine], [r.predicted for r in mine], "-", color=color, label=f"{b} predicted")
        meas = [r for r in mine if r.measured is not None]
        ax.plot([r.seq_len for r in meas], [r.measured for r in meas], "o", color=color, label=f"{b} measured")
    lens = np.array(sorted({r.seq_len for r in rows}), dtype=float)
    base = min(r.predicted for r in rows)
    ax.plot(lens, base * (lens / lens[0]), ":", color="gray", label="∝ N")
    ax.plot(lens, base * (lens / lens[0]) ** 2, "--", color="gray", label="∝ N²")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ticks = [2**p for p in range(10, 40, 2)]
    ax.set_yticks([t for t in ticks if base / 4 <= t <= 4 * max(r.predicted for r in rows)])
    ax.set_yticklabels([_short_bytes(t) for t in ax.get_yticks()])
    ax.set_xlabel("sequence length N")
    ax.set_ylabel("bytes allocated (output + working)")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return fig


def _short_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024:
            return f"{n:g} {unit}"
        n /= 1024
    return f"{n:g} PiB"


def tile_kinds(len_q: int, len_k: int, block_q: int, block_k: int, causal: bool) -> np.ndarray:
    """``[n_q_blocks, n_k_blocks]`` ints: 0 = skipped (all hidden), 1 = cut by the diagonal, 2 = full."""
    offset = len_k - len_q
    nq, nk = -(-len_q // block_q), -(-len_k // block_k)
    kinds = np.full((nq, nk), 2)
    if causal:
        for i in range(nq):
            qs, qe = i * block_q, min((i + 1) * block_q, len_q)
            for j in range(nk):
                ks, ke = j * block_k, min((j + 1) * block_k, len_k)
                if ks > qe - 1 + offset:
                    kinds[i, j] = 0
                elif ke - 1 > qs + offset:
                    kinds[i, j] = 1
    return kinds


def plot_tiles(len_q: int, len_k: int, block_q: int, block_k: int, causal: bool = False, highlight=None):
    """Draw the score matrix cut into ``block_q x block_k`` tiles; ``highlight=(i, j)`` marks one tile."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch, Rectangle

    kinds = tile_kinds(len_q, len_k, block_q, block_k, causal)
    fig, ax = plt.subplots(figsize=(5.5, 5.5 * len_q / max(len_k, 1) + 0.8))
    cmap = ListedColormap(["#eeeeee", "#f4b942", "#4c8bd6"])
    for (i, j), kind in np.ndenumerate(kinds):
        x0, y0 = j * block_k, i * block_q
        w, h = min(block_k, len_k - x0), min(block_q, len_q - y0)
        ax.add_patch(Rectangle((x0, y0), w, h, facecolor=cmap(kind), edgecolor="white", lw=1.5))
    if causal:
        ax.plot([0, len_k], [len_q - len_k, len_q], color="black", lw=1)
    if highlight is not None:
        i, j = highlight
        ax.add_patch(Rectangle((j * block_k, i * block_q), block_k, block_q, fill=False, edgecolor="red", lw=2.5))
    ax.set_xlim(0, len_k)
    ax.set_ylim(len_q, 0)
    ax.set_aspect("equal")
    ax.set_xlabel("key index j (K/V blocks →)")
    ax.set_ylabel("query index i (Q blocks ↓)")
    skipped = int((kinds == 0).sum())
    ax.set_title(f"{len_q}x{len_k} scores in {block_q}x{block_k} tiles: {kinds.size - skipped} computed, "
                 f"{skipped} skipped", fontsize=10)
    handles = [Patch(color=cmap(2), label="full tile"), Patch(color=cmap(1), label="cut by the diagonal"),
               Patch(color=cmap(0), label="skipped (all masked)")]
    ax.legend(handles=handles[: 3 if causal else 1], loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3,
              fontsize=8)
    fig.tight_layout()
    return fig


def chunk_errors(x: np.ndarray, chunk_counts) -> list[tuple[int, float]]:
    """Max abs error of the float32 streaming softmax against a float64 softmax, per chunk count."""
    from .step2_online_softmax import online_softmax, softmax_safe

    exact = softmax_safe(x.astype(np.float64))
    x32 = x.astype(np.float32)
    return [(n, float(np.abs(online_softmax(x32, num_chunks=n) - exact).max())) for n in chunk_counts]


_FLOAT32_EPS = float(np.finfo(np.float32).eps)


def plot_chunk_error(errors: list[tuple[int, float]], eps: float = _FLOAT32_EPS):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    n, e = zip(*errors, strict=True)
    ax.loglog(n, e, "o-", label="streaming softmax (float32)")
    ax.axhline(eps, color="gray", ls=":", label="float32 machine epsilon")
    ax.set_xlabel("number of chunks")
    ax.set_ylabel("max |error| vs float64")
    ax.set_title("Streaming softmax error stays near float32 rounding")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------ tuning plots

def plot_sweep_heatmap(table, highlight=None, ax=None):
    """GFLOP/s of every (block_q, block_k) of a `tuning.SweepTable`; the best cell boxed in black,
    ``highlight=(block_q, block_k)`` boxed in red; skipped pairs left blank. The colours run from 0 to the best,
    so that differences of a few percent (within run-to-run noise) do not look large."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    qs, ks, g = table.grid()
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4.6))
    else:
        fig = ax.figure
    # The colour scale starts at 0: cells a few percent apart (timing noise) look alike, as they should.
    im = ax.imshow(g, cmap="viridis", origin="lower", aspect="auto", vmin=0, vmax=np.nanmax(g))
    ax.set_xticks(range(len(ks)), [str(k) for k in ks])
    ax.set_yticks(range(len(qs)), [str(q) for q in qs])
    ax.set_xlabel("block_k")
    ax.set_ylabel("block_q")
    for (i, j), val in np.ndenumerate(g):
        if np.isfinite(val):
            ax.text(j, i, f"{val:.0f}", ha="center", va="center", fontsize=8,
                    color="white" if val < np.nanmax(g) * 0.7 else "black")
    best = table.best
    ax.add_patch(Rectangle((ks.index(best.block_k) - 0.5, qs.index(best.block_q) - 0.5), 1, 1, fill=False,
                           edgecolor="black", lw=2.5))
    if highlight is not None and highlight[0] in qs and highlight[1] in ks:
        ax.add_patch(Rectangle((ks.index(highlight[1]) - 0.5, qs.index(highlight[0]) - 0.5), 1, 1, fill=False,
                               edgecolor="red", lw=2, ls="--"))
    s = table.shape
    ax.set_title(f"{table.backend}: GFLOP/s, L={s.len_q}, D={s.head_dim}, {table.threads} thread(s)", fontsize=10)
    fig.colorbar(im, ax=ax, label="GFLOP/s (scale from 0)")
    return fig


def plot_cache_bar(working_set: int, caches, ax=None):
    """One horizontal bar: the tile working set against the L1/L2/L3 sizes (log scale)."""
    import matplotlib.pyplot as plt

    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(6, 1.6))
    else:
        fig = ax.figure
    ax.barh([0], [working_set], color="C1", height=0.5, label="tile working set")
    for i, (name, size) in enumerate(sorted(caches.sizes.items())):
        ax.axvline(size, color=f"C{i + 2}", ls="--")
        ax.text(size, 0.35, f" {name} {_short_bytes(size)}", fontsize=8, color=f"C{i + 2}")
    ax.set_xscale("log", base=2)
    ax.set_yticks([])
    ax.set_xlim(1024, max(caches.sizes.values()) * 2)
    ax.set_xlabel(f"tile working set {_short_bytes(working_set)}: fits in {caches.level(working_set)}", fontsize=9)
    if own:
        fig.tight_layout()
    return fig


@dataclass(frozen=True)
class SpeedRow:
    seq_len: int
    name: str
    median_s: float
    gflops: float
    vs_reference: float


def speedup_table(backends, seq_lens, *, heads=8, head_dim=64, causal=False, repeats=3, threads=None,
                  include_torch=True, seed=0, min_seconds=0.2) -> list[SpeedRow]:
    """Time each backend (and torch's CPU SDPA when installed) side by side, interleaved, per length; the
    ratio is against the NumPy reference measured in the same rounds, which are added until every contender
    has run ``min_seconds`` in total (`timing.time_interleaved`)."""
    from .sysinfo import usable_cores
    from .timing import pinned_threads, time_interleaved
    from .validation import ProblemShape

    threads = threads or usable_cores()
    r = np.random.default_rng(seed)
    torch = None
    if include_torch:
        try:
            import torch
            import torch.nn.functional as F
        except ImportError:
            torch = None
    def contenders(q, k, v):
        fns = {"reference": lambda: attention(q, k, v, causal=causal, backend="reference")}
        for b in backends:
            if b != "reference":
                kw = {"threads": threads} if b == "simd" else {}
                fns[b] = (lambda b=b, kw=kw: attention(q, k, v, causal=causal, backend=b, **kw))
        if torch is not None:
            tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))
            fns["torch sdpa"] = lambda: F.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)
        return fns

    rows = []
    with pinned_threads(threads):
        for L in seq_lens:
            q, k, v = (r.standard_normal((1, heads, L, head_dim)).astype(np.float32) for _ in range(3))
            t = time_interleaved(contenders(q, k, v), repeats=repeats, min_seconds=min_seconds)
            flops = ProblemShape.of(q.shape, k.shape).flops(causal)
            ref = t["reference"].median
            rows += [SpeedRow(L, n, x.median, x.gflops(flops), ref / x.median) for n, x in t.items()]
    return rows


def plot_speedup(rows: list[SpeedRow], title="Speed-up over the NumPy reference (measured side by side)"):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, name in enumerate(dict.fromkeys(r.name for r in rows)):
        pts = sorted((r.seq_len, r.vs_reference) for r in rows if r.name == name)
        ax.plot(*zip(*pts, strict=True), "o-", color=f"C{i}", label=name)
    ax.axhline(1, color="gray", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("sequence length N")
    ax.set_ylabel("speed-up over reference")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def measure_matmul_peak(threads=None, n=1024, repeats=5) -> float:
    """This machine's float32 matmul rate (NumPy's BLAS, GFLOP/s) at ``threads``: the practical ceiling."""
    from .sysinfo import usable_cores
    from .timing import pinned_threads, time_interleaved

    r = np.random.default_rng(0)
    a, b = r.standard_normal((n, n), dtype=np.float32), r.standard_normal((n, n), dtype=np.float32)
    with pinned_threads(threads or usable_cores()):
        t = time_interleaved({"mm": lambda: a @ b}, repeats=repeats)["mm"]
    return 2 * n**3 / t.median / 1e9


def plot_roofline(gflops: dict, peak: float, title="How far from the limit"):
    """Bars of attained GFLOP/s per implementation against the measured matmul peak."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.5 * len(gflops) + 1.4))
    names = list(gflops)
    ax.barh(names, [gflops[n] for n in names], color="C0")
    ax.axvline(peak, color="red", ls="--", label=f"matmul peak {peak:.0f} GFLOP/s")
    for i, n in enumerate(names):
        ax.text(gflops[n], i, f" {100 * gflops[n] / peak:.0f}%", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("GFLOP/s")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def plot_standing(st, ax=None):
    """Bars: GFLOP/s of chordlab and each peer (`peers.standing`), with the machine's sgemm as a dashed line."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 3.2))
    else:
        fig = ax.figure
    names = list(st.gflops)
    colors = ["C0" if n.startswith("chordlab") else "C7" for n in names]
    ax.barh(names, [st.gflops[n] for n in names], color=colors)
    ax.axvline(st.sgemm["gflops"], color="black", ls="--", lw=1.2,
               label=f"this machine's sgemm: {st.sgemm['gflops']:.0f} GFLOP/s (the limit)")
    ax.legend(loc="lower right", fontsize=8)
    ax.invert_yaxis()
    B, H, L, D = st.shape
    ax.set_xlabel("GFLOP/s")
    ax.set_title(f"N={L}, D={D}, {H} heads, {'causal' if st.causal else 'full'}, {st.threads} thread(s)",
                 fontsize=10)
    fig.tight_layout()
    return fig
