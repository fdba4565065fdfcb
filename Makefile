# The two commands of the README: `make train` and `make test`. Each does its own set-up: a
# Python venv for the project, dlsys installed into it, and Debian's Fashion-MNIST package.
# Everything runs through the venv's python, never a `dlsys` or `pytest` found on PATH.

# The Python that makes the venv (3.10 or newer); Debian's python3 is used when it cannot.
PYTHON ?= python3
FASHION_MNIST := /usr/share/datasets/fashion-mnist
# The default corpus of dlsys train --model gpt.
FORTUNES := /usr/share/games/fortunes
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_GET := DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get

# An active venv is used as it is (pip refuses Debian's own Python outside one); otherwise
# the project's own .venv, made on first use. `rm -rf .venv` starts it afresh.
VENV := $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV),.venv)
VENV_PYTHON := $(VENV)/bin/python
PIP_INSTALL := $(VENV_PYTHON) -m pip install --quiet --disable-pip-version-check
# Markers of what has been installed from this checkout into the venv, redone when
# pyproject.toml changes. Named per checkout: one active venv may serve several.
INSTALLED := $(VENV)/.dlsys-installed-$(shell printf %s "$(CURDIR)" | cksum | cut -d' ' -f1)

.PHONY: setup setup-test data train test lint bench

# Debian's python3 has no ensurepip until python3-venv is installed, and a venv made without
# it has no pip; a half-made venv is removed so that the next run tries again.
$(VENV_PYTHON):
	@if $(PYTHON) -c 'import sys, ensurepip, venv; sys.exit(sys.version_info < (3, 10))' \
	    2>/dev/null; then \
	  python=$(PYTHON); \
	else \
	  echo "make: $(PYTHON) cannot make a venv (3.10+ with ensurepip needed); using Debian's python3" >&2; \
	  /usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null || \
	    { $(APT_GET) update -qq && $(APT_GET) install -y -qq python3-venv; } || exit 1; \
	  python=/usr/bin/python3; \
	fi; \
	echo "making the project's venv in $(VENV) with $$python"; \
	$$python -m venv $(VENV) || { rm -rf $(VENV); exit 1; }

# What `make train` needs: dlsys and its runtime dependencies only.
$(INSTALLED)-runtime: pyproject.toml | $(VENV_PYTHON)
	$(PIP_INSTALL) -e .
	@touch $@

# What `make test` needs besides: the test tools, and the optional features' packages so that
# their tests run. The references are never dependencies: onnxruntime for the ONNX tests,
# PyTorch (PyPI's torch 2.13.0 for Linux x86-64 is its CPU build, 190 MB) for the comparisons
# with it, onnxscript for PyTorch's default ONNX exporter, and torchvision and transformers,
# whose architectures (random weights, never downloaded) the ONNX tests export. torchvision
# 0.28.0 pins torch 2.13.0 and pulls no CUDA package; its compiled operators do not load
# beside the CPU torch, and dlsys.testing.zoo stands in for the two it asks for. Installed
# again when this file changes too, since the references are named here.
TEST_REFERENCES := onnxruntime torch==2.13.0 onnxscript torchvision==0.28.0 transformers
$(INSTALLED)-test: pyproject.toml Makefile | $(VENV_PYTHON)
	$(PIP_INSTALL) -e '.[test,onnx,distributed]' $(TEST_REFERENCES)
	@touch $@ $(INSTALLED)-runtime

setup: $(INSTALLED)-runtime
setup-test: $(INSTALLED)-test

# Fashion-MNIST from Debian's package, the default data set when no MNIST is given, and
# Debian's fortunes, the GPT's default corpus: both installed when either is missing.
data:
	@[ -d $(FASHION_MNIST) ] && [ -d $(FORTUNES) ] || { $(APT_GET) update -qq && \
	  $(APT_GET) install -y -qq dataset-fashion-mnist fortunes; }

# The default data set is installed only when no other is named ($DLSYS_DATA or --data).
train: setup $(if $(DLSYS_DATA)$(findstring --data,$(ARGS)),,data)
	$(VENV_PYTHON) -m dlsys train $(ARGS)

test: setup-test data
	$(VENV_PYTHON) -m pytest -q $(PYTEST_ARGS)

lint: setup-test
	$(VENV_PYTHON) -m ruff check dlsys tests benchmarks

bench: setup-test data
	$(VENV_PYTHON) benchmarks/bench_mlp_epoch.py
	$(VENV_PYTHON) benchmarks/bench_matmul.py
	$(VENV_PYTHON) benchmarks/bench_startup.py
	$(VENV_PYTHON) benchmarks/bench_optim.py
	$(VENV_PYTHON) benchmarks/bench_reduce.py
	$(VENV_PYTHON) benchmarks/bench_onnx.py
	$(VENV_PYTHON) benchmarks/bench_distributed.py
	$(VENV_PYTHON) benchmarks/bench_cnn.py
	$(VENV_PYTHON) benchmarks/bench_transformer.py
	$(VENV_PYTHON) benchmarks/bench_attention.py
	$(VENV_PYTHON) benchmarks/bench_batched_matmul.py
	$(VENV_PYTHON) benchmarks/bench_transformer_ops.py
	$(VENV_PYTHON) benchmarks/bench_memory.py
	$(VENV_PYTHON) benchmarks/bench_depthwise.py
	$(VENV_PYTHON) benchmarks/bench_run_overhead.py
