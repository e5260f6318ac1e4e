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


@pytest.mark.parametrize("kv_heads,cross,causal", [(2, False, True), (1, True, False)])
def test_backward_gives_the_gradients_of_input_and_projections(kv_heads, cross, causal, rng):
    """Every entry of dx (dcontext), dWq, dWk, dWv and dWo against central finite differences, float64."""
    mha = chordlab.MultiHeadAttention(d_model=4, num_heads=2, num_kv_heads=kv_heads, seed=3, dtype=np.float64)
    x = rng.standard_normal((2, 3, 4))
    c = rng.standard_normal((2, 5, 4)) if cross else None
    dy = rng.standard_normal((2, 3, 4))
    mha(x, c, causal=causal)
    g = mha.backward(dy, backend="tiled")

    def numeric(array):
        out = np.zeros_like(array)
        for idx in np.ndindex(array.shape):
            array[idx] += 1e-6
            up = float((mha(x, c, causal=causal) * dy).sum())
            array[idx] -= 2e-6
            down = float((mha(x, c, causal=causal) * dy).sum())
            array[idx] += 1e-6
            out[idx] = (up - down) / 2e-6
        return out

    for name in ("w_q", "w_k", "w_v", "w_o"):
        np.testing.assert_allclose(getattr(g, name), numeric(getattr(mha, name)), rtol=1e-6, atol=1e-8, err_msg=name)
    np.testing.assert_allclose(g.dx, numeric(x), rtol=1e-6, atol=1e-8)
    if cross:
        np.testing.assert_allclose(g.dcontext, numeric(c), rtol=1e-6, atol=1e-8)
    else:
        assert g.dcontext is None


def test_backward_needs_a_forward_and_the_right_shape(rng):
    mha = chordlab.MultiHeadAttention(d_model=8, num_heads=2)
    with pytest.raises(RuntimeError, match="needs a forward"):
        mha.backward(np.zeros((3, 8)))
    mha(rng.standard_normal((3, 8)).astype(np.float32))
    with pytest.raises(ValueError, match=r"dy must have the shape of the last forward's output \(3, 8\)"):
        mha.backward(np.zeros((4, 8)))
    assert mha.backward(np.ones((3, 8))).dx.shape == (3, 8)
