"""Step 5: CUDA kernels (``cuda/flash_v1.cu`` .. ``flash_v4.cu``), one idea per version, one launcher.

    v1  one thread per query row, online softmax over every key
    v2  a thread block per query tile; Q, K, V and score tiles in shared memory (the seed's design)
    v3  a warp per group of rows: __shfl_xor_sync reductions, K/V tiles shared by the block, float4 loads
    v4  tensor cores: fp16/bf16 inputs through WMMA, fp32 accumulation (sm_80 and newer)

Two backends run them:
    ``cuda``      PyCUDA on an NVIDIA GPU (``pip install -e .[cuda]``);
    ``cuda-cpu``  v1-v3 compiled as OpenCL C from the *same* files (``cuda/cuda_compat.h`` maps CUDA's
                  built-ins) and run on the CPU by PoCL: how the logic is checked on a machine with no GPU.

``attention(q, k, v, backend="cuda", kernel="v3", block_q=..., block_k=...)``. Block sizes and the head dim are
compile-time constants: each distinct (kernel, head dim, blocks) is compiled once and cached. This module
holds what both backends share: where the sources are, each version's launch shape and shared memory, and
the checks that reject a configuration before it is compiled.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backends import Availability, Backend, register
from .memory import device_copy_bytes
from .validation import AttentionProblem, ProblemShape

CUDA_DIR = Path(__file__).resolve().parent.parent / "cuda"
VERSIONS = ("v1", "v2", "v3", "v4")
SHARED_LIMIT = 48 * 1024  # static shared memory per block without an opt-in, every GPU since Kepler
MAX_HEAD_DIM = 128
V3_WARPS = 4
V4_WARPS_SMALL, V4_WARPS_LARGE = 4, 2
PRECISIONS = ("fp16", "bf16")


@dataclass(frozen=True)
class KernelConfig:
    """One compiled variant: its version, head dim, tile sizes, threads per block and shared memory."""

    version: str
    head_dim: int
    block_q: int
    block_k: int
    threads: int
    shared_bytes: int
    defines: tuple[tuple[str, int], ...]
    source_dir: str = ""  # a folder with an edited copy of cuda/ (chapter 5's exercise); "" for cuda/ itself

    @property
    def function(self) -> str:
        return f"flash_{self.version}"

    @property
    def source(self) -> Path:
        return Path(self.source_dir or CUDA_DIR) / f"flash_{self.version}.cu"

    def options(self) -> list[str]:
        return [f"-D{k}={v}" for k, v in self.defines]

    def grid(self, batch: int, heads_q: int, len_q: int) -> tuple[int, int, int]:
        return (math.ceil(len_q / self.block_q), heads_q, batch)


def shared_bytes(version: str, head_dim: int, block_q: int, block_k: int) -> int:
    """Static shared memory of one block, as the kernel declares it (checked against nvcc in the tests)."""
    D = head_dim
    if version == "v1":
        return 0
    if version == "v2":
        return 4 * (block_q * (D + 1) + block_k * (D + 1) + block_k * D + block_q * (block_k + 1))
    if version == "v3":
        return 4 * (block_q * D + block_k * (D + 1) + block_k * D + V3_WARPS * 32)
    if version == "v4":
        warps = block_q // 16
        ld_h, ld_f = D + 8, D + 4  # padded rows (WMMA wants 16-byte multiples)
        tiles = 2 * (block_q * ld_h + 2 * block_k * ld_h)  # Q, K, V tiles in half precision
        per_warp = 4 * 16 * (block_k + 4) + 2 * 16 * (block_k + 8) + 4 * 16 * ld_f + 4 * 2 * 16  # S, P, O, m/l
        return tiles + warps * per_warp
    raise ValueError(f"unknown kernel {version!r}; choose one of {', '.join(VERSIONS)}")


def _fits(version, D, bq, bk) -> bool:
    return shared_bytes(version, D, bq, bk) <= SHARED_LIMIT


def default_blocks(version: str, head_dim: int) -> tuple[int, int]:
    """The largest tiles that fit the 48 KiB shared-memory budget for this head dim."""
    if version == "v1":
        return 128, 1
    if version == "v2":
        candidates = [(64, 64), (64, 32), (32, 32), (32, 16), (16, 16), (16, 8)]
    elif version == "v3":
        candidates = [(V3_WARPS * r, 32) for r in (8, 4, 2, 1)]
    elif version == "v4":
        candidates = [(16 * V4_WARPS_SMALL, 32), (16 * V4_WARPS_LARGE, 32), (16, 32), (16, 16)]
    else:
        raise ValueError(f"unknown kernel {version!r}; choose one of {', '.join(VERSIONS)}")
    for bq, bk in candidates:
        if _fits(version, head_dim, bq, bk):
            return bq, bk
    raise ValueError(f"no tile of kernel {version} fits shared memory at head dim {head_dim}")


def kernel_config(version: str, head_dim: int, block_q: int | None = None, block_k: int | None = None
                  ) -> KernelConfig:
    """Check a (kernel, head dim, blocks) request and return its launch configuration.

    ValueError, before anything is compiled, for what a version cannot do: a head dim over 128 (or, for v4,
    not a multiple of 16), a block_k for v1 (it has no key tiles), a v3 block_k other than the warp size, a
    v3 block_q not a multiple of its 4 warps, a v4 block_q not a multiple of 16, or tiles over 48 KiB of
    shared memory (the message says how much they need)."""
    if version not in VERSIONS:
        raise ValueError(f"unknown kernel {version!r}; choose one of {', '.join(VERSIONS)}")
    D = head_dim
    if not 1 <= D <= MAX_HEAD_DIM:
        raise ValueError(f"the CUDA kernels take head dims 1..{MAX_HEAD_DIM}, got {D}")
    if version == "v4" and D % 16:
        raise ValueError(f"kernel v4 (tensor cores, 16x16x16 tiles) needs a head dim that is a multiple of 16, got {D}")
    dq, dk = default_blocks(version, D)
    if version == "v1":
        if block_k is not None:
            raise ValueError("kernel v1 has no key tiles: leave block_k as None (block_q = threads per block)")
        bq = block_q or dq
        if bq > 1024:
            raise ValueError(f"kernel v1: block_q is the threads per block, at most 1024, got {bq}")
        return KernelConfig("v1", D, bq, 1, bq, 0, (("HEAD_DIM", D), ("THREADS", bq)))
    bq, bk = block_q or dq, block_k or dk
    if version == "v2" and bq > 1024:
        raise ValueError(f"kernel v2 runs one thread per query row: block_q is at most 1024, got {bq}")
    if version == "v3":
        if bk != 32:
            raise ValueError(f"kernel v3 takes one key per lane: block_k must be the warp size, 32, got {bk}")
        if bq % V3_WARPS:
            raise ValueError(f"kernel v3 splits block_q over {V3_WARPS} warps: it must be a multiple of {V3_WARPS}, "
                             f"got {bq}")
    if version == "v4":
        if bq % 16 or bq > 16 * 8:
            raise ValueError(f"kernel v4 gives each warp 16 query rows: block_q must be 16, 32, ..., 128, got {bq}")
        if bk % 16:
            raise ValueError(f"kernel v4 multiplies 16-key slices: block_k must be a multiple of 16, got {bk}")
    need = shared_bytes(version, D, bq, bk)
    if need > SHARED_LIMIT:
        raise ValueError(f"kernel {version} with block_q={bq}, block_k={bk}, head dim {D} needs {need} bytes of "
                         f"shared memory per block, over the {SHARED_LIMIT}-byte limit; the default for this head "
                         f"dim is block_q={dq}, block_k={dk}")
    if version == "v2":
        return KernelConfig("v2", D, bq, bk, bq, need, (("HEAD_DIM", D), ("BLOCK_Q", bq), ("BLOCK_K", bk)))
    if version == "v3":
        return KernelConfig("v3", D, bq, 32, V3_WARPS * 32, need,
                            (("HEAD_DIM", D), ("NUM_WARPS", V3_WARPS), ("ROWS_PER_WARP", bq // V3_WARPS)))
    return KernelConfig("v4", D, bq, bk, (bq // 16) * 32, need, (("HEAD_DIM", D), ("BLOCK_Q", bq), ("BLOCK_K", bk)))


def mask_arguments(p: AttentionProblem):
    """(mask_kind, bool buffer, float buffer, strides b, h, i, j in elements): what every version takes."""
    if p.mask is None:
        return 0, np.zeros(1, np.uint8), np.zeros(1, np.float32), (0, 0, 0, 0)
    if p.mask.dtype == np.bool_:
        m = np.ascontiguousarray(p.mask).view(np.uint8)
        kind, mb, mf = 1, m, np.zeros(1, np.float32)
    else:
        m = np.ascontiguousarray(p.mask, dtype=np.float32)
        kind, mb, mf = 2, np.zeros(1, np.uint8), m
    strides = tuple(s // m.itemsize if n > 1 else 0 for s, n in zip(m.strides, m.shape, strict=True))
    return kind, mb, mf, strides


#: The variants of chapter 11 the CUDA kernels compute (forward, and cuda/flash_bwd.cu's backward).
CUDA_VARIANTS = frozenset({"window", "alibi", "softcap"})
_UNBOUNDED = 1 << 30


def variant_arguments(p: AttentionProblem):
    """(ALiBi slopes [B·Hq] float32, zeros without ALiBi; vis_lo; vis_hi; softcap or 0): the kernels' score hook
    and visibility bounds (key j visible to query i iff vis_lo <= j - i <= vis_hi; ±2^30 is unbounded)."""
    from .variants import visibility_bounds

    if p.block_mask is not None:
        raise TypeError("the CUDA kernels compute no block_mask; use backend='simd' or 'tiled'")
    slopes = np.zeros((p.batch, p.heads_q), np.float32)
    if p.alibi is not None:
        slopes[:] = p.alibi
    lo, hi = visibility_bounds(p)
    lo, hi = max(lo, -_UNBOUNDED), min(hi, _UNBOUNDED)
    return slopes.reshape(-1), np.int32(lo), np.int32(hi), np.float32(p.softcap or 0.0)


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest even (NumPy has no bfloat16)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = bits + 0x7FFF + ((bits >> 16) & 1)
    return (rounded >> 16).astype(np.uint16)


def from_bf16_bits(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << 16).view(np.float32)


def _check_kernel_option(kernel, precision, allow_v4: bool = True) -> None:
    if kernel not in VERSIONS:
        raise ValueError(f"unknown kernel {kernel!r}; choose one of {', '.join(VERSIONS)}")
    if kernel == "v4" and not allow_v4:
        raise ValueError("kernel v4 uses tensor cores (mma.sync via WMMA): it runs on an NVIDIA GPU only; "
                         "the CPU path runs v1, v2 and v3")
    if precision is not None and (kernel != "v4" or precision not in PRECISIONS):
        raise ValueError(f"precision={precision!r} applies to kernel v4 only, as one of {', '.join(PRECISIONS)}")


# --------------------------------------------------------------------------------------------- CPU (PoCL)

OPENCL_FIX = ("install a CPU OpenCL whose compiler knows this CPU: Debian's PoCL (sudo apt-get install "
              "pocl-opencl-icd), or pip install pocl-binary-distribution on older CPUs (its LLVM 14 does not know "
              "AMD Zen 5)")
PROBE_SOURCE = ("__kernel void chordlab_probe(__global float *x) "
                "{ x[get_global_id(0)] = 2.0f * x[get_global_id(0)] + 1.0f; }")


def opencl_error_text(exc: BaseException) -> str:
    """A readable one-line reason from a pyopencl error (its record object prints as an address)."""
    record = exc.args[0] if exc.args else None
    text = record.what() if hasattr(record, "what") else str(exc)
    errors = [line.strip() for line in str(text).splitlines() if line.strip().startswith("error:")]
    first = str(text).splitlines()[0] if str(text).strip() else type(exc).__name__
    return "; ".join(dict.fromkeys(errors)) if errors else first.split(" - ")[0]


def probe_device(device) -> None:
    """Build and run a one-line kernel on ``device``; raise if it does not build or computes a wrong value.
    (The PoCL inside the pyopencl wheel lists every CPU but fails every build on CPUs its LLVM does not know.)"""
    import pyopencl as cl

    ctx = cl.Context([device])
    queue = cl.CommandQueue(ctx)
    x = np.arange(4, dtype=np.float32)
    buf = cl.Buffer(ctx, cl.mem_flags.READ_WRITE | cl.mem_flags.COPY_HOST_PTR, hostbuf=x)
    cl.Program(ctx, PROBE_SOURCE).build().chordlab_probe(queue, (4,), None, buf)
    got = np.empty_like(x)
    cl.enqueue_copy(queue, got, buf)
    queue.finish()
    if not np.array_equal(got, 2 * x + 1):
        raise RuntimeError(f"the probe kernel computed {got.tolist()} instead of {(2 * x + 1).tolist()}")


@dataclass(frozen=True)
class OpenClChoice:
    """The CPU OpenCL device the cuda-cpu backend runs on, and the ones that failed the probe (with why)."""

    platform: str
    device: str
    rejected: tuple[str, ...]

    def describe(self) -> str:
        text = f"{self.device} on {self.platform}"
        return text + "".join(f"\n  passed over: {r}" for r in self.rejected)


@functools.lru_cache(maxsize=1)
def _opencl_context():
    """The context and queue of the first CPU OpenCL device that passes `probe_device` (once per process).
    RuntimeError with every device's reason, and the fix, when none does."""
    import pyopencl as cl

    os.environ.setdefault("POCL_CACHE_DIR", str(Path.home() / ".cache" / "chordlab" / "pocl"))
    try:
        platforms = cl.get_platforms()
    except cl.Error as exc:
        raise RuntimeError(f"no OpenCL platform ({opencl_error_text(exc)}); {OPENCL_FIX}") from None
    devices = [(pl, d) for pl in platforms for d in pl.get_devices()]
    cpu = [(pl, d) for pl, d in devices if d.type & cl.device_type.CPU] or devices
    rejected = []
    for pl, d in cpu:
        name = f"{d.name.strip()} on {pl.version.strip()}"
        try:
            probe_device(d)
        except Exception as exc:  # a build failure, a crash in the driver's compiler, a wrong value
            rejected.append(f"{name}: {opencl_error_text(exc)}")
            continue
        ctx = cl.Context([d])
        return ctx, cl.CommandQueue(ctx), OpenClChoice(pl.version.strip(), d.name.strip(), tuple(rejected))
    found = "; ".join(rejected) if rejected else "no OpenCL device"
    raise RuntimeError(f"no OpenCL CPU device passed the probe ({found}); {OPENCL_FIX}")


def opencl_choice() -> OpenClChoice:
    """Which OpenCL device ``cuda-cpu`` runs on (RuntimeError with the reason when none works)."""
    return _opencl_context()[2]


@functools.lru_cache(maxsize=64)
def _opencl_kernel(ctx, cfg: KernelConfig):
    """Build the .cu file as OpenCL C in context ``ctx`` (cuda_compat.h does the mapping); cached per context and
    configuration."""
    import pyopencl as cl

    options = [*cfg.options(), f"-I{cfg.source.parent}", f"-I{CUDA_DIR}", "-cl-std=CL1.2"]
    return cl.Kernel(cl.Program(ctx, cfg.source.read_text()).build(options=options), cfg.function)


def run_on_cpu(p: AttentionProblem, cfg: KernelConfig) -> tuple[np.ndarray, np.ndarray]:
    """Launch kernel ``cfg`` on the OpenCL CPU device with CUDA's grid and block shapes."""
    import pyopencl as cl

    ctx, queue, _ = _opencl_context()
    kernel = _opencl_kernel(ctx, cfg)
    kind, mb, mf, strides = mask_arguments(p)
    slopes, vis_lo, vis_hi, softcap = variant_arguments(p)
    mf_ = cl.mem_flags
    bufs = [cl.Buffer(ctx, mf_.READ_ONLY | mf_.COPY_HOST_PTR, hostbuf=a) for a in (p.q, p.k, p.v, mb, mf, slopes)]
    out = np.empty(p.q.shape, np.float32)
    lse = np.empty(p.q.shape[:3], np.float32)
    out_buf = cl.Buffer(ctx, mf_.WRITE_ONLY, out.nbytes)
    lse_buf = cl.Buffer(ctx, mf_.WRITE_ONLY, lse.nbytes)
    grid = cfg.grid(p.batch, p.heads_q, p.len_q)
    kernel(queue, (grid[0] * cfg.threads, grid[1], grid[2]), (cfg.threads, 1, 1), *bufs, out_buf, lse_buf,
           np.int32(p.heads_q), np.int32(p.heads_kv), np.int32(p.len_q), np.int32(p.len_k), np.float32(p.scale),
           vis_lo, vis_hi, softcap, np.int32(kind), *(np.int64(s) for s in strides))
    cl.enqueue_copy(queue, out, out_buf)
    cl.enqueue_copy(queue, lse, lse_buf)
    queue.finish()
    return out, lse


def report() -> list[str]:
    """Lines for ``python -m chordlab info``: which OpenCL device runs cuda-cpu, and which were passed over."""
    try:
        choice = opencl_choice()
    except ImportError:
        return ["  not available: pyopencl is not installed"]
    except RuntimeError as exc:
        return [f"  not available: {exc}"]
    return [f"  OpenCL    {choice.device} on {choice.platform}"] + [f"  passed over  {r}" for r in choice.rejected]


BACKWARD_THREADS = 64  # threads per block of cuda/flash_bwd.cu's two kernels


@functools.lru_cache(maxsize=32)
def _opencl_backward(ctx, head_dim: int):
    """cuda/flash_bwd.cu built as OpenCL C for one head dim in context ``ctx`` (a kernel belongs to the context
    it was built in: keyed by it, a new context never gets an old kernel): its (dq, dkv) kernels."""
    import pyopencl as cl

    options = [f"-DHEAD_DIM={head_dim}", f"-DTHREADS={BACKWARD_THREADS}", f"-I{CUDA_DIR}", "-cl-std=CL1.2"]
    program = cl.Program(ctx, (CUDA_DIR / "flash_bwd.cu").read_text()).build(options=options)
    return cl.Kernel(program, "flash_bwd_dq"), cl.Kernel(program, "flash_bwd_dkv")


def backward_arguments(p: AttentionProblem, out: np.ndarray, lse: np.ndarray, dout: np.ndarray):
    """cuda/flash_bwd.cu's arguments, the same on both devices: (input arrays q, k, v, mask_b, mask_f, alibi, lse,
    dout, drow; the three gradients' empty host arrays; the scalars after them). drow = D_i = rowsum(dO ∘ O)."""
    kind, mb, mf, strides = mask_arguments(p)
    slopes, vis_lo, vis_hi, softcap = variant_arguments(p)
    drow = np.einsum("bhld,bhld->bhl", dout, out).astype(np.float32)
    ins = [np.ascontiguousarray(a) for a in (p.q, p.k, p.v, mb, mf, slopes, lse.astype(np.float32),
                                             dout.astype(np.float32), drow)]
    grads = [np.empty(p.q.shape, np.float32), np.empty(p.k.shape, np.float32), np.empty(p.v.shape, np.float32)]
    scalars = (np.int32(p.heads_q), np.int32(p.heads_kv), np.int32(p.len_q), np.int32(p.len_k),
               np.float32(p.scale), vis_lo, vis_hi, softcap, np.int32(kind), *(np.int64(s) for s in strides))
    return ins, grads, scalars


def backward_grids(p: AttentionProblem) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Blocks of BACKWARD_THREADS for (flash_bwd_dq, flash_bwd_dkv): (ceil(Lq / T), Hq, B), (ceil(Lk / T), Hkv, B)."""
    T = BACKWARD_THREADS
    return (math.ceil(p.len_q / T), p.heads_q, p.batch), (math.ceil(p.len_k / T), p.heads_kv, p.batch)


def run_backward_on_cpu(p: AttentionProblem, out: np.ndarray, lse: np.ndarray, dout: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The CUDA backward (cuda/flash_bwd.cu: one thread per query row for dQ, one per key row for dK and dV)
    on the OpenCL CPU device."""
    import pyopencl as cl

    ctx, queue, _ = _opencl_context()
    k_dq, k_dkv = _opencl_backward(ctx, p.head_dim)
    ins, grads, scalars = backward_arguments(p, out, lse, dout)
    mf_ = cl.mem_flags
    bufs = [cl.Buffer(ctx, mf_.READ_ONLY | mf_.COPY_HOST_PTR, hostbuf=a) for a in ins]
    outs = [cl.Buffer(ctx, mf_.WRITE_ONLY, g.nbytes) for g in grads]
    T = BACKWARD_THREADS
    for kern, grid in zip((k_dq, k_dkv), backward_grids(p), strict=True):
        kern(queue, (grid[0] * T, grid[1], grid[2]), (T, 1, 1), *bufs, *outs, *scalars)
    for g, buf in zip(grads, outs, strict=True):
        cl.enqueue_copy(queue, g, buf)
    queue.finish()
    return tuple(grads)


class CudaOnCpuBackend(Backend):
    name = "cuda-cpu"
    summary = "the CUDA kernels v1-v3 compiled as OpenCL C from the same .cu files, run on the CPU by PoCL"
    takes_block_sizes = True
    dtypes = (np.dtype(np.float32),)
    auto_priority = 200  # a correctness path, never the fast one
    options = ("kernel", "source_dir")
    max_head_dim = MAX_HEAD_DIM
    variants = CUDA_VARIANTS
    backward_variants = CUDA_VARIANTS
    run_advice = f"use backend='simd' or 'tiled' meanwhile, or {OPENCL_FIX}"

    def failure_reason(self, exc: BaseException) -> str:
        return opencl_error_text(exc)

    def available(self) -> Availability:
        try:
            import pyopencl  # noqa: F401
        except ImportError:
            return Availability(False, "pyopencl is not installed: pip install pyopencl pocl-binary-distribution")
        try:
            _opencl_context()
        except RuntimeError as exc:
            return Availability(False, str(exc))
        return Availability(True)

    def extra_bytes(self, shape: ProblemShape, itemsize: int, *, block_q=None, block_k=None, causal=False,
                    mask_shape=None, kernel="v3", **options) -> int:
        return device_copy_bytes(shape, mask_shape)  # the OpenCL device's copies, in host memory

    def forward(self, problem, block_q=None, block_k=None, kernel="v3", source_dir=None):
        """``source_dir``: run the kernel from an edited copy of ``cuda/`` (`chordlab.exercises.edited_copy`)."""
        _check_kernel_option(kernel, None, allow_v4=False)
        cfg = kernel_config(kernel, problem.head_dim, block_q, block_k)
        if source_dir is not None:
            if not (Path(source_dir) / cfg.source.name).is_file():
                raise ValueError(f"source_dir {str(source_dir)!r} has no {cfg.source.name}")
            cfg = dataclasses.replace(cfg, source_dir=str(source_dir))
        return run_on_cpu(problem, cfg)

    has_backward = True

    def backward_extra_bytes(self, shape: ProblemShape, itemsize: int, *, block_q=None, block_k=None, causal=False,
                             mask_shape=None, **options) -> int:
        # the device's copies: the forward's inputs, plus dout, drow and the three gradients
        return device_copy_bytes(shape, mask_shape) + 4 * (2 * shape.batch * shape.heads_q * shape.len_q *
                                                           shape.head_dim + 2 * shape.batch * shape.heads_kv *
                                                           shape.len_k * shape.head_dim)

    def backward(self, problem, out, lse, dout, block_q=None, block_k=None, kernel=None, source_dir=None):
        """cuda/flash_bwd.cu (one kernel pair: block sizes and ``kernel`` do not apply)."""
        if kernel is not None or source_dir is not None or block_q is not None or block_k is not None:
            raise ValueError("the CUDA backward is one kernel pair (cuda/flash_bwd.cu): leave kernel, source_dir "
                             "and the block sizes as None")
        return run_backward_on_cpu(problem, out, lse, dout)


# --------------------------------------------------------------------------------------------- GPU (PyCUDA)

def _import_driver():
    """pycuda.driver, or ImportError with the reason a reader can act on."""
    try:
        import pycuda.driver as drv
    except ImportError as exc:
        if "libcuda" in str(exc):
            raise ImportError("no NVIDIA driver (libcuda.so.1 not found); install the driver on a machine "
                              "with an NVIDIA GPU") from exc
        raise ImportError("pycuda is not installed: pip install -e .[cuda] (needs the CUDA toolkit)") from exc
    return drv


@functools.lru_cache(maxsize=1)
def _device_context():
    drv = _import_driver()
    try:
        drv.init()
        if drv.Device.count() == 0:
            raise RuntimeError("no CUDA device: the driver reports 0 GPUs")
        dev = drv.Device(0)
        return dev, dev.retain_primary_context()
    except drv.Error as exc:
        raise RuntimeError(f"no CUDA device: {exc}") from exc


def _nvcc_on_path() -> None:
    """PyCUDA runs `nvcc` from PATH; add the toolkit's bin/ when only CUDA_HOME or /usr/local/cuda has it."""
    import shutil

    from .sysinfo import cuda_home

    home = cuda_home()
    if shutil.which("nvcc") is None and home:
        os.environ["PATH"] = f"{Path(home) / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"


def compile_cubin(cfg: KernelConfig, arch: str = "sm_90") -> bytes:
    """nvcc-compile a configuration through PyCUDA's compiler (needs no GPU, only the toolkit)."""
    from pycuda.compiler import compile as pycuda_compile

    _nvcc_on_path()
    return pycuda_compile(cfg.source.read_text(), options=cfg.options(), arch=arch, include_dirs=[str(CUDA_DIR)],
                          no_extern_c=True)


@functools.lru_cache(maxsize=64)
def _gpu_function(cfg: KernelConfig, arch: str):
    from pycuda.compiler import SourceModule

    _nvcc_on_path()
    mod = SourceModule(cfg.source.read_text(), options=cfg.options(), arch=arch, include_dirs=[str(CUDA_DIR)],
                       no_extern_c=True)
    return mod, mod.get_function(cfg.function)


class GpuLaunch:
    """A problem uploaded to the GPU once, ready to launch ``cfg`` many times (for timing) and read back.

    ``launch()`` queues the kernel; ``time(repeats)`` returns milliseconds per launch measured with CUDA events;
    ``result()`` waits and copies ``(out, lse)`` back. Device memory is freed with the object."""

    def __init__(self, p: AttentionProblem, cfg: KernelConfig, precision: str | None = None):
        self.drv = drv = _import_driver()
        self.dev, self.ctx = _device_context()
        self.cfg, self.shape = cfg, p.q.shape
        self.ctx.push()
        try:
            major, minor = self.dev.compute_capability()
            if cfg.version == "v4" and major < 8:
                raise RuntimeError(f"kernel v4 needs sm_80 or newer; {self.dev.name()} is sm_{major}{minor}")
            _, self.fn = _gpu_function(cfg, f"sm_{major}{minor}")
            kind, mb, mf, strides = mask_arguments(p)
            slopes, vis_lo, vis_hi, softcap = variant_arguments(p)
            if cfg.version == "v4":
                conv = to_bf16_bits if precision == "bf16" else (lambda a: a.astype(np.float16))
                inputs = [conv(a) for a in (p.q, p.k, p.v)]
            else:
                inputs = [p.q, p.k, p.v]
            self.buffers = [drv.to_device(np.ascontiguousarray(a)) for a in (*inputs, mb, mf, slopes)]
            self.out_gpu = drv.mem_alloc(int(np.prod(p.q.shape)) * 4)
            self.lse_gpu = drv.mem_alloc(int(np.prod(p.q.shape[:3])) * 4)
            self.args = [*self.buffers, self.out_gpu, self.lse_gpu, np.int32(p.heads_q), np.int32(p.heads_kv),
                         np.int32(p.len_q), np.int32(p.len_k), np.float32(p.scale), vis_lo, vis_hi, softcap,
                         np.int32(kind), *(np.int64(s) for s in strides)]
            if cfg.version == "v4":
                self.args.append(np.int32(precision == "bf16"))
            self.grid = cfg.grid(p.batch, p.heads_q, p.len_q)
        finally:
            self.ctx.pop()

    def launch(self) -> None:
        self.ctx.push()
        try:
            self.fn(*self.args, block=(self.cfg.threads, 1, 1), grid=self.grid)
        finally:
            self.ctx.pop()

    def time(self, repeats: int = 10, warmup: int = 2) -> list[float]:
        for _ in range(warmup):
            self.launch()
        self.ctx.push()
        try:
            times = []
            for _ in range(repeats):
                start, end = self.drv.Event(), self.drv.Event()
                start.record()
                self.fn(*self.args, block=(self.cfg.threads, 1, 1), grid=self.grid)
                end.record()
                end.synchronize()
                times.append(start.time_till(end))
            return times
        finally:
            self.ctx.pop()

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        self.ctx.push()
        try:
            self.ctx.synchronize()
            out = np.empty(self.shape, np.float32)
            lse = np.empty(self.shape[:3], np.float32)
            self.drv.memcpy_dtoh(out, self.out_gpu)
            self.drv.memcpy_dtoh(lse, self.lse_gpu)
            return out, lse
        finally:
            self.ctx.pop()


def run_on_gpu(p: AttentionProblem, cfg: KernelConfig, precision: str | None = None):
    """Upload, launch ``cfg`` once, and read ``(out, lse)`` back."""
    run = GpuLaunch(p, cfg, precision)
    run.launch()
    return run.result()


@functools.lru_cache(maxsize=16)
def _gpu_backward(head_dim: int, arch: str):
    """cuda/flash_bwd.cu compiled by nvcc for one head dim: its (dq, dkv) kernels (the module kept alive)."""
    from pycuda.compiler import SourceModule

    _nvcc_on_path()
    mod = SourceModule((CUDA_DIR / "flash_bwd.cu").read_text(), arch=arch, include_dirs=[str(CUDA_DIR)],
                       options=["-O3", f"-DHEAD_DIM={head_dim}", f"-DTHREADS={BACKWARD_THREADS}"], no_extern_c=True)
    return mod, mod.get_function("flash_bwd_dq"), mod.get_function("flash_bwd_dkv")


def run_backward_on_gpu(p: AttentionProblem, out: np.ndarray, lse: np.ndarray, dout: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """cuda/flash_bwd.cu on the GPU: the same source and arguments as `run_backward_on_cpu`."""
    drv = _import_driver()
    dev, ctx = _device_context()
    ins, grads, scalars = backward_arguments(p, out, lse, dout)
    ctx.push()
    try:
        major, minor = dev.compute_capability()
        _, k_dq, k_dkv = _gpu_backward(p.head_dim, f"sm_{major}{minor}")
        bufs = [drv.to_device(a) for a in ins]
        outs = [drv.mem_alloc(g.nbytes) for g in grads]
        for kern, grid in zip((k_dq, k_dkv), backward_grids(p), strict=True):
            kern(*bufs, *outs, *scalars, block=(BACKWARD_THREADS, 1, 1), grid=grid)
        ctx.synchronize()
        for g, buf in zip(grads, outs, strict=True):
            drv.memcpy_dtoh(g, buf)
        return tuple(grads)
    finally:
        ctx.pop()


class CudaBackend(Backend):
    name = "cuda"
    summary = "CUDA kernels v1-v4 through PyCUDA on an NVIDIA GPU (kernel='v1'..'v4')"
    takes_block_sizes = True
    dtypes = (np.dtype(np.float32),)
    auto_priority = 10
    options = ("kernel", "precision")
    max_head_dim = MAX_HEAD_DIM
    variants = CUDA_VARIANTS

    def available(self) -> Availability:
        try:
            _import_driver()
            _device_context()
        except (ImportError, RuntimeError) as exc:
            return Availability(False, str(exc))
        return Availability(True)

    def extra_bytes(self, shape: ProblemShape, itemsize: int, *, block_q=None, block_k=None, causal=False,
                    mask_shape=None, kernel="v3", precision=None, **options) -> int:
        return 0  # host side: only the output; the GPU holds copies of the inputs

    def forward(self, problem, block_q=None, block_k=None, kernel="v3", precision=None):
        _check_kernel_option(kernel, precision)
        if kernel == "v4" and precision is None:
            precision = "fp16"
        return run_on_gpu(problem, kernel_config(kernel, problem.head_dim, block_q, block_k), precision)

    has_backward = True
    backward_variants = CUDA_VARIANTS

    def backward_extra_bytes(self, shape: ProblemShape, itemsize: int, **options) -> int:
        return 0  # host side: the gradients only; the GPU holds the copies

    def backward(self, problem, out, lse, dout, block_q=None, block_k=None, kernel=None, precision=None):
        """cuda/flash_bwd.cu on the GPU (one kernel pair in float32: block sizes, ``kernel`` and ``precision``
        do not apply)."""
        if kernel is not None or precision is not None or block_q is not None or block_k is not None:
            raise ValueError("the CUDA backward is one float32 kernel pair (cuda/flash_bwd.cu): leave kernel, "
                             "precision and the block sizes as None")
        return run_backward_on_gpu(problem, out, lse, dout)


register(CudaOnCpuBackend())
register(CudaBackend())
