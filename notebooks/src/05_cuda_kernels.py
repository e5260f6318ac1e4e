# %% [markdown]
# # Chapter 5 — CUDA kernels
#
# A GPU runs thousands of threads at once. This chapter ports the tiled kernel to CUDA in four versions, one
# idea each (`cuda/flash_v1.cu` .. `flash_v4.cu`), launched from Python by PyCUDA:
#
# | version | idea |
# |---|---|
# | v1 | one thread per query row: chapter 2's online softmax, as is |
# | v2 | a thread block per query tile: Q, K, V and scores in **shared memory**, coalesced loads |
# | v3 | a **warp** per row group: `__shfl_xor_sync` reductions, float4 loads |
# | v4 | **tensor cores**: fp16/bf16 tiles through WMMA (`mma.sync`), fp32 accumulation |
#
# Most readers have no NVIDIA GPU. The same `.cu` files also compile as OpenCL C (a small header,
# `cuda/cuda_compat.h`, maps CUDA's built-ins) and run on the CPU through PoCL: v1-v3's logic is checked
# everywhere, and on a GPU the real thing runs.

# %%
import json
import re
import subprocess
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import chordlab
from chordlab import step5_cuda, sysinfo

rng = np.random.default_rng(5)
CUDA_DIR = step5_cuda.CUDA_DIR
gpu = chordlab.get_backend("cuda").available()
cpu_path = chordlab.get_backend("cuda-cpu").available()


def header(version):
    """The comment at the top of a kernel file: what the version adds and what it costs."""
    text = (CUDA_DIR / f"flash_{version}.cu").read_text()
    return text[: text.index("*/") + 2]


# %% [markdown]
# ## The execution model in one paragraph
# A kernel launch is a **grid** of **thread blocks**; a block is up to 1024 threads that can share fast on-chip
# **shared memory** and wait for each other (`__syncthreads()`). The hardware runs a block's threads in
# **warps** of 32 that execute in lockstep; lanes of a warp can exchange registers directly (`__shfl_*_sync`).
# Global memory is large and slow; it is fastest when the 32 lanes of a warp read 32 neighbouring floats
# (**coalesced**). Every version below launches a grid `(query blocks, heads, batch)`.
#
# Where this notebook runs:

# %%
# NBVAL_IGNORE_OUTPUT
print("GPU backend:", "available" if gpu else f"unavailable: {gpu.reason}")
print("CPU path (PoCL):", "available" if cpu_path else f"unavailable: {cpu_path.reason}")
print("nvcc:", sysinfo.compilers()["nvcc"] or "not found")

# %% [markdown]
# ## v1: one thread per row

# %%
print(header("v1"))

# %% [markdown]
# ## v2: a block per tile, shared memory

# %%
print(header("v2"))

# %% [markdown]
# Shared memory per block is limited (48 KiB without an opt-in), so the tile sizes depend on the head dim.
# `kernel_config` picks the largest tiles that fit and refuses, before compiling, anything that does not:

# %%
for D in (32, 64, 80, 96, 128):
    cfg = step5_cuda.kernel_config("v2", D)
    print(f"head dim {D:>3}: block_q={cfg.block_q:>2} block_k={cfg.block_k:>2} -> {cfg.shared_bytes:>5} bytes")
try:
    step5_cuda.kernel_config("v2", 128, block_q=64, block_k=64)
except ValueError as e:
    print("ValueError:", e)

# %% [markdown]
# ## v3: warps and shuffles

# %%
print(header("v3"))

# %% [markdown]
# The row max of 32 scores, one per lane, in five butterfly steps. The loop runs `o = 16, 8, 4, 2, 1`, and lane
# `i` takes the max with lane `i ^ o`: after step `o`, every lane holds the max of a group of `32 / o` lanes
# (2 after the first step, 32 after the last). On the CPU path the same source line becomes an exchange through local memory.

# %%
text = (CUDA_DIR / "flash_v3.cu").read_text()
print(text[text.index("DEVICE float warp_max"): text.index("DEVICE float warp_sum")].strip())

# %% [markdown]
# ## v4: tensor cores

# %%
print(header("v4"))

# %% [markdown]
# ## What the compiler made of them
# `nvcc --resource-usage` reports each kernel's registers per thread and shared memory per block (the tests
# fail on any register spill or on shared memory over the limit). Compiled live for sm_90 at head dim 64:

# %%
# NBVAL_IGNORE_OUTPUT
nvcc = sysinfo.compilers()["nvcc"]
if nvcc is None:
    print("nvcc not found: install the CUDA toolkit to see resource usage and PTX")
else:
    for version in step5_cuda.VERSIONS:
        cfg = step5_cuda.kernel_config(version, 64)
        r = subprocess.run([nvcc, "-arch=sm_90", "-cubin", "--resource-usage", f"-I{CUDA_DIR}", *cfg.options(),
                            "-o", "/dev/null", str(cfg.source)], capture_output=True, text=True)
        used = re.search(r"Used (\d+) registers.*", r.stdout + r.stderr)
        print(f"{version}: block {cfg.threads:>3} threads, tiles {cfg.block_q}x{cfg.block_k}: "
              f"{used.group(0) if used else r.stderr.strip()[-200:]}")

# %% [markdown]
# The PTX (the GPU's portable assembly) shows each idea as an instruction: `shfl.sync.bfly` for v3's
# butterflies, `mma.sync` for v4's tensor cores:

# %%
# NBVAL_IGNORE_OUTPUT
if nvcc:
    for version, pattern in (("v3", r"shfl\.sync\.bfly"), ("v4", r"mma\.sync")):
        cfg = step5_cuda.kernel_config(version, 64)
        ptx = subprocess.run([nvcc, "-arch=sm_90", "-ptx", f"-I{CUDA_DIR}", *cfg.options(), "-o", "-",
                              str(cfg.source)], capture_output=True, text=True).stdout
        hits = [line.strip() for line in ptx.splitlines() if re.search(pattern, line)]
        print(f"{version}: {len(hits)} lines match {pattern!r}; first: {hits[0] if hits else '-'}")

# %% [markdown]
# ## Running them
# On a GPU, every version runs through PyCUDA; without one, v1-v3 run on the CPU from the same source.
# Either way the output is checked against the NumPy reference (GQA: 6 query heads over 2 key/value heads,
# a padding mask, causal):

# %%
q = rng.standard_normal((2, 6, 100, 64)).astype(np.float32)
k = rng.standard_normal((2, 2, 130, 64)).astype(np.float32)
v = rng.standard_normal((2, 2, 130, 64)).astype(np.float32)
mask = (np.arange(130) < np.array([[90], [130]]))[:, None, None, :]
want = chordlab.attention(q, k, v, mask=mask, causal=True, backend="reference")
backend = "cuda" if gpu else "cuda-cpu" if cpu_path else None
versions = ["v1", "v2", "v3"] + (["v4"] if gpu else [])
results = {}
if backend is None:  # neither a GPU nor a CPU OpenCL: say why and carry on with the rest of the chapter
    print("Skipped: no GPU and no working CPU OpenCL here.", cpu_path.reason)
else:
    for version in versions:
        got = chordlab.attention(q, k, v, mask=mask, causal=True, backend=backend, kernel=version)
        tol = 2e-2 if version == "v4" else 2e-5
        results[version] = bool(np.allclose(got, want, atol=tol, rtol=tol))
    print("v1-v3 match the reference:", all(results[x] for x in ("v1", "v2", "v3")))

# %%
# NBVAL_IGNORE_OUTPUT
if backend == "cuda-cpu":
    print(f"ran on the CPU ({step5_cuda.opencl_choice().device}); no GPU here, and v4 needs tensor cores:", results)
else:
    print(f"ran on {'the GPU (PyCUDA)' if gpu else 'nothing'}:", results)

# %% [markdown]
# ## Measured on a GPU
# `make gpu-test` runs the GPU tests and `benchmarks/attention_cuda.py` on a machine with an NVIDIA GPU, and
# the results are committed to `docs/gpu-results.md` (and `.json`) with the device named. This plot reads
# them; it shows nothing it did not measure. Note the log scale: each version's idea is worth a factor, and
# the distance from v4 to torch's fp16 kernel (FlashAttention-2 class) is what asynchronous copies, larger tiles
# and Hopper's wgmma buy.

# %%
# NBVAL_IGNORE_OUTPUT
results_file = CUDA_DIR.parent / "docs" / "gpu-results.json"
if not results_file.exists():
    print("No GPU measurements are recorded yet (docs/gpu-results.json is missing): the kernels' GPU speed "
          "is unmeasured. Run `make gpu-test` on a machine with an NVIDIA GPU.")
else:
    data = json.loads(results_file.read_text())
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, D in zip(axes, (64, 128)):
        rows = [r for r in data["rows"] if r["head_dim"] == D and not r["causal"]]
        for impl in dict.fromkeys(r["impl"] for r in rows):
            pts = sorted((r["seq"], r["tflops"]) for r in rows if r["impl"] == impl)
            ax.plot(*zip(*pts), "o-" if impl.startswith("v") else "s--", label=impl)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length N")
        ax.set_title(f"head dim {D}, not causal")
    axes[0].set_ylabel("TFLOP/s (log scale)")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"measured on {data['meta']['device']} ({data['meta']['date']}); torch = PyTorch's SDPA")
    fig.tight_layout()
    plt.show()

# %% [markdown]
# ## Exercise 5: shared memory of a v2 block
# v2 declares four float arrays in shared memory (look at the top of `flash_v2` in `cuda/flash_v2.cu`,
# padding included). Write the number of bytes a block uses for head dim `D` and tiles `block_q x block_k`.

# %%
def v2_shared_bytes(D, block_q, block_k):
    raise NotImplementedError  # your code here


chordlab.check("v2_shared_bytes", v2_shared_bytes)

# %% [markdown]
# ## Exercise 5b: change a CUDA kernel and run it on the CPU
# In `cuda/flash_v1.cu`, the lines marked `EXERCISE v1_update` fold one key into a thread's running state:
# score `s`, value row `vh[j·HEAD_DIM ..]`, running max `m`, sum `l` and output row `acc[HEAD_DIM]`. Write them
# yourself below, in CUDA C (`fmaxf`, `expf`). `edited_copy` puts them in a copy of `cuda/`, and the `cuda-cpu`
# backend compiles that copy as OpenCL C and runs it on this CPU, so you can test a GPU kernel without a GPU.
# (On a GPU machine, the same folder compiles with nvcc.)

# %%
MY_V1_UPDATE = r"""
        /* your code here */
"""


def my_v1(q, k, v, causal):
    folder = chordlab.exercises.edited_copy("cuda", "v1_update", MY_V1_UPDATE)
    return chordlab.attention(q, k, v, causal=causal, backend="cuda-cpu", kernel="v1", source_dir=folder)


if cpu_path:
    print(chordlab.check("cuda_v1_update", my_v1))
else:
    print("This exercise needs the CPU OpenCL, which is unavailable here:", cpu_path.reason)
