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
