# `make test` and `make demo` create .venv (pinned by constraints.txt) when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Where the datasets are, or will be downloaded to.
DATA_ROOT ?= data
RUNS      ?= results/runs
REPORT    ?= results/report

.PHONY: install test demo bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt --config-settings editable_mode=compat -e '.[test,launchers]'
	@touch $@

test: install
	$(BIN)/python -m pytest

demo: install
	$(BIN)/normbench train -m experiment=smoke data.root=$(DATA_ROOT) paths.runs=$(RUNS)
	@$(BIN)/normbench report $(RUNS) --out $(REPORT) --quiet
	@echo
	@echo "Runs:        $(RUNS)"
	@echo "Tables:      $(REPORT)/tables.md (claims: $(REPORT)/claims.md)"
	@echo "TensorBoard: $(BIN)/tensorboard --logdir $(RUNS)"

bench: install
	$(BIN)/python scripts/bench_norms.py
	$(BIN)/python scripts/bench_overhead.py

clean:
	rm -rf $(VENV) .pytest_cache
