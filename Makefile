# The two commands of the README: `make train` and `make test`. Each does its own set-up.
PYTHON ?= python3
FASHION_MNIST := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup data train test lint bench

setup:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[test]'

# Fashion-MNIST from Debian's package, the default data set when no MNIST is given.
data:
	@[ -d $(FASHION_MNIST) ] || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq dataset-fashion-mnist; }

train: setup data
	dlsys train $(ARGS)

test: setup data
	$(PYTHON) -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(PYTHON) -m ruff check dlsys tests benchmarks

bench: setup data
	$(PYTHON) benchmarks/bench_mlp_epoch.py
	$(PYTHON) benchmarks/bench_matmul.py
	$(PYTHON) benchmarks/bench_startup.py
