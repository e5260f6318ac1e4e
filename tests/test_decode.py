"""Chapter 10: KV caches and decode. Decode must equal `attention` on each sequence's gathered cache, for both
cache kinds, every backend with a decode kernel, every ISA, float32/float16/bfloat16 caches, any split count and
thread count, and chapter 11's variants. Refused cache operations leave the cache unchanged."""

import os
import subprocess

import ml_dtypes
import numpy as np
import pytest
from helpers import require_tool
from hypothesis import given, settings
from hypothesis import strategies as st

import chordlab
from chordlab import decoding as dec
from chordlab import step4_simd

SIMD_ISAS = [i.name for i in step4_simd.library().isas() if i.supported]
BF16 = np.dtype(ml_dtypes.bfloat16)
KV_DTYPES = [np.dtype(np.float32), np.dtype(np.float16), BF16]


def gathered_attention(q, cache, seq_ids=None, **kw):
    """The definition: float64 `attention` (reference) on each sequence's gathered cache, causal bottom-right."""
    outs, lses = [], []
    for b in range(q.shape[0]):
        if isinstance(cache, chordlab.PagedKVCache):
            k, v = cache.gather((seq_ids or cache.sequences)[b])
        else:
            k, v = cache.keys(b), cache.values(b)
        slopes = kw.get("alibi_slopes")
        kwb = dict(kw, alibi_slopes=None if slopes is None else np.asarray(slopes).reshape(-1, q.shape[1])[
            min(b, np.asarray(slopes).reshape(-1, q.shape[1]).shape[0] - 1)])
        o, lse = chordlab.attention(q[b:b + 1].astype(np.float64), k.astype(np.float64)[None],
                                    v.astype(np.float64)[None], causal=True, backend="reference", return_lse=True,
                                    **kwb)
        outs.append(o)
        lses.append(lse)
    return np.concatenate(outs), np.concatenate(lses)


@st.composite
def decode_problems(draw, paged=None):
    r = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    B, Hkv, G = draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.sampled_from([1, 2, 4]))
    D, Lq = draw(st.sampled_from([1, 7, 16, 33, 64])), draw(st.integers(1, 3))
    dtype = draw(st.sampled_from(KV_DTYPES))
    lengths = [draw(st.integers(Lq, 200)) for _ in range(B)]
    paged = draw(st.booleans()) if paged is None else paged
    if paged:
        page = draw(st.sampled_from([1, 5, 16, 64]))
        cache = chordlab.PagedKVCache(sum(-(-n // page) for n in lengths) + 2, page, Hkv, D, dtype)
        ids = [cache.add_sequence() for _ in range(B)]
        extra = cache.add_sequence()  # interleaved appends: the pages of a sequence are not contiguous
        for step in range(2):
            for s, n in zip(ids, lengths, strict=True):
                part = n // 2 if step == 0 else n - n // 2
                cache.append(s, *(r.standard_normal((Hkv, part, D)).astype(dtype) for _ in range(2)))
            if step == 0:
                cache.append(extra, *(r.standard_normal((Hkv, 1, D)).astype(dtype) for _ in range(2)))
        cache.free(extra)
    else:
        cache = chordlab.KVCache(B, Hkv, D, max(lengths) + draw(st.integers(0, 9)), dtype)
        L = max(lengths)
        cache.append(*(r.standard_normal((B, Hkv, L, D)).astype(dtype) for _ in range(2)), lengths=np.array(lengths))
    q = r.standard_normal((B, Hkv * G, Lq, D)).astype(np.float32)
    kw = {}
    if draw(st.booleans()):
        kw["window"] = (draw(st.one_of(st.none(), st.integers(0, 60))), draw(st.one_of(st.none(), st.integers(0, 3))))
    if draw(st.booleans()):
        kw["alibi_slopes"] = r.random((B, Hkv * G)) if draw(st.booleans()) else chordlab.alibi_slopes(Hkv * G)
    if draw(st.booleans()):
        kw["softcap"] = draw(st.sampled_from([0.5, 5.0, 30.0]))
    return q, cache, kw


@settings(max_examples=60)
@given(decode_problems(), st.sampled_from(SIMD_ISAS), st.integers(1, 5), st.integers(1, 3))
def test_decode_equals_attention_on_the_gathered_cache(prob, isa, splits, threads):
    q, cache, kw = prob
    want, want_lse = gathered_attention(q, cache, **kw)
    ref32 = gathered_attention(q.astype(np.float32), cache, **kw)[0]  # same numbers: the float64 definition
    assert np.allclose(ref32, want)
    for backend, opts, tol in (("reference", {}, 1e-12), ("tiled", dict(splits=splits), 1e-10),
                               ("simd", dict(splits=splits, isa=isa, threads=threads), 2e-5)):
        qq = q.astype(np.float64) if backend != "simd" else q
        out, lse = chordlab.decode(qq, cache, backend=backend, return_lse=True, **opts, **kw)
        assert out.dtype == qq.dtype and not np.isnan(out).any()
        np.testing.assert_allclose(out, want, rtol=tol, atol=tol, err_msg=f"{backend} {opts} {kw}")
        np.testing.assert_allclose(lse, want_lse, rtol=tol, atol=tol, err_msg=f"{backend} {opts} {kw}")


def test_decode_is_bit_identical_for_any_thread_count_and_auto_picks_simd(rng):
    cache = chordlab.KVCache(1, 2, 64, 3000, BF16)
    cache.append(*(rng.standard_normal((1, 2, 2999, 64)).astype(BF16) for _ in range(2)))
    q = rng.standard_normal((1, 8, 1, 64)).astype(np.float32)
    one = chordlab.decode(q, cache, backend="simd", splits=6, threads=1)
    for t in (2, 3, 6):
        assert np.array_equal(one, chordlab.decode(q, cache, backend="simd", splits=6, threads=t))
    assert dict(dec.decode_backends(dec.prepare_decode(q, cache)))["simd"] is None
    np.testing.assert_allclose(chordlab.decode(q, cache), gathered_attention(q, cache)[0], atol=2e-5)


@pytest.mark.parametrize("dtype, bound", [(np.float16, 1e-4), (BF16, 1e-3)])
def test_16_bit_caches_against_a_float32_cache(dtype, bound, rng):
    """The stated error of a 16-bit cache: the K/V rounding (float16: 2^-11, bfloat16: 2^-8 relative) moves the
    output of unit-normal data (4096 keys, head dim 64) by at most `bound`; measured on Zen 5: float16 2.5e-5,
    bfloat16 2.4e-4 (the softmax averages the rounding of many keys)."""
    k, v = (rng.standard_normal((2, 4, 4096, 64)).astype(np.float32) for _ in range(2))
    q = rng.standard_normal((2, 8, 1, 64)).astype(np.float32)
    c32, c16 = chordlab.KVCache(2, 4, 64, 4096), chordlab.KVCache(2, 4, 64, 4096, dtype)
    c32.append(k, v)
    c16.append(k.astype(dtype), v.astype(dtype))
    exact = chordlab.decode(q, c32, backend="simd")
    got = chordlab.decode(q, c16, backend="simd")
    err = np.abs(got - exact).max()
    assert err <= bound, err
    # and the kernel adds nothing to the rounding: it equals float64 attention on the rounded cache
    np.testing.assert_allclose(got, gathered_attention(q, c16)[0], atol=2e-5)


def test_kv_cache_appends_and_refusals_leave_it_unchanged(rng):
    cache = chordlab.KVCache(2, 2, 8, 10)
    k = rng.standard_normal((2, 2, 6, 8)).astype(np.float32)
    cache.append(k, k, lengths=np.array([6, 2]))
    assert cache.lengths.tolist() == [6, 2]
    np.testing.assert_array_equal(cache.keys(1), k[1, :, :2])
    before = (cache.k.copy(), cache.lengths)
    with pytest.raises(ValueError, match="would pass the capacity 10; nothing was appended"):
        cache.append(k, k)  # row 0: 6 + 6 > 10
    with pytest.raises(ValueError, match="2 kv heads and head dim 8"):
        cache.append(k[:, :1], k[:, :1])
    with pytest.raises(TypeError, match="this cache holds float32.*astype"):
        cache.append(k.astype(np.float16), k.astype(np.float16))
    with pytest.raises(ValueError, match="batch 2"):
        cache.append(k[:1], k[:1])
    with pytest.raises(ValueError, match="lengths must be between 0 and L = 6"):
        cache.append(k, k, lengths=np.array([7, 0]))
    assert np.array_equal(cache.k, before[0]) and cache.lengths.tolist() == before[1].tolist()
    with pytest.raises(TypeError, match="a KV cache holds"):
        chordlab.KVCache(1, 1, 4, 4, dtype=np.int32)
    assert chordlab.KVCache(1, 1, 4, 4, dtype="bfloat16").dtype == BF16


@pytest.mark.parametrize("dtype", KV_DTYPES)
def test_cache_storage_starts_on_a_cache_line(dtype):
    """A vector load of a cached row touches one cache line, not two (NumPy alone starts 16 bytes past one)."""
    for cache in (chordlab.KVCache(2, 3, 128, 100, dtype), chordlab.PagedKVCache(7, 16, 3, 33, dtype)):
        for a in (cache.k, cache.v):
            assert a.ctypes.data % 64 == 0 and a.flags.c_contiguous and a.flags.writeable
            assert a.dtype == dtype and not a.any()
    a = chordlab.kv_cache.aligned_zeros((3, 5), np.float16, align=4096)
    assert a.ctypes.data % 4096 == 0 and a.shape == (3, 5) and a.nbytes == 30
    with pytest.raises(ValueError, match="power of two"):
        chordlab.kv_cache.aligned_zeros((3,), np.float32, align=48)


@pytest.mark.parametrize("dtype", KV_DTYPES)
def test_decode_reads_storage_at_any_alignment(dtype, rng):
    """The kernels' loads are unaligned: storage moved off the cache line (as NumPy places it) gives the same bits."""
    cache = chordlab.KVCache(1, 2, 128, 300, dtype)
    cache.append(*(rng.standard_normal((1, 2, 300, 128)).astype(dtype) for _ in range(2)))
    q = rng.standard_normal((1, 8, 1, 128)).astype(np.float32)
    want = chordlab.decode(q, cache, backend="simd", splits=3, threads=2)
    for shift in (4, 16, 36):  # bytes past a cache line (a multiple of every element size)
        for name in ("k", "v"):
            a = getattr(cache, name)
            raw = np.zeros(a.nbytes + 64 + shift, np.uint8)
            start = -raw.ctypes.data % 64 + shift
            moved = raw[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
            moved[...] = a
            assert moved.ctypes.data % 64 == shift
            setattr(cache, name, moved)
        assert np.array_equal(chordlab.decode(q, cache, backend="simd", splits=3, threads=2), want)


def test_paged_cache_pages_fragmentation_and_running_out(rng):
    cache = chordlab.PagedKVCache(5, 4, 1, 3)
    a, b = cache.add_sequence(), cache.add_sequence()
    x = rng.standard_normal((1, 9, 3)).astype(np.float32)
    cache.append(a, x[:, :5], x[:, :5])  # 2 pages
    cache.append(b, x[:, :3], x[:, :3])  # 1 page
    cache.append(a, x[:, 5:9], x[:, 5:9])  # 9 tokens: 3 pages
    assert cache.pages_in_use == 4 and cache.block_table(a).tolist() == [0, 1, 3]
    assert cache.fragmentation == pytest.approx(1 - 12 / 16)
    np.testing.assert_array_equal(cache.gather(a)[0], x)
    snapshot = (cache.k.copy(), cache.pages_in_use, cache.length(a), cache.block_table(a).tolist())
    with pytest.raises(MemoryError, match="needs 2 more pages.*only 1 are free.*nothing was written"):
        cache.append(b, x[:, :6], x[:, :6])
    assert (np.array_equal(cache.k, snapshot[0]), cache.pages_in_use, cache.length(a),
            cache.block_table(a).tolist()) == (True, *snapshot[1:])
    cache.free(a)
    assert cache.pages_in_use == 1 and cache.free_pages == 4
    c = cache.add_sequence()
    cache.append(c, x, x)  # reuses the freed pages
    np.testing.assert_array_equal(cache.gather(c)[1], x)
    with pytest.raises(KeyError, match="no sequence 0"):
        cache.append(a, x, x)
    with pytest.raises(ValueError, match=r"\[Hkv, L, D\]"):
        cache.append(c, x[0], x[0])


def test_bad_decode_requests_get_clear_errors(rng):
    cache = chordlab.KVCache(2, 2, 8, 16)
    cache.append(*(rng.standard_normal((2, 2, 3, 8)).astype(np.float32) for _ in range(2)))
    q = rng.standard_normal((2, 4, 1, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="fewer than the Lq = 4 new queries: append"):
        chordlab.decode(rng.standard_normal((2, 4, 4, 8)).astype(np.float32), cache)
    with pytest.raises(ValueError, match="q has batch 1, the cache 2"):
        chordlab.decode(q[:1], cache)
    with pytest.raises(ValueError, match=r"q must be \[B, Hq, Lq, D\]"):
        chordlab.decode(q[:, :, 0], cache)
    with pytest.raises(TypeError, match="q must be float32, float64, float16 or bfloat16"):
        chordlab.decode(q.astype(np.int16), cache)
    with pytest.raises(ValueError, match="multiple of the cache's kv heads 2"):
        chordlab.decode(q[:, :3], cache)
    with pytest.raises(ValueError, match="splits must be a positive int"):
        chordlab.decode(q, cache, splits=0)
    with pytest.raises(TypeError, match="decodes float32 queries"):
        chordlab.decode(q.astype(np.float64), cache, backend="simd")
    with pytest.raises(NotImplementedError, match="backend 'webgpu' has no decode kernel"):
        chordlab.decode(q, cache, backend="webgpu")
    with pytest.raises(TypeError, match="takes no block_mask"):
        chordlab.decode(q, cache, block_mask=object())
    with pytest.raises(ValueError, match="softcap must be"):
        chordlab.decode(q, cache, softcap=-1.0)
    with pytest.raises(TypeError, match="cache must be a chordlab.KVCache"):
        chordlab.decode(q, {"k": 1})
    paged = chordlab.PagedKVCache(4, 4, 2, 8)
    paged.append(paged.add_sequence(), *(rng.standard_normal((2, 3, 8)).astype(np.float32) for _ in range(2)))
    with pytest.raises(ValueError, match="q has batch 2 but 1 sequences"):
        chordlab.decode(q, paged)
    with pytest.raises(ValueError, match="seq_ids is for a PagedKVCache"):
        chordlab.decode(q, cache, seq_ids=[0, 1])


def test_auto_splits_rule():
    assert dec.auto_splits(1, 8, 65536, 1) == 1
    assert dec.auto_splits(1, 8, 65536, 16) == 4  # 8 heads x 4 splits = 32 items = 2 per thread
    assert dec.auto_splits(1, 1, 65536, 2) == 4
    assert dec.auto_splits(1, 1, 300, 8) == 1  # no split under 256 keys
    assert dec.auto_splits(32, 8, 65536, 16) == 1


def test_the_probe_read_sums_a_buffer_on_any_thread_count(rng):
    lib = step4_simd.library()
    x = rng.standard_normal(100_003).astype(np.float32)
    for isa in SIMD_ISAS:
        for threads in (1, 2, 3):
            assert abs(lib.read_sum(x, threads=threads, isa=isa) - x.astype(np.float64).sum()) < 1e-6 * x.size
    assert lib.read_sum(np.ones(5, np.float32), threads=8) == 5.0
    with pytest.raises(TypeError, match="float32"):
        lib.read_sum(np.ones(4))
    with pytest.raises(TypeError, match="non-empty"):
        lib.read_sum(np.ones(0, np.float32))


def test_the_bandwidth_probe_measures_something():
    gbs = step4_simd.library().read_bandwidth(threads=1, megabytes=64, rounds=2)
    assert 0.5 < gbs < 2000


# -- the C decode kernel outside Python: AddressSanitizer, and NEON under qemu --------------------------------

def write_decode_case(path, q, cache, kw, splits, threads, isa, seq_ids=None):
    B, Hq, Lq, D = q.shape
    paged = isinstance(cache, chordlab.PagedKVCache)
    code = {np.dtype(np.float32): 0, np.dtype(np.float16): 1, BF16: 2}[cache.dtype]
    left, right = (-1 if w is None else w for w in kw.get("window", (None, None)))
    if paged:
        table, lengths = cache.tables(seq_ids or cache.sequences)
        head = (cache.num_pages, cache.page_size, table.shape[1], 0)
    else:
        table, lengths = None, cache.lengths
        head = (0, 0, 0, cache.capacity)
    slope = kw.get("alibi_slopes", 0.0)
    header = (f"chordlab-decode {B} {Hq} {cache.kv_heads} {Lq} {D} {code} {' '.join(map(str, head))} {splits} "
              f"{threads} {int('window' in kw)} {left} {right} {kw.get('softcap', 0.0)} {slope} {isa}\n")
    parts = [header.encode(), lengths.astype(np.int64).tobytes()]
    if paged:
        parts.append(table.astype(np.int32).tobytes())
    parts += [q.astype(np.float32).tobytes(), cache.k.tobytes(), cache.v.tobytes()]
    path.write_bytes(b"".join(parts))


def check_decode_driver(run, tmp_path, isa):
    r = np.random.default_rng(7)
    cases = [(np.float32, False, {}), (np.float16, True, dict(window=(30, None), softcap=4.0)),
             (BF16, False, dict(alibi_slopes=0.25)), (BF16, True, {}), (np.float16, False, dict(window=(5, 0)))]
    for n, (dtype, paged, kw) in enumerate(cases):
        B, Hkv, G, D, Lq = 2, 2, 2, 20 + 13 * n, 1 + n % 2
        lengths = [70 + 9 * n, Lq + 3]
        if paged:
            cache = chordlab.PagedKVCache(40, 7, Hkv, D, dtype)
            ids = [cache.add_sequence() for _ in range(B)]
            for s, L in zip(ids, lengths, strict=True):
                cache.append(s, *(r.standard_normal((Hkv, L, D)).astype(dtype) for _ in range(2)))
        else:
            cache = chordlab.KVCache(B, Hkv, D, 120, dtype)
            cache.append(*(r.standard_normal((B, Hkv, max(lengths), D)).astype(dtype) for _ in range(2)),
                         lengths=np.array(lengths))
        q = r.standard_normal((B, Hkv * G, Lq, D)).astype(np.float32)
        case, out_path = tmp_path / f"dcase{n}.bin", tmp_path / f"dout{n}.bin"
        write_decode_case(case, q, cache, kw, splits=3, threads=2, isa=isa)
        res = run(["--decode", str(case), str(out_path)])
        assert res.returncode == 0, f"decode case {n} on {isa}: exit {res.returncode}\n{res.stderr[-3000:]}"
        assert "runtime error" not in res.stderr and "Sanitizer" not in res.stderr, res.stderr[-3000:]
        data = np.fromfile(out_path, dtype=np.float32)
        pkw = dict(kw, alibi_slopes=[kw["alibi_slopes"]] * (Hkv * G)) if "alibi_slopes" in kw else kw
        want, want_lse = gathered_attention(q, cache, **pkw)
        np.testing.assert_allclose(data[: q.size].reshape(q.shape), want, rtol=2e-5, atol=2e-5,
                                   err_msg=f"decode case {n} on {isa}")
        np.testing.assert_allclose(data[q.size:].reshape(q.shape[:3]), want_lse, rtol=2e-5, atol=2e-5)


@pytest.fixture(scope="module")
def drivers(tmp_path_factory):
    src = step4_simd.CSRC
    sources = [str(src / s) for s in ("test_driver.c", "dispatch.c", "isa_scalar.c", "isa_avx2.c", "isa_avx512.c",
                                      "isa_avx512bf16.c", "isa_neon.c", "isa_neonbf16.c")]
    flags = ["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-pthread", f"-I{src}"]
    out = tmp_path_factory.mktemp("decode-drivers")
    built = {}
    gcc = require_tool("gcc", "gcc")
    r = subprocess.run([gcc, "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all", *flags,
                        *sources, "-lm", "-o", str(out / "asan")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    built["asan"] = out / "asan"
    cross = require_tool("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu libc6-dev-arm64-cross")
    require_tool("qemu-aarch64", "qemu-user")
    r = subprocess.run([cross, "-O2", "-static", *flags, *sources, "-lm", "-o", str(out / "neon")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    built["neon"] = out / "neon"
    return built


@pytest.mark.parametrize("isa", SIMD_ISAS)
def test_decode_under_the_sanitizers(drivers, tmp_path, isa):
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1", "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}
    check_decode_driver(lambda args: subprocess.run([str(drivers["asan"]), *args], capture_output=True, text=True,
                                                    env=env, timeout=120), tmp_path, isa)


def test_decode_neon_under_qemu(drivers, tmp_path):
    """NEON's float16 (fcvtl) and bfloat16 (shift) loads, checked on an emulated aarch64."""
    for isa in ("neon", "scalar"):
        check_decode_driver(lambda args: subprocess.run(["qemu-aarch64", str(drivers["neon"]), *args],
                                                        capture_output=True, text=True, timeout=300), tmp_path, isa)


@pytest.mark.parametrize("dtype", [np.float32, BF16])
def test_a_layer_generates_with_a_cache_as_it_would_without_one(dtype, rng):
    mha = chordlab.MultiHeadAttention(64, 8, 2, seed=3)
    x = rng.standard_normal((2, 30, 64)).astype(np.float32)
    cache = chordlab.KVCache(2, 2, 8, 64, dtype)
    y = [mha.extend(x[:, :10], cache)]  # the prompt, then one token at a time
    y += [mha.extend(x[:, t:t + 1], cache) for t in range(10, 30)]
    want = mha.forward(x, causal=True)
    tol = 2e-5 if dtype == np.float32 else 2e-2
    np.testing.assert_allclose(np.concatenate(y, axis=1), want, atol=tol, rtol=tol)
    assert cache.lengths.tolist() == [30, 30]
    with pytest.raises(ValueError, match="this layer has 2 of dim 8"):
        mha.extend(x[:, :1], chordlab.KVCache(2, 1, 8, 4))
