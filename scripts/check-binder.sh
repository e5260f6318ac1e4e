#!/usr/bin/env bash
# The Binder / conda route, followed step by step in a fresh environment (CI runs it: `make test-binder`):
#   1. install exactly what environment.yml lists (here with pip into a new venv: conda is not on CI's machine;
#      tests/test_packaging.py keeps its names equal to pyproject's), plus apt.txt's packages when root;
#   2. run postBuild;
#   3. execute every chapter from top to bottom (nbconvert, which JupyterLab brings): none may stop.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
ENV_DIR=build/binder-env
rm -rf "$ENV_DIR" build/binder-out
"$PYTHON" -m venv "$ENV_DIR"
PY="$ENV_DIR/bin/python"
"$PY" -m pip install -q --upgrade pip
mapfile -t reqs < <("$PY" - <<'PYEOF'
import re
text = open("environment.yml").read()
skip = {"python", "pip", "c-compiler"}
for line in text[text.index("dependencies:"):].splitlines():
    m = re.match(r"^\s+- (?!pip:)(.+?)\s*(#.*)?$", line)
    if m and re.match(r"[A-Za-z0-9_.\-]+", m.group(1)).group(0) not in skip:
        print(m.group(1))
PYEOF
)
echo "check-binder: installing ${#reqs[@]} packages from environment.yml"
"$PY" -m pip install -q "${reqs[@]}"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=()
  while read -r pkg; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done < <(grep -v '^#' apt.txt)
  [ ${#missing[@]} -eq 0 ] || { apt-get update -qq >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
fi
PATH="$PWD/$ENV_DIR/bin:$PATH" bash postBuild
echo "check-binder: executing every chapter in the Binder environment"
mkdir -p build/binder-out
for nb in notebooks/[0-9]*.ipynb; do
  MPLBACKEND=module://matplotlib_inline.backend_inline "$ENV_DIR/bin/jupyter" nbconvert --log-level=ERROR \
    --to notebook --execute --ExecutePreprocessor.timeout=600 --output-dir build/binder-out "$nb"
done
echo "check-binder: every chapter ran to the end"
