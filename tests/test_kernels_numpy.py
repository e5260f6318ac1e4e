"""The NumPy backends (reference, tiled) against an independent loop-based oracle and each other."""

import numpy as np
import pytest
from conftest import TOL
from helpers import naive_attention, problems
from hypothesis import given
from hypothesis import strategies as st

import chordlab


@given(problems())
def test_reference_matches_naive_loops(prob):
    q, k, v, mask, causal, dtype = prob
    out, lse = chordlab.attention(q, k, v, mask=mask, causal=causal, backend="reference", return_lse=True)
    want, want_lse = naive_attention(q, k, v, mask, causal)
    assert out.dtype == dtype and lse.dtype == dtype
    assert not np.isnan(out).any()
    np.testing.assert_allclose(out, want, **TOL[dtype])
    np.testing.assert_allclose(lse, want_lse, **TOL[dtype])


@given(problems(max_len=70), st.integers(1, 33), st.integers(1, 33))
def test_tiled_matches_reference(prob, block_q, block_k):
    q, k, v, mask, causal, dtype = prob
    ref, ref_lse = chordlab.attention(q, k, v, mask=mask, causal=causal, backend="reference", return_lse=True)
    out, lse = chordlab.attention(q, k, v, mask=mask, causal=causal, backend="tiled",
                                  block_q=block_q, block_k=block_k, return_lse=True)
    assert out.dtype == dtype
    np.testing.assert_allclose(out, ref, **TOL[dtype])
    np.testing.assert_allclose(lse, ref_lse, **TOL[dtype])


@pytest.mark.parametrize("Lq,Lk", [(5, 5), (3, 8), (8, 3), (1, 9), (9, 1)])
@pytest.mark.parametrize("backend", ["reference", "tiled"])
def test_causal_is_bottom_right_aligned(rng, backend, Lq, Lk):
    q = rng.standard_normal((2, Lq, 4))
    k = rng.standard_normal((2, Lk, 4))
    v = rng.standard_normal((2, Lk, 4))
    explicit = np.tril(np.ones((Lq, Lk), dtype=bool), k=Lk - Lq)
    a, la = chordlab.attention(q, k, v, causal=True, backend=backend, block_q=2 if backend == "tiled" else None,
                               block_k=3 if backend == "tiled" else None, return_lse=True)
    b, lb = chordlab.attention(q, k, v, mask=explicit, backend="reference", return_lse=True)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(la, lb, rtol=1e-12)
    # the last query always sees every key
    assert explicit[-1].all() or Lq > Lk
    if Lq > Lk:  # the first Lq - Lk queries see no key at all: zeros, lse -inf
        assert np.all(a[:, : Lq - Lk] == 0) and np.all(np.isneginf(la[:, : Lq - Lk]))


@pytest.mark.parametrize("backend", ["reference", "tiled"])
def test_fully_masked_rows_give_zeros_not_nan(rng, backend):
    q, k, v = (rng.standard_normal((1, 2, 6, 8)).astype(np.float32) for _ in range(3))
    mask = np.ones((6, 6), dtype=bool)
    mask[2] = False
    out, lse = chordlab.attention(q, k, v, mask=mask, backend=backend, return_lse=True)
    assert not np.isnan(out).any()
    assert np.all(out[:, :, 2] == 0) and np.all(np.isneginf(lse[:, :, 2]))
    assert np.all(np.isfinite(lse[:, :, [0, 1, 3, 4, 5]]))
    additive = np.where(mask, 0.0, -np.inf)
    out2 = chordlab.attention(q, k, v, mask=additive, backend=backend)
    np.testing.assert_allclose(out2, out, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", ["reference", "tiled"])
def test_layouts_2d_3d_4d_agree(rng, backend):
    q, k, v = (rng.standard_normal((3, 10, 5)) for _ in range(3))
    out3, lse3 = chordlab.attention(q, k, v, backend=backend, return_lse=True)
    out4, lse4 = chordlab.attention(q[None], k[None], v[None], backend=backend, return_lse=True)
    out2, lse2 = chordlab.attention(q[0], k[0], v[0], backend=backend, return_lse=True)
    assert out3.shape == (3, 10, 5) and lse3.shape == (3, 10) and out2.shape == (10, 5) and lse2.shape == (10,)
    np.testing.assert_allclose(out4[0], out3, rtol=1e-12)
    np.testing.assert_allclose(out2, out3[0], rtol=1e-12)


@pytest.mark.parametrize("backend", ["reference", "tiled"])
def test_gqa_equals_repeated_kv_heads(rng, backend):
    q = rng.standard_normal((2, 6, 9, 8))
    k = rng.standard_normal((2, 2, 11, 8))
    v = rng.standard_normal((2, 2, 11, 8))
    out = chordlab.attention(q, k, v, backend=backend)
    rep = chordlab.attention(q, np.repeat(k, 3, axis=1), np.repeat(v, 3, axis=1), backend="reference")
    np.testing.assert_allclose(out, rep, rtol=1e-12, atol=1e-12)
    mqa = chordlab.attention(q, k[:, :1], v[:, :1], backend=backend)  # multi-query: one kv head
    np.testing.assert_allclose(mqa, chordlab.attention(q, np.repeat(k[:, :1], 6, 1), np.repeat(v[:, :1], 6, 1),
                                                       backend="reference"), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["reference", "tiled"])
def test_non_contiguous_and_fortran_inputs(rng, backend):
    base = rng.standard_normal((2, 3, 12, 16))
    q = base[:, :, ::2, :8]  # strided view
    k = np.asfortranarray(rng.standard_normal((2, 3, 6, 8)))
    v = rng.standard_normal((2, 3, 8, 6)).swapaxes(-1, -2)  # transposed view
    got = chordlab.attention(q, k, v, backend=backend)
    want = chordlab.attention(*(np.ascontiguousarray(a) for a in (q, k, v)), backend="reference")
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_uniform_attention_and_single_key(rng):
    q = rng.standard_normal((4, 3))
    v = rng.standard_normal((5, 3))
    out = chordlab.attention(q, np.zeros((5, 3)), v)  # equal scores: the mean of v
    np.testing.assert_allclose(out, np.broadcast_to(v.mean(0), (4, 3)), rtol=1e-12)
    out1 = chordlab.attention(q, rng.standard_normal((1, 3)), v[:1])
    np.testing.assert_allclose(out1, np.broadcast_to(v[0], (4, 3)), rtol=1e-12)


def test_extreme_scores_do_not_overflow(rng):
    q = rng.standard_normal((8, 4)).astype(np.float32) * 100
    k = rng.standard_normal((8, 4)).astype(np.float32) * 100
    v = rng.standard_normal((8, 4)).astype(np.float32)
    want, _ = naive_attention(q[None, None], k[None, None], v[None, None])
    for backend in ("reference", "tiled"):
        out = chordlab.attention(q, k, v, backend=backend, block_q=3 if backend == "tiled" else None,
                                 block_k=3 if backend == "tiled" else None)
        assert np.isfinite(out).all()
        np.testing.assert_allclose(out, want[0, 0], rtol=1e-4, atol=1e-4)


def test_auto_picks_tiled_and_explains(rng):
    q = rng.standard_normal((4, 8)).astype(np.float32)
    p = chordlab.prepare(q, q, q)
    assert chordlab.choose_backend(p).name not in ("reference",)
    reasons = dict(chordlab.explain_auto(p, block_q=4))
    assert reasons["reference"] == "takes no block sizes"
