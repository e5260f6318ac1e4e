"""The backward pass: chordlab's SIMD C backward against torch's CPU backward (autograd through
scaled_dot_product_attention), side by side in one process.

    pip install -e .[bench]
    python benchmarks/attention_backward.py            # N 512-4096, D 64 and 128, causal or not, 1 and 2 threads
    python benchmarks/attention_backward.py --quick    # N 1024, D 64

Both are checked against the float64 reference backward first. FLOPs: 2.5x the forward's (the backward
recomputes P and does five matrix products to the forward's two). Interleaved back to back, with
OMP_WAIT_POLICY=PASSIVE set before torch loads. Also the forward, to report the backward's throughput as a
share of it. Goals (issue 12): ≥ 1.5x torch at N ≥ 1024 on 1 and 2 threads; backward GFLOP/s ≥ 65% of the
forward's. Writes benchmarks/out/attention_backward.{md,json}, named after the CPU.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import chordlab  # noqa: E402
from chordlab import sysinfo  # noqa: E402
from chordlab.timing import pinned_threads, time_interleaved  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
HEADS = 8


def contenders(q, k, v, causal, threads, torch):
    out, lse = chordlab.attention(q, k, v, causal=causal, return_lse=True, backend="simd", threads=threads)
    dout = np.random.default_rng(1).standard_normal(q.shape).astype(np.float32)
    fns = {"chordlab forward": lambda: chordlab.attention(q, k, v, causal=causal, backend="simd", threads=threads),
           "chordlab backward": lambda: chordlab.attention_backward(dout, q, k, v, out, lse, causal=causal,
                                                                    backend="simd", threads=threads)}
    checks = {"chordlab backward": fns["chordlab backward"]}
    if torch is not None:
        torch.set_num_threads(threads)
        tq, tk, tv = (torch.from_numpy(a).requires_grad_() for a in (q, k, v))
        tout = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)
        grad = torch.from_numpy(dout)

        def torch_backward():
            return torch.autograd.grad(tout, (tq, tk, tv), grad, retain_graph=True)

        fns["torch backward"] = torch_backward
        checks["torch backward"] = lambda: [g.numpy() for g in torch_backward()]
    return fns, checks, (dout, out, lse)


def check(q, k, v, causal, threads, torch):
    small = [np.ascontiguousarray(a[:, :, :256]) for a in (q, k, v)]
    _, checks, (dout, out, lse) = contenders(*small, causal, threads, torch)
    want = chordlab.attention_backward(*(a.astype(np.float64) for a in (dout, *small, out, lse)), causal=causal,
                                       backend="reference")
    for name, fn in checks.items():
        err = max(float(np.abs(np.asarray(g, np.float64) - w).max()) for g, w in zip(fn(), want, strict=True))
        if not err < 1e-3:
            raise SystemExit(f"{name} disagrees with the float64 reference backward: max error {err:.3g}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    try:
        import torch
    except ImportError:
        torch = None
    seqs, dims = ([1024], [64]) if args.quick else ([512, 1024, 2048, 4096], [64, 128])
    cpu = sysinfo.cpu_identity()
    meta = dict(date=time.strftime("%Y-%m-%d"), cpu=cpu.describe(), cpu_identity=dataclasses.asdict(cpu),
                torch=torch.__version__ if torch else "not installed")
    print(f"# {meta['cpu']}\n# torch {meta['torch']}", flush=True)
    rows, r = [], np.random.default_rng(0)
    for D in dims:
        for causal in (False, True):
            for threads in (1, 2):
                for N in seqs:
                    q, k, v = (r.standard_normal((1, HEADS, N, D)).astype(np.float32) for _ in range(3))
                    flops = chordlab.ProblemShape.of(q.shape, k.shape).flops(causal)
                    with pinned_threads(threads):
                        if N == seqs[0]:
                            check(q, k, v, causal, threads, torch)
                        fns, _, _ = contenders(q, k, v, causal, threads, torch)
                        t = time_interleaved(fns, repeats=args.repeats, warmup=1, min_seconds=0.5)
                    g = {n: (2.5 if "backward" in n else 1.0) * flops / x.median / 1e9 for n, x in t.items()}
                    row = dict(head_dim=D, causal=causal, threads=threads, seq=N, gflops=g,
                               vs_torch=g["chordlab backward"] / g["torch backward"] if "torch backward" in g else None,
                               of_forward=g["chordlab backward"] / g["chordlab forward"])
                    rows.append(row)
                    print(f"D={D} causal={causal!s:<5} threads={threads} N={N:<5} "
                          + "  ".join(f"{n}={x:.0f}" for n, x in g.items())
                          + (f"  vs torch {row['vs_torch']:.2f}x" if row["vs_torch"] else "")
                          + f"  of forward {row['of_forward']:.0%}", flush=True)
    big = [x for x in rows if x["seq"] >= 1024]
    worst_torch = min((x["vs_torch"] for x in big if x["vs_torch"]), default=None)
    worst_fwd = min(x["of_forward"] for x in rows)
    lines = [f"# chordlab backward against torch ({meta['date']})", "", f"Machine: {meta['cpu']}. Batch 1, "
             f"{HEADS} heads, float32, torch {meta['torch']}. GFLOP/s count 2.5x the forward's FLOPs for a backward.",
             "", "| goal | met | this run |", "|---|---|---|",
             (f"| ≥ 1.5x torch at N ≥ 1024, 1 and 2 threads | {'yes' if worst_torch >= 1.5 else '**no**'} | "
              f"worst {worst_torch:.2f}x |") if worst_torch else "| ≥ 1.5x torch | n/a | torch not installed |",
             f"| backward ≥ 65% of the forward's GFLOP/s | {'yes' if worst_fwd >= 0.65 else '**no**'} | "
             f"worst {worst_fwd:.0%} |", "",
             "| D | causal | threads | N | forward | backward | torch backward | vs torch | of forward |",
             "|---|---|---|---|---|---|---|---|---|"]
    for x in rows:
        g = x["gflops"]
        lines.append(f"| {x['head_dim']} | {'yes' if x['causal'] else 'no'} | {x['threads']} | {x['seq']} | "
                     f"{g['chordlab forward']:.0f} | {g['chordlab backward']:.0f} | "
                     f"{g.get('torch backward', float('nan')):.0f} | "
                     f"{'-' if x['vs_torch'] is None else format(x['vs_torch'], '.2f') + 'x'} | "
                     f"{x['of_forward']:.0%} |")
    md = "\n".join(lines) + "\n"
    OUT.mkdir(exist_ok=True)
    (OUT / "attention_backward.md").write_text(md)
    (OUT / "attention_backward.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    print()
    print(md)


if __name__ == "__main__":
    main()
