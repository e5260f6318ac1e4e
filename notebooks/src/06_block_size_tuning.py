# %% [markdown]
# # Chapter 6 — Block-size tuning
#
# Every tiled kernel so far took `block_q` and `block_k`. They trade two costs:
#
# * **small tiles** fit in the fastest cache but pay the per-tile overhead often (loop bookkeeping, the
#   online-softmax rescale, and for NumPy a Python call per tile);
# * **large tiles** amortize that overhead but spill out of L1 (then L2), so every reuse of a Q, K or V element
#   comes from a slower level.
#
# The best size depends on the kernel, the head dim and the machine, so we measure it: a sweep, a heatmap, a
# cache model that explains the winner, and an autotuner that remembers it.

# %%
import matplotlib.pyplot as plt
import numpy as np

import chordlab
from chordlab import tuning
from chordlab.plots import plot_cache_bar, plot_sweep_heatmap
from chordlab.timing import measured_here
from chordlab.widgets import TuningPanel, tunable_backends

rng = np.random.default_rng(6)

# %% [markdown]
# ## What the tiles touch
# One tile step reads a `block_q × D` query tile, `block_k × D` tiles of K and V, writes a `block_q × block_k`
# score tile and updates a `block_q × D` accumulator: in float32,

# %%
for bq, bk in [(16, 16), (64, 64), (64, 128), (256, 256)]:
    ws = tuning.working_set_bytes(bq, bk, 64)
    print(f"block_q={bq:>3} block_k={bk:>3}, D=64: {chordlab.format_bytes(ws)}")

# %% [markdown]
# Against this machine's caches (read from the OS):

# %%
# NBVAL_IGNORE_OUTPUT
caches = tuning.cache_sizes()
print("caches:", {k: chordlab.format_bytes(v) for k, v in caches.sizes.items()}, "from", caches.source)
fig = plot_cache_bar(tuning.working_set_bytes(64, 128, 64), caches)
plt.show()

# %% [markdown]
# ## The sweep
# `tuning.sweep` times every pair, with a warm-up and interleaved repeats, BLAS threads pinned. It works for
# every backend that takes block sizes, picked by name from the registry:

# %%
# NBVAL_IGNORE_OUTPUT
print("tunable backends here:", tunable_backends())

# %%
# NBVAL_IGNORE_OUTPUT
print(measured_here())
table = tuning.sweep("simd" if "simd" in tunable_backends() else "tiled", (1, 8, 1024, 64),
                     block_qs=[16, 32, 64, 128, 256], block_ks=[16, 32, 64, 128, 256], threads=1)
print(table)
fig = plot_sweep_heatmap(table)
plt.show()

# %% [markdown]
# Read the heatmap with the cache model beside it. A simple rule would say: the best tile is the largest one
# whose score tile fits in L1. Check that rule against the sweep you just ran:

# %%
# NBVAL_IGNORE_OUTPUT
best = table.best
score_tile = 4 * best.block_q * best.block_k
l1 = caches.sizes.get("L1")
print(f"best tile {best.block_q}x{best.block_k}: score tile {chordlab.format_bytes(score_tile)}, "
      f"working set {chordlab.format_bytes(tuning.working_set_bytes(best.block_q, best.block_k, 64))}; "
      f"L1 {chordlab.format_bytes(l1) if l1 else 'unknown'}, L2 {chordlab.format_bytes(caches.sizes.get('L2', 0))}")
near = [r for r in table.rows if r.gflops is not None and r.gflops >= 0.95 * best.gflops]
print(f"{len(near)} of {len(table.rows)} tiles are within 5% of the best:",
      sorted((r.block_q, r.block_k) for r in near))

# %% [markdown]
# On this project's machines the rule fails for the C kernel: its best tile was 128×256 on one (a 128 KiB score
# tile against a 32 KiB L1) and 128×128 on another (64 KiB against 48 KiB). The C kernel never sweeps the whole
# score tile at once. Its micro-kernel works on a register block of it (6 or 8 rows × 16 or 32 columns), and
# the hardware prefetcher streams K and V from L2 ahead of use. So **L2 is the level that bounds the tile**. A
# bigger tile pays the online-softmax rescale and the loop overhead less often. The heatmap's colours start at
# zero: tiles within a few percent of the best are as good as the best, and a rerun can move the box among
# them. The NumPy kernel pays a Python
# round trip per tile, so it prefers far larger tiles than the C kernel:

# %%
# NBVAL_IGNORE_OUTPUT
print(measured_here())
tiled_table = tuning.sweep("tiled", (1, 8, 1024, 64), block_qs=[32, 128, 512], block_ks=[32, 128, 512],
                           threads=1, repeats=2)
print("best for tiled:", (tiled_table.best.block_q, tiled_table.best.block_k),
      f"{tiled_table.best.gflops:.1f} GFLOP/s;",
      "best for", table.backend + ":", (table.best.block_q, table.best.block_k), f"{table.best.gflops:.1f} GFLOP/s")

# %% [markdown]
# ## The autotuner
# `tuning.autotune` sweeps a sensible grid once and stores the winner in a JSON file in your cache directory,
# keyed by backend, shape class (head dim, length rounded up to a power of two, causal, dtype) and CPU model.
# `attention(..., block_q="auto", block_k="auto")` uses it. A cache file that cannot be read, or an entry
# measured on another CPU, is ignored with a warning and tuned again.

# %%
# NBVAL_IGNORE_OUTPUT
result = tuning.autotune("tiled", (1, 8, 512, 64), block_qs=[64, 128, 256], block_ks=[64, 128, 256], repeats=2)
print(result, "\ncache file:", tuning.cache_file())

# %%
q, k, v = (rng.standard_normal((1, 8, 512, 64)).astype(np.float32) for _ in range(3))
out = chordlab.attention(q, k, v, backend="tiled", block_q="auto", block_k="auto")
print("auto-tuned blocks give the reference's answer:",
      np.allclose(out, chordlab.attention(q, k, v, backend="reference"), atol=2e-5))

# %% [markdown]
# The same from a terminal: `python -m chordlab tune --backend simd --seq-len 2048 --head-dim 64`.
#
# ## Explore
# Move the sliders: the panel times the chosen configuration, marks it on the heatmap (after **run sweep**)
# and shows where its working set falls among the caches. Every callback is a plain function in
# `chordlab/widgets.py` with a unit test.

# %%
# NBVAL_IGNORE_OUTPUT
panel = TuningPanel()
panel

# %% [markdown]
# ## Exercise 6: the working set
# Write the bytes one float32 tile step touches (the list at the top of this chapter).

# %%
def working_set(block_q, block_k, D):
    raise NotImplementedError  # your code here


chordlab.check("working_set", working_set)
