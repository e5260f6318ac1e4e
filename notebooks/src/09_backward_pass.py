# %% [markdown]
# # Chapter 9 — The backward pass
#
# Training needs the gradients of attention: given `dO`, the gradient of the loss with respect to the output,
# find `dQ`, `dK` and `dV`. FlashAttention's second half computes them **without ever storing the N² weight
# matrix**. It keeps only the forward's output `O` and one number per row, the log-sum-exp `lse`, and
# recomputes the weights tile by tile. This chapter derives the formulas, checks them against finite
# differences, measures what recomputing saves, and then trains a small model with them.

# %%
import inspect

import matplotlib.pyplot as plt
import numpy as np

import chordlab
from chordlab import step1_reference, training
from chordlab.timing import measured_here, pinned_threads, time_interleaved

rng = np.random.default_rng(9)

# %% [markdown]
# ## The derivation, one row at a time
# For one query row, the forward computes scores `s_j = scale · q·k_j`, weights `p = softmax(s)` and
# output `o = Σ_j p_j v_j`. Going backwards:
#
# * **values**: `o` is linear in each `v_j` with coefficient `p_j`, so `dv_j += p_j · do`. Over all rows:
#   `dV = Pᵀ dO`.
# * **weights**: `dp_j = do · v_j`, so `dP = dO Vᵀ`.
# * **softmax**: its Jacobian is `∂p_j/∂s_k = p_j (δ_jk − p_k)`, so
#   `ds_k = Σ_j dp_j p_j (δ_jk − p_k) = p_k (dp_k − Σ_j p_j dp_j)`.
#   The sum is the same for every `k` of the row: `Σ_j p_j dp_j = do · Σ_j p_j v_j = do · o`.
#   Call it `D = rowsum(dO ∘ O)`. It needs only the output, not the weights, so
#   **`dS = P ∘ (dP − D)`**.
# * **scores**: `S = scale · Q Kᵀ`, so `dQ = scale · dS K` and `dK = scale · dSᵀ Q`.
#
# And `P` itself? It is `exp(S − lse)`: one subtraction from the forward's stored row value, not a stored
# matrix. The reference writes these as numbered passes, like the forward:

# %%
print(inspect.getsource(step1_reference.reference_backward))

# %% [markdown]
# ## Checked against finite differences
# A gradient is checked by nudging each input a little and watching the loss move. Here the loss is
# `sum(attention(q, k, v) ∘ W)` for a random `W`, so `dO = W`. This uses float64, grouped-query heads,
# causal attention with more keys than queries, and a padding mask:

# %%
q = rng.standard_normal((1, 4, 5, 3))
k = rng.standard_normal((1, 2, 7, 3))
v = rng.standard_normal((1, 2, 7, 3))
mask = np.arange(7) < 6  # the last key is padding
W = rng.standard_normal(q.shape)
out, lse = chordlab.attention(q, k, v, mask=mask, causal=True, return_lse=True)
dq, dk, dv = chordlab.attention_backward(W, q, k, v, out, lse, mask=mask, causal=True, backend="tiled",
                                         block_q=2, block_k=3)


def loss(q, k, v):
    return float((chordlab.attention(q, k, v, mask=mask, causal=True) * W).sum())


worst = 0.0
for name, x, g in (("q", q, dq), ("k", k, dk), ("v", v, dv)):
    for idx in np.ndindex(x.shape):
        x[idx] += 1e-6
        up = loss(q, k, v)
        x[idx] -= 2e-6
        down = loss(q, k, v)
        x[idx] += 1e-6
        worst = max(worst, abs((up - down) / 2e-6 - g[idx]))
print("largest difference from finite differences below 1e-7:", worst < 1e-7)
print("the padding key gets no gradient:", np.all(dk[..., 6, :] == 0) and np.all(dv[..., 6, :] == 0))

# %% [markdown]
# ## Recompute instead of store
# The tiled backward (`step3_tiled.tiled_backward`) is FlashAttention-2's. It computes `D` once, then runs an
# outer loop over key/value tiles, holding that tile's `dK` and `dV`, and an inner loop over the query tiles,
# recomputing `P` from `lse` and adding each tile's share into `dQ`. The reference stores `P` and `dS`
# whole. Their memory, measured (tracemalloc) for 4 heads, head dim 64:

# %%
# NBVAL_IGNORE_OUTPUT
lengths = [256, 512, 1024, 2048]
peaks = {"reference (stores P and dS)": [], "tiled (recomputes P)": []}
for L in lengths:
    q, k, v = (rng.standard_normal((1, 4, L, 64)).astype(np.float32) for _ in range(3))
    out, lse = chordlab.attention(q, k, v, return_lse=True, backend="tiled")
    for label, backend in zip(peaks, ("reference", "tiled")):
        _, peak = chordlab.measure_peak(chordlab.attention_backward, out, q, k, v, out, lse, backend=backend)
        peaks[label].append(peak / 2**20)
fig, ax = plt.subplots(figsize=(6.5, 3.8))
for label, ys in peaks.items():
    ax.plot(lengths, ys, "o-", label=label)
ax.plot(lengths, [3 * 4 * L * 64 * 4 / 2**20 for L in lengths], "k:", label="the three gradients themselves")
ax.set_xscale("log", base=2)
ax.set_yscale("log")
ax.set_xlabel("sequence length N")
ax.set_ylabel("peak memory of the backward (MiB)")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# The reference grows with N², the tiled backward with N: beyond the gradients it holds a few tiles and
# one number per row. FlashAttention-2 pays for this with compute: `P` is computed twice, once in the forward and
# once here. That is why its backward does about 2.5 times the forward's work, not 2 times.
#
# ## Exercise 9: the backward of one tile
# Given one tile's weights `P [rows, bk]`, the output gradient `dO [rows, D]`, the tile's values `V [bk, D]`
# and the forward's output rows `O [rows, D]`, return `dS`. The second case has a row that saw no key.

# %%
def tile_ds(P, dO, V, O):
    raise NotImplementedError  # your code here


chordlab.check("tile_ds", tile_ds)

# %% [markdown]
# ## Speed
# Four backwards side by side on one thread: the reference, the tiled NumPy one (a Python round trip per tile),
# the C one (`simd`: the same FlashAttention-2 loops over chapter 4's micro-kernels) and, when torch is
# installed (`pip install -e .[bench]`), PyTorch's CPU backward:

# %%
# NBVAL_IGNORE_OUTPUT
print(measured_here())
try:
    import torch
except ImportError:
    torch = None
rows = []
for L in (256, 512, 1024):
    q, k, v = (rng.standard_normal((1, 8, L, 64)).astype(np.float32) for _ in range(3))
    out, lse = chordlab.attention(q, k, v, return_lse=True, backend="tiled")
    fns = {b: (lambda b=b: chordlab.attention_backward(out, q, k, v, out, lse, backend=b,
                                                       **({"threads": 1} if b == "simd" else {})))
           for b in ("reference", "tiled", "simd") if chordlab.get_backend(b).available()}
    if torch is not None:
        tq, tk, tv = (torch.from_numpy(a).requires_grad_() for a in (q, k, v))
        tout = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv)
        grad = torch.from_numpy(out)
        fns["torch"] = lambda tout=tout, grad=grad, ins=(tq, tk, tv): torch.autograd.grad(tout, ins, grad,
                                                                                           retain_graph=True)
    with pinned_threads(1):
        t = time_interleaved(fns, repeats=3, min_seconds=0.2)
    flops = 2.5 * chordlab.ProblemShape.of(q.shape, k.shape).flops()
    rows += [(L, name, flops / x.median / 1e9) for name, x in t.items()]
fig, ax = plt.subplots(figsize=(6.5, 3.6))
for name in dict.fromkeys(r[1] for r in rows):
    ax.plot(*zip(*[(L, g) for L, n, g in rows if n == name]), "o-", label=name)
ax.set_xscale("log", base=2)
ax.set_xlabel("sequence length N")
ax.set_ylabel("GFLOP/s (2.5x the forward's FLOPs)")
ax.set_ylim(bottom=0)
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# The C backward computes S and dP twice: once while it collects each key tile's dK and dV, once while it
# collects each query tile's dQ. That way no two threads ever add into the same number, and the result is
# bit-identical for any thread count. The reference stays fast only while its N² matrices fit in the caches.
#
# ## The payoff: train a model with it
# `chordlab.training` builds a tiny transformer: token and position embeddings, one `MultiHeadAttention` layer
# with a residual, and a linear read-out. It trains it with Adam, in NumPy, to **reverse a sequence**. That
# task needs attention: the token for position `i` sits at position `L − 1 − i`, so each position must find
# another one by where it is. The attention layer's gradients come from `MultiHeadAttention.backward`, which
# calls `chordlab.attention_backward`. First, the whole model's gradients against finite differences:

# %%
print("model gradients match finite differences (relative error < 1e-4):", training.gradient_check() < 1e-4)

# %%
# NBVAL_IGNORE_OUTPUT
model, history = training.train(300, seed=0)
_, ablation = training.train(300, seed=0, use_attention=False)
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
for label, h in (("with attention", history), ("without attention (h = x)", ablation)):
    ax1.plot([r["loss"] for r in h], label=label)
    ax2.plot([r["accuracy"] for r in h], label=label)
ax1.set_yscale("log")
ax1.set_xlabel("step")
ax1.set_ylabel("cross-entropy")
ax2.set_xlabel("step")
ax2.set_ylabel("accuracy (tokens)")
ax2.legend(fontsize=8)
plt.show()

# %%
print("learned to reverse (accuracy > 0.95):", history[-1]["accuracy"] > 0.95)
print("without attention it cannot (accuracy < 0.4):", ablation[-1]["accuracy"] < 0.4)

# %% [markdown]
# Which positions does the trained layer look at? Query position `i` should put its weight on key position
# `L − 1 − i`, an anti-diagonal:

# %%
tokens, _ = training.reversal_batch(np.random.default_rng(1), 1, model.length, model.vocab)
x = model.params["embed"][tokens] + model.params["pos"][None]
a = model.attn
qh = (x @ a.w_q).reshape(1, -1, a.num_heads, a.head_dim).transpose(0, 2, 1, 3)
kh = (x @ a.w_k).reshape(1, -1, a.num_kv_heads, a.head_dim).transpose(0, 2, 1, 3)
scores = qh @ kh.transpose(0, 1, 3, 2) / np.sqrt(a.head_dim)
weights = np.exp(scores - scores.max(-1, keepdims=True))
weights /= weights.sum(-1, keepdims=True)
fig, ax = plt.subplots(figsize=(3.6, 3.2))
ax.imshow(weights[0].mean(axis=0), cmap="viridis")
ax.set_xlabel("key position")
ax.set_ylabel("query position")
ax.set_title("attention weights (mean over heads)", fontsize=9)
plt.show()
L = model.length
print("the heaviest key of every query is its mirror position:",
      bool(np.all(weights[0].mean(axis=0).argmax(axis=1) == np.arange(L)[::-1])))
