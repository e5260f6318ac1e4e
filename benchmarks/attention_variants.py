"""Chapter 11's variants in the SIMD kernel: what skipping tiles saves, and what the score hook costs.

    python benchmarks/attention_variants.py            # the issue's goals (a few minutes on 2 cores)
    python benchmarks/attention_variants.py --quick    # smaller N, for a smoke run

1. Sliding window: window = (w - 1, 0) (Mistral: each query sees its last w keys) against full causal attention,
   at N = 16384, D = 64, 1 thread. The ideal speed-up is the ratio of the tiles each visits (`variants.tile_map`:
   N / w adjusted for the edge tiles). Goal: ≥ 70% of it at w = 512. Also time against w, to show linear growth.
2. Document masking: 8 packed documents of N / 8 as a block mask, against full attention (not causal, and causal
   against causal). Goal: ≥ 70% of the speed-up its fraction of visited tiles allows.
3. ALiBi and softcap against plain attention, N = 4096, D 64 and 128, causal or not, 1 thread. Goal: ≤ 15% cost.

Every configuration is checked against the float64 reference on a slice first. Timings are interleaved medians
(`chordlab.timing.time_interleaved`). Writes benchmarks/out/attention_variants.{md,json}, named after the CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

import chordlab
from chordlab import sysinfo, variants
from chordlab.timing import pinned_threads, time_interleaved

OUT = Path(__file__).resolve().parent / "out"
BLOCK = 128  # the SIMD kernel's default tiles, 128 x 128


def check(q, k, v, **kw):
    """The SIMD kernel against the float64 reference on the first 512 queries and keys (a bottom-right slice)."""
    n = min(512, q.shape[2])
    small = [np.ascontiguousarray(a[:, :, :n]) for a in (q, k, v)]
    if "block_mask" in kw:
        return  # a block mask is built for one shape: checked in the tests instead
    want = chordlab.attention(*(a.astype(np.float64) for a in small), backend="reference", **kw)
    got = chordlab.attention(*small, backend="simd", **kw)
    err = float(np.abs(got - want).max())
    if not err < 1e-4:
        raise SystemExit(f"simd with {sorted(kw)} disagrees with the float64 reference: max error {err:.3g}")


def call(inputs, **kw):
    """A timed call of the SIMD kernel on one thread (bound now, not when it runs)."""
    q, k, v = inputs
    return lambda: chordlab.attention(q, k, v, backend="simd", threads=1, **kw)


def visited(N, **kw) -> int:
    return int((variants.tile_map(N, N, BLOCK, BLOCK, **kw) != variants.EMPTY).sum())


def timed(fns: dict, repeats: int) -> dict[str, float]:
    with pinned_threads(1):
        t = time_interleaved(fns, repeats=repeats, warmup=1, min_seconds=0.3)
    return {name: x.median for name, x in t.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    N = 4096 if args.quick else 16384
    H, D = 4, 64
    cpu = sysinfo.cpu_identity()
    meta = dict(date=time.strftime("%Y-%m-%d"), cpu=cpu.describe(), cpu_identity=dataclasses.asdict(cpu),
                heads=H, seq=N, threads=1)
    print(f"# {meta['cpu']}", flush=True)
    r = np.random.default_rng(0)
    q, k, v = (r.standard_normal((1, H, N, D)).astype(np.float32) for _ in range(3))
    x = (q, k, v)

    # 1. sliding window against full causal attention
    windows = [128, 256, 512, 1024, 2048, 4096]
    fns = {"causal": call(x, causal=True)}
    for w in windows:
        check(q, k, v, window=(w - 1, 0))
        fns[f"w={w}"] = call(x, window=(w - 1, 0))
    t = timed(fns, args.repeats)
    full_tiles = visited(N, causal=True)
    window_rows = []
    for w in windows:
        ideal = full_tiles / visited(N, window=(w - 1, 0))
        got = t["causal"] / t[f"w={w}"]
        window_rows.append(dict(window=w, seconds=t[f"w={w}"], speedup=got, ideal=ideal, share=got / ideal))
        print(f"window {w:<5} {t[f'w={w}'] * 1e3:8.1f} ms  speed-up {got:5.1f}x of ideal {ideal:5.1f}x "
              f"({got / ideal:.0%})", flush=True)

    # 2. documents as a block mask
    docs = np.arange(N) // (N // 8)
    doc_rows = []
    for causal in (False, True):
        fn = variants.document_mask_fn(docs)
        mask_fn = (lambda b, h, qi, ki, fn=fn: fn(b, h, qi, ki) & (qi >= ki)) if causal else fn
        bm = chordlab.block_mask(mask_fn, None, None, N, N, BLOCK, BLOCK)
        t = timed({"full": call(x, causal=causal), "documents": call(x, block_mask=bm)}, args.repeats)
        ideal = visited(N, causal=causal) / int((bm.kinds != variants.EMPTY).sum())
        got = t["full"] / t["documents"]
        doc_rows.append(dict(causal=causal, density=bm.density(), speedup=got, ideal=ideal, share=got / ideal))
        print(f"8 documents, causal={causal!s:<5} density {bm.density():.3f}: speed-up {got:.2f}x of ideal "
              f"{ideal:.2f}x ({got / ideal:.0%})", flush=True)

    # 3. the score hook's cost
    hook_rows = []
    n_hook = 2048 if args.quick else 4096
    for Dh in (64, 128):
        xh = tuple(r.standard_normal((1, 8, n_hook, Dh)).astype(np.float32) for _ in range(3))
        slopes = chordlab.alibi_slopes(8)
        for causal in (False, True):
            check(*xh, causal=causal, alibi_slopes=slopes, softcap=30.0)
            t = timed({"plain": call(xh, causal=causal), "alibi": call(xh, causal=causal, alibi_slopes=slopes),
                       "softcap": call(xh, causal=causal, softcap=30.0),
                       "both": call(xh, causal=causal, alibi_slopes=slopes, softcap=30.0)}, args.repeats)
            row = dict(head_dim=Dh, causal=causal, **{f"{n}_cost": t[n] / t["plain"] - 1 for n in
                                                      ("alibi", "softcap", "both")})
            hook_rows.append(row)
            print(f"D={Dh} causal={causal!s:<5} ALiBi +{row['alibi_cost']:.0%}  softcap +{row['softcap_cost']:.0%}  "
                  f"both +{row['both_cost']:.0%}", flush=True)

    w512 = next(x for x in window_rows if x["window"] == 512)
    worst_doc = min(x["share"] for x in doc_rows)
    worst_hook = max(max(x["alibi_cost"], x["softcap_cost"]) for x in hook_rows)
    yes = lambda ok: "yes" if ok else "**no**"  # noqa: E731
    lines = [f"# chordlab variants in the SIMD kernel ({meta['date']})", "",
             f"Machine: {meta['cpu']}. Batch 1, float32, 1 thread, tiles {BLOCK} x {BLOCK}; window and documents at "
             f"N = {N}, {H} heads, D = {D}; the hook at N = {n_hook}, 8 heads.", "",
             "| goal | met | this run |", "|---|---|---|",
             f"| window w = 512: ≥ 70% of the ideal speed-up over causal | {yes(w512['share'] >= 0.7)} | "
             f"{w512['speedup']:.1f}x of {w512['ideal']:.1f}x ({w512['share']:.0%}) |",
             f"| 8 documents: ≥ 70% of the speed-up the visited tiles allow | {yes(worst_doc >= 0.7)} | "
             f"worst {worst_doc:.0%} |",
             f"| ALiBi and softcap cost ≤ 15% | {yes(worst_hook <= 0.15)} | worst +{worst_hook:.0%} |", "",
             "| window w | ms | speed-up over causal | ideal | share |", "|---|---|---|---|---|"]
    lines += [f"| {x['window']} | {x['seconds'] * 1e3:.1f} | {x['speedup']:.1f}x | {x['ideal']:.1f}x | "
              f"{x['share']:.0%} |" for x in window_rows]
    lines += ["", "| 8 documents | tiles visited | speed-up | ideal | share |", "|---|---|---|---|---|"]
    lines += [f"| {'causal' if x['causal'] else 'not causal'} | {x['density']:.1%} | {x['speedup']:.2f}x | "
              f"{x['ideal']:.2f}x | {x['share']:.0%} |" for x in doc_rows]
    lines += ["", "| D | causal | ALiBi | softcap | both |", "|---|---|---|---|---|"]
    lines += [f"| {x['head_dim']} | {'yes' if x['causal'] else 'no'} | +{x['alibi_cost']:.0%} | "
              f"+{x['softcap_cost']:.0%} | +{x['both_cost']:.0%} |" for x in hook_rows]
    md = "\n".join(lines) + "\n"
    OUT.mkdir(exist_ok=True)
    (OUT / "attention_variants.md").write_text(md)
    (OUT / "attention_variants.json").write_text(json.dumps(dict(meta=meta, window=window_rows, documents=doc_rows,
                                                                 hook=hook_rows), indent=1))
    print()
    print(md)


if __name__ == "__main__":
    main()
