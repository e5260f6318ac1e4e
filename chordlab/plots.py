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
