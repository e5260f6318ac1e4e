# %% [markdown]
# # Chapter 7 — Putting it together
#
# An attention layer, every backend behind it, and the numbers: memory against length, speed against
# length, how far each kernel is from this machine's limit, and the seed project's demo re-measured here.

# %%
import matplotlib.pyplot as plt
import numpy as np

import chordlab
from chordlab.demo import seed_demo
from chordlab.plots import memory_table, measure_matmul_peak, plot_memory, plot_roofline, plot_speedup, speedup_table
from chordlab.fallback import needs
from chordlab.timing import measured_here, pinned_threads, time_interleaved

rng = np.random.default_rng(7)
fast = [b.name for b in chordlab.backends() if b.available and b.name in ("simd", "cuda")]

# %% [markdown]
# ## A multi-head attention layer
# `MultiHeadAttention` projects `x [B, L, d_model]` to queries, keys and values laid out `[B, L, H, D]` (as in
# the seed's transformer), transposes to `[B, H, L, D]` for the kernels and back, and projects out. With
# `num_kv_heads` < `num_heads` it is grouped-query attention. Its output is the same on every backend:

# %%
mha = chordlab.MultiHeadAttention(d_model=256, num_heads=8, num_kv_heads=2, seed=0)
x = rng.standard_normal((2, 300, 256)).astype(np.float32)
outputs = {b: mha(x, causal=True, backend=b) for b in ["reference", "tiled", *fast]}
ref = outputs["reference"]
print(mha)
print("every backend agrees with the reference (to 1e-4):",
      all(np.allclose(o, ref, atol=1e-4) for o in outputs.values()))

# %% [markdown]
# ## Memory against length
# Predicted (lines) and measured (dots) bytes of one call, 8 heads, head dim 64:

# %%
# NBVAL_IGNORE_OUTPUT
rows = memory_table(["reference", "tiled", *fast], [256, 512, 1024, 2048, 4096, 8192, 16384], measure_up_to=2048)
fig = plot_memory(rows, "memory of one attention call: N² against N")
plt.show()

# %% [markdown]
# ## Speed against length
# Every available backend against the NumPy reference, timed side by side (interleaved), and PyTorch's CPU
# `scaled_dot_product_attention` when it is installed (`pip install -e .[bench]`). One thread for everyone,
# and rounds added until every contender has run for a fifth of a second, so each point is a median of many:

# %%
# NBVAL_IGNORE_OUTPUT
print(measured_here())
speed = speedup_table(["tiled", *fast], [256, 512, 1024, 2048], repeats=7, threads=1)
fig = plot_speedup(speed)
plt.show()

# %% [markdown]
# Rerun the cell and the points at N = 256 move more than the others. One call there takes about a
# millisecond, so anything else the machine does during that millisecond shows up in full. With several
# threads it gets worse: the C kernel starts its threads on every call, and a core that was idle needs time to
# wake up. That is why the plot uses one thread. Try `threads=2` and rerun it a few times to see the spread.
# Long lengths are steady: they are where kernel speeds can be compared.

# ## How far from the limit
# The practical ceiling of a CPU for this work is its matrix-multiply rate (NumPy's BLAS, measured now with
# the same thread count). Attention adds softmax work on top of two matrix products, so a kernel within
# reach of the matmul rate is doing well:

# %%
# NBVAL_IGNORE_OUTPUT
print(measured_here())
peak = measure_matmul_peak()
at_2048 = {r.name: r.gflops for r in speed if r.seq_len == 2048}
fig = plot_roofline(at_2048, peak, "attention at N=2048 against this machine's matmul rate")
plt.show()

# %% [markdown]
# ## The seed's demo, re-measured
# The project grew from a write-up that claimed "16x less memory" and a "1.7x SIMD speedup" for batch 1,
# 8 heads, seq 512, head dim 64. Its 1.7x compared *its own* code on one thread: a row-at-a-time scalar kernel
# against the same kernel with AVX2. That design is kept as `algorithm="rowwise"`, so the like-for-like
# comparison can be measured here:

# %%
# NBVAL_IGNORE_OUTPUT
if needs("simd"):
    supported = [i.name for i in chordlab.step4_simd.library().isas() if i.supported]
    q5, k5, v5 = (rng.standard_normal((1, 8, 512, 64)).astype(np.float32) for _ in range(3))
    like_for_like = {f"{isa} {alg}": (lambda isa=isa, alg=alg: chordlab.attention(
        q5, k5, v5, backend="simd", isa=isa, algorithm=alg, threads=1))
        for isa in ("scalar", "avx2", "neon") if isa in supported for alg in ("rowwise", "blocked")}
    with pinned_threads(1):
        print(measured_here())
        t = time_interleaved(like_for_like, repeats=5)
    base = t["scalar rowwise"].median
    for name, x in t.items():
        print(f"{name:<16} {base / x.median:5.1f}x the seed's scalar design")

# %% [markdown]
# The whole-call demo below is a different comparison: standard (the NumPy reference) against flash
# (NumPy tiled, and the fastest backend here), on one thread, with memory too (also
# `python -m chordlab demo` in a terminal):

# %%
# NBVAL_IGNORE_OUTPUT
print(measured_here())
report = seed_demo(threads=1)
print(report)

# %% [markdown]
# The memory ratio depends on what is counted: the score matrix alone shrinks by the sequence length over the
# block size, but the output has to exist in both, so whole-call ratios are smaller at short lengths and grow
# with N (the plot above).
#
# ## Exercise 7: the parameters of a GQA layer
# How many weights does `MultiHeadAttention(d_model, heads, kv_heads)` hold (no biases)?

# %%
def mha_params(d_model, heads, kv_heads):
    raise NotImplementedError  # your code here


chordlab.check("mha_params", mha_params)
