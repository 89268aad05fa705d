# The README's two commands: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP_RUN := $(VENV)/.installed-run
STAMP_DEV := $(VENV)/.installed-dev

.PHONY: run test bench clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP_RUN): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(STAMP_DEV): pyproject.toml | $(BIN)/python
	# torch is pinned to the CPU build that lies on disk; never let pip pick another one.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@ $(STAMP_RUN)

run: $(STAMP_RUN)
	$(BIN)/metastop analyze data/sample_curves.parquet --png reports/analyze.png

test: $(STAMP_DEV)
	$(BIN)/python -m pytest

bench: $(STAMP_DEV)
	$(BIN)/python scripts/bench_io.py
	$(BIN)/python scripts/bench_predictor.py
	$(BIN)/python scripts/bench_runtime.py
	$(BIN)/python scripts/bench_stopping.py

clean-venv:
	rm -rf $(VENV)
