# The README's two commands: `make demo` and `make test`. Both create the virtual environment
# on first use. TORCH_SPEC picks the torch build: the default pin takes the CPU wheel on this
# kind of machine and the CUDA wheel from PyPI on a Linux GPU machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
MODALITY ?= cxr
EPOCHS ?=
# ddad (default) or salad (ddad_bundle/docs/salad.md)
METHOD ?= ddad
DEPLOY ?=

.PHONY: demo test test-fast lint bench env dev-env deploy-env clean-runs

# Three layers, each installed once (stamp files in the venv): `env` is what training,
# evaluation, scoring and export need (the demo's environment); `dev-env` adds pytest and ruff;
# `deploy-env` adds the MONAI Deploy extra (about 480 MB, CUDA-related wheels among them), which
# only the deployment application and its tests use.
env: $(VENV)/.installed
dev-env: $(VENV)/.dev
deploy-env: $(VENV)/.deploy

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.dev: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

$(VENV)/.deploy: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[deploy]"
	touch $@

demo: env
	$(PY) -m ddad_bundle demo --modality $(MODALITY) $(if $(EPOCHS),--epochs $(EPOCHS),) --method $(METHOD)

# Everything: unit tests and the end-to-end runs that train networks (marker `slow`).
test: dev-env deploy-env
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 tests

# The unit tests alone (a minute or two): what to run while editing.
test-fast: dev-env
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 -m "not slow" tests

# Lint (rules in pyproject.toml) and the formatter's check (`ruff format` fixes it); CI runs both before the tests.
lint: dev-env
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Training and inference speed on this machine: JSON + table into ddad_bundle/docs/performance.md.
bench: env
	$(PY) benchmarks/speed.py --out ddad_bundle/docs/performance.md

clean-runs:
	rm -rf runs
