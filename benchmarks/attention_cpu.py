"""CPU attention benchmark: every SIMD ISA path, NumPy tiled and reference, and PyTorch SDPA, side by side.

    python benchmarks/attention_cpu.py            # the full grid (several minutes on 2 cores)
    python benchmarks/attention_cpu.py --quick    # a small grid, for a smoke run

Batch 1, 8 heads, head dim 64 and 128, seq 256..4096, causal and not, 1 and 2 threads. Each configuration
times every implementation interleaved (chordlab.timing), reports the median, GFLOP/s (4·B·H·N²·D FLOPs,
half when causal) and the ratio to torch's ``scaled_dot_product_attention`` measured in the same run. BLAS
and torch threads are pinned to the same count as the C kernels. Peak memory is measured in a fresh process
per (backend, N) as the increase of the peak resident set (VmHWM), up to N = 8192. Also the seed's own design
(algorithm="rowwise") against the blocked kernel per ISA, and micro-benchmarks of the primitives per ISA (the
seed's table: dot and weighted add at head_dim 64).

Writes benchmarks/out/attention_cpu.{md,json} and plots (speed, ratio to torch, memory, primitives).
torch is optional (``pip install -e .[bench]``); without it the torch columns are left out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import chordlab
from chordlab import step4_simd, sysinfo
from chordlab.timing import pinned_threads, time_interleaved

OUT = Path(__file__).resolve().parent / "out"
HEADS = 8


def try_torch():
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None, None
    return torch, F


def implementations(q, k, v, causal, threads, seq, torch, F):
    """name -> zero-argument callable computing attention on the prepared inputs."""
    lib = step4_simd.library()
    fns = {}
    for info in lib.isas():
        if info.supported and (info.name != "scalar" or seq <= 1024):  # scalar is slow: small sizes only
            fns[f"simd-{info.name}"] = (lambda isa=info.name: chordlab.attention(
                q, k, v, causal=causal, backend="simd", isa=isa, threads=threads))
    fns["tiled"] = lambda: chordlab.attention(q, k, v, causal=causal, backend="tiled")
    if seq <= 2048:
        fns["reference"] = lambda: chordlab.attention(q, k, v, causal=causal, backend="reference")
    if torch is not None:
        tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))

        def sdpa():
            with torch.inference_mode():
                return F.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)

        fns["torch-sdpa"] = sdpa
    return fns


def check_agreement(fns, q, k, v, causal):
    """Every implementation must give the reference's answer before its time counts."""
    want = chordlab.attention(q[:, :, :256], k[:, :, :256], v[:, :, :256], causal=causal, backend="tiled")
    small = {n: f for n, f in implementations(q[:, :, :256].copy(), k[:, :, :256].copy(), v[:, :, :256].copy(),
                                              causal, 1, 256, *try_torch()).items() if n in fns}
    for name, fn in small.items():
        got = np.asarray(fn())
        if not np.allclose(got, want, atol=1e-4, rtol=1e-4):
            raise SystemExit(f"{name} disagrees with the reference: max error {np.abs(got - want).max():.3g}")


def speed_grid(seqs, dims, threads_list, causals, repeats):
    torch, F = try_torch()
    rows = []
    r = np.random.default_rng(0)
    for D in dims:
        for causal in causals:
            for threads in threads_list:
                for N in seqs:
                    q, k, v = (r.standard_normal((1, HEADS, N, D)).astype(np.float32) for _ in range(3))
                    flops = chordlab.ProblemShape.of(q.shape, k.shape).flops(causal)
                    with pinned_threads(threads):
                        fns = implementations(q, k, v, causal, threads, N, torch, F)
                        if N == seqs[0]:
                            check_agreement(fns, q, k, v, causal)
                        reps = repeats if N <= 2048 else max(3, repeats // 2)
                        timings = time_interleaved(fns, repeats=reps, warmup=1, min_seconds=0.3)
                    base = timings.get("torch-sdpa")
                    for name, t in timings.items():
                        rows.append(dict(head_dim=D, causal=causal, threads=threads, seq=N, impl=name,
                                         median_ms=t.median * 1e3, best_ms=t.best * 1e3,
                                         gflops=t.gflops(flops),
                                         vs_torch=(base.median / t.median) if base else None))
                    line = "  ".join(f"{n}={t.gflops(flops):.1f}" for n, t in timings.items())
                    print(f"D={D} causal={causal!s:<5} threads={threads} N={N:<5} GFLOP/s: {line}", flush=True)
    return rows


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _rss_child(impl: str, N: int, D: int) -> None:
    """Run in a fresh process: the peak resident-set increase of one call, inputs already allocated.

    Linux: the peak (VmHWM) is reset through /proc/self/clear_refs just before the call, so import-time
    transients do not count."""
    torch, F = try_torch() if impl == "torch-sdpa" else (None, None)
    r = np.random.default_rng(0)
    q, k, v = (r.standard_normal((1, HEADS, N, D), dtype=np.float32) for _ in range(3))
    chordlab.set_memory_limit("64 GiB")
    small = [a[:, :, :64].copy() for a in (q, k, v)]
    if impl == "torch-sdpa":
        tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))

        def run(*xs):
            with torch.inference_mode():
                return F.scaled_dot_product_attention(*(torch.from_numpy(x) for x in xs))
    else:
        name, _, isa = impl.partition("-")
        kw = {"isa": isa} if isa else {}

        def run(*xs):
            return chordlab.attention(*xs, backend=name, **kw)
    run(*small)
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    result = run(q, k, v)
    peak = _status_kib("VmHWM")
    del result
    print(json.dumps({"rss_increase": (peak - before) * 1024}))


def memory_grid(seqs, D, impls):
    rows = []
    for N in seqs:
        out_bytes = HEADS * N * D * 4
        for impl in impls:
            if impl == "reference" and N > 8192:
                continue
            r = subprocess.run([sys.executable, __file__, "--_rss", impl, str(N), str(D)], capture_output=True,
                               text=True, timeout=900)
            if r.returncode != 0:
                print(f"memory {impl} N={N}: failed: {r.stderr.strip()[-200:]}")
                continue
            inc = json.loads(r.stdout.strip().splitlines()[-1])["rss_increase"]
            rows.append(dict(impl=impl, seq=N, head_dim=D, rss_increase=inc, output_bytes=out_bytes))
            print(f"memory D={D} N={N:<5} {impl:<14} peak RSS +{inc / 2**20:8.1f} MiB "
                  f"(output {out_bytes / 2**20:.1f} MiB)", flush=True)
    return rows


def primitive_grid(n=64, iters=200_000, rounds=15):
    """The seed's micro-benchmark table, timed inside C (cl_time_primitive) so no Python overhead counts."""
    lib = step4_simd.library()
    rows = []
    for op_index, op in enumerate(("dot", "axpy", "exp")):
        for info in lib.isas():
            if info.supported:
                ns = lib.lib.cl_time_primitive(lib.isa_index(info.name), op_index, n, iters, rounds)
                rows.append(dict(op=op, isa=info.name, n=n, ns_per_call=ns, gflops=2 * n / ns if op != "exp" else None))
    scalar = {row["op"]: row["ns_per_call"] for row in rows if row["isa"] == "scalar"}
    for row in rows:
        row["speedup_vs_scalar"] = scalar[row["op"]] / row["ns_per_call"]
    return rows


def design_grid(seqs=(512, 1024), D=64, repeats=5):
    """The seed's design (algorithm="rowwise": a dot product per score, an axpy per key) against the blocked
    micro-kernels, per ISA, 1 thread, interleaved: the climb chapter 4 walks."""
    lib = step4_simd.library()
    r = np.random.default_rng(2)
    rows = []
    for N in seqs:
        q, k, v = (r.standard_normal((1, HEADS, N, D)).astype(np.float32) for _ in range(3))
        flops = chordlab.ProblemShape.of(q.shape, k.shape).flops()
        fns = {(info.name, alg): (lambda isa=info.name, alg=alg, qkv=(q, k, v): chordlab.attention(
            *qkv, backend="simd", isa=isa, algorithm=alg, threads=1))
            for info in lib.isas() if info.supported for alg in ("rowwise", "blocked")}
        with pinned_threads(1):
            t = time_interleaved(fns, repeats=repeats, min_seconds=0.3)
        base = t[("scalar", "rowwise")].median
        for (isa, alg), x in t.items():
            rows.append(dict(seq=N, head_dim=D, isa=isa, algorithm=alg, gflops=x.gflops(flops),
                             vs_scalar_rowwise=base / x.median))
    return rows


def markdown(speed, memory, prims, meta, design=()) -> str:
    lines = [f"# CPU attention benchmark ({meta['date']})", "",
             f"Machine: {meta['cpu']}, {meta['machine']}; Python {meta['python']}, "
             f"NumPy {meta['numpy']}, torch {meta['torch']}. Batch 1, {HEADS} heads, float32. "
             "Median of interleaved repeats; ratio = torch's median / this median (> 1: faster than torch).", ""]
    for D in sorted({r["head_dim"] for r in speed}):
        for causal in (False, True):
            for threads in sorted({r["threads"] for r in speed}):
                sub = [r for r in speed if r["head_dim"] == D and r["causal"] == causal and r["threads"] == threads]
                if not sub:
                    continue
                impls = list(dict.fromkeys(r["impl"] for r in sub))
                lines += [f"## head dim {D}, {'causal' if causal else 'not causal'}, {threads} thread(s): "
                          "GFLOP/s (ratio to torch)", "",
                          "| N | " + " | ".join(impls) + " |", "|---|" + "---|" * len(impls)]
                for N in sorted({r["seq"] for r in sub}):
                    cells = []
                    for impl in impls:
                        row = next((r for r in sub if r["seq"] == N and r["impl"] == impl), None)
                        if row is None:
                            cells.append("")
                        else:
                            ratio = f" ({row['vs_torch']:.2f}x)" if row["vs_torch"] is not None else ""
                            cells.append(f"{row['gflops']:.1f}{ratio}")
                    lines.append(f"| {N} | " + " | ".join(cells) + " |")
                lines.append("")
    if memory:
        lines += ["## Peak memory: increase of peak RSS for one call (fresh process), MiB", "",
                  "| N | output | " + " | ".join(dict.fromkeys(r["impl"] for r in memory)) + " |",
                  "|---|---|" + "---|" * len(dict.fromkeys(r["impl"] for r in memory))]
        for N in sorted({r["seq"] for r in memory}):
            sub = {r["impl"]: r for r in memory if r["seq"] == N}
            out = next(iter(sub.values()))["output_bytes"] / 2**20
            cells = [f"{sub[i]['rss_increase'] / 2**20:.1f}" if i in sub else "(skipped)"
                     for i in dict.fromkeys(r["impl"] for r in memory)]
            lines.append(f"| {N} | {out:.1f} | " + " | ".join(cells) + " |")
        lines.append("")
    if design:
        lines += ["## The climb: the seed's design (rowwise) against the blocked micro-kernels, 1 thread, head dim "
                  "64: GFLOP/s (speed-up over scalar rowwise)", "",
                  "| N | " + " | ".join(f"{r['isa']} {r['algorithm']}" for r in design if r["seq"] == design[0]["seq"])
                  + " |", "|---|" + "---|" * sum(1 for r in design if r["seq"] == design[0]["seq"])]
        for N in dict.fromkeys(r["seq"] for r in design):
            lines.append(f"| {N} | " + " | ".join(f"{r['gflops']:.1f} ({r['vs_scalar_rowwise']:.1f}x)"
                                                   for r in design if r["seq"] == N) + " |")
        lines.append("")
    if prims:
        lines += ["## Primitives at n = 64, timed in C: ns per call (speed-up over scalar)", "", "| op | " +
                  " | ".join(dict.fromkeys(r["isa"] for r in prims)) + " |",
                  "|---|" + "---|" * len(dict.fromkeys(r["isa"] for r in prims))]
        for op in ("dot", "axpy", "exp"):
            sub = {r["isa"]: r for r in prims if r["op"] == op}
            lines.append(f"| {op} | " + " | ".join(f"{r['ns_per_call']:.1f} ({r['speedup_vs_scalar']:.1f}x)"
                                                   for r in sub.values()) + " |")
        lines.append("")
    return "\n".join(lines)


def plots(speed, memory, prims, meta):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    for ax, threads in zip(axes, (1, 2), strict=False):
        sub = [r for r in speed if r["head_dim"] == 64 and not r["causal"] and r["threads"] == threads]
        for impl in dict.fromkeys(r["impl"] for r in sub):
            pts = sorted((r["seq"], r["gflops"]) for r in sub if r["impl"] == impl)
            ax.plot(*zip(*pts, strict=True), "o-", label=impl)
        ax.set_xscale("log", base=2)
        ax.set_title(f"head dim 64, not causal, {threads} thread(s)")
        ax.set_xlabel("sequence length N")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("GFLOP/s (higher is better)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Attention forward on {meta['cpu']}", fontsize=7, wrap=True)
    fig.tight_layout()
    paths.append(OUT / "attention_cpu_gflops.png")
    fig.savefig(paths[-1], dpi=110)

    if any(r["vs_torch"] for r in speed):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for (D, causal, threads) in sorted({(r["head_dim"], r["causal"], r["threads"]) for r in speed}):
            pts = sorted((r["seq"], r["vs_torch"]) for r in speed if (r["head_dim"], r["causal"], r["threads"])
                         == (D, causal, threads) and r["impl"] == f"simd-{meta['best_isa']}")
            if pts:
                ax.plot(*zip(*pts, strict=True), "o-", label=f"D={D} {'causal' if causal else 'full'} {threads}T")
        ax.axhline(1.0, color="black", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length N")
        ax.set_ylabel("speed relative to torch SDPA")
        ax.set_title(f"simd-{meta['best_isa']} / torch scaled_dot_product_attention (same run)")
        ax.legend(fontsize=7, ncol=2)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        paths.append(OUT / "attention_cpu_vs_torch.png")
        fig.savefig(paths[-1], dpi=110)

    if memory:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for impl in dict.fromkeys(r["impl"] for r in memory):
            pts = sorted((r["seq"], max(r["rss_increase"], 1) / 2**20) for r in memory if r["impl"] == impl)
            ax.plot(*zip(*pts, strict=True), "o-", label=impl)
        outs = sorted({(r["seq"], r["output_bytes"] / 2**20) for r in memory})
        ax.plot(*zip(*outs, strict=True), "k:", label="output size")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length N")
        ax.set_ylabel("peak RSS increase (MiB)")
        ax.set_title("Memory of one call (head dim 64)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        paths.append(OUT / "attention_cpu_memory.png")
        fig.savefig(paths[-1], dpi=110)
    return paths


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a small grid (seq 256..1024, head dim 64, 1 thread)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--_rss", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._rss:
        return _rss_child(args._rss[0], int(args._rss[1]), int(args._rss[2]))
    torch, _ = try_torch()
    lib = step4_simd.library()
    cpu = sysinfo.cpu_identity()
    meta = dict(date=time.strftime("%Y-%m-%d"), cpu=cpu.describe(), cpu_identity=dataclasses.asdict(cpu),
                machine=platform.machine(),
                cores=sysinfo.usable_cores(), python=platform.python_version(), numpy=np.__version__,
                torch=torch.__version__ if torch else "not installed", best_isa=lib.detected,
                flags={k: v for k, v in sysinfo.cpu_features().items()})
    print(f"# {meta['cpu']}, best ISA {meta['best_isa']}, torch {meta['torch']}", flush=True)
    if args.quick:
        seqs, dims, threads, causals, mem_seqs = [256, 512, 1024], [64], [1], [False, True], [1024]
    else:
        seqs, dims, threads, causals, mem_seqs = [256, 512, 1024, 2048, 4096], [64, 128], [1, 2], [False, True], \
            [1024, 4096, 8192]
    OUT.mkdir(exist_ok=True)
    speed = speed_grid(seqs, dims, threads, causals, args.repeats)
    mem_impls = [f"simd-{lib.detected}", "tiled", "reference"] + (["torch-sdpa"] if torch else [])
    memory = [] if args.no_memory else memory_grid(mem_seqs, 64, mem_impls)
    design = design_grid(seqs=(512,) if args.quick else (512, 1024))
    for r in design:
        print(f"design N={r['seq']} {r['isa']:<7} {r['algorithm']:<8} {r['gflops']:6.1f} GFLOP/s "
              f"({r['vs_scalar_rowwise']:.1f}x scalar rowwise)")
    prims = primitive_grid()
    for r in prims:
        print(f"primitive {r['op']:<5} n=64 {r['isa']:<7} {r['ns_per_call']:7.1f} ns  "
              f"({r['speedup_vs_scalar']:.1f}x scalar)")
    md = markdown(speed, memory, prims, meta, design)
    (OUT / "attention_cpu.md").write_text(md)
    (OUT / "attention_cpu.json").write_text(json.dumps(dict(meta=meta, speed=speed, memory=memory,
                                                           primitives=prims, design=design), indent=1))
    paths = plots(speed, memory, prims, meta)
    print()
    print(md)
    print("wrote", OUT / "attention_cpu.md", *paths)


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    sys.exit(main())
