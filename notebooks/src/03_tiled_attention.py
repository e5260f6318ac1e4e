# %% [markdown]
# # Chapter 3 — Tiled FlashAttention in NumPy
#
# Combine chapters 1 and 2: cut the queries into blocks of `block_q` rows and the keys/values into blocks of
# `block_k`. For each query block, stream over the key blocks, keeping the online-softmax state `(m, l)` and an
# unnormalized output `acc` per row. Only one `block_q × block_k` tile of scores exists at a time, so memory
# is O(N) instead of O(N²).

# %%
import inspect

import matplotlib.pyplot as plt
import numpy as np

import chordlab
from chordlab import step3_tiled
from chordlab.plots import memory_table, plot_memory, plot_tiles

rng = np.random.default_rng(3)

# %% [markdown]
# ## The tiles
# Each square is one tile of the score matrix. With causal attention, tiles wholly above the diagonal are
# skipped (never computed), tiles the diagonal cuts are masked, and the rest are full: about half the work.

# %%
fig = plot_tiles(256, 256, 64, 32, causal=True, highlight=(1, 2))
plt.show()

# %% [markdown]
# For the highlighted tile (query block 1, key block 2) the kernel does one step of the online softmax:
#
# ```
# S   = scale · Q_i K_jᵀ  (masked)       m'  = max(m, rowmax S)
# P   = exp(S - m')                      α   = exp(m - m')
# l   = α·l + rowsum P                   acc = α·acc + P V_j
# ```
# and after the last key block, `O_i = acc / l`. Here is the kernel:

# %%
print(inspect.getsource(step3_tiled.tiled_forward))

# %% [markdown]
# ## Checked against the reference
# Across block sizes that do and do not divide the length, causal or not, with grouped-query heads
# (6 query heads share 2 key/value heads):

# %%
q = rng.standard_normal((2, 6, 100, 48)).astype(np.float32)
k = rng.standard_normal((2, 2, 130, 48)).astype(np.float32)
v = rng.standard_normal((2, 2, 130, 48)).astype(np.float32)
for causal in (False, True):
    ref = chordlab.attention(q, k, v, causal=causal, backend="reference")
    for bq, bk in [(16, 16), (32, 64), (37, 23), (128, 128)]:
        out = chordlab.attention(q, k, v, causal=causal, backend="tiled", block_q=bq, block_k=bk)
        err = np.abs(out - ref).max()
        print(f"causal={causal!s:<5} block {bq:>3}x{bk:<3}  max |error| < 1e-5: {err < 1e-5}")

# %% [markdown]
# ## Masks in every layout
# `[Lq, Lk]` (one mask for everything), `[B, 1, Lq, Lk]` (per sequence, e.g. padding), `[B, H, Lq, Lk]`
# (per head). Here: padding, where sequence 0 has 90 real keys and sequence 1 has 130.

# %%
lengths = np.array([90, 130])
padding = (np.arange(130)[None, :] < lengths[:, None])[:, None, None, :]  # [B, 1, 1, Lk] broadcasts
layouts = {
    "[Lq, Lk]": np.ones((100, 130), dtype=bool),
    "[B, 1, Lq, Lk]": np.broadcast_to(padding, (2, 1, 100, 130)),
    "[B, H, Lq, Lk]": np.broadcast_to(padding, (2, 6, 100, 130)),
}
for name, mask in layouts.items():
    a = chordlab.attention(q, k, v, mask=mask, backend="reference")
    b = chordlab.attention(q, k, v, mask=mask, backend="tiled", block_q=32, block_k=48)
    print(f"{name:<15} tiled == reference: {np.allclose(a, b, atol=1e-5)}")

# %% [markdown]
# ## Memory: N² against N
# The reference stores every score; the tiled kernel stores one tile per (batch, head), whatever the length.
# Predicted (lines) and measured with tracemalloc (dots), batch 1, 8 heads, head dim 64, float32:

# %%
# NBVAL_IGNORE_OUTPUT
rows = memory_table(["reference", "tiled"], [256, 512, 1024, 2048, 4096, 8192, 16384], measure_up_to=2048,
                    block_q=128, block_k=128)
fig = plot_memory(rows, "reference (N²) vs tiled (N): total bytes of one call")
plt.show()
for L in (2048, 16384):
    ref, til = (next(r for r in rows if r.backend == b and r.seq_len == L) for b in ("reference", "tiled"))
    print(f"N={L}: reference {chordlab.format_bytes(ref.predicted)}, tiled {chordlab.format_bytes(til.predicted)}"
          f" ({ref.predicted / til.predicted:.0f}x less)")

# %% [markdown]
# The tiled total is almost all output: its working set (one tile per head plus the accumulators) stays the
# same size at every length. Speed is the next question: chapter 4 moves this loop into C with SIMD
# instructions, and chapter 6 tunes the block sizes.
#
# ## Exercise 3: one tile step
# Given the running `m [rows]`, `l [rows]`, `acc [rows, D]`, the new tile's scores `S [rows, bk]` and values
# `V [bk, D]`, return the updated `(m, l, acc)`. The first case starts from the empty state (`m = -inf`).

# %%
def tile_update(m, l, acc, S, V):
    raise NotImplementedError  # your code here


chordlab.check("tile_update", tile_update)

# %% [markdown]
# ## Exercise 3b: the whole tiled forward
# Now write the loop around that step for one head: `q [Lq, D]`, `k` and `v [Lk, D]`, tiles of `block_q` queries
# and `block_k` keys. Return `(out [Lq, D], lse [Lq])`. With `causal=True`, use the bottom-right rule (query
# `i` sees key `j` when `j <= i + Lk - Lq`), and **skip** every key tile that the rule hides from the whole
# query tile: do not compute it and then mask it. A row that sees no key gives zeros and `lse = -inf`.
# `check` counts the key rows you read, so it can tell whether you skip. Try it without scrolling up.

# %%
def tiled_forward(q, k, v, block_q, block_k, causal):
    raise NotImplementedError  # your code here


chordlab.check("tiled_forward", tiled_forward)
