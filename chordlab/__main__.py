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
    lines.append(f"  model     {sysinfo.cpu_model()}  ({platform.machine()}, {sysinfo.usable_cores()} cores usable)")
    lines.append("  features  " + "  ".join(f"{k.upper()}: {'yes' if v else 'no'}" for k, v in feats.items()))
    lines.append("")
    from . import step4_simd

    lines.append("SIMD kernels (step 4)")
    lines += step4_simd.report()
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
    args = parser.parse_args(argv)
    if args.command == "info":
        print(info_report())
        return 0
    parser.print_help()
    return 1


if __name__ == "__main__":
    sys.exit(main())
