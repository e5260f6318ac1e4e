"""The C kernels outside Python, through csrc/test_driver.c:

* built with AddressSanitizer + UndefinedBehaviorSanitizer and run over edge shapes (length 1, head dim 1,
  tails, fully masked rows, causal with more queries than keys) on every ISA this CPU runs;
* cross-compiled for aarch64 and run under qemu-aarch64, so the NEON path is checked on an x86 machine;
* built with clang too (macOS students' compiler), -Werror, for this CPU and for aarch64 (run under qemu);
* the backward pass on the same edge shapes, under the sanitizers and under qemu (NEON).

Each case is written by NumPy, computed by the driver, and compared with the NumPy reference.
"""

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import TOL
from helpers import require_tool

import chordlab
from chordlab import step4_simd

CSRC = step4_simd.CSRC
SOURCES = ["test_driver.c", "dispatch.c", "isa_scalar.c", "isa_avx2.c", "isa_avx512.c", "isa_avx512bf16.c",
           "isa_neon.c", "isa_neonbf16.c"]
F32 = TOL[np.dtype(np.float32)]

# (B, Hq, Hkv, Lq, Lk, D, causal, mask layout, block_q, block_k)
EDGE_CASES = [
    (1, 1, 1, 1, 1, 1, False, None, 64, 128),
    (1, 1, 1, 1, 7, 1, True, None, 1, 1),
    (1, 2, 1, 9, 4, 3, True, None, 4, 3),          # causal, Lq > Lk: the first rows see no key
    (2, 4, 2, 33, 47, 17, False, "bool", 8, 16),   # tails everywhere, GQA, per-head bool mask
    (1, 3, 3, 20, 20, 5, False, "masked_row", 7, 6),  # a fully masked row
    (2, 2, 1, 65, 130, 64, True, "additive", 64, 128),
    (1, 1, 1, 100, 37, 80, False, "padding", 16, 8),
    (1, 2, 2, 31, 31, 129, True, None, 5, 31),
]


# chapter 11's variants: (edge case, window, softcap, ALiBi slope, document size of a block mask)
VARIANT_CASES = [
    ((1, 2, 1, 40, 57, 16, False, None, 8, 16), (10, 3), 2.0, 0.3, 0),
    ((2, 2, 2, 33, 33, 17, True, "bool", 5, 7), (4, None), 0.0, 0.1, 0),
    ((1, 1, 1, 70, 70, 32, False, None, 16, 16), None, 5.0, 0.0, 20),
    ((1, 2, 1, 50, 64, 64, True, "additive", 16, 32), (30, 0), 3.0, 0.05, 16),
]


def variant_kwargs(spec, window, softcap, slope, doc) -> dict:
    """The `attention` keywords of a variant case (the driver builds the same block mask in C)."""
    B, Hq, _, Lq, Lk, *_, bq, bk = spec
    kw = {"window": window, "softcap": softcap or None, "alibi_slopes": [slope] * Hq if slope else None}
    if doc:
        kw["block_mask"] = chordlab.block_mask(lambda b, h, qi, ki: (qi + Lk - Lq) // doc == ki // doc, None, None,
                                               Lq, Lk, bq, bk)
    return kw


def variant_header(window, softcap, slope, doc) -> str:
    left, right = (-1 if w is None else w for w in (window or (None, None)))
    return f" {int(window is not None)} {left} {right} {softcap} {slope} {doc}"


def write_case(path: Path, q, k, v, mask, causal, block_q, block_k, isa, threads=2, variants=""):
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    if mask is None:
        kind, mshape, payload = 0, (1, 1, 1, 1), b""
    elif mask.dtype == np.bool_:
        kind, mshape, payload = 1, mask.shape, np.ascontiguousarray(mask, dtype=np.uint8).tobytes()
    else:
        kind, mshape, payload = 2, mask.shape, np.ascontiguousarray(mask, dtype=np.float32).tobytes()
    scale = np.float32(1 / np.sqrt(D))
    header = (f"chordlab-case {B} {Hq} {Hkv} {Lq} {Lk} {D} {int(causal)} {kind} {' '.join(map(str, mshape))} "
              f"{block_q} {block_k} {threads} {float(scale):.9g} {isa}{variants}\n")
    path.write_bytes(header.encode() + b"".join(np.ascontiguousarray(a).tobytes() for a in (q, k, v)) + payload)


def make_case(spec, seed):
    B, Hq, Hkv, Lq, Lk, D, causal, layout, bq, bk = spec
    r = np.random.default_rng(seed)
    q = r.standard_normal((B, Hq, Lq, D)).astype(np.float32)
    k = r.standard_normal((B, Hkv, Lk, D)).astype(np.float32)
    v = r.standard_normal((B, Hkv, Lk, D)).astype(np.float32)
    mask = None
    if layout == "bool":
        mask = r.random((B, Hq, Lq, Lk)) < 0.6
    elif layout == "masked_row":
        mask = np.ones((1, 1, Lq, Lk), dtype=bool)
        mask[..., 3, :] = False
    elif layout == "additive":
        mask = np.where(r.random((B, 1, Lq, Lk)) < 0.8, r.standard_normal((B, 1, Lq, Lk)), -np.inf)
        mask = mask.astype(np.float32)
    elif layout == "padding":
        mask = np.broadcast_to(np.arange(Lk) < 30, (1, 1, 1, Lk))
    return q, k, v, mask, causal, bq, bk


def check_driver(run, tmp_path, isa):
    for n, spec in enumerate(EDGE_CASES * 2):
        algorithm = ["rowwise"] if n >= len(EDGE_CASES) else []  # each case with both algorithms
        q, k, v, mask, causal, bq, bk = make_case(spec, n % len(EDGE_CASES))
        case, out_path = tmp_path / f"case{n}.bin", tmp_path / f"out{n}.bin"
        write_case(case, q, k, v, mask, causal, bq, bk, isa)
        r = run([str(case), str(out_path), *algorithm])
        assert r.returncode == 0, f"case {spec} on {isa}: exit {r.returncode}\n{r.stderr[-3000:]}"
        assert "runtime error" not in r.stderr and "Sanitizer" not in r.stderr, r.stderr[-3000:]
        data = np.fromfile(out_path, dtype=np.float32)
        out, lse = data[: q.size].reshape(q.shape), data[q.size:].reshape(q.shape[:3])
        want, want_lse = chordlab.attention(*(a.astype(np.float64) for a in (q, k, v)), mask=mask, causal=causal,
                                            backend="reference", return_lse=True)
        np.testing.assert_allclose(out, want, **F32, err_msg=f"{spec} on {isa}")
        np.testing.assert_allclose(lse, want_lse, **F32, err_msg=f"{spec} on {isa}")


def check_driver_variants(run, tmp_path, isa):
    """Window, softcap, ALiBi and a block mask, forward and backward, against the float64 reference."""
    for n, (spec, *var) in enumerate(VARIANT_CASES):
        q, k, v, mask, causal, bq, bk = make_case(spec, 50 + n)
        kw = variant_kwargs(spec, *var)
        x64 = [a.astype(np.float64) for a in (q, k, v)]
        out, lse = chordlab.attention(*x64, mask=mask, causal=causal, backend="reference", return_lse=True, **kw)
        dout = np.random.default_rng(200 + n).standard_normal(q.shape).astype(np.float32)
        want = chordlab.attention_backward(dout.astype(np.float64), *x64, out, lse, mask=mask, causal=causal,
                                           backend="reference", **kw)
        for mode in ("forward", "backward"):
            case, out_path = tmp_path / f"vcase{n}{mode}.bin", tmp_path / f"vout{n}{mode}.bin"
            write_case(case, q, k, v, mask, causal, bq, bk, isa, variants=variant_header(*var))
            if mode == "backward":
                with open(case, "ab") as f:
                    f.write(dout.tobytes())
            r = run([str(case), str(out_path), *(["backward"] if mode == "backward" else [])])
            assert r.returncode == 0, f"case {spec} {var} on {isa}: exit {r.returncode}\n{r.stderr[-3000:]}"
            assert "runtime error" not in r.stderr and "Sanitizer" not in r.stderr, r.stderr[-3000:]
            data = np.fromfile(out_path, dtype=np.float32)
            if mode == "forward":
                got, got_lse = data[: q.size].reshape(q.shape), data[q.size:].reshape(q.shape[:3])
                np.testing.assert_allclose(got, out, **F32, err_msg=f"{spec} {var} on {isa}")
                np.testing.assert_allclose(got_lse, lse, **F32, err_msg=f"{spec} {var} on {isa}")
            else:
                for name, g, w in zip(("dq", "dk", "dv"), np.split(data, [q.size, q.size + k.size]), want,
                                      strict=True):
                    np.testing.assert_allclose(g.reshape(w.shape), w, rtol=1e-4, atol=2e-5,
                                               err_msg=f"{name} {spec} {var} {isa}")


def check_driver_half(run, tmp_path, isa, modes):
    """The forward on 16-bit inputs (the driver rounds q, k, v), with variants, against the float64 reference on the
    same rounded numbers."""
    import ml_dtypes

    dtypes = {"half-f16": np.float16, "half-bf16": ml_dtypes.bfloat16, "half-bf16dot": ml_dtypes.bfloat16}
    for n, (spec, *var) in enumerate(VARIANT_CASES):
        if spec[5] % 2:
            continue  # the dot path pairs the head dims (an odd one is refused, tested in Python)
        q, k, v, mask, causal, bq, bk = make_case(spec, 70 + n)
        for mode in modes:
            dt = dtypes[mode]
            case, out_path = tmp_path / f"hcase{n}{mode}.bin", tmp_path / f"hout{n}{mode}.bin"
            write_case(case, q, k, v, mask, causal, bq, bk, isa, variants=variant_header(*var))
            r = run([str(case), str(out_path), mode])
            assert r.returncode == 0, f"{mode} case {spec} on {isa}: exit {r.returncode}\n{r.stderr[-3000:]}"
            assert "runtime error" not in r.stderr and "Sanitizer" not in r.stderr, r.stderr[-3000:]
            data = np.fromfile(out_path, dtype=np.float32)
            x64 = [a.astype(dt).astype(np.float64) for a in (q, k, v)]
            want = chordlab.attention(*x64, mask=mask, causal=causal, backend="reference", **variant_kwargs(spec, *var))
            tol = 2e-2 if dt is not np.float16 else 2e-3
            np.testing.assert_allclose(data[: q.size].reshape(q.shape), want, atol=tol, rtol=tol,
                                       err_msg=f"{mode} {spec} {var} {isa}")


@pytest.fixture(scope="module")
def asan_driver(tmp_path_factory):
    cc = require_tool("gcc", "gcc")
    exe = tmp_path_factory.mktemp("asan") / "driver"
    cmd = [cc, "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer",
           "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-pthread", f"-I{CSRC}",
           *[str(CSRC / s) for s in SOURCES], "-lm", "-o", str(exe)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0 and "asan" in r.stderr.lower() and not os.environ.get("CI"):
        pytest.skip(f"no sanitizer runtime (install libasan for gcc): {r.stderr[-300:]}")
    assert r.returncode == 0, r.stderr
    return exe


@pytest.mark.parametrize("isa", [i.name for i in step4_simd.library().isas() if i.supported])
def test_sanitizers_over_edge_shapes(asan_driver, tmp_path, isa):
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0",
           "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}

    def run(args):
        return subprocess.run([str(asan_driver), *args], capture_output=True, text=True, env=env, timeout=120)

    check_driver(run, tmp_path, isa)
    check_driver_variants(run, tmp_path, isa)
    dot = ["half-bf16dot"] if isa == "avx512" and step4_simd.library().bf16_dot else []
    check_driver_half(run, tmp_path, isa, ["half-f16", "half-bf16", *dot])
    r = run(["--primitives", isa])
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


@pytest.fixture(scope="module")
def neon_driver(tmp_path_factory):
    cc = require_tool("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu libc6-dev-arm64-cross")
    require_tool("qemu-aarch64", "qemu-user")
    exe = tmp_path_factory.mktemp("neon") / "driver"
    cmd = [cc, "-O2", "-static", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-pthread", f"-I{CSRC}",
           *[str(CSRC / s) for s in SOURCES], "-lm", "-o", str(exe)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    asm = subprocess.run([cc, "-O2", "-std=gnu11", f"-I{CSRC}", "-S", "-o", "-", str(CSRC / "isa_neon.c")],
                         capture_output=True, text=True, check=True).stdout
    assert "fmla" in asm  # the NEON path really uses fused multiply-add vectors
    return exe


def test_neon_under_qemu(neon_driver, tmp_path):
    def run(args):
        return subprocess.run(["qemu-aarch64", str(neon_driver), *args], capture_output=True, text=True, timeout=300)

    r = run(["--isas"])
    assert "neon 1 1" in r.stdout and "best neon" in r.stdout, r.stdout
    check_driver(run, tmp_path, "neon")
    check_driver(run, tmp_path, "scalar")
    check_driver_variants(run, tmp_path, "neon")
    bfdot = "bf16dot 1" in r.stdout  # qemu's default CPU has Arm's BF16 extension (BFDOT)
    if os.environ.get("CI"):
        assert bfdot, f"qemu-aarch64's CPU should report BF16: {r.stdout}"
    check_driver_half(run, tmp_path, "neon", ["half-f16", "half-bf16"] + (["half-bf16dot"] if bfdot else []))
    r = run(["--primitives", "neon"])
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


CLANG_FLAGS = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-pthread", f"-I{CSRC}"]


@pytest.fixture(scope="module")
def clang_driver(tmp_path_factory):
    cc = require_tool("clang", "clang")
    exe = tmp_path_factory.mktemp("clang") / "driver"
    r = subprocess.run([cc, *CLANG_FLAGS, *[str(CSRC / s) for s in SOURCES], "-lm", "-o", str(exe)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return exe


@pytest.mark.parametrize("isa", [i.name for i in step4_simd.library().isas() if i.supported])
def test_clang_build_on_this_cpu(clang_driver, tmp_path, isa):
    def run(args):
        return subprocess.run([str(clang_driver), *args], capture_output=True, text=True, timeout=120)

    check_driver(run, tmp_path, isa)


def test_clang_build_for_aarch64_under_qemu(tmp_path):
    cc = require_tool("clang", "clang")
    require_tool("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu libc6-dev-arm64-cross")  # its libc and linker
    require_tool("qemu-aarch64", "qemu-user")
    exe = tmp_path / "driver"
    r = subprocess.run([cc, "--target=aarch64-linux-gnu", "-static", *CLANG_FLAGS, *[str(CSRC / s) for s in SOURCES],
                        "-lm", "-o", str(exe)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr

    def run(args):
        return subprocess.run(["qemu-aarch64", str(exe), *args], capture_output=True, text=True, timeout=300)

    assert "best neon" in run(["--isas"]).stdout
    check_driver(run, tmp_path, "neon")


def check_driver_backward(run, tmp_path, isa):
    """The backward of every edge case (the driver runs the forward first), against the float64 reference."""
    for n, spec in enumerate(EDGE_CASES):
        q, k, v, mask, causal, bq, bk = make_case(spec, n)
        dout = np.random.default_rng(100 + n).standard_normal(q.shape).astype(np.float32)
        case, out_path = tmp_path / f"bcase{n}.bin", tmp_path / f"bout{n}.bin"
        write_case(case, q, k, v, mask, causal, bq, bk, isa)
        with open(case, "ab") as f:
            f.write(dout.tobytes())
        r = run([str(case), str(out_path), "backward"])
        assert r.returncode == 0, f"case {spec} on {isa}: exit {r.returncode}\n{r.stderr[-3000:]}"
        assert "runtime error" not in r.stderr and "Sanitizer" not in r.stderr, r.stderr[-3000:]
        data = np.fromfile(out_path, dtype=np.float32)
        dq, dk, dv = np.split(data, [q.size, q.size + k.size])
        out, lse = chordlab.attention(*(a.astype(np.float64) for a in (q, k, v)), mask=mask, causal=causal,
                                      backend="reference", return_lse=True)
        want = chordlab.attention_backward(dout.astype(np.float64), *(a.astype(np.float64) for a in (q, k, v)),
                                           out, lse, mask=mask, causal=causal, backend="reference")
        for name, got, w in zip(("dq", "dk", "dv"), (dq, dk, dv), want, strict=True):
            np.testing.assert_allclose(got.reshape(w.shape), w, rtol=1e-4, atol=2e-5, err_msg=f"{name} {spec} {isa}")


@pytest.mark.parametrize("isa", [i.name for i in step4_simd.library().isas() if i.supported])
def test_backward_under_the_sanitizers(asan_driver, tmp_path, isa):
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0",
           "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}

    def run(args):
        return subprocess.run([str(asan_driver), *args], capture_output=True, text=True, env=env, timeout=120)

    check_driver_backward(run, tmp_path, isa)


def test_backward_neon_under_qemu(neon_driver, tmp_path):
    def run(args):
        return subprocess.run(["qemu-aarch64", str(neon_driver), *args], capture_output=True, text=True, timeout=300)

    check_driver_backward(run, tmp_path, "neon")
