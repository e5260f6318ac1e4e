# %% [markdown]
# # Chapter 1 — Attention from scratch, and its memory wall
#
# Attention turns each query into a weighted average of the values, weighted by how well the query matches
# each key:
#
# $$O = \mathrm{softmax}\!\left(\tfrac{1}{\sqrt{D}}\, Q K^\top + M\right) V$$
#
# The reference backend computes it in five numbered passes over the whole score matrix. Every fused kernel
# in later chapters does the same passes, just without ever writing the matrix down.

# %%
import inspect

import matplotlib.pyplot as plt
import numpy as np

import chordlab
from chordlab import step1_reference
from chordlab.plots import memory_table, plot_memory

rng = np.random.default_rng(1)

# %% [markdown]
# ## The five passes, by hand, for one head

# %%
L, D = 6, 4
q, k, v = (rng.standard_normal((L, D)) for _ in range(3))

S = q @ k.T / np.sqrt(D)              # pass 1: scores            [Lq, Lk]
m = S.max(axis=1, keepdims=True)      # pass 2: row max
P = np.exp(S - m)                     # pass 3: exponentiate ...
l = P.sum(axis=1, keepdims=True)      #         ... and sum
P = P / l                             # pass 4: normalize: each row sums to 1
O = P @ v                             # pass 5: weight the values [Lq, D]

print("rows of P sum to 1:", np.allclose(P.sum(axis=1), 1))
print("matches chordlab's reference:", np.allclose(O, chordlab.attention(q, k, v, backend="reference")))

# %% [markdown]
# The attention weights `P` are easiest to read as a picture: row *i* says where query *i* looks.

# %%
fig, ax = plt.subplots(figsize=(4, 3.4))
im = ax.imshow(P, cmap="viridis")
ax.set_xlabel("key j")
ax.set_ylabel("query i")
ax.set_title("attention weights P")
fig.colorbar(im)
plt.show()

# %% [markdown]
# ## The library's reference kernel
# The same passes, batched over `[B, H]`, with masks, causal attention and grouped-query heads.
# A row whose keys are all masked has max `-inf`; the kernel replaces that max by 0 so the row comes out as
# zeros with log-sum-exp `-inf`, never NaN.

# %%
print(inspect.getsource(step1_reference.reference_forward))

# %% [markdown]
# ## Masks and causal attention
# A boolean mask says which keys each query may see (True = attend); a float mask is added to the scores.
# `causal=True` hides the future. When `Lq != Lk` (decoding with a KV cache: a few new queries, many cached
# keys) the diagonal is aligned bottom-right, so the last query sees every key.

# %%
Lq, Lk = 3, 6
explicit = np.tril(np.ones((Lq, Lk), dtype=bool), k=Lk - Lq)
print(explicit.astype(int))
qs, ks, vs = rng.standard_normal((Lq, D)), rng.standard_normal((Lk, D)), rng.standard_normal((Lk, D))
print("causal == explicit bottom-right mask:",
      np.allclose(chordlab.attention(qs, ks, vs, causal=True), chordlab.attention(qs, ks, vs, mask=explicit)))

# %% [markdown]
# **Careful when you compare with PyTorch.** `torch.nn.functional.scaled_dot_product_attention(..., is_causal=True)`
# aligns the diagonal **top-left**: query `i` sees keys `j <= i`, whatever `Lk` is. FlashAttention (since 2.1)
# and chordlab align it bottom-right. The two agree only when `Lq == Lk`. With `Lq < Lk`, PyTorch's last query
# sees only the first `Lq` keys. To get PyTorch's result from chordlab, pass the top-left mask explicitly:

# %%
top_left = np.tril(np.ones((Lq, Lk), dtype=bool))  # PyTorch's is_causal=True
print(top_left.astype(int))
print("same as causal=True here?",
      np.allclose(chordlab.attention(qs, ks, vs, mask=top_left), chordlab.attention(qs, ks, vs, causal=True)))

# %% [markdown]
# ## The memory wall
# The score matrix has `B·H·Lq·Lk` entries: it grows with the *square* of the sequence length. chordlab
# predicts each backend's bytes for a shape and measures the real peak (tracemalloc sees NumPy's buffers).
# Below: batch 1, 8 heads, head dim 64, float32.

# %%
# NBVAL_IGNORE_OUTPUT
rows = memory_table(["reference"], [256, 512, 1024, 2048, 4096, 8192], measure_up_to=2048)
for r in rows:
    measured = chordlab.format_bytes(r.measured) if r.measured else "(not run)"
    print(f"N={r.seq_len:>5}: predicted {chordlab.format_bytes(r.predicted):>11}, measured {measured}")
fig = plot_memory(rows, "reference attention: memory grows as N²")
plt.show()

# %% [markdown]
# Doubling N multiplies the memory by four. At N = 65 536 the scores alone would need 128 GiB, so the
# reference backend checks the budget **before allocating** and says what to do instead:

# %%
big = np.zeros((1, 8, 65536, 64), dtype=np.float32)  # untouched zeros: no real memory used yet
with chordlab.memory_limit("2 GiB"):
    try:
        chordlab.attention(big, big, big, backend="reference")
    except chordlab.MemoryBudgetError as e:
        print("MemoryBudgetError:", e)

# %% [markdown]
# Chapters 2 and 3 remove the wall: the softmax can be computed while streaming over the keys, so the score
# matrix never has to exist.
#
# ## Exercise 1: attention for one head
# Write attention for `q, k, v` of shape `[L, D]` (no mask). The check includes a case with very large scores:
# the textbook formula overflows there, so remember pass 2.

# %%
def attention_2d(q, k, v):
    raise NotImplementedError  # your code here


chordlab.check("attention_2d", attention_2d)
