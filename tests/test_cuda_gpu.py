"""On a real NVIDIA GPU (`make gpu-test`): every kernel version against the NumPy reference, with masks, GQA,
causal, tails and the fp16/bf16 tolerances of v4. Skipped, with the reason, where there is no GPU."""

import numpy as np
import pytest

import chordlab
from chordlab import step5_cuda

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not chordlab.get_backend("cuda").available(),
                                                  reason=f"cuda: {chordlab.get_backend('cuda').available().reason}")]
TOL = {"v1": 2e-5, "v2": 2e-5, "v3": 2e-5, ("v4", "fp16"): 2e-2, ("v4", "bf16"): 6e-2}
SHAPES = [(1, 8, 8, 256, 256, 64), (2, 6, 2, 100, 130, 80), (1, 4, 1, 37, 300, 128), (2, 2, 2, 1, 17, 32),
          (1, 4, 4, 513, 513, 96)]


def problem(shape, seed, layout):
    B, Hq, Hkv, Lq, Lk, D = shape
    r = np.random.default_rng(seed)
    q = r.standard_normal((B, Hq, Lq, D)).astype(np.float32)
    k = r.standard_normal((B, Hkv, Lk, D)).astype(np.float32)
    v = r.standard_normal((B, Hkv, Lk, D)).astype(np.float32)
    mask = None
    if layout == "bool":
        mask = r.random((B, 1, Lq, Lk)) < 0.7
    elif layout == "additive":
        mask = np.where(r.random((Lq, Lk)) < 0.8, r.standard_normal((Lq, Lk)), -np.inf).astype(np.float32)
    return q, k, v, mask


@pytest.mark.parametrize("layout", [None, "bool", "additive"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kernel", ["v1", "v2", "v3", ("v4", "fp16"), ("v4", "bf16")])
def test_kernels_on_the_gpu(kernel, causal, layout):
    name, precision = kernel if isinstance(kernel, tuple) else (kernel, None)
    for n, shape in enumerate(SHAPES):
        q, k, v, mask = problem(shape, n, layout)
        if precision:  # compare with the reference on the inputs rounded to 16 bits, as the kernel sees them
            rnd = (lambda a: a.astype(np.float16).astype(np.float32)) if precision == "fp16" else \
                (lambda a: step5_cuda.from_bf16_bits(step5_cuda.to_bf16_bits(a)))
            qr, kr, vr = rnd(q), rnd(k), rnd(v)
        else:
            qr, kr, vr = q, k, v
        want, want_lse = chordlab.attention(*(a.astype(np.float64) for a in (qr, kr, vr)), mask=mask, causal=causal,
                                            backend="reference", return_lse=True)
        out, lse = chordlab.attention(q, k, v, mask=mask, causal=causal, backend="cuda", kernel=name,
                                      precision=precision, return_lse=True)
        tol = TOL[kernel]
        np.testing.assert_allclose(out, want, rtol=tol, atol=tol, err_msg=f"{kernel} {shape}")
        np.testing.assert_allclose(lse, want_lse, rtol=tol, atol=tol, err_msg=f"{kernel} {shape}")


def test_cpu_path_and_gpu_agree():
    q, k, v, mask = problem((1, 4, 2, 70, 90, 64), 7, "bool")
    for kernel in ("v1", "v2", "v3"):
        a = chordlab.attention(q, k, v, mask=mask, causal=True, backend="cuda", kernel=kernel)
        b = chordlab.attention(q, k, v, mask=mask, causal=True, backend="cuda-cpu", kernel=kernel)
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)
