# `make demo`: set up (once) and run the main job on Fashion-MNIST.  `make test`: set up and run the tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint format clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/compress run recipes/demo.yaml

# The tests run on every core (at most 4 workers; most tests are one-threaded, many wait on subprocesses).
XDIST := -n auto --maxprocesses 4 --dist worksteal

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/pytest tests $(XDIST)

# The quick loop while editing: no slow, multi-process or GPU tests (CI runs `make test`, all of them).
test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/pytest tests $(XDIST) -m "not slow and not ddp and not gpu"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf runs .pytest_cache .ruff_cache
