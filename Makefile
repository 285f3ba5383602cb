# oncocoder: `make setup`, then `make test`. Everything else is listed by `make help`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU torch by default (the version below is a CPU build where the package index offers one). On a GPU machine:
#   make setup TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
TORCH_VERSION ?= 2.13.0
TORCH_INDEX_URL ?=
TORCH_INDEX := $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL) --extra-index-url https://pypi.org/simple,)
PYTEST_ARGS ?=

.PHONY: help setup install models index test test-fast bench eval demo browser clean

help:
	@echo "make setup   - virtualenv, pinned dependencies (CPU torch), offline models, retrieval index"
	@echo "make test    - the whole test suite (slow tests included)"
	@echo "make bench   - benchmarks; results in benchmarks/results/"
	@echo "make eval    - all modes on the dev set and the held-out catalogue split; report in the cache"
	@echo "make demo    - the Gradio demo on http://127.0.0.1:7860"

setup: install models index

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_INDEX) torch==$(TORCH_VERSION)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

models: install
	$(BIN)/oncocoder models prepare

index: models
	$(BIN)/oncocoder index build

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

bench: install
	$(BIN)/python benchmarks/retrieval.py
	$(BIN)/python benchmarks/coder.py

eval: install
	$(BIN)/oncocoder eval --preset default

demo: install
	$(BIN)/oncocoder demo

# Debian's Chromium for the browser test (no browser download at run time).
browser:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

clean:
	rm -rf build *.egg-info .pytest_cache
