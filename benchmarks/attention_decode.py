"""Decode against the machine's read bandwidth (chapter 10): one new token over a long KV cache.

    pip install -e .[bench]                          # for torch (optional)
    python benchmarks/attention_decode.py            # B 1, Hq 32, Hkv 8, D 128, cache 4k-64k, 1 and 2 threads
    python benchmarks/attention_decode.py --quick    # cache 4k and 16k

Decode reads every cached key and value once and does little arithmetic on each, so its speed is reported in GB/s
of K/V read, against this machine's read bandwidth measured by `SimdLibrary.read_bandwidth` (a STREAM-like sum
over a 512 MiB buffer, same threads, same vector loads; best of 5, once at the start) and against the same probe
reading a buffer of the float32 cache's size, timed as one more contender in the same interleaved rounds (`read
probe`: the limit at the same moment, median against median). Contenders, interleaved back to back in one process:
the SIMD decode on a float32, float16 and bfloat16 contiguous cache, on a paged float32 and bfloat16 cache (pages of
16 tokens, as vLLM's default), and torch's scaled_dot_product_attention with Lq = 1 on the float32 cache
(enable_gqa; OMP_WAIT_POLICY=PASSIVE). Everything is checked against the float64 reference first.

Goals (issue 14): at cache length >= 16k, >= 80% of the read bandwidth (the interleaved probe) for float32 and
bfloat16; bfloat16 >= 1.8x
as fast as float32; >= 2x torch (float32); paged within 10% of contiguous. Writes
benchmarks/out/attention_decode.{md,json}, named after the CPU.
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
from chordlab import step4_simd, sysinfo  # noqa: E402
from chordlab.timing import pinned_threads, time_interleaved  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
HQ, HKV, D, PAGE = 32, 8, 128, 16
PROBE = "read probe"
BF16 = ml_dtypes.bfloat16


def build_caches(k, v, L):
    caches = {}
    for name, dt in (("float32", np.float32), ("float16", np.float16), ("bfloat16", BF16)):
        c = chordlab.KVCache(1, HKV, D, L, dt)
        c.append(k.astype(dt), v.astype(dt))
        caches[name] = c
    for name, dt in (("paged float32", np.float32), ("paged bfloat16", BF16)):
        c = chordlab.PagedKVCache(-(-L // PAGE), PAGE, HKV, D, dt)
        c.append(c.add_sequence(), k[0].astype(dt), v[0].astype(dt))
        caches[name] = c
    return caches


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)
    try:
        import torch
    except ImportError:
        torch = None
    lengths = [4096, 16384] if args.quick else [4096, 8192, 16384, 32768, 65536]
    lib = step4_simd.library()
    cpu = sysinfo.cpu_identity()
    meta = dict(date=time.strftime("%Y-%m-%d"), cpu=cpu.describe(), cpu_identity=dataclasses.asdict(cpu),
                torch=torch.__version__ if torch else "not installed", heads_q=HQ, heads_kv=HKV, head_dim=D,
                page_size=PAGE)
    print(f"# {meta['cpu']}\n# torch {meta['torch']}", flush=True)
    bandwidth = {t: lib.read_bandwidth(threads=t, megabytes=512, rounds=5) for t in (1, 2)}
    print("read bandwidth: " + ", ".join(f"{t} thread(s) {g:.1f} GB/s" for t, g in bandwidth.items()), flush=True)
    meta["read_bandwidth_gbs"] = bandwidth
    r = np.random.default_rng(0)
    rows = []
    for L in lengths:
        k, v = (r.standard_normal((1, HKV, L, D)).astype(np.float32) for _ in range(2))
        q = r.standard_normal((1, HQ, 1, D)).astype(np.float32)
        caches = build_caches(k, v, L)
        want = chordlab.decode(q.astype(np.float64), caches["float32"], backend="reference")
        for name, c in caches.items():
            err = np.abs(chordlab.decode(q, c, backend="simd") - want).max()
            if not err < (1e-4 if "float32" in name else 5e-3):
                raise SystemExit(f"simd decode on the {name} cache disagrees with the reference: {err:.3g}")
        probe_buf = chordlab.kv_cache.aligned_zeros((2 * HKV * L * D,), np.float32)
        probe_buf[:] = 1.0
        for threads in (1, 2):
            fns = {name: (lambda c=c, t=threads, q=q: chordlab.decode(q, c, backend="simd", threads=t))
                   for name, c in caches.items()}
            fns[PROBE] = lambda t=threads, x=probe_buf: lib.read_sum(x, threads=t)
            if torch is not None:
                tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))
                sdpa = torch.nn.functional.scaled_dot_product_attention
                got = sdpa(tq, tk, tv, enable_gqa=True).numpy()
                if not np.abs(got - want).max() < 1e-4:
                    raise SystemExit("torch SDPA disagrees with the reference")
                fns["torch float32"] = lambda tq=tq, tk=tk, tv=tv, f=sdpa: f(tq, tk, tv, enable_gqa=True)
            with pinned_threads(threads):
                t = time_interleaved(fns, repeats=args.repeats, warmup=2, min_seconds=0.3)
            limit = probe_buf.nbytes / t[PROBE].median / 1e9
            for name, timing in t.items():
                itemsize = 2 if "16" in name else 4
                read = 2 * HKV * L * D * itemsize
                gbs = read / timing.median / 1e9
                rows.append(dict(length=L, threads=threads, contender=name, ms=timing.median * 1e3, gbs=gbs,
                                 of_bandwidth=gbs / limit, of_512mib_probe=gbs / bandwidth[threads]))
            line = "  ".join(f"{x['contender']} {x['gbs']:.1f} GB/s ({x['of_bandwidth']:.0%})" for x in rows
                             if x["length"] == L and x["threads"] == threads)
            print(f"L={L:<6} threads={threads}  {line}", flush=True)

    def get(L, th, name):
        return next((x for x in rows if x["length"] == L and x["threads"] == th and x["contender"] == name), None)

    long = [(L, th) for L in lengths for th in (1, 2) if L >= 16384]
    share = min(min(get(L, th, "float32")["of_bandwidth"], get(L, th, "bfloat16")["of_bandwidth"]) for L, th in long)
    share512 = min(min(get(L, th, d)["of_512mib_probe"] for d in ("float32", "bfloat16")) for L, th in long)
    bf_speed = min(get(L, th, "float32")["ms"] / get(L, th, "bfloat16")["ms"] for L, th in long)
    paged = max(max(get(L, th, f"paged {d}")["ms"] / get(L, th, d)["ms"] for d in ("float32", "bfloat16")) - 1
                for L in lengths for th in (1, 2))
    vs_torch = (min(get(L, th, "torch float32")["ms"] / get(L, th, "float32")["ms"] for L in lengths
                    for th in (1, 2)) if torch is not None else None)
    yes = lambda ok: "yes" if ok else "**no**"  # noqa: E731
    lines = [f"# chordlab decode against the read bandwidth ({meta['date']})", "",
             f"Machine: {meta['cpu']}. B 1, Hq {HQ}, Hkv {HKV}, D {D}, one new token; paged caches use pages of "
             f"{PAGE} tokens. Read bandwidth (STREAM-like sum, 512 MiB, best of 5 at the start): "
             + ", ".join(f"{g:.1f} GB/s on {t} thread(s)" for t, g in bandwidth.items()) + ".", "",
             "| goal | met | this run |", "|---|---|---|",
             f"| ≥ 80% of the read bandwidth (interleaved probe) at cache ≥ 16k, float32 and bfloat16, 1 and 2 "
             f"threads | "
             f"{yes(share >= 0.8)} | worst {share:.0%} (of the 512 MiB probe: {share512:.0%}) |",
             f"| bfloat16 cache ≥ 1.8x as fast as float32 at ≥ 16k | {yes(bf_speed >= 1.8)} | worst {bf_speed:.2f}x |",
             (f"| ≥ 2x torch SDPA with Lq = 1 (float32) | {yes(vs_torch >= 2)} | worst {vs_torch:.2f}x |"
              if vs_torch is not None else "| ≥ 2x torch | n/a | torch not installed |"),
             f"| paged within 10% of contiguous | {yes(paged <= 0.10)} | worst +{paged:.0%} |", "",
             "| cache | threads | contender | ms | GB/s | of the interleaved probe | of the 512 MiB probe |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {x['length']} | {x['threads']} | {x['contender']} | {x['ms']:.2f} | {x['gbs']:.1f} | "
              f"{x['of_bandwidth']:.0%} | {x['of_512mib_probe']:.0%} |" for x in rows]
    md = "\n".join(lines) + "\n"
    OUT.mkdir(exist_ok=True)
    (OUT / "attention_decode.md").write_text(md)
    (OUT / "attention_decode.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    print()
    print(md)


if __name__ == "__main__":
    main()
