"""chordlab's SIMD kernel against the CPU attention users would pick instead, and against the machine's sgemm.

    pip install -e .[bench]                        # OpenVINO, ONNX Runtime, torch (each optional)
    python benchmarks/attention_peers.py           # the goal grid: D 64/128, N 1024-4096, causal or not, 1-2 threads
    python benchmarks/attention_peers.py --quick   # one length, for a smoke run

Peers (chordlab/peers.py): OpenVINO's ScaledDotProductAttention (f32 precision hint), ONNX Runtime's
com.microsoft.MultiHeadAttention, torch's scaled_dot_product_attention. Each is checked against the NumPy
reference before it is timed. Fair interleaving: OMP_WAIT_POLICY=PASSIVE (set here, before torch loads) and
ONNX Runtime's allow_spinning=0, so that no runtime's idle workers spin on the cores the next one needs. The
practical limit is NumPy's sgemm 2048³ on the same thread count, measured in a subprocess with the
OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE overrides removed.

Each configuration is timed in two separate rounds (all implementations interleaved in each), so the table can
give the run-to-run spread of the median. Goals (issue 11): ≥ 1.0x the best peer everywhere; ≥ 92% of sgemm on
one thread at N ≥ 2048; on two threads ≥ 1.85x one thread at N ≥ 1024 with a spread under 10%.

Writes benchmarks/out/attention_peers.{md,json} and attention_peers.png, named after the CPU.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch (or any OpenMP runtime) loads

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import chordlab  # noqa: E402
from chordlab import peers, step4_simd, sysinfo  # noqa: E402
from chordlab.timing import pinned_threads, time_interleaved  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
HEADS = 8


def contenders(q, k, v, causal, threads):
    names, missing = peers.available_peers()
    isa = step4_simd.library().detected
    fns = {f"chordlab simd-{isa}": lambda: chordlab.attention(q, k, v, causal=causal, backend="simd",
                                                             threads=threads)}
    checks = {}
    for name in names:
        p = peers.PEERS[name](q, k, v, causal, threads)
        fns[name], checks[name] = p.run, p.check
    return fns, checks, missing


def check_all(q, k, v, causal, threads):
    """Every contender against the float64 reference (a peer computing in another precision fails here)."""
    want = chordlab.attention(*(a[:, :, :512].astype(np.float64) for a in (q, k, v)), causal=causal,
                              backend="reference")
    small = [np.ascontiguousarray(a[:, :, :512]) for a in (q, k, v)]
    fns, checks, _ = contenders(*small, causal, threads)
    checks.setdefault(next(iter(fns)), lambda: np.asarray(next(iter(fns.values()))()))
    errors = {}
    for name, check in checks.items():
        err = float(np.abs(np.asarray(check(), np.float64) - want).max())
        if not err < 1e-4:
            raise SystemExit(f"{name} disagrees with the float64 reference: max error {err:.3g} (another precision?)")
        errors[name] = err
    return errors


def run_grid(seqs, dims, threads_list, causals, repeats, rounds):
    rows, r = [], np.random.default_rng(0)
    for D in dims:
        for causal in causals:
            for threads in threads_list:
                for N in seqs:
                    q, k, v = (r.standard_normal((1, HEADS, N, D)).astype(np.float32) for _ in range(3))
                    flops = chordlab.ProblemShape.of(q.shape, k.shape).flops(causal)
                    with pinned_threads(threads):
                        errors = check_all(q, k, v, causal, threads) if N == seqs[0] else {}
                        fns, _, _ = contenders(q, k, v, causal, threads)
                        medians = {n: [] for n in fns}
                        for _ in range(rounds):
                            t = time_interleaved(fns, repeats=repeats, warmup=1, min_seconds=0.5)
                            for n, x in t.items():
                                medians[n].append(x.median)
                    for n, ms in medians.items():
                        med = float(np.median(ms))
                        rows.append(dict(head_dim=D, causal=causal, threads=threads, seq=N, impl=n,
                                         median_ms=med * 1e3, gflops=flops / med / 1e9,
                                         spread=(max(ms) - min(ms)) / med, max_error=errors.get(n)))
                    line = "  ".join(f"{x['impl']}={x['gflops']:.0f}" for x in rows[-len(fns):])
                    print(f"D={D} causal={causal!s:<5} threads={threads} N={N:<5} GFLOP/s: {line}", flush=True)
    return rows


def summarize(rows, sgemm):
    """Per configuration: chordlab against the best peer and the sgemm limit, and the 2-thread scaling."""
    out = []
    keys = sorted({(r["head_dim"], r["causal"], r["threads"], r["seq"]) for r in rows})
    for D, causal, threads, N in keys:
        sub = [r for r in rows if (r["head_dim"], r["causal"], r["threads"], r["seq"]) == (D, causal, threads, N)]
        mine = next(r for r in sub if r["impl"].startswith("chordlab"))
        others = [r for r in sub if not r["impl"].startswith("chordlab")]
        best = max(others, key=lambda r: r["gflops"]) if others else None
        one = next((r for r in rows if r["impl"] == mine["impl"] and (r["head_dim"], r["causal"], r["threads"],
                                                                       r["seq"]) == (D, causal, 1, N)), None)
        out.append(dict(head_dim=D, causal=causal, threads=threads, seq=N, gflops=mine["gflops"],
                        spread=mine["spread"], best_peer=best["impl"] if best else None,
                        vs_best_peer=mine["gflops"] / best["gflops"] if best else None,
                        of_sgemm=mine["gflops"] / sgemm[threads]["gflops"],
                        scaling=mine["gflops"] / one["gflops"] if one and threads > 1 else None))
    return out


def goals(summary):
    """The issue's goals, each with whether this run meets it."""
    def worst(rows, key):
        vals = [r[key] for r in rows if r[key] is not None]
        return min(vals) if vals else None
    peer = worst(summary, "vs_best_peer")
    sg = worst([r for r in summary if r["threads"] == 1 and r["seq"] >= 2048 and not r["causal"]], "of_sgemm")
    two = [r for r in summary if r["threads"] == 2 and r["seq"] >= 1024]
    scale, spread = worst(two, "scaling"), max((r["spread"] for r in two), default=None)
    fmt = lambda x, f: "n/a" if x is None else f.format(x)  # noqa: E731
    return [
        ("≥ 1.0x the best peer on every configuration", peer is not None and peer >= 1.0, fmt(peer, "worst {:.2f}x")),
        ("≥ 92% of sgemm, 1 thread, N ≥ 2048 (not causal)", sg is not None and sg >= 0.92, fmt(sg, "worst {:.0%}")),
        ("2 threads ≥ 1.85x one thread at N ≥ 1024", scale is not None and scale >= 1.85, fmt(scale, "worst {:.2f}x")),
        ("2-thread run-to-run spread < 10%", spread is not None and spread < 0.10, fmt(spread, "worst {:.0%}")),
    ]


def markdown(rows, summary, sgemm, meta) -> str:
    lines = [f"# chordlab against the CPU peers ({meta['date']})", "",
             f"Machine: {meta['cpu']}. Batch 1, {HEADS} heads, float32; {meta['versions']}. Median of "
             f"{meta['rounds']} separate rounds of interleaved repeats "
             "(OMP_WAIT_POLICY=PASSIVE, ORT allow_spinning=0).",
             "", "sgemm limit (NumPy 2048³, OPENBLAS_CORETYPE/L2_SIZE unset): " + ", ".join(
                 f"{t} thread(s) {s['gflops']:.0f} GFLOP/s ({s['blas']} {s['kernel']} kernel)"
                 for t, s in sgemm.items()),
             "", "## Goals", "", "| goal | met | this run |", "|---|---|---|"]
    lines += [f"| {g} | {'yes' if ok else '**no**'} | {v} |" for g, ok, v in goals(summary)]
    lines += ["", "## chordlab against the best peer and the sgemm limit", "",
              "| D | causal | threads | N | chordlab GFLOP/s | best peer | vs best peer | of sgemm | 2T/1T | spread |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        vs_peer = "-" if s["vs_best_peer"] is None else f"{s['vs_best_peer']:.2f}x"
        scaling = "-" if s["scaling"] is None else f"{s['scaling']:.2f}x"
        lines.append(f"| {s['head_dim']} | {'yes' if s['causal'] else 'no'} | {s['threads']} | {s['seq']} | "
                     f"{s['gflops']:.0f} | {s['best_peer'] or '-'} | {vs_peer} | {s['of_sgemm']:.0%} | {scaling} | "
                     f"{s['spread']:.0%} |")
    lines += ["", "## Every implementation: GFLOP/s", ""]
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    lines += ["| D | causal | threads | N | " + " | ".join(impls) + " |", "|---|---|---|---|" + "---|" * len(impls)]
    for D, causal, threads, N in sorted({(r["head_dim"], r["causal"], r["threads"], r["seq"]) for r in rows}):
        cells = [next((f"{r['gflops']:.0f}" for r in rows if (r["head_dim"], r["causal"], r["threads"], r["seq"],
                                                              r["impl"]) == (D, causal, threads, N, i)), "")
                 for i in impls]
        lines.append(f"| {D} | {'yes' if causal else 'no'} | {threads} | {N} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows, sgemm, meta, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    combos = sorted({(r["head_dim"], r["causal"]) for r in rows})
    threads = sorted({r["threads"] for r in rows})
    fig, axes = plt.subplots(len(threads), len(combos), figsize=(3.6 * len(combos), 3.2 * len(threads)),
                             squeeze=False, sharey="row")
    for i, t in enumerate(threads):
        for j, (D, causal) in enumerate(combos):
            ax = axes[i][j]
            sub = [r for r in rows if (r["head_dim"], r["causal"], r["threads"]) == (D, causal, t)]
            for impl in dict.fromkeys(r["impl"] for r in sub):
                pts = sorted((r["seq"], r["gflops"]) for r in sub if r["impl"] == impl)
                ax.plot(*zip(*pts, strict=True), "o-", label=impl, lw=2.5 if impl.startswith("chordlab") else 1)
            ax.axhline(sgemm[t]["gflops"], color="black", ls="--", lw=1, label="sgemm (limit)")
            ax.set_xscale("log", base=2)
            ax.set_title(f"D {D}, {'causal' if causal else 'full'}, {t} thread(s)", fontsize=9)
            ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("GFLOP/s")
    axes[-1][0].set_xlabel("sequence length N")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Attention forward against peers on {meta['cpu']}", fontsize=7, wrap=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="N 1024, head dim 64, 1 and 2 threads")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    seqs, dims = ([1024], [64]) if args.quick else ([1024, 2048, 4096], [64, 128])
    threads_list, causals = [1, 2], [False, True]
    names, missing = peers.available_peers()
    versions = {"numpy": np.__version__}
    for name in names:
        mod = __import__(peers.MODULES[name])
        versions[peers.MODULES[name]] = getattr(mod, "__version__", "?")
    cpu = sysinfo.cpu_identity()
    meta = dict(date=time.strftime("%Y-%m-%d"), cpu=cpu.describe(), cpu_identity=dataclasses.asdict(cpu),
                versions=", ".join(f"{k} {v}" for k, v in versions.items()), rounds=args.rounds,
                missing_peers=missing, omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"))
    print(f"# {meta['cpu']}\n# peers: {', '.join(names) or 'none'}"
          + "".join(f"\n# not run: {n}: {why}" for n, why in missing.items()), flush=True)
    sgemm = {t: peers.sgemm_limit(t) for t in threads_list}
    for t, s in sgemm.items():
        print(f"sgemm {t} thread(s): {s['gflops']:.0f} GFLOP/s ({s['blas']} {s['kernel']}; unset {s['unset']})")
    rows = run_grid(seqs, dims, threads_list, causals, args.repeats, args.rounds)
    summary = summarize(rows, sgemm)
    md = markdown(rows, summary, sgemm, meta)
    OUT.mkdir(exist_ok=True)
    (OUT / "attention_peers.md").write_text(md)
    (OUT / "attention_peers.json").write_text(json.dumps(dict(meta=meta, sgemm=sgemm, rows=rows, summary=summary),
                                                         indent=1))
    plot(rows, sgemm, meta, OUT / "attention_peers.png")
    print()
    print(md)
    print("wrote", OUT / "attention_peers.md", OUT / "attention_peers.json", OUT / "attention_peers.png")


if __name__ == "__main__":
    main()
