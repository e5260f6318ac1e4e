# %% [markdown]
# # Chapter 10 — Inference with a KV cache: decode at memory speed
#
# A language model generates one token at a time. Each new token's query attends to the keys and values of every
# token before it, and those never change, so they are kept in a **KV cache** and only the new token's are
# appended. This step is called **decode**: one query row (`Lq = 1`) against a cache of thousands of keys.
#
# Decode does very little arithmetic per byte it reads, so memory bandwidth, not FLOPs, limits it. This chapter
# measures both limits on your machine, places prefill and decode on that roofline, and builds the tools that
# serving systems use: split-KV (Flash-Decoding), paged caches (vLLM), and 16-bit caches.

# %%
import matplotlib.pyplot as plt
import ml_dtypes
import numpy as np

import chordlab
from chordlab import decoding, roofline
from chordlab.timing import measured_here, pinned_threads, time_interleaved

rng = np.random.default_rng(10)
fast = "simd" if chordlab.get_backend("simd").available() else "tiled"
print("timings below use backend", repr(fast))

# %% [markdown]
# ## A cache and a decode step
# `KVCache(batch, kv_heads, head_dim, capacity)` holds `k, v [B, Hkv, capacity, D]` and each row's length. Rows may
# hold sequences of different lengths, as on a server. `decode(q, cache)` takes the new queries `[B, Hq, Lq, D]`
# (their keys already appended) and attends causally, each sequence to its own cached keys. By definition it equals
# `attention` on each sequence's gathered cache:

# %%
cache = chordlab.KVCache(batch=2, kv_heads=2, head_dim=16, capacity=100)
k = rng.standard_normal((2, 2, 60, 16)).astype(np.float32)
v = rng.standard_normal((2, 2, 60, 16)).astype(np.float32)
cache.append(k, v, lengths=np.array([60, 25]))  # two prompts of different lengths
q = rng.standard_normal((2, 8, 1, 16)).astype(np.float32)  # one new token each, 8 query heads (GQA)
out = chordlab.decode(q, cache)
for b in range(2):
    want = chordlab.attention(q[b:b + 1], cache.keys(b)[None], cache.values(b)[None], causal=True)
    print(f"sequence {b}: {cache.lengths[b]} cached keys, decode equals attention on them:",
          np.abs(out[b] - want[0]).max() < 1e-5)

# %% [markdown]
# ## Prefill against decode: the roofline
# Prefill (the prompt, N queries at once) does about N/4 FLOPs for every byte it reads: it is compute-bound.
# Decode reads each cached key and value once and does one multiply-add with it per query head of its group:
# `2·G / itemsize` FLOPs per byte, about 2 for GQA with G = 4 in float32. Both limits of this machine, measured:

# %%
# NBVAL_IGNORE_OUTPUT
print(measured_here())
roof = roofline.measure(threads=1)
print(f"peak (NumPy sgemm, 1 thread): {roof.peak_gflops:.0f} GFLOP/s; read bandwidth: {roof.bandwidth_gbs:.1f} GB/s "
      f"({roof.bandwidth_source}); ridge at {roof.ridge:.0f} FLOP/byte")

# %% [markdown]
# Now measure both kinds of attention and put them on it:

# %%
# NBVAL_IGNORE_OUTPUT
N, H, D = (2048, 8, 64) if fast == "simd" else (512, 8, 64)
x = [rng.standard_normal((1, H, N, D)).astype(np.float32) for _ in range(3)]
L, Hq, Hkv = 32768, 32, 8
big = chordlab.KVCache(1, Hkv, 128, L)
big.append(*(rng.standard_normal((1, Hkv, L, 128)).astype(np.float32) for _ in range(2)))
big16 = chordlab.KVCache(1, Hkv, 128, L, dtype=ml_dtypes.bfloat16)
big16.append(big.k.astype(ml_dtypes.bfloat16), big.v.astype(ml_dtypes.bfloat16))
qd = rng.standard_normal((1, Hq, 1, 128)).astype(np.float32)
opts = {"threads": 1} if fast == "simd" else {}
with pinned_threads(1):
    t = time_interleaved({"prefill": lambda: chordlab.attention(*x, backend=fast, **opts),
                          "decode f32": lambda: chordlab.decode(qd, big, backend=fast, **opts),
                          "decode bf16": lambda: chordlab.decode(qd, big16, backend=fast, **opts)},
                         repeats=3, min_seconds=0.2)
points = {"prefill (N=%d)" % N: (roofline.prefill_intensity(N, D), 4 * N * N * D * H / t["prefill"].median / 1e9),
          "decode, float32 cache": (roofline.decode_intensity(Hq // Hkv, 4),
                                    4 * L * 128 * Hq / t["decode f32"].median / 1e9),
          "decode, bfloat16 cache": (roofline.decode_intensity(Hq // Hkv, 2),
                                     4 * L * 128 * Hq / t["decode bf16"].median / 1e9)}
I = np.logspace(-1, 4, 200)
fig, ax = plt.subplots(figsize=(6.5, 4))
ax.loglog(I, roof.attainable(I), "k-", label="roofline (measured)")
for (name, (i, g)), marker in zip(points.items(), "os^"):
    ax.loglog([i], [g], marker, ms=9, label=f"{name}: {g:.0f} GFLOP/s")
ax.set_xlabel("arithmetic intensity (FLOP per byte)")
ax.set_ylabel("GFLOP/s")
ax.set_title(f"1 thread, backend {fast!r}", fontsize=9)
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# Decode sits far left, on the slanted part: its speed is the bandwidth times its intensity, so the way to speed it
# up is to read fewer bytes. A bfloat16 cache halves them and doubles the intensity.
#
# ## What a cache costs in memory
# Per token and per layer the cache holds `2 · Hkv · D` numbers. For a model with 8 kv heads of dim 128 (one layer),
# the cache of one sequence against its length, in float32 and bfloat16, and for 64 sequences of random lengths in
# a paged cache with pages of 16 tokens, where only each sequence's last page is partly empty:

# %%
lengths = np.array([512, 2048, 8192, 32768, 131072])
per_token = 2 * 8 * 128
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
for name, itemsize in (("float32", 4), ("bfloat16", 2)):
    axes[0].loglog(lengths, lengths * per_token * itemsize / 2**20, "o-", label=name)
axes[0].set_xlabel("sequence length")
axes[0].set_ylabel("MiB per layer")
axes[0].legend()
pool = chordlab.PagedKVCache(num_pages=8192, page_size=16, kv_heads=1, head_dim=1)
seq_lengths = rng.integers(20, 1500, size=64)
for n in seq_lengths:
    pool.append(pool.add_sequence(), np.zeros((1, n, 1), np.float32), np.zeros((1, n, 1), np.float32))
contiguous_waste = 1 - seq_lengths.sum() / (64 * seq_lengths.max())
axes[1].bar(["contiguous, sized\nfor the longest", "paged, 16 tokens\nper page"],
            [100 * contiguous_waste, 100 * pool.fragmentation], color=["tab:gray", "tab:blue"])
axes[1].set_ylabel("% of reserved slots unused")
axes[1].set_title("64 sequences of 20-1500 tokens", fontsize=9)
plt.tight_layout()
plt.show()
print(pool)

# %% [markdown]
# A contiguous cache must reserve each row's capacity up front; a paged cache hands out pages as sequences grow
# and takes them back when a sequence ends. Its waste is under one page per sequence.
#
# ## Reading through the block table
# A paged sequence's key `j` sits in physical page `block_table[j // page_size]`, at slot `j % page_size`. The
# kernel reads the pages in place, in order; nothing is gathered into a copy:

# %%
paged = chordlab.PagedKVCache(num_pages=32, page_size=8, kv_heads=2, head_dim=16)
a, b_ = paged.add_sequence(), paged.add_sequence()
for step in range(3):  # interleaved appends: each sequence's pages end up scattered
    paged.append(a, k[0, :, 10 * step:10 * step + 10], v[0, :, 10 * step:10 * step + 10])
    paged.append(b_, k[1, :, 5 * step:5 * step + 5], v[1, :, 5 * step:5 * step + 5])
print("block table of sequence a:", paged.block_table(a), " of sequence b:", paged.block_table(b_))
out_paged = chordlab.decode(q, paged)
ka, va = paged.gather(a)
print("paged decode equals attention on the gathered keys:",
      np.abs(out_paged[0] - chordlab.attention(q[:1], ka[None], va[None], causal=True)[0]).max() < 1e-5)

# %% [markdown]
# ## Exercise 10: the block-table lookup
# Write `block_table_lookup(block_table, page_size, j)`: return `(page, slot)` for key `j` (an int or an array of
# ints) of a sequence whose block table is `block_table`.

# %%
def block_table_lookup(block_table, page_size, j):
    raise NotImplementedError  # your code here


chordlab.check("block_table_lookup", block_table_lookup)

# %% [markdown]
# ## Split-KV: every core on one sequence
# With one sequence and 8 kv heads there are only 8 (sequence, head) pairs to share among the cores. Flash-Decoding
# also cuts the cached keys into `splits` ranges, computes each into a partial `(max, sum, output)` state, and
# merges the states by their log-sum-exp, chapter 2's `merge_states` with output vectors. The answer does not
# depend on the split:

# %%
one = chordlab.decode(q, cache, backend="tiled", splits=1)
for splits in (2, 5):
    got = chordlab.decode(q, cache, backend="tiled", splits=splits)
    print(f"splits={splits} agrees with splits=1 to 1e-6:", np.abs(got - one).max() < 1e-6)
print("splits='auto' on 2 threads for 1 sequence, 8 kv heads, 32k keys:", decoding.auto_splits(1, 8, 32768, 2))

# %% [markdown]
# ## Generation: a cache against recomputing
# A `MultiHeadAttention` layer generates with a cache through `extend(x, cache)`: it projects only the new tokens,
# appends their keys and values, and decodes. Without a cache each step recomputes attention over the whole prefix.
# Time per generated token against its position:

# %%
# NBVAL_IGNORE_OUTPUT
print(measured_here())
mha = chordlab.MultiHeadAttention(d_model=512, num_heads=8, num_kv_heads=2, seed=0)
steps = 1000
tokens = rng.standard_normal((1, steps, 512)).astype(np.float32)
gen_cache = chordlab.KVCache(1, 2, 64, steps)
with_cache, without, worst = [], [], 0.0
import time  # noqa: E402

for t_ in range(steps):
    t0 = time.perf_counter()
    y_cached = mha.extend(tokens[:, t_:t_ + 1], gen_cache)
    with_cache.append(time.perf_counter() - t0)
    if t_ % 50 == 0:
        t0 = time.perf_counter()
        y_full = mha.forward(tokens[:, : t_ + 1], causal=True)[:, -1:]
        without.append((t_, time.perf_counter() - t0))
        worst = max(worst, np.abs(y_cached - y_full).max())
print("every cached step equals the last row of full recomputation:", worst < 1e-4)
fig, ax = plt.subplots(figsize=(6.5, 3.6))
ax.plot(range(steps), np.array(with_cache) * 1e3, ".", ms=3, label="with a KV cache (extend)")
ax.plot(*zip(*[(s, w * 1e3) for s, w in without]), "o-", label="recompute the whole prefix")
ax.set_xlabel("position of the generated token")
ax.set_ylabel("ms per token")
ax.legend()
plt.show()

# %% [markdown]
# With a cache each step's cost grows slowly, only with the reading of the cache; recomputing grows with the
# prefix, its projections included.
#
# ## Decode speed against the bandwidth
# GB/s of K/V read per second by decode on this machine, against its measured read bandwidth, for a float32 and a
# bfloat16 cache (`benchmarks/attention_decode.py` runs the full grid against torch):

# %%
# NBVAL_IGNORE_OUTPUT
print(measured_here())
rows = []
for n in (4096, 16384, 32768):
    c32 = chordlab.KVCache(1, 8, 128, n)
    c32.append(big.k[:, :, :n].copy(), big.v[:, :, :n].copy())
    c16 = chordlab.KVCache(1, 8, 128, n, dtype=ml_dtypes.bfloat16)
    c16.append(c32.k.astype(ml_dtypes.bfloat16), c32.v.astype(ml_dtypes.bfloat16))
    with pinned_threads(1):
        tt = time_interleaved({4: lambda: chordlab.decode(qd, c32, backend=fast, **opts),
                               2: lambda: chordlab.decode(qd, c16, backend=fast, **opts)}, repeats=5,
                              min_seconds=0.2)
    rows += [(n, size, 2 * 8 * n * 128 * size / tt[size].median / 1e9) for size in (4, 2)]
fig, ax = plt.subplots(figsize=(6, 3.5))
for size, name in ((4, "float32 cache"), (2, "bfloat16 cache")):
    ax.plot([r[0] for r in rows if r[1] == size], [r[2] for r in rows if r[1] == size], "o-", label=name)
ax.axhline(roof.bandwidth_gbs, color="k", ls=":", label="read bandwidth (1 thread)")
ax.set_xscale("log", base=2)
ax.set_xlabel("cached keys")
ax.set_ylabel("GB/s of K/V read")
ax.set_ylim(0, None)
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ### Where the bytes start
# Memory moves in 64-byte cache lines, and an AVX-512 load is 64 bytes wide. NumPy starts a large array 16 bytes
# into a line (on Linux), so every 64-byte load of such a row would touch two lines. `KVCache` puts its storage on a
# line (`chordlab.kv_cache.aligned_zeros`):

# %%
print("the cache's K starts", c32.k.ctypes.data % 64, "bytes into a cache line")

# %% [markdown]
# The same decode with the cache's storage moved 16 bytes off the line (same values, so the same answer):

# %%
# NBVAL_IGNORE_OUTPUT
off = chordlab.KVCache(1, 8, 128, c32.capacity)
off.append(c32.keys(0)[None], c32.values(0)[None])
for name in ("k", "v"):  # the same values in a buffer that starts 16 bytes into a line
    raw = np.zeros(c32.k.nbytes + 128, np.uint8)
    start = -raw.ctypes.data % 64 + 16
    moved = raw[start:start + c32.k.nbytes].view(np.float32).reshape(c32.k.shape)
    moved[...] = getattr(off, name)
    setattr(off, name, moved)
assert np.array_equal(chordlab.decode(qd, off, backend=fast, **opts), chordlab.decode(qd, c32, backend=fast, **opts))
with pinned_threads(1):
    tt = time_interleaved({"on a line": lambda: chordlab.decode(qd, c32, backend=fast, **opts),
                           "16 bytes off": lambda: chordlab.decode(qd, off, backend=fast, **opts)}, repeats=15)
nbytes = 2 * c32.k.nbytes
for name, t in tt.items():
    print(f"{name:>13}: {nbytes / t.median / 1e9:5.1f} GB/s")

# %% [markdown]
# A few percent (2-7% for float32 on the Zen 5 machine this chapter was written on): small next to the prefetch, but
# it costs nothing.
#
# ## What to remember
# * Decode is memory-bound: its speed is bytes read per second. Halve the bytes (bfloat16) and it doubles.
# * A KV cache turns each generation step from recomputing the prefix into one read of it.
# * Split-KV keeps every core busy on one sequence; log-sum-exp merging makes the split invisible in the answer.
# * Paged caches waste less than a page per sequence and are read in place through the block table.
