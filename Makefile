# The two commands of the README. Both create .venv on demand.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
PYTEST_ARGS ?= -n 2 -q

.PHONY: run test test-slow test-all bench clean

$(VENV)/.installed: setup.py
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[engine]'
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(VPY) -m pip install -q -e '.[engine,test]'
	touch $@

run: $(VENV)/.installed
	$(VPY) -m experiments.quickstart --workdir=runs/quickstart

# The suite without the end-to-end runs marked slow (see README for the last measure); CI runs both.
test: $(VENV)/.installed-test
	$(VPY) -m pytest $(PYTEST_ARGS) -m "not slow" tests

# End-to-end runs: SIGKILL and resume (one and two processes), damaged checkpoints, divergence, ResNet-20 on 8 devices and on mock CIFAR.
test-slow: $(VENV)/.installed-test
	$(VPY) -m pytest $(PYTEST_ARGS) -m slow tests

test-all: $(VENV)/.installed-test
	$(VPY) -m pytest $(PYTEST_ARGS) tests

bench: $(VENV)/.installed
	$(VPY) -m experiments.bench_core

clean:
	rm -rf $(VENV) runs
