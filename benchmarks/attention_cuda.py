"""CUDA attention benchmark (needs an NVIDIA GPU): every kernel version, and PyTorch's
scaled_dot_product_attention on the same GPU where torch with CUDA is installed.

    python benchmarks/attention_cuda.py [--quick]

Batch 1, 8 heads, head dim 64 and 128, seq 512..16384, causal and not. Inputs are uploaded once; each
launch is timed with CUDA events (median of repeats). TFLOP/s counts 4·B·H·N²·D (half when causal); the
ratio is torch's median over ours, measured in the same run. Every version's output is checked against the
NumPy reference (on a small size) before it is timed. The backward (cuda/flash_bwd.cu, both kernels) is timed
against torch's SDPA backward in float32 (TFLOP/s count 2.5x the forward's FLOPs, as FlashAttention's
benchmarks do). Writes benchmarks/out/attention_cuda.{md,json}; `make gpu-test` runs it, and
docs/gpu-results.md records a run with the device named.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import chordlab
from chordlab import step5_cuda

OUT = Path(__file__).resolve().parent / "out"
KERNELS = [("v1", None), ("v2", None), ("v3", None), ("v4", "fp16"), ("v4", "bf16")]


def torch_cuda():
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None, None
    return (torch, F) if torch.cuda.is_available() else (None, None)


def check(kernel, precision):
    r = np.random.default_rng(0)
    q, k, v = (r.standard_normal((1, 4, 200, 64)).astype(np.float32) for _ in range(3))
    want = chordlab.attention(q, k, v, causal=True, backend="reference")
    got = chordlab.attention(q, k, v, causal=True, backend="cuda", kernel=kernel, precision=precision)
    tol = 2e-5 if precision is None else 6e-2
    if not np.allclose(got, want, atol=tol, rtol=tol):
        raise SystemExit(f"{kernel}/{precision} disagrees with the reference: {np.abs(got - want).max():.3g}")


def time_backward(prob, repeats):
    """Milliseconds (median) of cuda/flash_bwd.cu's two kernels on problem ``prob`` (dQ, then dK and dV)."""
    drv = step5_cuda._import_driver()
    dev, ctx = step5_cuda._device_context()
    out, lse = chordlab.attention(prob.q, prob.k, prob.v, causal=prob.causal, backend="cuda", return_lse=True)
    dout = np.random.default_rng(1).standard_normal(out.shape).astype(np.float32)
    ins, grads, scalars = step5_cuda.backward_arguments(prob, out, lse, dout)
    ctx.push()
    try:
        major, minor = dev.compute_capability()
        _, k_dq, k_dkv = step5_cuda._gpu_backward(prob.head_dim, f"sm_{major}{minor}")
        bufs = [drv.to_device(a) for a in ins]
        outs = [drv.mem_alloc(g.nbytes) for g in grads]
        block = (step5_cuda.BACKWARD_THREADS, 1, 1)

        def launch():
            for kern, grid in zip((k_dq, k_dkv), step5_cuda.backward_grids(prob), strict=True):
                kern(*bufs, *outs, *scalars, block=block, grid=grid)
        launch()
        times = []
        for _ in range(repeats):
            start, end = drv.Event(), drv.Event()
            start.record()
            launch()
            end.record()
            end.synchronize()
            times.append(start.time_till(end))
        return statistics.median(times)
    finally:
        ctx.pop()


def time_torch_backward(torch, F, q, k, v, causal, repeats):
    tq, tk, tv = (torch.from_numpy(a).cuda().requires_grad_() for a in (q, k, v))
    out = F.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)
    dout = torch.randn_like(out)
    ts = []
    for n in range(repeats + 2):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        torch.autograd.grad(out, (tq, tk, tv), dout, retain_graph=True)
        e.record()
        torch.cuda.synchronize()
        if n >= 2:
            ts.append(s.elapsed_time(e))
    return statistics.median(ts)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args(argv)
    avail = chordlab.get_backend("cuda").available()
    if not avail:
        sys.exit(f"no GPU to benchmark on: {avail.reason}")
    dev, _ = step5_cuda._device_context()
    torch, F = torch_cuda()
    device = f"{dev.name()} (sm_{''.join(map(str, dev.compute_capability()))})"
    print(f"# {device}; torch {torch.__version__ if torch else 'not available with CUDA'}", flush=True)
    for kernel, precision in KERNELS:
        check(kernel, precision)
    seqs = [512, 2048] if args.quick else [512, 1024, 2048, 4096, 8192, 16384]
    rows = []
    r = np.random.default_rng(0)
    for D in (64, 128):
        for causal in (False, True):
            for N in seqs:
                q, k, v = (r.standard_normal((1, 8, N, D)).astype(np.float32) for _ in range(3))
                prob = chordlab.prepare(q, k, v, causal=causal)
                flops = prob.shape.flops(causal)
                times = {}
                for kernel, precision in KERNELS:
                    if kernel == "v1" and N > 4096:
                        continue  # one thread per row re-reads all of K and V: minutes at this size
                    run = step5_cuda.GpuLaunch(prob, step5_cuda.kernel_config(kernel, D), precision)
                    times[f"{kernel}" + (f"-{precision}" if precision else "")] = statistics.median(
                        run.time(args.repeats))
                    del run
                if torch is not None:
                    for dtype, label in ((torch.float32, "torch-fp32"), (torch.float16, "torch-fp16")):
                        tq, tk, tv = (torch.from_numpy(a).cuda().to(dtype) for a in (q, k, v))
                        for _ in range(2):
                            F.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)
                        ts = []
                        for _ in range(args.repeats):
                            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                            s.record()
                            F.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)
                            e.record()
                            torch.cuda.synchronize()
                            ts.append(s.elapsed_time(e))
                        times[label] = statistics.median(ts)
                base = times.get("torch-fp32")
                for name, ms in times.items():
                    rows.append(dict(head_dim=D, causal=causal, seq=N, impl=name, ms=ms, tflops=flops / ms / 1e9,
                                     vs_torch_fp32=(base / ms) if base else None))
                print(f"D={D} causal={causal!s:<5} N={N:<6} TFLOP/s: " +
                      "  ".join(f"{n}={flops / ms / 1e9:.2f}" for n, ms in times.items()), flush=True)
    back = []
    for D in (64, 128):
        for causal in (False, True):
            for N in [1024, 4096]:
                q, k, v = (r.standard_normal((1, 8, N, D)).astype(np.float32) for _ in range(3))
                prob = chordlab.prepare(q, k, v, causal=causal)
                flops = 2.5 * prob.shape.flops(causal)
                times = {"flash_bwd": time_backward(prob, args.repeats)}
                if torch is not None:
                    times["torch-fp32"] = time_torch_backward(torch, F, q, k, v, causal, args.repeats)
                for name, ms in times.items():
                    back.append(dict(head_dim=D, causal=causal, seq=N, impl=name, ms=ms, tflops=flops / ms / 1e9))
                print(f"backward D={D} causal={causal!s:<5} N={N:<6} TFLOP/s: " +
                      "  ".join(f"{n}={flops / ms / 1e9:.2f}" for n, ms in times.items()), flush=True)
    OUT.mkdir(exist_ok=True)
    meta = dict(device=device, date=time.strftime("%Y-%m-%d"), torch=torch.__version__ if torch else None)
    (OUT / "attention_cuda.json").write_text(json.dumps(dict(meta=meta, rows=rows, backward=back), indent=1))
    lines = [f"# CUDA attention benchmark on {device} ({meta['date']})", "",
             "Batch 1, 8 heads; TFLOP/s from CUDA-event medians; ratio = torch fp32 median / this median.", ""]
    for D in (64, 128):
        for causal in (False, True):
            sub = [x for x in rows if x["head_dim"] == D and x["causal"] == causal]
            impls = list(dict.fromkeys(x["impl"] for x in sub))
            lines += [f"## head dim {D}, {'causal' if causal else 'not causal'}", "",
                      "| N | " + " | ".join(impls) + " |", "|---|" + "---|" * len(impls)]
            for N in seqs:
                cells = []
                for impl in impls:
                    x = next((x for x in sub if x["seq"] == N and x["impl"] == impl), None)
                    ratio = f" ({x['vs_torch_fp32']:.2f}x)" if x and x["vs_torch_fp32"] else ""
                    cells.append(f"{x['tflops']:.2f}{ratio}" if x else "")
                lines.append(f"| {N} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += ["## backward (cuda/flash_bwd.cu: one thread per row, no tiles) against torch's SDPA backward, float32",
              "", "| head dim | causal | N | flash_bwd TFLOP/s | torch-fp32 TFLOP/s | torch / ours |",
              "|---|---|---|---|---|---|"]
    for x in (x for x in back if x["impl"] == "flash_bwd"):
        same = ("head_dim", "causal", "seq")
        t = next((y for y in back if y["impl"] == "torch-fp32" and all(y[c] == x[c] for c in same)), None)
        lines.append(f"| {x['head_dim']} | {x['causal']} | {x['seq']} | {x['tflops']:.3f} | "
                     f"{t['tflops']:.2f} | {x['ms'] / t['ms']:.1f}x |" if t else
                     f"| {x['head_dim']} | {x['causal']} | {x['seq']} | {x['tflops']:.3f} | | |")
    lines.append("")
    (OUT / "attention_cuda.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
