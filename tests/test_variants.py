"""Chapter 11's variants: sliding window, ALiBi, softcap and block masks.

The reference is checked against an independent construction (the whole bias and mask matrix built here with
NumPy, then a plain softmax), and every backend with variants against the reference: forward and backward, on
hypothesis shapes, in every combination, with FlashAttention's float32 rule. Skipped tiles are proved skipped: a NaN
planted in keys/values that only skipped tiles hold would reach the output if they were visited."""

import numpy as np
import pytest
from helpers import MASK_LAYOUTS, random_mask
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import chordlab
from chordlab import variants

SIMD_ISAS = [i.name for i in chordlab.step4_simd.library().isas() if i.supported]


def independent(q, k, v, *, mask=None, causal=False, window=None, alibi_slopes=None, softcap=None, block_mask=None,
                scale=None):
    """Float64 attention from the full bias/mask matrix, written without chordlab's code paths."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    B, Hq, Lq, D = q.shape
    G = Hq // k.shape[1]
    k, v = np.repeat(k, G, axis=1), np.repeat(v, G, axis=1)
    Lk = k.shape[2]
    s = np.einsum("bhid,bhjd->bhij", q, k) * (1 / np.sqrt(D) if scale is None else scale)
    if softcap is not None:
        s = softcap * np.tanh(s / softcap)
    i = np.arange(Lq)[:, None] + (Lk - Lq)
    j = np.arange(Lk)[None, :]
    if alibi_slopes is not None:
        slopes = np.broadcast_to(np.asarray(alibi_slopes, np.float64).reshape(-1, Hq), (B, Hq))
        s = s - slopes[:, :, None, None] * np.abs(i - j)
    keep = np.ones((B, Hq, Lq, Lk), bool)
    if mask is not None:
        m = np.broadcast_to(mask, (B, Hq, Lq, Lk))
        if m.dtype == bool:
            keep &= m
        else:
            s = s + m
    if window is not None:
        left, right = window
        keep &= (j >= i - left) if left is not None else True
        keep &= (j <= i + right) if right is not None else True
    if causal:
        keep &= j <= i
    if block_mask is not None:
        keep &= block_mask.dense()
    s = np.where(keep, s, -np.inf)
    mx = s.max(-1, keepdims=True)
    mx = np.where(np.isneginf(mx), 0, mx)
    e = np.exp(s - mx)
    total = e.sum(-1, keepdims=True)
    out = np.divide(e, total, out=np.zeros_like(e), where=total > 0) @ v
    with np.errstate(divide="ignore"):
        return out, (mx + np.log(total))[..., 0]


@st.composite
def variant_problems(draw, max_len=48, max_d=20, dtype=np.float64, block_masks=True):
    B, Hkv, G = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.sampled_from([1, 2]))
    Hq = Hkv * G
    Lq, Lk, D = draw(st.integers(1, max_len)), draw(st.integers(1, max_len)), draw(st.integers(1, max_d))
    r = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    q, k, v = (r.standard_normal(s).astype(dtype) for s in ((B, Hq, Lq, D), (B, Hkv, Lk, D), (B, Hkv, Lk, D)))
    kw = {"causal": draw(st.booleans())}
    if draw(st.booleans()):
        kw["window"] = (draw(st.one_of(st.none(), st.integers(0, max_len))),
                        draw(st.one_of(st.none(), st.integers(0, max_len))))
    if draw(st.booleans()):
        kw["alibi_slopes"] = (r.random((B, Hq)) if draw(st.booleans()) else chordlab.alibi_slopes(Hq))
    if draw(st.booleans()):
        kw["softcap"] = draw(st.sampled_from([0.3, 2.0, 30.0]))
    layout = draw(st.sampled_from(MASK_LAYOUTS))
    kw["mask"] = random_mask(r, layout, B, Hq, Lq, Lk, draw(st.sampled_from([0.7, 1.0])), dtype)
    if block_masks and draw(st.booleans()):
        period = draw(st.integers(2, 12))
        bq, bk = draw(st.integers(1, 12)), draw(st.integers(1, 12))
        per_head = draw(st.booleans())

        def fn(b, h, qi, ki):  # documents of `period` keys; head 1 also sees the first key
            return ((qi + Lk - Lq) // period == ki // period) | ((ki == 0) & (h % 2 == 1))
        kw["block_mask"] = chordlab.block_mask(fn, None, Hq if per_head else None, Lq, Lk, bq, bk)
    try:
        chordlab.prepare(q, k, v, **{n: kw[n] for n in kw if n != "mask"})
    except ValueError:
        assume(False)  # the window or block mask leaves a row with no key: refused (tested below)
    return q, k, v, kw


@settings(max_examples=60)
@given(variant_problems())
def test_the_reference_matches_an_independent_construction(prob):
    q, k, v, kw = prob
    out, lse = chordlab.attention(q, k, v, backend="reference", return_lse=True, **kw)
    want, want_lse = independent(q, k, v, **kw)
    np.testing.assert_allclose(out, want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-10, atol=1e-12)


@settings(max_examples=50)
@given(variant_problems(), st.integers(1, 9), st.integers(1, 9))
def test_tiled_forward_and_backward_match_the_reference(prob, bq, bk):
    q, k, v, kw = prob
    tiles = {} if "block_mask" in kw else dict(block_q=bq, block_k=bk)
    want, want_lse = chordlab.attention(q, k, v, backend="reference", return_lse=True, **kw)
    out, lse = chordlab.attention(q, k, v, backend="tiled", return_lse=True, **tiles, **kw)
    np.testing.assert_allclose(out, want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-10, atol=1e-12)
    dout = np.random.default_rng(q.size).standard_normal(q.shape)
    g_ref = chordlab.attention_backward(dout, q, k, v, want, want_lse, backend="reference", **kw)
    g_til = chordlab.attention_backward(dout, q, k, v, want, want_lse, backend="tiled", **tiles, **kw)
    for name, a, b in zip(("dq", "dk", "dv"), g_til, g_ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10, err_msg=name)


@pytest.mark.parametrize("kw", [dict(softcap=0.7), dict(alibi_slopes=[0.3, 1.1]), dict(window=(2, 1)),
                                dict(window=(None, 1), causal=True, softcap=1.5, alibi_slopes=[0.5, 0.2])], ids=str)
def test_reference_gradients_match_finite_differences(kw, rng):
    q, k, v = (rng.standard_normal(s) for s in ((1, 2, 5, 3), (1, 1, 6, 3), (1, 1, 6, 3)))
    dout = rng.standard_normal(q.shape)

    def loss(qq, kk, vv):
        return float((chordlab.attention(qq, kk, vv, backend="reference", **kw) * dout).sum())

    out, lse = chordlab.attention(q, k, v, backend="reference", return_lse=True, **kw)
    got = chordlab.attention_backward(dout, q, k, v, out, lse, backend="reference", **kw)
    for which, g in enumerate(got):
        args = [q.copy(), k.copy(), v.copy()]
        num = np.zeros_like(g)
        for idx in np.ndindex(g.shape):
            args[which][idx] += 1e-6
            up = loss(*args)
            args[which][idx] -= 2e-6
            num[idx] = (up - loss(*args)) / 2e-6
            args[which][idx] += 1e-6
        np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-8)


def _float32_rule(got, exact, ref32, what, atol=1e-6):
    """FlashAttention's rule: error against float64 at most 2x the float32 reference's, plus atol."""
    for name, g, e, r in zip(("out/dq", "lse/dk", "dv"), got, exact, ref32, strict=False):
        assert g.dtype == np.float32 and not np.isnan(g).any(), (name, what)
        assert np.abs(g - e).max() <= 2 * np.abs(r - e).max() + atol, (name, what, np.abs(g - e).max(),
                                                                       np.abs(r - e).max())


@settings(max_examples=40)
@given(variant_problems(max_len=70, max_d=40, dtype=np.float32), st.sampled_from(SIMD_ISAS),
       st.sampled_from([(None, None), (8, 8), (16, 24), (5, 7)]), st.integers(1, 3))
def test_simd_forward_and_backward_with_every_variant_on_every_isa(prob, isa, blocks, threads):
    q, k, v, kw = prob
    tiles = {} if "block_mask" in kw else dict(block_q=blocks[0], block_k=blocks[1])
    x64 = [a.astype(np.float64) for a in (q, k, v)]
    exact = chordlab.attention(*x64, backend="reference", return_lse=True, **kw)
    ref32 = chordlab.attention(q, k, v, backend="reference", return_lse=True, **kw)
    got = chordlab.attention(q, k, v, backend="simd", isa=isa, threads=threads, return_lse=True, **tiles, **kw)
    finite = [np.where(np.isneginf(a), 0, a) for a in (*exact, *ref32, *got)]
    _float32_rule(finite[4:6], finite[0:2], finite[2:4], f"forward {isa} {kw.keys()}", atol=2e-6)
    dout = np.random.default_rng(q.size).standard_normal(q.shape).astype(np.float32)
    g_exact = chordlab.attention_backward(dout.astype(np.float64), *x64, *exact, backend="reference", **kw)
    g_ref32 = chordlab.attention_backward(dout, q, k, v, *ref32, backend="reference", **kw)
    g_simd = chordlab.attention_backward(dout, q, k, v, *got, backend="simd", isa=isa, threads=threads, **tiles, **kw)
    _float32_rule(g_simd, g_exact, g_ref32, f"backward {isa} {kw.keys()}", atol=5e-6)


def test_simd_variants_at_long_lengths_and_bit_identical_for_any_thread_count(rng):
    q, k, v = (rng.standard_normal((1, 4, 2500, 64)).astype(np.float32) for _ in range(3))
    kw = dict(window=(300, 0), alibi_slopes=chordlab.alibi_slopes(4), softcap=20.0)
    exact = independent(q, k, v, **kw)
    ref32 = chordlab.attention(q, k, v, backend="reference", return_lse=True, **kw)
    one = chordlab.attention(q, k, v, backend="simd", threads=1, return_lse=True, **kw)
    _float32_rule(one, exact, ref32, "long")
    two = chordlab.attention(q, k, v, backend="simd", threads=2, return_lse=True, **kw)
    assert all(np.array_equal(a, b) for a, b in zip(one, two, strict=True))


def _plant_nan(x, keys):
    x = x.copy()
    x[..., keys, :] = np.nan
    return x


@pytest.mark.parametrize("backend", ["tiled", "simd"])
def test_tiles_outside_the_window_or_empty_in_the_block_mask_are_never_visited(backend, rng):
    """NaN in the values of keys that only skipped tiles hold: any visit would give NaN (0 · NaN)."""
    L, w, b = 256, 40, 32
    q, k, v = (rng.standard_normal((1, 2, L, 16)).astype(np.float32) for _ in range(3))
    # window (40, 0): query tile [192, 224) sees keys >= 152, so key tiles [0, 128) are never needed by it
    v_bad = _plant_nan(v, slice(0, 128))
    out = chordlab.attention(q[:, :, 192:], k, v_bad, window=(w, 0), backend=backend, block_q=b, block_k=b)
    assert not np.isnan(out).any()
    np.testing.assert_allclose(out, independent(q[:, :, 192:], k, v, window=(w, 0))[0], atol=2e-6)
    # the backward: NaN in k and v of the far keys must reach neither dq nor the near keys' grads
    k_bad = _plant_nan(k, slice(0, 128))
    o, lse = chordlab.attention(q[:, :, 192:], k, v, window=(w, 0), return_lse=True, backend="reference")
    dq, dk, dv = chordlab.attention_backward(np.ones_like(o), q[:, :, 192:], k_bad, v_bad, o, lse, window=(w, 0),
                                             backend=backend, block_q=b, block_k=b)
    assert not np.isnan(dq).any() and not np.isnan(dk[..., 128:, :]).any()
    # a document mask: documents of 64 keys with tiles of 32: a query never visits another document's tiles
    docs = np.arange(L) // 64
    bm = chordlab.block_mask(variants.document_mask_fn(docs), None, None, L, L, b, b)
    assert bm.counts() == {"empty": 48, "full": 16, "partial": 0}
    v_doc = _plant_nan(v, slice(64, 128))  # document 1
    out = chordlab.attention(q, k, v_doc, block_mask=bm, backend=backend)
    assert np.isnan(out[:, :, 64:128]).all() and not np.isnan(out[:, :, :64]).any()
    assert not np.isnan(out[:, :, 128:]).any()


def test_block_mask_tiles_and_dense_form():
    L = 100
    bm = chordlab.block_mask(variants.sliding_window_mask_fn(30), None, None, L, L, 16, 16)
    i, j = np.arange(L)[:, None], np.arange(L)[None]
    np.testing.assert_array_equal(bm.dense()[0, 0], (i >= j) & (i - j < 30))
    assert bm.kinds.shape == (1, 1, 7, 7) and bm.counts()["empty"] > 0 and 0 < bm.density() < 1
    per_batch = chordlab.block_mask(lambda b, h, qi, ki: ki <= qi + b, 2, 3, 9, 9, 4, 4)
    assert per_batch.kinds.shape == (2, 1 if False else 3, 3, 3)
    np.testing.assert_array_equal(per_batch.dense()[1, 2], j[:, :9] <= i[:9] + 1)
    prefix = chordlab.block_mask(variants.prefix_lm_mask_fn(10), None, None, 40, 40, 8, 8)
    assert prefix.dense()[0, 0][0, :10].all() and not prefix.dense()[0, 0][0, 10:].any()
    assert "density" in repr(prefix)


def test_bad_inputs_get_clear_errors(rng):
    q = rng.standard_normal((1, 2, 8, 4))
    att = chordlab.attention
    with pytest.raises(ValueError, match="window left must be >= 0"):
        att(q, q, q, window=(-1, 0))
    with pytest.raises(TypeError, match="window must be"):
        att(q, q, q, window=5)
    with pytest.raises(ValueError, match=r"alibi_slopes must have shape \[Hq\] = \(2,\)"):
        att(q, q, q, alibi_slopes=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="alibi_slopes must be finite"):
        att(q, q, q, alibi_slopes=[1.0, np.nan])
    for bad in (0, -1.0, np.nan, np.inf):
        with pytest.raises(ValueError, match="softcap must be a finite number > 0"):
            att(q, q, q, softcap=bad)
    with pytest.raises(TypeError, match="softcap must be"):
        att(q, q, q, softcap="big")
    with pytest.raises(ValueError, match="leaves query row 0 with no key"):
        att(q, q[:, :, :3], q[:, :, :3], window=(0, 0))  # Lq 8 > Lk 3: the first rows see nothing
    with pytest.raises(ValueError, match="block_mask leaves some query row with no key"):
        att(q, q, q, block_mask=chordlab.block_mask(lambda b, h, qi, ki: qi > 3, None, None, 8, 8, 4, 4))
    bm = chordlab.block_mask(variants.causal_mask_fn, None, None, 8, 8, 4, 4)
    with pytest.raises(ValueError, match="block_mask does not match the inputs: it was built for Lq=8, Lk=8"):
        att(q[:, :, :6], q, q, block_mask=bm)
    with pytest.raises(ValueError, match="block_q=2 differs from the block mask's block_q=4"):
        att(q, q, q, block_mask=bm, backend="tiled", block_q=2)
    with pytest.raises(ValueError, match="cannot be tuned with a block_mask"):
        att(q, q, q, block_mask=bm, block_q="auto")
    with pytest.raises(TypeError, match="block_mask must come from chordlab.block_mask"):
        att(q, q, q, block_mask=np.ones((8, 8), bool))
    with pytest.raises(ValueError, match="algorithm='rowwise'.*computes no variants"):
        att(q.astype(np.float32), q.astype(np.float32), q.astype(np.float32), softcap=1.0, backend="simd",
            algorithm="rowwise")
    with pytest.raises(ValueError, match="mask_fn|positive int"):
        chordlab.block_mask(variants.causal_mask_fn, None, None, 0, 8, 4, 4)
    with pytest.raises(ValueError, match="window left must be >= 0"):
        out, lse = att(q, q, q, return_lse=True)
        chordlab.attention_backward(out, q, q, q, out, lse, window=(-2, None))


def test_backends_without_a_variant_refuse_it_and_auto_passes_them_over(rng):
    q = rng.standard_normal((1, 2, 8, 4)).astype(np.float32)
    p = chordlab.prepare(q, q, q, softcap=3.0, window=(2, None))
    reasons = dict(chordlab.explain_auto(p))
    assert reasons["simd"] is None and reasons["reference"] is None
    for name in ("webgpu", "cuda-cpu", "cuda"):
        b = chordlab.get_backend(name)
        if "softcap" not in b.variants:
            assert "does not compute" in reasons[name] or "unavailable" in reasons[name]
    webgpu = chordlab.get_backend("webgpu")
    if webgpu.available() and "block_mask" not in webgpu.variants:
        bm = chordlab.block_mask(variants.causal_mask_fn, None, None, 8, 8, 4, 4)
        with pytest.raises(TypeError, match="backend 'webgpu' does not compute block_mask"):
            chordlab.attention(q, q, q, block_mask=bm, backend="webgpu")
    out = chordlab.attention(q, q, q, softcap=3.0, window=(2, None))  # auto: the SIMD kernel
    np.testing.assert_allclose(out, independent(q, q, q, softcap=3.0, window=(2, None))[0], atol=2e-6)


def test_alibi_slopes_follow_the_paper():
    np.testing.assert_allclose(chordlab.alibi_slopes(8), 2.0 ** -np.arange(1, 9))
    s12 = chordlab.alibi_slopes(12)
    assert len(s12) == 12 and np.all(s12 > 0) and np.allclose(s12[:8], 2.0 ** -np.arange(1, 9))


@settings(max_examples=25)
@given(variant_problems(max_len=70, max_d=1, dtype=np.float32, block_masks=False), st.sampled_from(["v1", "v2", "v3"]),
       st.sampled_from([16, 64]))
def test_cuda_kernels_on_the_cpu_with_window_alibi_and_softcap(prob, kernel, D):
    """The CUDA sources (forward v1-v3 and cuda/flash_bwd.cu), run by cuda-cpu through the same mapping header."""
    from helpers import require_backend

    require_backend("cuda-cpu", "install a CPU OpenCL: make system-deps")
    q, k, v, kw = prob
    r = np.random.default_rng(q.size)
    q, k, v = (r.standard_normal(a.shape[:-1] + (D,)).astype(np.float32) for a in (q, k, v))
    x64 = [a.astype(np.float64) for a in (q, k, v)]
    exact = chordlab.attention(*x64, backend="reference", return_lse=True, **kw)
    ref32 = chordlab.attention(q, k, v, backend="reference", return_lse=True, **kw)
    got = chordlab.attention(q, k, v, backend="cuda-cpu", kernel=kernel, return_lse=True, **kw)
    finite = [np.where(np.isneginf(a), 0, a) for a in (*exact, *ref32, *got)]
    _float32_rule(finite[4:6], finite[0:2], finite[2:4], f"cuda-cpu {kernel} {kw.keys()}", atol=2e-6)
    if kernel == "v1":
        dout = r.standard_normal(q.shape).astype(np.float32)
        g_exact = chordlab.attention_backward(dout.astype(np.float64), *x64, *exact, backend="reference", **kw)
        g_ref32 = chordlab.attention_backward(dout, q, k, v, *ref32, backend="reference", **kw)
        g_cuda = chordlab.attention_backward(dout, q, k, v, *got, backend="cuda-cpu", **kw)
        _float32_rule(g_cuda, g_exact, g_ref32, f"cuda-cpu backward {kw.keys()}", atol=5e-6)


@settings(max_examples=20)
@given(variant_problems(max_len=70, max_d=1, dtype=np.float32, block_masks=False), st.sampled_from(["w1", "w2", "w3"]),
       st.sampled_from([16, 64]))
def test_webgpu_kernels_with_window_alibi_and_softcap(prob, kernel, D):
    from helpers import require_backend

    require_backend("webgpu", "install lavapipe: make system-deps")
    if kernel == "w3" and not chordlab.step8_webgpu.gpu_device().subgroups:
        return
    q, k, v, kw = prob
    r = np.random.default_rng(q.size)
    q, k, v = (r.standard_normal(a.shape[:-1] + (D,)).astype(np.float32) for a in (q, k, v))
    exact = chordlab.attention(*(a.astype(np.float64) for a in (q, k, v)), backend="reference", return_lse=True, **kw)
    ref32 = chordlab.attention(q, k, v, backend="reference", return_lse=True, **kw)
    got = chordlab.attention(q, k, v, backend="webgpu", kernel=kernel, return_lse=True, **kw)
    finite = [np.where(np.isneginf(a), 0, a) for a in (*exact, *ref32, *got)]
    _float32_rule(finite[4:6], finite[0:2], finite[2:4], f"webgpu {kernel} {kw.keys()}", atol=5e-6)


def test_webgpu_window_over_many_key_chunks(rng, monkeypatch):
    """The window's first key lands inside later chunks: each chunk starts its tiles where the window does."""
    from helpers import require_backend

    require_backend("webgpu", "install lavapipe: make system-deps")
    q, k, v = (rng.standard_normal((1, 2, n, 32)).astype(np.float32) for n in (300, 700, 700))
    kw = dict(window=(90, 5), alibi_slopes=[0.05, 0.2], softcap=4.0)
    monkeypatch.setattr(chordlab.step8_webgpu.gpu_device(), "loop_limit", 3000)  # many small chunks
    exact = independent(q, k, v, **kw)
    ref32 = chordlab.attention(q, k, v, backend="reference", return_lse=True, **kw)
    for kernel in ("w1", "w2"):
        got = chordlab.attention(q, k, v, backend="webgpu", kernel=kernel, return_lse=True, **kw)
        _float32_rule(got, exact, ref32, f"chunks {kernel}", atol=5e-6)


@pytest.mark.parametrize("isa", SIMD_ISAS)
def test_nan_and_inf_inputs_with_the_score_hook_as_the_reference_handles_them(isa, rng):
    q, k, v = (rng.standard_normal((1, 2, 40, 16)).astype(np.float32) for _ in range(3))
    q[0, 0, 3, 2], k[0, 1, 5, 0], q[0, 1, 7, 1] = np.nan, np.inf, 1e30
    kw = dict(softcap=2.0, alibi_slopes=[0.1, 0.2], window=(20, 3))
    want = chordlab.attention(q, k, v, backend="reference", **kw)
    got = chordlab.attention(q, k, v, backend="simd", isa=isa, **kw)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.nanmax(np.abs(got - want)) < 1e-5


@pytest.mark.parametrize("isa", SIMD_ISAS)
def test_the_kernels_softcap_tanh_is_accurate_to_a_few_ulp(isa):
    """One key, D = 1, scale 1: each query's lse is its capped score softcap·tanh(x / softcap) itself."""
    x = np.linspace(-40, 40, 100001)
    for cap in (0.5, 30.0):
        q = x.astype(np.float32).reshape(1, 1, -1, 1)
        one = np.ones((1, 1, 1, 1), np.float32)
        _, lse = chordlab.attention(q, one, one, scale=1.0, softcap=cap, backend="simd", isa=isa, return_lse=True)
        want = cap * np.tanh(q.astype(np.float64)[..., 0] / cap)
        rel = np.abs(lse - want) / np.maximum(np.abs(want), 1e-30)
        # float32's epsilon is 1.2e-7; the forward scores in base-2 units (log2 e folded into the scale) and turns
        # lse back with ln 2, two more roundings than tanh itself: 3.7 ulp at most on Zen 5
        assert rel.max() < 5e-7, (cap, rel.max())
