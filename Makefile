# Two entry points for a new user: `make demo` (main job on the shipped defaults) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
ADA := $(VENV)/bin/adaretrieve

.PHONY: setup demo test lint bench-dl19 readme clean

setup: $(VENV)/.installed

# torch is pinned to the CPU wheel first; the package itself accepts any torch >= 2.2.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,bm25]'
	touch $@

# Index BEIR SciFact with the packaged all-MiniLM-L6-v2 and print the single-stage / two-stage table.
demo: setup
	$(ADA) bench --config benchmarks/scifact-minilm.yaml --check --out runs/demo-scifact-minilm

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check adaretrieve tests benchmarks

# Re-render the README's measured figures from benchmarks/results/ (the test suite checks they match).
readme: setup
	$(PY) benchmarks/readme.py --write

bench-dl19: setup
	$(ADA) bench --config benchmarks/dl19-minilm.yaml --check

clean:
	rm -rf $(VENV) .pytest_cache indexes/*/
