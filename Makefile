# `make demo` and `make test` each set up what they need: a local .venv with the pinned
# dependencies, then the compiled extension (built against the venv's torch, no build isolation).
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
DEPS := $(VENV)/.deps-stamp
EXT := $(VENV)/.ext-stamp
EXT_SOURCES := setup.py $(wildcard csrc/*.cpp csrc/*.h csrc/cuda/*.cu)
# The local package index prints one harmless warning per package it does not hold.
QUIET_PIP := grep -v "is ignored: it is neither a file nor a directory" || true

.PHONY: venv build test demo bench clean

venv: $(DEPS)

$(DEPS): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -r requirements.txt 2>&1 | { $(QUIET_PIP); }
	$(BIN)/python -c "import torch, transformers, lightning"
	touch $@

$(EXT): $(DEPS) $(EXT_SOURCES)
	$(PIP) install --no-build-isolation --no-deps -e . 2>&1 | { $(QUIET_PIP); }
	$(BIN)/python -c "import entrgi_core.ops as o; assert o.extension_available(), o.build_info(); print('[entrgi] compiled op:', o.build_info())"
	touch $@

build: $(EXT)

test: $(EXT)
	$(BIN)/python -m pytest -q tests

demo: $(EXT)
	$(BIN)/python -m entrgi_core.demo

bench: $(EXT)
	$(BIN)/python benchmarks/bench_relax.py

clean:
	rm -rf build $(VENV) *.egg-info entrgi_core/_C*.so outputs
