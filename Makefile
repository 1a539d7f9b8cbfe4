# make demo  -> offline SGD vs SWA demo on synthetic data (CPU, a few minutes)
# make test  -> the test suite (installs what it needs first)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
DEMO_RUNS ?= runs/demo
DEMO_RUN_DIRS := $(DEMO_RUNS)/synthetic/small_cnn/sgd/seed0 $(DEMO_RUNS)/synthetic/small_cnn/swa/seed0

.PHONY: install demo test test-slow test-all lint clean-demo

install: $(INSTALLED)

$(INSTALLED): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

demo: install
	$(PY) -m swa_repro.demo paths.runs=$(DEMO_RUNS)
	$(PY) plots/convergence.py $(DEMO_RUN_DIRS) --out figures/demo/convergence.png

test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

test-all: install
	$(PY) -m pytest -q -m "slow or not slow"

lint: install
	$(PY) -m ruff check src tests plots
	$(PY) -m ruff format --check src tests plots

clean-demo:
	rm -rf $(DEMO_RUNS) figures/demo
