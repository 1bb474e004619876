# streamsolve — one-command setup, solve, tests and benchmarks.
#   make solve                       the main job on the embedded default corpus
#   make solve CORPUS='a.txt.gz b/'  the same on your shards (files, dirs, globs, URLs)
#   make solve OVERWRITE=1           replace an existing out/model.zarr (kept otherwise)
#   make test                        the test suite (what CI runs)
#   make test-fast                   every test not marked slow
#   make test-loaded LOAD=4          the test suite beside 4 busy-loop processes (TESTS='-m slow')
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
OVERWRITE ?=
LOAD   ?=
TESTS  ?=
OVERWRITE_FLAG = $(if $(filter 1 yes true,$(OVERWRITE)),--overwrite,)

.PHONY: setup setup-test solve test test-fast test-loaded bench clean

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

# An existing $(STORE) is kept unless OVERWRITE=1 (a URL store: streamsolve itself refuses).
solve: setup
	@case '$(STORE)' in *://*) ;; *) mkdir -p '$(dir $(STORE))' ;; esac
	@if [ -z '$(OVERWRITE_FLAG)' ] && [ -e '$(STORE)' ]; then echo "make solve: $(STORE) \
	already exists, kept: run 'make solve OVERWRITE=1' to replace it, or give another STORE=" >&2; \
	exit 2; fi
	$(BIN)/streamsolve solve $(CORPUS) --store $(STORE) $(OVERWRITE_FLAG) $(ARGS)

test: setup-test
	$(BIN)/python -m pytest -q

test-fast: setup-test
	$(BIN)/python -m pytest -q -m "not slow"

# The suite on a busy machine: LOAD busy loops (default 2 x cores) beside `pytest -q $(TESTS)`, always stopped after.
test-loaded: setup-test
	$(BIN)/python tests/load.py $(if $(LOAD),--busy $(LOAD),) -- $(TESTS)

bench: setup-test
	$(BIN)/python -m bench $(if $(FULL),--full,)

clean:
	rm -rf $(VENV) out .pytest_cache
