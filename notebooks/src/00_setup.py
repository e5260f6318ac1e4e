# %% [markdown]
# # Chapter 0 — Setting up the workbench
#
# chordlab builds attention step by step, from the textbook formula to fast kernels, and *measures every
# claim on your machine*. This chapter checks what your machine has and shows how the workbench is laid out.
#
# **How to run it:** from the repository root, `make lab` (creates `.venv`, installs chordlab, starts
# JupyterLab on this folder). `make test` runs the test suite and re-checks every notebook with nbval.

# %%
import numpy as np

import chordlab

print("chordlab", chordlab.__version__)

# %% [markdown]
# ## What this machine has
# `python -m chordlab info` prints the same report in a terminal: the backends and whether they can run here,
# the CPU's SIMD features (chapter 4 uses them), compilers, and the CUDA toolkit and GPUs (chapter 5).

# %%
# NBVAL_IGNORE_OUTPUT
from chordlab.__main__ import info_report

print(info_report())

# %% [markdown]
# ## One function, several backends
# Every chapter calls the same function, `chordlab.attention(q, k, v, ...)`, and picks *how* it is computed
# with `backend=`. Each backend is one step of the progression:
#
# | step | module | idea |
# |---|---|---|
# | 1 | `chordlab/step1_reference.py` | the textbook O(N²) passes, the ground truth |
# | 2 | `chordlab/step2_online_softmax.py` | softmax in one streaming pass, mergeable partial states |
# | 3 | `chordlab/step3_tiled.py` | FlashAttention in NumPy: tiles + online softmax, O(N) memory |
# | 4 | `chordlab/step4_simd.py`, `csrc/` | the same in C: SIMD micro-kernels per instruction set |
# | 5 | `chordlab/step5_cuda.py`, `cuda/` | CUDA kernels v1-v4 (on a GPU; v1-v3 also on the CPU) |
# | 8 | `chordlab/step8_webgpu.py`, `webgpu/` | WGSL kernels w1-w3 on any GPU (or lavapipe on the CPU) |
#
# Chapters 9-12 add to the same backends rather than new ones: the backward pass (`attention_backward`), decode
# over a KV cache (`decode`, `kv_cache.py`), variants (`variants.py`: window, ALiBi, softcap, block masks) and
# 16-bit inputs (bfloat16, float16).
#
# Which of them can run depends on the machine (a C compiler, an NVIDIA GPU, ...); each says why not:

# %%
# NBVAL_IGNORE_OUTPUT
for row in chordlab.backends():
    print(f"{row.name:<10} available={row.available}  {row.summary}")

# %% [markdown]
# Shapes follow the usual convention: `q` is `[B, Hq, Lq, D]` (batch, heads, query length, head dim), `k` and
# `v` are `[B, Hkv, Lk, D]`. `[H, L, D]` and `[L, D]` work too.

# %%
rng = np.random.default_rng(0)
q = rng.standard_normal((1, 2, 4, 8)).astype(np.float32)
k = rng.standard_normal((1, 2, 6, 8)).astype(np.float32)
v = rng.standard_normal((1, 2, 6, 8)).astype(np.float32)
out = chordlab.attention(q, k, v)
print(out.shape, out.dtype)
print("reference and tiled agree:",
      np.allclose(chordlab.attention(q, k, v, backend="reference"),
                  chordlab.attention(q, k, v, backend="tiled", block_q=2, block_k=4), atol=1e-6))

# %% [markdown]
# Bad input gets a clear error that names the argument, never a crash or silent garbage:

# %%
try:
    chordlab.attention(q, k[..., :7], v)
except ValueError as e:
    print("ValueError:", e)

# %% [markdown]
# ## Exercise 0: how big is the score matrix?
# The textbook form stores one score per (batch, head, query, key). Fill in the function, then run the check.

# %%
def score_matrix_bytes(B, H, L, itemsize):
    raise NotImplementedError  # your code here


chordlab.check("score_matrix_bytes", score_matrix_bytes)
