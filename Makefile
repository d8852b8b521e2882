# Each target creates .venv and installs what it needs on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: help run train-demo serve test lint format bench reproduce docker-test clean

help:
	@echo "make run        train the embedded demo AFM, export its bundle, serve it on $(HOST):$(PORT)"
	@echo "make test       the test suite (what CI runs)"
	@echo "make lint       ruff check, ruff format --check, mypy"
	@echo "make bench      serving and training benchmarks (results in BENCHMARKS.md)"
	@echo "make reproduce  the paper's frappe result (FM, then AFM from FM's embeddings)"
	@echo "make docker-test  build the images, run the compose stack, check it through nginx"

$(BIN)/.installed-train: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -e '.[serve,train,dev]'
	touch $@

run: $(BIN)/.installed-train
	$(BIN)/python -m training train --dataset synthetic --task ctr --model afm --name demo-afm --out models --epochs 10 --lr 0.005 --embedding-dim 32 --attention-dim 32
	$(BIN)/python -m service --models-dir models --model-name demo-afm --host $(HOST) --port $(PORT)

test: $(BIN)/.installed-train
	$(BIN)/python -m pytest

lint: $(BIN)/.installed-train
	$(BIN)/ruff check training service tests benchmarks
	$(BIN)/ruff format --check training service tests benchmarks
	$(BIN)/mypy

format: $(BIN)/.installed-train
	$(BIN)/ruff check --fix training service tests benchmarks
	$(BIN)/ruff format training service tests benchmarks

bench: $(BIN)/.installed-train
	$(BIN)/python -m benchmarks

reproduce: $(BIN)/.installed-train
	$(BIN)/python -m training reproduce --out models

docker-test:
	bash deploy/docker-test.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
