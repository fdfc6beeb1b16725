# `make demo`, `make test` and `make test-fast` (the suite without the slow tests) each set up .venv on first use
# (see README.md).
PY := .venv/bin/python

# rlcast alone (what the demo needs), then the test extras on top (what the tests need)
.venv/.base: pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e .
	touch $@

.venv/.installed: .venv/.base
	$(PY) -m pip install -q -e ".[test]"
	touch $@

setup: .venv/.installed

demo: .venv/.base
	.venv/bin/rlcast demo --out demo-out

test: .venv/.installed
	$(PY) -m pytest

test-fast: .venv/.installed
	$(PY) -m pytest -m "not slow"

.PHONY: setup demo test test-fast
