"""The PyCUDA code path, tested up to the launch on a machine with the CUDA toolkit but no GPU.

PyCUDA was built by scripts/install-pycuda.sh against the stand-in libcuda in build/cuda-stub/ (every driver
call answers CUDA_ERROR_NO_DEVICE). With it on the library path, PyCUDA imports and compiles kernels with
nvcc, and the backend must report "no CUDA device"; without it, "no NVIDIA driver". Each case runs in a
fresh process so the library path applies."""

import ctypes.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STUB = ROOT / "build" / "cuda-stub"


def _missing(what: str):
    msg = f"{what}: run `make test` (it runs scripts/install-pycuda.sh) or `scripts/install-pycuda.sh .venv/bin/python`"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="module")
def stub_env():
    if ctypes.util.find_library("cuda"):
        pytest.skip("a real NVIDIA driver is installed: the GPU tests (make gpu-test) cover this machine")
    import importlib.util

    if importlib.util.find_spec("pycuda") is None:
        _missing("pycuda is not installed")
    if not (STUB / "libcuda.so.1").exists():
        _missing("the stand-in libcuda is missing")
    return {**os.environ, "LD_LIBRARY_PATH": f"{STUB}:{os.environ.get('LD_LIBRARY_PATH', '')}"}


def run(code: str, env) -> dict:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


REASON = "import json, chordlab; print(json.dumps(chordlab.get_backend('cuda').available().reason))"


def test_without_a_driver_the_backend_says_so(stub_env):
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    reason = run(REASON, env)
    assert "no NVIDIA driver (libcuda.so.1 not found)" in reason


def test_with_the_stand_in_init_fails_with_no_device(stub_env):
    reason = run(REASON, stub_env)
    assert reason.startswith("no CUDA device:") and "no CUDA-capable device" in reason


def test_pycuda_compiles_every_version_up_to_the_launch(stub_env):
    code = """
import json
from chordlab import step5_cuda as c
sizes = {}
for v in c.VERSIONS:
    cubin = c.compile_cubin(c.kernel_config(v, 64), arch="sm_90")
    assert cubin[:4] == b"\\x7fELF", v
    sizes[v] = len(cubin)
print(json.dumps(sizes))
"""
    sizes = run(code, stub_env)
    assert set(sizes) == {"v1", "v2", "v3", "v4"} and all(n > 1000 for n in sizes.values())


def test_attention_on_cuda_raises_the_reason(stub_env):
    code = """
import json, numpy as np, chordlab
q = np.zeros((1, 1, 4, 32), np.float32)
try:
    chordlab.attention(q, q, q, backend="cuda")
except RuntimeError as e:
    print(json.dumps(str(e)))
"""
    msg = run(code, stub_env)
    assert msg.startswith("backend 'cuda' is unavailable: no CUDA device")
