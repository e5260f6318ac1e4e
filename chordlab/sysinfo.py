"""What this machine has: CPU identity and SIMD features, compilers, the CUDA toolkit, NVIDIA GPUs.

Used by ``python -m chordlab info``, chapter 00, the benchmarks and the tuning cache. Reads the OS
(``/proc/cpuinfo``, ``sysctl`` on macOS) and looks tools up on ``PATH``; it never fails, it reports "unknown"
instead.

A model name alone does not identify a CPU: a cloud VM shows "AMD EPYC" for Zen 4 (family 25) and Zen 5
(family 26), whose AVX-512 differs 2× in width. `cpu_identity` gives vendor, family/model/stepping, the
microarchitecture where it follows from them, the flags that change which kernel runs or how fast, the cores
and the clock; every stored measurement carries its `describe()` line.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass
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


#: The flags that decide which kernels run and how fast (as /proc/cpuinfo spells them).
KEY_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vp2intersect",
             "amx_tile", "amx_bf16", "asimd", "bf16", "fphp", "sve", "sme")


@dataclass(frozen=True)
class CpuIdentity:
    """Which CPU this is, precisely enough to tell two "AMD EPYC"s apart."""

    model_name: str
    vendor: str
    family: int | None
    model: int | None
    stepping: int | None
    uarch: str  # e.g. "Zen 5", or "" when the family/model do not say
    flags: tuple[str, ...]  # the members of KEY_FLAGS this CPU has
    cores: int
    clock_mhz: float | None
    clock_source: str

    def describe(self) -> str:
        """One line, e.g. ``AMD EPYC (AuthenticAMD family 26 model 2 stepping 0 = Zen 5; avx2 fma ...; 2 cores;
        2596 MHz per /proc/cpuinfo)``."""
        ident = self.vendor or "unknown vendor"
        if self.family is not None:
            ident += f" family {self.family} model {self.model} stepping {self.stepping}"
        if self.uarch:
            ident += f" = {self.uarch}"
        x86 = platform.machine().lower() in ("x86_64", "amd64", "i686")
        absent = [f for f in ("avx512f", "avx512_bf16", "amx_tile") if x86 and f not in self.flags]
        flags = " ".join(self.flags) + (" (no " + ", ".join(absent) + ")" if absent else "")
        clock = f"{self.clock_mhz:.0f} MHz per {self.clock_source}" if self.clock_mhz else "clock unknown"
        return f"{self.model_name} ({ident}; {flags or 'no SIMD flags read'}; {self.cores} cores; {clock})"

    def key(self) -> str:
        """What must match for a measurement to be reused (the tuning cache): model, family/model/stepping, flags."""
        return f"{self.model_name}|{self.vendor}|{self.family}/{self.model}/{self.stepping}|{' '.join(self.flags)}"


def _cpuinfo_fields(text: str | None = None) -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo, or of ``text`` (empty where there is none)."""
    fields: dict[str, str] = {}
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            return fields
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), value.strip())
    return fields


def _as_int(text: str | None) -> int | None:
    try:
        return int(text, 0) if text is not None else None
    except ValueError:
        return None


def _as_float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def microarchitecture(vendor: str, family: int | None, model: int | None) -> str:
    """The AMD Zen generation from family/model (AMD's published ranges); "" where it is not known here."""
    if vendor != "AuthenticAMD" or family is None or model is None:
        return ""
    if family == 0x17:
        return "Zen 2" if model >= 0x30 else "Zen / Zen+"
    if family == 0x19:
        zen4 = 0x10 <= model <= 0x1F or 0x60 <= model <= 0x7F or 0xA0 <= model <= 0xAF
        return "Zen 4" if zen4 else "Zen 3"
    if family == 0x1A:
        return "Zen 5" if model < 0x50 else "Zen 5 or newer"
    return ""


def _clock() -> tuple[float | None, str]:
    for path, scale in (("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq", 1e-3),
                        ("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq", 1e-3)):
        try:
            return float(Path(path).read_text()) * scale, Path(path).name
        except (OSError, ValueError):
            pass
    mhz = _cpuinfo_fields().get("cpu MHz")
    if mhz:
        try:
            return float(mhz), "/proc/cpuinfo (on a VM often the TSC rate, not the running clock)"
        except ValueError:
            pass
    hz = _run(["sysctl", "-n", "hw.cpufrequency_max"])
    if hz and hz.strip().isdigit():
        return int(hz) / 1e6, "sysctl"
    return None, ""


@functools.lru_cache(maxsize=1)
def cpu_identity(cpuinfo: str | None = None) -> CpuIdentity:
    """This machine's `CpuIdentity` (read once per process), or the one a /proc/cpuinfo text describes."""
    f = _cpuinfo_fields(cpuinfo)
    vendor = f.get("vendor_id") or f.get("CPU implementer", "")
    family = _as_int(f.get("cpu family"))
    model = _as_int(f.get("model")) if family is not None else _as_int(f.get("CPU part"))
    stepping = _as_int(f.get("stepping")) if family is not None else _as_int(f.get("CPU variant"))
    flags = set((f.get("flags") or f.get("Features") or "").split())
    if not flags and cpuinfo is None:
        out = _run(["sysctl", "-a"]) or ""
        flags.update(name.lower() for name in re.findall(r"hw\.optional\.(?:arm\.FEAT_)?(\w+): 1", out))
    mhz, source = _clock() if cpuinfo is None else (_as_float(f.get("cpu MHz")), "the given cpuinfo")
    name = cpu_model() if cpuinfo is None else f.get("model name", "unknown")
    return CpuIdentity(name, vendor, family, model, stepping, microarchitecture(vendor, family, model),
                       tuple(k for k in KEY_FLAGS if k in flags), usable_cores(), mhz, source)


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
