"""Command line: ``python -m chordlab info`` (more subcommands join as chapters land)."""

from __future__ import annotations

import argparse
import platform
import sys


def info_report() -> str:
    """The text of ``python -m chordlab info``."""
    import numpy as np

    from . import __version__, backends, sysinfo

    lines = [f"chordlab {__version__}  (Python {platform.python_version()}, NumPy {np.__version__})", ""]
    lines.append("Backends")
    lines += ["  " + row for row in str(backends()).splitlines()]
    lines.append("")
    feats = sysinfo.cpu_features()
    lines.append("CPU")
    cpu = sysinfo.cpu_identity()
    lines.append(f"  model     {cpu.model_name}  ({platform.machine()}, {cpu.cores} cores usable)")
    ident = f"family {cpu.family} model {cpu.model} stepping {cpu.stepping}" if cpu.family is not None else "unknown"
    lines.append(f"  identity  {cpu.vendor or 'unknown vendor'} {ident}" + (f" = {cpu.uarch}" if cpu.uarch else ""))
    lines.append(f"  flags     {' '.join(cpu.flags) or 'none read'}")
    lines.append(f"  clock     {f'{cpu.clock_mhz:.0f} MHz per {cpu.clock_source}' if cpu.clock_mhz else 'unknown'}")
    lines.append("  features  " + "  ".join(f"{k.upper()}: {'yes' if v else 'no'}" for k, v in feats.items()))
    lines.append("")
    from . import step4_simd

    lines.append("SIMD kernels (step 4)")
    lines += step4_simd.report()
    lines.append("")
    from . import step5_cuda, step8_webgpu

    lines.append("CUDA kernels on the CPU (step 5, cuda-cpu)")
    lines += step5_cuda.report()
    lines.append("")
    lines.append("WebGPU (step 8)")
    lines += step8_webgpu.report()
    lines.append("")
    lines.append("Compilers and tools")
    for name, path in sysinfo.compilers().items():
        lines.append(f"  {name:<22}{path or 'not found'}")
    lines.append("")
    lines.append("CUDA")
    home, version = sysinfo.cuda_home(), sysinfo.cuda_toolkit_version()
    lines.append(f"  toolkit   {home + ' (CUDA ' + str(version) + ')' if home else 'not found'}")
    gpus = sysinfo.nvidia_gpus()
    lines.append(f"  GPUs      {', '.join(gpus) if gpus else 'none detected (no NVIDIA driver or device)'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chordlab", description="chordlab workbench")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("info", help="version, backends, CPU features, compilers, CUDA and GPUs")
    tune = sub.add_parser("tune", help="sweep block sizes for a backend and remember the best on this machine")
    tune.add_argument("--backend", default="simd")
    tune.add_argument("--seq-len", type=int, default=1024)
    tune.add_argument("--head-dim", type=int, default=64)
    tune.add_argument("--heads", type=int, default=8)
    tune.add_argument("--causal", action="store_true")
    tune.add_argument("--force", action="store_true", help="tune again even when a cached result exists")
    demo = sub.add_parser("demo", help="the seed's demo (batch 1, 8 heads, seq 512, head dim 64), measured here")
    demo.add_argument("--seq-len", type=int, default=512)
    prog = sub.add_parser("progress", help="the exercises you have passed on this machine")
    prog.add_argument("--export", metavar="FILE", help="write them, with user, host and CPU, to FILE (for a teacher)")
    args = parser.parse_args(argv)
    if args.command == "info":
        print(info_report())
        return 0
    if args.command == "tune":
        from .tuning import autotune, cache_file, sweep

        shape = (1, args.heads, args.seq_len, args.head_dim)
        try:
            table = sweep(args.backend, shape, causal=args.causal)
            print(table)
            result = autotune(args.backend, shape, causal=args.causal, force=args.force, progress=False)
        except (ValueError, RuntimeError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        source = "cached" if result.from_cache else "tuned"
        print(f"best for {args.backend}: block_q={result.block_q} block_k={result.block_k} "
              f"({result.gflops:.1f} GFLOP/s, {source}; saved in {cache_file()})")
        return 0
    if args.command == "progress":
        from . import progress

        print(progress.report())
        if args.export:
            try:
                print("exported to", progress.export(args.export))
            except OSError as exc:
                print(f"error: cannot write {args.export}: {exc}", file=sys.stderr)
                return 2
        return 0
    if args.command == "demo":
        from .demo import seed_demo

        print(seed_demo(seq_len=args.seq_len))
        return 0
    parser.print_help()
    return 1


if __name__ == "__main__":
    sys.exit(main())
