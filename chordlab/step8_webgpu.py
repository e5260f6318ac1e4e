"""Step 8: WebGPU kernels (WGSL through wgpu-py), the GPU path every laptop has.

    w1  one invocation per query row
    w2  a workgroup per query tile; K/V tiles in var<workgroup> memory, workgroupBarrier()
    w3  subgroups: subgroupMax / subgroupAdd reductions (needs the adapter's "subgroup" feature)

wgpu-py reaches Metal, Vulkan or D3D12, and on a machine with no GPU Mesa's lavapipe (a CPU Vulkan driver),
so CI runs the real kernels. The head dim and tile sizes are substituted into the WGSL when a pipeline is
created (one pipeline per kernel, head dim and tiles, cached); a tile that does not fit the adapter's
workgroup memory or invocation limits is refused with both numbers, and so is a problem over its buffer or
dispatch limits.

Driver limits on the work of one invocation. Mesa's llvmpipe (lavapipe) stops every loop of a shader once
the loops together have run 65535 iterations (``LP_MAX_TGSI_LOOP_ITERATIONS`` in gallivm: a guard against
endless loops). Nothing fails: the rest of the keys are skipped and the output is wrong. So the keys are cut
into chunks, one dispatch each, that stay under that count (`loop_cost` counts a kernel's iterations), and
each dispatch resumes the online softmax where the last one stopped (chapter 2's state (m, l, acc), kept
in the output buffers). Every kernel ends with a probe loop (common.wgsl) that shows whether any loop was
cut short; if one was, the call raises instead of returning numbers.

Run it: ``chordlab.attention(q, k, v, backend="webgpu", kernel="w2", block_q=16, block_k=32)``.
"""

from __future__ import annotations

import functools
import math
import os
import string
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backends import Availability, Backend, BackendError, register
from .memory import device_copy_bytes
from .validation import AttentionProblem, ProblemShape
from .variants import visibility_bounds

WGSL_DIR = Path(__file__).resolve().parent.parent / "webgpu"
KERNELS = ("w1", "w2", "w3")
MAX_HEAD_DIM = 256
HIDDEN = np.float32(-3.0e38)  # the shaders' finite stand-in for a hidden score (WGSL may assume no inf)
NONE = np.float32(-3.4e38)  # the running max of a row that has seen no key yet (common.wgsl)


@dataclass(frozen=True)
class WgslConfig:
    kernel: str
    head_dim: int
    block_q: int
    block_k: int
    workgroup_size: int
    workgroup_bytes: int

    def source(self) -> str:
        consts = dict(HEAD_DIM=f"{self.head_dim}u", BLOCK_Q=f"{self.block_q}u", BLOCK_K=f"{self.block_k}u",
                      WG=f"{self.workgroup_size}u")
        text = (WGSL_DIR / "common.wgsl").read_text() + (WGSL_DIR / f"flash_{self.kernel}.wgsl").read_text()
        return string.Template(text).substitute(consts)

    def dispatch(self, batch: int, heads_q: int, len_q: int) -> tuple[int, int, int]:
        return (math.ceil(len_q / self.block_q), heads_q, batch)


def workgroup_bytes(kernel: str, head_dim: int, block_q: int, block_k: int) -> int:
    if kernel == "w1":
        return 0
    if kernel == "w2":
        return 4 * 2 * block_k * head_dim
    return 4 * (block_q * head_dim + 2 * block_k * head_dim + 2 * block_k)


def default_blocks(kernel: str, head_dim: int = 64, max_bytes: int = 16384) -> tuple[int, int]:
    """The default tiles: the largest of the usual ones whose workgroup memory fits ``max_bytes``."""
    if kernel == "w1":
        return 64, 1
    block_qs = (16,) if kernel == "w2" else (8, 4, 2, 1)
    for bk in (32, 16, 8, 4, 2, 1):
        for bq in block_qs:
            if workgroup_bytes(kernel, head_dim, bq, bk) <= max_bytes:
                return bq, bk
    return block_qs[-1], 1


LLVMPIPE_LOOP_LIMIT = 65535  # gallivm's LP_MAX_TGSI_LOOP_ITERATIONS, shared by every loop of a shader
PROBE_N = 2  # iterations of the closing probe loop (common.wgsl)


def loop_cost(kernel: str, head_dim: int, block_q: int, block_k: int) -> tuple[int, int, int]:
    """``(fixed, per_step, keys_per_step)``: loop iterations one invocation runs, at most, for a chunk of
    keys: ``fixed + steps · per_step``, a step being one key (w1) or one key tile (w2, w3).

    Counted as llvmpipe counts them: a loop of n iterations costs n + 1 (the pass that leaves it counts),
    every lane's worst case, no unrolling assumed (unrolling only lowers the count), subgroups of one
    invocation (the smallest possible, so the most reduction steps)."""
    D, bq, bk = head_dim, block_q, block_k
    probe = PROBE_N + 1
    if kernel == "w1":
        return 2 * (D + 1) + 1 + probe, 1 + 2 * (D + 1), 1
    if kernel == "w2":
        fixed = 3 * (D + 1) + 1 + probe
        step = 1 + (-(-bk * D // bq) + 1) + (bk * (D + 2) + 1) + (bk + 1) + (D * (bk + 2) + 1)
        return fixed, step, bk
    cols = -(-D // bk)
    groups = bk
    fixed = (-(-bq * D // bk) + 1) + 2 * (bq * (cols + 2) + 1) + 1 + probe
    row = 1 + (D + 1) + 2 * (groups + 1) + cols * (bk + 2) + 1
    return fixed, 1 + (D + 1) + bq * row + 1, bk


# ------------------------------------------------------------------------------------------------ device

@dataclass
class GpuDevice:
    adapter: object
    device: object
    info: dict
    limits: dict
    subgroups: bool
    #: loop iterations the driver lets one invocation run (all its loops together); None: no known limit
    loop_limit: int | None = None

    def describe(self) -> str:
        kind = self.info.get("adapter_type", "?")
        name = self.info.get("device") or self.info.get("description") or "unknown adapter"
        note = " (a CPU rasterizer: its timings are not GPU timings)" if str(kind).upper() == "CPU" else ""
        return f"{name} via {self.info.get('backend_type', '?')}, adapter type {kind}{note}"


@functools.lru_cache(maxsize=1)
def gpu_device() -> GpuDevice:
    """One device for the process, with the adapter's own limits (not WebGPU's minimum defaults)."""
    if not os.environ.get("XDG_RUNTIME_DIR"):  # silences a harmless GL warning on headless machines
        runtime = Path(tempfile.gettempdir()) / f"chordlab-xdg-{os.getuid()}"
        runtime.mkdir(mode=0o700, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    import wgpu

    adapter = wgpu.gpu.request_adapter_sync(power_preference="high-performance")
    if adapter is None:
        raise RuntimeError("no WebGPU adapter (install a GPU driver, or Mesa's lavapipe: mesa-vulkan-drivers)")
    limits = dict(adapter.limits)
    wanted = ("max-compute-workgroup-storage-size", "max-compute-invocations-per-workgroup",
              "max-compute-workgroup-size-x", "max-storage-buffer-binding-size", "max-buffer-size")
    subgroups = "subgroup" in adapter.features
    device = adapter.request_device_sync(required_features=["subgroup"] if subgroups else [],
                                         required_limits={k: limits[k] for k in wanted if k in limits})
    info = dict(adapter.info)
    return GpuDevice(adapter, device, info, limits, subgroups, driver_loop_limit(info))


def driver_loop_limit(info: dict) -> int | None:
    """The loop-iteration limit of the adapter's driver, where one is known (llvmpipe: lavapipe's JIT)."""
    text = " ".join(str(info.get(key, "")) for key in ("device", "description", "vendor", "architecture"))
    return LLVMPIPE_LOOP_LIMIT if "llvmpipe" in text.lower() else None


def wgsl_config(kernel: str, head_dim: int, block_q: int | None = None, block_k: int | None = None,
                dev: GpuDevice | None = None) -> WgslConfig:
    """Check a request against the kernel's rules and the adapter's limits; ValueError says what is wrong."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"the WebGPU kernels take head dims 1..{MAX_HEAD_DIM}, got {head_dim}")
    max_bytes = 16384 if dev is None else dev.limits.get("max-compute-workgroup-storage-size", 16384)
    dq, dk = default_blocks(kernel, head_dim, max_bytes)
    if kernel == "w1" and block_k is not None:
        raise ValueError("kernel w1 has no key tiles: leave block_k as None (block_q = invocations per workgroup)")
    bq, bk = block_q or dq, block_k or dk
    wg = {"w1": bq, "w2": bq, "w3": bk}[kernel]
    need = workgroup_bytes(kernel, head_dim, bq, bk)
    if dev is not None:
        if kernel == "w3" and not dev.subgroups:
            raise ValueError("kernel w3 needs the adapter's 'subgroup' feature, which this adapter lacks; use w2")
        max_inv = dev.limits.get("max-compute-invocations-per-workgroup", 256)
        if wg > min(max_inv, dev.limits.get("max-compute-workgroup-size-x", 256)):
            raise ValueError(f"kernel {kernel} with block_q={bq}, block_k={bk} needs {wg} invocations per "
                             f"workgroup; this adapter allows {max_inv}")
        if need > max_bytes:
            raise ValueError(f"kernel {kernel} with block_q={bq}, block_k={bk}, head dim {head_dim} needs {need} "
                             f"bytes of workgroup memory; this adapter allows {max_bytes}")
        if dev.loop_limit is not None:
            fixed, step, _ = loop_cost(kernel, head_dim, bq, bk)
            if fixed + step > loop_budget(dev.loop_limit):
                raise ValueError(f"kernel {kernel} with block_q={bq}, block_k={bk}, head dim {head_dim} runs up "
                                 f"to {fixed + step} loop iterations per invocation for a single key tile; this "
                                 f"driver stops a shader after {dev.loop_limit}: use a smaller block_q")
    return WgslConfig(kernel, head_dim, bq, bk, wg, need)


def loop_budget(limit: int) -> int:
    """The share of a driver's loop limit a chunk may use (a margin for loops the compiler adds)."""
    return limit * 9 // 10


def key_chunks(cfg: WgslConfig, len_k: int, loop_limit: int | None) -> list[tuple[int, int]]:
    """The key ranges ``[begin, end)`` of the dispatches: one, or as many as the driver's loop limit needs
    (each a whole number of key tiles)."""
    if loop_limit is None:
        return [(0, len_k)]
    fixed, step, keys = loop_cost(cfg.kernel, cfg.head_dim, cfg.block_q, cfg.block_k)
    size = max(1, (loop_budget(loop_limit) - fixed) // step) * keys
    return [(start, min(start + size, len_k)) for start in range(0, len_k, size)]


@functools.lru_cache(maxsize=64)
def _pipeline(cfg: WgslConfig):
    dev = gpu_device().device
    module = dev.create_shader_module(code=cfg.source())
    return dev.create_compute_pipeline(layout="auto", compute={"module": module, "entry_point": "main"})


def _mask_buffer(p: AttentionProblem) -> tuple[int, np.ndarray, tuple[int, int, int, int]]:
    """The mask as float32 with HIDDEN for hidden keys (bool False or additive -inf), and its strides."""
    if p.mask is None:
        return 0, np.zeros(4, np.float32), (0, 0, 0, 0)
    m = p.mask
    add = np.where(m, np.float32(0), HIDDEN) if m.dtype == np.bool_ else np.maximum(m.astype(np.float32), HIDDEN)
    add = np.ascontiguousarray(add, dtype=np.float32)
    strides = tuple(s // 4 if n > 1 else 0 for s, n in zip(add.strides, add.shape, strict=True))
    return 1, add, strides


def check_limits(p: AttentionProblem, cfg: WgslConfig, limits: dict, mask_bytes: int) -> None:
    """ValueError, before anything runs, for a problem over the adapter's buffer or dispatch limits."""
    binding = min(limits.get("max-storage-buffer-binding-size", 128 * 2**20), limits.get("max-buffer-size", 2**62))
    sizes = {"q (and out)": p.q.nbytes, "k": p.k.nbytes, "v": p.v.nbytes, "the mask (as float32)": mask_bytes}
    for name, size in sizes.items():
        if size > binding:
            raise ValueError(f"{name} needs a buffer of {size} bytes; this adapter binds at most {binding} bytes: "
                             f"split the batch or heads into smaller calls")
    most = limits.get("max-compute-workgroups-per-dimension", 65535)
    for axis, n in zip(("query tiles", "query heads", "batch"), cfg.dispatch(p.batch, p.heads_q, p.len_q),
                       strict=True):
        if n > most:
            raise ValueError(f"kernel {cfg.kernel} needs {n} workgroups along one axis ({axis}); this adapter "
                             f"allows {most}: split the call" + (" or use a larger block_q" if axis[0] == "q" else ""))


def run_webgpu(p: AttentionProblem, cfg: WgslConfig) -> tuple[np.ndarray, np.ndarray]:
    """Run kernel ``cfg``: one dispatch per key chunk (`key_chunks`), each resuming the last one's state."""
    import wgpu

    gd = gpu_device()
    dev = gd.device
    kind, mask, strides = _mask_buffer(p)
    check_limits(p, cfg, gd.limits, mask.nbytes)
    if p.block_mask is not None:
        raise TypeError("the WGSL kernels compute no block_mask; use backend='simd' or 'tiled'")
    alibi_at = mask.size
    if p.alibi is not None:  # the slopes ride in the mask buffer, after the mask
        mask = np.concatenate([mask.reshape(-1), np.broadcast_to(p.alibi, (p.batch, p.heads_q)).reshape(-1)
                               .astype(np.float32)])
    vis_lo, vis_hi = (max(-(1 << 30), min(x, 1 << 30)) for x in visibility_bounds(p))
    pipeline = _pipeline(cfg)
    storage, usage = wgpu.BufferUsage.STORAGE, wgpu.BufferUsage
    bufs = [dev.create_buffer_with_data(data=np.ascontiguousarray(a, dtype=np.float32), usage=storage)
            for a in (p.q, p.k, p.v, mask)]
    out_buf = dev.create_buffer(size=p.q.nbytes, usage=storage | usage.COPY_SRC)  # zeros: acc before any key
    rows = p.batch * p.heads_q * p.len_q
    start = np.tile(np.array([NONE, 0], np.float32), rows)  # m, l before any key
    stats_buf = dev.create_buffer_with_data(data=start, usage=storage | usage.COPY_SRC)
    check_buf = dev.create_buffer_with_data(data=np.array([PROBE_N], np.uint32), usage=storage | usage.COPY_SRC)
    chunks = key_chunks(cfg, p.len_k, gd.loop_limit)
    encoder = dev.create_command_encoder()
    for n, (k_begin, k_end) in enumerate(chunks):
        params = np.array([p.heads_q, p.heads_kv, p.len_q, p.len_k, 0, 0, kind, n == len(chunks) - 1,
                           *strides, k_begin, k_end, PROBE_N, alibi_at, 0, 0, p.alibi is not None, 0], dtype=np.uint32)
        params[4] = np.float32(p.scale).view(np.uint32)
        params[[5, 16]] = np.array([vis_lo, vis_hi], np.int32).view(np.uint32)
        params[17] = np.float32(p.softcap or 0.0).view(np.uint32)
        param_buf = dev.create_buffer_with_data(data=params, usage=usage.UNIFORM)
        entries = [{"binding": i, "resource": {"buffer": b, "offset": 0, "size": b.size}}
                   for i, b in enumerate([*bufs, out_buf, stats_buf, param_buf, check_buf])]
        group = dev.create_bind_group(layout=pipeline.get_bind_group_layout(0), entries=entries)
        cpass = encoder.begin_compute_pass()
        cpass.set_pipeline(pipeline)
        cpass.set_bind_group(0, group)
        cpass.dispatch_workgroups(*cfg.dispatch(p.batch, p.heads_q, p.len_q))
        cpass.end()
    dev.queue.submit([encoder.finish()])
    probe = int(np.frombuffer(dev.queue.read_buffer(check_buf), dtype=np.uint32)[0])
    if probe != PROBE_N:
        raise BackendError(f"backend 'webgpu': the driver ({gd.describe()}) cut kernel {cfg.kernel}'s loops short "
                           f"(a loop or time limit), so its result would be wrong and is not returned. Use smaller "
                           f"tiles or fewer keys per call, or another backend.")
    out = np.frombuffer(dev.queue.read_buffer(out_buf), dtype=np.float32).reshape(p.q.shape).copy()
    stats = np.frombuffer(dev.queue.read_buffer(stats_buf), dtype=np.float32).reshape(*p.q.shape[:3], 2)
    m, l = stats[..., 0], stats[..., 1]
    with np.errstate(divide="ignore"):
        lse = np.where(l > 0, m + np.log(np.where(l > 0, l, 1)), -np.inf).astype(np.float32)
    return out, lse


def report() -> list[str]:
    """Lines for ``python -m chordlab info``."""
    a = WebGpuBackend().available()
    if not a:
        return [f"  not available: {a.reason}"]
    gd = gpu_device()
    return [f"  adapter   {gd.describe()}",
            f"  limits    workgroup memory {gd.limits.get('max-compute-workgroup-storage-size')} bytes, "
            f"{gd.limits.get('max-compute-invocations-per-workgroup')} invocations; "
            f"subgroups: {'yes' if gd.subgroups else 'no (kernel w3 unavailable)'}"]


class WebGpuBackend(Backend):
    name = "webgpu"
    summary = "WGSL kernels w1-w3 through wgpu-py (Metal/Vulkan/D3D12, or lavapipe on the CPU)"
    takes_block_sizes = True
    dtypes = (np.dtype(np.float32),)
    auto_priority = 150  # lavapipe is slow; a laptop GPU may not beat the SIMD kernels either
    options = ("kernel",)
    max_head_dim = MAX_HEAD_DIM
    variants = frozenset({"window", "alibi", "softcap"})
    run_advice = "update the GPU driver (or Mesa), or use backend='simd'"

    def available(self) -> Availability:
        try:
            import wgpu  # noqa: F401
        except ImportError:
            return Availability(False, "wgpu is not installed: pip install wgpu")
        try:
            gpu_device()
        except Exception as exc:  # wgpu raises several kinds when no adapter or driver exists
            return Availability(False, f"no WebGPU adapter: {exc}")
        return Availability(True)

    def extra_bytes(self, shape: ProblemShape, itemsize: int, *, block_q=None, block_k=None, causal=False,
                    mask_shape=None, kernel="w2", **options) -> int:
        return device_copy_bytes(shape, mask_shape)  # the adapter's copies (in RAM, on lavapipe)

    def forward(self, problem, block_q=None, block_k=None, kernel="w2"):
        return run_webgpu(problem, wgsl_config(kernel, problem.head_dim, block_q, block_k, gpu_device()))


register(WebGpuBackend())
