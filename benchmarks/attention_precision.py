"""What precision buys (chapter 12): the SIMD forward on bfloat16 and float16 inputs against its float32 self, and
against torch and OpenVINO computing in bfloat16, side by side in one process.

    pip install -e .[bench]
    python benchmarks/attention_precision.py            # N 2048 and 4096, D 64 and 128, 1 and 2 threads
    python benchmarks/attention_precision.py --quick    # N 2048, D 64

Contenders: chordlab on float32; on bfloat16 with the AVX512-BF16 dot products (vdpbf16ps, where the CPU has them)
and with the converted-tile path (float32 products); on float16 (converted tiles); torch's SDPA on bfloat16 tensors;
OpenVINO's SDPA with INFERENCE_PRECISION_HINT=bf16. Each is checked against the float64 reference first (on the same
bfloat16-rounded inputs for the 16-bit ones). Interleaved; OMP_WAIT_POLICY=PASSIVE. Goals (issue 15): bfloat16 >= 1.6x
our float32 at N >= 2048, D 64 and 128, 1 and 2 threads, on an AVX512-BF16 CPU; ahead of torch bf16 and OpenVINO
bf16. Writes benchmarks/out/attention_precision.{md,json}, named after the CPU.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402

import chordlab  # noqa: E402
from chordlab import peers, step4_simd, sysinfo  # noqa: E402
from chordlab.timing import pinned_threads, time_interleaved  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
HEADS = 8
BF16 = ml_dtypes.bfloat16


def contenders(x32, threads):
    xb = [a.astype(BF16) for a in x32]
    xh = [a.astype(np.float16) for a in x32]
    simd = dict(backend="simd", threads=threads)
    fns = {"chordlab float32": (lambda: chordlab.attention(*x32, **simd), x32),
           "chordlab bfloat16 (convert)": (lambda: chordlab.attention(*xb, half="convert", **simd), xb),
           "chordlab float16 (convert)": (lambda: chordlab.attention(*xh, **simd), xh)}
    if step4_simd.library().bf16_dot:
        fns["chordlab bfloat16 (vdpbf16ps)"] = (lambda: chordlab.attention(*xb, half="dot", **simd), xb)
    missing = {}
    for name, build, inputs in (("torch bfloat16", lambda: peers.torch_sdpa(*xb, False, threads), xb),
                                ("openvino bf16 hint", lambda: peers.openvino_sdpa(*x32, False, threads, "bf16"),
                                 xb)):
        try:
            peer = build()
        except ImportError as exc:
            missing[name] = str(exc)
            continue
        fns[name] = (peer.run, inputs, peer.check)
    return fns, missing


def check(fns):
    for name, entry in fns.items():
        exact = chordlab.attention(*(a.astype(np.float64) for a in entry[1]), backend="reference")
        got = entry[2]() if len(entry) > 2 else entry[0]()
        err = float(np.abs(np.asarray(got, np.float64) - exact).max())
        limit = 1e-4 if "float32" in name else 3e-2
        if not err < limit:
            raise SystemExit(f"{name} disagrees with the float64 reference: max error {err:.3g}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    seqs, dims = ([2048], [64]) if args.quick else ([2048, 4096], [64, 128])
    cpu = sysinfo.cpu_identity()
    meta = dict(date=time.strftime("%Y-%m-%d"), cpu=cpu.describe(), cpu_identity=dataclasses.asdict(cpu),
                bf16_dot=step4_simd.library().bf16_dot)
    print(f"# {meta['cpu']}\n# AVX512-BF16 dot products: {meta['bf16_dot']}", flush=True)
    rows, r, missing = [], np.random.default_rng(0), {}
    for D in dims:
        for threads in (1, 2):
            for N in seqs:
                x32 = [r.standard_normal((1, HEADS, N, D)).astype(np.float32) for _ in range(3)]
                with pinned_threads(threads):
                    fns, missing = contenders(x32, threads)
                    if N == seqs[0]:
                        small = [np.ascontiguousarray(a[:, :, :512]) for a in x32]
                        check(contenders(small, threads)[0])
                    t = time_interleaved({n: e[0] for n, e in fns.items()}, repeats=args.repeats, warmup=1,
                                         min_seconds=0.5)
                flops = 4.0 * HEADS * N * N * D
                g = {n: flops / x.median / 1e9 for n, x in t.items()}
                rows.append(dict(head_dim=D, threads=threads, seq=N, gflops=g))
                print(f"D={D} threads={threads} N={N}  " + "  ".join(f"{n}={v:.0f}" for n, v in g.items()), flush=True)
    best_bf16 = "chordlab bfloat16 (vdpbf16ps)" if meta["bf16_dot"] else "chordlab bfloat16 (convert)"
    speedup = min(x["gflops"][best_bf16] / x["gflops"]["chordlab float32"] for x in rows)
    lines = [f"# chordlab in bfloat16 and float16 ({meta['date']})", "",
             f"Machine: {meta['cpu']}. Batch 1, {HEADS} heads, not causal. GFLOP/s count 4·N²·D per head. AVX512-BF16 "
             f"dot products available: {'yes' if meta['bf16_dot'] else 'no'}.", "",
             "| goal | met | this run |", "|---|---|---|",
             f"| bfloat16 ≥ 1.6x our float32, N ≥ 2048, D 64 and 128, 1 and 2 threads | "
             f"{'yes' if speedup >= 1.6 else '**no**'} | worst {speedup:.2f}x ({best_bf16}) |"]
    for peer in ("torch bfloat16", "openvino bf16 hint"):
        if peer in missing:
            lines.append(f"| ahead of {peer} | n/a | {missing[peer]} |")
            continue
        ratio = min(x["gflops"][best_bf16] / x["gflops"][peer] for x in rows)
        lines.append(f"| ahead of {peer} | {'yes' if ratio >= 1 else '**no**'} | worst {ratio:.2f}x |")
    names = list(rows[0]["gflops"])
    lines += ["", "| D | threads | N | " + " | ".join(names) + " |", "|---" * (3 + len(names)) + "|"]
    lines += [f"| {x['head_dim']} | {x['threads']} | {x['seq']} | " + " | ".join(f"{x['gflops'][n]:.0f}" for n in names)
              + " |" for x in rows]
    md = "\n".join(lines) + "\n"
    OUT.mkdir(exist_ok=True)
    (OUT / "attention_precision.md").write_text(md)
    (OUT / "attention_precision.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    print()
    print(md)


if __name__ == "__main__":
    main()
