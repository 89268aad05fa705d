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

# The product's story on language-model curves: held-out Pythia lambada_openai accuracy, read
# in place from ../shared/data (shared_corpus), each curve with the file's other runs as task
# memory; the summary line compares with patience-5 on the same curves.
run: $(STAMP_RUN)
	$(BIN)/metastop analyze "$$($(BIN)/python -c 'from metastop.curves.paths import shared_corpus; print(shared_corpus("pythia_evals.parquet"))')" \
		--task lambada_openai --metric acc --held-out --limit 8 \
		--context leave-one-run-out --png reports/analyze.png

test: $(STAMP_DEV)
	$(BIN)/python -m pytest

bench: $(STAMP_DEV)
	$(BIN)/python scripts/bench_io.py
	$(BIN)/python scripts/bench_predictor.py
	$(BIN)/python scripts/bench_runtime.py
	$(BIN)/python scripts/bench_stopping.py
	$(BIN)/python scripts/bench_sweeps.py
	$(BIN)/python scripts/bench_multitask.py
	$(BIN)/python scripts/bench_batchsize.py --n-jobs 2
	$(BIN)/python scripts/bench_freeze.py --jobs 2

clean-venv:
	rm -rf $(VENV)

# Fuzzing: the fuzz tests of `make test` with many more examples (derandomized, so a run repeats);
# the cases tried per target go to reports/fuzz.json.
FUZZ_EXAMPLES ?= 1000
.PHONY: fuzz
fuzz: $(STAMP_DEV)
	rm -f reports/fuzz.json
	METASTOP_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) METASTOP_FUZZ_REPORT=reports/fuzz.json \
		$(BIN)/python -m pytest tests/test_fuzz_readers.py tests/test_fuzz_models.py \
		tests/test_fuzz_registry.py tests/test_fuzz_cli.py -q -p no:cacheprovider -W ignore::hypothesis.errors.HypothesisWarning
