# The README's two set-up commands. Both create (or reuse) ./.venv.
#   make demo   train on the built-in synthetic faces, write samples, plots, checkpoints
#               (installs .[fid]: PyTorch and FID's network, so `jax-dcgan eval` and
#               `jax-dcgan parity` work on the demo's run right after)
#   make test   the import-layering contract (lint-imports), then the whole test suite,
#               parity with PyTorch included
# TORCH is installed before anything else so that pip never picks a CUDA build of torch
# on a CPU machine. Where the package index has no CPU build of it (PyPI's Linux wheels are
# CUDA builds of several GB), take it from PyTorch's own index:
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
# On a GPU machine `make demo TORCH=torch`; the tests keep torch 2.13 (the torchvision that
# clean-fid requires is pinned to it in pyproject.toml).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
BIN := $(VENV)/bin
DEMO_OUT ?= runs/demo

.PHONY: demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.demo: pyproject.toml Makefile | $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet -e ".[fid]"
	touch $@

$(VENV)/.test: pyproject.toml Makefile $(VENV)/.demo
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

demo: $(VENV)/.demo
	$(BIN)/jax-dcgan train --preset demo --out $(DEMO_OUT) --resume

test: $(VENV)/.test
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -n 2 --dist loadfile --durations=20

clean:
	rm -rf $(VENV) runs
