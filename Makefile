# streamsolve — one-command setup, solve, tests and benchmarks.
#   make solve                       the main job on the embedded default corpus
#   make solve CORPUS='a.txt.gz b/'  the same on your shards (files, dirs, globs, URLs)
#   make test                        the test suite (what CI runs)
#   make test-fast                   every test not marked slow
PYTHON ?= python3
# The CPU build of PyTorch, pinned, for the tests of the PyTorch bridge (an unpinned torch
# pulls gigabytes of CUDA libraries). Override on machines without that wheel, e.g.
#   make test TORCH='torch --index-url https://download.pytorch.org/whl/cpu'
TORCH  ?= torch==2.13.0+cpu
VENV   ?= .venv
BIN     = $(VENV)/bin
STORE  ?= out/model.zarr
CORPUS ?=
ARGS   ?=

.PHONY: setup setup-test solve test test-fast bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e .
	touch $@

setup-test: $(VENV)/.installed-test

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[test,torch]'
	touch $@

solve: setup
	@case '$(STORE)' in *://*) ;; *) mkdir -p '$(dir $(STORE))' ;; esac
	$(BIN)/streamsolve solve $(CORPUS) --store $(STORE) --overwrite $(ARGS)

test: setup-test
	$(BIN)/python -m pytest -q

test-fast: setup-test
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup-test
	$(BIN)/python -m bench $(if $(FULL),--full,)

clean:
	rm -rf $(VENV) out .pytest_cache
