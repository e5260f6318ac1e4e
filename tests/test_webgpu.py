"""Step 8: the WGSL kernels, run for real through wgpu-py (on this machine: Mesa's lavapipe on the CPU),
against the NumPy reference; tile limits; the subgroup fallback; the adapter in `info`."""

import subprocess
import sys

import numpy as np
import pytest
from helpers import assert_matches_reference, check_fully_masked_and_causal, float32_problems, require_backend
from hypothesis import given, settings
from hypothesis import strategies as st

import chordlab
from chordlab import step8_webgpu as w


@pytest.fixture(scope="module", autouse=True)
def need_webgpu():
    require_backend("webgpu", "install Mesa's lavapipe (sudo apt-get install mesa-vulkan-drivers libvulkan1) and "
                              "pip install wgpu")


@st.composite
def webgpu_problems(draw):
    kernel = draw(st.sampled_from(w.KERNELS))
    q, k, v, mask, causal = draw(float32_problems([1, 5, 16, 32, 64, 80], 48))
    if kernel == "w1":
        blocks = (draw(st.sampled_from([None, 8, 64])), None)
    elif kernel == "w2":
        blocks = (draw(st.sampled_from([None, 4, 16])), draw(st.sampled_from([None, 8, 16])))
    else:
        blocks = (draw(st.sampled_from([None, 1, 4])), draw(st.sampled_from([None, 8, 16, 32])))
    return kernel, q, k, v, mask, causal, blocks


@settings(max_examples=30)
@given(webgpu_problems())
def test_wgsl_kernels_match_the_reference(prob):
    kernel, q, k, v, mask, causal, (bq, bk) = prob
    assert_matches_reference(q, k, v, mask, causal, backend="webgpu", kernel=kernel, block_q=bq, block_k=bk)


@pytest.mark.parametrize("kernel", w.KERNELS)
def test_fully_masked_rows_and_causal_lq_gt_lk(kernel, rng):
    check_fully_masked_and_causal(rng, D=16, backend="webgpu", kernel=kernel)


def test_tiles_that_do_not_fit_are_refused_with_both_numbers(rng):
    q = rng.standard_normal((1, 1, 8, 128)).astype(np.float32)
    limit = w.gpu_device().limits["max-compute-workgroup-storage-size"]
    with pytest.raises(ValueError, match=rf"needs 131072 bytes of workgroup memory; this adapter allows {limit}"):
        chordlab.attention(q, q, q, backend="webgpu", kernel="w2", block_k=128)
    with pytest.raises(ValueError, match="invocations per workgroup; this adapter allows"):
        chordlab.attention(q[..., :8], q[..., :8], q[..., :8], backend="webgpu", kernel="w2", block_q=4096)
    with pytest.raises(ValueError, match="w1 has no key tiles"):
        chordlab.attention(q, q, q, backend="webgpu", kernel="w1", block_k=8)
    with pytest.raises(ValueError, match="unknown kernel 'w9'"):
        chordlab.attention(q, q, q, backend="webgpu", kernel="w9")


def test_w3_falls_back_clearly_without_subgroups():
    dev = w.gpu_device()
    no_subgroups = w.GpuDevice(dev.adapter, dev.device, dev.info, dev.limits, subgroups=False)
    with pytest.raises(ValueError, match="lacks; use w2"):
        w.wgsl_config("w3", 64, dev=no_subgroups)
    assert w.wgsl_config("w2", 64, dev=no_subgroups).workgroup_bytes == 2 * 4 * 32 * 64


def test_info_names_the_adapter():
    r = subprocess.run([sys.executable, "-m", "chordlab", "info"], capture_output=True, text=True, check=True)
    assert "WebGPU (step 8)" in r.stdout
    assert w.gpu_device().info["device"] in r.stdout and "adapter type" in r.stdout
