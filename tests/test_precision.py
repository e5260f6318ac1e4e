"""Chapter 12: float16 and bfloat16 inputs. Every backend that takes them is checked against the float64 reference
on the same (16-bit) numbers with FlashAttention's rule: its error at most 2x that of torch's CPU SDPA in the same
dtype, plus an atol of one unit in the last place of the output's dtype. fp16 overflow, NaN, inf and subnormal
inputs behave as the reference's."""

import os

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import chordlab

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
SIMD_ISAS = [i.name for i in chordlab.step4_simd.library().isas() if i.supported]
EPS = {F16: 2.0**-10, BF16: 2.0**-7}  # the spacing of the dtype's numbers in [1, 2)
DOT = chordlab.step4_simd.library().bf16_dot  # this CPU runs the AVX512-BF16 dot-product path


def require_torch():
    try:
        import torch
    except ImportError:
        msg = "torch not installed: pip install -e .[bench] (or CHORDLAB_TORCH=1 make test)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return torch


def torch_sdpa(q, k, v, mask, torch):
    """torch's CPU scaled_dot_product_attention in q's 16-bit dtype (bfloat16 through its bit pattern)."""
    def to_t(x):
        if x.dtype == BF16:
            return torch.from_numpy(x.view(np.int16).copy()).view(torch.bfloat16)
        return torch.from_numpy(x.copy())

    tm = None if mask is None else torch.from_numpy(np.ascontiguousarray(mask))
    out = torch.nn.functional.scaled_dot_product_attention(to_t(q), to_t(k), to_t(v), attn_mask=tm, enable_gqa=True)
    return out.float().numpy()


@st.composite
def half_problems(draw):
    dtype = draw(st.sampled_from([F16, BF16]))
    B, Hkv, G = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.sampled_from([1, 2]))
    Lk = draw(st.integers(1, 90))
    Lq, D = draw(st.integers(1, Lk)), draw(st.sampled_from([8, 16, 33, 64, 128]))
    r = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    scale = draw(st.sampled_from([1.0, 3.0]))  # larger inputs: a peakier softmax
    q, k, v = (r.standard_normal(s).astype(dtype) * dtype.type(scale) for s in
               ((B, Hkv * G, Lq, D), (B, Hkv, Lk, D), (B, Hkv, Lk, D)))
    causal = draw(st.booleans())
    return q, k, v, causal


@settings(max_examples=40)
@given(half_problems(), st.sampled_from(SIMD_ISAS))
def test_16_bit_error_within_twice_torchs_in_the_same_dtype(prob, isa):
    torch = require_torch()
    q, k, v, causal = prob
    Lq, Lk = q.shape[2], k.shape[2]
    x64 = [a.astype(np.float64) for a in (q, k, v)]
    exact = chordlab.attention(*x64, causal=causal, backend="reference")
    mask = (np.arange(Lk)[None] <= np.arange(Lq)[:, None] + Lk - Lq) if causal else None  # bottom-right
    ref_err = np.abs(torch_sdpa(q, k, v, mask, torch) - exact).max()
    atol = EPS[q.dtype] * max(1.0, np.abs(exact).max())
    paths = [dict(backend="simd", isa=isa), dict(backend="simd", isa=isa, block_q=16, block_k=24),
             dict(backend="tiled", block_q=16, block_k=8), dict(backend="reference")]
    if q.dtype == BF16 and isa == "avx512" and DOT and q.shape[-1] % 2 == 0:
        paths += [dict(backend="simd", isa=isa, half="dot", block_q=16, block_k=24),
                  dict(backend="simd", isa=isa, half="convert")]
    for kw in paths:
        out, lse = chordlab.attention(q, k, v, causal=causal, return_lse=True, **kw)
        assert out.dtype == q.dtype and lse.dtype == np.float32
        err = np.abs(out.astype(np.float64) - exact).max()
        assert err <= 2 * ref_err + atol, (kw, err, ref_err, atol)


@pytest.mark.parametrize("backend", ["simd", "tiled", "reference"])
def test_float16_scores_past_its_range_do_not_overflow(backend, rng):
    """q·k reaches 1.6e5 (float16's largest number is 65504): float16 products summed in float16 would give inf; the
    kernels sum in float32, so the result is the reference's."""
    q = (rng.standard_normal((1, 2, 20, 64)) * 50).astype(F16)
    k = (rng.standard_normal((1, 2, 30, 64)) * 50).astype(F16)
    v = rng.standard_normal((1, 2, 30, 64)).astype(F16)
    with np.errstate(over="ignore"):
        assert np.isinf(q @ k.swapaxes(-1, -2)).any()  # the naive float16 product overflows
    out = chordlab.attention(q, k, v, backend=backend)
    assert np.isfinite(out.astype(np.float32)).all()
    exact = chordlab.attention(*(a.astype(np.float64) for a in (q, k, v)), backend="reference")
    assert np.abs(out.astype(np.float64) - exact).max() <= 2 * EPS[F16]


@pytest.mark.parametrize("dtype", [F16, BF16], ids=str)
@pytest.mark.parametrize("isa", SIMD_ISAS)
def test_nan_inf_and_subnormal_inputs_as_the_reference_handles_them(dtype, isa, rng):
    q, k, v = (rng.standard_normal((1, 2, 24, 16)).astype(dtype) for _ in range(3))
    q[0, 0, 3, 2] = np.nan
    v[0, 1, 7, 0] = np.inf
    tiny = np.finfo(np.float16).smallest_subnormal if dtype == F16 else ml_dtypes.finfo(BF16).smallest_subnormal
    k[0, 0, 5] = dtype.type(tiny)  # subnormal keys: tiny scores, not zeros or NaN
    want = chordlab.attention(q, k, v, backend="reference").astype(np.float64)
    got = chordlab.attention(q, k, v, backend="simd", isa=isa).astype(np.float64)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    fin = np.isfinite(want)
    assert np.abs(got[fin] - want[fin]).max() <= 2 * EPS[dtype]


@pytest.mark.parametrize("dtype", [F16, BF16], ids=str)
def test_16_bit_backward_and_decode(dtype, rng):
    q, k, v = (rng.standard_normal((1, 4, 40, 32)).astype(dtype) for _ in range(3))
    out, lse = chordlab.attention(q, k, v, causal=True, return_lse=True)
    dout = rng.standard_normal(q.shape).astype(dtype)
    x64 = [a.astype(np.float64) for a in (dout, q, k, v, out, lse)]
    want = chordlab.attention_backward(*x64, causal=True, backend="reference")
    for backend in ("simd", "tiled", "reference"):
        got = chordlab.attention_backward(dout, q, k, v, out, lse, causal=True, backend=backend)
        for g, w in zip(got, want, strict=True):
            assert g.dtype == dtype
            assert np.abs(g.astype(np.float64) - w).max() <= 2 * EPS[dtype] * max(1, np.abs(w).max())
    with pytest.raises(TypeError, match="lse must have the dtype float32"):
        chordlab.attention_backward(dout, q, k, v, out, lse.astype(dtype))
    cache = chordlab.KVCache(1, 4, 32, 40, dtype)
    cache.append(k, v)
    got = chordlab.decode(q[:, :, -1:], cache)
    assert got.dtype == dtype
    np.testing.assert_allclose(got.astype(np.float64), out[:, :, -1:].astype(np.float64), atol=2 * EPS[dtype])


def test_backends_without_16_bit_refuse_it_and_auto_passes_them_over(rng):
    q = rng.standard_normal((1, 2, 8, 16)).astype(BF16)
    reasons = dict(chordlab.explain_auto(chordlab.prepare(q, q, q)))
    assert reasons["simd"] is None
    for name in ("cuda-cpu", "webgpu"):
        if chordlab.get_backend(name).available():
            assert "computes in float32, not bfloat16" in reasons[name]
            with pytest.raises(TypeError, match="computes in float32, not bfloat16"):
                chordlab.attention(q, q, q, backend=name)
    with pytest.raises(TypeError, match="must be float32, float64, float16 or bfloat16"):
        chordlab.attention(q.astype(np.int8), q, q)


def require_dot():
    if not DOT:
        msg = "this CPU has no AVX512_BF16: the bfloat16 dot-product path cannot run here"
        pytest.skip(msg)  # not a missing package: a CPU feature, in CI as well (the convert path is tested)


@pytest.mark.parametrize("kw", [dict(causal=True), dict(window=(40, 3), softcap=8.0),
                                dict(alibi_slopes=[0.1, 0.3, 0.02, 0.5]), dict(mask="bool"), dict(mask="additive")],
                         ids=str)
def test_the_bf16_dot_path_with_every_option(kw, rng):
    require_dot()
    q, k, v = (rng.standard_normal(s).astype(BF16) for s in ((2, 4, 150, 64), (2, 2, 170, 64), (2, 2, 170, 64)))
    kw = dict(kw)
    if kw.get("mask") == "bool":
        kw["mask"] = rng.random((2, 1, 150, 170)) < 0.8
    elif kw.get("mask") == "additive":
        kw["mask"] = np.where(rng.random((150, 170)) < 0.8, rng.standard_normal((150, 170)), -np.inf)
    exact = chordlab.attention(*(a.astype(np.float64) for a in (q, k, v)), backend="reference", **kw)
    conv = chordlab.attention(q, k, v, backend="simd", half="convert", **kw).astype(np.float64)
    one = chordlab.attention(q, k, v, backend="simd", half="dot", threads=1, **kw)
    two = chordlab.attention(q, k, v, backend="simd", half="dot", threads=2, **kw)
    assert np.array_equal(one.view(np.uint16), two.view(np.uint16))  # any thread count, the same bits
    err_conv, err_dot = np.abs(conv - exact).max(), np.abs(one.astype(np.float64) - exact).max()
    assert err_dot <= 2 * err_conv + EPS[BF16], (err_dot, err_conv)  # P rounded to bfloat16 costs little


def test_the_half_option_is_checked(rng):
    q = rng.standard_normal((1, 2, 8, 16)).astype(np.float32)
    with pytest.raises(ValueError, match="half='dot' is the bfloat16 dot-product path"):
        chordlab.attention(q, q, q, backend="simd", half="dot")
    with pytest.raises(ValueError, match="half must be one of auto, convert, dot"):
        chordlab.attention(q.astype(BF16), q.astype(BF16), q.astype(BF16), backend="simd", half="fast")
    if DOT:
        with pytest.raises(ValueError, match="even head dim"):
            x = rng.standard_normal((1, 2, 8, 15)).astype(BF16)
            chordlab.attention(x, x, x, backend="simd", half="dot")
        with pytest.raises(RuntimeError, match="needs isa 'avx512'"):
            chordlab.attention(*(q.astype(BF16),) * 3, backend="simd", half="dot", isa="avx2")
