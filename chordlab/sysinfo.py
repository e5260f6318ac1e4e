"""What this machine has: CPU model and SIMD features, compilers, the CUDA toolkit, NVIDIA GPUs.

Used by ``python -m chordlab info`` and chapter 00. Reads the OS (``/proc/cpuinfo``, ``sysctl`` on macOS)
and looks tools up on ``PATH``; it never fails, it reports "unknown" instead.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path


def _run(cmd: list[str], timeout: float = 10) -> str | None:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout if r.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model", "Hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    out = _run(["sysctl", "-n", "machdep.cpu.brand_string"])
    return (out or platform.processor() or "unknown").strip()


@functools.lru_cache(maxsize=1)
def cpu_features() -> dict[str, bool]:
    """SIMD features the OS reports: ``{"avx2": ..., "fma": ..., "avx512f": ..., "neon": ...}``."""
    machine = platform.machine().lower()
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags.update(line.split(":", 1)[1].split())
    except OSError:
        pass
    if not flags:
        out = _run(["sysctl", "-a"]) or ""
        flags.update(f.lower() for f in re.findall(r"hw\.optional\.(\w+): 1", out))
    arm = machine in ("aarch64", "arm64")
    return {
        "avx2": "avx2" in flags,
        "fma": "fma" in flags,
        "avx512f": "avx512f" in flags,
        "neon": arm and (not flags or "asimd" in flags or "neon" in flags or "arm_feat_asimd" in flags),
    }


def compilers() -> dict[str, str | None]:
    """Path of each compiler/emulator chordlab can use, or None."""
    names = ["cc", "gcc", "clang", "nvcc", "aarch64-linux-gnu-gcc", "qemu-aarch64"]
    found = {n: shutil.which(n) for n in names}
    if found["nvcc"] is None:
        home = cuda_home()
        if home and (Path(home) / "bin" / "nvcc").exists():
            found["nvcc"] = str(Path(home) / "bin" / "nvcc")
    return found


def cuda_home() -> str | None:
    for candidate in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if candidate and Path(candidate, "bin", "nvcc").exists():
            return candidate
    nvcc = shutil.which("nvcc")
    return str(Path(nvcc).resolve().parent.parent) if nvcc else None


def cuda_toolkit_version() -> str | None:
    nvcc = compilers()["nvcc"]
    out = _run([nvcc, "--version"]) if nvcc else None
    m = re.search(r"release ([0-9.]+)", out or "")
    return m.group(1) if m else None


def nvidia_gpus() -> list[str]:
    """Names of NVIDIA GPUs the driver reports (empty without a driver or device)."""
    out = _run(["nvidia-smi", "-L"]) if shutil.which("nvidia-smi") else None
    if out:
        return [line.strip() for line in out.splitlines() if line.strip()]
    gpus = Path("/proc/driver/nvidia/gpus")
    return [p.name for p in gpus.iterdir()] if gpus.is_dir() else []


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1
