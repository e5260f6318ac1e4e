# %% [markdown]
# # Chapter 8 — WebGPU: a GPU kernel every laptop can run
#
# Most laptops have no NVIDIA GPU, but almost all have a GPU that **WebGPU** reaches: Metal on macOS, Vulkan or
# D3D12 elsewhere. `wgpu-py` runs WGSL compute shaders on any of them, and on a machine with no GPU at all on
# Mesa's **lavapipe**, a Vulkan driver that runs on the CPU (that is how CI runs this chapter).
#
# The kernels (`webgpu/flash_w1.wgsl` .. `flash_w3.wgsl`) follow the CUDA chapter's progression:
#
# | kernel | idea | CUDA counterpart |
# |---|---|---|
# | w1 | one invocation per query row | v1 |
# | w2 | a workgroup per query tile, K/V tiles in `var<workgroup>` memory, `workgroupBarrier()` | v2 |
# | w3 | `subgroupMax` / `subgroupAdd` reductions, one key per invocation | v3 |

# %%
import matplotlib.pyplot as plt
import numpy as np

import chordlab
from chordlab import step8_webgpu
from chordlab.fallback import needs
from chordlab.timing import measured_here, pinned_threads, time_interleaved

rng = np.random.default_rng(8)
webgpu = chordlab.get_backend("webgpu").available()


def header(kernel):
    lines = (step8_webgpu.WGSL_DIR / f"flash_{kernel}.wgsl").read_text().splitlines()
    return "\n".join(line for line in lines if line.startswith("//"))


# %% [markdown]
# ## Your adapter
# What `wgpu` found, and its limits: how much workgroup memory a tile may use, how many invocations a
# workgroup may have, and whether it supports subgroups (w3 needs them).

# %%
# NBVAL_IGNORE_OUTPUT
if webgpu:
    dev = step8_webgpu.gpu_device()
    print(dev.describe())
    print("workgroup memory:", dev.limits["max-compute-workgroup-storage-size"], "bytes;",
          "invocations per workgroup:", dev.limits["max-compute-invocations-per-workgroup"], ";",
          "subgroups:", dev.subgroups)
else:
    print("no WebGPU here:", webgpu.reason)

# %% [markdown]
# ## The programming model
# A dispatch is a grid of **workgroups**; the invocations of one workgroup share `var<workgroup>` memory and
# wait for each other at `workgroupBarrier()`. Invocations run in **subgroups** (the hardware's SIMD width:
# 32 on NVIDIA, 32 or 64 on AMD, 32 on Apple, 8 on lavapipe) that can reduce a value together with
# `subgroupMax` / `subgroupAdd`. WGSL may assume floats are finite, so the kernels spell "minus infinity" with
# finite sentinels and the host converts back (a row with no visible key still returns zeros and lse -inf).
#
# ## w1: one invocation per row

# %%
print(header("w1"))

# %% [markdown]
# ## w2: workgroup tiles and barriers

# %%
print(header("w2"))

# %% [markdown]
# Tiles must fit the adapter's workgroup memory; a request that does not is refused with both numbers:

# %%
q = rng.standard_normal((1, 1, 8, 128)).astype(np.float32)
try:
    step8_webgpu.wgsl_config("w2", 128, block_k=128, dev=step8_webgpu.GpuDevice(
        None, None, {}, {"max-compute-workgroup-storage-size": 32768, "max-compute-invocations-per-workgroup": 256,
                         "max-compute-workgroup-size-x": 256}, True))
except ValueError as e:
    print("ValueError:", e)

# %% [markdown]
# ## w3: subgroups
# The subgroup size is the hardware's, not ours, so a workgroup-wide max is two levels: `subgroupMax` inside
# each subgroup, then the subgroups' results through a small workgroup array.

# %%
print(header("w3"))
text = (step8_webgpu.WGSL_DIR / "flash_w3.wgsl").read_text()
print(text[text.index("fn group_max"): text.index("fn group_sum")].strip())

# %% [markdown]
# ## Checked against the reference
# GQA (6 query heads over 2 key/value heads), a padding mask, causal, on every kernel your adapter runs:

# %%
q = rng.standard_normal((2, 6, 50, 64)).astype(np.float32)
k = rng.standard_normal((2, 2, 70, 64)).astype(np.float32)
v = rng.standard_normal((2, 2, 70, 64)).astype(np.float32)
mask = (np.arange(70) < np.array([[40], [70]]))[:, None, None, :]
want = chordlab.attention(q, k, v, mask=mask, causal=True, backend="reference")
kernels = [kk for kk in step8_webgpu.KERNELS if kk != "w3" or (webgpu and step8_webgpu.gpu_device().subgroups)]
if needs("webgpu", show=None):
    ok = all(np.allclose(chordlab.attention(q, k, v, mask=mask, causal=True, backend="webgpu", kernel=kk), want,
                         atol=2e-5) for kk in kernels)
    print("every WGSL kernel this adapter runs matches the reference:", ok)

# %% [markdown]
# ## Timed on your adapter
# Against the NumPy tiled kernel and the SIMD C kernel on the CPU. On a CPU adapter (lavapipe) the WGSL runs
# in a software rasterizer: those are **not GPU numbers**, only a check that the code runs.

# %%
# NBVAL_IGNORE_OUTPUT
N, D = 512, 64
q, k, v = (rng.standard_normal((1, 8, N, D)).astype(np.float32) for _ in range(3))
flops = chordlab.ProblemShape.of(q.shape, k.shape).flops()
fns = {f"webgpu {kk}": (lambda kk=kk: chordlab.attention(q, k, v, backend="webgpu", kernel=kk))
       for kk in (kernels if webgpu else [])}
fns["numpy tiled"] = lambda: chordlab.attention(q, k, v, backend="tiled")
if chordlab.get_backend("simd").available():
    fns["simd (C)"] = lambda: chordlab.attention(q, k, v, backend="simd")
with pinned_threads(2):
    print(measured_here())
    t = time_interleaved(fns, repeats=3)
if webgpu:
    print("adapter:", step8_webgpu.gpu_device().describe())
for name, x in t.items():
    print(f"{name:<14} {x.median * 1e3:8.1f} ms  {x.gflops(flops):6.2f} GFLOP/s")
fig, ax = plt.subplots(figsize=(7, 3))
ax.barh(list(t), [x.gflops(flops) for x in t.values()])
ax.set_xscale("log")
ax.set_xlabel("GFLOP/s (log scale)")
ax.invert_yaxis()
ax.set_title(f"N={N}, head dim {D}, 8 heads")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Exercise 8: workgroup memory of w2
# How many bytes of `var<workgroup>` memory does one w2 workgroup use, for head dim `D` and tiles of
# `block_k` keys?

# %%
def w2_workgroup_bytes(D, block_k):
    raise NotImplementedError  # your code here


chordlab.check("w2_workgroup_bytes", w2_workgroup_bytes)
