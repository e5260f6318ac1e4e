# %% [markdown]
# # Chapter 12 — Precision: bfloat16, float16, and what they cost
#
# Models are trained and served in 16-bit numbers: half the memory, half the bandwidth, and on CPUs with
# AVX512-BF16 (Zen 4, Zen 5, recent Xeons) twice the products per instruction. FlashAttention keeps the risky parts
# in float32: the products may be 16-bit, but the running max, the softmax sums and lse are float32. This chapter
# shows where the error enters, why that split works, and what the 16-bit kernels buy on your CPU.

# %%
import matplotlib.pyplot as plt
import ml_dtypes
import numpy as np

import chordlab
from chordlab.timing import measured_here, pinned_threads, time_interleaved

rng = np.random.default_rng(12)
BF16 = ml_dtypes.bfloat16
fast = "simd" if chordlab.get_backend("simd").available() else "tiled"
print("timings below use backend", repr(fast))

# %% [markdown]
# ## The bits
# A float is a sign, an exponent (the range) and a mantissa (the precision). bfloat16 keeps float32's 8 exponent
# bits and cuts the mantissa to 7: the same range, about 2-3 decimal digits. float16 splits its bits the other way:
# 10 mantissa bits, but only 5 exponent bits, so nothing above 65504.

# %%
formats = {"float32": (8, 23, np.float32), "bfloat16": (8, 7, BF16), "float16": (5, 10, np.float16)}
fig, axes = plt.subplots(1, 2, figsize=(12, 3.4), gridspec_kw={"width_ratios": [1.4, 1]})
for row, (name, (e, m, dt)) in enumerate(formats.items()):
    for start, width, color, label in ((0, 1, "tab:gray", "sign"), (1, e, "tab:blue", "exponent"),
                                       (1 + e, m, "tab:orange", "mantissa")):
        axes[0].barh(row, width, left=start, color=color, edgecolor="white", label=label if row == 0 else None)
axes[0].set_yticks(range(3), list(formats))
axes[0].set_xlabel("bits")
axes[0].invert_yaxis()
axes[0].legend(loc="lower right", fontsize=8)
for name, (e, m, dt) in formats.items():
    info = ml_dtypes.finfo(dt) if dt is BF16 else np.finfo(dt)
    axes[1].scatter(float(info.max), float(info.eps), s=80)
    axes[1].annotate(name, (float(info.max), float(info.eps)), textcoords="offset points", xytext=(8, 4))
axes[1].set_xscale("log")
axes[1].set_yscale("log")
axes[1].set_xlabel("largest number (range)")
axes[1].set_ylabel("epsilon (relative precision)")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Where error enters
# Three places: rounding the inputs to 16 bits (unavoidable once the model is in 16 bits), the products, and the
# sums. Summing thousands of terms in 16 bits loses digits with every addition: once the sum is large, small terms
# round away. Below, attention computed entirely in float16 (scores, softmax and sums, with NumPy's float16), against
# chordlab on the same float16 inputs, which sums in float32. Both are compared with float64 on those inputs:

# %%
def all_float16(q, k, v):
    """Every step in float16: what a kernel without float32 accumulation would do."""
    s = (q @ k.swapaxes(-1, -2)) * np.float16(1 / np.sqrt(q.shape[-1]))
    s = s - s.max(axis=-1, keepdims=True)
    p = np.exp(s)
    total = np.zeros(p.shape[:-1] + (1,), np.float16)
    for j in range(p.shape[-1]):  # a running float16 sum, as a streaming kernel keeps it
        total += p[..., j:j + 1]
    out = np.zeros(q.shape, np.float16)
    for j in range(p.shape[-1]):
        out += p[..., j:j + 1] * v[..., j:j + 1, :]
    return out / total


lengths = [64, 256, 1024, 4096]
errors = {"all in float16": [], "chordlab, float16 inputs": [], "chordlab, bfloat16 inputs": []}
for n in lengths:
    q, k, v = (rng.standard_normal((1, 1, 8, 64)).astype(np.float16) if i == 0 else
               rng.standard_normal((1, 1, n, 64)).astype(np.float16) for i in range(3))
    exact = chordlab.attention(*(a.astype(np.float64) for a in (q, k, v)), backend="reference")
    errors["all in float16"].append(np.abs(all_float16(q, k, v).astype(np.float64) - exact).max())
    errors["chordlab, float16 inputs"].append(
        np.abs(chordlab.attention(q, k, v, backend=fast).astype(np.float64) - exact).max())
    qb, kb, vb = (a.astype(BF16) for a in (q, k, v))
    exact_b = chordlab.attention(*(a.astype(np.float64) for a in (qb, kb, vb)), backend="reference")
    errors["chordlab, bfloat16 inputs"].append(
        np.abs(chordlab.attention(qb, kb, vb, backend=fast).astype(np.float64) - exact_b).max())
fig, ax = plt.subplots(figsize=(6.5, 3.6))
for name, errs in errors.items():
    ax.loglog(lengths, errs, "o-", label=name)
ax.set_xlabel("keys")
ax.set_ylabel("largest error against float64")
ax.legend(fontsize=8)
plt.show()
print("summing in float32 keeps the error at the output's own rounding, whatever the length:",
      max(errors["chordlab, float16 inputs"]) < 2e-3)

# %% [markdown]
# The 16-bit sums grow their error with the length; float32 sums keep it at or below the rounding of the output
# itself (one unit in the last place near 1 is 1e-3 for float16 and 8e-3 for bfloat16), and it even shrinks as the
# softmax averages more values.
#
# ## float16's ceiling
# Scores are sums of D products. With inputs around 120, q·k reaches about 10⁵, past float16's 65504: a float16 score
# is infinity, and the softmax of infinities is NaN. chordlab multiplies in float32 (or, for bfloat16, with
# float32 accumulators), so the same inputs are harmless:

# %%
q = (rng.standard_normal((1, 1, 4, 64)) * 120).astype(np.float16)
k = (rng.standard_normal((1, 1, 6, 64)) * 120).astype(np.float16)
v = rng.standard_normal((1, 1, 6, 64)).astype(np.float16)
with np.errstate(over="ignore", invalid="ignore"):
    print("float16 scores overflow:", np.isinf(q @ k.swapaxes(-1, -2)).any(),
          "| all-float16 attention has NaN:", np.isnan(all_float16(q, k, v)).any())
print("chordlab's output is finite:", np.isfinite(chordlab.attention(q, k, v).astype(np.float32)).all())

# %% [markdown]
# ## Speed per dtype on this CPU
# The SIMD kernel has two ways to take 16-bit inputs. `half="convert"` converts each tile to float32 as it loads it
# and multiplies in float32 (any CPU: F16C or a shift). `half="dot"` multiplies bfloat16 pairs with `vdpbf16ps`
# (AVX512-BF16), two products per float32 lane per instruction, and rounds P to bfloat16 for the second product:

# %%
# NBVAL_IGNORE_OUTPUT
print(measured_here())
dot = fast == "simd" and chordlab.step4_simd.library().bf16_dot
print("AVX512-BF16 dot products on this CPU:", dot)
N, D = (2048, 64) if fast == "simd" else (512, 64)
x32 = [rng.standard_normal((1, 8, N, D)).astype(np.float32) for _ in range(3)]
xb, xh = [a.astype(BF16) for a in x32], [a.astype(np.float16) for a in x32]
opts = {"threads": 1} if fast == "simd" else {}
fns = {"float32\n(vfmadd231ps)": lambda: chordlab.attention(*x32, backend=fast, **opts),
       "float16\n(convert, F16C)": lambda: chordlab.attention(*xh, backend=fast, **opts),
       "bfloat16\n(convert, shift)": lambda: chordlab.attention(*xb, backend=fast,
                                                                 **dict(opts, **({"half": "convert"} if fast == "simd"
                                                                                 else {})))}
if dot:
    fns["bfloat16\n(vdpbf16ps)"] = lambda: chordlab.attention(*xb, backend=fast, half="dot", **opts)
with pinned_threads(1):
    t = time_interleaved(fns, repeats=3, min_seconds=0.2)
gflops = {name: 4 * 8 * N * N * D / x.median / 1e9 for name, x in t.items()}
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.bar(list(gflops), list(gflops.values()), color=["tab:gray", "tab:orange", "tab:blue", "tab:green"][: len(gflops)])
ax.set_ylabel("GFLOP/s, 1 thread")
ax.set_title(f"N = {N}, D = {D}, 8 heads, backend {fast!r}", fontsize=9)
plt.show()

# %% [markdown]
# ## Exercise 12: rounding to bfloat16
# bfloat16 is the top 16 bits of a float32. Truncating would always round towards zero; hardware rounds to
# nearest, ties to even. Write `to_bfloat16(x)`: float32 array in, the bfloat16 bit patterns (uint16) out. Work on
# `x.view(np.uint32)`.

# %%
def to_bfloat16(x):
    raise NotImplementedError  # your code here


chordlab.check("to_bfloat16", to_bfloat16)

# %% [markdown]
# ## What to remember
# * bfloat16 has float32's range with 2-3 digits; float16 has 3-4 digits but overflows at 65504.
# * Keep the max, the sums and lse in float32: then the error stays at the rounding of the output, whatever the
#   length, and float16 scores cannot overflow.
# * 16-bit data halves memory and bandwidth; with bfloat16 dot-product instructions it also doubles the products
#   per instruction. `benchmarks/attention_precision.py` measures both against torch and OpenVINO on your machine.
