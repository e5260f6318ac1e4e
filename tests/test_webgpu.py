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


# ----------------------------------------------------------------------------- long key lengths (issue 9)
# lavapipe's JIT stops every loop of a shader after 65535 iterations in all; without key chunks each kernel
# returned wrong, finite numbers from Lk ~ 512 (w1), 1024 (w2) or 4100 (w3) on. Shapes: few query rows and
# long, odd key lengths, so that the loop count is long while the work stays small (lavapipe is slow).

LONG_CASES = [  # (Lq, Lk, D, Hq, Hkv, mask layout, causal)
    (5, 4133, 256, 1, 1, "none", False),
    (3, 4099, 255, 2, 1, "none", True),
    (67, 4097, 64, 4, 2, "BHLqLk", False),
    (33, 5003, 128, 2, 2, "additive", True),
]


@pytest.mark.parametrize("kernel", w.KERNELS)
@pytest.mark.parametrize("case", LONG_CASES, ids=lambda c: f"Lq{c[0]}-Lk{c[1]}-D{c[2]}-{c[5]}-causal{c[6]}")
def test_long_key_lengths_and_large_head_dims_match_the_reference(kernel, case, rng):
    from helpers import random_mask

    Lq, Lk, D, Hq, Hkv, layout, causal = case
    q = rng.standard_normal((1, Hq, Lq, D)).astype(np.float32)
    k = rng.standard_normal((1, Hkv, Lk, D)).astype(np.float32)
    v = rng.standard_normal((1, Hkv, Lk, D)).astype(np.float32)
    mask = random_mask(rng, layout, 1, Hq, Lq, Lk, keep=0.9)
    assert_matches_reference(q, k, v, mask, causal, backend="webgpu", kernel=kernel)


def test_default_tiles_fit_every_head_dim():
    dev = w.gpu_device()
    for kernel in w.KERNELS:
        if kernel == "w3" and not dev.subgroups:
            continue
        for D in (1, 63, 64, 127, 128, 200, 256):
            assert w.wgsl_config(kernel, D, dev=dev).head_dim == D  # no refusal with default tiles


def _with_device(monkeypatch, **changes):
    import dataclasses

    dev = dataclasses.replace(w.gpu_device(), **changes)
    monkeypatch.setattr(w, "gpu_device", lambda: dev)
    return dev


def test_a_tight_loop_limit_gives_many_chunks_and_the_same_answer(monkeypatch, rng):
    _with_device(monkeypatch, loop_limit=4000)
    q = rng.standard_normal((2, 2, 19, 40)).astype(np.float32)
    k = rng.standard_normal((2, 1, 301, 40)).astype(np.float32)
    mask = rng.random((19, 301)) < 0.8
    for kernel in w.KERNELS:
        cfg = w.wgsl_config(kernel, 40, block_q=4 if kernel != "w1" else None, dev=w.gpu_device())
        assert len(w.key_chunks(cfg, 301, 4000)) >= 3
        assert_matches_reference(q, k, k, mask, True, backend="webgpu", kernel=kernel,
                                 block_q=4 if kernel != "w1" else None)


def test_a_shader_cut_short_by_the_driver_raises_instead_of_returning_numbers(monkeypatch, rng):
    """With chunking switched off, lavapipe's loop limit cuts the kernels short: the probe must catch it."""
    dev = w.gpu_device()
    if dev.loop_limit is None:
        pytest.skip(f"this adapter ({dev.describe()}) has no known loop limit to trip")
    _with_device(monkeypatch, loop_limit=None)
    q = rng.standard_normal((1, 1, 8, 64)).astype(np.float32)
    k = rng.standard_normal((1, 1, 6000, 64)).astype(np.float32)
    for kernel in w.KERNELS:
        with pytest.raises(RuntimeError, match="cut kernel .* loops short"):
            chordlab.attention(q, k, k, backend="webgpu", kernel=kernel)


def test_a_single_tile_over_the_loop_limit_is_refused(monkeypatch):
    _with_device(monkeypatch, loop_limit=2000)
    with pytest.raises(ValueError, match="loop iterations per invocation for a single key tile"):
        w.wgsl_config("w2", 64, block_q=16, block_k=32, dev=w.gpu_device())


def test_buffer_and_dispatch_limits_are_refused_before_running(monkeypatch, rng):
    dev = w.gpu_device()
    q = rng.standard_normal((1, 1, 300, 8)).astype(np.float32)
    _with_device(monkeypatch, limits={**dev.limits, "max-storage-buffer-binding-size": 4096})
    with pytest.raises(ValueError, match="q \\(and out\\) needs a buffer of 9600 bytes; this adapter binds at most"):
        chordlab.attention(q, q, q, backend="webgpu")
    mask = np.ones((300, 300), bool)
    _with_device(monkeypatch, limits={**dev.limits, "max-storage-buffer-binding-size": 100_000})
    with pytest.raises(ValueError, match="the mask \\(as float32\\) needs a buffer of 360000 bytes"):
        chordlab.attention(q, q, q, mask=mask, backend="webgpu")
    _with_device(monkeypatch, limits={**dev.limits, "max-compute-workgroups-per-dimension": 8})
    with pytest.raises(ValueError, match="needs 19 workgroups along one axis \\(query tiles\\); this adapter allows 8"):
        chordlab.attention(q, q, q, backend="webgpu", kernel="w2")
