"""Step 5 without a GPU: the CUDA kernels v1-v3, compiled as OpenCL C from the same .cu files through
cuda/cuda_compat.h, run on the CPU by PoCL and checked against the NumPy reference."""

import numpy as np
import pytest
from helpers import assert_matches_reference, check_fully_masked_and_causal, float32_problems, require_backend
from hypothesis import given, settings
from hypothesis import strategies as st

import chordlab
from chordlab import step5_cuda


@pytest.fixture(scope="module", autouse=True)
def need_opencl():
    require_backend("cuda-cpu")


@st.composite
def cuda_problems(draw):
    """Shapes, masks, causal, GQA, head dims (32, 64, 80, 96, 128 and odd ones) and per-version blocks."""
    kernel = draw(st.sampled_from(["v1", "v2", "v3"]))
    q, k, v, mask, causal = draw(float32_problems([1, 7, 32, 64, 80, 96, 128], 70, groups=(1, 3)))
    D = q.shape[-1]
    if kernel == "v1":
        blocks = (draw(st.sampled_from([None, 32, 64])), None)
    elif kernel == "v2":
        dq, dk = step5_cuda.default_blocks("v2", D)
        blocks = draw(st.sampled_from([(None, None), (16, 8), (min(32, dq), min(16, dk))]))
    else:
        blocks = (draw(st.sampled_from([None, 4, 8, 16])), None)
    return kernel, q, k, v, mask, causal, blocks


@settings(max_examples=40)
@given(cuda_problems())
def test_v1_v3_on_the_cpu_match_the_reference(prob):
    kernel, q, k, v, mask, causal, (bq, bk) = prob
    assert_matches_reference(q, k, v, mask, causal, backend="cuda-cpu", kernel=kernel, block_q=bq, block_k=bk)


@pytest.mark.parametrize("kernel", ["v1", "v2", "v3"])
def test_fully_masked_rows_and_causal_lq_gt_lk(kernel, rng):
    check_fully_masked_and_causal(rng, backend="cuda-cpu", kernel=kernel)


@pytest.mark.parametrize("kernel,kw,match", [
    ("v1", dict(block_k=16), "v1 has no key tiles"),
    ("v3", dict(block_k=16), "block_k must be the warp size"),
    ("v3", dict(block_q=6), "multiple of 4"),
    ("v2", dict(block_q=128, block_k=128), "bytes of shared memory per block, over the 49152-byte limit"),
    ("v4", {}, "runs on an NVIDIA GPU only"),
    ("v9", {}, "unknown kernel 'v9'"),
])
def test_bad_kernel_requests_are_refused_before_compiling(kernel, kw, match, rng):
    q = rng.standard_normal((1, 1, 8, 64)).astype(np.float32)
    with pytest.raises(ValueError, match=match):
        chordlab.attention(q, q, q, backend="cuda-cpu", kernel=kernel, **kw)


def test_head_dim_limit_and_dtype(rng):
    q = rng.standard_normal((4, 130)).astype(np.float32)
    with pytest.raises(TypeError, match="head dims up to 128"):
        chordlab.attention(q, q, q, backend="cuda-cpu")
    with pytest.raises(TypeError, match="float32, not float64"):
        chordlab.attention(q[:, :8].astype(np.float64), q[:, :8].astype(np.float64), q[:, :8].astype(np.float64),
                           backend="cuda-cpu")


def test_v4_config_rules():
    with pytest.raises(ValueError, match="multiple of 16"):
        step5_cuda.kernel_config("v4", 72)
    with pytest.raises(ValueError, match="block_q must be 16, 32"):
        step5_cuda.kernel_config("v4", 64, block_q=24)


def test_bf16_round_trip():
    x = np.array([1.0, -2.5, 3.14159, 1e-3, 65504.0], dtype=np.float32)
    y = step5_cuda.from_bf16_bits(step5_cuda.to_bf16_bits(x))
    np.testing.assert_allclose(y, x, rtol=2**-8)
    assert step5_cuda.from_bf16_bits(step5_cuda.to_bf16_bits(np.float32([1.0])))[0] == 1.0
