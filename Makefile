# Two commands on a fresh clone:  `make repro` (set up + run the pipeline)  and  `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup repro test test-quick lint rehearse gpu-check clean

$(BIN)/.installed: requirements.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

setup: $(BIN)/.installed
	test -d .git || (git init -q && git add -A && git -c user.name=dgl -c user.email=dgl@localhost commit -qm "initial")
	test -d .dvc || dvc init -q

repro: setup
	dvc repro

# 2 workers (pytest-xdist), each given whole modules in collection order; plain `pytest` runs serially
PYTEST := $(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

test: $(BIN)/.installed
	$(PYTEST)

test-quick: $(BIN)/.installed  # for development: leaves out the tests marked slow (tests/conftest.py)
	$(PYTEST) -m "not slow"

lint: $(BIN)/.installed  # ruff, configured in pyproject.toml; `ruff check --fix . && ruff format .` fixes most
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

rehearse: setup  # the real-data recipes at the paper's shapes on CPU, in a temporary folder (README, "Real data")
	$(BIN)/python -m experiments.rehearse

gpu-check: $(BIN)/.installed  # the CUDA tests and benchmarks, one JSON summary (README, "GPUs"); without CUDA: skips
	$(BIN)/python -m bench.gpu_check

clean:
	rm -rf data models plots/*.partial mlflow.db
