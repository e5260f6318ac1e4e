# %% [markdown]
# # Chapter 11 — Variants: sliding window, ALiBi, softcap and block-sparse masks
#
# Real models rarely run plain `softmax(QKᵀ)V`. Mistral lets each token see only its last few thousand tokens
# (a **sliding window**). BLOOM and MPT add a distance penalty instead of position embeddings (**ALiBi**). Gemma 2
# squashes large scores with a **softcap**. Training on packed batches hides every other document
# (**document masks**), and PyTorch's FlexAttention turns any such pattern into a **block mask**.
#
# A fast kernel does not copy itself once per variant. Every variant enters in one of two places:
#
# * the **score hook**, applied to each scaled score: `s → softcap · tanh(s / softcap)`, then
#   `s → s − slope · |i + Lk − Lq − j|`;
# * the **tile-visit rule**, which says which tiles to compute at all: the window and causal limits, and a block
#   mask's empty tiles. A skipped tile costs nothing, so a window's cost grows with the window, not the length.
#
# This chapter draws each variant, checks it, and measures what skipping saves.

# %%
import inspect

import matplotlib.pyplot as plt
import numpy as np

import chordlab
from chordlab import variants
from chordlab.timing import measured_here, pinned_threads, time_interleaved

rng = np.random.default_rng(11)
fast = "simd" if chordlab.get_backend("simd").available() else "tiled"
print("timings below use backend", repr(fast))

# %% [markdown]
# ## What each variant does to the scores
# For 24 queries and 24 keys, here is what each variant does to the score matrix. Dark is what a query sees
# (for ALiBi: the smallest penalty); white is hidden (−∞) or heavily penalised. ALiBi
# penalises distance, more steeply for some heads than others. A softcap leaves small scores alone and flattens
# large ones toward ±softcap.

# %%
L = 24
i, j = np.arange(L)[:, None], np.arange(L)[None, :]
fig, axes = plt.subplots(1, 4, figsize=(12, 3.2))
axes[0].imshow((j <= i) & (i - j < 6), cmap="Blues")
axes[0].set_title("sliding window (6 keys, causal)")
axes[1].imshow(-chordlab.alibi_slopes(8)[1] * np.abs(i - j), cmap="Blues")
axes[1].set_title("ALiBi bias, head 2 of 8")
docs = np.repeat(np.arange(3), [7, 10, 7])
axes[2].imshow(docs[:, None] == docs[None, :], cmap="Blues")
axes[2].set_title("3 packed documents")
s = np.linspace(-60, 60, 200)
axes[3].plot(s, s, ":", label="no cap")
axes[3].plot(s, 20 * np.tanh(s / 20), label="softcap 20")
axes[3].set_ylim(-40, 40)
axes[3].set_title("softcap on a score")
axes[3].legend(fontsize=8)
for ax in axes[:3]:
    ax.set_xlabel("key j")
    ax.set_ylabel("query i")
plt.tight_layout()
plt.show()

# %% [markdown]
# In code, the hook is one function that every backend mirrors (the C kernels in `csrc/flash_kernel.inc`, the
# CUDA ones in `cuda/flash_common.h`, the WGSL ones in `webgpu/common.wgsl`):

# %%
print(inspect.getsource(variants.score_hook))

# %% [markdown]
# ## Checked against a construction from scratch
# Each variant is a keyword of `attention`. The check below builds the whole bias and mask matrix in NumPy, takes a
# plain softmax, and compares every available backend with it, all variants at once, with grouped-query heads:

# %%
q = rng.standard_normal((1, 4, 50, 16)).astype(np.float32)
k = rng.standard_normal((1, 2, 70, 16)).astype(np.float32)
v = rng.standard_normal((1, 2, 70, 16)).astype(np.float32)
kw = dict(window=(30, 0), alibi_slopes=chordlab.alibi_slopes(4), softcap=5.0)


def from_scratch(q, k, v, window, alibi_slopes, softcap):
    """float64: the full score matrix, the hook, the window (bottom-right aligned), softmax."""
    q, k, v = (x.astype(np.float64) for x in (q, k, v))
    k, v = np.repeat(k, 2, axis=1), np.repeat(v, 2, axis=1)
    Lq, Lk = q.shape[2], k.shape[2]
    s = q @ k.swapaxes(-1, -2) / np.sqrt(q.shape[-1])
    s = softcap * np.tanh(s / softcap)
    pos = np.arange(Lq)[:, None] + Lk - Lq
    s = s - alibi_slopes[:, None, None] * np.abs(pos - np.arange(Lk))
    s = np.where((np.arange(Lk) <= pos) & (np.arange(Lk) >= pos - window[0]), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True) @ v


want = from_scratch(q, k, v, **kw)
for name in ("reference", "tiled", "simd", "cuda-cpu", "webgpu"):
    b = chordlab.get_backend(name)
    if not b.available():
        print(f"{name:<10} not available here")
        continue
    err = np.abs(chordlab.attention(q, k, v, backend=name, **kw) - want).max()
    print(f"{name:<10} largest error {'below 1e-5' if err < 1e-5 else f'{err:.1e} (too large)'}")

# %% [markdown]
# A backend that lacks a variant says so, and `auto` passes it over. Block masks, for example, are computed by
# the NumPy and C backends only:

# %%
bm = chordlab.block_mask(variants.causal_mask_fn, None, None, 50, 70, 16, 16)
for name, why in chordlab.explain_auto(chordlab.prepare(q, k, v, block_mask=bm)):
    print(f"{name:<10} {'takes it' if why is None else why}")

# %% [markdown]
# ## The tile map: what is never computed
# A kernel walks tiles of 128 queries × 128 keys. For each query tile it visits only the key tiles that some
# query of it can see; inside the band it masks element by element only the tiles that an edge cuts. The same
# rule (`variants.tile_map`) for four patterns at N = 2048. White tiles are never computed:

# %%
N, T = 2048, 128
patterns = {
    "causal": dict(causal=True),
    "window 512, causal": dict(window=(511, 0)),
    "4 documents": dict(block_mask=chordlab.block_mask(variants.document_mask_fn(np.arange(N) // 512),
                                                       None, None, N, N, T, T)),
    "prefix-LM, prefix 600": dict(block_mask=chordlab.block_mask(variants.prefix_lm_mask_fn(600),
                                                                 None, None, N, N, T, T)),
}
fig, axes = plt.subplots(1, 4, figsize=(12, 3.3))
for ax, (title, opts) in zip(axes, patterns.items()):
    tiles = variants.tile_map(N, N, T, T, **opts)
    ax.imshow(tiles, cmap=plt.matplotlib.colors.ListedColormap(["white", "tab:blue", "lightsteelblue"]),
              vmin=0, vmax=2)
    ax.set_title(f"{title}\n{(tiles > 0).mean():.0%} of tiles computed", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
plt.tight_layout()
plt.show()
print("dark: computed with no mask; light: computed and masked; white: skipped")

# %% [markdown]
# ## Time against window size
# With the tile-visit rule, a sliding window's time grows with the window: a query sees w keys, so the work is
# about N·w (exactly N·w − w²/2, as the first queries have fewer than w keys before them), until the window covers
# the whole sequence and it costs what causal attention costs. The dashed line is the ideal: the causal time
# scaled by the share of tiles the window visits.

# %%
# NBVAL_IGNORE_OUTPUT
print(measured_here())
N = 4096 if fast == "simd" else 1024
x = [rng.standard_normal((1, 4, N, 64)).astype(np.float32) for _ in range(3)]
sizes = [N // 32, N // 16, N // 8, N // 4, N // 2, N]
fns = {w: (lambda w=w: chordlab.attention(*x, window=(w - 1, 0), backend=fast)) for w in sizes}
fns["causal"] = lambda: chordlab.attention(*x, causal=True, backend=fast)
with pinned_threads(1):
    t = time_interleaved(fns, repeats=3, min_seconds=0.2)
fig, ax = plt.subplots(figsize=(6, 3.6))
ax.plot(sizes, [t[w].median * 1e3 for w in sizes], "o-", label="sliding window")
causal_tiles = (variants.tile_map(N, N, 128, 128, causal=True) > 0).sum()
ideal = [t["causal"].median * 1e3 * (variants.tile_map(N, N, 128, 128, window=(w - 1, 0)) > 0).sum() / causal_tiles
         for w in sizes]
ax.plot(sizes, ideal, "k--", lw=1, label="ideal (visited tiles)")
ax.axhline(t["causal"].median * 1e3, color="gray", ls=":", label="causal, no window")
ax.set_xlabel("window w (keys each query sees)")
ax.set_ylabel("ms")
ax.set_title(f"N = {N}, 4 heads, D = 64, backend {fast!r}", fontsize=9)
ax.legend()
plt.show()

# %% [markdown]
# ## Block masks
# `chordlab.block_mask(mask_fn, B, H, Lq, Lk, block_q, block_k)` evaluates a predicate over index arrays, as
# FlexAttention's `mask_mod` does, and keeps it per tile: empty tiles are never visited, full tiles need no mask,
# and only partial tiles keep their element masks. A sliding window built as a block mask gives the same answer
# as the `window` keyword:

# %%
N = 1024
x = [rng.standard_normal((1, 2, N, 32)).astype(np.float32) for _ in range(3)]
bm = chordlab.block_mask(variants.sliding_window_mask_fn(200), None, None, N, N, 64, 64)
print(bm)
same = np.abs(chordlab.attention(*x, block_mask=bm) - chordlab.attention(*x, window=(199, 0))).max()
print("block mask and window keyword agree:", same < 1e-5)

# %% [markdown]
# The kinds of tiles decide the cost. Packing 8 documents into one sequence leaves only one tile in 8 to compute:

# %%
docs = chordlab.block_mask(variants.document_mask_fn(np.arange(N) // (N // 8)), None, None, N, N, 64, 64)
print(docs.counts(), f"density {docs.density():.3f}")

# %% [markdown]
# ## The backward pass uses the same two hooks
# Training needs gradients through every variant. The softcap's derivative is `1 − tanh²`, ALiBi's bias is a
# constant, and skipped tiles stay skipped. A finite-difference check of the softcap gradient:

# %%
q, k, v = (rng.standard_normal((1, 1, 5, 3)) for _ in range(3))
out, lse = chordlab.attention(q, k, v, softcap=0.8, window=(2, None), return_lse=True)
dq = chordlab.attention_backward(np.ones_like(out), q, k, v, out, lse, softcap=0.8, window=(2, None))[0]
bump = np.zeros_like(q)
bump[0, 0, 2, 1] = 1e-6
numeric = ((chordlab.attention(q + bump, k, v, softcap=0.8, window=(2, None)) -
            chordlab.attention(q - bump, k, v, softcap=0.8, window=(2, None))).sum() / 2e-6)
print("dq[2, 1] matches finite differences:", abs(numeric - dq[0, 0, 2, 1]) < 1e-7)

# %% [markdown]
# ## Exercise 11: attention sinks
# StreamingLLM keeps generating past its window by letting every query also see the first few tokens, the
# "attention sinks". Write `mask_fn` for: causal, each query sees its **last 4 keys** and **always the first 2**.
# `q_idx` and `kv_idx` are index arrays that broadcast against each other; return a boolean array.

# %%
def sink_window_mask(b, h, q_idx, kv_idx):
    raise NotImplementedError  # your code here


chordlab.check("sink_window_mask", sink_window_mask)

# %% [markdown]
# Once it passes, `chordlab.block_mask(sink_window_mask, None, None, 2048, 2048, 128, 128)` and
# `variants.tile_map(..., block_mask=...)` show which tiles a long generation with sinks computes: the diagonal
# band plus the first column.
#
# ## What to remember
# * Variants enter a kernel in two places: the score hook (softcap, ALiBi) and the tile-visit rule (window,
#   causal, block mask). Nothing else changes, so one template serves every variant, and so does the backward.
# * A skipped tile is free: a sliding window costs O(N·w), not O(N²), and a document mask costs its density.
# * Every backend checks its variants against the reference, and the reference against a construction from
#   scratch. `benchmarks/attention_variants.py` measures the savings against the ideal on your machine.
