# chordlab: `make lab` and `make test` are the two commands; each sets up what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.chordlab-installed
LAB_STAMP := $(VENV)/.chordlab-lab-installed
SOURCES := pyproject.toml setup.py $(wildcard csrc/*.c csrc/*.h csrc/*.inc csrc/*.py)
NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))
NBVAL_FLAGS := --nbval --nbval-current-env --nbval-sanitize-with notebooks/nbval_sanitize.cfg -p no:cacheprovider
# root (CI, containers) needs --allow-root to start JupyterLab
LAB_ARGS ?= $(if $(filter 0,$(shell id -u)),--allow-root,)

export PIP_DISABLE_PIP_VERSION_CHECK := 1
export MPLBACKEND := Agg
INLINE := MPLBACKEND=module://matplotlib_inline.backend_inline
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: setup lab test test-binder test-browser docs-images gpu-test lint unit nbval nbval-fallback notebooks clean system-deps

$(STAMP): $(SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@ $(LAB_STAMP)

# `make lab` needs only the chapters' packages (the `lab` extra); `make test` installs the rest.
$(LAB_STAMP): $(SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q -e '.[lab]'
	touch $@

setup: $(STAMP)  ## create .venv and install chordlab with its dev extras

lab: $(LAB_STAMP)  ## start JupyterLab at the repository root, open on notebooks/ (csrc/ and cuda/ one click away)
	$(INLINE) $(BIN)/jupyter lab --notebook-dir=. --LabApp.default_url=/lab/tree/notebooks $(LAB_ARGS)

test: $(STAMP)  ## system parts, PyCUDA, lint, unit tests, and every notebook under nbval
	scripts/system-deps.sh
	scripts/install-pycuda.sh $(BIN)/python
	scripts/install-torch.sh $(BIN)/python
	$(MAKE) --no-print-directory lint unit nbval nbval-fallback

test-binder:  ## the Binder/conda route (environment.yml, apt.txt, postBuild) in a fresh environment, chapters run
	scripts/check-binder.sh

test-browser: $(STAMP)  ## chapter 06 in JupyterLab in a real chromium (Playwright); screenshots in build/browser
	scripts/system-deps.sh browser
	$(BIN)/python -m pytest -q -p no:cacheprovider browser_tests

docs-images: test-browser  ## the README's screenshot and plot, regenerated
	mkdir -p docs/images
	cp build/browser/tuning_panel.png docs/images/tuning_panel.png
	$(BIN)/python scripts/make_doc_images.py docs/images

# GPU_PYTHON=python3: use a Python that already has NumPy, ml_dtypes, pytest, hypothesis and PyCUDA (a GPU
# machine with no network), with the repository on its path instead of an installed venv.
ifeq ($(GPU_PYTHON),)
GPU_PY := $(BIN)/python
GPU_DEPS := $(STAMP)
else
GPU_PY := PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_PYTHON)
GPU_DEPS :=
endif

gpu-test: $(GPU_DEPS)  ## on a machine with an NVIDIA GPU: the GPU tests and the CUDA benchmark
	$(if $(GPU_PYTHON),,scripts/install-pycuda.sh $(BIN)/python)
	$(GPU_PY) -m pytest -q -rs -p no:cacheprovider -m gpu tests/test_cuda_gpu.py
	$(GPU_PY) benchmarks/attention_cuda.py

system-deps:  ## install (as root) the optional tools: aarch64 cross compiler, qemu, ...
	scripts/system-deps.sh

lint: $(STAMP)
	$(BIN)/ruff check .

unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not gpu" tests

nbval: $(STAMP)
	$(INLINE) $(BIN)/python -m pytest -q $(NBVAL_FLAGS) $(NOTEBOOKS)

nbval-fallback: $(STAMP)  ## every chapter runs to the end with only the NumPy backends (as on a bare laptop)
	CHORDLAB_DISABLE=optional $(INLINE) $(BIN)/python -m pytest -q --nbval-lax --nbval-current-env \
	  -p no:cacheprovider $(NOTEBOOKS)

notebooks: $(STAMP)  ## rebuild notebooks from notebooks/src and re-execute them, storing outputs
	for src in notebooks/src/*.py; do \
	  nb=notebooks/$$(basename $$src .py).ipynb; \
	  $(BIN)/jupytext --quiet --to ipynb --output $$nb $$src && \
	  $(INLINE) $(BIN)/jupyter nbconvert --log-level=WARN --to notebook --execute --inplace \
	    --ExecutePreprocessor.timeout=600 $$nb || exit 1; \
	done

clean:
	rm -rf $(VENV) build *.egg-info chordlab/*.so .pytest_cache .hypothesis .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
