"""The memory budget, the predictor, and the predictor against tracemalloc's measurement."""

import re

import numpy as np
import pytest

import chordlab
from chordlab.memory import format_bytes, parse_bytes


def test_reference_refuses_before_allocating_with_a_clear_message():
    q = np.zeros((1, 8, 65536, 64), dtype=np.float32)  # scores would be 128 GiB
    with pytest.raises(chordlab.MemoryBudgetError) as info:
        chordlab.attention(q, q, q, backend="reference")
    msg = str(info.value)
    assert re.search(r"needs 128\.\d\d GiB", msg) and "working memory 128.0" in msg
    assert "backend='tiled'" in msg and "set_memory_limit" in msg


def test_limit_can_be_raised_and_lowered():
    r = np.random.default_rng(0)
    q = r.standard_normal((1, 2, 256, 16)).astype(np.float32)
    with chordlab.memory_limit("64 KiB"):
        with pytest.raises(chordlab.MemoryBudgetError, match="memory limit of 64.00 KiB"):
            chordlab.attention(q, q, q, backend="reference")
        with pytest.raises(chordlab.MemoryBudgetError, match="smaller block sizes"):
            chordlab.attention(q, q, q, backend="tiled", block_q=256, block_k=256)
    chordlab.attention(q, q, q, backend="reference")  # restored


def test_auto_steps_around_a_backend_over_budget(monkeypatch):
    q = np.zeros((1, 1, 512, 8), dtype=np.float32)
    with chordlab.memory_limit("256 KiB"):
        p = chordlab.prepare(q, q, q)
        reasons = dict(chordlab.explain_auto(p))
        assert "over the memory limit" in reasons["reference"]
        assert chordlab.choose_backend(p).name != "reference"


@pytest.mark.parametrize("text,n", [("4096", 4096), ("512 MiB", 512 * 2**20), ("2G", 2 * 2**30), (10, 10)])
def test_parse_bytes(text, n):
    assert parse_bytes(text) == n


@pytest.mark.parametrize("bad", ["lots", "-3 MiB", 0, "1 parsec"])
def test_parse_bytes_rejects(bad):
    with pytest.raises(ValueError):
        parse_bytes(bad)


def test_format_bytes():
    assert format_bytes(3 * 2**30) == "3.00 GiB" and format_bytes(100) == "100 B"


@pytest.mark.parametrize("backend,kw", [("reference", {}), ("tiled", dict(block_q=64, block_k=128)),
                                        ("tiled", dict(block_q=32, block_k=32))])
@pytest.mark.parametrize("L,causal", [(512, False), (1024, False), (1024, True)])
def test_prediction_matches_tracemalloc(backend, kw, L, causal):
    r = np.random.default_rng(0)
    q, k, v = (r.standard_normal((1, 4, L, 32)).astype(np.float32) for _ in range(3))
    est = chordlab.predict_memory(backend, q.shape, k.shape, dtype=q.dtype, causal=causal, **kw)
    _, peak = chordlab.measure_peak(chordlab.attention, q, k, v, backend=backend, causal=causal,
                                    return_lse=True, **kw)
    # within 25% of the measured peak (plus a little for Python objects)
    assert est.total * 0.75 <= peak + 64 * 1024, (est, peak)
    assert peak <= est.total * 1.25 + 64 * 1024, (est, peak)


def test_tiled_memory_is_linear_reference_quadratic():
    pred = {b: [chordlab.predict_memory(b, (1, 8, L, 64), (1, 8, L, 64), **kw).extra for L in (1024, 4096)]
            for b, kw in (("reference", {}), ("tiled", dict(block_q=128, block_k=128)))}
    assert pred["reference"][1] / pred["reference"][0] == pytest.approx(16, rel=0.01)
    assert pred["tiled"][1] == pred["tiled"][0]  # the working set does not grow with L at all
