"""Chapter 2's building blocks: safe and streaming softmax, and the associative merge."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from chordlab import SoftmaxState, merge_states, online_softmax, softmax_naive, softmax_safe
from chordlab.step2_online_softmax import merge_all, online_softmax_state

rows = st.integers(1, 5).flatmap(lambda r: st.integers(1, 60).map(lambda n: (r, n)))


@given(rows, st.integers(1, 70), st.floats(0.1, 300), st.integers(0, 2**31 - 1))
def test_online_matches_safe_softmax(shape, chunk, spread, seed):
    x = np.random.default_rng(seed).standard_normal(shape) * spread
    np.testing.assert_allclose(online_softmax(x, chunk_size=chunk), softmax_safe(x), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(online_softmax(x, num_chunks=chunk), softmax_safe(x), rtol=1e-12, atol=1e-300)


@given(st.integers(2, 50), st.integers(0, 2**31 - 1), st.data())
def test_merge_is_associative_and_order_free(n, seed, data):
    x = np.random.default_rng(seed).standard_normal(n) * 20
    cuts = sorted(data.draw(st.lists(st.integers(1, n - 1), max_size=4, unique=True)))
    parts = [SoftmaxState.of(c) for c in np.split(x, cuts)]
    whole = SoftmaxState.of(x)
    for order in (parts, parts[::-1]):
        merged = merge_all(order)
        np.testing.assert_allclose(merged.lse, whole.lse, rtol=1e-12)
    if len(parts) >= 3:
        left = merge_states(merge_states(parts[0], parts[1]), parts[2])
        right = merge_states(parts[0], merge_states(parts[1], parts[2]))
        np.testing.assert_allclose(left.lse, right.lse, rtol=1e-12)


def test_naive_overflows_where_safe_does_not():
    x = np.array([[1000.0, 1001.0, 999.0]], dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        assert np.isnan(softmax_naive(x)).any()
    s = softmax_safe(x)
    assert np.isfinite(s).all() and s.sum() == pytest.approx(1.0)


def test_empty_state_is_identity_and_masked_rows_are_zero():
    x = np.array([[-np.inf, -np.inf, -np.inf], [0.0, 1.0, -np.inf]])
    out = online_softmax(x, chunk_size=1)
    np.testing.assert_array_equal(out[0], 0.0)
    np.testing.assert_allclose(out[1], softmax_safe(x[1:])[0])
    st_ = online_softmax_state(x, chunk_size=2)
    assert np.isneginf(st_.lse[0]) and np.isfinite(st_.lse[1])
    a = SoftmaxState.of(np.array([1.0, 2.0]))
    e = SoftmaxState.empty()
    assert merge_states(a, e).lse == pytest.approx(a.lse) == merge_states(e, a).lse


@pytest.mark.parametrize("kw", [dict(), dict(chunk_size=0), dict(num_chunks=0), dict(chunk_size=2, num_chunks=2)])
def test_bad_chunking(kw):
    with pytest.raises(ValueError):
        online_softmax(np.ones(4), **kw)
