"""Bad input gets a clear TypeError/ValueError naming the argument; edge sizes give sane results."""

import numpy as np
import pytest

import chordlab


def qkv(B=1, Hq=2, Hkv=2, Lq=4, Lk=5, D=8, dtype=np.float32):
    r = np.random.default_rng(0)
    return (r.standard_normal((B, Hq, Lq, D)).astype(dtype), r.standard_normal((B, Hkv, Lk, D)).astype(dtype),
            r.standard_normal((B, Hkv, Lk, D)).astype(dtype))


@pytest.mark.parametrize("dtype", [np.int32, np.complex64, np.int16, np.bool_])
def test_bad_dtypes(dtype):
    q, k, v = qkv()
    with pytest.raises(TypeError, match="q must be float32, float64, float16 or bfloat16"):
        chordlab.attention(q.astype(dtype), k, v)


def test_mixed_dtypes():
    q, k, v = qkv()
    with pytest.raises(TypeError, match="share one dtype"):
        chordlab.attention(q, k.astype(np.float64), v)


@pytest.mark.parametrize("change,match", [
    (lambda q, k, v: (q[..., :7], k, v), "head dim D differs"),
    (lambda q, k, v: (q, k, v[:, :, :4]), "k and v must have the same shape"),
    (lambda q, k, v: (q[:, :1], k, v), "multiple of key/value heads"),
    (lambda q, k, v: (q, k[:, :0], v[:, :0]), "multiple of key/value heads"),
    (lambda q, k, v: (np.concatenate([q, q]), k, v), "batch size differs"),
    (lambda q, k, v: (q[0], k, v), "same layout"),
    (lambda q, k, v: (q[..., :0], k[..., :0], v[..., :0]), "head dim D must be at least 1"),
    (lambda q, k, v: (q[None], k[None], v[None]), "must be 2-D"),
])
def test_bad_shapes(change, match):
    with pytest.raises(ValueError, match=match):
        chordlab.attention(*change(*qkv()))


def test_hq_not_multiple_of_hkv_message():
    q, k, v = qkv(Hq=3, Hkv=2)
    with pytest.raises(ValueError, match=r"Hq=3 must be a positive multiple of key/value heads Hkv=2"):
        chordlab.attention(q, k, v)


@pytest.mark.parametrize("mask,err,match", [
    (np.ones((4, 4), bool), ValueError, r"does not broadcast to \[B, Hq, Lq, Lk\] = \[1, 2, 4, 5\]"),
    (np.ones((1, 3, 4, 5), bool), ValueError, "does not broadcast"),
    (np.ones((4, 5), np.int64), TypeError, "mask must be bool"),
    (np.full((4, 5), np.nan), ValueError, "not NaN or \\+inf"),
    (np.full((4, 5), np.inf), ValueError, "not NaN or \\+inf"),
    (np.ones((1, 1, 1, 4, 5), bool), ValueError, "at most 4"),
])
def test_bad_masks(mask, err, match):
    with pytest.raises(err, match=match):
        chordlab.attention(*qkv(), mask=mask)


@pytest.mark.parametrize("bq,err", [(0, ValueError), (-4, ValueError), (2.5, TypeError), (True, TypeError),
                                    ("64", TypeError)])
def test_bad_block_sizes(bq, err):
    with pytest.raises(err, match="block_q must be a positive int"):
        chordlab.attention(*qkv(), backend="tiled", block_q=bq)
    with pytest.raises(err, match="block_k must be a positive int"):
        chordlab.attention(*qkv(), backend="tiled", block_k=bq)


def test_block_sizes_rejected_by_reference():
    with pytest.raises(ValueError, match="takes no block sizes"):
        chordlab.attention(*qkv(), backend="reference", block_q=4)


@pytest.mark.parametrize("scale,err", [(np.inf, ValueError), (np.nan, ValueError), ("1", TypeError),
                                       (True, TypeError)])
def test_bad_scale(scale, err):
    with pytest.raises(err, match="scale must be"):
        chordlab.attention(*qkv(), scale=scale)


def test_unknown_backend_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown backend 'flash'; choose one of: .*reference.*tiled"):
        chordlab.attention(*qkv(), backend="flash")


def test_causal_must_be_bool():
    with pytest.raises(TypeError, match="causal must be True or False"):
        chordlab.attention(*qkv(), causal="yes")


@pytest.mark.parametrize("backend", ["reference", "tiled", "auto"])
def test_zero_length_queries_give_empty_results(backend):
    q, k, v = qkv(Lq=0)
    out, lse = chordlab.attention(q, k, v, backend=backend, return_lse=True)
    assert out.shape == (1, 2, 0, 8) and lse.shape == (1, 2, 0) and out.dtype == np.float32


@pytest.mark.parametrize("backend", ["reference", "tiled"])
def test_zero_length_keys_give_zeros_and_neg_inf_lse(backend):
    q, k, v = qkv(Lk=0)
    out, lse = chordlab.attention(q, k, v, backend=backend, return_lse=True)
    assert out.shape == q.shape and np.all(out == 0) and np.all(np.isneginf(lse))


def test_empty_batch():
    q, k, v = qkv(B=0)
    assert chordlab.attention(q, k, v).shape == (0, 2, 4, 8)


def test_lists_are_accepted_as_arrays():
    q = [[1.0, 0.0], [0.0, 1.0]]
    out = chordlab.attention(q, q, q)
    assert out.shape == (2, 2) and out.dtype == np.float64
