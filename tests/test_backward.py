"""The backward pass (`chordlab.attention_backward`): a real gradient check by central finite differences in
float64, every backend with a backward against the reference's, FlashAttention's float32 rule, masked rows,
layouts, bad inputs and the memory budget."""

import numpy as np
import pytest
from helpers import problems
from hypothesis import given, settings
from hypothesis import strategies as st

import chordlab

BACKWARD_BACKENDS = ["reference", "tiled"]
SIMD_ISAS = [i.name for i in chordlab.step4_simd.library().isas() if i.supported]


def forward_and_grads(q, k, v, mask, causal, dout, **kw):
    out, lse = chordlab.attention(q, k, v, mask=mask, causal=causal, return_lse=True, backend="reference")
    return chordlab.attention_backward(dout, q, k, v, out, lse, mask=mask, causal=causal, **kw)


def numeric_grads(q, k, v, mask, causal, dout, eps=1e-6):
    """Central differences of L = sum(attention(q, k, v) * dout) for every entry of q, k and v."""
    def loss(qq, kk, vv):
        return float((chordlab.attention(qq, kk, vv, mask=mask, causal=causal, backend="reference") * dout).sum())

    grads = []
    for which in range(3):
        args = [q.copy(), k.copy(), v.copy()]
        g = np.zeros_like(args[which])
        for idx in np.ndindex(g.shape):
            args[which][idx] += eps
            up = loss(*args)
            args[which][idx] -= 2 * eps
            down = loss(*args)
            args[which][idx] += eps
            g[idx] = (up - down) / (2 * eps)
        grads.append(g)
    return grads


FD_CASES = [  # (B, Hq, Hkv, Lq, Lk, D, causal, mask kind)
    (1, 2, 1, 5, 7, 3, False, None),
    (1, 2, 2, 6, 4, 2, True, None),          # causal, Lq > Lk: the first rows see no key
    (2, 2, 1, 4, 6, 3, True, "bool"),        # causal, Lq < Lk, GQA, a bool mask
    (1, 1, 1, 5, 5, 4, False, "additive"),   # an additive float mask (gets no gradient)
]


@pytest.mark.parametrize("backend", BACKWARD_BACKENDS)
@pytest.mark.parametrize("case", FD_CASES, ids=str)
def test_gradients_match_central_finite_differences(backend, case, rng):
    B, Hq, Hkv, Lq, Lk, D, causal, kind = case
    q, k, v = (rng.standard_normal(s) for s in ((B, Hq, Lq, D), (B, Hkv, Lk, D), (B, Hkv, Lk, D)))
    mask = None
    if kind == "bool":
        mask = rng.random((B, 1, Lq, Lk)) < 0.7
    elif kind == "additive":
        mask = np.where(rng.random((Lq, Lk)) < 0.8, rng.standard_normal((Lq, Lk)), -np.inf)
    dout = rng.standard_normal((B, Hq, Lq, D))
    got = forward_and_grads(q, k, v, mask, causal, dout, backend=backend, **({"block_q": 2, "block_k": 3}
                                                                             if backend == "tiled" else {}))
    for name, g, want in zip(("dq", "dk", "dv"), got, numeric_grads(q, k, v, mask, causal, dout), strict=True):
        np.testing.assert_allclose(g, want, rtol=1e-6, atol=1e-8, err_msg=f"{name} ({backend}, {case})")


@settings(max_examples=40)
@given(problems(max_len=40, max_d=24, dtypes=(np.float64,)), st.integers(1, 9), st.integers(1, 9))
def test_tiled_backward_matches_the_reference(prob, bq, bk):
    q, k, v, mask, causal, _ = prob
    dout = np.random.default_rng(q.size).standard_normal(q.shape)
    want = forward_and_grads(q, k, v, mask, causal, dout, backend="reference")
    got = forward_and_grads(q, k, v, mask, causal, dout, backend="tiled", block_q=bq, block_k=bk)
    for name, g, w in zip(("dq", "dk", "dv"), got, want, strict=True):
        assert not np.isnan(g).any()
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-10, err_msg=name)


@pytest.mark.parametrize("shape", [(1, 4, 257, 64, 2, True), (2, 2, 130, 256, 1, False), (1, 3, 33, 1, 3, True)])
def test_float32_error_within_twice_the_float32_reference(shape, rng):
    """FlashAttention's rule: the float32 backend's error against float64 is at most 2x that of the float32
    reference, plus a small atol (1e-6)."""
    B, Hq, L, D, Hkv, causal = shape
    q64, k64, v64 = (rng.standard_normal(s) for s in ((B, Hq, L, D), (B, Hkv, L + 5, D), (B, Hkv, L + 5, D)))
    d64 = rng.standard_normal(q64.shape)
    exact = forward_and_grads(q64, k64, v64, None, causal, d64, backend="reference")
    q32, k32, v32, d32 = (a.astype(np.float32) for a in (q64, k64, v64, d64))
    out, lse = chordlab.attention(q32, k32, v32, causal=causal, return_lse=True, backend="reference")
    ref32 = chordlab.attention_backward(d32, q32, k32, v32, out, lse, causal=causal, backend="reference")
    cuda_cpu = [dict(backend="cuda-cpu")] if D <= 128 and chordlab.get_backend("cuda-cpu").available() else []
    for kw in [dict(backend="tiled", block_q=48, block_k=40)] + [
            dict(backend="simd", isa=isa, block_q=32, block_k=48) for isa in SIMD_ISAS] + cuda_cpu:
        got = chordlab.attention_backward(d32, q32, k32, v32, out, lse, causal=causal, **kw)
        for name, e, r, t in zip(("dq", "dk", "dv"), exact, ref32, got, strict=True):
            assert t.dtype == np.float32
            assert np.abs(t - e).max() <= 2 * np.abs(r - e).max() + 1e-6, (name, kw)


@pytest.mark.parametrize("backend", BACKWARD_BACKENDS)
def test_a_fully_masked_row_gives_zero_gradients_and_its_keys_get_nothing_from_it(backend, rng):
    q, k, v = (rng.standard_normal((1, 2, n, 8)) for n in (6, 5, 5))
    mask = np.ones((6, 5), bool)
    mask[2] = False
    dout = rng.standard_normal(q.shape)
    dq, dk, dv = forward_and_grads(q, k, v, mask, False, dout, backend=backend)
    assert np.all(dq[:, :, 2] == 0) and not np.isnan(dk).any()
    quiet = dout.copy()
    quiet[:, :, 2] = 0  # the masked row's gradient must not matter
    _, dk2, dv2 = forward_and_grads(q, k, v, mask, False, quiet, backend=backend)
    np.testing.assert_allclose(dk, dk2, atol=1e-12)
    np.testing.assert_allclose(dv, dv2, atol=1e-12)


def test_layouts_gqa_shapes_and_auto(rng):
    q, k = rng.standard_normal((6, 9, 4)).astype(np.float32), rng.standard_normal((2, 11, 4)).astype(np.float32)
    out, lse = chordlab.attention(q, k, k, return_lse=True)
    dq, dk, dv = chordlab.attention_backward(np.ones_like(out), q, k, k, out, lse)
    assert dq.shape == q.shape and dk.shape == dv.shape == k.shape and dq.dtype == np.float32
    q2 = q[0]
    out2, lse2 = chordlab.attention(q2, q2, q2, return_lse=True)
    assert [g.shape for g in chordlab.attention_backward(out2, q2, q2, q2, out2, lse2)] == [q2.shape] * 3
    p = chordlab.prepare(q, k, k)
    reasons = dict(chordlab.api.backward_backends(p))
    assert reasons["simd"] is None and reasons["webgpu"] == "has no backward pass yet"


def test_bad_inputs_get_clear_errors(rng):
    q = rng.standard_normal((1, 2, 8, 4))
    out, lse = chordlab.attention(q, q, q, return_lse=True)
    bw = chordlab.attention_backward
    with pytest.raises(ValueError, match=r"out must have shape \(1, 2, 8, 4\)"):
        bw(out, q, q, q, out[..., :3], lse)
    with pytest.raises(ValueError, match=r"lse must have shape \(1, 2, 8\)"):
        bw(out, q, q, q, out, lse[..., None])
    with pytest.raises(TypeError, match="dout must have q's dtype float64"):
        bw(out.astype(np.float32), q, q, q, out, lse)
    with pytest.raises(TypeError, match="lse must be a NumPy array"):
        bw(out, q, q, q, out, lse.tolist())
    with pytest.raises(NotImplementedError, match="backend 'webgpu' has no backward pass yet; backends with one"):
        bw(out.astype(np.float32), *(a.astype(np.float32) for a in (q, q, q, out, lse)), backend="webgpu")
    with pytest.raises(ValueError, match="not a tuning request"):
        bw(out, q, q, q, out, lse, backend="tiled", block_q="auto")
    with pytest.raises(ValueError, match="head dim D differs"):
        bw(out, q, q[..., :3], q[..., :3], out, lse)


def test_the_reference_refuses_past_the_memory_budget_and_tiled_does_not(rng):
    q = rng.standard_normal((1, 4, 1500, 16)).astype(np.float32)
    out, lse = chordlab.attention(q, q, q, return_lse=True, backend="tiled")
    with chordlab.memory_limit("40 MiB"):
        with pytest.raises(chordlab.MemoryBudgetError, match="the backward of backend 'reference'.*needs"):
            chordlab.attention_backward(out, q, q, q, out, lse, backend="reference")
        grads = chordlab.attention_backward(out, q, q, q, out, lse)  # auto passes over the reference
    assert all(g.shape == q.shape for g in grads)


def test_tiled_backward_memory_is_the_gradients_plus_tiles(rng):
    L, H, D = 2048, 2, 32
    q, k, v = (rng.standard_normal((1, H, L, D)).astype(np.float32) for _ in range(3))
    out, lse = chordlab.attention(q, k, v, return_lse=True, backend="tiled")
    _, peak = chordlab.measure_peak(chordlab.attention_backward, out, q, k, v, out, lse, backend="tiled")
    grads = 3 * q.nbytes
    scores = H * L * L * 4
    assert peak < grads + scores / 8, (peak, grads, scores)  # no N² intermediate


@settings(max_examples=40)
@given(problems(max_len=70, max_d=40, dtypes=(np.float32,)), st.sampled_from(SIMD_ISAS),
       st.sampled_from([(None, None), (8, 8), (16, 24), (5, 7), (64, 32)]), st.integers(1, 3))
def test_simd_backward_matches_the_float64_reference_on_every_isa(prob, isa, blocks, threads):
    q, k, v, mask, causal, _ = prob
    dout = np.random.default_rng(q.size).standard_normal(q.shape).astype(np.float32)
    out, lse = chordlab.attention(q, k, v, mask=mask, causal=causal, return_lse=True, backend="tiled")
    want = chordlab.attention_backward(*(a.astype(np.float64) for a in (dout, q, k, v, out, lse)), mask=mask,
                                       causal=causal, backend="reference")
    got = chordlab.attention_backward(dout, q, k, v, out, lse, mask=mask, causal=causal, backend="simd", isa=isa,
                                      block_q=blocks[0], block_k=blocks[1], threads=threads)
    for name, g, w in zip(("dq", "dk", "dv"), got, want, strict=True):
        assert g.dtype == np.float32 and not np.isnan(g).any()
        np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-5, err_msg=f"{name} on {isa}")


def test_simd_backward_is_bit_identical_for_any_thread_count(rng):
    q = rng.standard_normal((2, 4, 150, 48)).astype(np.float32)
    k, v = (rng.standard_normal((2, 2, 170, 48)).astype(np.float32) for _ in range(2))
    out, lse = chordlab.attention(q, k, v, causal=True, return_lse=True)
    dout = rng.standard_normal(q.shape).astype(np.float32)
    base = chordlab.attention_backward(dout, q, k, v, out, lse, causal=True, backend="simd", threads=1,
                                       block_q=32, block_k=32)
    for threads in (2, 3, 5):
        got = chordlab.attention_backward(dout, q, k, v, out, lse, causal=True, backend="simd", threads=threads,
                                          block_q=32, block_k=32)
        assert all(np.array_equal(a, b) for a, b in zip(got, base, strict=True)), threads


def test_simd_backward_at_long_lengths_and_the_largest_head_dims(rng):
    for L, D in ((2049, 64), (300, 256)):
        q, k, v = (rng.standard_normal((1, 2, L, D)).astype(np.float32) for _ in range(3))
        out, lse = chordlab.attention(q, k, v, causal=True, return_lse=True)
        dout = rng.standard_normal(q.shape).astype(np.float32)
        want = chordlab.attention_backward(dout, q, k, v, out, lse, causal=True, backend="tiled")
        got = chordlab.attention_backward(dout, q, k, v, out, lse, causal=True, backend="simd")
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-4)


def test_simd_backward_memory_is_the_gradients_plus_tiles(rng):
    L, H, D = 2048, 4, 64
    q, k, v = (rng.standard_normal((1, H, L, D)).astype(np.float32) for _ in range(3))
    out, lse = chordlab.attention(q, k, v, return_lse=True)
    _, peak = chordlab.measure_peak(chordlab.attention_backward, out, q, k, v, out, lse, backend="simd", threads=2)
    predicted = chordlab.api._backward_bytes(chordlab.get_backend("simd"), chordlab.prepare(q, k, v), None, None,
                                             {"threads": 2})
    grads = 3 * q.nbytes
    assert peak <= predicted * 1.1 + 64 * 1024, (peak, predicted)
    assert peak < grads + H * L * L * 4 / 16  # no N² intermediate
