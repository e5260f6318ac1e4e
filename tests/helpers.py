"""Shared test helpers: random problems and an independent, loop-based attention to check against."""

import numpy as np
from hypothesis import strategies as st

from chordlab.validation import causal_keep


def naive_attention(q, k, v, mask=None, causal=False, scale=None):
    """Per (batch, head) loop in float64, written without chordlab's code: the test oracle.

    q [B,Hq,Lq,D], k/v [B,Hkv,Lk,D], mask broadcastable to [B,Hq,Lq,Lk]. Returns (out, lse) in float64."""
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    scale = 1 / np.sqrt(D) if scale is None else scale
    out = np.zeros((B, Hq, Lq, D))
    lse = np.full((B, Hq, Lq), -np.inf)
    add = np.zeros((B, Hq, Lq, Lk))
    if mask is not None:
        m = np.broadcast_to(mask, (B, Hq, Lq, Lk))
        add = np.where(m, 0.0, -np.inf) if m.dtype == bool else m.astype(np.float64)
    if causal:
        add = np.where(causal_keep(0, Lq, 0, Lk, Lk - Lq), add, -np.inf)
    for b in range(B):
        for h in range(Hq):
            kv = h // (Hq // Hkv)
            s = scale * q[b, h] @ k[b, kv].T + add[b, h]
            for i in range(Lq):
                row = s[i]
                if np.all(np.isneginf(row)):
                    continue
                mx = row.max()
                e = np.exp(row - mx)
                out[b, h, i] = e @ v[b, kv] / e.sum()
                lse[b, h, i] = mx + np.log(e.sum())
    return out, lse


MASK_LAYOUTS = ["none", "LqLk", "B1LqLk", "BHLqLk", "additive"]


def random_mask(r, layout, B, H, Lq, Lk, keep=0.7, dtype=np.float32):
    """A mask in one of the library's layouts: bool [Lq, Lk], [B, 1, Lq, Lk], [B, H, Lq, Lk], an additive
    float [B, 1, Lq, Lk] with -inf where hidden, or None; ``keep`` is the fraction of visible keys."""
    if layout == "none":
        return None
    shape = {"LqLk": (Lq, Lk), "B1LqLk": (B, 1, Lq, Lk), "BHLqLk": (B, H, Lq, Lk), "additive": (B, 1, Lq, Lk)}[layout]
    visible = r.random(shape) < keep
    if layout == "additive":
        return np.where(visible, r.standard_normal(shape), -np.inf).astype(dtype)
    return visible


@st.composite
def problems(draw, max_len=40, max_d=24, dtypes=(np.float32, np.float64)):
    """A random attention problem: (q, k, v, mask, causal, dtype)."""
    B = draw(st.integers(1, 2))
    Hkv = draw(st.integers(1, 2))
    G = draw(st.sampled_from([1, 2, 3]))
    Lq = draw(st.integers(1, max_len))
    Lk = draw(st.integers(1, max_len))
    D = draw(st.integers(1, max_d))
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    seed = draw(st.integers(0, 2**31 - 1))
    r = np.random.default_rng(seed)
    q = r.standard_normal((B, Hkv * G, Lq, D)).astype(dtype)
    k = r.standard_normal((B, Hkv, Lk, D)).astype(dtype)
    v = r.standard_normal((B, Hkv, Lk, D)).astype(dtype)
    layout = draw(st.sampled_from(MASK_LAYOUTS))
    mask = random_mask(r, layout, B, Hkv * G, Lq, Lk, draw(st.sampled_from([0.2, 0.7, 1.0])), dtype)
    causal = draw(st.booleans())
    return q, k, v, mask, causal, dtype


def require_tool(tool: str, apt_package: str) -> str:
    """Path of ``tool``; otherwise skip with the install command (or fail in CI, where we are root and
    scripts/system-deps.sh should have installed it: a silent skip there would hide a broken set-up)."""
    import os
    import shutil

    import pytest

    path = shutil.which(tool)
    if path:
        return path
    msg = f"{tool} not found: install it with `sudo apt-get install {apt_package}` (or run `make system-deps` as root)"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


def require_backend(name: str, fix: str = "") -> None:
    """Skip (outside CI) or fail (in CI) when a backend is unavailable, with its reason."""
    import os

    import pytest

    import chordlab

    a = chordlab.get_backend(name).available()
    if not a:
        msg = f"backend {name!r} unavailable: {a.reason}" + (f"; {fix}" if fix else "")
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


@st.composite
def float32_problems(draw, head_dims, max_len, groups=(1, 2)):
    """(q, k, v, mask, causal): float32 inputs with GQA, any mask layout, lengths 1..max_len."""
    D = draw(st.sampled_from(head_dims))
    Lq, Lk = draw(st.integers(1, max_len)), draw(st.integers(1, max_len))
    B, Hkv, G = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.sampled_from(groups))
    r = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    q = r.standard_normal((B, Hkv * G, Lq, D)).astype(np.float32)
    k = r.standard_normal((B, Hkv, Lk, D)).astype(np.float32)
    v = r.standard_normal((B, Hkv, Lk, D)).astype(np.float32)
    mask = random_mask(r, draw(st.sampled_from(MASK_LAYOUTS)), B, Hkv * G, Lq, Lk,
                       draw(st.sampled_from([0.1, 0.7, 1.0])))
    return q, k, v, mask, draw(st.booleans())


def assert_matches_reference(q, k, v, mask, causal, rtol=2e-5, atol=2e-5, **attention_kwargs):
    """Out and lse of ``attention(..., **attention_kwargs)`` against the float64 reference."""
    import chordlab

    want, want_lse = chordlab.attention(*(a.astype(np.float64) for a in (q, k, v)), mask=mask, causal=causal,
                                        backend="reference", return_lse=True)
    out, lse = chordlab.attention(q, k, v, mask=mask, causal=causal, return_lse=True, **attention_kwargs)
    assert not np.isnan(out).any()
    np.testing.assert_allclose(out, want, rtol=rtol, atol=atol, err_msg=str(attention_kwargs))
    np.testing.assert_allclose(lse, want_lse, rtol=rtol, atol=atol, err_msg=str(attention_kwargs))
    return out, lse


def check_fully_masked_and_causal(rng, D=32, **attention_kwargs):
    """Causal with Lq > Lk (the first rows see no key) plus one masked-out row: zeros and lse -inf there."""
    q = rng.standard_normal((1, 2, 9, D)).astype(np.float32)
    k = rng.standard_normal((1, 1, 4, D)).astype(np.float32)
    mask = np.ones((9, 4), bool)
    mask[7] = False
    out, lse = assert_matches_reference(q, k, k, mask, True, **attention_kwargs)
    empty = [0, 1, 2, 3, 4, 7]
    assert np.all(out[:, :, empty] == 0) and np.all(np.isneginf(lse[:, :, empty]))
