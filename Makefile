# The two commands of the README. Both create .venv on demand.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
PYTEST_ARGS ?= -n 2 -q

.PHONY: run test test-fast bench clean

$(VENV)/.installed: setup.py
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(VPY) -m pip install -q -e '.[test]'
	touch $@

run: $(VENV)/.installed
	$(VPY) -m experiments.quickstart --workdir=runs/quickstart

test: $(VENV)/.installed-test
	$(VPY) -m pytest $(PYTEST_ARGS) tests

test-fast: $(VENV)/.installed-test
	$(VPY) -m pytest $(PYTEST_ARGS) -m "not slow" tests

bench: $(VENV)/.installed
	$(VPY) -m experiments.bench_core

clean:
	rm -rf $(VENV) runs
