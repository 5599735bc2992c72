# Two commands on a fresh machine:  `make train`  and  `make test`.
# Each creates the virtual environment (.venv) when it is missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: train explore test test-fast app clean

$(BIN)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

## Train the default recipe (CIFAR-10 from the Hub; pass ARGS="--dataset ../shared/datasets/cifar10" offline).
train: $(BIN)/.installed
	$(BIN)/python train.py $(ARGS)

## Look at a dataset only: summary and plots, no training.
explore: $(BIN)/.installed
	$(BIN)/python train.py --explore_only $(ARGS)

## Every test (heavier ones included, as CI runs them).
test: $(BIN)/.installed
	$(BIN)/python -m pytest -q $(ARGS)

## Only the fast tests.
test-fast: $(BIN)/.installed
	$(BIN)/python -m pytest -q -m "not slow" $(ARGS)

app: $(BIN)/.installed
	$(BIN)/python app.py $(ARGS)

clean:
	rm -rf $(VENV) outputs .pytest_cache
