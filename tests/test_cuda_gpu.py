"""On a real NVIDIA GPU (`make gpu-test`): every kernel version against the NumPy reference, with masks, GQA,
causal, tails, chapter 11's variants, long lengths (FlashAttention's float32 rule) and the fp16/bf16 tolerances
of v4; the backward (cuda/flash_bwd.cu) likewise. Skipped, with the reason, where there is no GPU."""

import numpy as np
import pytest

import chordlab
from chordlab import step5_cuda

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not chordlab.get_backend("cuda").available(),
                                                  reason=f"cuda: {chordlab.get_backend('cuda').available().reason}")]
TOL = {"v1": 2e-5, "v2": 2e-5, "v3": 2e-5, ("v4", "fp16"): 2e-2, ("v4", "bf16"): 6e-2}
SHAPES = [(1, 8, 8, 256, 256, 64), (2, 6, 2, 100, 130, 80), (1, 4, 1, 37, 300, 128), (2, 2, 2, 1, 17, 32),
          (1, 4, 4, 513, 513, 96)]


def problem(shape, seed, layout):
    B, Hq, Hkv, Lq, Lk, D = shape
    r = np.random.default_rng(seed)
    q = r.standard_normal((B, Hq, Lq, D)).astype(np.float32)
    k = r.standard_normal((B, Hkv, Lk, D)).astype(np.float32)
    v = r.standard_normal((B, Hkv, Lk, D)).astype(np.float32)
    mask = None
    if layout == "bool":
        mask = r.random((B, 1, Lq, Lk)) < 0.7
    elif layout == "additive":
        mask = np.where(r.random((Lq, Lk)) < 0.8, r.standard_normal((Lq, Lk)), -np.inf).astype(np.float32)
    return q, k, v, mask


@pytest.mark.parametrize("layout", [None, "bool", "additive"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kernel", ["v1", "v2", "v3", ("v4", "fp16"), ("v4", "bf16")])
def test_kernels_on_the_gpu(kernel, causal, layout):
    name, precision = kernel if isinstance(kernel, tuple) else (kernel, None)
    for n, shape in enumerate(SHAPES):
        q, k, v, mask = problem(shape, n, layout)
        if precision:  # compare with the reference on the inputs rounded to 16 bits, as the kernel sees them
            rnd = (lambda a: a.astype(np.float16).astype(np.float32)) if precision == "fp16" else \
                (lambda a: step5_cuda.from_bf16_bits(step5_cuda.to_bf16_bits(a)))
            qr, kr, vr = rnd(q), rnd(k), rnd(v)
        else:
            qr, kr, vr = q, k, v
        want, want_lse = chordlab.attention(*(a.astype(np.float64) for a in (qr, kr, vr)), mask=mask, causal=causal,
                                            backend="reference", return_lse=True)
        out, lse = chordlab.attention(q, k, v, mask=mask, causal=causal, backend="cuda", kernel=name,
                                      precision=precision, return_lse=True)
        tol = TOL[kernel]
        np.testing.assert_allclose(out, want, rtol=tol, atol=tol, err_msg=f"{kernel} {shape}")
        np.testing.assert_allclose(lse, want_lse, rtol=tol, atol=tol, err_msg=f"{kernel} {shape}")


def test_cpu_path_and_gpu_agree():
    if not chordlab.get_backend("cuda-cpu").available():
        pytest.skip(f"cuda-cpu: {chordlab.get_backend('cuda-cpu').available().reason}")
    q, k, v, mask = problem((1, 4, 2, 70, 90, 64), 7, "bool")
    for kernel in ("v1", "v2", "v3"):
        a = chordlab.attention(q, k, v, mask=mask, causal=True, backend="cuda", kernel=kernel)
        b = chordlab.attention(q, k, v, mask=mask, causal=True, backend="cuda-cpu", kernel=kernel)
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


def rounded(precision):
    """The inputs as kernel v4 sees them (16-bit), or unchanged."""
    if precision == "fp16":
        return lambda a: a.astype(np.float16).astype(np.float32)
    if precision == "bf16":
        return lambda a: step5_cuda.from_bf16_bits(step5_cuda.to_bf16_bits(a))
    return lambda a: a


VARIANTS = [dict(window=(40, 0)), dict(window=(17, 9), causal=False), dict(alibi_slopes="h"), dict(softcap=5.0),
            dict(window=(64, 8), alibi_slopes="bh", softcap=3.0, mask="bool")]


@pytest.mark.parametrize("variant", range(len(VARIANTS)))
@pytest.mark.parametrize("kernel", ["v1", "v2", "v3", ("v4", "fp16"), ("v4", "bf16")])
def test_variants_on_the_gpu(kernel, variant):
    name, precision = kernel if isinstance(kernel, tuple) else (kernel, None)
    for n, shape in enumerate([(2, 6, 2, 100, 130, 80), (1, 4, 4, 300, 300, 64), (1, 2, 1, 65, 513, 128)]):
        opts = dict(VARIANTS[variant])
        causal, layout = opts.pop("causal", True), opts.pop("mask", None)
        q, k, v, mask = problem(shape, 10 + n, layout)
        B, Hq = shape[:2]
        if opts.get("alibi_slopes") == "h":
            opts["alibi_slopes"] = chordlab.alibi_slopes(Hq)
        elif opts.get("alibi_slopes") == "bh":
            opts["alibi_slopes"] = np.random.default_rng(n).uniform(0.01, 0.5, (B, Hq)).astype(np.float32)
        rnd = rounded(precision)
        want = chordlab.attention(*(rnd(a).astype(np.float64) for a in (q, k, v)), mask=mask, causal=causal,
                                  backend="reference", **opts)
        got = chordlab.attention(q, k, v, mask=mask, causal=causal, backend="cuda", kernel=name,
                                 precision=precision, **opts)
        tol = TOL[kernel]
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=f"{kernel} {shape} {VARIANTS[variant]}")


@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("causal", [False, True])
def test_long_lengths_keep_flash_attentions_float32_rule(D, causal):
    """N = 8192: each version's float32 error against float64 at most 2x the float32 reference's, + 1e-6."""
    r = np.random.default_rng(D + causal)
    q, k, v = (r.standard_normal((1, 2, 8192, D)).astype(np.float32) for _ in range(3))
    exact = chordlab.attention(*(a.astype(np.float64) for a in (q, k, v)), causal=causal, backend="tiled",
                               block_q=512, block_k=512)
    ref32 = chordlab.attention(q, k, v, causal=causal, backend="reference")
    budget = 2 * np.abs(ref32 - exact).max() + 1e-6
    for kernel in ("v2", "v3"):
        got = chordlab.attention(q, k, v, causal=causal, backend="cuda", kernel=kernel)
        assert np.isfinite(got).all()
        assert np.abs(got - exact).max() <= budget, (kernel, np.abs(got - exact).max(), budget)


def test_repeated_launches_are_bit_identical():
    q, k, v, mask = problem((2, 8, 2, 1000, 1000, 64), 3, "additive")
    for kernel, precision in (("v3", None), ("v4", "bf16")):
        a = chordlab.attention(q, k, v, mask=mask, causal=True, backend="cuda", kernel=kernel, precision=precision)
        b = chordlab.attention(q, k, v, mask=mask, causal=True, backend="cuda", kernel=kernel, precision=precision)
        assert np.array_equal(a, b), kernel


BACKWARD_CASES = [((1, 4, 4, 257, 257, 64), True, None, {}), ((2, 6, 2, 100, 130, 80), False, "bool", {}),
                  ((1, 4, 1, 37, 300, 128), True, "additive", {}), ((2, 2, 2, 1, 17, 32), False, None, {}),
                  ((1, 4, 2, 200, 200, 64), True, None, dict(window=(33, 0), softcap=4.0)),
                  ((1, 4, 2, 150, 180, 64), False, None, dict(window=(20, 20), alibi_slopes=True))]


@pytest.mark.parametrize("case", range(len(BACKWARD_CASES)))
def test_backward_on_the_gpu_keeps_flash_attentions_float32_rule(case):
    """cuda/flash_bwd.cu on the GPU: dQ, dK, dV's float32 error against float64 at most 2x that of the float32
    reference backward, + 1e-6; equal to the same source on the CPU (cuda-cpu) where that runs."""
    shape, causal, layout, opts = BACKWARD_CASES[case]
    q, k, v, mask = problem(shape, 20 + case, layout)
    if opts.get("alibi_slopes"):
        opts = dict(opts, alibi_slopes=chordlab.alibi_slopes(shape[1]))
    dout = np.random.default_rng(case).standard_normal(q.shape).astype(np.float32)
    kw = dict(mask=mask, causal=causal, **opts)
    q64, k64, v64, d64 = (a.astype(np.float64) for a in (q, k, v, dout))
    o64, l64 = chordlab.attention(q64, k64, v64, backend="reference", return_lse=True, **kw)
    exact = chordlab.attention_backward(d64, q64, k64, v64, o64, l64, backend="reference", **kw)
    out, lse = chordlab.attention(q, k, v, backend="reference", return_lse=True, **kw)
    ref32 = chordlab.attention_backward(dout, q, k, v, out, lse, backend="reference", **kw)
    got = chordlab.attention_backward(dout, q, k, v, out, lse, backend="cuda", **kw)
    for name, g, r, e in zip(("dq", "dk", "dv"), got, ref32, exact, strict=True):
        assert g.dtype == np.float32 and np.isfinite(g).all()
        assert np.abs(g - e).max() <= 2 * np.abs(r - e).max() + 1e-6, (name, shape, opts)
    if chordlab.get_backend("cuda-cpu").available():
        cpu = chordlab.attention_backward(dout, q, k, v, out, lse, backend="cuda-cpu", **kw)
        for g, c in zip(got, cpu, strict=True):
            np.testing.assert_allclose(g, c, rtol=1e-5, atol=1e-5)


def test_backward_refuses_options_it_does_not_take():
    q, k, v, _ = problem((1, 2, 2, 16, 16, 32), 0, None)
    out, lse = chordlab.attention(q, k, v, return_lse=True, backend="reference")
    with pytest.raises(ValueError, match="one float32 kernel pair"):
        chordlab.attention_backward(out, q, k, v, out, lse, backend="cuda", kernel="v3")
