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


# ------------------------------------------------------------------ choosing the CPU OpenCL on purpose (issue 9)

@pytest.fixture
def fresh_probe():
    """Run the once-per-process OpenCL probe again, before and after the test."""
    step5_cuda._opencl_context.cache_clear()
    step5_cuda._opencl_kernel.cache_clear()
    yield
    step5_cuda._opencl_context.cache_clear()
    step5_cuda._opencl_kernel.cache_clear()


def test_the_chosen_opencl_device_passed_the_probe():
    choice = step5_cuda.opencl_choice()
    assert choice.device and choice.platform
    assert all(":" in r for r in choice.rejected)  # each device passed over says why


def test_a_failing_probe_makes_the_backend_unavailable_everywhere_with_reason_and_fix(monkeypatch, fresh_probe):
    """As on Zen 5 with the wheel's PoCL (LLVM 14): every build fails with "unknown target CPU 'generic'"."""
    from chordlab import tuning, widgets

    def broken(device):
        raise RuntimeError("clBuildProgram failed:\n\nerror: unknown target CPU 'generic'\n")

    monkeypatch.setattr(step5_cuda, "probe_device", broken)
    a = chordlab.get_backend("cuda-cpu").available()
    assert not a
    assert "unknown target CPU 'generic'" in a.reason and "pocl-opencl-icd" in a.reason
    row = next(r for r in chordlab.backends() if r.name == "cuda-cpu")
    assert not row.available and "pocl-opencl-icd" in str(chordlab.backends())
    q = np.ones((1, 1, 8, 8), np.float32)
    p = chordlab.prepare(q, q, q)
    reasons = dict(chordlab.explain_auto(p, kernel="v3"))
    assert "unknown target CPU" in reasons["cuda-cpu"]
    assert chordlab.choose_backend(p, kernel="v3").name != "cuda-cpu"
    assert "cuda-cpu" not in widgets.tunable_backends()
    with pytest.raises(RuntimeError, match="cuda-cpu.*unavailable.*unknown target CPU"):
        tuning.sweep("cuda-cpu", (1, 1, 16, 8), [8], [8], repeats=1, progress=False)
    with pytest.raises(RuntimeError, match="unavailable.*pocl-opencl-icd"):
        chordlab.attention(q, q, q, backend="cuda-cpu")


def test_a_run_time_failure_is_a_chordlab_error_naming_the_backend(monkeypatch):
    import pyopencl as cl

    def fails(ctx, cfg):
        return cl.Program(ctx, "__kernel void f() { this is not C; }").build()

    monkeypatch.setattr(step5_cuda, "_opencl_kernel", fails)
    q = np.ones((1, 1, 8, 8), np.float32)
    with pytest.raises(chordlab.BackendError) as info:
        chordlab.attention(q, q, q, backend="cuda-cpu")
    text = str(info.value)
    assert text.startswith("backend 'cuda-cpu' failed while running: error:") and "backend='simd'" in text
    assert "_ErrorRecord" not in text and "0x" not in text
    assert isinstance(info.value.original, cl.Error)


def test_long_key_lengths_on_the_cpu_opencl(rng):
    q = rng.standard_normal((1, 2, 9, 128)).astype(np.float32)
    k = rng.standard_normal((1, 1, 4133, 128)).astype(np.float32)
    for kernel in ("v1", "v2", "v3"):
        assert_matches_reference(q, k, k, None, True, backend="cuda-cpu", kernel=kernel)


@settings(max_examples=25)
@given(float32_problems([1, 7, 32, 64, 80, 128], 50, groups=(1, 3)))
def test_the_cuda_backward_on_the_cpu_matches_the_float64_reference(prob):
    """cuda/flash_bwd.cu through the same mapping header as v1-v3, against the reference backward."""
    q, k, v, mask, causal = prob
    dout = np.random.default_rng(q.size).standard_normal(q.shape).astype(np.float32)
    out, lse = chordlab.attention(q, k, v, mask=mask, causal=causal, return_lse=True, backend="tiled")
    want = chordlab.attention_backward(*(a.astype(np.float64) for a in (dout, q, k, v, out, lse)), mask=mask,
                                       causal=causal, backend="reference")
    got = chordlab.attention_backward(dout, q, k, v, out, lse, mask=mask, causal=causal, backend="cuda-cpu")
    for name, g, w in zip(("dq", "dk", "dv"), got, want, strict=True):
        assert not np.isnan(g).any()
        np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-5, err_msg=name)


def test_the_cuda_backward_takes_no_tiles_or_kernel_choice(rng):
    q = rng.standard_normal((1, 1, 8, 8)).astype(np.float32)
    out, lse = chordlab.attention(q, q, q, return_lse=True)
    with pytest.raises(ValueError, match="one kernel pair"):
        chordlab.attention_backward(out, q, q, q, out, lse, backend="cuda-cpu", kernel="v2")
