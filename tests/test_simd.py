"""Step 4, the SIMD C kernels through cffi: every ISA path this CPU runs, forced in turn, against the
NumPy reference; dispatch, threads, primitives, the exp polynomial, memory, errors and the rebuild."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import TOL
from helpers import naive_attention, random_mask
from hypothesis import given, settings
from hypothesis import strategies as st

import chordlab
from chordlab import step4_simd

lib = step4_simd.library()
ISAS = [i.name for i in lib.isas() if i.supported]
F32 = TOL[np.dtype(np.float32)]


@st.composite
def big_problems(draw):
    """Head dims 1..256 (odd ones too), lengths 1..600, GQA, every mask layout, causal, block sizes."""
    D = draw(st.one_of(st.integers(1, 24), st.sampled_from([31, 32, 63, 64, 80, 96, 127, 128, 200, 256])))
    Lq = draw(st.one_of(st.integers(1, 40), st.integers(41, 600)))
    Lk = draw(st.one_of(st.integers(1, 40), st.integers(41, 600)))
    small = Lq * Lk * D <= 200_000
    B = draw(st.integers(1, 2)) if small else 1
    Hkv = draw(st.integers(1, 2)) if small else 1
    G = draw(st.sampled_from([1, 2, 3])) if small else draw(st.sampled_from([1, 2]))
    r = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    q = r.standard_normal((B, Hkv * G, Lq, D)).astype(np.float32)
    k = r.standard_normal((B, Hkv, Lk, D)).astype(np.float32)
    v = r.standard_normal((B, Hkv, Lk, D)).astype(np.float32)
    layout = draw(st.sampled_from(["none", "none", "LqLk", "B1LqLk", "BHLqLk", "additive", "padding"]))
    mask = None
    if layout == "padding":  # a [B, 1, 1, Lk] key-padding mask: the broadcast strides reach C as 0
        mask = (np.arange(Lk)[None, :] < r.integers(0, Lk + 1, size=(B, 1)))[:, None, None, :]
    else:
        mask = random_mask(r, layout, B, Hkv * G, Lq, Lk, draw(st.sampled_from([0.1, 0.7, 1.0])))
    block_q = draw(st.one_of(st.none(), st.integers(1, 150)))
    block_k = draw(st.one_of(st.none(), st.integers(1, 300)))
    algorithm = draw(st.sampled_from(["blocked", "blocked", "rowwise"]))
    return q, k, v, mask, draw(st.booleans()), block_q, block_k, algorithm


@settings(max_examples=40)
@given(big_problems())
def test_every_isa_matches_the_reference(prob):
    q, k, v, mask, causal, bq, bk, algorithm = prob
    want, want_lse = chordlab.attention(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64),
                                        mask=mask, causal=causal, backend="reference", return_lse=True)
    for isa in ISAS:
        out, lse = chordlab.attention(q, k, v, mask=mask, causal=causal, backend="simd", isa=isa,
                                      block_q=bq, block_k=bk, algorithm=algorithm, return_lse=True)
        assert out.dtype == np.float32 and not np.isnan(out).any(), isa
        np.testing.assert_allclose(out, want, **F32, err_msg=isa)
        np.testing.assert_allclose(lse, want_lse, **F32, err_msg=isa)


@pytest.mark.parametrize("isa", ISAS)
def test_fully_masked_rows_and_causal_with_more_queries_than_keys(isa, rng):
    q = rng.standard_normal((1, 2, 9, 17)).astype(np.float32)
    k = rng.standard_normal((1, 2, 4, 17)).astype(np.float32)
    out, lse = chordlab.attention(q, k, k, causal=True, backend="simd", isa=isa, block_q=4, block_k=3,
                                  return_lse=True)
    want, want_lse = naive_attention(q, k, k, causal=True)
    assert np.all(out[:, :, :5] == 0) and np.all(np.isneginf(lse[:, :, :5]))
    np.testing.assert_allclose(out, want, **F32)
    np.testing.assert_allclose(lse, want_lse, **F32)


def test_results_identical_for_any_thread_count(rng):
    q, k, v = (rng.standard_normal((2, 4, 130, 40)).astype(np.float32) for _ in range(3))
    outs = [chordlab.attention(q, k, v, causal=True, backend="simd", threads=t, block_q=16) for t in (1, 2, 3, 8)]
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])


def test_float64_is_refused_clearly_and_auto_falls_back(rng):
    q = rng.standard_normal((4, 8))
    with pytest.raises(TypeError, match="computes in float32, float16, bfloat16, not float64"):
        chordlab.attention(q, q, q, backend="simd")
    assert chordlab.choose_backend(chordlab.prepare(q, q, q)).name == "tiled"
    assert chordlab.choose_backend(chordlab.prepare(*(q.astype(np.float32),) * 3)).name == "simd"


def test_isa_errors(rng):
    q = rng.standard_normal((4, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="unknown isa 'sse9'; choose one of"):
        chordlab.attention(q, q, q, backend="simd", isa="sse9")
    other = "neon" if "avx2" in ISAS or "scalar" in ISAS and "neon" not in ISAS else "avx2"
    with pytest.raises(RuntimeError, match="not compiled into this build|lacks"):
        chordlab.attention(q, q, q, backend="simd", isa=other)
    with pytest.raises(TypeError, match="takes no option 'isa'"):
        chordlab.attention(q, q, q, backend="tiled", isa="avx2")
    with pytest.raises(ValueError, match="threads must be a positive int"):
        chordlab.attention(q, q, q, backend="simd", threads=0)
    with pytest.raises(ValueError, match="unknown algorithm 'fast'; choose one of blocked, rowwise"):
        chordlab.attention(q, q, q, backend="simd", algorithm="fast")


def _run(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def test_chordlab_isa_environment_variable():
    code = "from chordlab import step4_simd as s; print(s.library().isa_index(None), s.active_isa())"
    r = _run(code, CHORDLAB_ISA="scalar")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[1] == "scalar"
    r = _run("import chordlab; print(chordlab.backends())", CHORDLAB_ISA="bogus")
    assert "unavailable: $CHORDLAB_ISA=bogus: unknown isa 'bogus'" in r.stdout
    r = subprocess.run([sys.executable, "-m", "chordlab", "info"], capture_output=True, text=True,
                       env={**os.environ, "CHORDLAB_ISA": "scalar"})
    assert "using scalar (forced by $CHORDLAB_ISA)" in r.stdout


@pytest.mark.parametrize("isa", ISAS)
def test_primitives_against_numpy(isa, rng):
    for n in [0, 1, 3, 7, 8, 15, 16, 17, 31, 64, 65, 130]:
        a, b = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
        assert lib.dot(a, b, isa=isa) == pytest.approx(float(a.astype(np.float64) @ b), rel=1e-5, abs=1e-5)
        y = b.copy()
        lib.axpy(0.25, a, y, isa=isa)
        np.testing.assert_allclose(y, b + np.float32(0.25) * a, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(lib.scale(a, 3.0, isa=isa), a * 3, rtol=1e-6)
        assert lib.max(a, isa=isa) == (a.max() if n else -np.inf)
        np.testing.assert_allclose(lib.exp(a, isa=isa), np.exp(a.astype(np.float64)), rtol=1.2e-7)


@pytest.mark.parametrize("isa", ISAS)
def test_exp_polynomial_error_bound(isa):
    """Stated in csrc/simd_internal.h: relative error below one float32 epsilon on [-87.3, 88]."""
    x = np.linspace(-87.3, 88.0, 400_001, dtype=np.float32)
    rel = np.abs(lib.exp(x, isa=isa) - np.exp(x.astype(np.float64))) / np.exp(x.astype(np.float64))
    assert rel.max() < np.finfo(np.float32).eps
    edge = lib.exp(np.array([-np.inf, -100.0, np.nan, 100.0, 0.0], dtype=np.float32), isa=isa)
    assert edge[0] == 0 and edge[1] == 0 and np.isnan(edge[2]) and edge[3] == np.inf and edge[4] == 1


@pytest.mark.parametrize("isa", ISAS)
def test_the_softmax_exp2_error_bound(isa):
    """Stated in csrc/simd_internal.h: the forward's 2^x (its scores carry log2 e) below one float32 epsilon on
    [-126, 0]; 0 for -inf and far below, NaN stays NaN."""
    x = np.linspace(-126.0, 0.0, 400_001, dtype=np.float32)
    want = np.exp2(x.astype(np.float64))
    assert (np.abs(lib.exp2(x, isa=isa) - want) / want).max() < np.finfo(np.float32).eps
    edge = lib.exp2(np.array([-np.inf, -151.0, -1000.0, np.nan, 0.0, -1.0], dtype=np.float32), isa=isa)
    assert edge[0] == edge[1] == edge[2] == 0 and np.isnan(edge[3]) and edge[4] == 1 and edge[5] == 0.5


def test_primitive_input_errors():
    with pytest.raises(TypeError, match="1-D float32"):
        lib.dot(np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match="same length"):
        lib.dot(np.ones(3, np.float32), np.ones(4, np.float32))
    with pytest.raises(TypeError, match="updated in place"):
        lib.axpy(1.0, np.ones(3, np.float32), np.ones(3))


def test_memory_is_output_plus_per_thread_tiles(rng):
    """Inputs reach C without copies; the only allocations are the output and the per-thread scratch."""
    L, H, D = 2048, 4, 64
    q, k, v = (rng.standard_normal((1, H, L, D)).astype(np.float32) for _ in range(3))
    est = chordlab.predict_memory("simd", q.shape, k.shape, threads=2)
    (out, _), peak = chordlab.measure_peak(chordlab.attention, q, k, v, backend="simd", threads=2,
                                           return_lse=True)
    bq, bk = chordlab.get_backend("simd").default_blocks
    assert est.extra == lib.scratch_bytes(None, D, bq, bk, 2)
    assert abs(peak - est.total) <= 64 * 1024, (peak, est)
    assert est.extra <= 2 * out.nbytes  # O(N): tiles, never a score matrix


def test_rebuild_from_edited_sources(tmp_path, rng):
    src = tmp_path / "csrc"
    shutil.copytree(step4_simd.CSRC, src, ignore=shutil.ignore_patterns("__pycache__", "*.o"))
    kernel = src / "isa_scalar.c"
    kernel.write_text(kernel.read_text().replace("#define S_MR 4", "#define S_MR 3"))  # a different block
    rebuilt = step4_simd.build_library(src, build_dir=tmp_path / "build")
    assert rebuilt.origin != lib.origin and "_simd_" in rebuilt.origin
    q, k, v = (rng.standard_normal((1, 2, 50, 20)).astype(np.float32) for _ in range(3))
    a = chordlab.attention(q, k, v, backend="simd", isa="scalar", library=rebuilt)
    b = chordlab.attention(q, k, v, backend="simd", isa="scalar")
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert step4_simd.build_library(src, build_dir=tmp_path / "build").origin == rebuilt.origin  # cached


def test_the_thread_pool_serves_concurrent_callers_and_forked_children(rng):
    """The workers persist between calls; a second Python thread calling at the same time gets threads of its
    own, and a child process after fork() starts a pool of its own: the same results every time."""
    import os
    import threading

    q, k, v = (rng.standard_normal((2, 4, 333, 40)).astype(np.float32) for _ in range(3))
    base = chordlab.attention(q, k, v, backend="simd", threads=1)
    for threads in (2, 3, 2, 7, 2):
        assert np.array_equal(chordlab.attention(q, k, v, backend="simd", threads=threads), base)
    results = []

    def caller():
        results.append(all(np.array_equal(chordlab.attention(q, k, v, backend="simd", threads=2), base)
                           for _ in range(4)))

    callers = [threading.Thread(target=caller) for _ in range(4)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert results == [True] * 4
    pid = os.fork()
    if pid == 0:  # the child: the parent's pool threads do not exist here
        os._exit(0 if np.array_equal(chordlab.attention(q, k, v, backend="simd", threads=2), base) else 3)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
