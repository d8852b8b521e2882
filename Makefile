# Each target creates .venv and installs what it needs on first use.
# The first Python >= 3.11 on PATH (3.11 first: the pinned torch wheel is built for it here).
PYTHON ?= $(shell for p in python3.11 python3.12 python3.13 python3; do \
	command -v $$p >/dev/null && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
	&& { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
MODELS ?= models

.PHONY: help run train-demo serve test lint format bench reproduce docker-test clean

help:
	@echo "make run        train the embedded demo AFM, export its bundle, serve it on $(HOST):$(PORT)"
	@echo "make serve      serve a bundle in $(MODELS)/ without training (MODEL=name: promoted, else newest)"
	@echo "make test       the test suite with coverage, failing below the floor (what CI runs)"
	@echo "make lint       ruff check, ruff format --check, mypy (strict)"
	@echo "make bench      serving and training benchmarks (results in BENCHMARKS.md)"
	@echo "make reproduce  the paper's frappe result (FM, then AFM from FM's embeddings)"
	@echo "make docker-test  build the images, run the compose stack, check it through nginx"

$(BIN)/.installed-train: pyproject.toml
	@test -n "$(PYTHON)" || { echo "no Python >= 3.11 on PATH (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -e '.[serve,train,dev]'
	touch $@

run: train-demo
	$(MAKE) serve MODEL=demo-afm

train-demo: $(BIN)/.installed-train
	$(BIN)/python -m training train --dataset synthetic --task ctr --model afm --name demo-afm --out $(MODELS) --epochs 10 --lr 0.005 --embedding-dim 32 --attention-dim 32

serve: $(BIN)/.installed-train
	$(BIN)/python -m service --models-dir $(MODELS) $(if $(MODEL),--model-name $(MODEL)) --host $(HOST) --port $(PORT)

test: $(BIN)/.installed-train
	$(BIN)/python -m pytest --cov --cov-report=term:skip-covered

lint: $(BIN)/.installed-train
	$(BIN)/ruff check training service tests benchmarks deploy
	$(BIN)/ruff format --check training service tests benchmarks deploy
	$(BIN)/mypy

format: $(BIN)/.installed-train
	$(BIN)/ruff check --fix training service tests benchmarks deploy
	$(BIN)/ruff format training service tests benchmarks deploy

bench: $(BIN)/.installed-train
	$(BIN)/python -m benchmarks

reproduce: $(BIN)/.installed-train
	$(BIN)/python -m training reproduce --out $(MODELS)

docker-test:
	bash deploy/docker-test.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage htmlcov
