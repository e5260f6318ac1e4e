#!/usr/bin/env bash
# Install PyCUDA (the `cuda` extra) into the venv whose python is $1. With a CUDA toolkit but no NVIDIA
# driver (CI, laptops), PyCUDA is built against a stand-in libcuda (scripts/make_libcuda_stub.py) kept in
# build/cuda-stub/: it is only ever put on the library path by the tests that need it, never system-wide.
set -euo pipefail
PY=${1:-.venv/bin/python}
CUDA=${CUDA_HOME:-/usr/local/cuda}
if [ ! -x "$CUDA/bin/nvcc" ]; then
  echo "install-pycuda: no CUDA toolkit at $CUDA: the cuda backend stays unavailable (install the toolkit)"
  exit 0
fi
real=$(ldconfig -p 2>/dev/null | awk '/libcuda\.so\.1 /{print $NF; exit}')
if [ -n "$real" ]; then
  libdir=$(dirname "$real")
  echo "install-pycuda: building against the NVIDIA driver in $libdir"
else
  libdir="$(pwd)/build/cuda-stub"
  [ -e "$libdir/libcuda.so.1" ] || "$PY" scripts/make_libcuda_stub.py "$libdir" --cuda "$CUDA"
fi
if "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('pycuda') is None)"; then
  exit 0
fi
home=$(mktemp -d)
trap 'rm -rf "$home"' EXIT
cat > "$home/.aksetup-defaults.py" <<CONF
CUDA_ROOT = "$CUDA"
CUDA_ENABLE_CURAND = False
CUDADRV_LIB_DIR = ["$libdir"]
CUDADRV_LIBNAME = ["cuda"]
CUDART_LIB_DIR = ["$CUDA/lib64"]
CXXFLAGS = ["-w"]
CONF
echo "install-pycuda: building pycuda (about 90 s)"
HOME="$home" PATH="$CUDA/bin:$PATH" PIP_CACHE_DIR="${PIP_CACHE_DIR:-$HOME/.cache/pip}" \
  "$PY" -m pip install -q "pycuda>=2024.1"
