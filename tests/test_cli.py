import subprocess
import sys

import chordlab


def test_info_report_lists_everything():
    r = subprocess.run([sys.executable, "-m", "chordlab", "info"], capture_output=True, text=True, check=True)
    for needle in (f"chordlab {chordlab.__version__}", "reference", "tiled", "AVX2", "NEON", "nvcc", "CUDA", "GPUs"):
        assert needle in r.stdout, needle


def test_backends_table():
    rows = chordlab.backends()
    names = [r.name for r in rows]
    assert {"reference", "tiled"} <= set(names)
    for r in rows:
        assert r.available or r.reason  # unavailable backends always say why
    assert "backend" in str(rows)


def test_cli_without_command_shows_help():
    r = subprocess.run([sys.executable, "-m", "chordlab"], capture_output=True, text=True)
    assert r.returncode == 1 and "info" in r.stdout


ZEN5 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC
stepping\t: 1
cpu MHz\t\t: 2596.096
flags\t\t: fpu sse avx2 fma f16c avx512f avx512_bf16 avx512_vp2intersect

processor\t: 1
"""
ZEN4 = ZEN5.replace("cpu family\t: 26", "cpu family\t: 25").replace("model\t\t: 2", "model\t\t: 17").replace(
    " avx512_vp2intersect", "")


def test_cpu_identity_tells_two_amd_epycs_apart():
    from chordlab.sysinfo import cpu_identity

    zen5, zen4 = cpu_identity(ZEN5), cpu_identity(ZEN4)
    assert zen5.model_name == zen4.model_name == "AMD EPYC"
    assert (zen5.family, zen5.model, zen5.stepping, zen5.uarch) == (26, 2, 1, "Zen 5")
    assert (zen4.family, zen4.model, zen4.uarch) == (25, 17, "Zen 4")
    assert zen5.key() != zen4.key()
    assert "avx512_vp2intersect" in zen5.flags and "avx512_vp2intersect" not in zen4.flags
    line = zen5.describe()
    for needle in ("AMD EPYC", "family 26 model 2 stepping 1 = Zen 5", "avx512_bf16", "no amx_tile", "2596 MHz"):
        assert needle in line, needle


def test_info_names_the_cpu_precisely():
    from chordlab.sysinfo import cpu_identity

    me = cpu_identity()
    r = subprocess.run([sys.executable, "-m", "chordlab", "info"], capture_output=True, text=True, check=True)
    assert "identity" in r.stdout and "flags" in r.stdout and "clock" in r.stdout
    if me.family is not None:
        assert f"family {me.family} model {me.model} stepping {me.stepping}" in r.stdout
    assert " ".join(me.flags) in r.stdout
