# The README's two set-up commands. Both create (or reuse) ./.venv.
#   make demo   train on the built-in synthetic faces, write samples, plots, checkpoints
#   make test   the whole test suite, parity with PyTorch included
# TORCH is installed before anything else so that pip never picks a CUDA build of torch
# on a CPU machine; on a GPU machine use e.g. `make test TORCH=torch`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
DEMO_OUT ?= runs/demo

.PHONY: demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.demo: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[torch]"
	touch $@

$(VENV)/.test: pyproject.toml Makefile $(VENV)/.demo
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

demo: $(VENV)/.demo
	$(BIN)/jax-dcgan train --preset demo --out $(DEMO_OUT) --resume

test: $(VENV)/.test
	$(BIN)/python -m pytest -n 2 --dist loadfile --durations=20

clean:
	rm -rf $(VENV) runs
