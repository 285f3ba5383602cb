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

.PHONY: help setup install models index test test-fast bench eval demo browser adapters clean

help:
	@echo "make setup   - virtualenv, pinned dependencies (CPU torch), offline models, retrieval index"
	@echo "make test    - the whole test suite (slow tests included)"
	@echo "make bench   - benchmarks; results in benchmarks/results/"
	@echo "make eval    - all modes on the dev set and the held-out catalogue split; report in the cache"
	@echo "make demo    - the Gradio demo on http://127.0.0.1:7860"
	@echo "make adapters - rebuild the training data and retrain the shipped LoRA adapters (hours on a CPU)"

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

# The default adapters as shipped in agent/adapters/ (about 2 hours on 2 CPU cores; see their manifest.json).
CACHE ?= $(or $(ONCOCODER_CACHE),$(HOME)/.cache/oncocoder)
TRAIN = $(BIN)/oncocoder finetune --epochs 1 --batch-size 8 --lr 2e-4 --dev-size 200 --seed 13
adapters: index
	rm -rf $(CACHE)/adapters/ft $(CACHE)/adapters/rag-ft
	$(BIN)/oncocoder data build --out $(CACHE)/data/v1 --force
	$(TRAIN) --data $(CACHE)/data/v1/plain.jsonl --out $(CACHE)/adapters/ft --limit 18000 --warmup-steps 30 \
		--eval-every 500 --checkpoint-every 250
	$(TRAIN) --data $(CACHE)/data/v1/rag.jsonl --out $(CACHE)/adapters/rag-ft --limit 8200 --warmup-steps 20 \
		--eval-every 250 --checkpoint-every 100
	for a in ft rag-ft; do mkdir -p agent/adapters/$$a && \
		cp $(CACHE)/adapters/$$a/adapter_config.json $(CACHE)/adapters/$$a/adapter_model.safetensors \
		   $(CACHE)/adapters/$$a/manifest.json agent/adapters/$$a/; done
	cp $(CACHE)/data/v1/heldout.jsonl eval/data/heldout_catalogue.jsonl

# Debian's Chromium for the browser test (no browser download at run time).
browser:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

clean:
	rm -rf build *.egg-info .pytest_cache
