import numpy as np
import pytest

import chordlab


@pytest.mark.parametrize("kv_heads", [None, 2, 1])
def test_mha_same_output_on_every_backend(kv_heads):
    mha = chordlab.MultiHeadAttention(32, 4, kv_heads, seed=7, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((2, 13, 32))
    outs = {b: mha(x, causal=True, backend=b) for b in ("reference", "tiled")}
    assert outs["reference"].shape == (2, 13, 32)
    np.testing.assert_allclose(outs["tiled"], outs["reference"], rtol=1e-10, atol=1e-12)


def test_mha_matches_explicit_projections():
    mha = chordlab.MultiHeadAttention(16, 2, seed=3, dtype=np.float64)
    x = np.random.default_rng(1).standard_normal((5, 16))
    q = (x @ mha.w_q).reshape(5, 2, 8).transpose(1, 0, 2)
    k = (x @ mha.w_k).reshape(5, 2, 8).transpose(1, 0, 2)
    v = (x @ mha.w_v).reshape(5, 2, 8).transpose(1, 0, 2)
    o = chordlab.attention(q, k, v, backend="reference").transpose(1, 0, 2).reshape(5, 16)
    np.testing.assert_allclose(mha(x), o @ mha.w_o, rtol=1e-12)


def test_mha_seeded_and_validated():
    a, b = chordlab.MultiHeadAttention(8, 2, seed=1), chordlab.MultiHeadAttention(8, 2, seed=1)
    assert np.array_equal(a.w_q, b.w_q) and not np.array_equal(a.w_q, chordlab.MultiHeadAttention(8, 2).w_q)
    with pytest.raises(ValueError, match="multiple of num_heads"):
        chordlab.MultiHeadAttention(10, 3)
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        chordlab.MultiHeadAttention(8, 4, 3)
    with pytest.raises(ValueError, match="d_model=8"):
        a(np.zeros((3, 9), dtype=np.float32))
