#!/usr/bin/env bash
# Install PyTorch's CPU build into the venv whose python is $1, for the precision tests (chapter 12 compares the
# 16-bit kernels with torch's CPU SDPA in the same dtype). In CI it is always installed; elsewhere only when asked
# (CHORDLAB_TORCH=1), because on a laptop `pip install torch` may download a CUDA build of several GB: those tests
# then skip, saying how to install it (`pip install -e .[bench]`).
set -euo pipefail
PY=${1:-.venv/bin/python}
if "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)"; then
  exit 0
fi
if [ -z "${CI:-}" ] && [ -z "${CHORDLAB_TORCH:-}" ]; then
  echo "install-torch: torch not installed; the tests that compare with it skip (CHORDLAB_TORCH=1 make test installs it)"
  exit 0
fi
echo "install-torch: installing torch (CPU) for the precision tests"
"$PY" -m pip install -q "torch==2.13.0"
