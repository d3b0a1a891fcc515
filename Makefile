# Two entry points for a newcomer: `make demo` and `make test`.
# Both create .venv and install the package into it when pyproject.toml changed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ray-pipeline demo --config configs/demo.yaml

test: $(STAMP)
	RAY_AUTH_MODE=disabled $(BIN)/python -m pytest tests

bench: $(STAMP)
	$(BIN)/python benchmarks/ingest.py

clean:
	rm -rf data/demo .pytest_cache
