"""Step 4: SIMD C kernels through cffi (sources in ``csrc/``, built by ``pip install -e .``).

What it adds over step 3: the same tiles and online softmax in C, with the score and P·V products done by
register-blocked micro-kernels, one file per instruction set (scalar, AVX2+FMA, AVX-512, NEON), chosen once
at load time by CPU feature detection, and threads over (batch, head, query tile). See
``csrc/flash_kernel.inc`` for the kernel and ``csrc/dispatch.c`` for dispatch and threads.

Two algorithms (``algorithm=``): ``"blocked"`` (the default: query tiles x key tiles through the micro-kernels)
and ``"rowwise"`` (the seed's design, kept for comparison: per query row, one vector dot product per score and
an axpy of the value row).

Choosing the path:
    * default: the best the CPU supports (AVX-512 > AVX2+FMA > scalar on x86-64; NEON on aarch64);
    * ``CHORDLAB_ISA=avx2`` in the environment forces one for the whole process;
    * ``attention(..., backend="simd", isa="scalar", threads=1)`` forces one per call.
Asking for an ISA the CPU lacks is a clear error, never a crash.

Run it: ``chordlab.attention(q, k, v, backend="simd")`` (float32 only: float64 input is refused, cast it).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backends import Availability, Backend, register
from .kv_cache import bfloat16
from .step1_reference import ALL_VARIANTS
from .sysinfo import usable_cores
from .validation import AttentionProblem, ProblemShape

ISA_ENV = "CHORDLAB_ISA"
#: "blocked": tiles through register-blocked micro-kernels; "rowwise": the seed's design (a dot per score)
ALGORITHMS = {"blocked": 0, "rowwise": 1}
THREADS_ENV = "CHORDLAB_THREADS"
CSRC = Path(__file__).resolve().parent.parent / "csrc"
DTYPE_BF16 = np.dtype(bfloat16) if bfloat16 is not None else None
_ERRORS = {-1: "the requested ISA is not supported here", -2: "invalid arguments", -3: "out of memory for scratch"}


@dataclass(frozen=True)
class IsaInfo:
    name: str
    compiled: bool   # this build contains the code path
    supported: bool  # ...and this CPU can run it


class SimdLibrary:
    """One loaded build of the C kernels (the installed one, or a rebuild from a notebook)."""

    def __init__(self, ffi, lib, origin: str):
        self.ffi, self.lib, self.origin = ffi, lib, origin
        lib.cl_install_tracemalloc_hook()

    def isas(self) -> list[IsaInfo]:
        lib = self.lib
        return [IsaInfo(self.ffi.string(lib.cl_isa_name(i)).decode(), bool(lib.cl_isa_compiled(i)),
                        bool(lib.cl_isa_supported(i))) for i in range(lib.cl_isa_count())]

    @property
    def detected(self) -> str:
        """The best ISA this CPU supports (detected once when the library loaded)."""
        return self.ffi.string(self.lib.cl_isa_name(self.lib.cl_isa_best())).decode()

    def isa_index(self, isa: str | None) -> int:
        """Index of ``isa`` (None: ``$CHORDLAB_ISA`` or the detected best); a clear error if it cannot run."""
        if isa is None:
            isa = os.environ.get(ISA_ENV) or self.detected
        if not isinstance(isa, str):
            raise TypeError(f"isa must be a name like 'avx2', got {isa!r}")
        infos = self.isas()
        names = [i.name for i in infos]
        if isa not in names:
            raise ValueError(f"unknown isa {isa!r}; choose one of {', '.join(names)} (from isa= or ${ISA_ENV})")
        info = infos[names.index(isa)]
        if not info.compiled:
            raise RuntimeError(f"isa {isa!r} is not compiled into this build (it is for another architecture); "
                               f"this machine can run: {', '.join(i.name for i in infos if i.supported)}")
        if not info.supported:
            raise RuntimeError(f"this CPU lacks the {isa!r} instructions; it can run: "
                               f"{', '.join(i.name for i in infos if i.supported)}")
        return names.index(isa)

    def scratch_bytes(self, isa: str | None, head_dim: int, block_q: int, block_k: int, threads: int) -> int:
        per = self.lib.cl_scratch_bytes_per_thread(self.isa_index(isa), head_dim, block_q, block_k)
        return int(per) * threads

    # -- the kernel -----------------------------------------------------------------------------------
    def _args(self, p: AttentionProblem, block_q: int, block_k: int, threads, keep: list):
        """The C argument struct for problem ``p`` (cffi views kept alive in ``keep``)."""
        ffi = self.ffi
        a = ffi.new("cl_attention_args *")
        if p.is_half:  # chapter 12: the kernel converts 16-bit tiles to float32 as it loads them
            a.dtype = self.lib.CL_KV_F16 if p.dtype == np.float16 else self.lib.CL_KV_BF16
            views = [ffi.cast("float *", ffi.from_buffer("uint16_t[]", x.view(np.uint16))) for x in (p.q, p.k, p.v)]
            keep += [p.q, p.k, p.v] + views
        else:
            views = [ffi.from_buffer("float[]", x) for x in (p.q, p.k, p.v)]
            keep += views
        a.q, a.k, a.v = views
        a.batch, a.heads_q, a.heads_kv = p.batch, p.heads_q, p.heads_kv
        a.len_q, a.len_k, a.head_dim = p.len_q, p.len_k, p.head_dim
        a.scale, a.causal = p.scale, int(p.causal)
        a.block_q, a.block_k, a.threads = block_q, block_k, resolve_threads(threads)
        mask = p.mask
        if mask is not None:
            if mask.dtype == np.bool_:
                mask, a.mask_kind = mask.view(np.uint8), self.lib.CL_MASK_BOOL
                buf = ffi.from_buffer("uint8_t[]", mask)
            else:
                mask, a.mask_kind = np.ascontiguousarray(mask, dtype=np.float32), self.lib.CL_MASK_ADDITIVE
                buf = ffi.from_buffer("float[]", mask)
            keep.append(buf)
            a.mask = buf
            strides = [s // mask.itemsize if n > 1 else 0 for s, n in zip(mask.strides, mask.shape, strict=True)]
            a.mask_sb, a.mask_sh, a.mask_si, a.mask_sj = strides
        self._variant_args(p, a, keep)
        return a

    def _variant_args(self, p: AttentionProblem, a, keep: list) -> None:
        """Chapter 11's variants into the C struct: window bounds, ALiBi slopes, softcap, block mask."""
        ffi = self.ffi
        if p.window is not None:
            a.window = 1
            a.window_left, a.window_right = (-1 if w is None else w for w in p.window)
        if p.alibi is not None:
            slopes = np.ascontiguousarray(p.alibi, dtype=np.float32)
            keep += [slopes, ffi.from_buffer("float[]", slopes)]
            a.alibi, a.alibi_sb = keep[-1], (p.heads_q if slopes.shape[0] > 1 else 0)
        if p.softcap is not None:
            a.softcap = p.softcap
        bm = p.block_mask
        if bm is not None:
            Bm, Hm, nq, nk = bm.kinds.shape
            tiles = bm.tiles.view(np.uint8) if len(bm.tiles) else np.zeros((1,), np.uint8)
            arrays = [np.ascontiguousarray(bm.kinds), np.ascontiguousarray(bm.index), np.ascontiguousarray(tiles)]
            views = [ffi.from_buffer(t, x) for t, x in zip(("uint8_t[]", "int32_t[]", "uint8_t[]"), arrays,
                                                            strict=True)]
            keep += arrays + views
            a.bm_kinds, a.bm_index, a.bm_tiles = views
            a.bm_sb, a.bm_sh = (Hm * nq * nk if Bm > 1 else 0), (nq * nk if Hm > 1 else 0)

    @property
    def bf16_dot(self) -> bool:
        """Whether this CPU runs the AVX512-BF16 dot-product path for bfloat16 inputs (chapter 12)."""
        return bool(self.lib.cl_bf16_dot_supported())

    def attention(self, p: AttentionProblem, block_q: int, block_k: int, isa: str | None = None,
                  threads: int | None = None, algorithm: str = "blocked", half: str = "auto"
                  ) -> tuple[np.ndarray, np.ndarray]:
        ffi = self.ffi
        index = self.isa_index(isa)
        paths = {"auto": self.lib.CL_HALF_AUTO, "convert": self.lib.CL_HALF_CONVERT, "dot": self.lib.CL_HALF_DOT}
        if half not in paths:
            raise ValueError(f"half must be one of {', '.join(paths)}, got {half!r}")
        if half == "dot":
            if p.dtype != DTYPE_BF16:
                raise ValueError(f"half='dot' is the bfloat16 dot-product path; the inputs are {p.dtype}")
            if not self.bf16_dot or self.isas()[index].name != "avx512":
                raise RuntimeError("half='dot' needs isa 'avx512' on a CPU with AVX512_BF16 (vdpbf16ps); this one "
                                   f"{'has it' if self.bf16_dot else 'has not'}: use half='convert'")
            if p.head_dim % 2 or algorithm != "blocked":
                raise ValueError("half='dot' pairs the head dims: it needs an even head dim and algorithm='blocked'")
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
        if algorithm != "blocked" and p.variants:
            raise ValueError(f"algorithm={algorithm!r} (the seed's design) computes no variants; {p.variants[0]} "
                             "needs algorithm='blocked'")
        out = np.empty(p.q.shape, dtype=np.float32)
        lse = np.empty(p.q.shape[:3], dtype=np.float32)
        keep: list = []
        a = self._args(p, block_q, block_k, threads, keep)
        a.out = ffi.from_buffer("float[]", out, require_writable=True)
        a.lse = ffi.from_buffer("float[]", lse, require_writable=True)
        a.algorithm = ALGORITHMS[algorithm]
        a.half_path = paths[half]
        rc = self.lib.cl_attention(index, a)
        if rc != 0:
            raise RuntimeError(f"the C kernel failed: {_ERRORS.get(rc, rc)}")
        return out, lse

    def backward(self, p: AttentionProblem, out: np.ndarray, lse: np.ndarray, dout: np.ndarray, block_q: int,
                 block_k: int, isa: str | None = None, threads: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(dq, dk, dv)`` by the C backward (two deterministic passes, see chordlab_simd.h)."""
        ffi = self.ffi
        index = self.isa_index(isa)
        p = p.upcast()  # the C backward runs in float32: 16-bit inputs are converted here
        out = np.asarray(out, dtype=np.float32)
        lse = np.ascontiguousarray(lse, dtype=np.float32)
        dout = np.ascontiguousarray(dout, dtype=np.float32)
        drow = np.einsum("bhld,bhld->bhl", dout, out, dtype=np.float32)  # D = rowsum(dO * O)
        dq = np.empty(p.q.shape, np.float32)
        dk, dv = np.empty(p.k.shape, np.float32), np.empty(p.v.shape, np.float32)
        keep: list = [lse]
        a = self._args(p, block_q, block_k, threads, keep)
        a.lse = ffi.from_buffer("float[]", lse, require_writable=True)
        g = ffi.new("cl_backward_args *")
        views = [ffi.from_buffer("float[]", x) for x in (dout, drow)]
        g.dout, g.drow = views
        outs = [ffi.from_buffer("float[]", x, require_writable=True) for x in (dq, dk, dv)]
        g.dq, g.dk, g.dv = outs
        rc = self.lib.cl_attention_backward(index, a, g)
        if rc != 0:
            raise RuntimeError(f"the C backward failed: {_ERRORS.get(rc, rc)}")
        return dq, dk, dv

    def decode(self, p, splits: int, isa: str | None = None, threads: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """`chordlab.decode` by the C split-KV kernel (csrc/decode_kernel.inc); the cache is read in place."""
        ffi, lib = self.ffi, self.lib
        index = self.isa_index(isa)
        out = np.empty(p.q.shape, np.float32)
        lse = np.empty(p.q.shape[:3], np.float32)
        a = ffi.new("cl_decode_args *")
        keep = [ffi.from_buffer("float[]", p.q), ffi.from_buffer("float[]", out, require_writable=True),
                ffi.from_buffer("float[]", lse, require_writable=True)]
        a.q, a.out, a.lse = keep
        kv_bits = {np.dtype(np.float32): (lib.CL_KV_F32, np.float32)}
        kv_bits[np.dtype(np.float16)] = (lib.CL_KV_F16, np.uint16)
        kv_bits[DTYPE_BF16] = (lib.CL_KV_BF16, np.uint16)
        a.kv_dtype, view = kv_bits[p.kv_dtype]
        kv = [p.cache.k.view(view), p.cache.v.view(view)]
        keep += kv + [ffi.from_buffer("char[]", x) for x in kv]
        a.k, a.v = keep[-2:]
        lengths = np.ascontiguousarray(p.lengths, np.int64)
        keep += [lengths, ffi.from_buffer("int64_t[]", lengths)]
        a.lengths = keep[-1]
        if p.paged:
            table = np.ascontiguousarray(p.block_table, np.int32)
            keep += [table, ffi.from_buffer("int32_t[]", table)]
            a.block_table, a.pages_per_seq, a.page_size = keep[-1], table.shape[1], p.cache.page_size
            a.num_pages = p.cache.num_pages
        else:
            a.capacity = p.cache.capacity
        a.batch, a.heads_q, a.heads_kv, a.len_q, a.head_dim = p.batch, p.heads_q, p.heads_kv, p.len_q, p.head_dim
        a.scale, a.splits, a.threads = p.scale, splits, resolve_threads(threads)
        if p.window is not None:
            a.window = 1
            a.window_left, a.window_right = (-1 if w is None else w for w in p.window)
        if p.alibi is not None:
            slopes = np.ascontiguousarray(p.alibi, np.float32)
            keep += [slopes, ffi.from_buffer("float[]", slopes)]
            a.alibi, a.alibi_sb = keep[-1], (p.heads_q if slopes.shape[0] > 1 else 0)
        if p.softcap is not None:
            a.softcap = p.softcap
        rc = lib.cl_decode(index, a)
        if rc != 0:
            raise RuntimeError(f"the C decode failed: {_ERRORS.get(rc, rc)}")
        return out, lse

    def read_bandwidth(self, threads: int | None = None, megabytes: int = 512, rounds: int = 5,
                       isa: str | None = None) -> float:
        """This machine's read bandwidth in GB/s: ``threads`` threads sum their slices of a buffer much larger
        than the caches (a STREAM-like read, best of ``rounds``), with the same vector loads as the kernels."""
        gbs = self.lib.cl_read_bandwidth(self.isa_index(isa), int(megabytes) << 20, resolve_threads(threads), rounds)
        if gbs <= 0:
            raise RuntimeError("the bandwidth probe failed (out of memory?)")
        return float(gbs)

    def read_sum(self, x, threads: int | None = None, isa: str | None = None) -> float:
        """``x.sum()`` by the bandwidth probe's read (``threads`` threads, one slice each, float64 sums): time it
        side by side with a kernel to measure the read limit at the same moment, over the same bytes."""
        x = np.asarray(x)
        if x.dtype != np.float32 or not x.flags.c_contiguous or x.size == 0:
            raise TypeError(f"x must be a non-empty C-contiguous float32 array, got {x.dtype} with shape {x.shape}")
        return float(self.lib.cl_read_sum(self.isa_index(isa), self.ffi.from_buffer("float[]", x), x.size,
                                          resolve_threads(threads)))

    # -- primitives (the seed's micro-benchmarks and chapter 4) ---------------------------------------
    def _vec(self, name: str, x) -> np.ndarray:
        x = np.asarray(x)
        if x.dtype != np.float32 or x.ndim != 1:
            raise TypeError(f"{name} must be a 1-D float32 array, got {x.dtype} with shape {x.shape}")
        return np.ascontiguousarray(x)

    def dot(self, a, b, isa: str | None = None) -> float:
        a, b = self._vec("a", a), self._vec("b", b)
        if a.shape != b.shape:
            raise ValueError(f"a and b must have the same length, got {a.shape[0]} and {b.shape[0]}")
        return float(self.lib.cl_dot(self.isa_index(isa), self.ffi.from_buffer("float[]", a),
                                     self.ffi.from_buffer("float[]", b), a.size))

    def axpy(self, alpha: float, x, y, isa: str | None = None) -> None:
        """``y += alpha * x`` in place (the seed's weighted_add_inplace)."""
        x = self._vec("x", x)
        if not (isinstance(y, np.ndarray) and y.dtype == np.float32 and y.ndim == 1 and y.flags.c_contiguous):
            raise TypeError("y must be a contiguous 1-D float32 array (it is updated in place)")
        if x.shape != y.shape:
            raise ValueError(f"x and y must have the same length, got {x.shape[0]} and {y.shape[0]}")
        self.lib.cl_axpy(self.isa_index(isa), float(alpha), self.ffi.from_buffer("float[]", x),
                         self.ffi.from_buffer("float[]", y, require_writable=True), x.size)

    def max(self, x, isa: str | None = None) -> float:
        x = self._vec("x", x)
        return float(self.lib.cl_max(self.isa_index(isa), self.ffi.from_buffer("float[]", x), x.size))

    def _elementwise(self, cfn, x, isa: str | None) -> np.ndarray:
        x = self._vec("x", x)
        y = np.empty_like(x)
        cfn(self.isa_index(isa), self.ffi.from_buffer("float[]", x),
            self.ffi.from_buffer("float[]", y, require_writable=True), x.size)
        return y

    def exp(self, x, isa: str | None = None) -> np.ndarray:
        return self._elementwise(self.lib.cl_exp, x, isa)

    def exp2(self, x, isa: str | None = None) -> np.ndarray:
        """2^x as the forward's softmax computes it (its scores carry log2(e)); for x <= 0, -inf and NaN."""
        return self._elementwise(self.lib.cl_exp2, x, isa)

    def scale(self, x, alpha: float, isa: str | None = None) -> np.ndarray:
        y = np.array(self._vec("x", x), copy=True)
        self.lib.cl_scale(self.isa_index(isa), self.ffi.from_buffer("float[]", y, require_writable=True),
                          float(alpha), y.size)
        return y

    def __repr__(self) -> str:
        return f"<SimdLibrary {self.origin} detected={self.detected}>"


def resolve_threads(threads: int | None) -> int:
    """None: ``$CHORDLAB_THREADS`` or every usable core. Otherwise a positive int."""
    if threads is None:
        env = os.environ.get(THREADS_ENV)
        if env:
            try:
                threads = int(env)
            except ValueError:
                raise ValueError(f"${THREADS_ENV} must be a positive integer, got {env!r}") from None
        else:
            return usable_cores()
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    return int(threads)


_installed: SimdLibrary | None = None
_load_error: str | None = None


def library() -> SimdLibrary:
    """The installed build (``chordlab._simd``); ImportError with the fix when it is missing."""
    global _installed, _load_error
    if _installed is None:
        try:
            from . import _simd
        except ImportError as exc:
            note = Path(__file__).with_name("_simd_build_error.txt")
            why = f"its build failed: {note.read_text().strip()}" if note.exists() else str(exc)
            _load_error = (f"the C extension is not built ({why}); install a C compiler (gcc or clang) and run "
                           "`pip install -e .` (or `make setup`) again")
            raise ImportError(_load_error) from exc
        _installed = SimdLibrary(_simd.ffi, _simd.lib, _simd.__file__)
    return _installed


def active_isa() -> str:
    """The ISA ``backend="simd"`` uses when none is given: ``$CHORDLAB_ISA``, else the detected best."""
    lib = library()
    return lib.isas()[lib.isa_index(None)].name


def report() -> list[str]:
    """Lines for ``python -m chordlab info``."""
    try:
        lib = library()
    except ImportError as exc:
        return [f"  not available: {exc}"]
    paths = "  ".join(f"{i.name}: {'yes' if i.supported else 'no (CPU lacks it)' if i.compiled else 'not compiled'}"
                      for i in lib.isas())
    forced = os.environ.get(ISA_ENV)
    if forced:
        try:
            using = f"using {active_isa()} (forced by ${ISA_ENV})"
        except (ValueError, RuntimeError) as exc:
            using = f"${ISA_ENV}={forced} cannot be used: {exc}"
    else:
        using = f"using {lib.detected}"
    dot = "vdpbf16ps (AVX512-BF16)" if lib.detected == "avx512" else "BFDOT (Arm BF16)"
    half = (f"bfloat16 by {dot} dot products, float16 by converted tiles" if lib.bf16_dot else
            "float16 and bfloat16 by converted tiles (no bfloat16 dot-product instructions here)")
    return [f"  paths     {paths}", f"  detected  {lib.detected}; {using}",
            f"  16-bit    {half}",
            f"  threads   {resolve_threads(None)} by default (${THREADS_ENV} or every usable core)",
            f"  library   {lib.origin}"]


def build_library(csrc: str | os.PathLike | None = None, *, build_dir: str | os.PathLike | None = None,
                  verbose: bool = False) -> SimdLibrary:
    """Compile the C sources in ``csrc`` (default: the repository's ``csrc/``) and load them.

    For readers who edit the C from a notebook: a C extension cannot be reloaded, so each distinct set of
    sources is built under a fresh module name (``_simd_<hash of the sources>``) and loaded beside the
    installed one. Pass the result as ``library=`` to `attention` (``backend="simd"``) to use it.
    """
    csrc = Path(csrc or CSRC).resolve()
    spec = importlib.util.spec_from_file_location("_chordlab_build_ffi", csrc / "build_ffi.py")
    build_ffi = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_ffi)
    digest = hashlib.sha256()
    for f in sorted(csrc.glob("*")):
        if f.suffix in (".c", ".h", ".inc", ".py"):
            digest.update(f.name.encode() + f.read_bytes())
    name = f"_simd_{digest.hexdigest()[:12]}"
    if name in sys.modules:
        mod = sys.modules[name]
        return SimdLibrary(mod.ffi, mod.lib, mod.__file__)
    build_dir = Path(build_dir or Path.home() / ".cache" / "chordlab" / "builds")
    build_dir.mkdir(parents=True, exist_ok=True)
    ffi = build_ffi.make_ffi(name, csrc)
    so_path = ffi.compile(tmpdir=str(build_dir), verbose=verbose)
    mspec = importlib.util.spec_from_file_location(name, so_path)
    mod = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(mod)
    sys.modules[name] = mod
    return SimdLibrary(mod.ffi, mod.lib, so_path)


def compile_c(source: str, cdef: str, *, extra_compile_args=(), build_dir: str | os.PathLike | None = None):
    """Compile a small C snippet with cffi (API mode) and load it: returns ``(ffi, lib)``.

    ``cdef`` declares what Python may call (e.g. ``"float my_dot(const float *, const float *, int64_t);"``).
    Each distinct (source, cdef, flags) gets its own module name, so an edited snippet loads fresh."""
    from cffi import FFI

    flags = ["-O2", *extra_compile_args]
    digest = hashlib.sha256("\0".join([source, cdef, *flags]).encode()).hexdigest()[:12]
    name = f"_snippet_{digest}"
    if name not in sys.modules:
        ffi = FFI()
        ffi.cdef(cdef)
        ffi.set_source(name, source, extra_compile_args=flags)
        build_dir = Path(build_dir or Path.home() / ".cache" / "chordlab" / "snippets")
        build_dir.mkdir(parents=True, exist_ok=True)
        so_path = ffi.compile(tmpdir=str(build_dir))
        spec = importlib.util.spec_from_file_location(name, so_path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        sys.modules[name] = mod
    mod = sys.modules[name]
    return mod.ffi, mod.lib


class SimdBackend(Backend):
    name = "simd"
    summary = "C kernels (scalar/AVX2/AVX-512/NEON) through cffi, register-blocked micro-kernels, threads"
    takes_block_sizes = True
    # 128 x 128: 1.5-3.5% over 64 x 128 at head dim 64 and 128, N 2048, one thread on Zen 5 (family 26), and
    # block_q = 128 also won the chapter 6 sweep on Zen 4; `block_q="auto"` tunes per machine.
    default_blocks = (128, 128)
    # float16 and bfloat16 (chapter 12): the forward converts the tiles as it loads them; the backward upcasts first
    dtypes = (np.dtype(np.float32), np.dtype(np.float16)) + ((DTYPE_BF16,) if DTYPE_BF16 is not None else ())
    auto_priority = 20
    options = ("isa", "threads", "library", "algorithm", "half")
    variants = ALL_VARIANTS
    backward_variants = ALL_VARIANTS

    def available(self) -> Availability:
        try:
            lib = library()
        except ImportError as exc:
            return Availability(False, str(exc))
        forced = os.environ.get(ISA_ENV)
        if forced:
            try:
                lib.isa_index(forced)
            except (ValueError, RuntimeError) as exc:
                return Availability(False, f"${ISA_ENV}={forced}: {exc}")
        return Availability(True)

    def extra_bytes(self, shape: ProblemShape, itemsize: int, *, block_q=None, block_k=None, causal=False,
                    mask_shape=None, isa=None, threads=None, library=None, algorithm="blocked", **options) -> int:
        bq, bk = self.resolve_blocks(block_q, block_k)
        lib = library or globals()["library"]()
        items = shape.batch * shape.heads_q * -(-shape.len_q // bq)
        n_threads = max(1, min(resolve_threads(threads), items))
        # per-thread scratch (reported to tracemalloc); an additive float64 mask would add a float32 copy
        return lib.scratch_bytes(isa, shape.head_dim, bq, bk, n_threads)

    def forward(self, problem, block_q=None, block_k=None, isa=None, threads=None, library=None, algorithm="blocked",
                half="auto"):
        """``half``: for 16-bit inputs, ``"auto"``, ``"convert"`` (float32 products of converted tiles) or ``"dot"``
        (bfloat16 products, AVX512-BF16)."""
        lib = library or globals()["library"]()
        return lib.attention(problem, *self.resolve_blocks(block_q, block_k), isa=isa, threads=threads,
                             algorithm=algorithm, half=half)

    has_decode = True
    decode_options = ("isa", "threads", "library")

    def supports_decode(self, p):
        if p.dtype != np.float32:
            return Availability(False, f"decodes float32 queries (16-bit q is cast by chordlab.decode), not {p.dtype}; "
                                       "cast q with .astype(np.float32) or use backend='tiled'")
        if p.kv_dtype not in (np.dtype(np.float32), np.dtype(np.float16), DTYPE_BF16):
            return Availability(False, f"reads float32, float16 or bfloat16 caches, not {p.kv_dtype}")
        return Availability(True)

    def decode_threads(self, threads=None, **options) -> int:
        return resolve_threads(threads)

    def decode(self, problem, splits, isa=None, threads=None, library=None):
        lib = library or globals()["library"]()
        return lib.decode(problem, splits, isa=isa, threads=threads)

    has_backward = True
    # The backward's own default tiles: 64 x 256 measured 160 GFLOP/s against 138 for 128 x 128 at head dim 128,
    # and level (151 vs 152) at head dim 64 (N 2048, 1 thread, Zen 5).
    backward_default_blocks = (64, 256)

    def _backward_blocks(self, block_q, block_k) -> tuple[int, int]:
        return block_q or self.backward_default_blocks[0], block_k or self.backward_default_blocks[1]

    def backward_extra_bytes(self, shape: ProblemShape, itemsize: int, *, block_q=None, block_k=None,
                             causal=False, mask_shape=None, isa=None, threads=None, library=None, **options) -> int:
        bq, bk = self._backward_blocks(block_q, block_k)
        items = shape.batch * shape.heads_q * -(-shape.len_q // bq)
        n_threads = max(1, min(resolve_threads(threads), items))
        D, W = shape.head_dim, 16
        ldq, dp = -(-bq // W) * W, -(-D // W) * W
        per_thread = 4 * (2 * D * ldq + 3 * bk * ldq + ldq * dp + bk * dp + 2 * max(ldq, bk) * dp + 3 * max(ldq, bk)
                          + 6 * 16)
        return per_thread * n_threads + shape.batch * shape.heads_q * shape.len_q * 4  # + D = rowsum(dO * O)

    def backward(self, problem, out, lse, dout, block_q=None, block_k=None, isa=None, threads=None, library=None,
                 algorithm="blocked", half="auto"):
        if algorithm != "blocked":
            raise ValueError("the C backward has one algorithm, 'blocked'")
        lib = library or globals()["library"]()
        return lib.backward(problem, out, lse, dout, *self._backward_blocks(block_q, block_k), isa=isa,
                            threads=threads)


register(SimdBackend())
