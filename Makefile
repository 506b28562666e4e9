# genms: set-up, main job, tests and benchmarks. Every target installs what it needs first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.genms-installed

.PHONY: setup demo test bench index clean

setup: $(STAMP)

# torch first, on its own: the pinned CPU build lies on disk; asked for indirectly, pip would
# fetch a multi-GB CUDA build instead.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

# The main job on the offline default (no network, no API key).
demo: setup
	$(BIN)/genms doctor
	$(BIN)/genms formula check SrTiO3 MgAl2O4 Sr4Ti4O12 Fe3O4 Zn2Ti2O7 Cs2AgBiBr6 Xx2O
	$(BIN)/genms structure check evals/examples/*.cif

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python -m evals.bench_formula_check

# Rebuild the committed known-formula index from the shared data.
index: setup
	$(BIN)/python -m tools.uniqueness build

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
