"""Peers: the CPU attention that users would pick instead of chordlab, and the machine's sgemm as the limit.

Each peer is built for one shape, thread count and causal flag, and returned as a zero-argument callable (its
inputs already laid out as it wants them, outside the timing), with ``check()`` giving its output as
[B, H, N, D] for the agreement check the benchmark runs before timing. Optional: a peer whose package is not
installed (``pip install -e .[bench]``) is left out, with the reason.

* OpenVINO: the opset-13 ScaledDotProductAttention op on the CPU plugin, ``INFERENCE_PRECISION_HINT=f32``
  (on CPUs with avx512_bf16 it otherwise computes in bf16), ``INFERENCE_NUM_THREADS`` set.
* ONNX Runtime: ``com.microsoft.MultiHeadAttention`` (``unidirectional=1`` for causal), ``intra_op_num_threads``
  set and ``allow_spinning=0``: spinning workers would take the cores from whatever runs next.
* torch: ``scaled_dot_product_attention`` (OMP_WAIT_POLICY=PASSIVE must be set before torch loads, for the same
  reason; the benchmark sets it).
* sgemm: NumPy's float32 matmul 2048³ in a subprocess with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset (they
  pin an old, slower kernel on some machines here), reporting which OpenBLAS kernel ran (threadpoolctl).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class Peer:
    name: str
    run: Callable[[], object]
    check: Callable[[], np.ndarray]


def openvino_sdpa(q, k, v, causal: bool, threads: int, precision: str = "f32") -> Peer:
    """``precision``: OpenVINO's INFERENCE_PRECISION_HINT ("f32"; "bf16" computes in bfloat16 inside)."""
    import openvino as ov
    import openvino.opset13 as ops

    params = [ops.parameter(list(a.shape), np.float32, name=n) for a, n in zip((q, k, v), "qkv", strict=True)]
    sdpa = ops.scaled_dot_product_attention(*params, causal=causal)
    model = ov.Model([sdpa], params, "sdpa")
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision,
                                                      "INFERENCE_NUM_THREADS": threads,
                                                      "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    inputs = {0: q, 1: k, 2: v}

    def run():
        request.infer(inputs, share_inputs=True)
        return request.get_output_tensor(0).data

    return Peer("openvino-sdpa" + ("" if precision == "f32" else f"-{precision}"), run, lambda: np.array(run()))


def onnxruntime_mha(q, k, v, causal: bool, threads: int) -> Peer:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    B, H, N, D = q.shape
    Lk = k.shape[2]
    node = helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["out"], domain="com.microsoft", num_heads=H,
                            unidirectional=int(causal))
    graph = helper.make_graph([node], "mha",
                              [helper.make_tensor_value_info("q", TensorProto.FLOAT, [B, N, H * D]),
                               helper.make_tensor_value_info("k", TensorProto.FLOAT, [B, Lk, H * D]),
                               helper.make_tensor_value_info("v", TensorProto.FLOAT, [B, Lk, H * D])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [B, N, H * D])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)],
                              ir_version=9)  # onnx may write a newer IR than this onnxruntime reads
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    packed = {n: np.ascontiguousarray(a.transpose(0, 2, 1, 3).reshape(B, -1, H * D))
              for n, a in zip("qkv", (q, k, v), strict=True)}

    def run():
        return sess.run(None, packed)[0]

    return Peer("ort-mha", run, lambda: run().reshape(B, N, H, D).transpose(0, 2, 1, 3))


def torch_sdpa(q, k, v, causal: bool, threads: int) -> Peer:
    """float32 inputs, or bfloat16 ones (``ml_dtypes.bfloat16``: handed to torch as its bfloat16, bit for bit)."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    half = q.dtype != np.float32
    if half:
        tq, tk, tv = (torch.from_numpy(np.ascontiguousarray(a).view(np.int16)).view(torch.bfloat16) for a in (q, k, v))
    else:
        tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))

    def run():
        with torch.inference_mode():
            return F.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)

    return Peer("torch-sdpa" + ("-bf16" if half else ""), run, lambda: run().float().numpy())


PEERS = {"openvino-sdpa": openvino_sdpa, "ort-mha": onnxruntime_mha, "torch-sdpa": torch_sdpa}
MODULES = {"openvino-sdpa": "openvino", "ort-mha": "onnxruntime", "torch-sdpa": "torch"}


def available_peers() -> tuple[list[str], dict[str, str]]:
    """(names that import here, {name: why not} for the others)."""
    import importlib.util

    ok, missing = [], {}
    for name, module in MODULES.items():
        if importlib.util.find_spec(module) is None:
            missing[name] = f"{module} is not installed (pip install -e .[bench])"
        else:
            ok.append(name)
    return ok, missing


SGEMM_CHILD = r"""
import json, sys, time
import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits
n, threads = int(sys.argv[1]), int(sys.argv[2])
a, b = (np.random.default_rng(0).standard_normal((n, n), dtype=np.float32) for _ in range(2))
with threadpool_limits(threads):
    a @ b
    times = []
    for _ in range(7):
        t0 = time.perf_counter(); a @ b; times.append(time.perf_counter() - t0)
blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
info = blas[0] if blas else {}
print(json.dumps(dict(gflops=2 * n**3 / sorted(times)[3] / 1e9, threads=threads, n=n,
                      blas=info.get("internal_api"), kernel=info.get("architecture"), version=info.get("version"))))
"""


def sgemm_limit(threads: int, n: int = 2048) -> dict:
    """NumPy's sgemm n³ on ``threads`` threads, in a subprocess with the OPENBLAS_CORETYPE/L2_SIZE overrides
    removed; the median GFLOP/s and which BLAS kernel ran."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    r = subprocess.run([sys.executable, "-c", SGEMM_CHILD, str(n), str(threads)], env=env, capture_output=True,
                       text=True, timeout=600, check=True)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["unset"] = [k for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ]
    return out


@dataclass
class Standing:
    """Where the SIMD kernel stands on this machine: GFLOP/s of each contender and the sgemm limit."""

    shape: tuple[int, int, int, int]
    causal: bool
    threads: int
    gflops: dict[str, float]
    sgemm: dict
    missing: dict[str, str]


def standing(seq_len: int = 1024, head_dim: int = 64, heads: int = 8, *, causal: bool = False, threads: int = 1,
             repeats: int = 5, seed: int = 0) -> Standing:
    """Time chordlab's SIMD kernel against the installed peers (each checked first), interleaved, and measure
    the sgemm limit on the same threads. Missing peers are listed with the install command."""
    import chordlab

    from .timing import pinned_threads, time_interleaved
    from .validation import ProblemShape

    r = np.random.default_rng(seed)
    q, k, v = (r.standard_normal((1, heads, seq_len, head_dim)).astype(np.float32) for _ in range(3))
    want = chordlab.attention(q, k, v, causal=causal, backend="reference")
    names, missing = available_peers()
    fns = {"chordlab simd": lambda: chordlab.attention(q, k, v, causal=causal, backend="simd", threads=threads)}
    for name in names:
        peer = PEERS[name](q, k, v, causal, threads)
        err = float(np.abs(peer.check() - want).max())
        if not err < 1e-4:
            missing[name] = f"its output differs from the reference by {err:.3g}, so it is not timed"
            continue
        fns[name] = peer.run
    flops = ProblemShape.of(q.shape, k.shape).flops(causal)
    with pinned_threads(threads):
        t = time_interleaved(fns, repeats=repeats, warmup=1, min_seconds=0.3)
    return Standing((1, heads, seq_len, head_dim), causal, threads, {n: x.gflops(flops) for n, x in t.items()},
                    sgemm_limit(threads), missing)
