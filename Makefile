# Two commands on a fresh clone:  `make repro` (set up + run the pipeline)  and  `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup repro test clean

$(BIN)/.installed: requirements.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

setup: $(BIN)/.installed
	test -d .git || (git init -q && git add -A && git -c user.name=dgl -c user.email=dgl@localhost commit -qm "initial")
	test -d .dvc || dvc init -q

repro: setup
	dvc repro

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

clean:
	rm -rf data models plots/*.partial mlflow.db
